/* adam_step_bench.cu - the fused step on real model shapes, against the measured copy bandwidth.
 *
 * Numbered versions side by side, each validated against the CPU reference (fadam_cpu_step) after one
 * step from the same inputs, then timed:
 *   0  naive: one launch per tensor of a one-element-per-thread kernel written here (a baseline)
 *   1  the managed optimizer: fadam_create(FADAM_DEVICE_CUDA) + fadam_step
 *   2  the functional call: fadam_table_encode once, fadam_step_table per step
 *   3  the fused step: fadam_fused_step (norm pass, clip, update; a limit no norm reaches)
 * Rows per set: fp32; bf16 params with fp32 masters and bf16 or fp32 grads (model_shapes.h's
 * precisions); then, on llama3-8B only by default (--lean-sets) and with versions 2 and 3
 * (--lean-versions), the memory-lean state layouts of issue 12 with bf16 params and grads (remainder
 * master + fp32 moments; fp32 master + bf16 or int8 moments; remainder + bf16 or int8 moments) and a
 * Lion row (fp32 master and moment), their states allocated at their real sizes.
 * Inputs are a pure function of (replica, tensor, buffer, element) (bench_init.h), filled by a kernel
 * (lean states as valid encodings: any remainder, 8-bit codes under positive scales); the host
 * recomputes sampled elements (all of a small tensor; the ends, chunk boundaries and random ones of a
 * large one; for 8-bit moments their whole blocks, whose absmax is the new scale), steps them with
 * fadam_cpu_step in the same layout, rounding seeds and element offsets, and compares bit for bit
 * (stochastic rounding's bits are a function of seed, step and element, so they agree too).
 *
 * Timing: CUDA events around batches of back-to-back steps (so a step's time is the GPU's, not the
 * launch latency of an idle GPU), after a warm-up batch; the median over the batches of --seconds, at
 * least 10 and at most 200 (3 suffice once they take --seconds: a large set, tens of ms a step). A set
 * smaller than 4x the L2 cache is replicated and the replicas stepped in turn, so no step finds its
 * inputs in L2. Host time per step: the CPU time of the step call itself (it only enqueues), median.
 * Bytes moved per element: bench/roofline.h, a copy of the list in kernels/adam_step.cu's opening
 * comment (28, 28, 30; lean: 26, 20, 16 + 16/256, 18, 14 + 16/256; Lion bf16: 20), kept equal to it by
 * tests/test_bench_roofline.c; the fused step, version 3, adds the norm pass's read of the gradient, 2
 * or 4. The copy bandwidth is that of cudaMemcpyAsync device-to-device on a buffer far larger than
 * L2, counting bytes read + written.
 *
 * Usage: adam_step_bench [--sets=NAME,...] [--versions=0,1,2,3] [--lean-sets=NAME,...|none]
 *                        [--lean-versions=1,2,3] [--seconds=S] [--divisor=N] [--quick]
 *   --lean-sets  the sets with lean-layout and Lion rows (default llama3-8B); --lean-versions their
 *                versions (default 2,3; 0, the naive kernel, keeps fp32 states only)
 *   --divisor=N  every tensor's numel divided by N (a quick look, or a GPU with little memory)
 *   --quick      one timed batch per case and version: checks the harness, not the speed
 * Without a CUDA device it prints "skipped: no CUDA device" and exits 0.
 */
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <vector>

#include "adam_math.h"
#include "bench_init.h"
#include "fusedadam.h"
#include "launch.cuh"
#include "model_shapes.h"
#include "roofline.h"
#include "state_layout.h"

#define N_VERSIONS 4
#define MAX_REPLICAS 16
#define STATE_ALIGNMENT 256
#define FILL_CHUNK_ELEMS (64 * 1024)
/* Timed batches per version and case; --quick makes it 1 (a smoke test of the harness). */
static int min_batches = 10, max_batches = 200;

static const char *const version_names[N_VERSIONS] = {
    "0 naive, 1 launch/tensor",
    "1 managed fadam_step",
    "2 fadam_step_table",
    "3 fused: norm+clip+update",
};

/* The rows of each set: the precisions every benchmark runs (bench/model_shapes.h), then, on the
 * --lean-sets only, the memory-lean state layouts (issue 12: bf16 params and grads, AdamW) and a Lion
 * row. `roofline` is the row of bench/roofline.h (the kernel comment's list) giving the bytes moved. */
typedef struct bench_variant {
    const char *label;
    int param_bf16, grad_bf16;
    fadam_mode mode;
    fadam_master_format master; /* of a bf16 param */
    fadam_moment_format moments;
    int roofline;
    int lean; /* 1: runs on --lean-sets, versions --lean-versions */
} bench_variant;

#define N_VARIANTS 9
static const bench_variant variants[N_VARIANTS] = {
    {"fp32", 0, 0, FADAM_ADAMW, FADAM_MASTER_FP32, FADAM_MOMENT_FP32, BENCH_ROOF_FP32, 0},
    {"bf16+master, bf16 grad", 1, 1, FADAM_ADAMW, FADAM_MASTER_FP32, FADAM_MOMENT_FP32, BENCH_ROOF_BF16_MASTER, 0},
    {"bf16+master, fp32 grad", 1, 0, FADAM_ADAMW, FADAM_MASTER_FP32, FADAM_MOMENT_FP32,
     BENCH_ROOF_BF16_MASTER_FP32_GRAD, 0},
    {"bf16, remainder, fp32 m+v", 1, 1, FADAM_ADAMW, FADAM_MASTER_REMAINDER, FADAM_MOMENT_FP32, BENCH_ROOF_REMAINDER, 1},
    {"bf16+master, bf16 m+v (SR)", 1, 1, FADAM_ADAMW, FADAM_MASTER_FP32, FADAM_MOMENT_BF16, BENCH_ROOF_BF16_MOMENTS, 1},
    {"bf16+master, int8 m+v", 1, 1, FADAM_ADAMW, FADAM_MASTER_FP32, FADAM_MOMENT_INT8, BENCH_ROOF_INT8_MOMENTS, 1},
    {"bf16, remainder, bf16 m+v (SR)", 1, 1, FADAM_ADAMW, FADAM_MASTER_REMAINDER, FADAM_MOMENT_BF16,
     BENCH_ROOF_REMAINDER_BF16_MOMENTS, 1},
    {"bf16, remainder, int8 m+v", 1, 1, FADAM_ADAMW, FADAM_MASTER_REMAINDER, FADAM_MOMENT_INT8,
     BENCH_ROOF_REMAINDER_INT8_MOMENTS, 1},
    {"Lion, bf16+master, bf16 grad", 1, 1, FADAM_LION, FADAM_MASTER_FP32, FADAM_MOMENT_FP32,
     BENCH_ROOF_LION_BF16_MASTER, 1},
};

static int variant_keeps_v(const bench_variant &v) { return fadam_rule_state_count((int)v.mode) > 1; }

static size_t moment_bytes(fadam_moment_format format) {
    return format == FADAM_MOMENT_INT8 ? 1 : format == FADAM_MOMENT_BF16 ? 2 : 4;
}

/* Device bytes one element occupies: param + grad + master + m + v (+ the 8-bit scales); the table
 * takes a v for a Lion tensor too. */
static double variant_footprint(const bench_variant &v) {
    double master = v.param_bf16 ? (v.master == FADAM_MASTER_REMAINDER ? 2.0 : 4.0) : 0.0;
    double scales = v.moments == FADAM_MOMENT_INT8 ? 8.0 / FADAM_MOMENT_BLOCK : 0.0;
    return (v.param_bf16 ? 2 : 4) + (v.grad_bf16 ? 2 : 4) + master + 2.0 * (double)moment_bytes(v.moments) + scales;
}

#define CUDA_CHECK(call)                                                                                   \
    do {                                                                                                   \
        cudaError_t cuda_error_ = (call);                                                                  \
        if (cuda_error_ != cudaSuccess) {                                                                  \
            fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(cuda_error_)); \
            exit(2);                                                                                       \
        }                                                                                                  \
    } while (0)

static void require_ok(fadam_status status, const char *what) {
    if (status != FADAM_SUCCESS) {
        fprintf(stderr, "adam_step_bench: %s: %s: %s\n", what, fadam_status_string(status), fadam_last_error_message());
        exit(2);
    }
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double median(std::vector<double> values) {
    if (values.empty()) return 0.0;
    std::sort(values.begin(), values.end());
    size_t n = values.size();
    return n % 2 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

static size_t round_up(size_t value, size_t multiple) { return (value + multiple - 1) / multiple * multiple; }

/* ---- filling buffers on the device: one launch for any number of tensors ---- */

/* How a fill job stores its elements (bench_init.h's pure functions). */
enum { STORE_FP32, STORE_BF16, STORE_REMAINDER, STORE_CODE, STORE_SCALE };

/* Elements [begin, end) of one buffer, written at buffer[i - shift] (a host copy of part of a tensor):
 * bench_value(key, i, role, exact_bf16) as fp32 or bf16, a remainder beside the param of param_key, an
 * 8-bit code of m or v (role), or an 8-bit block's scale (i a block, role the moment's). */
typedef struct fill_job {
    void *buffer;
    uint64_t key, param_key;
    int64_t begin, end, shift;
    int32_t role;
    int32_t store;
    int32_t exact_bf16;
    int32_t reserved;
} fill_job;

static __host__ __device__ void fill_element(const fill_job &job, int64_t i) {
    int64_t at = i - job.shift;
    switch (job.store) {
    case STORE_BF16:
        static_cast<uint16_t *>(job.buffer)[at] = bench_bf16_bits_of_exact(bench_value(job.key, i, job.role, job.exact_bf16));
        break;
    case STORE_REMAINDER:
        static_cast<uint16_t *>(job.buffer)[at] =
            bench_remainder(job.key, i, bench_bf16_bits_of_exact(bench_value(job.param_key, i, BENCH_ROLE_PARAM, 1)));
        break;
    case STORE_CODE: static_cast<uint8_t *>(job.buffer)[at] = (uint8_t)(bench_code(job.key, i, job.role) & 0xFF); break;
    case STORE_SCALE: static_cast<float *>(job.buffer)[at] = bench_scale(job.key, i, job.role); break;
    default: static_cast<float *>(job.buffer)[at] = bench_value(job.key, i, job.role, job.exact_bf16);
    }
}

__global__ void fill_kernel(const fill_job *jobs, int64_t n_jobs) {
    for (int64_t j = blockIdx.x; j < n_jobs; j += gridDim.x) {
        const fill_job job = jobs[j];
        for (int64_t i = job.begin + threadIdx.x; i < job.end; i += blockDim.x) fill_element(job, i);
    }
}

static void add_fill(std::vector<fill_job> &jobs, void *buffer, int64_t begin, int64_t end, int64_t shift, uint64_t key,
                     int role, int store, int exact_bf16, uint64_t param_key = 0) {
    for (int64_t first = begin; first < end; first += FILL_CHUNK_ELEMS) {
        fill_job job;
        memset(&job, 0, sizeof job);
        job.buffer = buffer;
        job.key = key;
        job.param_key = param_key;
        job.begin = first;
        job.end = std::min<int64_t>(end, first + FILL_CHUNK_ELEMS);
        job.shift = shift;
        job.role = role;
        job.store = store;
        job.exact_bf16 = exact_bf16;
        jobs.push_back(job);
    }
}

/* Elements [begin, end) of every buffer of tensor `index` of `replica`, each buffer starting at element
 * `begin` (on the device the whole tensor; a host run of 8-bit moments starts on a block). Param and grad exact
 * in their dtype; an fp32 master equal to the param, a remainder any valid one; moments in their format:
 * fp32, bf16-exact, or valid 8-bit codes under positive scales. */
static void add_tensor_fills(std::vector<fill_job> &jobs, const fadam_tensor &t, int replica, int64_t index,
                             int64_t begin, int64_t end) {
    int param_bf16 = t.param_dtype == FADAM_BFLOAT16, grad_bf16 = t.grad_dtype == FADAM_BFLOAT16;
    uint64_t param_key = bench_key(replica, index, BENCH_ROLE_PARAM);
    add_fill(jobs, t.param, begin, end, begin, param_key, BENCH_ROLE_PARAM, param_bf16 ? STORE_BF16 : STORE_FP32,
             param_bf16);
    add_fill(jobs, const_cast<void *>(t.grad), begin, end, begin, bench_key(replica, index, BENCH_ROLE_GRAD),
             BENCH_ROLE_GRAD, grad_bf16 ? STORE_BF16 : STORE_FP32, grad_bf16);
    if (t.master && t.master_format == FADAM_MASTER_REMAINDER)
        add_fill(jobs, t.master, begin, end, begin, bench_key(replica, index, BENCH_ROLE_REMAINDER), BENCH_ROLE_REMAINDER,
                 STORE_REMAINDER, 0, param_key);
    else if (t.master)
        add_fill(jobs, t.master, begin, end, begin, param_key, BENCH_ROLE_PARAM, STORE_FP32, 1);
    void *moments[2] = {t.exp_avg, t.exp_avg_sq};
    float *scales[2] = {t.exp_avg_scales, t.exp_avg_sq_scales};
    const int roles[2] = {BENCH_ROLE_EXP_AVG, BENCH_ROLE_EXP_AVG_SQ};
    const int scale_roles[2] = {BENCH_ROLE_EXP_AVG_SCALE, BENCH_ROLE_EXP_AVG_SQ_SCALE};
    for (int k = 0; k < 2; k++) {
        if (!moments[k]) continue; /* v of a managed Lion tensor */
        uint64_t key = bench_key(replica, index, roles[k]);
        if (t.moment_format == FADAM_MOMENT_FP32) {
            add_fill(jobs, moments[k], begin, end, begin, key, roles[k], STORE_FP32, 0);
        } else if (t.moment_format == FADAM_MOMENT_BF16) {
            add_fill(jobs, moments[k], begin, end, begin, key, roles[k], STORE_BF16, 1);
        } else {
            int64_t first_block = begin / FADAM_MOMENT_BLOCK, end_block = (end + FADAM_MOMENT_BLOCK - 1) / FADAM_MOMENT_BLOCK;
            add_fill(jobs, moments[k], begin, end, begin, key, roles[k], STORE_CODE, 0);
            if (scales[k])
                add_fill(jobs, scales[k], first_block, end_block, first_block, bench_key(replica, index, scale_roles[k]),
                         roles[k], STORE_SCALE, 0);
        }
    }
}

static void run_fills(const std::vector<fill_job> &jobs, cudaStream_t stream) {
    if (jobs.empty()) return;
    fill_job *device_jobs = NULL;
    size_t bytes = jobs.size() * sizeof(fill_job);
    CUDA_CHECK(cudaMalloc(&device_jobs, bytes));
    CUDA_CHECK(cudaMemcpyAsync(device_jobs, jobs.data(), bytes, cudaMemcpyHostToDevice, stream));
    unsigned grid = (unsigned)std::min<size_t>(jobs.size(), 65535);
    FADAM_LAUNCH(fill_kernel, dim3(grid), dim3(256), 0, stream, device_jobs, (int64_t)jobs.size());
    CUDA_CHECK(FADAM_LAUNCH_ERROR());
    CUDA_CHECK(cudaStreamSynchronize(stream));
    CUDA_CHECK(cudaFree(device_jobs));
}

/* ---- version 0: one plain kernel launch per tensor (fp32 master and moments only) ---- */

static __device__ __forceinline__ float to_float(float x) { return x; }
static __device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> static __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

/* One element per thread, by the group's rule function (kernels/rules.h), as the reference does. */
template <typename ParamT, typename GradT>
__global__ void naive_adam_kernel(ParamT *param, const GradT *grad, float *master, float *exp_avg, float *exp_avg_sq,
                                  int64_t numel, fadam_group_scalars s) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= numel) return;
    const fadam_loop_scalars loop = fadam_loop_scalars_of(&s);
    float p = master ? master[i] : to_float(param[i]);
    float m = exp_avg[i], v = exp_avg_sq ? exp_avg_sq[i] : 0.0f;
    fadam_rule_element(s.rule, &p, to_float(grad[i]), &m, &v, &loop);
    exp_avg[i] = m;
    if (exp_avg_sq) exp_avg_sq[i] = v;
    if (master) master[i] = p;
    /* a bf16 param from a master rounds ties away from zero, as the library's (docs/NUMERICS.md) */
    if (master && sizeof(ParamT) == 2) reinterpret_cast<uint16_t *>(param)[i] = fadam_bf16_from_master(p);
    else param[i] = from_float<ParamT>(p);
}

template <typename ParamT, typename GradT>
static void launch_naive(const fadam_tensor &t, const fadam_group_scalars &s, cudaStream_t stream) {
    unsigned blocks = (unsigned)((t.numel + 255) / 256);
    auto kernel = naive_adam_kernel<ParamT, GradT>; /* one macro argument, whatever the template's commas */
    FADAM_LAUNCH(kernel, dim3(blocks), dim3(256), 0, stream, static_cast<ParamT *>(t.param),
                 static_cast<const GradT *>(t.grad), static_cast<float *>(t.master), static_cast<float *>(t.exp_avg),
                 static_cast<float *>(t.exp_avg_sq), t.numel, s);
}

static void naive_step(const fadam_tensor *tensors, int64_t n_tensors, const fadam_hparams *groups, int64_t step,
                       cudaStream_t stream) {
    fadam_group_scalars scalars[2];
    for (int g = 0; g < 2; g++) scalars[g] = fadam_compute_group_scalars(&groups[g], groups[g].lr, step);
    for (int64_t i = 0; i < n_tensors; i++) {
        const fadam_tensor &t = tensors[i];
        if (t.numel == 0) continue;
        const fadam_group_scalars &s = scalars[t.group];
        if (t.param_dtype == FADAM_FLOAT32) launch_naive<float, float>(t, s, stream);
        else if (t.grad_dtype == FADAM_BFLOAT16) launch_naive<__nv_bfloat16, __nv_bfloat16>(t, s, stream);
        else launch_naive<__nv_bfloat16, float>(t, s, stream);
        CUDA_CHECK(FADAM_LAUNCH_ERROR());
    }
}

/* ---- validation: sampled elements against fadam_cpu_step ---- */

typedef struct sample {
    int64_t tensor;
    int64_t index;
} sample;

/* One sampled element after a step, as the step would load it again: the param (as float), the fp32
 * master (a remainder joined with its param; 0 without a master), exp_avg and exp_avg_sq decoded from
 * their format (exp_avg_sq 0 for a rule without v), and the scales of its 8-bit block (else 0). */
typedef struct sampled_values {
    float param, master, exp_avg, exp_avg_sq, exp_avg_scale, exp_avg_sq_scale;
} sampled_values;

static __host__ __device__ float moment_value(const fadam_tensor &t, const void *data, const float *scales, int64_t i,
                                              int is_v) {
    if (t.moment_format == FADAM_MOMENT_BF16) return bench_bf16_bits_to_float(static_cast<const uint16_t *>(data)[i]);
    if (t.moment_format == FADAM_MOMENT_INT8) {
        float scale = scales[i / FADAM_MOMENT_BLOCK];
        return is_v ? fadam_q8_dequantize_v(static_cast<const uint8_t *>(data)[i], scale)
                    : fadam_q8_dequantize_m(static_cast<const int8_t *>(data)[i], scale);
    }
    return static_cast<const float *>(data)[i];
}

static __host__ __device__ sampled_values read_sample(const fadam_tensor &t, int64_t i, int keeps_v) {
    sampled_values v;
    const uint16_t *param16 = static_cast<const uint16_t *>(t.param);
    int int8 = t.moment_format == FADAM_MOMENT_INT8;
    v.param = t.param_dtype == FADAM_BFLOAT16 ? bench_bf16_bits_to_float(param16[i]) : static_cast<const float *>(t.param)[i];
    if (!t.master) v.master = 0.0f;
    else if (t.master_format == FADAM_MASTER_REMAINDER)
        v.master = fadam_master_join(param16[i], static_cast<const uint16_t *>(t.master)[i]);
    else v.master = static_cast<const float *>(t.master)[i];
    v.exp_avg = moment_value(t, t.exp_avg, t.exp_avg_scales, i, 0);
    v.exp_avg_sq = keeps_v ? moment_value(t, t.exp_avg_sq, t.exp_avg_sq_scales, i, 1) : 0.0f;
    v.exp_avg_scale = int8 ? t.exp_avg_scales[i / FADAM_MOMENT_BLOCK] : 0.0f;
    v.exp_avg_sq_scale = int8 && keeps_v ? t.exp_avg_sq_scales[i / FADAM_MOMENT_BLOCK] : 0.0f;
    return v;
}

__global__ void gather_kernel(const fadam_tensor *tensors, const sample *samples, int64_t n_samples, int keeps_v,
                              sampled_values *out) {
    for (int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; k < n_samples; k += (int64_t)gridDim.x * blockDim.x)
        out[k] = read_sample(tensors[samples[k].tensor], samples[k].index, keeps_v);
}

/* Which elements of each tensor to check: all of a small tensor; of a large one the first and last 32,
 * both sides of the first chunk boundaries of the library's table, and 64 spread by a hash. */
static std::vector<sample> choose_samples(const bench_model &model) {
    std::vector<sample> samples;
    for (int64_t t = 0; t < model.n_tensors; t++) {
        int64_t n = model.tensors[t].numel;
        if (n <= 1024) {
            for (int64_t i = 0; i < n; i++) samples.push_back({t, i});
            continue;
        }
        std::vector<int64_t> picks;
        for (int64_t i = 0; i < 32; i++) {
            picks.push_back(i);
            picks.push_back(n - 1 - i);
        }
        for (int64_t k = 1; k <= 3 && k * FADAM_CHUNK_ELEMS < n; k++)
            for (int64_t d = -3; d <= 2; d++) picks.push_back(k * FADAM_CHUNK_ELEMS + d);
        for (int64_t k = 0; k < 64; k++) picks.push_back((int64_t)(bench_mix(0xC0FFEEull + (uint64_t)t * 131 + (uint64_t)k) % (uint64_t)n));
        std::sort(picks.begin(), picks.end());
        picks.erase(std::unique(picks.begin(), picks.end()), picks.end());
        for (int64_t i : picks) samples.push_back({t, i});
    }
    return samples;
}

typedef struct check_result {
    int64_t differing;   /* values not bit-identical */
    double max_relative; /* largest relative difference among them */
    int failed;          /* a difference beyond tolerance, or a NaN */
} check_result;

/* Bitwise is the aim (NUMERICS.md); within tolerance is reported as such; beyond it fails. */
static void compare_value(float got, float want, double tolerance, check_result *r) {
    if (memcmp(&got, &want, sizeof got) == 0) return;
    double relative = std::fabs((double)got - (double)want) / std::max(std::fabs((double)want), 1e-30);
    r->differing++;
    if (!(relative <= r->max_relative)) r->max_relative = relative;
    if (!(relative <= tolerance)) r->failed = 1;
}

static check_result check_samples(const std::vector<sampled_values> &got, const std::vector<sampled_values> &want,
                                  int param_bf16) {
    check_result r = {0, 0.0, 0};
    for (size_t k = 0; k < got.size(); k++) {
        compare_value(got[k].param, want[k].param, param_bf16 ? 1.0 / 128 : 1e-6, &r);
        compare_value(got[k].master, want[k].master, 1e-6, &r);
        compare_value(got[k].exp_avg, want[k].exp_avg, 1e-6, &r);
        compare_value(got[k].exp_avg_sq, want[k].exp_avg_sq, 1e-6, &r);
        compare_value(got[k].exp_avg_scale, want[k].exp_avg_scale, 1e-6, &r);
        compare_value(got[k].exp_avg_sq_scale, want[k].exp_avg_sq_scale, 1e-6, &r);
    }
    return r;
}

static std::vector<sampled_values> gather(const std::vector<fadam_tensor> &tensors, const std::vector<sample> &samples,
                                          int keeps_v, cudaStream_t stream) {
    fadam_tensor *device_tensors = NULL;
    sample *device_samples = NULL;
    sampled_values *device_out = NULL;
    std::vector<sampled_values> out(samples.size());
    if (samples.empty()) return out;
    CUDA_CHECK(cudaMalloc(&device_tensors, tensors.size() * sizeof(fadam_tensor)));
    CUDA_CHECK(cudaMalloc(&device_samples, samples.size() * sizeof(sample)));
    CUDA_CHECK(cudaMalloc(&device_out, samples.size() * sizeof(sampled_values)));
    CUDA_CHECK(cudaMemcpyAsync(device_tensors, tensors.data(), tensors.size() * sizeof(fadam_tensor),
                               cudaMemcpyHostToDevice, stream));
    CUDA_CHECK(cudaMemcpyAsync(device_samples, samples.data(), samples.size() * sizeof(sample), cudaMemcpyHostToDevice,
                               stream));
    unsigned grid = (unsigned)std::min<size_t>((samples.size() + 255) / 256, 4096);
    FADAM_LAUNCH(gather_kernel, dim3(grid), dim3(256), 0, stream, device_tensors, device_samples,
                 (int64_t)samples.size(), keeps_v, device_out);
    CUDA_CHECK(FADAM_LAUNCH_ERROR());
    CUDA_CHECK(cudaMemcpyAsync(out.data(), device_out, samples.size() * sizeof(sampled_values), cudaMemcpyDeviceToHost,
                               stream));
    CUDA_CHECK(cudaStreamSynchronize(stream));
    CUDA_CHECK(cudaFree(device_tensors));
    CUDA_CHECK(cudaFree(device_samples));
    CUDA_CHECK(cudaFree(device_out));
    return out;
}

/* ---- one case: a set in one precision or layout, R replicas of its params and grads ---- */

typedef struct bench_case {
    const bench_model *model;
    const bench_variant *variant;
    int replicas;
    void *param_grad_blocks[MAX_REPLICAS];     /* caller-owned params and grads, every version */
    std::vector<fadam_tensor> tensors[MAX_REPLICAS];
    fadam_hparams groups[2];
} bench_case;

/* Byte size of what `tensors` needs in one block (param + grad, or master + m + v), 256-aligned each. */
static size_t plan_param_grad(std::vector<fadam_tensor> &tensors, uintptr_t base) {
    size_t offset = 0;
    for (fadam_tensor &t : tensors) {
        t.param = (void *)(base + offset);
        offset += round_up((size_t)t.numel * fadam_dtype_size(t.param_dtype), STATE_ALIGNMENT);
        t.grad = (const void *)(base + offset);
        offset += round_up((size_t)t.numel * fadam_dtype_size(t.grad_dtype), STATE_ALIGNMENT);
    }
    return offset;
}

/* The states of `tensors` in their formats (case_setup sets them), one block: a master for a bf16
 * param, m and v (the table takes a v for a Lion tensor too), the 8-bit scales; each tensor's rounding
 * seed. */
static size_t plan_state(std::vector<fadam_tensor> &tensors, int replica, uintptr_t base) {
    size_t offset = 0;
    for (size_t i = 0; i < tensors.size(); i++) {
        fadam_tensor &t = tensors[i];
        size_t numel = (size_t)t.numel, blocks = (numel + FADAM_MOMENT_BLOCK - 1) / FADAM_MOMENT_BLOCK;
        size_t moment_region = round_up(numel * moment_bytes(t.moment_format), STATE_ALIGNMENT);
        size_t scale_region = round_up(blocks * sizeof(float), STATE_ALIGNMENT);
        t.master = NULL;
        t.exp_avg_scales = t.exp_avg_sq_scales = NULL;
        if (t.param_dtype == FADAM_BFLOAT16) {
            t.master = (void *)(base + offset);
            offset += round_up(numel * (t.master_format == FADAM_MASTER_REMAINDER ? 2 : 4), STATE_ALIGNMENT);
        }
        t.exp_avg = (void *)(base + offset);
        t.exp_avg_sq = (void *)(base + offset + moment_region);
        offset += 2 * moment_region;
        if (t.moment_format == FADAM_MOMENT_INT8) {
            t.exp_avg_scales = (float *)(base + offset);
            t.exp_avg_sq_scales = (float *)(base + offset + scale_region);
            offset += 2 * scale_region;
        }
        t.rounding_seed = bench_key(replica, (int64_t)i, BENCH_ROLE_SEED);
    }
    return offset;
}

static void case_setup(bench_case &c, const bench_model &model, const bench_variant &variant, int replicas) {
    c.model = &model;
    c.variant = &variant;
    c.replicas = replicas;
    c.groups[0] = variant.mode == FADAM_LION ? fadam_hparams_default_lion() : fadam_hparams_default();
    c.groups[0].weight_decay = 0.1f;
    c.groups[1] = c.groups[0];
    c.groups[1].weight_decay = 0.0f;
    for (int r = 0; r < replicas; r++) {
        std::vector<fadam_tensor> &tensors = c.tensors[r];
        tensors.resize((size_t)model.n_tensors);
        for (int64_t i = 0; i < model.n_tensors; i++) {
            fadam_tensor &t = tensors[(size_t)i];
            memset(&t, 0, sizeof t);
            t.numel = model.tensors[i].numel;
            t.param_dtype = variant.param_bf16 ? FADAM_BFLOAT16 : FADAM_FLOAT32;
            t.grad_dtype = variant.grad_bf16 ? FADAM_BFLOAT16 : FADAM_FLOAT32;
            t.group = model.tensors[i].no_decay;
            t.master_format = variant.param_bf16 ? variant.master : FADAM_MASTER_FP32;
            t.moment_format = variant.moments;
        }
        size_t bytes = plan_param_grad(tensors, 0);
        CUDA_CHECK(cudaMalloc(&c.param_grad_blocks[r], bytes));
        plan_param_grad(tensors, (uintptr_t)c.param_grad_blocks[r]);
    }
}

static void case_free(bench_case &c) {
    for (int r = 0; r < c.replicas; r++) {
        CUDA_CHECK(cudaFree(c.param_grad_blocks[r]));
        c.tensors[r].clear();
    }
}

/* The CPU reference's result for every sample after one step (t = 1) from replica 0's inputs: each
 * tensor's sampled elements, in runs of consecutive elements (whole blocks for 8-bit moments, whose
 * scale is the block's absmax), filled on the host as the device was, each run a host tensor with its
 * tensor's formats, rounding seed and element offset, all stepped with fadam_cpu_step. */
static std::vector<sampled_values> expected_values(const bench_case &c, const std::vector<sample> &samples) {
    const bench_variant &variant = *c.variant;
    const std::vector<fadam_tensor> &device = c.tensors[0];
    const int keeps_v = variant_keeps_v(variant), int8 = variant.moments == FADAM_MOMENT_INT8;
    typedef struct run {
        int64_t tensor, begin, end; /* elements [begin, end) of the tensor */
        size_t offset, block;      /* its first element and first scale in the host buffers */
    } run;
    std::vector<run> runs;
    std::vector<size_t> run_of(samples.size());
    for (size_t k = 0; k < samples.size(); k++) { /* choose_samples sorts them by tensor, then element */
        const sample &s = samples[k];
        int64_t begin = int8 ? s.index / FADAM_MOMENT_BLOCK * FADAM_MOMENT_BLOCK : s.index;
        int64_t end = int8 ? std::min(device[s.tensor].numel, begin + FADAM_MOMENT_BLOCK) : s.index + 1;
        if (!runs.empty() && runs.back().tensor == s.tensor && begin >= runs.back().begin && begin <= runs.back().end)
            runs.back().end = std::max(runs.back().end, end);
        else runs.push_back({s.tensor, begin, end, 0, 0});
        run_of[k] = runs.size() - 1;
    }
    size_t elements = 0, blocks = 0;
    for (run &r : runs) {
        r.offset = elements;
        r.block = blocks;
        elements += (size_t)(r.end - r.begin);
        blocks += (size_t)((r.end - r.begin + FADAM_MOMENT_BLOCK - 1) / FADAM_MOMENT_BLOCK);
    }
    /* 8-byte words, so every element type is aligned */
    auto words = [](size_t bytes) { return std::vector<uint64_t>((bytes + 7) / 8 + 1); };
    size_t param_size = variant.param_bf16 ? 2 : 4, grad_size = variant.grad_bf16 ? 2 : 4;
    size_t master_size = variant.master == FADAM_MASTER_REMAINDER ? 2 : 4, moment_size = moment_bytes(variant.moments);
    std::vector<uint64_t> param = words(elements * param_size), grad = words(elements * grad_size),
                          master = words(elements * master_size), exp_avg = words(elements * moment_size),
                          exp_avg_sq = words(elements * moment_size);
    std::vector<float> exp_avg_scales(blocks + 1), exp_avg_sq_scales(blocks + 1);
    std::vector<fadam_tensor> host(runs.size());
    std::vector<fill_job> jobs;
    for (size_t j = 0; j < runs.size(); j++) {
        const run &r = runs[j];
        fadam_tensor &t = host[j];
        t = device[r.tensor]; /* dtypes, group, formats, seed */
        t.numel = r.end - r.begin;
        t.element_offset = device[r.tensor].element_offset + r.begin;
        t.param = reinterpret_cast<uint8_t *>(param.data()) + r.offset * param_size;
        t.grad = reinterpret_cast<uint8_t *>(grad.data()) + r.offset * grad_size;
        t.master = variant.param_bf16 ? reinterpret_cast<uint8_t *>(master.data()) + r.offset * master_size : NULL;
        t.exp_avg = reinterpret_cast<uint8_t *>(exp_avg.data()) + r.offset * moment_size;
        t.exp_avg_sq = keeps_v ? reinterpret_cast<uint8_t *>(exp_avg_sq.data()) + r.offset * moment_size : NULL;
        t.exp_avg_scales = int8 ? exp_avg_scales.data() + r.block : NULL;
        t.exp_avg_sq_scales = int8 && keeps_v ? exp_avg_sq_scales.data() + r.block : NULL;
        add_tensor_fills(jobs, t, 0, r.tensor, r.begin, r.end);
    }
    for (const fill_job &job : jobs)
        for (int64_t i = job.begin; i < job.end; i++) fill_element(job, i);
    fadam_step_source source;
    memset(&source, 0, sizeof source);
    source.step = 1;
    require_ok(fadam_cpu_step(host.data(), (int64_t)host.size(), c.groups, 2, &source), "fadam_cpu_step");
    std::vector<sampled_values> expected(samples.size());
    for (size_t k = 0; k < samples.size(); k++) {
        const run &r = runs[run_of[k]];
        expected[k] = read_sample(host[run_of[k]], samples[k].index - r.begin, keeps_v);
    }
    return expected;
}

/* What one version holds for a case. */
typedef struct version_state {
    int version;
    void *state_blocks[MAX_REPLICAS];          /* versions 0 and 2: master, m, v, 8-bit scales */
    fadam_optimizer *optimizers[MAX_REPLICAS]; /* versions 1 and 3 */
    void *device_tables[MAX_REPLICAS];         /* version 2 */
    int64_t step;                              /* versions 0 and 2: t of the last step */
} version_state;

static void version_setup(bench_case &c, version_state &s, int version, cudaStream_t stream) {
    memset(&s, 0, sizeof s);
    s.version = version;
    for (int r = 0; r < c.replicas; r++) {
        std::vector<fadam_tensor> &tensors = c.tensors[r];
        if (version == 1 || version == 3) {
            fadam_optimizer *opt = NULL;
            require_ok(fadam_create(&opt, FADAM_DEVICE_CUDA, 0, &c.groups[0], NULL), "fadam_create");
            if (version == 3) {
                /* The whole fused step: the norm pass runs, but a limit no norm reaches keeps the
                 * update equal to the plain one, so the same check applies. */
                fadam_fused_step_config fused = fadam_fused_step_config_default();
                fused.max_grad_norm = 1e30f;
                require_ok(fadam_configure_fused_step(opt, &fused), "fadam_configure_fused_step");
            }
            require_ok(fadam_add_group(opt, &c.groups[1], NULL), "fadam_add_group");
            fadam_state_layout layout = {c.variant->master, c.variant->moments, 0x5EEDull};
            for (int g = 0; g < 2; g++) require_ok(fadam_set_group_layout(opt, g, &layout), "fadam_set_group_layout");
            for (size_t i = 0; i < tensors.size(); i++)
                require_ok(fadam_add_tensor(opt, c.model->tensors[i].name, tensors[i].param, tensors[i].grad,
                                            tensors[i].numel, tensors[i].param_dtype, tensors[i].grad_dtype,
                                            tensors[i].group, NULL),
                           "fadam_add_tensor");
            require_ok(fadam_finalize(opt, (fadam_stream)stream), "fadam_finalize");
            s.optimizers[r] = opt;
            /* The optimizer's state (pointers, formats, rounding seeds), into this replica's tensor list,
             * for filling and gathering. */
            for (size_t i = 0; i < tensors.size(); i++)
                require_ok(fadam_get_tensor_state(opt, (int64_t)i, &tensors[i]), "fadam_get_tensor_state");
        } else {
            size_t bytes = plan_state(tensors, r, 0);
            CUDA_CHECK(cudaMalloc(&s.state_blocks[r], bytes));
            plan_state(tensors, r, (uintptr_t)s.state_blocks[r]);
        }
        if (version == 2) {
            size_t table_bytes = 0;
            void *host_table = NULL;
            require_ok(fadam_table_bytes(tensors.data(), (int64_t)tensors.size(), 2, &table_bytes), "fadam_table_bytes");
            CUDA_CHECK(cudaMallocHost(&host_table, table_bytes));
            require_ok(fadam_table_encode(tensors.data(), (int64_t)tensors.size(), 2, host_table, table_bytes),
                       "fadam_table_encode");
            CUDA_CHECK(cudaMalloc(&s.device_tables[r], table_bytes));
            CUDA_CHECK(cudaMemcpyAsync(s.device_tables[r], host_table, table_bytes, cudaMemcpyHostToDevice, stream));
            CUDA_CHECK(cudaStreamSynchronize(stream));
            CUDA_CHECK(cudaFreeHost(host_table));
        }
    }
    /* Every replica's inputs, so no version ever steps uninitialised memory. */
    std::vector<fill_job> jobs;
    for (int r = 0; r < c.replicas; r++)
        for (size_t i = 0; i < c.tensors[r].size(); i++)
            add_tensor_fills(jobs, c.tensors[r][i], r, (int64_t)i, 0, c.tensors[r][i].numel);
    run_fills(jobs, stream);
}

static void version_free(bench_case &c, version_state &s) {
    CUDA_CHECK(cudaDeviceSynchronize());
    for (int r = 0; r < c.replicas; r++) {
        fadam_destroy(s.optimizers[r]);
        if (s.state_blocks[r]) CUDA_CHECK(cudaFree(s.state_blocks[r]));
        if (s.device_tables[r]) CUDA_CHECK(cudaFree(s.device_tables[r]));
        for (fadam_tensor &t : c.tensors[r]) {
            t.master = t.exp_avg = t.exp_avg_sq = NULL;
            t.exp_avg_scales = t.exp_avg_sq_scales = NULL;
        }
    }
}

static void version_step(bench_case &c, version_state &s, int replica, cudaStream_t stream) {
    if (s.version == 1) {
        require_ok(fadam_step(s.optimizers[replica], (fadam_stream)stream), "fadam_step");
        return;
    }
    if (s.version == 3) {
        require_ok(fadam_fused_step(s.optimizers[replica], (fadam_stream)stream), "fadam_fused_step");
        return;
    }
    s.step++;
    if (s.version == 0) {
        naive_step(c.tensors[replica].data(), (int64_t)c.tensors[replica].size(), c.groups, s.step, stream);
    } else {
        fadam_step_source source;
        memset(&source, 0, sizeof source);
        source.step = s.step;
        require_ok(fadam_step_table(s.device_tables[replica], c.groups, 2, &source, (fadam_stream)stream),
                   "fadam_step_table");
    }
}

typedef struct version_result {
    check_result check;
    int timed;
    double step_seconds; /* median GPU time per step */
    double host_seconds; /* median CPU time of one step call */
} version_result;

static version_result run_version(bench_case &c, int version, const std::vector<sample> &samples,
                                  const std::vector<sampled_values> &expected, double target_seconds,
                                  cudaStream_t stream) {
    version_result result;
    version_state s;
    memset(&result, 0, sizeof result);
    version_setup(c, s, version, stream);

    /* Validate: the first step (t = 1) of replica 0 against the CPU reference. Stochastic rounding's bits
     * depend on each tensor's rounding seed, which the version chose (the bench or the optimizer). */
    std::vector<sampled_values> reseeded;
    if (c.variant->moments == FADAM_MOMENT_BF16) reseeded = expected_values(c, samples);
    version_step(c, s, 0, stream);
    CUDA_CHECK(cudaStreamSynchronize(stream));
    result.check = check_samples(gather(c.tensors[0], samples, variant_keeps_v(*c.variant), stream),
                                 c.variant->moments == FADAM_MOMENT_BF16 ? reseeded : expected, c.variant->param_bf16);
    if (result.check.failed) {
        version_free(c, s);
        return result;
    }

    /* Time: batches of K back-to-back steps over the replicas in turn, K >= 8 (R with --quick) and a
     * multiple of R. */
    int per_batch = max_batches == 1 ? c.replicas : c.replicas * std::max(1, (8 + c.replicas - 1) / c.replicas);
    cudaEvent_t start, stop;
    CUDA_CHECK(cudaEventCreate(&start));
    CUDA_CHECK(cudaEventCreate(&stop));
    std::vector<double> batch_seconds, host_seconds;
    double started = 0.0;
    for (int batch = -1; batch < max_batches; batch++) { /* batch -1: warm-up */
        if (batch == 0) started = now_seconds();
        /* A large set's batches are long: 3 of them measure it once they take the target time. */
        if (batch >= std::min(min_batches, 3) && now_seconds() - started > target_seconds) break;
        CUDA_CHECK(cudaEventRecord(start, stream));
        for (int k = 0; k < per_batch; k++) {
            double t0 = now_seconds();
            version_step(c, s, k % c.replicas, stream);
            if (batch >= 0) host_seconds.push_back(now_seconds() - t0);
        }
        CUDA_CHECK(cudaEventRecord(stop, stream));
        CUDA_CHECK(cudaEventSynchronize(stop));
        float ms = 0.0f;
        CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
        if (batch >= 0) batch_seconds.push_back(1e-3 * ms / per_batch);
    }
    CUDA_CHECK(cudaEventDestroy(start));
    CUDA_CHECK(cudaEventDestroy(stop));
    result.timed = 1;
    result.step_seconds = median(batch_seconds);
    result.host_seconds = median(host_seconds);
    version_free(c, s);
    return result;
}

/* ---- copy bandwidth: cudaMemcpyAsync device to device, bytes read + written per second ---- */

static double measure_copy_bandwidth(size_t l2_bytes, cudaStream_t stream) {
    size_t free_bytes = 0, total_bytes = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    size_t bytes = std::max<size_t>((size_t)1 << 30, 16 * l2_bytes);
    if (bytes > free_bytes / 4) bytes = free_bytes / 4;
    void *source = NULL, *destination = NULL;
    CUDA_CHECK(cudaMalloc(&source, bytes));
    CUDA_CHECK(cudaMalloc(&destination, bytes));
    CUDA_CHECK(cudaMemsetAsync(source, 1, bytes, stream));
    CUDA_CHECK(cudaMemsetAsync(destination, 2, bytes, stream));
    cudaEvent_t start, stop;
    CUDA_CHECK(cudaEventCreate(&start));
    CUDA_CHECK(cudaEventCreate(&stop));
    std::vector<double> samples;
    const int per_batch = 4;
    for (int batch = -1; batch < std::max(2 * min_batches, 1); batch++) {
        CUDA_CHECK(cudaEventRecord(start, stream));
        for (int k = 0; k < per_batch; k++)
            CUDA_CHECK(cudaMemcpyAsync(destination, source, bytes, cudaMemcpyDeviceToDevice, stream));
        CUDA_CHECK(cudaEventRecord(stop, stream));
        CUDA_CHECK(cudaEventSynchronize(stop));
        float ms = 0.0f;
        CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
        if (batch >= 0) samples.push_back(1e-3 * ms / per_batch);
    }
    CUDA_CHECK(cudaEventDestroy(start));
    CUDA_CHECK(cudaEventDestroy(stop));
    CUDA_CHECK(cudaFree(source));
    CUDA_CHECK(cudaFree(destination));
    double seconds = median(samples);
    printf("copy bandwidth: cudaMemcpyAsync D2D, %.2f GiB buffer, median of %zu: %.1f GB/s (read + write)\n",
           (double)bytes / (1 << 30), samples.size(), 2.0 * (double)bytes / seconds / 1e9);
    return 2.0 * (double)bytes / seconds;
}

/* ---- command line and main ---- */

static int parse_list(const char *text, const char *const *names, int n_names, int *selected) {
    char buffer[512];
    snprintf(buffer, sizeof buffer, "%s", text);
    for (int i = 0; i < n_names; i++) selected[i] = 0;
    char *save = NULL;
    for (char *token = strtok_r(buffer, ",", &save); token; token = strtok_r(NULL, ",", &save)) {
        int found = 0;
        for (int i = 0; i < n_names; i++)
            if (strcmp(token, names[i]) == 0) selected[i] = found = 1;
        if (!found) {
            fprintf(stderr, "adam_step_bench: unknown name '%s'\n", token);
            return 0;
        }
    }
    return 1;
}

/* Layers of `model` that fit in `budget` bytes at `footprint` bytes per element (all of them for a set
 * without layers, -1 when even the non-layer tensors do not fit). */
static int layers_that_fit(const bench_model &model, double budget, double footprint) {
    int64_t layer = bench_model_layer_elements(&model);
    int64_t outside = bench_model_elements(&model) - layer * model.n_layers;
    double left = budget - (double)outside * footprint;
    if (left < 0) return -1;
    if (layer == 0) return model.n_layers;
    return (int)std::min<double>(model.n_layers, std::floor(left / ((double)layer * footprint)));
}

int main(int argc, char **argv) {
    static const char *const version_keys[N_VERSIONS] = {"0", "1", "2", "3"};
    int sets[BENCH_N_SETS], versions[N_VERSIONS], lean_sets[BENCH_N_SETS], lean_versions[N_VERSIONS], failures = 0;
    double target_seconds = 1.0;
    int64_t divisor = 1;
    for (int s = 0; s < BENCH_N_SETS; s++) sets[s] = 1, lean_sets[s] = s == BENCH_LLAMA3_8B;
    for (int v = 0; v < N_VERSIONS; v++) versions[v] = 1, lean_versions[v] = v == 2 || v == 3;
    for (int i = 1; i < argc; i++) {
        if (strncmp(argv[i], "--sets=", 7) == 0) {
            if (!parse_list(argv[i] + 7, bench_set_names, BENCH_N_SETS, sets)) return 2;
        } else if (strncmp(argv[i], "--versions=", 11) == 0) {
            if (!parse_list(argv[i] + 11, version_keys, N_VERSIONS, versions)) return 2;
        } else if (strcmp(argv[i], "--lean-sets=none") == 0) {
            for (int s = 0; s < BENCH_N_SETS; s++) lean_sets[s] = 0;
        } else if (strncmp(argv[i], "--lean-sets=", 12) == 0) {
            if (!parse_list(argv[i] + 12, bench_set_names, BENCH_N_SETS, lean_sets)) return 2;
        } else if (strncmp(argv[i], "--lean-versions=", 16) == 0) {
            /* version 0's naive kernel keeps fp32 states only */
            if (!parse_list(argv[i] + 16, version_keys + 1, N_VERSIONS - 1, lean_versions + 1)) return 2;
        } else if (strncmp(argv[i], "--seconds=", 10) == 0) {
            target_seconds = atof(argv[i] + 10);
        } else if (strncmp(argv[i], "--divisor=", 10) == 0) {
            divisor = atoll(argv[i] + 10);
        } else if (strcmp(argv[i], "--quick") == 0) {
            min_batches = max_batches = 1;
        } else {
            fprintf(stderr, "usage: %s [--sets=NAME,...] [--versions=0,1,2,3] [--lean-sets=NAME,...|none]\n"
                            "       [--lean-versions=1,2,3] [--seconds=S] [--divisor=N] [--quick]\n"
                            "sets: gpt2-124M gpt2-1.5B llama3-8B 10k-small one-2^30\n", argv[0]);
            return 2;
        }
    }

    printf("## GPU: the fused step against the copy roofline (fusedadam %s)\n\n", fadam_version_string());
    if (fadam_cuda_device_count() == 0) {
        printf("skipped: no CUDA device\n\n");
        return 0;
    }
    cudaDeviceProp prop;
    CUDA_CHECK(cudaSetDevice(0));
    CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    int driver = 0, runtime = 0;
    CUDA_CHECK(cudaDriverGetVersion(&driver));
    CUDA_CHECK(cudaRuntimeGetVersion(&runtime));
    printf("device: %s, %d SMs, L2 %.0f MiB, %.1f GiB, compute %d.%d, driver %d, runtime %d\n", prop.name,
           prop.multiProcessorCount, prop.l2CacheSize / 1048576.0, prop.totalGlobalMem / 1073741824.0, prop.major,
           prop.minor, driver, runtime);
    cudaStream_t stream;
    CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    double copy_bandwidth = measure_copy_bandwidth((size_t)prop.l2CacheSize, stream);
    printf("versions: 0 = naive, one launch per tensor (bench baseline); 1 = managed optimizer (fadam_step);\n"
           "          2 = functional (fadam_step_table); 3 = the fused step (fadam_fused_step: norm pass, clip, update;\n"
           "          its MB moved add one read of the gradients). check: sampled elements against fadam_cpu_step.\n"
           "Memory-lean layouts and Lion (bf16 params and grads; versions 2 and 3 on llama3-8B unless --lean-sets,\n"
           "--lean-versions): master fp32 or a 16-bit remainder, m+v fp32, bf16 (stochastic rounding) or int8.\n"
           "MB moved: bytes per element from kernels/adam_step.cu's list (bench/roofline.h) times elements.\n"
           "median us: GPU time per step (CUDA events, batches of back-to-back steps); host us: CPU time of the step call.\n\n");
    printf("| set | precision | version | elements | tensors | MB moved | median us | GB/s | %% copy BW | host us/step | check |\n");
    printf("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n");
    fflush(stdout);

    /* Targets of the issue, checked at the end against the managed optimizer's rows. */
    double worst_large_fraction = 1e30, small_host_us = -1.0;

    for (int set = 0; set < BENCH_N_SETS; set++) {
        if (!sets[set]) continue;
        bench_model model;
        bench_model_build(&model, (bench_set)set, divisor);
        size_t free_bytes = 0, total_bytes = 0;
        CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
        /* The worst footprint of the rows to run (18 B/element), so every row runs the same set. */
        double footprint = 0.0;
        for (int p = 0; p < N_VARIANTS; p++)
            if (!variants[p].lean || lean_sets[set]) footprint = std::max(footprint, variant_footprint(variants[p]));
        double budget = 0.85 * (double)free_bytes - (double)(512 << 20);
        int layers = layers_that_fit(model, budget, footprint);
        char label[96];
        if (layers < 0 || (model.n_layers > 0 && layers == 0 && model.full_layers > 0)) {
            printf("| %s | - | - | %lld | %lld | - | - | - | - | - | skipped: needs %.1f GiB, %.1f GiB free |\n",
                   model.name, (long long)bench_model_elements(&model), (long long)model.n_tensors,
                   (double)bench_model_elements(&model) * footprint / 1073741824.0, free_bytes / 1073741824.0);
            bench_model_free(&model);
            continue;
        }
        if (layers < model.n_layers) bench_model_keep_layers(&model, layers);
        bench_model_label(&model, label, sizeof label);
        int64_t elements = bench_model_elements(&model);
        std::vector<sample> samples = choose_samples(model);

        for (int p = 0; p < N_VARIANTS; p++) {
            const bench_variant &variant = variants[p];
            int any_version = 0;
            for (int v = 0; v < N_VERSIONS; v++) any_version |= versions[v] && (!variant.lean || lean_versions[v]);
            if (!any_version || (variant.lean && !lean_sets[set])) continue;
            double set_bytes = (double)elements * variant_footprint(variant);
            int replicas = (int)std::ceil(4.0 * prop.l2CacheSize / set_bytes);
            replicas = std::max(1, std::min(MAX_REPLICAS, replicas));
            bench_case c;
            case_setup(c, model, variant, replicas);
            std::vector<sampled_values> expected = expected_values(c, samples);
            for (int v = 0; v < N_VERSIONS; v++) {
                if (!versions[v] || (variant.lean && !lean_versions[v])) continue;
                /* The fused step's norm pass reads every gradient once more. */
                double bytes = (double)elements *
                               (bench_roofline_bytes(variant.roofline) + (v == 3 ? (variant.grad_bf16 ? 2 : 4) : 0));
                version_result r = run_version(c, v, samples, expected, target_seconds, stream);
                char check[96];
                if (r.check.failed) {
                    snprintf(check, sizeof check, "FAIL: %lld of %zu differ, max rel %.2g", (long long)r.check.differing,
                             6 * samples.size(), r.check.max_relative);
                    failures++;
                } else if (r.check.differing) {
                    snprintf(check, sizeof check, "within tol: %lld differ, max rel %.2g", (long long)r.check.differing,
                             r.check.max_relative);
                } else {
                    snprintf(check, sizeof check, "bitwise (%zu samples)", samples.size());
                }
                if (r.timed) {
                    double fraction = bytes / r.step_seconds / copy_bandwidth;
                    printf("| %s | %s | %s | %lld | %lld | %.1f | %.1f | %.1f | %.1f%% | %.1f | %s |\n", label,
                           variant.label, version_names[v], (long long)elements, (long long)model.n_tensors, bytes / 1e6,
                           r.step_seconds * 1e6, bytes / r.step_seconds / 1e9, 100.0 * fraction, r.host_seconds * 1e6,
                           check);
                    if (v == 1 && !variant.lean && elements >= 10000000)
                        worst_large_fraction = std::min(worst_large_fraction, fraction);
                    if (v == 1 && !variant.lean && set == BENCH_MANY_SMALL)
                        small_host_us = std::max(small_host_us, r.host_seconds * 1e6);
                } else {
                    printf("| %s | %s | %s | %lld | %lld | %.1f | - | - | - | - | %s |\n", label, variant.label,
                           version_names[v], (long long)elements, (long long)model.n_tensors, bytes / 1e6, check);
                }
                fflush(stdout);
            }
            case_free(c);
        }
        bench_model_free(&model);
    }
    printf("\n");
    if (worst_large_fraction < 1e29)
        printf("target: >= 90%% of copy bandwidth for 10M+ element sets (version 1): worst %.1f%%\n",
               100.0 * worst_large_fraction);
    if (small_host_us >= 0)
        printf("target: host time per step < 10 us for 10,000 tensors (version 1): %.1f us\n", small_host_us);
    printf("GPU bench: %d check(s) failed\n\n", failures);
    CUDA_CHECK(cudaStreamDestroy(stream));
    return failures ? 1 : 0;
}
