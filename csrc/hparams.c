/* hparams.c - hyperparameters: the defaults, their validation, and the checks of a step source. */
#include <stdio.h>
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
static fadam_status check_common(const fadam_hparams *h, const char *where) {
    if (!fadam_is_finite(h->weight_decay) || h->weight_decay < 0.0f)
        return fadam_fail(FADAM_ERR_INVALID_VALUE, "%s: weight_decay=%g must be finite and >= 0", where,
                          h->weight_decay);
    if (h->bias_correction != 0 && h->bias_correction != 1)
        return fadam_fail(FADAM_ERR_INVALID_VALUE, "%s: bias_correction=%d must be 0 or 1", where,
                          h->bias_correction);
    if (h->maximize != 0 && h->maximize != 1)
        return fadam_fail(FADAM_ERR_INVALID_VALUE, "%s: maximize=%d must be 0 or 1", where,
                          h->maximize);
    return FADAM_SUCCESS;
}

/* ADAMW and ADAM_L2 (FADAM_RULES in kernels/rules.h). */
static fadam_status fadam_check_adam_hparams(const fadam_hparams *h, const char *where) {
    if (!(h->beta1 >= 0.0f && h->beta1 < 1.0f))
        return fadam_fail(FADAM_ERR_INVALID_VALUE, "%s: beta1=%g must be in [0, 1)", where, h->beta1);
    if (!(h->beta2 >= 0.0f && h->beta2 < 1.0f))
        return fadam_fail(FADAM_ERR_INVALID_VALUE, "%s: beta2=%g must be in [0, 1)", where, h->beta2);
    if (!fadam_is_finite(h->eps) || h->eps < 0.0f)
        return fadam_fail(FADAM_ERR_INVALID_VALUE, "%s: eps=%g must be finite and >= 0", where, h->eps);
    return FADAM_SUCCESS;
}

/* LION: no bias correction divides by 1 - beta, so 1 is allowed; eps is not used. */
static fadam_status fadam_check_lion_hparams(const fadam_hparams *h, const char *where) {
    if (!(h->beta1 >= 0.0f && h->beta1 <= 1.0f))
        return fadam_fail(FADAM_ERR_INVALID_VALUE, "%s: beta1=%g must be in [0, 1] for FADAM_LION", where,
                          h->beta1);
    if (!(h->beta2 >= 0.0f && h->beta2 <= 1.0f))
        return fadam_fail(FADAM_ERR_INVALID_VALUE, "%s: beta2=%g must be in [0, 1] for FADAM_LION", where,
                          h->beta2);
    return FADAM_SUCCESS;
}

/* The rule list's mode names, for the message about an unknown mode. */
#define RULE_MODE_NAME(mode, ...) " " #mode
#define RULE_MODES FADAM_RULES(RULE_MODE_NAME)

fadam_status fadam_check_hparams(const fadam_hparams *h, const char *function, int group) {
    fadam_status status = FADAM_SUCCESS;
    char where[160]; /* what the messages start with: the call, and the group when there is one */
    if (group >= 0) snprintf(where, sizeof where, "%s: group %d", function, group);
    else snprintf(where, sizeof where, "%s", function);
    if (!fadam_is_finite(h->lr) || h->lr < 0.0f)
        return fadam_fail(FADAM_ERR_INVALID_VALUE, "%s: lr=%g must be finite and >= 0", where, h->lr);
    if (!fadam_rule_known((int)h->mode))
        return fadam_fail(FADAM_ERR_INVALID_VALUE, "%s: mode=%d is not a fadam_mode, one of:" RULE_MODES,
                          where, (int)h->mode);
    switch (h->mode) {
#define RULE_CHECK(mode, id, name, n_states, field0, field1, scalars, check, element) \
    case mode: status = check(h, where); break;
        FADAM_RULES(RULE_CHECK)
#undef RULE_CHECK
    default: break;
    }
    return status != FADAM_SUCCESS ? status : check_common(h, where);
}

fadam_status fadam_hparams_validate(const fadam_hparams *hparams) {
    fadam_clear_error();
    FADAM_REQUIRE_NOT_NULL(hparams, "fadam_hparams_validate");
    return fadam_check_hparams(hparams, "fadam_hparams_validate", -1); /* no group to name */
}

fadam_status fadam_check_step_source(const fadam_step_source *source, const char *function) {
    if (source->device_step == NULL && source->step < 1)
        return fadam_fail(FADAM_ERR_INVALID_VALUE, "%s: step=%lld must be >= 1 (1 is the first step)", function,
                          (long long)source->step);
    return FADAM_SUCCESS;
}
