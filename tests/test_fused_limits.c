/* test_fused_limits.c - issue 9, defects 3 and 4, through the public API on the CPU device, built
 * with ASan/UBSan so that a signed overflow stops the program: the dynamic loss scale's floor and its
 * counter; fadam_set_step and checkpoints refuse a step or counter that cannot advance, and a loaded
 * loss scale or counter out of range. Every bad checkpoint is re-signed with a valid checksum (per
 * README.md's definition), so only the range checks can refuse it; the state must be bit-identical
 * before and after. */
#include <math.h>
#include <stdint.h>

#include "check.h"
#include "checkpoint_blob.h"
#include "fusedadam.h"
#include "checksum_v2.h"

static uint64_t rng;

/* ---- a small CPU optimizer: "w" fp32 (its own master), "b" bf16 with a master ---- */

#define W_N 6
#define B_N 3

typedef struct model {
    fadam_optimizer *opt;
    float w[W_N], w_grad[W_N], b_grad[B_N];
    uint16_t b[B_N];
} model;

static uint16_t bf16_of(float x) {
    uint32_t bits;
    memcpy(&bits, &x, 4);
    return (uint16_t)((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}

/* `config` NULL: no fused step. Returns 1 on success. */
static int model_create(model *m, const fadam_fused_step_config *config, int64_t start_step) {
    int i, ok;
    memset(m, 0, sizeof *m);
    for (i = 0; i < W_N; i++) m->w[i] = (float)check_rng_normal(&rng);
    for (i = 0; i < B_N; i++) m->b[i] = bf16_of((float)check_rng_normal(&rng));
    ok = fadam_create(&m->opt, FADAM_DEVICE_CPU, 0, NULL, NULL) == FADAM_SUCCESS &&
         fadam_add_tensor(m->opt, "w", m->w, m->w_grad, W_N, FADAM_FLOAT32, FADAM_FLOAT32, 0, NULL) == FADAM_SUCCESS &&
         fadam_add_tensor(m->opt, "b", m->b, m->b_grad, B_N, FADAM_BFLOAT16, FADAM_FLOAT32, 0, NULL) == FADAM_SUCCESS &&
         fadam_set_step(m->opt, start_step) == FADAM_SUCCESS &&
         (!config || fadam_configure_fused_step(m->opt, config) == FADAM_SUCCESS) &&
         fadam_finalize(m->opt, NULL) == FADAM_SUCCESS;
    return ok;
}

/* Gradients of about `scale`, or with one Inf when `overflow`. */
static void model_gradients(model *m, double scale, int overflow) {
    int i;
    for (i = 0; i < W_N; i++) m->w_grad[i] = (float)(scale * check_rng_normal(&rng));
    for (i = 0; i < B_N; i++) m->b_grad[i] = (float)(scale * check_rng_normal(&rng));
    if (overflow) m->w_grad[check_rng_next(&rng) % W_N] = INFINITY;
}

/* Everything a load may change, and the params. */
typedef struct snapshot {
    int64_t step;
    fadam_step_counters counters;
    fadam_hparams group;
    float state[2 * W_N + 3 * B_N];
    float w[W_N];
    uint16_t b[B_N];
} snapshot;

static void snapshot_take(const model *m, snapshot *s) {
    float *master, *exp_avg, *exp_avg_sq;
    memset(s, 0, sizeof *s);
    (void)fadam_get_step(m->opt, &s->step);
    (void)fadam_read_step_counters(m->opt, &s->counters, NULL); /* host memory: copied at once */
    (void)fadam_get_hparams(m->opt, 0, &s->group);
    if (fadam_get_state(m->opt, 0, &master, &exp_avg, &exp_avg_sq) == FADAM_SUCCESS) {
        memcpy(s->state, exp_avg, W_N * 4);
        memcpy(s->state + W_N, exp_avg_sq, W_N * 4);
    }
    if (fadam_get_state(m->opt, 1, &master, &exp_avg, &exp_avg_sq) == FADAM_SUCCESS) {
        memcpy(s->state + 2 * W_N, master, B_N * 4);
        memcpy(s->state + 2 * W_N + B_N, exp_avg, B_N * 4);
        memcpy(s->state + 2 * W_N + 2 * B_N, exp_avg_sq, B_N * 4);
    }
    memcpy(s->w, m->w, sizeof s->w);
    memcpy(s->b, m->b, sizeof s->b);
}

static int snapshot_equal(const snapshot *a, const snapshot *b) { return memcmp(a, b, sizeof *a) == 0; }

/* ---- checkpoints edited and re-signed ---- */

typedef struct pair {
    char key[64], value[96];
} pair;

typedef struct data_entry {
    char name[64];
    unsigned long long begin, end;
} data_entry;

static int compare_pairs(const void *a, const void *b) { return strcmp(((const pair *)a)->key, ((const pair *)b)->key); }
static int compare_entries(const void *a, const void *b) {
    return strcmp(((const data_entry *)a)->name, ((const data_entry *)b)->name);
}

/* Copies the JSON string at *p (no escapes in this model's header) and moves past it. */
static int read_string(const char **p, char *out, size_t capacity) {
    const char *end;
    if (**p != '"' || !(end = strchr(*p + 1, '"')) || (size_t)(end - *p - 1) >= capacity) return 0;
    memcpy(out, *p + 1, (size_t)(end - *p - 1));
    out[end - *p - 1] = '\0';
    *p = end + 1;
    return 1;
}

/* Recomputes the checksum as README.md defines it and writes it into the header. 1 on success. */
static int resign(blob *b) {
    size_t length = blob_header_length(b), n_pairs = 0, n_entries = 0, i;
    char *text = (char *)malloc(length + 1), *checksum;
    const char *p;
    pair pairs[64];
    data_entry entries[16];
    char hex[TEST_CHECKSUM_HEX + 1];
    test_checksum hash;
    int ok = 0;
    memcpy(text, b->bytes + 8, length);
    text[length] = '\0';
    p = text;
    if (strncmp(p, "{\"__metadata__\":{", 17) != 0) goto done;
    for (p += 17; *p == '"' && n_pairs < 64; n_pairs++) {
        if (!read_string(&p, pairs[n_pairs].key, sizeof pairs[n_pairs].key) || *p++ != ':' ||
            !read_string(&p, pairs[n_pairs].value, sizeof pairs[n_pairs].value))
            goto done;
        if (*p == ',') p++;
    }
    if (*p++ != '}') goto done;
    while (*p == ',' && n_entries < 16) {
        p++;
        if (!read_string(&p, entries[n_entries].name, sizeof entries[n_entries].name) ||
            !(p = strstr(p, "\"data_offsets\":[")) ||
            sscanf(p + 16, "%llu,%llu", &entries[n_entries].begin, &entries[n_entries].end) != 2 || !(p = strchr(p, '}')))
            goto done;
        p++;
        n_entries++;
    }
    qsort(pairs, n_pairs, sizeof *pairs, compare_pairs);
    qsort(entries, n_entries, sizeof *entries, compare_entries);
    test_checksum_init(&hash);
    for (i = 0; i < n_pairs; i++) {
        if (strcmp(pairs[i].key, "checksum") == 0) continue;
        test_checksum_string(&hash, pairs[i].key);
        test_checksum_string(&hash, pairs[i].value);
    }
    for (i = 0; i < n_entries; i++)
        test_checksum_entry(&hash, entries[i].name, b->bytes + 8 + length + entries[i].begin,
                            (size_t)(entries[i].end - entries[i].begin));
    test_checksum_hex(&hash, hex);
    if (!(checksum = strstr(text, "\"checksum\":\"" TEST_CHECKSUM_PREFIX))) goto done;
    memcpy(b->bytes + 8 + (size_t)(checksum - text) + strlen("\"checksum\":\"" TEST_CHECKSUM_PREFIX), hex, TEST_CHECKSUM_HEX);
    ok = 1;
done:
    free(text);
    return ok;
}

/* A re-signed copy of `good` whose "key" metadata value is `value` (value NULL: the key removed).
 * The header keeps its length where the padding allows. bytes NULL when the edit did not apply. */
static blob edited(const blob *good, const char *key, const char *value) {
    size_t length = blob_header_length(good), data = good->size - 8 - length, new_length;
    char find[96], *text = (char *)malloc(length + 1), *at, *value_end, *out_text;
    blob out = {NULL, 0};
    int i;
    memcpy(text, good->bytes + 8, length);
    text[length] = '\0';
    snprintf(find, sizeof find, "\"%s\":\"", key);
    if (!(at = strstr(text, find)) || !(value_end = strchr(at + strlen(find), '"'))) {
        free(text);
        return out;
    }
    out_text = (char *)malloc(length + 256);
    if (value) {
        memcpy(out_text, text, (size_t)(at - text) + strlen(find));
        strcpy(out_text + (at - text) + strlen(find), value);
        strcat(out_text, value_end);
    } else { /* drop "key":"value" and the comma after it (the key is never the last) */
        memcpy(out_text, text, (size_t)(at - text));
        strcpy(out_text + (at - text), value_end + 2);
    }
    /* Trailing padding absorbs the difference. */
    new_length = strlen(out_text);
    while (new_length > length && out_text[new_length - 1] == ' ') out_text[--new_length] = '\0';
    while (new_length < length) out_text[new_length++] = ' ';
    out.size = 8 + new_length + data;
    out.bytes = (unsigned char *)malloc(out.size);
    for (i = 0; i < 8; i++) out.bytes[i] = (unsigned char)((uint64_t)new_length >> (8 * i));
    memcpy(out.bytes + 8, out_text, new_length);
    memcpy(out.bytes + 8 + new_length, good->bytes + 8 + length, data);
    if (!resign(&out)) {
        free(out.bytes);
        out.bytes = NULL;
    }
    free(out_text);
    free(text);
    return out;
}

static fadam_fused_step_config dynamic_config(void) {
    fadam_fused_step_config c = fadam_fused_step_config_default();
    c.dynamic_loss_scaling = 1;
    c.max_grad_norm = 1.0f;
    c.growth_interval = 3;
    return c;
}

/* ---- defect 4: fadam_set_step and the steps at INT64_MAX ---- */

static void test_set_step_limits(void) {
    model plain, fused;
    fadam_fused_step_config config = fadam_fused_step_config_default();
    fadam_step_counters counters;
    snapshot before, after;
    int64_t step = -1;
    check_case_begin();
    CHECK(model_create(&plain, NULL, 0), "%s", fadam_last_error_message());
    CHECK(fadam_set_step(plain.opt, INT64_MAX) == FADAM_ERR_INVALID_VALUE &&
              strstr(fadam_last_error_message(), "cannot advance"),
          "set_step(INT64_MAX) accepted, or message '%s'", fadam_last_error_message());
    CHECK(fadam_get_step(plain.opt, &step) == FADAM_SUCCESS && step == 0, "a refused set_step moved the step to %lld",
          (long long)step);
    CHECK(fadam_set_step(plain.opt, INT64_MAX - 1) == FADAM_SUCCESS, "set_step(INT64_MAX - 1): %s",
          fadam_last_error_message());
    if (!check_case_failed) {
        model_gradients(&plain, 1e-2, 0);
        CHECK(fadam_step(plain.opt, NULL) == FADAM_SUCCESS, "the last step: %s", fadam_last_error_message());
        snapshot_take(&plain, &before);
        CHECK(fadam_step(plain.opt, NULL) == FADAM_ERR_BAD_STATE && strstr(fadam_last_error_message(), "INT64_MAX"),
              "a step at INT64_MAX: '%s'", fadam_last_error_message());
        snapshot_take(&plain, &after);
        CHECK(before.step == INT64_MAX && snapshot_equal(&before, &after), "a refused step changed the state");
    }
    fadam_destroy(plain.opt);
    /* The fused step: set before finalize; at INT64_MAX its step is skipped, nothing overflows. */
    memset(&fused, 0, sizeof fused);
    CHECK(fadam_create(&fused.opt, FADAM_DEVICE_CPU, 0, NULL, NULL) == FADAM_SUCCESS, "create");
    CHECK(fadam_configure_fused_step(fused.opt, &config) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    CHECK(fadam_set_step(fused.opt, INT64_MAX) == FADAM_ERR_INVALID_VALUE, "set_step(INT64_MAX) before finalize accepted");
    fadam_destroy(fused.opt);
    CHECK(model_create(&fused, &config, INT64_MAX - 1), "%s", fadam_last_error_message());
    if (!check_case_failed) {
        model_gradients(&fused, 1e-2, 0);
        CHECK(fadam_fused_step(fused.opt, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
        snapshot_take(&fused, &before);
        CHECK(fadam_fused_step(fused.opt, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
        CHECK(fadam_read_step_counters(fused.opt, &counters, NULL) == FADAM_SUCCESS, "counters");
        snapshot_take(&fused, &after);
        CHECK(before.counters.step == INT64_MAX && counters.step == INT64_MAX && counters.skipped == 1 &&
                  memcmp(before.state, after.state, sizeof before.state) == 0,
              "fused step at INT64_MAX: step %lld skipped %d", (long long)counters.step, counters.skipped);
    }
    fadam_destroy(fused.opt);
    check_case_end("set_step_int64_max_refused_and_no_overflow");
}

/* ---- defect 3: the loss scale's floor ---- */

static void test_config_floor(void) {
    model m;
    fadam_fused_step_config c;
    check_case_begin();
    memset(&m, 0, sizeof m);
    CHECK(fadam_create(&m.opt, FADAM_DEVICE_CPU, 0, NULL, NULL) == FADAM_SUCCESS, "create");
    CHECK(fadam_fused_step_config_default().min_loss_scale == 1.0f, "default min_loss_scale %g, want 1",
          fadam_fused_step_config_default().min_loss_scale);
#define BAD(field, value, needle)                                                                          \
    c = dynamic_config();                                                                                  \
    c.field = value;                                                                                       \
    CHECK(fadam_configure_fused_step(m.opt, &c) == FADAM_ERR_INVALID_VALUE &&                              \
              strstr(fadam_last_error_message(), needle),                                                  \
          "config %s=%s accepted or message '%s'", #field, #value, fadam_last_error_message())
    BAD(min_loss_scale, 0.0f, "min_loss_scale");
    BAD(min_loss_scale, -1.0f, "min_loss_scale");
    BAD(min_loss_scale, NAN, "min_loss_scale");
    BAD(min_loss_scale, INFINITY, "min_loss_scale");
    BAD(min_loss_scale, 1e-40f, "min_loss_scale"); /* its reciprocal is not a finite float */
    BAD(min_loss_scale, 131072.0f, "min_loss_scale"); /* above initial_loss_scale */
    BAD(growth_interval, (int64_t)INT32_MAX + 1, "growth_interval");
#undef BAD
    c = dynamic_config();
    c.min_loss_scale = 0x1p-126f;
    CHECK(fadam_configure_fused_step(m.opt, &c) == FADAM_SUCCESS, "min_loss_scale 2^-126: %s", fadam_last_error_message());
    c = fadam_fused_step_config_default();
    c.min_loss_scale = 0.0f; /* unused without dynamic loss scaling */
    CHECK(fadam_configure_fused_step(m.opt, &c) == FADAM_SUCCESS, "static scale: %s", fadam_last_error_message());
    fadam_destroy(m.opt);
    check_case_end("config_min_loss_scale_validated");
}

/* 200 overflows in a row: the scale stops at the floor (not 0), the counters show it, a clean step is
 * then applied, and the counters survive a save and load. */
static void test_floor_cpu(void) {
    model m, copy;
    fadam_fused_step_config config = fadam_fused_step_config_default();
    fadam_step_counters counters, loaded;
    snapshot before, after;
    blob saved;
    const int overflows = 200, to_floor = 16; /* 65536 * 0.5^16 = 1 */
    int s;
    check_case_begin();
    config.dynamic_loss_scaling = 1;
    CHECK(model_create(&m, &config, 0), "%s", fadam_last_error_message());
    snapshot_take(&m, &before);
    for (s = 0; s < overflows && !check_case_failed; s++) {
        model_gradients(&m, 1e-2, 1);
        CHECK(fadam_fused_step(m.opt, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
        CHECK(fadam_read_step_counters(m.opt, &counters, NULL) == FADAM_SUCCESS, "counters");
        CHECK(counters.loss_scale >= 1.0f, "overflow %d: loss scale %g under the floor", s + 1, counters.loss_scale);
    }
    snapshot_take(&m, &after);
    CHECK(memcmp(before.state, after.state, sizeof before.state) == 0 && memcmp(before.w, after.w, sizeof before.w) == 0,
          "an overflow step changed the state");
    CHECK(counters.loss_scale == 1.0f && counters.skipped_total == overflows &&
              counters.skipped_at_min_scale == overflows - to_floor && counters.step == 0,
          "after %d overflows: loss scale %g, skipped_total %lld, skipped_at_min_scale %lld (want %d), step %lld",
          overflows, counters.loss_scale, (long long)counters.skipped_total, (long long)counters.skipped_at_min_scale,
          overflows - to_floor, (long long)counters.step);
    saved = blob_of(m.opt);
    CHECK(saved.bytes != NULL, "save: %s", fadam_last_error_message());
    CHECK(model_create(&copy, &config, 0), "%s", fadam_last_error_message());
    CHECK(saved.bytes && fadam_load_bytes(copy.opt, saved.bytes, saved.size, NULL) == FADAM_SUCCESS &&
              fadam_read_step_counters(copy.opt, &loaded, NULL) == FADAM_SUCCESS &&
              memcmp(&loaded, &counters, sizeof loaded) == 0,
          "counters after save and load differ: %s", fadam_last_error_message());
    fadam_destroy(copy.opt);
    free(saved.bytes);
    model_gradients(&m, 1e-2, 0);
    CHECK(fadam_fused_step(m.opt, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    CHECK(fadam_read_step_counters(m.opt, &counters, NULL) == FADAM_SUCCESS, "counters");
    snapshot_take(&m, &after);
    CHECK(counters.skipped == 0 && counters.step == 1 && memcmp(before.w, after.w, sizeof before.w) != 0,
          "the clean step after the floor: skipped %d step %lld", counters.skipped, (long long)counters.step);
    fadam_destroy(m.opt);
    check_case_end("cpu_loss_scale_floor_after_200_overflows");
}

/* ---- defects 3 and 4 in checkpoints ---- */

/* Loads `bad` (freed here); expects FADAM_ERR_CORRUPT naming `needle`, and nothing changed. */
static void expect_refused(model *target, const char *name, blob bad, const char *needle) {
    snapshot before, after;
    fadam_status status;
    char case_name[160];
    check_case_begin();
    snprintf(case_name, sizeof case_name, "checkpoint_refuses/%s", name);
    snapshot_take(target, &before);
    CHECK(bad.bytes != NULL, "the test could not build this file");
    if (bad.bytes) {
        status = fadam_load_bytes(target->opt, bad.bytes, bad.size, NULL);
        CHECK(status == FADAM_ERR_CORRUPT && strstr(fadam_last_error_message(), needle), "status %s, message '%s'",
              fadam_status_string(status), fadam_last_error_message());
        snapshot_take(target, &after);
        CHECK(snapshot_equal(&before, &after), "a refused load changed the optimizer");
    }
    free(bad.bytes);
    check_case_end(case_name);
}

static void test_checkpoint_values(void) {
    static const struct {
        const char *name, *key, *value;
    } cases[] = {
        {"loss_scale_nan", "fused.loss_scale", "nan"},
        {"loss_scale_inf", "fused.loss_scale", "inf"},
        {"loss_scale_minus_inf", "fused.loss_scale", "-inf"},
        {"loss_scale_zero", "fused.loss_scale", "0"},
        {"loss_scale_negative", "fused.loss_scale", "-1"},
        {"loss_scale_subnormal", "fused.loss_scale", "1e-40"},
        {"step_int64_max", "step", "9223372036854775807"},
        {"fused_step_int64_max", "fused.step", "9223372036854775807"},
        {"fused_skipped_total_int64_max", "fused.skipped_total", "9223372036854775807"},
        {"clip_coef_above_1", "fused.clip_coef", "1.5"},
        {"clip_coef_negative", "fused.clip_coef", "-0.5"},
        {"clip_coef_nan", "fused.clip_coef", "nan"},
        {"lr_scale_above_1", "fused.lr_scale", "2"},
        {"lr_scale_inf", "fused.lr_scale", "inf"},
        {"grad_norm_negative", "fused.grad_norm", "-1"},
        {"grad_norm_nan_in_a_clean_step", "fused.grad_norm", "nan"},
        {"good_steps_int32_max", "fused.good_steps", "2147483647"},
        {"skipped_at_min_scale_above_skipped_total", "fused.skipped_at_min_scale", "3"},
    };
    fadam_fused_step_config config = dynamic_config();
    model source, target;
    blob good, same;
    fadam_step_counters counters;
    size_t i;
    int s, ok;
    /* Two skipped steps, then clean ones: skipped_total 2, the last step clean. */
    ok = model_create(&source, &config, 0) && model_create(&target, &config, 0);
    for (s = 0; ok && s < 5; s++) {
        model_gradients(&source, 1e-2 * 65536.0, s < 2);
        ok = fadam_fused_step(source.opt, NULL) == FADAM_SUCCESS;
    }
    for (s = 0; ok && s < 2; s++) {
        model_gradients(&target, 1e-2 * 65536.0, 0);
        ok = fadam_fused_step(target.opt, NULL) == FADAM_SUCCESS;
    }
    good = blob_of(source.opt);
    check_case_begin();
    CHECK(ok && good.bytes, "setup: %s", fadam_last_error_message());
    CHECK(fadam_read_step_counters(source.opt, &counters, NULL) == FADAM_SUCCESS && counters.skipped_total == 2 &&
              counters.skipped == 0,
          "setup: skipped_total %lld skipped %d", (long long)counters.skipped_total, counters.skipped);
    /* The re-signer agrees with the library: re-signing an unedited file changes no byte. */
    same = good.bytes ? edited(&good, "fused.step", "3") : (blob){NULL, 0};
    CHECK(same.bytes && same.size == good.size && memcmp(same.bytes, good.bytes, good.size) == 0,
          "the test's re-signer does not reproduce the library's checksum");
    free(same.bytes);
    check_case_end("checkpoint_resigner_matches_library");
    if (!ok || !good.bytes) {
        free(good.bytes);
        fadam_destroy(source.opt);
        fadam_destroy(target.opt);
        return;
    }
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++)
        expect_refused(&target, cases[i].name, edited(&good, cases[i].key, cases[i].value), cases[i].key);

    /* What the fused step itself can leave behind loads: a NaN norm in a skipped step, +Inf (a finite
     * norm past float's range), counters one below INT64_MAX, which then saturate without overflow. */
    check_case_begin();
    {
        blob b = edited(&good, "fused.grad_norm", "inf");
        CHECK(b.bytes && fadam_load_bytes(target.opt, b.bytes, b.size, NULL) == FADAM_SUCCESS, "grad_norm inf: %s",
              fadam_last_error_message());
        free(b.bytes);
        b = edited(&good, "fused.skipped", "1");
        if (b.bytes) {
            blob nan_norm = edited(&b, "fused.grad_norm", "nan");
            CHECK(nan_norm.bytes && fadam_load_bytes(target.opt, nan_norm.bytes, nan_norm.size, NULL) == FADAM_SUCCESS,
                  "grad_norm nan in a skipped step: %s", fadam_last_error_message());
            free(nan_norm.bytes);
        }
        free(b.bytes);
        b = edited(&good, "fused.step", "9223372036854775806");
        if (b.bytes) {
            blob both = edited(&b, "fused.skipped_total", "9223372036854775806");
            CHECK(both.bytes && fadam_load_bytes(target.opt, both.bytes, both.size, NULL) == FADAM_SUCCESS,
                  "counters at INT64_MAX - 1: %s", fadam_last_error_message());
            free(both.bytes);
        }
        free(b.bytes);
        for (s = 0; s < 4 && !check_case_failed; s++) { /* clean, clean (cannot advance), overflow, overflow */
            model_gradients(&target, 1e-2 * 65536.0, s >= 2);
            CHECK(fadam_fused_step(target.opt, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
        }
        CHECK(fadam_read_step_counters(target.opt, &counters, NULL) == FADAM_SUCCESS && counters.step == INT64_MAX &&
                  counters.skipped_total == INT64_MAX && counters.skipped == 1,
              "at the limits: step %lld skipped_total %lld", (long long)counters.step, (long long)counters.skipped_total);
    }
    check_case_end("checkpoint_logged_values_and_counters_below_limit_load");

    /* A checkpoint written before fused.skipped_at_min_scale existed loads, the counter 0. */
    check_case_begin();
    {
        blob old = edited(&good, "fused.skipped_at_min_scale", NULL);
        CHECK(old.bytes && old.size == good.size && fadam_load_bytes(target.opt, old.bytes, old.size, NULL) == FADAM_SUCCESS,
              "without fused.skipped_at_min_scale: %s", fadam_last_error_message());
        CHECK(fadam_read_step_counters(target.opt, &counters, NULL) == FADAM_SUCCESS &&
                  counters.skipped_at_min_scale == 0 && counters.skipped_total == 2,
              "counters: skipped_at_min_scale %lld skipped_total %lld", (long long)counters.skipped_at_min_scale,
              (long long)counters.skipped_total);
        free(old.bytes);
    }
    check_case_end("checkpoint_without_skipped_at_min_scale_loads");
    free(good.bytes);
    fadam_destroy(source.opt);
    fadam_destroy(target.opt);
}

int main(void) {
    rng = check_seed("test_fused_limits");
    test_config_floor();
    test_floor_cpu();
    test_checkpoint_values();
    test_set_step_limits(); /* last: before the fix UBSan stops the program at the overflow */
    return check_exit_code();
}
