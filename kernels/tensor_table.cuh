/* tensor_table.cuh - device-side reading of the tensor table (layout in adam_math.h): which tensor
 * owns a chunk, and the dtype conversions every multi-tensor kernel needs. */
#ifndef FADAM_TENSOR_TABLE_CUH
#define FADAM_TENSOR_TABLE_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "adam_math.h"
#include "state_layout.h"

static __device__ __forceinline__ const fadam_table_entry *fadam_table_entries(const fadam_table_header *table) {
    return reinterpret_cast<const fadam_table_entry *>(table + 1);
}

/* The tensor owning global chunk `chunk`: the last entry whose first_chunk <= chunk. Empty tensors
 * share their first_chunk with the next tensor, so the last such entry is the non-empty one. */
static __device__ __forceinline__ int64_t fadam_find_tensor(const fadam_table_entry *entries, int64_t n_tensors,
                                                            int64_t chunk) {
    int64_t low = 0, high = n_tensors - 1;
    while (low < high) {
        int64_t mid = low + (high - low + 1) / 2;
        if (entries[mid].first_chunk <= chunk) low = mid;
        else high = mid - 1;
    }
    return low;
}

/* Blocks own contiguous chunk ranges: block b of G takes chunks [first, end) of the n, balanced to one
 * chunk, so a block searches the table once and then walks forward (consecutive chunks belong to the
 * same or the next tensors). Overflow-free for any n and G. */
static __device__ __forceinline__ void fadam_block_chunks(int64_t n_chunks, int64_t *first, int64_t *end) {
    const int64_t blocks = gridDim.x, b = blockIdx.x;
    const int64_t per = n_chunks / blocks, extra = n_chunks % blocks;
    *first = b * per + (b < extra ? b : extra);
    *end = *first + per + (b < extra ? 1 : 0);
}

/* Warps own contiguous chunk ranges: warp w of block b is warp b + w * gridDim.x of the grid (warp-
 * major, so that a model with fewer chunks than warps still spreads over every block and SM), and
 * takes chunks [first, end) of the n, balanced to one chunk. Overflow-free for any n and grid. The warp
 * index comes through a shuffle so the compiler knows it is the same in every lane (it then keeps the
 * range, the tensor and its pointers in uniform registers). A 1-D block, a multiple of 32 threads. */
static __device__ __forceinline__ void fadam_warp_chunks(int64_t n_chunks, int64_t *first, int64_t *end) {
    const int64_t warps = (int64_t)gridDim.x * (blockDim.x / 32);
    const int64_t w = (int64_t)blockIdx.x + (int64_t)__shfl_sync(0xffffffffu, threadIdx.x / 32, 0) * gridDim.x;
    const int64_t per = n_chunks / warps, extra = n_chunks % warps;
    *first = w * per + (w < extra ? w : extra);
    *end = *first + per + (w < extra ? 1 : 0);
}

/* The tensor owning `chunk`, from the owner of an earlier chunk: steps over the tensors in between
 * (empty tensors share their first_chunk with the next one). */
static __device__ __forceinline__ int64_t fadam_advance_tensor(const fadam_table_entry *entries, int64_t n_tensors,
                                                               int64_t tensor, int64_t chunk) {
    while (tensor + 1 < n_tensors && entries[tensor + 1].first_chunk <= chunk) tensor++;
    return tensor;
}

/* The owner of `chunk` searched by one whole warp: each round its 32 lanes probe 32 points of the
 * range left and vote, so 10,000 tensors take 3 rounds of one load each, not 14 dependent loads. */
static __device__ __forceinline__ int64_t fadam_warp_find_tensor(const fadam_table_entry *entries, int64_t n_tensors,
                                                                 int64_t chunk) {
    const int64_t lane = threadIdx.x % 32;
    int64_t low = 0, high = n_tensors - 1; /* the owner is in [low, high]; entry 0 starts at chunk 0 */
    while (low < high) {
        const int64_t span = high - low; /* lane l probes low + ceil(span * (l + 1) / 32): in (low, high] */
        const int64_t probe = low + (span * (lane + 1) + 31) / 32;
        const unsigned below = __ballot_sync(0xffffffffu, entries[probe].first_chunk <= chunk);
        const int k = __popc(below); /* probes at or before the owner: a prefix of the lanes */
        const int64_t next = low + (span * (k + 1) + 31) / 32; /* lane k's probe, past the owner */
        if (k > 0) low = low + (span * k + 31) / 32;
        if (k < 32) high = next - 1;
    }
    return low;
}

/* Brings entries [first, first + count) into L1, one entry per thread of `threads` (this is `thread`),
 * so that the walk over them, a chain of dependent loads, hits L1 rather than DRAM at each step. */
static __device__ __forceinline__ void fadam_prefetch_entries(const fadam_table_entry *entries, int64_t n_tensors,
                                                              int64_t first, int64_t count, unsigned thread,
                                                              unsigned threads) {
#if defined(__CUDA_ARCH__)
    for (int64_t e = first + thread; e < first + count && e < n_tensors; e += threads) {
        /* an entry (112 B from a 16-byte boundary) spans at most two 128-byte lines: its first and last */
        asm volatile("prefetch.global.L1 [%0];" ::"l"(&entries[e].param));          /* pointers */
        asm volatile("prefetch.global.L1 [%0];" ::"l"(&entries[e].element_offset)); /* ... seed, offset */
    }
#else
    (void)entries, (void)n_tensors, (void)first, (void)count, (void)thread, (void)threads;
#endif
}

static __device__ __forceinline__ float fadam_to_float(float x) { return x; }
static __device__ __forceinline__ float fadam_to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
static __device__ __forceinline__ float fadam_to_float(__half x) { return __half2float(x); }

/* Round to nearest even, as NUMERICS.md requires for the 16-bit parameter. */
template <typename T> static __device__ __forceinline__ T fadam_from_float(float x);
template <> __device__ __forceinline__ float fadam_from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 fadam_from_float<__nv_bfloat16>(float x) {
    return __float2bfloat16_rn(x);
}
template <> __device__ __forceinline__ __half fadam_from_float<__half>(float x) { return __float2half_rn(x); }

/* A param from its fp32 master: bf16 rounded to nearest with ties away from zero (state_layout.h: so the
 * 16-bit-remainder layout equals this one bit for bit), fp16 to nearest even. */
template <typename T> static __device__ __forceinline__ T fadam_param_from_master(float x) { return fadam_from_float<T>(x); }
template <> __device__ __forceinline__ __nv_bfloat16 fadam_param_from_master<__nv_bfloat16>(float x) {
    __nv_bfloat16_raw raw;
    raw.x = fadam_bf16_from_master(x);
    return raw;
}

/* N consecutive elements, aligned to their full size, so one load or store moves them. */
template <typename T, int N> struct alignas(N * sizeof(T)) fadam_vec {
    T lane[N];
};

/* N elements as floats from 16-byte accesses (p 16-byte aligned; N * sizeof(T) a multiple of 16). */
template <int N, typename T> static __device__ __forceinline__ void fadam_load16(const T *p, float (&out)[N]) {
    constexpr int per_access = 16 / sizeof(T);
#pragma unroll
    for (int k = 0; k < N; k += per_access) {
        const fadam_vec<T, per_access> v = *reinterpret_cast<const fadam_vec<T, per_access> *>(p + k);
#pragma unroll
        for (int j = 0; j < per_access; j++) out[k + j] = fadam_to_float(v.lane[j]);
    }
}

/* N floats stored as T (rounded to nearest even; FromMaster: as fadam_param_from_master) with 16-byte
 * accesses. */
template <int N, bool FromMaster = false, typename T>
static __device__ __forceinline__ void fadam_store16(T *p, const float (&in)[N]) {
    constexpr int per_access = 16 / sizeof(T);
#pragma unroll
    for (int k = 0; k < N; k += per_access) {
        fadam_vec<T, per_access> v;
#pragma unroll
        for (int j = 0; j < per_access; j++)
            v.lane[j] = FromMaster ? fadam_param_from_master<T>(in[k + j]) : fadam_from_float<T>(in[k + j]);
        *reinterpret_cast<fadam_vec<T, per_access> *>(p + k) = v;
    }
}

#endif
