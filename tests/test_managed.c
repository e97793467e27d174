/* test_managed.c - the managed optimizer and the functional call, end to end through the public API:
 * on the CPU device always, and on a CUDA device when one is present (else "skip: no CUDA device"),
 * each compared bit for bit with fadam_cpu_step on a mirror of the same model. */
#include <math.h>

#include <cuda_runtime.h>

#include "check.h"
#include "fusedadam.h"
#include "dtype_values.h"
#include "internal.h"

static uint64_t rng;

/* A model on the host: what the caller owns (params, grads), plus a mirror with its own
 * master/m/v that fadam_cpu_step updates as the expected result. */
typedef struct host_model {
    int64_t n;
    fadam_tensor *mirror; /* the expected side */
    void **params;        /* the caller's params for the side under test (host copies) */
    void **grads;
    fadam_hparams groups[4];
    int n_groups;
} host_model;



static int same_bits(const void *a, const void *b, size_t bytes) { return memcmp(a, b, bytes) == 0; }

static host_model make_model(int64_t n_tensors, int64_t max_numel) {
    static const fadam_dtype dtypes[3] = {FADAM_FLOAT32, FADAM_BFLOAT16, FADAM_FLOAT16};
    host_model m;
    int64_t i, k;
    memset(&m, 0, sizeof m);
    m.n = n_tensors;
    m.mirror = (fadam_tensor *)calloc((size_t)n_tensors, sizeof(fadam_tensor));
    m.params = (void **)calloc((size_t)n_tensors, sizeof(void *));
    m.grads = (void **)calloc((size_t)n_tensors, sizeof(void *));
    m.n_groups = 3;
    m.groups[0] = fadam_hparams_default(); /* decayed weights */
    m.groups[0].weight_decay = 0.1f;
    m.groups[1] = fadam_hparams_default(); /* biases and norms: no decay */
    m.groups[1].weight_decay = 0.0f;
    m.groups[2] = fadam_hparams_default(); /* classic Adam + L2, no bias correction */
    m.groups[2].mode = FADAM_ADAM_L2;
    m.groups[2].bias_correction = 0;
    m.groups[2].lr = 3e-4f;
    for (i = 0; i < n_tensors; i++) {
        fadam_tensor *t = &m.mirror[i];
        size_t n;
        t->numel = (int64_t)(check_rng_next(&rng) % (uint64_t)(max_numel + 1));
        t->param_dtype = dtypes[check_rng_next(&rng) % 3];
        t->grad_dtype = dtypes[check_rng_next(&rng) % 3];
        t->group = (int)(check_rng_next(&rng) % 3);
        n = (size_t)t->numel + 1;
        t->param = malloc(n * 4);
        t->grad = malloc(n * 4);
        t->master = t->param_dtype == FADAM_FLOAT32 ? NULL : (float *)calloc(n, 4);
        t->exp_avg = (float *)calloc(n, 4);
        t->exp_avg_sq = (float *)calloc(n, 4);
        m.params[i] = malloc(n * 4);
        m.grads[i] = malloc(n * 4);
        for (k = 0; k < t->numel; k++) {
            store_as(t->param_dtype, t->param, k, (float)check_rng_normal(&rng));
            if (t->master) ((float *)t->master)[k] = load_as(t->param_dtype, t->param, k);
        }
        memcpy(m.params[i], t->param, n * 4);
    }
    return m;
}

static void free_model(host_model *m) {
    int64_t i;
    for (i = 0; i < m->n; i++) {
        free(m->mirror[i].param);
        free((void *)m->mirror[i].grad);
        free(m->mirror[i].master);
        free(m->mirror[i].exp_avg);
        free(m->mirror[i].exp_avg_sq);
        free(m->params[i]);
        free(m->grads[i]);
    }
    free(m->mirror);
    free(m->params);
    free(m->grads);
}

static void new_gradients(host_model *m) {
    int64_t i, k;
    for (i = 0; i < m->n; i++) {
        fadam_tensor *t = &m->mirror[i];
        for (k = 0; k < t->numel; k++) store_as(t->grad_dtype, (void *)t->grad, k, (float)(1e-2 * check_rng_normal(&rng)));
        memcpy(m->grads[i], t->grad, (size_t)t->numel * fadam_dtype_size(t->grad_dtype));
    }
}

static void expected_step(host_model *m, int64_t step) {
    fadam_step_source source = {step, NULL, NULL};
    CHECK(fadam_cpu_step(m->mirror, m->n, m->groups, m->n_groups, &source) == FADAM_SUCCESS, "mirror: %s",
          fadam_last_error_message());
}

/* Compares the caller's params (host copies) and the optimizer's state (host copies) with the mirror. */
static void compare_state(const host_model *m, void **params, float **masters, float **ms, float **vs, const char *when) {
    int64_t i;
    for (i = 0; i < m->n; i++) {
        const fadam_tensor *t = &m->mirror[i];
        size_t n = (size_t)t->numel;
        if (!same_bits(params[i], t->param, n * fadam_dtype_size(t->param_dtype)) ||
            !same_bits(ms[i], t->exp_avg, n * 4) || !same_bits(vs[i], t->exp_avg_sq, n * 4) ||
            (t->master && !same_bits(masters[i], t->master, n * 4))) {
            CHECK(0, "%s: tensor %lld (numel %lld, param dtype %d, grad dtype %d, group %d) differs from the reference",
                  when, (long long)i, (long long)t->numel, (int)t->param_dtype, (int)t->grad_dtype, t->group);
            return;
        }
    }
}

/* ---------------- CPU device ---------------- */
static void test_managed_cpu(void) {
    host_model m = make_model(37, 3000);
    fadam_optimizer *opt = NULL;
    float **masters = (float **)calloc((size_t)m.n, sizeof(float *));
    float **ms = (float **)calloc((size_t)m.n, sizeof(float *));
    float **vs = (float **)calloc((size_t)m.n, sizeof(float *));
    int64_t i, step, count = 0;
    int g, groups = 0;
    check_case_begin();
    CHECK(fadam_create(&opt, FADAM_DEVICE_CPU, 0, &m.groups[0], NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    for (g = 1; g < m.n_groups; g++)
        CHECK(fadam_add_group(opt, &m.groups[g], NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    for (i = 0; i < m.n; i++) {
        const fadam_tensor *t = &m.mirror[i];
        int64_t index = -1;
        CHECK(fadam_add_tensor(opt, NULL, m.params[i], m.grads[i], t->numel, t->param_dtype, t->grad_dtype, t->group,
                               &index) == FADAM_SUCCESS && index == i,
              "add_tensor %lld: %s", (long long)i, fadam_last_error_message());
    }
    CHECK(fadam_finalize(opt, NULL) == FADAM_SUCCESS, "finalize: %s", fadam_last_error_message());
    CHECK(fadam_num_tensors(opt, &count) == FADAM_SUCCESS && count == m.n, "num_tensors");
    CHECK(fadam_num_groups(opt, &groups) == FADAM_SUCCESS && groups == m.n_groups, "num_groups");
    for (i = 0; i < m.n; i++)
        CHECK(fadam_get_state(opt, i, &masters[i], &ms[i], &vs[i]) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    compare_state(&m, m.params, masters, ms, vs, "after finalize (master = float(param), zero moments)");
    for (step = 1; step <= 5 && !check_case_failed; step++) {
        /* A schedule: lr changes between steps without rebuilding anything. */
        float lr = 1e-3f * (float)step;
        m.groups[0].lr = lr;
        CHECK(fadam_set_lr(opt, 0, lr) == FADAM_SUCCESS, "%s", fadam_last_error_message());
        new_gradients(&m);
        CHECK(fadam_step(opt, NULL) == FADAM_SUCCESS, "step: %s", fadam_last_error_message());
        expected_step(&m, step);
        compare_state(&m, m.params, masters, ms, vs, "after a step");
    }
    {
        int64_t t = 0;
        CHECK(fadam_get_step(opt, &t) == FADAM_SUCCESS && t == 5, "step counter %lld, want 5", (long long)t);
    }
    /* step_from: t and lr from memory (host memory on the CPU device); the host counter stays. */
    {
        int64_t device_step = 6;
        float device_lr[3];
        fadam_step_source source = {0, NULL, NULL};
        fadam_step_source expected = {0, NULL, NULL};
        int64_t t = 0;
        for (g = 0; g < 3; g++) device_lr[g] = m.groups[g].lr * 0.5f;
        source.device_step = &device_step;
        source.device_lr = device_lr;
        expected.device_step = &device_step;
        expected.device_lr = device_lr;
        new_gradients(&m);
        CHECK(fadam_step_from(opt, &source, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
        CHECK(fadam_cpu_step(m.mirror, m.n, m.groups, m.n_groups, &expected) == FADAM_SUCCESS, "%s",
              fadam_last_error_message());
        compare_state(&m, m.params, masters, ms, vs, "after step_from");
        CHECK(fadam_get_step(opt, &t) == FADAM_SUCCESS && t == 5, "step_from moved the host counter to %lld",
              (long long)t);
    }
    fadam_destroy(opt);
    free(masters);
    free(ms);
    free(vs);
    free_model(&m);
    check_case_end("managed_cpu_matches_reference");
}

/* ---------------- CUDA device ---------------- */

#define CUDA_OK(call) CHECK((call) == cudaSuccess, "%s: %s", #call, cudaGetErrorString(cudaGetLastError()))

typedef struct device_copy {
    void **params, **grads; /* device */
    void **host_params;     /* read back */
    float **host_masters, **host_ms, **host_vs;
} device_copy;

static device_copy upload(const host_model *m) {
    device_copy d;
    int64_t i;
    d.params = (void **)calloc((size_t)m->n, sizeof(void *));
    d.grads = (void **)calloc((size_t)m->n, sizeof(void *));
    d.host_params = (void **)calloc((size_t)m->n, sizeof(void *));
    d.host_masters = (float **)calloc((size_t)m->n, sizeof(float *));
    d.host_ms = (float **)calloc((size_t)m->n, sizeof(float *));
    d.host_vs = (float **)calloc((size_t)m->n, sizeof(float *));
    for (i = 0; i < m->n; i++) {
        size_t n = (size_t)m->mirror[i].numel + 1;
        CUDA_OK(cudaMalloc(&d.params[i], n * 4));
        CUDA_OK(cudaMalloc(&d.grads[i], n * 4));
        CUDA_OK(cudaMemcpy(d.params[i], m->params[i], n * 4, cudaMemcpyHostToDevice));
        d.host_params[i] = malloc(n * 4);
        d.host_masters[i] = (float *)malloc(n * 4);
        d.host_ms[i] = (float *)malloc(n * 4);
        d.host_vs[i] = (float *)malloc(n * 4);
    }
    return d;
}

static void upload_gradients(const host_model *m, device_copy *d) {
    int64_t i;
    for (i = 0; i < m->n; i++)
        CUDA_OK(cudaMemcpy(d->grads[i], m->grads[i], (size_t)m->mirror[i].numel * fadam_dtype_size(m->mirror[i].grad_dtype),
                           cudaMemcpyHostToDevice));
}

static void download(const host_model *m, device_copy *d, float **masters, float **ms, float **vs) {
    int64_t i;
    CUDA_OK(cudaDeviceSynchronize());
    for (i = 0; i < m->n; i++) {
        size_t n = (size_t)m->mirror[i].numel;
        CUDA_OK(cudaMemcpy(d->host_params[i], d->params[i], n * fadam_dtype_size(m->mirror[i].param_dtype),
                           cudaMemcpyDeviceToHost));
        if (masters[i]) CUDA_OK(cudaMemcpy(d->host_masters[i], masters[i], n * 4, cudaMemcpyDeviceToHost));
        CUDA_OK(cudaMemcpy(d->host_ms[i], ms[i], n * 4, cudaMemcpyDeviceToHost));
        CUDA_OK(cudaMemcpy(d->host_vs[i], vs[i], n * 4, cudaMemcpyDeviceToHost));
    }
}

static void free_device(const host_model *m, device_copy *d) {
    int64_t i;
    for (i = 0; i < m->n; i++) {
        cudaFree(d->params[i]);
        cudaFree(d->grads[i]);
        free(d->host_params[i]);
        free(d->host_masters[i]);
        free(d->host_ms[i]);
        free(d->host_vs[i]);
    }
    free(d->params);
    free(d->grads);
    free(d->host_params);
    free(d->host_masters);
    free(d->host_ms);
    free(d->host_vs);
}

static void test_managed_cuda(const char *name, int64_t n_tensors, int64_t max_numel) {
    host_model m;
    device_copy d;
    fadam_optimizer *opt = NULL;
    float **masters, **ms, **vs;
    cudaStream_t stream;
    int64_t i, step;
    int g;
    if (fadam_cuda_device_count() == 0) {
        check_skip(name, "no CUDA device");
        return;
    }
    check_case_begin();
    m = make_model(n_tensors, max_numel);
    d = upload(&m);
    masters = (float **)calloc((size_t)m.n, sizeof(float *));
    ms = (float **)calloc((size_t)m.n, sizeof(float *));
    vs = (float **)calloc((size_t)m.n, sizeof(float *));
    CUDA_OK(cudaStreamCreate(&stream));
    CHECK(fadam_create(&opt, FADAM_DEVICE_CUDA, 0, &m.groups[0], NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    for (g = 1; g < m.n_groups; g++)
        CHECK(fadam_add_group(opt, &m.groups[g], NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    for (i = 0; i < m.n; i++)
        CHECK(fadam_add_tensor(opt, NULL, d.params[i], d.grads[i], m.mirror[i].numel, m.mirror[i].param_dtype,
                               m.mirror[i].grad_dtype, m.mirror[i].group, NULL) == FADAM_SUCCESS,
              "%s", fadam_last_error_message());
    CHECK(fadam_finalize(opt, (fadam_stream)stream) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    for (i = 0; i < m.n; i++) CHECK(fadam_get_state(opt, i, &masters[i], &ms[i], &vs[i]) == FADAM_SUCCESS, "get_state");
    download(&m, &d, masters, ms, vs);
    compare_state(&m, d.host_params, d.host_masters, d.host_ms, d.host_vs, "after finalize");
    for (step = 1; step <= 3 && !check_case_failed; step++) {
        m.groups[1].lr = 2e-3f / (float)step;
        CHECK(fadam_set_lr(opt, 1, m.groups[1].lr) == FADAM_SUCCESS, "%s", fadam_last_error_message());
        new_gradients(&m);
        upload_gradients(&m, &d);
        CHECK(fadam_step(opt, (fadam_stream)stream) == FADAM_SUCCESS, "%s", fadam_last_error_message());
        expected_step(&m, step);
        download(&m, &d, masters, ms, vs);
        compare_state(&m, d.host_params, d.host_masters, d.host_ms, d.host_vs, "after a GPU step");
    }
    fadam_destroy(opt);
    cudaStreamDestroy(stream);
    free_device(&m, &d);
    free(masters);
    free(ms);
    free(vs);
    free_model(&m);
    check_case_end(name);
}

/* The functional call: caller-owned state, table encoded on the host and copied by the caller. */
static void test_functional_cuda(void) {
    const char *name = "functional_step_table_cuda_matches_reference";
    host_model m;
    device_copy d;
    fadam_tensor *device_tensors;
    float **masters, **ms, **vs;
    size_t table_bytes = 0;
    void *host_table = NULL, *device_table = NULL;
    int64_t i, step;
    if (fadam_cuda_device_count() == 0) {
        check_skip(name, "no CUDA device");
        return;
    }
    check_case_begin();
    m = make_model(50, 5000);
    d = upload(&m);
    device_tensors = (fadam_tensor *)calloc((size_t)m.n, sizeof(fadam_tensor));
    masters = (float **)calloc((size_t)m.n, sizeof(float *));
    ms = (float **)calloc((size_t)m.n, sizeof(float *));
    vs = (float **)calloc((size_t)m.n, sizeof(float *));
    for (i = 0; i < m.n; i++) {
        size_t n = (size_t)m.mirror[i].numel + 1;
        device_tensors[i] = m.mirror[i];
        device_tensors[i].param = d.params[i];
        device_tensors[i].grad = d.grads[i];
        if (m.mirror[i].master) {
            CUDA_OK(cudaMalloc((void **)&masters[i], n * 4));
            CUDA_OK(cudaMemcpy(masters[i], m.mirror[i].master, n * 4, cudaMemcpyHostToDevice));
        }
        CUDA_OK(cudaMalloc((void **)&ms[i], n * 4));
        CUDA_OK(cudaMalloc((void **)&vs[i], n * 4));
        CUDA_OK(cudaMemset(ms[i], 0, n * 4));
        CUDA_OK(cudaMemset(vs[i], 0, n * 4));
        device_tensors[i].master = masters[i];
        device_tensors[i].exp_avg = ms[i];
        device_tensors[i].exp_avg_sq = vs[i];
    }
    CHECK(fadam_table_bytes(device_tensors, m.n, m.n_groups, &table_bytes) == FADAM_SUCCESS, "%s",
          fadam_last_error_message());
    CUDA_OK(cudaMallocHost(&host_table, table_bytes));
    CUDA_OK(cudaMalloc(&device_table, table_bytes));
    CHECK(fadam_table_encode(device_tensors, m.n, m.n_groups, host_table, table_bytes) == FADAM_SUCCESS, "%s",
          fadam_last_error_message());
    CUDA_OK(cudaMemcpy(device_table, host_table, table_bytes, cudaMemcpyHostToDevice));
    for (step = 1; step <= 3 && !check_case_failed; step++) {
        fadam_step_source source = {0, NULL, NULL};
        source.step = step;
        new_gradients(&m);
        upload_gradients(&m, &d);
        CHECK(fadam_step_table(device_table, m.groups, m.n_groups, &source, NULL) == FADAM_SUCCESS, "%s",
              fadam_last_error_message());
        expected_step(&m, step);
        download(&m, &d, masters, ms, vs);
        compare_state(&m, d.host_params, d.host_masters, d.host_ms, d.host_vs, "functional GPU step");
    }
    for (i = 0; i < m.n; i++) {
        cudaFree(masters[i]);
        cudaFree(ms[i]);
        cudaFree(vs[i]);
    }
    cudaFreeHost(host_table);
    cudaFree(device_table);
    free(device_tensors);
    free(masters);
    free(ms);
    free(vs);
    free_device(&m, &d);
    free_model(&m);
    check_case_end(name);
}

int main(void) {
    rng = check_seed("test_managed");
    test_managed_cpu();
    test_managed_cuda("managed_cuda_matches_reference", 40, 200000);
    test_managed_cuda("managed_cuda_100000_tiny_tensors_one_launch", 100000, 7);
    test_functional_cuda();
    return check_exit_code();
}
