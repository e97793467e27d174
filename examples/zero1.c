/* zero1.c - trains the demo's model (examples/demo.c) with ZeRO-1 on every GPU of the machine, one
 * process per GPU, over NCCL. fusedadam itself links no NCCL: this example brings it.
 *
 *   ./build/zero1                       starts one process per GPU (rank r on GPU r) and waits for them
 *   ./build/zero1 RANK NRANKS IDFILE    one rank, for a launcher of your own (one process per GPU)
 *   options (after the above): --steps N, --graph (capture the optimizer step and replay it)
 *
 * Rank 0 writes the NCCL unique id to IDFILE (default /tmp/fusedadam-zero1-<uid>.id; written to a
 * temporary and renamed, so a reader never sees half of it); the other ranks wait for it. With your
 * own launcher, remove IDFILE before starting the ranks (a stale id sends them to a dead rank 0).
 *
 * Every step, on each rank's stream:
 *   1. each rank computes the gradient of its own micro-batch (here: its own noise) for every tensor,
 *      into one flat fp32 buffer padded to a multiple of NRANKS;
 *   2. ncclReduceScatter(avg): rank r receives the averaged gradient of its flat shard
 *      [r*S, (r+1)*S), S = ceil(total / NRANKS) (fadam_shard_range's convention, llm.c's flat shard);
 *   3. fadam_fused_step_begin; ncclAllReduce of the 2 doubles of fadam_fused_step_reduce_buffer;
 *      fadam_fused_step_end: global norm, clipping, Inf/NaN skip and schedule decided on the device,
 *      identically on every rank, with no host synchronization; each rank updates its shard only
 *      (its master weights and moments are 1/NRANKS of the model's);
 *   4. the params are all-gathered: each owner broadcasts its slices (grouped), since the tensors
 *      mix fp32 and bf16 (a flat buffer per dtype with ncclAllGather is the production form).
 * With --graph, step 3 is captured once in a CUDA graph, the NCCL call included, and replayed.
 * Rank 0 prints the loss, the global gradient norm and the clip coefficient (read a step late). */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cuda_runtime.h>
#include <nccl.h>

#include "fusedadam.h"

#define N_TENSORS 8

typedef struct demo_tensor {
    const char *name;
    int64_t numel;
    fadam_dtype dtype;
    float scale; /* the loss's scale, so the gradient's */
    int no_decay;
} demo_tensor;

/* The demo's model. */
static const demo_tensor model[N_TENSORS] = {
    {"quiet.weight", 4096, FADAM_FLOAT32, 0.01f, 0}, {"calm.weight", 3000, FADAM_BFLOAT16, 0.1f, 0},
    {"odd.weight", 777, FADAM_BFLOAT16, 0.3f, 0},    {"busy.weight", 5000, FADAM_FLOAT32, 1.0f, 0},
    {"active.weight", 2048, FADAM_BFLOAT16, 10.0f, 0}, {"hot.weight", 1111, FADAM_FLOAT32, 100.0f, 0},
    {"first.bias", 64, FADAM_FLOAT32, 1.0f, 1},      {"second.bias", 33, FADAM_FLOAT32, 1.0f, 1},
};

static uint64_t rng_state;
static double uniform(void) {
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(rng_state >> 11) * (1.0 / 9007199254740992.0);
}
static float normal(void) {
    double u1 = uniform() + 1e-300, u2 = uniform();
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

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

static int rank_id = 0;

#define TRY(call)                                                                                         \
    do {                                                                                                  \
        fadam_status status_ = (call);                                                                    \
        if (status_ != FADAM_SUCCESS) {                                                                   \
            fprintf(stderr, "rank %d: %s failed: %s\n  %s\n", rank_id, #call, fadam_status_string(status_), \
                    fadam_last_error_message());                                                          \
            exit(1);                                                                                      \
        }                                                                                                 \
    } while (0)

#define CUDA_TRY(call)                                                                                    \
    do {                                                                                                  \
        cudaError_t error_ = (call);                                                                      \
        if (error_ != cudaSuccess) {                                                                      \
            fprintf(stderr, "rank %d: %s failed: %s\n", rank_id, #call, cudaGetErrorString(error_));      \
            exit(1);                                                                                      \
        }                                                                                                 \
    } while (0)

#define NCCL_TRY(call)                                                                                    \
    do {                                                                                                  \
        ncclResult_t result_ = (call);                                                                    \
        if (result_ != ncclSuccess) {                                                                     \
            fprintf(stderr, "rank %d: %s failed: %s\n", rank_id, #call, ncclGetErrorString(result_));     \
            exit(1);                                                                                      \
        }                                                                                                 \
    } while (0)

/* Rank 0 creates the id and publishes it by rename; the others wait up to a minute for the file. */
static ncclUniqueId share_unique_id(int rank, const char *path) {
    ncclUniqueId id;
    char temporary[4096];
    FILE *file;
    int waited;
    if (rank == 0) {
        NCCL_TRY(ncclGetUniqueId(&id));
        snprintf(temporary, sizeof temporary, "%s.%d.tmp", path, (int)getpid());
        file = fopen(temporary, "wb");
        if (!file || fwrite(&id, sizeof id, 1, file) != 1 || fclose(file) != 0 || rename(temporary, path) != 0) {
            fprintf(stderr, "rank 0: cannot write the NCCL id to %s: %s\n", path, strerror(errno));
            exit(1);
        }
        return id;
    }
    for (waited = 0; waited < 6000; waited++) {
        file = fopen(path, "rb");
        if (file) {
            size_t got = fread(&id, sizeof id, 1, file);
            fclose(file);
            if (got == 1) return id;
        }
        nanosleep(&(struct timespec){0, 10 * 1000 * 1000}, NULL);
    }
    fprintf(stderr, "rank %d: no NCCL id in %s after 60 s (is rank 0 running?)\n", rank, path);
    exit(1);
}

static int run_rank(int rank, int n_ranks, const char *id_path, int steps, int use_graph) {
    ncclUniqueId id;
    ncclComm_t comm;
    cudaStream_t stream;
    cudaGraphExec_t graph = NULL;
    fadam_optimizer *opt = NULL;
    fadam_fused_step_config config = fadam_fused_step_config_default();
    fadam_hparams decay = fadam_hparams_default(), no_decay;
    fadam_step_counters *counters_host = NULL;
    void *params[N_TENSORS], *host_params[N_TENSORS];
    float *targets[N_TENSORS], *flat_host, *flat_grads, *shard_grads;
    int64_t base[N_TENSORS], offset[N_TENSORS][64], numel[N_TENSORS][64], total = 0, shard, shard_begin, shard_count;
    double *reduce = NULL;
    int reduce_count = 0, no_decay_group, i, q, step;
    int64_t k;

    rank_id = rank;
    if (n_ranks > 64) {
        fprintf(stderr, "this example handles up to 64 ranks\n");
        return 1;
    }
    id = share_unique_id(rank, id_path);
    CUDA_TRY(cudaSetDevice(rank));
    CUDA_TRY(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    NCCL_TRY(ncclCommInitRank(&comm, n_ranks, id, rank));

    /* The flat layout of every tensor, and every rank's slice of each (to all-gather the params). */
    for (i = 0; i < N_TENSORS; i++) base[i] = total, total += model[i].numel;
    TRY(fadam_shard_range(total, rank, n_ranks, &shard_begin, &shard_count));
    shard = (total + n_ranks - 1) / n_ranks; /* padded: the reduce-scatter needs equal pieces */
    for (q = 0; q < n_ranks; q++) {
        int64_t begin, count;
        TRY(fadam_shard_range(total, q, n_ranks, &begin, &count));
        for (i = 0; i < N_TENSORS; i++) {
            int64_t lo = begin > base[i] ? begin : base[i];
            int64_t hi = begin + count < base[i] + model[i].numel ? begin + count : base[i] + model[i].numel;
            offset[i][q] = lo < hi ? lo - base[i] : 0;
            numel[i][q] = lo < hi ? hi - lo : 0;
        }
    }

    decay.lr = 1e-2f;
    decay.weight_decay = 0.1f;
    no_decay = decay;
    no_decay.weight_decay = 0.0f;
    config.max_grad_norm = 1.0f;
    config.schedule = FADAM_SCHEDULE_WARMUP_COSINE;
    config.warmup_steps = steps / 20;
    config.total_steps = steps;
    config.min_lr_ratio = 0.1f;
    TRY(fadam_create(&opt, FADAM_DEVICE_CUDA, rank, &decay, NULL));
    TRY(fadam_add_group(opt, &no_decay, &no_decay_group));
    TRY(fadam_configure_fused_step(opt, &config));
    TRY(fadam_set_shard_rank(opt, rank, n_ranks));

    CUDA_TRY(cudaMalloc((void **)&flat_grads, (size_t)(shard * n_ranks) * sizeof(float)));
    CUDA_TRY(cudaMalloc((void **)&shard_grads, (size_t)shard * sizeof(float)));
    CUDA_TRY(cudaMemset(flat_grads, 0, (size_t)(shard * n_ranks) * sizeof(float)));
    CUDA_TRY(cudaMallocHost((void **)&flat_host, (size_t)total * sizeof(float)));
    CUDA_TRY(cudaMallocHost((void **)&counters_host, sizeof *counters_host));
    memset(counters_host, 0, sizeof *counters_host);
    rng_state = 42; /* the same initial params and targets on every rank */
    for (i = 0; i < N_TENSORS; i++) {
        size_t element = fadam_dtype_size(model[i].dtype), n = (size_t)model[i].numel;
        host_params[i] = malloc(n * element);
        targets[i] = (float *)malloc(n * sizeof(float));
        for (k = 0; k < model[i].numel; k++) {
            targets[i][k] = normal();
            if (model[i].dtype == FADAM_BFLOAT16) ((uint16_t *)host_params[i])[k] = to_bf16(0.1f * normal());
            else ((float *)host_params[i])[k] = 0.1f * normal();
        }
        CUDA_TRY(cudaMalloc(&params[i], n * element));
        CUDA_TRY(cudaMemcpy(params[i], host_params[i], n * element, cudaMemcpyHostToDevice));
        /* This rank's slice: the params where they are, the gradient inside the reduce-scatter's output. */
        TRY(fadam_add_tensor_shard(opt, model[i].name, (char *)params[i] + offset[i][rank] * (int64_t)element,
                                   numel[i][rank] ? shard_grads + (base[i] + offset[i][rank] - shard_begin)
                                                  : shard_grads,
                                   numel[i][rank],
                                   model[i].numel, offset[i][rank], model[i].dtype, FADAM_FLOAT32,
                                   model[i].no_decay ? no_decay_group : 0, NULL));
    }
    TRY(fadam_finalize(opt, stream));
    TRY(fadam_fused_step_reduce_buffer(opt, &reduce, &reduce_count));
    if (rank == 0)
        printf("fusedadam %s ZeRO-1 on %d GPU(s): %lld elements, %lld per rank's shard%s\n", fadam_version_string(),
               n_ranks, (long long)total, (long long)shard, use_graph ? ", optimizer step in a CUDA graph" : "");

    if (use_graph) {
        /* The optimizer step with its all-reduce, captured once: replays need no host work at all. */
        cudaGraph_t captured;
        CUDA_TRY(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
        TRY(fadam_fused_step_begin(opt, stream));
        NCCL_TRY(ncclAllReduce(reduce, reduce, (size_t)reduce_count, ncclFloat64, ncclSum, comm, stream));
        TRY(fadam_fused_step_end(opt, stream));
        CUDA_TRY(cudaStreamEndCapture(stream, &captured));
        CUDA_TRY(cudaGraphInstantiate(&graph, captured, 0));
        CUDA_TRY(cudaGraphDestroy(captured));
    }

    rng_state = 1000003ull * (uint64_t)(rank + 1); /* each rank its own micro-batch noise */
    for (step = 1; step <= steps; step++) {
        double loss = 0.0;
        /* 1. This rank's gradients, from the current (all-gathered) params. */
        for (i = 0; i < N_TENSORS; i++) {
            size_t element = fadam_dtype_size(model[i].dtype), n = (size_t)model[i].numel;
            CUDA_TRY(cudaMemcpyAsync(host_params[i], params[i], n * element, cudaMemcpyDeviceToHost, stream));
        }
        CUDA_TRY(cudaStreamSynchronize(stream)); /* the host computes the gradients in this toy */
        for (i = 0; i < N_TENSORS; i++)
            for (k = 0; k < model[i].numel; k++) {
                float w = model[i].dtype == FADAM_BFLOAT16 ? from_bf16(((uint16_t *)host_params[i])[k])
                                                           : ((float *)host_params[i])[k];
                float error = w - targets[i][k];
                loss += 0.5 * error * error;
                flat_host[base[i] + k] = model[i].scale * (error + 0.5f * normal());
            }
        if (rank == 0 && (step == 1 || step % 100 == 0))
            printf("  step %4d  loss %.5f  (step %lld: grad norm %.4f, clip %.4f, lr x %.3f)\n", step,
                   loss / (double)total, (long long)counters_host->step, counters_host->grad_norm,
                   counters_host->clip_coef, counters_host->lr_scale);
        CUDA_TRY(cudaMemcpyAsync(flat_grads, flat_host, (size_t)total * sizeof(float), cudaMemcpyHostToDevice, stream));
        /* 2. The averaged gradient of this rank's shard. */
        NCCL_TRY(ncclReduceScatter(flat_grads, shard_grads, (size_t)shard, ncclFloat32, ncclAvg, comm, stream));
        /* 3. The optimizer step around one all-reduce of two doubles. */
        if (graph) {
            CUDA_TRY(cudaGraphLaunch(graph, stream));
        } else {
            TRY(fadam_fused_step_begin(opt, stream));
            NCCL_TRY(ncclAllReduce(reduce, reduce, (size_t)reduce_count, ncclFloat64, ncclSum, comm, stream));
            TRY(fadam_fused_step_end(opt, stream));
        }
        /* Logged a step late: the copy completes with the next synchronization, never stalling one. */
        TRY(fadam_read_step_counters(opt, counters_host, stream));
        /* 4. All-gather the params: every owner broadcasts its slices. */
        NCCL_TRY(ncclGroupStart());
        for (q = 0; q < n_ranks; q++)
            for (i = 0; i < N_TENSORS; i++) {
                size_t element = fadam_dtype_size(model[i].dtype);
                char *slice = (char *)params[i] + offset[i][q] * (int64_t)element;
                if (numel[i][q] == 0) continue;
                NCCL_TRY(ncclBroadcast(slice, slice, (size_t)numel[i][q],
                                       model[i].dtype == FADAM_BFLOAT16 ? ncclBfloat16 : ncclFloat32, q, comm, stream));
            }
        NCCL_TRY(ncclGroupEnd());
    }
    CUDA_TRY(cudaStreamSynchronize(stream));
    if (rank == 0)
        printf("done: %lld steps applied, %lld skipped, last grad norm %.4f\n", (long long)counters_host->step,
               (long long)counters_host->skipped_total, counters_host->grad_norm);

    if (graph) CUDA_TRY(cudaGraphExecDestroy(graph));
    fadam_destroy(opt);
    for (i = 0; i < N_TENSORS; i++) {
        cudaFree(params[i]);
        free(host_params[i]);
        free(targets[i]);
    }
    cudaFree(flat_grads);
    cudaFree(shard_grads);
    cudaFreeHost(flat_host);
    cudaFreeHost(counters_host);
    ncclCommDestroy(comm);
    cudaStreamDestroy(stream);
    return 0;
}

int main(int argc, char **argv) {
    char default_path[256];
    const char *id_path = default_path;
    int steps = 400, use_graph = 0, rank = -1, n_ranks = 0, positional = 0, i, failed = 0;
    snprintf(default_path, sizeof default_path, "/tmp/fusedadam-zero1-%d.id", (int)getuid());
    for (i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--steps") == 0 && i + 1 < argc) steps = atoi(argv[++i]);
        else if (strcmp(argv[i], "--graph") == 0) use_graph = 1;
        else if (positional == 0) rank = atoi(argv[i]), positional++;
        else if (positional == 1) n_ranks = atoi(argv[i]), positional++;
        else if (positional == 2) id_path = argv[i], positional++;
        else {
            fprintf(stderr, "usage: %s [RANK NRANKS [IDFILE]] [--steps N] [--graph]\n", argv[0]);
            return 2;
        }
    }
    if (steps < 20) steps = 20;
    if (positional >= 2) return run_rank(rank, n_ranks, id_path, steps, use_graph);

    /* No rank given: one process per GPU, this program again with its rank (fork, then exec: a forked
     * child may not use the CUDA this process initialized by counting the devices). */
    {
        int count = fadam_cuda_device_count();
        pid_t children[64];
        char rank_text[16], count_text[16], steps_text[16];
        if (count < 1) {
            printf("zero1: no CUDA device; nothing to run (the example needs at least one GPU)\n");
            return 0;
        }
        if (count > 64) count = 64;
        unlink(id_path); /* a stale id from an earlier run would send the ranks to a dead rank 0 */
        for (i = 0; i < count; i++) {
            children[i] = fork();
            if (children[i] == 0) {
                snprintf(rank_text, sizeof rank_text, "%d", i);
                snprintf(count_text, sizeof count_text, "%d", count);
                snprintf(steps_text, sizeof steps_text, "%d", steps);
                execl("/proc/self/exe", argv[0], rank_text, count_text, id_path, "--steps", steps_text,
                      use_graph ? "--graph" : (char *)NULL, (char *)NULL);
                fprintf(stderr, "exec of /proc/self/exe failed: %s\n", strerror(errno));
                _exit(127);
            }
            if (children[i] < 0) {
                fprintf(stderr, "fork failed: %s\n", strerror(errno));
                return 1;
            }
        }
        for (i = 0; i < count; i++) {
            int status = 0;
            if (waitpid(children[i], &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) failed = 1;
        }
        unlink(id_path);
        return failed;
    }
}
