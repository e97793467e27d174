/* test_fused_managed.c - the fused step through the public API: on the CPU device against a float64
 * oracle of its decisions (norm, clip, skip, loss scale, schedule) and bit for bit against the plain
 * reference step fed the same effective gradients and lr; with the default configuration, the Inf/NaN
 * skip and the reported norm (issue 9, defect 1), against a twin optimizer taking plain steps; on a GPU (when present) a step captured in a
 * CUDA graph and replayed N times against N eager fused steps, bit for bit. */
#include <math.h>

#include <cuda_runtime.h>

#include "check.h"
#include "fusedadam.h"
#include "dtype_values.h"
#include "internal.h"

static uint64_t rng;

#define N_TENSORS 12
#define STEPS 12

typedef struct tensor_data {
    int64_t numel;
    fadam_dtype param_dtype, grad_dtype;
    int group;
} tensor_data;



static fadam_fused_step_config test_config(void) {
    fadam_fused_step_config c = fadam_fused_step_config_default();
    c.max_grad_norm = 0.05f;
    c.dynamic_loss_scaling = 1;
    c.initial_loss_scale = 4096.0f;
    c.growth_interval = 4;
    c.schedule = FADAM_SCHEDULE_WARMUP_COSINE;
    c.warmup_steps = 3;
    c.total_steps = 10;
    c.min_lr_ratio = 0.1f;
    return c;
}

static void test_cpu_fused_step(void) {
    tensor_data shape[N_TENSORS];
    void *params[N_TENSORS], *grads[N_TENSORS];
    fadam_tensor mirror[N_TENSORS];
    fadam_hparams groups[2];
    fadam_fused_step_config config = test_config();
    fadam_optimizer *opt = NULL;
    const fadam_step_counters *live = NULL;
    float *masters[N_TENSORS], *ms[N_TENSORS], *vs[N_TENSORS];
    int i, step, expected_step = 0, expected_skipped = 0;
    double loss_scale = config.initial_loss_scale;
    int good_steps = 0;
    check_case_begin();
    groups[0] = fadam_hparams_default();
    groups[0].weight_decay = 0.1f;
    groups[1] = fadam_hparams_default();
    groups[1].weight_decay = 0.0f;
    CHECK(fadam_create(&opt, FADAM_DEVICE_CPU, 0, &groups[0], NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    CHECK(fadam_add_group(opt, &groups[1], NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    for (i = 0; i < N_TENSORS; i++) {
        static const fadam_dtype dtypes[2] = {FADAM_FLOAT32, FADAM_BFLOAT16};
        int64_t k;
        shape[i].numel = 1 + (int64_t)(check_rng_next(&rng) % 3000);
        shape[i].param_dtype = dtypes[check_rng_next(&rng) % 2];
        shape[i].grad_dtype = dtypes[check_rng_next(&rng) % 2];
        shape[i].group = i % 2;
        params[i] = malloc((size_t)shape[i].numel * 4);
        grads[i] = malloc((size_t)shape[i].numel * 4);
        memset(&mirror[i], 0, sizeof mirror[i]);
        mirror[i].numel = shape[i].numel;
        mirror[i].param_dtype = shape[i].param_dtype;
        mirror[i].grad_dtype = FADAM_FLOAT32; /* holds the effective (scaled) gradient */
        mirror[i].group = shape[i].group;
        mirror[i].param = malloc((size_t)shape[i].numel * 4);
        mirror[i].grad = malloc((size_t)shape[i].numel * 4);
        mirror[i].master = shape[i].param_dtype == FADAM_FLOAT32 ? NULL : (float *)malloc((size_t)shape[i].numel * 4);
        mirror[i].exp_avg = (float *)calloc((size_t)shape[i].numel, 4);
        mirror[i].exp_avg_sq = (float *)calloc((size_t)shape[i].numel, 4);
        for (k = 0; k < shape[i].numel; k++) {
            store_as(shape[i].param_dtype, params[i], k, (float)check_rng_normal(&rng));
            store_as(shape[i].param_dtype, mirror[i].param, k, load_as(shape[i].param_dtype, params[i], k));
            if (mirror[i].master) ((float *)mirror[i].master)[k] = load_as(shape[i].param_dtype, params[i], k);
        }
        CHECK(fadam_add_tensor(opt, NULL, params[i], grads[i], shape[i].numel, shape[i].param_dtype,
                               shape[i].grad_dtype, shape[i].group, NULL) == FADAM_SUCCESS,
              "%s", fadam_last_error_message());
    }
    CHECK(fadam_configure_fused_step(opt, &config) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    CHECK(fadam_finalize(opt, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    CHECK(fadam_step_counters_pointer(opt, &live) == FADAM_SUCCESS && live, "%s", fadam_last_error_message());
    for (i = 0; i < N_TENSORS; i++) CHECK(fadam_get_state(opt, i, &masters[i], &ms[i], &vs[i]) == FADAM_SUCCESS, "state");
    CHECK(fadam_set_step(opt, 5) == FADAM_ERR_BAD_STATE && strstr(fadam_last_error_message(), "fused"),
          "set_step after finalize with the fused step must be refused: %s", fadam_last_error_message());

    for (step = 1; step <= STEPS && !check_case_failed; step++) {
        int overflow = step == 5 || step == 6; /* two bad steps in a row */
        long double sum = 0.0L;
        double norm, clip;
        float inv_scale, grad_scale, lr_factor;
        fadam_step_counters counters;
        int64_t k;
        for (i = 0; i < N_TENSORS; i++)
            for (k = 0; k < shape[i].numel; k++) {
                float g = (float)(1e-2 * loss_scale * check_rng_normal(&rng));
                store_as(shape[i].grad_dtype, grads[i], k, g);
                g = load_as(shape[i].grad_dtype, grads[i], k);
                sum += (long double)g * g;
            }
        if (overflow) store_as(shape[3].grad_dtype, grads[3], 0, step == 5 ? NAN : -INFINITY);
        CHECK(fadam_fused_step(opt, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
        CHECK(fadam_read_step_counters(opt, &counters, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
        CHECK(memcmp(&counters, live, sizeof counters) == 0, "the counters pointer and the copy disagree");

        /* The oracle's decision. */
        inv_scale = (float)(1.0 / loss_scale);
        norm = (double)sqrtl(sum) * inv_scale;
        if (overflow) {
            expected_skipped++;
            loss_scale *= 0.5;
            good_steps = 0;
            CHECK(counters.skipped == 1 && counters.step == expected_step && counters.skipped_total == expected_skipped,
                  "step %d: skipped %d t %lld total %lld", step, counters.skipped, (long long)counters.step,
                  (long long)counters.skipped_total);
            CHECK(counters.loss_scale == (float)loss_scale, "step %d: loss scale %g, want %g", step, counters.loss_scale,
                  loss_scale);
        } else {
            expected_step++;
            clip = norm + 1e-6 > config.max_grad_norm ? config.max_grad_norm / (norm + 1e-6) : 1.0;
            CHECK(counters.skipped == 0 && counters.step == expected_step, "step %d: skipped %d t %lld", step,
                  counters.skipped, (long long)counters.step);
            CHECK(fabs(counters.grad_norm - norm) <= 1e-6 * norm, "step %d: norm %.9g, float64 %.9g", step,
                  counters.grad_norm, norm);
            CHECK(fabs(counters.clip_coef - clip) <= 1e-6 * clip, "step %d: clip %.9g, float64 %.9g", step,
                  counters.clip_coef, clip);
            lr_factor = expected_step <= 3 ? (float)(expected_step / 3.0)
                        : expected_step >= 10
                            ? 0.1f
                            : (float)(0.1 + 0.9 * 0.5 * (1 + cos(3.141592653589793 * (expected_step - 3) / 7.0)));
            CHECK(fabsf(counters.lr_scale - lr_factor) <= 1e-6f * lr_factor, "step %d: lr factor %.9g, want %.9g", step,
                  counters.lr_scale, lr_factor);
            /* The mirror: the plain reference step fed g * grad_scale and group lr * factor. */
            grad_scale = (float)((double)inv_scale * (double)counters.clip_coef);
            for (i = 0; i < N_TENSORS; i++)
                for (k = 0; k < shape[i].numel; k++)
                    ((float *)mirror[i].grad)[k] = load_as(shape[i].grad_dtype, grads[i], k) * grad_scale;
            {
                float lrs[2];
                fadam_step_source source = {0, NULL, NULL};
                lrs[0] = (float)((double)groups[0].lr * counters.lr_scale);
                lrs[1] = (float)((double)groups[1].lr * counters.lr_scale);
                source.step = expected_step;
                source.device_lr = lrs;
                CHECK(fadam_cpu_step(mirror, N_TENSORS, groups, 2, &source) == FADAM_SUCCESS, "%s",
                      fadam_last_error_message());
            }
            if (++good_steps == config.growth_interval) {
                loss_scale *= 2.0;
                good_steps = 0;
            }
            CHECK(counters.loss_scale == (float)loss_scale, "step %d: loss scale %g, want %g", step, counters.loss_scale,
                  loss_scale);
        }
        for (i = 0; i < N_TENSORS; i++) {
            size_t n = (size_t)shape[i].numel;
            if (memcmp(params[i], mirror[i].param, n * fadam_dtype_size(shape[i].param_dtype)) ||
                memcmp(ms[i], mirror[i].exp_avg, n * 4) || memcmp(vs[i], mirror[i].exp_avg_sq, n * 4) ||
                (masters[i] && memcmp(masters[i], mirror[i].master, n * 4))) {
                CHECK(0, "step %d: tensor %d differs from the reference fed the same effective gradient", step, i);
                break;
            }
        }
    }
    fadam_destroy(opt);
    for (i = 0; i < N_TENSORS; i++) {
        free(params[i]);
        free(grads[i]);
        free(mirror[i].param);
        free((void *)mirror[i].grad);
        free(mirror[i].master);
        free(mirror[i].exp_avg);
        free(mirror[i].exp_avg_sq);
    }
    check_case_end("cpu_fused_step_decisions_and_update");
}

static void test_fused_errors(void) {
    fadam_optimizer *opt = NULL;
    fadam_fused_step_config c = fadam_fused_step_config_default();
    float p[4] = {0}, g[4] = {0};
    fadam_step_counters counters;
    const fadam_step_counters *pointer = NULL;
    check_case_begin();
    CHECK(fadam_create(&opt, FADAM_DEVICE_CPU, 0, NULL, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    CHECK(fadam_add_tensor(opt, NULL, p, g, 4, FADAM_FLOAT32, FADAM_FLOAT32, 0, NULL) == FADAM_SUCCESS, "add");
#define BAD(field, value, needle)                                                                          \
    c = fadam_fused_step_config_default();                                                                 \
    c.field = value;                                                                                       \
    CHECK(fadam_configure_fused_step(opt, &c) == FADAM_ERR_INVALID_VALUE &&                                \
              strstr(fadam_last_error_message(), needle),                                                  \
          "config %s=%s accepted or message '%s'", #field, #value, fadam_last_error_message())
    BAD(max_grad_norm, -1.0f, "max_grad_norm");
    BAD(max_grad_norm, NAN, "max_grad_norm");
    BAD(dynamic_loss_scaling, 2, "dynamic_loss_scaling");
    BAD(schedule, (fadam_schedule_kind)9, "schedule");
    c = fadam_fused_step_config_default();
    c.dynamic_loss_scaling = 1;
    c.backoff_factor = 1.5f;
    CHECK(fadam_configure_fused_step(opt, &c) == FADAM_ERR_INVALID_VALUE, "backoff 1.5 accepted");
    c = fadam_fused_step_config_default();
    c.schedule = FADAM_SCHEDULE_WARMUP_COSINE;
    c.warmup_steps = 10;
    c.total_steps = 10;
    CHECK(fadam_configure_fused_step(opt, &c) == FADAM_ERR_INVALID_VALUE &&
              strstr(fadam_last_error_message(), "total_steps"),
          "total_steps == warmup_steps accepted");
#undef BAD
    CHECK(fadam_configure_fused_step(opt, NULL) == FADAM_ERR_NULL_POINTER, "NULL config");
    CHECK(fadam_finalize(opt, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    CHECK(fadam_fused_step(opt, NULL) == FADAM_ERR_BAD_STATE, "fused step without configuration");
    CHECK(fadam_read_step_counters(opt, &counters, NULL) == FADAM_ERR_BAD_STATE, "counters without configuration");
    CHECK(fadam_step_counters_pointer(opt, &pointer) == FADAM_ERR_BAD_STATE, "pointer without configuration");
    c = fadam_fused_step_config_default();
    CHECK(fadam_configure_fused_step(opt, &c) == FADAM_ERR_BAD_STATE, "configure after finalize accepted");
    CHECK(fadam_set_step(opt, 3) == FADAM_SUCCESS, "set_step without the fused step: %s", fadam_last_error_message());
    CHECK(p[0] == 0.0f, "a failed call changed a param");
    fadam_destroy(opt);
    check_case_end("fused_step_errors");
}

/* ---------------- the default configuration (issue 9, defect 1) ---------------- */

/* One CPU optimizer stepped by fadam_fused_step with the default configuration, and a twin over
 * copies of the same params (the same gradient buffers) stepped by plain fadam_step: every clean
 * fused step must equal a plain step bit for bit, every skipped one must change nothing. */
typedef struct twin_pair {
    fadam_optimizer *fused, *plain;
    int n;
    int64_t numel[8];
    fadam_dtype param_dtype[8], grad_dtype[8];
    void *params[2][8], *grads[8];
} twin_pair;

static int twin_create(twin_pair *t) {
    fadam_fused_step_config config = fadam_fused_step_config_default();
    int i, side, ok;
    ok = fadam_create(&t->fused, FADAM_DEVICE_CPU, 0, NULL, NULL) == FADAM_SUCCESS &&
         fadam_create(&t->plain, FADAM_DEVICE_CPU, 0, NULL, NULL) == FADAM_SUCCESS;
    for (i = 0; i < t->n && ok; i++) {
        int64_t k;
        t->grads[i] = calloc((size_t)t->numel[i] + 1, 4);
        for (side = 0; side < 2; side++) t->params[side][i] = malloc((size_t)t->numel[i] * 4 + 4);
        for (k = 0; k < t->numel[i]; k++) {
            store_as(t->param_dtype[i], t->params[0][i], k, (float)check_rng_normal(&rng));
            store_as(t->param_dtype[i], t->params[1][i], k, load_as(t->param_dtype[i], t->params[0][i], k));
        }
        for (side = 0; side < 2; side++)
            ok = ok && fadam_add_tensor(side ? t->plain : t->fused, NULL, t->params[side][i], t->grads[i], t->numel[i],
                                        t->param_dtype[i], t->grad_dtype[i], 0, NULL) == FADAM_SUCCESS;
    }
    return ok && fadam_configure_fused_step(t->fused, &config) == FADAM_SUCCESS &&
           fadam_finalize(t->fused, NULL) == FADAM_SUCCESS && fadam_finalize(t->plain, NULL) == FADAM_SUCCESS;
}

static void twin_destroy(twin_pair *t) {
    int i;
    fadam_destroy(t->fused);
    fadam_destroy(t->plain);
    for (i = 0; i < t->n; i++) {
        free(t->grads[i]);
        free(t->params[0][i]);
        free(t->params[1][i]);
    }
}

/* 1 when both optimizers hold the same params, masters and moments. */
static int twin_equal(const twin_pair *t) {
    int i;
    for (i = 0; i < t->n; i++) {
        float *state[2][3];
        size_t n = (size_t)t->numel[i];
        int side, kind;
        for (side = 0; side < 2; side++)
            if (fadam_get_state(side ? t->plain : t->fused, i, &state[side][0], &state[side][1], &state[side][2]) !=
                FADAM_SUCCESS)
                return 0;
        if (memcmp(t->params[0][i], t->params[1][i], n * fadam_dtype_size(t->param_dtype[i])) != 0) return 0;
        for (kind = 0; kind < 3; kind++)
            if (state[0][kind] && memcmp(state[0][kind], state[1][kind], n * 4) != 0) return 0;
    }
    return 1;
}

/* The smallest case of the issue: one fp32 tensor {1,2,3,4}, grads {0.5,-1,2,0}. */
static void test_default_config_smallest(void) {
    static const float params[4] = {1, 2, 3, 4}, grads[4] = {0.5f, -1, 2, 0};
    twin_pair t;
    fadam_step_counters counters;
    check_case_begin();
    memset(&t, 0, sizeof t);
    t.n = 1;
    t.numel[0] = 4;
    t.param_dtype[0] = t.grad_dtype[0] = FADAM_FLOAT32;
    CHECK(twin_create(&t), "%s", fadam_last_error_message());
    if (!check_case_failed) {
        memcpy(t.params[0][0], params, sizeof params);
        memcpy(t.params[1][0], params, sizeof params);
        memcpy(t.grads[0], grads, sizeof grads);
        CHECK(fadam_fused_step(t.fused, NULL) == FADAM_SUCCESS && fadam_step(t.plain, NULL) == FADAM_SUCCESS, "%s",
              fadam_last_error_message());
        CHECK(fadam_read_step_counters(t.fused, &counters, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
        CHECK(counters.grad_norm == (float)sqrt(5.25), "grad_norm %.9g, want sqrt(5.25) = %.9g", counters.grad_norm,
              sqrt(5.25));
        CHECK(counters.step == 1 && counters.skipped == 0, "step %lld skipped %d", (long long)counters.step,
              counters.skipped);
        CHECK(twin_equal(&t), "the fused step differs from the plain step");
        ((float *)t.grads[0])[1] = NAN;
        CHECK(fadam_fused_step(t.fused, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
        CHECK(fadam_read_step_counters(t.fused, &counters, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
        CHECK(twin_equal(&t), "a NaN gradient changed a parameter or moment");
        CHECK(counters.skipped == 1 && counters.skipped_total == 1 && counters.step == 1,
              "after a NaN gradient: skipped %d total %lld step %lld", counters.skipped,
              (long long)counters.skipped_total, (long long)counters.step);
    }
    twin_destroy(&t);
    check_case_end("cpu_default_config_reports_norm_and_skips_nan_smallest");
}

/* Random sizes and dtypes, a NaN/+Inf/-Inf at a random element: skipped; clean steps report the
 * norm (float64 oracle) and equal plain steps. */
static void test_default_config_random(void) {
    static const fadam_dtype dtypes[3] = {FADAM_FLOAT32, FADAM_BFLOAT16, FADAM_FLOAT16};
    static const float poisons[3] = {NAN, INFINITY, -INFINITY};
    int trial, round, i;
    check_case_begin();
    for (trial = 0; trial < 4 && !check_case_failed; trial++) {
        twin_pair t;
        int64_t expected_step = 0;
        memset(&t, 0, sizeof t);
        t.n = 1 + (int)(check_rng_next(&rng) % 8);
        for (i = 0; i < t.n; i++) {
            t.numel[i] = (int64_t)(check_rng_next(&rng) % 5000);
            t.param_dtype[i] = dtypes[check_rng_next(&rng) % 3];
            t.grad_dtype[i] = dtypes[check_rng_next(&rng) % 3];
        }
        if (t.numel[0] == 0) t.numel[0] = 1; /* an element to poison */
        CHECK(twin_create(&t), "%s", fadam_last_error_message());
        for (round = 0; round < 3 && !check_case_failed; round++) {
            long double sum = 0.0L;
            fadam_step_counters counters;
            int64_t k;
            int victim;
            for (i = 0; i < t.n; i++)
                for (k = 0; k < t.numel[i]; k++) {
                    float g;
                    store_as(t.grad_dtype[i], t.grads[i], k, (float)(1e-2 * check_rng_normal(&rng)));
                    g = load_as(t.grad_dtype[i], t.grads[i], k);
                    sum += (long double)g * g;
                }
            expected_step++;
            CHECK(fadam_fused_step(t.fused, NULL) == FADAM_SUCCESS && fadam_step(t.plain, NULL) == FADAM_SUCCESS, "%s",
                  fadam_last_error_message());
            CHECK(fadam_read_step_counters(t.fused, &counters, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
            CHECK(!counters.skipped && counters.step == expected_step, "trial %d: a clean step skipped", trial);
            CHECK(fabs(counters.grad_norm - (double)sqrtl(sum)) <= 1e-6 * (double)sqrtl(sum),
                  "trial %d: grad_norm %.9g, float64 %.9g", trial, counters.grad_norm, (double)sqrtl(sum));
            CHECK(twin_equal(&t), "trial %d: the fused step differs from the plain step", trial);
            do victim = (int)(check_rng_next(&rng) % (uint64_t)t.n);
            while (t.numel[victim] == 0);
            store_as(t.grad_dtype[victim], t.grads[victim], (int64_t)(check_rng_next(&rng) % (uint64_t)t.numel[victim]),
                     poisons[check_rng_next(&rng) % 3]);
            CHECK(fadam_fused_step(t.fused, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
            CHECK(fadam_read_step_counters(t.fused, &counters, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
            CHECK(twin_equal(&t), "trial %d: a non-finite gradient changed the state", trial);
            CHECK(counters.skipped == 1 && counters.skipped_total == round + 1 && counters.step == expected_step &&
                      !(counters.grad_norm <= 3e38f),
                  "trial %d: skipped %d total %lld step %lld norm %g", trial, counters.skipped,
                  (long long)counters.skipped_total, (long long)counters.step, counters.grad_norm);
        }
        twin_destroy(&t);
    }
    check_case_end("cpu_default_config_random_nonfinite_skips");
}

/* ---------------- GPU: graph capture ---------------- */
#define CUDA_OK(call) CHECK((call) == cudaSuccess, "%s: %s", #call, cudaGetErrorString(cudaGetLastError()))

static void test_graph_capture_gpu(void) {
    const char *name = "cuda_graph_replay_equals_eager_fused_steps";
    enum { N = 9, REPLAYS = 10 };
    fadam_optimizer *opt[2] = {NULL, NULL};
    void *params[2][N], *grads[2][N];
    int64_t numel[N];
    fadam_dtype pdt[N];
    fadam_fused_step_config config = test_config();
    cudaStream_t stream;
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    fadam_step_counters counters[2];
    int i, side, r;
    if (fadam_cuda_device_count() == 0) {
        check_skip(name, "no CUDA device");
        return;
    }
    check_case_begin();
    CUDA_OK(cudaStreamCreate(&stream));
    for (side = 0; side < 2; side++) {
        CHECK(fadam_create(&opt[side], FADAM_DEVICE_CUDA, 0, NULL, NULL) == FADAM_SUCCESS, "%s",
              fadam_last_error_message());
        CHECK(fadam_configure_fused_step(opt[side], &config) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    }
    for (i = 0; i < N; i++) {
        numel[i] = 1 + (int64_t)(check_rng_next(&rng) % 300000);
        pdt[i] = i % 2 ? FADAM_BFLOAT16 : FADAM_FLOAT32;
        {
            void *host = malloc((size_t)numel[i] * 4);
            int64_t k;
            for (k = 0; k < numel[i]; k++) store_as(pdt[i], host, k, (float)check_rng_normal(&rng));
            for (side = 0; side < 2; side++) {
                CUDA_OK(cudaMalloc(&params[side][i], (size_t)numel[i] * 4));
                CUDA_OK(cudaMalloc(&grads[side][i], (size_t)numel[i] * 4));
                CUDA_OK(cudaMemcpy(params[side][i], host, (size_t)numel[i] * 4, cudaMemcpyHostToDevice));
                CHECK(fadam_add_tensor(opt[side], NULL, params[side][i], grads[side][i], numel[i], pdt[i], FADAM_FLOAT32,
                                       0, NULL) == FADAM_SUCCESS,
                      "%s", fadam_last_error_message());
            }
            free(host);
        }
    }
    for (side = 0; side < 2; side++)
        CHECK(fadam_finalize(opt[side], (fadam_stream)stream) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
    CHECK(fadam_fused_step(opt[0], (fadam_stream)stream) == FADAM_SUCCESS, "capture: %s", fadam_last_error_message());
    CUDA_OK(cudaStreamEndCapture(stream, &graph));
    CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
    for (r = 0; r < REPLAYS && !check_case_failed; r++) {
        for (i = 0; i < N; i++) {
            float *host = (float *)malloc((size_t)numel[i] * 4);
            int64_t k;
            for (k = 0; k < numel[i]; k++) host[k] = (float)(40.0 * check_rng_normal(&rng));
            if (r == 4 && i == 2) host[numel[i] / 2] = INFINITY;
            for (side = 0; side < 2; side++)
                CUDA_OK(cudaMemcpyAsync(grads[side][i], host, (size_t)numel[i] * 4, cudaMemcpyHostToDevice, stream));
            CUDA_OK(cudaStreamSynchronize(stream));
            free(host);
        }
        CUDA_OK(cudaGraphLaunch(exec, stream));
        CHECK(fadam_fused_step(opt[1], (fadam_stream)stream) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    }
    for (side = 0; side < 2; side++)
        CHECK(fadam_read_step_counters(opt[side], &counters[side], (fadam_stream)stream) == FADAM_SUCCESS, "%s",
              fadam_last_error_message());
    CUDA_OK(cudaStreamSynchronize(stream));
    CHECK(memcmp(&counters[0], &counters[1], sizeof counters[0]) == 0 && counters[0].step == REPLAYS - 1 &&
              counters[0].skipped_total == 1,
          "counters: replay t=%lld skipped=%lld, eager t=%lld", (long long)counters[0].step,
          (long long)counters[0].skipped_total, (long long)counters[1].step);
    for (i = 0; i < N; i++) {
        size_t bytes = (size_t)numel[i] * fadam_dtype_size(pdt[i]);
        void *a = malloc(bytes), *b = malloc(bytes);
        CUDA_OK(cudaMemcpy(a, params[0][i], bytes, cudaMemcpyDeviceToHost));
        CUDA_OK(cudaMemcpy(b, params[1][i], bytes, cudaMemcpyDeviceToHost));
        CHECK(memcmp(a, b, bytes) == 0, "tensor %d: replayed and eager params differ", i);
        free(a);
        free(b);
    }
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    for (side = 0; side < 2; side++) {
        fadam_destroy(opt[side]);
        for (i = 0; i < N; i++) {
            cudaFree(params[side][i]);
            cudaFree(grads[side][i]);
        }
    }
    cudaStreamDestroy(stream);
    check_case_end(name);
}

int main(void) {
    rng = check_seed("test_fused_managed");
    test_cpu_fused_step();
    test_fused_errors();
    test_default_config_smallest();
    test_default_config_random();
    test_graph_capture_gpu();
    return check_exit_code();
}
