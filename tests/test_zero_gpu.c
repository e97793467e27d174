/* test_zero_gpu.c - the split fused step on a GPU (issue 13; "skip" without one): begin + end captured
 * in a CUDA graph and replayed equals eager fadam_fused_step bit for bit (an Inf in one replay skips
 * both); two ranks on one device, each with its slices, the all-reduce done by copies and a host sum,
 * equal the single-rank run (the same decision, the update bit for bit given the same clip). */
#include <math.h>
#include <stdlib.h>

#include <cuda_runtime.h>

#include "check.h"
#include "dtype_values.h"
#include "fusedadam.h"

static uint64_t rng;

#define N 7
#define STEPS 6

#define CUDA_OK(call) CHECK((call) == cudaSuccess, "%s failed", #call)

static const int64_t sizes[N] = {1, 3, 1001, 65537, 8191, 300001, 5};

static fadam_fused_step_config config(void) {
    fadam_fused_step_config c = fadam_fused_step_config_default();
    c.max_grad_norm = 1.0f;
    c.dynamic_loss_scaling = 1;
    c.initial_loss_scale = 64.0f;
    c.schedule = FADAM_SCHEDULE_WARMUP_COSINE;
    c.warmup_steps = 2;
    c.total_steps = 20;
    return c;
}

/* opt[0]: whole tensors, begin + end captured once and replayed; opt[1]: eager fadam_fused_step. */
static void test_graph(void) {
    const char *name = "gpu_split_step_graph_replay_equals_eager_fused_step";
    fadam_optimizer *opt[2] = {NULL, NULL};
    fadam_fused_step_config c = config();
    void *params[2][N], *grads[2][N];
    fadam_dtype pdt[N];
    cudaStream_t stream;
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    fadam_step_counters counters[2];
    int i, side, r;
    int64_t k;
    if (fadam_cuda_device_count() == 0) {
        check_skip(name, "no CUDA device");
        return;
    }
    check_case_begin();
    CUDA_OK(cudaStreamCreate(&stream));
    for (side = 0; side < 2; side++) {
        CHECK(fadam_create(&opt[side], FADAM_DEVICE_CUDA, 0, NULL, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
        CHECK(fadam_configure_fused_step(opt[side], &c) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    }
    for (i = 0; i < N; i++) {
        void *host = malloc((size_t)sizes[i] * 4);
        pdt[i] = i % 2 ? FADAM_BFLOAT16 : FADAM_FLOAT32;
        for (k = 0; k < sizes[i]; k++) store_as(pdt[i], host, k, (float)check_rng_normal(&rng));
        for (side = 0; side < 2; side++) {
            CUDA_OK(cudaMalloc(&params[side][i], (size_t)sizes[i] * 4));
            CUDA_OK(cudaMalloc(&grads[side][i], (size_t)sizes[i] * 4));
            CUDA_OK(cudaMemcpy(params[side][i], host, (size_t)sizes[i] * 4, cudaMemcpyHostToDevice));
            CHECK(fadam_add_tensor(opt[side], NULL, params[side][i], grads[side][i], sizes[i], pdt[i], FADAM_FLOAT32, 0,
                                   NULL) == FADAM_SUCCESS,
                  "%s", fadam_last_error_message());
        }
        free(host);
    }
    for (side = 0; side < 2; side++)
        CHECK(fadam_finalize(opt[side], (fadam_stream)stream) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
    CHECK(fadam_fused_step_begin(opt[0], (fadam_stream)stream) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    CHECK(fadam_fused_step_end(opt[0], (fadam_stream)stream) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    CUDA_OK(cudaStreamEndCapture(stream, &graph));
    CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
    for (r = 0; r < STEPS && !check_case_failed; r++) {
        for (i = 0; i < N; i++) {
            float *host = (float *)malloc((size_t)sizes[i] * 4);
            for (k = 0; k < sizes[i]; k++) host[k] = (float)(40.0 * check_rng_normal(&rng));
            if (r == 3 && i == 3) host[sizes[i] / 2] = NAN;
            for (side = 0; side < 2; side++)
                CUDA_OK(cudaMemcpyAsync(grads[side][i], host, (size_t)sizes[i] * 4, cudaMemcpyHostToDevice, stream));
            CUDA_OK(cudaStreamSynchronize(stream));
            free(host);
        }
        CUDA_OK(cudaGraphLaunch(exec, stream));
        CHECK(fadam_fused_step(opt[1], (fadam_stream)stream) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    }
    for (side = 0; side < 2; side++)
        CHECK(fadam_read_step_counters(opt[side], &counters[side], (fadam_stream)stream) == FADAM_SUCCESS, "%s",
              fadam_last_error_message());
    CUDA_OK(cudaStreamSynchronize(stream));
    CHECK(memcmp(&counters[0], &counters[1], sizeof counters[0]) == 0 && counters[0].step == STEPS - 1 &&
              counters[0].skipped_total == 1,
          "counters: replay t=%lld skipped=%lld, eager t=%lld", (long long)counters[0].step,
          (long long)counters[0].skipped_total, (long long)counters[1].step);
    for (i = 0; i < N; i++) {
        size_t bytes = (size_t)sizes[i] * fadam_dtype_size(pdt[i]);
        void *a = malloc(bytes), *b = malloc(bytes);
        CUDA_OK(cudaMemcpy(a, params[0][i], bytes, cudaMemcpyDeviceToHost));
        CUDA_OK(cudaMemcpy(b, params[1][i], bytes, cudaMemcpyDeviceToHost));
        CHECK(memcmp(a, b, bytes) == 0, "tensor %d: replayed split and eager fused params differ", i);
        free(a);
        free(b);
    }
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    for (side = 0; side < 2; side++) {
        fadam_destroy(opt[side]);
        for (i = 0; i < N; i++) {
            cudaFree(params[side][i]);
            cudaFree(grads[side][i]);
        }
    }
    cudaStreamDestroy(stream);
    check_case_end(name);
}

/* Ranks 0 and 1 on one device (their slices of one param copy), against a whole-tensor optimizer. */
static void test_two_ranks(void) {
    const char *name = "gpu_two_ranks_split_step_equal_single_rank";
    fadam_optimizer *single = NULL, *rank[2] = {NULL, NULL};
    fadam_fused_step_config c = config();
    float *params[2][N], *grads[N];
    double *buffer[2], host_buffer[2][2], sum[2];
    fadam_step_counters counters[3];
    int i, q, s, same_clip = 1;
    int64_t k;
    if (fadam_cuda_device_count() == 0) {
        check_skip(name, "no CUDA device");
        return;
    }
    check_case_begin();
    CHECK(fadam_create(&single, FADAM_DEVICE_CUDA, 0, NULL, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    CHECK(fadam_configure_fused_step(single, &c) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    for (q = 0; q < 2; q++) {
        CHECK(fadam_create(&rank[q], FADAM_DEVICE_CUDA, 0, NULL, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
        CHECK(fadam_configure_fused_step(rank[q], &c) == FADAM_SUCCESS, "%s", fadam_last_error_message());
        CHECK(fadam_set_shard_rank(rank[q], q, 2) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    }
    for (i = 0; i < N; i++) {
        float *host = (float *)malloc((size_t)sizes[i] * 4);
        for (k = 0; k < sizes[i]; k++) host[k] = (float)check_rng_normal(&rng);
        for (q = 0; q < 2; q++) {
            CUDA_OK(cudaMalloc((void **)&params[q][i], (size_t)sizes[i] * 4));
            CUDA_OK(cudaMemcpy(params[q][i], host, (size_t)sizes[i] * 4, cudaMemcpyHostToDevice));
        }
        CUDA_OK(cudaMalloc((void **)&grads[i], (size_t)sizes[i] * 4));
        CHECK(fadam_add_tensor(single, NULL, params[0][i], grads[i], sizes[i], FADAM_FLOAT32, FADAM_FLOAT32, 0, NULL) ==
                  FADAM_SUCCESS, "%s", fadam_last_error_message());
        for (q = 0; q < 2; q++) {
            int64_t offset, count;
            CHECK(fadam_shard_range(sizes[i], q, 2, &offset, &count) == FADAM_SUCCESS, "%s", fadam_last_error_message());
            CHECK(fadam_add_tensor_shard(rank[q], NULL, params[1][i] + offset, grads[i] + offset, count, sizes[i], offset,
                                         FADAM_FLOAT32, FADAM_FLOAT32, 0, NULL) == FADAM_SUCCESS,
                  "%s", fadam_last_error_message());
        }
        free(host);
    }
    CHECK(fadam_finalize(single, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    for (q = 0; q < 2; q++) {
        CHECK(fadam_finalize(rank[q], NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
        CHECK(fadam_fused_step_reduce_buffer(rank[q], &buffer[q], NULL) == FADAM_SUCCESS, "%s",
              fadam_last_error_message());
    }
    for (s = 0; s < STEPS && !check_case_failed; s++) {
        for (i = 0; i < N; i++) {
            float *host = (float *)malloc((size_t)sizes[i] * 4);
            for (k = 0; k < sizes[i]; k++) host[k] = (float)(40.0 * check_rng_normal(&rng));
            CUDA_OK(cudaMemcpy(grads[i], host, (size_t)sizes[i] * 4, cudaMemcpyHostToDevice));
            free(host);
        }
        CHECK(fadam_fused_step(single, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
        for (q = 0; q < 2; q++) CHECK(fadam_fused_step_begin(rank[q], NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
        for (q = 0; q < 2; q++) CUDA_OK(cudaMemcpy(host_buffer[q], buffer[q], sizeof host_buffer[q], cudaMemcpyDeviceToHost));
        sum[0] = host_buffer[0][0] + host_buffer[1][0];
        sum[1] = host_buffer[0][1] + host_buffer[1][1];
        for (q = 0; q < 2; q++) CUDA_OK(cudaMemcpy(buffer[q], sum, sizeof sum, cudaMemcpyHostToDevice));
        for (q = 0; q < 2; q++) CHECK(fadam_fused_step_end(rank[q], NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
        CHECK(fadam_read_step_counters(single, &counters[2], NULL) == FADAM_SUCCESS, "read");
        for (q = 0; q < 2; q++) CHECK(fadam_read_step_counters(rank[q], &counters[q], NULL) == FADAM_SUCCESS, "read");
        CUDA_OK(cudaDeviceSynchronize());
        CHECK(memcmp(&counters[0], &counters[1], sizeof counters[0]) == 0, "step %d: the ranks decided differently", s + 1);
        CHECK(counters[0].step == counters[2].step && counters[0].loss_scale == counters[2].loss_scale &&
                  fabsf(counters[0].grad_norm - counters[2].grad_norm) <= 2e-7f * counters[2].grad_norm &&
                  counters[2].clip_coef < 1.0f,
              "step %d: t %lld/%lld norm %.9g/%.9g clip %g", s + 1, (long long)counters[0].step,
              (long long)counters[2].step, counters[0].grad_norm, counters[2].grad_norm, counters[2].clip_coef);
        if (counters[0].clip_coef != counters[2].clip_coef) same_clip = 0;
    }
    for (i = 0; i < N && same_clip; i++) {
        size_t bytes = (size_t)sizes[i] * 4;
        void *a = malloc(bytes), *b = malloc(bytes);
        CUDA_OK(cudaMemcpy(a, params[0][i], bytes, cudaMemcpyDeviceToHost));
        CUDA_OK(cudaMemcpy(b, params[1][i], bytes, cudaMemcpyDeviceToHost));
        CHECK(memcmp(a, b, bytes) == 0, "tensor %d: the two ranks' params differ from the single rank's", i);
        free(a);
        free(b);
    }
    fadam_destroy(single);
    for (q = 0; q < 2; q++) fadam_destroy(rank[q]);
    for (i = 0; i < N; i++) {
        cudaFree(params[0][i]);
        cudaFree(params[1][i]);
        cudaFree(grads[i]);
    }
    check_case_end(name);
}

int main(void) {
    rng = check_seed("test_zero_gpu");
    test_graph();
    test_two_ranks();
    return check_exit_code();
}
