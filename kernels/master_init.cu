/* master_init.cu - fills the fp32 master weights of 16-bit parameters from the parameters, once, at
 * finalize (and after a checkpoint is loaded into parameters).
 *
 * Computes master[i] = float(param[i]) (exact: every bf16/fp16 value is an fp32 value).
 * Bytes moved per element: 2 read + 4 written = 6 B; tensors without a master are skipped.
 * Launch shape: a 1-D grid of any size striding over the table's chunks, a 1-D block of any size.
 */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "adam_math.h"
#include "launch.cuh"
#include "launchers.h"
#include "tensor_table.cuh"

template <typename ParamT>
static __device__ void master_init_range(const fadam_table_entry &tensor, int64_t begin, int64_t end) {
    const ParamT *param = static_cast<const ParamT *>(tensor.param);
    float *master = static_cast<float *>(tensor.states[FADAM_SLOT_MASTER].data);
    for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) master[i] = fadam_to_float(param[i]);
}

__global__ void master_init_kernel(const fadam_table_header *table) {
    const fadam_table_entry *entries = fadam_table_entries(table);
    const int64_t n_chunks = table->n_chunks, n_tensors = table->n_tensors;
    for (int64_t chunk = blockIdx.x; chunk < n_chunks; chunk += gridDim.x) {
        const fadam_table_entry tensor = entries[fadam_find_tensor(entries, n_tensors, chunk)];
        /* Only an fp32 master is filled; a remainder starts at 0 (master == param), zeroed with the block. */
        if (!tensor.states[FADAM_SLOT_MASTER].data || tensor.state_format[FADAM_SLOT_MASTER] != FADAM_STATE_FP32) continue;
        int64_t begin = (chunk - tensor.first_chunk) * table->chunk_elems;
        int64_t end = begin + table->chunk_elems < tensor.numel ? begin + table->chunk_elems : tensor.numel;
        switch (tensor.param_dtype) {
        case FADAM_BFLOAT16: master_init_range<__nv_bfloat16>(tensor, begin, end); break;
        case FADAM_FLOAT16: master_init_range<__half>(tensor, begin, end); break;
        default: break; /* an fp32 param is its own master */
        }
    }
}

extern "C" cudaError_t fadam_launch_master_init(const fadam_table_header *table, unsigned grid_blocks,
                                                unsigned block_threads, cudaStream_t stream) {
    if (grid_blocks == 0) return cudaSuccess;
    FADAM_LAUNCH(master_init_kernel, dim3(grid_blocks), dim3(block_threads), 0, stream, table);
    return FADAM_LAUNCH_ERROR();
}
