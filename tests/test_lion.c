/* test_lion.c - Lion (issue 10) in the managed optimizer on the CPU device: a Lion group beside an
 * AdamW group gets only its exp_avg (fadam_get_state gives NULL for exp_avg_sq), fadam_step and the
 * fused step with clipping match a float64 oracle, a finalized group cannot change rule, the checks of
 * Lion's hyperparameters and state pointers, and checkpoints: a Lion group's exp_avg (and no exp_avg_sq)
 * saved and loaded bit for bit beside an AdamW group, and refused by an optimizer whose group has
 * another rule. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "fusedadam.h"

#define N 3001 /* not a multiple of any vector width */

static uint64_t rng;

typedef struct model {
    fadam_optimizer *opt;
    float lion_param[N], adam_param[N];
    float lion_grad[N], adam_grad[N];
    float start[N]; /* lion_param before the step */
} model;

static void make(model *m, const fadam_fused_step_config *fused) {
    fadam_hparams lion = fadam_hparams_default_lion();
    int i;
    lion.lr = 1e-3f;
    lion.weight_decay = 0.1f;
    for (i = 0; i < N; i++) {
        m->start[i] = m->lion_param[i] = (float)check_rng_normal(&rng);
        m->adam_param[i] = (float)check_rng_normal(&rng);
        m->lion_grad[i] = (float)(1e-2 * check_rng_normal(&rng));
        m->adam_grad[i] = (float)(1e-2 * check_rng_normal(&rng));
    }
    m->lion_grad[7] = 0.0f; /* m = 0 at the first step too: c == 0, sign 0, p only decayed */
    CHECK(fadam_create(&m->opt, FADAM_DEVICE_CPU, 0, NULL, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    CHECK(fadam_add_group(m->opt, &lion, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    CHECK(fadam_add_tensor(m->opt, "adam", m->adam_param, m->adam_grad, N, FADAM_FLOAT32, FADAM_FLOAT32, 0, NULL) ==
              FADAM_SUCCESS,
          "%s", fadam_last_error_message());
    CHECK(fadam_add_tensor(m->opt, "lion", m->lion_param, m->lion_grad, N, FADAM_FLOAT32, FADAM_FLOAT32, 1, NULL) ==
              FADAM_SUCCESS,
          "%s", fadam_last_error_message());
    if (fused) CHECK(fadam_configure_fused_step(m->opt, fused) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    CHECK(fadam_finalize(m->opt, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
}

/* One Lion step from m = 0 against float64: c = (1-b1)*g*scale, p = p*(1 - lr*wd) - lr*sign(c). */
static void check_lion_step(const model *m, double scale) {
    fadam_hparams h;
    float *exp_avg = NULL;
    int i;
    CHECK(fadam_get_hparams(m->opt, 1, &h) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    CHECK(fadam_get_state(m->opt, 1, NULL, &exp_avg, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    for (i = 0; i < N && !check_case_failed; i++) {
        double g = (double)m->lion_grad[i] * scale, c = (1.0 - (double)h.beta1) * g;
        double sign = c > 0 ? 1.0 : c < 0 ? -1.0 : 0.0;
        double want_p = (double)m->start[i] * (1.0 - (double)h.lr * (double)h.weight_decay) - (double)h.lr * sign;
        double want_m = (1.0 - (double)h.beta2) * g;
        CHECK(fabs(m->lion_param[i] - want_p) <= 2.5e-7 * (fabs(m->start[i]) + h.lr) &&
                  fabs(exp_avg[i] - want_m) <= 2.5e-7 * fabs(want_m) + 1e-30,
              "element %d: p=%.9g want %.9g, m=%.9g want %.9g", i, (double)m->lion_param[i], want_p,
              (double)exp_avg[i], want_m);
    }
    CHECK(m->lion_param[7] == m->start[7] * (float)(1.0 - (double)h.lr * (double)h.weight_decay),
          "sign(0): p=%a, want the decay alone", (double)m->lion_param[7]);
}

static void test_states_and_step(void) {
    model *m = (model *)calloc(1, sizeof *m);
    float *master = (float *)1, *exp_avg = NULL, *exp_avg_sq = (float *)1;
    check_case_begin();
    make(m, NULL);
    CHECK(fadam_get_state(m->opt, 1, &master, &exp_avg, &exp_avg_sq) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    CHECK(master == NULL && exp_avg != NULL && exp_avg_sq == NULL, "lion tensor: master %p exp_avg %p exp_avg_sq %p",
          (void *)master, (void *)exp_avg, (void *)exp_avg_sq);
    CHECK(fadam_get_state(m->opt, 0, NULL, &exp_avg, &exp_avg_sq) == FADAM_SUCCESS && exp_avg && exp_avg_sq,
          "the AdamW tensor keeps both moments");
    CHECK(fadam_step(m->opt, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    check_lion_step(m, 1.0);
    fadam_destroy(m->opt);
    free(m);
    check_case_end("lion_group_beside_adamw_states_and_step_vs_float64");
}

static void test_fused_clipping(void) {
    model *m = (model *)calloc(1, sizeof *m);
    fadam_fused_step_config config = fadam_fused_step_config_default();
    fadam_step_counters counters;
    double sum = 0.0, norm;
    int i;
    check_case_begin();
    config.max_grad_norm = 0.05f;
    make(m, &config);
    for (i = 0; i < N; i++) sum += (double)m->lion_grad[i] * m->lion_grad[i] + (double)m->adam_grad[i] * m->adam_grad[i];
    norm = sqrt(sum);
    CHECK(norm > 0.05, "the gradients should be clipped (norm %g)", norm);
    CHECK(fadam_fused_step(m->opt, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    CHECK(fadam_read_step_counters(m->opt, &counters, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    CHECK(!counters.skipped && counters.step == 1, "skipped %d step %lld", (int)counters.skipped,
          (long long)counters.step);
    check_lion_step(m, (double)(float)(0.05 / (norm + 1e-6)));
    fadam_destroy(m->opt);
    free(m);
    check_case_end("lion_fused_step_with_clipping_vs_float64");
}

static void test_errors(void) {
    model *m = (model *)calloc(1, sizeof *m);
    fadam_hparams h = fadam_hparams_default_lion(), adamw = fadam_hparams_default();
    fadam_tensor t;
    float p[4] = {1, 2, 3, 4}, g[4] = {0}, m1[4] = {0}, v[4] = {0};
    fadam_step_source source = {1, NULL, NULL};
    check_case_begin();
    CHECK(h.lr == 1e-4f && h.beta1 == 0.9f && h.beta2 == 0.99f && h.weight_decay == 0.0f && h.mode == FADAM_LION,
          "fadam_hparams_default_lion: lr %g betas %g %g wd %g", (double)h.lr, (double)h.beta1, (double)h.beta2,
          (double)h.weight_decay);
    h.beta1 = 1.0f;
    CHECK(fadam_hparams_validate(&h) == FADAM_SUCCESS, "Lion allows beta1 = 1: %s", fadam_last_error_message());
    h.beta2 = 1.5f;
    CHECK(fadam_hparams_validate(&h) == FADAM_ERR_INVALID_VALUE && strstr(fadam_last_error_message(), "beta2"),
          "beta2 = 1.5: %s", fadam_last_error_message());
    h = fadam_hparams_default_lion();
    memset(&t, 0, sizeof t);
    t.param = p;
    t.grad = g;
    t.exp_avg = m1;
    t.exp_avg_sq = v;
    t.numel = 4;
    t.param_dtype = t.grad_dtype = FADAM_FLOAT32;
    CHECK(fadam_cpu_step(&t, 1, &h, 1, &source) == FADAM_ERR_INVALID_VALUE &&
              strstr(fadam_last_error_message(), "exp_avg_sq must be NULL"),
          "a Lion tensor with exp_avg_sq: %s", fadam_last_error_message());
    t.exp_avg_sq = NULL;
    CHECK(fadam_cpu_step(&t, 1, &h, 1, &source) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    CHECK(fadam_cpu_step(&t, 1, &adamw, 1, &source) == FADAM_ERR_NULL_POINTER, "AdamW without exp_avg_sq: %s",
          fadam_last_error_message());

    make(m, NULL);
    CHECK(fadam_set_hparams(m->opt, 1, &adamw) == FADAM_ERR_BAD_STATE && strstr(fadam_last_error_message(), "lion"),
          "Lion -> AdamW after finalize: %s", fadam_last_error_message());
    adamw.mode = FADAM_ADAM_L2;
    CHECK(fadam_set_hparams(m->opt, 0, &adamw) == FADAM_SUCCESS, "AdamW -> Adam-L2 keeps the states: %s",
          fadam_last_error_message());
    h.lr = 2e-4f;
    CHECK(fadam_set_hparams(m->opt, 1, &h) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    fadam_destroy(m->opt);
    free(m);
    check_case_end("lion_validation_state_pointers_rule_change");
}

/* A checkpoint of a Lion group beside an AdamW group: its entries are "lion.exp_avg" and no
 * "lion.exp_avg_sq", the mode word is "lion", and a load restores every state bit for bit; an
 * optimizer whose group 1 is AdamW refuses it (its tensor needs an exp_avg_sq the file lacks). */
static void test_checkpoint(void) {
    model *m = (model *)calloc(1, sizeof *m), *back = (model *)calloc(1, sizeof *back);
    fadam_hparams adamw = fadam_hparams_default();
    unsigned char *bytes = NULL;
    size_t size = 0;
    float *saved_m = NULL, *saved_v = NULL, *loaded_m = NULL, *loaded_v = NULL, *lion_m = NULL, *lion_m_back = NULL,
          *lion_v = (float *)1;
    int64_t step = 0;
    check_case_begin();
    make(m, NULL);
    CHECK(fadam_step(m->opt, NULL) == FADAM_SUCCESS && fadam_step(m->opt, NULL) == FADAM_SUCCESS, "%s",
          fadam_last_error_message());
    CHECK(fadam_save_bytes(m->opt, &size, NULL, 0, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    bytes = (unsigned char *)malloc(size);
    CHECK(bytes && fadam_save_bytes(m->opt, &size, bytes, size, NULL) == FADAM_SUCCESS, "%s",
          fadam_last_error_message());
    if (bytes && !check_case_failed) {
        const char *header = (const char *)bytes + 8;
        size_t header_length = (size_t)bytes[0] | (size_t)bytes[1] << 8 | (size_t)bytes[2] << 16;
        char *text = (char *)calloc(header_length + 1, 1);
        memcpy(text, header, header_length);
        CHECK(strstr(text, "\"lion.exp_avg\"") && !strstr(text, "\"lion.exp_avg_sq\"") &&
                  strstr(text, "\"adam.exp_avg_sq\"") && strstr(text, "\"group.1.mode\":\"lion\""),
              "the header: %.400s", text);
        free(text);
    }
    make(back, NULL);
    CHECK(fadam_load_bytes(back->opt, bytes, size, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    CHECK(fadam_get_step(back->opt, &step) == FADAM_SUCCESS && step == 2, "step %lld", (long long)step);
    CHECK(fadam_get_state(m->opt, 0, NULL, &saved_m, &saved_v) == FADAM_SUCCESS &&
              fadam_get_state(back->opt, 0, NULL, &loaded_m, &loaded_v) == FADAM_SUCCESS &&
              fadam_get_state(m->opt, 1, NULL, &lion_m, NULL) == FADAM_SUCCESS &&
              fadam_get_state(back->opt, 1, NULL, &lion_m_back, &lion_v) == FADAM_SUCCESS,
          "%s", fadam_last_error_message());
    CHECK(!check_case_failed && lion_v == NULL && memcmp(saved_m, loaded_m, N * sizeof(float)) == 0 &&
              memcmp(saved_v, loaded_v, N * sizeof(float)) == 0 && memcmp(lion_m, lion_m_back, N * sizeof(float)) == 0,
          "states differ after the load");
    /* One more step from the loaded state equals one more step of the original, bit for bit. */
    memcpy(back->lion_param, m->lion_param, sizeof m->lion_param);
    memcpy(back->adam_param, m->adam_param, sizeof m->adam_param);
    memcpy(back->lion_grad, m->lion_grad, sizeof m->lion_grad);
    memcpy(back->adam_grad, m->adam_grad, sizeof m->adam_grad);
    CHECK(fadam_step(m->opt, NULL) == FADAM_SUCCESS && fadam_step(back->opt, NULL) == FADAM_SUCCESS, "%s",
          fadam_last_error_message());
    CHECK(memcmp(back->lion_param, m->lion_param, sizeof m->lion_param) == 0 &&
              memcmp(back->adam_param, m->adam_param, sizeof m->adam_param) == 0,
          "the step after the load differs");
    fadam_destroy(back->opt);
    /* The same registration with group 1 AdamW: the file's Lion tensor has no exp_avg_sq for it. */
    CHECK(fadam_create(&back->opt, FADAM_DEVICE_CPU, 0, NULL, NULL) == FADAM_SUCCESS &&
              fadam_add_group(back->opt, &adamw, NULL) == FADAM_SUCCESS &&
              fadam_add_tensor(back->opt, "adam", back->adam_param, back->adam_grad, N, FADAM_FLOAT32, FADAM_FLOAT32,
                               0, NULL) == FADAM_SUCCESS &&
              fadam_add_tensor(back->opt, "lion", back->lion_param, back->lion_grad, N, FADAM_FLOAT32, FADAM_FLOAT32,
                               1, NULL) == FADAM_SUCCESS &&
              fadam_finalize(back->opt, NULL) == FADAM_SUCCESS,
          "%s", fadam_last_error_message());
    CHECK(fadam_load_bytes(back->opt, bytes, size, NULL) == FADAM_ERR_MISMATCH &&
              strstr(fadam_last_error_message(), "lion.exp_avg_sq"),
          "a Lion file into an AdamW group: %s", fadam_last_error_message());
    fadam_destroy(back->opt);
    fadam_destroy(m->opt);
    free(bytes);
    free(back);
    free(m);
    check_case_end("lion_checkpoint_round_trip_and_refused_by_another_rule");
}

int main(void) {
    rng = check_seed("test_lion");
    test_states_and_step();
    test_fused_clipping();
    test_errors();
    test_checkpoint();
    return check_exit_code();
}
