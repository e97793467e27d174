/* hparams.c - hyperparameters: the defaults, their validation, and the checks of a step source. */
#include <string.h>

#include "internal.h"

fadam_hparams fadam_hparams_default(void) {
    fadam_hparams hparams;
    hparams.lr = 1e-3f;
    hparams.beta1 = 0.9f;
    hparams.beta2 = 0.999f;
    hparams.eps = 1e-8f;
    hparams.weight_decay = 1e-2f;
    hparams.mode = FADAM_ADAMW;
    hparams.bias_correction = 1;
    hparams.maximize = 0;
    return hparams;
}

fadam_fused_step_config fadam_fused_step_config_default(void) {
    fadam_fused_step_config c;
    memset(&c, 0, sizeof c);
    c.max_grad_norm = 0.0f;
    c.dynamic_loss_scaling = 0;
    c.initial_loss_scale = 65536.0f;
    c.growth_factor = 2.0f;
    c.backoff_factor = 0.5f;
    c.growth_interval = 2000;
    c.schedule = FADAM_SCHEDULE_CONSTANT;
    c.warmup_steps = 0;
    c.total_steps = 0;
    c.min_lr_ratio = 0.0f;
    c.min_loss_scale = 1.0f;
    return c;
}

fadam_hparams fadam_hparams_default_lion(void) {
    fadam_hparams hparams;
    hparams.lr = 1e-4f;
    hparams.beta1 = 0.9f;
    hparams.beta2 = 0.99f;
    hparams.eps = 0.0f;
    hparams.weight_decay = 0.0f;
    hparams.mode = FADAM_LION;
    hparams.bias_correction = 0;
    hparams.maximize = 0;
    return hparams;
}

/* The fields every rule reads, after the rule's own. */
static fadam_status check_common(const fadam_hparams *h, const char *function, int group) {
    if (!fadam_is_finite(h->weight_decay) || h->weight_decay < 0.0f)
        return fadam_fail(FADAM_ERR_INVALID_VALUE, "%s: group %d: weight_decay=%g must be finite and >= 0", function,
                          group, h->weight_decay);
    if (h->bias_correction != 0 && h->bias_correction != 1)
        return fadam_fail(FADAM_ERR_INVALID_VALUE, "%s: group %d: bias_correction=%d must be 0 or 1", function, group,
                          h->bias_correction);
    if (h->maximize != 0 && h->maximize != 1)
        return fadam_fail(FADAM_ERR_INVALID_VALUE, "%s: group %d: maximize=%d must be 0 or 1", function, group,
                          h->maximize);
    return FADAM_SUCCESS;
}

/* ADAMW and ADAM_L2 (FADAM_RULES in kernels/rules.h). */
static fadam_status fadam_check_adam_hparams(const fadam_hparams *h, const char *function, int group) {
    if (!(h->beta1 >= 0.0f && h->beta1 < 1.0f))
        return fadam_fail(FADAM_ERR_INVALID_VALUE, "%s: group %d: beta1=%g must be in [0, 1)", function, group, h->beta1);
    if (!(h->beta2 >= 0.0f && h->beta2 < 1.0f))
        return fadam_fail(FADAM_ERR_INVALID_VALUE, "%s: group %d: beta2=%g must be in [0, 1)", function, group, h->beta2);
    if (!fadam_is_finite(h->eps) || h->eps < 0.0f)
        return fadam_fail(FADAM_ERR_INVALID_VALUE, "%s: group %d: eps=%g must be finite and >= 0", function, group, h->eps);
    return FADAM_SUCCESS;
}

/* LION: no bias correction divides by 1 - beta, so 1 is allowed; eps is not used. */
static fadam_status fadam_check_lion_hparams(const fadam_hparams *h, const char *function, int group) {
    if (!(h->beta1 >= 0.0f && h->beta1 <= 1.0f))
        return fadam_fail(FADAM_ERR_INVALID_VALUE, "%s: group %d: beta1=%g must be in [0, 1] for FADAM_LION", function,
                          group, h->beta1);
    if (!(h->beta2 >= 0.0f && h->beta2 <= 1.0f))
        return fadam_fail(FADAM_ERR_INVALID_VALUE, "%s: group %d: beta2=%g must be in [0, 1] for FADAM_LION", function,
                          group, h->beta2);
    return FADAM_SUCCESS;
}

fadam_status fadam_check_hparams(const fadam_hparams *h, const char *function, int group) {
    fadam_status status = FADAM_SUCCESS;
    if (!fadam_is_finite(h->lr) || h->lr < 0.0f)
        return fadam_fail(FADAM_ERR_INVALID_VALUE, "%s: group %d: lr=%g must be finite and >= 0", function, group, h->lr);
    if (!fadam_rule_known((int)h->mode))
        return fadam_fail(FADAM_ERR_INVALID_VALUE, "%s: group %d: mode=%d is not a fadam_mode (FADAM_ADAMW, FADAM_ADAM_L2, "
                                                   "FADAM_LION)",
                          function, group, (int)h->mode);
    switch (h->mode) {
#define RULE_CHECK(mode, id, name, n_states, field0, field1, scalars, check, element) \
    case mode: status = check(h, function, group); break;
        FADAM_RULES(RULE_CHECK)
#undef RULE_CHECK
    default: break;
    }
    return status != FADAM_SUCCESS ? status : check_common(h, function, group);
}

fadam_status fadam_hparams_validate(const fadam_hparams *hparams) {
    fadam_clear_error();
    FADAM_REQUIRE_NOT_NULL(hparams, "fadam_hparams_validate");
    return fadam_check_hparams(hparams, "fadam_hparams_validate", 0);
}

fadam_status fadam_check_step_source(const fadam_step_source *source, const char *function) {
    if (source->device_step == NULL && source->step < 1)
        return fadam_fail(FADAM_ERR_INVALID_VALUE, "%s: step=%lld must be >= 1 (1 is the first step)", function,
                          (long long)source->step);
    return FADAM_SUCCESS;
}
