/* grad_norm.cu - the first pass of the fused step: the global L2 norm of every gradient in one launch,
 * and, in the last block to finish, the step's decision (fadam_decide_step in adam_math.h): skip on
 * Inf/NaN, clip coefficient, loss-scale update, step counter, schedule factor.
 *
 * Computes sum(g^2) over all tensors in double (squares of fp32 values neither overflow nor
 * underflow there). Deterministic: each chunk's partial is a fixed-order reduction (thread-strided
 * sums, then a tree over the block), stored at the chunk's index; the last block sums the partials
 * in a fixed order. The bits do not depend on which block took which chunk, or when.
 * Bytes moved per element: the gradient only, 4 B (fp32) or 2 B (bf16/fp16), plus 8 B per chunk.
 * Launch shape: a 1-D grid of any size striding over the table's chunks; a 1-D block whose size is a
 * power of two up to 1024 (256 in production). It runs in every configuration: without it an Inf/NaN
 * gradient would go unnoticed and be applied.
 */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "adam_math.h"
#include "launch.cuh"
#include "launchers.h"
#include "tensor_table.cuh"

#define NORM_MAX_THREADS 1024

/* Sums values[0..count) of one thread each into values[0], in a fixed tree order. */
static __device__ void block_tree_sum(double *values) {
    for (unsigned width = blockDim.x / 2; width > 0; width /= 2) {
        __syncthreads();
        if (threadIdx.x < width) values[threadIdx.x] += values[threadIdx.x + width];
    }
    __syncthreads();
}

template <typename GradT>
static __device__ double sum_of_squares_range(const fadam_table_entry &tensor, int64_t begin, int64_t end) {
    const GradT *grad = static_cast<const GradT *>(tensor.grad);
    double sum = 0.0;
    for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
        double g = fadam_to_float(grad[i]);
        sum += g * g;
    }
    return sum;
}

__global__ void grad_norm_kernel(const fadam_table_header *table, double *chunk_partials, fadam_device_state *state,
                                 const fadam_fused_step_config config) {
    __shared__ double thread_sums[NORM_MAX_THREADS];
    __shared__ int is_last_block;
    const fadam_table_entry *entries = fadam_table_entries(table);
    const int64_t n_chunks = table->n_chunks, n_tensors = table->n_tensors;
    const int64_t chunk_elems = table->chunk_elems;

    for (int64_t chunk = blockIdx.x; chunk < n_chunks; chunk += gridDim.x) {
        const fadam_table_entry tensor = entries[fadam_find_tensor(entries, n_tensors, chunk)];
        int64_t begin = (chunk - tensor.first_chunk) * chunk_elems;
        int64_t end = begin + chunk_elems < tensor.numel ? begin + chunk_elems : tensor.numel;
        double sum = 0.0;
        switch (tensor.grad_dtype) {
        case FADAM_FLOAT32: sum = sum_of_squares_range<float>(tensor, begin, end); break;
        case FADAM_BFLOAT16: sum = sum_of_squares_range<__nv_bfloat16>(tensor, begin, end); break;
        case FADAM_FLOAT16: sum = sum_of_squares_range<__half>(tensor, begin, end); break;
        default: break;
        }
        thread_sums[threadIdx.x] = sum;
        block_tree_sum(thread_sums);
        if (threadIdx.x == 0) chunk_partials[chunk] = thread_sums[0];
    }

    /* The last block to arrive sees every partial: make ours visible, then take a ticket. */
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) is_last_block = atomicAdd(&state->blocks_done, 1u) == gridDim.x - 1;
    __syncthreads();
    if (!is_last_block) return;
    __threadfence();

    double sum = 0.0;
    for (int64_t chunk = threadIdx.x; chunk < n_chunks; chunk += blockDim.x)
        sum += static_cast<volatile double *>(chunk_partials)[chunk];
    thread_sums[threadIdx.x] = sum;
    block_tree_sum(thread_sums);
    if (threadIdx.x == 0) {
        fadam_decide_step(state, &config, thread_sums[0]);
        state->blocks_done = 0; /* ready for the next launch, or the next replay of a graph */
    }
}

extern "C" cudaError_t fadam_launch_grad_norm(const fadam_table_header *table, double *chunk_partials,
                                              fadam_device_state *state, const fadam_fused_step_config *config,
                                              unsigned grid_blocks, unsigned block_threads, cudaStream_t stream) {
    if (block_threads == 0 || block_threads > NORM_MAX_THREADS || (block_threads & (block_threads - 1)))
        return cudaErrorInvalidValue;
    FADAM_LAUNCH(grad_norm_kernel, dim3(grid_blocks), dim3(block_threads), 0, stream, table, chunk_partials, state,
                 *config);
    return FADAM_LAUNCH_ERROR();
}
