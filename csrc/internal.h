/* internal.h - what the host-side files of fusedadam share; not installed. */
#ifndef FADAM_INTERNAL_H
#define FADAM_INTERNAL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "adam_math.h"
#include "fusedadam.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- errors (status.c) ---- */

/* Records `status` and a printf-style detail message for this thread; returns `status`. */
fadam_status fadam_fail(fadam_status status, const char *format, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* fadam_fail for a failure about one tensor: `tensor` is its index (caller's array or registration
 * order), which fadam_last_error_tensor() reports; fadam_fail reports -1. */
fadam_status fadam_fail_tensor(int64_t tensor, fadam_status status, const char *format, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* Clears the detail message and the failed tensor; every public entry point calls it first. */
void fadam_clear_error(void);

#define FADAM_REQUIRE_NOT_NULL(pointer, function)                                                   \
    do {                                                                                            \
        if ((pointer) == NULL)                                                                      \
            return fadam_fail(FADAM_ERR_NULL_POINTER, "%s: argument '%s' is NULL", function, #pointer); \
    } while (0)

/* ---- CUDA (cuda_runtime_calls.c): every CUDA call of the host code goes through here ---- */

/* Records a failed CUDA call ("cudaMalloc(...) failed: out of memory (cudaErrorMemoryAllocation)
 * at csrc/x.c:12") and returns FADAM_ERR_CUDA, or FADAM_ERR_OUT_OF_MEMORY for allocation errors. */
fadam_status fadam_cuda_fail(int cuda_error, const char *call, const char *file, int line);

/* FADAM_SUCCESS for cudaSuccess (0), else fadam_cuda_fail's status and message. */
static inline fadam_status fadam_cuda_status(int cuda_error, const char *call, const char *file, int line) {
    return cuda_error == 0 ? FADAM_SUCCESS : fadam_cuda_fail(cuda_error, call, file, line);
}

/* The one way a CUDA runtime call (or a kernel launcher, which returns its cudaError_t) is checked:
 * an expression whose value is the call's fadam_status, its message naming the call and the line,
 * for a caller that has to clean up before returning. Teardown calls whose failure must not replace
 * the error being reported are cast to (void) instead. */
#define FADAM_CUDA_STATUS(call) fadam_cuda_status((int)(call), #call, __FILE__, __LINE__)

/* FADAM_CUDA_STATUS, returning from the calling function on failure. */
#define FADAM_CUDA_CHECK(call)                                                       \
    do {                                                                             \
        fadam_status fadam_cuda_status_ = FADAM_CUDA_STATUS(call);                   \
        if (fadam_cuda_status_ != FADAM_SUCCESS) return fadam_cuda_status_;          \
    } while (0)

/* Makes `device` current, remembering the caller's, and puts it back: no call changes the caller's
 * current device. */
fadam_status fadam_cuda_enter_device(int device, int *previous_device);
void fadam_cuda_leave_device(int device, int previous_device);

/* The step kernel's instantiations (enum fadam_step_kernel, kernels/launchers.h; asserted equal in
 * cuda_runtime_calls.c): each has its own registers, so its own grid. */
#define FADAM_STEP_GRIDS 2
/* One wave of each step kernel instantiation on `device` (the occupancy API), at most n_chunks blocks. */
fadam_status fadam_cuda_step_grids(int64_t n_chunks, int device, unsigned grids[FADAM_STEP_GRIDS]);
/* The step: every instantiation fadam_adam_step_kernels(args->table_flags) names (one when the flags
 * are known, else two), each on its grid from fadam_cuda_step_grids. */
fadam_status fadam_cuda_launch_step(const fadam_step_kernel_args *args, const unsigned grids[FADAM_STEP_GRIDS],
                                    struct CUstream_st *stream);
/* The grid of the instantiation that runs a table with these (known) header flags. */
unsigned fadam_step_grid_for(const unsigned grids[FADAM_STEP_GRIDS], uint32_t table_flags);

/* ---- the tensor table (table.c); hyperparameter and step-source checks (hparams.c) ---- */

/* One tensor's dtypes, count, group, pointers and alignment; state_given 1: every state field set,
 * 2: the states checked apart (fadam_check_rule_states), 0: none yet (registration). */
fadam_status fadam_check_tensor(const fadam_tensor *tensor, int64_t index, int n_groups, int state_given,
                                const char *function);
/* The public field holding state field `field` (enum fadam_state_field) of a tensor. */
static inline void *fadam_tensor_field(const fadam_tensor *t, int field) {
    switch (field) {
#define FADAM_FIELD_CASE_(name, member) \
    case name: return t->member;
        FADAM_STATE_FIELDS(FADAM_FIELD_CASE_)
#undef FADAM_FIELD_CASE_
    default: return NULL;
    }
}
static inline void fadam_tensor_set_field(fadam_tensor *t, int field, void *pointer) {
    switch (field) {
#define FADAM_FIELD_CASE_(name, member) \
    case name: t->member = pointer; break;
        FADAM_STATE_FIELDS(FADAM_FIELD_CASE_)
#undef FADAM_FIELD_CASE_
    default: break;
    }
}

/* Each non-empty tensor holds exactly the states its group's rule keeps (FADAM_RULES): a kept one
 * NULL is FADAM_ERR_NULL_POINTER, one the rule does not keep set (Lion's exp_avg_sq) is
 * FADAM_ERR_INVALID_VALUE. After fadam_table_check and the groups' own checks. */
fadam_status fadam_check_rule_states(const fadam_tensor *tensors, int64_t n_tensors, const fadam_hparams *groups,
                                     const char *function);
/* Every tensor, then that no two buffers overlap. Without the groups (fadam_table_encode), every state
 * field must be set (a Lion group's tensor of a functional table passes an unused exp_avg_sq). */
fadam_status fadam_table_check(const fadam_tensor *tensors, int64_t n_tensors, int n_groups, const char *function);
/* The same but for the state fields, which the caller checks against the groups' rules afterwards
 * (fadam_check_rule_states, once the groups' hparams are checked). */
fadam_status fadam_table_check_states_apart(const fadam_tensor *tensors, int64_t n_tensors, int n_groups,
                                            const char *function);
size_t fadam_table_size(int64_t n_tensors);
/* Encodes an already checked list; tests pick a small chunk size to cross chunk boundaries. */
void fadam_table_fill(const fadam_tensor *tensors, int64_t n_tensors, int n_groups, int32_t chunk_elems,
                      void *host_table);
/* The flags fadam_table_fill wrote into a host table's header, marked FADAM_TABLE_KNOWN: what the step
 * launch (fadam_step_kernel_args.table_flags) needs to pick its kernel without reading the device copy. */
uint32_t fadam_table_known_flags(const void *host_table);

/* 1 for a finite float (neither Inf nor NaN), for the hyperparameter checks. */
static inline int fadam_is_finite(float x) { return x == x && x - x == 0.0f; }

/* Checks one group's hyperparameters; `function` and `group` name the culprit in the message. */
fadam_status fadam_check_hparams(const fadam_hparams *hparams, const char *function, int group);

/* Checks a step source and the lr table against the groups. */
fadam_status fadam_check_step_source(const fadam_step_source *source, const char *function);

/* ---- the CPU implementation (reference.c) ---- */

/* One step of one tensor on host memory, scalars already computed; `step` is the t being applied (the
 * stochastic rounding of bf16 moments draws its bits from it). */
void fadam_reference_update(const fadam_tensor *tensor, const fadam_group_scalars *scalars, int64_t step);

/* Elements [begin, end) of a tensor with a lean layout (master_format or moment_format not fp32), the
 * reference's order; begin and end multiples of FADAM_MOMENT_BLOCK (end may be numel): an 8-bit block
 * is updated whole. The CPU fast path (cpu_step.c) has its own loop, held to this one bit for bit. */
void fadam_reference_update_lean(const fadam_tensor *tensor, const fadam_group_scalars *scalars, int64_t step,
                                 int64_t begin, int64_t end);

/* Stores values[0..n) of a moment field (FADAM_FIELD_EXP_AVG / _SQ) of a lean tensor at [first, first + n),
 * one 8-bit block at most, in the tensor's moment format: bf16 by stochastic rounding, 8-bit codes under
 * the block's new scale (written too), or fp32. */
void fadam_store_moment_block(const fadam_tensor *tensor, int field, int64_t step, int64_t first, int n,
                              const float *values);

/* 1 when the tensor's states are not all fp32 (the lean loops update it). */
static inline int fadam_tensor_is_lean(const fadam_tensor *t) {
    return t->master_format != FADAM_MASTER_FP32 || t->moment_format != FADAM_MOMENT_FP32;
}

/* The CPU device's fast path (cpu_step.c): fadam_reference_update's arithmetic, vectorized and
 * split over the pool's threads (pool NULL: the calling thread), bit for bit the same. scalars[g]
 * belong to group g; `step` is the t being applied. */
void fadam_cpu_update_tensors(fadam_cpu_pool *pool, const fadam_tensor *tensors, int64_t n_tensors,
                              const fadam_group_scalars *scalars, int64_t step);

/* fadam_cpu_step without the argument checks (the managed optimizer checked them at finalize);
 * `state`, when not NULL, is a fused step's decision: skip, t, lr factor, gradient scale. */
fadam_status fadam_cpu_update_all(fadam_cpu_pool *pool, const fadam_tensor *tensors, int64_t n_tensors,
                                  const fadam_hparams *groups, int n_groups, const fadam_step_source *source,
                                  const fadam_device_state *state, const char *function);

/* The fused step's norm pass on host memory: the sum of squares of every gradient, in double, with
 * the pool's threads; the same bits as fadam_reference_sum_of_squares (reference.c, which defines
 * the order) whatever the thread count. */
double fadam_cpu_sum_of_squares(fadam_cpu_pool *pool, const fadam_tensor *tensors, int64_t n_tensors);
double fadam_reference_sum_of_squares(const fadam_tensor *tensors, int64_t n_tensors);

/* ---- the CPU path's threads (cpu_pool.c) ---- */

/* One block of a job; blocks run in any order, on any thread. */
typedef void (*fadam_cpu_block_job)(void *context, int64_t block);

/* n_threads 0: fadam_cpu_default_threads(). FADAM_ERR_INVALID_VALUE / OUT_OF_MEMORY name `function`. */
fadam_status fadam_cpu_pool_open(fadam_cpu_pool **out, int n_threads, const char *function);
void fadam_cpu_pool_close(fadam_cpu_pool *pool);
/* The cores this process may run on. */
int fadam_cpu_default_threads(void);
/* Threads of the pool, the caller's included; 1 for NULL. */
int fadam_cpu_pool_size(const fadam_cpu_pool *pool);
/* Takes the pool for one call (1), or says another thread has it (0); NULL is always free. */
int fadam_cpu_pool_acquire(fadam_cpu_pool *pool);
void fadam_cpu_pool_release(fadam_cpu_pool *pool);
/* At least `bytes` of memory kept by the pool between calls (taken pool only); NULL when out of memory. */
void *fadam_cpu_pool_scratch(fadam_cpu_pool *pool, size_t bytes);
/* Runs job(context, b) for b in [0, n_blocks) on the pool's threads and the caller's (pool NULL: the
 * caller's alone) and returns when every block has run. n_blocks < 2^32. */
void fadam_cpu_pool_run(fadam_cpu_pool *pool, int64_t n_blocks, fadam_cpu_block_job job, void *context);

/* Round-to-nearest-even conversions written in plain C (the reference's own, not CUDA's). */
uint16_t fadam_float_to_bf16_bits(float value);
float fadam_bf16_bits_to_float(uint16_t bits);
uint16_t fadam_float_to_fp16_bits(float value);
float fadam_fp16_bits_to_float(uint16_t bits);


#ifdef __cplusplus
}
#endif

#endif
