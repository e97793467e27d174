/* optimizer_internal.h - the managed optimizer's fields, for the host files that work on it
 * (optimizer.c, and the checkpoint code). */
#ifndef FADAM_OPTIMIZER_INTERNAL_H
#define FADAM_OPTIMIZER_INTERNAL_H

#include "internal.h"

/* Longest tensor name accepted, in bytes. */
#define FADAM_MAX_NAME_LENGTH 1024

struct fadam_optimizer {
    fadam_device_kind device;
    int cuda_device; /* -1 on the CPU */
    fadam_allocator allocator;
    int has_allocator;

    fadam_hparams groups[FADAM_MAX_GROUPS];
    fadam_state_layout layouts[FADAM_MAX_GROUPS]; /* zero: fp32 master and moments, seed 0 */
    int n_groups;

    /* Registered tensors; after finalize their master/exp_avg/exp_avg_sq point into state_block. */
    fadam_tensor *tensors;
    char **names;
    int64_t n_tensors, capacity;

    int finalized;
    int64_t step;            /* t of the last step taken */
    void *state_block;       /* every master, m and v, one allocation */
    void *device_table;      /* the tensor table on the CUDA device */
    int64_t n_chunks;
    unsigned grid_blocks;    /* persistent grid of the norm and master-init launches (the step kernel's) */
    unsigned step_grids[FADAM_STEP_GRIDS]; /* persistent grid of each step kernel instantiation */
    uint32_t table_flags;    /* the table's header flags, FADAM_TABLE_KNOWN: which step kernel runs it */

    /* The fused step (fused_step.c): configured before finalize, state allocated by it. */
    int fused_configured;
    fadam_fused_step_config fused_config;
    fadam_device_state *fused_state; /* device memory on the CUDA device */
    double *chunk_partials;          /* one per chunk, for the norm pass */

    /* The CPU device's threads (cpu_pool.c): the count asked for (0: one per core), started at finalize. */
    int cpu_threads;
    fadam_cpu_pool *cpu_pool;

    /* Sharded registration (shard.c): per tensor, the slice's offset into the full tensor and the full
     * tensor's numel; tensors from shard_count on are whole (offset 0, full numel = numel). */
    int64_t *shard_offset, *shard_full_numel;
    int64_t shard_count, shard_capacity;
    int shard_rank, shard_ranks; /* fadam_set_shard_rank; 0 ranks: not set */
};

/* shard.c: tensor i's place in the full tensor, and the release of the shard arrays (destroy). */
void fadam_tensor_shard_of(const fadam_optimizer *opt, int64_t index, int64_t *offset, int64_t *full_numel);
void fadam_shard_free(fadam_optimizer *opt);

/* fused_step.c: allocates and initialises the fused step's state during finalize (queued on
 * `stream`, which finalize then waits for), and frees it. */
fadam_status fadam_fused_state_create(fadam_optimizer *opt, struct CUstream_st *stream);
void fadam_fused_state_free(fadam_optimizer *opt);

/* optimizer.c: FADAM_ERR_BAD_STATE naming `function` unless fadam_finalize has run. */
fadam_status fadam_require_finalized(const fadam_optimizer *opt, const char *function);

/* optimizer.c: the master format a tensor of `group` gets: REMAINDER for a bf16 param in a
 * REMAINDER group, else FP32 (an fp32 param's own, or an fp16 param's fp32 master). */
fadam_master_format fadam_tensor_master_format(const fadam_optimizer *opt, fadam_dtype param_dtype, int group);
/* "fp32", "bf16", "int8" (checkpoint metadata and messages). */
const char *fadam_moment_format_name(fadam_moment_format format);
/* The rounding seed of a tensor: the group layout's seed mixed with a hash of the tensor's name. */
uint64_t fadam_tensor_rounding_seed(uint64_t layout_seed, const char *name);

/* Allocation through the caller's allocator, else cudaMalloc or aligned host memory. */
void *fadam_optimizer_alloc(fadam_optimizer *opt, size_t bytes);
void fadam_optimizer_free(fadam_optimizer *opt, void *pointer);

#endif
