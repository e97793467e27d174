/* tensor_table.cuh - device-side reading of the tensor table (layout in adam_math.h): which tensor
 * owns a chunk, and the dtype conversions every multi-tensor kernel needs. */
#ifndef FADAM_TENSOR_TABLE_CUH
#define FADAM_TENSOR_TABLE_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "adam_math.h"

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

/* The tensor owning `chunk`, from the owner of an earlier chunk: steps over the tensors in between
 * (empty tensors share their first_chunk with the next one). */
static __device__ __forceinline__ int64_t fadam_advance_tensor(const fadam_table_entry *entries, int64_t n_tensors,
                                                               int64_t tensor, int64_t chunk) {
    while (tensor + 1 < n_tensors && entries[tensor + 1].first_chunk <= chunk) tensor++;
    return tensor;
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

/* N floats stored as T (rounded to nearest even) with 16-byte accesses. */
template <int N, typename T> static __device__ __forceinline__ void fadam_store16(T *p, const float (&in)[N]) {
    constexpr int per_access = 16 / sizeof(T);
#pragma unroll
    for (int k = 0; k < N; k += per_access) {
        fadam_vec<T, per_access> v;
#pragma unroll
        for (int j = 0; j < per_access; j++) v.lane[j] = fadam_from_float<T>(in[k + j]);
        *reinterpret_cast<fadam_vec<T, per_access> *>(p + k) = v;
    }
}

#endif
