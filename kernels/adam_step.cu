/* adam_step.cu - one fused Adam/AdamW step over every tensor of a model, in one launch.
 *
 * Computes, per element (../shared/NUMERICS.md, the same order as csrc/reference.c):
 *   g = float(grad) * grad_scale (1/loss_scale * clip coefficient, 1 in a plain step); if maximize g = -g
 *   ADAM_L2: g += wd*p            ADAMW: p *= 1 - lr*wd
 *   m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g*g
 *   p -= (lr/bc1) * m / (sqrt(v)/sqrt(bc2) + eps);  16-bit param = round_to_nearest_even(p)
 *
 * Bytes moved per element (read + write), the roofline the benchmark uses:
 *   fp32 param, fp32 grad, no master:           16 + 12 = 28 B
 *   16-bit param, 16-bit grad, fp32 master:     14 + 14 = 28 B
 *   16-bit param, fp32 grad, fp32 master:       16 + 14 = 30 B
 *   16-bit param updated in place (no master):  10-12 + 10 = 20-22 B
 *
 * Launch shape: a 1-D grid of any size (blocks stride over the table's chunks of
 * FADAM_CHUNK_ELEMS elements; production uses min(chunks, 8 per SM)), a 1-D block of any size
 * (256 in production). Each block first computes the per-group scalars for step t into shared
 * memory, then updates its chunks with 4-element vector accesses where every pointer allows and a
 * scalar loop elsewhere. Built with -fmad=false so the GPU, the emulated CPU run and the C reference
 * agree bit for bit.
 */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "adam_math.h"
#include "launch.cuh"
#include "launchers.h"
#include "tensor_table.cuh"

/* One element: the update itself, shared by the vector and the scalar paths. */
static __device__ __forceinline__ void adam_update_element(float &param, float grad, float &exp_avg,
                                                           float &exp_avg_sq, const fadam_group_scalars &s) {
    grad = grad * s.grad_scale; /* unscale and clip (exactly 1 in a plain step) */
    if (s.maximize) grad = -grad;
    if (s.coupled_decay) grad = grad + s.weight_decay * param;
    if (s.decoupled_decay) param = param * s.decay_factor;
    exp_avg = s.beta1 * exp_avg + s.one_minus_beta1 * grad;
    exp_avg_sq = s.beta2 * exp_avg_sq + s.one_minus_beta2 * grad * grad;
    float denom = sqrtf(exp_avg_sq) / s.bias_correction2_sqrt + s.eps;
    param = param - s.step_size * exp_avg / denom;
}

/* Elements [begin, end) of one tensor. The vector loop covers the largest multiple of 4 from
 * `begin` (chunk starts are multiples of 4), the scalar loop the rest. */
template <typename ParamT, typename GradT>
static __device__ void adam_update_range(const fadam_table_entry &tensor, int64_t begin, int64_t end,
                                         const fadam_group_scalars &s) {
    ParamT *param = static_cast<ParamT *>(tensor.param);
    const GradT *grad = static_cast<const GradT *>(tensor.grad);
    float *master = tensor.master;
    float *exp_avg = tensor.exp_avg;
    float *exp_avg_sq = tensor.exp_avg_sq;
    const int64_t stride = blockDim.x;

    int64_t vector_end = begin;
    if (tensor.vector_ok) {
        vector_end = begin + ((end - begin) & ~(int64_t)3);
        for (int64_t i = begin + 4 * (int64_t)threadIdx.x; i < vector_end; i += 4 * stride) {
            fadam_vec4<GradT> g = *reinterpret_cast<const fadam_vec4<GradT> *>(grad + i);
            fadam_vec4<float> m = *reinterpret_cast<const fadam_vec4<float> *>(exp_avg + i);
            fadam_vec4<float> v = *reinterpret_cast<const fadam_vec4<float> *>(exp_avg_sq + i);
            fadam_vec4<float> p;
            if (master) {
                p = *reinterpret_cast<const fadam_vec4<float> *>(master + i);
            } else {
                fadam_vec4<ParamT> stored = *reinterpret_cast<const fadam_vec4<ParamT> *>(param + i);
#pragma unroll
                for (int k = 0; k < 4; k++) p.lane[k] = fadam_to_float(stored.lane[k]);
            }
            fadam_vec4<ParamT> out;
#pragma unroll
            for (int k = 0; k < 4; k++) {
                adam_update_element(p.lane[k], fadam_to_float(g.lane[k]), m.lane[k], v.lane[k], s);
                out.lane[k] = fadam_from_float<ParamT>(p.lane[k]);
            }
            *reinterpret_cast<fadam_vec4<float> *>(exp_avg + i) = m;
            *reinterpret_cast<fadam_vec4<float> *>(exp_avg_sq + i) = v;
            if (master) *reinterpret_cast<fadam_vec4<float> *>(master + i) = p;
            *reinterpret_cast<fadam_vec4<ParamT> *>(param + i) = out;
        }
    }
    for (int64_t i = vector_end + threadIdx.x; i < end; i += stride) {
        float p = master ? master[i] : fadam_to_float(param[i]);
        float m = exp_avg[i], v = exp_avg_sq[i];
        adam_update_element(p, fadam_to_float(grad[i]), m, v, s);
        exp_avg[i] = m;
        exp_avg_sq[i] = v;
        if (master) master[i] = p;
        param[i] = fadam_from_float<ParamT>(p);
    }
}

template <typename ParamT>
static __device__ void adam_update_range_for_grad(const fadam_table_entry &tensor, int64_t begin, int64_t end,
                                                  const fadam_group_scalars &s) {
    switch (tensor.grad_dtype) {
    case FADAM_FLOAT32: adam_update_range<ParamT, float>(tensor, begin, end, s); break;
    case FADAM_BFLOAT16: adam_update_range<ParamT, __nv_bfloat16>(tensor, begin, end, s); break;
    case FADAM_FLOAT16: adam_update_range<ParamT, __half>(tensor, begin, end, s); break;
    default: break; /* the host encoder rejects other dtypes */
    }
}

__global__ void adam_step_kernel(const fadam_step_kernel_args args) {
    __shared__ fadam_group_scalars group_scalars[FADAM_MAX_GROUPS];
    const fadam_table_header *table = args.table;

    /* A fused step whose gradients held Inf/NaN changes nothing (the whole block leaves together). */
    if (args.state && args.state->counters.skipped) return;
    /* t and lr may live in device memory (a replayed CUDA graph): read them here, once per block. */
    for (int g = threadIdx.x; g < args.n_groups; g += blockDim.x)
        group_scalars[g] = fadam_scalars_for_step(&args.groups[g], g, args.step, args.device_step, args.device_lr,
                                                  args.state);
    __syncthreads();

    const fadam_table_entry *entries = fadam_table_entries(table);
    const int64_t n_chunks = table->n_chunks, n_tensors = table->n_tensors;
    const int64_t chunk_elems = table->chunk_elems;
    for (int64_t chunk = blockIdx.x; chunk < n_chunks; chunk += gridDim.x) {
        /* A copy in registers: stores through the tensor's pointers could alias the table otherwise. */
        const fadam_table_entry tensor = entries[fadam_find_tensor(entries, n_tensors, chunk)];
        if (tensor.group < 0 || tensor.group >= args.n_groups) continue;
        const fadam_group_scalars &s = group_scalars[tensor.group];
        int64_t begin = (chunk - tensor.first_chunk) * chunk_elems;
        int64_t end = begin + chunk_elems < tensor.numel ? begin + chunk_elems : tensor.numel;
        switch (tensor.param_dtype) {
        case FADAM_FLOAT32: adam_update_range_for_grad<float>(tensor, begin, end, s); break;
        case FADAM_BFLOAT16: adam_update_range_for_grad<__nv_bfloat16>(tensor, begin, end, s); break;
        case FADAM_FLOAT16: adam_update_range_for_grad<__half>(tensor, begin, end, s); break;
        default: break;
        }
    }
}

extern "C" cudaError_t fadam_launch_adam_step(const fadam_step_kernel_args *args, unsigned grid_blocks,
                                              unsigned block_threads, cudaStream_t stream) {
    if (grid_blocks == 0) return cudaSuccess; /* nothing to update */
    FADAM_LAUNCH(adam_step_kernel, dim3(grid_blocks), dim3(block_threads), 0, stream, *args);
    return FADAM_LAUNCH_ERROR();
}
