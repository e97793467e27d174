/* test_cpu_only.c - the CPU-only build of the library (mk/cpu_only.mk: no CUDA toolkit, no libcudart):
 * linked with it alone, the CPU device works (managed step against the functional fadam_cpu_step,
 * bit for bit; the fused step; a checkpoint round trip in memory) and the CUDA device is reported
 * absent (FADAM_ERR_NO_DEVICE, 0 devices) rather than failing to link or load. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "fusedadam.h"

static uint64_t rng;

#define N 1000

static void cuda_absent(void) {
    fadam_optimizer *opt = (fadam_optimizer *)&rng; /* must come back NULL */
    check_case_begin();
    CHECK(fadam_cuda_device_count() == 0, "%d CUDA devices", fadam_cuda_device_count());
    CHECK(fadam_create(&opt, FADAM_DEVICE_CUDA, 0, NULL, NULL) == FADAM_ERR_NO_DEVICE, "create on CUDA: %s",
          fadam_last_error_message());
    CHECK(opt == NULL, "*out not NULL after a failed create");
    check_case_end("cpu_only_build_reports_no_cuda_device");
}

static void cpu_steps(void) {
    static float param[N], grad[N], ref_param[N], ref_m[N], ref_v[N];
    fadam_optimizer *opt = NULL, *twin = NULL;
    fadam_hparams hp = fadam_hparams_default();
    fadam_tensor ref;
    fadam_step_source source;
    float *master, *m, *v;
    unsigned char *blob = NULL;
    size_t size = 0;
    int64_t step;
    int i;
    check_case_begin();
    hp.lr = 1e-2f;
    hp.weight_decay = 0.1f;
    for (i = 0; i < N; i++) {
        param[i] = ref_param[i] = (float)check_rng_normal(&rng);
        ref_m[i] = ref_v[i] = 0.0f;
    }
    memset(&ref, 0, sizeof ref);
    ref.param = ref_param, ref.grad = grad, ref.exp_avg = ref_m, ref.exp_avg_sq = ref_v, ref.numel = N;
    ref.param_dtype = ref.grad_dtype = FADAM_FLOAT32;
    CHECK(fadam_create(&opt, FADAM_DEVICE_CPU, 0, &hp, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    CHECK(opt && fadam_add_tensor(opt, "w", param, grad, N, FADAM_FLOAT32, FADAM_FLOAT32, 0, NULL) == FADAM_SUCCESS,
          "%s", fadam_last_error_message());
    CHECK(opt && fadam_finalize(opt, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    for (step = 1; step <= 3 && !check_case_failed; step++) {
        for (i = 0; i < N; i++) grad[i] = (float)check_rng_normal(&rng);
        CHECK(fadam_step(opt, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
        memset(&source, 0, sizeof source);
        source.step = step;
        CHECK(fadam_cpu_step(&ref, 1, &hp, 1, &source) == FADAM_SUCCESS, "%s", fadam_last_error_message());
        CHECK(memcmp(param, ref_param, sizeof param) == 0, "step %lld: managed and functional differ", (long long)step);
    }
    CHECK(fadam_get_state(opt, 0, &master, &m, &v) == FADAM_SUCCESS && memcmp(m, ref_m, sizeof ref_m) == 0,
          "exp_avg differs");
    /* a checkpoint round trip in memory */
    CHECK(fadam_save_bytes(opt, &size, NULL, 0, NULL) == FADAM_SUCCESS || size > 0, "%s", fadam_last_error_message());
    blob = (unsigned char *)malloc(size);
    CHECK(blob && fadam_save_bytes(opt, &size, blob, size, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    CHECK(fadam_create(&twin, FADAM_DEVICE_CPU, 0, &hp, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    CHECK(twin && fadam_add_tensor(twin, "w", param, grad, N, FADAM_FLOAT32, FADAM_FLOAT32, 0, NULL) == FADAM_SUCCESS &&
              fadam_finalize(twin, NULL) == FADAM_SUCCESS,
          "%s", fadam_last_error_message());
    CHECK(twin && blob && fadam_load_bytes(twin, blob, size, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    CHECK(twin && fadam_get_step(twin, &step) == FADAM_SUCCESS && step == 3, "loaded step %lld", (long long)step);
    free(blob);
    fadam_destroy(twin);
    fadam_destroy(opt);
    check_case_end("cpu_only_build_steps_and_checkpoints_on_the_cpu");
}

static void fused_step_on_cpu(void) {
    static float param[N], grad[N];
    fadam_optimizer *opt = NULL;
    fadam_fused_step_config config = fadam_fused_step_config_default();
    fadam_step_counters counters;
    int i;
    check_case_begin();
    config.max_grad_norm = 1.0f;
    for (i = 0; i < N; i++) param[i] = (float)check_rng_normal(&rng), grad[i] = 10.0f * (float)check_rng_normal(&rng);
    CHECK(fadam_create(&opt, FADAM_DEVICE_CPU, 0, NULL, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    CHECK(opt && fadam_add_tensor(opt, "w", param, grad, N, FADAM_FLOAT32, FADAM_FLOAT32, 0, NULL) == FADAM_SUCCESS &&
              fadam_configure_fused_step(opt, &config) == FADAM_SUCCESS && fadam_finalize(opt, NULL) == FADAM_SUCCESS,
          "%s", fadam_last_error_message());
    CHECK(opt && fadam_fused_step(opt, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    CHECK(opt && fadam_read_step_counters(opt, &counters, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    CHECK(counters.step == 1 && counters.clip_coef < 1.0f && counters.grad_norm > 100.0f, "counters: step %lld, clip %g, norm %g",
          (long long)counters.step, counters.clip_coef, counters.grad_norm);
    fadam_destroy(opt);
    check_case_end("cpu_only_build_fused_step_on_the_cpu");
}

int main(void) {
    rng = check_seed("test_cpu_only");
    cuda_absent();
    cpu_steps();
    fused_step_on_cpu();
    return check_failures_total ? 1 : 0;
}
