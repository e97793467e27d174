/* table.c - the tensor table: validated on the host, encoded once, read by every multi-tensor kernel
 * (layout in kernels/adam_math.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static int is_known_dtype(fadam_dtype dtype) { return fadam_dtype_size(dtype) != 0; }

/* Bytes per element of the master and of the moments in their formats (0: an unknown format). */
static size_t fadam_master_element_bytes(fadam_master_format format) {
    return format == FADAM_MASTER_FP32 ? 4 : format == FADAM_MASTER_REMAINDER ? 2 : 0;
}
static size_t fadam_moment_element_bytes(fadam_moment_format format) {
    return format == FADAM_MOMENT_FP32 ? 4 : format == FADAM_MOMENT_BF16 ? 2 : format == FADAM_MOMENT_INT8 ? 1 : 0;
}
static int64_t fadam_moment_blocks(int64_t numel) { return (numel + FADAM_MOMENT_BLOCK - 1) / FADAM_MOMENT_BLOCK; }

/* One buffer of one tensor, for the overlap check. */
typedef struct buffer_span {
    uintptr_t begin, end;
    int64_t tensor;
    const char *what;
} buffer_span;

static int compare_spans(const void *a, const void *b) {
    const buffer_span *x = (const buffer_span *)a, *y = (const buffer_span *)b;
    return x->begin < y->begin ? -1 : x->begin > y->begin;
}

/* Every written buffer must be disjoint from every other buffer (a grad may be read by one tensor
 * only too: aliasing it with a written buffer would make the result depend on thread order). */
static fadam_status check_no_overlap(const fadam_tensor *tensors, int64_t n_tensors, const char *function) {
    int64_t n_spans = 0, i;
    buffer_span *spans;
    if (n_tensors == 0) return FADAM_SUCCESS;
    if ((uint64_t)n_tensors > SIZE_MAX / ((5 + FADAM_FIELD_COUNT) * sizeof(buffer_span)))
        return fadam_fail(FADAM_ERR_INVALID_VALUE, "%s: n_tensors=%lld is too large", function, (long long)n_tensors);
    /* param, grad, master, the state fields and two scale arrays */
    spans = (buffer_span *)malloc((size_t)n_tensors * (5 + FADAM_FIELD_COUNT) * sizeof(buffer_span));
    if (!spans) return fadam_fail(FADAM_ERR_OUT_OF_MEMORY, "%s: no host memory for the overlap check", function);
    for (i = 0; i < n_tensors; i++) {
        const fadam_tensor *t = &tensors[i];
        uintptr_t n = (uintptr_t)t->numel;
        if (n == 0) continue;
#define ADD_SPAN(pointer, element_bytes, label)                                                   \
    do {                                                                                          \
        if (pointer) {                                                                            \
            spans[n_spans].begin = (uintptr_t)(pointer);                                          \
            spans[n_spans].end = (uintptr_t)(pointer) + n * (element_bytes);                      \
            spans[n_spans].tensor = i;                                                            \
            spans[n_spans].what = label;                                                          \
            n_spans++;                                                                            \
        }                                                                                         \
    } while (0)
        ADD_SPAN(t->param, fadam_dtype_size(t->param_dtype), "param");
        ADD_SPAN(t->grad, fadam_dtype_size(t->grad_dtype), "grad");
        ADD_SPAN(t->master, fadam_master_element_bytes(t->master_format), "master");
        {
            int field;
            for (field = 0; field < FADAM_FIELD_COUNT; field++)
                ADD_SPAN(fadam_tensor_field(t, field), fadam_moment_element_bytes(t->moment_format),
                         fadam_state_field_name(field));
        }
#undef ADD_SPAN
        /* the 8-bit scales: one float per block (a span of blocks * 4 bytes, counted as numel * 1) */
        if (t->moment_format == FADAM_MOMENT_INT8) {
            uintptr_t scale_bytes = (uintptr_t)fadam_moment_blocks(t->numel) * 4;
            const float *scales[2];
            const char *labels[2] = {"exp_avg_scales", "exp_avg_sq_scales"};
            int k;
            scales[0] = t->exp_avg_scales;
            scales[1] = t->exp_avg_sq_scales;
            for (k = 0; k < 2; k++)
                if (scales[k]) {
                    spans[n_spans].begin = (uintptr_t)scales[k];
                    spans[n_spans].end = (uintptr_t)scales[k] + scale_bytes;
                    spans[n_spans].tensor = i;
                    spans[n_spans].what = labels[k];
                    n_spans++;
                }
        }
    }
    qsort(spans, (size_t)n_spans, sizeof(buffer_span), compare_spans);
    for (i = 1; i < n_spans; i++) {
        if (spans[i].begin < spans[i - 1].end) {
            int64_t later = spans[i].tensor > spans[i - 1].tensor ? spans[i].tensor : spans[i - 1].tensor;
            fadam_status status = fadam_fail_tensor(later, FADAM_ERR_OVERLAP, "%s: tensor %lld %s overlaps tensor %lld %s", function,
                                             (long long)spans[i].tensor, spans[i].what,
                                             (long long)spans[i - 1].tensor, spans[i - 1].what);
            free(spans);
            return status;
        }
    }
    free(spans);
    return FADAM_SUCCESS;
}

/* Elements of the largest tensor whose five buffers fit in a 64-bit address space. */
#define FADAM_MAX_NUMEL ((int64_t)1 << 60)

fadam_status fadam_check_tensor(const fadam_tensor *t, int64_t index, int n_groups, int state_given,
                                const char *function) {
    size_t param_bytes = fadam_dtype_size(t->param_dtype), grad_bytes = fadam_dtype_size(t->grad_dtype);
    long long i = (long long)index;
    if (!is_known_dtype(t->param_dtype))
        return fadam_fail_tensor(index, FADAM_ERR_UNSUPPORTED_DTYPE, "%s: tensor %lld: param_dtype=%d is not a fadam_dtype", function,
                          i, (int)t->param_dtype);
    if (!is_known_dtype(t->grad_dtype))
        return fadam_fail_tensor(index, FADAM_ERR_UNSUPPORTED_DTYPE, "%s: tensor %lld: grad_dtype=%d is not a fadam_dtype", function,
                          i, (int)t->grad_dtype);
    if (t->numel < 0 || t->numel > FADAM_MAX_NUMEL)
        return fadam_fail_tensor(index, FADAM_ERR_INVALID_VALUE, "%s: tensor %lld: numel=%lld must be in [0, 2^60]", function, i,
                          (long long)t->numel);
    if (t->group < 0 || t->group >= n_groups)
        return fadam_fail_tensor(index, FADAM_ERR_INVALID_VALUE, "%s: tensor %lld: group=%d must be in [0, %d)", function, i, t->group,
                          n_groups);
    if (t->param_dtype == FADAM_FLOAT32 && t->master != NULL)
        return fadam_fail_tensor(index, FADAM_ERR_INVALID_VALUE, "%s: tensor %lld: an fp32 param is its own master; master must be NULL",
                          function, i);
    if (!fadam_master_element_bytes(t->master_format))
        return fadam_fail_tensor(index, FADAM_ERR_INVALID_VALUE, "%s: tensor %lld: master_format=%d is not a fadam_master_format",
                                 function, i, (int)t->master_format);
    if (!fadam_moment_element_bytes(t->moment_format))
        return fadam_fail_tensor(index, FADAM_ERR_INVALID_VALUE, "%s: tensor %lld: moment_format=%d is not a fadam_moment_format",
                                 function, i, (int)t->moment_format);
    if (t->master_format == FADAM_MASTER_REMAINDER && t->param_dtype != FADAM_BFLOAT16)
        return fadam_fail_tensor(index, FADAM_ERR_UNSUPPORTED_DTYPE,
                                 "%s: tensor %lld: master_format FADAM_MASTER_REMAINDER needs a bf16 param (param_dtype=%d): "
                                 "the remainder completes a bf16 param's upper 16 bits",
                                 function, i, (int)t->param_dtype);
    if (t->moment_format != FADAM_MOMENT_INT8 && (t->exp_avg_scales || t->exp_avg_sq_scales))
        return fadam_fail_tensor(index, FADAM_ERR_INVALID_VALUE,
                                 "%s: tensor %lld: exp_avg_scales/exp_avg_sq_scales must be NULL unless moment_format is "
                                 "FADAM_MOMENT_INT8", function, i);
    if (t->element_offset < 0 || t->element_offset > FADAM_MAX_NUMEL)
        return fadam_fail_tensor(index, FADAM_ERR_INVALID_VALUE, "%s: tensor %lld: element_offset=%lld must be in [0, 2^60]",
                                 function, i, (long long)t->element_offset);
    if (t->numel == 0) return FADAM_SUCCESS; /* an empty tensor's pointers are never touched */
    if (t->master_format == FADAM_MASTER_REMAINDER && !t->master)
        return fadam_fail_tensor(index, FADAM_ERR_NULL_POINTER,
                                 "%s: tensor %lld: master is NULL, but master_format FADAM_MASTER_REMAINDER keeps the "
                                 "remainder there", function, i);
    if (!t->param) return fadam_fail_tensor(index, FADAM_ERR_NULL_POINTER, "%s: tensor %lld: param is NULL", function, i);
    if (!t->grad) return fadam_fail_tensor(index, FADAM_ERR_NULL_POINTER, "%s: tensor %lld: grad is NULL", function, i);
    if ((uintptr_t)t->param % param_bytes)
        return fadam_fail_tensor(index, FADAM_ERR_MISALIGNED, "%s: tensor %lld: param %p is not %zu-byte aligned", function, i,
                          t->param, param_bytes);
    if ((uintptr_t)t->grad % grad_bytes)
        return fadam_fail_tensor(index, FADAM_ERR_MISALIGNED, "%s: tensor %lld: grad %p is not %zu-byte aligned", function, i,
                          (const void *)t->grad, grad_bytes);
    if (t->param == (const void *)t->grad)
        return fadam_fail_tensor(index, FADAM_ERR_OVERLAP, "%s: tensor %lld: param and grad are the same buffer", function, i);
    if (!state_given) return FADAM_SUCCESS;
    /* state_given 2: the groups are known and fadam_check_rule_states checks which states are there */
    if (state_given == 1) {
        int field;
        for (field = 0; field < FADAM_FIELD_COUNT; field++)
            if (!fadam_tensor_field(t, field))
                return fadam_fail_tensor(index, FADAM_ERR_NULL_POINTER, "%s: tensor %lld: %s is NULL", function, i,
                                  fadam_state_field_name(field));
        /* the table takes every state field, so both scale arrays */
        if (t->moment_format == FADAM_MOMENT_INT8 && (!t->exp_avg_scales || !t->exp_avg_sq_scales))
            return fadam_fail_tensor(index, FADAM_ERR_NULL_POINTER,
                                     "%s: tensor %lld: %s is NULL, but moment_format FADAM_MOMENT_INT8 keeps one scale per "
                                     "%d elements there", function, i,
                                     t->exp_avg_scales ? "exp_avg_sq_scales" : "exp_avg_scales", FADAM_MOMENT_BLOCK);
    }
    {
        size_t master_bytes = fadam_master_element_bytes(t->master_format);
        size_t moment_bytes = fadam_moment_element_bytes(t->moment_format);
        if ((uintptr_t)t->master % master_bytes)
            return fadam_fail_tensor(index, FADAM_ERR_MISALIGNED, "%s: tensor %lld: master %p is not %zu-byte aligned",
                                     function, i, t->master, master_bytes);
        if ((uintptr_t)t->exp_avg % moment_bytes || (uintptr_t)t->exp_avg_sq % moment_bytes)
            return fadam_fail_tensor(index, FADAM_ERR_MISALIGNED,
                                     "%s: tensor %lld: exp_avg/exp_avg_sq must be %zu-byte aligned", function, i,
                                     moment_bytes);
        if ((uintptr_t)t->exp_avg_scales % 4 || (uintptr_t)t->exp_avg_sq_scales % 4)
            return fadam_fail_tensor(index, FADAM_ERR_MISALIGNED,
                                     "%s: tensor %lld: exp_avg_scales/exp_avg_sq_scales must be 4-byte aligned", function, i);
    }
    return FADAM_SUCCESS;
}

fadam_status fadam_check_rule_states(const fadam_tensor *tensors, int64_t n_tensors, const fadam_hparams *groups,
                                     const char *function) {
    int64_t i;
    for (i = 0; i < n_tensors; i++) {
        const fadam_tensor *t = &tensors[i];
        int rule = (int)groups[t->group].mode, field, k, kept;
        if (t->numel == 0) continue; /* an empty tensor's pointers are never touched */
        for (field = 0; field < FADAM_FIELD_COUNT; field++) {
            for (k = 0, kept = 0; k < fadam_rule_state_count(rule); k++) kept |= fadam_rule_state_field(rule, k) == field;
            if (kept && !fadam_tensor_field(t, field))
                return fadam_fail_tensor(i, FADAM_ERR_NULL_POINTER, "%s: tensor %lld: %s is NULL, but group %d's rule (%s) keeps it",
                                  function, (long long)i, fadam_state_field_name(field), t->group, fadam_rule_name(rule));
            if (!kept && fadam_tensor_field(t, field))
                return fadam_fail_tensor(i, FADAM_ERR_INVALID_VALUE, "%s: tensor %lld: %s must be NULL: group %d's rule (%s) keeps "
                                                           "no such state",
                                  function, (long long)i, fadam_state_field_name(field), t->group, fadam_rule_name(rule));
            if (t->moment_format == FADAM_MOMENT_INT8) {
                const float *scales = field == FADAM_FIELD_EXP_AVG ? t->exp_avg_scales : t->exp_avg_sq_scales;
                if (kept && !scales)
                    return fadam_fail_tensor(i, FADAM_ERR_NULL_POINTER,
                                             "%s: tensor %lld: %s_scales is NULL, but moment_format FADAM_MOMENT_INT8 "
                                             "keeps %s's block scales there", function, (long long)i,
                                             fadam_state_field_name(field), fadam_state_field_name(field));
                if (!kept && scales)
                    return fadam_fail_tensor(i, FADAM_ERR_INVALID_VALUE,
                                             "%s: tensor %lld: %s_scales must be NULL: group %d's rule (%s) keeps no %s",
                                             function, (long long)i, fadam_state_field_name(field), t->group,
                                             fadam_rule_name(rule), fadam_state_field_name(field));
            }
        }
    }
    return FADAM_SUCCESS;
}

static fadam_status check_tensors(const fadam_tensor *tensors, int64_t n_tensors, int n_groups, int state_given,
                                  const char *function) {
    int64_t i;
    if (n_tensors < 0)
        return fadam_fail(FADAM_ERR_INVALID_VALUE, "%s: n_tensors=%lld must be >= 0", function, (long long)n_tensors);
    if (n_tensors > 0 && tensors == NULL)
        return fadam_fail(FADAM_ERR_NULL_POINTER, "%s: argument 'tensors' is NULL", function);
    if (n_groups < 1 || n_groups > FADAM_MAX_GROUPS)
        return fadam_fail(FADAM_ERR_INVALID_VALUE, "%s: n_groups=%d must be in [1, %d]", function, n_groups,
                          FADAM_MAX_GROUPS);
    for (i = 0; i < n_tensors; i++) {
        fadam_status status = fadam_check_tensor(&tensors[i], i, n_groups, state_given, function);
        if (status != FADAM_SUCCESS) return status;
    }
    return check_no_overlap(tensors, n_tensors, function);
}

fadam_status fadam_table_check(const fadam_tensor *tensors, int64_t n_tensors, int n_groups, const char *function) {
    return check_tensors(tensors, n_tensors, n_groups, 1, function);
}

fadam_status fadam_table_check_states_apart(const fadam_tensor *tensors, int64_t n_tensors, int n_groups,
                                            const char *function) {
    return check_tensors(tensors, n_tensors, n_groups, 2, function);
}

size_t fadam_table_size(int64_t n_tensors) {
    return sizeof(fadam_table_header) + (size_t)n_tensors * sizeof(fadam_table_entry);
}

/* The kernels' vector paths move 16 bytes per access (4 fp32 or 8 16-bit elements). */
static int vector_aligned(const void *pointer) { return pointer == NULL || (uintptr_t)pointer % 16 == 0; }

void fadam_table_fill(const fadam_tensor *tensors, int64_t n_tensors, int n_groups, int32_t chunk_elems,
                      void *host_table) {
    fadam_table_header *header = (fadam_table_header *)host_table;
    fadam_table_entry *entries = (fadam_table_entry *)(header + 1);
    int64_t i, chunks = 0;
    int field;
    uint32_t flags = 0;
    FADAM_STATIC_ASSERT(FADAM_STATE_FP32 == 0, "a zeroed entry holds fp32 states");
    for (i = 0; i < n_tensors; i++) {
        const fadam_tensor *t = &tensors[i];
        fadam_table_entry *e = &entries[i];
        memset(e, 0, sizeof *e);
        e->param = t->param;
        e->grad = t->grad;
        e->states[FADAM_SLOT_MASTER].data = t->master;
        for (field = 0; field < FADAM_FIELD_COUNT; field++)
            e->states[FADAM_SLOT_OF_FIELD(field)].data = fadam_tensor_field(t, field);
        /* the formats (memset: FADAM_STATE_FP32 == 0, block_scales NULL for fp32 and 16-bit states) */
        if (t->master && t->master_format == FADAM_MASTER_REMAINDER)
            e->state_format[FADAM_SLOT_MASTER] = FADAM_STATE_REMAINDER;
        for (field = 0; field < FADAM_FIELD_COUNT; field++) {
            int slot = FADAM_SLOT_OF_FIELD(field);
            if (t->moment_format == FADAM_MOMENT_BF16) e->state_format[slot] = FADAM_STATE_BF16;
            if (t->moment_format == FADAM_MOMENT_INT8) {
                /* m is signed (square-root codes), v unsigned (fourth-root codes); Lion's one moment is m */
                e->state_format[slot] = field == FADAM_FIELD_EXP_AVG_SQ ? FADAM_STATE_Q8_QUARTIC : FADAM_STATE_Q8_SIGNED;
                e->states[slot].block_scales = field == FADAM_FIELD_EXP_AVG_SQ ? t->exp_avg_sq_scales : t->exp_avg_scales;
            }
        }
        for (field = 0; field < FADAM_STATE_SLOTS; field++) e->lean |= e->state_format[field] != FADAM_STATE_FP32;
        if (e->lean) flags |= FADAM_TABLE_LEAN; /* from the same entries the kernel reads */
        e->rounding_seed = t->rounding_seed;
        e->element_offset = t->element_offset;
        e->numel = t->numel;
        e->first_chunk = chunks;
        e->group = t->group;
        e->param_dtype = (uint8_t)t->param_dtype;
        e->grad_dtype = (uint8_t)t->grad_dtype;
        e->vector_ok = (uint8_t)(vector_aligned(t->param) && vector_aligned(t->grad) && vector_aligned(t->master) &&
                                 vector_aligned(t->exp_avg) && vector_aligned(t->exp_avg_sq));
        chunks += (t->numel + chunk_elems - 1) / chunk_elems;
    }
    memset(header, 0, sizeof *header);
    header->magic = FADAM_TABLE_MAGIC;
    header->flags = flags;
    header->n_tensors = n_tensors;
    header->n_chunks = chunks;
    header->chunk_elems = chunk_elems;
    header->n_groups = n_groups;
}

uint32_t fadam_table_known_flags(const void *host_table) {
    return ((const fadam_table_header *)host_table)->flags | FADAM_TABLE_KNOWN;
}

fadam_status fadam_table_bytes(const fadam_tensor *tensors, int64_t n_tensors, int n_groups, size_t *bytes_out) {
    fadam_status status;
    fadam_clear_error();
    FADAM_REQUIRE_NOT_NULL(bytes_out, "fadam_table_bytes");
    status = fadam_table_check(tensors, n_tensors, n_groups, "fadam_table_bytes");
    if (status != FADAM_SUCCESS) return status;
    *bytes_out = fadam_table_size(n_tensors);
    return FADAM_SUCCESS;
}

fadam_status fadam_table_encode(const fadam_tensor *tensors, int64_t n_tensors, int n_groups, void *host_table,
                                size_t table_bytes) {
    fadam_status status;
    fadam_clear_error();
    FADAM_REQUIRE_NOT_NULL(host_table, "fadam_table_encode");
    status = fadam_table_check(tensors, n_tensors, n_groups, "fadam_table_encode");
    if (status != FADAM_SUCCESS) return status;
    if ((uintptr_t)host_table % 16)
        return fadam_fail(FADAM_ERR_MISALIGNED, "fadam_table_encode: host_table %p is not 16-byte aligned", host_table);
    if (table_bytes < fadam_table_size(n_tensors))
        return fadam_fail(FADAM_ERR_WORKSPACE_TOO_SMALL, "fadam_table_encode: table_bytes=%zu, %zu needed", table_bytes,
                          fadam_table_size(n_tensors));
    fadam_table_fill(tensors, n_tensors, n_groups, FADAM_CHUNK_ELEMS, host_table);
    return FADAM_SUCCESS;
}

/* The tensors against the groups' rules: hyperparameters, then each tensor as fadam_finalize checks its
 * own (the states a rule keeps are set, the others NULL; fadam_check_rule_states names the tensor). */
static fadam_status check_with_groups(const fadam_tensor *tensors, int64_t n_tensors, const fadam_hparams *groups,
                                      int n_groups, const char *function) {
    fadam_status status;
    int g;
    if (!groups) return fadam_fail(FADAM_ERR_NULL_POINTER, "%s: argument 'groups' is NULL", function);
    if (n_groups < 1 || n_groups > FADAM_MAX_GROUPS)
        return fadam_fail(FADAM_ERR_INVALID_VALUE, "%s: n_groups=%d must be in [1, %d]", function, n_groups,
                          FADAM_MAX_GROUPS);
    for (g = 0; g < n_groups; g++)
        if ((status = fadam_check_hparams(&groups[g], function, g)) != FADAM_SUCCESS) return status;
    if ((status = fadam_table_check_states_apart(tensors, n_tensors, n_groups, function)) != FADAM_SUCCESS)
        return status;
    return fadam_check_rule_states(tensors, n_tensors, groups, function);
}

fadam_status fadam_table_bytes_groups(const fadam_tensor *tensors, int64_t n_tensors, const fadam_hparams *groups,
                                      int n_groups, size_t *bytes_out) {
    fadam_status status;
    fadam_clear_error();
    FADAM_REQUIRE_NOT_NULL(bytes_out, "fadam_table_bytes_groups");
    status = check_with_groups(tensors, n_tensors, groups, n_groups, "fadam_table_bytes_groups");
    if (status != FADAM_SUCCESS) return status;
    *bytes_out = fadam_table_size(n_tensors);
    return FADAM_SUCCESS;
}

fadam_status fadam_table_encode_groups(const fadam_tensor *tensors, int64_t n_tensors, const fadam_hparams *groups,
                                       int n_groups, void *host_table, size_t table_bytes) {
    fadam_status status;
    fadam_clear_error();
    FADAM_REQUIRE_NOT_NULL(host_table, "fadam_table_encode_groups");
    status = check_with_groups(tensors, n_tensors, groups, n_groups, "fadam_table_encode_groups");
    if (status != FADAM_SUCCESS) return status;
    if ((uintptr_t)host_table % 16)
        return fadam_fail(FADAM_ERR_MISALIGNED, "fadam_table_encode_groups: host_table %p is not 16-byte aligned",
                          host_table);
    if (table_bytes < fadam_table_size(n_tensors))
        return fadam_fail(FADAM_ERR_WORKSPACE_TOO_SMALL, "fadam_table_encode_groups: table_bytes=%zu, %zu needed",
                          table_bytes, fadam_table_size(n_tensors));
    fadam_table_fill(tensors, n_tensors, n_groups, FADAM_CHUNK_ELEMS, host_table);
    return FADAM_SUCCESS;
}
