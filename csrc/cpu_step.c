/* cpu_step.c - the CPU device's fast path: the arithmetic of fadam_reference_update, element for
 * element in the same order (so bit for bit the same results), in loops the compiler vectorizes
 * (one per rule and dtype combination, each calling the rule's element function of kernels/rules.h;
 * coupled decay off as a constant, or read at run time), split over the
 * threads of a fadam_cpu_pool (cpu_pool.c) by element ranges. Each element's update depends on that
 * element alone, so the split changes no bit; the gradient norm's sum has one fixed order
 * (fadam_reference_sum_of_squares) whatever the threads. tests/test_cpu_fast.c and
 * tests/test_cpu_threads.c hold it to the reference bit for bit. */
#include <string.h>

#include "internal.h"
#include "state_layout.h"

/* Every instruction set this compiles for gets its own copy of the hot loops; the loader picks the
 * best one for the machine (no -march needed, nothing to configure). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(FADAM_NO_TARGET_CLONES)
#define FADAM_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FADAM_CPU_CLONES
#endif

static inline uint32_t float_bits(float value) {
    uint32_t bits;
    memcpy(&bits, &value, 4);
    return bits;
}

static inline float bits_float(uint32_t bits) {
    float value;
    memcpy(&value, &bits, 4);
    return value;
}

static inline float bf16_to_float(uint16_t bits) { return bits_float((uint32_t)bits << 16); }

/* fadam_float_to_bf16_bits without a branch, so a vector loop can use it. */
static inline __attribute__((always_inline)) uint16_t float_to_bf16(float value) {
    uint32_t bits = float_bits(value), rounded, quiet;
    rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
    quiet = (bits >> 16) | 0x0040u;
    return (uint16_t)((bits & 0x7FFFFFFFu) > 0x7F800000u ? quiet : rounded);
}

/* a where mask is all ones, b where it is zero: a select gcc keeps as vector blends, where nested
 * conditionals became branches that kept the fp16 loops scalar. */
static inline uint32_t select_bits(uint32_t mask, uint32_t a, uint32_t b) { return (a & mask) | (b & ~mask); }
static inline uint32_t mask_of(int condition) { return 0u - (uint32_t)condition; }

/* fadam_fp16_bits_to_float with every case computed and one selected (the reference's functions,
 * called out of line, kept the fp16 loops scalar: one call per element). */
static inline __attribute__((always_inline)) float f16_to_float(uint16_t half) {
    uint32_t sign = (uint32_t)(half & 0x8000u) << 16, exponent = (half >> 10) & 0x1Fu, mantissa = half & 0x3FFu;
    uint32_t special = sign | 0x7F800000u | (mantissa << 13);
    uint32_t normal = sign | ((exponent + 112u) << 23) | (mantissa << 13);
    /* mantissa * 2^-24 is exact and positive: the sign goes on as a bit, as the reference's negation. */
    uint32_t subnormal = sign | float_bits((float)(int32_t)mantissa * 0x1p-24f);
    return bits_float(select_bits(mask_of(exponent == 0x1Fu), special,
                                  select_bits(mask_of(exponent != 0u), normal, subnormal)));
}

/* fadam_float_to_fp16_bits likewise. Round to nearest even as a sum: adding just under half the
 * dropped unit, plus the kept part's low bit, carries exactly when the reference rounds up. */
static inline __attribute__((always_inline)) uint16_t float_to_f16(float value) {
    uint32_t bits = float_bits(value);
    uint32_t sign = (bits >> 16) & 0x8000u, magnitude = bits & 0x7FFFFFFFu, exponent = magnitude >> 23;
    uint32_t rebiased = magnitude - (112u << 23); /* wraps below the normal range, where it is not used */
    uint32_t normal = (rebiased + 0x0FFFu + ((rebiased >> 13) & 1u)) >> 13;
    uint32_t mantissa = (magnitude & 0x7FFFFFu) | 0x800000u;
    /* shift = 126 - exponent: 14..24 in the subnormal range, clamped elsewhere so it stays defined. */
    uint32_t clamped = exponent < 102u ? 102u : exponent, shift, subnormal, result;
    clamped = clamped > 112u ? 112u : clamped;
    shift = 126u - clamped;
    subnormal = (mantissa + ((1u << (shift - 1u)) - 1u) + ((mantissa >> shift) & 1u)) >> shift;
    subnormal &= mask_of(exponent >= 102u);
    result = select_bits(mask_of(magnitude >= 0x38800000u), normal, subnormal);
    result = select_bits(mask_of(magnitude >= 0x477FF000u), 0x7C00u, result);
    result = select_bits(mask_of(magnitude > 0x7F800000u), 0x7E00u, result);
    return (uint16_t)(sign | result);
}

/* fadam_bf16_from_master (ties away from zero: the remainder layout's rule) without a branch. */
static inline __attribute__((always_inline)) uint16_t bf16_from_master(float value) {
    uint32_t bits = float_bits(value), rounded = (bits + 0x8000u) >> 16, quiet = (bits >> 16) | 0x0040u;
    return (uint16_t)((bits & 0x7FFFFFFFu) > 0x7F800000u ? quiet : rounded);
}

enum { KIND_F32 = 0, KIND_BF16 = 1, KIND_F16 = 2 };
FADAM_STATIC_ASSERT((int)KIND_F32 == (int)FADAM_FLOAT32 && (int)KIND_BF16 == (int)FADAM_BFLOAT16 && (int)KIND_F16 == (int)FADAM_FLOAT16,
                    "a kind is its dtype's value");

static inline __attribute__((always_inline)) float load_kind(const void *base, int kind, int64_t i) {
    if (kind == KIND_F32) return ((const float *)base)[i];
    if (kind == KIND_BF16) return bf16_to_float(((const uint16_t *)base)[i]);
    return f16_to_float(((const uint16_t *)base)[i]);
}

static inline __attribute__((always_inline)) void store_kind(void *base, int kind, int64_t i, float value) {
    if (kind == KIND_F32) ((float *)base)[i] = value;
    else if (kind == KIND_BF16) ((uint16_t *)base)[i] = float_to_bf16(value);
    else ((uint16_t *)base)[i] = float_to_f16(value);
}

/* The update of elements [begin, end) by `rule`'s element function (kernels/rules.h). Rule, kinds,
 * master and the flag `coupled_known_off` are constants after inlining: a select left in the loop
 * keeps gcc from vectorizing the 16-bit loops. */
static inline __attribute__((always_inline)) void update_range(const fadam_tensor *t, int64_t begin, int64_t end,
                                                               const fadam_group_scalars *s, int rule, int param_kind,
                                                               int grad_kind, int has_master, int coupled_known_off) {
    const int field0 = fadam_rule_state_field(rule, 0), field1 = fadam_rule_state_field(rule, 1);
    float *restrict master = t->master;
    float *restrict state0 = fadam_tensor_field(t, field0);
    float *restrict state1 = field1 == FADAM_FIELD_NONE ? NULL : fadam_tensor_field(t, field1);
    fadam_loop_scalars loop = fadam_loop_scalars_of(s); /* maximize and decoupled decay folded in */
    int64_t i;
    if (coupled_known_off) loop.coupled_decay = 0;
    for (i = begin; i < end; i++) {
        float p = has_master ? master[i] : load_kind(t->param, param_kind, i);
        float g = load_kind(t->grad, grad_kind, i);
        float m = state0[i], v = field1 == FADAM_FIELD_NONE ? 0.0f : state1[i];
        fadam_rule_element(rule, &p, g, &m, &v, &loop);
        state0[i] = m;
        if (field1 != FADAM_FIELD_NONE) state1[i] = v;
        if (has_master) master[i] = p;
        if (has_master && param_kind == KIND_BF16) ((uint16_t *)t->param)[i] = bf16_from_master(p);
        else store_kind(t->param, param_kind, i, p);
    }
}

/* Per rule and dtype combination, two loops: without coupled decay (every rule but Adam + L2 with
 * wd != 0; nearly every LLM group) with that flag a constant, and with it read at run time. */
#define DEFINE_RANGE(rule, name, param_kind, grad_kind, has_master)                                       \
    FADAM_CPU_CLONES static void name(const fadam_tensor *t, int64_t begin, int64_t end,                 \
                                      const fadam_group_scalars *s) {                                    \
        if (!s->coupled_decay) update_range(t, begin, end, s, rule, param_kind, grad_kind, has_master, 1); \
        else update_range(t, begin, end, s, rule, param_kind, grad_kind, has_master, 0);                 \
    }
/* The 15 loops of one rule, and its [param dtype][grad dtype][has master] table. */
#define DEFINE_RULE_RANGES(mode, id, ...)                                                                 \
    DEFINE_RANGE(mode, id##_f32_f32, KIND_F32, KIND_F32, 0)                                               \
    DEFINE_RANGE(mode, id##_f32_bf16, KIND_F32, KIND_BF16, 0)                                             \
    DEFINE_RANGE(mode, id##_f32_f16, KIND_F32, KIND_F16, 0)                                               \
    DEFINE_RANGE(mode, id##_bf16_f32_master, KIND_BF16, KIND_F32, 1)                                      \
    DEFINE_RANGE(mode, id##_bf16_bf16_master, KIND_BF16, KIND_BF16, 1)                                    \
    DEFINE_RANGE(mode, id##_bf16_f16_master, KIND_BF16, KIND_F16, 1)                                      \
    DEFINE_RANGE(mode, id##_bf16_f32, KIND_BF16, KIND_F32, 0)                                             \
    DEFINE_RANGE(mode, id##_bf16_bf16, KIND_BF16, KIND_BF16, 0)                                           \
    DEFINE_RANGE(mode, id##_bf16_f16, KIND_BF16, KIND_F16, 0)                                             \
    DEFINE_RANGE(mode, id##_f16_f32_master, KIND_F16, KIND_F32, 1)                                        \
    DEFINE_RANGE(mode, id##_f16_bf16_master, KIND_F16, KIND_BF16, 1)                                      \
    DEFINE_RANGE(mode, id##_f16_f16_master, KIND_F16, KIND_F16, 1)                                        \
    DEFINE_RANGE(mode, id##_f16_f32, KIND_F16, KIND_F32, 0)                                               \
    DEFINE_RANGE(mode, id##_f16_bf16, KIND_F16, KIND_BF16, 0)                                             \
    DEFINE_RANGE(mode, id##_f16_f16, KIND_F16, KIND_F16, 0)
FADAM_RULES(DEFINE_RULE_RANGES)
#undef DEFINE_RULE_RANGES
#undef DEFINE_RANGE

/* ---- lean layouts: fadam_reference_update_lean's arithmetic, one 8-bit block (FADAM_MOMENT_BLOCK
 * elements) at a time in phases that each loop over the block with one format: params, grads and
 * moments widened to fp32 arrays, the rule's element loop, the stores. The same functions in the same
 * order per element, so the same bits; the reference's loop decides every format per element. ---- */

static inline __attribute__((always_inline)) void load_kind_block(const void *base, int kind, int64_t first, int n,
                                                                  float *out) {
    int k;
    if (kind == KIND_F32)
        for (k = 0; k < n; k++) out[k] = ((const float *)base)[first + k];
    else if (kind == KIND_BF16)
        for (k = 0; k < n; k++) out[k] = bf16_to_float(((const uint16_t *)base)[first + k]);
    else
        for (k = 0; k < n; k++) out[k] = f16_to_float(((const uint16_t *)base)[first + k]);
}

/* A moment field's block as fp32: bf16 widened, 8-bit codes times the block's scale, or fp32. */
static void load_moment_block(const fadam_tensor *t, int field, int64_t first, int n, float *out) {
    const void *data = fadam_tensor_field(t, field);
    int k;
    if (t->moment_format == FADAM_MOMENT_BF16) {
        load_kind_block(data, KIND_BF16, first, n, out);
    } else if (t->moment_format == FADAM_MOMENT_INT8 && field == FADAM_FIELD_EXP_AVG_SQ) {
        const float scale = t->exp_avg_sq_scales[first / FADAM_MOMENT_BLOCK];
        for (k = 0; k < n; k++) out[k] = fadam_q8_dequantize_v(((const uint8_t *)data)[first + k], scale);
    } else if (t->moment_format == FADAM_MOMENT_INT8) {
        const float scale = t->exp_avg_scales[first / FADAM_MOMENT_BLOCK];
        for (k = 0; k < n; k++) out[k] = fadam_q8_dequantize_m(((const int8_t *)data)[first + k], scale);
    } else {
        load_kind_block(data, KIND_F32, first, n, out);
    }
}

/* Elements [begin, end) of a lean tensor, begin a multiple of FADAM_MOMENT_BLOCK (update_range_of). */
FADAM_CPU_CLONES static void update_lean_range(const fadam_tensor *t, int64_t begin, int64_t end,
                                               const fadam_group_scalars *s, int64_t step) {
    const fadam_loop_scalars loop = fadam_loop_scalars_of(s);
    const int field0 = fadam_rule_state_field(s->rule, 0), field1 = fadam_rule_state_field(s->rule, 1);
    const int param_kind = (int)t->param_dtype, grad_kind = (int)t->grad_dtype; /* KIND_* are the dtypes' values */
    int64_t first;
    for (first = begin; first < end; first += FADAM_MOMENT_BLOCK) {
        float p[FADAM_MOMENT_BLOCK], g[FADAM_MOMENT_BLOCK], m[FADAM_MOMENT_BLOCK], v[FADAM_MOMENT_BLOCK];
        const int n = (int)(end - first < FADAM_MOMENT_BLOCK ? end - first : FADAM_MOMENT_BLOCK);
        int k;
        if (t->master_format == FADAM_MASTER_REMAINDER) {
            const uint16_t *param = (const uint16_t *)t->param + first, *remainder = (const uint16_t *)t->master + first;
            for (k = 0; k < n; k++) p[k] = fadam_master_join(param[k], remainder[k]);
        } else if (t->master) {
            load_kind_block(t->master, KIND_F32, first, n, p);
        } else {
            load_kind_block(t->param, param_kind, first, n, p);
        }
        load_kind_block(t->grad, grad_kind, first, n, g);
        load_moment_block(t, field0, first, n, m);
        if (field1 != FADAM_FIELD_NONE) load_moment_block(t, field1, first, n, v);
        else memset(v, 0, sizeof v);
        switch (s->rule) {
#define RULE_LOOP(mode, id, name, n_states, f0, f1, scalars, check, element)               \
    case mode:                                                                             \
        for (k = 0; k < n; k++) element(&p[k], g[k], &m[k], &v[k], &loop);                \
        break;
            FADAM_RULES(RULE_LOOP)
#undef RULE_LOOP
        default: break;
        }
        if (t->master_format == FADAM_MASTER_REMAINDER) {
            uint16_t *param = (uint16_t *)t->param + first, *remainder = (uint16_t *)t->master + first;
            for (k = 0; k < n; k++) param[k] = fadam_master_split(p[k], &remainder[k]);
        } else if (t->master) {
            memcpy((float *)t->master + first, p, (size_t)n * sizeof p[0]);
            if (param_kind == KIND_BF16)
                for (k = 0; k < n; k++) ((uint16_t *)t->param)[first + k] = bf16_from_master(p[k]);
            else
                for (k = 0; k < n; k++) store_kind(t->param, param_kind, first + k, p[k]);
        } else {
            for (k = 0; k < n; k++) store_kind(t->param, param_kind, first + k, p[k]);
        }
        fadam_store_moment_block(t, field0, step, first, n, m);
        if (field1 != FADAM_FIELD_NONE) fadam_store_moment_block(t, field1, step, first, n, v);
    }
}

typedef void (*range_function)(const fadam_tensor *, int64_t, int64_t, const fadam_group_scalars *);

#define RULE_RANGE_TABLE(mode, id, ...)                                                                   \
    {{{id##_f32_f32, id##_f32_f32}, {id##_f32_bf16, id##_f32_bf16}, {id##_f32_f16, id##_f32_f16}},       \
     {{id##_bf16_f32, id##_bf16_f32_master}, {id##_bf16_bf16, id##_bf16_bf16_master},                    \
      {id##_bf16_f16, id##_bf16_f16_master}},                                                            \
     {{id##_f16_f32, id##_f16_f32_master}, {id##_f16_bf16, id##_f16_bf16_master},                        \
      {id##_f16_f16, id##_f16_f16_master}}},
/* [rule][param dtype][grad dtype][has master], in fadam_mode order (rules.h checks the list's order) */
static const range_function range_table[FADAM_RULE_COUNT][3][3][2] = {FADAM_RULES(RULE_RANGE_TABLE)};
#undef RULE_RANGE_TABLE

static range_function pick_range(const fadam_tensor *t, int rule) {
    return range_table[rule][t->param_dtype][t->grad_dtype][t->master != NULL];
}

/* ---- the split over threads ---- */

/* Elements one thread claims at a time: big enough that claiming costs nothing, small enough that
 * a thread slowed by another process leaves little for the others to wait on. */
#define UPDATE_BLOCK_ELEMS ((int64_t)32 * 1024)
/* Below this many elements in all, the step stays on the calling thread (a wake-up costs more). */
#define MIN_THREADED_ELEMS ((int64_t)64 * 1024)

/* The tensors laid end to end: starts[i] is tensor i's first element, starts[n] the total. */
static void tensor_starts(const fadam_tensor *tensors, int64_t n_tensors, int64_t *starts) {
    int64_t i;
    starts[0] = 0;
    for (i = 0; i < n_tensors; i++) starts[i + 1] = starts[i] + tensors[i].numel;
}

/* The first tensor that ends after element `element` of the concatenation (never an empty one). */
static int64_t tensor_holding(const int64_t *starts, int64_t n_tensors, int64_t element) {
    int64_t low = 0, high = n_tensors - 1;
    while (low < high) {
        int64_t middle = low + (high - low) / 2;
        if (starts[middle + 1] > element) high = middle;
        else low = middle + 1;
    }
    return low;
}

/* Threads worth waking for `total` elements in blocks of `block`, at most the pool's. */
static int threads_for(const fadam_cpu_pool *pool, int64_t total, int64_t block) {
    int64_t blocks = (total + block - 1) / block;
    int n = fadam_cpu_pool_size(pool);
    if (total < MIN_THREADED_ELEMS) return 1;
    return blocks < n ? (int)blocks : n;
}

typedef struct update_work {
    const fadam_tensor *tensors;
    int64_t n_tensors;
    const fadam_group_scalars *scalars;
    const int64_t *starts;
    int64_t total;
    int64_t step;
} update_work;

/* Elements [begin, end) of one tensor. A lean tensor goes through update_lean_range with both
 * ends rounded up to a multiple of FADAM_MOMENT_BLOCK, so a thread updates the 8-bit blocks that start
 * in its range, whole (adjacent ranges still cover each block once). */
static void update_range_of(const fadam_tensor *t, int64_t begin, int64_t end, const fadam_group_scalars *s,
                            int64_t step) {
    if (fadam_tensor_is_lean(t)) {
        const int64_t b = FADAM_MOMENT_BLOCK;
        begin = (begin + b - 1) / b * b;
        end = end == t->numel ? end : (end + b - 1) / b * b;
        if (end > t->numel) end = t->numel;
        if (begin < end) update_lean_range(t, begin, end, s, step);
        return;
    }
    pick_range(t, s->rule)(t, begin, end, s);
}

/* Elements [block * UPDATE_BLOCK_ELEMS, + UPDATE_BLOCK_ELEMS) of the concatenation. */
static void update_block(void *context, int64_t block) {
    const update_work *w = (const update_work *)context;
    int64_t low = block * UPDATE_BLOCK_ELEMS, high = low + UPDATE_BLOCK_ELEMS < w->total ? low + UPDATE_BLOCK_ELEMS : w->total;
    int64_t i;
    for (i = tensor_holding(w->starts, w->n_tensors, low); i < w->n_tensors && w->starts[i] < high; i++) {
        const fadam_tensor *t = &w->tensors[i];
        int64_t begin = (low > w->starts[i] ? low : w->starts[i]) - w->starts[i];
        int64_t end = (high < w->starts[i + 1] ? high : w->starts[i + 1]) - w->starts[i];
        if (begin < end) update_range_of(t, begin, end, &w->scalars[t->group], w->step);
    }
}

void fadam_cpu_update_tensors(fadam_cpu_pool *pool, const fadam_tensor *tensors, int64_t n_tensors,
                              const fadam_group_scalars *scalars, int64_t step) {
    update_work work;
    int64_t i, total = 0;
    int n_threads;
    for (i = 0; i < n_tensors; i++) total += tensors[i].numel;
    n_threads = threads_for(pool, total, UPDATE_BLOCK_ELEMS);
    /* A pool that another thread is using, or no room for the split: this thread alone, same bits. */
    if (n_threads > 1 && fadam_cpu_pool_acquire(pool)) {
        int64_t *starts = (int64_t *)fadam_cpu_pool_scratch(pool, (size_t)(n_tensors + 1) * sizeof(int64_t));
        if (starts) {
            tensor_starts(tensors, n_tensors, starts);
            work.tensors = tensors;
            work.n_tensors = n_tensors;
            work.scalars = scalars;
            work.starts = starts;
            work.total = total;
            work.step = step;
            fadam_cpu_pool_run(pool, (total + UPDATE_BLOCK_ELEMS - 1) / UPDATE_BLOCK_ELEMS, update_block, &work);
            fadam_cpu_pool_release(pool);
            return;
        }
        fadam_cpu_pool_release(pool);
    }
    for (i = 0; i < n_tensors; i++)
        update_range_of(&tensors[i], 0, tensors[i].numel, &scalars[tensors[i].group], step);
}

/* ---- the fused step's sum of squares, in fadam_reference_sum_of_squares's order ---- */

#define NORM_LANES 16

/* One chunk's sum: element k of the chunk into lane k % 16, then the lanes added 0 to 15. The lanes
 * are the vector registers' (gcc keeps the order: no reassociation without -ffast-math). */
static inline __attribute__((always_inline)) double chunk_sum(const void *grad, int kind, int64_t begin, int64_t end) {
    double lanes[NORM_LANES] = {0}, sum;
    int64_t n = end - begin, k = 0;
    int j;
    for (; k + NORM_LANES <= n; k += NORM_LANES)
        for (j = 0; j < NORM_LANES; j++) {
            double g = load_kind(grad, kind, begin + k + j);
            lanes[j] += g * g;
        }
    for (j = 0; k + j < n; j++) {
        double g = load_kind(grad, kind, begin + k + j);
        lanes[j] += g * g;
    }
    sum = lanes[0];
    for (j = 1; j < NORM_LANES; j++) sum += lanes[j];
    return sum;
}

FADAM_CPU_CLONES static double chunk_sum_f32(const void *grad, int64_t begin, int64_t end) {
    return chunk_sum(grad, KIND_F32, begin, end);
}
FADAM_CPU_CLONES static double chunk_sum_bf16(const void *grad, int64_t begin, int64_t end) {
    return chunk_sum(grad, KIND_BF16, begin, end);
}
FADAM_CPU_CLONES static double chunk_sum_f16(const void *grad, int64_t begin, int64_t end) {
    return chunk_sum(grad, KIND_F16, begin, end);
}

static double tensor_chunk_sum(const fadam_tensor *t, int64_t chunk) {
    int64_t begin = chunk * FADAM_CHUNK_ELEMS, end = begin + FADAM_CHUNK_ELEMS < t->numel ? begin + FADAM_CHUNK_ELEMS : t->numel;
    if (t->grad_dtype == FADAM_BFLOAT16) return chunk_sum_bf16(t->grad, begin, end);
    if (t->grad_dtype == FADAM_FLOAT16) return chunk_sum_f16(t->grad, begin, end);
    return chunk_sum_f32(t->grad, begin, end);
}

static int64_t chunks_of(const fadam_tensor *t) { return (t->numel + FADAM_CHUNK_ELEMS - 1) / FADAM_CHUNK_ELEMS; }

typedef struct norm_work {
    const fadam_tensor *tensors;
    int64_t n_tensors;
    const int64_t *starts;      /* n_tensors + 1 element offsets */
    const int64_t *first_chunk; /* n_tensors + 1: tensor i's chunks are partials[first_chunk[i]...] */
    double *partials;
} norm_work;

/* Block b of the concatenation, elements [b * FADAM_CHUNK_ELEMS, + FADAM_CHUNK_ELEMS), holds the
 * chunks that start in it; each chunk is summed whole, by one thread, into its own slot, so no sum
 * depends on the split. */
static void norm_block(void *context, int64_t block) {
    const norm_work *w = (const norm_work *)context;
    int64_t low = block * FADAM_CHUNK_ELEMS, high = low + FADAM_CHUNK_ELEMS, i, chunk;
    i = tensor_holding(w->starts, w->n_tensors, low);
    chunk = (low - w->starts[i] + FADAM_CHUNK_ELEMS - 1) / FADAM_CHUNK_ELEMS; /* the first starting at or after low */
    for (; i < w->n_tensors; i++, chunk = 0) {
        const fadam_tensor *t = &w->tensors[i];
        int64_t n_chunks = chunks_of(t);
        for (; chunk < n_chunks && w->starts[i] + chunk * FADAM_CHUNK_ELEMS < high; chunk++)
            w->partials[w->first_chunk[i] + chunk] = tensor_chunk_sum(t, chunk);
        if (chunk < n_chunks || w->starts[i + 1] >= high) break;
    }
}

double fadam_cpu_sum_of_squares(fadam_cpu_pool *pool, const fadam_tensor *tensors, int64_t n_tensors) {
    double sum = 0.0;
    int64_t i, chunk, total = 0;
    int n_threads;
    for (i = 0; i < n_tensors; i++) total += tensors[i].numel;
    n_threads = threads_for(pool, total, FADAM_CHUNK_ELEMS);
    if (n_threads > 1 && fadam_cpu_pool_acquire(pool)) {
        size_t index_bytes = (size_t)(n_tensors + 1) * sizeof(int64_t);
        int64_t n_chunks = 0;
        for (i = 0; i < n_tensors; i++) n_chunks += chunks_of(&tensors[i]);
        {
            unsigned char *scratch = (unsigned char *)fadam_cpu_pool_scratch(pool, 2 * index_bytes + (size_t)n_chunks * sizeof(double));
            if (scratch) {
                norm_work work;
                int64_t *starts = (int64_t *)scratch, *first_chunk = (int64_t *)(scratch + index_bytes);
                double *partials = (double *)(scratch + 2 * index_bytes);
                tensor_starts(tensors, n_tensors, starts);
                first_chunk[0] = 0;
                for (i = 0; i < n_tensors; i++) first_chunk[i + 1] = first_chunk[i] + chunks_of(&tensors[i]);
                work.tensors = tensors;
                work.n_tensors = n_tensors;
                work.starts = starts;
                work.first_chunk = first_chunk;
                work.partials = partials;
                fadam_cpu_pool_run(pool, (total + FADAM_CHUNK_ELEMS - 1) / FADAM_CHUNK_ELEMS, norm_block, &work);
                for (chunk = 0; chunk < n_chunks; chunk++) sum += partials[chunk];
                fadam_cpu_pool_release(pool);
                return sum;
            }
        }
        fadam_cpu_pool_release(pool);
    }
    for (i = 0; i < n_tensors; i++)
        for (chunk = 0; chunk < chunks_of(&tensors[i]); chunk++) sum += tensor_chunk_sum(&tensors[i], chunk);
    return sum;
}
