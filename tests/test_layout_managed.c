/* test_layout_managed.c - the managed optimizer's state layouts (issue 12): fadam_set_group_layout's
 * checks, what finalize allocates per layout (bytes through a counting allocator, every buffer's
 * place, alignment and format from fadam_get_tensor_state), the initial state (fp32 masters equal
 * their params, remainders, moments and scales zero), the rounding seed (a function of the layout's
 * seed and the tensor's name only), shard offsets, and fadam_get_state's refusal of lean layouts.
 * Nothing here depends on the result of a step. Run under ASan/UBSan (mk/layout.mk). */
#include "check.h"
#include "fusedadam.h"

#include <xxhash.h>

static uint64_t rng;

/* ---- a counting allocator: every allocation's size, 256-byte aligned host memory ---- */
#define MAX_ALLOCS 16
typedef struct counter {
    size_t sizes[MAX_ALLOCS];
    int n;
} counter;

static void *counting_alloc(void *context, size_t bytes) {
    counter *c = (counter *)context;
    if (c->n < MAX_ALLOCS) c->sizes[c->n] = bytes;
    c->n++;
    return aligned_alloc(256, (bytes + 255) / 256 * 256);
}
static void counting_free(void *context, void *pointer) {
    (void)context;
    free(pointer);
}

static size_t round256(size_t x) { return (x + 255) / 256 * 256; }

static const fadam_dtype param_dtypes[3] = {FADAM_FLOAT32, FADAM_BFLOAT16, FADAM_FLOAT16};

/* A random 16-bit param (bf16 or fp16 bits of a normal value) or fp32 param. */
static void fill_param(void *param, fadam_dtype dtype, int64_t numel) {
    int64_t i;
    for (i = 0; i < numel; i++) {
        float x = (float)(0.1 * check_rng_normal(&rng));
        uint32_t bits;
        memcpy(&bits, &x, 4);
        if (dtype == FADAM_FLOAT32) ((float *)param)[i] = x;
        else if (dtype == FADAM_BFLOAT16) ((uint16_t *)param)[i] = (uint16_t)(bits >> 16);
        else ((uint16_t *)param)[i] = (uint16_t)(0x2000u + (check_rng_next(&rng) & 0x1FFFu)); /* small normal fp16 */
    }
}

static float param_value(const void *param, fadam_dtype dtype, int64_t i) {
    uint16_t h = ((const uint16_t *)param)[i];
    uint32_t bits;
    float x;
    if (dtype == FADAM_FLOAT32) return ((const float *)param)[i];
    if (dtype == FADAM_BFLOAT16) {
        bits = (uint32_t)h << 16;
        memcpy(&x, &bits, 4);
        return x;
    }
    /* fp16 normal: exponent 15-bias to 127-bias */
    bits = ((uint32_t)(h & 0x8000u) << 16) | ((((uint32_t)(h >> 10) & 0x1Fu) + 112u) << 23) | ((uint32_t)(h & 0x3FFu) << 13);
    memcpy(&x, &bits, 4);
    return x;
}

static int all_zero(const void *p, size_t bytes) {
    size_t i;
    for (i = 0; i < bytes; i++)
        if (((const unsigned char *)p)[i]) return 0;
    return 1;
}

static void layout_validation(void) {
    fadam_optimizer *opt = NULL;
    fadam_state_layout layout, got;
    float param[8] = {0}, grad[8] = {0};
    const char *message;
    check_case_begin();
    CHECK(fadam_create(&opt, FADAM_DEVICE_CPU, 0, NULL, NULL) == FADAM_SUCCESS, "create");
    CHECK(fadam_add_group(opt, NULL, NULL) == FADAM_ERR_NULL_POINTER, "add_group NULL");
    CHECK(fadam_get_group_layout(opt, 0, &got) == FADAM_SUCCESS && got.master == FADAM_MASTER_FP32 &&
              got.moments == FADAM_MOMENT_FP32 && got.seed == 0,
          "default layout fp32/fp32/0");
    memset(&layout, 0, sizeof layout);
    layout.master = (fadam_master_format)2;
    CHECK(fadam_set_group_layout(opt, 0, &layout) == FADAM_ERR_INVALID_VALUE, "master 2 refused");
    message = fadam_last_error_message();
    CHECK(strstr(message, "fadam_master_format") != NULL, "message names the enum: %s", message);
    layout.master = FADAM_MASTER_FP32;
    layout.moments = (fadam_moment_format)3;
    CHECK(fadam_set_group_layout(opt, 0, &layout) == FADAM_ERR_INVALID_VALUE, "moments 3 refused");
    message = fadam_last_error_message();
    CHECK(strstr(message, "fadam_moment_format") != NULL, "message names the enum: %s", message);
    layout.moments = (fadam_moment_format)-1;
    CHECK(fadam_set_group_layout(opt, 0, &layout) == FADAM_ERR_INVALID_VALUE, "moments -1 refused");
    CHECK(fadam_get_group_layout(opt, 0, &got) == FADAM_SUCCESS && got.master == FADAM_MASTER_FP32 &&
              got.moments == FADAM_MOMENT_FP32,
          "a refused layout changes nothing");
    layout.master = FADAM_MASTER_REMAINDER;
    layout.moments = FADAM_MOMENT_INT8;
    layout.seed = UINT64_MAX; /* any seed */
    CHECK(fadam_set_group_layout(opt, 1, &layout) == FADAM_ERR_INVALID_VALUE, "group 1 does not exist");
    CHECK(fadam_set_group_layout(opt, -1, &layout) == FADAM_ERR_INVALID_VALUE, "group -1");
    CHECK(fadam_set_group_layout(opt, 0, NULL) == FADAM_ERR_NULL_POINTER, "NULL layout");
    CHECK(fadam_set_group_layout(NULL, 0, &layout) == FADAM_ERR_NULL_POINTER, "NULL optimizer");
    CHECK(fadam_get_group_layout(opt, 0, NULL) == FADAM_ERR_NULL_POINTER, "NULL out");
    CHECK(fadam_get_group_layout(opt, 3, &got) == FADAM_ERR_INVALID_VALUE, "get group 3");
    CHECK(fadam_set_group_layout(opt, 0, &layout) == FADAM_SUCCESS, "set remainder/int8/max seed");
    CHECK(fadam_get_group_layout(opt, 0, &got) == FADAM_SUCCESS && got.master == FADAM_MASTER_REMAINDER &&
              got.moments == FADAM_MOMENT_INT8 && got.seed == UINT64_MAX,
          "layout read back");
    /* REMAINDER with an fp32 param: allowed, the param is its own master. */
    CHECK(fadam_add_tensor(opt, "w", param, grad, 8, FADAM_FLOAT32, FADAM_FLOAT32, 0, NULL) == FADAM_SUCCESS, "add");
    CHECK(fadam_finalize(opt, NULL) == FADAM_SUCCESS, "finalize: %s", fadam_last_error_message());
    CHECK(fadam_set_group_layout(opt, 0, &layout) == FADAM_ERR_BAD_STATE, "after finalize: BAD_STATE");
    CHECK(fadam_get_group_layout(opt, 0, &got) == FADAM_SUCCESS && got.moments == FADAM_MOMENT_INT8,
          "get after finalize");
    fadam_destroy(opt);
    check_case_end("layout_validation");
}

/* Every combination of master format, moment format and rule, over fp32/bf16/fp16 params of random
 * sizes (short last blocks, empty tensors): the bytes allocated, and where each buffer lies. */
#define N_TENSORS 6
static void layout_allocation(void) {
    int master, moments, lion;
    check_case_begin();
    for (master = 0; master < 2; master++)
        for (moments = 0; moments < 3; moments++)
            for (lion = 0; lion < 2; lion++) {
                counter count = {{0}, 0};
                fadam_allocator allocator = {counting_alloc, counting_free, NULL};
                fadam_optimizer *opt = NULL;
                fadam_hparams hp = lion ? fadam_hparams_default_lion() : fadam_hparams_default();
                fadam_state_layout layout = {(fadam_master_format)master, (fadam_moment_format)moments,
                                             check_rng_next(&rng)};
                void *params[N_TENSORS], *grads[N_TENSORS];
                int64_t numels[N_TENSORS];
                fadam_dtype dtypes[N_TENSORS];
                size_t expected = 0;
                int i, group = 0;
                allocator.context = &count;
                CHECK(fadam_create(&opt, FADAM_DEVICE_CPU, 0, &hp, &allocator) == FADAM_SUCCESS, "create");
                /* Group 1 keeps fp32 layouts beside group 0's, so both kinds share one block. */
                CHECK(fadam_add_group(opt, &hp, &group) == FADAM_SUCCESS && group == 1, "group 1");
                CHECK(fadam_set_group_layout(opt, 0, &layout) == FADAM_SUCCESS, "set layout");
                for (i = 0; i < N_TENSORS; i++) {
                    char name[16];
                    int g = i == N_TENSORS - 1 ? 1 : 0;
                    int n_states = lion ? 1 : 2;
                    size_t numel;
                    int lean_master;
                    numels[i] = i == 0 ? 0 : i == 1 ? 256 : (int64_t)(1 + check_rng_next(&rng) % 1500);
                    dtypes[i] = param_dtypes[i % 3];
                    numel = (size_t)numels[i];
                    params[i] = malloc(numel * 4 + 4);
                    grads[i] = calloc(numel + 1, 4);
                    fill_param(params[i], dtypes[i], numels[i]);
                    snprintf(name, sizeof name, "t%d", i);
                    CHECK(fadam_add_tensor(opt, name, params[i], grads[i], numels[i], dtypes[i], FADAM_FLOAT32, g,
                                           NULL) == FADAM_SUCCESS,
                          "add %d", i);
                    lean_master = g == 0 && master == FADAM_MASTER_REMAINDER && dtypes[i] == FADAM_BFLOAT16;
                    if (g == 0) {
                        size_t element = moments == FADAM_MOMENT_INT8 ? 1 : moments == FADAM_MOMENT_BF16 ? 2 : 4;
                        expected += (size_t)n_states * round256(numel * element);
                        if (moments == FADAM_MOMENT_INT8)
                            expected += (size_t)n_states * round256((numel + 255) / 256 * 4);
                    } else {
                        expected += (size_t)n_states * round256(numel * 4);
                    }
                    if (dtypes[i] != FADAM_FLOAT32) expected += round256(numel * (lean_master ? 2 : 4));
                }
                CHECK(fadam_finalize(opt, NULL) == FADAM_SUCCESS, "finalize %d/%d/%d: %s", master, moments, lion,
                      fadam_last_error_message());
                CHECK(count.n >= 1 && count.sizes[0] == (expected ? expected : 256),
                      "layout %d/%d lion %d: the state block is %zu bytes, %zu expected", master, moments, lion,
                      count.n ? count.sizes[0] : 0, expected);
                for (i = 0; i < N_TENSORS && !check_case_failed; i++) {
                    fadam_tensor t;
                    int g = i == N_TENSORS - 1 ? 1 : 0;
                    int lean_master = g == 0 && master == FADAM_MASTER_REMAINDER && dtypes[i] == FADAM_BFLOAT16;
                    fadam_moment_format want_moments = g == 0 ? (fadam_moment_format)moments : FADAM_MOMENT_FP32;
                    size_t numel = (size_t)numels[i], element, blocks = (numel + 255) / 256;
                    float *m32, *v32, *ms, *vs;
                    int64_t j;
                    CHECK(fadam_get_tensor_state(opt, i, &t) == FADAM_SUCCESS, "get_tensor_state %d", i);
                    CHECK(t.param == params[i] && t.grad == grads[i] && t.numel == numels[i] && t.group == g &&
                              t.param_dtype == dtypes[i],
                          "tensor %d: registration fields", i);
                    CHECK(t.master_format == (lean_master ? FADAM_MASTER_REMAINDER : FADAM_MASTER_FP32),
                          "tensor %d: master_format %d", i, (int)t.master_format);
                    CHECK(t.moment_format == want_moments, "tensor %d: moment_format %d", i, (int)t.moment_format);
                    CHECK((t.master == NULL) == (dtypes[i] == FADAM_FLOAT32), "tensor %d: master presence", i);
                    CHECK(t.exp_avg != NULL && (t.exp_avg_sq == NULL) == (lion != 0), "tensor %d: moments", i);
                    CHECK((t.exp_avg_scales != NULL) == (want_moments == FADAM_MOMENT_INT8) &&
                              (t.exp_avg_sq_scales != NULL) == (want_moments == FADAM_MOMENT_INT8 && !lion),
                          "tensor %d: scales", i);
                    CHECK((uintptr_t)t.exp_avg % 256 == 0 && (uintptr_t)t.exp_avg_sq % 256 == 0 &&
                              (uintptr_t)t.master % 256 == 0 && (uintptr_t)t.exp_avg_scales % 256 == 0 &&
                              (uintptr_t)t.exp_avg_sq_scales % 256 == 0,
                          "tensor %d: every buffer 256-byte aligned", i);
                    CHECK(t.element_offset == 0, "tensor %d: element_offset %lld", i, (long long)t.element_offset);
                    CHECK(t.rounding_seed == XXH3_64bits_withSeed(t.param == params[i] ? (i == 0   ? "t0"
                                                                                          : i == 1 ? "t1"
                                                                                          : i == 2 ? "t2"
                                                                                          : i == 3 ? "t3"
                                                                                          : i == 4 ? "t4"
                                                                                                   : "t5")
                                                                                       : "",
                                                                  2, g == 0 ? layout.seed : 0),
                          "tensor %d: rounding seed", i);
                    element = want_moments == FADAM_MOMENT_INT8 ? 1 : want_moments == FADAM_MOMENT_BF16 ? 2 : 4;
                    /* Buffers in order and apart: m (its scales), v (its scales), master. */
                    {
                        const unsigned char *end = (const unsigned char *)t.exp_avg + numel * element;
                        if (t.exp_avg_scales) {
                            CHECK((const unsigned char *)t.exp_avg_scales >= end, "tensor %d: m scales overlap", i);
                            end = (const unsigned char *)(t.exp_avg_scales + blocks);
                        }
                        if (t.exp_avg_sq) {
                            CHECK((const unsigned char *)t.exp_avg_sq >= end, "tensor %d: v overlaps", i);
                            end = (const unsigned char *)t.exp_avg_sq + numel * element;
                        }
                        if (t.exp_avg_sq_scales) {
                            CHECK((const unsigned char *)t.exp_avg_sq_scales >= end, "tensor %d: v scales overlap", i);
                            end = (const unsigned char *)(t.exp_avg_sq_scales + blocks);
                        }
                        if (t.master) CHECK((const unsigned char *)t.master >= end, "tensor %d: master overlaps", i);
                    }
                    /* Initial state. */
                    m32 = (float *)t.exp_avg, v32 = (float *)t.exp_avg_sq, ms = t.exp_avg_scales, vs = t.exp_avg_sq_scales;
                    CHECK(all_zero(m32, numel * element) && (!v32 || all_zero(v32, numel * element)),
                          "tensor %d: moments zero", i);
                    CHECK((!ms || all_zero(ms, blocks * 4)) && (!vs || all_zero(vs, blocks * 4)), "tensor %d: scales zero",
                          i);
                    if (t.master && lean_master) CHECK(all_zero(t.master, numel * 2), "tensor %d: remainder zero", i);
                    if (t.master && !lean_master)
                        for (j = 0; j < numels[i]; j++)
                            if (((float *)t.master)[j] != param_value(params[i], dtypes[i], j)) {
                                CHECK(0, "tensor %d: master[%lld] %g != param %g", i, (long long)j,
                                      (double)((float *)t.master)[j], (double)param_value(params[i], dtypes[i], j));
                                break;
                            }
                }
                fadam_destroy(opt);
                for (i = 0; i < N_TENSORS; i++) free(params[i]), free(grads[i]);
            }
    check_case_end("layout_allocation_per_layout");
}

/* The rounding seed: the same name and layout seed give the same stream whatever the registration
 * order; shards carry their offset. */
static void layout_seed_and_offset(void) {
    fadam_optimizer *a = NULL, *b = NULL;
    fadam_state_layout layout = {FADAM_MASTER_REMAINDER, FADAM_MOMENT_BF16, check_rng_next(&rng)};
    uint16_t pa[2][512], pb[2][512];
    float ga[2][512], gb[2][512];
    fadam_tensor t0, t1, u0, u1;
    check_case_begin();
    memset(pa, 0, sizeof pa), memset(pb, 0, sizeof pb), memset(ga, 0, sizeof ga), memset(gb, 0, sizeof gb);
    CHECK(fadam_create(&a, FADAM_DEVICE_CPU, 0, NULL, NULL) == FADAM_SUCCESS, "create a");
    CHECK(fadam_create(&b, FADAM_DEVICE_CPU, 0, NULL, NULL) == FADAM_SUCCESS, "create b");
    CHECK(fadam_set_group_layout(a, 0, &layout) == FADAM_SUCCESS && fadam_set_group_layout(b, 0, &layout) == FADAM_SUCCESS,
          "layouts");
    CHECK(fadam_set_shard_rank(a, 0, 2) == FADAM_SUCCESS && fadam_set_shard_rank(b, 1, 2) == FADAM_SUCCESS, "ranks");
    /* a: x then y (first halves); b: y then x (second halves) */
    CHECK(fadam_add_tensor_shard(a, "x", pa[0], ga[0], 300, 600, 0, FADAM_BFLOAT16, FADAM_FLOAT32, 0, NULL) == FADAM_SUCCESS,
          "a x");
    CHECK(fadam_add_tensor_shard(a, "y", pa[1], ga[1], 200, 400, 0, FADAM_BFLOAT16, FADAM_FLOAT32, 0, NULL) == FADAM_SUCCESS,
          "a y");
    CHECK(fadam_add_tensor_shard(b, "y", pb[0], gb[0], 200, 400, 200, FADAM_BFLOAT16, FADAM_FLOAT32, 0, NULL) ==
              FADAM_SUCCESS,
          "b y");
    CHECK(fadam_add_tensor_shard(b, "x", pb[1], gb[1], 300, 600, 300, FADAM_BFLOAT16, FADAM_FLOAT32, 0, NULL) ==
              FADAM_SUCCESS,
          "b x");
    CHECK(fadam_finalize(a, NULL) == FADAM_SUCCESS && fadam_finalize(b, NULL) == FADAM_SUCCESS, "finalize: %s",
          fadam_last_error_message());
    CHECK(fadam_get_tensor_state(a, 0, &t0) == FADAM_SUCCESS && fadam_get_tensor_state(a, 1, &t1) == FADAM_SUCCESS &&
              fadam_get_tensor_state(b, 1, &u0) == FADAM_SUCCESS && fadam_get_tensor_state(b, 0, &u1) == FADAM_SUCCESS,
          "get states");
    CHECK(t0.rounding_seed == u0.rounding_seed && t1.rounding_seed == u1.rounding_seed,
          "the same name gives the same seed in any order and shard");
    CHECK(t0.rounding_seed != t1.rounding_seed, "different names, different seeds");
    CHECK(t0.element_offset == 0 && t1.element_offset == 0 && u0.element_offset == 300 && u1.element_offset == 200,
          "offsets %lld %lld %lld %lld", (long long)t0.element_offset, (long long)t1.element_offset,
          (long long)u0.element_offset, (long long)u1.element_offset);
    CHECK(fadam_get_tensor_state(a, 2, &t0) == FADAM_ERR_INVALID_VALUE, "index 2");
    CHECK(fadam_get_tensor_state(a, -1, &t0) == FADAM_ERR_INVALID_VALUE, "index -1");
    CHECK(fadam_get_tensor_state(a, 0, NULL) == FADAM_ERR_NULL_POINTER, "NULL out");
    fadam_destroy(a);
    fadam_destroy(b);
    /* A different layout seed: a different stream for the same name. */
    {
        fadam_optimizer *c = NULL;
        fadam_tensor v;
        layout.seed ^= 1;
        CHECK(fadam_create(&c, FADAM_DEVICE_CPU, 0, NULL, NULL) == FADAM_SUCCESS, "create c");
        CHECK(fadam_set_group_layout(c, 0, &layout) == FADAM_SUCCESS, "layout c");
        CHECK(fadam_get_tensor_state(c, 0, &v) == FADAM_ERR_BAD_STATE, "before finalize: BAD_STATE");
        CHECK(fadam_add_tensor(c, "x", pa[0], ga[0], 300, FADAM_BFLOAT16, FADAM_FLOAT32, 0, NULL) == FADAM_SUCCESS, "add");
        CHECK(fadam_finalize(c, NULL) == FADAM_SUCCESS, "finalize c");
        CHECK(fadam_get_tensor_state(c, 0, &v) == FADAM_SUCCESS && v.rounding_seed != u0.rounding_seed,
              "another layout seed, another stream");
        fadam_destroy(c);
    }
    check_case_end("layout_rounding_seed_and_shard_offset");
}

/* fadam_get_state serves fp32 layouts and refuses lean ones, pointing at fadam_get_tensor_state. */
static void get_state_refuses_lean(void) {
    int master, moments;
    check_case_begin();
    for (master = 0; master < 2; master++)
        for (moments = 0; moments < 3; moments++) {
            fadam_optimizer *opt = NULL;
            fadam_state_layout layout = {(fadam_master_format)master, (fadam_moment_format)moments, 7};
            uint16_t param[64] = {0};
            float grad[64] = {0}, *pm = NULL, *pv = NULL, *pw = NULL;
            fadam_status status;
            int lean = master != 0 || moments != 0;
            CHECK(fadam_create(&opt, FADAM_DEVICE_CPU, 0, NULL, NULL) == FADAM_SUCCESS, "create");
            CHECK(fadam_set_group_layout(opt, 0, &layout) == FADAM_SUCCESS, "layout");
            CHECK(fadam_add_tensor(opt, "w", param, grad, 64, FADAM_BFLOAT16, FADAM_FLOAT32, 0, NULL) == FADAM_SUCCESS,
                  "add");
            CHECK(fadam_finalize(opt, NULL) == FADAM_SUCCESS, "finalize: %s", fadam_last_error_message());
            status = fadam_get_state(opt, 0, &pm, &pv, &pw);
            if (lean) {
                CHECK(status == FADAM_ERR_UNSUPPORTED_DTYPE, "%d/%d: status %d", master, moments, (int)status);
                CHECK(strstr(fadam_last_error_message(), "fadam_get_tensor_state") != NULL, "message: %s",
                      fadam_last_error_message());
                CHECK(fadam_last_error_tensor() == 0, "names tensor 0");
                CHECK(pm == NULL && pv == NULL && pw == NULL, "outputs untouched");
            } else {
                fadam_tensor t;
                CHECK(status == FADAM_SUCCESS, "fp32 layout: status %d", (int)status);
                CHECK(fadam_get_tensor_state(opt, 0, &t) == FADAM_SUCCESS && (void *)pm == t.master &&
                          (void *)pv == t.exp_avg && (void *)pw == t.exp_avg_sq,
                      "same pointers");
            }
            fadam_destroy(opt);
        }
    check_case_end("get_state_refuses_lean_layouts");
}

int main(void) {
    rng = check_seed("test_layout_managed");
    layout_validation();
    layout_allocation();
    layout_seed_and_offset();
    get_state_refuses_lean();
    return check_failures_total ? 1 : 0;
}
