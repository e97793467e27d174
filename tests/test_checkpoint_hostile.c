/* test_checkpoint_hostile.c - hand-made safetensors headers against fadam_load_bytes and fadam_load
 * (issue 9): duplicate keys (also spelled through \u escapes), 100k-deep nesting, \u0000, lone
 * surrogates, numbers out of range (1e999, 1e-999, 2^63, 2^64), offsets at and past the limits, the
 * header length at its limit and one past it, trailing bytes, other top levels, truncation. Each is
 * refused with its own status and message through both calls, and the optimizer (params, moments,
 * masters, step, hyperparameters, fused counters) stays bit-identical. Also the loader's shape rule
 * (exactly [numel]) and the name rules of fadam_add_tensor (defect 8). Runs under ASan/UBSan.
 *   build/tests/test_checkpoint_hostile      (FADAM_TEST_SEED=N replays a run) */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "fusedadam.h"
#include "checksum_v2.h"

/* safetensors.c's limit on the JSON header (safetensors' own is 100 MB too). */
#define HEADER_LIMIT_BYTES ((size_t)100 << 20)
#define DEEP 100000
#define N_TENSORS 5

static char temp_dir[256];

/* ---- the model: fp32, bf16 and fp16 params, an empty tensor, a one-element one, two groups, the
 * fused step with dynamic loss scaling and clipping (so its counters are in the checkpoint) ---- */

static const char *const tensor_names[N_TENSORS] = {"w", "b", "h", "e", "s"};
static const fadam_dtype param_dtypes[N_TENSORS] = {FADAM_FLOAT32, FADAM_BFLOAT16, FADAM_FLOAT16, FADAM_FLOAT32,
                                                    FADAM_FLOAT32};
static const fadam_dtype grad_dtypes[N_TENSORS] = {FADAM_FLOAT32, FADAM_BFLOAT16, FADAM_FLOAT32, FADAM_FLOAT32,
                                                   FADAM_FLOAT32};
static const int tensor_groups[N_TENSORS] = {0, 1, 1, 0, 1};

typedef struct model {
    fadam_optimizer *opt;
    int64_t numel[N_TENSORS];
    void *params[N_TENSORS], *grads[N_TENSORS];
} model;

static void *host_alloc(size_t bytes) { return aligned_alloc(256, (bytes + 256) / 256 * 256); }

/* fp32 roughly normal; 16-bit values from random bits with a bounded exponent (never inf/NaN). */
static void random_values(fadam_dtype dtype, void *out, int64_t n, uint64_t *rng) {
    int64_t i;
    for (i = 0; i < n; i++) {
        uint64_t r = check_rng_next(rng);
        if (dtype == FADAM_FLOAT32) ((float *)out)[i] = (float)check_rng_normal(rng);
        else if (dtype == FADAM_BFLOAT16)
            ((uint16_t *)out)[i] = (uint16_t)((r & 0x8000) | ((118 + r % 10) << 7) | ((r >> 8) & 0x7F));
        else ((uint16_t *)out)[i] = (uint16_t)((r & 0x8000) | ((9 + r % 8) << 10) | ((r >> 8) & 0x3FF));
    }
}

static void model_destroy(model *m) {
    int i;
    fadam_destroy(m->opt);
    for (i = 0; i < N_TENSORS; i++) {
        free(m->params[i]);
        free(m->grads[i]);
    }
    memset(m, 0, sizeof *m);
}

/* "w" has 7 elements (the issue's [7] entry), "e" none, "s" one; "b" and "h" a random count. */
static int model_create(model *m, uint64_t seed, int64_t b_numel, int64_t h_numel) {
    fadam_hparams first = fadam_hparams_default(), second = fadam_hparams_default();
    fadam_fused_step_config fused = fadam_fused_step_config_default();
    uint64_t rng = seed;
    int i;
    memset(m, 0, sizeof *m);
    m->numel[0] = 7, m->numel[1] = b_numel, m->numel[2] = h_numel, m->numel[3] = 0, m->numel[4] = 1;
    first.lr = (float)(1e-4 + 1e-2 * check_rng_uniform(&rng));
    second.mode = FADAM_ADAM_L2;
    second.weight_decay = 0.0f;
    second.lr = (float)(1e-4 + 1e-2 * check_rng_uniform(&rng));
    fused.dynamic_loss_scaling = 1;
    fused.max_grad_norm = 1.0f;
    if (fadam_create(&m->opt, FADAM_DEVICE_CPU, 0, &first, NULL) != FADAM_SUCCESS ||
        fadam_add_group(m->opt, &second, NULL) != FADAM_SUCCESS)
        return 0;
    for (i = 0; i < N_TENSORS; i++) {
        m->params[i] = host_alloc((size_t)m->numel[i] * fadam_dtype_size(param_dtypes[i]));
        m->grads[i] = host_alloc((size_t)m->numel[i] * fadam_dtype_size(grad_dtypes[i]));
        if (!m->params[i] || !m->grads[i]) return 0;
        random_values(param_dtypes[i], m->params[i], m->numel[i], &rng);
        if (fadam_add_tensor(m->opt, tensor_names[i], m->params[i], m->grads[i], m->numel[i], param_dtypes[i],
                             grad_dtypes[i], tensor_groups[i], NULL) != FADAM_SUCCESS)
            return 0;
    }
    return fadam_configure_fused_step(m->opt, &fused) == FADAM_SUCCESS && fadam_finalize(m->opt, NULL) == FADAM_SUCCESS;
}

static int model_train(model *m, int steps, uint64_t *rng) {
    int s, i;
    for (s = 0; s < steps; s++) {
        for (i = 0; i < N_TENSORS; i++) random_values(grad_dtypes[i], m->grads[i], m->numel[i], rng);
        if (fadam_fused_step(m->opt, NULL) != FADAM_SUCCESS) return 0;
    }
    return 1;
}

/* ---- snapshots: everything a load could change, and the params it must not ---- */

typedef struct snapshot {
    unsigned char *params, *state;
    size_t params_bytes, state_bytes;
    int64_t step;
    int n_groups;
    fadam_hparams groups[FADAM_MAX_GROUPS];
    fadam_step_counters counters;
} snapshot;

static void snapshot_take(const model *m, snapshot *out) {
    size_t p = 0, s = 0;
    int i, g, kind;
    memset(out, 0, sizeof *out);
    for (i = 0; i < N_TENSORS; i++) {
        out->params_bytes += (size_t)m->numel[i] * fadam_dtype_size(param_dtypes[i]);
        out->state_bytes += 3 * (size_t)m->numel[i] * sizeof(float);
    }
    out->params = (unsigned char *)calloc(out->params_bytes + 1, 1);
    out->state = (unsigned char *)calloc(out->state_bytes + 1, 1);
    for (i = 0; i < N_TENSORS; i++) {
        float *pointers[3] = {NULL, NULL, NULL};
        size_t bytes = (size_t)m->numel[i] * fadam_dtype_size(param_dtypes[i]);
        memcpy(out->params + p, m->params[i], bytes);
        p += bytes;
        fadam_get_state(m->opt, i, &pointers[2], &pointers[0], &pointers[1]);
        for (kind = 0; kind < 3; kind++) {
            if (!pointers[kind]) continue;
            memcpy(out->state + s, pointers[kind], (size_t)m->numel[i] * sizeof(float));
            s += (size_t)m->numel[i] * sizeof(float);
        }
    }
    out->state_bytes = s;
    fadam_get_step(m->opt, &out->step);
    fadam_num_groups(m->opt, &out->n_groups);
    for (g = 0; g < out->n_groups; g++) fadam_get_hparams(m->opt, g, &out->groups[g]);
    fadam_read_step_counters(m->opt, &out->counters, NULL); /* host memory on the CPU: copied at once */
}

static void snapshot_free(snapshot *s) {
    free(s->params);
    free(s->state);
}

/* "" when equal (params too when `with_params`), else the first difference. */
static const char *snapshot_difference(const snapshot *a, const snapshot *b, int with_params) {
    static char why[160];
    int g;
    if (with_params && (a->params_bytes != b->params_bytes || memcmp(a->params, b->params, a->params_bytes) != 0))
        return "params";
    if (a->state_bytes != b->state_bytes || memcmp(a->state, b->state, a->state_bytes) != 0)
        return "moments or masters";
    if (a->step != b->step) {
        snprintf(why, sizeof why, "step %lld vs %lld", (long long)a->step, (long long)b->step);
        return why;
    }
    if (a->n_groups != b->n_groups) return "group count";
    for (g = 0; g < a->n_groups; g++)
        if (memcmp(&a->groups[g], &b->groups[g], sizeof a->groups[g]) != 0) {
            snprintf(why, sizeof why, "group %d hyperparameters", g);
            return why;
        }
    if (memcmp(&a->counters, &b->counters, sizeof a->counters) != 0) return "fused step counters";
    return "";
}

/* ---- a checkpoint taken apart (decoded strings) and put together again with a valid checksum ---- */

typedef struct blob {
    unsigned char *bytes;
    size_t size;
} blob;

typedef struct pair {
    char key[96], value[96];
} pair;

typedef struct entry {
    char name[64], dtype[16], shape[64];
    unsigned long long begin, end;
} entry;

typedef struct pieces {
    pair meta[96];
    int n_meta;
    entry entries[3 * N_TENSORS];
    int n_entries;
    const unsigned char *data;
    size_t data_size;
} pieces;

static size_t header_length_of(const unsigned char *bytes) {
    uint64_t length = 0;
    int i;
    for (i = 7; i >= 0; i--) length = length << 8 | bytes[i];
    return (size_t)length;
}

/* A string of our own writer's header at *at (no escapes: the test's names need none). */
static int read_plain_string(const char **at, char *out, size_t capacity) {
    const char *s = *at, *end;
    if (*s != '"' || !(end = strchr(s + 1, '"')) || (size_t)(end - s - 1) >= capacity || memchr(s, '\\', (size_t)(end - s)))
        return 0;
    memcpy(out, s + 1, (size_t)(end - s - 1));
    out[end - s - 1] = '\0';
    *at = end + 1;
    return 1;
}

/* Takes apart what fadam_save_bytes wrote: {"__metadata__":{"k":"v",...},"name":{...},...}. */
static int pieces_from(const blob *saved, pieces *out) {
    size_t length = header_length_of(saved->bytes);
    char *text = (char *)malloc(length + 1);
    const char *at = text;
    int ok = 0, used = 0;
    memset(out, 0, sizeof *out);
    memcpy(text, saved->bytes + 8, length);
    text[length] = '\0';
    out->data = saved->bytes + 8 + length;
    out->data_size = saved->size - 8 - length;
    if (strncmp(at, "{\"__metadata__\":{", 17) != 0) goto done;
    at += 17;
    while (*at == '"' && out->n_meta < (int)(sizeof out->meta / sizeof out->meta[0])) {
        pair *p = &out->meta[out->n_meta++];
        if (!read_plain_string(&at, p->key, sizeof p->key) || *at++ != ':' ||
            !read_plain_string(&at, p->value, sizeof p->value))
            goto done;
        if (*at == ',') at++;
    }
    if (*at++ != '}') goto done;
    while (*at == ',' && out->n_entries < 3 * N_TENSORS) {
        entry *e = &out->entries[out->n_entries++];
        char shape[48];
        at++;
        if (!read_plain_string(&at, e->name, sizeof e->name) ||
            sscanf(at, ":{\"dtype\":\"%15[^\"]\",\"shape\":[%47[^]]],\"data_offsets\":[%llu,%llu]}%n", e->dtype, shape,
                   &e->begin, &e->end, &used) != 4)
            goto done;
        snprintf(e->shape, sizeof e->shape, "[%s]", shape);
        at += used;
    }
    ok = *at == '}';
done:
    free(text);
    return ok;
}

static pair *find_pair(pieces *p, const char *key) {
    int i;
    for (i = 0; i < p->n_meta; i++)
        if (strcmp(p->meta[i].key, key) == 0) return &p->meta[i];
    return NULL;
}

static entry *find_entry(pieces *p, const char *name) {
    int i;
    for (i = 0; i < p->n_entries; i++)
        if (strcmp(p->entries[i].name, name) == 0) return &p->entries[i];
    return NULL;
}

static int compare_pairs(const void *a, const void *b) {
    return strcmp((*(const pair *const *)a)->key, (*(const pair *const *)b)->key);
}

static int compare_entries(const void *a, const void *b) {
    return strcmp((*(const entry *const *)a)->name, (*(const entry *const *)b)->name);
}

/* README.md's checksum (version 2): metadata but "checksum" in key order, then each entry in name order (name,
 * byte count, its pieces' digests), every string NUL-terminated. Ranges outside the data hash no bytes. */
static void checksum_of(const pieces *p, char hex[TEST_CHECKSUM_HEX + 1]) {
    const pair *pairs[96];
    const entry *entries[3 * N_TENSORS];
    test_checksum hash;
    int i;
    test_checksum_init(&hash);
    for (i = 0; i < p->n_meta; i++) pairs[i] = &p->meta[i];
    for (i = 0; i < p->n_entries; i++) entries[i] = &p->entries[i];
    qsort(pairs, (size_t)p->n_meta, sizeof pairs[0], compare_pairs);
    qsort(entries, (size_t)p->n_entries, sizeof entries[0], compare_entries);
    for (i = 0; i < p->n_meta; i++) {
        if (strcmp(pairs[i]->key, "checksum") == 0) continue;
        test_checksum_string(&hash, pairs[i]->key);
        test_checksum_string(&hash, pairs[i]->value);
    }
    for (i = 0; i < p->n_entries; i++) {
        const entry *e = entries[i];
        if (e->begin <= e->end && e->end <= p->data_size) {
            test_checksum_entry(&hash, e->name, p->data + e->begin, (size_t)(e->end - e->begin));
        } else { /* the framing with the claimed count, no bytes */
            char count[24];
            snprintf(count, sizeof count, "%llu", e->end - e->begin);
            test_checksum_string(&hash, e->name);
            test_checksum_string(&hash, count);
        }
    }
    test_checksum_hex(&hash, hex);
}

/* The header's JSON (malloc'd), with the checksum of what it holds. */
static char *header_json(const pieces *p) {
    char hex[TEST_CHECKSUM_HEX + 1], *text = NULL;
    size_t size = 0;
    FILE *out = open_memstream(&text, &size);
    int i;
    if (!out) return NULL;
    checksum_of(p, hex);
    fputs("{\"__metadata__\":{", out);
    for (i = 0; i < p->n_meta; i++) {
        const char *value = strcmp(p->meta[i].key, "checksum") == 0 ? NULL : p->meta[i].value;
        fprintf(out, "%s\"%s\":", i ? "," : "", p->meta[i].key);
        if (value) fprintf(out, "\"%s\"", value);
        else fprintf(out, "\"" TEST_CHECKSUM_PREFIX "%s\"", hex);
    }
    fputs("}", out);
    for (i = 0; i < p->n_entries; i++) {
        const entry *e = &p->entries[i];
        fprintf(out, ",\"%s\":{\"dtype\":\"%s\",\"shape\":%s,\"data_offsets\":[%llu,%llu]}", e->name, e->dtype, e->shape,
                e->begin, e->end);
    }
    fputs("}", out);
    fclose(out);
    return text;
}

/* Length prefix, `header` padded with spaces to `header_length` (0: to the next multiple of 8 of
 * the file offset), `data`. */
static blob make_blob(const char *header, size_t header_length, const unsigned char *data, size_t data_size) {
    size_t text = strlen(header);
    blob out = {NULL, 0};
    int i;
    if (header_length == 0) header_length = (8 + text + 7) / 8 * 8 - 8;
    if (header_length < text) return out;
    out.size = 8 + header_length + data_size;
    out.bytes = (unsigned char *)malloc(out.size + 1);
    if (!out.bytes) return out;
    for (i = 0; i < 8; i++) out.bytes[i] = (unsigned char)((uint64_t)header_length >> (8 * i));
    memcpy(out.bytes + 8, header, text);
    memset(out.bytes + 8 + text, ' ', header_length - text);
    if (data_size) memcpy(out.bytes + 8 + header_length, data, data_size);
    return out;
}

static blob from_pieces(const pieces *p) {
    char *header = header_json(p);
    blob out = {NULL, 0};
    if (header) out = make_blob(header, 0, p->data, p->data_size);
    free(header);
    return out;
}

/* `text` with its first `find` replaced (malloc'd); NULL when `find` is not there. */
static char *replace_once(const char *text, const char *find, const char *with) {
    const char *at = strstr(text, find);
    char *out;
    if (!at) return NULL;
    out = (char *)malloc(strlen(text) - strlen(find) + strlen(with) + 1);
    memcpy(out, text, (size_t)(at - text));
    strcpy(out + (at - text), with);
    strcat(out, at + strlen(find));
    return out;
}

/* p's checkpoint with one text edit of its header (refused before the checksum matters, or the
 * edit keeps what the checksum covers). Size 0 when `find` is not there. */
static blob edited(const pieces *p, const char *find, const char *with) {
    char *header = header_json(p), *changed = header ? replace_once(header, find, with) : NULL;
    blob out = {NULL, 0};
    if (changed) out = make_blob(changed, 0, p->data, p->data_size);
    free(header);
    free(changed);
    return out;
}

/* ---- loads: refused with status and message, the state untouched; or loaded ---- */

typedef struct context {
    model source, target;
    pieces good;
    blob source_saved, target_saved;
    snapshot before, source_state;
    char path[512];
} context;

static int write_file(const char *path, const blob *b) {
    FILE *file = fopen(path, "wb");
    int ok = file && (b->size == 0 || fwrite(b->bytes, 1, b->size, file) == b->size);
    if (file && fclose(file) != 0) ok = 0;
    return ok;
}

/* Puts the target back as it was (a load of its own checkpoint) and checks it is. */
static const char *restore_target(context *c) {
    static char why[300];
    snapshot after;
    why[0] = '\0';
    if (fadam_load_bytes(c->target.opt, c->target_saved.bytes, c->target_saved.size, NULL) != FADAM_SUCCESS) {
        snprintf(why, sizeof why, "restoring the target failed: %.200s", fadam_last_error_message());
        return why;
    }
    snapshot_take(&c->target, &after);
    snprintf(why, sizeof why, "%s", snapshot_difference(&c->before, &after, 1));
    snapshot_free(&after);
    return why;
}

/* One load through `through_file` or not; "" when it was refused as expected, else why not. */
static const char *refused_once(context *c, const blob *b, int through_file, fadam_status expected, const char *part1,
                                const char *part2) {
    static char why[900];
    char message[600];
    fadam_status status;
    snapshot after;
    const char *difference;
    if (through_file) {
        if (!write_file(c->path, b)) return "cannot write the temporary file";
        status = fadam_load(c->target.opt, c->path, NULL);
        unlink(c->path);
    } else {
        status = fadam_load_bytes(c->target.opt, b->size ? (const void *)b->bytes : (const void *)"", b->size, NULL);
    }
    snprintf(message, sizeof message, "%s", fadam_last_error_message());
    snapshot_take(&c->target, &after);
    difference = snapshot_difference(&c->before, &after, 1);
    why[0] = '\0';
    /* Loaded after all: put the target back so the next cases start from the same state. */
    if (status == FADAM_SUCCESS && restore_target(c)[0]) snprintf(message, sizeof message, "and restoring the target failed");
    if (status != expected)
        snprintf(why, sizeof why, "%s: status %s, expected %s; message: %.500s", through_file ? "fadam_load" : "fadam_load_bytes",
                 fadam_status_string(status), fadam_status_string(expected), message);
    else if ((part1 && !strstr(message, part1)) || (part2 && !strstr(message, part2)))
        snprintf(why, sizeof why, "%s: message lacks \"%.150s\"%s%.150s%s: %.500s",
                 through_file ? "fadam_load" : "fadam_load_bytes", part1 ? part1 : "", part2 ? " or \"" : "",
                 part2 ? part2 : "", part2 ? "\"" : "", message);
    else if (difference[0])
        snprintf(why, sizeof why, "%s: refused, but the state changed: %s", through_file ? "fadam_load" : "fadam_load_bytes",
                 difference);
    snapshot_free(&after);
    return why;
}

/* The case "hostile/NAME": `b` refused by both calls with `expected` and a message holding part1
 * and part2 (each optional). Frees b. */
static void expect_refused(context *c, const char *name, blob b, fadam_status expected, const char *part1,
                           const char *part2) {
    char case_name[160];
    int through_file;
    check_case_begin();
    CHECK(b.bytes != NULL, "the test could not build this case (an edit did not apply)");
    if (b.bytes)
        for (through_file = 0; through_file < 2; through_file++) {
            const char *why = refused_once(c, &b, through_file, expected, part1, part2);
            CHECK(why[0] == '\0', "%s", why);
        }
    free(b.bytes);
    snprintf(case_name, sizeof case_name, "hostile/%s", name);
    check_case_end(case_name);
}

/* The case "hostile/NAME": `b` loads through both calls and gives the source's state (the groups
 * too unless `groups_differ`); then the target is restored. Returns the loaded snapshot in *got
 * when given (free it). Frees b. */
static void expect_loads(context *c, const char *name, blob b, int groups_differ, snapshot *got) {
    char case_name[160];
    int through_file;
    check_case_begin();
    CHECK(b.bytes != NULL, "the test could not build this case");
    for (through_file = 0; b.bytes && through_file < 2; through_file++) {
        fadam_status status;
        snapshot after;
        const char *difference;
        if (through_file) {
            CHECK(write_file(c->path, &b), "cannot write the temporary file");
            status = fadam_load(c->target.opt, c->path, NULL);
            unlink(c->path);
        } else {
            status = fadam_load_bytes(c->target.opt, b.bytes, b.size, NULL);
        }
        CHECK(status == FADAM_SUCCESS, "%s: %s: %.400s", through_file ? "fadam_load" : "fadam_load_bytes",
              fadam_status_string(status), fadam_last_error_message());
        snapshot_take(&c->target, &after);
        {
            snapshot compared = after;
            if (groups_differ) memcpy(compared.groups, c->source_state.groups, sizeof compared.groups);
            difference = snapshot_difference(&c->source_state, &compared, 0);
            CHECK(difference[0] == '\0', "loaded state differs from the source's: %s", difference);
        }
        if (got && through_file) *got = after;
        else snapshot_free(&after);
        difference = restore_target(c);
        CHECK(difference[0] == '\0', "%s", difference);
    }
    free(b.bytes);
    snprintf(case_name, sizeof case_name, "hostile/%s", name);
    check_case_end(case_name);
}

/* ---- case builders ---- */

/* The good pieces with one metadata value changed (signed). */
static blob with_value(const context *c, const char *key, const char *value) {
    pieces p = c->good;
    pair *found = find_pair(&p, key);
    blob none = {NULL, 0};
    if (!found) return none;
    snprintf(found->value, sizeof found->value, "%s", value);
    return from_pieces(&p);
}

/* The good pieces with one entry's shape or offsets changed (signed). */
static blob with_shape(const context *c, const char *name, const char *shape) {
    pieces p = c->good;
    entry *found = find_entry(&p, name);
    blob none = {NULL, 0};
    if (!found) return none;
    snprintf(found->shape, sizeof found->shape, "%s", shape);
    return from_pieces(&p);
}

static blob with_offsets(const context *c, const char *name, unsigned long long begin, unsigned long long end) {
    pieces p = c->good;
    entry *found = find_entry(&p, name);
    blob none = {NULL, 0};
    if (!found) return none;
    found->begin = begin, found->end = end;
    return from_pieces(&p);
}

/* The entry's JSON text, "name":{...}, as header_json writes it. */
static void entry_text(const entry *e, char *out, size_t size) {
    snprintf(out, size, "\"%s\":{\"dtype\":\"%s\",\"shape\":%s,\"data_offsets\":[%llu,%llu]}", e->name, e->dtype, e->shape,
             e->begin, e->end);
}

/* `depth` copies of `open`, `inner`, `depth` copies of `close` (malloc'd). */
static char *nested(const char *open, const char *inner, const char *close, size_t depth) {
    size_t lo = strlen(open), li = strlen(inner), lc = strlen(close), i;
    char *out = (char *)malloc(depth * (lo + lc) + li + 1), *at = out;
    for (i = 0; i < depth; i++, at += lo) memcpy(at, open, lo);
    memcpy(at, inner, li);
    at += li;
    for (i = 0; i < depth; i++, at += lc) memcpy(at, close, lc);
    *at = '\0';
    return out;
}

/* The entry that ends last in the data. */
static const entry *last_entry(const pieces *p) {
    const entry *last = NULL;
    int i;
    for (i = 0; i < p->n_entries; i++)
        if (!last || p->entries[i].end > last->end) last = &p->entries[i];
    return last;
}

/* Runs fn(c) on a thread with a 512 KiB stack: a parser that recursed per nesting level would
 * overflow it at 100k levels. */
typedef struct small_stack_call {
    void (*fn)(context *);
    context *c;
} small_stack_call;

static void *small_stack_main(void *argument) {
    small_stack_call *call = (small_stack_call *)argument;
    call->fn(call->c);
    return NULL;
}

static int on_small_stack(void (*fn)(context *), context *c) {
    pthread_attr_t attributes;
    pthread_t thread;
    small_stack_call call;
    int ok;
    call.fn = fn, call.c = c;
    if (pthread_attr_init(&attributes) != 0) return 0;
    ok = pthread_attr_setstacksize(&attributes, (size_t)512 << 10) == 0 &&
         pthread_create(&thread, &attributes, small_stack_main, &call) == 0 && pthread_join(thread, NULL) == 0;
    pthread_attr_destroy(&attributes);
    return ok;
}

/* ---- the cases: one table of {name, how the bad bytes are built, status, message fragments}, walked
 * by one loop ---- */

typedef enum build_kind {
    BUILD_VALUE,           /* metadata value a set to b (signed) */
    BUILD_SHAPE,           /* entry a's shape set to b (signed) */
    BUILD_OFFSETS,         /* entry a's data_offsets set to b, "BEGIN,END" (signed) */
    BUILD_EDIT,            /* the first a in the header text replaced by b */
    BUILD_WRAP,            /* the header text between a and b */
    BUILD_HEADER,          /* the header text replaced by a */
    BUILD_DUPLICATE_ENTRY, /* entry w.exp_avg twice, the second key spelled a */
    BUILD_DUPLICATE_STEP,  /* metadata "step" twice, the second key spelled a */
    BUILD_DEEP,            /* 100k levels of `nesting` put in by the format b for the first a (a NULL: the header) */
    BUILD_CUSTOM           /* build(): the bytes, and a fragment computed from them (or "") */
} build_kind;

typedef struct hostile_case {
    const char *name;
    build_kind how;
    const char *a, *b;
    blob (*build)(context *c, char *expected, size_t size);
    fadam_status status;
    const char *part1, *part2; /* each optional; a custom build's fragment replaces part1 */
    int after;   /* > 0: part2 is "at byte N of the JSON", N this far past the end of the name "w.exp_avg" */
    int nesting; /* BUILD_DEEP: 1 {"a": ... 1 ... }, 2 [ ... 1 ... ], 3 { ... } */
} hostile_case;

static blob wrapped_header(const context *c, const char *before, const char *after) {
    char *header = header_json(&c->good), *text;
    blob b = {NULL, 0};
    if (!header) return b;
    text = (char *)malloc(strlen(header) + strlen(before) + strlen(after) + 1);
    sprintf(text, "%s%s%s", before, header, after);
    b = make_blob(text, 0, c->good.data, c->good.data_size);
    free(text);
    free(header);
    return b;
}

/* DEEP levels of nesting kind `nesting` (hostile_case.nesting), as `format` (a printf format with
 * one %s) in place of the first `find`; the whole header when find is NULL. */
static blob deep_edit(const context *c, int nesting, const char *find, const char *format) {
    static const char *const patterns[][3] = {{"{\"a\":", "1", "}"}, {"[", "1", "]"}, {"{", "", "}"}};
    const char *const *pattern = patterns[nesting - 1];
    char *deep = nested(pattern[0], pattern[1], pattern[2], DEEP), *value;
    blob b;
    if (!find) {
        b = make_blob(deep, 0, c->good.data, c->good.data_size);
        free(deep);
        return b;
    }
    value = (char *)malloc(strlen(deep) + strlen(format) + 1);
    sprintf(value, format, deep);
    b = edited(&c->good, find, value);
    free(value);
    free(deep);
    return b;
}

static blob shape_1xNx1_bf16_master(context *c, char *expected, size_t size) {
    char shape[64];
    snprintf(shape, sizeof shape, "[1,%lld,1]", (long long)c->target.numel[1]);
    snprintf(expected, size, "tensor 'b' master: shape %s has 3 dimensions", shape);
    return with_shape(c, "b.master", shape);
}

static blob offset_2_63(context *c, char *e, size_t n) {
    const entry *w = find_entry(&c->good, "w.exp_avg");
    char text[200];
    blob none = {NULL, 0};
    (void)e, (void)n;
    if (!w) return none;
    snprintf(text, sizeof text, "\"data_offsets\":[%llu,9223372036854775808]", w->begin);
    return edited(&c->good, "\"data_offsets\":[0,", text);
}

static blob shape_4096_digits(context *c, char *e, size_t n) {
    char *digits = nested("9", "", "", 4096), *shape = (char *)malloc(4096 + 16);
    blob b;
    (void)e, (void)n;
    sprintf(shape, "\"shape\":[%s]", digits);
    b = edited(&c->good, "\"shape\":[7]", shape);
    free(digits);
    free(shape);
    return b;
}

/* Entry w.exp_avg twice, the second copy's key spelled `second_key`. */
static blob duplicate_entry(context *c, const char *second_key) {
    const entry *w = find_entry(&c->good, "w.exp_avg");
    char original[256], text[700];
    blob none = {NULL, 0};
    if (!w) return none;
    entry_text(w, original, sizeof original);
    snprintf(text, sizeof text, "%s,%s%s", original, second_key, strchr(original, ':'));
    return edited(&c->good, original, text);
}

/* "step":"<value>" twice, the second key spelled `second_key`. */
static blob duplicate_step(context *c, const char *second_key) {
    const pair *step = find_pair(&c->good, "step");
    char value[160], text[700];
    blob none = {NULL, 0};
    if (!step) return none;
    snprintf(value, sizeof value, "\"step\":\"%s\"", step->value);
    snprintf(text, sizeof text, "%s,%s:\"%s\"", value, second_key, step->value);
    return edited(&c->good, value, text);
}

/* Raw NUL bytes: make_blob copies strlen bytes, so these are built by hand. */
static blob nul_byte_in_name(context *c, char *e, size_t n) {
    char *header = header_json(&c->good);
    const char *at = header ? strstr(header, "\"w.exp_avg\":") : NULL;
    blob b = from_pieces(&c->good);
    (void)e, (void)n;
    if (b.bytes && at) b.bytes[8 + (size_t)(at - header) + 10] = '\0';
    free(header);
    return b;
}
static blob nul_byte_padding(context *c, char *e, size_t n) {
    char *header = header_json(&c->good);
    blob b = {NULL, 0};
    (void)e, (void)n;
    if (!header) return b;
    b = make_blob(header, strlen(header) + 8, c->good.data, c->good.data_size);
    if (b.bytes) b.bytes[8 + strlen(header)] = '\0';
    free(header);
    return b;
}

static blob offsets_one_past_the_data(context *c, char *expected, size_t size) {
    const entry *last = last_entry(&c->good);
    blob none = {NULL, 0};
    if (!last) return none;
    snprintf(expected, size, "entry '%s': data_offsets [%llu, %llu] reach past the %zu data bytes", last->name,
             last->begin + 1, last->end + 1, c->good.data_size);
    return with_offsets(c, last->name, last->begin + 1, last->end + 1);
}
static blob offsets_begin_after_end(context *c, char *expected, size_t size) {
    const entry *w = find_entry(&c->good, "w.exp_avg");
    blob none = {NULL, 0};
    if (!w) return none;
    snprintf(expected, size, "entry 'w.exp_avg': data_offsets [%llu, %llu] end before they begin", w->end, w->begin);
    return with_offsets(c, "w.exp_avg", w->end, w->begin);
}
static blob offsets_begin_equals_end(context *c, char *e, size_t n) {
    const entry *w = find_entry(&c->good, "w.exp_avg");
    blob none = {NULL, 0};
    (void)e, (void)n;
    return w ? with_offsets(c, "w.exp_avg", w->begin, w->begin) : none;
}
/* The last entry moved 4 bytes back, into the one before it (the 4 bytes at the end are then
 * unclaimed, but the overlap comes first in offset order). */
static blob offsets_overlapping(context *c, char *expected, size_t size) {
    pieces p = c->good;
    entry *moved = (entry *)last_entry(&p);
    blob none = {NULL, 0};
    if (!moved) return none;
    moved->begin -= 4, moved->end -= 4;
    snprintf(expected, size, "and '%s' overlap in the data", moved->name);
    return from_pieces(&p);
}
/* The last entry moved 4 bytes on and the data grown by 4: a gap; `trailing`: then moved back with
 * the data 1 byte longer than the entries. */
static blob offsets_moved_on(context *c, int trailing, char *expected, size_t size) {
    pieces p = c->good;
    entry *moved = (entry *)last_entry(&p);
    unsigned char *grown;
    blob b = {NULL, 0};
    if (!moved) return b;
    grown = (unsigned char *)calloc(p.data_size + 4, 1);
    memcpy(grown, p.data, p.data_size);
    memmove(grown + moved->begin + 4, grown + moved->begin, moved->end - moved->begin);
    moved->begin += 4, moved->end += 4;
    p.data = grown, p.data_size += 4;
    snprintf(expected, size, "4 data bytes before entry '%s' belong to no entry", moved->name);
    if (trailing) {
        p.data_size -= 4 - 1;
        moved->begin -= 4, moved->end -= 4;
        expected[0] = '\0';
    }
    b = from_pieces(&p);
    free(grown);
    return b;
}
static blob offsets_gap(context *c, char *expected, size_t size) { return offsets_moved_on(c, 0, expected, size); }
static blob offsets_trailing_byte(context *c, char *expected, size_t size) {
    return offsets_moved_on(c, 1, expected, size);
}

/* The good header behind `header_length` (0: its own length), the 8 length bytes then set to `fill`
 * and the top one to `top_byte` (each when >= 0). */
static blob with_length(context *c, size_t header_length, int fill, int top_byte) {
    char *header = header_json(&c->good);
    blob b = {NULL, 0};
    if (!header) return b;
    b = make_blob(header, header_length, c->good.data, c->good.data_size);
    if (b.bytes && fill >= 0) memset(b.bytes, fill, 8);
    if (b.bytes && top_byte >= 0) b.bytes[7] = (unsigned char)top_byte;
    free(header);
    return b;
}
static blob length_one_past_the_limit(context *c, char *expected, size_t size) {
    snprintf(expected, size, "the header length %zu is over the %zu-byte limit", HEADER_LIMIT_BYTES + 1,
             HEADER_LIMIT_BYTES);
    return with_length(c, HEADER_LIMIT_BYTES + 1, -1, -1);
}
static blob length_zero(context *c, char *e, size_t n) {
    (void)e, (void)n;
    return with_length(c, 0, 0, -1);
}
static blob length_2_63(context *c, char *e, size_t n) {
    (void)e, (void)n;
    return with_length(c, 0, 0, 0x80);
}
static blob length_2_64_minus_1(context *c, char *e, size_t n) {
    (void)e, (void)n;
    return with_length(c, 0, 0xFF, -1);
}
static blob length_one_past_the_file(context *c, char *expected, size_t size) {
    blob b = with_length(c, 0, -1, -1);
    if (b.bytes) {
        uint64_t length = (uint64_t)(b.size - 8 + 1);
        int i;
        for (i = 0; i < 8; i++) b.bytes[i] = (unsigned char)(length >> (8 * i));
        snprintf(expected, size, "the header length %llu reaches past the end of the %zu-byte checkpoint",
                 (unsigned long long)length, b.size);
    }
    return b;
}

/* The good checkpoint cut to `keep` bytes (negative: that many bytes shorter; `in_header`: 1 byte
 * before the data). */
static blob truncated(context *c, long long keep, int in_header) {
    blob b = from_pieces(&c->good);
    if (!b.bytes) return b;
    if (in_header)
        b.size = 8 + header_length_of(b.bytes) - 1;
    else
        b.size = keep >= 0 ? (size_t)keep : b.size - (size_t)-keep;
    return b;
}
static blob truncated_to_nothing(context *c, char *e, size_t n) {
    (void)e, (void)n;
    return truncated(c, 0, 0);
}
static blob truncated_in_length(context *c, char *e, size_t n) {
    (void)e, (void)n;
    return truncated(c, 7, 0);
}
static blob truncated_in_header(context *c, char *e, size_t n) {
    (void)e, (void)n;
    return truncated(c, 0, 1);
}
static blob truncated_by_one(context *c, char *e, size_t n) {
    (void)e, (void)n;
    return truncated(c, -1, 0);
}

#define CORRUPT FADAM_ERR_CORRUPT
#define CUSTOM(fn) BUILD_CUSTOM, NULL, NULL, fn
static const hostile_case hostile_cases[] = {
    /* Byte ranges at and past the ends of the data. */
    {"offsets_one_past_the_data", CUSTOM(offsets_one_past_the_data), CORRUPT, NULL, NULL, 0, 0},
    {"offsets_begin_after_end", CUSTOM(offsets_begin_after_end), CORRUPT, NULL, NULL, 0, 0},
    {"offsets_begin_equals_end_for_data", CUSTOM(offsets_begin_equals_end), CORRUPT, "entry 'w.exp_avg': data_offsets",
     "span 0 bytes, but shape [7] of F32 needs 28", 0, 0},
    {"offsets_overlapping_entries", CUSTOM(offsets_overlapping), CORRUPT, NULL, NULL, 0, 0},
    {"offsets_gap_before_an_entry", CUSTOM(offsets_gap), CORRUPT, NULL, NULL, 0, 0},
    {"offsets_trailing_data_byte", CUSTOM(offsets_trailing_byte), CORRUPT, "the last 1 data bytes belong to no entry",
     NULL, 0, 0},
    /* Defect 8: a shape must be exactly [numel], as the optimizer saves it. */
    {"shape_7x1_for_a_7_element_entry", BUILD_SHAPE, "w.exp_avg", "[7,1]", NULL, CORRUPT,
     "tensor 'w' exp_avg: shape [7,1] has 2 dimensions", "saves [7]", 0, 0},
    {"shape_1x7_for_a_7_element_entry", BUILD_SHAPE, "w.exp_avg_sq", "[1,7]", NULL, CORRUPT,
     "tensor 'w' exp_avg_sq: shape [1,7] has 2 dimensions", "saves [7]", 0, 0},
    {"shape_1xNx1_for_a_bf16_master", CUSTOM(shape_1xNx1_bf16_master), CORRUPT, NULL, NULL, 0, 0},
    {"shape_scalar_for_a_1_element_entry", BUILD_SHAPE, "s.exp_avg", "[]", NULL, CORRUPT,
     "tensor 's' exp_avg: shape [] has 0 dimensions", "saves [1]", 0, 0},
    {"shape_0x3_for_an_empty_entry", BUILD_SHAPE, "e.exp_avg", "[0,3]", NULL, CORRUPT,
     "tensor 'e' exp_avg: shape [0,3] has 2 dimensions", "saves [0]", 0, 0},
    /* Defect 8: numbers out of a float's range in the metadata; rounding is fine, 0 or Inf is not. */
    {"float_1e-999_underflows", BUILD_VALUE, "group.0.lr", "1e-999", NULL, CORRUPT, "\"group.0.lr\" is \"1e-999\"",
     "underflows to 0", 0, 0},
    {"float_1e-46_underflows", BUILD_VALUE, "group.1.weight_decay", "1e-46", NULL, CORRUPT,
     "\"group.1.weight_decay\" is \"1e-46\"", "underflows to 0", 0, 0},
    {"float_long_zero_fraction_then_digit_underflows", BUILD_VALUE, "group.0.eps",
     "0.00000000000000000000000000000000000000000000001", NULL, CORRUPT, "\"group.0.eps\"", "underflows to 0", 0, 0},
    {"float_1e999_overflows", BUILD_VALUE, "group.0.lr", "1e999", NULL, CORRUPT, "\"group.0.lr\" is \"1e999\"",
     "overflows to infinity", 0, 0},
    {"float_minus_1e999_overflows", BUILD_VALUE, "group.1.eps", "-1e999", NULL, CORRUPT,
     "\"group.1.eps\" is \"-1e999\"", "overflows to infinity", 0, 0},
    {"float_3.5e38_overflows", BUILD_VALUE, "group.0.beta1", "3.5e38", NULL, CORRUPT, "\"group.0.beta1\" is \"3.5e38\"",
     "overflows to infinity", 0, 0},
    {"float_fused_grad_norm_1e-999", BUILD_VALUE, "fused.grad_norm", "1e-999", NULL, CORRUPT,
     "\"fused.grad_norm\" is \"1e-999\"", NULL, 0, 0},
    {"float_fused_clip_coef_1e999", BUILD_VALUE, "fused.clip_coef", "1e999", NULL, CORRUPT,
     "\"fused.clip_coef\" is \"1e999\"", NULL, 0, 0},
    /* Integers at 2^63-1, 2^63 and 2^64, in the JSON (offsets, shape) and in the metadata. */
    {"int_offset_2^63", CUSTOM(offset_2_63), CORRUPT, "malformed header: number larger than 2^63-1", NULL, 0, 0},
    {"int_offset_2^64", BUILD_EDIT, "\"data_offsets\":[0,", "\"data_offsets\":[18446744073709551616,", NULL, CORRUPT,
     "malformed header: number larger than 2^63-1", NULL, 0, 0},
    {"int_offset_2^64_plus_4_wraps_to_4", BUILD_EDIT, "\"data_offsets\":[0,",
     "\"data_offsets\":[0,18446744073709551620],\"x\":[0,", NULL, CORRUPT, "number larger than 2^63-1", NULL, 0, 0},
    {"int_offset_2^63-1", BUILD_OFFSETS, "e.exp_avg", "9223372036854775807,9223372036854775807", NULL, CORRUPT,
     "entry 'e.exp_avg': data_offsets [9223372036854775807, 9223372036854775807] reach past", NULL, 0, 0},
    {"int_offset_1e999", BUILD_EDIT, "\"data_offsets\":[0,", "\"data_offsets\":[1e999,", NULL, CORRUPT,
     "number is not an integer", NULL, 0, 0},
    {"int_offset_minus_zero", BUILD_EDIT, "\"data_offsets\":[0,", "\"data_offsets\":[-0,", NULL, CORRUPT,
     "negative number", NULL, 0, 0},
    {"int_shape_2^63", BUILD_SHAPE, "w.exp_avg", "[9223372036854775808]", NULL, CORRUPT, "number larger than 2^63-1",
     NULL, 0, 0},
    {"int_shape_2^64", BUILD_SHAPE, "w.exp_avg", "[18446744073709551616]", NULL, CORRUPT, "number larger than 2^63-1",
     NULL, 0, 0},
    {"int_shape_2^63-1_bytes_overflow", BUILD_SHAPE, "w.exp_avg", "[9223372036854775807]", NULL, CORRUPT,
     "shape [9223372036854775807] overflows 64 bits", NULL, 0, 0},
    {"int_shape_product_2^64", BUILD_SHAPE, "w.exp_avg", "[4294967296,4294967296]", NULL, CORRUPT,
     "shape [4294967296,4294967296] overflows 64 bits", NULL, 0, 0},
    {"int_shape_1e999", BUILD_SHAPE, "w.exp_avg", "[1e999]", NULL, CORRUPT, "number is not an integer", NULL, 0, 0},
    {"int_shape_4096_digits", CUSTOM(shape_4096_digits), CORRUPT, "number larger than 2^63-1", NULL, 0, 0},
    {"int_metadata_step_2^63", BUILD_VALUE, "step", "9223372036854775808", NULL, CORRUPT,
     "step \"9223372036854775808\" is not an integer in [0, 2^63-2]", NULL, 0, 0},
    {"int_metadata_step_2^64", BUILD_VALUE, "step", "18446744073709551616", NULL, CORRUPT,
     "step \"18446744073709551616\" is not an integer in [0, 2^63-2]", NULL, 0, 0},
    {"int_metadata_step_1e999", BUILD_VALUE, "step", "1e999", NULL, CORRUPT, "step \"1e999\" is not an integer", NULL,
     0, 0},
    {"int_metadata_n_groups_2^64", BUILD_VALUE, "n_groups", "18446744073709551618", NULL, CORRUPT,
     "n_groups \"18446744073709551618\"", NULL, 0, 0},
    {"int_metadata_group_index_2^64", BUILD_VALUE, "w.group", "18446744073709551616", NULL, CORRUPT,
     "\"w.group\" is \"18446744073709551616\", not a group index", NULL, 0, 0},
    {"int_metadata_fused_step_2^64", BUILD_VALUE, "fused.step", "18446744073709551616", NULL, CORRUPT,
     "\"fused.step\" is \"18446744073709551616\"", NULL, 0, 0},
    {"int_metadata_fused_skipped_total_2^63", BUILD_VALUE, "fused.skipped_total", "9223372036854775808", NULL, CORRUPT,
     "\"fused.skipped_total\" is \"9223372036854775808\"", NULL, 0, 0},
    /* Duplicate keys, plain and spelled through \u escapes (the comparison is on decoded strings). */
    {"duplicate_entry_plain", BUILD_DUPLICATE_ENTRY, "\"w.exp_avg\"", NULL, NULL, CORRUPT,
     "malformed header: duplicate key 'w.exp_avg'", NULL, 0, 0},
    {"duplicate_entry_via_u_escape", BUILD_DUPLICATE_ENTRY, "\"w.\\u0065xp_avg\"", NULL, NULL, CORRUPT,
     "malformed header: duplicate key 'w.exp_avg'", NULL, 0, 0},
    {"duplicate_entry_all_escaped_upper_hex", BUILD_DUPLICATE_ENTRY,
     "\"\\u0077\\u002E\\u0065\\u0078\\u0070\\u005F\\u0061\\u0076\\u0067\"", NULL, NULL, CORRUPT,
     "malformed header: duplicate key 'w.exp_avg'", NULL, 0, 0},
    {"duplicate_metadata_key_plain", BUILD_DUPLICATE_STEP, "\"step\"", NULL, NULL, CORRUPT,
     "malformed header: duplicate __metadata__ key 'step'", NULL, 0, 0},
    {"duplicate_metadata_key_via_u_escape", BUILD_DUPLICATE_STEP, "\"st\\u0065p\"", NULL, NULL, CORRUPT,
     "malformed header: duplicate __metadata__ key 'step'", NULL, 0, 0},
    {"duplicate_metadata_block_via_u_escape", BUILD_EDIT, "{\"__metadata__\":",
     "{\"__metadata__\":{},\"\\u005f_metadata__\":", NULL, CORRUPT, "duplicate key \"__metadata__\"", NULL, 0, 0},
    {"duplicate_entry_field_via_u_escape", BUILD_EDIT, "\"w.exp_avg\":{\"dtype\":\"F32\",",
     "\"w.exp_avg\":{\"dtype\":\"F32\",\"dt\\u0079pe\":\"F32\",", NULL, CORRUPT, "duplicate key \"dtype\"", NULL, 0, 0},
    {"duplicate_entry_field_shape", BUILD_EDIT, "\"w.exp_avg\":{\"dtype\":\"F32\",",
     "\"w.exp_avg\":{\"dtype\":\"F32\",\"shape\":[7],", NULL, CORRUPT, "duplicate key \"shape\"", NULL, 0, 0},
    /* 100k levels of nesting wherever a value may start: refused at the first level the schema does
     * not allow, never by recursion (the table runs on a small stack). */
    {"deep_objects_as_a_tensor_entry_field", BUILD_DEEP, "\"w.exp_avg\":{", "\"w.exp_avg\":%s,\"x\":{", NULL, CORRUPT,
     "unknown key in a tensor entry", NULL, 0, 1},
    {"deep_arrays_as_a_tensor_entry", BUILD_DEEP, "\"w.exp_avg\":", "\"w.exp_avg\":%s,\"x\":", NULL, CORRUPT,
     "a tensor entry is not an object", NULL, 0, 2},
    {"deep_arrays_as_a_metadata_value", BUILD_DEEP, "\"format\":", "\"format\":%s,\"y\":", NULL, CORRUPT,
     "a __metadata__ value is not a string", NULL, 0, 2},
    {"deep_arrays_in_a_shape", BUILD_DEEP, "\"shape\":[", "\"shape\":[%s,", NULL, CORRUPT, "expected an integer", NULL,
     0, 2},
    {"deep_objects_at_the_top", BUILD_DEEP, NULL, NULL, NULL, CORRUPT, "expected a string at byte 1", NULL, 0, 3},
    {"deep_objects_as_the_metadata", BUILD_DEEP, "{\"__metadata__\":{", "{\"__metadata__\":%s,", NULL, CORRUPT,
     "expected a string at byte 17", NULL, 0, 3},
    /* \u0000, raw NUL bytes, and surrogates that pair with nothing. The message gives the byte where
     * the parser stopped: just past the offending escape. */
    {"nul_escape_in_an_entry_name", BUILD_EDIT, "\"w.exp_avg\":", "\"w.exp_avg\\u0000\":", NULL, CORRUPT,
     "NUL (\\u0000) inside a string", NULL, 6, 0},
    {"nul_escape_in_a_metadata_key", BUILD_EDIT, "\"step\":", "\"step\\u0000\":", NULL, CORRUPT,
     "NUL (\\u0000) inside a string", NULL, 0, 0},
    {"nul_escape_in_a_metadata_value", BUILD_EDIT, "\"fusedadam.optimizer\"", "\"fusedadam.optimizer\\u0000\"", NULL,
     CORRUPT, "NUL (\\u0000) inside a string", NULL, 0, 0},
    {"nul_escape_in_a_field_name", BUILD_EDIT, "\"dtype\":", "\"dt\\u0000ype\":", NULL, CORRUPT,
     "NUL (\\u0000) inside a string", NULL, 0, 0},
    {"nul_byte_in_an_entry_name", CUSTOM(nul_byte_in_name), CORRUPT, "control character inside a string", NULL, 0, 0},
    {"nul_byte_as_padding", CUSTOM(nul_byte_padding), CORRUPT, "bytes after the JSON object", NULL, 0, 0},
    {"surrogate_high_at_the_end_of_a_string", BUILD_EDIT, "\"w.exp_avg\":", "\"w.exp_avg\\ud800\":", NULL, CORRUPT,
     "unpaired surrogate: high surrogate \\ud800 not followed by a \\u escape", NULL, 6, 0},
    {"surrogate_high_then_a_letter", BUILD_EDIT, "\"w.exp_avg\":", "\"w.exp_avg\\udbffx\":", NULL, CORRUPT,
     "unpaired surrogate: high surrogate \\udbff not followed by a \\u escape", NULL, 6, 0},
    {"surrogate_low_alone", BUILD_EDIT, "\"w.exp_avg\":", "\"w.exp_avg\\udc00\":", NULL, CORRUPT,
     "unpaired surrogate: low surrogate \\udc00 without a high one", NULL, 6, 0},
    {"surrogate_low_then_high", BUILD_EDIT, "\"step\":", "\"st\\uDFFF\\uD800ep\":", NULL, CORRUPT,
     "unpaired surrogate: low surrogate \\udfff without a high one", NULL, 0, 0},
    {"surrogate_high_then_non_low", BUILD_EDIT, "\"w.exp_avg\":", "\"w.exp_avg\\ud800\\u0041\":", NULL, CORRUPT,
     "high surrogate \\ud800 followed by \\u0041, not by a low surrogate", NULL, 6, 0},
    {"surrogate_high_then_high", BUILD_EDIT, "\"w.exp_avg\":", "\"w.exp_avg\\ud800\\udbff\":", NULL, CORRUPT,
     "high surrogate \\ud800 followed by \\udbff, not by a low surrogate", NULL, 0, 0},
    {"surrogate_high_then_bad_escape", BUILD_EDIT, "\"w.exp_avg\":", "\"w.exp_avg\\ud800\\u00\":", NULL, CORRUPT,
     "high surrogate \\ud800 not followed by a \\u escape", NULL, 0, 0},
    {"surrogate_encoded_raw_in_utf8", BUILD_EDIT, "\"w.exp_avg\":", "\"w.exp_avg\xed\xa0\x80\":", NULL, CORRUPT,
     "invalid UTF-8 in a string", NULL, 0, 0},
    /* The header length around its limit, and other impossible lengths. */
    {"header_length_one_past_the_limit", CUSTOM(length_one_past_the_limit), CORRUPT, NULL, NULL, 0, 0},
    {"header_length_zero", CUSTOM(length_zero), CORRUPT, "the header length is 0", NULL, 0, 0},
    {"header_length_2^63", CUSTOM(length_2_63), CORRUPT, "negative (-9223372036854775808 as a signed", NULL, 0, 0},
    {"header_length_2^64-1", CUSTOM(length_2_64_minus_1), CORRUPT, "negative (-1 as a signed", NULL, 0, 0},
    {"header_length_one_past_the_file", CUSTOM(length_one_past_the_file), CORRUPT, NULL, NULL, 0, 0},
    /* What surrounds the object: trailing bytes, other top-level values, truncation. */
    {"trailing_letter_after_the_object", BUILD_WRAP, "", "x", NULL, CORRUPT, "bytes after the JSON object", NULL, 0, 0},
    {"trailing_second_object", BUILD_WRAP, "", " {}", NULL, CORRUPT, "bytes after the JSON object", NULL, 0, 0},
    {"trailing_extra_brace", BUILD_WRAP, "", "}", NULL, CORRUPT, "bytes after the JSON object", NULL, 0, 0},
    {"top_level_array", BUILD_WRAP, "[", "]", NULL, CORRUPT, "the header does not start with '{'", NULL, 0, 0},
    {"top_level_string", BUILD_HEADER, "\"fusedadam\"", NULL, NULL, CORRUPT, "the header does not start with '{'", NULL,
     0, 0},
    {"top_level_number", BUILD_HEADER, "1e999", NULL, NULL, CORRUPT, "the header does not start with '{'", NULL, 0, 0},
    {"top_level_null", BUILD_HEADER, "null", NULL, NULL, CORRUPT, "the header does not start with '{'", NULL, 0, 0},
    {"top_level_empty_object", BUILD_HEADER, "{}", NULL, NULL, CORRUPT, "the last", NULL, 0, 0},
    {"truncated_to_nothing", CUSTOM(truncated_to_nothing), CORRUPT,
     "the checkpoint is 0 bytes, shorter than the 8-byte", NULL, 0, 0},
    {"truncated_inside_the_length", CUSTOM(truncated_in_length), CORRUPT, "the checkpoint is 7 bytes", NULL, 0, 0},
    {"truncated_inside_the_header", CUSTOM(truncated_in_header), CORRUPT, "reaches past the end of the", NULL, 0, 0},
    {"truncated_by_one_data_byte", CUSTOM(truncated_by_one), CORRUPT, "reach past the", NULL, 0, 0},
};
#undef CUSTOM
#undef CORRUPT

/* One case's bytes; *part1 replaced by a fragment the build computed. */
static blob build_case(context *c, const hostile_case *k, char *expected, size_t size) {
    unsigned long long begin = 0, end = 0;
    blob none = {NULL, 0};
    expected[0] = '\0';
    switch (k->how) {
    case BUILD_VALUE: return with_value(c, k->a, k->b);
    case BUILD_SHAPE: return with_shape(c, k->a, k->b);
    case BUILD_OFFSETS:
        if (sscanf(k->b, "%llu,%llu", &begin, &end) != 2) return none;
        return with_offsets(c, k->a, begin, end);
    case BUILD_EDIT: return edited(&c->good, k->a, k->b);
    case BUILD_WRAP: return wrapped_header(c, k->a, k->b);
    case BUILD_HEADER: return make_blob(k->a, 0, c->good.data, c->good.data_size);
    case BUILD_DUPLICATE_ENTRY: return duplicate_entry(c, k->a);
    case BUILD_DUPLICATE_STEP: return duplicate_step(c, k->a);
    case BUILD_DEEP: return deep_edit(c, k->nesting, k->a, k->b);
    case BUILD_CUSTOM: return k->build(c, expected, size);
    }
    return none;
}

/* Every row of hostile_cases, refused through both calls, the state untouched. */
static void refused_cases(context *c) {
    char *header = header_json(&c->good);
    const char *name_end = header ? strstr(header, "\"w.exp_avg\":") : NULL;
    size_t after_name = name_end ? (size_t)(name_end - header) + 10 : 0, i;
    for (i = 0; i < sizeof hostile_cases / sizeof hostile_cases[0]; i++) {
        const hostile_case *k = &hostile_cases[i];
        char computed[300], at[64];
        blob b = build_case(c, k, computed, sizeof computed);
        snprintf(at, sizeof at, "at byte %zu of the JSON", after_name + (size_t)k->after);
        expect_refused(c, k->name, b, k->status, computed[0] ? computed : k->part1, k->after ? at : k->part2);
    }
    free(header);
}

static void run_refused_cases(context *c) { refused_cases(c); }

/* What must load: the good checkpoint re-assembled, floats that round to a nonzero subnormal or to
 * 0 from a zero, the header length at its limit, a surrogate pair in a new signed key. */
static void loading_cases(context *c) {
    char *header = header_json(&c->good);
    snapshot got;
    if (!header) return;
    expect_loads(c, "offsets_last_entry_ends_at_the_data_size_loads", from_pieces(&c->good), 0, NULL);
    memset(&got, 0, sizeof got);
    expect_loads(c, "float_subnormal_1e-45_loads", with_value(c, "group.0.weight_decay", "1e-45"), 1, &got);
    {
        uint32_t bits = 0;
        check_case_begin();
        memcpy(&bits, &got.groups[0].weight_decay, sizeof bits);
        CHECK(bits == 1u, "group 0 weight_decay loaded as bits 0x%08x, want 0x00000001 (the smallest subnormal)", bits);
        check_case_end("hostile/float_subnormal_is_the_rounded_float");
        snapshot_free(&got);
    }
    expect_loads(c, "float_zero_with_exponent_loads", with_value(c, "group.0.weight_decay", "0.000e-999"), 1, NULL);
    expect_loads(c, "header_length_at_the_limit_loads",
                 make_blob(header, HEADER_LIMIT_BYTES, c->good.data, c->good.data_size), 0, NULL);
    {
        /* A valid pair (U+1F600) in a new, signed metadata key: accepted and decoded to UTF-8. */
        pieces p = c->good;
        char *json, *escaped;
        blob b = {NULL, 0};
        snprintf(p.meta[p.n_meta].key, sizeof p.meta[0].key, "note\xf0\x9f\x98\x80");
        snprintf(p.meta[p.n_meta].value, sizeof p.meta[0].value, "x");
        p.n_meta++;
        json = header_json(&p);
        escaped = json ? replace_once(json, "note\xf0\x9f\x98\x80", "note\\ud83d\\ude00") : NULL;
        if (escaped) b = make_blob(escaped, 0, p.data, p.data_size);
        expect_loads(c, "surrogate_pair_decodes_to_the_signed_key", b, 0, NULL);
        free(json);
        free(escaped);
    }
    free(header);
}

/* Defect 8: fadam_add_tensor refuses what a checkpoint cannot hold, at once, and changes nothing. */
static void name_cases(uint64_t seed) {
    static const struct {
        const char *what, *name;
        size_t bad_byte;
    } invalid[] = {{"byte_ff", "bad\xff", 3},
                   {"lone_continuation", "a\x80", 1},
                   {"overlong_slash", "x\xc0\xaf", 1},
                   {"overlong_3_bytes", "\xe0\x80\xaf", 0},
                   {"utf8_encoded_surrogate", "w\xed\xa0\x80", 1},
                   {"above_u10ffff", "\xf4\x90\x80\x80", 0},
                   {"five_byte_form", "\xf8\x88\x80\x80\x80", 0},
                   {"truncated_sequence_at_the_end", "layer.\xe2\x82", 6},
                   {"latin1_u_umlaut", "m\xfc" "ller", 1}};
    float param[8] = {0}, grad[8] = {0};
    fadam_optimizer *opt = NULL;
    char name[1100], expected[64];
    int64_t count = -1, index = -1;
    uint64_t rng = seed;
    size_t i;
    for (i = 0; i < sizeof invalid / sizeof invalid[0]; i++) {
        char case_name[128];
        fadam_status status;
        check_case_begin();
        CHECK(fadam_create(&opt, FADAM_DEVICE_CPU, 0, NULL, NULL) == FADAM_SUCCESS, "create");
        CHECK(fadam_add_tensor(opt, "first", param, grad, 4, FADAM_FLOAT32, FADAM_FLOAT32, 0, NULL) == FADAM_SUCCESS,
              "add first");
        status = fadam_add_tensor(opt, invalid[i].name, param + 4, grad + 4, 4, FADAM_FLOAT32, FADAM_FLOAT32, 0, &index);
        snprintf(expected, sizeof expected, "byte %zu of %zu", invalid[i].bad_byte, strlen(invalid[i].name));
        CHECK(status == FADAM_ERR_INVALID_VALUE, "status %s: %s", fadam_status_string(status), fadam_last_error_message());
        CHECK(strstr(fadam_last_error_message(), "tensor 1: the name is not valid UTF-8") &&
                  strstr(fadam_last_error_message(), expected),
              "message lacks \"not valid UTF-8\" or \"%s\": %s", expected, fadam_last_error_message());
        CHECK(index == -1, "index_out written on failure");
        CHECK(fadam_num_tensors(opt, &count) == FADAM_SUCCESS && count == 1, "%lld tensors after the refusal",
              (long long)count);
        CHECK(fadam_add_tensor(opt, "second", param + 4, grad + 4, 4, FADAM_FLOAT32, FADAM_FLOAT32, 0, &index) ==
                      FADAM_SUCCESS &&
                  index == 1,
              "a valid name after the refusal: %s", fadam_last_error_message());
        CHECK(fadam_finalize(opt, NULL) == FADAM_SUCCESS, "finalize: %s", fadam_last_error_message());
        fadam_destroy(opt);
        opt = NULL;
        index = -1;
        snprintf(case_name, sizeof case_name, "name/refused_at_add_tensor_%s", invalid[i].what);
        check_case_end(case_name);
    }

    /* What a checkpoint can hold: any UTF-8 (JSON escapes for quotes, backslashes and control
     * characters), up to 1024 bytes; they save and load. A random 1024-byte name of 1-4 byte chars. */
    check_case_begin();
    {
        static const char *pieces_utf8[] = {"a", "\"", "\\", "\n", "\x01", "\xc3\xbc", "\xe2\x82\xac", "\xf0\x9f\x98\x80",
                                            "\xf4\x8f\xbf\xbf", "/", " "};
        const char *names[3];
        fadam_optimizer *a = NULL, *b = NULL;
        unsigned char *saved = NULL;
        size_t used = 0, size = 0;
        int t;
        while (1) {
            const char *piece = pieces_utf8[check_rng_next(&rng) % (sizeof pieces_utf8 / sizeof pieces_utf8[0])];
            if (used + strlen(piece) > 1024) break;
            memcpy(name + used, piece, strlen(piece));
            used += strlen(piece);
        }
        while (used < 1024) name[used++] = 'z';
        name[used] = '\0';
        names[0] = name, names[1] = "q\"uote\\back\tslash\x7f", names[2] = "\xe4\xb8\xad\xe6\x96\x87";
        for (t = 0; t < 2; t++) {
            fadam_optimizer **opt_t = t ? &b : &a;
            int k;
            CHECK(fadam_create(opt_t, FADAM_DEVICE_CPU, 0, NULL, NULL) == FADAM_SUCCESS, "create");
            for (k = 0; k < 3; k++)
                CHECK(fadam_add_tensor(*opt_t, names[k], param + 2 * k, grad + 2 * k, 2, FADAM_FLOAT32,
                                       FADAM_FLOAT32, 0, NULL) == FADAM_SUCCESS,
                      "add %d: %s", k, fadam_last_error_message());
            CHECK(fadam_finalize(*opt_t, NULL) == FADAM_SUCCESS, "finalize: %s", fadam_last_error_message());
        }
        CHECK(fadam_step(a, NULL) == FADAM_SUCCESS, "step");
        CHECK(fadam_save_bytes(a, &size, NULL, 0, NULL) == FADAM_SUCCESS, "size: %s", fadam_last_error_message());
        saved = (unsigned char *)malloc(size + 1);
        CHECK(saved && fadam_save_bytes(a, &size, saved, size, NULL) == FADAM_SUCCESS, "save: %s",
              fadam_last_error_message());
        CHECK(saved && fadam_load_bytes(b, saved, size, NULL) == FADAM_SUCCESS, "load: %s", fadam_last_error_message());
        free(saved);
        fadam_destroy(a);
        fadam_destroy(b);
    }
    check_case_end("name/any_utf8_up_to_1024_bytes_saves_and_loads");

    check_case_begin();
    CHECK(fadam_create(&opt, FADAM_DEVICE_CPU, 0, NULL, NULL) == FADAM_SUCCESS, "create");
    memset(name, 'n', 1025);
    name[1025] = '\0';
    CHECK(fadam_add_tensor(opt, name, param, grad, 2, FADAM_FLOAT32, FADAM_FLOAT32, 0, NULL) == FADAM_ERR_INVALID_VALUE &&
              strstr(fadam_last_error_message(), "1 to 1024 bytes"),
          "1025 bytes: %s", fadam_last_error_message());
    CHECK(fadam_add_tensor(opt, "", param, grad, 2, FADAM_FLOAT32, FADAM_FLOAT32, 0, NULL) == FADAM_ERR_INVALID_VALUE &&
              strstr(fadam_last_error_message(), "1 to 1024 bytes"),
          "empty: %s", fadam_last_error_message());
    /* Duplicates are refused by finalize (before any step), also a name equal to an unnamed tensor's index. */
    CHECK(fadam_add_tensor(opt, "1", param, grad, 2, FADAM_FLOAT32, FADAM_FLOAT32, 0, NULL) == FADAM_SUCCESS, "add");
    CHECK(fadam_add_tensor(opt, NULL, param + 2, grad + 2, 2, FADAM_FLOAT32, FADAM_FLOAT32, 0, NULL) == FADAM_SUCCESS,
          "add");
    CHECK(fadam_finalize(opt, NULL) == FADAM_ERR_INVALID_VALUE && strstr(fadam_last_error_message(), "two tensors are named '1'"),
          "duplicate: %s", fadam_last_error_message());
    fadam_destroy(opt);
    check_case_end("name/length_and_duplicates_refused_before_training");
}

int main(void) {
    const char *tmp = getenv("TMPDIR");
    uint64_t seed = check_seed("test_checkpoint_hostile"), rng = seed;
    int64_t b_numel = 1 + (int64_t)(check_rng_next(&rng) % 300), h_numel = 1 + (int64_t)(check_rng_next(&rng) % 300);
    context c;
    memset(&c, 0, sizeof c);
    snprintf(temp_dir, sizeof temp_dir, "%s/fadam_hostile_XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
    if (!mkdtemp(temp_dir)) {
        printf("FAIL setup: mkdtemp(%s): %s\n", temp_dir, strerror(errno));
        return 1;
    }
    snprintf(c.path, sizeof c.path, "%s/hostile.safetensors", temp_dir);

    name_cases(seed + 1);

    check_case_begin();
    CHECK(model_create(&c.source, seed + 2, b_numel, h_numel), "source: %s", fadam_last_error_message());
    CHECK(model_create(&c.target, seed + 3, b_numel, h_numel), "target: %s", fadam_last_error_message());
    CHECK(model_train(&c.source, 2 + (int)(check_rng_next(&rng) % 4), &rng), "train: %s", fadam_last_error_message());
    CHECK(model_train(&c.target, 1 + (int)(check_rng_next(&rng) % 3), &rng), "train: %s", fadam_last_error_message());
    if (!check_case_failed) {
        size_t size = 0;
        fadam_save_bytes(c.source.opt, &size, NULL, 0, NULL);
        c.source_saved.bytes = (unsigned char *)malloc(size + 1);
        CHECK(fadam_save_bytes(c.source.opt, &size, c.source_saved.bytes, size, NULL) == FADAM_SUCCESS, "save: %s",
              fadam_last_error_message());
        c.source_saved.size = size;
        fadam_save_bytes(c.target.opt, &size, NULL, 0, NULL);
        c.target_saved.bytes = (unsigned char *)malloc(size + 1);
        CHECK(fadam_save_bytes(c.target.opt, &size, c.target_saved.bytes, size, NULL) == FADAM_SUCCESS, "save: %s",
              fadam_last_error_message());
        c.target_saved.size = size;
        CHECK(pieces_from(&c.source_saved, &c.good), "cannot take our own header apart (has the format changed?)");
    }
    if (!check_case_end("hostile/setup")) return 1;
    snapshot_take(&c.target, &c.before);
    snapshot_take(&c.source, &c.source_state);

    loading_cases(&c); /* first: its first case checks that a re-assembled checkpoint loads */
    check_case_begin();
    CHECK(on_small_stack(run_refused_cases, &c), "cannot start a thread with a 512 KiB stack");
    if (check_case_failed) check_case_end("hostile/small_stack_setup");

    snapshot_free(&c.before);
    snapshot_free(&c.source_state);
    free(c.source_saved.bytes);
    free(c.target_saved.bytes);
    model_destroy(&c.source);
    model_destroy(&c.target);
    rmdir(temp_dir);
    return check_exit_code();
}
