/* checkpoint_shards.c - fadam_load_shards: N ranks' files, each read whole and checked alone, then
 * reassembled for this rank's slices (the files' slices must tile every tensor exactly). */
#define _POSIX_C_SOURCE 200809L

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cuda_runtime.h>

#include "checkpoint_internal.h"
#include "number_text.h"
#include "nvtx_ranges.h"

typedef struct shard_file {
    fadam_source in;
    unsigned char *data; /* the whole file */
    fadam_load_plan plan;
    char *header_copy;
} shard_file;

typedef struct shard_piece {
    int64_t offset, numel;
} shard_piece;

static int compare_pieces(const void *a, const void *b) {
    const shard_piece *x = (const shard_piece *)a, *y = (const shard_piece *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

static void free_shard_file(shard_file *f) {
    fadam_load_plan_free(&f->plan);
    free(f->header_copy);
    free(f->data);
}

/* Reads one rank's file whole and checks it alone: everything fadam_load checks except the match with
 * the registration, the checksum included; then its shard.rank and shard.count (a file without them
 * is the one shard of one rank). */
static fadam_status read_shard_file(const fadam_optimizer *opt, const char *path, shard_file *f, const char *function) {
    struct stat file_status;
    fadam_source disk;
    fadam_status status;
    memset(f, 0, sizeof *f);
    memset(&disk, 0, sizeof disk);
    if (!path) return fadam_fail(FADAM_ERR_NULL_POINTER, "%s: a path is NULL", function);
    disk.path = path;
    disk.fd = open(path, O_RDONLY | O_CLOEXEC);
    if (disk.fd < 0) return fadam_io_fail(function, "opening", path);
    if (fstat(disk.fd, &file_status) != 0 || !S_ISREG(file_status.st_mode) ||
        (uint64_t)file_status.st_size > (uint64_t)SIZE_MAX - 1) {
        close(disk.fd);
        return fadam_fail(FADAM_ERR_IO, "%s: '%.300s' is not a regular file that fits in memory", function, path);
    }
    disk.size = (uint64_t)file_status.st_size;
    f->data = (unsigned char *)malloc((size_t)disk.size + 1);
    if (!f->data) {
        close(disk.fd);
        return fadam_fail(FADAM_ERR_OUT_OF_MEMORY, "%s: no host memory to read '%.300s'", function, path);
    }
    status = fadam_source_read(&disk, 0, f->data, (size_t)disk.size, function);
    close(disk.fd);
    if (status != FADAM_SUCCESS) return status;
    f->in.memory = f->data;
    f->in.fd = -1;
    f->in.path = path;
    f->in.size = disk.size;
    if ((status = fadam_load_plan_read(opt, &f->in, &f->plan, &f->header_copy, function)) != FADAM_SUCCESS ||
        (status = fadam_load_plan_verify(&f->plan, &f->in, opt, function)) != FADAM_SUCCESS)
        return status;
    return fadam_metadata_read_shard(&f->plan.parsed, path, &f->plan.values, function);
}

/* Reassembling slices works element by element: a layout whose elements stand alone (fp32, bf16
 * moments, remainders) loads into the same layout. 8-bit blocks depend on the slicing, and a change
 * of layout would need the conversion fadam_load does: both refused. */
static fadam_status check_shard_layouts(const fadam_optimizer *opt, const shard_file *f, const char *function) {
    int g;
    for (g = 0; g < opt->n_groups; g++) {
        const fadam_state_layout *file = &f->plan.values.layouts[g], *own = &opt->layouts[g];
        if (file->master != own->master || file->moments != own->moments)
            return fadam_fail(FADAM_ERR_UNSUPPORTED_DTYPE,
                              "%s: '%.300s': group %d's state layout (master %s, moments %s) is not the optimizer's "
                              "(master %s, moments %s); fadam_load_shards does not convert layouts (fadam_load does, "
                              "for an unsharded checkpoint or the same slicing)",
                              function, f->in.path, g, file->master ? "remainder" : "fp32",
                              fadam_moment_format_name(file->moments), own->master ? "remainder" : "fp32",
                              fadam_moment_format_name(own->moments));
        if (own->moments == FADAM_MOMENT_INT8)
            return fadam_fail(FADAM_ERR_UNSUPPORTED_DTYPE,
                              "%s: group %d keeps 8-bit moments, whose blocks of %d elements depend on the slicing: "
                              "fadam_load_shards cannot reassemble them (fadam_load takes back the same slicing)",
                              function, g, FADAM_MOMENT_BLOCK);
    }
    return FADAM_SUCCESS;
}

/* Every state of registered tensor t from every file holding a slice of it, into `host` (one buffer
 * of its numel elements per state). The files' slices must tile the full tensor exactly. */
static fadam_status gather_tensor(const fadam_optimizer *opt, int64_t t, const shard_file *files, int n_files,
                                  shard_piece *pieces, unsigned char *const host[FADAM_CHECKPOINT_MAX_STATES],
                                  const char *function) {
    const fadam_tensor *tensor = &opt->tensors[t];
    fadam_checkpoint_state states[FADAM_CHECKPOINT_MAX_STATES];
    int n_states = fadam_checkpoint_states(opt, t, states);
    const char *name = opt->names[t];
    char key[FADAM_MAX_NAME_LENGTH + 32];
    int64_t want_offset, want_full, end = 0, group;
    int i, kind, n_pieces = 0;
    fadam_status status;
    fadam_tensor_shard_of(opt, t, &want_offset, &want_full);
    for (i = 0; i < n_files; i++) {
        const fadam_load_plan *plan = &files[i].plan;
        const char *value;
        int64_t offset, full_numel, numel, lo, hi;
        size_t index;
        fadam_st_entry *entry;
        snprintf(key, sizeof key, "%s%s", name, states[0].suffix);
        if (!(entry = fadam_safetensors_find(plan->by_name, plan->parsed.n_entries, key, &index))) continue;
        numel = (int64_t)entry->numel;
        if (entry->shape_overflows || entry->numel > (uint64_t)INT64_MAX)
            return fadam_fail(FADAM_ERR_CORRUPT, "%s: '%.300s': tensor '%.*s': shape out of range", function,
                              files[i].in.path, FADAM_NAME_CLIP, name);
        if ((status = fadam_checkpoint_file_slice(&plan->parsed, name, numel, &offset, &full_numel, function)) !=
            FADAM_SUCCESS)
            return status;
        if (full_numel != want_full)
            return fadam_fail(FADAM_ERR_MISMATCH,
                              "%s: '%.300s': tensor '%.*s' has %lld elements there, %lld registered", function,
                              files[i].in.path, FADAM_NAME_CLIP, name, (long long)full_numel, (long long)want_full);
        snprintf(key, sizeof key, "%s%s", name, fadam_tensor_key_suffix[FADAM_TENSOR_KEY_PARAM_DTYPE]);
        if ((status = fadam_metadata_require(&plan->parsed, key, &value, function)) != FADAM_SUCCESS) return status;
        if (strcmp(value, fadam_param_dtype_name(tensor->param_dtype)) != 0)
            return fadam_fail(FADAM_ERR_MISMATCH, "%s: tensor '%.*s': param dtype %.20s in '%.300s', %s registered",
                              function, FADAM_NAME_CLIP, name, value, files[i].in.path,
                              fadam_param_dtype_name(tensor->param_dtype));
        snprintf(key, sizeof key, "%s%s", name, fadam_tensor_key_suffix[FADAM_TENSOR_KEY_GROUP]);
        if ((status = fadam_metadata_require(&plan->parsed, key, &value, function)) != FADAM_SUCCESS) return status;
        if (!fadam_parse_count(value, &group) || group != tensor->group)
            return fadam_fail(FADAM_ERR_MISMATCH, "%s: tensor '%.*s': group \"%.40s\" in '%.300s', %d registered",
                              function, FADAM_NAME_CLIP, name, value, files[i].in.path, tensor->group);
        pieces[n_pieces].offset = offset;
        pieces[n_pieces++].numel = numel;
        lo = offset > want_offset ? offset : want_offset;
        hi = offset + numel < want_offset + tensor->numel ? offset + numel : want_offset + tensor->numel;
        for (kind = 0; kind < n_states; kind++) {
            size_t element = states[kind].element_bytes;
            snprintf(key, sizeof key, "%s%s", name, states[kind].suffix);
            entry = fadam_safetensors_find(plan->by_name, plan->parsed.n_entries, key, &index);
            if (!entry || strcmp(entry->dtype, states[kind].dtype) != 0 || entry->n_dims != 1 ||
                (int64_t)entry->numel != numel)
                return fadam_fail(FADAM_ERR_MISMATCH, "%s: '%.300s': tensor '%.*s' %s: missing, or not %s [%lld]",
                                  function, files[i].in.path, FADAM_NAME_CLIP, name, states[kind].suffix + 1,
                                  states[kind].dtype, (long long)numel);
            if (lo < hi)
                memcpy(host[kind] + (uint64_t)(lo - want_offset) * element,
                       files[i].data + files[i].in.data_offset + entry->begin + (uint64_t)(lo - offset) * element,
                       (size_t)(hi - lo) * element);
        }
    }
    if (n_pieces == 0)
        return fadam_fail(FADAM_ERR_MISMATCH, "%s: tensor '%.*s' is in none of the %d checkpoint(s)", function,
                          FADAM_NAME_CLIP, name, n_files);
    qsort(pieces, (size_t)n_pieces, sizeof *pieces, compare_pieces);
    for (i = 0; i < n_pieces; i++) {
        if (pieces[i].numel == 0) continue;
        if (pieces[i].offset != end) break;
        end += pieces[i].numel;
    }
    if (i < n_pieces || end != want_full)
        return fadam_fail(FADAM_ERR_MISMATCH,
                          "%s: tensor '%.*s': the checkpoints' slices do not tile its %lld elements "
                          "(a gap or an overlap at element %lld)",
                          function, FADAM_NAME_CLIP, name, (long long)want_full, (long long)end);
    return FADAM_SUCCESS;
}

/* Every file is a shard of the same save: ranks 0..n-1 once each, the same step, groups and counters. */
static fadam_status check_shard_set(const shard_file *files, int n_files, const char *function) {
    int i, j;
    for (i = 0; i < n_files; i++) {
        if (files[i].plan.values.shard_count != n_files || files[i].plan.values.shard_rank >= n_files)
            return fadam_fail(FADAM_ERR_MISMATCH, "%s: '%.300s' is shard %lld of %lld, but %d file(s) were given",
                              function, files[i].in.path, (long long)files[i].plan.values.shard_rank,
                              (long long)files[i].plan.values.shard_count, n_files);
        for (j = 0; j < i; j++)
            if (files[j].plan.values.shard_rank == files[i].plan.values.shard_rank)
                return fadam_fail(FADAM_ERR_MISMATCH, "%s: '%.300s' and '%.300s' are both shard %lld", function,
                                  files[j].in.path, files[i].in.path, (long long)files[i].plan.values.shard_rank);
        if (files[i].plan.values.step != files[0].plan.values.step ||
            files[i].plan.values.has_fused != files[0].plan.values.has_fused ||
            memcmp(files[i].plan.values.groups, files[0].plan.values.groups, sizeof files[0].plan.values.groups) != 0 ||
            (files[0].plan.values.has_fused &&
             (files[i].plan.values.fused.step != files[0].plan.values.fused.step ||
              files[i].plan.values.fused.skipped_total != files[0].plan.values.fused.skipped_total ||
              files[i].plan.values.fused.loss_scale != files[0].plan.values.fused.loss_scale ||
              files[i].plan.values.fused.good_steps != files[0].plan.values.fused.good_steps)))
            return fadam_fail(FADAM_ERR_MISMATCH,
                              "%s: '%.300s' and '%.300s' differ in step, hyperparameters or the fused "
                              "step's counters: not shards of one save",
                              function, files[0].in.path, files[i].in.path);
    }
    return FADAM_SUCCESS;
}

/* Copies the gathered state and the counters in: the only part that writes. */
static fadam_status commit_gathered(fadam_optimizer *opt, unsigned char *const *host, const fadam_load_plan *plan,
                                    fadam_stream stream, const char *function) {
    fadam_status status = FADAM_SUCCESS;
    int previous_device = 0;
    int64_t t;
    int kind;
    fadam_step_counters counters = plan->values.fused;
    void *target = NULL;
    const void *from = plan->values.has_fused ? (const void *)&counters : (const void *)&plan->values.step;
    size_t counter_bytes = plan->values.has_fused ? sizeof counters : sizeof(int64_t);
    if (opt->fused_state)
        target =
            plan->values.has_fused ? (void *)&opt->fused_state->counters : (void *)&opt->fused_state->counters.step;
    if (opt->device == FADAM_DEVICE_CUDA &&
        (status = fadam_cuda_enter_device(opt->cuda_device, &previous_device)) != FADAM_SUCCESS)
        return status;
    for (t = 0; t < opt->n_tensors && status == FADAM_SUCCESS; t++) {
        fadam_checkpoint_state states[FADAM_CHECKPOINT_MAX_STATES];
        int n_states = fadam_checkpoint_states(opt, t, states);
        for (kind = 0; kind < n_states && status == FADAM_SUCCESS; kind++) {
            size_t bytes = (size_t)states[kind].numel * states[kind].element_bytes;
            const unsigned char *from_host = host[FADAM_CHECKPOINT_MAX_STATES * t + kind];
            if (bytes == 0) continue;
            if (opt->device == FADAM_DEVICE_CPU)
                memcpy(states[kind].data, from_host, bytes);
            else
                status = FADAM_CUDA_STATUS(cudaMemcpyAsync(states[kind].data, from_host, bytes, cudaMemcpyHostToDevice,
                                                           (cudaStream_t)stream));
        }
    }
    if (status == FADAM_SUCCESS && target) {
        if (opt->device == FADAM_DEVICE_CPU)
            memcpy(target, from, counter_bytes);
        else
            status = FADAM_CUDA_STATUS(
                cudaMemcpyAsync(target, from, counter_bytes, cudaMemcpyHostToDevice, (cudaStream_t)stream));
    }
    /* The host buffers are freed after this returns. */
    if (status == FADAM_SUCCESS && opt->device == FADAM_DEVICE_CUDA)
        status = FADAM_CUDA_STATUS(cudaStreamSynchronize((cudaStream_t)stream));
    if (opt->device == FADAM_DEVICE_CUDA) fadam_cuda_leave_device(opt->cuda_device, previous_device);
    if (status != FADAM_SUCCESS) {
        char message[512];
        snprintf(message, sizeof message, "%s", fadam_last_error_message());
        return fadam_fail(status, "%s: state partly loaded, load again: %s", function, message);
    }
    fadam_checkpoint_apply_values(opt, &plan->values);
    return FADAM_SUCCESS;
}

fadam_status fadam_load_shards(fadam_optimizer *opt, const char *const *paths, int n_paths, fadam_stream stream) {
    const char *function = "fadam_load_shards";
    shard_file *files = NULL;
    shard_piece *pieces = NULL;
    unsigned char **host = NULL;
    fadam_status status;
    int64_t t;
    int i, kind, n_read = 0;
    fadam_clear_error();
    FADAM_REQUIRE_NOT_NULL(opt, "fadam_load_shards");
    FADAM_REQUIRE_NOT_NULL(paths, "fadam_load_shards");
    if ((status = fadam_checkpoint_require_finalized(opt, function)) != FADAM_SUCCESS) return status;
    if (n_paths < 1 || n_paths > 65536)
        return fadam_fail(FADAM_ERR_INVALID_VALUE, "%s: n_paths=%d must be in [1, 65536]", function, n_paths);
    FADAM_RANGE_PUSH("load_shards");
    files = (shard_file *)calloc((size_t)n_paths, sizeof *files);
    pieces = (shard_piece *)calloc((size_t)n_paths, sizeof *pieces);
    host = (unsigned char **)calloc((size_t)(opt->n_tensors > 0 ? opt->n_tensors : 1) * FADAM_CHECKPOINT_MAX_STATES,
                                    sizeof *host);
    status = files && pieces && host
                 ? FADAM_SUCCESS
                 : fadam_fail(FADAM_ERR_OUT_OF_MEMORY, "%s: no host memory for the shard list", function);
    for (i = 0; i < n_paths && status == FADAM_SUCCESS; i++, n_read++)
        status = read_shard_file(opt, paths[i], &files[i], function);
    if (status == FADAM_SUCCESS) status = check_shard_set(files, n_paths, function);
    for (i = 0; i < n_paths && status == FADAM_SUCCESS; i++) status = check_shard_layouts(opt, &files[i], function);
    for (t = 0; t < opt->n_tensors && status == FADAM_SUCCESS; t++) {
        fadam_checkpoint_state states[FADAM_CHECKPOINT_MAX_STATES];
        unsigned char **own = &host[FADAM_CHECKPOINT_MAX_STATES * t];
        int n_states = fadam_checkpoint_states(opt, t, states);
        for (kind = 0; kind < n_states; kind++) {
            own[kind] = (unsigned char *)malloc((size_t)states[kind].numel * states[kind].element_bytes + 1);
            if (!own[kind]) status = fadam_fail(FADAM_ERR_OUT_OF_MEMORY, "%s: no host memory for the state", function);
        }
        if (status == FADAM_SUCCESS) status = gather_tensor(opt, t, files, n_paths, pieces, own, function);
    }
    /* Everything read and checked: from here on the optimizer changes. */
    if (status == FADAM_SUCCESS) status = commit_gathered(opt, host, &files[0].plan, stream, function);
    if (host)
        for (t = 0; t < FADAM_CHECKPOINT_MAX_STATES * (opt->n_tensors > 0 ? opt->n_tensors : 1); t++) free(host[t]);
    free(host);
    free(pieces);
    for (i = 0; files && i < n_paths; i++) free_shard_file(&files[i]);
    free(files);
    (void)n_read;
    FADAM_RANGE_POP();
    return status;
}
