/* test_error_tensor.c - fadam_last_error_tensor(): every kind of per-tensor failure names the index of
 * the tensor at fault, at a random position among valid ones, for each call that checks tensors; a
 * failure about no tensor (a hyperparameter, a count, a NULL argument) reports -1, and so does the
 * call after a failure. Run under ASan/UBSan (mk/error_tensor.mk). */
#include "check.h"
#include "fusedadam.h"

#define MAX_TENSORS 24
#define ELEMS 8

static uint64_t rng;

/* Distinct, 16-byte aligned buffers per tensor: param (room for a misaligned view), grad, master, m, v. */
typedef struct buffers {
    _Alignas(16) float param[ELEMS + 4];
    _Alignas(16) float grad[ELEMS + 4];
    _Alignas(16) float master[ELEMS];
    _Alignas(16) float m[ELEMS];
    _Alignas(16) float v[ELEMS];
} buffers;

static buffers store[MAX_TENSORS];

static void fill_valid(fadam_tensor *tensors, int64_t n) {
    int64_t i;
    memset(store, 0, sizeof store);
    for (i = 0; i < n; i++) {
        fadam_tensor *t = &tensors[i];
        memset(t, 0, sizeof *t);
        t->param = store[i].param;
        t->grad = store[i].grad;
        t->exp_avg = store[i].m;
        t->exp_avg_sq = store[i].v;
        t->numel = ELEMS;
        t->param_dtype = FADAM_FLOAT32;
        t->grad_dtype = FADAM_FLOAT32;
        t->group = (int)(i % 2);
    }
}

/* The faults one tensor can have; each breaks tensor k (for OVERLAP_*: k against an earlier one). */
enum fault {
    BAD_PARAM_DTYPE,
    BAD_GRAD_DTYPE,
    NEGATIVE_NUMEL,
    BAD_GROUP,
    FP32_WITH_MASTER,
    NULL_PARAM,
    NULL_GRAD,
    MISALIGNED_PARAM,
    MISALIGNED_GRAD,
    PARAM_IS_GRAD,
    NULL_EXP_AVG,
    NULL_EXP_AVG_SQ,
    MISALIGNED_STATE,
    OVERLAP_EARLIER, /* k's exp_avg is an earlier tensor's exp_avg_sq */
    OVERLAP_LATER,   /* an earlier tensor's grad is k's param: still reported as k, the later */
    OVERLAP_ITSELF,  /* k's exp_avg is its own exp_avg_sq */
    N_FAULTS
};

static const char *fault_names[N_FAULTS] = {
    "bad_param_dtype", "bad_grad_dtype", "negative_numel", "bad_group",     "fp32_with_master", "null_param",
    "null_grad",       "misaligned_param", "misaligned_grad", "param_is_grad", "null_exp_avg",  "null_exp_avg_sq",
    "misaligned_state", "overlap_earlier", "overlap_later", "overlap_itself"};

static void break_tensor(fadam_tensor *tensors, int64_t k, int64_t j, enum fault fault) {
    fadam_tensor *t = &tensors[k];
    switch (fault) {
    case BAD_PARAM_DTYPE: t->param_dtype = (fadam_dtype)9; break;
    case BAD_GRAD_DTYPE: t->grad_dtype = (fadam_dtype)-3; break;
    case NEGATIVE_NUMEL: t->numel = -1; break;
    case BAD_GROUP: t->group = 2; break;
    case FP32_WITH_MASTER: t->master = store[k].master; break;
    case NULL_PARAM: t->param = NULL; break;
    case NULL_GRAD: t->grad = NULL; break;
    case MISALIGNED_PARAM:
        t->param_dtype = FADAM_BFLOAT16;
        t->param = (char *)store[k].param + 1;
        break;
    case MISALIGNED_GRAD:
        t->grad_dtype = FADAM_FLOAT16;
        t->grad = (char *)store[k].grad + 1;
        break;
    case PARAM_IS_GRAD: t->grad = t->param; break;
    case NULL_EXP_AVG: t->exp_avg = NULL; break;
    case NULL_EXP_AVG_SQ: t->exp_avg_sq = NULL; break;
    case MISALIGNED_STATE: t->exp_avg_sq = (float *)((char *)store[k].v + 2); break;
    case OVERLAP_EARLIER: t->exp_avg = tensors[j].exp_avg_sq; break;
    case OVERLAP_LATER: tensors[j].grad = t->param; break;
    case OVERLAP_ITSELF: t->exp_avg = t->exp_avg_sq; break;
    case N_FAULTS: break;
    }
}

static fadam_hparams groups[2];

/* Each call that checks a caller's tensor array, with the tensors given. */
enum call { TABLE_BYTES, TABLE_ENCODE, CPU_STEP, CPU_STEP_POOL, N_CALLS };
static const char *call_names[N_CALLS] = {"fadam_table_bytes", "fadam_table_encode", "fadam_cpu_step",
                                          "fadam_cpu_step_pool"};

static fadam_status run_call(enum call call, const fadam_tensor *tensors, int64_t n) {
    static _Alignas(16) unsigned char table[4096 + MAX_TENSORS * 128];
    fadam_step_source source;
    size_t bytes = 0;
    memset(&source, 0, sizeof source);
    source.step = 1;
    switch (call) {
    case TABLE_BYTES: return fadam_table_bytes(tensors, n, 2, &bytes);
    case TABLE_ENCODE: return fadam_table_encode(tensors, n, 2, table, sizeof table);
    case CPU_STEP: return fadam_cpu_step(tensors, n, groups, 2, &source);
    case CPU_STEP_POOL: return fadam_cpu_step_pool(NULL, tensors, n, groups, 2, &source);
    case N_CALLS: break;
    }
    return FADAM_SUCCESS;
}

static void test_functional_faults(void) {
    fadam_tensor tensors[MAX_TENSORS];
    int fault, call, round;
    check_case_begin();
    for (fault = 0; fault < N_FAULTS; fault++) {
        for (call = 0; call < N_CALLS; call++) {
            for (round = 0; round < 3; round++) {
                int64_t n = 2 + (int64_t)(check_rng_next(&rng) % (MAX_TENSORS - 1));
                int64_t k = 1 + (int64_t)(check_rng_next(&rng) % (uint64_t)(n - 1)); /* has an earlier one */
                int64_t j = (int64_t)(check_rng_next(&rng) % (uint64_t)k);
                fadam_status status;
                fill_valid(tensors, n);
                CHECK(run_call((enum call)call, tensors, n) == FADAM_SUCCESS, "%s: valid tensors refused: %s",
                      call_names[call], fadam_last_error_message());
                CHECK(fadam_last_error_tensor() == -1, "%s: a success leaves tensor %lld", call_names[call],
                      (long long)fadam_last_error_tensor());
                break_tensor(tensors, k, j, (enum fault)fault);
                status = run_call((enum call)call, tensors, n);
                CHECK(status != FADAM_SUCCESS, "%s: %s at tensor %lld of %lld accepted", call_names[call],
                      fault_names[fault], (long long)k, (long long)n);
                CHECK(fadam_last_error_tensor() == k, "%s: %s at tensor %lld of %lld reported as tensor %lld (%s)",
                      call_names[call], fault_names[fault], (long long)k, (long long)n,
                      (long long)fadam_last_error_tensor(), fadam_last_error_message());
            }
        }
    }
    check_case_end("functional_calls_name_the_faulty_tensor");
}

/* Registration: fadam_add_tensor's checks and names, the shard slice, duplicate names at finalize. */
static void test_managed_faults(void) {
    enum { BAD_NAME, BAD_UTF8, NULL_GRAD_ADD, BAD_GROUP_ADD, BAD_DTYPE_ADD, BAD_SLICE, DUPLICATE_NAME, N_MANAGED };
    static const char *names[N_MANAGED] = {"empty_name", "bad_utf8", "null_grad", "bad_group",
                                           "bad_dtype",  "bad_slice", "duplicate_name"};
    int fault;
    check_case_begin();
    for (fault = 0; fault < N_MANAGED; fault++) {
        fadam_optimizer *opt = NULL;
        int64_t n = 2 + (int64_t)(check_rng_next(&rng) % (MAX_TENSORS - 1));
        int64_t k = 1 + (int64_t)(check_rng_next(&rng) % (uint64_t)(n - 1));
        int64_t j = (int64_t)(check_rng_next(&rng) % (uint64_t)k), i;
        fadam_status status = FADAM_SUCCESS;
        CHECK(fadam_create(&opt, FADAM_DEVICE_CPU, 0, NULL, NULL) == FADAM_SUCCESS, "create: %s",
              fadam_last_error_message());
        if (!opt) break;
        memset(store, 0, sizeof store);
        for (i = 0; i < k; i++) {
            char name[32];
            snprintf(name, sizeof name, "t%lld", (long long)i);
            status = fadam_add_tensor(opt, name, store[i].param, store[i].grad, ELEMS, FADAM_FLOAT32, FADAM_FLOAT32,
                                      0, NULL);
            CHECK(status == FADAM_SUCCESS, "add %lld: %s", (long long)i, fadam_last_error_message());
        }
        {
            char name[32];
            const void *grad = store[k].grad;
            int group = 0;
            fadam_dtype dtype = FADAM_FLOAT32;
            snprintf(name, sizeof name, "t%lld", (long long)k);
            if (fault == BAD_NAME) name[0] = '\0';
            if (fault == BAD_UTF8) name[0] = (char)0xff;
            if (fault == NULL_GRAD_ADD) grad = NULL;
            if (fault == BAD_GROUP_ADD) group = 1;
            if (fault == BAD_DTYPE_ADD) dtype = (fadam_dtype)4;
            if (fault == DUPLICATE_NAME) snprintf(name, sizeof name, "t%lld", (long long)j);
            if (fault == BAD_SLICE)
                status = fadam_add_tensor_shard(opt, name, store[k].param, grad, ELEMS, ELEMS, 1, dtype, dtype, group,
                                                NULL);
            else
                status = fadam_add_tensor(opt, name, store[k].param, grad, ELEMS, dtype, FADAM_FLOAT32, group, NULL);
            if (fault == DUPLICATE_NAME) {
                CHECK(status == FADAM_SUCCESS, "a duplicate name is refused before finalize: %s",
                      fadam_last_error_message());
                for (i = k + 1; i < n; i++) {
                    snprintf(name, sizeof name, "t%lld", (long long)i);
                    (void)fadam_add_tensor(opt, name, store[i].param, store[i].grad, ELEMS, FADAM_FLOAT32,
                                           FADAM_FLOAT32, 0, NULL);
                }
                status = fadam_finalize(opt, NULL);
            }
        }
        CHECK(status != FADAM_SUCCESS, "%s at tensor %lld accepted", names[fault], (long long)k);
        CHECK(fadam_last_error_tensor() == k, "%s at tensor %lld reported as tensor %lld (%s)", names[fault],
              (long long)k, (long long)fadam_last_error_tensor(), fadam_last_error_message());
        fadam_destroy(opt);
    }
    check_case_end("registration_names_the_faulty_tensor");
}

/* Failures about no tensor report -1, also right after one that named a tensor. */
static void test_not_about_a_tensor(void) {
    fadam_tensor tensors[MAX_TENSORS];
    fadam_hparams bad[2];
    fadam_step_source source;
    fadam_optimizer *opt = NULL;
    int64_t n = 2 + (int64_t)(check_rng_next(&rng) % (MAX_TENSORS - 1));
    int64_t k = (int64_t)(check_rng_next(&rng) % (uint64_t)n);
    size_t bytes;
    check_case_begin();
    memset(&source, 0, sizeof source);
    source.step = 1;
#define AFTER_A_TENSOR_FAULT(call, what)                                                                        \
    do {                                                                                                        \
        fill_valid(tensors, n);                                                                                 \
        tensors[k].grad = NULL;                                                                                 \
        CHECK(fadam_table_bytes(tensors, n, 2, &bytes) != FADAM_SUCCESS && fadam_last_error_tensor() == k,      \
              "setup: NULL grad at %lld reported as %lld", (long long)k, (long long)fadam_last_error_tensor()); \
        fill_valid(tensors, n);                                                                                 \
        CHECK((call) != FADAM_SUCCESS, "%s accepted", what);                                                    \
        CHECK(fadam_last_error_tensor() == -1, "%s reported tensor %lld (%s)", what,                            \
              (long long)fadam_last_error_tensor(), fadam_last_error_message());                                \
    } while (0)
    bad[0] = groups[0];
    bad[1] = groups[1];
    bad[1].lr = -1.0f;
    AFTER_A_TENSOR_FAULT(fadam_cpu_step(tensors, n, bad, 2, &source), "a negative lr in group 1");
    AFTER_A_TENSOR_FAULT(fadam_hparams_validate(&bad[1]), "fadam_hparams_validate of a negative lr");
    AFTER_A_TENSOR_FAULT(fadam_hparams_validate(NULL), "fadam_hparams_validate(NULL)");
    AFTER_A_TENSOR_FAULT(fadam_table_bytes(tensors, n, 0, &bytes), "n_groups=0");
    AFTER_A_TENSOR_FAULT(fadam_table_bytes(tensors, -1, 2, &bytes), "n_tensors=-1");
    AFTER_A_TENSOR_FAULT(fadam_table_bytes(tensors, n, 2, NULL), "bytes_out NULL");
    source.step = 0;
    AFTER_A_TENSOR_FAULT(fadam_cpu_step(tensors, n, groups, 2, &source), "step=0");
    source.step = 1;
    AFTER_A_TENSOR_FAULT(fadam_create(&opt, (fadam_device_kind)7, 0, NULL, NULL), "an unknown device");
    AFTER_A_TENSOR_FAULT(fadam_step(NULL, NULL), "fadam_step(NULL)");
#undef AFTER_A_TENSOR_FAULT
    /* And a success after a tensor fault clears it. */
    fill_valid(tensors, n);
    tensors[k].numel = -5;
    CHECK(fadam_table_bytes(tensors, n, 2, &bytes) != FADAM_SUCCESS && fadam_last_error_tensor() == k,
          "negative numel at %lld", (long long)k);
    fill_valid(tensors, n);
    CHECK(fadam_table_bytes(tensors, n, 2, &bytes) == FADAM_SUCCESS && fadam_last_error_tensor() == -1,
          "a success after a fault reports tensor %lld", (long long)fadam_last_error_tensor());
    check_case_end("other_failures_report_minus_one");
}

int main(void) {
    rng = check_seed("test_error_tensor");
    groups[0] = fadam_hparams_default();
    groups[1] = fadam_hparams_default();
    groups[1].mode = FADAM_ADAM_L2;
    test_functional_faults();
    test_managed_faults();
    test_not_about_a_tensor();
    return check_exit_code();
}
