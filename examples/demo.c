/* demo.c - trains a small synthetic multi-tensor model twice through the public API, once with AdamW
 * and once with Adam + L2, on the GPU when one is present and on the CPU otherwise, and prints the loss
 * and the weight norms that show the difference between the two kinds of weight decay.
 *
 * The model: six weight tensors (fp32 and bf16 with fp32 masters), each pulled towards its own
 * target by a loss of a different scale (its gradients are `scale` times larger: an "active" tensor),
 * with noisy gradients, plus two bias tensors in a group without weight decay, as in LLM recipes.
 * Adam is blind to a gradient's scale, so AdamW shrinks every weight tensor by the same factor. Adam
 * + L2 adds wd*w to the gradient before the division by sqrt(v): against large gradients the decay
 * vanishes, against small ones it dominates. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime.h>

#include "fusedadam.h"

#define N_TENSORS 8
#define STEPS 400

typedef struct demo_tensor {
    const char *name;
    int64_t numel;
    fadam_dtype dtype;
    float scale; /* the loss's scale, so the gradient's: large = an "active" tensor */
    int no_decay;
} demo_tensor;

static const demo_tensor model[N_TENSORS] = {
    {"quiet.weight", 4096, FADAM_FLOAT32, 0.01f, 0}, {"calm.weight", 3000, FADAM_BFLOAT16, 0.1f, 0},
    {"odd.weight", 777, FADAM_BFLOAT16, 0.3f, 0},    {"busy.weight", 5000, FADAM_FLOAT32, 1.0f, 0},
    {"active.weight", 2048, FADAM_BFLOAT16, 10.0f, 0}, {"hot.weight", 1111, FADAM_FLOAT32, 100.0f, 0},
    {"first.bias", 64, FADAM_FLOAT32, 1.0f, 1},      {"second.bias", 33, FADAM_FLOAT32, 1.0f, 1},
};

static uint64_t rng_state = 42;
static double uniform(void) {
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(rng_state >> 11) * (1.0 / 9007199254740992.0);
}
static float normal(void) {
    double u1 = uniform() + 1e-300, u2 = uniform();
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

/* bf16 <-> float for the demo's own host-side math (round to nearest even). */
static uint16_t to_bf16(float x) {
    uint32_t bits;
    memcpy(&bits, &x, 4);
    bits += 0x7FFFu + ((bits >> 16) & 1u);
    return (uint16_t)(bits >> 16);
}
static float from_bf16(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float x;
    memcpy(&x, &bits, 4);
    return x;
}

#define TRY(call)                                                                                   \
    do {                                                                                            \
        fadam_status status_ = (call);                                                              \
        if (status_ != FADAM_SUCCESS) {                                                             \
            fprintf(stderr, "%s failed: %s\n  %s\n", #call, fadam_status_string(status_),           \
                    fadam_last_error_message());                                                    \
            exit(1);                                                                                \
        }                                                                                           \
    } while (0)

#define CUDA_TRY(call)                                                                              \
    do {                                                                                            \
        cudaError_t error_ = (call);                                                                \
        if (error_ != cudaSuccess) {                                                                \
            fprintf(stderr, "%s failed: %s\n", #call, cudaGetErrorString(error_));                  \
            exit(1);                                                                                \
        }                                                                                           \
    } while (0)

typedef struct run_result {
    double final_loss;
    double norm_ratio[N_TENSORS]; /* |w| / |target| after training */
} run_result;

static run_result train(fadam_mode mode, int on_gpu) {
    fadam_device_kind device = on_gpu ? FADAM_DEVICE_CUDA : FADAM_DEVICE_CPU;
    fadam_hparams decay = fadam_hparams_default(), no_decay;
    fadam_optimizer *opt = NULL;
    void *params[N_TENSORS], *grads[N_TENSORS];       /* where the optimizer sees them */
    void *host_params[N_TENSORS];                     /* host views (the same memory on the CPU) */
    float *host_grads[N_TENSORS], *targets[N_TENSORS];
    int no_decay_group, i, step;
    int64_t k;
    run_result result;

    decay.lr = 1e-2f;
    decay.weight_decay = 0.1f;
    decay.mode = mode;
    no_decay = decay;
    no_decay.weight_decay = 0.0f;

    rng_state = 42; /* both runs see the same data */
    TRY(fadam_create(&opt, device, 0, &decay, NULL));
    TRY(fadam_add_group(opt, &no_decay, &no_decay_group));
    for (i = 0; i < N_TENSORS; i++) {
        size_t element = fadam_dtype_size(model[i].dtype), n = (size_t)model[i].numel;
        host_params[i] = malloc(n * element);
        host_grads[i] = (float *)malloc(n * sizeof(float));
        targets[i] = (float *)malloc(n * sizeof(float));
        for (k = 0; k < model[i].numel; k++) {
            targets[i][k] = normal();
            if (model[i].dtype == FADAM_BFLOAT16) ((uint16_t *)host_params[i])[k] = to_bf16(0.1f * normal());
            else ((float *)host_params[i])[k] = 0.1f * normal();
        }
        if (on_gpu) {
            CUDA_TRY(cudaMalloc(&params[i], n * element));
            CUDA_TRY(cudaMalloc(&grads[i], n * sizeof(float)));
            CUDA_TRY(cudaMemcpy(params[i], host_params[i], n * element, cudaMemcpyHostToDevice));
        } else {
            params[i] = host_params[i];
            grads[i] = host_grads[i];
        }
        /* Gradients are fp32 for every tensor; the bf16 tensors keep fp32 masters in the optimizer. */
        TRY(fadam_add_tensor(opt, model[i].name, params[i], grads[i], model[i].numel, model[i].dtype, FADAM_FLOAT32,
                             model[i].no_decay ? no_decay_group : 0, NULL));
    }
    TRY(fadam_finalize(opt, NULL));

    for (step = 1; step <= STEPS; step++) {
        double loss = 0.0;
        int64_t total = 0;
        for (i = 0; i < N_TENSORS; i++) {
            size_t element = fadam_dtype_size(model[i].dtype), n = (size_t)model[i].numel;
            if (on_gpu) CUDA_TRY(cudaMemcpy(host_params[i], params[i], n * element, cudaMemcpyDeviceToHost));
            for (k = 0; k < model[i].numel; k++) {
                float w = model[i].dtype == FADAM_BFLOAT16 ? from_bf16(((uint16_t *)host_params[i])[k])
                                                           : ((float *)host_params[i])[k];
                float error = w - targets[i][k];
                loss += 0.5 * error * error; /* reported without the scale, to compare tensors */
                host_grads[i][k] = model[i].scale * (error + 0.5f * normal()); /* d(scale*loss)/dw, noisy */
            }
            total += model[i].numel;
            if (on_gpu) CUDA_TRY(cudaMemcpy(grads[i], host_grads[i], n * sizeof(float), cudaMemcpyHostToDevice));
        }
        if (step == 1 || step % 100 == 0)
            printf("  step %4d  loss %.5f\n", step, loss / (double)total);
        result.final_loss = loss / (double)total;
        /* A cosine schedule, set per step: nothing is rebuilt. */
        {
            float lr = 1e-2f * (float)(0.1 + 0.9 * 0.5 * (1.0 + cos(3.141592653589793 * step / STEPS)));
            TRY(fadam_set_lr(opt, 0, lr));
            TRY(fadam_set_lr(opt, no_decay_group, lr));
        }
        TRY(fadam_step(opt, NULL));
    }

    for (i = 0; i < N_TENSORS; i++) {
        size_t element = fadam_dtype_size(model[i].dtype), n = (size_t)model[i].numel;
        double weight_norm = 0.0, target_norm = 0.0;
        if (on_gpu) CUDA_TRY(cudaMemcpy(host_params[i], params[i], n * element, cudaMemcpyDeviceToHost));
        for (k = 0; k < model[i].numel; k++) {
            float w = model[i].dtype == FADAM_BFLOAT16 ? from_bf16(((uint16_t *)host_params[i])[k])
                                                       : ((float *)host_params[i])[k];
            weight_norm += (double)w * w;
            target_norm += (double)targets[i][k] * targets[i][k];
        }
        result.norm_ratio[i] = sqrt(weight_norm / target_norm);
        if (on_gpu) {
            cudaFree(params[i]);
            cudaFree(grads[i]);
        }
        free(host_params[i]);
        free(host_grads[i]);
        free(targets[i]);
    }
    fadam_destroy(opt);
    return result;
}

int main(void) {
    int on_gpu = fadam_cuda_device_count() > 0;
    run_result adamw, adam_l2;
    int i;
    printf("fusedadam %s demo on the %s: %d tensors (fp32 and bf16 with fp32 masters), 2 groups, %d steps\n",
           fadam_version_string(), on_gpu ? "GPU" : "CPU (no CUDA device found)", N_TENSORS, STEPS);
    printf("AdamW (decoupled decay, wd=0.1):\n");
    adamw = train(FADAM_ADAMW, on_gpu);
    printf("Adam + L2 (coupled decay, wd=0.1):\n");
    adam_l2 = train(FADAM_ADAM_L2, on_gpu);

    printf("\n|w| / |target| after training (1.0 = no shrinkage):\n");
    printf("  %-14s %6s %8s %8s %10s\n", "tensor", "dtype", "grad x", "AdamW", "Adam+L2");
    for (i = 0; i < N_TENSORS; i++)
        printf("  %-14s %6s %8.2f %8.3f %10.3f%s\n", model[i].name, model[i].dtype == FADAM_BFLOAT16 ? "bf16" : "fp32",
               model[i].scale, adamw.norm_ratio[i], adam_l2.norm_ratio[i], model[i].no_decay ? "   (no decay group)" : "");
    printf("\nAdamW decays every weight tensor alike, whatever the size of its gradients. Adam + L2 divides\n"
           "the decay by sqrt(v): the larger a tensor's gradients, the less it decays, and tensors with small\n"
           "gradients are pulled to zero.\n");
    printf("final loss: AdamW %.5f, Adam+L2 %.5f\n", adamw.final_loss, adam_l2.final_loss);
    return 0;
}
