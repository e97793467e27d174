/*
 * fusedadam.h - fused multi-tensor Adam/AdamW for training large language models.
 *
 * One public header, plain C99. Two ways in:
 *   - the managed optimizer (fadam_optimizer): register parameter tensors once, then one call per
 *     training step updates all of them with one kernel launch; it owns the fp32 master weights and
 *     both moments.
 *   - the functional call (fadam_table_* / fadam_step_table): the caller owns every buffer and the
 *     workspace; nothing is allocated. This is what framework bindings use.
 *
 * Conventions (all functions):
 *   - Every function returns FADAM_SUCCESS (0) or a negative fadam_status; fadam_last_error_message()
 *     then says what was wrong (which argument, which tensor, which CUDA call) for the calling thread.
 *   - On failure nothing the caller can see has been modified, except where a call's doc block says
 *     otherwise (fadam_create sets *out to NULL; fadam_save_bytes sets *size_out; a fadam_save whose
 *     only failure is the final fsync of the directory has put the new file in place).
 *   - The stream is the last argument of every call that launches work. No call synchronizes the
 *     device except where its doc block says so (fadam_finalize and fadam_destroy).
 *   - fadam_stream is ABI-compatible with cudaStream_t: pass a cudaStream_t, or NULL for the legacy
 *     default stream. It is ignored on the CPU device.
 *
 * The update is PyTorch's torch.optim.AdamW (mode FADAM_ADAMW), torch.optim.Adam with L2 weight
 * decay (mode FADAM_ADAM_L2), or Lion (mode FADAM_LION); see README.md for the formulas.
 */
#ifndef FUSEDADAM_H
#define FUSEDADAM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define FADAM_API __declspec(dllexport)
#elif defined(__GNUC__)
#define FADAM_API __attribute__((visibility("default")))
#else
#define FADAM_API
#endif

#define FADAM_VERSION_MAJOR 0
#define FADAM_VERSION_MINOR 4
#define FADAM_VERSION_PATCH 0

/* Most parameter groups one optimizer or one functional step may have. Group hyperparameters
 * travel by value in the kernel's arguments, so changing lr every step copies nothing. */
#define FADAM_MAX_GROUPS 64

/* Most threads the CPU implementation may be given (fadam_cpu_pool_create, fadam_set_cpu_threads). */
#define FADAM_MAX_CPU_THREADS 1024

/* ABI-compatible with cudaStream_t; declared here so this header needs no CUDA header. */
struct CUstream_st;
typedef struct CUstream_st *fadam_stream;

/* ---------------------------------------------------------------------------------------------
 * Status codes
 * ------------------------------------------------------------------------------------------- */
typedef enum fadam_status {
    FADAM_SUCCESS = 0,
    FADAM_ERR_NULL_POINTER = -1,      /* a required pointer argument was NULL */
    FADAM_ERR_INVALID_VALUE = -2,     /* an out-of-range number: count, index, hyperparameter */
    FADAM_ERR_MISALIGNED = -3,        /* a pointer lacks the alignment of its dtype */
    FADAM_ERR_UNSUPPORTED_DTYPE = -4, /* unknown dtype, or a combination the kernels do not have */
    FADAM_ERR_BAD_STATE = -5,         /* call out of order: step before finalize, add after it */
    FADAM_ERR_OUT_OF_MEMORY = -6,     /* host or device allocation failed */
    FADAM_ERR_NO_DEVICE = -7,         /* CUDA device requested but none is usable */
    FADAM_ERR_CUDA = -8,              /* a CUDA runtime call failed; the message names it */
    FADAM_ERR_WORKSPACE_TOO_SMALL = -9,
    FADAM_ERR_OVERLAP = -10,          /* two tensors' buffers overlap */
    FADAM_ERR_IO = -11,               /* reading or writing a file failed */
    FADAM_ERR_CORRUPT = -12,          /* a file or buffer is malformed or fails its checksum */
    FADAM_ERR_MISMATCH = -13          /* a checkpoint does not match the registered tensors */
} fadam_status;

/* Static name of a status, e.g. "FADAM_ERR_NULL_POINTER: a required pointer was NULL". */
FADAM_API const char *fadam_status_string(fadam_status status);

/* Detail message of the last failed call on this thread ("" if none). Valid until the next
 * fusedadam call on this thread. */
FADAM_API const char *fadam_last_error_message(void);

/* Which tensor the last failed call on this thread was about: its index in the caller's tensor array
 * (fadam_table_*, fadam_cpu_step*, fadam_step_table*) or in registration order (fadam_add_tensor*,
 * fadam_finalize and the managed optimizer's calls), or -1 when that failure was not about one tensor
 * (a hyperparameter, a CUDA call, memory) or no call has failed. For two overlapping tensors it is
 * the later one. Lets a binding name the culprit without reading the message. Valid until the next
 * fusedadam call on this thread. */
FADAM_API int64_t fadam_last_error_tensor(void);

/* Library version as "major.minor.patch". */
FADAM_API const char *fadam_version_string(void);

/* ---------------------------------------------------------------------------------------------
 * Types
 * ------------------------------------------------------------------------------------------- */
typedef enum fadam_dtype {
    FADAM_FLOAT32 = 0,
    FADAM_BFLOAT16 = 1,
    FADAM_FLOAT16 = 2
} fadam_dtype;

typedef enum fadam_mode {
    FADAM_ADAMW = 0,  /* decoupled weight decay: p *= 1 - lr*wd, outside the adaptive term */
    FADAM_ADAM_L2 = 1, /* classic Adam: g += wd*p, so the decay is divided by sqrt(v) */
    /* Lion (Chen et al. 2023): c = b1*m + (1-b1)*g; p = p*(1 - lr*wd) - lr*sign(c); m = b2*m + (1-b2)*g.
     * Keeps exp_avg only (exp_avg_sq must be NULL); eps and bias_correction are not used. */
    FADAM_LION = 2
} fadam_mode;

typedef enum fadam_device_kind {
    FADAM_DEVICE_CPU = 0, /* host memory, stepped by the CPU implementation */
    FADAM_DEVICE_CUDA = 1 /* device memory, stepped by the fused kernel */
} fadam_device_kind;

/* How a master weight is stored (docs/STATE_LAYOUTS.md). */
typedef enum fadam_master_format {
    FADAM_MASTER_FP32 = 0,     /* a float32 copy: 4 B per parameter */
    FADAM_MASTER_REMAINDER = 1 /* bf16 params only: a uint16 remainder beside the bf16 param, which together
                                  hold the float32 master exactly: 2 B per parameter. Param, master, m and v
                                  stay bit for bit those of FADAM_MASTER_FP32: both write a bf16 param as
                                  the master rounded to nearest, ties away from zero (docs/NUMERICS.md) */
} fadam_master_format;

/* How the moments (exp_avg, exp_avg_sq) are stored (docs/STATE_LAYOUTS.md). */
typedef enum fadam_moment_format {
    FADAM_MOMENT_FP32 = 0, /* float32: 4 B each */
    FADAM_MOMENT_BF16 = 1, /* bfloat16 with reproducible stochastic rounding: 2 B each */
    FADAM_MOMENT_INT8 = 2  /* 8-bit codes (int8 m, uint8 v, companded) and one float32 scale per
                              FADAM_MOMENT_BLOCK elements: 1 B each + 4/256 */
} fadam_moment_format;

/* Elements per block of the 8-bit moments (one scale each); blocks start at each tensor's element 0. */
#define FADAM_MOMENT_BLOCK 256

/* Hyperparameters of one parameter group. Start from fadam_hparams_default(). */
typedef struct fadam_hparams {
    float lr;            /* learning rate, >= 0 */
    float beta1;         /* in [0, 1) (Lion: [0, 1]) */
    float beta2;         /* in [0, 1) (Lion: [0, 1]) */
    float eps;           /* >= 0; not used by Lion */
    float weight_decay;  /* >= 0; 0 for biases and norm weights in LLM recipes */
    fadam_mode mode;
    int bias_correction; /* 1: divide by 1 - beta^t as PyTorch does; 0: textbook form (0 or 1; Lion: unused) */
    int maximize;        /* 1: ascend instead of descend */
} fadam_hparams;

/* PyTorch's AdamW defaults: lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
 * mode AdamW, bias correction on, maximize off. */
FADAM_API fadam_hparams fadam_hparams_default(void);

/* Lion's defaults (the paper's): lr=1e-4, betas=(0.9, 0.99), weight_decay=0, mode FADAM_LION, eps 0
 * and bias correction off (unused), maximize off. */
FADAM_API fadam_hparams fadam_hparams_default_lion(void);

/* Checks ranges; FADAM_ERR_INVALID_VALUE names the first bad field. */
FADAM_API fadam_status fadam_hparams_validate(const fadam_hparams *hparams);

/* Bytes of one element of a dtype (0 for an unknown dtype). */
FADAM_API size_t fadam_dtype_size(fadam_dtype dtype);

/* Where a step's step number t and learning rates come from. Zero-initialise it for the usual case:
 * the host value `step`. For a step that is captured in a CUDA graph and replayed, point
 * device_step at an int64 in device memory holding t (the number of this step, 1 for the first),
 * advanced by the caller's own kernels between replays, and device_lr at one float per group
 * (device memory) that replaces the groups' lr. The kernel reads them when it runs. */
typedef struct fadam_step_source {
    int64_t step;               /* t for this step, >= 1; used when device_step is NULL */
    const int64_t *device_step; /* optional, device memory (host memory on the CPU device) */
    const float *device_lr;     /* optional, one per group, same memory rules */
} fadam_step_source;

/* ---------------------------------------------------------------------------------------------
 * Managed optimizer
 *
 * Life cycle: create -> add_group* -> add_tensor* -> finalize -> (set_lr*, step)* -> destroy.
 * Group 0 exists from create, with the hyperparameters given there.
 * ------------------------------------------------------------------------------------------- */
typedef struct fadam_optimizer fadam_optimizer;

/* Optional replacement for the managed optimizer's allocations of master weights, moments and
 * tables (device memory on the CUDA device, host memory on the CPU device). alloc returns NULL on
 * failure; memory must be at least 256-byte aligned. */
typedef struct fadam_allocator {
    void *(*alloc)(void *context, size_t bytes);
    void (*free)(void *context, void *pointer);
    void *context;
} fadam_allocator;

/* Creates an optimizer on the CPU or on CUDA device `cuda_device` (ignored for the CPU).
 * `defaults` (NULL: fadam_hparams_default()) become group 0. `allocator` may be NULL (cudaMalloc /
 * aligned host malloc); it is copied. FADAM_ERR_NO_DEVICE when CUDA is asked for and not usable.
 * On failure *out is set to NULL (out itself must not be NULL), so fadam_destroy(*out) is always safe. */
FADAM_API fadam_status fadam_create(fadam_optimizer **out, fadam_device_kind device, int cuda_device,
                                    const fadam_hparams *defaults, const fadam_allocator *allocator);

/* Frees everything the optimizer allocated. Synchronizes the optimizer's device first, because
 * a step may still be reading the buffers it frees. NULL is a no-op. */
FADAM_API void fadam_destroy(fadam_optimizer *opt);

/* Adds a parameter group; its index goes to *group_out (optional). Before finalize only. */
FADAM_API fadam_status fadam_add_group(fadam_optimizer *opt, const fadam_hparams *hparams, int *group_out);

/* Registers one parameter tensor. `param` and `grad` are device pointers on the CUDA device, host
 * pointers on the CPU device, and must stay valid until destroy; grad may alias nothing else.
 * numel may be 0 (the tensor is skipped). `name` (may be NULL: the index is used) is copied; it
 * names the tensor in checkpoints, so it must be 1 to 1024 bytes of valid UTF-8 (else
 * FADAM_ERR_INVALID_VALUE here) and unique (checked by fadam_finalize). Its index goes to
 * *index_out (optional). Before finalize only. */
FADAM_API fadam_status fadam_add_tensor(fadam_optimizer *opt, const char *name, void *param, const void *grad,
                                        int64_t numel, fadam_dtype param_dtype, fadam_dtype grad_dtype,
                                        int group, int64_t *index_out);

/* Allocates each tensor's state in its group's layout (fadam_set_group_layout; by default fp32 master
 * weights for 16-bit params, initialised from the params - fp32 params are their own master - and fp32
 * moments; a remainder starts at 0, i.e. master == param), only the states its group's rule keeps,
 * zeroed moments and scales, and the device-resident tensor table, built once. Work is queued on
 * `stream` and finalize waits for it to finish before returning. */
FADAM_API fadam_status fadam_finalize(fadam_optimizer *opt, fadam_stream stream);

/* Updates every registered tensor from its gradient: one kernel launch on `stream`. Advances the
 * step counter (t = 1 on the first call). Asynchronous: returns once the launch is queued.
 * The plain step never looks at the gradients as a whole and never skips: as in PyTorch, an Inf or
 * NaN gradient element goes into that element's moments and parameter (and master). Use the fused
 * step (fadam_fused_step) to skip steps with Inf/NaN gradients. FADAM_ERR_BAD_STATE when the step
 * counter is at INT64_MAX and cannot advance. */
FADAM_API fadam_status fadam_step(fadam_optimizer *opt, fadam_stream stream);

/* Reads t and the groups' lr from device memory instead (see fadam_step_source) and does not touch
 * the host step counter: the form to capture in a CUDA graph. */
FADAM_API fadam_status fadam_step_from(fadam_optimizer *opt, const fadam_step_source *source,
                                       fadam_stream stream);

/* Sets one group's learning rate for the following steps; rebuilds nothing, copies nothing. */
FADAM_API fadam_status fadam_set_lr(fadam_optimizer *opt, int group, float lr);

/* Replaces all hyperparameters of a group (validated first). Allowed after finalize, except a change
 * of mode between rules that keep different states (e.g. AdamW to Lion): FADAM_ERR_BAD_STATE, since the
 * state was laid out for the group's rule at finalize. */
FADAM_API fadam_status fadam_set_hparams(fadam_optimizer *opt, int group, const fadam_hparams *hparams);
FADAM_API fadam_status fadam_get_hparams(const fadam_optimizer *opt, int group, fadam_hparams *out);

/* Steps taken so far (the t of the last step), and a way to set it when resuming: step in
 * [0, INT64_MAX - 1] (a counter at INT64_MAX could not advance; FADAM_ERR_INVALID_VALUE). With the
 * fused step configured, the counter it starts from is set before finalize (after it, the device
 * counts: read fadam_step_counters; fadam_set_step then fails with FADAM_ERR_BAD_STATE). */
FADAM_API fadam_status fadam_get_step(const fadam_optimizer *opt, int64_t *step_out);
FADAM_API fadam_status fadam_set_step(fadam_optimizer *opt, int64_t step);

FADAM_API fadam_status fadam_num_tensors(const fadam_optimizer *opt, int64_t *count_out);
FADAM_API fadam_status fadam_num_groups(const fadam_optimizer *opt, int *count_out);

/* Pointers to a tensor's optimizer state (device memory on the CUDA device): master (NULL for an
 * fp32 param, which is its own master), exp_avg (m) and exp_avg_sq (v; NULL for a Lion group's
 * tensor, which keeps m only). After finalize only. */
FADAM_API fadam_status fadam_get_state(const fadam_optimizer *opt, int64_t index, float **master,
                                       float **exp_avg, float **exp_avg_sq);

/* A group's state layout (docs/STATE_LAYOUTS.md): how its masters and moments are stored. */
typedef struct fadam_state_layout {
    fadam_master_format master;   /* applies to the group's bf16 params (fp16: fp32 master; fp32: none) */
    fadam_moment_format moments;
    uint64_t seed;                /* FADAM_MOMENT_BF16's stochastic rounding; recorded in checkpoints */
} fadam_state_layout;

/* Sets group `group`'s layout; before finalize (default: fp32 master and moments, seed 0). A
 * FADAM_MASTER_REMAINDER group keeps a remainder for its bf16 params and an fp32 master for its fp16
 * ones (the remainder needs bf16's 8-bit exponent). */
FADAM_API fadam_status fadam_set_group_layout(fadam_optimizer *opt, int group, const fadam_state_layout *layout);
FADAM_API fadam_status fadam_get_group_layout(const fadam_optimizer *opt, int group, fadam_state_layout *out);

/* Every state pointer and format of registered tensor `index`, as the fadam_tensor the step uses
 * (device pointers on the CUDA device). After finalize only. fadam_get_state serves fp32 layouts. */
struct fadam_tensor; /* below, with the functional call */
FADAM_API fadam_status fadam_get_tensor_state(const fadam_optimizer *opt, int64_t index, struct fadam_tensor *out);

/* Threads of a CPU optimizer's steps (fadam_step, fadam_step_from, fadam_fused_step), the calling
 * thread included: n_threads 0 (the default) is one per core this process may run on, at most
 * FADAM_MAX_CPU_THREADS. The threads start at fadam_finalize (or here when already finalized: the
 * new threads start, then the old ones stop; FADAM_ERR_OUT_OF_MEMORY when they cannot start leaves
 * the previous ones in place) and stop at fadam_destroy. The results do not depend on the count.
 * FADAM_ERR_INVALID_VALUE on the CUDA device, whose steps use no CPU threads. */
FADAM_API fadam_status fadam_set_cpu_threads(fadam_optimizer *opt, int n_threads);

/* The thread count steps use (the default resolved to a number); FADAM_ERR_INVALID_VALUE on the
 * CUDA device. */
FADAM_API fadam_status fadam_get_cpu_threads(const fadam_optimizer *opt, int *n_threads_out);

/* ---------------------------------------------------------------------------------------------
 * Functional call: the caller owns every buffer.
 *
 * 1. fadam_table_bytes()  - size of the tensor table for a list of tensors.
 * 2. fadam_table_encode() - writes the table into caller memory on the host (pinned memory lets the
 *                           copy in step 3 be asynchronous). Pure host function, no CUDA call.
 * 3. the caller copies the table to device memory (any 16-byte aligned address).
 * 4. fadam_step_table()   - the update over the table, on the caller's stream (two launches, one of
 *                           which returns at once: see fadam_step_table).
 * The table holds pointers, sizes and dtypes only, so it can be reused for as long as the buffers
 * stay where they are; hyperparameters and the step travel with each call.
 * fadam_cpu_step() does the same update on host memory, with no table.
 * ------------------------------------------------------------------------------------------- */
typedef struct fadam_tensor {
    void *param;        /* fp32, bf16 or fp16 */
    const void *grad;   /* fp32, bf16 or fp16, independent of the param */
    void *master;       /* the master of a 16-bit param (master_format says how it is stored), or NULL
                           to update the 16-bit param in place; must be NULL for an fp32 param (it is
                           its own master) */
    void *exp_avg;      /* m, stored as moment_format says (fp32 by default) */
    void *exp_avg_sq;   /* v, the same; NULL for a FADAM_LION group (required there) */
    int64_t numel;      /* >= 0 */
    fadam_dtype param_dtype;
    fadam_dtype grad_dtype;
    int group;          /* index into the groups array of the step call */
    /* How the state is stored (docs/STATE_LAYOUTS.md); all zero: fp32 master and moments, as before. */
    fadam_master_format master_format;
    fadam_moment_format moment_format;
    float *exp_avg_scales;    /* FADAM_MOMENT_INT8: ceil(numel / FADAM_MOMENT_BLOCK) fp32 scales of exp_avg */
    float *exp_avg_sq_scales; /* the same for exp_avg_sq; NULL for other formats */
    /* FADAM_MOMENT_BF16: stochastic rounding's random bits are a function of (rounding_seed, t,
     * element_offset + i, which moment), so a run is reproducible on any device and thread count and a
     * resumed run equals an uninterrupted one. element_offset: where element 0 sits in the full tensor
     * (a shard's offset; else 0). */
    uint64_t rounding_seed;
    int64_t element_offset;
} fadam_tensor;

/* Checks the tensors (pointers, alignment of each dtype, dtypes, counts, group < n_groups, no two
 * tensors sharing a buffer) and reports the table size in bytes. The table knows no group's mode, so
 * it takes exp_avg and exp_avg_sq for every tensor; a FADAM_LION group's tensors never touch their
 * exp_avg_sq (any fp32 buffer of numel elements; fadam_cpu_step instead requires it NULL).
 * fadam_table_bytes_groups / fadam_table_encode_groups (below) know the modes and take Lion tensors
 * without exp_avg_sq. */
FADAM_API fadam_status fadam_table_bytes(const fadam_tensor *tensors, int64_t n_tensors, int n_groups,
                                         size_t *bytes_out);

/* Checks as fadam_table_bytes() does, then encodes the table into `host_table` (at least
 * fadam_table_bytes() bytes, 16-byte aligned). */
FADAM_API fadam_status fadam_table_encode(const fadam_tensor *tensors, int64_t n_tensors, int n_groups,
                                          void *host_table, size_t table_bytes);

/* fadam_table_bytes and fadam_table_encode knowing the groups' hyperparameters (groups[g] for group g,
 * the ones the steps will use; checked as fadam_hparams_validate does): each tensor holds exactly the
 * states its group's rule keeps, as in fadam_cpu_step, so a FADAM_LION tensor needs no exp_avg_sq (NULL,
 * and no exp_avg_sq_scales). FADAM_ERR_NULL_POINTER when a rule's state is NULL (an AdamW tensor
 * without exp_avg_sq) and FADAM_ERR_INVALID_VALUE when a state the rule does not keep is given; the
 * message and fadam_last_error_tensor() name the tensor. A table from these must be stepped with groups
 * of the same modes (the kernel leaves a tensor lacking a state its group's rule keeps untouched). */
FADAM_API fadam_status fadam_table_bytes_groups(const fadam_tensor *tensors, int64_t n_tensors,
                                                const fadam_hparams *groups, int n_groups, size_t *bytes_out);
FADAM_API fadam_status fadam_table_encode_groups(const fadam_tensor *tensors, int64_t n_tensors,
                                                 const fadam_hparams *groups, int n_groups, void *host_table,
                                                 size_t table_bytes);

/* One fused step over a table in device memory: kernel launches on `stream`, no allocation, no
 * synchronization. Two launches: the step kernel comes built for fp32 states and, with more registers,
 * for tables holding a lean layout; the table's header says which it is, but this call cannot read it
 * (device memory), so it queues both and the one not built for the table returns at once (a few
 * microseconds). groups[g] are the hyperparameters of group g; n_groups must be at least the
 * n_groups the table was encoded with (the kernel leaves a tensor whose group has no entry
 * untouched). The current CUDA device must be the one holding the buffers.
 * Like fadam_step it never skips: an Inf or NaN gradient element goes into that element's moments
 * and parameter, as in PyTorch; only the managed optimizer's fadam_fused_step skips. */
FADAM_API fadam_status fadam_step_table(const void *device_table, const fadam_hparams *groups, int n_groups,
                                        const fadam_step_source *source, fadam_stream stream);

/* The same update on host memory, tensor by tensor (the CPU implementation), on the calling
 * thread only; no skip either. */
FADAM_API fadam_status fadam_cpu_step(const fadam_tensor *tensors, int64_t n_tensors,
                                      const fadam_hparams *groups, int n_groups,
                                      const fadam_step_source *source);

/* Worker threads for the CPU implementation, started once and asleep between steps, so that a step
 * pays a wake-up rather than thread creation. The calling thread works as well: a pool of n threads
 * starts n - 1. The results are the same bits for every thread count (each element's update is
 * independent; the work is split by element ranges). */
typedef struct fadam_cpu_pool fadam_cpu_pool;

/* Starts a pool of n_threads (0: one per core this process may run on; at most
 * FADAM_MAX_CPU_THREADS; 1 starts no thread). FADAM_ERR_INVALID_VALUE for a count out of range,
 * FADAM_ERR_OUT_OF_MEMORY when memory or a thread cannot be had (nothing is left behind). */
FADAM_API fadam_status fadam_cpu_pool_create(fadam_cpu_pool **out, int n_threads);

/* Stops and joins the pool's threads and frees it. NULL is a no-op. Not while a step uses it. */
FADAM_API void fadam_cpu_pool_destroy(fadam_cpu_pool *pool);

/* The pool's thread count, the caller's thread included (0 at create already resolved). */
FADAM_API fadam_status fadam_cpu_pool_threads(const fadam_cpu_pool *pool, int *n_threads_out);

/* fadam_cpu_step split over `pool`'s threads (NULL: the calling thread, as fadam_cpu_step). Small
 * steps (under 64K elements in all) stay on the calling thread. A pool serves one call at a time:
 * a call that finds it busy with another thread's step runs on its own thread alone (same results). */
FADAM_API fadam_status fadam_cpu_step_pool(fadam_cpu_pool *pool, const fadam_tensor *tensors, int64_t n_tensors,
                                           const fadam_hparams *groups, int n_groups,
                                           const fadam_step_source *source);

/* Gradient scaling decided on the device, read when the update runs: a loss scale's inverse or a
 * clip coefficient computed by the caller's kernels (e.g. from a global norm all-reduced across
 * ranks), and an overflow flag, so that neither needs a host synchronization (PyTorch's GradScaler
 * hands fused optimizers grad_scale and found_inf tensors for this). Device memory for
 * fadam_step_table_scaled, host memory for fadam_cpu_step_scaled; both pointers optional. */
typedef struct fadam_step_scaling {
    const float *grad_multiplier; /* every gradient element is multiplied by *grad_multiplier as it is
                                     read (the gradient buffers are not written); NULL: 1 */
    const float *found_inf;       /* *found_inf != 0: the call changes nothing (no parameter, master or
                                     moment); the caller's step count must then not advance */
} fadam_step_scaling;

/* fadam_step_table and fadam_cpu_step_pool with gradient scaling; scaling may be NULL (none), pool too
 * (the calling thread alone). */
FADAM_API fadam_status fadam_step_table_scaled(const void *device_table, const fadam_hparams *groups, int n_groups,
                                               const fadam_step_source *source, const fadam_step_scaling *scaling,
                                               fadam_stream stream);
FADAM_API fadam_status fadam_cpu_step_scaled(fadam_cpu_pool *pool, const fadam_tensor *tensors, int64_t n_tensors,
                                             const fadam_hparams *groups, int n_groups,
                                             const fadam_step_source *source, const fadam_step_scaling *scaling);

/* ---------------------------------------------------------------------------------------------
 * The whole step on the device: global gradient norm, clipping, loss-scale unscaling with overflow
 * skip, and the learning-rate schedule, with no host synchronization, so fadam_fused_step can be
 * captured once in a CUDA graph and replayed.
 *
 * fadam_fused_step queues two launches: a pass over every gradient (the global L2 norm, accumulated
 * in double per chunk and summed in a fixed order, so the same bits on every run; any Inf/NaN is
 * found here), whose last block decides the step on the device; then the update, which multiplies
 * each gradient by 1/loss_scale * min(1, max_norm / (norm + 1e-6)) as it reads it (the gradient
 * buffers are never written) and uses lr = group lr * the schedule's factor. The gradient pass runs
 * in every configuration, the default one (no clipping, no loss scaling) included, so grad_norm is
 * always reported and the skip always applies: when the gradients hold an Inf or NaN, the step is
 * skipped: no parameter, master or moment changes, the step counter does not advance, skipped_total
 * counts it, and with dynamic loss scaling the scale is multiplied by backoff_factor, but never taken
 * below min_loss_scale; after growth_interval clean steps in a row it is multiplied by growth_factor.
 * ------------------------------------------------------------------------------------------- */
typedef enum fadam_schedule_kind {
    FADAM_SCHEDULE_CONSTANT = 0,     /* factor 1 */
    FADAM_SCHEDULE_WARMUP_COSINE = 1 /* t/warmup for t <= warmup, then cosine from 1 to min_lr_ratio at
                                        total_steps, then min_lr_ratio */
} fadam_schedule_kind;

typedef struct fadam_fused_step_config {
    float max_grad_norm;          /* > 0: clip the global norm to it (after unscaling); 0: no clipping */
    int dynamic_loss_scaling;     /* 1: gradients arrive multiplied by the loss scale */
    float initial_loss_scale;     /* 65536 */
    float growth_factor;          /* 2 */
    float backoff_factor;         /* 0.5 */
    int64_t growth_interval;      /* 2000 clean steps */
    fadam_schedule_kind schedule; /* the factor multiplies every group's lr */
    int64_t warmup_steps;
    int64_t total_steps;
    float min_lr_ratio;           /* the cosine's floor, as a fraction of each group's lr */
    float min_loss_scale;         /* 1: the floor of the dynamic loss scale, as in Megatron-LM and DeepSpeed
                                     (PyTorch's GradScaler has none and underflows to 0 after ~166
                                     overflows in a row, then skips every step); in [2^-126,
                                     initial_loss_scale] */
} fadam_fused_step_config;

/* No clipping, no loss scaling (its parameters at PyTorch GradScaler's defaults, with a floor of 1),
 * constant lr. */
FADAM_API fadam_fused_step_config fadam_fused_step_config_default(void);

/* What a training loop logs, as it sits in memory (device memory on the CUDA device). */
typedef struct fadam_step_counters {
    int64_t step;          /* steps applied; skipped steps do not count */
    int64_t skipped_total; /* steps skipped for Inf/NaN gradients (stops at INT64_MAX) */
    float grad_norm;       /* global L2 norm of the unscaled gradients in the last step, before clipping */
    float clip_coef;       /* what the gradients were multiplied by for clipping (1: not clipped) */
    float lr_scale;        /* the schedule's factor in the last applied step */
    float loss_scale;      /* the scale for the next backward pass */
    int32_t skipped;       /* 1: the last step found Inf/NaN (or, after 2^63 - 1 steps, a step
                              counter that cannot advance) and changed nothing */
    int32_t good_steps;    /* clean steps in a row since the loss scale last changed */
    int64_t skipped_at_min_scale; /* of skipped_total, the steps skipped with the dynamic loss scale
                                     already at min_loss_scale (loss_scale == min_loss_scale shows the
                                     floor reached): an overflow that backing off cannot cure, as in a
                                     diverged run, which DeepSpeed stops at */
} fadam_step_counters;

/* Sets the fused step up; before finalize, which allocates its device state (and one double per
 * chunk for the norm). The step counter starts at the optimizer's (fadam_set_step). */
FADAM_API fadam_status fadam_configure_fused_step(fadam_optimizer *opt, const fadam_fused_step_config *config);

/* One whole step on `stream`: norm pass, then update. Asynchronous, no host synchronization, no
 * host-side state read or written: capture it in a graph and replay it. The host step counter is
 * not advanced (the device's is: read it from the counters). */
FADAM_API fadam_status fadam_fused_step(fadam_optimizer *opt, fadam_stream stream);

/* Where the counters live (device memory on the CUDA device, host memory on the CPU), to read them
 * with a copy of the caller's own, or from the caller's kernels (the loss scale, for the backward). */
FADAM_API fadam_status fadam_step_counters_pointer(const fadam_optimizer *opt, const fadam_step_counters **counters);

/* Queues a copy of the counters into `host_out` on `stream` (pinned memory keeps it asynchronous);
 * read them once the stream has passed that point, e.g. a step later, so logging never stalls a step. */
FADAM_API fadam_status fadam_read_step_counters(const fadam_optimizer *opt, fadam_step_counters *host_out,
                                                fadam_stream stream);

/* ---------------------------------------------------------------------------------------------
 * Data parallelism (ZeRO-1) over the caller's communicator. The library links no NCCL or MPI.
 *
 * Each rank registers the slices of the tensors it owns (fadam_add_tensor_shard) with the gradients
 * of its slice (e.g. the output of a reduce-scatter), so it holds the master weights and moments of
 * its shard only. The fused step is split around one all-reduce of FADAM_FUSED_REDUCE_COUNT doubles:
 *
 *     fadam_fused_step_reduce_buffer(opt, &buffer, &count);     once, after finalize
 *     every step, all on `stream`:
 *       fadam_fused_step_begin(opt, stream);                    this rank's gradient pass
 *       ncclAllReduce(buffer, buffer, count, ncclFloat64, ncclSum, comm, stream);
 *       fadam_fused_step_end(opt, stream);                      decision + update of this shard
 *     then the caller all-gathers the params.
 *
 * The buffer holds [this rank's sum of squares of its gradients, 1 if that sum is Inf/NaN else 0];
 * summed over the ranks it gives the global norm and, when nonzero, the count of ranks with an
 * Inf/NaN gradient, which skips the step on every rank, as fadam_fused_step does on one GPU. Every rank
 * then takes the same decision (norm, clip coefficient, loss scale, schedule, counters). Nothing
 * synchronizes the host: begin, the all-reduce and end can be captured together in one CUDA graph.
 * With no all-reduce in between, begin + end is exactly fadam_fused_step (same bits).
 * ------------------------------------------------------------------------------------------- */
#define FADAM_FUSED_REDUCE_COUNT 2

/* The double array (device memory on the CUDA device, host memory on the CPU) that fadam_fused_step_begin
 * fills and fadam_fused_step_end reads: sum it over the ranks in place between the two, on the same
 * stream. *count (optional) gets FADAM_FUSED_REDUCE_COUNT. Fixed from finalize to destroy. Needs the
 * fused step configured and a finalized optimizer. */
FADAM_API fadam_status fadam_fused_step_reduce_buffer(const fadam_optimizer *opt, double **buffer, int *count);

/* Queues this rank's gradient pass on `stream`; leaves its partial sum of squares and Inf/NaN flag in
 * the reduce buffer and decides nothing. Asynchronous, capturable. */
FADAM_API fadam_status fadam_fused_step_begin(fadam_optimizer *opt, fadam_stream stream);

/* Queues the decision from the (reduced) buffer - global norm, clipping, skip if any rank saw Inf/NaN,
 * loss scale, schedule, counters - and the update of this rank's tensors, on `stream`. Call it after
 * fadam_fused_step_begin and the caller's all-reduce. Asynchronous, capturable. */
FADAM_API fadam_status fadam_fused_step_end(fadam_optimizer *opt, fadam_stream stream);

/* Registers the slice of a tensor this rank owns: elements [offset, offset + numel) of the tensor
 * `name` of full_numel elements, 0 <= offset, offset + numel <= full_numel; numel may be 0. param and
 * grad point at the slice's first element (e.g. full_param + offset, and the reduce-scattered
 * gradient). Everything else is fadam_add_tensor's (fadam_add_tensor is the case offset 0, numel ==
 * full_numel). Any slicing works; the conventional one is fadam_shard_range's. full_numel and offset
 * go into checkpoints, so that fadam_load_shards can reassemble a tensor from the slices of any number
 * of ranks. */
FADAM_API fadam_status fadam_add_tensor_shard(fadam_optimizer *opt, const char *name, void *param, const void *grad,
                                              int64_t numel, int64_t full_numel, int64_t offset,
                                              fadam_dtype param_dtype, fadam_dtype grad_dtype, int group,
                                              int64_t *index_out);

/* Names this optimizer's shard for its checkpoints: rank `rank` of n_ranks. Before finalize; required
 * for fadam_save of an optimizer with shards (fadam_add_tensor_shard). */
FADAM_API fadam_status fadam_set_shard_rank(fadam_optimizer *opt, int rank, int n_ranks);

/* The conventional slice of `rank` out of n_ranks (the convention of llm.c's ZeRO-1, and of a
 * reduce-scatter over a buffer padded to a multiple of n_ranks): every rank gets
 * S = ceil(total / n_ranks) elements, [rank * S, (rank + 1) * S), cut at total: the last ranks' slices
 * are shorter or empty (the padding belongs to no one). Apply it to each tensor, or to the flat
 * concatenation of all tensors and intersect with each. Pure function. */
FADAM_API fadam_status fadam_shard_range(int64_t total, int rank, int n_ranks, int64_t *offset_out,
                                         int64_t *numel_out);

/* ---------------------------------------------------------------------------------------------
 * Devices
 * ------------------------------------------------------------------------------------------- */
/* Number of usable CUDA devices (0 without a GPU or driver; never an error). */
FADAM_API int fadam_cuda_device_count(void);

/* ---------------------------------------------------------------------------------------------
 * Checkpoints of the managed optimizer: safetensors files
 *
 * A checkpoint is a safetensors file (8-byte little-endian header length, JSON header, raw data)
 * that the Python `safetensors` package opens. Per registered tensor NAME (fadam_add_tensor's name,
 * default its index) it holds F32 entries of its group's rule's states, NAME.exp_avg and
 * NAME.exp_avg_sq (FADAM_LION: NAME.exp_avg only), and, for a bf16/fp16 param only, NAME.master (an fp32 param is its own master and stays the caller's to save, as do
 * all params). The __metadata__ block (string values) holds format "fusedadam.optimizer",
 * format_version, step, n_groups, every group's hyperparameters (group.G.lr, ...), each tensor's
 * NAME.param_dtype and NAME.group, the fused step's counters (fused.step, fused.loss_scale, ...)
 * when it is configured, and checksum "xxh3-128:<32 hex digits>" over the metadata and the data
 * (README.md gives the exact definition). Format version 2; version 1 files (checksum
 * "sha256:<64 hex digits>", otherwise the same) still load.
 * Lean layouts (fadam_set_group_layout) save their own bytes: bf16 moments as BF16 entries, 8-bit
 * moments as I8 NAME.exp_avg / U8 NAME.exp_avg_sq plus F32 NAME.exp_avg.scales / NAME.exp_avg_sq.scales
 * (ceil(numel / 256) each), a remainder as U16 NAME.master_remainder instead of NAME.master; such a
 * group's metadata adds group.G.master_format ("fp32"/"remainder"), group.G.moment_format
 * ("fp32"/"bf16"/"int8") and group.G.seed (absent: fp32, fp32, 0, as every older file). fadam_load
 * converts a file of another layout through fp32: bf16 rounded to nearest even, 8-bit blocks
 * requantized to nearest, a remainder joined with the current param (restore params first) or split
 * from the master (which writes the param). fadam_load_shards refuses a change of layout and 8-bit
 * moments (FADAM_ERR_UNSUPPORTED_DTYPE).
 *
 * These are not per-step calls: they synchronize `stream`. Device state is copied in bounded pieces
 * through a small pinned buffer on `stream`, after the work already queued on it.
 * ------------------------------------------------------------------------------------------- */
#define FADAM_CHECKPOINT_FORMAT_VERSION 2

/* Writes the optimizer's step, hyperparameters and state to `path`, replacing any file there
 * atomically: at every moment, also across a crash of the process or the machine, `path` is either
 * the previous file, whole, or the new one, whole. Requires a finalized optimizer.
 *   - How: the data goes to a file without a name in path's directory (Linux O_TMPFILE), which is
 *     fsynced and then linked to `path` when nothing is there, else linked to a short temporary
 *     name and renamed over `path`; then the directory is fsynced. A killed save leaves nothing
 *     behind (killed in the instant between that link and the rename, a complete temporary).
 *     Where the file system lacks O_TMPFILE (or /proc is not mounted) the data goes to a named
 *     temporary instead. Temporaries are named ".fadam-<pid>-<n>.tmp"; a later fadam_save into the
 *     same directory removes those whose writer is gone. Any name the file system allows (up to
 *     NAME_MAX, usually 255 bytes) can be saved.
 *   - What is at `path` is replaced, not written into: a symbolic link is replaced by the file (its
 *     old target is left alone), a hard link to another name is broken. A directory is refused.
 *   - The new file has the permission bits of the regular file it replaces; otherwise 0666 less the
 *     umask. It belongs to the caller: owner, ACLs and extended attributes of the old file are lost.
 *   - Errors: FADAM_ERR_INVALID_VALUE for an empty path (tensor names were checked as UTF-8
 *     by fadam_add_tensor); FADAM_ERR_IO, with the step, the path and the system's reason
 *     in the message, when the directory is missing, unwritable or read-only, `path` is a directory,
 *     the name is too long, or writing, fsync, link or rename fails (full disk, quota, file size
 *     limit). After any failure the previous file at `path` is whole and nothing new is left in the
 *     directory, with one exception: when only the final fsync of the directory fails (FADAM_ERR_IO,
 *     message "... is in place ... may not survive a system crash"), the new file is already at
 *     `path`, complete and loadable, but the replacement may be undone by a crash of the machine;
 *     saving again is the remedy. */
FADAM_API fadam_status fadam_save(const fadam_optimizer *opt, const char *path, fadam_stream stream);

/* The same checkpoint into caller memory. With buffer NULL only *size_out is set, with no device
 * work: the exact size, which depends only on what is registered (not on the step, hyperparameters
 * or counters), so a buffer sized once fits every later save. Otherwise `capacity` must be at least
 * that size (else FADAM_ERR_WORKSPACE_TOO_SMALL, *size_out still set) and the checkpoint is
 * written to buffer. */
FADAM_API fadam_status fadam_save_bytes(const fadam_optimizer *opt, size_t *size_out, void *buffer,
                                        size_t capacity, fadam_stream stream);

/* Restores step, every group's hyperparameters, every tensor's exp_avg, exp_avg_sq and master, and
 * the fused step's counters when both sides have the fused step (without them in the checkpoint,
 * its step counter starts at the checkpoint's step; without the fused step here, fused.step
 * becomes the step), from a checkpoint written for the same registration (names, element counts,
 * param dtypes, groups; the order of registration may differ). Params stay the caller's to restore.
 * Everything is checked first: header bounds, JSON, dtypes, shapes, byte ranges, names, version,
 * checksum, and every value's range (a step or counter at INT64_MAX, which could not advance; a loss
 * scale that is not a finite number >= 2^-126; a clip coefficient or schedule factor outside [0, 1];
 * a number that overflows to Inf or underflows to 0; a shape other than [numel]). On any such error
 * (FADAM_ERR_IO, FADAM_ERR_CORRUPT, FADAM_ERR_MISMATCH, ...) the
 * optimizer is exactly as before the call and the message names the first problem. Only a read or
 * CUDA failure during the final copy, after every check passed, can leave the state partly loaded;
 * its message says so. The file must not be modified in place while it loads (fadam_save replaces
 * files by rename, which is safe). */
FADAM_API fadam_status fadam_load(fadam_optimizer *opt, const char *path, fadam_stream stream);

/* Sharded checkpoints (data parallelism): each rank saves its own file with fadam_save; with
 * fadam_set_shard_rank set, its __metadata__ also holds shard.rank, shard.count and, per tensor,
 * NAME.offset and NAME.full_numel (the slice [offset, offset + numel) of the full tensor; the entries
 * hold the slice's state). fadam_load takes back the same slicing only (another slice of the same
 * tensor is FADAM_ERR_MISMATCH). fadam_load_shards reads the n_paths files of one save by N = n_paths
 * ranks (in any order) and loads this optimizer's slices from them, whatever its own rank count M and
 * slicing: each file is checked as fadam_load checks one (its checksum included), the files must be
 * ranks 0..N-1 of one save (same step, hyperparameters and counters), and for every registered tensor
 * the files' slices must tile the full tensor exactly. A file without shard metadata counts as the one
 * shard of one rank, so a single-GPU checkpoint loads into sharded ranks too. Reads each file whole
 * into host memory (all N files: about the whole optimizer state); synchronizes `stream`. On any
 * error before the final copy, nothing changed. */
FADAM_API fadam_status fadam_load_shards(fadam_optimizer *opt, const char *const *paths, int n_paths,
                                         fadam_stream stream);

/* fadam_load from `size` bytes of caller memory (host memory). */
FADAM_API fadam_status fadam_load_bytes(fadam_optimizer *opt, const void *buffer, size_t size,
                                        fadam_stream stream);

#ifdef __cplusplus
}
#endif

#endif /* FUSEDADAM_H */
