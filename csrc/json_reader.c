/* json_reader.c - the pull reader of json_reader.h: white space, punctuation, strings (escapes,
 * surrogate pairs, UTF-8 checked), integers, and a depth-limited walk over any value. */
#include <stdio.h>
#include <string.h>

#include "internal.h"
#include "json_reader.h"
#include "number_text.h"
#include "utf8.h"

/* fadam_json_skip_value's deepest nesting, whatever the caller asks: its stack is this many bytes. */
#define JSON_MAX_DEPTH 512

void fadam_json_reader_init(fadam_json_reader *r, const char *text, size_t length, char *arena, const char *function) {
    memset(r, 0, sizeof *r);
    r->text = text;
    r->length = length;
    r->arena = arena;
    r->function = function;
}

fadam_status fadam_json_error(const fadam_json_reader *p, const char *what) {
    return fadam_fail(FADAM_ERR_CORRUPT, "%s: malformed header: %s at byte %zu of the JSON", p->function, what,
                      p->position);
}

static void skip_space(fadam_json_reader *p) {
    while (p->position < p->length) {
        char c = p->text[p->position];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        p->position++;
    }
}

fadam_status fadam_json_expect(fadam_json_reader *p, char c, const char *what) {
    skip_space(p);
    if (p->position >= p->length || p->text[p->position] != c) return fadam_json_error(p, what);
    p->position++;
    return FADAM_SUCCESS;
}

/* Peeks at the next character after spaces; 0 at the end. */
char fadam_json_peek(fadam_json_reader *p) {
    skip_space(p);
    return p->position < p->length ? p->text[p->position] : '\0';
}

static int read_hex4(const fadam_json_reader *p, size_t at, unsigned *out) {
    unsigned value = 0;
    int i;
    if (at + 4 > p->length) return 0;
    for (i = 0; i < 4; i++) {
        int digit = fadam_hex_value(p->text[at + (size_t)i]);
        if (digit < 0) return 0;
        value = value * 16 + (unsigned)digit;
    }
    *out = value;
    return 1;
}

fadam_status fadam_json_string(fadam_json_reader *p, const char **out) {
    char *decoded;
    skip_space(p);
    if (p->position >= p->length || p->text[p->position] != '"') return fadam_json_error(p, "expected a string");
    p->position++;
    decoded = p->arena + p->arena_used;
    for (;;) {
        unsigned char c;
        if (p->position >= p->length) return fadam_json_error(p, "unterminated string");
        c = (unsigned char)p->text[p->position];
        if (c == '"') {
            p->position++;
            break;
        }
        if (c < 0x20) return fadam_json_error(p, "control character inside a string");
        if (c == '\\') {
            char escape;
            unsigned code = 0;
            if (p->position + 1 >= p->length) return fadam_json_error(p, "unterminated string");
            escape = p->text[p->position + 1];
            if (escape == 'u') {
                if (!read_hex4(p, p->position + 2, &code)) return fadam_json_error(p, "bad \\u escape");
                p->position += 6;
                if (code >= 0xD800 && code <= 0xDBFF) {
                    unsigned low = 0;
                    char what[112];
                    if (p->position + 1 >= p->length || p->text[p->position] != '\\' ||
                        p->text[p->position + 1] != 'u' || !read_hex4(p, p->position + 2, &low)) {
                        snprintf(what, sizeof what,
                                 "unpaired surrogate: high surrogate \\u%04x not followed by a \\u escape", code);
                        return fadam_json_error(p, what);
                    }
                    if (low < 0xDC00 || low > 0xDFFF) {
                        snprintf(
                            what, sizeof what,
                            "unpaired surrogate: high surrogate \\u%04x followed by \\u%04x, not by a low surrogate",
                            code, low);
                        return fadam_json_error(p, what);
                    }
                    p->position += 6;
                    code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
                } else if (code >= 0xDC00 && code <= 0xDFFF) {
                    char what[96];
                    snprintf(what, sizeof what,
                             "unpaired surrogate: low surrogate \\u%04x without a high one before it", code);
                    return fadam_json_error(p, what);
                }
                if (code == 0) return fadam_json_error(p, "NUL (\\u0000) inside a string");
                /* UTF-8 of code; at most 4 bytes for the 6 or 12 bytes of escape read. */
                if (code < 0x80) {
                    decoded[0] = (char)code;
                    decoded += 1;
                } else if (code < 0x800) {
                    decoded[0] = (char)(0xC0 | (code >> 6));
                    decoded[1] = (char)(0x80 | (code & 0x3F));
                    decoded += 2;
                } else if (code < 0x10000) {
                    decoded[0] = (char)(0xE0 | (code >> 12));
                    decoded[1] = (char)(0x80 | ((code >> 6) & 0x3F));
                    decoded[2] = (char)(0x80 | (code & 0x3F));
                    decoded += 3;
                } else {
                    decoded[0] = (char)(0xF0 | (code >> 18));
                    decoded[1] = (char)(0x80 | ((code >> 12) & 0x3F));
                    decoded[2] = (char)(0x80 | ((code >> 6) & 0x3F));
                    decoded[3] = (char)(0x80 | (code & 0x3F));
                    decoded += 4;
                }
                continue;
            }
            switch (escape) {
            case '"': *decoded++ = '"'; break;
            case '\\': *decoded++ = '\\'; break;
            case '/': *decoded++ = '/'; break;
            case 'b': *decoded++ = '\b'; break;
            case 'f': *decoded++ = '\f'; break;
            case 'n': *decoded++ = '\n'; break;
            case 'r': *decoded++ = '\r'; break;
            case 't': *decoded++ = '\t'; break;
            default: p->position++; return fadam_json_error(p, "unknown escape in a string");
            }
            p->position += 2;
        } else {
            size_t sequence =
                fadam_utf8_sequence_length((const unsigned char *)p->text + p->position, p->length - p->position);
            if (sequence == 0) return fadam_json_error(p, "invalid UTF-8 in a string");
            memcpy(decoded, p->text + p->position, sequence);
            decoded += sequence;
            p->position += sequence;
        }
    }
    *decoded++ = '\0';
    *out = p->arena + p->arena_used;
    p->arena_used = (size_t)(decoded - p->arena);
    return FADAM_SUCCESS;
}

fadam_status fadam_json_integer(fadam_json_reader *p, uint64_t *out) {
    uint64_t value = 0;
    size_t start;
    skip_space(p);
    start = p->position;
    if (p->position < p->length && p->text[p->position] == '-') return fadam_json_error(p, "negative number");
    if (p->position >= p->length || p->text[p->position] < '0' || p->text[p->position] > '9')
        return fadam_json_error(p, "expected an integer");
    while (p->position < p->length && p->text[p->position] >= '0' && p->text[p->position] <= '9') {
        unsigned digit = (unsigned)(p->text[p->position] - '0');
        if (p->position > start && p->text[start] == '0') return fadam_json_error(p, "number with a leading zero");
        if (value > ((uint64_t)INT64_MAX - digit) / 10) return fadam_json_error(p, "number larger than 2^63-1");
        value = value * 10 + digit;
        p->position++;
    }
    if (p->position < p->length &&
        (p->text[p->position] == '.' || p->text[p->position] == 'e' || p->text[p->position] == 'E'))
        return fadam_json_error(p, "number is not an integer");
    *out = value;
    return FADAM_SUCCESS;
}

int fadam_json_accept(fadam_json_reader *p, char c) {
    if (fadam_json_peek(p) != c) return 0;
    p->position++;
    return 1;
}

fadam_status fadam_json_end(fadam_json_reader *p) {
    skip_space(p);
    if (p->position != p->length) return fadam_json_error(p, "bytes after the JSON object (only spaces may pad it)");
    return FADAM_SUCCESS;
}

/* A number by RFC 8259's grammar: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?; its value unused. */
static fadam_status skip_number(fadam_json_reader *p) {
    const char *t = p->text;
    size_t digits;
    if (p->position < p->length && t[p->position] == '-') p->position++;
    if (p->position < p->length && t[p->position] == '0') {
        p->position++;
    } else {
        for (digits = 0; p->position < p->length && t[p->position] >= '0' && t[p->position] <= '9'; digits++)
            p->position++;
        if (!digits) return fadam_json_error(p, "expected a value");
    }
    if (p->position < p->length && t[p->position] == '.') {
        p->position++;
        for (digits = 0; p->position < p->length && t[p->position] >= '0' && t[p->position] <= '9'; digits++)
            p->position++;
        if (!digits) return fadam_json_error(p, "expected a digit after '.'");
    }
    if (p->position < p->length && (t[p->position] == 'e' || t[p->position] == 'E')) {
        p->position++;
        if (p->position < p->length && (t[p->position] == '+' || t[p->position] == '-')) p->position++;
        for (digits = 0; p->position < p->length && t[p->position] >= '0' && t[p->position] <= '9'; digits++)
            p->position++;
        if (!digits) return fadam_json_error(p, "expected a digit in the exponent");
    }
    return FADAM_SUCCESS;
}

/* Iterative: `open` holds the '{' or '[' of each level still open. After a value, a ',' or the
 * closing bracket of the innermost level must follow. */
fadam_status fadam_json_skip_value(fadam_json_reader *p, int max_depth) {
    char open[JSON_MAX_DEPTH];
    int depth = 0;
    fadam_status status;
    const char *unused;
    if (max_depth > JSON_MAX_DEPTH) max_depth = JSON_MAX_DEPTH;
    for (;;) {
        char c = fadam_json_peek(p);
        /* A value. */
        if (c == '{' || c == '[') {
            if (depth >= max_depth) return fadam_json_error(p, "nested too deep");
            open[depth++] = c;
            p->position++;
            if (fadam_json_accept(p, c == '{' ? '}' : ']')) {
                depth--;
            } else {
                if (c == '{') {
                    if ((status = fadam_json_string(p, &unused)) != FADAM_SUCCESS) return status;
                    if ((status = fadam_json_expect(p, ':', "expected ':' after a key")) != FADAM_SUCCESS)
                        return status;
                }
                continue;
            }
        } else if (c == '"') {
            if ((status = fadam_json_string(p, &unused)) != FADAM_SUCCESS) return status;
        } else if (c == 't' || c == 'f' || c == 'n') {
            const char *word = c == 't' ? "true" : c == 'f' ? "false" : "null";
            size_t n = strlen(word);
            if (p->length - p->position < n || memcmp(p->text + p->position, word, n) != 0)
                return fadam_json_error(p, "expected a value");
            p->position += n;
        } else if ((status = skip_number(p)) != FADAM_SUCCESS) {
            return status;
        }
        /* After a value: close levels, or go on with the next member. */
        for (;;) {
            if (depth == 0) return FADAM_SUCCESS;
            if (fadam_json_accept(p, ',')) {
                if (open[depth - 1] == '{') {
                    if ((status = fadam_json_string(p, &unused)) != FADAM_SUCCESS) return status;
                    if ((status = fadam_json_expect(p, ':', "expected ':' after a key")) != FADAM_SUCCESS)
                        return status;
                }
                break;
            }
            if (open[depth - 1] == '{') {
                if ((status = fadam_json_expect(p, '}', "expected ',' or '}' in an object")) != FADAM_SUCCESS)
                    return status;
            } else if ((status = fadam_json_expect(p, ']', "expected ',' or ']' in an array")) != FADAM_SUCCESS) {
                return status;
            }
            depth--;
        }
    }
}
