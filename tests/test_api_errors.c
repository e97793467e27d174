/* test_api_errors.c - every public function fed bad input returns its status and a message naming
 * the problem, and changes nothing. Built with ASan/UBSan (make test), so a leak or an overflow on an
 * error path fails too. */
#include <math.h>

#include "check.h"
#include "fusedadam.h"

/* Expects `call` to return `want` with a message containing `needle`. */
#define EXPECT_STATUS(call, want, needle)                                                                  \
    do {                                                                                                   \
        fadam_status got_ = (call);                                                                        \
        const char *message_ = fadam_last_error_message();                                                 \
        CHECK(got_ == (want), "%s returned %d (%s), want %d; message: %s", #call, (int)got_,               \
              fadam_status_string(got_), (int)(want), message_);                                           \
        CHECK(strstr(message_, needle) != NULL, "%s: message '%s' does not mention '%s'", #call, message_, \
              needle);                                                                                     \
    } while (0)

static void test_status_strings(void) {
    int s;
    check_case_begin();
    for (s = 0; s >= -13; s--) {
        const char *text = fadam_status_string((fadam_status)s);
        CHECK(text && strncmp(text, "FADAM_", 6) == 0 && !strstr(text, "UNKNOWN"), "status %d has no name", s);
    }
    CHECK(strstr(fadam_status_string((fadam_status)-999), "UNKNOWN") != NULL, "unknown status not flagged");
    {
        char expected[32];
        snprintf(expected, sizeof expected, "%d.%d.%d", FADAM_VERSION_MAJOR, FADAM_VERSION_MINOR, FADAM_VERSION_PATCH);
        CHECK(strcmp(fadam_version_string(), expected) == 0, "version '%s', header says %s", fadam_version_string(),
              expected);
    }
    CHECK(fadam_dtype_size(FADAM_FLOAT32) == 4 && fadam_dtype_size(FADAM_BFLOAT16) == 2 &&
              fadam_dtype_size(FADAM_FLOAT16) == 2 && fadam_dtype_size((fadam_dtype)7) == 0,
          "dtype sizes");
    /* A success clears the previous message. */
    fadam_hparams h = fadam_hparams_default();
    (void)fadam_hparams_validate(NULL);
    CHECK(fadam_hparams_validate(&h) == FADAM_SUCCESS && fadam_last_error_message()[0] == '\0',
          "message not cleared by a successful call");
    check_case_end("status_strings_and_message_reset");
}

static void test_hparams(void) {
    fadam_hparams h;
    check_case_begin();
    EXPECT_STATUS(fadam_hparams_validate(NULL), FADAM_ERR_NULL_POINTER, "hparams");
#define BAD(field, value, needle)                                                  \
    h = fadam_hparams_default();                                                   \
    h.field = value;                                                               \
    EXPECT_STATUS(fadam_hparams_validate(&h), FADAM_ERR_INVALID_VALUE, needle)
    BAD(lr, -1.0f, "lr");
    BAD(lr, NAN, "lr");
    BAD(lr, INFINITY, "lr");
    BAD(beta1, 1.0f, "beta1");
    BAD(beta1, -0.1f, "beta1");
    BAD(beta2, 1.5f, "beta2");
    BAD(beta2, NAN, "beta2");
    BAD(eps, -1e-8f, "eps");
    BAD(weight_decay, -0.01f, "weight_decay");
    BAD(weight_decay, NAN, "weight_decay");
    BAD(mode, (fadam_mode)5, "mode");
    BAD(bias_correction, 2, "bias_correction");
    BAD(maximize, -1, "maximize");
#undef BAD
    /* validate has no group: its message names none, and an unknown mode's lists every rule's */
    h = fadam_hparams_default();
    h.mode = (fadam_mode)7;
    EXPECT_STATUS(fadam_hparams_validate(&h), FADAM_ERR_INVALID_VALUE, "mode=7 is not a fadam_mode, one of: FADAM_ADAMW FADAM_ADAM_L2 FADAM_LION");
    CHECK(strstr(fadam_last_error_message(), "group") == NULL, "fadam_hparams_validate names a group: %s",
          fadam_last_error_message());
    h = fadam_hparams_default();
    CHECK(h.lr == 1e-3f && h.beta1 == 0.9f && h.beta2 == 0.999f && h.eps == 1e-8f && h.weight_decay == 1e-2f &&
              h.mode == FADAM_ADAMW && h.bias_correction == 1 && h.maximize == 0,
          "defaults are not PyTorch's AdamW defaults");
    check_case_end("hparams_validation");
}

/* A small valid tensor on the host, for the functional API. */
typedef struct host_tensor {
    float param[8], grad[8], m[8], v[8];
} host_tensor;

static fadam_tensor make_tensor(host_tensor *h) {
    fadam_tensor t;
    memset(h, 0, sizeof *h);
    memset(&t, 0, sizeof t);
    t.param = h->param;
    t.grad = h->grad;
    t.exp_avg = h->m;
    t.exp_avg_sq = h->v;
    t.numel = 8;
    t.param_dtype = t.grad_dtype = FADAM_FLOAT32;
    return t;
}

static void test_functional_errors(void) {
    host_tensor a, b;
    fadam_tensor t[2], bad;
    fadam_hparams groups[2];
    fadam_step_source source = {1, NULL, NULL};
    size_t bytes = 0;
    _Alignas(16) unsigned char table[512]; /* a header and two entries: 48 + 2 * 112 bytes */
    uint16_t half_param[9];
    check_case_begin();
    t[0] = make_tensor(&a);
    t[1] = make_tensor(&b);
    groups[0] = groups[1] = fadam_hparams_default();

    EXPECT_STATUS(fadam_table_bytes(t, 2, 1, NULL), FADAM_ERR_NULL_POINTER, "bytes_out");
    EXPECT_STATUS(fadam_table_bytes(NULL, 2, 1, &bytes), FADAM_ERR_NULL_POINTER, "tensors");
    EXPECT_STATUS(fadam_table_bytes(t, -1, 1, &bytes), FADAM_ERR_INVALID_VALUE, "n_tensors");
    EXPECT_STATUS(fadam_table_bytes(t, 2, 0, &bytes), FADAM_ERR_INVALID_VALUE, "n_groups");
    EXPECT_STATUS(fadam_table_bytes(t, 2, FADAM_MAX_GROUPS + 1, &bytes), FADAM_ERR_INVALID_VALUE, "n_groups");
    CHECK(fadam_table_bytes(NULL, 0, 1, &bytes) == FADAM_SUCCESS, "zero tensors must be fine: %s",
          fadam_last_error_message());

#define BAD_TENSOR(mutation, want, needle)                                       \
    bad = t[1];                                                                  \
    mutation;                                                                    \
    {                                                                            \
        fadam_tensor pair_[2];                                                   \
        pair_[0] = t[0];                                                         \
        pair_[1] = bad;                                                          \
        EXPECT_STATUS(fadam_table_bytes(pair_, 2, 1, &bytes), want, needle);     \
        EXPECT_STATUS(fadam_cpu_step(pair_, 2, groups, 1, &source), want, needle); \
    }
    BAD_TENSOR(bad.param = NULL, FADAM_ERR_NULL_POINTER, "tensor 1: param");
    BAD_TENSOR(bad.grad = NULL, FADAM_ERR_NULL_POINTER, "tensor 1: grad");
    BAD_TENSOR(bad.exp_avg = NULL, FADAM_ERR_NULL_POINTER, "exp_avg");
    BAD_TENSOR(bad.exp_avg_sq = NULL, FADAM_ERR_NULL_POINTER, "exp_avg_sq");
    BAD_TENSOR(bad.numel = -5, FADAM_ERR_INVALID_VALUE, "numel");
    BAD_TENSOR(bad.numel = (int64_t)1 << 62, FADAM_ERR_INVALID_VALUE, "numel");
    BAD_TENSOR(bad.param_dtype = (fadam_dtype)9, FADAM_ERR_UNSUPPORTED_DTYPE, "param_dtype");
    BAD_TENSOR(bad.grad_dtype = (fadam_dtype)-1, FADAM_ERR_UNSUPPORTED_DTYPE, "grad_dtype");
    BAD_TENSOR(bad.group = 1, FADAM_ERR_INVALID_VALUE, "group");
    BAD_TENSOR(bad.master = b.m, FADAM_ERR_INVALID_VALUE, "own master");
    BAD_TENSOR(bad.param = (char *)b.param + 1, FADAM_ERR_MISALIGNED, "param");
    BAD_TENSOR(bad.grad = (char *)b.grad + 2, FADAM_ERR_MISALIGNED, "grad");
    BAD_TENSOR(bad.exp_avg = (float *)((char *)b.m + 1), FADAM_ERR_MISALIGNED, "aligned");
    BAD_TENSOR(bad.grad = bad.param, FADAM_ERR_OVERLAP, "same buffer");
    BAD_TENSOR(bad.exp_avg = a.v + 4, FADAM_ERR_OVERLAP, "overlaps");
    BAD_TENSOR(bad.param = a.param, FADAM_ERR_OVERLAP, "overlaps");
    /* A 16-bit param at an odd address is misaligned for its dtype. */
    BAD_TENSOR((bad.param_dtype = FADAM_BFLOAT16, bad.param = (char *)half_param + 1), FADAM_ERR_MISALIGNED, "param");
#undef BAD_TENSOR
    /* An empty tensor's pointers are never used: NULLs are fine. */
    bad = t[1];
    bad.numel = 0;
    bad.param = NULL;
    bad.grad = NULL;
    bad.exp_avg = bad.exp_avg_sq = NULL;
    CHECK(fadam_cpu_step(&bad, 1, groups, 1, &source) == FADAM_SUCCESS, "empty tensor: %s",
          fadam_last_error_message());

    CHECK(fadam_table_bytes(t, 2, 1, &bytes) == FADAM_SUCCESS && bytes <= sizeof table, "table bytes %zu", bytes);
    EXPECT_STATUS(fadam_table_encode(t, 2, 1, NULL, bytes), FADAM_ERR_NULL_POINTER, "host_table");
    EXPECT_STATUS(fadam_table_encode(t, 2, 1, table + 8, bytes), FADAM_ERR_MISALIGNED, "16-byte");
    EXPECT_STATUS(fadam_table_encode(t, 2, 1, table, bytes - 1), FADAM_ERR_WORKSPACE_TOO_SMALL, "table_bytes");
    CHECK(fadam_table_encode(t, 2, 1, table, bytes) == FADAM_SUCCESS, "%s", fadam_last_error_message());

    EXPECT_STATUS(fadam_cpu_step(t, 2, NULL, 1, &source), FADAM_ERR_NULL_POINTER, "groups");
    EXPECT_STATUS(fadam_cpu_step(t, 2, groups, 1, NULL), FADAM_ERR_NULL_POINTER, "source");
    source.step = 0;
    EXPECT_STATUS(fadam_cpu_step(t, 2, groups, 1, &source), FADAM_ERR_INVALID_VALUE, "step");
    source.step = 1;
    groups[1].beta2 = 2.0f;
    EXPECT_STATUS(fadam_cpu_step(t, 2, groups, 2, &source), FADAM_ERR_INVALID_VALUE, "group 1: beta2");
    groups[1] = fadam_hparams_default();

    /* Nothing was modified by any failed call. */
    {
        int i, untouched = 1;
        for (i = 0; i < 8; i++) untouched &= a.param[i] == 0.0f && a.m[i] == 0.0f && b.v[i] == 0.0f;
        CHECK(untouched, "a failed call modified a buffer");
    }

    /* fadam_step_table checks its arguments before touching CUDA. */
    EXPECT_STATUS(fadam_step_table(NULL, groups, 1, &source, NULL), FADAM_ERR_NULL_POINTER, "device_table");
    EXPECT_STATUS(fadam_step_table(table, NULL, 1, &source, NULL), FADAM_ERR_NULL_POINTER, "groups");
    EXPECT_STATUS(fadam_step_table(table, groups, 1, NULL, NULL), FADAM_ERR_NULL_POINTER, "source");
    EXPECT_STATUS(fadam_step_table(table + 4, groups, 1, &source, NULL), FADAM_ERR_MISALIGNED, "device_table");
    EXPECT_STATUS(fadam_step_table(table, groups, 0, &source, NULL), FADAM_ERR_INVALID_VALUE, "n_groups");
    source.step = -3;
    EXPECT_STATUS(fadam_step_table(table, groups, 1, &source, NULL), FADAM_ERR_INVALID_VALUE, "step");
    source.step = 1;
    check_case_end("functional_api_errors");
}

static void test_managed_errors(void) {
    fadam_optimizer *opt = NULL;
    fadam_hparams h = fadam_hparams_default();
    float param[16] = {0}, grad[16] = {0};
    float *master, *m, *v;
    int64_t index = -1, count = 0;
    int group = -1;
    check_case_begin();
    EXPECT_STATUS(fadam_create(NULL, FADAM_DEVICE_CPU, 0, NULL, NULL), FADAM_ERR_NULL_POINTER, "out");
    EXPECT_STATUS(fadam_create(&opt, (fadam_device_kind)4, 0, NULL, NULL), FADAM_ERR_INVALID_VALUE, "device");
    CHECK(opt == NULL, "failed create left a handle");
    h.lr = -1.0f;
    EXPECT_STATUS(fadam_create(&opt, FADAM_DEVICE_CPU, 0, &h, NULL), FADAM_ERR_INVALID_VALUE, "lr");
    {
        fadam_allocator half_allocator = {NULL, NULL, NULL};
        EXPECT_STATUS(fadam_create(&opt, FADAM_DEVICE_CPU, 0, NULL, &half_allocator), FADAM_ERR_NULL_POINTER,
                      "allocator");
    }
    if (fadam_cuda_device_count() == 0) {
        EXPECT_STATUS(fadam_create(&opt, FADAM_DEVICE_CUDA, 0, NULL, NULL), FADAM_ERR_NO_DEVICE, "no CUDA device");
        CHECK(opt == NULL, "failed create left a handle");
    } else {
        EXPECT_STATUS(fadam_create(&opt, FADAM_DEVICE_CUDA, 1000, NULL, NULL), FADAM_ERR_INVALID_VALUE, "cuda_device");
    }
    fadam_destroy(NULL); /* a no-op */

    CHECK(fadam_create(&opt, FADAM_DEVICE_CPU, 0, NULL, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    EXPECT_STATUS(fadam_step(opt, NULL), FADAM_ERR_BAD_STATE, "fadam_finalize first");
    EXPECT_STATUS(fadam_get_state(opt, 0, &master, &m, &v), FADAM_ERR_BAD_STATE, "finalize");
    EXPECT_STATUS(fadam_step(NULL, NULL), FADAM_ERR_NULL_POINTER, "opt");
    EXPECT_STATUS(fadam_add_group(NULL, &h, &group), FADAM_ERR_NULL_POINTER, "opt");
    EXPECT_STATUS(fadam_add_group(opt, NULL, &group), FADAM_ERR_NULL_POINTER, "hparams");
    h = fadam_hparams_default();
    h.weight_decay = 0.0f;
    CHECK(fadam_add_group(opt, &h, &group) == FADAM_SUCCESS && group == 1, "add_group: %s",
          fadam_last_error_message());
    EXPECT_STATUS(fadam_add_tensor(NULL, "w", param, grad, 16, FADAM_FLOAT32, FADAM_FLOAT32, 0, &index),
                  FADAM_ERR_NULL_POINTER, "opt");
    EXPECT_STATUS(fadam_add_tensor(opt, "w", NULL, grad, 16, FADAM_FLOAT32, FADAM_FLOAT32, 0, &index),
                  FADAM_ERR_NULL_POINTER, "param");
    EXPECT_STATUS(fadam_add_tensor(opt, "w", param, NULL, 16, FADAM_FLOAT32, FADAM_FLOAT32, 0, &index),
                  FADAM_ERR_NULL_POINTER, "grad");
    EXPECT_STATUS(fadam_add_tensor(opt, "w", param, grad, -1, FADAM_FLOAT32, FADAM_FLOAT32, 0, &index),
                  FADAM_ERR_INVALID_VALUE, "numel");
    EXPECT_STATUS(fadam_add_tensor(opt, "w", param, grad, 16, (fadam_dtype)3, FADAM_FLOAT32, 0, &index),
                  FADAM_ERR_UNSUPPORTED_DTYPE, "param_dtype");
    EXPECT_STATUS(fadam_add_tensor(opt, "w", param, grad, 16, FADAM_FLOAT32, (fadam_dtype)3, 0, &index),
                  FADAM_ERR_UNSUPPORTED_DTYPE, "grad_dtype");
    EXPECT_STATUS(fadam_add_tensor(opt, "w", param, grad, 16, FADAM_FLOAT32, FADAM_FLOAT32, 2, &index),
                  FADAM_ERR_INVALID_VALUE, "group");
    EXPECT_STATUS(fadam_add_tensor(opt, "w", param, param, 16, FADAM_FLOAT32, FADAM_FLOAT32, 0, &index),
                  FADAM_ERR_OVERLAP, "same buffer");
    EXPECT_STATUS(fadam_add_tensor(opt, "", param, grad, 16, FADAM_FLOAT32, FADAM_FLOAT32, 0, &index),
                  FADAM_ERR_INVALID_VALUE, "name");
    CHECK(fadam_num_tensors(opt, &count) == FADAM_SUCCESS && count == 0, "a failed add registered a tensor");

    CHECK(fadam_add_tensor(opt, "w", param, grad, 8, FADAM_FLOAT32, FADAM_FLOAT32, 0, &index) == FADAM_SUCCESS &&
              index == 0,
          "add: %s", fadam_last_error_message());
    CHECK(fadam_add_tensor(opt, "w", param + 8, grad + 8, 8, FADAM_FLOAT32, FADAM_FLOAT32, 1, &index) == FADAM_SUCCESS,
          "add: %s", fadam_last_error_message());
    /* Duplicate names are caught at finalize, which then leaves the optimizer as it was. */
    EXPECT_STATUS(fadam_finalize(opt, NULL), FADAM_ERR_INVALID_VALUE, "named 'w'");
    EXPECT_STATUS(fadam_step(opt, NULL), FADAM_ERR_BAD_STATE, "finalize");
    fadam_destroy(opt);

    /* Overlap between two registered tensors is caught at finalize. */
    CHECK(fadam_create(&opt, FADAM_DEVICE_CPU, 0, NULL, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    CHECK(fadam_add_tensor(opt, NULL, param, grad, 8, FADAM_FLOAT32, FADAM_FLOAT32, 0, NULL) == FADAM_SUCCESS, "%s",
          fadam_last_error_message());
    CHECK(fadam_add_tensor(opt, NULL, param + 4, grad + 8, 8, FADAM_FLOAT32, FADAM_FLOAT32, 0, NULL) == FADAM_SUCCESS,
          "%s", fadam_last_error_message());
    EXPECT_STATUS(fadam_finalize(opt, NULL), FADAM_ERR_OVERLAP, "overlaps");
    fadam_destroy(opt);

    /* After finalize: no more registration; setters validate. */
    CHECK(fadam_create(&opt, FADAM_DEVICE_CPU, 0, NULL, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    CHECK(fadam_add_tensor(opt, "w", param, grad, 16, FADAM_FLOAT32, FADAM_FLOAT32, 0, NULL) == FADAM_SUCCESS, "%s",
          fadam_last_error_message());
    CHECK(fadam_finalize(opt, NULL) == FADAM_SUCCESS, "finalize: %s", fadam_last_error_message());
    EXPECT_STATUS(fadam_finalize(opt, NULL), FADAM_ERR_BAD_STATE, "already finalized");
    EXPECT_STATUS(fadam_add_tensor(opt, "x", param, grad, 4, FADAM_FLOAT32, FADAM_FLOAT32, 0, NULL),
                  FADAM_ERR_BAD_STATE, "already finalized");
    EXPECT_STATUS(fadam_add_group(opt, &h, NULL), FADAM_ERR_BAD_STATE, "already finalized");
    EXPECT_STATUS(fadam_set_lr(opt, 1, 0.1f), FADAM_ERR_INVALID_VALUE, "group=1");
    EXPECT_STATUS(fadam_set_lr(opt, 0, -0.1f), FADAM_ERR_INVALID_VALUE, "lr");
    EXPECT_STATUS(fadam_set_lr(opt, 0, NAN), FADAM_ERR_INVALID_VALUE, "lr");
    h.eps = -1.0f;
    EXPECT_STATUS(fadam_set_hparams(opt, 0, &h), FADAM_ERR_INVALID_VALUE, "eps");
    EXPECT_STATUS(fadam_set_hparams(opt, 0, NULL), FADAM_ERR_NULL_POINTER, "hparams");
    EXPECT_STATUS(fadam_get_hparams(opt, 0, NULL), FADAM_ERR_NULL_POINTER, "out");
    EXPECT_STATUS(fadam_get_hparams(opt, -1, &h), FADAM_ERR_INVALID_VALUE, "group");
    CHECK(fadam_get_hparams(opt, 0, &h) == FADAM_SUCCESS && h.lr == 1e-3f && h.eps == 1e-8f,
          "a failed setter changed the group");
    EXPECT_STATUS(fadam_get_state(opt, 1, &master, &m, &v), FADAM_ERR_INVALID_VALUE, "index");
    EXPECT_STATUS(fadam_get_step(opt, NULL), FADAM_ERR_NULL_POINTER, "step_out");
    EXPECT_STATUS(fadam_set_step(opt, -1), FADAM_ERR_INVALID_VALUE, "step");
    EXPECT_STATUS(fadam_num_tensors(NULL, &count), FADAM_ERR_NULL_POINTER, "opt");
    EXPECT_STATUS(fadam_num_groups(opt, NULL), FADAM_ERR_NULL_POINTER, "count_out");
    EXPECT_STATUS(fadam_step_from(opt, NULL, NULL), FADAM_ERR_NULL_POINTER, "source");
    {
        fadam_step_source source = {0, NULL, NULL};
        int64_t zero = 0;
        EXPECT_STATUS(fadam_step_from(opt, &source, NULL), FADAM_ERR_INVALID_VALUE, "step");
        source.device_step = &zero; /* the CPU device reads it at once */
        EXPECT_STATUS(fadam_step_from(opt, &source, NULL), FADAM_ERR_INVALID_VALUE, "step");
    }
    {
        int64_t step = -1;
        CHECK(fadam_get_step(opt, &step) == FADAM_SUCCESS && step == 0, "a failed step advanced the counter");
        CHECK(param[0] == 0.0f, "a failed step changed a param");
    }
    fadam_destroy(opt);
    check_case_end("managed_api_errors");
}

/* The caller's allocator is used for every buffer, freed by destroy, and a failing one is reported. */
typedef struct counting_allocator {
    int live, calls, fail_after;
} counting_allocator;

static void *counting_alloc(void *context, size_t bytes) {
    counting_allocator *a = (counting_allocator *)context;
    void *pointer;
    if (a->fail_after >= 0 && a->calls >= a->fail_after) return NULL;
    pointer = aligned_alloc(256, (bytes + 255) / 256 * 256);
    if (pointer) {
        a->calls++;
        a->live++;
    }
    return pointer;
}

static void counting_free(void *context, void *pointer) {
    counting_allocator *a = (counting_allocator *)context;
    a->live--;
    free(pointer);
}

static void test_allocator(void) {
    counting_allocator counts = {0, 0, -1};
    fadam_allocator allocator = {counting_alloc, counting_free, NULL};
    fadam_optimizer *opt = NULL;
    uint16_t param[100] = {0};
    float grad[100] = {0};
    check_case_begin();
    allocator.context = &counts;
    CHECK(fadam_create(&opt, FADAM_DEVICE_CPU, 0, NULL, &allocator) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    CHECK(fadam_add_tensor(opt, NULL, param, grad, 100, FADAM_BFLOAT16, FADAM_FLOAT32, 0, NULL) == FADAM_SUCCESS, "%s",
          fadam_last_error_message());
    CHECK(fadam_finalize(opt, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    CHECK(counts.calls >= 1 && counts.live >= 1, "the allocator was not used");
    fadam_destroy(opt);
    CHECK(counts.live == 0, "%d allocation(s) not freed by destroy", counts.live);

    counts.calls = counts.live = 0;
    counts.fail_after = 0;
    CHECK(fadam_create(&opt, FADAM_DEVICE_CPU, 0, NULL, &allocator) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    CHECK(fadam_add_tensor(opt, NULL, param, grad, 100, FADAM_BFLOAT16, FADAM_FLOAT32, 0, NULL) == FADAM_SUCCESS, "%s",
          fadam_last_error_message());
    EXPECT_STATUS(fadam_finalize(opt, NULL), FADAM_ERR_OUT_OF_MEMORY, "cannot allocate");
    EXPECT_STATUS(fadam_step(opt, NULL), FADAM_ERR_BAD_STATE, "finalize");
    counts.fail_after = -1; /* the caller fixes the allocator and tries again */
    CHECK(fadam_finalize(opt, NULL) == FADAM_SUCCESS, "retry after a failed finalize: %s", fadam_last_error_message());
    CHECK(fadam_step(opt, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    fadam_destroy(opt);
    CHECK(counts.live == 0, "%d allocation(s) not freed", counts.live);
    check_case_end("custom_allocator_used_and_failure_reported");
}

int main(void) {
    (void)check_seed("test_api_errors");
    test_status_strings();
    test_hparams();
    test_functional_errors();
    test_managed_errors();
    test_allocator();
    return check_exit_code();
}
