/* launchers.h - the extern "C" entry points of the kernel files, called by the host code in csrc/.
 * Each launches one kernel on `stream` and returns the launch's CUDA error. */
#ifndef FADAM_LAUNCHERS_H
#define FADAM_LAUNCHERS_H

#include <cuda_runtime.h>

#include "adam_math.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Threads per block of every multi-tensor launch in production. */
#define FADAM_BLOCK_THREADS 256

/* kernels/adam_step.cu: one Adam/AdamW step over every tensor of args->table. */
cudaError_t fadam_launch_adam_step(const fadam_step_kernel_args *args, unsigned grid_blocks,
                                   unsigned block_threads, cudaStream_t stream);

/* kernels/adam_step.cu: how many blocks of block_threads threads of the step kernel fit on one SM of
 * the current device (the occupancy API); the production grid is one wave of them. */
cudaError_t fadam_adam_step_blocks_per_sm(unsigned block_threads, int *blocks);

/* kernels/master_init.cu: master = float(param) for every tensor of the table that has a master. */
cudaError_t fadam_launch_master_init(const fadam_table_header *table, unsigned grid_blocks,
                                     unsigned block_threads, cudaStream_t stream);

/* kernels/grad_norm.cu: the fused step's first pass: the global gradient norm, then the step's
 * decision in args->state and, when args->scalars_out is set, each group's scalars for the update.
 * block_threads: a power of two from 32 to FADAM_BLOCK_THREADS. */
cudaError_t fadam_launch_grad_norm(const fadam_norm_kernel_args *args, unsigned grid_blocks, unsigned block_threads,
                                   cudaStream_t stream);

/* kernels/grad_norm.cu: the split step's decision (fadam_fused_step_end): one block reads the reduced
 * [sum of squares, non-finite flag] at args->reduce_buffer, decides, and writes the groups' scalars. */
cudaError_t fadam_launch_fused_decide(const fadam_norm_kernel_args *args, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
