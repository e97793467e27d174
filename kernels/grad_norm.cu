/* grad_norm.cu - the first pass of the fused step: the global L2 norm of every gradient in one launch,
 * and, in the last block to finish, the step's decision (fadam_decide_step in adam_math.h: skip on
 * Inf/NaN, clip coefficient, loss-scale update, step counter, schedule factor) and then every group's
 * scalars for the update (bias corrections, lr with the schedule, clip and unscale), computed once
 * here and read by the update kernel, so no block of it recomputes them in double.
 *
 * Computes sum(g^2) over all tensors in double (squares of fp32 values neither overflow nor
 * underflow there), one fma per element. Deterministic: each chunk's partial is a fixed-order
 * reduction (strided per-thread sums, then a butterfly in each warp and across the warps), stored at
 * the chunk's index; the last block sums the partials in a fixed order (thread-strided, then the same
 * butterflies). The bits depend on the table and the block size only, never on the grid or on which
 * block or warp took a chunk, or when.
 * Bytes moved per element: the gradient only, 4 B (fp32) or 2 B (bf16/fp16), plus 8 B per chunk.
 * Fast path: 16-byte loads (8 16-bit or 4 fp32 elements), NORM_ELEMS elements' worth (4 or 8 loads) in
 * flight per thread; per bf16 element: unpack, widen to double, fma (3 instructions, plus the loop's).
 * Who sums a chunk: a chunk smaller than both the table's chunk size and NORM_WARP_ELEMS (a small
 * tensor, or a tensor's last part) is summed by one warp, the block's warps taking such chunks in
 * turn; a larger one by the whole block. So 300-element tensors keep 8 warps busy, not 40 threads.
 * Estimates from the code (H200: 132 SMs, 1.98 GHz, 18.4 B per clock per SM; ~950 cycles per DRAM
 * access), to be replaced by `make bench`: a 10M-element bf16 model is 1,221 chunks of 8K, each a
 * block's: 16 KB in flight per block per round trip (~1,500 cycles with the reduction), 5 blocks per
 * SM, ~50 B per clock wanted where HBM gives 18.4: bandwidth-bound. The loop needs 3.9 instructions
 * per bf16 element (36 of the SM's 128 per clock at full bandwidth); its widening to double runs at 16
 * per clock per SM and needs 9.2: the busiest pipe, at 58%. The last block's sum: 1,221 partials, one
 * round of 8 loads per thread (~0.5 us). So the fused step should land near 1.07-1.10x the plain one
 * (2 of 28 bytes per element, plus the last block and the second launch). 10,000 tensors of 300:
 * latency-bound at ~4 us (search, prefetch, a walk through L1, 2 chunks per warp), ~1.2x the plain
 * step's ~20 us.
 * Launch shape: a 1-D grid of any size (block b owns a contiguous range of chunks: one 32-ary table
 * search per warp, the range's entries prefetched into L1); a 1-D block whose size is a power of two
 * from 32 to FADAM_BLOCK_THREADS (256, production's). It runs in every configuration: without it an
 * Inf/NaN gradient would go unnoticed and be applied.
 */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "adam_math.h"
#include "launch.cuh"
#include "launchers.h"
#include "tensor_table.cuh"

#define NORM_ELEMS 32         /* elements per thread per iteration: 4 16-byte loads (16-bit), 8 (fp32) */
#define NORM_WARP_ELEMS 4096  /* chunks below this (and below a full chunk) are one warp's work */
#define NORM_PARTIAL_BATCH 8  /* partials loaded at once by each thread of the last block */

/* The sum over the 32 lanes, in a butterfly: every lane ends with the same bits (a+b == b+a). */
static __device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

/* sum += g^2 for the VEC elements of one 16-byte group, in lane order. */
template <typename GradT> static __device__ __forceinline__ void add_squares(const uint4 &raw, double &sum) {
    constexpr int VEC = 16 / sizeof(GradT);
    const fadam_vec<GradT, VEC> &v = reinterpret_cast<const fadam_vec<GradT, VEC> &>(raw);
#pragma unroll
    for (int e = 0; e < VEC; e++) {
        const double g = fadam_to_float(v.lane[e]);
        sum = fma(g, g, sum);
    }
}

/* This thread's share of sum(g^2) over grad[0..n), in a fixed order. The 16-byte groups go in batches
 * of 32 * UNROLL: lane l of a warp loads groups l, l + 32, ... of a batch (each load of the warp 512
 * contiguous bytes, all UNROLL issued before the first use), warp w of `warps` takes batches w,
 * w + warps, ...; the last, partial batch outside the loop; then the n % VEC tail, and element-wise
 * (thread-strided) for a misaligned range. */
template <typename GradT>
static __device__ __forceinline__ double sum_of_squares(const GradT *__restrict__ grad, int32_t n, int32_t lane,
                                                        int32_t warp, int32_t warps) {
    constexpr int VEC = 16 / sizeof(GradT), UNROLL = NORM_ELEMS / VEC, BATCH = 32 * UNROLL;
    double sum = 0.0;
    int32_t i = warp * 32 + lane;
    if ((reinterpret_cast<uintptr_t>(grad) & 15) == 0) {
        const uint4 *group = reinterpret_cast<const uint4 *>(grad) + lane;
        const int32_t groups = n / VEC, full = groups / BATCH;
#pragma unroll 1
        for (int32_t batch = warp; batch < full; batch += warps) {
            const uint4 *p = group + batch * BATCH;
            uint4 raw[UNROLL];
#pragma unroll
            for (int u = 0; u < UNROLL; u++) raw[u] = __ldg(p + u * 32);
#pragma unroll
            for (int u = 0; u < UNROLL; u++) add_squares<GradT>(raw[u], sum);
        }
        if (full % warps == warp) {
            const uint4 *p = group + full * BATCH;
            const int32_t left = groups - full * BATCH - lane; /* groups of the partial batch from p on */
            uint4 raw[UNROLL];
#pragma unroll
            for (int u = 0; u < UNROLL; u++) raw[u] = u * 32 < left ? __ldg(p + u * 32) : make_uint4(0, 0, 0, 0);
#pragma unroll
            for (int u = 0; u < UNROLL; u++)
                if (u * 32 < left) add_squares<GradT>(raw[u], sum);
        }
        i += groups * VEC;
    }
#pragma unroll 1
    for (; i < n; i += warps * 32) {
        const double g = fadam_to_float(grad[i]);
        sum = fma(g, g, sum);
    }
    return sum;
}

static __device__ __forceinline__ double chunk_sum_of_squares(const void *grad, int dtype, int32_t n, int32_t lane,
                                                              int32_t warp, int32_t warps) {
    switch (dtype) {
    case FADAM_FLOAT32: return sum_of_squares(static_cast<const float *>(grad), n, lane, warp, warps);
    case FADAM_BFLOAT16: return sum_of_squares(static_cast<const __nv_bfloat16 *>(grad), n, lane, warp, warps);
    case FADAM_FLOAT16: return sum_of_squares(static_cast<const __half *>(grad), n, lane, warp, warps);
    default: return 0.0; /* the host encoder rejects other dtypes */
    }
}

/* The block's sum of one value per thread, in a fixed order; thread 0 gets it. `slots` holds one
 * double per warp; the caller alternates two of them so one barrier per sum suffices. */
static __device__ __forceinline__ double block_sum(double v, double *slots) {
    const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    v = warp_sum(v);
    if (lane == 0) slots[warp] = v;
    __syncthreads();
    if (warp == 0) v = warp_sum(lane < warps ? slots[lane] : 0.0);
    return v;
}

/* 5 blocks of 256 per SM (48 registers), as many as the update kernel's one-wave grid puts there;
 * unbounded, ptxas takes 40-80 registers and spills the chunk walk's counters. */
__global__ void __launch_bounds__(FADAM_BLOCK_THREADS, 5) grad_norm_kernel(const fadam_norm_kernel_args args) {
    __shared__ double warp_sums[2][FADAM_BLOCK_THREADS / 32];
    __shared__ int is_last_block;
    const fadam_table_header *table = args.table;
    const fadam_table_entry *entries = fadam_table_entries(table);
    const int64_t n_chunks = table->n_chunks, n_tensors = table->n_tensors;
    const int32_t chunk_elems = table->chunk_elems;
    const int32_t warp_elems = chunk_elems < NORM_WARP_ELEMS ? chunk_elems : NORM_WARP_ELEMS;
    const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    double *partials = args.chunk_partials;

    /* Every warp walks the block's chunks alike, so all reach the same barriers; small chunks go to
     * the warps in turn (by index: blocks are powers of two of warps), the others to the whole block. */
    int64_t chunk, chunk_end, tensor = 0;
    unsigned parity = 0;
    fadam_block_chunks(n_chunks, &chunk, &chunk_end);
    if (chunk < chunk_end) tensor = fadam_warp_find_tensor(entries, n_tensors, chunk);
    /* Every warp walks every chunk of the range: the entries of as many tensors into L1 first. */
    fadam_prefetch_entries(entries, n_tensors, tensor, chunk_end - chunk + 1, threadIdx.x, blockDim.x);
    for (; chunk < chunk_end; chunk++) {
        tensor = fadam_advance_tensor(entries, n_tensors, tensor, chunk);
        const fadam_table_entry *t = &entries[tensor];
        const int64_t begin = (chunk - t->first_chunk) * chunk_elems, left = t->numel - begin;
        const int32_t n = left < chunk_elems ? (int32_t)left : chunk_elems;
        const int dtype = t->grad_dtype;
        const void *grad = static_cast<const char *>(t->grad) + begin * (dtype == FADAM_FLOAT32 ? 4 : 2);
        if (n < warp_elems) {
            if (((unsigned)chunk & (warps - 1)) == warp) {
                const double sum = warp_sum(chunk_sum_of_squares(grad, dtype, n, (int32_t)lane, 0, 1));
                if (lane == 0) partials[chunk] = sum;
            }
        } else {
            const double sum = block_sum(
                chunk_sum_of_squares(grad, dtype, n, (int32_t)lane, (int32_t)warp, (int32_t)warps), warp_sums[parity]);
            if (threadIdx.x == 0) partials[chunk] = sum;
            parity ^= 1;
        }
    }

    /* The last block to arrive sees every partial: make ours visible, then take a ticket. */
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) is_last_block = atomicAdd(&args.state->blocks_done, 1u) == gridDim.x - 1;
    __syncthreads();
    if (!is_last_block) return;
    __threadfence();

    /* Thread-strided, NORM_PARTIAL_BATCH independent loads in flight (from L2: other blocks wrote them),
     * added in index order; absent ones are 0. */
    double sum = 0.0;
    const int64_t stride = blockDim.x;
#pragma unroll 1
    for (int64_t base = threadIdx.x; base < n_chunks; base += NORM_PARTIAL_BATCH * stride) {
        double p[NORM_PARTIAL_BATCH];
#pragma unroll
        for (int u = 0; u < NORM_PARTIAL_BATCH; u++)
            p[u] = base + u * stride < n_chunks ? __ldcg(partials + base + u * stride) : 0.0;
#pragma unroll
        for (int u = 0; u < NORM_PARTIAL_BATCH; u++) sum += p[u];
    }
    sum = block_sum(sum, warp_sums[parity]);
    if (threadIdx.x == 0) {
        if (args.reduce_buffer) {
            /* This rank's share; the caller sums it over the ranks, fused_decide_kernel decides. */
            args.reduce_buffer[0] = sum;
            args.reduce_buffer[1] = sum <= 1.0e308 ? 0.0 : 1.0;
        } else {
            fadam_decide_step(args.state, &args.config, sum);
        }
        args.state->blocks_done = 0; /* ready for the next launch, or the next replay of a graph */
    }
    if (args.reduce_buffer) return;
    __syncthreads(); /* the decision (t, lr factor, gradient scale) is visible to the whole block */
    if (args.scalars_out)
        for (int g = threadIdx.x; g < args.n_groups; g += blockDim.x)
            args.scalars_out[g] = fadam_scalars_for_step(&args.groups[g], g, 0, NULL, NULL, args.state);
}

/* The split step's decision from the all-reduced [sum of squares, non-finite count]: any rank's Inf/NaN
 * skips the step everywhere, even if the sum itself came out finite. One block; the same code as the
 * norm kernel's last block, so one rank decides exactly as fadam_fused_step does. */
__global__ void __launch_bounds__(FADAM_MAX_GROUPS) fused_decide_kernel(const fadam_norm_kernel_args args) {
    if (threadIdx.x == 0) {
        double sum = args.reduce_buffer[0];
        if (args.reduce_buffer[1] != 0.0 && sum == sum) sum = HUGE_VAL;
        fadam_decide_step(args.state, &args.config, sum);
    }
    __syncthreads();
    if (args.scalars_out)
        for (int g = threadIdx.x; g < args.n_groups; g += blockDim.x)
            args.scalars_out[g] = fadam_scalars_for_step(&args.groups[g], g, 0, NULL, NULL, args.state);
}

extern "C" cudaError_t fadam_launch_fused_decide(const fadam_norm_kernel_args *args, cudaStream_t stream) {
    if (!args->reduce_buffer || args->n_groups < 0 || args->n_groups > FADAM_MAX_GROUPS) return cudaErrorInvalidValue;
    FADAM_LAUNCH(fused_decide_kernel, dim3(1), dim3(FADAM_MAX_GROUPS), 0, stream, *args);
    return FADAM_LAUNCH_ERROR();
}

extern "C" cudaError_t fadam_launch_grad_norm(const fadam_norm_kernel_args *args, unsigned grid_blocks,
                                              unsigned block_threads, cudaStream_t stream) {
    if (block_threads < 32 || block_threads > FADAM_BLOCK_THREADS || (block_threads & (block_threads - 1)))
        return cudaErrorInvalidValue;
    if (args->n_groups < 0 || args->n_groups > FADAM_MAX_GROUPS) return cudaErrorInvalidValue;
    FADAM_LAUNCH(grad_norm_kernel, dim3(grid_blocks), dim3(block_threads), 0, stream, *args);
    return FADAM_LAUNCH_ERROR();
}
