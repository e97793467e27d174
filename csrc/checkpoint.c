/* checkpoint.c - the managed optimizer's state as a safetensors checkpoint (safetensors.h), file or
 * buffer: which entries and metadata a save writes for the registered tensors, and which tensor's
 * state each entry of a load fills. fadam_save writes atomically (atomic_file.h); fadam_load checks
 * everything (header bounds, JSON, dtypes, shapes, byte ranges, names, version, checksum) before it
 * changes anything. The checksum covers the metadata and the data, not the JSON text, so a file
 * re-saved by Python's safetensors still loads. The metadata keys are checkpoint_metadata.c's table;
 * the bytes move through checkpoint_io.c; a state saved in another layout is converted by
 * checkpoint_convert.c; fadam_load_shards is checkpoint_shards.c. */
#define _POSIX_C_SOURCE 200809L

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cuda_runtime.h>

#include "atomic_file.h"
#include "checkpoint_internal.h"
#include "number_text.h"
#include "nvtx_ranges.h"
#include "utf8.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "checkpoint.c writes the host's bytes as safetensors' little-endian data"
#endif

int fadam_checkpoint_states_as(const fadam_optimizer *opt, int64_t t, const fadam_state_layout *layout,
                               fadam_checkpoint_state states[FADAM_CHECKPOINT_MAX_STATES]) {
    /* The suffixes, "." + the field's name, as string literals: entries keep pointers to them. */
#define FIELD_SUFFIX_(field, member) "." #member,
#define SCALES_SUFFIX_(field, member) "." #member ".scales",
    static const char *const suffixes[FADAM_FIELD_COUNT] = {FADAM_STATE_FIELDS(FIELD_SUFFIX_)};
    static const char *const scale_suffixes[FADAM_FIELD_COUNT] = {FADAM_STATE_FIELDS(SCALES_SUFFIX_)};
#undef FIELD_SUFFIX_
#undef SCALES_SUFFIX_
    const fadam_tensor *tensor = &opt->tensors[t];
    int rule = (int)opt->groups[tensor->group].mode, n_rule = fadam_rule_state_count(rule), n = 0, i;
    int own_moments = layout->moments == tensor->moment_format;
    fadam_master_format master = tensor->param_dtype == FADAM_BFLOAT16 && layout->master == FADAM_MASTER_REMAINDER
                                     ? FADAM_MASTER_REMAINDER
                                     : FADAM_MASTER_FP32;
    int64_t n_blocks = (tensor->numel + FADAM_MOMENT_BLOCK - 1) / FADAM_MOMENT_BLOCK;
    for (i = 0; i < n_rule; i++) {
        int field = fadam_rule_state_field(rule, i);
        fadam_checkpoint_state *s = &states[n++];
        if (field < 0 || field >= FADAM_FIELD_COUNT) return i; /* FADAM_RULES's checks keep this from happening */
        s->suffix = suffixes[field];
        s->data = own_moments ? fadam_tensor_field(tensor, field) : NULL;
        s->numel = tensor->numel;
        s->role = field;
        s->format = (int)layout->moments;
        /* The 8-bit codes: m signed, v unsigned (docs/STATE_LAYOUTS.md). */
        s->dtype = layout->moments == FADAM_MOMENT_BF16   ? "BF16"
                   : layout->moments == FADAM_MOMENT_INT8 ? (field == FADAM_FIELD_EXP_AVG ? "I8" : "U8")
                                                          : "F32";
        s->element_bytes = layout->moments == FADAM_MOMENT_BF16 ? 2 : layout->moments == FADAM_MOMENT_INT8 ? 1 : 4;
    }
    for (i = 0; i < n_rule && layout->moments == FADAM_MOMENT_INT8; i++) {
        int field = states[i].role;
        fadam_checkpoint_state *s = &states[n++];
        s->suffix = scale_suffixes[field];
        s->data = !own_moments ? NULL : field == FADAM_FIELD_EXP_AVG ? tensor->exp_avg_scales : tensor->exp_avg_sq_scales;
        s->numel = n_blocks;
        s->role = FADAM_CHECKPOINT_ROLE_SCALES(field);
        s->format = FADAM_MOMENT_FP32;
        s->dtype = "F32";
        s->element_bytes = 4;
    }
    /* An fp32 parameter is its own master copy. */
    if (tensor->param_dtype != FADAM_FLOAT32) {
        fadam_checkpoint_state *s = &states[n++];
        s->suffix = master == FADAM_MASTER_REMAINDER ? ".master_remainder" : ".master";
        s->data = master == tensor->master_format ? tensor->master : NULL;
        s->numel = tensor->numel;
        s->role = FADAM_CHECKPOINT_ROLE_MASTER;
        s->format = (int)master;
        s->dtype = master == FADAM_MASTER_REMAINDER ? "U16" : "F32";
        s->element_bytes = master == FADAM_MASTER_REMAINDER ? 2 : 4;
    }
    return n;
}

int fadam_checkpoint_states(const fadam_optimizer *opt, int64_t t,
                            fadam_checkpoint_state states[FADAM_CHECKPOINT_MAX_STATES]) {
    return fadam_checkpoint_states_as(opt, t, &opt->layouts[opt->tensors[t].group], states);
}

fadam_status fadam_checkpoint_require_finalized(const fadam_optimizer *opt, const char *function) {
    if (!opt->finalized)
        return fadam_fail(FADAM_ERR_BAD_STATE, "%s: the optimizer is not finalized; call fadam_finalize first",
                          function);
    return FADAM_SUCCESS;
}

void fadam_checkpoint_apply_values(fadam_optimizer *opt, const fadam_checkpoint_values *values) {
    /* A checkpoint of fused steps counted them in fused.step; without the fused step here, that
     * count becomes the host step. */
    opt->step = values->has_fused && !opt->fused_state ? values->fused.step : values->step;
    memcpy(opt->groups, values->groups, (size_t)opt->n_groups * sizeof *opt->groups);
}

/* ---- save: the plan (entries in name order, metadata in key order, header text) ---- */

typedef struct save_plan {
    fadam_st_item *entries;
    size_t n_entries;
    fadam_metadata_list metadata;
    fadam_text header;        /* JSON and padding */
    size_t checksum_position; /* of the checksum's hex digits inside the header */
    uint64_t total_bytes;
} save_plan;

static void free_plan(save_plan *plan) {
    size_t i;
    for (i = 0; i < plan->n_entries; i++) free(plan->entries[i].name);
    free(plan->entries);
    fadam_metadata_list_free(&plan->metadata);
    free(plan->header.data);
}

static int compare_items(const void *a, const void *b) {
    return strcmp(((const fadam_st_item *)a)->name, ((const fadam_st_item *)b)->name);
}

static int compare_first_strings(const void *a, const void *b) {
    return strcmp(((const char *const *)a)[0], ((const char *const *)b)[0]);
}

/* `counters`: the fused step's, or NULL when it is not configured. */
static fadam_status build_plan(const fadam_optimizer *opt, const fadam_step_counters *counters, save_plan *plan,
                               const char *function) {
    fadam_checkpoint_values values;
    uint64_t data_bytes = 0;
    size_t n_entries = 0;
    fadam_status status;
    int64_t t;
    int kind, out_of_memory = 0;
    memset(plan, 0, sizeof *plan);
    for (t = 0; t < opt->n_tensors; t++) {
        fadam_checkpoint_state states[FADAM_CHECKPOINT_MAX_STATES];
        /* fadam_add_tensor already refuses such names; the save checks again what it writes. */
        if (!fadam_utf8_valid(opt->names[t], NULL))
            return fadam_fail(FADAM_ERR_INVALID_VALUE,
                              "%s: the name of tensor %lld is not valid UTF-8, which a safetensors "
                              "header requires",
                              function, (long long)t);
        n_entries += (size_t)fadam_checkpoint_states(opt, t, states);
    }
    if (opt->shard_count > 0 && opt->shard_ranks == 0)
        return fadam_fail(FADAM_ERR_BAD_STATE,
                          "%s: tensors were registered as shards: call fadam_set_shard_rank before "
                          "fadam_finalize, so the checkpoint can name its shard",
                          function);
    plan->entries = (fadam_st_item *)calloc(n_entries ? n_entries : 1, sizeof *plan->entries);
    if (!plan->entries)
        return fadam_fail(FADAM_ERR_OUT_OF_MEMORY, "%s: no host memory for the checkpoint plan", function);
    for (t = 0; t < opt->n_tensors; t++) {
        fadam_checkpoint_state states[FADAM_CHECKPOINT_MAX_STATES];
        int n_states = fadam_checkpoint_states(opt, t, states);
        size_t name_length = strlen(opt->names[t]);
        for (kind = 0; kind < n_states; kind++) {
            fadam_st_item *entry = &plan->entries[plan->n_entries++];
            entry->name = (char *)malloc(name_length + strlen(states[kind].suffix) + 1);
            if (!entry->name) {
                out_of_memory = 1;
                continue;
            }
            memcpy(entry->name, opt->names[t], name_length);
            strcpy(entry->name + name_length, states[kind].suffix);
            entry->dtype = states[kind].dtype;
            entry->numel = states[kind].numel;
            entry->bytes = (uint64_t)states[kind].numel * states[kind].element_bytes;
            entry->data = states[kind].data;
        }
    }
    fadam_checkpoint_values_of(opt, counters, &values);
    fadam_metadata_write(opt, &values, &plan->metadata);
    if (out_of_memory || plan->metadata.out_of_memory)
        return fadam_fail(FADAM_ERR_OUT_OF_MEMORY, "%s: no host memory for the checkpoint plan", function);

    if (plan->n_entries > 1) qsort(plan->entries, plan->n_entries, sizeof *plan->entries, compare_items);
    qsort(plan->metadata.items, plan->metadata.n_items, 2 * sizeof *plan->metadata.items, compare_first_strings);
    status = fadam_safetensors_write_header(&plan->header, plan->metadata.items, plan->metadata.n_items, plan->entries,
                                            plan->n_entries, plan->metadata.slack, "checksum", &plan->checksum_position,
                                            &data_bytes, function);
    plan->checksum_position += strlen(fadam_checksum_prefix(FADAM_CHECKPOINT_FORMAT_VERSION));
    plan->total_bytes = 8 + (uint64_t)plan->header.length + data_bytes;
    return status;
}

/* ---- save: the header, then every entry's data, then the checksum patched into the header ---- */

static fadam_status write_checkpoint(const fadam_optimizer *opt, const save_plan *plan, fadam_sink *out,
                                     fadam_stream stream, const char *function) {
    unsigned char prefix[8], digest[FADAM_CHECKSUM_MAX_BYTES], *staging = NULL;
    char hex[2 * FADAM_CHECKSUM_MAX_BYTES + 1];
    size_t digest_bytes = fadam_checksum_bytes(FADAM_CHECKPOINT_FORMAT_VERSION), e;
    fadam_checksum hash;
    fadam_cpu_pool *pool = NULL;
    fadam_status status = FADAM_SUCCESS;
    int previous_device = 0, i;
    for (i = 0; i < 8; i++) prefix[i] = (unsigned char)((uint64_t)plan->header.length >> (8 * i));
    if ((status = fadam_sink_write(out, prefix, 8, function)) != FADAM_SUCCESS) return status;
    if ((status = fadam_sink_write(out, plan->header.data, plan->header.length, function)) != FADAM_SUCCESS)
        return status;
    fadam_checksum_init(&hash, FADAM_CHECKPOINT_FORMAT_VERSION);
    fadam_checksum_metadata(&hash, plan->metadata.items, plan->metadata.n_items);
    if ((status = fadam_staging_begin(opt, &staging, &previous_device, function)) != FADAM_SUCCESS) return status;
    /* The CPU device's threads hash pieces at once; a step running on them now leaves us the caller's. */
    if (opt->device == FADAM_DEVICE_CPU && opt->cpu_pool && fadam_cpu_pool_acquire(opt->cpu_pool)) pool = opt->cpu_pool;
    for (e = 0; e < plan->n_entries && status == FADAM_SUCCESS; e++)
        status = fadam_sink_write_state(opt, plan->entries[e].name, plan->entries[e].data, plan->entries[e].bytes, out,
                                        &hash, pool, staging, (cudaStream_t)stream, function);
    if (pool) fadam_cpu_pool_release(pool);
    fadam_staging_end(opt, staging, previous_device);
    if (status != FADAM_SUCCESS) return status;
    fadam_checksum_final(&hash, digest);
    fadam_hex_encode(digest, digest_bytes, hex);
    return fadam_sink_patch(out, 8 + (uint64_t)plan->checksum_position, hex, 2 * digest_bytes, function);
}

/* The fused step's counters as they are after the work queued on `stream`. */
static fadam_status read_fused_counters(const fadam_optimizer *opt, fadam_step_counters *out, fadam_stream stream) {
    fadam_status status = FADAM_SUCCESS;
    int previous_device = 0;
    if (opt->device == FADAM_DEVICE_CPU) {
        *out = opt->fused_state->counters;
        return FADAM_SUCCESS;
    }
    if ((status = fadam_cuda_enter_device(opt->cuda_device, &previous_device)) != FADAM_SUCCESS) return status;
    status = FADAM_CUDA_STATUS(
        cudaMemcpyAsync(out, &opt->fused_state->counters, sizeof *out, cudaMemcpyDeviceToHost, (cudaStream_t)stream));
    if (status == FADAM_SUCCESS) status = FADAM_CUDA_STATUS(cudaStreamSynchronize((cudaStream_t)stream));
    fadam_cuda_leave_device(opt->cuda_device, previous_device);
    return status;
}

static fadam_status save_to_bytes(const fadam_optimizer *opt, size_t *size_out, void *buffer, size_t capacity,
                                  fadam_stream stream) {
    const char *function = "fadam_save_bytes";
    fadam_step_counters counters;
    save_plan plan;
    fadam_sink out;
    fadam_status status;
    fadam_clear_error();
    FADAM_REQUIRE_NOT_NULL(opt, "fadam_save_bytes");
    FADAM_REQUIRE_NOT_NULL(size_out, "fadam_save_bytes");
    if ((status = fadam_checkpoint_require_finalized(opt, function)) != FADAM_SUCCESS) return status;
    /* The size does not depend on the counters' values: a query reads nothing from the device. */
    memset(&counters, 0, sizeof counters);
    if (opt->fused_state && buffer && (status = read_fused_counters(opt, &counters, stream)) != FADAM_SUCCESS)
        return status;
    status = build_plan(opt, opt->fused_state ? &counters : NULL, &plan, function);
    if (status == FADAM_SUCCESS && plan.total_bytes > SIZE_MAX)
        status = fadam_fail(FADAM_ERR_INVALID_VALUE, "%s: the checkpoint (%llu bytes) does not fit in memory", function,
                            (unsigned long long)plan.total_bytes);
    if (status == FADAM_SUCCESS) {
        *size_out = (size_t)plan.total_bytes;
        if (buffer && capacity < plan.total_bytes)
            status = fadam_fail(FADAM_ERR_WORKSPACE_TOO_SMALL, "%s: capacity=%zu, the checkpoint needs %llu bytes",
                                function, capacity, (unsigned long long)plan.total_bytes);
    }
    if (status == FADAM_SUCCESS && buffer) {
        memset(&out, 0, sizeof out);
        out.memory = (unsigned char *)buffer;
        status = write_checkpoint(opt, &plan, &out, stream, function);
    }
    free_plan(&plan);
    return status;
}

static fadam_status save_to_file(const fadam_optimizer *opt, const char *path, fadam_stream stream) {
    const char *function = "fadam_save";
    fadam_step_counters counters;
    fadam_atomic_file file;
    save_plan plan;
    fadam_sink out;
    fadam_status status;
    fadam_clear_error();
    FADAM_REQUIRE_NOT_NULL(opt, "fadam_save");
    FADAM_REQUIRE_NOT_NULL(path, "fadam_save");
    if ((status = fadam_checkpoint_require_finalized(opt, function)) != FADAM_SUCCESS) return status;
    if (path[0] == '\0') return fadam_fail(FADAM_ERR_INVALID_VALUE, "%s: path is empty", function);
    if (opt->fused_state && (status = read_fused_counters(opt, &counters, stream)) != FADAM_SUCCESS) return status;
    if ((status = build_plan(opt, opt->fused_state ? &counters : NULL, &plan, function)) != FADAM_SUCCESS) {
        free_plan(&plan);
        return status;
    }
    if ((status = fadam_atomic_file_open(&file, path, function)) != FADAM_SUCCESS) {
        free_plan(&plan);
        return status;
    }
    memset(&out, 0, sizeof out);
    out.fd = file.fd;
    out.path = path;
    status = write_checkpoint(opt, &plan, &out, stream, function);
    if (status == FADAM_SUCCESS)
        status = fadam_atomic_file_commit(&file, function);
    else
        fadam_atomic_file_discard(&file);
    free_plan(&plan);
    return status;
}

/* ---- load: which registered tensor each entry fills ---- */

/* State `kind` of registered tensor t: present, of its dtype, as many elements as registered. */
static fadam_status match_entry(fadam_load_plan *plan, const fadam_optimizer *opt, int64_t t,
                                const fadam_checkpoint_state *states, int kind, const char *function) {
    const fadam_tensor *tensor = &opt->tensors[t];
    const char *name = opt->names[t], *state = states[kind].suffix + 1;
    char key[FADAM_MAX_NAME_LENGTH + 32];
    fadam_st_entry *entry;
    size_t index = 0;
    snprintf(key, sizeof key, "%s%s", name, states[kind].suffix);
    entry = fadam_safetensors_find(plan->by_name, plan->parsed.n_entries, key, &index);
    if (!entry) {
        if (kind == 0)
            return fadam_fail(FADAM_ERR_MISMATCH, "%s: tensor '%.*s' is missing from the checkpoint (no entry '%.*s')",
                              function, FADAM_NAME_CLIP, name, FADAM_NAME_CLIP + 12, key);
        return fadam_fail(FADAM_ERR_MISMATCH, "%s: tensor '%.*s' %s: missing from the checkpoint (no entry '%.*s')",
                          function, FADAM_NAME_CLIP, name, state, FADAM_NAME_CLIP + 12, key);
    }
    if (strcmp(entry->dtype, states[kind].dtype) != 0)
        return fadam_fail(FADAM_ERR_MISMATCH, "%s: tensor '%.*s' %s: wrong dtype: %s in the checkpoint, %s expected",
                          function, FADAM_NAME_CLIP, name, state, entry->dtype, states[kind].dtype);
    if (entry->numel != (uint64_t)states[kind].numel)
        return fadam_fail(FADAM_ERR_MISMATCH,
                          "%s: tensor '%.*s' %s: wrong shape: %.*s (%llu elements) in the checkpoint, "
                          "%lld elements registered%s",
                          function, FADAM_NAME_CLIP, name, state, entry->shape_length > 100 ? 100 : entry->shape_length,
                          entry->shape_text, (unsigned long long)entry->numel, (long long)tensor->numel,
                          states[kind].role >= FADAM_FIELD_COUNT ? " (one scale per 256)" : "");
    /* The shape must be what a save writes, [numel]: [7,1] or [] hold the right count, but are not
     * this optimizer's state. */
    if (entry->n_dims != 1)
        return fadam_fail(FADAM_ERR_CORRUPT,
                          "%s: tensor '%.*s' %s: shape %.*s has %d dimensions; a fusedadam checkpoint "
                          "saves [%lld]",
                          function, FADAM_NAME_CLIP, name, state, entry->shape_length > 100 ? 100 : entry->shape_length,
                          entry->shape_text, entry->n_dims, (long long)states[kind].numel);
    entry->matched = 1;
    plan->entry_tensor[index] = t;
    plan->entry_kind[index] = kind;
    return FADAM_SUCCESS;
}

/* A file's slice of a tensor: NAME.offset and NAME.full_numel, or (not sharded) the whole tensor. */
fadam_status fadam_checkpoint_file_slice(const fadam_st_header *parsed, const char *name, int64_t numel,
                                         int64_t *offset, int64_t *full_numel, const char *function) {
    int which;
    *offset = 0;
    *full_numel = numel;
    for (which = FADAM_TENSOR_KEY_OFFSET; which <= FADAM_TENSOR_KEY_FULL_NUMEL; which++) {
        const char *value = fadam_metadata_tensor_value(parsed, name, which);
        if (value && !fadam_parse_count(value, which == FADAM_TENSOR_KEY_OFFSET ? offset : full_numel))
            return fadam_fail(FADAM_ERR_CORRUPT, "%s: __metadata__ \"%.*s%s\" is \"%.40s\", not a count", function,
                              FADAM_NAME_CLIP, name, fadam_tensor_key_suffix[which], value);
    }
    if (*offset > *full_numel || numel > *full_numel - *offset)
        return fadam_fail(FADAM_ERR_CORRUPT,
                          "%s: tensor '%.*s': the slice [%lld, +%lld) lies outside its %lld elements", function,
                          FADAM_NAME_CLIP, name, (long long)*offset, (long long)numel, (long long)*full_numel);
    return FADAM_SUCCESS;
}

/* fadam_load restores the slice that was saved: the same offset and full size (fadam_load_shards
 * reassembles other slicings). */
static fadam_status match_slice(fadam_load_plan *plan, const fadam_optimizer *opt, int64_t t, const char *function) {
    int64_t offset, full_numel, want_offset, want_full;
    fadam_status status;
    status = fadam_checkpoint_file_slice(&plan->parsed, opt->names[t], opt->tensors[t].numel, &offset, &full_numel,
                                         function);
    if (status != FADAM_SUCCESS) return status;
    fadam_tensor_shard_of(opt, t, &want_offset, &want_full);
    if (offset != want_offset || full_numel != want_full)
        return fadam_fail(FADAM_ERR_MISMATCH,
                          "%s: tensor '%.*s': the checkpoint holds elements [%lld, +%lld) of %lld, "
                          "registered are [%lld, +%lld) of %lld (fadam_load_shards reassembles "
                          "another slicing)",
                          function, FADAM_NAME_CLIP, opt->names[t], (long long)offset, (long long)opt->tensors[t].numel,
                          (long long)full_numel, (long long)want_offset, (long long)opt->tensors[t].numel,
                          (long long)want_full);
    return FADAM_SUCCESS;
}

/* Every registered tensor in registration order, then every entry no tensor claimed. */
static fadam_status match_tensors(fadam_load_plan *plan, const fadam_optimizer *opt, const char *function) {
    char key[FADAM_MAX_NAME_LENGTH + 32];
    const char *value;
    int64_t t, group;
    size_t i;
    fadam_status status;
    for (t = 0; t < opt->n_tensors; t++) {
        const fadam_tensor *tensor = &opt->tensors[t];
        const char *name = opt->names[t];
        fadam_checkpoint_state states[FADAM_CHECKPOINT_MAX_STATES];
        /* The entries the file's layout of the group holds (converted into ours by commit_state). */
        int kind, n_states = fadam_checkpoint_states_as(opt, t, &plan->values.layouts[tensor->group], states);
        /* The first state's entry tells whether the tensor is there at all. */
        if ((status = match_entry(plan, opt, t, states, 0, function)) != FADAM_SUCCESS) return status;
        snprintf(key, sizeof key, "%s%s", name, fadam_tensor_key_suffix[FADAM_TENSOR_KEY_PARAM_DTYPE]);
        if ((status = fadam_metadata_require(&plan->parsed, key, &value, function)) != FADAM_SUCCESS) return status;
        if (strcmp(value, fadam_param_dtype_name(tensor->param_dtype)) != 0)
            return fadam_fail(FADAM_ERR_MISMATCH,
                              "%s: tensor '%.*s': param dtype %.20s in the checkpoint, %s registered", function,
                              FADAM_NAME_CLIP, name, value, fadam_param_dtype_name(tensor->param_dtype));
        snprintf(key, sizeof key, "%s%s", name, fadam_tensor_key_suffix[FADAM_TENSOR_KEY_GROUP]);
        if ((status = fadam_metadata_require(&plan->parsed, key, &value, function)) != FADAM_SUCCESS) return status;
        if (!fadam_parse_count(value, &group))
            return fadam_fail(FADAM_ERR_CORRUPT, "%s: __metadata__ \"%.*s%s\" is \"%.40s\", not a group index",
                              function, FADAM_NAME_CLIP, name, fadam_tensor_key_suffix[FADAM_TENSOR_KEY_GROUP], value);
        if (group != tensor->group)
            return fadam_fail(FADAM_ERR_MISMATCH, "%s: tensor '%.*s': group %lld in the checkpoint, %d registered",
                              function, FADAM_NAME_CLIP, name, (long long)group, tensor->group);
        if ((status = match_slice(plan, opt, t, function)) != FADAM_SUCCESS) return status;
        for (kind = 1; kind < n_states; kind++)
            if ((status = match_entry(plan, opt, t, states, kind, function)) != FADAM_SUCCESS) return status;
    }
    for (i = 0; i < plan->parsed.n_entries; i++)
        if (!plan->by_name[i]->matched)
            return fadam_fail(FADAM_ERR_MISMATCH,
                              "%s: extra entry '%.*s' in the checkpoint: no registered tensor has it", function,
                              FADAM_NAME_CLIP, plan->by_name[i]->name);
    return FADAM_SUCCESS;
}

/* Copies every entry into the optimizer's state: the only part that writes. */
static fadam_status commit_state(fadam_optimizer *opt, fadam_load_plan *plan, const fadam_source *in,
                                 const fadam_convert_buffers *buffers, cudaStream_t stream, const char *function) {
    unsigned char *staging = NULL;
    fadam_status status = FADAM_SUCCESS;
    int previous_device = 0;
    size_t i;
    if ((status = fadam_staging_begin(opt, &staging, &previous_device, function)) != FADAM_SUCCESS) return status;
    for (i = 0; i < plan->parsed.n_entries && status == FADAM_SUCCESS; i++) {
        const fadam_st_entry *entry = plan->by_name[i];
        fadam_checkpoint_state states[FADAM_CHECKPOINT_MAX_STATES];
        unsigned char *state;
        uint64_t done, bytes = entry->end - entry->begin;
        if (!fadam_checkpoint_same_layout(opt, plan, plan->entry_tensor[i])) continue; /* converted below */
        fadam_checkpoint_states(opt, plan->entry_tensor[i], states);
        state = (unsigned char *)states[plan->entry_kind[i]].data;
        if (opt->device == FADAM_DEVICE_CPU) {
            status = fadam_source_read(in, in->data_offset + entry->begin, state, (size_t)bytes, function);
            continue;
        }
        for (done = 0; done < bytes && status == FADAM_SUCCESS; done += FADAM_CHECKPOINT_PIECE_BYTES) {
            size_t piece =
                bytes - done < FADAM_CHECKPOINT_PIECE_BYTES ? (size_t)(bytes - done) : FADAM_CHECKPOINT_PIECE_BYTES;
            status = fadam_source_read(in, in->data_offset + entry->begin + done, staging, piece, function);
            if (status != FADAM_SUCCESS) break;
            /* The staging buffer is refilled only after the copy out of it finished. */
            status = FADAM_CUDA_STATUS(cudaMemcpyAsync(state + done, staging, piece, cudaMemcpyHostToDevice, stream));
            if (status == FADAM_SUCCESS) status = FADAM_CUDA_STATUS(cudaStreamSynchronize(stream));
        }
    }
    {
        int64_t t;
        for (t = 0; t < opt->n_tensors && status == FADAM_SUCCESS; t++)
            if (!fadam_checkpoint_same_layout(opt, plan, t))
                status = fadam_checkpoint_convert_tensor(opt, plan, in, t, (fadam_convert_buffers *)buffers, stream,
                                                         function);
    }
    if (status == FADAM_SUCCESS && opt->fused_state) {
        /* The counters, or (from a checkpoint without them) just the step they count from. */
        fadam_step_counters counters = plan->values.fused;
        void *target =
            plan->values.has_fused ? (void *)&opt->fused_state->counters : (void *)&opt->fused_state->counters.step;
        size_t bytes = plan->values.has_fused ? sizeof counters : sizeof(int64_t);
        const void *host = plan->values.has_fused ? (const void *)&counters : (const void *)&plan->values.step;
        if (opt->device == FADAM_DEVICE_CPU) {
            memcpy(target, host, bytes);
        } else {
            memcpy(staging, host, bytes);
            status = FADAM_CUDA_STATUS(cudaMemcpyAsync(target, staging, bytes, cudaMemcpyHostToDevice, stream));
            if (status == FADAM_SUCCESS) status = FADAM_CUDA_STATUS(cudaStreamSynchronize(stream));
        }
    }
    fadam_staging_end(opt, staging, previous_device);
    if (status != FADAM_SUCCESS) {
        char message[512];
        snprintf(message, sizeof message, "%s", fadam_last_error_message());
        return fadam_fail(status, "%s: state partly loaded, load again: %s", function, message);
    }
    return FADAM_SUCCESS;
}

static fadam_status load_checkpoint(fadam_optimizer *opt, fadam_source *in, fadam_stream stream, const char *function) {
    char *header_copy = NULL;
    fadam_load_plan plan;
    fadam_convert_buffers buffers;
    fadam_status status = fadam_load_plan_read(opt, in, &plan, &header_copy, function);
    memset(&buffers, 0, sizeof buffers);
    if (status == FADAM_SUCCESS) status = match_tensors(&plan, opt, function);
    if (status == FADAM_SUCCESS) status = fadam_load_plan_verify(&plan, in, opt, function);
    if (status == FADAM_SUCCESS) status = fadam_convert_buffers_alloc(opt, &plan, &buffers, function);
    /* Everything checked: from here on the optimizer changes. */
    if (status == FADAM_SUCCESS) status = commit_state(opt, &plan, in, &buffers, (cudaStream_t)stream, function);
    if (status == FADAM_SUCCESS) fadam_checkpoint_apply_values(opt, &plan.values);
    fadam_convert_buffers_free(&buffers);
    fadam_load_plan_free(&plan);
    free(header_copy);
    return status;
}

static fadam_status load_from_bytes(fadam_optimizer *opt, const void *buffer, size_t size, fadam_stream stream) {
    fadam_source in;
    fadam_status status;
    fadam_clear_error();
    FADAM_REQUIRE_NOT_NULL(opt, "fadam_load_bytes");
    FADAM_REQUIRE_NOT_NULL(buffer, "fadam_load_bytes");
    if ((status = fadam_checkpoint_require_finalized(opt, "fadam_load_bytes")) != FADAM_SUCCESS) return status;
    memset(&in, 0, sizeof in);
    in.memory = (const unsigned char *)buffer;
    in.fd = -1;
    in.path = "(buffer)";
    in.size = size;
    return load_checkpoint(opt, &in, stream, "fadam_load_bytes");
}

static fadam_status load_from_file(fadam_optimizer *opt, const char *path, fadam_stream stream) {
    const char *function = "fadam_load";
    struct stat file_status;
    fadam_source in;
    fadam_status status;
    fadam_clear_error();
    FADAM_REQUIRE_NOT_NULL(opt, "fadam_load");
    FADAM_REQUIRE_NOT_NULL(path, "fadam_load");
    if ((status = fadam_checkpoint_require_finalized(opt, function)) != FADAM_SUCCESS) return status;
    memset(&in, 0, sizeof in);
    in.path = path;
    in.fd = open(path, O_RDONLY | O_CLOEXEC);
    if (in.fd < 0) return fadam_io_fail(function, "opening", path);
    if (fstat(in.fd, &file_status) != 0) {
        status = fadam_io_fail(function, "fstat of", path);
        close(in.fd);
        return status;
    }
    if (!S_ISREG(file_status.st_mode)) {
        close(in.fd);
        return fadam_fail(FADAM_ERR_IO, "%s: '%.300s' is not a regular file", function, path);
    }
    in.size = (uint64_t)file_status.st_size;
    /* No piece is longer than the file: a small checkpoint needs no 8 MB. */
    /* Two halves: the checksum reads one piece while it hashes the other (checkpoint_io.c). */
    in.bounce = (unsigned char *)malloc(2 * fadam_source_bounce_half(&in));
    if (!in.bounce) {
        close(in.fd);
        return fadam_fail(FADAM_ERR_OUT_OF_MEMORY, "%s: no host memory for reading", function);
    }
    status = load_checkpoint(opt, &in, stream, function);
    free(in.bounce);
    close(in.fd);
    return status;
}

/* The public entry points: each an NVTX range around the work. */
fadam_status fadam_save(const fadam_optimizer *opt, const char *path, fadam_stream stream) {
    fadam_status status;
    FADAM_RANGE_PUSH("save");
    status = save_to_file(opt, path, stream);
    FADAM_RANGE_POP();
    return status;
}

fadam_status fadam_save_bytes(const fadam_optimizer *opt, size_t *size_out, void *buffer, size_t capacity,
                              fadam_stream stream) {
    fadam_status status;
    FADAM_RANGE_PUSH("save");
    status = save_to_bytes(opt, size_out, buffer, capacity, stream);
    FADAM_RANGE_POP();
    return status;
}

fadam_status fadam_load(fadam_optimizer *opt, const char *path, fadam_stream stream) {
    fadam_status status;
    FADAM_RANGE_PUSH("load");
    status = load_from_file(opt, path, stream);
    FADAM_RANGE_POP();
    return status;
}

fadam_status fadam_load_bytes(fadam_optimizer *opt, const void *buffer, size_t size, fadam_stream stream) {
    fadam_status status;
    FADAM_RANGE_PUSH("load");
    status = load_from_bytes(opt, buffer, size, stream);
    FADAM_RANGE_POP();
    return status;
}
