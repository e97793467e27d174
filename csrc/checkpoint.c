/* checkpoint.c - the managed optimizer's state as a safetensors file or buffer: fadam_save writes it
 * atomically (through atomic_file.c: an unnamed temporary, fsync, link/rename, fsync of the
 * directory); fadam_load checks everything
 * (header bounds, JSON, dtypes, shapes, byte ranges, names, version, checksum) before it changes
 * anything. Device state moves in bounded pieces through one pinned buffer on the caller's stream.
 *
 * Layout: u64 little-endian header length N, N bytes of JSON (space-padded so the data starts at a
 * multiple of 8), then the entries' bytes, back to back in name order. The checksum covers the
 * metadata and the data, not the JSON text, so a file re-saved by Python's safetensors still loads. */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <locale.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cuda_runtime.h>

#include "atomic_file.h"
#include "internal.h"
#include "nvtx_ranges.h"
#include "optimizer_internal.h"
#include "checksum.h"
#include "utf8.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "checkpoint.c writes the host's bytes as safetensors' little-endian data"
#endif

#define FORMAT_NAME "fusedadam.optimizer"
/* What fadam_save writes; fadam_load also reads version 1 (SHA-256 checksum). */
#define CHECKSUM_PREFIX "xxh3-128:"
#define CHECKSUM_HEX_DIGITS (2 * 16)
#define CHECKSUM_MAX_HEX_DIGITS (2 * FADAM_CHECKSUM_MAX_BYTES)
/* A JSON header longer than this is refused before it is read (safetensors' own limit). */
#define HEADER_LIMIT ((uint64_t)100 << 20)
#define MAX_DIMS 32
/* Bytes per piece when state is copied through host memory (pinned on the CUDA device). */
#define PIECE_BYTES ((size_t)8 << 20)
/* Names are clipped in messages so one message keeps its end. */
#define NAME_CLIP 120

enum { STATE_EXP_AVG = 0, STATE_EXP_AVG_SQ = 1, STATE_MASTER = 2 };
static const char *const state_suffix[3] = {".exp_avg", ".exp_avg_sq", ".master"};

static int state_count(const fadam_tensor *tensor) { return tensor->param_dtype == FADAM_FLOAT32 ? 2 : 3; }

static float *state_pointer(const fadam_tensor *tensor, int kind) {
    return kind == STATE_EXP_AVG ? tensor->exp_avg : kind == STATE_EXP_AVG_SQ ? tensor->exp_avg_sq : tensor->master;
}

static const char *param_dtype_name(fadam_dtype dtype) {
    return dtype == FADAM_FLOAT32 ? "F32" : dtype == FADAM_BFLOAT16 ? "BF16" : "F16";
}

/* safetensors' dtypes of whole bytes; any other string is an unknown dtype. */
static const struct {
    const char *name;
    unsigned bytes;
} known_dtypes[] = {{"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1}, {"F8_E8M0", 1},
                    {"I16", 2},  {"U16", 2}, {"F16", 2}, {"BF16", 2},    {"I32", 4},     {"U32", 4},
                    {"F32", 4},  {"F64", 8}, {"I64", 8}, {"U64", 8},     {"C64", 8}};
#define N_KNOWN_DTYPES ((int)(sizeof known_dtypes / sizeof known_dtypes[0]))

static int find_dtype(const char *name) {
    int i;
    for (i = 0; i < N_KNOWN_DTYPES; i++)
        if (strcmp(known_dtypes[i].name, name) == 0) return i;
    return -1;
}


static fadam_status io_fail(const char *function, const char *what, const char *path) {
    char reason[128];
    int saved = errno;
    if (strerror_r(saved, reason, sizeof reason) != 0) snprintf(reason, sizeof reason, "errno %d", saved);
    return fadam_fail(FADAM_ERR_IO, "%s: %s '%.300s' failed: %s", function, what, path, reason);
}

/* fadam_add_tensor already refuses such names; the save checks again what it writes. */
static int is_valid_utf8(const char *text) { return fadam_utf8_valid(text, NULL); }

/* ---- hyperparameter text: floats as "%.9g" (exact for every float), '.' whatever the locale ---- */

static void format_float(float value, char out[48]) {
    const char *point = localeconv()->decimal_point;
    char raw[48];
    size_t i, j, point_length = point && point[0] ? strlen(point) : 1;
    if (value != value || value - value != 0.0f) { /* NaN, inf */
        snprintf(out, 48, "%s", value != value ? "nan" : value > 0 ? "inf" : "-inf");
        return;
    }
    snprintf(raw, sizeof raw, "%.9g", (double)value);
    for (i = j = 0; raw[i] && j + 1 < 48;) {
        if (point && point[0] && strncmp(raw + i, point, point_length) == 0) {
            out[j++] = '.';
            i += point_length;
        } else {
            out[j++] = raw[i++];
        }
    }
    out[j] = '\0';
}

/* Accepts -?digits(.digits)?([eE][+-]?digits)? that is a finite float: rounding is fine, but a
 * value that overflows to Inf or a nonzero one that underflows to 0 is refused (*why says which). */
static int parse_float_why(const char *text, float *out, const char **why) {
    const char *point = localeconv()->decimal_point, *s = text;
    char localized[96], *end = NULL;
    size_t i, j;
    int nonzero_digit = 0;
    float value;
    *why = "not a finite number";
    if (strlen(text) > 64) return 0;
    if (*s == '-') s++;
    if (*s < '0' || *s > '9') return 0;
    for (; *s >= '0' && *s <= '9'; s++) nonzero_digit |= *s != '0';
    if (*s == '.') {
        s++;
        if (*s < '0' || *s > '9') return 0;
        for (; *s >= '0' && *s <= '9'; s++) nonzero_digit |= *s != '0';
    }
    if (*s == 'e' || *s == 'E') {
        s++;
        if (*s == '+' || *s == '-') s++;
        if (*s < '0' || *s > '9') return 0;
        while (*s >= '0' && *s <= '9') s++;
    }
    if (*s) return 0;
    for (i = j = 0; text[i] && j + 8 < sizeof localized; i++) {
        if (text[i] == '.' && point && point[0]) {
            size_t k;
            for (k = 0; point[k] && j + 1 < sizeof localized; k++) localized[j++] = point[k];
        } else {
            localized[j++] = text[i];
        }
    }
    localized[j] = '\0';
    value = strtof(localized, &end);
    if (!end || *end) return 0;
    if (!fadam_is_finite(value)) {
        *why = "out of the float range: it overflows to infinity";
        return 0;
    }
    /* errno is no guide: ERANGE also comes with nonzero subnormal results, which are fine. */
    if (value == 0.0f && nonzero_digit) {
        *why = "out of the float range: a nonzero number that underflows to 0";
        return 0;
    }
    *out = value;
    return 1;
}

static int parse_float(const char *text, float *out) {
    const char *why;
    return parse_float_why(text, out, &why);
}

/* parse_float, and "nan", "inf", "-inf" (the fused step's logged values). */
static int parse_any_float(const char *text, float *out) {
    if (strcmp(text, "nan") == 0) *out = __builtin_nanf("");
    else if (strcmp(text, "inf") == 0) *out = __builtin_inff();
    else if (strcmp(text, "-inf") == 0) *out = -__builtin_inff();
    else return parse_float(text, out);
    return 1;
}

/* A decimal integer in [0, INT64_MAX], digits only, no leading zeros. */
static int parse_count(const char *text, int64_t *out) {
    uint64_t value = 0;
    const char *s = text;
    if (*s < '0' || *s > '9' || (s[0] == '0' && s[1])) return 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9') return 0;
        if (value > ((uint64_t)INT64_MAX - (uint64_t)(*s - '0')) / 10) return 0;
        value = value * 10 + (uint64_t)(*s - '0');
    }
    *out = (int64_t)value;
    return 1;
}

/* ---- a growing text buffer for the header ---- */

typedef struct text_buffer {
    char *data;
    size_t length, capacity;
    int out_of_memory;
} text_buffer;

static void text_append(text_buffer *text, const char *bytes, size_t count) {
    if (text->out_of_memory) return;
    if (text->length + count + 1 > text->capacity) {
        size_t capacity = text->capacity ? text->capacity : 4096;
        char *grown;
        while (capacity < text->length + count + 1) capacity *= 2;
        grown = (char *)realloc(text->data, capacity);
        if (!grown) {
            text->out_of_memory = 1;
            return;
        }
        text->data = grown;
        text->capacity = capacity;
    }
    memcpy(text->data + text->length, bytes, count);
    text->length += count;
    text->data[text->length] = '\0';
}

static void text_append_string(text_buffer *text, const char *string) { text_append(text, string, strlen(string)); }

/* A JSON string: quotes, backslashes and control characters escaped, UTF-8 passed through. */
static void text_append_json(text_buffer *text, const char *string) {
    const unsigned char *s = (const unsigned char *)string;
    text_append(text, "\"", 1);
    for (; *s; s++) {
        char escaped[8];
        if (*s == '"' || *s == '\\') {
            escaped[0] = '\\', escaped[1] = (char)*s;
            text_append(text, escaped, 2);
        } else if (*s < 0x20) {
            snprintf(escaped, sizeof escaped, "\\u%04x", *s);
            text_append(text, escaped, 6);
        } else {
            text_append(text, (const char *)s, 1);
        }
    }
    text_append(text, "\"", 1);
}

static void digest_to_hex(const unsigned char *digest, size_t bytes, char hex[CHECKSUM_MAX_HEX_DIGITS + 1]) {
    static const char digits[] = "0123456789abcdef";
    size_t i;
    for (i = 0; i < bytes; i++) {
        hex[2 * i] = digits[digest[i] >> 4];
        hex[2 * i + 1] = digits[digest[i] & 15];
    }
    hex[2 * bytes] = '\0';
}

/* ---- save: the plan (entries in name order, metadata in key order, header text) ---- */

typedef struct save_entry {
    char *name; /* "<tensor>.<state>" */
    const fadam_tensor *tensor;
    int kind;
    uint64_t bytes;
} save_entry;

typedef struct save_plan {
    save_entry *entries;
    size_t n_entries;
    char **metadata; /* key, value, key, value, ... */
    size_t n_metadata, metadata_capacity;
    text_buffer header; /* JSON and padding */
    size_t checksum_position; /* of the checksum's hex digits inside the header */
    size_t slack; /* spaces that make the header as long as with the widest values */
    uint64_t total_bytes;
    int out_of_memory;
} save_plan;

static void free_plan(save_plan *plan) {
    size_t i;
    for (i = 0; i < plan->n_entries; i++) free(plan->entries[i].name);
    for (i = 0; i < 2 * plan->n_metadata; i++) free(plan->metadata[i]);
    free(plan->entries);
    free(plan->metadata);
    free(plan->header.data);
}

static char *concatenate(const char *a, const char *b, const char *c) {
    size_t la = strlen(a), lb = strlen(b), lc = strlen(c);
    char *joined = (char *)malloc(la + lb + lc + 1);
    if (!joined) return NULL;
    memcpy(joined, a, la);
    memcpy(joined + la, b, lb);
    memcpy(joined + la + lb, c, lc + 1);
    return joined;
}

/* Values that change between saves (step, hyperparameters, counters) are counted at their widest
 * (`width`), the difference padded with spaces, so the checkpoint's size depends only on what is
 * registered: a size query stays right however the training goes on. */
static void add_metadata(save_plan *plan, const char *key_start, const char *key_end, const char *value);

#define WIDEST_INTEGER 20
#define WIDEST_FLOAT 16
#define WIDEST_WORD 7

static void add_metadata_sized(save_plan *plan, const char *key_start, const char *key_end, const char *value,
                               size_t width) {
    if (strlen(value) < width) plan->slack += width - strlen(value);
    add_metadata(plan, key_start, key_end, value);
}

static void add_metadata(save_plan *plan, const char *key_start, const char *key_end, const char *value) {
    char *key, *copy;
    if (plan->out_of_memory) return;
    if (plan->n_metadata == plan->metadata_capacity) {
        size_t capacity = plan->metadata_capacity ? 2 * plan->metadata_capacity : 64;
        char **grown = (char **)realloc(plan->metadata, 2 * capacity * sizeof *grown);
        if (!grown) {
            plan->out_of_memory = 1;
            return;
        }
        plan->metadata = grown;
        plan->metadata_capacity = capacity;
    }
    key = concatenate(key_start, key_end, "");
    copy = concatenate(value, "", "");
    if (!key || !copy) {
        free(key);
        free(copy);
        plan->out_of_memory = 1;
        return;
    }
    plan->metadata[2 * plan->n_metadata] = key;
    plan->metadata[2 * plan->n_metadata + 1] = copy;
    plan->n_metadata++;
}

static int compare_metadata_pairs(const void *a, const void *b) {
    return strcmp(((const char *const *)a)[0], ((const char *const *)b)[0]);
}

static int compare_save_entries(const void *a, const void *b) {
    return strcmp(((const save_entry *)a)->name, ((const save_entry *)b)->name);
}

static void add_group_metadata(save_plan *plan, int group, const fadam_hparams *h) {
    char prefix[32], number[48];
    snprintf(prefix, sizeof prefix, "group.%d.", group);
    format_float(h->lr, number);
    add_metadata_sized(plan, prefix, "lr", number, WIDEST_FLOAT);
    format_float(h->beta1, number);
    add_metadata_sized(plan, prefix, "beta1", number, WIDEST_FLOAT);
    format_float(h->beta2, number);
    add_metadata_sized(plan, prefix, "beta2", number, WIDEST_FLOAT);
    format_float(h->eps, number);
    add_metadata_sized(plan, prefix, "eps", number, WIDEST_FLOAT);
    format_float(h->weight_decay, number);
    add_metadata_sized(plan, prefix, "weight_decay", number, WIDEST_FLOAT);
    add_metadata_sized(plan, prefix, "mode", h->mode == FADAM_ADAMW ? "adamw" : "adam_l2", WIDEST_WORD);
    add_metadata_sized(plan, prefix, "bias_correction", h->bias_correction ? "true" : "false", WIDEST_WORD);
    add_metadata_sized(plan, prefix, "maximize", h->maximize ? "true" : "false", WIDEST_WORD);
}

/* The fused step's counters (fused_step.c), when it is configured. */
static void add_fused_metadata(save_plan *plan, const fadam_step_counters *c) {
    char number[48];
    snprintf(number, sizeof number, "%lld", (long long)c->step);
    add_metadata_sized(plan, "fused.step", "", number, WIDEST_INTEGER);
    snprintf(number, sizeof number, "%lld", (long long)c->skipped_total);
    add_metadata_sized(plan, "fused.skipped_total", "", number, WIDEST_INTEGER);
    format_float(c->grad_norm, number);
    add_metadata_sized(plan, "fused.grad_norm", "", number, WIDEST_FLOAT);
    format_float(c->clip_coef, number);
    add_metadata_sized(plan, "fused.clip_coef", "", number, WIDEST_FLOAT);
    format_float(c->lr_scale, number);
    add_metadata_sized(plan, "fused.lr_scale", "", number, WIDEST_FLOAT);
    format_float(c->loss_scale, number);
    add_metadata_sized(plan, "fused.loss_scale", "", number, WIDEST_FLOAT);
    snprintf(number, sizeof number, "%d", (int)c->skipped);
    add_metadata_sized(plan, "fused.skipped", "", number, WIDEST_INTEGER);
    snprintf(number, sizeof number, "%d", (int)c->good_steps);
    add_metadata_sized(plan, "fused.good_steps", "", number, WIDEST_INTEGER);
    snprintf(number, sizeof number, "%lld", (long long)c->skipped_at_min_scale);
    add_metadata_sized(plan, "fused.skipped_at_min_scale", "", number, WIDEST_INTEGER);
}

/* A sharded optimizer's tensor: where its slice lies in the full tensor (fadam_add_tensor_shard). */
static void add_shard_metadata(save_plan *plan, const fadam_optimizer *opt, int64_t t) {
    char number[48];
    int64_t offset, full_numel;
    fadam_tensor_shard_of(opt, t, &offset, &full_numel);
    snprintf(number, sizeof number, "%lld", (long long)offset);
    add_metadata(plan, opt->names[t], ".offset", number);
    snprintf(number, sizeof number, "%lld", (long long)full_numel);
    add_metadata(plan, opt->names[t], ".full_numel", number);
}

/* `counters`: the fused step's, or NULL when it is not configured. */
static fadam_status build_plan(const fadam_optimizer *opt, const fadam_step_counters *counters, save_plan *plan,
                               const char *function) {
    char number[48], checksum_placeholder[sizeof CHECKSUM_PREFIX + CHECKSUM_HEX_DIGITS];
    uint64_t offset = 0;
    size_t i, n_entries = 0;
    int64_t t;
    int g, kind;
    memset(plan, 0, sizeof *plan);
    for (t = 0; t < opt->n_tensors; t++) {
        if (!is_valid_utf8(opt->names[t]))
            return fadam_fail(FADAM_ERR_INVALID_VALUE, "%s: the name of tensor %lld is not valid UTF-8, which a safetensors "
                                                       "header requires",
                              function, (long long)t);
        n_entries += (size_t)state_count(&opt->tensors[t]);
    }
    plan->entries = (save_entry *)calloc(n_entries ? n_entries : 1, sizeof *plan->entries);
    if (!plan->entries) return fadam_fail(FADAM_ERR_OUT_OF_MEMORY, "%s: no host memory for the checkpoint plan", function);
    for (t = 0; t < opt->n_tensors; t++) {
        const fadam_tensor *tensor = &opt->tensors[t];
        for (kind = 0; kind < state_count(tensor); kind++) {
            save_entry *entry = &plan->entries[plan->n_entries++];
            entry->name = concatenate(opt->names[t], state_suffix[kind], "");
            entry->tensor = tensor;
            entry->kind = kind;
            entry->bytes = (uint64_t)tensor->numel * sizeof(float);
            if (!entry->name) plan->out_of_memory = 1;
        }
        add_metadata(plan, opt->names[t], ".param_dtype", param_dtype_name(tensor->param_dtype));
        snprintf(number, sizeof number, "%d", tensor->group);
        add_metadata(plan, opt->names[t], ".group", number);
        if (opt->shard_ranks > 0) add_shard_metadata(plan, opt, t);
    }
    if (opt->shard_count > 0 && opt->shard_ranks == 0)
        return fadam_fail(FADAM_ERR_BAD_STATE, "%s: tensors were registered as shards: call fadam_set_shard_rank before "
                                               "fadam_finalize, so the checkpoint can name its shard",
                          function);
    if (opt->shard_ranks > 0) {
        snprintf(number, sizeof number, "%d", opt->shard_rank);
        add_metadata(plan, "shard.rank", "", number);
        snprintf(number, sizeof number, "%d", opt->shard_ranks);
        add_metadata(plan, "shard.count", "", number);
    }
    add_metadata(plan, "format", "", FORMAT_NAME);
    snprintf(number, sizeof number, "%d", FADAM_CHECKPOINT_FORMAT_VERSION);
    add_metadata(plan, "format_version", "", number);
    snprintf(number, sizeof number, "%lld", (long long)opt->step);
    add_metadata_sized(plan, "step", "", number, WIDEST_INTEGER);
    snprintf(number, sizeof number, "%d", opt->n_groups);
    add_metadata(plan, "n_groups", "", number);
    for (g = 0; g < opt->n_groups; g++) add_group_metadata(plan, g, &opt->groups[g]);
    if (counters) add_fused_metadata(plan, counters);
    memset(checksum_placeholder, '0', sizeof checksum_placeholder - 1);
    memcpy(checksum_placeholder, CHECKSUM_PREFIX, strlen(CHECKSUM_PREFIX));
    checksum_placeholder[sizeof checksum_placeholder - 1] = '\0';
    add_metadata(plan, "checksum", "", checksum_placeholder);
    if (plan->out_of_memory) return fadam_fail(FADAM_ERR_OUT_OF_MEMORY, "%s: no host memory for the checkpoint plan", function);

    if (plan->n_entries > 1) qsort(plan->entries, plan->n_entries, sizeof *plan->entries, compare_save_entries);
    qsort(plan->metadata, plan->n_metadata, 2 * sizeof *plan->metadata, compare_metadata_pairs);

    text_append_string(&plan->header, "{\"__metadata__\":{");
    for (i = 0; i < plan->n_metadata; i++) {
        if (i) text_append(&plan->header, ",", 1);
        text_append_json(&plan->header, plan->metadata[2 * i]);
        text_append(&plan->header, ":", 1);
        if (strcmp(plan->metadata[2 * i], "checksum") == 0)
            plan->checksum_position = plan->header.length + 1 + strlen(CHECKSUM_PREFIX);
        text_append_json(&plan->header, plan->metadata[2 * i + 1]);
    }
    text_append(&plan->header, "}", 1);
    for (i = 0; i < plan->n_entries; i++) {
        const save_entry *entry = &plan->entries[i];
        char fields[160];
        text_append(&plan->header, ",", 1);
        text_append_json(&plan->header, entry->name);
        snprintf(fields, sizeof fields, ":{\"dtype\":\"F32\",\"shape\":[%lld],\"data_offsets\":[%llu,%llu]}",
                 (long long)entry->tensor->numel, (unsigned long long)offset,
                 (unsigned long long)(offset + entry->bytes));
        text_append_string(&plan->header, fields);
        offset += entry->bytes;
    }
    text_append(&plan->header, "}", 1);
    /* Spaces (as safetensors pads): the slack, then up to a multiple of 8 for the data. A failed
     * append adds nothing, so the loops stop at the first failure instead of spinning on it. */
    for (i = 0; i < plan->slack && !plan->header.out_of_memory; i++) text_append(&plan->header, " ", 1);
    while ((8 + plan->header.length) % 8 && !plan->header.out_of_memory) text_append(&plan->header, " ", 1);
    if (plan->header.out_of_memory)
        return fadam_fail(FADAM_ERR_OUT_OF_MEMORY, "%s: no host memory for the checkpoint header", function);
    if (plan->header.length > HEADER_LIMIT)
        return fadam_fail(FADAM_ERR_INVALID_VALUE, "%s: the checkpoint header would be %zu bytes, over the %llu-byte limit",
                          function, plan->header.length, (unsigned long long)HEADER_LIMIT);
    plan->total_bytes = 8 + (uint64_t)plan->header.length + offset;
    return FADAM_SUCCESS;
}

/* ---- save: writing to a file descriptor or to memory ---- */

typedef struct sink {
    unsigned char *memory; /* or NULL: the file descriptor */
    int fd;
    const char *path;
    uint64_t position;
} sink;

static fadam_status sink_write(sink *out, const void *bytes, size_t count, const char *function) {
    const char *source = (const char *)bytes;
    if (out->memory) {
        memcpy(out->memory + out->position, bytes, count);
        out->position += count;
        return FADAM_SUCCESS;
    }
    while (count) {
        ssize_t written = write(out->fd, source, count > ((size_t)1 << 30) ? (size_t)1 << 30 : count);
        if (written < 0) {
            if (errno == EINTR) continue;
            return io_fail(function, "writing", out->path);
        }
        source += written, count -= (size_t)written, out->position += (uint64_t)written;
    }
    return FADAM_SUCCESS;
}

static fadam_status sink_patch(sink *out, uint64_t position, const void *bytes, size_t count, const char *function) {
    const char *source = (const char *)bytes;
    if (out->memory) {
        memcpy(out->memory + position, bytes, count);
        return FADAM_SUCCESS;
    }
    while (count) {
        ssize_t written = pwrite(out->fd, source, count, (off_t)position);
        if (written < 0) {
            if (errno == EINTR) continue;
            return io_fail(function, "writing", out->path);
        }
        source += written, count -= (size_t)written, position += (uint64_t)written;
    }
    return FADAM_SUCCESS;
}

/* Writes one entry's data, hashing it on the way; device data comes through `staging` in pieces. */
/* On the CUDA device: enters the optimizer's device and allocates the pinned buffer through which
 * state moves in PIECE_BYTES pieces. Nothing to do on the CPU. */
static fadam_status begin_staging(const fadam_optimizer *opt, unsigned char **staging, int *previous_device,
                                  const char *function) {
    fadam_status status;
    *staging = NULL;
    if (opt->device != FADAM_DEVICE_CUDA) return FADAM_SUCCESS;
    if ((status = fadam_cuda_enter_device(opt->cuda_device, previous_device)) != FADAM_SUCCESS) return status;
    if (cudaHostAlloc((void **)staging, PIECE_BYTES, cudaHostAllocDefault) != cudaSuccess) {
        (void)cudaGetLastError();
        fadam_cuda_leave_device(opt->cuda_device, *previous_device);
        return fadam_fail(FADAM_ERR_OUT_OF_MEMORY, "%s: cannot allocate %zu bytes of pinned host memory", function,
                          PIECE_BYTES);
    }
    return FADAM_SUCCESS;
}

static void end_staging(const fadam_optimizer *opt, unsigned char *staging, int previous_device) {
    if (opt->device != FADAM_DEVICE_CUDA) return;
    (void)cudaFreeHost(staging);
    fadam_cuda_leave_device(opt->cuda_device, previous_device);
}

/* One step of write_pipelined: hash the next piece (block 0) while writing the current one (block 1).
 * The write only records errno: the caller, not a pool thread, reports it. */
typedef struct save_step {
    const unsigned char *hash_data;
    size_t hash_bytes;
    unsigned char digest[16];
    int fd;
    const unsigned char *write_from;
    size_t write_bytes, written;
    int write_errno;
} save_step;

static void save_block(void *context, int64_t block) {
    save_step *step = (save_step *)context;
    if (block == 0) {
        if (step->hash_bytes) fadam_checksum_piece(step->hash_data, step->hash_bytes, step->digest);
        return;
    }
    while (step->written < step->write_bytes) {
        size_t left = step->write_bytes - step->written;
        ssize_t n = write(step->fd, step->write_from + step->written, left > ((size_t)1 << 30) ? (size_t)1 << 30 : left);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            step->write_errno = errno ? errno : EIO;
            return;
        }
        step->written += (size_t)n;
    }
}

/* Version 2, host state to a file: writing piece k while the pool hashes piece k+1 (pool NULL: one
 * after the other); the digests go in in order. */
static fadam_status write_pipelined(const unsigned char *state, uint64_t bytes, sink *out, fadam_checksum *hash,
                                    fadam_cpu_pool *pool, const char *function) {
    uint64_t done = 0;
    unsigned char digest[16];
    size_t first = bytes < FADAM_CHECKSUM_PIECE_BYTES ? (size_t)bytes : FADAM_CHECKSUM_PIECE_BYTES;
    if (bytes == 0) return FADAM_SUCCESS;
    fadam_checksum_piece(state, first, digest);
    while (done < bytes) {
        size_t piece = bytes - done < FADAM_CHECKSUM_PIECE_BYTES ? (size_t)(bytes - done) : FADAM_CHECKSUM_PIECE_BYTES;
        uint64_t next = done + piece;
        save_step step;
        memset(&step, 0, sizeof step);
        fadam_checksum_add_piece(hash, digest);
        step.hash_data = state + next;
        step.hash_bytes = bytes - next < FADAM_CHECKSUM_PIECE_BYTES ? (size_t)(bytes - next) : FADAM_CHECKSUM_PIECE_BYTES;
        step.fd = out->fd;
        step.write_from = state + done;
        step.write_bytes = piece;
        fadam_cpu_pool_run(pool, 2, save_block, &step);
        out->position += step.written;
        if (step.write_errno) {
            errno = step.write_errno;
            return io_fail(function, "writing", out->path);
        }
        memcpy(digest, step.digest, sizeof digest);
        done = next;
    }
    return FADAM_SUCCESS;
}

static fadam_status write_entry(const fadam_optimizer *opt, const save_entry *entry, sink *out,
                                fadam_checksum *hash, fadam_cpu_pool *pool, unsigned char *staging,
                                cudaStream_t stream, const char *function) {
    const unsigned char *state = (const unsigned char *)state_pointer(entry->tensor, entry->kind);
    /* Host state goes as one checksum piece per pool thread at a time, hashed at once (then written
     * while still in cache); device state as one staging buffer, a piece too (PIECE_BYTES). */
    size_t span = opt->device == FADAM_DEVICE_CUDA ? PIECE_BYTES
                                                   : (size_t)fadam_cpu_pool_size(pool) * FADAM_CHECKSUM_PIECE_BYTES;
    uint64_t done;
    fadam_status status;
    fadam_checksum_entry(hash, entry->name, entry->bytes);
    if (opt->device != FADAM_DEVICE_CUDA && !out->memory && hash->version == 2)
        return write_pipelined(state, entry->bytes, out, hash, pool, function);
    for (done = 0; done < entry->bytes;) {
        size_t piece = entry->bytes - done < span ? (size_t)(entry->bytes - done) : span;
        const unsigned char *host = state + done;
        if (opt->device == FADAM_DEVICE_CUDA) {
            FADAM_CUDA_CHECK(cudaMemcpyAsync(staging, state + done, piece, cudaMemcpyDeviceToHost, stream));
            FADAM_CUDA_CHECK(cudaStreamSynchronize(stream));
            host = staging;
        }
        fadam_checksum_data(hash, pool, host, piece);
        if ((status = sink_write(out, host, piece, function)) != FADAM_SUCCESS) return status;
        done += piece;
    }
    return FADAM_SUCCESS;
}

static fadam_status write_checkpoint(const fadam_optimizer *opt, const save_plan *plan, sink *out, fadam_stream stream,
                                     const char *function) {
    unsigned char prefix[8], digest[FADAM_CHECKSUM_MAX_BYTES], *staging = NULL;
    char hex[CHECKSUM_MAX_HEX_DIGITS + 1];
    fadam_checksum hash;
    fadam_cpu_pool *pool = NULL;
    fadam_status status = FADAM_SUCCESS;
    int previous_device = 0, i;
    size_t e;
    for (i = 0; i < 8; i++) prefix[i] = (unsigned char)((uint64_t)plan->header.length >> (8 * i));
    if ((status = sink_write(out, prefix, 8, function)) != FADAM_SUCCESS) return status;
    if ((status = sink_write(out, plan->header.data, plan->header.length, function)) != FADAM_SUCCESS) return status;
    fadam_checksum_init(&hash, FADAM_CHECKPOINT_FORMAT_VERSION);
    fadam_checksum_metadata(&hash, plan->metadata, plan->n_metadata);
    if ((status = begin_staging(opt, &staging, &previous_device, function)) != FADAM_SUCCESS) return status;
    /* The CPU device's threads hash pieces at once; a step running on them now leaves us the caller's. */
    if (opt->device == FADAM_DEVICE_CPU && opt->cpu_pool && fadam_cpu_pool_acquire(opt->cpu_pool)) pool = opt->cpu_pool;
    for (e = 0; e < plan->n_entries && status == FADAM_SUCCESS; e++)
        status = write_entry(opt, &plan->entries[e], out, &hash, pool, staging, (cudaStream_t)stream, function);
    if (pool) fadam_cpu_pool_release(pool);
    end_staging(opt, staging, previous_device);
    if (status != FADAM_SUCCESS) return status;
    fadam_checksum_final(&hash, digest);
    digest_to_hex(digest, fadam_checksum_bytes(FADAM_CHECKPOINT_FORMAT_VERSION), hex);
    return sink_patch(out, 8 + (uint64_t)plan->checksum_position, hex, CHECKSUM_HEX_DIGITS, function);
}

static fadam_status require_finalized_for(const fadam_optimizer *opt, const char *function) {
    if (!opt->finalized)
        return fadam_fail(FADAM_ERR_BAD_STATE, "%s: the optimizer is not finalized; call fadam_finalize first", function);
    return fadam_require_checkpoint_rules(opt, function);
}

/* The fused step's counters as they are after the work queued on `stream`. */
static fadam_status read_fused_counters(const fadam_optimizer *opt, fadam_step_counters *out, fadam_stream stream) {
    fadam_status status = FADAM_SUCCESS;
    int previous_device = 0;
    cudaError_t error;
    if (opt->device == FADAM_DEVICE_CPU) {
        *out = opt->fused_state->counters;
        return FADAM_SUCCESS;
    }
    if ((status = fadam_cuda_enter_device(opt->cuda_device, &previous_device)) != FADAM_SUCCESS) return status;
    error = cudaMemcpyAsync(out, &opt->fused_state->counters, sizeof *out, cudaMemcpyDeviceToHost, (cudaStream_t)stream);
    if (error == cudaSuccess) error = cudaStreamSynchronize((cudaStream_t)stream);
    if (error != cudaSuccess) status = fadam_cuda_fail(error, "cudaMemcpyAsync(step counters)", __FILE__, __LINE__);
    fadam_cuda_leave_device(opt->cuda_device, previous_device);
    return status;
}

static fadam_status save_to_bytes(const fadam_optimizer *opt, size_t *size_out, void *buffer, size_t capacity,
                                  fadam_stream stream) {
    const char *function = "fadam_save_bytes";
    fadam_step_counters counters;
    save_plan plan;
    sink out;
    fadam_status status;
    fadam_clear_error();
    FADAM_REQUIRE_NOT_NULL(opt, "fadam_save_bytes");
    FADAM_REQUIRE_NOT_NULL(size_out, "fadam_save_bytes");
    if ((status = require_finalized_for(opt, function)) != FADAM_SUCCESS) return status;
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
    sink out;
    fadam_status status;
    fadam_clear_error();
    FADAM_REQUIRE_NOT_NULL(opt, "fadam_save");
    FADAM_REQUIRE_NOT_NULL(path, "fadam_save");
    if ((status = require_finalized_for(opt, function)) != FADAM_SUCCESS) return status;
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
    if (status == FADAM_SUCCESS) status = fadam_atomic_file_commit(&file, function);
    else fadam_atomic_file_discard(&file);
    free_plan(&plan);
    return status;
}

/* ---- load: the header's JSON, parsed against the schema safetensors uses ----
 *
 * root:  { "__metadata__": { string: string, ... }, name: entry, ... }
 * entry: { "dtype": string, "shape": [int, ...], "data_offsets": [int, int] }
 * Strings are decoded into one arena (a decoded string is never longer than its JSON text), must be
 * UTF-8 and may not hold NUL. Integers are 0 to 2^63-1, no sign, fraction or exponent. */

typedef struct load_entry {
    const char *name;
    const char *dtype;
    const char *shape_text; /* the JSON array, for messages */
    int shape_length;
    int n_dims;
    uint64_t numel;
    int shape_overflows;
    uint64_t begin, end;
    int matched;
} load_entry;

typedef struct parsed_header {
    load_entry *entries;
    size_t n_entries, entries_capacity;
    char **metadata; /* key, value, ... */
    size_t n_metadata, metadata_capacity;
    int has_metadata;
    char *arena;
    size_t arena_used;
} parsed_header;

typedef struct json_parser {
    const char *text;
    size_t length, position;
    parsed_header *out;
    const char *function;
} json_parser;

static fadam_status json_error(const json_parser *p, const char *what) {
    return fadam_fail(FADAM_ERR_CORRUPT, "%s: malformed header: %s at byte %zu of the JSON", p->function, what,
                      p->position);
}

static void skip_space(json_parser *p) {
    while (p->position < p->length) {
        char c = p->text[p->position];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        p->position++;
    }
}

static fadam_status expect_char(json_parser *p, char c, const char *what) {
    skip_space(p);
    if (p->position >= p->length || p->text[p->position] != c) return json_error(p, what);
    p->position++;
    return FADAM_SUCCESS;
}

/* Peeks at the next character after spaces; 0 at the end. */
static char peek_char(json_parser *p) {
    skip_space(p);
    return p->position < p->length ? p->text[p->position] : '\0';
}

static int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static int read_hex4(const json_parser *p, size_t at, unsigned *out) {
    unsigned value = 0;
    int i;
    if (at + 4 > p->length) return 0;
    for (i = 0; i < 4; i++) {
        int digit = hex_value(p->text[at + (size_t)i]);
        if (digit < 0) return 0;
        value = value * 16 + (unsigned)digit;
    }
    *out = value;
    return 1;
}

static fadam_status parse_string(json_parser *p, const char **out) {
    char *decoded;
    skip_space(p);
    if (p->position >= p->length || p->text[p->position] != '"') return json_error(p, "expected a string");
    p->position++;
    decoded = p->out->arena + p->out->arena_used;
    for (;;) {
        unsigned char c;
        if (p->position >= p->length) return json_error(p, "unterminated string");
        c = (unsigned char)p->text[p->position];
        if (c == '"') {
            p->position++;
            break;
        }
        if (c < 0x20) return json_error(p, "control character inside a string");
        if (c == '\\') {
            char escape;
            unsigned code = 0;
            if (p->position + 1 >= p->length) return json_error(p, "unterminated string");
            escape = p->text[p->position + 1];
            if (escape == 'u') {
                if (!read_hex4(p, p->position + 2, &code)) return json_error(p, "bad \\u escape");
                p->position += 6;
                if (code >= 0xD800 && code <= 0xDBFF) {
                    unsigned low = 0;
                    char what[112];
                    if (p->position + 1 >= p->length || p->text[p->position] != '\\' || p->text[p->position + 1] != 'u' ||
                        !read_hex4(p, p->position + 2, &low)) {
                        snprintf(what, sizeof what, "unpaired surrogate: high surrogate \\u%04x not followed by a \\u escape",
                                 code);
                        return json_error(p, what);
                    }
                    if (low < 0xDC00 || low > 0xDFFF) {
                        snprintf(what, sizeof what,
                                 "unpaired surrogate: high surrogate \\u%04x followed by \\u%04x, not by a low surrogate",
                                 code, low);
                        return json_error(p, what);
                    }
                    p->position += 6;
                    code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
                } else if (code >= 0xDC00 && code <= 0xDFFF) {
                    char what[96];
                    snprintf(what, sizeof what, "unpaired surrogate: low surrogate \\u%04x without a high one before it",
                             code);
                    return json_error(p, what);
                }
                if (code == 0) return json_error(p, "NUL (\\u0000) inside a string");
                /* UTF-8 of code; at most 4 bytes for the 6 or 12 bytes of escape read. */
                if (code < 0x80) {
                    decoded[0] = (char)code;
                    decoded += 1;
                } else if (code < 0x800) {
                    decoded[0] = (char)(0xC0 | (code >> 6));
                    decoded[1] = (char)(0x80 | (code & 0x3F));
                    decoded += 2;
                } else if (code < 0x10000) {
                    decoded[0] = (char)(0xE0 | (code >> 12));
                    decoded[1] = (char)(0x80 | ((code >> 6) & 0x3F));
                    decoded[2] = (char)(0x80 | (code & 0x3F));
                    decoded += 3;
                } else {
                    decoded[0] = (char)(0xF0 | (code >> 18));
                    decoded[1] = (char)(0x80 | ((code >> 12) & 0x3F));
                    decoded[2] = (char)(0x80 | ((code >> 6) & 0x3F));
                    decoded[3] = (char)(0x80 | (code & 0x3F));
                    decoded += 4;
                }
                continue;
            }
            switch (escape) {
            case '"': *decoded++ = '"'; break;
            case '\\': *decoded++ = '\\'; break;
            case '/': *decoded++ = '/'; break;
            case 'b': *decoded++ = '\b'; break;
            case 'f': *decoded++ = '\f'; break;
            case 'n': *decoded++ = '\n'; break;
            case 'r': *decoded++ = '\r'; break;
            case 't': *decoded++ = '\t'; break;
            default: p->position++; return json_error(p, "unknown escape in a string");
            }
            p->position += 2;
        } else {
            size_t sequence =
                fadam_utf8_sequence_length((const unsigned char *)p->text + p->position, p->length - p->position);
            if (sequence == 0) return json_error(p, "invalid UTF-8 in a string");
            memcpy(decoded, p->text + p->position, sequence);
            decoded += sequence;
            p->position += sequence;
        }
    }
    *decoded++ = '\0';
    *out = p->out->arena + p->out->arena_used;
    p->out->arena_used = (size_t)(decoded - p->out->arena);
    return FADAM_SUCCESS;
}

static fadam_status parse_integer(json_parser *p, uint64_t *out) {
    uint64_t value = 0;
    size_t start;
    skip_space(p);
    start = p->position;
    if (p->position < p->length && p->text[p->position] == '-') return json_error(p, "negative number");
    if (p->position >= p->length || p->text[p->position] < '0' || p->text[p->position] > '9')
        return json_error(p, "expected an integer");
    while (p->position < p->length && p->text[p->position] >= '0' && p->text[p->position] <= '9') {
        unsigned digit = (unsigned)(p->text[p->position] - '0');
        if (p->position > start && p->text[start] == '0') return json_error(p, "number with a leading zero");
        if (value > ((uint64_t)INT64_MAX - digit) / 10) return json_error(p, "number larger than 2^63-1");
        value = value * 10 + digit;
        p->position++;
    }
    if (p->position < p->length &&
        (p->text[p->position] == '.' || p->text[p->position] == 'e' || p->text[p->position] == 'E'))
        return json_error(p, "number is not an integer");
    *out = value;
    return FADAM_SUCCESS;
}

static fadam_status parse_metadata(json_parser *p) {
    parsed_header *out = p->out;
    fadam_status status;
    if ((status = expect_char(p, '{', "__metadata__ is not an object")) != FADAM_SUCCESS) return status;
    if (peek_char(p) == '}') {
        p->position++;
        return FADAM_SUCCESS;
    }
    for (;;) {
        const char *key, *value;
        if ((status = parse_string(p, &key)) != FADAM_SUCCESS) return status;
        if ((status = expect_char(p, ':', "expected ':' after a key")) != FADAM_SUCCESS) return status;
        if (peek_char(p) != '"') return json_error(p, "a __metadata__ value is not a string");
        if ((status = parse_string(p, &value)) != FADAM_SUCCESS) return status;
        if (out->n_metadata == out->metadata_capacity) {
            size_t capacity = out->metadata_capacity ? 2 * out->metadata_capacity : 64;
            char **grown = (char **)realloc(out->metadata, 2 * capacity * sizeof *grown);
            if (!grown) return fadam_fail(FADAM_ERR_OUT_OF_MEMORY, "%s: no host memory for the header", p->function);
            out->metadata = grown;
            out->metadata_capacity = capacity;
        }
        out->metadata[2 * out->n_metadata] = (char *)key;
        out->metadata[2 * out->n_metadata + 1] = (char *)value;
        out->n_metadata++;
        if (peek_char(p) == ',') {
            p->position++;
            continue;
        }
        return expect_char(p, '}', "expected ',' or '}' in __metadata__");
    }
}

static fadam_status parse_entry(json_parser *p, load_entry *entry) {
    int seen_dtype = 0, seen_shape = 0, seen_offsets = 0;
    fadam_status status;
    if ((status = expect_char(p, '{', "a tensor entry is not an object")) != FADAM_SUCCESS) return status;
    if (peek_char(p) == '}') return json_error(p, "empty tensor entry");
    for (;;) {
        const char *key;
        if ((status = parse_string(p, &key)) != FADAM_SUCCESS) return status;
        if ((status = expect_char(p, ':', "expected ':' after a key")) != FADAM_SUCCESS) return status;
        if (strcmp(key, "dtype") == 0) {
            if (seen_dtype++) return json_error(p, "duplicate key \"dtype\"");
            if ((status = parse_string(p, &entry->dtype)) != FADAM_SUCCESS) return status;
        } else if (strcmp(key, "shape") == 0) {
            size_t start;
            int dims = 0;
            if (seen_shape++) return json_error(p, "duplicate key \"shape\"");
            if ((status = expect_char(p, '[', "shape is not an array")) != FADAM_SUCCESS) return status;
            start = p->position - 1;
            entry->numel = 1;
            if (peek_char(p) == ']') {
                p->position++;
            } else {
                for (;;) {
                    uint64_t dim;
                    if ((status = parse_integer(p, &dim)) != FADAM_SUCCESS) return status;
                    if (++dims > MAX_DIMS) return json_error(p, "shape has more than 32 dimensions");
                    entry->n_dims = dims;
                    if (dim != 0 && entry->numel > (uint64_t)INT64_MAX / dim) entry->shape_overflows = 1;
                    else entry->numel *= dim;
                    if (peek_char(p) == ',') {
                        p->position++;
                        continue;
                    }
                    if ((status = expect_char(p, ']', "expected ',' or ']' in shape")) != FADAM_SUCCESS) return status;
                    break;
                }
            }
            entry->shape_text = p->text + start;
            entry->shape_length = (int)(p->position - start);
        } else if (strcmp(key, "data_offsets") == 0) {
            if (seen_offsets++) return json_error(p, "duplicate key \"data_offsets\"");
            if ((status = expect_char(p, '[', "data_offsets is not an array")) != FADAM_SUCCESS) return status;
            if ((status = parse_integer(p, &entry->begin)) != FADAM_SUCCESS) return status;
            if ((status = expect_char(p, ',', "data_offsets needs two integers")) != FADAM_SUCCESS) return status;
            if ((status = parse_integer(p, &entry->end)) != FADAM_SUCCESS) return status;
            if ((status = expect_char(p, ']', "data_offsets needs exactly two integers")) != FADAM_SUCCESS) return status;
        } else {
            return json_error(p, "unknown key in a tensor entry (only dtype, shape, data_offsets)");
        }
        if (peek_char(p) == ',') {
            p->position++;
            continue;
        }
        if ((status = expect_char(p, '}', "expected ',' or '}' in a tensor entry")) != FADAM_SUCCESS) return status;
        break;
    }
    if (!seen_dtype || !seen_shape || !seen_offsets)
        return fadam_fail(FADAM_ERR_CORRUPT, "%s: malformed header: tensor '%.*s' lacks %s", p->function, NAME_CLIP,
                          entry->name, !seen_dtype ? "dtype" : !seen_shape ? "shape" : "data_offsets");
    return FADAM_SUCCESS;
}

static fadam_status parse_header(const char *text, size_t length, parsed_header *out, const char *function) {
    json_parser parser, *p = &parser;
    fadam_status status;
    memset(out, 0, sizeof *out);
    out->arena = (char *)malloc(length + 1);
    if (!out->arena) return fadam_fail(FADAM_ERR_OUT_OF_MEMORY, "%s: no host memory for the header", function);
    p->text = text;
    p->length = length;
    p->position = 0;
    p->out = out;
    p->function = function;
    if (length == 0 || text[0] != '{') return json_error(p, "the header does not start with '{'");
    p->position = 1;
    if (peek_char(p) == '}') {
        p->position++;
    } else {
        for (;;) {
            const char *key;
            if ((status = parse_string(p, &key)) != FADAM_SUCCESS) return status;
            if ((status = expect_char(p, ':', "expected ':' after a key")) != FADAM_SUCCESS) return status;
            if (strcmp(key, "__metadata__") == 0) {
                if (out->has_metadata++) return json_error(p, "duplicate key \"__metadata__\"");
                if ((status = parse_metadata(p)) != FADAM_SUCCESS) return status;
            } else {
                load_entry *entry;
                if (out->n_entries == out->entries_capacity) {
                    size_t capacity = out->entries_capacity ? 2 * out->entries_capacity : 64;
                    load_entry *grown = (load_entry *)realloc(out->entries, capacity * sizeof *grown);
                    if (!grown) return fadam_fail(FADAM_ERR_OUT_OF_MEMORY, "%s: no host memory for the header", function);
                    out->entries = grown;
                    out->entries_capacity = capacity;
                }
                entry = &out->entries[out->n_entries++];
                memset(entry, 0, sizeof *entry);
                entry->name = key;
                if ((status = parse_entry(p, entry)) != FADAM_SUCCESS) return status;
            }
            if (peek_char(p) == ',') {
                p->position++;
                continue;
            }
            if ((status = expect_char(p, '}', "expected ',' or '}' after a tensor entry")) != FADAM_SUCCESS) return status;
            break;
        }
    }
    skip_space(p);
    if (p->position != p->length) return json_error(p, "bytes after the JSON object (only spaces may pad it)");
    return FADAM_SUCCESS;
}

static void free_parsed(parsed_header *parsed) {
    free(parsed->entries);
    free(parsed->metadata);
    free(parsed->arena);
}

/* ---- load: where the bytes come from ---- */

typedef struct source {
    const unsigned char *memory; /* or NULL: the file descriptor */
    int fd;
    const char *path;
    uint64_t size;        /* of the whole checkpoint */
    uint64_t data_offset; /* 8 + header length */
    unsigned char *bounce; /* 2 x bounce_half(): host memory for a file's pieces */
} source;

/* Bytes of each half of a file's bounce buffer: a piece, or less for a smaller file. */
static size_t bounce_half(const source *in) { return in->size < PIECE_BYTES ? (size_t)in->size + 1 : PIECE_BYTES; }

/* Reads `count` bytes at `offset` of the checkpoint into `destination`. */
static fadam_status source_read(const source *in, uint64_t offset, void *destination, size_t count, const char *function) {
    char *target = (char *)destination;
    if (count == 0) return FADAM_SUCCESS; /* a zero-element tensor's state pointer may be NULL */
    if (in->memory) {
        memcpy(destination, in->memory + offset, count);
        return FADAM_SUCCESS;
    }
    while (count) {
        ssize_t got = pread(in->fd, target, count > ((size_t)1 << 30) ? (size_t)1 << 30 : count, (off_t)offset);
        if (got < 0) {
            if (errno == EINTR) continue;
            return io_fail(function, "reading", in->path);
        }
        if (got == 0)
            return fadam_fail(FADAM_ERR_IO, "%s: '%.300s' became shorter while it was read", function, in->path);
        target += got, count -= (size_t)got, offset += (uint64_t)got;
    }
    return FADAM_SUCCESS;
}

/* A view of `count` (<= PIECE_BYTES) bytes at `offset`: the memory itself, or the bounce buffer. */
static fadam_status source_view(const source *in, uint64_t offset, size_t count, const unsigned char **view,
                                const char *function) {
    if (in->memory) {
        *view = in->memory + offset;
        return FADAM_SUCCESS;
    }
    *view = in->bounce;
    return source_read(in, offset, in->bounce, count, function);
}

/* ---- load: checks, in the order their messages are promised ---- */

typedef struct load_plan {
    parsed_header parsed;
    load_entry **by_name;   /* entries sorted by name */
    load_entry **by_offset; /* entries sorted by begin */
    int64_t step;
    fadam_hparams groups[FADAM_MAX_GROUPS];
    int format_version; /* 1 (SHA-256) or 2 (XXH3-128 over pieces) */
    unsigned char checksum[FADAM_CHECKSUM_MAX_BYTES];
    int64_t *entry_tensor; /* per by_name entry: the registered tensor */
    int *entry_kind;
    int has_fused;                /* the checkpoint holds the fused step's counters */
    fadam_step_counters fused;
} load_plan;

static void free_load_plan(load_plan *plan) {
    free_parsed(&plan->parsed);
    free(plan->by_name);
    free(plan->by_offset);
    free(plan->entry_tensor);
    free(plan->entry_kind);
}

static int compare_entry_names(const void *a, const void *b) {
    return strcmp((*(const load_entry *const *)a)->name, (*(const load_entry *const *)b)->name);
}

static int compare_entry_offsets(const void *a, const void *b) {
    const load_entry *x = *(const load_entry *const *)a, *y = *(const load_entry *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

static const char *find_metadata(const parsed_header *parsed, const char *key) {
    const char *const *found;
    if (parsed->n_metadata == 0) return NULL;
    found = (const char *const *)bsearch(&key, parsed->metadata, parsed->n_metadata, 2 * sizeof(char *),
                                         compare_metadata_pairs);
    return found ? found[1] : NULL;
}

static fadam_status require_metadata(const parsed_header *parsed, const char *key, const char **value,
                                     const char *function) {
    *value = find_metadata(parsed, key);
    if (!*value)
        return fadam_fail(FADAM_ERR_CORRUPT, "%s: __metadata__ has no \"%.*s\"", function, NAME_CLIP + 20, key);
    return FADAM_SUCCESS;
}

static load_entry *find_entry(const load_plan *plan, const char *name, size_t *index_out) {
    size_t low = 0, high = plan->parsed.n_entries;
    while (low < high) {
        size_t middle = low + (high - low) / 2;
        int order = strcmp(plan->by_name[middle]->name, name);
        if (order == 0) {
            *index_out = middle;
            return plan->by_name[middle];
        }
        if (order < 0) low = middle + 1;
        else high = middle;
    }
    return NULL;
}

/* dtype known, shape without overflow, byte range inside the data and as long as the shape says;
 * then, in offset order, no overlap, no hole, nothing after the last entry (safetensors' rules). */
static fadam_status check_byte_ranges(load_plan *plan, uint64_t data_size, const char *function) {
    parsed_header *parsed = &plan->parsed;
    uint64_t previous_end = 0;
    size_t i;
    for (i = 0; i < parsed->n_entries; i++) {
        load_entry *entry = &parsed->entries[i];
        int dtype = find_dtype(entry->dtype);
        uint64_t bytes;
        if (dtype < 0)
            return fadam_fail(FADAM_ERR_CORRUPT, "%s: entry '%.*s': unknown dtype \"%.20s\"", function, NAME_CLIP,
                              entry->name, entry->dtype);
        if (entry->shape_overflows || entry->numel > UINT64_MAX / known_dtypes[dtype].bytes)
            return fadam_fail(FADAM_ERR_CORRUPT, "%s: entry '%.*s': shape %.*s overflows 64 bits", function, NAME_CLIP,
                              entry->name, entry->shape_length > 200 ? 200 : entry->shape_length, entry->shape_text);
        bytes = entry->numel * known_dtypes[dtype].bytes;
        if (entry->begin > entry->end)
            return fadam_fail(FADAM_ERR_CORRUPT, "%s: entry '%.*s': data_offsets [%llu, %llu] end before they begin",
                              function, NAME_CLIP, entry->name, (unsigned long long)entry->begin,
                              (unsigned long long)entry->end);
        if (entry->end > data_size)
            return fadam_fail(FADAM_ERR_CORRUPT, "%s: entry '%.*s': data_offsets [%llu, %llu] reach past the %llu data "
                                                 "bytes (truncated?)",
                              function, NAME_CLIP, entry->name, (unsigned long long)entry->begin,
                              (unsigned long long)entry->end, (unsigned long long)data_size);
        if (entry->end - entry->begin != bytes)
            return fadam_fail(FADAM_ERR_CORRUPT, "%s: entry '%.*s': data_offsets [%llu, %llu] span %llu bytes, but shape "
                                                 "%.*s of %s needs %llu",
                              function, NAME_CLIP, entry->name, (unsigned long long)entry->begin,
                              (unsigned long long)entry->end, (unsigned long long)(entry->end - entry->begin),
                              entry->shape_length > 100 ? 100 : entry->shape_length, entry->shape_text,
                              known_dtypes[dtype].name, (unsigned long long)bytes);
    }
    for (i = 0; i < parsed->n_entries; i++) plan->by_offset[i] = &parsed->entries[i];
    if (parsed->n_entries > 1) qsort(plan->by_offset, parsed->n_entries, sizeof *plan->by_offset, compare_entry_offsets);
    for (i = 0; i < parsed->n_entries; i++) {
        const load_entry *entry = plan->by_offset[i];
        if (entry->begin < previous_end)
            return fadam_fail(FADAM_ERR_CORRUPT, "%s: entries '%.*s' and '%.*s' overlap in the data", function, NAME_CLIP,
                              plan->by_offset[i - 1]->name, NAME_CLIP, entry->name);
        if (entry->begin > previous_end)
            return fadam_fail(FADAM_ERR_CORRUPT, "%s: %llu data bytes before entry '%.*s' belong to no entry", function,
                              (unsigned long long)(entry->begin - previous_end), NAME_CLIP, entry->name);
        previous_end = entry->end;
    }
    if (previous_end != data_size)
        return fadam_fail(FADAM_ERR_CORRUPT, "%s: the last %llu data bytes belong to no entry", function,
                          (unsigned long long)(data_size - previous_end));
    return FADAM_SUCCESS;
}

static fadam_status check_unique_keys(load_plan *plan, const char *function) {
    parsed_header *parsed = &plan->parsed;
    size_t i;
    for (i = 0; i < parsed->n_entries; i++) plan->by_name[i] = &parsed->entries[i];
    if (parsed->n_entries > 1) qsort(plan->by_name, parsed->n_entries, sizeof *plan->by_name, compare_entry_names);
    for (i = 1; i < parsed->n_entries; i++)
        if (strcmp(plan->by_name[i]->name, plan->by_name[i - 1]->name) == 0)
            return fadam_fail(FADAM_ERR_CORRUPT, "%s: malformed header: duplicate key '%.*s'", function, NAME_CLIP,
                              plan->by_name[i]->name);
    if (parsed->n_metadata > 1)
        qsort(parsed->metadata, parsed->n_metadata, 2 * sizeof *parsed->metadata, compare_metadata_pairs);
    for (i = 1; i < parsed->n_metadata; i++)
        if (strcmp(parsed->metadata[2 * i], parsed->metadata[2 * i - 2]) == 0)
            return fadam_fail(FADAM_ERR_CORRUPT, "%s: malformed header: duplicate __metadata__ key '%.*s'", function,
                              NAME_CLIP, parsed->metadata[2 * i]);
    return FADAM_SUCCESS;
}

static fadam_status parse_group_float(const parsed_header *parsed, int group, const char *field, float *out,
                                      const char *function) {
    char key[64];
    const char *value, *why;
    fadam_status status;
    snprintf(key, sizeof key, "group.%d.%s", group, field);
    if ((status = require_metadata(parsed, key, &value, function)) != FADAM_SUCCESS) return status;
    if (!parse_float_why(value, out, &why))
        return fadam_fail(FADAM_ERR_CORRUPT, "%s: __metadata__ \"%s\" is \"%.40s\", %s", function, key, value,
                          why);
    return FADAM_SUCCESS;
}

static fadam_status parse_group_choice(const parsed_header *parsed, int group, const char *field, const char *zero,
                                       const char *one, int *out, const char *function) {
    char key[64];
    const char *value;
    fadam_status status;
    snprintf(key, sizeof key, "group.%d.%s", group, field);
    if ((status = require_metadata(parsed, key, &value, function)) != FADAM_SUCCESS) return status;
    if (strcmp(value, zero) == 0) *out = 0;
    else if (strcmp(value, one) == 0) *out = 1;
    else
        return fadam_fail(FADAM_ERR_CORRUPT, "%s: __metadata__ \"%s\" is \"%.40s\", neither \"%s\" nor \"%s\"", function,
                          key, value, zero, one);
    return FADAM_SUCCESS;
}

/* A counter in [0, limit]; `why` says what the limit is for. A missing key is an error unless
 * `optional`, which leaves *out as it is. */
static fadam_status parse_fused_integer(const parsed_header *parsed, const char *key, int64_t limit, const char *why,
                                        int optional, int64_t *out, const char *function) {
    const char *value = find_metadata(parsed, key);
    fadam_status status;
    if (!value && optional) return FADAM_SUCCESS;
    if (!value && (status = require_metadata(parsed, key, &value, function)) != FADAM_SUCCESS) return status;
    if (!parse_count(value, out) || *out > limit)
        return fadam_fail(FADAM_ERR_CORRUPT, "%s: __metadata__ \"%s\" is \"%.40s\", not an integer in [0, %lld]%s", function,
                          key, value, (long long)limit, why);
    return FADAM_SUCCESS;
}

/* A float in [low, high]; NaN only when `nan_ok`. "inf" passes when high is infinite. */
static fadam_status parse_fused_float(const parsed_header *parsed, const char *key, float low, float high, int nan_ok,
                                      const char *range, float *out, const char *function) {
    const char *value;
    fadam_status status;
    if ((status = require_metadata(parsed, key, &value, function)) != FADAM_SUCCESS) return status;
    if (!parse_any_float(value, out))
        return fadam_fail(FADAM_ERR_CORRUPT, "%s: __metadata__ \"%s\" is \"%.40s\", not a number", function, key, value);
    if (nan_ok && *out != *out) return FADAM_SUCCESS;
    if (!(*out >= low && *out <= high))
        return fadam_fail(FADAM_ERR_CORRUPT, "%s: __metadata__ \"%s\" is \"%.40s\", out of range: it must be %s", function,
                          key, value, range);
    return FADAM_SUCCESS;
}

/* The fused step's counters, when the checkpoint has them (its "fused.step" says so). Each must be a
 * value the fused step itself can leave behind: a loaded 0, negative or NaN loss scale would skip or
 * flip every later step, a counter at INT64_MAX would overflow at the next one. */
static fadam_status check_fused_metadata(load_plan *plan, const char *function) {
    static const char *const cannot_advance = " (a counter at INT64_MAX cannot advance)";
    const parsed_header *parsed = &plan->parsed;
    fadam_step_counters *c = &plan->fused;
    int64_t skipped = 0, good_steps = 0;
    fadam_status status;
    if (!find_metadata(parsed, "fused.step")) return FADAM_SUCCESS;
    plan->has_fused = 1;
    c->skipped_at_min_scale = 0; /* absent from checkpoints written before it existed */
    if ((status = parse_fused_integer(parsed, "fused.step", INT64_MAX - 1, cannot_advance, 0, &c->step, function)) !=
            FADAM_SUCCESS ||
        (status = parse_fused_integer(parsed, "fused.skipped_total", INT64_MAX - 1, cannot_advance, 0, &c->skipped_total,
                                      function)) != FADAM_SUCCESS ||
        (status = parse_fused_integer(parsed, "fused.skipped", 1, "", 0, &skipped, function)) != FADAM_SUCCESS ||
        /* +Inf: a finite norm past float's range; NaN: an Inf/NaN gradient, which skipped the step. */
        (status = parse_fused_float(parsed, "fused.grad_norm", 0.0f, __builtin_inff(), skipped == 1,
                                    skipped ? ">= 0 or nan" : ">= 0 (nan only in a skipped step)", &c->grad_norm,
                                    function)) != FADAM_SUCCESS ||
        (status = parse_fused_float(parsed, "fused.clip_coef", 0.0f, 1.0f, 0, "in [0, 1]", &c->clip_coef, function)) !=
            FADAM_SUCCESS ||
        (status = parse_fused_float(parsed, "fused.lr_scale", 0.0f, 1.0f, 0, "in [0, 1]", &c->lr_scale, function)) !=
            FADAM_SUCCESS ||
        (status = parse_fused_float(parsed, "fused.loss_scale", 0x1p-126f, 0x1.fffffep127f, 0,
                                    "a finite number >= 2^-126 (the loss scale divides every gradient)", &c->loss_scale,
                                    function)) != FADAM_SUCCESS ||
        (status = parse_fused_integer(parsed, "fused.good_steps", INT32_MAX - 1, "", 0, &good_steps, function)) !=
            FADAM_SUCCESS ||
        (status = parse_fused_integer(parsed, "fused.skipped_at_min_scale", c->skipped_total, " (it counts some of "
                                      "fused.skipped_total)", 1, &c->skipped_at_min_scale, function)) != FADAM_SUCCESS)
        return status;
    c->skipped = (int32_t)skipped;
    c->good_steps = (int32_t)good_steps;
    return FADAM_SUCCESS;
}

/* format, format_version, checksum, step, n_groups and every group's hyperparameters. */
static fadam_status check_metadata(const fadam_optimizer *opt, load_plan *plan, const char *function) {
    const parsed_header *parsed = &plan->parsed;
    const char *value;
    int64_t number;
    fadam_status status;
    int g;
    if (!parsed->has_metadata)
        return fadam_fail(FADAM_ERR_CORRUPT, "%s: the header has no __metadata__: not a fusedadam checkpoint", function);
    if ((status = require_metadata(parsed, "format", &value, function)) != FADAM_SUCCESS) return status;
    if (strcmp(value, FORMAT_NAME) != 0)
        return fadam_fail(FADAM_ERR_CORRUPT, "%s: __metadata__ format is \"%.60s\", not \"" FORMAT_NAME "\"", function, value);
    if ((status = require_metadata(parsed, "format_version", &value, function)) != FADAM_SUCCESS) return status;
    /* Version 1 differs only in its checksum (SHA-256): still read. */
    if (!parse_count(value, &number) || (number != 1 && number != FADAM_CHECKPOINT_FORMAT_VERSION))
        return fadam_fail(FADAM_ERR_CORRUPT, "%s: format_version \"%.40s\" is not one this library reads (1 or %d)",
                          function, value, FADAM_CHECKPOINT_FORMAT_VERSION);
    plan->format_version = (int)number;
    if ((status = require_metadata(parsed, "checksum", &value, function)) != FADAM_SUCCESS) return status;
    {
        const char *prefix = fadam_checksum_prefix(plan->format_version);
        size_t digest_bytes = fadam_checksum_bytes(plan->format_version), n;
        if (strlen(value) != strlen(prefix) + 2 * digest_bytes || strncmp(value, prefix, strlen(prefix)) != 0)
            return fadam_fail(FADAM_ERR_CORRUPT, "%s: checksum \"%.80s\" is not \"%s\" and %zu hex digits (format_version %d)",
                              function, value, prefix, 2 * digest_bytes, plan->format_version);
        for (n = 0; n < digest_bytes; n++) {
            int high = hex_value(value[strlen(prefix) + 2 * n]);
            int low = hex_value(value[strlen(prefix) + 2 * n + 1]);
            if (high < 0 || low < 0)
                return fadam_fail(FADAM_ERR_CORRUPT, "%s: checksum \"%.80s\" is not \"%s\" and %zu hex digits", function,
                                  value, prefix, 2 * digest_bytes);
            plan->checksum[n] = (unsigned char)(high * 16 + low);
        }
    }
    if ((status = require_metadata(parsed, "step", &value, function)) != FADAM_SUCCESS) return status;
    /* INT64_MAX is refused too: the next step would overflow. */
    if (!parse_count(value, &plan->step) || plan->step == INT64_MAX)
        return fadam_fail(FADAM_ERR_CORRUPT, "%s: step \"%.40s\" is not an integer in [0, 2^63-2] (a step counter at "
                                             "INT64_MAX cannot advance)",
                          function, value);
    if ((status = require_metadata(parsed, "n_groups", &value, function)) != FADAM_SUCCESS) return status;
    if (!parse_count(value, &number) || number < 1 || number > FADAM_MAX_GROUPS)
        return fadam_fail(FADAM_ERR_CORRUPT, "%s: n_groups \"%.40s\" is not an integer in [1, %d]", function, value,
                          FADAM_MAX_GROUPS);
    if (number != opt->n_groups)
        return fadam_fail(FADAM_ERR_MISMATCH, "%s: the checkpoint has %lld parameter group(s), the optimizer %d", function,
                          (long long)number, opt->n_groups);
    for (g = 0; g < opt->n_groups; g++) {
        fadam_hparams *h = &plan->groups[g];
        int mode = 0;
        char message[512];
        if ((status = parse_group_float(parsed, g, "lr", &h->lr, function)) != FADAM_SUCCESS) return status;
        if ((status = parse_group_float(parsed, g, "beta1", &h->beta1, function)) != FADAM_SUCCESS) return status;
        if ((status = parse_group_float(parsed, g, "beta2", &h->beta2, function)) != FADAM_SUCCESS) return status;
        if ((status = parse_group_float(parsed, g, "eps", &h->eps, function)) != FADAM_SUCCESS) return status;
        if ((status = parse_group_float(parsed, g, "weight_decay", &h->weight_decay, function)) != FADAM_SUCCESS)
            return status;
        if ((status = parse_group_choice(parsed, g, "mode", "adamw", "adam_l2", &mode, function)) != FADAM_SUCCESS)
            return status;
        h->mode = mode ? FADAM_ADAM_L2 : FADAM_ADAMW;
        if ((status = parse_group_choice(parsed, g, "bias_correction", "false", "true", &h->bias_correction, function)) !=
            FADAM_SUCCESS)
            return status;
        if ((status = parse_group_choice(parsed, g, "maximize", "false", "true", &h->maximize, function)) != FADAM_SUCCESS)
            return status;
        if (fadam_check_hparams(h, "checkpoint", g) != FADAM_SUCCESS) {
            snprintf(message, sizeof message, "%s", fadam_last_error_message());
            return fadam_fail(FADAM_ERR_CORRUPT, "%s: hyperparameters out of range: %s", function, message);
        }
    }
    return FADAM_SUCCESS;
}

/* One registered tensor's state entry: present, F32, as many elements as registered. */
static fadam_status match_entry(load_plan *plan, const fadam_optimizer *opt, int64_t t, int kind,
                                const char *function) {
    const fadam_tensor *tensor = &opt->tensors[t];
    const char *name = opt->names[t];
    char key[FADAM_MAX_NAME_LENGTH + 32];
    load_entry *entry;
    size_t index = 0;
    snprintf(key, sizeof key, "%s%s", name, state_suffix[kind]);
    entry = find_entry(plan, key, &index);
    if (!entry) {
        if (kind == STATE_EXP_AVG)
            return fadam_fail(FADAM_ERR_MISMATCH, "%s: tensor '%.*s' is missing from the checkpoint (no entry '%.*s')",
                              function, NAME_CLIP, name, NAME_CLIP + 12, key);
        return fadam_fail(FADAM_ERR_MISMATCH, "%s: tensor '%.*s' %s: missing from the checkpoint (no entry '%.*s')",
                          function, NAME_CLIP, name, state_suffix[kind] + 1, NAME_CLIP + 12, key);
    }
    if (strcmp(entry->dtype, "F32") != 0)
        return fadam_fail(FADAM_ERR_MISMATCH, "%s: tensor '%.*s' %s: wrong dtype: %s in the checkpoint, F32 expected",
                          function, NAME_CLIP, name, state_suffix[kind] + 1, entry->dtype);
    if (entry->numel != (uint64_t)tensor->numel)
        return fadam_fail(FADAM_ERR_MISMATCH, "%s: tensor '%.*s' %s: wrong shape: %.*s (%llu elements) in the checkpoint, "
                                              "%lld elements registered",
                          function, NAME_CLIP, name, state_suffix[kind] + 1,
                          entry->shape_length > 100 ? 100 : entry->shape_length, entry->shape_text,
                          (unsigned long long)entry->numel, (long long)tensor->numel);
    /* The shape must be what a save writes, [numel]: [7,1] or [] hold the right count, but are not
     * this optimizer's state. */
    if (entry->n_dims != 1)
        return fadam_fail(FADAM_ERR_CORRUPT, "%s: tensor '%.*s' %s: shape %.*s has %d dimensions; a fusedadam checkpoint "
                                             "saves [%lld]",
                          function, NAME_CLIP, name, state_suffix[kind] + 1,
                          entry->shape_length > 100 ? 100 : entry->shape_length, entry->shape_text, entry->n_dims,
                          (long long)tensor->numel);
    entry->matched = 1;
    plan->entry_tensor[index] = t;
    plan->entry_kind[index] = kind;
    return FADAM_SUCCESS;
}

/* A file's slice of a tensor: NAME.offset and NAME.full_numel, or (not sharded) the whole tensor. */
static fadam_status file_slice(const parsed_header *parsed, const char *name, int64_t numel, int64_t *offset,
                               int64_t *full_numel, const char *function) {
    char key[FADAM_MAX_NAME_LENGTH + 32];
    const char *value;
    *offset = 0;
    *full_numel = numel;
    snprintf(key, sizeof key, "%s.offset", name);
    if ((value = find_metadata(parsed, key)) != NULL && !parse_count(value, offset))
        return fadam_fail(FADAM_ERR_CORRUPT, "%s: __metadata__ \"%.*s.offset\" is \"%.40s\", not a count", function,
                          NAME_CLIP, name, value);
    snprintf(key, sizeof key, "%s.full_numel", name);
    if ((value = find_metadata(parsed, key)) != NULL && !parse_count(value, full_numel))
        return fadam_fail(FADAM_ERR_CORRUPT, "%s: __metadata__ \"%.*s.full_numel\" is \"%.40s\", not a count", function,
                          NAME_CLIP, name, value);
    if (*offset > *full_numel || numel > *full_numel - *offset)
        return fadam_fail(FADAM_ERR_CORRUPT, "%s: tensor '%.*s': the slice [%lld, +%lld) lies outside its %lld elements",
                          function, NAME_CLIP, name, (long long)*offset, (long long)numel, (long long)*full_numel);
    return FADAM_SUCCESS;
}

/* fadam_load restores the slice that was saved: the same offset and full size (fadam_load_shards
 * reassembles other slicings). */
static fadam_status match_slice(load_plan *plan, const fadam_optimizer *opt, int64_t t, const char *function) {
    int64_t offset, full_numel, want_offset, want_full;
    fadam_status status;
    status = file_slice(&plan->parsed, opt->names[t], opt->tensors[t].numel, &offset, &full_numel, function);
    if (status != FADAM_SUCCESS) return status;
    fadam_tensor_shard_of(opt, t, &want_offset, &want_full);
    if (offset != want_offset || full_numel != want_full)
        return fadam_fail(FADAM_ERR_MISMATCH, "%s: tensor '%.*s': the checkpoint holds elements [%lld, +%lld) of %lld, "
                                              "registered are [%lld, +%lld) of %lld (fadam_load_shards reassembles "
                                              "another slicing)",
                          function, NAME_CLIP, opt->names[t], (long long)offset, (long long)opt->tensors[t].numel,
                          (long long)full_numel, (long long)want_offset, (long long)opt->tensors[t].numel,
                          (long long)want_full);
    return FADAM_SUCCESS;
}

/* Every registered tensor in registration order, then every entry no tensor claimed. */
static fadam_status match_tensors(load_plan *plan, const fadam_optimizer *opt, const char *function) {
    char key[FADAM_MAX_NAME_LENGTH + 32];
    const char *value;
    int64_t t, group;
    size_t i;
    fadam_status status;
    for (t = 0; t < opt->n_tensors; t++) {
        const fadam_tensor *tensor = &opt->tensors[t];
        const char *name = opt->names[t];
        int kind;
        if ((status = match_entry(plan, opt, t, STATE_EXP_AVG, function)) != FADAM_SUCCESS) return status;
        snprintf(key, sizeof key, "%s.param_dtype", name);
        if ((status = require_metadata(&plan->parsed, key, &value, function)) != FADAM_SUCCESS) return status;
        if (strcmp(value, param_dtype_name(tensor->param_dtype)) != 0)
            return fadam_fail(FADAM_ERR_MISMATCH, "%s: tensor '%.*s': param dtype %.20s in the checkpoint, %s registered",
                              function, NAME_CLIP, name, value, param_dtype_name(tensor->param_dtype));
        snprintf(key, sizeof key, "%s.group", name);
        if ((status = require_metadata(&plan->parsed, key, &value, function)) != FADAM_SUCCESS) return status;
        if (!parse_count(value, &group))
            return fadam_fail(FADAM_ERR_CORRUPT, "%s: __metadata__ \"%.*s.group\" is \"%.40s\", not a group index", function,
                              NAME_CLIP, name, value);
        if (group != tensor->group)
            return fadam_fail(FADAM_ERR_MISMATCH, "%s: tensor '%.*s': group %lld in the checkpoint, %d registered", function,
                              NAME_CLIP, name, (long long)group, tensor->group);
        if ((status = match_slice(plan, opt, t, function)) != FADAM_SUCCESS) return status;
        for (kind = STATE_EXP_AVG_SQ; kind < state_count(tensor); kind++)
            if ((status = match_entry(plan, opt, t, kind, function)) != FADAM_SUCCESS) return status;
    }
    for (i = 0; i < plan->parsed.n_entries; i++)
        if (!plan->by_name[i]->matched)
            return fadam_fail(FADAM_ERR_MISMATCH, "%s: extra entry '%.*s' in the checkpoint: no registered tensor has it",
                              function, NAME_CLIP, plan->by_name[i]->name);
    return FADAM_SUCCESS;
}

/* One step of verify_pipelined: hash the current piece (block 0) while reading the next (block 1).
 * The read only records errno: the caller, not a pool thread, reports it. */
typedef struct pipeline_step {
    const unsigned char *hash_data;
    size_t hash_bytes;
    unsigned char digest[16];
    int fd;
    unsigned char *read_into;
    uint64_t read_offset;
    size_t read_bytes;
    int read_errno, read_short;
} pipeline_step;

static void pipeline_block(void *context, int64_t block) {
    pipeline_step *step = (pipeline_step *)context;
    if (block == 0) {
        fadam_checksum_piece(step->hash_data, step->hash_bytes, step->digest);
        return;
    }
    while (step->read_bytes) {
        ssize_t got = pread(step->fd, step->read_into, step->read_bytes, (off_t)step->read_offset);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) step->read_errno = errno ? errno : EIO;
        if (got == 0) step->read_short = 1;
        if (got <= 0) return;
        step->read_into += got, step->read_bytes -= (size_t)got, step->read_offset += (uint64_t)got;
    }
}

/* The next piece of the data in name order after (entry *e, offset *done): 0 when none is left. */
static int next_piece(const load_plan *plan, size_t *e, uint64_t *done, uint64_t *offset, size_t *bytes) {
    while (*e < plan->parsed.n_entries && *done >= plan->by_name[*e]->end - plan->by_name[*e]->begin) (*e)++, *done = 0;
    if (*e == plan->parsed.n_entries) return 0;
    {
        uint64_t left = plan->by_name[*e]->end - plan->by_name[*e]->begin - *done;
        *offset = plan->by_name[*e]->begin + *done;
        *bytes = left < PIECE_BYTES ? (size_t)left : PIECE_BYTES;
        *done += *bytes;
    }
    return 1;
}

/* Version 2 from a file: reading piece k+1 and hashing piece k at once on the pool (pool NULL: one
 * after the other), through the two halves of the bounce buffer; the digests go in in order. */
static fadam_status verify_pipelined(const load_plan *plan, const source *in, fadam_cpu_pool *pool, fadam_checksum *hash,
                                     const char *function) {
    size_t half = bounce_half(in), e = 0, framed = 0, current_entry = 0, current_bytes = 0, next_bytes = 0;
    uint64_t done = 0, current_offset = 0, next_offset = 0;
    int have_current, have_next, which = 0;
    fadam_status status;
    FADAM_STATIC_ASSERT(PIECE_BYTES == FADAM_CHECKSUM_PIECE_BYTES, "a bounce half holds one checksum piece");
    have_current = next_piece(plan, &e, &done, &current_offset, &current_bytes);
    current_entry = e;
    if (have_current &&
        (status = source_read(in, in->data_offset + current_offset, in->bounce, current_bytes, function)) != FADAM_SUCCESS)
        return status;
    while (have_current) {
        pipeline_step step;
        size_t next_entry;
        memset(&step, 0, sizeof step);
        have_next = next_piece(plan, &e, &done, &next_offset, &next_bytes);
        next_entry = e;
        step.hash_data = in->bounce + (size_t)which * half;
        step.hash_bytes = current_bytes;
        step.fd = in->fd;
        if (have_next) {
            step.read_into = in->bounce + (size_t)(1 - which) * half;
            step.read_offset = in->data_offset + next_offset;
            step.read_bytes = next_bytes;
        }
        fadam_cpu_pool_run(pool, have_next ? 2 : 1, pipeline_block, &step);
        if (step.read_errno) {
            errno = step.read_errno;
            return io_fail(function, "reading", in->path);
        }
        if (step.read_short)
            return fadam_fail(FADAM_ERR_IO, "%s: '%.300s' became shorter while it was read", function, in->path);
        for (; framed <= current_entry; framed++)
            fadam_checksum_entry(hash, plan->by_name[framed]->name, plan->by_name[framed]->end - plan->by_name[framed]->begin);
        fadam_checksum_add_piece(hash, step.digest);
        have_current = have_next, current_entry = next_entry, current_bytes = next_bytes, which = 1 - which;
    }
    for (; framed < plan->parsed.n_entries; framed++)
        fadam_checksum_entry(hash, plan->by_name[framed]->name, plan->by_name[framed]->end - plan->by_name[framed]->begin);
    return FADAM_SUCCESS;
}

/* Streams through the data in name order and compares the checksum of the file's format_version with
 * the recorded one. Data in memory goes a pool's worth of pieces at a time (hashed at once); a file's
 * through the bounce buffer, one piece at a time. */
static fadam_status verify_checksum(load_plan *plan, const source *in, const fadam_optimizer *opt, const char *function) {
    unsigned char digest[FADAM_CHECKSUM_MAX_BYTES];
    char expected[CHECKSUM_MAX_HEX_DIGITS + 1], computed[CHECKSUM_MAX_HEX_DIGITS + 1];
    size_t digest_bytes = fadam_checksum_bytes(plan->format_version), span;
    fadam_checksum hash;
    fadam_cpu_pool *pool = NULL;
    fadam_status status = FADAM_SUCCESS;
    size_t i;
    if (opt->device == FADAM_DEVICE_CPU && opt->cpu_pool && fadam_cpu_pool_acquire(opt->cpu_pool)) pool = opt->cpu_pool;
    span = in->memory ? (size_t)fadam_cpu_pool_size(pool) * FADAM_CHECKSUM_PIECE_BYTES : PIECE_BYTES;
    fadam_checksum_init(&hash, plan->format_version);
    fadam_checksum_metadata(&hash, plan->parsed.metadata, plan->parsed.n_metadata);
    if (!in->memory && plan->format_version == 2) {
        status = verify_pipelined(plan, in, pool, &hash, function);
    } else {
        for (i = 0; i < plan->parsed.n_entries && status == FADAM_SUCCESS; i++) {
            const load_entry *entry = plan->by_name[i];
            uint64_t done, bytes = entry->end - entry->begin;
            fadam_checksum_entry(&hash, entry->name, bytes);
            for (done = 0; done < bytes && status == FADAM_SUCCESS;) {
                size_t piece = bytes - done < span ? (size_t)(bytes - done) : span;
                const unsigned char *view;
                status = source_view(in, in->data_offset + entry->begin + done, piece, &view, function);
                if (status == FADAM_SUCCESS) fadam_checksum_data(&hash, pool, view, piece);
                done += piece;
            }
        }
    }
    if (pool) fadam_cpu_pool_release(pool);
    if (status != FADAM_SUCCESS) return status;
    fadam_checksum_final(&hash, digest);
    if (memcmp(digest, plan->checksum, digest_bytes) != 0) {
#if !defined(FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION)
        const char *prefix = fadam_checksum_prefix(plan->format_version);
        digest_to_hex(plan->checksum, digest_bytes, expected);
        digest_to_hex(digest, digest_bytes, computed);
        return fadam_fail(FADAM_ERR_CORRUPT, "%s: checksum mismatch: the data or metadata changed after the checkpoint "
                                             "was written (recorded %s%.16s..., computed %s%.16s...)",
                          function, prefix, expected, prefix, computed);
#else
        (void)expected, (void)computed; /* the fuzzer explores what lies behind the checksum */
#endif
    }
    return FADAM_SUCCESS;
}

/* Copies every entry into the optimizer's state: the only part that writes. */
static fadam_status commit_state(fadam_optimizer *opt, load_plan *plan, const source *in, cudaStream_t stream,
                                 const char *function) {
    unsigned char *staging = NULL;
    fadam_status status = FADAM_SUCCESS;
    int previous_device = 0;
    size_t i;
    if ((status = begin_staging(opt, &staging, &previous_device, function)) != FADAM_SUCCESS) return status;
    for (i = 0; i < plan->parsed.n_entries && status == FADAM_SUCCESS; i++) {
        const load_entry *entry = plan->by_name[i];
        unsigned char *state = (unsigned char *)state_pointer(&opt->tensors[plan->entry_tensor[i]], plan->entry_kind[i]);
        uint64_t done, bytes = entry->end - entry->begin;
        if (opt->device == FADAM_DEVICE_CPU) {
            status = source_read(in, in->data_offset + entry->begin, state, (size_t)bytes, function);
            continue;
        }
        for (done = 0; done < bytes && status == FADAM_SUCCESS; done += PIECE_BYTES) {
            size_t piece = bytes - done < PIECE_BYTES ? (size_t)(bytes - done) : PIECE_BYTES;
            cudaError_t error;
            status = source_read(in, in->data_offset + entry->begin + done, staging, piece, function);
            if (status != FADAM_SUCCESS) break;
            /* The staging buffer is refilled only after the copy out of it finished. */
            error = cudaMemcpyAsync(state + done, staging, piece, cudaMemcpyHostToDevice, stream);
            if (error == cudaSuccess) error = cudaStreamSynchronize(stream);
            if (error != cudaSuccess) status = fadam_cuda_fail(error, "cudaMemcpyAsync(state, staging)", __FILE__, __LINE__);
        }
    }
    if (status == FADAM_SUCCESS && opt->fused_state) {
        /* The counters, or (from a checkpoint without them) just the step they count from. */
        fadam_step_counters counters = plan->fused;
        void *target = plan->has_fused ? (void *)&opt->fused_state->counters : (void *)&opt->fused_state->counters.step;
        size_t bytes = plan->has_fused ? sizeof counters : sizeof(int64_t);
        const void *host = plan->has_fused ? (const void *)&counters : (const void *)&plan->step;
        if (opt->device == FADAM_DEVICE_CPU) {
            memcpy(target, host, bytes);
        } else {
            cudaError_t error;
            memcpy(staging, host, bytes);
            error = cudaMemcpyAsync(target, staging, bytes, cudaMemcpyHostToDevice, stream);
            if (error == cudaSuccess) error = cudaStreamSynchronize(stream);
            if (error != cudaSuccess) status = fadam_cuda_fail(error, "cudaMemcpyAsync(step counters)", __FILE__, __LINE__);
        }
    }
    end_staging(opt, staging, previous_device);
    if (status != FADAM_SUCCESS) {
        char message[512];
        snprintf(message, sizeof message, "%s", fadam_last_error_message());
        return fadam_fail(status, "%s: state partly loaded, load again: %s", function, message);
    }
    return FADAM_SUCCESS;
}

/* Reads the header of `in` and checks everything that does not depend on the registration's tensors:
 * bounds, JSON, keys, byte ranges, format, version, step, groups, the fused step's counters. The
 * header text stays in *header_copy (file sources), which the caller frees with the plan. */
static fadam_status read_checked_plan(const fadam_optimizer *opt, source *in, load_plan *out, char **header_copy_out,
                                      const char *function) {
    unsigned char prefix[8];
    char *header_copy = NULL;
    const char *header_text;
    uint64_t header_length = 0;
    load_plan plan;
    fadam_status status;
    int i;
    memset(&plan, 0, sizeof plan);
    memset(out, 0, sizeof *out);
    *header_copy_out = NULL;
    if (in->size < 8)
        return fadam_fail(FADAM_ERR_CORRUPT, "%s: the checkpoint is %llu bytes, shorter than the 8-byte header length",
                          function, (unsigned long long)in->size);
    if ((status = source_read(in, 0, prefix, 8, function)) != FADAM_SUCCESS) return status;
    for (i = 7; i >= 0; i--) header_length = header_length << 8 | prefix[i];
    if (header_length == 0) return fadam_fail(FADAM_ERR_CORRUPT, "%s: the header length is 0", function);
    if (header_length > (uint64_t)INT64_MAX)
        return fadam_fail(FADAM_ERR_CORRUPT, "%s: the header length is negative (%lld as a signed 64-bit number)", function,
                          (long long)(header_length - (uint64_t)INT64_MAX - 1) + INT64_MIN);
    if (header_length > in->size - 8)
        return fadam_fail(FADAM_ERR_CORRUPT, "%s: the header length %llu reaches past the end of the %llu-byte checkpoint "
                                             "(truncated?)",
                          function, (unsigned long long)header_length, (unsigned long long)in->size);
    if (header_length > HEADER_LIMIT)
        return fadam_fail(FADAM_ERR_CORRUPT, "%s: the header length %llu is over the %llu-byte limit", function,
                          (unsigned long long)header_length, (unsigned long long)HEADER_LIMIT);
    in->data_offset = 8 + header_length;
    if (in->memory) {
        header_text = (const char *)in->memory + 8;
    } else {
        header_copy = (char *)malloc((size_t)header_length);
        if (!header_copy) return fadam_fail(FADAM_ERR_OUT_OF_MEMORY, "%s: no host memory for the header", function);
        if ((status = source_read(in, 8, header_copy, (size_t)header_length, function)) != FADAM_SUCCESS) {
            free(header_copy);
            return status;
        }
        header_text = header_copy;
    }
    status = parse_header(header_text, (size_t)header_length, &plan.parsed, function);
    if (status == FADAM_SUCCESS) {
        size_t n = plan.parsed.n_entries ? plan.parsed.n_entries : 1;
        plan.by_name = (load_entry **)malloc(n * sizeof *plan.by_name);
        plan.by_offset = (load_entry **)malloc(n * sizeof *plan.by_offset);
        plan.entry_tensor = (int64_t *)calloc(n, sizeof *plan.entry_tensor);
        plan.entry_kind = (int *)calloc(n, sizeof *plan.entry_kind);
        if (!plan.by_name || !plan.by_offset || !plan.entry_tensor || !plan.entry_kind)
            status = fadam_fail(FADAM_ERR_OUT_OF_MEMORY, "%s: no host memory for the header", function);
    }
    if (status == FADAM_SUCCESS) status = check_unique_keys(&plan, function);
    if (status == FADAM_SUCCESS) status = check_byte_ranges(&plan, in->size - in->data_offset, function);
    if (status == FADAM_SUCCESS) status = check_metadata(opt, &plan, function);
    if (status == FADAM_SUCCESS) status = check_fused_metadata(&plan, function);
    *out = plan;
    *header_copy_out = header_copy;
    return status;
}

static fadam_status load_checkpoint(fadam_optimizer *opt, source *in, fadam_stream stream, const char *function) {
    char *header_copy = NULL;
    load_plan plan;
    fadam_status status = read_checked_plan(opt, in, &plan, &header_copy, function);
    if (status == FADAM_SUCCESS) status = match_tensors(&plan, opt, function);
    if (status == FADAM_SUCCESS) status = verify_checksum(&plan, in, opt, function);
    /* Everything checked: from here on the optimizer changes. */
    if (status == FADAM_SUCCESS) status = commit_state(opt, &plan, in, (cudaStream_t)stream, function);
    if (status == FADAM_SUCCESS) {
        /* A checkpoint of fused steps counted them in fused.step; without the fused step here, that
         * count becomes the host step. */
        opt->step = plan.has_fused && !opt->fused_state ? plan.fused.step : plan.step;
        memcpy(opt->groups, plan.groups, (size_t)opt->n_groups * sizeof *opt->groups);
    }
    free_load_plan(&plan);
    free(header_copy);
    return status;
}

static fadam_status load_from_bytes(fadam_optimizer *opt, const void *buffer, size_t size, fadam_stream stream) {
    source in;
    fadam_status status;
    fadam_clear_error();
    FADAM_REQUIRE_NOT_NULL(opt, "fadam_load_bytes");
    FADAM_REQUIRE_NOT_NULL(buffer, "fadam_load_bytes");
    if ((status = require_finalized_for(opt, "fadam_load_bytes")) != FADAM_SUCCESS) return status;
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
    source in;
    fadam_status status;
    fadam_clear_error();
    FADAM_REQUIRE_NOT_NULL(opt, "fadam_load");
    FADAM_REQUIRE_NOT_NULL(path, "fadam_load");
    if ((status = require_finalized_for(opt, function)) != FADAM_SUCCESS) return status;
    memset(&in, 0, sizeof in);
    in.path = path;
    in.fd = open(path, O_RDONLY | O_CLOEXEC);
    if (in.fd < 0) return io_fail(function, "opening", path);
    if (fstat(in.fd, &file_status) != 0) {
        status = io_fail(function, "fstat of", path);
        close(in.fd);
        return status;
    }
    if (!S_ISREG(file_status.st_mode)) {
        close(in.fd);
        return fadam_fail(FADAM_ERR_IO, "%s: '%.300s' is not a regular file", function, path);
    }
    in.size = (uint64_t)file_status.st_size;
    /* No piece is longer than the file: a small checkpoint needs no 8 MB. */
    /* Two halves: the checksum reads one piece while it hashes the other (verify_pipelined). */
    in.bounce = (unsigned char *)malloc(2 * bounce_half(&in));
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

/* ---- sharded checkpoints: N ranks' files reassembled for this rank's slices ---- */

typedef struct shard_file {
    source in;
    unsigned char *data; /* the whole file */
    load_plan plan;
    char *header_copy;
    int64_t rank, count;
} shard_file;

typedef struct shard_piece {
    int64_t offset, numel;
} shard_piece;

static int compare_pieces(const void *a, const void *b) {
    const shard_piece *x = (const shard_piece *)a, *y = (const shard_piece *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

static void free_shard_file(shard_file *f) {
    free_load_plan(&f->plan);
    free(f->header_copy);
    free(f->data);
}

/* Reads one rank's file whole and checks it alone: everything fadam_load checks except the match with
 * the registration, the checksum included; then its shard.rank and shard.count (a file without them
 * is the one shard of one rank). */
static fadam_status read_shard_file(const fadam_optimizer *opt, const char *path, shard_file *f, const char *function) {
    struct stat file_status;
    source disk;
    const char *value;
    fadam_status status;
    memset(f, 0, sizeof *f);
    memset(&disk, 0, sizeof disk);
    if (!path) return fadam_fail(FADAM_ERR_NULL_POINTER, "%s: a path is NULL", function);
    disk.path = path;
    disk.fd = open(path, O_RDONLY | O_CLOEXEC);
    if (disk.fd < 0) return io_fail(function, "opening", path);
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
    status = source_read(&disk, 0, f->data, (size_t)disk.size, function);
    close(disk.fd);
    if (status != FADAM_SUCCESS) return status;
    f->in.memory = f->data;
    f->in.fd = -1;
    f->in.path = path;
    f->in.size = disk.size;
    if ((status = read_checked_plan(opt, &f->in, &f->plan, &f->header_copy, function)) != FADAM_SUCCESS ||
        (status = verify_checksum(&f->plan, &f->in, opt, function)) != FADAM_SUCCESS)
        return status;
    f->rank = 0;
    f->count = 1;
    if ((value = find_metadata(&f->plan.parsed, "shard.rank")) != NULL && !parse_count(value, &f->rank))
        return fadam_fail(FADAM_ERR_CORRUPT, "%s: '%.300s': shard.rank \"%.40s\" is not a count", function, path, value);
    if ((value = find_metadata(&f->plan.parsed, "shard.count")) != NULL && !parse_count(value, &f->count))
        return fadam_fail(FADAM_ERR_CORRUPT, "%s: '%.300s': shard.count \"%.40s\" is not a count", function, path, value);
    return FADAM_SUCCESS;
}

/* One state kind of registered tensor t from every file holding a slice of it, into `host` (its numel
 * floats). The files' slices must tile the full tensor exactly. */
static fadam_status gather_tensor(const fadam_optimizer *opt, int64_t t, const shard_file *files, int n_files,
                                  shard_piece *pieces, float *const host[3], const char *function) {
    const fadam_tensor *tensor = &opt->tensors[t];
    const char *name = opt->names[t];
    char key[FADAM_MAX_NAME_LENGTH + 32];
    int64_t want_offset, want_full, end = 0, group;
    int i, kind, n_pieces = 0;
    fadam_status status;
    fadam_tensor_shard_of(opt, t, &want_offset, &want_full);
    for (i = 0; i < n_files; i++) {
        const load_plan *plan = &files[i].plan;
        const char *value;
        int64_t offset, full_numel, numel, lo, hi;
        size_t index;
        load_entry *entry;
        snprintf(key, sizeof key, "%s%s", name, state_suffix[STATE_EXP_AVG]);
        if (!(entry = find_entry(plan, key, &index))) continue;
        numel = (int64_t)entry->numel;
        if (entry->shape_overflows || entry->numel > (uint64_t)INT64_MAX)
            return fadam_fail(FADAM_ERR_CORRUPT, "%s: '%.300s': tensor '%.*s': shape out of range", function,
                              files[i].in.path, NAME_CLIP, name);
        if ((status = file_slice(&plan->parsed, name, numel, &offset, &full_numel, function)) != FADAM_SUCCESS)
            return status;
        if (full_numel != want_full)
            return fadam_fail(FADAM_ERR_MISMATCH, "%s: '%.300s': tensor '%.*s' has %lld elements there, %lld registered",
                              function, files[i].in.path, NAME_CLIP, name, (long long)full_numel, (long long)want_full);
        snprintf(key, sizeof key, "%s.param_dtype", name);
        if ((status = require_metadata(&plan->parsed, key, &value, function)) != FADAM_SUCCESS) return status;
        if (strcmp(value, param_dtype_name(tensor->param_dtype)) != 0)
            return fadam_fail(FADAM_ERR_MISMATCH, "%s: tensor '%.*s': param dtype %.20s in '%.300s', %s registered",
                              function, NAME_CLIP, name, value, files[i].in.path, param_dtype_name(tensor->param_dtype));
        snprintf(key, sizeof key, "%s.group", name);
        if ((status = require_metadata(&plan->parsed, key, &value, function)) != FADAM_SUCCESS) return status;
        if (!parse_count(value, &group) || group != tensor->group)
            return fadam_fail(FADAM_ERR_MISMATCH, "%s: tensor '%.*s': group \"%.40s\" in '%.300s', %d registered",
                              function, NAME_CLIP, name, value, files[i].in.path, tensor->group);
        pieces[n_pieces].offset = offset;
        pieces[n_pieces++].numel = numel;
        lo = offset > want_offset ? offset : want_offset;
        hi = offset + numel < want_offset + tensor->numel ? offset + numel : want_offset + tensor->numel;
        for (kind = 0; kind < state_count(tensor); kind++) {
            snprintf(key, sizeof key, "%s%s", name, state_suffix[kind]);
            entry = find_entry(plan, key, &index);
            if (!entry || strcmp(entry->dtype, "F32") != 0 || entry->n_dims != 1 || (int64_t)entry->numel != numel)
                return fadam_fail(FADAM_ERR_MISMATCH, "%s: '%.300s': tensor '%.*s' %s: missing, or not F32 [%lld]", function,
                                  files[i].in.path, NAME_CLIP, name, state_suffix[kind] + 1, (long long)numel);
            if (lo < hi)
                memcpy(host[kind] + (lo - want_offset),
                       files[i].data + files[i].in.data_offset + entry->begin + (uint64_t)(lo - offset) * sizeof(float),
                       (size_t)(hi - lo) * sizeof(float));
        }
    }
    if (n_pieces == 0)
        return fadam_fail(FADAM_ERR_MISMATCH, "%s: tensor '%.*s' is in none of the %d checkpoint(s)", function, NAME_CLIP,
                          name, n_files);
    qsort(pieces, (size_t)n_pieces, sizeof *pieces, compare_pieces);
    for (i = 0; i < n_pieces; i++) {
        if (pieces[i].numel == 0) continue;
        if (pieces[i].offset != end) break;
        end += pieces[i].numel;
    }
    if (i < n_pieces || end != want_full)
        return fadam_fail(FADAM_ERR_MISMATCH, "%s: tensor '%.*s': the checkpoints' slices do not tile its %lld elements "
                                              "(a gap or an overlap at element %lld)",
                          function, NAME_CLIP, name, (long long)want_full, (long long)end);
    return FADAM_SUCCESS;
}

/* Every file is a shard of the same save: ranks 0..n-1 once each, the same step, groups and counters. */
static fadam_status check_shard_set(const shard_file *files, int n_files, const char *function) {
    int i, j;
    for (i = 0; i < n_files; i++) {
        if (files[i].count != n_files || files[i].rank >= n_files)
            return fadam_fail(FADAM_ERR_MISMATCH, "%s: '%.300s' is shard %lld of %lld, but %d file(s) were given", function,
                              files[i].in.path, (long long)files[i].rank, (long long)files[i].count, n_files);
        for (j = 0; j < i; j++)
            if (files[j].rank == files[i].rank)
                return fadam_fail(FADAM_ERR_MISMATCH, "%s: '%.300s' and '%.300s' are both shard %lld", function,
                                  files[j].in.path, files[i].in.path, (long long)files[i].rank);
        if (files[i].plan.step != files[0].plan.step || files[i].plan.has_fused != files[0].plan.has_fused ||
            memcmp(files[i].plan.groups, files[0].plan.groups, sizeof files[0].plan.groups) != 0 ||
            (files[0].plan.has_fused &&
             (files[i].plan.fused.step != files[0].plan.fused.step ||
              files[i].plan.fused.skipped_total != files[0].plan.fused.skipped_total ||
              files[i].plan.fused.loss_scale != files[0].plan.fused.loss_scale ||
              files[i].plan.fused.good_steps != files[0].plan.fused.good_steps)))
            return fadam_fail(FADAM_ERR_MISMATCH, "%s: '%.300s' and '%.300s' differ in step, hyperparameters or the fused "
                                                  "step's counters: not shards of one save",
                              function, files[0].in.path, files[i].in.path);
    }
    return FADAM_SUCCESS;
}

/* Copies the gathered state and the counters in: the only part that writes. */
static fadam_status commit_gathered(fadam_optimizer *opt, float *const *host, const load_plan *plan,
                                    fadam_stream stream, const char *function) {
    fadam_status status = FADAM_SUCCESS;
    int previous_device = 0;
    int64_t t;
    int kind;
    fadam_step_counters counters = plan->fused;
    void *target = NULL;
    const void *from = plan->has_fused ? (const void *)&counters : (const void *)&plan->step;
    size_t counter_bytes = plan->has_fused ? sizeof counters : sizeof(int64_t);
    if (opt->fused_state)
        target = plan->has_fused ? (void *)&opt->fused_state->counters : (void *)&opt->fused_state->counters.step;
    if (opt->device == FADAM_DEVICE_CUDA &&
        (status = fadam_cuda_enter_device(opt->cuda_device, &previous_device)) != FADAM_SUCCESS)
        return status;
    for (t = 0; t < opt->n_tensors && status == FADAM_SUCCESS; t++)
        for (kind = 0; kind < state_count(&opt->tensors[t]) && status == FADAM_SUCCESS; kind++) {
            size_t bytes = (size_t)opt->tensors[t].numel * sizeof(float);
            float *state = state_pointer(&opt->tensors[t], kind);
            if (bytes == 0) continue;
            if (opt->device == FADAM_DEVICE_CPU) memcpy(state, host[3 * t + kind], bytes);
            else if (cudaMemcpyAsync(state, host[3 * t + kind], bytes, cudaMemcpyHostToDevice, (cudaStream_t)stream) !=
                     cudaSuccess)
                status = fadam_cuda_fail(cudaGetLastError(), "cudaMemcpyAsync(state)", __FILE__, __LINE__);
        }
    if (status == FADAM_SUCCESS && target) {
        if (opt->device == FADAM_DEVICE_CPU) memcpy(target, from, counter_bytes);
        else if (cudaMemcpyAsync(target, from, counter_bytes, cudaMemcpyHostToDevice, (cudaStream_t)stream) != cudaSuccess)
            status = fadam_cuda_fail(cudaGetLastError(), "cudaMemcpyAsync(step counters)", __FILE__, __LINE__);
    }
    /* The host buffers are freed after this returns. */
    if (status == FADAM_SUCCESS && opt->device == FADAM_DEVICE_CUDA &&
        cudaStreamSynchronize((cudaStream_t)stream) != cudaSuccess)
        status = fadam_cuda_fail(cudaGetLastError(), "cudaStreamSynchronize", __FILE__, __LINE__);
    if (opt->device == FADAM_DEVICE_CUDA) fadam_cuda_leave_device(opt->cuda_device, previous_device);
    if (status != FADAM_SUCCESS) {
        char message[512];
        snprintf(message, sizeof message, "%s", fadam_last_error_message());
        return fadam_fail(status, "%s: state partly loaded, load again: %s", function, message);
    }
    opt->step = plan->has_fused && !opt->fused_state ? plan->fused.step : plan->step;
    memcpy(opt->groups, plan->groups, (size_t)opt->n_groups * sizeof *opt->groups);
    return FADAM_SUCCESS;
}

fadam_status fadam_load_shards(fadam_optimizer *opt, const char *const *paths, int n_paths, fadam_stream stream) {
    const char *function = "fadam_load_shards";
    shard_file *files = NULL;
    shard_piece *pieces = NULL;
    float **host = NULL;
    fadam_status status;
    int64_t t;
    int i, kind, n_read = 0;
    fadam_clear_error();
    FADAM_REQUIRE_NOT_NULL(opt, "fadam_load_shards");
    FADAM_REQUIRE_NOT_NULL(paths, "fadam_load_shards");
    if ((status = require_finalized_for(opt, function)) != FADAM_SUCCESS) return status;
    if (n_paths < 1 || n_paths > 65536)
        return fadam_fail(FADAM_ERR_INVALID_VALUE, "%s: n_paths=%d must be in [1, 65536]", function, n_paths);
    FADAM_RANGE_PUSH("load_shards");
    files = (shard_file *)calloc((size_t)n_paths, sizeof *files);
    pieces = (shard_piece *)calloc((size_t)n_paths, sizeof *pieces);
    host = (float **)calloc((size_t)(opt->n_tensors > 0 ? opt->n_tensors : 1) * 3, sizeof *host);
    status = files && pieces && host ? FADAM_SUCCESS
                                     : fadam_fail(FADAM_ERR_OUT_OF_MEMORY, "%s: no host memory for the shard list", function);
    for (i = 0; i < n_paths && status == FADAM_SUCCESS; i++, n_read++) status = read_shard_file(opt, paths[i], &files[i], function);
    if (status == FADAM_SUCCESS) status = check_shard_set(files, n_paths, function);
    for (t = 0; t < opt->n_tensors && status == FADAM_SUCCESS; t++) {
        for (kind = 0; kind < state_count(&opt->tensors[t]); kind++) {
            host[3 * t + kind] = (float *)malloc((size_t)opt->tensors[t].numel * sizeof(float) + 1);
            if (!host[3 * t + kind]) status = fadam_fail(FADAM_ERR_OUT_OF_MEMORY, "%s: no host memory for the state", function);
        }
        if (status == FADAM_SUCCESS) status = gather_tensor(opt, t, files, n_paths, pieces, &host[3 * t], function);
    }
    /* Everything read and checked: from here on the optimizer changes. */
    if (status == FADAM_SUCCESS) status = commit_gathered(opt, host, &files[0].plan, stream, function);
    if (host)
        for (t = 0; t < 3 * (opt->n_tensors > 0 ? opt->n_tensors : 1); t++) free(host[t]);
    free(host);
    free(pieces);
    for (i = 0; files && i < n_paths; i++) free_shard_file(&files[i]);
    free(files);
    (void)n_read;
    FADAM_RANGE_POP();
    return status;
}
