/* optimizer.c - the managed optimizer: owns master weights, moments and the device-resident tensor
 * table; one kernel launch per step on the CUDA device, the reference implementation on the CPU. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime.h>

#include "internal.h"
#include "launchers.h"
#include "nvtx_ranges.h"
#include "optimizer_internal.h"
#include "utf8.h"

#include <xxhash.h>

/* Every state buffer starts on this boundary, so each tensor's master/m/v allow vector access. */
#define STATE_ALIGNMENT 256

static size_t round_up(size_t value, size_t multiple) { return (value + multiple - 1) / multiple * multiple; }

/* ---- allocation through the caller's allocator or the default one ---- */

void *fadam_optimizer_alloc(fadam_optimizer *opt, size_t bytes) {
    void *pointer = NULL;
    if (bytes == 0) bytes = STATE_ALIGNMENT;
    if (opt->has_allocator) return opt->allocator.alloc(opt->allocator.context, bytes);
    if (opt->device == FADAM_DEVICE_CUDA) {
        /* The caller says what the memory was for (its message replaces this one). */
        if (FADAM_CUDA_STATUS(cudaMalloc(&pointer, bytes)) != FADAM_SUCCESS) return NULL;
        return pointer;
    }
    return aligned_alloc(STATE_ALIGNMENT, round_up(bytes, STATE_ALIGNMENT));
}

void fadam_optimizer_free(fadam_optimizer *opt, void *pointer) {
    if (!pointer) return;
    if (opt->has_allocator) opt->allocator.free(opt->allocator.context, pointer);
    else if (opt->device == FADAM_DEVICE_CUDA) (void)cudaFree(pointer);
    else free(pointer);
}

/* ---- create / destroy ---- */

fadam_status fadam_create(fadam_optimizer **out, fadam_device_kind device, int cuda_device,
                          const fadam_hparams *defaults, const fadam_allocator *allocator) {
    fadam_hparams group0 = defaults ? *defaults : fadam_hparams_default();
    fadam_optimizer *opt;
    fadam_status status;
    fadam_clear_error();
    FADAM_REQUIRE_NOT_NULL(out, "fadam_create");
    *out = NULL;
    if (device != FADAM_DEVICE_CPU && device != FADAM_DEVICE_CUDA)
        return fadam_fail(FADAM_ERR_INVALID_VALUE, "fadam_create: device=%d is neither FADAM_DEVICE_CPU nor FADAM_DEVICE_CUDA",
                          (int)device);
    status = fadam_check_hparams(&group0, "fadam_create", 0);
    if (status != FADAM_SUCCESS) return status;
    if (allocator && (!allocator->alloc || !allocator->free))
        return fadam_fail(FADAM_ERR_NULL_POINTER, "fadam_create: allocator->alloc and allocator->free must both be set");
    if (device == FADAM_DEVICE_CUDA) {
        int count = fadam_cuda_device_count();
        if (count == 0)
            return fadam_fail(FADAM_ERR_NO_DEVICE, "fadam_create: FADAM_DEVICE_CUDA requested but no CUDA device is usable "
                                                   "(use FADAM_DEVICE_CPU on this machine)");
        if (cuda_device < 0 || cuda_device >= count)
            return fadam_fail(FADAM_ERR_INVALID_VALUE, "fadam_create: cuda_device=%d, but %d device(s) exist", cuda_device,
                              count);
    }
    opt = (fadam_optimizer *)calloc(1, sizeof *opt);
    if (!opt) return fadam_fail(FADAM_ERR_OUT_OF_MEMORY, "fadam_create: no host memory for the optimizer");
    opt->device = device;
    opt->cuda_device = device == FADAM_DEVICE_CUDA ? cuda_device : -1;
    if (allocator) {
        opt->allocator = *allocator;
        opt->has_allocator = 1;
    }
    opt->groups[0] = group0;
    opt->n_groups = 1;
    *out = opt;
    return FADAM_SUCCESS;
}

static void free_state(fadam_optimizer *opt) {
    fadam_cpu_pool_close(opt->cpu_pool);
    opt->cpu_pool = NULL;
    fadam_fused_state_free(opt);
    fadam_optimizer_free(opt, opt->state_block);
    fadam_optimizer_free(opt, opt->device_table);
    opt->state_block = NULL;
    opt->device_table = NULL;
}

void fadam_destroy(fadam_optimizer *opt) {
    int64_t i;
    if (!opt) return;
    if (opt->device == FADAM_DEVICE_CUDA && opt->finalized) {
        int previous = 0;
        /* A queued step may still read what is freed below. */
        if (fadam_cuda_enter_device(opt->cuda_device, &previous) == FADAM_SUCCESS) {
            (void)cudaDeviceSynchronize();
            free_state(opt);
            fadam_cuda_leave_device(opt->cuda_device, previous);
        }
    } else {
        free_state(opt);
    }
    for (i = 0; i < opt->n_tensors; i++) free(opt->names[i]);
    free(opt->names);
    free(opt->tensors);
    fadam_shard_free(opt);
    free(opt);
}

/* ---- registration ---- */

static fadam_status require_not_finalized(const fadam_optimizer *opt, const char *function) {
    if (opt->finalized)
        return fadam_fail(FADAM_ERR_BAD_STATE, "%s: the optimizer is already finalized; register everything before "
                                               "fadam_finalize",
                          function);
    return FADAM_SUCCESS;
}

fadam_status fadam_require_finalized(const fadam_optimizer *opt, const char *function) {
    if (!opt->finalized)
        return fadam_fail(FADAM_ERR_BAD_STATE, "%s: the optimizer is not finalized; call fadam_finalize first", function);
    return FADAM_SUCCESS;
}

static fadam_status require_group(const fadam_optimizer *opt, int group, const char *function) {
    if (group < 0 || group >= opt->n_groups)
        return fadam_fail(FADAM_ERR_INVALID_VALUE, "%s: group=%d, but the optimizer has %d group(s)", function, group,
                          opt->n_groups);
    return FADAM_SUCCESS;
}

fadam_status fadam_add_group(fadam_optimizer *opt, const fadam_hparams *hparams, int *group_out) {
    fadam_status status;
    fadam_clear_error();
    FADAM_REQUIRE_NOT_NULL(opt, "fadam_add_group");
    FADAM_REQUIRE_NOT_NULL(hparams, "fadam_add_group");
    if ((status = require_not_finalized(opt, "fadam_add_group")) != FADAM_SUCCESS) return status;
    if (opt->n_groups == FADAM_MAX_GROUPS)
        return fadam_fail(FADAM_ERR_INVALID_VALUE, "fadam_add_group: at most %d groups", FADAM_MAX_GROUPS);
    if ((status = fadam_check_hparams(hparams, "fadam_add_group", opt->n_groups)) != FADAM_SUCCESS) return status;
    opt->groups[opt->n_groups] = *hparams;
    if (group_out) *group_out = opt->n_groups;
    opt->n_groups++;
    return FADAM_SUCCESS;
}

static char *copy_name(const char *name, int64_t index) {
    char fallback[32];
    size_t length;
    char *copy;
    if (!name) {
        snprintf(fallback, sizeof fallback, "%lld", (long long)index);
        name = fallback;
    }
    length = strlen(name);
    copy = (char *)malloc(length + 1);
    if (copy) memcpy(copy, name, length + 1);
    return copy;
}

fadam_status fadam_add_tensor(fadam_optimizer *opt, const char *name, void *param, const void *grad, int64_t numel,
                              fadam_dtype param_dtype, fadam_dtype grad_dtype, int group, int64_t *index_out) {
    fadam_tensor candidate;
    fadam_status status;
    size_t bad_byte = 0;
    fadam_clear_error();
    FADAM_REQUIRE_NOT_NULL(opt, "fadam_add_tensor");
    if ((status = require_not_finalized(opt, "fadam_add_tensor")) != FADAM_SUCCESS) return status;
    if (name && (name[0] == '\0' || strlen(name) > FADAM_MAX_NAME_LENGTH))
        return fadam_fail_tensor(opt->n_tensors, FADAM_ERR_INVALID_VALUE, "fadam_add_tensor: tensor %lld: a name must have 1 to %d bytes",
                          (long long)opt->n_tensors, FADAM_MAX_NAME_LENGTH);
    /* Checked here, not at the first save hours later: checkpoints are safetensors, whose header is UTF-8. */
    if (name && !fadam_utf8_valid(name, &bad_byte))
        return fadam_fail_tensor(opt->n_tensors, FADAM_ERR_INVALID_VALUE, "fadam_add_tensor: tensor %lld: the name is not valid UTF-8 (byte %zu "
                                                   "of %zu, 0x%02x, starts no valid sequence); checkpoints store names "
                                                   "in a UTF-8 safetensors header",
                          (long long)opt->n_tensors, bad_byte, strlen(name), (unsigned)(unsigned char)name[bad_byte]);
    memset(&candidate, 0, sizeof candidate);
    candidate.param = param;
    candidate.grad = grad;
    candidate.numel = numel;
    candidate.param_dtype = param_dtype;
    candidate.grad_dtype = grad_dtype;
    candidate.group = group;
    /* The state buffers are ours and come at finalize; the caller's part is checked now. */
    status = fadam_check_tensor(&candidate, opt->n_tensors, opt->n_groups, 0, "fadam_add_tensor");
    if (status != FADAM_SUCCESS) return status;
    if (opt->n_tensors == opt->capacity) {
        int64_t capacity = opt->capacity ? opt->capacity * 2 : 64;
        fadam_tensor *tensors = (fadam_tensor *)realloc(opt->tensors, (size_t)capacity * sizeof *tensors);
        char **names;
        if (!tensors) return fadam_fail(FADAM_ERR_OUT_OF_MEMORY, "fadam_add_tensor: no host memory for the tensor list");
        opt->tensors = tensors;
        names = (char **)realloc(opt->names, (size_t)capacity * sizeof *names);
        if (!names) return fadam_fail(FADAM_ERR_OUT_OF_MEMORY, "fadam_add_tensor: no host memory for the tensor list");
        opt->names = names;
        opt->capacity = capacity;
    }
    opt->names[opt->n_tensors] = copy_name(name, opt->n_tensors);
    if (!opt->names[opt->n_tensors])
        return fadam_fail(FADAM_ERR_OUT_OF_MEMORY, "fadam_add_tensor: no host memory for the tensor's name");
    opt->tensors[opt->n_tensors] = candidate;
    if (index_out) *index_out = opt->n_tensors;
    opt->n_tensors++;
    return FADAM_SUCCESS;
}

/* ---- finalize ---- */

static int compare_names(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static fadam_status check_unique_names(const fadam_optimizer *opt) {
    char **sorted;
    int64_t i;
    fadam_status status = FADAM_SUCCESS;
    if (opt->n_tensors < 2) return FADAM_SUCCESS;
    sorted = (char **)malloc((size_t)opt->n_tensors * sizeof *sorted);
    if (!sorted) return fadam_fail(FADAM_ERR_OUT_OF_MEMORY, "fadam_finalize: no host memory to check names");
    memcpy(sorted, opt->names, (size_t)opt->n_tensors * sizeof *sorted);
    qsort(sorted, (size_t)opt->n_tensors, sizeof *sorted, compare_names);
    for (i = 1; i < opt->n_tensors; i++) {
        if (strcmp(sorted[i], sorted[i - 1]) == 0) {
            int64_t first = 0, second;
            while (strcmp(opt->names[first], sorted[i]) != 0) first++;
            for (second = first + 1; strcmp(opt->names[second], sorted[i]) != 0; second++) continue;
            status = fadam_fail_tensor(second, FADAM_ERR_INVALID_VALUE, "fadam_finalize: two tensors are named '%s'",
                                       sorted[i]);
            break;
        }
    }
    free(sorted);
    return status;
}

/* Every state pointer of a tensor to NULL: the master, each field a rule may keep, the 8-bit scales. */
static void clear_state_pointers(fadam_tensor *t) {
    int field;
    t->master = NULL;
    for (field = 0; field < FADAM_FIELD_COUNT; field++) fadam_tensor_set_field(t, field, NULL);
    t->exp_avg_scales = t->exp_avg_sq_scales = NULL;
}

fadam_master_format fadam_tensor_master_format(const fadam_optimizer *opt, fadam_dtype param_dtype, int group) {
    /* The remainder needs bf16's 8-bit exponent: an fp16 param of the group keeps an fp32 master. */
    return param_dtype == FADAM_BFLOAT16 && opt->layouts[group].master == FADAM_MASTER_REMAINDER
               ? FADAM_MASTER_REMAINDER
               : FADAM_MASTER_FP32;
}

uint64_t fadam_tensor_rounding_seed(uint64_t layout_seed, const char *name) {
    /* The name, not the index: the same stream whatever the order of registration or the sharding. */
    return XXH3_64bits_withSeed(name, strlen(name), layout_seed);
}

static size_t moment_element_bytes(fadam_moment_format format) {
    return format == FADAM_MOMENT_INT8 ? 1 : format == FADAM_MOMENT_BF16 ? 2 : 4;
}

/* Byte offsets inside one state block of every tensor's states (those its group's rule keeps, from
 * the rule list, stored as its group's layout says), their 8-bit scales, then its master for a
 * 16-bit param; the total goes to *bytes. Every buffer starts on STATE_ALIGNMENT. */
static fadam_status plan_state(fadam_optimizer *opt, size_t *bytes) {
    size_t offset = 0;
    int64_t i;
    for (i = 0; i < opt->n_tensors; i++) {
        fadam_tensor *t = &opt->tensors[i];
        const fadam_state_layout *layout = &opt->layouts[t->group];
        int rule = (int)opt->groups[t->group].mode, k, n_states = fadam_rule_state_count(rule);
        size_t numel = (size_t)t->numel, n_blocks = (numel + FADAM_MOMENT_BLOCK - 1) / FADAM_MOMENT_BLOCK;
        size_t moment_region = round_up(numel * moment_element_bytes(layout->moments), STATE_ALIGNMENT);
        size_t scale_region = round_up(n_blocks * sizeof(float), STATE_ALIGNMENT);
        int64_t shard_offset = 0, full_numel = 0;
        if (numel > (SIZE_MAX / 4 - offset) / 4)
            return fadam_fail(FADAM_ERR_INVALID_VALUE, "fadam_finalize: the optimizer state does not fit in memory");
        /* Offsets (plus one, so that offset 0 is not NULL) are stored in the pointer fields until the
         * block exists. */
        clear_state_pointers(t);
        t->master_format = fadam_tensor_master_format(opt, t->param_dtype, t->group);
        t->moment_format = layout->moments;
        t->rounding_seed = fadam_tensor_rounding_seed(layout->seed, opt->names[i]);
        fadam_tensor_shard_of(opt, i, &shard_offset, &full_numel);
        t->element_offset = shard_offset;
        for (k = 0; k < n_states; k++) {
            int field = fadam_rule_state_field(rule, k);
            fadam_tensor_set_field(t, field, (void *)(uintptr_t)(offset + 1));
            offset += moment_region;
            if (layout->moments != FADAM_MOMENT_INT8) continue;
            if (field == FADAM_FIELD_EXP_AVG) t->exp_avg_scales = (float *)(uintptr_t)(offset + 1);
            else t->exp_avg_sq_scales = (float *)(uintptr_t)(offset + 1);
            offset += scale_region;
        }
        if (t->param_dtype != FADAM_FLOAT32) {
            t->master = (void *)(uintptr_t)(offset + 1);
            offset += round_up(numel * (t->master_format == FADAM_MASTER_REMAINDER ? 2 : 4), STATE_ALIGNMENT);
        }
    }
    *bytes = offset;
    return FADAM_SUCCESS;
}

static void *rebase(void *planned, uintptr_t base) {
    return planned ? (void *)(base + (uintptr_t)planned - 1) : NULL;
}

static void rebase_state(fadam_optimizer *opt, uintptr_t base) {
    int64_t i;
    int field;
    for (i = 0; i < opt->n_tensors; i++) {
        fadam_tensor *t = &opt->tensors[i];
        for (field = 0; field < FADAM_FIELD_COUNT; field++)
            fadam_tensor_set_field(t, field, rebase(fadam_tensor_field(t, field), base));
        t->master = rebase(t->master, base);
        t->exp_avg_scales = (float *)rebase(t->exp_avg_scales, base);
        t->exp_avg_sq_scales = (float *)rebase(t->exp_avg_sq_scales, base);
    }
}

/* Zero moments, scales and remainders (a remainder of 0: master == param); an fp32 master from its param. */
static void init_cpu_state(fadam_optimizer *opt, size_t state_bytes) {
    int64_t i, j;
    memset(opt->state_block, 0, state_bytes);
    for (i = 0; i < opt->n_tensors; i++) {
        fadam_tensor *t = &opt->tensors[i];
        if (!t->master || t->master_format != FADAM_MASTER_FP32) continue;
        for (j = 0; j < t->numel; j++) {
            uint16_t bits = ((const uint16_t *)t->param)[j];
            ((float *)t->master)[j] = t->param_dtype == FADAM_BFLOAT16 ? fadam_bf16_bits_to_float(bits) : fadam_fp16_bits_to_float(bits);
        }
    }
}

/* Queues zeroed moments, the table upload and master init on `stream`, then waits for them. */
static fadam_status init_cuda_state(fadam_optimizer *opt, size_t state_bytes, const void *host_table,
                                    size_t table_bytes, cudaStream_t stream) {
    fadam_status status;
    FADAM_CUDA_CHECK(cudaMemsetAsync(opt->state_block, 0, state_bytes, stream));
    FADAM_CUDA_CHECK(cudaMemcpyAsync(opt->device_table, host_table, table_bytes, cudaMemcpyHostToDevice, stream));
    status = fadam_cuda_step_grids(opt->n_chunks, opt->cuda_device, opt->step_grids);
    if (status != FADAM_SUCCESS) return status;
    opt->grid_blocks = fadam_step_grid_for(opt->step_grids, opt->table_flags);
    FADAM_CUDA_CHECK(fadam_launch_master_init((const fadam_table_header *)opt->device_table, opt->grid_blocks, FADAM_BLOCK_THREADS,
                                              stream));
    FADAM_CUDA_CHECK(cudaStreamSynchronize(stream));
    return FADAM_SUCCESS;
}

fadam_status fadam_finalize(fadam_optimizer *opt, fadam_stream stream) {
    size_t state_bytes = 0, table_bytes;
    void *host_table = NULL;
    fadam_status status;
    int previous_device = 0;
    fadam_clear_error();
    FADAM_REQUIRE_NOT_NULL(opt, "fadam_finalize");
    if ((status = require_not_finalized(opt, "fadam_finalize")) != FADAM_SUCCESS) return status;
    if ((status = check_unique_names(opt)) != FADAM_SUCCESS) return status;
    if ((status = plan_state(opt, &state_bytes)) != FADAM_SUCCESS) return status;
    if (opt->device == FADAM_DEVICE_CUDA &&
        (status = fadam_cuda_enter_device(opt->cuda_device, &previous_device)) != FADAM_SUCCESS)
        goto fail_offsets;
    FADAM_RANGE_PUSH("finalize");

    opt->state_block = fadam_optimizer_alloc(opt, state_bytes);
    if (!opt->state_block) {
        status = fadam_fail(FADAM_ERR_OUT_OF_MEMORY, "fadam_finalize: cannot allocate %zu bytes of optimizer state",
                            state_bytes);
        goto fail;
    }
    if ((uintptr_t)opt->state_block % STATE_ALIGNMENT) {
        status = fadam_fail(FADAM_ERR_MISALIGNED, "fadam_finalize: the allocator returned %p, not %d-byte aligned",
                            opt->state_block, STATE_ALIGNMENT);
        goto fail;
    }
    rebase_state(opt, (uintptr_t)opt->state_block);
    /* The overlap check sees our buffers too, so a param inside a caller-allocator's block is caught. */
    if ((status = fadam_table_check_states_apart(opt->tensors, opt->n_tensors, opt->n_groups, "fadam_finalize")) !=
            FADAM_SUCCESS ||
        (status = fadam_check_rule_states(opt->tensors, opt->n_tensors, opt->groups, "fadam_finalize")) != FADAM_SUCCESS)
        goto fail;

    table_bytes = fadam_table_size(opt->n_tensors);
    host_table = aligned_alloc(16, round_up(table_bytes, 16));
    if (!host_table) {
        status = fadam_fail(FADAM_ERR_OUT_OF_MEMORY, "fadam_finalize: no host memory for the tensor table");
        goto fail;
    }
    fadam_table_fill(opt->tensors, opt->n_tensors, opt->n_groups, FADAM_CHUNK_ELEMS, host_table);
    opt->n_chunks = ((const fadam_table_header *)host_table)->n_chunks;
    opt->table_flags = fadam_table_known_flags(host_table);

    if ((status = fadam_fused_state_create(opt, (cudaStream_t)stream)) != FADAM_SUCCESS) goto fail;
    if (opt->device == FADAM_DEVICE_CPU) {
        if ((status = fadam_cpu_pool_open(&opt->cpu_pool, opt->cpu_threads, "fadam_finalize")) != FADAM_SUCCESS)
            goto fail;
        init_cpu_state(opt, state_bytes);
    } else {
        opt->device_table = fadam_optimizer_alloc(opt, table_bytes);
        if (!opt->device_table) {
            status = fadam_fail(FADAM_ERR_OUT_OF_MEMORY, "fadam_finalize: cannot allocate %zu bytes of device table",
                                table_bytes);
            goto fail;
        }
        status = init_cuda_state(opt, state_bytes, host_table, table_bytes, (cudaStream_t)stream);
        if (status != FADAM_SUCCESS) goto fail;
    }
    free(host_table);
    opt->finalized = 1;
    FADAM_RANGE_POP();
    if (opt->device == FADAM_DEVICE_CUDA) fadam_cuda_leave_device(opt->cuda_device, previous_device);
    return FADAM_SUCCESS;

fail:
    /* Back to the registered-but-not-finalized state: the caller may fix things and try again. */
    free(host_table);
    if (opt->device == FADAM_DEVICE_CUDA && opt->state_block) (void)cudaStreamSynchronize((cudaStream_t)stream);
    free_state(opt);
    FADAM_RANGE_POP();
    if (opt->device == FADAM_DEVICE_CUDA) fadam_cuda_leave_device(opt->cuda_device, previous_device);
fail_offsets:
    {
        int64_t i;
        for (i = 0; i < opt->n_tensors; i++) clear_state_pointers(&opt->tensors[i]);
    }
    return status;
}

/* ---- hyperparameters and counters ---- */

fadam_status fadam_set_lr(fadam_optimizer *opt, int group, float lr) {
    fadam_hparams updated;
    fadam_status status;
    fadam_clear_error();
    FADAM_REQUIRE_NOT_NULL(opt, "fadam_set_lr");
    if ((status = require_group(opt, group, "fadam_set_lr")) != FADAM_SUCCESS) return status;
    updated = opt->groups[group];
    updated.lr = lr;
    if ((status = fadam_check_hparams(&updated, "fadam_set_lr", group)) != FADAM_SUCCESS) return status;
    opt->groups[group].lr = lr;
    return FADAM_SUCCESS;
}

/* Two rules keeping the same state fields (ADAMW and ADAM_L2): a finalized group may switch between them. */
static int same_states(int rule_a, int rule_b) {
    int k;
    for (k = 0; k < FADAM_MAX_RULE_STATES; k++)
        if (fadam_rule_state_field(rule_a, k) != fadam_rule_state_field(rule_b, k)) return 0;
    return 1;
}

fadam_status fadam_set_hparams(fadam_optimizer *opt, int group, const fadam_hparams *hparams) {
    fadam_status status;
    fadam_clear_error();
    FADAM_REQUIRE_NOT_NULL(opt, "fadam_set_hparams");
    FADAM_REQUIRE_NOT_NULL(hparams, "fadam_set_hparams");
    if ((status = require_group(opt, group, "fadam_set_hparams")) != FADAM_SUCCESS) return status;
    if ((status = fadam_check_hparams(hparams, "fadam_set_hparams", group)) != FADAM_SUCCESS) return status;
    if (opt->finalized && !same_states((int)opt->groups[group].mode, (int)hparams->mode))
        return fadam_fail(FADAM_ERR_BAD_STATE, "fadam_set_hparams: group %d: mode %s -> %s after fadam_finalize: the "
                                               "group's state was laid out for %s and the new rule keeps other states",
                          group, fadam_rule_name((int)opt->groups[group].mode), fadam_rule_name((int)hparams->mode),
                          fadam_rule_name((int)opt->groups[group].mode));
    opt->groups[group] = *hparams;
    return FADAM_SUCCESS;
}

fadam_status fadam_get_hparams(const fadam_optimizer *opt, int group, fadam_hparams *out) {
    fadam_status status;
    fadam_clear_error();
    FADAM_REQUIRE_NOT_NULL(opt, "fadam_get_hparams");
    FADAM_REQUIRE_NOT_NULL(out, "fadam_get_hparams");
    if ((status = require_group(opt, group, "fadam_get_hparams")) != FADAM_SUCCESS) return status;
    *out = opt->groups[group];
    return FADAM_SUCCESS;
}

fadam_status fadam_get_step(const fadam_optimizer *opt, int64_t *step_out) {
    fadam_clear_error();
    FADAM_REQUIRE_NOT_NULL(opt, "fadam_get_step");
    FADAM_REQUIRE_NOT_NULL(step_out, "fadam_get_step");
    *step_out = opt->step;
    return FADAM_SUCCESS;
}

fadam_status fadam_set_step(fadam_optimizer *opt, int64_t step) {
    fadam_clear_error();
    FADAM_REQUIRE_NOT_NULL(opt, "fadam_set_step");
    if (opt->finalized && opt->fused_configured)
        return fadam_fail(FADAM_ERR_BAD_STATE, "fadam_set_step: the fused step counts on the device from finalize on; "
                                               "set the step before fadam_finalize, or load a checkpoint");
    /* INT64_MAX could not advance: the next step would overflow. */
    if (step < 0 || step == INT64_MAX)
        return fadam_fail(FADAM_ERR_INVALID_VALUE, "fadam_set_step: step=%lld must be in [0, INT64_MAX - 1] (a step "
                                                   "counter at INT64_MAX cannot advance)",
                          (long long)step);
    opt->step = step;
    return FADAM_SUCCESS;
}

fadam_status fadam_num_tensors(const fadam_optimizer *opt, int64_t *count_out) {
    fadam_clear_error();
    FADAM_REQUIRE_NOT_NULL(opt, "fadam_num_tensors");
    FADAM_REQUIRE_NOT_NULL(count_out, "fadam_num_tensors");
    *count_out = opt->n_tensors;
    return FADAM_SUCCESS;
}

fadam_status fadam_num_groups(const fadam_optimizer *opt, int *count_out) {
    fadam_clear_error();
    FADAM_REQUIRE_NOT_NULL(opt, "fadam_num_groups");
    FADAM_REQUIRE_NOT_NULL(count_out, "fadam_num_groups");
    *count_out = opt->n_groups;
    return FADAM_SUCCESS;
}

fadam_status fadam_get_state(const fadam_optimizer *opt, int64_t index, float **master, float **exp_avg,
                             float **exp_avg_sq) {
    fadam_status status;
    fadam_clear_error();
    FADAM_REQUIRE_NOT_NULL(opt, "fadam_get_state");
    if ((status = fadam_require_finalized(opt, "fadam_get_state")) != FADAM_SUCCESS) return status;
    if (index < 0 || index >= opt->n_tensors)
        return fadam_fail(FADAM_ERR_INVALID_VALUE, "fadam_get_state: index=%lld, but %lld tensor(s) are registered",
                          (long long)index, (long long)opt->n_tensors);
    if (opt->tensors[index].master_format != FADAM_MASTER_FP32 || opt->tensors[index].moment_format != FADAM_MOMENT_FP32)
        return fadam_fail_tensor(index, FADAM_ERR_UNSUPPORTED_DTYPE,
                                 "fadam_get_state: tensor %lld ('%.120s') is stored in a lean layout of group %d (master "
                                 "%s, moments %s), not as float32: use fadam_get_tensor_state",
                                 (long long)index, opt->names[index], opt->tensors[index].group,
                                 opt->tensors[index].master_format == FADAM_MASTER_REMAINDER ? "remainder" : "fp32",
                                 fadam_moment_format_name(opt->tensors[index].moment_format));
    if (master) *master = (float *)opt->tensors[index].master;
    if (exp_avg) *exp_avg = (float *)opt->tensors[index].exp_avg;
    if (exp_avg_sq) *exp_avg_sq = (float *)opt->tensors[index].exp_avg_sq;
    return FADAM_SUCCESS;
}

fadam_status fadam_get_tensor_state(const fadam_optimizer *opt, int64_t index, fadam_tensor *out) {
    fadam_status status;
    fadam_clear_error();
    FADAM_REQUIRE_NOT_NULL(opt, "fadam_get_tensor_state");
    FADAM_REQUIRE_NOT_NULL(out, "fadam_get_tensor_state");
    if ((status = fadam_require_finalized(opt, "fadam_get_tensor_state")) != FADAM_SUCCESS) return status;
    if (index < 0 || index >= opt->n_tensors)
        return fadam_fail(FADAM_ERR_INVALID_VALUE, "fadam_get_tensor_state: index=%lld, but %lld tensor(s) are registered",
                          (long long)index, (long long)opt->n_tensors);
    *out = opt->tensors[index];
    return FADAM_SUCCESS;
}

const char *fadam_moment_format_name(fadam_moment_format format) {
    return format == FADAM_MOMENT_FP32 ? "fp32" : format == FADAM_MOMENT_BF16 ? "bf16" : format == FADAM_MOMENT_INT8 ? "int8" : "?";
}

fadam_status fadam_set_group_layout(fadam_optimizer *opt, int group, const fadam_state_layout *layout) {
    fadam_status status;
    fadam_clear_error();
    FADAM_REQUIRE_NOT_NULL(opt, "fadam_set_group_layout");
    FADAM_REQUIRE_NOT_NULL(layout, "fadam_set_group_layout");
    if (opt->finalized)
        return fadam_fail(FADAM_ERR_BAD_STATE, "fadam_set_group_layout: group %d: the optimizer is already finalized; "
                                               "the state was laid out at fadam_finalize, so set layouts before it",
                          group);
    if ((status = require_group(opt, group, "fadam_set_group_layout")) != FADAM_SUCCESS) return status;
    if (layout->master != FADAM_MASTER_FP32 && layout->master != FADAM_MASTER_REMAINDER)
        return fadam_fail(FADAM_ERR_INVALID_VALUE, "fadam_set_group_layout: group %d: master=%d is not a "
                                                   "fadam_master_format (FADAM_MASTER_FP32 0, FADAM_MASTER_REMAINDER 1)",
                          group, (int)layout->master);
    if (layout->moments != FADAM_MOMENT_FP32 && layout->moments != FADAM_MOMENT_BF16 &&
        layout->moments != FADAM_MOMENT_INT8)
        return fadam_fail(FADAM_ERR_INVALID_VALUE, "fadam_set_group_layout: group %d: moments=%d is not a "
                                                   "fadam_moment_format (FADAM_MOMENT_FP32 0, FADAM_MOMENT_BF16 1, "
                                                   "FADAM_MOMENT_INT8 2)",
                          group, (int)layout->moments);
    opt->layouts[group] = *layout;
    return FADAM_SUCCESS;
}

fadam_status fadam_get_group_layout(const fadam_optimizer *opt, int group, fadam_state_layout *out) {
    fadam_status status;
    fadam_clear_error();
    FADAM_REQUIRE_NOT_NULL(opt, "fadam_get_group_layout");
    FADAM_REQUIRE_NOT_NULL(out, "fadam_get_group_layout");
    if ((status = require_group(opt, group, "fadam_get_group_layout")) != FADAM_SUCCESS) return status;
    *out = opt->layouts[group];
    return FADAM_SUCCESS;
}

/* ---- the CPU device's threads ---- */

static fadam_status require_cpu(const fadam_optimizer *opt, const char *function) {
    if (opt->device != FADAM_DEVICE_CPU)
        return fadam_fail(FADAM_ERR_INVALID_VALUE, "%s: the optimizer is on a CUDA device, whose steps use no CPU "
                                                   "threads",
                          function);
    return FADAM_SUCCESS;
}

fadam_status fadam_set_cpu_threads(fadam_optimizer *opt, int n_threads) {
    fadam_cpu_pool *pool = NULL;
    fadam_status status;
    fadam_clear_error();
    FADAM_REQUIRE_NOT_NULL(opt, "fadam_set_cpu_threads");
    if ((status = require_cpu(opt, "fadam_set_cpu_threads")) != FADAM_SUCCESS) return status;
    if (n_threads < 0 || n_threads > FADAM_MAX_CPU_THREADS)
        return fadam_fail(FADAM_ERR_INVALID_VALUE, "fadam_set_cpu_threads: n_threads=%d must be in [0, %d] (0: one "
                                                   "per core)",
                          n_threads, FADAM_MAX_CPU_THREADS);
    if (opt->finalized) {
        /* The new threads first: if they cannot start, the old ones still serve. */
        if ((status = fadam_cpu_pool_open(&pool, n_threads, "fadam_set_cpu_threads")) != FADAM_SUCCESS) return status;
        fadam_cpu_pool_close(opt->cpu_pool);
        opt->cpu_pool = pool;
    }
    opt->cpu_threads = n_threads;
    return FADAM_SUCCESS;
}

fadam_status fadam_get_cpu_threads(const fadam_optimizer *opt, int *n_threads_out) {
    fadam_status status;
    fadam_clear_error();
    FADAM_REQUIRE_NOT_NULL(opt, "fadam_get_cpu_threads");
    FADAM_REQUIRE_NOT_NULL(n_threads_out, "fadam_get_cpu_threads");
    if ((status = require_cpu(opt, "fadam_get_cpu_threads")) != FADAM_SUCCESS) return status;
    *n_threads_out = opt->cpu_pool ? fadam_cpu_pool_size(opt->cpu_pool)
                                   : opt->cpu_threads ? opt->cpu_threads : fadam_cpu_default_threads();
    return FADAM_SUCCESS;
}
