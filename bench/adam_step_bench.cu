/* adam_step_bench.cu - the fused step on real model shapes, against the measured copy bandwidth.
 *
 * Numbered versions side by side, each validated against the CPU reference (fadam_cpu_step) after one
 * step from the same inputs, then timed:
 *   0  naive: one launch per tensor of a one-element-per-thread kernel written here (a baseline)
 *   1  the managed optimizer: fadam_create(FADAM_DEVICE_CUDA) + fadam_step
 *   2  the functional call: fadam_table_encode once, fadam_step_table per step
 * Inputs are a pure function of (replica, tensor, buffer, element) (bench_init.h), filled by a kernel;
 * the host recomputes sampled elements (all of a small tensor; the ends, chunk boundaries and random
 * ones of a large one), steps them with fadam_cpu_step and compares bit for bit.
 *
 * Timing: CUDA events around batches of back-to-back steps (so a step's time is the GPU's, not the
 * launch latency of an idle GPU), after a warm-up batch; the median over many batches. A set smaller
 * than 4x the L2 cache is replicated and the replicas stepped in turn, so no step finds its inputs in
 * L2. Host time per step: the CPU time of the step call itself (it only enqueues), median.
 * Bytes moved per element as in docs/NUMERICS.md (28, 28, 30; the fused step, version 3, adds
 * the norm pass's read of the gradient, 2 or 4); the copy bandwidth is that of
 * cudaMemcpyAsync device-to-device on a buffer far larger than L2, counting bytes read + written.
 *
 * Usage: adam_step_bench [--sets=NAME,...] [--versions=0,1,2,3] [--seconds=S] [--divisor=N] [--quick]
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

/* Elements [begin, end) of one buffer get bench_value(key, i, role, exact_bf16), stored as bf16 or fp32. */
typedef struct fill_job {
    void *buffer;
    uint64_t key;
    int64_t begin, end;
    int32_t role;
    int32_t store_bf16;
    int32_t exact_bf16;
    int32_t reserved;
} fill_job;

__global__ void fill_kernel(const fill_job *jobs, int64_t n_jobs) {
    for (int64_t j = blockIdx.x; j < n_jobs; j += gridDim.x) {
        const fill_job job = jobs[j];
        for (int64_t i = job.begin + threadIdx.x; i < job.end; i += blockDim.x) {
            float value = bench_value(job.key, i, job.role, job.exact_bf16);
            if (job.store_bf16) static_cast<uint16_t *>(job.buffer)[i] = bench_bf16_bits_of_exact(value);
            else static_cast<float *>(job.buffer)[i] = value;
        }
    }
}

static void add_fill(std::vector<fill_job> &jobs, void *buffer, int64_t numel, uint64_t key, int role, int store_bf16,
                     int exact_bf16) {
    for (int64_t begin = 0; begin < numel; begin += FILL_CHUNK_ELEMS) {
        fill_job job;
        memset(&job, 0, sizeof job);
        job.buffer = buffer;
        job.key = key;
        job.begin = begin;
        job.end = std::min<int64_t>(numel, begin + FILL_CHUNK_ELEMS);
        job.role = role;
        job.store_bf16 = store_bf16;
        job.exact_bf16 = exact_bf16;
        jobs.push_back(job);
    }
}

/* Every buffer of tensor `index` of `replica`: param and grad exact in their dtype, the master of a bf16
 * param equal to the param, moments in fp32. */
static void add_tensor_fills(std::vector<fill_job> &jobs, const fadam_tensor &t, int replica, int64_t index) {
    int param_bf16 = t.param_dtype == FADAM_BFLOAT16, grad_bf16 = t.grad_dtype == FADAM_BFLOAT16;
    uint64_t param_key = bench_key(replica, index, BENCH_ROLE_PARAM);
    add_fill(jobs, t.param, t.numel, param_key, BENCH_ROLE_PARAM, param_bf16, param_bf16);
    add_fill(jobs, const_cast<void *>(t.grad), t.numel, bench_key(replica, index, BENCH_ROLE_GRAD), BENCH_ROLE_GRAD,
             grad_bf16, grad_bf16);
    if (t.master) add_fill(jobs, t.master, t.numel, param_key, BENCH_ROLE_PARAM, 0, 1);
    add_fill(jobs, t.exp_avg, t.numel, bench_key(replica, index, BENCH_ROLE_EXP_AVG), BENCH_ROLE_EXP_AVG, 0, 0);
    add_fill(jobs, t.exp_avg_sq, t.numel, bench_key(replica, index, BENCH_ROLE_EXP_AVG_SQ), BENCH_ROLE_EXP_AVG_SQ, 0,
             0);
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

/* ---- version 0: one plain kernel launch per tensor ---- */

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
    param[i] = from_float<ParamT>(p);
}

template <typename ParamT, typename GradT>
static void launch_naive(const fadam_tensor &t, const fadam_group_scalars &s, cudaStream_t stream) {
    unsigned blocks = (unsigned)((t.numel + 255) / 256);
    auto kernel = naive_adam_kernel<ParamT, GradT>; /* one macro argument, whatever the template's commas */
    FADAM_LAUNCH(kernel, dim3(blocks), dim3(256), 0, stream, static_cast<ParamT *>(t.param),
                 static_cast<const GradT *>(t.grad), t.master, t.exp_avg, t.exp_avg_sq, t.numel, s);
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

/* param (as float), master (0 without one), exp_avg, exp_avg_sq of one sampled element. */
typedef struct sampled_values {
    float param, master, exp_avg, exp_avg_sq;
} sampled_values;

__global__ void gather_kernel(const fadam_tensor *tensors, const sample *samples, int64_t n_samples,
                              sampled_values *out) {
    for (int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; k < n_samples; k += (int64_t)gridDim.x * blockDim.x) {
        const fadam_tensor &t = tensors[samples[k].tensor];
        int64_t i = samples[k].index;
        sampled_values v;
        v.param = t.param_dtype == FADAM_BFLOAT16
                      ? bench_bf16_bits_to_float(static_cast<const uint16_t *>(t.param)[i])
                      : static_cast<const float *>(t.param)[i];
        v.master = t.master ? t.master[i] : 0.0f;
        v.exp_avg = t.exp_avg[i];
        v.exp_avg_sq = t.exp_avg_sq[i];
        out[k] = v;
    }
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

/* The CPU reference's result for every sample after one step (t = 1) from replica 0's inputs: the
 * samples of each group gathered into one host tensor and stepped with fadam_cpu_step. */
static std::vector<sampled_values> expected_values(const bench_model &model, const bench_precision &precision,
                                                   const std::vector<sample> &samples, const fadam_hparams *groups) {
    size_t n = samples.size();
    std::vector<float> param32(n), grad32(n), master(n), exp_avg(n), exp_avg_sq(n);
    std::vector<uint16_t> param16(n), grad16(n);
    std::vector<size_t> order; /* samples of group 0, then of group 1 */
    int64_t group_count[2] = {0, 0};
    for (int g = 0; g < 2; g++)
        for (size_t k = 0; k < n; k++)
            if (model.tensors[samples[k].tensor].no_decay == g) order.push_back(k);
    for (size_t j = 0; j < n; j++) {
        const sample &s = samples[order[j]];
        group_count[model.tensors[s.tensor].no_decay]++;
        float p = bench_value(bench_key(0, s.tensor, BENCH_ROLE_PARAM), s.index, BENCH_ROLE_PARAM, precision.param_bf16);
        float g = bench_value(bench_key(0, s.tensor, BENCH_ROLE_GRAD), s.index, BENCH_ROLE_GRAD, precision.grad_bf16);
        param32[j] = p;
        param16[j] = bench_bf16_bits_of_exact(p);
        master[j] = p;
        grad32[j] = g;
        grad16[j] = bench_bf16_bits_of_exact(g);
        exp_avg[j] = bench_value(bench_key(0, s.tensor, BENCH_ROLE_EXP_AVG), s.index, BENCH_ROLE_EXP_AVG, 0);
        exp_avg_sq[j] = bench_value(bench_key(0, s.tensor, BENCH_ROLE_EXP_AVG_SQ), s.index, BENCH_ROLE_EXP_AVG_SQ, 0);
    }
    fadam_tensor gathered[2];
    int64_t offset = 0;
    for (int g = 0; g < 2; g++) {
        fadam_tensor &t = gathered[g];
        memset(&t, 0, sizeof t);
        t.numel = group_count[g];
        t.param_dtype = precision.param_bf16 ? FADAM_BFLOAT16 : FADAM_FLOAT32;
        t.grad_dtype = precision.grad_bf16 ? FADAM_BFLOAT16 : FADAM_FLOAT32;
        t.group = g;
        if (t.numel > 0) {
            t.param = precision.param_bf16 ? (void *)(param16.data() + offset) : (void *)(param32.data() + offset);
            t.grad = precision.grad_bf16 ? (const void *)(grad16.data() + offset) : (const void *)(grad32.data() + offset);
            t.master = precision.param_bf16 ? master.data() + offset : NULL;
            t.exp_avg = exp_avg.data() + offset;
            t.exp_avg_sq = exp_avg_sq.data() + offset;
        }
        offset += t.numel;
    }
    fadam_step_source source;
    memset(&source, 0, sizeof source);
    source.step = 1;
    require_ok(fadam_cpu_step(gathered, 2, groups, 2, &source), "fadam_cpu_step");
    std::vector<sampled_values> expected(n);
    for (size_t j = 0; j < n; j++) {
        sampled_values &e = expected[order[j]];
        e.param = precision.param_bf16 ? bench_bf16_bits_to_float(param16[j]) : param32[j];
        e.master = precision.param_bf16 ? master[j] : 0.0f;
        e.exp_avg = exp_avg[j];
        e.exp_avg_sq = exp_avg_sq[j];
    }
    return expected;
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
    }
    return r;
}

static std::vector<sampled_values> gather(const std::vector<fadam_tensor> &tensors, const std::vector<sample> &samples,
                                          cudaStream_t stream) {
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
                 (int64_t)samples.size(), device_out);
    CUDA_CHECK(FADAM_LAUNCH_ERROR());
    CUDA_CHECK(cudaMemcpyAsync(out.data(), device_out, samples.size() * sizeof(sampled_values), cudaMemcpyDeviceToHost,
                               stream));
    CUDA_CHECK(cudaStreamSynchronize(stream));
    CUDA_CHECK(cudaFree(device_tensors));
    CUDA_CHECK(cudaFree(device_samples));
    CUDA_CHECK(cudaFree(device_out));
    return out;
}

/* ---- one case: a set in one precision, R replicas of its params and grads ---- */

typedef struct bench_case {
    const bench_model *model;
    const bench_precision *precision;
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

static size_t plan_state(std::vector<fadam_tensor> &tensors, uintptr_t base) {
    size_t offset = 0;
    for (fadam_tensor &t : tensors) {
        size_t region = round_up((size_t)t.numel * sizeof(float), STATE_ALIGNMENT);
        t.master = NULL;
        if (t.param_dtype == FADAM_BFLOAT16) {
            t.master = (float *)(base + offset);
            offset += region;
        }
        t.exp_avg = (float *)(base + offset);
        t.exp_avg_sq = (float *)(base + offset + region);
        offset += 2 * region;
    }
    return offset;
}

static void case_setup(bench_case &c, const bench_model &model, const bench_precision &precision, int replicas) {
    c.model = &model;
    c.precision = &precision;
    c.replicas = replicas;
    c.groups[0] = fadam_hparams_default();
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
            t.param_dtype = precision.param_bf16 ? FADAM_BFLOAT16 : FADAM_FLOAT32;
            t.grad_dtype = precision.grad_bf16 ? FADAM_BFLOAT16 : FADAM_FLOAT32;
            t.group = model.tensors[i].no_decay;
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

/* What one version holds for a case. */
typedef struct version_state {
    int version;
    void *state_blocks[MAX_REPLICAS];          /* versions 0 and 2: master, m, v */
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
            for (size_t i = 0; i < tensors.size(); i++)
                require_ok(fadam_add_tensor(opt, c.model->tensors[i].name, tensors[i].param, tensors[i].grad,
                                            tensors[i].numel, tensors[i].param_dtype, tensors[i].grad_dtype,
                                            tensors[i].group, NULL),
                           "fadam_add_tensor");
            require_ok(fadam_finalize(opt, (fadam_stream)stream), "fadam_finalize");
            s.optimizers[r] = opt;
            /* The optimizer's state, into this replica's tensor list, for filling and gathering. */
            for (size_t i = 0; i < tensors.size(); i++)
                require_ok(fadam_get_state(opt, (int64_t)i, &tensors[i].master, &tensors[i].exp_avg,
                                           &tensors[i].exp_avg_sq),
                           "fadam_get_state");
        } else {
            size_t bytes = plan_state(tensors, 0);
            CUDA_CHECK(cudaMalloc(&s.state_blocks[r], bytes));
            plan_state(tensors, (uintptr_t)s.state_blocks[r]);
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
        for (size_t i = 0; i < c.tensors[r].size(); i++) add_tensor_fills(jobs, c.tensors[r][i], r, (int64_t)i);
    run_fills(jobs, stream);
}

static void version_free(bench_case &c, version_state &s) {
    CUDA_CHECK(cudaDeviceSynchronize());
    for (int r = 0; r < c.replicas; r++) {
        fadam_destroy(s.optimizers[r]);
        if (s.state_blocks[r]) CUDA_CHECK(cudaFree(s.state_blocks[r]));
        if (s.device_tables[r]) CUDA_CHECK(cudaFree(s.device_tables[r]));
        for (fadam_tensor &t : c.tensors[r]) t.master = t.exp_avg = t.exp_avg_sq = NULL;
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

    /* Validate: the first step (t = 1) of replica 0 against the CPU reference. */
    version_step(c, s, 0, stream);
    CUDA_CHECK(cudaStreamSynchronize(stream));
    result.check = check_samples(gather(c.tensors[0], samples, stream), expected, c.precision->param_bf16);
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
        if (batch >= min_batches && now_seconds() - started > target_seconds) break;
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
static int layers_that_fit(const bench_model &model, double budget, int footprint) {
    int64_t layer = bench_model_layer_elements(&model);
    int64_t outside = bench_model_elements(&model) - layer * model.n_layers;
    double left = budget - (double)outside * footprint;
    if (left < 0) return -1;
    if (layer == 0) return model.n_layers;
    return (int)std::min<double>(model.n_layers, std::floor(left / ((double)layer * footprint)));
}

int main(int argc, char **argv) {
    static const char *const version_keys[N_VERSIONS] = {"0", "1", "2", "3"};
    int sets[BENCH_N_SETS], versions[N_VERSIONS], failures = 0;
    double target_seconds = 1.0;
    int64_t divisor = 1;
    for (int s = 0; s < BENCH_N_SETS; s++) sets[s] = 1;
    for (int v = 0; v < N_VERSIONS; v++) versions[v] = 1;
    for (int i = 1; i < argc; i++) {
        if (strncmp(argv[i], "--sets=", 7) == 0) {
            if (!parse_list(argv[i] + 7, bench_set_names, BENCH_N_SETS, sets)) return 2;
        } else if (strncmp(argv[i], "--versions=", 11) == 0) {
            if (!parse_list(argv[i] + 11, version_keys, N_VERSIONS, versions)) return 2;
        } else if (strncmp(argv[i], "--seconds=", 10) == 0) {
            target_seconds = atof(argv[i] + 10);
        } else if (strncmp(argv[i], "--divisor=", 10) == 0) {
            divisor = atoll(argv[i] + 10);
        } else if (strcmp(argv[i], "--quick") == 0) {
            min_batches = max_batches = 1;
        } else {
            fprintf(stderr, "usage: %s [--sets=NAME,...] [--versions=0,1,2,3] [--seconds=S] [--divisor=N] [--quick]\n"
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
        /* The worst precision's footprint (18 B/element), so every precision runs the same set. */
        int footprint = 0;
        for (int p = 0; p < BENCH_N_PRECISIONS; p++)
            footprint = std::max(footprint, bench_precision_footprint(&bench_precisions[p]));
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

        for (int p = 0; p < BENCH_N_PRECISIONS; p++) {
            const bench_precision &precision = bench_precisions[p];
            double set_bytes = (double)elements * bench_precision_footprint(&precision);
            int replicas = (int)std::ceil(4.0 * prop.l2CacheSize / set_bytes);
            replicas = std::max(1, std::min(MAX_REPLICAS, replicas));
            bench_case c;
            case_setup(c, model, precision, replicas);
            std::vector<sampled_values> expected = expected_values(model, precision, samples, c.groups);
            for (int v = 0; v < N_VERSIONS; v++) {
                if (!versions[v]) continue;
                /* The fused step's norm pass reads every gradient once more. */
                double bytes = (double)elements *
                               (precision.bytes_per_element + (v == 3 ? (precision.grad_bf16 ? 2 : 4) : 0));
                version_result r = run_version(c, v, samples, expected, target_seconds, stream);
                char check[96];
                if (r.check.failed) {
                    snprintf(check, sizeof check, "FAIL: %lld of %zu differ, max rel %.2g", (long long)r.check.differing,
                             4 * samples.size(), r.check.max_relative);
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
                           precision.label, version_names[v], (long long)elements, (long long)model.n_tensors, bytes / 1e6,
                           r.step_seconds * 1e6, bytes / r.step_seconds / 1e9, 100.0 * fraction, r.host_seconds * 1e6,
                           check);
                    if (v == 1 && elements >= 10000000) worst_large_fraction = std::min(worst_large_fraction, fraction);
                    if (v == 1 && set == BENCH_MANY_SMALL) small_host_us = std::max(small_host_us, r.host_seconds * 1e6);
                } else {
                    printf("| %s | %s | %s | %lld | %lld | %.1f | - | - | - | - | %s |\n", label, precision.label,
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
