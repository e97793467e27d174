/* test_checkpoint_pieces.c - the version 2 checksum over 8 MiB pieces (issue 10, item 5) on files of
 * several pieces: entries of 1.5 and 2 pieces and exactly one piece, an empty one between them, saved
 * and loaded on 1 and 2 CPU threads, to a file (read back with reading and hashing overlapped) and to
 * memory. Each file's checksum is recomputed by the test's own code (checksum_v2.h) from the file's
 * bytes; a bit flipped in a second piece, a first piece and a last piece is refused on every path. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "checksum_v2.h"
#include "fusedadam.h"

#define N_TENSORS 4
/* Elements: 1.5 pieces of fp32 state, none, exactly 1 piece, 2 pieces + 12 bytes. */
static const int64_t numels[N_TENSORS] = {3 << 20, 0, 2 << 20, (4 << 20) + 3};
static const char *const names[N_TENSORS] = {"a.one_and_half", "b.empty", "c.one", "d.two_and_a_bit"};

typedef struct model {
    fadam_optimizer *opt;
    float *params[N_TENSORS], *grads[N_TENSORS];
} model;

static int model_create(model *m, int threads, uint64_t *rng) {
    int i;
    int64_t k;
    memset(m, 0, sizeof *m);
    if (fadam_create(&m->opt, FADAM_DEVICE_CPU, 0, NULL, NULL) != FADAM_SUCCESS) return 0;
    if (fadam_set_cpu_threads(m->opt, threads) != FADAM_SUCCESS) return 0;
    for (i = 0; i < N_TENSORS; i++) {
        m->params[i] = (float *)malloc((size_t)(numels[i] ? numels[i] : 1) * sizeof(float));
        m->grads[i] = (float *)malloc((size_t)(numels[i] ? numels[i] : 1) * sizeof(float));
        for (k = 0; k < numels[i]; k++) {
            m->params[i][k] = (float)check_rng_normal(rng);
            m->grads[i][k] = (float)(1e-2 * check_rng_normal(rng));
        }
        if (fadam_add_tensor(m->opt, names[i], m->params[i], m->grads[i], numels[i], FADAM_FLOAT32, FADAM_FLOAT32, 0,
                             NULL) != FADAM_SUCCESS)
            return 0;
    }
    return fadam_finalize(m->opt, NULL) == FADAM_SUCCESS && fadam_step(m->opt, NULL) == FADAM_SUCCESS;
}

static void model_destroy(model *m) {
    int i;
    fadam_destroy(m->opt);
    for (i = 0; i < N_TENSORS; i++) free(m->params[i]), free(m->grads[i]);
}

static unsigned char *read_whole(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    unsigned char *bytes = NULL;
    long length;
    if (!f) return NULL;
    if (fseek(f, 0, SEEK_END) == 0 && (length = ftell(f)) > 0 && fseek(f, 0, SEEK_SET) == 0 &&
        (bytes = (unsigned char *)malloc((size_t)length)) && fread(bytes, 1, (size_t)length, f) == (size_t)length) {
        *size = (size_t)length;
    } else {
        free(bytes);
        bytes = NULL;
    }
    fclose(f);
    return bytes;
}

static int write_whole(const char *path, const unsigned char *bytes, size_t size) {
    FILE *f = fopen(path, "wb");
    int ok = f && fwrite(bytes, 1, size, f) == size;
    if (f) ok = fclose(f) == 0 && ok;
    return ok;
}

/* The data offsets of `entry` in the header text; 0 when absent. */
static int entry_range(const char *header, const char *entry, unsigned long long *begin, unsigned long long *end) {
    char key[128];
    const char *at;
    snprintf(key, sizeof key, "\"%s\":{", entry);
    if (!(at = strstr(header, key)) || !(at = strstr(at, "\"data_offsets\":["))) return 0;
    return sscanf(at + 16, "%llu,%llu", begin, end) == 2;
}

typedef struct key_value {
    char key[256], value[256];
} key_value;

static int compare_keys(const void *a, const void *b) {
    return strcmp(((const key_value *)a)->key, ((const key_value *)b)->key);
}

/* checksum_v2.h's checksum of the file's metadata and data (this model's metadata keys are ASCII
 * without escapes, so they are read straight from the JSON) against its recorded one. */
static int recomputed_matches(const unsigned char *bytes, size_t size, char *why, size_t why_size) {
    uint64_t length = 0;
    char *header, hex[TEST_CHECKSUM_HEX + 1];
    const char *meta, *p, *recorded;
    const char *entries[2 * N_TENSORS];
    char entry_names[2 * N_TENSORS][96];
    int i, n = 0, ok, n_pairs = 0;
    test_checksum c;
    static key_value pairs[64];
    for (i = 0; i < 8; i++) length |= (uint64_t)bytes[i] << (8 * i);
    header = (char *)malloc(length + 1);
    memcpy(header, bytes + 8, length);
    header[length] = '\0';
    test_checksum_init(&c);
    /* The metadata in byte order of the keys (strings without escapes here). */
    meta = strstr(header, "\"__metadata__\":{") + 16;
    for (p = meta; *p == '"' && n_pairs < 64;) {
        const char *key_end = strchr(p + 1, '"'), *value = key_end + 3, *value_end = strchr(value, '"');
        snprintf(pairs[n_pairs].key, sizeof pairs[n_pairs].key, "%.*s", (int)(key_end - p - 1), p + 1);
        snprintf(pairs[n_pairs].value, sizeof pairs[n_pairs].value, "%.*s", (int)(value_end - value), value);
        n_pairs++;
        p = value_end + 1;
        if (*p == ',') p++;
    }
    qsort(pairs, (size_t)n_pairs, sizeof pairs[0], compare_keys);
    for (i = 0; i < n_pairs; i++)
        if (strcmp(pairs[i].key, "checksum") != 0) test_checksum_string(&c, pairs[i].key), test_checksum_string(&c, pairs[i].value);
    /* Entry names in byte order: the names above sort as their tensors, then exp_avg < exp_avg_sq. */
    for (i = 0; i < N_TENSORS; i++) {
        snprintf(entry_names[n], sizeof entry_names[n], "%s.exp_avg", names[i]), entries[n] = entry_names[n], n++;
        snprintf(entry_names[n], sizeof entry_names[n], "%s.exp_avg_sq", names[i]), entries[n] = entry_names[n], n++;
    }
    for (i = 0; i < n; i++) {
        unsigned long long begin = 0, end = 0;
        if (!entry_range(header, entries[i], &begin, &end)) {
            snprintf(why, why_size, "no entry %s", entries[i]);
            free(header);
            return 0;
        }
        test_checksum_entry(&c, entries[i], bytes + 8 + length + begin, (size_t)(end - begin));
    }
    test_checksum_hex(&c, hex);
    recorded = strstr(header, "\"checksum\":\"" TEST_CHECKSUM_PREFIX);
    ok = recorded && strncmp(recorded + strlen("\"checksum\":\"" TEST_CHECKSUM_PREFIX), hex, TEST_CHECKSUM_HEX) == 0;
    snprintf(why, why_size, "recorded %.50s, recomputed %s (file of %zu bytes)", recorded ? recorded : "(none)", hex, size);
    free(header);
    return ok;
}

int main(void) {
    uint64_t seed = check_seed("test_checkpoint_pieces"), rng = seed;
    const char *tmp = getenv("TMPDIR");
    char path[4096], flipped_path[4200];
    int threads;
    snprintf(path, sizeof path, "%s/fadam_pieces_%d.safetensors", tmp && tmp[0] ? tmp : "/tmp", (int)getpid());
    snprintf(flipped_path, sizeof flipped_path, "%s.flipped", path);
    for (threads = 1; threads <= 2; threads++) {
        model m, other;
        unsigned char *bytes = NULL;
        size_t size = 0;
        char name[96], why[512];
        check_case_begin();
        CHECK(model_create(&m, threads, &rng) && model_create(&other, threads, &rng), "model: %s",
              fadam_last_error_message());
        CHECK(fadam_save(m.opt, path, NULL) == FADAM_SUCCESS, "save: %s", fadam_last_error_message());
        CHECK((bytes = read_whole(path, &size)) != NULL, "reading %.200s back: %s", path, strerror(errno));
        if (bytes) {
            CHECK(recomputed_matches(bytes, size, why, sizeof why), "%.400s", why);
            CHECK(strstr((const char *)bytes + 8, "\"format_version\":\"2\"") != NULL, "not format_version 2");
        }
        CHECK(fadam_load(other.opt, path, NULL) == FADAM_SUCCESS, "load from the file: %s", fadam_last_error_message());
        CHECK(!bytes || fadam_load_bytes(other.opt, bytes, size, NULL) == FADAM_SUCCESS, "load from memory: %s",
              fadam_last_error_message());
        snprintf(name, sizeof name, "multi_piece_checksum_matches_definition_and_loads_%d_thread%s", threads,
                 threads > 1 ? "s" : "");
        check_case_end(name);

        /* A bit flipped in the second piece of d, the first piece of a, the last byte of c's exp_avg_sq. */
        check_case_begin();
        if (bytes) {
            uint64_t length = 0;
            char *header;
            const char *targets[3] = {"d.two_and_a_bit.exp_avg", "a.one_and_half.exp_avg_sq", "c.one.exp_avg_sq"};
            int i, t;
            for (i = 0; i < 8; i++) length |= (uint64_t)bytes[i] << (8 * i);
            header = (char *)malloc(length + 1);
            memcpy(header, bytes + 8, length);
            header[length] = '\0';
            for (t = 0; t < 3; t++) {
                unsigned long long begin = 0, end = 0;
                size_t at;
                CHECK(entry_range(header, targets[t], &begin, &end), "no entry %s", targets[t]);
                at = 8 + length + (t == 0 ? begin + TEST_CHECKSUM_PIECE_BYTES + 100 : t == 1 ? begin + 5 : end - 1);
                bytes[at] ^= 0x04;
                CHECK(write_whole(flipped_path, bytes, size), "writing %.200s", flipped_path);
                CHECK(fadam_load(other.opt, flipped_path, NULL) == FADAM_ERR_CORRUPT &&
                          strstr(fadam_last_error_message(), "checksum mismatch"),
                      "%s flipped, from the file: %s", targets[t], fadam_last_error_message());
                CHECK(fadam_load_bytes(other.opt, bytes, size, NULL) == FADAM_ERR_CORRUPT &&
                          strstr(fadam_last_error_message(), "checksum mismatch"),
                      "%s flipped, from memory: %s", targets[t], fadam_last_error_message());
                bytes[at] ^= 0x04;
            }
            free(header);
        }
        snprintf(name, sizeof name, "flipped_bit_in_any_piece_refused_%d_thread%s", threads, threads > 1 ? "s" : "");
        check_case_end(name);
        free(bytes);
        unlink(path);
        unlink(flipped_path);
        model_destroy(&m);
        model_destroy(&other);
    }
    return check_exit_code();
}
