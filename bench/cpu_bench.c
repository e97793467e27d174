/* cpu_bench.c - the CPU implementation of the step on the benchmark's parameter sets, scaled down
 * (model_shapes.h: the same tensors, every numel divided by a per-set divisor) so that the whole run
 * takes about a minute on two cores.
 *
 * Versions, each validated bit for bit against version 0 after one step from the same inputs, then timed:
 *   0  the readable reference, fadam_reference_update tensor by tensor (csrc/reference.c, internal):
 *      every ratio is against it
 *   1  fadam_cpu_step: the library's CPU path as users call it (csrc/cpu_step.c), on the calling thread
 *   2  the managed optimizer on FADAM_DEVICE_CPU (fadam_step): the same path on its default threads
 *      (one per core), the optimizer's own state
 *   3  a loop written here, one function per dtype pair with the scalars hoisted and every pointer
 *      restrict, which the compiler vectorizes. Not library code: a yardstick for the library's path.
 *   4  version 3 split over OpenMP threads in 64K-element chunks.
 *   5  fadam_cpu_step_pool with a fadam_cpu_pool of one thread per core: version 1 threaded.
 * Per case: elements, tensors, bytes moved (docs/NUMERICS.md), median time per step, GB/s, percent
 * of one thread's memcpy bandwidth (read + write), and speed relative to version 0.
 * A set is replicated and the replicas stepped in turn until a step's inputs were last touched two
 * last-level caches' worth of data ago, so no step finds them in the cache.
 *
 * Usage: cpu_bench [--sets=NAME,...] [--versions=0,1,2,3,4,5] [--seconds=S] [--dump-shapes]
 *   --dump-shapes   print every parameter set as TSV (torch_bench.py reads it) and exit
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "adam_math.h"
#include "bench_init.h"
#include "fusedadam.h"
#include "internal.h" /* fadam_reference_update: the readable loop, version 0 */
#include "model_shapes.h"

#define N_VERSIONS 6
#define MAX_REPEATS 200
#define MIN_REPEATS 5
#define MAX_REPLICAS 8
#define BUFFER_ALIGNMENT 64
#define CHUNK_ELEMS (64 * 1024)

static const char *const version_names[N_VERSIONS] = {
    "0 readable reference",
    "1 fadam_cpu_step, 1 thread",
    "2 managed optimizer, CPU, all threads",
    "3 bench loop, 1 thread",
    "4 bench loop, OpenMP",
    "5 fadam_cpu_step_pool, all threads",
};

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int compare_doubles(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *values, int count) {
    qsort(values, (size_t)count, sizeof *values, compare_doubles);
    return count % 2 ? values[count / 2] : 0.5 * (values[count / 2 - 1] + values[count / 2]);
}

static void *xaligned_alloc(size_t bytes) {
    void *pointer = aligned_alloc(BUFFER_ALIGNMENT, (bytes + BUFFER_ALIGNMENT - 1) / BUFFER_ALIGNMENT * BUFFER_ALIGNMENT);
    if (!pointer) {
        fprintf(stderr, "cpu_bench: cannot allocate %zu bytes\n", bytes);
        exit(2);
    }
    return pointer;
}

static void require_ok(fadam_status status, const char *what) {
    if (status != FADAM_SUCCESS) {
        fprintf(stderr, "cpu_bench: %s: %s: %s\n", what, fadam_status_string(status), fadam_last_error_message());
        exit(2);
    }
}

/* ---- the buffers of one case: R replicas of the whole set, each one block ---- */

typedef struct bench_case {
    const bench_model *model;
    const bench_precision *precision;
    int replicas;
    size_t block_bytes;
    unsigned char *blocks[MAX_REPLICAS];
    fadam_tensor *tensors[MAX_REPLICAS]; /* per replica, pointing into its block */
    unsigned char *pristine;             /* replica 0 as initialised */
    unsigned char *expected;             /* replica 0 after one step of version 0 */
    fadam_hparams groups[2];
} bench_case;

static size_t round_up(size_t value) { return (value + BUFFER_ALIGNMENT - 1) / BUFFER_ALIGNMENT * BUFFER_ALIGNMENT; }

/* Lays out param, grad, master (bf16 params only), exp_avg, exp_avg_sq of every tensor in one block. */
static size_t plan_block(const bench_case *c, fadam_tensor *tensors, uintptr_t base) {
    size_t offset = 0;
    int64_t i;
    for (i = 0; i < c->model->n_tensors; i++) {
        fadam_tensor *t = &tensors[i];
        size_t n = (size_t)c->model->tensors[i].numel;
        memset(t, 0, sizeof *t);
        t->numel = (int64_t)n;
        t->param_dtype = c->precision->param_bf16 ? FADAM_BFLOAT16 : FADAM_FLOAT32;
        t->grad_dtype = c->precision->grad_bf16 ? FADAM_BFLOAT16 : FADAM_FLOAT32;
        t->group = c->model->tensors[i].no_decay;
        t->param = (void *)(base + offset);
        offset += round_up(n * fadam_dtype_size(t->param_dtype));
        t->grad = (const void *)(base + offset);
        offset += round_up(n * fadam_dtype_size(t->grad_dtype));
        if (c->precision->param_bf16) {
            t->master = (float *)(base + offset);
            offset += round_up(n * 4);
        }
        t->exp_avg = (float *)(base + offset);
        offset += round_up(n * 4);
        t->exp_avg_sq = (float *)(base + offset);
        offset += round_up(n * 4);
    }
    return offset;
}

static void fill_buffer(void *buffer, int bf16, int64_t numel, uint64_t key, int role) {
    int64_t i;
    if (bf16) {
        uint16_t *out = (uint16_t *)buffer;
        for (i = 0; i < numel; i++) out[i] = bench_bf16_bits_of_exact(bench_value(key, i, role, 1));
    } else {
        float *out = (float *)buffer;
        for (i = 0; i < numel; i++) out[i] = bench_value(key, i, role, 0);
    }
}

static void init_replica(const bench_case *c, int replica) {
    int64_t i;
    int param_bf16 = c->precision->param_bf16;
    for (i = 0; i < c->model->n_tensors; i++) {
        const fadam_tensor *t = &c->tensors[replica][i];
        fill_buffer(t->param, param_bf16, t->numel, bench_key(replica, i, BENCH_ROLE_PARAM), BENCH_ROLE_PARAM);
        fill_buffer((void *)t->grad, c->precision->grad_bf16, t->numel, bench_key(replica, i, BENCH_ROLE_GRAD),
                    BENCH_ROLE_GRAD);
        /* The master of a bf16 param starts as the param's value (exact in bf16). */
        if (t->master) {
            int64_t j;
            for (j = 0; j < t->numel; j++) t->master[j] = bench_value(bench_key(replica, i, BENCH_ROLE_PARAM), j, BENCH_ROLE_PARAM, 1);
        }
        fill_buffer(t->exp_avg, 0, t->numel, bench_key(replica, i, BENCH_ROLE_EXP_AVG), BENCH_ROLE_EXP_AVG);
        fill_buffer(t->exp_avg_sq, 0, t->numel, bench_key(replica, i, BENCH_ROLE_EXP_AVG_SQ), BENCH_ROLE_EXP_AVG_SQ);
    }
}

/* The largest CPU cache sysfs reports (32 MiB if it says nothing). */
static size_t last_level_cache_bytes(void) {
    size_t best = 0;
    int index;
    for (index = 0; index < 8; index++) {
        char path[96], unit = 0;
        unsigned long size = 0;
        FILE *file;
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/size", index);
        file = fopen(path, "r");
        if (!file) continue;
        if (fscanf(file, "%lu%c", &size, &unit) >= 1) {
            size_t bytes = unit == 'K' ? size << 10 : unit == 'M' ? size << 20 : size;
            if (bytes > best) best = bytes;
        }
        fclose(file);
    }
    return best ? best : (size_t)32 << 20;
}

static void case_setup(bench_case *c, const bench_model *model, const bench_precision *precision) {
    int r;
    size_t set_bytes, rotation_bytes = 2 * last_level_cache_bytes();
    memset(c, 0, sizeof *c);
    c->model = model;
    c->precision = precision;
    c->tensors[0] = (fadam_tensor *)malloc((size_t)model->n_tensors * sizeof(fadam_tensor));
    c->block_bytes = plan_block(c, c->tensors[0], 0);
    set_bytes = (size_t)bench_model_elements(model) * (size_t)bench_precision_footprint(precision);
    c->replicas = set_bytes >= rotation_bytes ? 1 : (int)((rotation_bytes + set_bytes - 1) / set_bytes);
    if (c->replicas > MAX_REPLICAS) c->replicas = MAX_REPLICAS;
    for (r = 0; r < c->replicas; r++) {
        if (r > 0) c->tensors[r] = (fadam_tensor *)malloc((size_t)model->n_tensors * sizeof(fadam_tensor));
        if (!c->tensors[r]) {
            fprintf(stderr, "cpu_bench: out of host memory\n");
            exit(2);
        }
        c->blocks[r] = (unsigned char *)xaligned_alloc(c->block_bytes);
        plan_block(c, c->tensors[r], (uintptr_t)c->blocks[r]);
        init_replica(c, r);
    }
    c->pristine = (unsigned char *)xaligned_alloc(c->block_bytes);
    c->expected = (unsigned char *)xaligned_alloc(c->block_bytes);
    memcpy(c->pristine, c->blocks[0], c->block_bytes);
    c->groups[0] = fadam_hparams_default();
    c->groups[0].weight_decay = 0.1f;
    c->groups[1] = c->groups[0];
    c->groups[1].weight_decay = 0.0f;
}

static void case_free(bench_case *c) {
    int r;
    for (r = 0; r < c->replicas; r++) {
        free(c->blocks[r]);
        free(c->tensors[r]);
    }
    free(c->pristine);
    free(c->expected);
}

/* ---- validation: bitwise against version 0, with the size of any difference ---- */

typedef struct mismatch {
    int64_t count;
    double max_relative;
} mismatch;

static void compare_floats(const float *got, const float *want, int64_t n, mismatch *out) {
    int64_t i;
    for (i = 0; i < n; i++) {
        if (memcmp(&got[i], &want[i], sizeof(float)) != 0) {
            double scale = fabs((double)want[i]) > 1e-30 ? fabs((double)want[i]) : 1e-30;
            double relative = fabs((double)got[i] - (double)want[i]) / scale;
            out->count++;
            if (!(relative <= out->max_relative)) out->max_relative = relative; /* NaN too */
        }
    }
}

static void compare_bf16(const uint16_t *got, const uint16_t *want, int64_t n, mismatch *out) {
    int64_t i;
    for (i = 0; i < n; i++) {
        if (got[i] != want[i]) {
            double w = bench_bf16_bits_to_float(want[i]), g = bench_bf16_bits_to_float(got[i]);
            double relative = fabs(g - w) / (fabs(w) > 1e-30 ? fabs(w) : 1e-30);
            out->count++;
            if (!(relative <= out->max_relative)) out->max_relative = relative;
        }
    }
}

/* Offset of a pointer of replica 0 inside its block, to find the same buffer in expected/pristine. */
static size_t offset_in_block0(const bench_case *c, const void *pointer) {
    return (size_t)((const unsigned char *)pointer - c->blocks[0]);
}

/* Compares replica 0's outputs (param, and master/m/v from `state`, which is replica 0's own tensor
 * list or the managed optimizer's) with the expected block. */
static mismatch compare_with_expected(const bench_case *c, const fadam_tensor *state) {
    mismatch result = {0, 0.0};
    int64_t i;
    for (i = 0; i < c->model->n_tensors; i++) {
        const fadam_tensor *t = &c->tensors[0][i];
        const fadam_tensor *s = &state[i];
        const unsigned char *e = c->expected;
        if (c->precision->param_bf16) {
            compare_bf16((const uint16_t *)t->param, (const uint16_t *)(e + offset_in_block0(c, t->param)), t->numel,
                         &result);
            compare_floats(s->master, (const float *)(e + offset_in_block0(c, t->master)), t->numel, &result);
        } else {
            compare_floats((const float *)t->param, (const float *)(e + offset_in_block0(c, t->param)), t->numel,
                           &result);
        }
        compare_floats(s->exp_avg, (const float *)(e + offset_in_block0(c, t->exp_avg)), t->numel, &result);
        compare_floats(s->exp_avg_sq, (const float *)(e + offset_in_block0(c, t->exp_avg_sq)), t->numel, &result);
    }
    return result;
}

/* ---- version 2: the specialized loop ---- */

static inline float bf16_to_float(uint16_t bits) {
    uint32_t wide = (uint32_t)bits << 16;
    float value;
    memcpy(&value, &wide, sizeof value);
    return value;
}

/* Round to nearest even, NaN kept quiet: the reference's rule, written without a branch. */
static inline uint16_t float_to_bf16(float value) {
    uint32_t bits, rounded, quiet;
    memcpy(&bits, &value, sizeof bits);
    rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
    quiet = (bits >> 16) | 0x0040u;
    return (uint16_t)((bits & 0x7FFFFFFFu) > 0x7F800000u ? quiet : rounded);
}

/* One loop body for every dtype pair; `param_bf16`/`grad_bf16` and the three flags are constants at
 * each call site below, so each instantiation is a straight loop the compiler vectorizes. The order
 * of operations is the reference's, so the results are the same bits. */
static inline __attribute__((always_inline)) void specialized_range(const fadam_tensor *t, int64_t begin, int64_t end,
                                                                    const fadam_group_scalars *s, int param_bf16,
                                                                    int grad_bf16, int maximize, int coupled,
                                                                    int decoupled) {
    float *restrict param32 = (float *)t->param;
    uint16_t *restrict param16 = (uint16_t *)t->param;
    const float *restrict grad32 = (const float *)t->grad;
    const uint16_t *restrict grad16 = (const uint16_t *)t->grad;
    float *restrict master = t->master;
    float *restrict exp_avg = t->exp_avg;
    float *restrict exp_avg_sq = t->exp_avg_sq;
    fadam_loop_scalars loop = fadam_loop_scalars_of(s); /* the rule function's scalars (kernels/rules.h) */
    int64_t i;
    (void)maximize, (void)decoupled; /* folded into the loop scalars */
    if (!coupled) loop.coupled_decay = 0;
    for (i = begin; i < end; i++) {
        float p = param_bf16 ? master[i] : param32[i];
        float g = grad_bf16 ? bf16_to_float(grad16[i]) : grad32[i];
        float m = exp_avg[i], v = exp_avg_sq[i];
        fadam_adam_element(&p, g, &m, &v, &loop);
        exp_avg[i] = m;
        exp_avg_sq[i] = v;
        if (param_bf16) {
            master[i] = p;
            param16[i] = float_to_bf16(p);
        } else {
            param32[i] = p;
        }
    }
}

#define SPECIALIZED(name, param_bf16, grad_bf16)                                                                  \
    static void name(const fadam_tensor *t, int64_t begin, int64_t end, const fadam_group_scalars *s) {          \
        if (!s->maximize && !s->coupled_decay && s->decoupled_decay)                                              \
            specialized_range(t, begin, end, s, param_bf16, grad_bf16, 0, 0, 1); /* AdamW, the usual case */    \
        else                                                                                                      \
            specialized_range(t, begin, end, s, param_bf16, grad_bf16, s->maximize, s->coupled_decay,           \
                              s->decoupled_decay);                                                                \
    }
SPECIALIZED(specialized_fp32_fp32, 0, 0)
SPECIALIZED(specialized_bf16_bf16, 1, 1)
SPECIALIZED(specialized_bf16_fp32, 1, 0)
#undef SPECIALIZED

typedef void (*range_function)(const fadam_tensor *, int64_t, int64_t, const fadam_group_scalars *);

/* The bench's configurations only: fp32 param, or bf16 param with an fp32 master. */
static range_function specialized_for(const fadam_tensor *t) {
    if (t->param_dtype == FADAM_FLOAT32) return specialized_fp32_fp32;
    return t->grad_dtype == FADAM_BFLOAT16 ? specialized_bf16_bf16 : specialized_bf16_fp32;
}

/* Every tensor cut into CHUNK_ELEMS pieces, so threads share big tensors and small ones alike. */
typedef struct chunk {
    int32_t tensor;
    int64_t begin, end;
} chunk;

typedef struct chunk_list {
    chunk *chunks;
    int64_t count;
} chunk_list;

static chunk_list make_chunks(const bench_model *model) {
    chunk_list list = {NULL, 0};
    int64_t i, n = 0, begin;
    for (i = 0; i < model->n_tensors; i++) n += (model->tensors[i].numel + CHUNK_ELEMS - 1) / CHUNK_ELEMS;
    list.chunks = (chunk *)malloc((size_t)(n ? n : 1) * sizeof(chunk));
    for (i = 0; i < model->n_tensors; i++)
        for (begin = 0; begin < model->tensors[i].numel; begin += CHUNK_ELEMS) {
            chunk *k = &list.chunks[list.count++];
            k->tensor = (int32_t)i;
            k->begin = begin;
            k->end = begin + CHUNK_ELEMS < model->tensors[i].numel ? begin + CHUNK_ELEMS : model->tensors[i].numel;
        }
    return list;
}

static void specialized_step(const fadam_tensor *tensors, int64_t n_tensors, const fadam_hparams *groups,
                             int64_t step) {
    fadam_group_scalars scalars[2];
    int64_t i;
    scalars[0] = fadam_compute_group_scalars(&groups[0], groups[0].lr, step);
    scalars[1] = fadam_compute_group_scalars(&groups[1], groups[1].lr, step);
    for (i = 0; i < n_tensors; i++)
        specialized_for(&tensors[i])(&tensors[i], 0, tensors[i].numel, &scalars[tensors[i].group]);
}

static void specialized_step_threads(const fadam_tensor *tensors, const chunk_list *chunks,
                                     const fadam_hparams *groups, int64_t step) {
    fadam_group_scalars scalars[2];
    int64_t k;
    scalars[0] = fadam_compute_group_scalars(&groups[0], groups[0].lr, step);
    scalars[1] = fadam_compute_group_scalars(&groups[1], groups[1].lr, step);
#pragma omp parallel for schedule(dynamic, 8)
    for (k = 0; k < chunks->count; k++) {
        const chunk *piece = &chunks->chunks[k];
        const fadam_tensor *t = &tensors[piece->tensor];
        specialized_for(t)(t, piece->begin, piece->end, &scalars[t->group]);
    }
}

/* ---- one version: validate, then time ---- */

typedef struct version_result {
    int ran;
    double seconds;   /* median per step */
    mismatch check;
} version_result;

typedef struct version_state {
    fadam_optimizer *optimizers[MAX_REPLICAS]; /* version 2 */
    fadam_cpu_pool *pool;                      /* version 5 */
    chunk_list chunks;                         /* version 4 */
    int64_t step;
} version_state;

static void reference_step(const fadam_tensor *tensors, int64_t n_tensors, const fadam_hparams *groups, int64_t step) {
    fadam_group_scalars scalars[2];
    int64_t i;
    scalars[0] = fadam_compute_group_scalars(&groups[0], groups[0].lr, step);
    scalars[1] = fadam_compute_group_scalars(&groups[1], groups[1].lr, step);
    for (i = 0; i < n_tensors; i++) fadam_reference_update(&tensors[i], &scalars[tensors[i].group], step);
}

static void run_one_step(bench_case *c, version_state *state, int version, int replica) {
    fadam_step_source source;
    state->step++;
    memset(&source, 0, sizeof source);
    source.step = state->step;
    switch (version) {
    case 0: reference_step(c->tensors[replica], c->model->n_tensors, c->groups, state->step); break;
    case 1: require_ok(fadam_cpu_step(c->tensors[replica], c->model->n_tensors, c->groups, 2, &source), "fadam_cpu_step"); break;
    case 2: require_ok(fadam_step(state->optimizers[replica], NULL), "fadam_step"); break;
    case 3: specialized_step(c->tensors[replica], c->model->n_tensors, c->groups, state->step); break;
    case 5:
        require_ok(fadam_cpu_step_pool(state->pool, c->tensors[replica], c->model->n_tensors, c->groups, 2, &source),
                   "fadam_cpu_step_pool");
        break;
    default: specialized_step_threads(c->tensors[replica], &state->chunks, c->groups, state->step); break;
    }
}

static void setup_managed(bench_case *c, version_state *state) {
    int r;
    int64_t i;
    for (r = 0; r < c->replicas; r++) {
        fadam_optimizer *opt = NULL;
        require_ok(fadam_create(&opt, FADAM_DEVICE_CPU, 0, &c->groups[0], NULL), "fadam_create");
        require_ok(fadam_add_group(opt, &c->groups[1], NULL), "fadam_add_group");
        for (i = 0; i < c->model->n_tensors; i++) {
            const fadam_tensor *t = &c->tensors[r][i];
            require_ok(fadam_add_tensor(opt, c->model->tensors[i].name, t->param, t->grad, t->numel, t->param_dtype,
                                        t->grad_dtype, t->group, NULL),
                       "fadam_add_tensor");
        }
        require_ok(fadam_finalize(opt, NULL), "fadam_finalize");
        state->optimizers[r] = opt;
    }
}

/* The managed optimizer's state of replica 0 (version 2), as a tensor list, set to the pristine values. */
static fadam_tensor *managed_state_from_pristine(bench_case *c, version_state *state) {
    fadam_tensor *list = (fadam_tensor *)malloc((size_t)c->model->n_tensors * sizeof(fadam_tensor));
    int64_t i;
    for (i = 0; i < c->model->n_tensors; i++) {
        const fadam_tensor *t = &c->tensors[0][i];
        size_t bytes = (size_t)t->numel * sizeof(float);
        list[i] = *t;
        require_ok(fadam_get_state(state->optimizers[0], i, &list[i].master, &list[i].exp_avg, &list[i].exp_avg_sq),
                   "fadam_get_state");
        if (list[i].master) memcpy(list[i].master, c->pristine + offset_in_block0(c, t->master), bytes);
        memcpy(list[i].exp_avg, c->pristine + offset_in_block0(c, t->exp_avg), bytes);
        memcpy(list[i].exp_avg_sq, c->pristine + offset_in_block0(c, t->exp_avg_sq), bytes);
    }
    return list;
}

static version_result run_version(bench_case *c, int version, double target_seconds) {
    version_result result;
    version_state state;
    double samples[MAX_REPEATS], started;
    int count = 0, r;
    memset(&result, 0, sizeof result);
    memset(&state, 0, sizeof state);
    if (version == 2) setup_managed(c, &state);
    if (version == 4) state.chunks = make_chunks(c->model);
    if (version == 5) require_ok(fadam_cpu_pool_create(&state.pool, 0), "fadam_cpu_pool_create");

    /* One step at t = 1 from the pristine inputs; version 0's result is what the others must match. */
    memcpy(c->blocks[0], c->pristine, c->block_bytes);
    if (version == 2) {
        fadam_tensor *managed = managed_state_from_pristine(c, &state);
        run_one_step(c, &state, version, 0);
        result.check = compare_with_expected(c, managed);
        free(managed);
    } else {
        run_one_step(c, &state, version, 0);
        if (version == 0) memcpy(c->expected, c->blocks[0], c->block_bytes);
        else result.check = compare_with_expected(c, c->tensors[0]);
    }

    if (result.check.count == 0) {
        for (r = 1; r < c->replicas; r++) run_one_step(c, &state, version, r); /* warm-up: one rotation */
        started = now_seconds();
        while (count < MAX_REPEATS && (count < MIN_REPEATS || now_seconds() - started < target_seconds)) {
            double t0 = now_seconds();
            run_one_step(c, &state, version, count % c->replicas);
            samples[count++] = now_seconds() - t0;
        }
        result.seconds = median(samples, count);
        result.ran = 1;
    }
    for (r = 0; r < c->replicas; r++) fadam_destroy(state.optimizers[r]);
    fadam_cpu_pool_destroy(state.pool);
    free(state.chunks.chunks);
    return result;
}

/* ---- memcpy bandwidth, one thread: bytes read + written per second ---- */

static double measure_memcpy_bandwidth(void) {
    size_t bytes = (size_t)256 << 20;
    unsigned char *source = (unsigned char *)xaligned_alloc(bytes), *destination = (unsigned char *)xaligned_alloc(bytes);
    double samples[10];
    int i;
    memset(source, 1, bytes);
    memset(destination, 2, bytes);
    for (i = 0; i < 10; i++) {
        double t0 = now_seconds();
        memcpy(destination, source, bytes);
        samples[i] = now_seconds() - t0;
        source[i] = destination[bytes - 1 - (size_t)i]; /* keep the copies observable */
    }
    free(source);
    free(destination);
    return 2.0 * (double)bytes / median(samples, 10);
}

/* ---- command line and main ---- */

static int parse_list(const char *text, const char *const *names, int n_names, int *selected) {
    char buffer[512];
    char *token, *save = NULL;
    int i;
    snprintf(buffer, sizeof buffer, "%s", text);
    for (i = 0; i < n_names; i++) selected[i] = 0;
    for (token = strtok_r(buffer, ",", &save); token; token = strtok_r(NULL, ",", &save)) {
        int found = 0;
        for (i = 0; i < n_names; i++)
            if (strcmp(token, names[i]) == 0) selected[i] = found = 1;
        if (!found) {
            fprintf(stderr, "cpu_bench: unknown name '%s'\n", token);
            return 0;
        }
    }
    return 1;
}

/* What fadam_cpu_pool_create(.., 0) starts: a pool says its own count. */
static int default_threads(void) {
    fadam_cpu_pool *pool = NULL;
    int n = 1;
    require_ok(fadam_cpu_pool_create(&pool, 0), "fadam_cpu_pool_create");
    require_ok(fadam_cpu_pool_threads(pool, &n), "fadam_cpu_pool_threads");
    fadam_cpu_pool_destroy(pool);
    return n;
}

static void print_cpu_model(void) {
    FILE *info = fopen("/proc/cpuinfo", "r");
    char line[256];
    const char *model = "unknown CPU";
    static char found[256];
    if (info) {
        while (fgets(line, sizeof line, info))
            if (strncmp(line, "model name", 10) == 0) {
                char *colon = strchr(line, ':');
                if (colon) {
                    snprintf(found, sizeof found, "%s", colon + 2);
                    found[strcspn(found, "\n")] = 0;
                    model = found;
                }
                break;
            }
        fclose(info);
    }
    printf("cpu: %s, %ld cores online", model, sysconf(_SC_NPROCESSORS_ONLN));
#ifdef _OPENMP
    printf(", OpenMP threads %d (version 4)", omp_get_max_threads());
#else
    printf(", no OpenMP (version 4 runs on one thread)");
#endif
    printf("\n");
}

int main(int argc, char **argv) {
    static const char *const version_keys[N_VERSIONS] = {"0", "1", "2", "3", "4", "5"};
    int sets[BENCH_N_SETS], versions[N_VERSIONS], s, p, v, i, failures = 0;
    double target_seconds = 0.25, copy_bandwidth;
    for (s = 0; s < BENCH_N_SETS; s++) sets[s] = 1;
    for (v = 0; v < N_VERSIONS; v++) versions[v] = 1;
    for (i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--dump-shapes") == 0) {
            bench_dump_shapes(stdout);
            return 0;
        } else if (strncmp(argv[i], "--sets=", 7) == 0) {
            if (!parse_list(argv[i] + 7, bench_set_names, BENCH_N_SETS, sets)) return 2;
        } else if (strncmp(argv[i], "--versions=", 11) == 0) {
            if (!parse_list(argv[i] + 11, version_keys, N_VERSIONS, versions)) return 2;
        } else if (strncmp(argv[i], "--seconds=", 10) == 0) {
            target_seconds = atof(argv[i] + 10);
        } else {
            fprintf(stderr, "usage: %s [--sets=NAME,...] [--versions=0,1,2,3,4,5] [--seconds=S] [--dump-shapes]\n"
                            "sets: gpt2-124M gpt2-1.5B llama3-8B 10k-small one-2^30\n", argv[0]);
            return 2;
        }
    }
    versions[0] = 1; /* every ratio and every check is against version 0 */

    printf("## CPU: the CPU implementation, scaled-down sets (fusedadam %s)\n\n", fadam_version_string());
    print_cpu_model();
    copy_bandwidth = measure_memcpy_bandwidth();
    printf("memcpy bandwidth, 1 thread, 256 MiB (read + write): %.1f GB/s\n", copy_bandwidth / 1e9);
    printf("versions: 0 = the readable reference loop (csrc/reference.c), the base of every ratio;\n"
           "          1 = fadam_cpu_step (the library's CPU path, 1 thread); 2 = managed optimizer (fadam_step, CPU,\n"
           "          its default threads); 5 = fadam_cpu_step_pool, a pool of the default threads (all: %d);\n"
           "          3, 4 = a loop written in the bench (not library code), 1 thread / OpenMP: a yardstick.\n"
           "check: bitwise against version 0 after one step. speedup: version 0 time / this time.\n\n",
           default_threads());
    printf("| set | precision | version | elements | tensors | MB moved | median ms | GB/s | %% memcpy | speedup | check |\n");
    printf("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n");
    fflush(stdout);

    for (s = 0; s < BENCH_N_SETS; s++) {
        bench_model model;
        char label[96];
        if (!sets[s]) continue;
        bench_model_build(&model, (bench_set)s, bench_cpu_divisors[s]);
        bench_model_label(&model, label, sizeof label);
        for (p = 0; p < BENCH_N_PRECISIONS; p++) {
            bench_case c;
            double reference_seconds = 0.0;
            int64_t elements = bench_model_elements(&model);
            double bytes = (double)elements * bench_precisions[p].bytes_per_element;
            case_setup(&c, &model, &bench_precisions[p]);
            for (v = 0; v < N_VERSIONS; v++) {
                version_result r;
                char check[64];
                if (!versions[v]) continue;
                r = run_version(&c, v, target_seconds);
                if (v == 0) snprintf(check, sizeof check, "reference");
                else if (r.check.count == 0) snprintf(check, sizeof check, "bitwise");
                else {
                    snprintf(check, sizeof check, "FAIL: %lld differ, max rel %.2g", (long long)r.check.count,
                             r.check.max_relative);
                    failures++;
                }
                if (v == 0) reference_seconds = r.seconds;
                if (r.ran)
                    printf("| %s | %s | %s | %lld | %lld | %.1f | %.2f | %.2f | %.0f%% | %.2fx | %s |\n", label,
                           bench_precisions[p].label, version_names[v], (long long)elements,
                           (long long)model.n_tensors, bytes / 1e6, r.seconds * 1e3, bytes / r.seconds / 1e9,
                           100.0 * bytes / r.seconds / copy_bandwidth, reference_seconds / r.seconds, check);
                else
                    printf("| %s | %s | %s | %lld | %lld | %.1f | - | - | - | - | %s |\n", label,
                           bench_precisions[p].label, version_names[v], (long long)elements,
                           (long long)model.n_tensors, bytes / 1e6, check);
                fflush(stdout);
            }
            case_free(&c);
        }
        bench_model_free(&model);
    }
    printf("\nCPU bench: %d check(s) failed\n", failures);
    return failures ? 1 : 0;
}
