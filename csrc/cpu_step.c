/* cpu_step.c - the CPU device's fast path: the arithmetic of fadam_reference_update, element for
 * element in the same order (so bit for bit the same results), in loops the compiler vectorizes
 * (one per dtype combination; the usual AdamW flags as constants, others as selects).
 * tests/test_cpu_fast.c holds it to the reference bit for bit. */
#include <string.h>

#include "internal.h"

/* Every instruction set this compiles for gets its own copy of the hot loops; the loader picks the
 * best one for the machine (no -march needed, nothing to configure). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(FADAM_NO_TARGET_CLONES)
#define FADAM_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FADAM_CPU_CLONES
#endif

static inline float bf16_to_float(uint16_t bits) {
    uint32_t wide = (uint32_t)bits << 16;
    float value;
    memcpy(&value, &wide, 4);
    return value;
}

/* fadam_float_to_bf16_bits without a branch, so a vector loop can use it. */
static inline uint16_t float_to_bf16(float value) {
    uint32_t bits, rounded, quiet;
    memcpy(&bits, &value, 4);
    rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
    quiet = (bits >> 16) | 0x0040u;
    return (uint16_t)((bits & 0x7FFFFFFFu) > 0x7F800000u ? quiet : rounded);
}

enum { KIND_F32 = 0, KIND_BF16 = 1, KIND_F16 = 2 };

static inline float load_kind(const void *base, int kind, int64_t i) {
    if (kind == KIND_F32) return ((const float *)base)[i];
    if (kind == KIND_BF16) return bf16_to_float(((const uint16_t *)base)[i]);
    return fadam_fp16_bits_to_float(((const uint16_t *)base)[i]);
}

static inline void store_kind(void *base, int kind, int64_t i, float value) {
    if (kind == KIND_F32) ((float *)base)[i] = value;
    else if (kind == KIND_BF16) ((uint16_t *)base)[i] = float_to_bf16(value);
    else ((uint16_t *)base)[i] = fadam_float_to_fp16_bits(value);
}

/* The update of elements [begin, end). Kinds, master and (for the usual AdamW) the flags are
 * constants after inlining: a select left in the loop keeps gcc from vectorizing the 16-bit loops. */
static inline __attribute__((always_inline)) void update_range(const fadam_tensor *t, int64_t begin, int64_t end,
                                                               const fadam_group_scalars *s, int param_kind,
                                                               int grad_kind, int has_master, int maximize,
                                                               int coupled, int decoupled) {
    float *restrict master = t->master;
    float *restrict exp_avg = t->exp_avg;
    float *restrict exp_avg_sq = t->exp_avg_sq;
    const float grad_scale = s->grad_scale, weight_decay = s->weight_decay, decay_factor = s->decay_factor;
    const float beta1 = s->beta1, one_minus_beta1 = s->one_minus_beta1, beta2 = s->beta2,
                one_minus_beta2 = s->one_minus_beta2, eps = s->eps, step_size = s->step_size,
                bias_correction2_sqrt = s->bias_correction2_sqrt;
    int64_t i;
    for (i = begin; i < end; i++) {
        float p = has_master ? master[i] : load_kind(t->param, param_kind, i);
        float g = load_kind(t->grad, grad_kind, i) * grad_scale;
        float m = exp_avg[i], v = exp_avg_sq[i], denom;
        g = maximize ? -g : g;
        g = coupled ? g + weight_decay * p : g;
        p = decoupled ? p * decay_factor : p;
        m = beta1 * m + one_minus_beta1 * g;
        v = beta2 * v + one_minus_beta2 * g * g;
        denom = sqrtf(v) / bias_correction2_sqrt + eps;
        p = p - step_size * m / denom;
        exp_avg[i] = m;
        exp_avg_sq[i] = v;
        if (has_master) master[i] = p;
        store_kind(t->param, param_kind, i, p);
    }
}

/* Per dtype combination, two loops: AdamW without maximize (nearly every LLM group) with its flags
 * as constants, and any flags read at run time. */
#define DEFINE_RANGE(name, param_kind, grad_kind, has_master)                                               \
    FADAM_CPU_CLONES static void name(const fadam_tensor *t, int64_t begin, int64_t end,                   \
                                      const fadam_group_scalars *s) {                                      \
        if (!s->maximize && !s->coupled_decay && s->decoupled_decay)                                       \
            update_range(t, begin, end, s, param_kind, grad_kind, has_master, 0, 0, 1);                    \
        else                                                                                               \
            update_range(t, begin, end, s, param_kind, grad_kind, has_master, s->maximize, s->coupled_decay, \
                         s->decoupled_decay);                                                              \
    }
DEFINE_RANGE(range_f32_f32, KIND_F32, KIND_F32, 0)
DEFINE_RANGE(range_f32_bf16, KIND_F32, KIND_BF16, 0)
DEFINE_RANGE(range_f32_f16, KIND_F32, KIND_F16, 0)
DEFINE_RANGE(range_bf16_f32_master, KIND_BF16, KIND_F32, 1)
DEFINE_RANGE(range_bf16_bf16_master, KIND_BF16, KIND_BF16, 1)
DEFINE_RANGE(range_bf16_f16_master, KIND_BF16, KIND_F16, 1)
DEFINE_RANGE(range_bf16_f32, KIND_BF16, KIND_F32, 0)
DEFINE_RANGE(range_bf16_bf16, KIND_BF16, KIND_BF16, 0)
DEFINE_RANGE(range_bf16_f16, KIND_BF16, KIND_F16, 0)
DEFINE_RANGE(range_f16_f32_master, KIND_F16, KIND_F32, 1)
DEFINE_RANGE(range_f16_bf16_master, KIND_F16, KIND_BF16, 1)
DEFINE_RANGE(range_f16_f16_master, KIND_F16, KIND_F16, 1)
DEFINE_RANGE(range_f16_f32, KIND_F16, KIND_F32, 0)
DEFINE_RANGE(range_f16_bf16, KIND_F16, KIND_BF16, 0)
DEFINE_RANGE(range_f16_f16, KIND_F16, KIND_F16, 0)
#undef DEFINE_RANGE

typedef void (*range_function)(const fadam_tensor *, int64_t, int64_t, const fadam_group_scalars *);

static range_function pick_range(const fadam_tensor *t) {
    /* [param dtype][grad dtype][has master] */
    static const range_function table[3][3][2] = {
        {{range_f32_f32, range_f32_f32}, {range_f32_bf16, range_f32_bf16}, {range_f32_f16, range_f32_f16}},
        {{range_bf16_f32, range_bf16_f32_master},
         {range_bf16_bf16, range_bf16_bf16_master},
         {range_bf16_f16, range_bf16_f16_master}},
        {{range_f16_f32, range_f16_f32_master},
         {range_f16_bf16, range_f16_bf16_master},
         {range_f16_f16, range_f16_f16_master}},
    };
    return table[t->param_dtype][t->grad_dtype][t->master != NULL];
}

void fadam_cpu_update_tensors(const fadam_tensor *tensors, int64_t n_tensors, const fadam_group_scalars *scalars) {
    int64_t i;
    /* One thread: on the 2-core machines measured (bench/RESULTS.md) threads did not pay. */
    for (i = 0; i < n_tensors; i++) pick_range(&tensors[i])(&tensors[i], 0, tensors[i].numel, &scalars[tensors[i].group]);
}
