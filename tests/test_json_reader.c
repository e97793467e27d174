/* test_json_reader.c - csrc/json_reader.c alone: documents it accepts and refuses (with the message
 * and byte of each refusal), the nesting limit (also 100k levels, on a small stack: nothing
 * recurses), string escapes and surrogates, integers at the ends of their range, and random
 * documents written with json_writer.c and read back value for value. Runs under ASan/UBSan.
 *   build/tests/test_json_reader      (FADAM_TEST_SEED=N replays a run) */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "internal.h"
#include "json_reader.h"
#include "json_writer.h"

/* The reader over an exactly sized heap copy of `text` (ASan sees a read past its end). */
typedef struct doc {
    char *text, *arena;
    fadam_json_reader reader;
} doc;

static void doc_open(doc *d, const char *text, size_t length) {
    d->text = (char *)malloc(length ? length : 1);
    d->arena = (char *)malloc(length + 1);
    if (length) memcpy(d->text, text, length);
    fadam_json_reader_init(&d->reader, d->text, length, d->arena, "test");
}

static void doc_close(doc *d) {
    free(d->text);
    free(d->arena);
}

/* One whole value, then only white space. */
static fadam_status walk(const char *text, size_t length, int max_depth) {
    doc d;
    fadam_status status;
    doc_open(&d, text, length);
    status = fadam_json_skip_value(&d.reader, max_depth);
    if (status == FADAM_SUCCESS) status = fadam_json_end(&d.reader);
    doc_close(&d);
    return status;
}

static void valid_documents(void) {
    static const char *const documents[] = {"{}",
                                            "[]",
                                            " \t\r\n{} \n",
                                            "0",
                                            "-0",
                                            "1.5e-3",
                                            "-12E+4",
                                            "\"\"",
                                            "true",
                                            "false",
                                            "null",
                                            "{\"a\":1,\"b\":[true,false,null],\"c\":{\"d\":\"e\"}}",
                                            "[[],[[]],{},{\"\":[]}]",
                                            "[\"\\u00e9\\ud83d\\ude00\\\"\\\\\\/\\b\\f\\n\\r\\t\"]",
                                            "[0,1,-1,0.0,123456789012345678901234567890]",
                                            "{\"k\" : [ 1 , 2 ] , \"l\" : { } }"};
    size_t i;
    check_case_begin();
    for (i = 0; i < sizeof documents / sizeof documents[0]; i++) {
        fadam_status status = walk(documents[i], strlen(documents[i]), 64);
        CHECK(status == FADAM_SUCCESS, "document %zu (%s) refused: %s", i, documents[i], fadam_last_error_message());
    }
    check_case_end("json_reader/valid_documents");
}

/* Each refused with this message fragment, at this byte. */
static void invalid_documents(void) {
    static const struct {
        const char *name, *text, *fragment;
        size_t at;
    } cases[] = {
        {"empty", "", "expected a value", 0},
        {"only_spaces", "   ", "expected a value", 3},
        {"trailing_comma_in_array", "[1,]", "expected a value", 3},
        {"trailing_comma_in_object", "{\"a\":1,}", "expected a string", 7},
        {"missing_colon", "{\"a\" 1}", "expected ':' after a key", 5},
        {"missing_comma", "[1 2]", "expected ',' or ']' in an array", 3},
        {"unclosed_object", "{\"a\":1", "expected ',' or '}' in an object", 6},
        {"key_not_a_string", "{1:2}", "expected a string", 1},
        {"second_value", "{} {}", "bytes after the JSON object", 3},
        {"leading_zero", "01", "bytes after the JSON object", 1},
        {"bare_fraction", ".5", "expected a value", 0},
        {"plus_sign", "+1", "expected a value", 0},
        {"fraction_without_digits", "1.", "expected a digit after '.'", 2},
        {"exponent_without_digits", "1e+", "expected a digit in the exponent", 3},
        {"lone_minus", "-", "expected a value", 1},
        {"misspelled_true", "tru", "expected a value", 0},
        {"unterminated_string", "\"abc", "unterminated string", 4},
        {"control_character", "\"a\x01\"", "control character inside a string", 2},
        {"unknown_escape", "\"\\q\"", "unknown escape in a string", 2},
        {"short_u_escape", "\"\\u12\"", "bad \\u escape", 1},
        {"nul_escape", "\"\\u0000\"", "NUL (\\u0000) inside a string", 7},
        {"lone_high_surrogate", "\"\\ud800\"", "high surrogate \\ud800 not followed by a \\u escape", 7},
        {"lone_low_surrogate", "\"\\udc00\"", "low surrogate \\udc00 without a high one", 7},
        {"high_then_non_low", "\"\\ud800\\u0041\"", "followed by \\u0041, not by a low surrogate", 7},
        {"invalid_utf8", "\"\xc3\x28\"", "invalid UTF-8 in a string", 1},
        {"overlong_utf8", "\"\xc0\xaf\"", "invalid UTF-8 in a string", 1},
        {"encoded_surrogate", "\"\xed\xa0\x80\"", "invalid UTF-8 in a string", 1},
    };
    size_t i;
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char name[96], at[64];
        fadam_status status;
        check_case_begin();
        status = walk(cases[i].text, strlen(cases[i].text), 64);
        snprintf(at, sizeof at, "at byte %zu of the JSON", cases[i].at);
        CHECK(status == FADAM_ERR_CORRUPT, "status %d, want FADAM_ERR_CORRUPT", (int)status);
        CHECK(strstr(fadam_last_error_message(), cases[i].fragment) && strstr(fadam_last_error_message(), at),
              "message \"%s\", want \"%s\" %s", fadam_last_error_message(), cases[i].fragment, at);
        snprintf(name, sizeof name, "json_reader/invalid_%s", cases[i].name);
        check_case_end(name);
    }
}

/* `depth` brackets of `open`, then as many of `close`. */
static char *nested(char open, char close, size_t depth) {
    char *text = (char *)malloc(2 * depth + 1);
    memset(text, open, depth);
    memset(text + depth, close, depth);
    text[2 * depth] = '\0';
    return text;
}

static void *deep_documents(void *unused) {
    char *text;
    (void)unused;
    check_case_begin();
    text = nested('[', ']', 64);
    CHECK(walk(text, strlen(text), 64) == FADAM_SUCCESS, "64 levels refused at limit 64: %s",
          fadam_last_error_message());
    free(text);
    text = nested('[', ']', 65);
    CHECK(walk(text, strlen(text), 64) == FADAM_ERR_CORRUPT &&
              strstr(fadam_last_error_message(), "nested too deep at byte 64"),
          "65 levels at limit 64: \"%s\"", fadam_last_error_message());
    free(text);
    text = nested('[', ']', 100000);
    CHECK(walk(text, strlen(text), 1 << 30) == FADAM_ERR_CORRUPT &&
              strstr(fadam_last_error_message(), "nested too deep"),
          "100000 levels at any limit: \"%s\"", fadam_last_error_message());
    free(text);
    check_case_end("json_reader/nesting_limit_without_recursion");
    return NULL;
}

static void nesting_limits(void) {
    pthread_attr_t attributes;
    pthread_t thread;
    /* 64 KiB of stack: a recursive reader would overflow it long before 100000 levels. */
    pthread_attr_init(&attributes);
    pthread_attr_setstacksize(&attributes, 64 << 10);
    if (pthread_create(&thread, &attributes, deep_documents, NULL) == 0)
        pthread_join(thread, NULL);
    else
        deep_documents(NULL);
    pthread_attr_destroy(&attributes);
}

static void escapes_decode(void) {
    static const struct {
        const char *json, *decoded;
    } cases[] = {{"\"plain\"", "plain"},
                 {"\"\\\"\\\\\\/\"", "\"\\/"},
                 {"\"\\b\\f\\n\\r\\t\"", "\b\f\n\r\t"},
                 {"\"\\u0041\\u00e9\\u20AC\"", "A\xc3\xa9\xe2\x82\xac"},
                 {"\"\\ud83d\\ude00\"", "\xf0\x9f\x98\x80"},
                 {"\"\\uDBFF\\uDFFF\"", "\xf4\x8f\xbf\xbf"},
                 {"\"raw \xc3\xbc \xf0\x9f\x98\x80\"", "raw \xc3\xbc \xf0\x9f\x98\x80"}};
    size_t i;
    check_case_begin();
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        doc d;
        const char *out = NULL;
        doc_open(&d, cases[i].json, strlen(cases[i].json));
        CHECK(fadam_json_string(&d.reader, &out) == FADAM_SUCCESS && strcmp(out, cases[i].decoded) == 0,
              "%s decoded as \"%s\"", cases[i].json, out ? out : "(failed)");
        doc_close(&d);
    }
    check_case_end("json_reader/escapes_decode");
}

static void integers(void) {
    static const struct {
        const char *text;
        uint64_t value;
        const char *fragment; /* NULL: accepted */
    } cases[] = {{"0", 0, NULL},
                 {"7", 7, NULL},
                 {"9223372036854775807", 9223372036854775807ull, NULL},
                 {"9223372036854775808", 0, "number larger than 2^63-1"},
                 {"18446744073709551616", 0, "number larger than 2^63-1"},
                 {"01", 0, "number with a leading zero"},
                 {"-1", 0, "negative number"},
                 {"-0", 0, "negative number"},
                 {"1.5", 0, "number is not an integer"},
                 {"1e3", 0, "number is not an integer"},
                 {"x", 0, "expected an integer"}};
    size_t i;
    check_case_begin();
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        doc d;
        uint64_t value = 12345;
        fadam_status status;
        doc_open(&d, cases[i].text, strlen(cases[i].text));
        status = fadam_json_integer(&d.reader, &value);
        if (cases[i].fragment)
            CHECK(status == FADAM_ERR_CORRUPT && strstr(fadam_last_error_message(), cases[i].fragment),
                  "%s: status %d \"%s\", want \"%s\"", cases[i].text, (int)status, fadam_last_error_message(),
                  cases[i].fragment);
        else
            CHECK(status == FADAM_SUCCESS && value == cases[i].value, "%s read as %llu (status %d)", cases[i].text,
                  (unsigned long long)value, (int)status);
        doc_close(&d);
    }
    check_case_end("json_reader/integers_at_their_limits");
}

/* ---- random documents: a tree written as JSON (random spacing, escapes from the writer), read back
 * with the reader's calls and compared node by node ---- */

typedef struct node {
    int kind; /* 0 integer, 1 string, 2 array, 3 object */
    uint64_t integer;
    char *string;          /* kind 1, and each member's key in an object */
    struct node *children; /* kinds 2, 3 */
    int n_children;
} node;

/* A random code point (never NUL, never a surrogate) as UTF-8. */
static size_t random_utf8(uint64_t *rng, char *out) {
    uint32_t c;
    switch (check_rng_next(rng) % 4) {
    case 0: c = 1 + (uint32_t)(check_rng_next(rng) % 0x7F); break; /* ASCII, controls and quotes included */
    case 1: c = 0x80 + (uint32_t)(check_rng_next(rng) % 0x780); break;
    case 2: c = 0x800 + (uint32_t)(check_rng_next(rng) % 0xF800); break;
    default: c = 0x10000 + (uint32_t)(check_rng_next(rng) % 0x100000); break;
    }
    if (c >= 0xD800 && c <= 0xDFFF) c = 'x';
    if (c < 0x80) return out[0] = (char)c, 1;
    if (c < 0x800) return out[0] = (char)(0xC0 | c >> 6), out[1] = (char)(0x80 | (c & 0x3F)), 2;
    if (c < 0x10000)
        return out[0] = (char)(0xE0 | c >> 12), out[1] = (char)(0x80 | ((c >> 6) & 0x3F)),
               out[2] = (char)(0x80 | (c & 0x3F)), 3;
    out[0] = (char)(0xF0 | c >> 18), out[1] = (char)(0x80 | ((c >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((c >> 6) & 0x3F)), out[3] = (char)(0x80 | (c & 0x3F));
    return 4;
}

static char *random_string(uint64_t *rng) {
    size_t n = check_rng_next(rng) % 12, used = 0, i;
    char *s = (char *)malloc(4 * n + 1);
    for (i = 0; i < n; i++) used += random_utf8(rng, s + used);
    s[used] = '\0';
    return s;
}

static void random_node(node *n, uint64_t *rng, int depth) {
    int i;
    memset(n, 0, sizeof *n);
    n->kind = depth >= 6 ? (int)(check_rng_next(rng) % 2) : (int)(check_rng_next(rng) % 4);
    if (n->kind == 0) n->integer = check_rng_next(rng) >> (1 + check_rng_next(rng) % 63);
    if (n->kind == 1) n->string = random_string(rng);
    if (n->kind < 2) return;
    n->n_children = (int)(check_rng_next(rng) % 5);
    n->children = (node *)calloc((size_t)n->n_children + 1, sizeof *n->children);
    for (i = 0; i < n->n_children; i++) {
        random_node(&n->children[i], rng, depth + 1);
        if (n->kind == 3) n->children[i].string = n->children[i].string ? n->children[i].string : random_string(rng);
    }
}

static void free_node(node *n) {
    int i;
    for (i = 0; i < n->n_children; i++) free_node(&n->children[i]);
    free(n->children);
    free(n->string);
}

static void space(fadam_text *text, uint64_t *rng) {
    static const char *const spaces[] = {"", "", " ", "\n", "\t ", "\r\n  "};
    fadam_text_append_string(text, spaces[check_rng_next(rng) % 6]);
}

/* An object member's key is its child's `string`; a string child of an object repeats it as value. */
static void write_node(const node *n, fadam_text *text, uint64_t *rng) {
    char number[32];
    int i;
    space(text, rng);
    if (n->kind == 0) {
        snprintf(number, sizeof number, "%llu", (unsigned long long)n->integer);
        fadam_text_append_string(text, number);
    } else if (n->kind == 1) {
        fadam_text_append_json_string(text, n->string);
    } else {
        fadam_text_append_string(text, n->kind == 2 ? "[" : "{");
        for (i = 0; i < n->n_children; i++) {
            if (i) fadam_text_append_string(text, ",");
            if (n->kind == 3) {
                space(text, rng);
                fadam_text_append_json_string(text, n->children[i].string);
                space(text, rng);
                fadam_text_append_string(text, ":");
            }
            write_node(&n->children[i], text, rng);
        }
        space(text, rng);
        fadam_text_append_string(text, n->kind == 2 ? "]" : "}");
    }
    space(text, rng);
}

/* Reads one value with the reader's calls and compares it with `n`; 1 when equal. */
static int read_node(const node *n, fadam_json_reader *r) {
    const char *s;
    uint64_t value;
    int i;
    if (n->kind == 0) return fadam_json_integer(r, &value) == FADAM_SUCCESS && value == n->integer;
    if (n->kind == 1) return fadam_json_string(r, &s) == FADAM_SUCCESS && strcmp(s, n->string) == 0;
    if (fadam_json_expect(r, n->kind == 2 ? '[' : '{', "open") != FADAM_SUCCESS) return 0;
    for (i = 0; i < n->n_children; i++) {
        if (i && fadam_json_expect(r, ',', "comma") != FADAM_SUCCESS) return 0;
        if (n->kind == 3 && (fadam_json_string(r, &s) != FADAM_SUCCESS || strcmp(s, n->children[i].string) != 0 ||
                             fadam_json_expect(r, ':', "colon") != FADAM_SUCCESS))
            return 0;
        if (!read_node(&n->children[i], r)) return 0;
    }
    return fadam_json_expect(r, n->kind == 2 ? ']' : '}', "close") == FADAM_SUCCESS;
}

static void random_round_trips(uint64_t seed) {
    uint64_t rng = seed;
    int round, failures = 0;
    check_case_begin();
    for (round = 0; round < 2000; round++) {
        node root;
        fadam_text text;
        doc d;
        memset(&text, 0, sizeof text);
        random_node(&root, &rng, 0);
        write_node(&root, &text, &rng);
        if (text.out_of_memory) break;
        doc_open(&d, text.data, text.length);
        if (!read_node(&root, &d.reader) || fadam_json_end(&d.reader) != FADAM_SUCCESS) {
            if (failures++ == 0)
                CHECK(0, "round %d: %s read back differently (%s)", round, text.data, fadam_last_error_message());
        }
        doc_close(&d);
        CHECK(walk(text.data, text.length, 64) == FADAM_SUCCESS, "round %d: skip_value refused %s: %s", round,
              text.data, fadam_last_error_message());
        free(text.data);
        free_node(&root);
    }
    CHECK(failures == 0, "%d of 2000 random documents read back differently", failures);
    check_case_end("json_reader/random_documents_written_and_read_back");
}

int main(void) {
    uint64_t seed = check_seed("test_json_reader");
    valid_documents();
    invalid_documents();
    nesting_limits();
    escapes_decode();
    integers();
    random_round_trips(seed);
    return check_exit_code();
}
