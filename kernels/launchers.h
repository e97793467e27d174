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

/* The step kernel's instantiations (kernels/adam_step.cu), by the loops they hold: a kernel's registers
 * are those of its hungriest loop, so a table runs the smallest one that has what it needs. */
enum fadam_step_kernel {
    FADAM_STEP_KERNEL_FP32 = 0, /* adam_step_kernel<fp32_loops>: fp32 states, every rule */
    FADAM_STEP_KERNEL_LEAN = 1, /* adam_step_kernel<all_loops>: tables with a lean tensor (FADAM_TABLE_LEAN) */
    FADAM_STEP_KERNEL_COUNT
};

/* kernels/adam_step.cu: the instantiations a step launches for fadam_step_kernel_args.table_flags, a bit
 * per fadam_step_kernel: the lean one for a table with FADAM_TABLE_LEAN, the fp32 one for any other;
 * both when the flags are not FADAM_TABLE_KNOWN (each leaves a table not of its kind at once). */
unsigned fadam_adam_step_kernels(uint32_t table_flags);

/* kernels/adam_step.cu: one step over every tensor of args->table: every kernel of
 * fadam_adam_step_kernels(args->table_flags), each on grid_blocks blocks. */
cudaError_t fadam_launch_adam_step(const fadam_step_kernel_args *args, unsigned grid_blocks,
                                   unsigned block_threads, cudaStream_t stream);

/* kernels/adam_step.cu: one instantiation (a fadam_step_kernel) alone, on grid_blocks blocks. */
cudaError_t fadam_launch_adam_step_kernel(const fadam_step_kernel_args *args, int kernel, unsigned grid_blocks,
                                          unsigned block_threads, cudaStream_t stream);

/* kernels/adam_step.cu: how many blocks of block_threads threads of instantiation `kernel` (a
 * fadam_step_kernel) fit on one SM of the current device (the occupancy API); the production grid is
 * one wave of them. */
cudaError_t fadam_adam_step_blocks_per_sm(int kernel, unsigned block_threads, int *blocks);

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
