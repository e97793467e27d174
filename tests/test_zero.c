/* test_zero.c - data parallelism (ZeRO-1) on the CPU device, ranks as threads and the all-reduce as a
 * barrier and a sum (issue 13): N = 1..4 ranks, each registering its slices (fadam_add_tensor_shard,
 * uneven and empty slices) of a model whose tensor sizes do not divide by N, stepping with
 * fadam_fused_step_begin / sum of the reduce buffers / fadam_fused_step_end and all-gathering the params.
 * Against the single-rank fadam_fused_step run on the same data: the reduced sum of squares within
 * 1e-12 relative, every rank's counters equal, and (given the same clip coefficient) params, masters
 * and moments bit for bit. An Inf/NaN in one rank's slice skips the step on every rank. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "dtype_values.h"
#include "fusedadam.h"
#include "internal.h"

#define N_TENSORS 9
#define MAX_RANKS 4
#define MAX_STEPS 8

static uint64_t rng;

/* The model: sizes prime or small, so no N in 2..4 divides them and the 4-rank split has empty slices. */
typedef struct model {
    int64_t numel[N_TENSORS];
    fadam_dtype param_dtype[N_TENSORS], grad_dtype[N_TENSORS];
    int group[N_TENSORS];
    void *initial[N_TENSORS];             /* the params before step 1 */
    void *grads[MAX_STEPS][N_TENSORS];    /* the (already reduced) gradient of every step */
    fadam_fused_step_config config;
    fadam_hparams groups[2];
    int steps;
} model;

/* What a run leaves: per step the counters and the reduced sum; at the end params and state. */
typedef struct run_result {
    fadam_step_counters counters[MAX_STEPS];
    double sum[MAX_STEPS];
    void *params[N_TENSORS];
    float *master[N_TENSORS], *exp_avg[N_TENSORS], *exp_avg_sq[N_TENSORS];
} run_result;

static size_t bytes_of(const model *m, int t) { return (size_t)m->numel[t] * fadam_dtype_size(m->param_dtype[t]); }

static void make_model(model *m, int steps, int nan_step, int loss_scaling) {
    static const int64_t sizes[N_TENSORS] = {1, 2, 3, 5, 97, 1009, 4099, 8209, 12289};
    static const fadam_dtype dtypes[3] = {FADAM_FLOAT32, FADAM_BFLOAT16, FADAM_FLOAT16};
    int t, s;
    int64_t k;
    memset(m, 0, sizeof *m);
    m->steps = steps;
    m->groups[0] = fadam_hparams_default();
    m->groups[0].weight_decay = 0.1f;
    m->groups[1] = fadam_hparams_default();
    m->groups[1].weight_decay = 0.0f;
    m->groups[1].mode = FADAM_ADAM_L2;
    m->config = fadam_fused_step_config_default();
    m->config.schedule = FADAM_SCHEDULE_WARMUP_COSINE;
    m->config.warmup_steps = 2;
    m->config.total_steps = 10;
    m->config.min_lr_ratio = 0.1f;
    /* Norms near 1.4 unscaled: clipping at 0.5 is active on every step. */
    m->config.max_grad_norm = 0.5f;
    if (loss_scaling) {
        m->config.dynamic_loss_scaling = 1;
        m->config.initial_loss_scale = 1024.0f;
        m->config.growth_interval = 3;
    }
    for (t = 0; t < N_TENSORS; t++) {
        m->numel[t] = sizes[t];
        m->param_dtype[t] = dtypes[check_rng_next(&rng) % 3];
        m->grad_dtype[t] = dtypes[check_rng_next(&rng) % 3];
        m->group[t] = t % 2;
        m->initial[t] = malloc(bytes_of(m, t));
        for (k = 0; k < m->numel[t]; k++) store_as(m->param_dtype[t], m->initial[t], k, (float)check_rng_normal(&rng));
        for (s = 0; s < steps; s++) {
            double scale = loss_scaling ? 1024.0 : 1.0;
            m->grads[s][t] = malloc((size_t)m->numel[t] * 4);
            for (k = 0; k < m->numel[t]; k++)
                store_as(m->grad_dtype[t], m->grads[s][t], k, (float)(1e-2 * scale * check_rng_normal(&rng)));
        }
    }
    if (nan_step >= 0) {
        /* One element: it lies in exactly one rank's slice. */
        t = 4 + (int)(check_rng_next(&rng) % (N_TENSORS - 4));
        k = (int64_t)(check_rng_next(&rng) % (uint64_t)m->numel[t]);
        store_as(m->grad_dtype[t], m->grads[nan_step][t], k, check_rng_next(&rng) % 2 ? NAN : INFINITY);
    }
}

static void free_model(model *m) {
    int t, s;
    for (t = 0; t < N_TENSORS; t++) {
        free(m->initial[t]);
        for (s = 0; s < m->steps; s++) free(m->grads[s][t]);
    }
}

static void alloc_result(const model *m, run_result *r) {
    int t;
    memset(r, 0, sizeof *r);
    for (t = 0; t < N_TENSORS; t++) {
        r->params[t] = malloc(bytes_of(m, t) + 1);
        memcpy(r->params[t], m->initial[t], bytes_of(m, t));
        r->master[t] = (float *)calloc((size_t)m->numel[t] + 1, 4);
        r->exp_avg[t] = (float *)calloc((size_t)m->numel[t] + 1, 4);
        r->exp_avg_sq[t] = (float *)calloc((size_t)m->numel[t] + 1, 4);
    }
}

static void free_result(run_result *r) {
    int t;
    for (t = 0; t < N_TENSORS; t++) {
        free(r->params[t]);
        free(r->master[t]);
        free(r->exp_avg[t]);
        free(r->exp_avg_sq[t]);
    }
}

static fadam_status create_optimizer(const model *m, fadam_optimizer **opt) {
    fadam_status s = fadam_create(opt, FADAM_DEVICE_CPU, 0, &m->groups[0], NULL);
    if (s == FADAM_SUCCESS) s = fadam_add_group(*opt, &m->groups[1], NULL);
    if (s == FADAM_SUCCESS) s = fadam_configure_fused_step(*opt, &m->config);
    return s;
}

static void tensor_name(int t, char name[32]) { snprintf(name, 32, "layer%d.weight", t); }

/* The single-rank run: whole tensors, fadam_fused_step; begin first, only to read the sum it leaves. */
static void run_single(const model *m, run_result *r) {
    fadam_optimizer *opt = NULL;
    void *grad[N_TENSORS];
    double *buffer = NULL;
    int t, s;
    char name[32];
    alloc_result(m, r);
    CHECK(create_optimizer(m, &opt) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    for (t = 0; t < N_TENSORS; t++) {
        grad[t] = malloc((size_t)m->numel[t] * 4);
        tensor_name(t, name);
        CHECK(fadam_add_tensor(opt, name, r->params[t], grad[t], m->numel[t], m->param_dtype[t], m->grad_dtype[t],
                               m->group[t], NULL) == FADAM_SUCCESS,
              "%s", fadam_last_error_message());
    }
    CHECK(fadam_finalize(opt, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    CHECK(fadam_fused_step_reduce_buffer(opt, &buffer, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    for (s = 0; s < m->steps && !check_case_failed; s++) {
        for (t = 0; t < N_TENSORS; t++)
            memcpy(grad[t], m->grads[s][t], (size_t)m->numel[t] * fadam_dtype_size(m->grad_dtype[t]));
        CHECK(fadam_fused_step_begin(opt, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
        r->sum[s] = buffer[0];
        CHECK(fadam_fused_step(opt, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
        CHECK(fadam_read_step_counters(opt, &r->counters[s], NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    }
    for (t = 0; t < N_TENSORS && !check_case_failed; t++) {
        float *master, *ms, *vs;
        size_t n = (size_t)m->numel[t] * 4;
        CHECK(fadam_get_state(opt, t, &master, &ms, &vs) == FADAM_SUCCESS, "%s", fadam_last_error_message());
        memcpy(r->exp_avg[t], ms, n);
        memcpy(r->exp_avg_sq[t], vs, n);
        if (master) memcpy(r->master[t], master, n);
    }
    fadam_destroy(opt);
    for (t = 0; t < N_TENSORS; t++) free(grad[t]);
}

/* ---- the sharded run: one thread per rank ---- */

typedef struct world {
    const model *m;
    int n_ranks;
    int flat;                   /* 1: llm.c's flat shard of all tensors; 0: each tensor split alone */
    int first_step, end_step;   /* steps [first_step, end_step) */
    const char *save_pattern;   /* optional: each rank saves its shard to this printf pattern of the rank */
    const char *load_pattern;   /* optional: and loads from load_ranks files of this pattern first */
    int load_ranks;
    pthread_barrier_t barrier;
    double *buffers[MAX_RANKS]; /* each rank's reduce buffer, for the "all-reduce" */
    void *copies[MAX_RANKS][N_TENSORS]; /* each rank's full params (ZeRO-1 keeps them whole) */
    run_result *result;
    fadam_step_counters counters[MAX_RANKS][MAX_STEPS];
    double sums[MAX_RANKS][MAX_STEPS];
    fadam_status status[MAX_RANKS];
    char message[MAX_RANKS][256];
} world;

typedef struct rank_arg {
    world *w;
    int rank;
} rank_arg;

/* Rank r's slice of tensor t, by either convention. */
static void slice_of(const world *w, int rank, int t, int64_t *offset, int64_t *numel) {
    const model *m = w->m;
    if (!w->flat) {
        (void)fadam_shard_range(m->numel[t], rank, w->n_ranks, offset, numel);
    } else {
        int64_t total = 0, base = 0, begin, count, lo, hi;
        int i;
        for (i = 0; i < N_TENSORS; i++) total += m->numel[i];
        for (i = 0; i < t; i++) base += m->numel[i];
        (void)fadam_shard_range(total, rank, w->n_ranks, &begin, &count);
        lo = begin > base ? begin : base;
        hi = begin + count < base + m->numel[t] ? begin + count : base + m->numel[t];
        *offset = lo < hi ? lo - base : 0;
        *numel = lo < hi ? hi - lo : 0;
    }
}

static void all_reduce(world *w, int rank) {
    double total[FADAM_FUSED_REDUCE_COUNT] = {0.0, 0.0};
    int q, i;
    pthread_barrier_wait(&w->barrier);
    for (q = 0; q < w->n_ranks; q++)
        for (i = 0; i < FADAM_FUSED_REDUCE_COUNT; i++) total[i] += w->buffers[q][i];
    pthread_barrier_wait(&w->barrier);
    memcpy(w->buffers[rank], total, sizeof total);
}

static void all_gather(world *w, int rank) {
    const model *m = w->m;
    int q, t;
    pthread_barrier_wait(&w->barrier);
    for (q = 0; q < w->n_ranks; q++) {
        if (q == rank) continue;
        for (t = 0; t < N_TENSORS; t++) {
            int64_t offset, numel;
            size_t e = fadam_dtype_size(m->param_dtype[t]);
            slice_of(w, q, t, &offset, &numel);
            memcpy((char *)w->copies[rank][t] + offset * e, (char *)w->copies[q][t] + offset * e, (size_t)numel * e);
        }
    }
    pthread_barrier_wait(&w->barrier);
}

static fadam_status rank_fail(world *w, int rank, fadam_status s, const char *what) {
    w->status[rank] = s;
    snprintf(w->message[rank], sizeof w->message[rank], "rank %d: %s: %s", rank, what, fadam_last_error_message());
    return s;
}

/* Every rank reaches every barrier even after a failure, so no thread waits forever. */
static void *rank_main(void *p) {
    rank_arg *a = (rank_arg *)p;
    world *w = a->w;
    const model *m = w->m;
    const int rank = a->rank;
    fadam_optimizer *opt = NULL;
    void *grad[N_TENSORS];
    int64_t offsets[N_TENSORS], numels[N_TENSORS];
    fadam_status s;
    double *buffer = NULL;
    int t, step;
    char name[32];
    s = create_optimizer(m, &opt);
    if (s != FADAM_SUCCESS) rank_fail(w, rank, s, "create");
    if (s == FADAM_SUCCESS && (s = fadam_set_shard_rank(opt, rank, w->n_ranks)) != FADAM_SUCCESS)
        rank_fail(w, rank, s, "set_shard_rank");
    for (t = 0; t < N_TENSORS; t++) {
        size_t e = fadam_dtype_size(m->param_dtype[t]);
        slice_of(w, rank, t, &offsets[t], &numels[t]);
        grad[t] = malloc((size_t)numels[t] * 4 + 4);
        tensor_name(t, name);
        if (s == FADAM_SUCCESS) {
            s = fadam_add_tensor_shard(opt, name, (char *)w->copies[rank][t] + offsets[t] * e, grad[t], numels[t],
                                       m->numel[t], offsets[t], m->param_dtype[t], m->grad_dtype[t], m->group[t], NULL);
            if (s != FADAM_SUCCESS) rank_fail(w, rank, s, "add_tensor_shard");
        }
    }
    if (s == FADAM_SUCCESS && (s = fadam_finalize(opt, NULL)) != FADAM_SUCCESS) rank_fail(w, rank, s, "finalize");
    if (s == FADAM_SUCCESS && (s = fadam_fused_step_reduce_buffer(opt, &buffer, NULL)) != FADAM_SUCCESS)
        rank_fail(w, rank, s, "reduce_buffer");
    if (s == FADAM_SUCCESS && w->load_pattern) {
        char paths[MAX_RANKS][256];
        const char *list[MAX_RANKS];
        int q;
        for (q = 0; q < w->load_ranks; q++) {
            snprintf(paths[q], sizeof paths[q], w->load_pattern, q);
            list[q] = paths[q];
        }
        if ((s = fadam_load_shards(opt, list, w->load_ranks, NULL)) != FADAM_SUCCESS) rank_fail(w, rank, s, "load_shards");
    }
    static double failed_buffer[FADAM_FUSED_REDUCE_COUNT];
    w->buffers[rank] = buffer ? buffer : failed_buffer;
    for (step = w->first_step; step < w->end_step; step++) {
        for (t = 0; t < N_TENSORS; t++)
            memcpy(grad[t], (const char *)m->grads[step][t] + offsets[t] * (int64_t)fadam_dtype_size(m->grad_dtype[t]),
                   (size_t)numels[t] * fadam_dtype_size(m->grad_dtype[t]));
        if (s == FADAM_SUCCESS && (s = fadam_fused_step_begin(opt, NULL)) != FADAM_SUCCESS) rank_fail(w, rank, s, "begin");
        all_reduce(w, rank);
        if (buffer) w->sums[rank][step] = buffer[0];
        if (s == FADAM_SUCCESS && (s = fadam_fused_step_end(opt, NULL)) != FADAM_SUCCESS) rank_fail(w, rank, s, "end");
        if (s == FADAM_SUCCESS) (void)fadam_read_step_counters(opt, &w->counters[rank][step], NULL);
        all_gather(w, rank);
    }
    /* This rank's slices of the state into the full arrays of the result (disjoint writes). */
    for (t = 0; t < N_TENSORS && s == FADAM_SUCCESS; t++) {
        float *master, *ms, *vs;
        size_t n = (size_t)numels[t] * 4;
        if ((s = fadam_get_state(opt, t, &master, &ms, &vs)) != FADAM_SUCCESS) {
            rank_fail(w, rank, s, "get_state");
            break;
        }
        memcpy(w->result->exp_avg[t] + offsets[t], ms, n);
        memcpy(w->result->exp_avg_sq[t] + offsets[t], vs, n);
        if (master) memcpy(w->result->master[t] + offsets[t], master, n);
    }
    if (s == FADAM_SUCCESS && w->save_pattern) {
        char path[256];
        snprintf(path, sizeof path, w->save_pattern, rank);
        if ((s = fadam_save(opt, path, NULL)) != FADAM_SUCCESS) rank_fail(w, rank, s, "save");
    }
    fadam_destroy(opt);
    for (t = 0; t < N_TENSORS; t++) free(grad[t]);
    return NULL;
}

/* Runs the ranks over steps [first, end) starting from `params` (full tensors); leaves rank 0's
 * params copy and the gathered state in r. */
static void run_sharded(world *w, run_result *r, void *const *params) {
    pthread_t threads[MAX_RANKS];
    rank_arg args[MAX_RANKS];
    const model *m = w->m;
    int q, t;
    alloc_result(m, r);
    w->result = r;
    for (q = 0; q < w->n_ranks; q++)
        for (t = 0; t < N_TENSORS; t++) {
            w->copies[q][t] = malloc(bytes_of(m, t) + 1);
            memcpy(w->copies[q][t], params ? params[t] : m->initial[t], bytes_of(m, t));
        }
    pthread_barrier_init(&w->barrier, NULL, (unsigned)w->n_ranks);
    for (q = 0; q < w->n_ranks; q++) {
        args[q].w = w;
        args[q].rank = q;
        w->status[q] = FADAM_SUCCESS;
        pthread_create(&threads[q], NULL, rank_main, &args[q]);
    }
    for (q = 0; q < w->n_ranks; q++) pthread_join(threads[q], NULL);
    pthread_barrier_destroy(&w->barrier);
    for (q = 0; q < w->n_ranks; q++) CHECK(w->status[q] == FADAM_SUCCESS, "%s", w->message[q]);
    for (t = 0; t < N_TENSORS; t++) memcpy(r->params[t], w->copies[0][t], bytes_of(m, t));
    /* Every rank holds the same full params after the all-gather. */
    for (q = 1; q < w->n_ranks; q++)
        for (t = 0; t < N_TENSORS; t++)
            CHECK(memcmp(w->copies[q][t], w->copies[0][t], bytes_of(m, t)) == 0, "rank %d's tensor %d differs from rank 0's",
                  q, t);
    for (q = 0; q < w->n_ranks; q++)
        for (t = 0; t < N_TENSORS; t++) free(w->copies[q][t]);
    for (q = 0; q < w->n_ranks; q++) {
        int s;
        for (s = w->first_step; s < w->end_step; s++) r->counters[s] = w->counters[q][s], r->sum[s] = w->sums[q][s];
    }
}

/* Counters equal on every rank (the same reduced buffer, the same decision) and to the single-rank
 * run's except in grad_norm's rounding; sums within 1e-12 relative. Returns 1 when every step's clip
 * coefficient is the single run's, so the update must be bit for bit. */
static int compare_steps(const world *w, const run_result *single, int *skipped_steps) {
    int q, s, same_clip = 1;
    *skipped_steps = 0;
    for (s = w->first_step; s < w->end_step && !check_case_failed; s++) {
        const fadam_step_counters *a = &single->counters[s], *b = &w->counters[0][s];
        for (q = 1; q < w->n_ranks; q++)
            CHECK(memcmp(&w->counters[q][s], b, sizeof *b) == 0 &&
                      memcmp(&w->sums[q][s], &w->sums[0][s], sizeof(double)) == 0,
                  "step %d: rank %d's counters or reduced sum differ from rank 0's", s + 1, q);
        if (isfinite(single->sum[s]))
            CHECK(fabs(w->sums[0][s] - single->sum[s]) <= 1e-12 * single->sum[s],
                  "step %d: reduced sum %.17g, single rank %.17g", s + 1, w->sums[0][s], single->sum[s]);
        else
            CHECK(!isfinite(w->sums[0][s]) || w->sums[0][s] != w->sums[0][s], "step %d: single rank saw Inf/NaN, ranks "
                  "reduced %.17g", s + 1, w->sums[0][s]);
        CHECK(a->skipped == b->skipped && a->step == b->step && a->skipped_total == b->skipped_total &&
                  a->loss_scale == b->loss_scale && a->good_steps == b->good_steps && a->lr_scale == b->lr_scale,
              "step %d: counters differ: skipped %d/%d t %lld/%lld loss scale %g/%g", s + 1, a->skipped, b->skipped,
              (long long)a->step, (long long)b->step, a->loss_scale, b->loss_scale);
        if (!a->skipped)
            CHECK(fabsf(a->grad_norm - b->grad_norm) <= 1.2e-7f * a->grad_norm, "step %d: norm %.9g, single %.9g", s + 1,
                  b->grad_norm, a->grad_norm);
        if (a->clip_coef != b->clip_coef) same_clip = 0;
        *skipped_steps += a->skipped;
    }
    return same_clip;
}

static void compare_state(const model *m, const run_result *single, const run_result *sharded, int bitwise) {
    int t;
    int64_t k;
    for (t = 0; t < N_TENSORS && !check_case_failed; t++) {
        size_t n = (size_t)m->numel[t] * 4;
        if (bitwise) {
            CHECK(memcmp(single->params[t], sharded->params[t], bytes_of(m, t)) == 0, "tensor %d: params differ", t);
            CHECK(memcmp(single->exp_avg[t], sharded->exp_avg[t], n) == 0 &&
                      memcmp(single->exp_avg_sq[t], sharded->exp_avg_sq[t], n) == 0 &&
                      memcmp(single->master[t], sharded->master[t], n) == 0,
                  "tensor %d: master or moments differ", t);
        } else {
            /* A clip coefficient one float ulp apart (a norm summed in another order rounding the other way). */
            for (k = 0; k < m->numel[t]; k++)
                CHECK(fabsf(single->exp_avg[t][k] - sharded->exp_avg[t][k]) <= 1e-5f * (fabsf(single->exp_avg[t][k]) + 1e-6f),
                      "tensor %d element %lld: m %g vs %g", t, (long long)k, single->exp_avg[t][k], sharded->exp_avg[t][k]);
        }
    }
}

static void test_ranks(int n_ranks, int flat, int nan_step, int loss_scaling, const char *name) {
    model m;
    run_result single, sharded;
    world *w = (world *)calloc(1, sizeof *w);
    int same_clip, skipped = 0;
    check_case_begin();
    make_model(&m, 6, nan_step, loss_scaling);
    run_single(&m, &single);
    w->m = &m;
    w->n_ranks = n_ranks;
    w->flat = flat;
    w->first_step = 0;
    w->end_step = m.steps;
    run_sharded(w, &sharded, NULL);
    same_clip = compare_steps(w, &single, &skipped);
    CHECK(single.counters[0].clip_coef < 1.0f, "clipping was not active (clip coefficient %g)",
          single.counters[0].clip_coef);
    CHECK(skipped == (nan_step >= 0), "%d step(s) skipped, want %d", skipped, nan_step >= 0);
    if (nan_step >= 0) CHECK(single.counters[nan_step].skipped && w->counters[0][nan_step].skipped, "no skip");
    if (!same_clip) printf("# %s: a clip coefficient rounded differently; state compared to 1e-5\n", name);
    compare_state(&m, &single, &sharded, same_clip);
    free_result(&single);
    free_result(&sharded);
    free_model(&m);
    free(w);
    check_case_end(name);
}

/* Begin + end with nothing in between is fadam_fused_step, bit for bit (one rank, whole tensors). */
static void test_begin_end_is_fused_step(void) {
    model m;
    run_result single, split;
    world *w = (world *)calloc(1, sizeof *w);
    int skipped;
    check_case_begin();
    make_model(&m, 5, 2, 1);
    run_single(&m, &single);
    w->m = &m;
    w->n_ranks = 1;
    w->end_step = m.steps;
    run_sharded(w, &split, NULL);
    CHECK(compare_steps(w, &single, &skipped), "a clip coefficient differs");
    {
        int s;
        for (s = 0; s < m.steps; s++)
            CHECK(memcmp(&single.counters[s], &w->counters[0][s], sizeof single.counters[s]) == 0 &&
                      (single.sum[s] == w->sums[0][s] || single.sum[s] != single.sum[s]),
                  "step %d: counters differ from fadam_fused_step's", s + 1);
    }
    compare_state(&m, &single, &split, 1);
    free_result(&single);
    free_result(&split);
    free_model(&m);
    free(w);
    check_case_end("one_rank_begin_end_equals_fused_step");
}

/* Save at `from` ranks after half the steps, load those files at `to` ranks, go on: equal to the
 * uninterrupted single-rank run. Also: a missing shard, and fadam_load of another rank's slice. */
static void test_checkpoint(int from, int to, const char *name) {
    model m;
    run_result single, first, second;
    world *a = (world *)calloc(1, sizeof *a), *b = (world *)calloc(1, sizeof *b);
    char directory[] = "/tmp/fadam_zero_XXXXXX", pattern[64], path[96];
    int skipped, same_clip, q;
    check_case_begin();
    CHECK(mkdtemp(directory) != NULL, "mkdtemp failed");
    snprintf(pattern, sizeof pattern, "%s/rank%%d.safetensors", directory);
    make_model(&m, 8, -1, 1);
    run_single(&m, &single);
    a->m = b->m = &m;
    a->n_ranks = from;
    a->flat = 1;
    a->end_step = b->first_step = 4;
    a->save_pattern = pattern;
    run_sharded(a, &first, NULL);
    b->n_ranks = to;
    b->end_step = m.steps;
    b->load_pattern = pattern;
    b->load_ranks = from;
    run_sharded(b, &second, first.params);
    same_clip = compare_steps(a, &single, &skipped);
    same_clip &= compare_steps(b, &single, &skipped);
    CHECK(b->counters[0][4].step == 5, "the step counter did not resume: t %lld", (long long)b->counters[0][4].step);
    compare_state(&m, &single, &second, same_clip);
    if (from > 1) {
        /* One shard missing: refused, and nothing changed. */
        fadam_optimizer *opt = NULL;
        const char *list[MAX_RANKS];
        char paths[MAX_RANKS][96];
        static float p[N_TENSORS][16], g[N_TENSORS][16];
        float *master, *ms, *vs;
        CHECK(create_optimizer(&m, &opt) == FADAM_SUCCESS, "%s", fadam_last_error_message());
        for (q = 0; q < N_TENSORS; q++) {
            char tensor[32];
            tensor_name(q, tensor);
            CHECK(fadam_add_tensor_shard(opt, tensor, p[q], g[q], m.numel[q] < 16 ? m.numel[q] : 16, m.numel[q], 0,
                                         m.param_dtype[q], m.grad_dtype[q], m.group[q], NULL) == FADAM_SUCCESS,
                  "%s", fadam_last_error_message());
        }
        CHECK(fadam_set_shard_rank(opt, 0, 1) == FADAM_SUCCESS, "%s", fadam_last_error_message());
        CHECK(fadam_finalize(opt, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
        for (q = 0; q < from; q++) {
            snprintf(paths[q], sizeof paths[q], pattern, q);
            list[q] = paths[q];
        }
        CHECK(fadam_load_shards(opt, list, from - 1, NULL) == FADAM_ERR_MISMATCH, "a missing shard accepted: %s",
              fadam_last_error_message());
        list[0] = list[1];
        CHECK(fadam_load_shards(opt, list, from, NULL) == FADAM_ERR_MISMATCH, "a shard twice accepted: %s",
              fadam_last_error_message());
        CHECK(fadam_get_state(opt, N_TENSORS - 1, &master, &ms, &vs) == FADAM_SUCCESS && ms[0] == 0.0f,
              "a refused load changed the state");
        /* Rank 1's file into other slices: refused (here by the element counts). */
        CHECK(fadam_load(opt, paths[1], NULL) == FADAM_ERR_MISMATCH, "another rank's slice loaded: %s",
              fadam_last_error_message());
        fadam_destroy(opt);
    }
    for (q = 0; q < from; q++) {
        snprintf(path, sizeof path, pattern, q);
        unlink(path);
    }
    rmdir(directory);
    free_result(&single);
    free_result(&first);
    free_result(&second);
    free_model(&m);
    free(a);
    free(b);
    check_case_end(name);
}

static void test_api(void) {
    fadam_optimizer *opt = NULL;
    float p[8] = {0}, g[8] = {0};
    double *buffer = NULL;
    int count = 0;
    int64_t offset = -1, numel = -1, index = -1, n = 0;
    const int64_t totals[4] = {0, 1, 10, 13};
    int i, r, ranks;
    check_case_begin();
    /* fadam_shard_range: ceil-sized slices that tile [0, total), empty at the end when needed. */
    for (i = 0; i < 4; i++)
        for (ranks = 1; ranks <= 5; ranks++) {
            int64_t next = 0;
            for (r = 0; r < ranks; r++) {
                CHECK(fadam_shard_range(totals[i], r, ranks, &offset, &numel) == FADAM_SUCCESS, "%s",
                      fadam_last_error_message());
                CHECK(offset == next && numel >= 0 && numel <= (totals[i] + ranks - 1) / ranks,
                      "total %lld rank %d/%d: [%lld, +%lld)", (long long)totals[i], r, ranks, (long long)offset,
                      (long long)numel);
                next = offset + numel;
            }
            CHECK(next == totals[i], "total %lld over %d ranks covers %lld", (long long)totals[i], ranks, (long long)next);
        }
    CHECK(fadam_shard_range(13, 4, 4, &offset, &numel) == FADAM_ERR_INVALID_VALUE, "rank 4 of 4 accepted");
    CHECK(fadam_shard_range(-1, 0, 4, &offset, &numel) == FADAM_ERR_INVALID_VALUE, "total -1 accepted");
    CHECK(fadam_shard_range(1, 0, 0, &offset, &numel) == FADAM_ERR_INVALID_VALUE, "0 ranks accepted");
    CHECK(fadam_shard_range(1, 0, 1, NULL, &numel) == FADAM_ERR_NULL_POINTER, "NULL offset accepted");

    CHECK(fadam_create(&opt, FADAM_DEVICE_CPU, 0, NULL, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    /* Bad slices are refused and register nothing. */
    CHECK(fadam_add_tensor_shard(opt, "a", p, g, 4, 10, 7, FADAM_FLOAT32, FADAM_FLOAT32, 0, &index) ==
              FADAM_ERR_INVALID_VALUE, "slice past the end accepted");
    CHECK(fadam_add_tensor_shard(opt, "a", p, g, 4, 10, -1, FADAM_FLOAT32, FADAM_FLOAT32, 0, &index) ==
              FADAM_ERR_INVALID_VALUE, "negative offset accepted");
    CHECK(fadam_add_tensor_shard(opt, "a", p, g, -1, 10, 0, FADAM_FLOAT32, FADAM_FLOAT32, 0, &index) ==
              FADAM_ERR_INVALID_VALUE, "negative numel accepted");
    CHECK(fadam_add_tensor_shard(opt, "a", p, g, 4, 10, 0, FADAM_FLOAT32, FADAM_FLOAT32, 3, &index) ==
              FADAM_ERR_INVALID_VALUE, "bad group accepted");
    CHECK(fadam_num_tensors(opt, &n) == FADAM_SUCCESS && n == 0 && index == -1, "a refused shard was registered");
    CHECK(fadam_add_tensor(opt, "whole", p, g, 2, FADAM_FLOAT32, FADAM_FLOAT32, 0, NULL) == FADAM_SUCCESS, "%s",
          fadam_last_error_message());
    CHECK(fadam_add_tensor_shard(opt, "a", p + 4, g + 4, 4, 10, 6, FADAM_FLOAT32, FADAM_FLOAT32, 0, &index) ==
              FADAM_SUCCESS && index == 1, "%s", fadam_last_error_message());
    CHECK(fadam_add_tensor_shard(opt, "empty", p, g, 0, 10, 10, FADAM_FLOAT32, FADAM_FLOAT32, 0, NULL) == FADAM_SUCCESS,
          "an empty slice at the end: %s", fadam_last_error_message());
    /* The split step needs the fused step. */
    CHECK(fadam_fused_step_begin(opt, NULL) == FADAM_ERR_BAD_STATE, "begin before finalize accepted");
    CHECK(fadam_fused_step_reduce_buffer(opt, &buffer, &count) == FADAM_ERR_BAD_STATE, "buffer before finalize");
    CHECK(fadam_finalize(opt, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    CHECK(fadam_fused_step_begin(opt, NULL) == FADAM_ERR_BAD_STATE, "begin without the fused step accepted");
    CHECK(fadam_fused_step_end(opt, NULL) == FADAM_ERR_BAD_STATE, "end without the fused step accepted");
    CHECK(fadam_fused_step_end(NULL, NULL) == FADAM_ERR_NULL_POINTER, "end(NULL) accepted");
    CHECK(fadam_add_tensor_shard(opt, "late", p, g, 1, 1, 0, FADAM_FLOAT32, FADAM_FLOAT32, 0, NULL) ==
              FADAM_ERR_BAD_STATE, "a shard after finalize accepted");
    fadam_destroy(opt);
    opt = NULL;
    CHECK(fadam_create(&opt, FADAM_DEVICE_CPU, 0, NULL, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    {
        fadam_fused_step_config c = fadam_fused_step_config_default();
        CHECK(fadam_configure_fused_step(opt, &c) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    }
    CHECK(fadam_add_tensor_shard(opt, "a", p, g, 8, 16, 8, FADAM_FLOAT32, FADAM_FLOAT32, 0, NULL) == FADAM_SUCCESS, "%s",
          fadam_last_error_message());
    CHECK(fadam_finalize(opt, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    CHECK(fadam_fused_step_reduce_buffer(opt, &buffer, &count) == FADAM_SUCCESS && buffer &&
              count == FADAM_FUSED_REDUCE_COUNT, "%s", fadam_last_error_message());
    CHECK(fadam_fused_step_reduce_buffer(opt, NULL, &count) == FADAM_ERR_NULL_POINTER, "NULL buffer accepted");
    for (i = 0; i < 8; i++) g[i] = 0.5f;
    CHECK(fadam_fused_step_begin(opt, NULL) == FADAM_SUCCESS && buffer[0] == 2.0 && buffer[1] == 0.0,
          "begin left [%g, %g], want [2, 0]", buffer[0], buffer[1]);
    g[3] = INFINITY;
    CHECK(fadam_fused_step_begin(opt, NULL) == FADAM_SUCCESS && buffer[1] == 1.0, "Inf: flag %g", buffer[1]);
    /* Another rank's flag alone, with a finite sum, still skips. */
    buffer[0] = 2.0;
    buffer[1] = 1.0;
    CHECK(fadam_fused_step_end(opt, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    {
        fadam_step_counters c;
        CHECK(fadam_read_step_counters(opt, &c, NULL) == FADAM_SUCCESS && c.skipped == 1 && c.step == 0,
              "a flagged buffer did not skip (skipped %d, t %lld)", c.skipped, (long long)c.step);
    }
    fadam_destroy(opt);
    check_case_end("shard_range_registration_and_split_step_api");
}

/* fadam_load takes back the slice that was saved only: rank 1's half of a tensor into rank 0's half
 * (the same element count) is refused; its own file, or fadam_load_shards of both, loads. */
static void test_load_other_slice(void) {
    char directory[] = "/tmp/fadam_zero_XXXXXX", paths[2][96];
    const char *list[2];
    float p[2][10], g[2][10], saved[8], *master, *ms[2], *vs;
    fadam_optimizer *opt[2] = {NULL, NULL};
    fadam_fused_step_config c = fadam_fused_step_config_default();
    int r, k;
    check_case_begin();
    CHECK(mkdtemp(directory) != NULL, "mkdtemp failed");
    for (r = 0; r < 2; r++) {
        snprintf(paths[r], sizeof paths[r], "%s/r%d.safetensors", directory, r);
        list[r] = paths[r];
        for (k = 0; k < 10; k++) p[r][k] = (float)(8 * r + k), g[r][k] = 0.25f * (float)(r + 1);
        CHECK(fadam_create(&opt[r], FADAM_DEVICE_CPU, 0, NULL, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
        CHECK(fadam_configure_fused_step(opt[r], &c) == FADAM_SUCCESS, "%s", fadam_last_error_message());
        CHECK(fadam_add_tensor_shard(opt[r], "w", p[r], g[r], 8, 16, 8 * r, FADAM_FLOAT32, FADAM_FLOAT32, 0, NULL) ==
                  FADAM_SUCCESS, "%s", fadam_last_error_message());
        CHECK(fadam_finalize(opt[r], NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
        CHECK(fadam_save(opt[r], paths[r], NULL) == FADAM_ERR_BAD_STATE, "a shard saved without its rank");
        fadam_destroy(opt[r]);
        CHECK(fadam_create(&opt[r], FADAM_DEVICE_CPU, 0, NULL, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
        CHECK(fadam_configure_fused_step(opt[r], &c) == FADAM_SUCCESS, "%s", fadam_last_error_message());
        CHECK(fadam_add_tensor_shard(opt[r], "w", p[r], g[r], 8, 16, 8 * r, FADAM_FLOAT32, FADAM_FLOAT32, 0, NULL) ==
                  FADAM_SUCCESS, "%s", fadam_last_error_message());
        CHECK(fadam_set_shard_rank(opt[r], r, 2) == FADAM_SUCCESS, "%s", fadam_last_error_message());
        CHECK(fadam_finalize(opt[r], NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
        CHECK(fadam_set_shard_rank(opt[r], r, 2) == FADAM_ERR_BAD_STATE, "set_shard_rank after finalize accepted");
        CHECK(fadam_fused_step(opt[r], NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
        CHECK(fadam_save(opt[r], paths[r], NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
        CHECK(fadam_get_state(opt[r], 0, &master, &ms[r], &vs) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    }
    CHECK(ms[0][0] != ms[1][0], "the two halves' moments are alike: the test cannot tell them apart");
    memcpy(saved, ms[0], sizeof saved);
    CHECK(fadam_load(opt[0], paths[1], NULL) == FADAM_ERR_MISMATCH &&
              strstr(fadam_last_error_message(), "fadam_load_shards"),
          "rank 1's slice loaded into rank 0's: %s", fadam_last_error_message());
    CHECK(memcmp(saved, ms[0], sizeof saved) == 0, "a refused load changed the state");
    CHECK(fadam_load(opt[0], paths[0], NULL) == FADAM_SUCCESS, "its own slice: %s", fadam_last_error_message());
    memset(ms[0], 0, sizeof saved);
    CHECK(fadam_load_shards(opt[0], list, 2, NULL) == FADAM_SUCCESS && memcmp(saved, ms[0], sizeof saved) == 0,
          "load_shards of both halves: %s", fadam_last_error_message());
    /* A "rank 1" whose slice [6, 16) overlaps rank 0's [0, 8): the files do not tile the tensor. */
    fadam_destroy(opt[1]);
    CHECK(fadam_create(&opt[1], FADAM_DEVICE_CPU, 0, NULL, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    CHECK(fadam_configure_fused_step(opt[1], &c) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    CHECK(fadam_add_tensor_shard(opt[1], "w", p[1], g[1], 10, 16, 6, FADAM_FLOAT32, FADAM_FLOAT32, 0, NULL) ==
              FADAM_SUCCESS, "%s", fadam_last_error_message());
    CHECK(fadam_set_shard_rank(opt[1], 1, 2) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    CHECK(fadam_finalize(opt[1], NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    CHECK(fadam_fused_step(opt[1], NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    CHECK(fadam_save(opt[1], paths[1], NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    memcpy(saved, ms[0], sizeof saved);
    CHECK(fadam_load_shards(opt[0], list, 2, NULL) == FADAM_ERR_MISMATCH && strstr(fadam_last_error_message(), "tile"),
          "overlapping slices accepted: %s", fadam_last_error_message());
    CHECK(memcmp(saved, ms[0], sizeof saved) == 0, "a refused load_shards changed the state");
    for (r = 0; r < 2; r++) {
        fadam_destroy(opt[r]);
        unlink(paths[r]);
    }
    rmdir(directory);
    check_case_end("load_refuses_another_slice_load_shards_reassembles");
}

int main(void) {
    rng = check_seed("test_zero");
    test_api();
    test_begin_end_is_fused_step();
    test_ranks(1, 0, -1, 0, "ranks1_equal_single_rank_clipped");
    test_ranks(2, 0, -1, 0, "ranks2_equal_single_rank_clipped");
    test_ranks(3, 0, -1, 0, "ranks3_equal_single_rank_clipped");
    test_ranks(4, 0, -1, 0, "ranks4_uneven_and_empty_slices_equal_single_rank_clipped");
    test_ranks(3, 1, -1, 0, "ranks3_flat_shard_equal_single_rank_clipped");
    test_ranks(4, 0, 3, 1, "ranks4_nonfinite_on_one_rank_skips_every_rank_loss_scaled");
    test_ranks(3, 1, 1, 0, "ranks3_flat_nonfinite_skips_every_rank");
    test_load_other_slice();
    test_checkpoint(4, 2, "checkpoint_saved_at_4_ranks_loaded_at_2_continues_equal");
    test_checkpoint(2, 3, "checkpoint_saved_at_2_ranks_loaded_at_3_continues_equal");
    test_checkpoint(1, 4, "checkpoint_saved_at_1_rank_loaded_at_4_continues_equal");
    return check_exit_code();
}
