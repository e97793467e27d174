/* reference.c - the CPU implementation of the update: what the tests compare the kernels to, and the
 * CPU device of the managed optimizer. Written to be read first: one element at a time, each by the
 * group's rule function (kernels/rules.h), in the order of docs/NUMERICS.md. Build it with -ffp-contract=off so no multiply-add is fused. */
#include <math.h>
#include <string.h>

#include "internal.h"
#include "state_layout.h"

static uint32_t float_bits(float value) {
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    return bits;
}

static float bits_float(uint32_t bits) {
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

uint16_t fadam_float_to_bf16_bits(float value) {
    uint32_t bits = float_bits(value);
    if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((bits >> 16) | 0x0040u); /* NaN stays NaN */
    /* Add just under half an ulp of bf16, plus one when the kept part is odd: ties go to even. */
    bits += 0x7FFFu + ((bits >> 16) & 1u);
    return (uint16_t)(bits >> 16);
}

float fadam_bf16_bits_to_float(uint16_t bits) { return bits_float((uint32_t)bits << 16); }

uint16_t fadam_float_to_fp16_bits(float value) {
    uint32_t bits = float_bits(value);
    uint32_t sign = (bits >> 16) & 0x8000u, magnitude = bits & 0x7FFFFFFFu;
    uint32_t exponent, mantissa, shift, kept, dropped, halfway;
    if (magnitude > 0x7F800000u) return (uint16_t)(sign | 0x7E00u);  /* NaN */
    if (magnitude >= 0x477FF000u) return (uint16_t)(sign | 0x7C00u); /* >= 65520 rounds to infinity */
    if (magnitude >= 0x38800000u) {                                  /* normal in fp16 */
        uint32_t rebiased = magnitude - (112u << 23);                /* exponent bias 127 -> 15 */
        kept = rebiased >> 13;
        dropped = rebiased & 0x1FFFu;
        if (dropped > 0x1000u || (dropped == 0x1000u && (kept & 1u))) kept++; /* a carry bumps the exponent */
        return (uint16_t)(sign | kept);
    }
    /* Subnormal in fp16: count units of 2^-24. */
    exponent = magnitude >> 23;
    if (exponent < 102) return (uint16_t)sign; /* below 2^-25: rounds to zero */
    mantissa = (magnitude & 0x7FFFFFu) | 0x800000u;
    shift = 126 - exponent; /* 14..24 */
    kept = mantissa >> shift;
    dropped = mantissa & ((1u << shift) - 1u);
    halfway = 1u << (shift - 1);
    if (dropped > halfway || (dropped == halfway && (kept & 1u))) kept++;
    return (uint16_t)(sign | kept);
}

float fadam_fp16_bits_to_float(uint16_t half) {
    uint32_t sign = (uint32_t)(half & 0x8000u) << 16, exponent = (half >> 10) & 0x1Fu, mantissa = half & 0x3FFu;
    if (exponent == 0x1F) return bits_float(sign | 0x7F800000u | (mantissa << 13)); /* Inf or NaN */
    if (exponent != 0) return bits_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
    /* Subnormal: mantissa * 2^-24, exact in float. */
    return sign ? -(float)mantissa * 0x1p-24f : (float)mantissa * 0x1p-24f;
}

static float load_as_float(const void *buffer, fadam_dtype dtype, int64_t i) {
    switch (dtype) {
    case FADAM_BFLOAT16: return fadam_bf16_bits_to_float(((const uint16_t *)buffer)[i]);
    case FADAM_FLOAT16: return fadam_fp16_bits_to_float(((const uint16_t *)buffer)[i]);
    default: return ((const float *)buffer)[i];
    }
}

static void store_from_float(void *buffer, fadam_dtype dtype, int64_t i, float value) {
    switch (dtype) {
    case FADAM_BFLOAT16: ((uint16_t *)buffer)[i] = fadam_float_to_bf16_bits(value); break;
    case FADAM_FLOAT16: ((uint16_t *)buffer)[i] = fadam_float_to_fp16_bits(value); break;
    default: ((float *)buffer)[i] = value; break;
    }
}

/* A param from its fp32 master: bf16 by fadam_bf16_from_master (ties away from zero, so the remainder
 * layout equals the fp32-master one bit for bit; kernels/state_layout.h), fp16 to nearest even. */
static void store_param_from_master(void *param, fadam_dtype dtype, int64_t i, float value) {
    if (dtype == FADAM_BFLOAT16) ((uint16_t *)param)[i] = fadam_bf16_from_master(value);
    else store_from_float(param, dtype, i, value);
}

/* A rule's state k of tensor t (the rule list names the field), or NULL past its states. */
static float *rule_state(const fadam_tensor *t, int rule, int k) {
    int field = fadam_rule_state_field(rule, k);
    return field == FADAM_FIELD_NONE ? NULL : (float *)fadam_tensor_field(t, field);
}

/* ---- lean layouts (docs/STATE_LAYOUTS.md): the same rule; only the states' loads and stores differ ---- */

/* A moment field's value at i: fp32, bf16, or an 8-bit code with its block's scale. */
static float load_moment(const fadam_tensor *t, int field, int64_t i) {
    const void *data = fadam_tensor_field(t, field);
    if (t->moment_format == FADAM_MOMENT_BF16) return fadam_bf16_to_float(((const uint16_t *)data)[i]);
    if (t->moment_format == FADAM_MOMENT_INT8) {
        int64_t block = i / FADAM_MOMENT_BLOCK;
        if (field == FADAM_FIELD_EXP_AVG_SQ) return fadam_q8_dequantize_v(((const uint8_t *)data)[i], t->exp_avg_sq_scales[block]);
        return fadam_q8_dequantize_m(((const int8_t *)data)[i], t->exp_avg_scales[block]);
    }
    return ((const float *)data)[i];
}

/* Stores values[0..n) of a moment field at [first, first + n), one 8-bit block at most: bf16 with
 * stochastic rounding (one draw per element, fadam_random_bits(seed, t, element_offset + i, 0): its low
 * 16 bits round exp_avg, its high 16 bits exp_avg_sq), 8-bit codes under the block's new scale (its
 * absmax), or fp32. */
void fadam_store_moment_block(const fadam_tensor *t, int field, int64_t step, int64_t first, int n, const float *values) {
    void *data = fadam_tensor_field(t, field);
    int k;
    if (t->moment_format == FADAM_MOMENT_BF16) {
        uint64_t key = fadam_random_key(t->rounding_seed, (uint64_t)step, 0);
        for (k = 0; k < n; k++) {
            uint32_t bits = fadam_random_bits_at(key, (uint64_t)(t->element_offset + first + k));
            ((uint16_t *)data)[first + k] =
                fadam_round_bf16_stochastic(values[k], field == FADAM_FIELD_EXP_AVG_SQ ? bits >> 16 : bits);
        }
    } else if (t->moment_format == FADAM_MOMENT_INT8) {
        int64_t block = first / FADAM_MOMENT_BLOCK;
        if (field == FADAM_FIELD_EXP_AVG_SQ) t->exp_avg_sq_scales[block] = fadam_q8_quantize_v_block(values, n, (uint8_t *)data + first);
        else t->exp_avg_scales[block] = fadam_q8_quantize_m_block(values, n, (int8_t *)data + first);
    } else {
        for (k = 0; k < n; k++) ((float *)data)[first + k] = values[k];
    }
}

void fadam_reference_update_lean(const fadam_tensor *t, const fadam_group_scalars *s, int64_t step, int64_t begin,
                                 int64_t end) {
    const fadam_loop_scalars loop = fadam_loop_scalars_of(s);
    const int field0 = fadam_rule_state_field(s->rule, 0), field1 = fadam_rule_state_field(s->rule, 1);
    const int remainder = t->master_format == FADAM_MASTER_REMAINDER;
    int64_t first;
    for (first = begin; first < end; first += FADAM_MOMENT_BLOCK) {
        float m[FADAM_MOMENT_BLOCK], v[FADAM_MOMENT_BLOCK];
        int n = (int)(end - first < FADAM_MOMENT_BLOCK ? end - first : FADAM_MOMENT_BLOCK), k;
        for (k = 0; k < n; k++) {
            int64_t i = first + k;
            float p;
            if (remainder) p = fadam_master_join(((const uint16_t *)t->param)[i], ((const uint16_t *)t->master)[i]);
            else p = t->master ? ((const float *)t->master)[i] : load_as_float(t->param, t->param_dtype, i);
            m[k] = load_moment(t, field0, i);
            v[k] = field1 == FADAM_FIELD_NONE ? 0.0f : load_moment(t, field1, i);
            fadam_rule_element(s->rule, &p, load_as_float(t->grad, t->grad_dtype, i), &m[k], &v[k], &loop);
            if (remainder) {
                uint16_t low;
                ((uint16_t *)t->param)[i] = fadam_master_split(p, &low);
                ((uint16_t *)t->master)[i] = low;
            } else {
                if (t->master) {
                    ((float *)t->master)[i] = p;
                    store_param_from_master(t->param, t->param_dtype, i, p);
                } else {
                    store_from_float(t->param, t->param_dtype, i, p);
                }
            }
        }
        fadam_store_moment_block(t, field0, step, first, n, m);
        if (field1 != FADAM_FIELD_NONE) fadam_store_moment_block(t, field1, step, first, n, v);
    }
}

void fadam_reference_update(const fadam_tensor *t, const fadam_group_scalars *s, int64_t step) {
    const fadam_loop_scalars loop = fadam_loop_scalars_of(s); /* maximize and decoupled decay folded in */
    float *state0 = rule_state(t, s->rule, 0), *state1 = rule_state(t, s->rule, 1), *master = (float *)t->master;
    int64_t i;
    if (fadam_tensor_is_lean(t)) {
        fadam_reference_update_lean(t, s, step, 0, t->numel);
        return;
    }
    for (i = 0; i < t->numel; i++) {
        float p = master ? master[i] : load_as_float(t->param, t->param_dtype, i);
        float g = load_as_float(t->grad, t->grad_dtype, i);
        float m = state0[i], v = state1 ? state1[i] : 0.0f;
        fadam_rule_element(s->rule, &p, g, &m, &v, &loop); /* kernels/rules.h */
        state0[i] = m;
        if (state1) state1[i] = v;
        if (master) {
            master[i] = p;
            store_param_from_master(t->param, t->param_dtype, i, p);
        } else {
            store_from_float(t->param, t->param_dtype, i, p);
        }
    }
}

fadam_status fadam_cpu_update_all(fadam_cpu_pool *pool, const fadam_tensor *tensors, int64_t n_tensors,
                                  const fadam_hparams *groups, int n_groups, const fadam_step_source *source,
                                  const fadam_device_state *state, const char *function) {
    fadam_group_scalars scalars[FADAM_MAX_GROUPS];
    int64_t step = source->device_step ? *source->device_step : source->step;
    int g;
    if (state) {
        if (state->counters.skipped) return FADAM_SUCCESS;
        step = state->counters.step;
    }
    if (step < 1)
        return fadam_fail(FADAM_ERR_INVALID_VALUE, "%s: step=%lld must be >= 1 (1 is the first step)", function,
                          (long long)step);
    for (g = 0; g < n_groups; g++)
        scalars[g] = fadam_scalars_for_step(&groups[g], g, source->step, source->device_step, source->device_lr, state);
    fadam_cpu_update_tensors(pool, tensors, n_tensors, scalars, step);
    return FADAM_SUCCESS;
}

/* The checks of fadam_cpu_step and fadam_cpu_step_pool, then the update. */
static fadam_status checked_cpu_step(fadam_cpu_pool *pool, const fadam_tensor *tensors, int64_t n_tensors,
                                     const fadam_hparams *groups, int n_groups, const fadam_step_source *source,
                                     const char *function) {
    fadam_status status;
    int g;
    FADAM_REQUIRE_NOT_NULL(groups, function);
    FADAM_REQUIRE_NOT_NULL(source, function);
    status = fadam_table_check_states_apart(tensors, n_tensors, n_groups, function);
    if (status != FADAM_SUCCESS) return status;
    for (g = 0; g < n_groups; g++) {
        status = fadam_check_hparams(&groups[g], function, g);
        if (status != FADAM_SUCCESS) return status;
    }
    status = fadam_check_rule_states(tensors, n_tensors, groups, function);
    if (status != FADAM_SUCCESS) return status;
    return fadam_cpu_update_all(pool, tensors, n_tensors, groups, n_groups, source, NULL, function);
}

fadam_status fadam_cpu_step(const fadam_tensor *tensors, int64_t n_tensors, const fadam_hparams *groups, int n_groups,
                            const fadam_step_source *source) {
    fadam_clear_error();
    return checked_cpu_step(NULL, tensors, n_tensors, groups, n_groups, source, "fadam_cpu_step");
}

fadam_status fadam_cpu_step_scaled(fadam_cpu_pool *pool, const fadam_tensor *tensors, int64_t n_tensors,
                                   const fadam_hparams *groups, int n_groups, const fadam_step_source *source,
                                   const fadam_step_scaling *scaling) {
    fadam_group_scalars scalars[FADAM_MAX_GROUPS];
    fadam_status status;
    int64_t step;
    int g;
    fadam_clear_error();
    FADAM_REQUIRE_NOT_NULL(groups, "fadam_cpu_step_scaled");
    FADAM_REQUIRE_NOT_NULL(source, "fadam_cpu_step_scaled");
    status = fadam_table_check_states_apart(tensors, n_tensors, n_groups, "fadam_cpu_step_scaled");
    if (status != FADAM_SUCCESS) return status;
    for (g = 0; g < n_groups; g++) {
        status = fadam_check_hparams(&groups[g], "fadam_cpu_step_scaled", g);
        if (status != FADAM_SUCCESS) return status;
    }
    status = fadam_check_rule_states(tensors, n_tensors, groups, "fadam_cpu_step_scaled");
    if (status != FADAM_SUCCESS) return status;
    step = source->device_step ? *source->device_step : source->step;
    if (step < 1)
        return fadam_fail(FADAM_ERR_INVALID_VALUE, "fadam_cpu_step_scaled: step=%lld must be >= 1 (1 is the first step)",
                          (long long)step);
    /* Checked before the flag: a bad call fails whatever the flag says. */
    if (scaling && scaling->found_inf && *scaling->found_inf != 0.0f) return FADAM_SUCCESS;
    for (g = 0; g < n_groups; g++) {
        scalars[g] = fadam_scalars_for_step(&groups[g], g, source->step, source->device_step, source->device_lr, NULL);
        if (scaling && scaling->grad_multiplier) scalars[g].grad_scale = scalars[g].grad_scale * *scaling->grad_multiplier;
    }
    fadam_cpu_update_tensors(pool, tensors, n_tensors, scalars, step);
    return FADAM_SUCCESS;
}

fadam_status fadam_cpu_step_pool(fadam_cpu_pool *pool, const fadam_tensor *tensors, int64_t n_tensors,
                                 const fadam_hparams *groups, int n_groups, const fadam_step_source *source) {
    fadam_clear_error();
    return checked_cpu_step(pool, tensors, n_tensors, groups, n_groups, source, "fadam_cpu_step_pool");
}

/* The fused step's sum of squares, in the one order the CPU path keeps whatever its threads: per
 * tensor, per chunk of FADAM_CHUNK_ELEMS elements, 16 running sums (element k of the chunk into sum
 * k % 16) added 0 to 15; then the chunks' sums in order. In double: squares of fp32 gradients are
 * exact there and neither overflow nor underflow. */
double fadam_reference_sum_of_squares(const fadam_tensor *tensors, int64_t n_tensors) {
    double sum = 0.0;
    int64_t i, begin, k;
    for (i = 0; i < n_tensors; i++)
        for (begin = 0; begin < tensors[i].numel; begin += FADAM_CHUNK_ELEMS) {
            int64_t end = begin + FADAM_CHUNK_ELEMS < tensors[i].numel ? begin + FADAM_CHUNK_ELEMS : tensors[i].numel;
            double lanes[16] = {0}, chunk;
            int j;
            for (k = begin; k < end; k++) {
                double g = load_as_float(tensors[i].grad, tensors[i].grad_dtype, k);
                lanes[(k - begin) % 16] += g * g;
            }
            chunk = lanes[0];
            for (j = 1; j < 16; j++) chunk += lanes[j];
            sum += chunk;
        }
    return sum;
}
