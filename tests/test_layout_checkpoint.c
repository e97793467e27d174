#define _GNU_SOURCE /* memmem */
/* test_layout_checkpoint.c - checkpoints of lean state layouts (issue 12): a save of every layout is a
 * valid safetensors file whose entries carry the layout's dtypes (checked with the library's own
 * header parser) and whose metadata records each group's layout; a round trip in the same layout is
 * bit for bit; a load into any other layout converts through fp32 within docs/STATE_LAYOUTS.md's
 * bounds (checked in float64 against the file's decoded values); a corrupt lean entry is refused with
 * the state unchanged; fadam_load_shards refuses what it cannot reassemble. States are filled with
 * random encoded values directly (no step): nothing depends on the update. Run under ASan/UBSan
 * (mk/layout_managed.mk). */
#include <math.h>
#include <unistd.h>

#include "check.h"
#include "fusedadam.h"
#include "safetensors.h"
#include "state_layout.h"

static uint64_t rng;

#define N_T 4
static const char *const names[N_T] = {"blk.a", "blk.b", "c", "lion.d"};
static const fadam_dtype dtypes[N_T] = {FADAM_BFLOAT16, FADAM_FLOAT16, FADAM_FLOAT32, FADAM_BFLOAT16};
static const int64_t numels[N_T] = {700, 300, 513, 260};
static const int groups_of[N_T] = {0, 0, 0, 1};

typedef struct model {
    fadam_optimizer *opt;
    void *params[N_T], *grads[N_T];
} model;

static void model_free(model *m) {
    int i;
    fadam_destroy(m->opt);
    for (i = 0; i < N_T; i++) free(m->params[i]), free(m->grads[i]);
    memset(m, 0, sizeof *m);
}

/* Two groups (AdamW, Lion), both with `layout`; params copied from `params_from` when given. */
static int model_make(model *m, const fadam_state_layout *layout, const model *params_from) {
    fadam_hparams lion = fadam_hparams_default_lion();
    int i, ok = 1;
    memset(m, 0, sizeof *m);
    ok &= fadam_create(&m->opt, FADAM_DEVICE_CPU, 0, NULL, NULL) == FADAM_SUCCESS;
    ok &= fadam_add_group(m->opt, &lion, NULL) == FADAM_SUCCESS;
    ok &= fadam_set_group_layout(m->opt, 0, layout) == FADAM_SUCCESS;
    ok &= fadam_set_group_layout(m->opt, 1, layout) == FADAM_SUCCESS;
    for (i = 0; i < N_T; i++) {
        size_t bytes = (size_t)numels[i] * fadam_dtype_size(dtypes[i]);
        int64_t j;
        m->params[i] = malloc(bytes);
        m->grads[i] = calloc((size_t)numels[i], 4);
        if (params_from) memcpy(m->params[i], params_from->params[i], bytes);
        else
            for (j = 0; j < numels[i]; j++) {
                float x = (float)(0.05 * check_rng_normal(&rng));
                uint32_t bits;
                memcpy(&bits, &x, 4);
                if (dtypes[i] == FADAM_FLOAT32) ((float *)m->params[i])[j] = x;
                else if (dtypes[i] == FADAM_BFLOAT16) ((uint16_t *)m->params[i])[j] = (uint16_t)(bits >> 16);
                else ((uint16_t *)m->params[i])[j] = (uint16_t)(0x2000u + (check_rng_next(&rng) & 0x1FFFu));
            }
        ok &= fadam_add_tensor(m->opt, names[i], m->params[i], m->grads[i], numels[i], dtypes[i], FADAM_FLOAT32,
                               groups_of[i], NULL) == FADAM_SUCCESS;
    }
    ok &= fadam_finalize(m->opt, NULL) == FADAM_SUCCESS;
    return ok;
}

/* A random moment value: m ~ N(0, 1e-3) with a wide spread, v = m^2-like (positive). */
static float random_moment(int second) {
    double x = 1e-3 * check_rng_normal(&rng) * exp(3.0 * check_rng_normal(&rng));
    return second ? (float)(x * x + 1e-12) : (float)x;
}

static void fill_moment(void *data, float *scales, fadam_moment_format format, int second, int64_t n) {
    int64_t j;
    for (j = 0; j < n; j++) {
        float x = random_moment(second);
        uint32_t bits;
        memcpy(&bits, &x, 4);
        if (format == FADAM_MOMENT_FP32) ((float *)data)[j] = x;
        else if (format == FADAM_MOMENT_BF16) ((uint16_t *)data)[j] = (uint16_t)(bits >> 16);
        else if (second) ((uint8_t *)data)[j] = (uint8_t)(check_rng_next(&rng) % 255);
        else ((int8_t *)data)[j] = (int8_t)((int)(check_rng_next(&rng) % 255) - 127);
    }
    if (format == FADAM_MOMENT_INT8)
        for (j = 0; j < (n + 255) / 256; j++) scales[j] = (float)(1e-3 * exp(2.0 * check_rng_normal(&rng)));
}

static void fill_state(model *m) {
    int i;
    for (i = 0; i < N_T; i++) {
        fadam_tensor t;
        int64_t j;
        fadam_get_tensor_state(m->opt, i, &t);
        fill_moment(t.exp_avg, t.exp_avg_scales, t.moment_format, 0, t.numel);
        if (t.exp_avg_sq) fill_moment(t.exp_avg_sq, t.exp_avg_sq_scales, t.moment_format, 1, t.numel);
        if (!t.master) continue;
        for (j = 0; j < t.numel; j++) {
            if (t.master_format == FADAM_MASTER_REMAINDER) {
                ((uint16_t *)t.master)[j] = (uint16_t)check_rng_next(&rng);
            } else {
                float p = dtypes[i] == FADAM_BFLOAT16
                              ? fadam_master_join(((uint16_t *)t.param)[j], 0)
                              : 1e-3f; /* any fp32 value; an fp16 param's master need not match it here */
                ((float *)t.master)[j] = p + (float)(1e-4 * check_rng_normal(&rng));
            }
        }
    }
}

/* One state of a tensor as double: field 0 master, 1 m, 2 v. */
static double state_value(const fadam_tensor *t, int which, int64_t j) {
    const void *data = which == 0 ? t->master : which == 1 ? t->exp_avg : t->exp_avg_sq;
    const float *scales = which == 1 ? t->exp_avg_scales : t->exp_avg_sq_scales;
    if (which == 0) {
        if (t->master_format == FADAM_MASTER_REMAINDER)
            return fadam_master_join(((const uint16_t *)t->param)[j], ((const uint16_t *)data)[j]);
        return ((const float *)data)[j];
    }
    if (t->moment_format == FADAM_MOMENT_FP32) return ((const float *)data)[j];
    if (t->moment_format == FADAM_MOMENT_BF16) return fadam_master_join(((const uint16_t *)data)[j], 0);
    if (which == 1) return fadam_q8_dequantize_m(((const int8_t *)data)[j], scales[j / 256]);
    return fadam_q8_dequantize_v(((const uint8_t *)data)[j], scales[j / 256]);
}

static size_t moment_bytes(fadam_moment_format f) { return f == FADAM_MOMENT_INT8 ? 1 : f == FADAM_MOMENT_BF16 ? 2 : 4; }

/* Every state byte of two optimizers of the same layout equal. */
static int same_bytes(const model *a, const model *b) {
    int i;
    for (i = 0; i < N_T; i++) {
        fadam_tensor x, y;
        size_t n, blocks;
        fadam_get_tensor_state(a->opt, i, &x);
        fadam_get_tensor_state(b->opt, i, &y);
        n = (size_t)x.numel * moment_bytes(x.moment_format);
        blocks = (size_t)(x.numel + 255) / 256 * 4;
        if (memcmp(x.exp_avg, y.exp_avg, n) || (x.exp_avg_sq && memcmp(x.exp_avg_sq, y.exp_avg_sq, n))) return 0;
        if (x.exp_avg_scales && memcmp(x.exp_avg_scales, y.exp_avg_scales, blocks)) return 0;
        if (x.exp_avg_sq_scales && memcmp(x.exp_avg_sq_scales, y.exp_avg_sq_scales, blocks)) return 0;
        if (x.master &&
            memcmp(x.master, y.master, (size_t)x.numel * (x.master_format == FADAM_MASTER_REMAINDER ? 2 : 4)))
            return 0;
    }
    return 1;
}

static unsigned char *save(const model *m, size_t *size) {
    unsigned char *buffer;
    if (fadam_save_bytes(m->opt, size, NULL, 0, NULL) != FADAM_SUCCESS) return NULL;
    buffer = (unsigned char *)malloc(*size);
    if (buffer && fadam_save_bytes(m->opt, size, buffer, *size, NULL) != FADAM_SUCCESS) {
        free(buffer);
        return NULL;
    }
    return buffer;
}

static const char *const master_word[2] = {"fp32", "remainder"};
static const char *const moment_word[3] = {"fp32", "bf16", "int8"};

/* The file's header, read by the library's own safetensors parser: each entry's dtype and shape. */
static void check_header(const unsigned char *file, size_t size, const fadam_state_layout *layout) {
    uint64_t length = 0;
    fadam_st_header header;
    size_t e, n_expected = 0;
    int i;
    memset(&header, 0, sizeof header);
    CHECK(fadam_safetensors_header_length(file, size, &length, "test") == FADAM_SUCCESS, "header length");
    CHECK(fadam_safetensors_parse((const char *)file + 8, (size_t)length, &header, "test") == FADAM_SUCCESS,
          "parse: %s", fadam_last_error_message());
    for (i = 0; i < N_T; i++) {
        int lion = groups_of[i] == 1, int8 = layout->moments == FADAM_MOMENT_INT8;
        int remainder = layout->master == FADAM_MASTER_REMAINDER && dtypes[i] == FADAM_BFLOAT16;
        struct {
            const char *suffix, *dtype;
            uint64_t numel;
            int present;
        } want[5] = {
            {".exp_avg", int8 ? "I8" : moment_word[layout->moments][0] == 'b' ? "BF16" : "F32", (uint64_t)numels[i], 1},
            {".exp_avg_sq", int8 ? "U8" : moment_word[layout->moments][0] == 'b' ? "BF16" : "F32", (uint64_t)numels[i],
             !lion},
            {".exp_avg.scales", "F32", (uint64_t)(numels[i] + 255) / 256, int8},
            {".exp_avg_sq.scales", "F32", (uint64_t)(numels[i] + 255) / 256, int8 && !lion},
            {remainder ? ".master_remainder" : ".master", remainder ? "U16" : "F32", (uint64_t)numels[i],
             dtypes[i] != FADAM_FLOAT32},
        };
        int k;
        for (k = 0; k < 5; k++) {
            char key[64];
            int found = 0;
            if (!want[k].present) continue;
            n_expected++;
            snprintf(key, sizeof key, "%s%s", names[i], want[k].suffix);
            for (e = 0; e < header.n_entries; e++)
                if (strcmp(header.entries[e].name, key) == 0) {
                    found = 1;
                    CHECK(strcmp(header.entries[e].dtype, want[k].dtype) == 0 && header.entries[e].numel == want[k].numel &&
                              header.entries[e].n_dims == 1,
                          "%s: dtype %s numel %llu, %s %llu expected", key, header.entries[e].dtype,
                          (unsigned long long)header.entries[e].numel, want[k].dtype,
                          (unsigned long long)want[k].numel);
                }
            CHECK(found, "no entry %s", key);
        }
    }
    CHECK(header.n_entries == n_expected, "%zu entries, %zu expected", header.n_entries, n_expected);
    /* The metadata records each group's layout, except the default one (files as before). */
    {
        int lean = layout->master != FADAM_MASTER_FP32 || layout->moments != FADAM_MOMENT_FP32 || layout->seed != 0;
        char seed[32];
        int found_master = 0, found_moments = 0, found_seed = 0;
        snprintf(seed, sizeof seed, "%llu", (unsigned long long)layout->seed);
        for (e = 0; e < header.n_metadata; e++) {
            const char *key = header.metadata[2 * e], *value = header.metadata[2 * e + 1];
            if (strcmp(key, "group.1.master_format") == 0) {
                found_master = 1;
                CHECK(strcmp(value, master_word[layout->master]) == 0, "master_format %s", value);
            }
            if (strcmp(key, "group.1.moment_format") == 0) {
                found_moments = 1;
                CHECK(strcmp(value, moment_word[layout->moments]) == 0, "moment_format %s", value);
            }
            if (strcmp(key, "group.1.seed") == 0) {
                found_seed = 1;
                CHECK(strcmp(value, seed) == 0, "seed %s", value);
            }
        }
        CHECK(found_master == lean && found_moments == lean && found_seed == lean,
              "layout keys present %d %d %d, expected %d", found_master, found_moments, found_seed, lean);
    }
    fadam_safetensors_free(&header);
}

static const fadam_state_layout all_layouts[6] = {
    {FADAM_MASTER_FP32, FADAM_MOMENT_FP32, 0},      {FADAM_MASTER_FP32, FADAM_MOMENT_BF16, 0},
    {FADAM_MASTER_FP32, FADAM_MOMENT_INT8, 0},      {FADAM_MASTER_REMAINDER, FADAM_MOMENT_FP32, 0},
    {FADAM_MASTER_REMAINDER, FADAM_MOMENT_BF16, 0}, {FADAM_MASTER_REMAINDER, FADAM_MOMENT_INT8, 0},
};

static void round_trip_per_layout(void) {
    int l;
    check_case_begin();
    for (l = 0; l < 6 && !check_case_failed; l++) {
        fadam_state_layout layout = all_layouts[l];
        model a, b;
        unsigned char *file;
        size_t size = 0;
        int64_t step = 0;
        layout.seed = l == 0 ? 0 : check_rng_next(&rng);
        CHECK(model_make(&a, &layout, NULL), "make a %d: %s", l, fadam_last_error_message());
        fill_state(&a);
        fadam_set_step(a.opt, 17);
        file = save(&a, &size);
        CHECK(file != NULL, "save %d: %s", l, fadam_last_error_message());
        if (file) check_header(file, size, &layout);
        CHECK(model_make(&b, &layout, &a), "make b");
        CHECK(file && fadam_load_bytes(b.opt, file, size, NULL) == FADAM_SUCCESS, "load %d: %s", l,
              fadam_last_error_message());
        CHECK(same_bytes(&a, &b), "layout %d: the state differs after a round trip", l);
        CHECK(fadam_get_step(b.opt, &step) == FADAM_SUCCESS && step == 17, "step %lld", (long long)step);
        free(file);
        model_free(&a);
        model_free(&b);
    }
    check_case_end("layout_checkpoint_round_trip_bitwise");
}

/* |got - want| within the target layout's bound for one value; `scale` is the 8-bit block's scale
 * (the absmax of the block's values as the file held them). */
static int within(double got, double want, int which, fadam_moment_format to, double scale) {
    double err = fabs(got - want);
    if (which == 0 || to == FADAM_MOMENT_FP32) return got == want; /* masters: exact both ways */
    if (to == FADAM_MOMENT_BF16) return err <= fabs(want) * 0x1p-8; /* round to nearest: half of 2^-7 relative */
    if (scale == 0) return got == 0;
    if (which == 1) {
        double a = sqrt(fabs(want) / scale), d = 0.5 / 127;
        return err <= scale * d * (2 * a + d) * (1 + 1e-5) + scale * 1e-7;
    } else {
        double b = pow(want / scale, 0.25), e = 0.5 / 254;
        return err <= scale * e * (2 * b + e) * (b * b + (b + e) * (b + e)) * (1 + 1e-5) + scale * 1e-7;
    }
}

static void cross_layout_loads(void) {
    int from, to;
    check_case_begin();
    for (from = 0; from < 6; from++)
        for (to = 0; to < 6 && !check_case_failed; to++) {
            fadam_state_layout lf = all_layouts[from], lt = all_layouts[to];
            model a, b;
            unsigned char *file;
            size_t size = 0;
            int i;
            lf.seed = check_rng_next(&rng), lt.seed = check_rng_next(&rng);
            CHECK(model_make(&a, &lf, NULL), "make a");
            fill_state(&a);
            file = save(&a, &size);
            /* The params restored first (the caller's): a remainder is joined with them. */
            CHECK(model_make(&b, &lt, &a), "make b");
            CHECK(file && fadam_load_bytes(b.opt, file, size, NULL) == FADAM_SUCCESS, "%d -> %d: %s", from, to,
                  fadam_last_error_message());
            for (i = 0; i < N_T && !check_case_failed; i++) {
                fadam_tensor x, y;
                int which;
                fadam_get_tensor_state(a.opt, i, &x);
                fadam_get_tensor_state(b.opt, i, &y);
                for (which = 0; which < 3; which++) {
                    int64_t j;
                    if ((which == 0 && !x.master) || (which == 2 && !x.exp_avg_sq)) continue;
                    for (j = 0; j < x.numel; j++) {
                        double want = state_value(&x, which, j), got = state_value(&y, which, j), scale = 0;
                        if (which > 0 && y.moment_format == FADAM_MOMENT_INT8) {
                            int64_t k, begin = j / 256 * 256;
                            for (k = begin; k < begin + 256 && k < x.numel; k++)
                                if (fabs(state_value(&x, which, k)) > scale) scale = fabs(state_value(&x, which, k));
                        }
                        if (!within(got, want, which, y.moment_format, scale)) {
                            CHECK(0, "%d -> %d: tensor %s state %d [%lld]: %.9g, file %.9g (scale %g)", from, to,
                                  names[i], which, (long long)j, got, want, scale);
                            break;
                        }
                    }
                }
                /* Into a remainder: the param is the master split (fadam_master_split), written by the load. */
                if (y.master_format == FADAM_MASTER_REMAINDER) {
                    int64_t j;
                    for (j = 0; j < y.numel; j++) {
                        uint16_t r, p = fadam_master_split((float)state_value(&x, 0, j), &r);
                        if (((const uint16_t *)y.param)[j] != p) {
                            CHECK(0, "%d -> %d: tensor %s param [%lld] not the master's split", from, to, names[i],
                                  (long long)j);
                            break;
                        }
                    }
                }
            }
            free(file);
            model_free(&a);
            model_free(&b);
        }
    check_case_end("layout_checkpoint_cross_layout_loads_within_bounds");
}

/* A lean entry of the wrong dtype, and a missing scales entry: refused, nothing changed. */
static void corrupt_lean_entries(void) {
    static const struct {
        int layout;
        const char *from, *to;
        fadam_status expected;
    } cases[] = {
        {2, "\"dtype\":\"I8\"", "\"dtype\":\"U8\"", FADAM_ERR_MISMATCH},
        {5, "\"dtype\":\"U16\"", "\"dtype\":\"I16\"", FADAM_ERR_MISMATCH},
        {4, "\"dtype\":\"BF16\"", "\"dtype\":\"F16\" ", FADAM_ERR_MISMATCH},
        {2, "exp_avg.scales", "exp_avg.scalez", FADAM_ERR_MISMATCH},
        {1, "group.0.moment_format\":\"bf16", "group.0.moment_format\":\"bf17", FADAM_ERR_CORRUPT},
    };
    size_t c;
    check_case_begin();
    for (c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        fadam_state_layout layout = all_layouts[cases[c].layout];
        model a, b, before;
        unsigned char *file, *hit;
        size_t size = 0;
        fadam_status status;
        layout.seed = 5;
        CHECK(model_make(&a, &layout, NULL) && model_make(&b, &layout, &a) && model_make(&before, &layout, &a), "make");
        fill_state(&a);
        fill_state(&b);
        file = save(&b, &size);
        CHECK(file && fadam_load_bytes(before.opt, file, size, NULL) == FADAM_SUCCESS, "copy of b");
        free(file);
        file = save(&a, &size);
        hit = file ? (unsigned char *)memmem(file, size, cases[c].from, strlen(cases[c].from)) : NULL;
        CHECK(hit != NULL, "case %zu: '%s' not in the file", c, cases[c].from);
        if (hit) memcpy(hit, cases[c].to, strlen(cases[c].to));
        status = hit ? fadam_load_bytes(b.opt, file, size, NULL) : FADAM_SUCCESS;
        CHECK(status == cases[c].expected, "case %zu: status %d, %d expected: %s", c, (int)status,
              (int)cases[c].expected, fadam_last_error_message());
        CHECK(same_bytes(&b, &before), "case %zu: the refused load changed the state", c);
        free(file);
        model_free(&a);
        model_free(&b);
        model_free(&before);
    }
    check_case_end("layout_checkpoint_corrupt_lean_entry_refused_unchanged");
}

/* fadam_load_shards: 8-bit moments and a change of layout are refused; bf16 moments reassemble. */
static void shards(void) {
    static const struct {
        int file_layout, own_layout;
        fadam_status expected;
    } cases[] = {{2, 2, FADAM_ERR_UNSUPPORTED_DTYPE}, {1, 0, FADAM_ERR_UNSUPPORTED_DTYPE}, {4, 4, FADAM_SUCCESS}};
    size_t c;
    check_case_begin();
    for (c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        fadam_state_layout lf = all_layouts[cases[c].file_layout], lo = all_layouts[cases[c].own_layout];
        model a, b;
        char path[64];
        const char *paths[1] = {path};
        fadam_status status;
        snprintf(path, sizeof path, "/tmp/fadam_layout_shard_%d_%zu.st", (int)getpid(), c);
        CHECK(model_make(&a, &lf, NULL) && model_make(&b, &lo, &a), "make");
        fill_state(&a);
        CHECK(fadam_save(a.opt, path, NULL) == FADAM_SUCCESS, "save: %s", fadam_last_error_message());
        status = fadam_load_shards(b.opt, paths, 1, NULL);
        CHECK(status == cases[c].expected, "case %zu: status %d: %s", c, (int)status, fadam_last_error_message());
        if (status == FADAM_SUCCESS) CHECK(same_bytes(&a, &b), "case %zu: reassembled state differs", c);
        remove(path);
        model_free(&a);
        model_free(&b);
    }
    check_case_end("layout_load_shards_refuses_int8_and_layout_change");
}

int main(void) {
    rng = check_seed("test_layout_checkpoint");
    round_trip_per_layout();
    cross_layout_loads();
    corrupt_lean_entries();
    shards();
    return check_failures_total ? 1 : 0;
}
