/* adam_math.h - what the host and the device must compute identically: the tensor table layout and
 * the per-step scalars of each group. Plain C that nvcc and g++ also accept. */
#ifndef FADAM_ADAM_MATH_H
#define FADAM_ADAM_MATH_H

#include <math.h>
#include <stdint.h>

#include "fusedadam.h"
#include "rules.h"

/* Elements per chunk: one warp updates one chunk at a time (the norm pass: a warp or a block). Small
 * enough that a 10M-element tensor keeps 9 warps per SM of an H200 busy (1,221 chunks), large enough
 * that the norm's per-chunk partials stay few (a 1B-element model: 122K). A multiple of every vector
 * width. */
#define FADAM_CHUNK_ELEMS (8 * 1024)
/* The table's version: "ADATAB5" since the header says what the entries hold (flags); "ADATAB4" since
 * entries carry the states' formats, rounding seed and element offset (issue 12); "ADATAB3" made the
 * states slots (fadam_state_slot); "ADATAB2" meant vector_ok is 16-byte alignment (8 elements of 16-bit
 * types). */
#define FADAM_TABLE_MAGIC 0x35424154414441ull /* "ADATAB5" */
/* fadam_table_header.flags, set by the encoder from the entries (fadam_table_fill) and authoritative:
 * the step kernel built without the lean loop leaves a table with FADAM_TABLE_LEAN untouched, the one
 * with it a table without (kernels/adam_step.cu). */
#define FADAM_TABLE_LEAN 1u /* some entry has lean = 1 (a state not in fp32) */
/* In fadam_step_kernel_args.table_flags: the flags beside it are the table's (read from its host copy). */
#define FADAM_TABLE_KNOWN 0x80000000u

/* The device-resident tensor table: a header, then one entry per tensor. Chunks are numbered
 * across tensors; entry.first_chunk is a prefix sum, so a block finds its tensor by binary search
 * and the table stays O(tensors), whatever their sizes. */
typedef struct fadam_table_header {
    uint64_t magic;
    int64_t n_tensors;
    int64_t n_chunks;
    int32_t chunk_elems;
    int32_t n_groups;
    uint32_t flags;       /* FADAM_TABLE_LEAN */
    uint32_t reserved[3]; /* 0; the entries stay 16-byte aligned */
} fadam_table_header;

/* How a state buffer is stored (docs/STATE_LAYOUTS.md, kernels/state_layout.h): X(format, bytes per element).
 *   FP32       float32
 *   REMAINDER  uint16 low half of the fp32 master beside a bf16 param (fadam_master_split / join)
 *   BF16       bfloat16, stored with stochastic rounding (fadam_round_bf16_stochastic)
 *   Q8_SIGNED  int8 square-root codes (fadam_q8_quantize_m) + one fp32 scale per FADAM_Q8_BLOCK: exp_avg
 *   Q8_QUARTIC uint8 fourth-root codes (fadam_q8_quantize_v) + one fp32 scale per block: exp_avg_sq */
#define FADAM_STATE_FORMATS(X)                                                                                \
    X(FADAM_STATE_FP32, 4) X(FADAM_STATE_REMAINDER, 2) X(FADAM_STATE_BF16, 2) X(FADAM_STATE_Q8_SIGNED, 1)     \
    X(FADAM_STATE_Q8_QUARTIC, 1)
#define FADAM_STATE_FORMAT_ENUM_(format, element_bytes) format,
enum fadam_state_format { FADAM_STATE_FORMATS(FADAM_STATE_FORMAT_ENUM_) FADAM_STATE_FORMAT_COUNT };
#undef FADAM_STATE_FORMAT_ENUM_
/* Bytes per element of a format (0: unknown). */
static inline FADAM_HOST_DEVICE int fadam_state_format_bytes(int format) {
    switch (format) {
#define FADAM_STATE_FORMAT_BYTES_(format, element_bytes) \
    case format: return element_bytes;
        FADAM_STATE_FORMATS(FADAM_STATE_FORMAT_BYTES_)
#undef FADAM_STATE_FORMAT_BYTES_
    default: return 0;
    }
}

/* One state buffer of a tensor: numel elements of `format` (enum fadam_state_format), at data. */
typedef struct fadam_state_slot {
    void *data;          /* NULL: the tensor has no such state (no master; a rule without this moment) */
    float *block_scales; /* a blockwise format's per-block fp32 scales; NULL for fp32 */
} fadam_state_slot;

/* The slots of a table entry: the master, then one per fadam_tensor state field (FADAM_STATE_FIELDS);
 * a rule's state k lives in slot FADAM_SLOT_OF_FIELD(fadam_rule_state_field(rule, k)). The table does
 * not know the groups' rules (fadam_table_encode takes none), so slots follow the fields. */
#define FADAM_SLOT_MASTER 0
#define FADAM_SLOT_OF_FIELD(field) (1 + (field))
#define FADAM_STATE_SLOTS (1 + FADAM_FIELD_COUNT)

typedef struct fadam_table_entry {
    void *param;
    const void *grad;
    /* master: NULL data when the param is updated in place (fp32 param, or a 16-bit one by choice) */
    fadam_state_slot states[FADAM_STATE_SLOTS];
    int64_t numel;
    int64_t first_chunk;
    int32_t group;
    uint8_t param_dtype;
    uint8_t grad_dtype;
    uint8_t vector_ok; /* every pointer 16-byte aligned: 16-byte accesses (4 fp32 or 8 16-bit elements) */
    uint8_t reserved;
    uint8_t state_format[FADAM_STATE_SLOTS]; /* enum fadam_state_format of each slot */
    uint8_t lean; /* 1: some slot is not FADAM_STATE_FP32 (the lean loops); 0: the fp32 loops */
    uint8_t reserved2[7 - FADAM_STATE_SLOTS % 8];
    uint64_t rounding_seed; /* FADAM_STATE_BF16: the tensor's random stream (fadam_tensor.rounding_seed) */
    int64_t element_offset; /* the random bits' index of element 0 (fadam_tensor.element_offset) */
} fadam_table_entry;

/* The host (gcc) and the device (nvcc) must lay these out alike: the table is built by one and read
 * by the other. */
FADAM_STATIC_ASSERT(sizeof(fadam_table_header) == 48, "fadam_table_header layout");
FADAM_STATIC_ASSERT(sizeof(fadam_table_header) % 16 == 0, "the entries after the header stay 16-byte aligned");
FADAM_STATIC_ASSERT(sizeof(fadam_table_entry) == 112, "fadam_table_entry layout");
FADAM_STATIC_ASSERT(sizeof(fadam_table_entry) % 16 == 0, "entries stay 16-byte aligned");

/* The fused step's state in device memory: what the caller sees, then what the kernels pass on. */
typedef struct fadam_device_state {
    fadam_step_counters counters;
    float grad_scale;      /* for the update: 1/loss_scale * clip coefficient */
    uint32_t blocks_done;  /* the norm pass's arrival counter; its last block resets it */
} fadam_device_state;
FADAM_STATIC_ASSERT(sizeof(fadam_step_counters) == 48, "fadam_step_counters layout");
FADAM_STATIC_ASSERT(sizeof(fadam_device_state) == 56, "fadam_device_state layout");

/* Arguments of the step kernel, passed by value (about 3.6 KB, under the 4 KB launch limit). Callers
 * fill `groups`; when t and lr are known on the host (no state, device_step, device_lr), the launcher
 * replaces them by each group's scalars for the step (scalars_given = 1), so no block recomputes them. */
typedef struct fadam_step_kernel_args {
    const fadam_table_header *table; /* device memory; the entries follow the header */
    const fadam_device_state *state; /* optional (the fused step): skip flag, t, lr factor, grad scale */
    const int64_t *device_step;      /* optional: t read at run time */
    const float *device_lr;          /* optional: one lr per group read at run time */
    /* optional (the fused step): each group's scalars, computed by the norm kernel's last block */
    const fadam_group_scalars *device_scalars;
    const float *grad_multiplier;    /* optional (fadam_step_scaling): multiplies the gradient scale */
    const float *found_inf;          /* optional (fadam_step_scaling): nonzero skips the launch */
    int64_t step;
    int32_t n_groups;
    int32_t scalars_given; /* set by fadam_launch_adam_step only */
    /* What the host knows of the table's header flags (its host copy): FADAM_TABLE_KNOWN | flags picks
     * the one kernel built for such a table; 0 (fadam_step_table: the table is only on the device)
     * launches both, and the one not built for the table's flags leaves at once (kernels/adam_step.cu). */
    uint32_t table_flags;
    uint32_t reserved;
    union {
        fadam_hparams groups[FADAM_MAX_GROUPS];
        fadam_group_scalars scalars[FADAM_MAX_GROUPS];
    };
} fadam_step_kernel_args;

/* Arguments of the fused step's norm kernel (kernels/grad_norm.cu), passed by value (about 2.2 KB). */
typedef struct fadam_norm_kernel_args {
    const fadam_table_header *table;   /* device memory; the entries follow the header */
    double *chunk_partials;            /* one per chunk of the table */
    fadam_device_state *state;         /* the step's decision goes here */
    fadam_group_scalars *scalars_out;  /* optional: n_groups scalars for the update (device_scalars) */
    /* optional (the split step, fadam_fused_step_begin): the norm kernel leaves [sum of squares,
     * non-finite flag] here instead of deciding; the decide kernel reads them back once reduced */
    double *reduce_buffer;
    fadam_fused_step_config config;
    int32_t n_groups;
    fadam_hparams groups[FADAM_MAX_GROUPS];
} fadam_norm_kernel_args;

/* A group's scalars for one step, from the by-value arguments, the optional t/lr in memory, and the
 * optional fused-step state (which wins: its t, lr factor and gradient scale). */
static inline FADAM_HOST_DEVICE fadam_group_scalars fadam_scalars_for_step(const fadam_hparams *group, int g,
                                                                         int64_t step, const int64_t *memory_step,
                                                                         const float *memory_lr,
                                                                         const fadam_device_state *state) {
    fadam_group_scalars s;
    float lr = memory_lr ? memory_lr[g] : group->lr;
    if (memory_step) step = *memory_step;
    if (state) {
        step = state->counters.step;
        lr = (float)((double)lr * (double)state->counters.lr_scale);
    }
    s = fadam_compute_group_scalars(group, lr, step);
    if (state) s.grad_scale = state->grad_scale;
    return s;
}

/* The schedule's lr factor for step t (1-based), in double then rounded once. */
static inline FADAM_HOST_DEVICE float fadam_schedule_factor(const fadam_fused_step_config *c, int64_t t) {
    double progress;
    if (c->schedule != FADAM_SCHEDULE_WARMUP_COSINE) return 1.0f;
    if (t <= c->warmup_steps) return (float)((double)t / (double)c->warmup_steps);
    if (t >= c->total_steps) return c->min_lr_ratio;
    progress = (double)(t - c->warmup_steps) / (double)(c->total_steps - c->warmup_steps);
    return (float)((double)c->min_lr_ratio +
                   (1.0 - (double)c->min_lr_ratio) * 0.5 * (1.0 + cos(3.14159265358979323846 * progress)));
}

/* Decides one fused step from the gradients' sum of squares (the same code on the CPU and in the
 * norm kernel's last block): skip on Inf/NaN, else advance t, set the schedule's factor, the clip
 * coefficient and the gradient scale; adjust a dynamic loss scale, never below its floor. */
static inline FADAM_HOST_DEVICE void fadam_decide_step(fadam_device_state *state, const fadam_fused_step_config *c,
                                                       double sum_of_squares) {
    fadam_step_counters *k = &state->counters;
    float inv_scale = c->dynamic_loss_scaling ? (float)(1.0 / (double)k->loss_scale) : 1.0f;
    double norm = sqrt(sum_of_squares) * (double)inv_scale;
    k->grad_norm = (float)norm;
    /* Inf or NaN somewhere in the gradients; or a step counter at INT64_MAX, which cannot advance (the
     * host refuses to set or load it, so only 2^63 steps reach it). */
    if (!(norm <= 1.0e308) || k->step == INT64_MAX) {
        k->skipped = 1;
        if (k->skipped_total < INT64_MAX) k->skipped_total++; /* saturates: no signed overflow */
        if (c->dynamic_loss_scaling && !(norm <= 1.0e308)) {
            if (k->loss_scale > c->min_loss_scale) {
                double backed_off = (double)k->loss_scale * (double)c->backoff_factor;
                k->loss_scale = backed_off > (double)c->min_loss_scale ? (float)backed_off : c->min_loss_scale;
            } else if (k->skipped_at_min_scale < INT64_MAX) {
                k->skipped_at_min_scale++; /* backing off cannot cure this overflow */
            }
            k->good_steps = 0;
        }
        return;
    }
    k->skipped = 0;
    k->clip_coef = 1.0f;
    if (c->max_grad_norm > 0.0f && norm + 1e-6 > (double)c->max_grad_norm)
        k->clip_coef = (float)((double)c->max_grad_norm / (norm + 1e-6));
    state->grad_scale = (float)((double)inv_scale * (double)k->clip_coef);
    k->step++;
    k->lr_scale = fadam_schedule_factor(c, k->step);
    if (c->dynamic_loss_scaling && ++k->good_steps >= c->growth_interval) {
        double grown = (double)k->loss_scale * (double)c->growth_factor;
        if (grown <= 3.0e38) k->loss_scale = (float)grown; /* never grow into infinity */
        k->good_steps = 0;
    }
}

#endif
