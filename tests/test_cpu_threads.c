/* test_cpu_threads.c - the CPU path split over threads (csrc/cpu_pool.c, csrc/cpu_step.c) gives the
 * reference's bits for every thread count: the update for every param/grad/master combination and a
 * mix of them, the fused step's sum of squares, the managed optimizer's plain and fused steps; odd
 * sizes, thousands of small tensors, an empty tensor; every fp16 bit pattern through the fast
 * conversions; two optimizers stepped from two threads at once, and one pool shared by two threads;
 * the thread-count arguments' errors. Fresh random inputs each run (seed printed). */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <pthread.h>
#include <unistd.h>

#include "check.h"
#include "dtype_values.h"
#include "fusedadam.h"
#include "internal.h"

static uint64_t rng;

/* Thread counts under test; 0 is the default (one per core). */
static const int thread_counts[] = {1, 2, 3, 7, 0};
#define N_COUNTS ((int)(sizeof thread_counts / sizeof thread_counts[0]))

/* ---- a model: tensors of given dtypes, buffers owned here ---- */

typedef struct model {
    int64_t n;
    fadam_tensor *t;
} model;

/* Uniform in (-2 scale, 2 scale), some specials: cheap, as millions are drawn. */
static float random_value(double scale) {
    uint64_t bits = check_rng_next(&rng), r = bits % 500;
    if (r == 0) return NAN;
    if (r == 1) return -INFINITY;
    if (r == 2) return 1e-41f; /* subnormal in fp32 */
    if (r == 3) return 6e-6f;  /* subnormal in fp16 */
    if (r == 4) return 65519.0f;
    return (float)(scale * ((double)(int64_t)(bits >> 11) * 0x1p-51 - 2.0));
}

/* Sizes: a few large odd ones that span many thread blocks, thousands of small ones, one empty. */
static int64_t pick_numel(int64_t index, int64_t n_tensors) {
    if (index == n_tensors / 2) return 0;
    if (index % 997 == 5) return 65536 * 2 + 1 + (int64_t)(check_rng_next(&rng) % 70000);
    return 1 + (int64_t)(check_rng_next(&rng) % 700);
}

/* dtypes < 0: random per tensor. master: 1 gives every 16-bit param a master, -1 random. */
static model make_model(int64_t n_tensors, int param_dtype, int grad_dtype, int master) {
    model m;
    int64_t i, k;
    m.n = n_tensors;
    m.t = (fadam_tensor *)calloc((size_t)n_tensors, sizeof *m.t);
    for (i = 0; i < n_tensors; i++) {
        fadam_tensor *t = &m.t[i];
        int has_master;
        t->numel = pick_numel(i, n_tensors);
        t->param_dtype = (fadam_dtype)(param_dtype >= 0 ? param_dtype : (int)(check_rng_next(&rng) % 3));
        t->grad_dtype = (fadam_dtype)(grad_dtype >= 0 ? grad_dtype : (int)(check_rng_next(&rng) % 3));
        t->group = (int)(i % 2);
        has_master = t->param_dtype != FADAM_FLOAT32 && (master > 0 || (master < 0 && (check_rng_next(&rng) & 1)));
        /* One spare element in front: an odd start, as in a caller's packed buffer. */
        t->param = (char *)malloc((size_t)(t->numel + 1) * 4) + fadam_dtype_size(t->param_dtype);
        t->grad = (char *)malloc((size_t)(t->numel + 1) * 4) + fadam_dtype_size(t->grad_dtype);
        t->exp_avg = (float *)malloc((size_t)(t->numel + 1) * 4) + 1;
        t->exp_avg_sq = (float *)malloc((size_t)(t->numel + 1) * 4) + 1;
        t->master = has_master ? (float *)malloc((size_t)(t->numel + 1) * 4) + 1 : NULL;
        for (k = 0; k < t->numel; k++) {
            store_as(t->param_dtype, t->param, k, random_value(1.0));
            store_as(t->grad_dtype, (void *)t->grad, k, random_value(1e-2));
            ((float *)t->exp_avg)[k] = random_value(1e-2);
            ((float *)t->exp_avg_sq)[k] = fabsf(random_value(1e-4));
            if (t->master) ((float *)t->master)[k] = random_value(1.0);
        }
    }
    return m;
}

static model clone_model(const model *src) {
    model m;
    int64_t i;
    m.n = src->n;
    m.t = (fadam_tensor *)calloc((size_t)m.n, sizeof *m.t);
    for (i = 0; i < m.n; i++) {
        const fadam_tensor *s = &src->t[i];
        fadam_tensor *t = &m.t[i];
        size_t n = (size_t)s->numel;
        *t = *s;
        t->param = (char *)malloc((n + 1) * 4) + fadam_dtype_size(s->param_dtype);
        t->exp_avg = (float *)malloc((n + 1) * 4) + 1;
        t->exp_avg_sq = (float *)malloc((n + 1) * 4) + 1;
        t->master = s->master ? (float *)malloc((n + 1) * 4) + 1 : NULL;
        memcpy(t->param, s->param, n * fadam_dtype_size(s->param_dtype));
        memcpy(t->exp_avg, s->exp_avg, n * 4);
        memcpy(t->exp_avg_sq, s->exp_avg_sq, n * 4);
        if (s->master) memcpy(t->master, s->master, n * 4);
        /* The grad is read only: shared with the source. */
    }
    return m;
}

static void free_model(model *m, int owns_grads) {
    int64_t i;
    for (i = 0; i < m->n; i++) {
        fadam_tensor *t = &m->t[i];
        free((char *)t->param - fadam_dtype_size(t->param_dtype));
        if (owns_grads) free((char *)t->grad - fadam_dtype_size(t->grad_dtype));
        free(t->exp_avg - 1);
        free(t->exp_avg_sq - 1);
        if (t->master) free(t->master - 1);
    }
    free(m->t);
}

/* The first tensor of `got` that differs from `want`, or -1. */
static int64_t first_difference(const model *got, const model *want) {
    int64_t i;
    for (i = 0; i < got->n; i++) {
        const fadam_tensor *a = &got->t[i], *b = &want->t[i];
        if (!same_params(a->param_dtype, a->param, b->param, a->numel) ||
            !same_floats(a->exp_avg, b->exp_avg, a->numel) || !same_floats(a->exp_avg_sq, b->exp_avg_sq, a->numel) ||
            (a->master && !same_floats(a->master, b->master, a->numel)))
            return i;
    }
    return -1;
}

/* Group 0: AdamW (the loop with constant flags); group 1: Adam+L2, maximize (run-time flags). */
static void test_groups(fadam_hparams groups[2]) {
    groups[0] = fadam_hparams_default();
    groups[0].weight_decay = 0.1f;
    groups[0].lr = 3e-3f;
    groups[1] = fadam_hparams_default();
    groups[1].mode = FADAM_ADAM_L2;
    groups[1].weight_decay = 0.05f;
    groups[1].maximize = 1;
}

static void reference_step(const model *m, const fadam_hparams groups[2], int64_t step) {
    fadam_group_scalars s[2];
    int64_t i;
    s[0] = fadam_compute_group_scalars(&groups[0], groups[0].lr, step);
    s[1] = fadam_compute_group_scalars(&groups[1], groups[1].lr, step);
    for (i = 0; i < m->n; i++) fadam_reference_update(&m->t[i], &s[m->t[i].group], step);
}

static fadam_cpu_pool *pools[N_COUNTS];

/* ---- cases ---- */

static void test_update(const char *name, int64_t n_tensors, int param_dtype, int grad_dtype, int master) {
    model source = make_model(n_tensors, param_dtype, grad_dtype, master), want = clone_model(&source);
    fadam_hparams groups[2];
    fadam_step_source step = {0, NULL, NULL};
    int c;
    check_case_begin();
    test_groups(groups);
    step.step = 1 + (int64_t)(check_rng_next(&rng) % 100);
    reference_step(&want, groups, step.step);
    for (c = 0; c < N_COUNTS && !check_case_failed; c++) {
        model got = clone_model(&source);
        int64_t bad;
        CHECK(fadam_cpu_step_pool(pools[c], got.t, got.n, groups, 2, &step) == FADAM_SUCCESS, "%s",
              fadam_last_error_message());
        bad = first_difference(&got, &want);
        CHECK(bad < 0, "%d thread(s): tensor %lld (numel %lld, dtypes %d/%d%s) differs from the reference",
              fadam_cpu_pool_size(pools[c]), (long long)bad, (long long)(bad >= 0 ? got.t[bad].numel : 0),
              bad >= 0 ? (int)got.t[bad].param_dtype : 0, bad >= 0 ? (int)got.t[bad].grad_dtype : 0,
              bad >= 0 && got.t[bad].master ? ", master" : "");
        free_model(&got, 0);
    }
    free_model(&want, 0);
    free_model(&source, 1);
    check_case_end(name);
}

static void test_norm(void) {
    int grad_dtype;
    check_case_begin();
    for (grad_dtype = -1; grad_dtype < 3 && !check_case_failed; grad_dtype++) {
        model m = make_model(3000, 0, grad_dtype, 0);
        double want, got;
        long double oracle = 0.0L;
        int64_t i, k;
        int c;
        /* Finite gradients (a NaN would make every sum NaN and hide the order); the last pass of
         * this loop puts one Inf back to see it come through. */
        for (i = 0; i < m.n; i++)
            for (k = 0; k < m.t[i].numel; k++) {
                long double g = load_as(m.t[i].grad_dtype, m.t[i].grad, k);
                if (!isfinite((double)g)) store_as(m.t[i].grad_dtype, (void *)m.t[i].grad, k, (float)(g = 0.25L));
                oracle += g * g;
            }
        if (grad_dtype == 2) store_as(m.t[m.n - 1].grad_dtype, (void *)m.t[m.n - 1].grad, 0, INFINITY);
        want = fadam_reference_sum_of_squares(m.t, m.n);
        got = fadam_cpu_sum_of_squares(NULL, m.t, m.n);
        CHECK(memcmp(&got, &want, sizeof got) == 0, "grads %d, no pool: %.17g, reference %.17g", grad_dtype, got, want);
        for (c = 0; c < N_COUNTS; c++) {
            got = fadam_cpu_sum_of_squares(pools[c], m.t, m.n);
            CHECK(memcmp(&got, &want, sizeof got) == 0, "grads %d, %d thread(s): %.17g, reference %.17g", grad_dtype,
                  fadam_cpu_pool_size(pools[c]), got, want);
        }
        if (grad_dtype < 2) CHECK(fabsl(want - oracle) <= 1e-12L * oracle, "%.17g against long double %.17Lg", want, oracle);
        else CHECK(isinf(want), "an Inf gradient must give an infinite sum, got %.17g", want);
        free_model(&m, 1);
    }
    /* Nothing at all, and only empty tensors. */
    {
        fadam_tensor empty;
        double got;
        memset(&empty, 0, sizeof empty);
        got = fadam_cpu_sum_of_squares(pools[1], &empty, 1);
        CHECK(got == 0.0 && fadam_cpu_sum_of_squares(pools[1], NULL, 0) == 0.0, "empty: %g", got);
    }
    check_case_end("norm_same_bits_every_thread_count");
}

/* Every fp16 value through the fast path's conversions: all 65536 params without a master, and
 * random float masters (every exponent) rounded to fp16, with lr 0 so the values pass unchanged. */
static void test_fp16_patterns(void) {
    fadam_tensor t[2];
    fadam_hparams h = fadam_hparams_default();
    fadam_step_source step = {1, NULL, NULL};
    int64_t n = 65536, k;
    uint16_t *params[2], *want[2];
    float *master = (float *)malloc((size_t)n * 4), *master_copy = (float *)malloc((size_t)n * 4);
    float *moments = (float *)calloc((size_t)n * 4, 4), *grads = (float *)calloc((size_t)n * 2, 4);
    int i;
    check_case_begin();
    h.lr = 0.0f;
    h.weight_decay = 0.0f;
    for (i = 0; i < 2; i++) {
        params[i] = (uint16_t *)malloc((size_t)n * 2);
        want[i] = (uint16_t *)malloc((size_t)n * 2);
        memset(&t[i], 0, sizeof t[i]);
        t[i].param = params[i];
        t[i].grad = grads + i * n;
        t[i].numel = n;
        t[i].param_dtype = FADAM_FLOAT16;
        t[i].grad_dtype = FADAM_FLOAT32;
        t[i].exp_avg = moments + (2 * i) * n;
        t[i].exp_avg_sq = moments + (2 * i + 1) * n;
    }
    t[1].master = master;
    for (k = 0; k < n; k++) {
        uint32_t bits = (uint32_t)check_rng_next(&rng);
        params[0][k] = (uint16_t)k;
        if (k < 512) bits = (bits & 0x807FFFFFu) | ((uint32_t)(k % 256) << 23); /* every exponent */
        memcpy(&master[k], &bits, 4);
    }
    memcpy(master_copy, master, (size_t)n * 4);
    for (k = 0; k < n; k++) {
        want[0][k] = fadam_float_to_fp16_bits(fadam_fp16_bits_to_float((uint16_t)k));
        want[1][k] = fadam_float_to_fp16_bits(master[k]);
    }
    CHECK(fadam_cpu_step_pool(pools[1], t, 2, &h, 1, &step) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    for (i = 0; i < 2; i++)
        for (k = 0; k < n && !check_case_failed; k++)
            CHECK(params[i][k] == want[i][k] || (isnan(fadam_fp16_bits_to_float(params[i][k])) &&
                                                 isnan(fadam_fp16_bits_to_float(want[i][k]))),
                  "%s %lld: 0x%04x, reference 0x%04x", i ? "master" : "fp16", (long long)k, params[i][k], want[i][k]);
    CHECK(same_floats(master, master_copy, n), "lr 0 changed a master");
    for (i = 0; i < 2; i++) {
        free(params[i]);
        free(want[i]);
    }
    free(master);
    free(master_copy);
    free(moments);
    free(grads);
    check_case_end("fp16_every_bit_pattern_matches_reference");
}

/* ---- the managed optimizer ---- */

typedef struct managed_run {
    model m;
    fadam_optimizer *opt;
} managed_run;

/* A CPU optimizer over a copy of `source`'s params and grads, clipping on, with n_threads. */
static fadam_status open_managed(managed_run *run, const model *source, int n_threads, int set_after_finalize) {
    fadam_hparams groups[2];
    fadam_fused_step_config config = fadam_fused_step_config_default();
    fadam_status status;
    int64_t i;
    test_groups(groups);
    run->m = clone_model(source);
    config.max_grad_norm = 0.5f;
    if ((status = fadam_create(&run->opt, FADAM_DEVICE_CPU, 0, &groups[0], NULL)) != FADAM_SUCCESS) return status;
    if ((status = fadam_add_group(run->opt, &groups[1], NULL)) != FADAM_SUCCESS) return status;
    for (i = 0; i < run->m.n; i++) {
        const fadam_tensor *t = &run->m.t[i];
        status = fadam_add_tensor(run->opt, NULL, t->param, t->grad, t->numel, t->param_dtype, t->grad_dtype, t->group,
                                  NULL);
        if (status != FADAM_SUCCESS) return status;
    }
    if ((status = fadam_configure_fused_step(run->opt, &config)) != FADAM_SUCCESS) return status;
    if (!set_after_finalize && (status = fadam_set_cpu_threads(run->opt, n_threads)) != FADAM_SUCCESS) return status;
    if ((status = fadam_finalize(run->opt, NULL)) != FADAM_SUCCESS) return status;
    if (set_after_finalize) status = fadam_set_cpu_threads(run->opt, n_threads);
    return status;
}

/* Two fused steps and a plain one; the norm of the last fused step to *norm. */
static fadam_status run_steps(managed_run *run, float *norm) {
    fadam_step_counters counters;
    fadam_status status;
    if ((status = fadam_fused_step(run->opt, NULL)) != FADAM_SUCCESS) return status;
    if ((status = fadam_fused_step(run->opt, NULL)) != FADAM_SUCCESS) return status;
    if ((status = fadam_read_step_counters(run->opt, &counters, NULL)) != FADAM_SUCCESS) return status;
    *norm = counters.grad_norm;
    return fadam_step(run->opt, NULL);
}

/* The optimizer's params and state as a model, to compare two runs. */
static int managed_equal(const managed_run *a, const managed_run *b) {
    int64_t i;
    for (i = 0; i < a->m.n; i++) {
        const fadam_tensor *t = &a->m.t[i];
        float *ma, *ea, *va, *mb, *eb, *vb;
        if (fadam_get_state(a->opt, i, &ma, &ea, &va) != FADAM_SUCCESS ||
            fadam_get_state(b->opt, i, &mb, &eb, &vb) != FADAM_SUCCESS)
            return 0;
        if (!same_params(t->param_dtype, t->param, b->m.t[i].param, t->numel) || !same_floats(ea, eb, t->numel) ||
            !same_floats(va, vb, t->numel) || (ma && !same_floats(ma, mb, t->numel)))
            return 0;
    }
    return 1;
}

static void close_managed(managed_run *run) {
    fadam_destroy(run->opt);
    run->opt = NULL;
    free_model(&run->m, 0);
}

static void test_managed(void) {
    model source = make_model(2500, -1, -1, -1);
    managed_run first;
    float first_norm = 0.0f;
    int c;
    check_case_begin();
    /* Gradients without Inf/NaN, so the fused steps are taken, not skipped. */
    {
        int64_t i, k;
        for (i = 0; i < source.n; i++)
            for (k = 0; k < source.t[i].numel; k++)
                if (!isfinite(load_as(source.t[i].grad_dtype, source.t[i].grad, k)))
                    store_as(source.t[i].grad_dtype, (void *)source.t[i].grad, k, 1e-3f);
    }
    CHECK(open_managed(&first, &source, 1, 0) == FADAM_SUCCESS && run_steps(&first, &first_norm) == FADAM_SUCCESS,
          "1 thread: %s", fadam_last_error_message());
    for (c = 1; c < N_COUNTS && !check_case_failed; c++) {
        managed_run run;
        float norm = 0.0f;
        int got = -1, want = thread_counts[c] ? thread_counts[c] : fadam_cpu_default_threads();
        uint32_t a, b;
        /* Half the counts set before finalize, half after (which restarts the threads). */
        CHECK(open_managed(&run, &source, thread_counts[c], c % 2) == FADAM_SUCCESS, "%s", fadam_last_error_message());
        CHECK(fadam_get_cpu_threads(run.opt, &got) == FADAM_SUCCESS && got == want, "%d threads asked, %d reported",
              want, got);
        CHECK(run_steps(&run, &norm) == FADAM_SUCCESS, "%s", fadam_last_error_message());
        memcpy(&a, &norm, 4);
        memcpy(&b, &first_norm, 4);
        CHECK(a == b, "%d thread(s): fused step's norm %.9g, 1 thread %.9g", want, norm, first_norm);
        CHECK(managed_equal(&run, &first), "%d thread(s): params or state differ from 1 thread's", want);
        close_managed(&run);
    }
    close_managed(&first);
    free_model(&source, 1);
    check_case_end("managed_plain_and_fused_steps_same_bits_every_thread_count");
}

/* ---- concurrency ---- */

typedef struct concurrent_job {
    const model *source;
    managed_run run;
    fadam_cpu_pool *shared_pool; /* the functional case: both threads step through one pool */
    model own;
    int steps;
    fadam_status status;
} concurrent_job;

static void *concurrent_main(void *argument) {
    concurrent_job *job = (concurrent_job *)argument;
    int s;
    job->status = FADAM_SUCCESS;
    for (s = 0; s < job->steps && job->status == FADAM_SUCCESS; s++) {
        if (job->shared_pool) {
            fadam_hparams groups[2];
            fadam_step_source step = {0, NULL, NULL};
            test_groups(groups);
            step.step = s + 1;
            job->status = fadam_cpu_step_pool(job->shared_pool, job->own.t, job->own.n, groups, 2, &step);
        } else {
            job->status = fadam_step(job->run.opt, NULL);
        }
    }
    return NULL;
}

static void test_concurrent(void) {
    model source = make_model(1200, -1, -1, -1);
    model want = clone_model(&source);
    concurrent_job jobs[4];
    pthread_t threads[4];
    fadam_hparams groups[2];
    int i, s, started[4] = {0};
    const int steps = 4;
    check_case_begin();
    test_groups(groups);
    for (s = 1; s <= steps; s++) reference_step(&want, groups, s);
    memset(jobs, 0, sizeof jobs);
    for (i = 0; i < 4; i++) {
        jobs[i].source = &source;
        jobs[i].steps = steps;
        if (i < 2) {
            CHECK(open_managed(&jobs[i].run, &source, 2, 0) == FADAM_SUCCESS, "%s", fadam_last_error_message());
        } else {
            jobs[i].own = clone_model(&source);
            jobs[i].shared_pool = pools[1];
        }
    }
    for (i = 0; i < 4 && !check_case_failed; i++) started[i] = pthread_create(&threads[i], NULL, concurrent_main, &jobs[i]) == 0;
    for (i = 0; i < 4; i++)
        if (started[i]) pthread_join(threads[i], NULL);
    for (i = 0; i < 4; i++) {
        CHECK(started[i] && jobs[i].status == FADAM_SUCCESS, "thread %d: %s", i, fadam_status_string(jobs[i].status));
        if (i >= 2) {
            CHECK(first_difference(&jobs[i].own, &want) < 0, "thread %d (shared pool): differs from the reference", i);
            free_model(&jobs[i].own, 0);
        }
    }
    CHECK(jobs[0].run.opt && jobs[1].run.opt && managed_equal(&jobs[0].run, &jobs[1].run),
          "two optimizers stepped at once from two threads differ");
    /* And both equal the same steps taken alone, on one thread. */
    {
        managed_run alone;
        CHECK(open_managed(&alone, &source, 1, 0) == FADAM_SUCCESS, "%s", fadam_last_error_message());
        for (s = 0; s < steps; s++) CHECK(fadam_step(alone.opt, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
        CHECK(managed_equal(&jobs[0].run, &alone), "concurrent steps differ from the same steps alone");
        close_managed(&alone);
    }
    close_managed(&jobs[0].run);
    close_managed(&jobs[1].run);
    free_model(&want, 0);
    free_model(&source, 1);
    check_case_end("two_optimizers_and_a_shared_pool_from_concurrent_threads");
}

/* ---- errors ---- */

static void test_errors(void) {
    fadam_optimizer *opt = NULL;
    fadam_cpu_pool *pool = (fadam_cpu_pool *)&rng; /* must be reset to NULL on failure */
    int n = -5;
    check_case_begin();
    CHECK(fadam_cpu_pool_create(&pool, -1) == FADAM_ERR_INVALID_VALUE && pool == NULL, "n_threads -1");
    CHECK(strstr(fadam_last_error_message(), "n_threads") != NULL, "message: %s", fadam_last_error_message());
    CHECK(fadam_cpu_pool_create(&pool, FADAM_MAX_CPU_THREADS + 1) == FADAM_ERR_INVALID_VALUE, "too many threads");
    CHECK(fadam_cpu_pool_create(NULL, 2) == FADAM_ERR_NULL_POINTER, "NULL out");
    CHECK(fadam_cpu_pool_threads(NULL, &n) == FADAM_ERR_NULL_POINTER, "NULL pool");
    CHECK(fadam_cpu_pool_threads(pools[2], NULL) == FADAM_ERR_NULL_POINTER, "NULL count");
    CHECK(fadam_cpu_pool_threads(pools[2], &n) == FADAM_SUCCESS && n == 3, "pool of 3 says %d", n);
    CHECK(fadam_cpu_pool_threads(pools[N_COUNTS - 1], &n) == FADAM_SUCCESS && n == fadam_cpu_default_threads() &&
              n >= 1 && n <= sysconf(_SC_NPROCESSORS_ONLN),
          "default pool has %d threads, %ld cores online", n, sysconf(_SC_NPROCESSORS_ONLN));
    fadam_cpu_pool_destroy(NULL);
    CHECK(fadam_create(&opt, FADAM_DEVICE_CPU, 0, NULL, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    CHECK(fadam_set_cpu_threads(opt, -1) == FADAM_ERR_INVALID_VALUE, "set -1");
    CHECK(fadam_set_cpu_threads(opt, FADAM_MAX_CPU_THREADS + 1) == FADAM_ERR_INVALID_VALUE, "set too many");
    CHECK(fadam_get_cpu_threads(opt, &n) == FADAM_SUCCESS && n == fadam_cpu_default_threads(), "default %d", n);
    CHECK(fadam_set_cpu_threads(opt, 3) == FADAM_SUCCESS && fadam_get_cpu_threads(opt, &n) == FADAM_SUCCESS && n == 3,
          "set 3, got %d", n);
    CHECK(fadam_set_cpu_threads(NULL, 1) == FADAM_ERR_NULL_POINTER, "NULL optimizer");
    CHECK(fadam_get_cpu_threads(opt, NULL) == FADAM_ERR_NULL_POINTER, "NULL count");
    CHECK(fadam_finalize(opt, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    CHECK(fadam_get_cpu_threads(opt, &n) == FADAM_SUCCESS && n == 3, "after finalize %d", n);
    CHECK(fadam_set_cpu_threads(opt, -2) == FADAM_ERR_INVALID_VALUE && fadam_get_cpu_threads(opt, &n) == FADAM_SUCCESS &&
              n == 3,
          "a refused count changed the count to %d", n);
    CHECK(fadam_set_cpu_threads(opt, 1) == FADAM_SUCCESS && fadam_get_cpu_threads(opt, &n) == FADAM_SUCCESS && n == 1,
          "after finalize, set 1, got %d", n);
    fadam_destroy(opt);
    check_case_end("cpu_thread_counts_validated");
}

int main(void) {
    static const fadam_dtype dtypes[3] = {FADAM_FLOAT32, FADAM_BFLOAT16, FADAM_FLOAT16};
    int c, p, g, master;
    rng = check_seed("test_cpu_threads");
    for (c = 0; c < N_COUNTS; c++)
        if (fadam_cpu_pool_create(&pools[c], thread_counts[c]) != FADAM_SUCCESS) {
            printf("FAIL cpu_pool_create_%d: %s\n", thread_counts[c], fadam_last_error_message());
            return 1;
        }
    for (p = 0; p < 3; p++)
        for (g = 0; g < 3; g++)
            for (master = 0; master < 2; master++) {
                char name[96];
                if (p == 0 && master) continue;
                snprintf(name, sizeof name, "threads_equal_reference_param%d_grad%d%s", (int)dtypes[p], (int)dtypes[g],
                         master ? "_master" : "");
                test_update(name, 60, p, g, master);
            }
    test_update("threads_equal_reference_mixed_dtypes_3000_tensors", 3000, -1, -1, -1);
    test_norm();
    test_fp16_patterns();
    test_managed();
    test_concurrent();
    test_errors();
    for (c = 0; c < N_COUNTS; c++) fadam_cpu_pool_destroy(pools[c]);
    return check_exit_code();
}
