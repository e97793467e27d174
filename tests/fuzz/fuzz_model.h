/* fuzz_model.h - the small CPU optimizer the checkpoint fuzz target loads into, and from which the
 * seed corpus in tests/fuzz/corpus was saved (build/test_checkpoint --write-corpus DIR). Fixed
 * values, so the seeds stay valid checkpoints of it: fp32, bf16 and fp16 params, an empty tensor,
 * an unnamed one, two groups, the fused step with dynamic loss scaling (its counters are saved). */
#ifndef FADAM_FUZZ_MODEL_H
#define FADAM_FUZZ_MODEL_H

#include <stdint.h>
#include <string.h>

#include "fusedadam.h"

#define FUZZ_MODEL_TENSORS 5

/* 256-byte aligned, as the dtypes' vector loads want. */
static struct {
    _Alignas(256) float w[7];
    _Alignas(256) float w_grad[7];
    _Alignas(256) uint16_t b[5];
    _Alignas(256) uint16_t b_grad[5];
    _Alignas(256) uint16_t h[3];
    _Alignas(256) float h_grad[3];
    _Alignas(256) float e[1];
    _Alignas(256) float e_grad[1];
    _Alignas(256) float u[2];
    _Alignas(256) float u_grad[2];
} fuzz_model_buffers;

/* Deterministic small values: param i of a tensor is (i+1)/8 with alternating sign; grads follow
 * `grad_round` so that a few steps give every state entry distinct bits. */
static inline void fuzz_model_fill(int grad_round) {
    int i;
    for (i = 0; i < 7; i++) {
        fuzz_model_buffers.w[i] = (float)((i % 2 ? -1 : 1) * (i + 1)) / 8.0f;
        fuzz_model_buffers.w_grad[i] = (float)(grad_round + i) / 16.0f - 0.25f;
    }
    for (i = 0; i < 5; i++) {
        fuzz_model_buffers.b[i] = (uint16_t)(0x3F80 + 0x10 * i);        /* bf16 1.0, 1.125, ... */
        fuzz_model_buffers.b_grad[i] = (uint16_t)(0x3D00 + 0x20 * (i + grad_round)); /* bf16 ~0.03 .. */
    }
    for (i = 0; i < 3; i++) {
        fuzz_model_buffers.h[i] = (uint16_t)(0x3C00 + 0x100 * i); /* fp16 1.0, 2.0, 4.0 */
        fuzz_model_buffers.h_grad[i] = (float)(i - grad_round) / 10.0f;
    }
    fuzz_model_buffers.u[0] = 0.5f, fuzz_model_buffers.u[1] = -2.0f;
    fuzz_model_buffers.u_grad[0] = 0.125f * (float)grad_round, fuzz_model_buffers.u_grad[1] = -0.5f;
}

/* Creates and finalizes the optimizer; NULL on failure. */
static inline fadam_optimizer *fuzz_model_create(void) {
    fadam_optimizer *opt = NULL;
    fadam_hparams second = fadam_hparams_default();
    fadam_fused_step_config fused = fadam_fused_step_config_default();
    int ok;
    fused.dynamic_loss_scaling = 1;
    fused.max_grad_norm = 1.0f;
    fuzz_model_fill(0);
    second.weight_decay = 0.0f;
    second.mode = FADAM_ADAM_L2;
    second.lr = 3e-3f;
    if (fadam_create(&opt, FADAM_DEVICE_CPU, 0, NULL, NULL) != FADAM_SUCCESS) return NULL;
    ok = fadam_add_group(opt, &second, NULL) == FADAM_SUCCESS &&
         fadam_add_tensor(opt, "w", fuzz_model_buffers.w, fuzz_model_buffers.w_grad, 7, FADAM_FLOAT32, FADAM_FLOAT32, 0,
                          NULL) == FADAM_SUCCESS &&
         fadam_add_tensor(opt, "layer.b", fuzz_model_buffers.b, fuzz_model_buffers.b_grad, 5, FADAM_BFLOAT16,
                          FADAM_BFLOAT16, 1, NULL) == FADAM_SUCCESS &&
         fadam_add_tensor(opt, "h.0", fuzz_model_buffers.h, fuzz_model_buffers.h_grad, 3, FADAM_FLOAT16, FADAM_FLOAT32,
                          1, NULL) == FADAM_SUCCESS &&
         fadam_add_tensor(opt, "e", fuzz_model_buffers.e, fuzz_model_buffers.e_grad, 0, FADAM_FLOAT32, FADAM_FLOAT32, 0,
                          NULL) == FADAM_SUCCESS &&
         fadam_add_tensor(opt, NULL, fuzz_model_buffers.u, fuzz_model_buffers.u_grad, 2, FADAM_FLOAT32, FADAM_FLOAT32, 0,
                          NULL) == FADAM_SUCCESS &&
         fadam_configure_fused_step(opt, &fused) == FADAM_SUCCESS && fadam_finalize(opt, NULL) == FADAM_SUCCESS;
    if (!ok) {
        fadam_destroy(opt);
        return NULL;
    }
    return opt;
}

/* `steps` fused steps with changing gradients, so the state and the counters are not all zeros. */
static inline int fuzz_model_train(fadam_optimizer *opt, int steps) {
    int s;
    for (s = 1; s <= steps; s++) {
        fuzz_model_fill(s);
        if (fadam_fused_step(opt, NULL) != FADAM_SUCCESS) return 0;
    }
    return 1;
}

/* Every observable piece of the optimizer: step, hyperparameters, state bytes. */
typedef struct fuzz_model_snapshot {
    int64_t step;
    fadam_step_counters counters;
    fadam_hparams groups[2];
    float state[3 * (7 + 5 + 3 + 0 + 2)];
} fuzz_model_snapshot;

static inline void fuzz_model_snapshot_take(const fadam_optimizer *opt, fuzz_model_snapshot *out) {
    static const int64_t numel[FUZZ_MODEL_TENSORS] = {7, 5, 3, 0, 2};
    size_t used = 0;
    int64_t t;
    memset(out, 0, sizeof *out);
    (void)fadam_get_step(opt, &out->step);
    (void)fadam_read_step_counters(opt, &out->counters, NULL); /* host memory: copied at once */
    (void)fadam_get_hparams(opt, 0, &out->groups[0]);
    (void)fadam_get_hparams(opt, 1, &out->groups[1]);
    for (t = 0; t < FUZZ_MODEL_TENSORS; t++) {
        float *master = NULL, *exp_avg = NULL, *exp_avg_sq = NULL;
        (void)fadam_get_state(opt, t, &master, &exp_avg, &exp_avg_sq);
        memcpy(out->state + used, exp_avg, (size_t)numel[t] * sizeof(float));
        used += (size_t)numel[t];
        memcpy(out->state + used, exp_avg_sq, (size_t)numel[t] * sizeof(float));
        used += (size_t)numel[t];
        if (master) {
            memcpy(out->state + used, master, (size_t)numel[t] * sizeof(float));
            used += (size_t)numel[t];
        }
    }
}

#endif
