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

/* Four consecutive elements, aligned to their full size, so one load or store moves them
 * (16 bytes for fp32, 8 for 16-bit types). */
template <typename T> struct alignas(4 * sizeof(T)) fadam_vec4 {
    T lane[4];
};

#endif
