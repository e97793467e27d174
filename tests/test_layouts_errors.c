/* test_layouts_errors.c - the validation of the lean layouts' fields (issue 12): unknown formats, a
 * remainder without a bf16 param or without its buffer, 8-bit moments without their scales (or scales
 * for a state the rule does not keep, or for another format), each state's alignment by its element
 * size, the scales' alignment, overlaps involving the new buffers, a negative element_offset. Each
 * through the table check (fadam_table_bytes: every state field) and, where the rule matters, the CPU
 * step: its status, its message, fadam_last_error_tensor(), and no buffer changed. Run under ASan/UBSan. */
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "fusedadam.h"

#define N 300 /* two 8-bit blocks, the second short */
#define BLOCKS 2

typedef struct lean_buffers {
    _Alignas(16) uint16_t param[N + 8];
    _Alignas(16) uint16_t grad[N];
    _Alignas(16) uint16_t remainder[N + 8];
    _Alignas(16) int8_t m[N + 8];
    _Alignas(16) uint8_t v[N + 8];
    _Alignas(16) float m_scales[BLOCKS + 2];
    _Alignas(16) float v_scales[BLOCKS + 2];
    _Alignas(16) float fp32_m[N + 4];
} lean_buffers;

static lean_buffers store[3];
static uint64_t rng;

/* Three valid tensors: bf16 params with a remainder and 8-bit moments (group 0: AdamW; tensor 2 in group
 * 1: Lion, exp_avg only on the CPU step). */
static void fill_valid(fadam_tensor *t, int lion_without_v) {
    int i;
    memset(store, 0, sizeof store);
    for (i = 0; i < 3; i++) {
        memset(&t[i], 0, sizeof t[i]);
        t[i].param = store[i].param;
        t[i].grad = store[i].grad;
        t[i].master = store[i].remainder;
        t[i].exp_avg = store[i].m;
        t[i].exp_avg_sq = store[i].v;
        t[i].numel = N;
        t[i].param_dtype = FADAM_BFLOAT16;
        t[i].grad_dtype = FADAM_BFLOAT16;
        t[i].group = i == 2 ? 1 : 0;
        t[i].master_format = FADAM_MASTER_REMAINDER;
        t[i].moment_format = FADAM_MOMENT_INT8;
        t[i].exp_avg_scales = store[i].m_scales;
        t[i].exp_avg_sq_scales = store[i].v_scales;
        t[i].rounding_seed = 7;
    }
    if (lion_without_v) {
        t[2].exp_avg_sq = NULL;
        t[2].exp_avg_sq_scales = NULL;
    }
    for (i = 0; i < N; i++) store[0].param[i] = store[1].param[i] = store[2].param[i] = (uint16_t)(0x3F80 + (i & 15));
}

static fadam_hparams groups[2];

static fadam_status table_check(fadam_tensor *t) {
    size_t bytes = 0;
    return fadam_table_bytes(t, 3, 2, &bytes);
}

static fadam_status cpu_step(fadam_tensor *t) {
    fadam_step_source source = {1, NULL, NULL};
    return fadam_cpu_step(t, 3, groups, 2, &source);
}

/* One broken tensor (index 1): the status, a message naming it and the field, the tensor's index. */
static void expect(const char *name, fadam_status got, fadam_status want, const char *words) {
    char full[128];
    snprintf(full, sizeof full, "layout_error_%s", name);
    check_case_begin();
    CHECK(got == want, "status %d (%s), want %d", (int)got, fadam_last_error_message(), (int)want);
    CHECK(strstr(fadam_last_error_message(), words) != NULL, "message \"%s\" lacks \"%s\"", fadam_last_error_message(), words);
    CHECK(strstr(fadam_last_error_message(), "tensor 1") != NULL, "message \"%s\" does not name tensor 1",
          fadam_last_error_message());
    CHECK(fadam_last_error_tensor() == 1, "fadam_last_error_tensor() = %lld, want 1", (long long)fadam_last_error_tensor());
    check_case_end(full);
}

int main(void) {
    fadam_tensor t[3];
    fadam_step_source source = {1, NULL, NULL};
    rng = check_seed("test_layouts_errors");
    (void)rng;
    groups[0] = fadam_hparams_default();
    groups[1] = fadam_hparams_default_lion();

    /* the valid model passes both checks, and the step runs */
    check_case_begin();
    fill_valid(t, 0);
    CHECK(table_check(t) == FADAM_SUCCESS, "table: %s", fadam_last_error_message());
    fill_valid(t, 1);
    CHECK(cpu_step(t) == FADAM_SUCCESS, "cpu step: %s", fadam_last_error_message());
    check_case_end("layout_valid_remainder_int8_adamw_and_lion_pass");

#define BREAK(setup) \
    fill_valid(t, 0); \
    setup
#define BREAK_CPU(setup) \
    fill_valid(t, 1); \
    setup

    BREAK(t[1].master_format = (fadam_master_format)7;);
    expect("unknown_master_format", table_check(t), FADAM_ERR_INVALID_VALUE, "master_format=7");
    BREAK(t[1].moment_format = (fadam_moment_format)-1;);
    expect("unknown_moment_format", table_check(t), FADAM_ERR_INVALID_VALUE, "moment_format=-1");
    BREAK(t[1].param_dtype = FADAM_FLOAT16;);
    expect("remainder_with_fp16_param", table_check(t), FADAM_ERR_UNSUPPORTED_DTYPE, "needs a bf16 param");
    BREAK(t[1].param_dtype = FADAM_FLOAT32; t[1].master = NULL;);
    expect("remainder_with_fp32_param", table_check(t), FADAM_ERR_UNSUPPORTED_DTYPE, "needs a bf16 param");
    BREAK(t[1].master = NULL;);
    expect("remainder_without_master", table_check(t), FADAM_ERR_NULL_POINTER, "master is NULL");
    BREAK(t[1].exp_avg_scales = NULL;);
    expect("int8_without_exp_avg_scales", table_check(t), FADAM_ERR_NULL_POINTER, "exp_avg_scales is NULL");
    BREAK(t[1].exp_avg_sq_scales = NULL;);
    expect("int8_without_exp_avg_sq_scales", table_check(t), FADAM_ERR_NULL_POINTER, "exp_avg_sq_scales is NULL");
    BREAK_CPU(t[1].exp_avg_sq_scales = NULL;);
    expect("int8_without_exp_avg_sq_scales_cpu_step", cpu_step(t), FADAM_ERR_NULL_POINTER, "exp_avg_sq_scales is NULL");
    BREAK_CPU(t[1].group = 1; t[1].exp_avg_sq = NULL;);
    expect("lion_int8_with_exp_avg_sq_scales", cpu_step(t), FADAM_ERR_INVALID_VALUE, "exp_avg_sq_scales must be NULL");
    BREAK(t[1].moment_format = FADAM_MOMENT_BF16; t[1].exp_avg = store[1].remainder; t[1].master = store[1].m;
          t[1].exp_avg_sq = store[1].v;);
    expect("scales_with_bf16_moments", table_check(t), FADAM_ERR_INVALID_VALUE, "must be NULL unless");
    BREAK(t[1].master = (char *)store[1].remainder + 1;);
    expect("misaligned_remainder", table_check(t), FADAM_ERR_MISALIGNED, "2-byte aligned");
    BREAK(t[1].moment_format = FADAM_MOMENT_BF16; t[1].exp_avg_scales = t[1].exp_avg_sq_scales = NULL;
          t[1].exp_avg = (char *)store[1].fp32_m + 1;);
    expect("misaligned_bf16_moment", table_check(t), FADAM_ERR_MISALIGNED, "2-byte aligned");
    BREAK(t[1].master_format = FADAM_MASTER_FP32; t[1].moment_format = FADAM_MOMENT_FP32;
          t[1].exp_avg_scales = t[1].exp_avg_sq_scales = NULL; t[1].master = NULL; t[1].exp_avg = store[1].fp32_m;
          t[1].exp_avg_sq = (char *)store[1].fp32_m + 2;);
    expect("misaligned_fp32_moment", table_check(t), FADAM_ERR_MISALIGNED, "4-byte aligned");
    BREAK(t[1].exp_avg_scales = (float *)((char *)store[1].m_scales + 2););
    expect("misaligned_scales", table_check(t), FADAM_ERR_MISALIGNED, "scales must be 4-byte aligned");
    BREAK(t[1].exp_avg_sq_scales = store[1].m_scales + 1;);
    expect("overlapping_scales", table_check(t), FADAM_ERR_OVERLAP, "exp_avg_scales");
    BREAK(t[1].exp_avg_scales = (float *)(void *)store[0].v;);
    expect("scales_overlap_other_tensor", table_check(t), FADAM_ERR_OVERLAP, "exp_avg_scales");
    BREAK(t[1].master = store[1].m;);
    expect("remainder_overlaps_exp_avg", table_check(t), FADAM_ERR_OVERLAP, "master");
    BREAK(t[1].element_offset = -1;);
    expect("negative_element_offset", table_check(t), FADAM_ERR_INVALID_VALUE, "element_offset=-1");

    /* a failed step writes nothing */
    check_case_begin();
    {
        static lean_buffers before[3];
        BREAK_CPU(t[1].exp_avg_sq_scales = NULL;);
        memcpy(before, store, sizeof store);
        CHECK(fadam_cpu_step(t, 3, groups, 2, &source) == FADAM_ERR_NULL_POINTER, "%s", fadam_last_error_message());
        CHECK(memcmp(before, store, sizeof store) == 0, "a failed step changed a buffer");
    }
    check_case_end("layout_error_failed_step_changes_nothing");
    return check_exit_code();
}
