/* rules.h - the update rules, written once: each rule's per-step scalars and its update of one
 * element, and the one list of rules from which their names, state counts, checks, checkpoint keys and
 * the dispatch of the kernel, the C reference, the CPU path and the benchmark come. Nothing else knows a
 * rule's math. Plain C that gcc, g++ and nvcc accept (docs/NUMERICS.md defines the order of operations).
 *
 * Adding a rule: its scalars function and element function here, one FADAM_RULES line, its value in
 * fadam_mode (include/fusedadam.h), its hyperparameter check in csrc/hparams.c, tests and docs. */
#ifndef FADAM_RULES_H
#define FADAM_RULES_H

#include <math.h>
#include <stdint.h>

#include "fusedadam.h"

#if defined(__CUDACC__)
#define FADAM_HOST_DEVICE __host__ __device__
#else
#define FADAM_HOST_DEVICE
#endif

#if defined(__cplusplus)
#define FADAM_STATIC_ASSERT(condition, message) static_assert(condition, message)
#else
#define FADAM_STATIC_ASSERT(condition, message) _Static_assert(condition, message)
#endif

/* The public fadam_tensor fields that hold a rule's states; their names are the checkpoint keys
 * (".exp_avg", ".exp_avg_sq"). X(FIELD, member). */
#define FADAM_STATE_FIELDS(X)                                                                                \
    X(FADAM_FIELD_EXP_AVG, exp_avg)                                                                          \
    X(FADAM_FIELD_EXP_AVG_SQ, exp_avg_sq)
#define FADAM_FIELD_ENUM_(field, member) field,
enum fadam_state_field { FADAM_STATE_FIELDS(FADAM_FIELD_ENUM_) FADAM_FIELD_COUNT, FADAM_FIELD_NONE = -1 };
#undef FADAM_FIELD_ENUM_
/* The most states one rule keeps (besides the master). */
#define FADAM_MAX_RULE_STATES 2

/* What every element of a group needs for step t, computed once per step per group by the rule's
 * scalars function (fields a rule does not use hold neutral values). */
typedef struct fadam_group_scalars {
    float beta1, one_minus_beta1;
    float beta2, one_minus_beta2;
    float eps;
    float weight_decay;
    float decay_factor;           /* 1 - lr*wd: decoupled decay (ADAMW, LION) */
    float step_size;              /* lr / (1 - beta1^t), or lr without bias correction (LION: lr) */
    float bias_correction2_sqrt;  /* sqrt(1 - beta2^t), or 1 */
    float grad_scale;             /* 1/loss_scale * clip coefficient; exactly 1 in a plain step */
    int32_t coupled_decay;        /* ADAM_L2 with wd != 0: g += wd*p (PyTorch skips it for wd == 0) */
    int32_t decoupled_decay;      /* ADAMW, LION: p *= decay_factor */
    int32_t maximize;
    int32_t rule;                 /* the group's fadam_mode: which FADAM_RULES entry updates it */
} fadam_group_scalars;

/* A group's scalars as an element loop holds them: maximize folded into the gradient scale
 * (g * -scale is -(g * scale) exactly) and decoupled decay into a factor (p * 1 is p exactly). */
typedef struct fadam_loop_scalars {
    float beta1, one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay, decay_factor, step_size,
        bias_correction2_sqrt, grad_scale;
    int coupled_decay;
} fadam_loop_scalars;

static inline FADAM_HOST_DEVICE fadam_loop_scalars fadam_loop_scalars_of(const fadam_group_scalars *s) {
    fadam_loop_scalars u;
    u.beta1 = s->beta1;
    u.one_minus_beta1 = s->one_minus_beta1;
    u.beta2 = s->beta2;
    u.one_minus_beta2 = s->one_minus_beta2;
    u.eps = s->eps;
    u.weight_decay = s->weight_decay;
    u.decay_factor = s->decoupled_decay ? s->decay_factor : 1.0f;
    u.step_size = s->step_size;
    u.bias_correction2_sqrt = s->bias_correction2_sqrt;
    u.grad_scale = s->maximize ? -s->grad_scale : s->grad_scale;
    u.coupled_decay = s->coupled_decay;
    return u;
}

/* beta^t by repeated squaring in double: only IEEE multiplications, so the host and the device
 * get the same bits (pow() implementations differ in their last ulp). */
static inline FADAM_HOST_DEVICE double fadam_pow_int(double base, int64_t exponent) {
    double result = 1.0;
    while (exponent > 0) {
        if (exponent & 1) result *= base;
        base *= base;
        exponent >>= 1;
    }
    return result;
}

/* ---- Adam (ADAMW and ADAM_L2) ---- */

/* Scalars in double, rounded to float once; sqrt and division are correctly rounded on both sides,
 * so every field is bit-identical on the CPU and the GPU. */
static inline FADAM_HOST_DEVICE fadam_group_scalars fadam_adam_scalars(const fadam_hparams *hp, float lr, int64_t step) {
    fadam_group_scalars s;
    double bias_correction1 = 1.0, bias_correction2 = 1.0;
    if (hp->bias_correction) {
        bias_correction1 = 1.0 - fadam_pow_int((double)hp->beta1, step);
        bias_correction2 = 1.0 - fadam_pow_int((double)hp->beta2, step);
    }
    s.beta1 = hp->beta1;
    s.one_minus_beta1 = (float)(1.0 - (double)hp->beta1);
    s.beta2 = hp->beta2;
    s.one_minus_beta2 = (float)(1.0 - (double)hp->beta2);
    s.eps = hp->eps;
    s.weight_decay = hp->weight_decay;
    s.decay_factor = (float)(1.0 - (double)lr * (double)hp->weight_decay);
    s.step_size = (float)((double)lr / bias_correction1);
    s.bias_correction2_sqrt = (float)sqrt(bias_correction2);
    s.coupled_decay = hp->mode == FADAM_ADAM_L2 && hp->weight_decay != 0.0f;
    s.decoupled_decay = hp->mode == FADAM_ADAMW;
    s.maximize = hp->maximize != 0;
    s.grad_scale = 1.0f;
    s.rule = (int32_t)hp->mode;
    return s;
}

/* One element (states: exp_avg, exp_avg_sq), in the order of docs/NUMERICS.md. */
static inline FADAM_HOST_DEVICE void fadam_adam_element(float *param, float grad, float *exp_avg, float *exp_avg_sq,
                                                        const fadam_loop_scalars *s) {
    float p = *param, m = *exp_avg, v = *exp_avg_sq, denom;
    grad = grad * s->grad_scale; /* unscale and clip (exactly 1 in a plain step), negated to maximize */
    grad = s->coupled_decay ? grad + s->weight_decay * p : grad; /* Adam + L2: decay enters the moments */
    p = p * s->decay_factor;                                 /* AdamW: decay outside the adaptive term */
    m = s->beta1 * m + s->one_minus_beta1 * grad;
    v = s->beta2 * v + s->one_minus_beta2 * grad * grad;
    denom = sqrtf(v) / s->bias_correction2_sqrt + s->eps;
    *param = p - s->step_size * m / denom;
    *exp_avg = m;
    *exp_avg_sq = v;
}

/* ---- Lion (Chen et al. 2023): one moment, the sign of an interpolation, decoupled decay ---- */

static inline FADAM_HOST_DEVICE fadam_group_scalars fadam_lion_scalars(const fadam_hparams *hp, float lr, int64_t step) {
    fadam_group_scalars s;
    (void)step; /* no bias correction: the sign does not see the moment's scale */
    s.beta1 = hp->beta1;
    s.one_minus_beta1 = (float)(1.0 - (double)hp->beta1);
    s.beta2 = hp->beta2;
    s.one_minus_beta2 = (float)(1.0 - (double)hp->beta2);
    s.eps = 0.0f;
    s.weight_decay = hp->weight_decay;
    s.decay_factor = (float)(1.0 - (double)lr * (double)hp->weight_decay);
    s.step_size = lr;
    s.bias_correction2_sqrt = 1.0f;
    s.coupled_decay = 0;
    s.decoupled_decay = 1;
    s.maximize = hp->maximize != 0;
    s.grad_scale = 1.0f;
    s.rule = (int32_t)hp->mode;
    return s;
}

/* torch.sign: -1, 0 or 1; a zero keeps its sign and NaN stays NaN (both are returned as they are). */
static inline FADAM_HOST_DEVICE float fadam_sign(float x) {
    float sign = x > 0.0f ? 1.0f : x; /* two selects, not nested: gcc keeps them as vector blends */
    return x < 0.0f ? -1.0f : sign;
}

/* One element (state: exp_avg): c = b1*m + (1-b1)*g; p = p*(1 - lr*wd) - lr*sign(c); m = b2*m + (1-b2)*g. */
static inline FADAM_HOST_DEVICE void fadam_lion_element(float *param, float grad, float *exp_avg, float *unused,
                                                        const fadam_loop_scalars *s) {
    float m = *exp_avg, direction;
    (void)unused;
    grad = grad * s->grad_scale; /* unscale and clip, negated to maximize */
    direction = fadam_sign(s->beta1 * m + s->one_minus_beta1 * grad);
    *param = *param * s->decay_factor - s->step_size * direction;
    *exp_avg = s->beta2 * m + s->one_minus_beta2 * grad;
}

/* ---- the list of rules ----
 * X(MODE, id, "name", n_states, state 0's field, state 1's field, scalars, check, element)
 *   MODE: its fadam_mode value; "name": the checkpoint's "mode" string; the states' fields name the
 *   fadam_tensor members that hold them (and their checkpoint keys), FADAM_FIELD_NONE past n_states;
 *   scalars(hparams, lr, t) -> fadam_group_scalars; check(hparams, where) -> fadam_status (csrc/hparams.c;
 *   where begins its messages, e.g. "fadam_add_group: group 1"); element(&param, grad, &state0, &state1,
 *   loop scalars). */
#define FADAM_RULES(X)                                                                                         \
    X(FADAM_ADAMW, adamw, "adamw", 2, FADAM_FIELD_EXP_AVG, FADAM_FIELD_EXP_AVG_SQ, fadam_adam_scalars,         \
      fadam_check_adam_hparams, fadam_adam_element)                                                            \
    X(FADAM_ADAM_L2, adam_l2, "adam_l2", 2, FADAM_FIELD_EXP_AVG, FADAM_FIELD_EXP_AVG_SQ, fadam_adam_scalars,   \
      fadam_check_adam_hparams, fadam_adam_element)                                                            \
    X(FADAM_LION, lion, "lion", 1, FADAM_FIELD_EXP_AVG, FADAM_FIELD_NONE, fadam_lion_scalars,                  \
      fadam_check_lion_hparams, fadam_lion_element)

/* fadam_mode's values: every one has a line above (checked below). */
#define FADAM_RULE_COUNT 3

#define FADAM_RULE_INDEX_(mode, id, ...) FADAM_RULE_INDEX_##id,
enum fadam_rule_index { FADAM_RULES(FADAM_RULE_INDEX_) FADAM_RULES_LISTED };
#undef FADAM_RULE_INDEX_
FADAM_STATIC_ASSERT(FADAM_RULES_LISTED == FADAM_RULE_COUNT, "a fadam_mode without a FADAM_RULES line, or the reverse");
/* Each line sits at its mode's value, so tables generated from the list are indexed by the mode. */
#define FADAM_RULE_AT_ITS_INDEX_(mode, id, ...)                                                                \
    FADAM_STATIC_ASSERT((int)(mode) == (int)FADAM_RULE_INDEX_##id, "FADAM_RULES out of fadam_mode order: " #id);
FADAM_RULES(FADAM_RULE_AT_ITS_INDEX_)
#undef FADAM_RULE_AT_ITS_INDEX_
#define FADAM_RULE_STATES_FIT_(mode, id, name, n_states, ...)                                                  \
    FADAM_STATIC_ASSERT(n_states >= 1 && n_states <= FADAM_MAX_RULE_STATES, "state count of " #id);
FADAM_RULES(FADAM_RULE_STATES_FIT_)
#undef FADAM_RULE_STATES_FIT_

/* A known mode: a FADAM_RULES line exists for it. */
static inline FADAM_HOST_DEVICE int fadam_rule_known(int rule) { return rule >= 0 && rule < FADAM_RULE_COUNT; }

/* The states (besides the master) that `rule` keeps. */
static inline FADAM_HOST_DEVICE int fadam_rule_state_count(int rule) {
    switch (rule) {
#define FADAM_RULE_CASE_(mode, id, name, n_states, ...) \
    case mode: return n_states;
        FADAM_RULES(FADAM_RULE_CASE_)
#undef FADAM_RULE_CASE_
    default: return 0;
    }
}

/* The fadam_tensor field holding state k of `rule` (FADAM_FIELD_NONE past its states). */
static inline FADAM_HOST_DEVICE int fadam_rule_state_field(int rule, int k) {
    switch (rule) {
#define FADAM_RULE_CASE_(mode, id, name, n_states, field0, field1, ...) \
    case mode: return k == 0 ? (int)(field0) : k == 1 ? (int)(field1) : (int)FADAM_FIELD_NONE;
        FADAM_RULES(FADAM_RULE_CASE_)
#undef FADAM_RULE_CASE_
    default: return FADAM_FIELD_NONE;
    }
}

/* The rule's name ("adamw", "adam_l2", "lion"): the checkpoint's "mode" value; NULL for an unknown one. */
static inline const char *fadam_rule_name(int rule) {
    switch (rule) {
#define FADAM_RULE_CASE_(mode, id, name, ...) \
    case mode: return name;
        FADAM_RULES(FADAM_RULE_CASE_)
#undef FADAM_RULE_CASE_
    default: return 0;
    }
}

/* The checkpoint key (".exp_avg" without its dot) of a state field. */
static inline const char *fadam_state_field_name(int field) {
    switch (field) {
#define FADAM_FIELD_CASE_(field, member) \
    case field: return #member;
        FADAM_STATE_FIELDS(FADAM_FIELD_CASE_)
#undef FADAM_FIELD_CASE_
    default: return 0;
    }
}

/* Step t's scalars of a group, by its rule (a known mode: the callers checked it). */
static inline FADAM_HOST_DEVICE fadam_group_scalars fadam_compute_group_scalars(const fadam_hparams *hp, float lr,
                                                                               int64_t step) {
    switch (hp->mode) {
#define FADAM_RULE_CASE_(mode, id, name, n_states, field0, field1, scalars, ...) \
    case mode: return scalars(hp, lr, step);
        FADAM_RULES(FADAM_RULE_CASE_)
#undef FADAM_RULE_CASE_
    default: return fadam_adam_scalars(hp, lr, step);
    }
}

/* One element by `rule` (a constant after inlining in every hot loop, so the switch folds away). */
static inline FADAM_HOST_DEVICE void fadam_rule_element(int rule, float *param, float grad, float *state0, float *state1,
                                                        const fadam_loop_scalars *s) {
    switch (rule) {
#define FADAM_RULE_CASE_(mode, id, name, n_states, field0, field1, scalars, check, element) \
    case mode: element(param, grad, state0, state1, s); break;
        FADAM_RULES(FADAM_RULE_CASE_)
#undef FADAM_RULE_CASE_
    default: break;
    }
}

#endif
