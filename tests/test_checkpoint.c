/* test_checkpoint.c - fadam_save / fadam_load: round trips on the CPU and the GPU, resume equals
 * uninterrupted, atomic replacement, a corpus of bad checkpoints each refused with its own error and
 * the state untouched, and Python's safetensors reading what we write.
 *   build/test_checkpoint                      run every case
 *   build/test_checkpoint --write-corpus DIR   write the fuzz seed corpus (make fuzz-corpus) */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cuda_runtime.h>

#include "check.h"
#include "checkpoint_blob.h"
#include "fusedadam.h"
#include "fuzz/fuzz_model.h"
#include "sha256.h"

static char temp_dir[256];

/* ---- models: a list of tensors registered on one device, with their params and grads ---- */

typedef struct tensor_spec {
    char name[64];
    int named; /* 0: registered with name NULL, so it is called by its index */
    int64_t numel;
    fadam_dtype param_dtype, grad_dtype;
    int group;
} tensor_spec;

typedef struct model_spec {
    tensor_spec *tensors;
    int n_tensors;
    int n_groups;
} model_spec;

typedef struct model {
    fadam_optimizer *opt;
    fadam_device_kind device;
    model_spec spec;
    void **params, **grads;
} model;

static void *buffer_alloc(fadam_device_kind device, size_t bytes) {
    void *pointer = NULL;
    if (bytes == 0) bytes = 256;
    if (device == FADAM_DEVICE_CUDA) return cudaMalloc(&pointer, bytes) == cudaSuccess ? pointer : NULL;
    return aligned_alloc(256, (bytes + 255) / 256 * 256);
}

static void buffer_free(fadam_device_kind device, void *pointer) {
    if (device == FADAM_DEVICE_CUDA) (void)cudaFree(pointer);
    else free(pointer);
}

static int buffer_upload(fadam_device_kind device, void *destination, const void *source, size_t bytes) {
    if (bytes == 0) return 1;
    if (device == FADAM_DEVICE_CUDA) return cudaMemcpy(destination, source, bytes, cudaMemcpyHostToDevice) == cudaSuccess;
    memcpy(destination, source, bytes);
    return 1;
}

static int buffer_download(fadam_device_kind device, void *destination, const void *source, size_t bytes) {
    if (bytes == 0) return 1;
    if (device == FADAM_DEVICE_CUDA) return cudaMemcpy(destination, source, bytes, cudaMemcpyDeviceToHost) == cudaSuccess;
    memcpy(destination, source, bytes);
    return 1;
}

/* Random values of a dtype, kept in a tame range: fp32 normal, 16-bit ones from random bits with a
 * bounded exponent (no inf or NaN). */
static void random_values(fadam_dtype dtype, void *host, int64_t n, uint64_t *rng) {
    int64_t i;
    for (i = 0; i < n; i++) {
        uint64_t r = check_rng_next(rng);
        if (dtype == FADAM_FLOAT32) ((float *)host)[i] = (float)check_rng_normal(rng);
        else if (dtype == FADAM_BFLOAT16)
            ((uint16_t *)host)[i] = (uint16_t)((r & 0x8000) | ((120 + r % 9) << 7) | ((r >> 8) & 0x7F));
        else ((uint16_t *)host)[i] = (uint16_t)((r & 0x8000) | ((10 + r % 7) << 10) | ((r >> 8) & 0x3FF));
    }
}

/* The usual mix: fp32 with fp32 grads, bf16 with bf16, fp16 with fp32, an empty tensor, an unnamed
 * one, and a name that needs JSON escapes and UTF-8. Element counts are random, not multiples of 4. */
static void standard_spec(model_spec *spec, tensor_spec storage[6], uint64_t *rng) {
    static const char *names[6] = {"wte", "h.0.attn.weight", "h.0.ln.bias", "empty", "", "odd \"n\\ame\"\n\xc3\xbc"};
    static const fadam_dtype params[6] = {FADAM_FLOAT32, FADAM_BFLOAT16, FADAM_FLOAT16,
                                          FADAM_FLOAT32, FADAM_BFLOAT16, FADAM_FLOAT32};
    static const fadam_dtype grads[6] = {FADAM_FLOAT32, FADAM_BFLOAT16, FADAM_FLOAT32,
                                         FADAM_FLOAT32, FADAM_BFLOAT16, FADAM_FLOAT32};
    static const int groups[6] = {0, 0, 1, 1, 1, 0};
    int i;
    for (i = 0; i < 6; i++) {
        snprintf(storage[i].name, sizeof storage[i].name, "%s", names[i]);
        storage[i].named = i != 4;
        storage[i].numel = i == 3 ? 0 : 1 + (int64_t)(check_rng_next(rng) % (i == 0 ? 3000 : 700));
        storage[i].param_dtype = params[i];
        storage[i].grad_dtype = grads[i];
        storage[i].group = groups[i];
    }
    spec->tensors = storage;
    spec->n_tensors = 6;
    spec->n_groups = 2;
}

static void model_destroy(model *m) {
    int i;
    fadam_destroy(m->opt);
    for (i = 0; m->params && i < m->spec.n_tensors; i++) {
        buffer_free(m->device, m->params[i]);
        buffer_free(m->device, m->grads[i]);
    }
    free(m->params);
    free(m->grads);
    memset(m, 0, sizeof *m);
}

/* Registers the spec with params drawn from `param_seed`; group 1 uses Adam+L2 without decay.
 * `fused` (optional) configures the fused step. */
static fadam_status model_create_fused(model *m, const model_spec *spec, fadam_device_kind device, uint64_t param_seed,
                                       const fadam_fused_step_config *fused) {
    fadam_hparams second = fadam_hparams_default();
    fadam_status status;
    uint64_t rng = param_seed;
    int i, g;
    memset(m, 0, sizeof *m);
    m->device = device;
    m->spec = *spec;
    m->params = (void **)calloc((size_t)spec->n_tensors + 1, sizeof(void *));
    m->grads = (void **)calloc((size_t)spec->n_tensors + 1, sizeof(void *));
    if ((status = fadam_create(&m->opt, device, 0, NULL, NULL)) != FADAM_SUCCESS) return status;
    second.mode = FADAM_ADAM_L2;
    second.weight_decay = 0.0f;
    second.maximize = 1;
    for (g = 1; g < spec->n_groups; g++)
        if ((status = fadam_add_group(m->opt, &second, NULL)) != FADAM_SUCCESS) return status;
    for (i = 0; i < spec->n_tensors; i++) {
        const tensor_spec *t = &spec->tensors[i];
        size_t param_bytes = (size_t)t->numel * fadam_dtype_size(t->param_dtype);
        void *host = malloc(param_bytes + 1);
        m->params[i] = buffer_alloc(device, param_bytes);
        m->grads[i] = buffer_alloc(device, (size_t)t->numel * fadam_dtype_size(t->grad_dtype));
        if (!host || !m->params[i] || !m->grads[i]) {
            free(host);
            return FADAM_ERR_OUT_OF_MEMORY;
        }
        random_values(t->param_dtype, host, t->numel, &rng);
        buffer_upload(device, m->params[i], host, param_bytes);
        free(host);
        status = fadam_add_tensor(m->opt, t->named ? t->name : NULL, m->params[i], m->grads[i], t->numel,
                                  t->param_dtype, t->grad_dtype, t->group, NULL);
        if (status != FADAM_SUCCESS) return status;
    }
    if (fused && (status = fadam_configure_fused_step(m->opt, fused)) != FADAM_SUCCESS) return status;
    return fadam_finalize(m->opt, NULL);
}

static fadam_status model_create(model *m, const model_spec *spec, fadam_device_kind device, uint64_t param_seed) {
    return model_create_fused(m, spec, device, param_seed, NULL);
}

/* Steps first..last with gradients and a learning-rate schedule that depend on the step number
 * only, so two models that take the same steps see the same inputs. With `fused`, fadam_fused_step
 * takes the steps, and step `inf_step` gets an inf gradient (a skipped step). */
static int model_train_with(model *m, int64_t first, int64_t last, uint64_t grad_seed, int fused, int64_t inf_step) {
    int64_t s;
    int i, g;
    for (s = first; s <= last; s++) {
        uint64_t rng = grad_seed ^ ((uint64_t)s * 0xD1B54A32D192ED03ull);
        for (i = 0; i < m->spec.n_tensors; i++) {
            const tensor_spec *t = &m->spec.tensors[i];
            size_t bytes = (size_t)t->numel * fadam_dtype_size(t->grad_dtype);
            void *host = malloc(bytes + 1);
            if (!host) return 0;
            random_values(t->grad_dtype, host, t->numel, &rng);
            if (s == inf_step && i == 0 && t->numel > 0) ((float *)host)[0] = __builtin_inff();
            buffer_upload(m->device, m->grads[i], host, bytes);
            free(host);
        }
        for (g = 0; g < m->spec.n_groups; g++)
            if (fadam_set_lr(m->opt, g, 1e-3f * (float)(1 + s % 4) / (float)(g + 1)) != FADAM_SUCCESS) return 0;
        if ((fused ? fadam_fused_step(m->opt, NULL) : fadam_step(m->opt, NULL)) != FADAM_SUCCESS) return 0;
        /* The next step's gradients overwrite these buffers: let this step read them first. */
        if (m->device == FADAM_DEVICE_CUDA && cudaDeviceSynchronize() != cudaSuccess) return 0;
    }
    return 1;
}

static int model_train(model *m, int64_t first, int64_t last, uint64_t grad_seed) {
    return model_train_with(m, first, last, grad_seed, 0, -1);
}

/* ---- snapshots: everything load may change, to compare before and after ---- */

typedef struct snapshot {
    unsigned char *state;
    size_t bytes;
    int64_t step;
    fadam_hparams groups[FADAM_MAX_GROUPS];
    int n_groups;
} snapshot;

static void snapshot_take(const model *m, snapshot *out) {
    size_t used = 0, total = 0;
    int i, kind;
    memset(out, 0, sizeof *out);
    for (i = 0; i < m->spec.n_tensors; i++) total += 3 * (size_t)m->spec.tensors[i].numel * sizeof(float);
    out->state = (unsigned char *)calloc(total + 1, 1);
    for (i = 0; i < m->spec.n_tensors; i++) {
        float *pointers[3] = {NULL, NULL, NULL};
        size_t bytes = (size_t)m->spec.tensors[i].numel * sizeof(float);
        fadam_get_state(m->opt, i, &pointers[2], &pointers[0], &pointers[1]);
        for (kind = 0; kind < 3; kind++) {
            if (!pointers[kind]) continue;
            buffer_download(m->device, out->state + used, pointers[kind], bytes);
            used += bytes;
        }
    }
    out->bytes = used;
    fadam_get_step(m->opt, &out->step);
    fadam_num_groups(m->opt, &out->n_groups);
    for (i = 0; i < out->n_groups; i++) fadam_get_hparams(m->opt, i, &out->groups[i]);
}

static void snapshot_free(snapshot *s) { free(s->state); }

static int hparams_equal(const fadam_hparams *a, const fadam_hparams *b) {
    return memcmp(&a->lr, &b->lr, sizeof(float)) == 0 && memcmp(&a->beta1, &b->beta1, sizeof(float)) == 0 &&
           memcmp(&a->beta2, &b->beta2, sizeof(float)) == 0 && memcmp(&a->eps, &b->eps, sizeof(float)) == 0 &&
           memcmp(&a->weight_decay, &b->weight_decay, sizeof(float)) == 0 && a->mode == b->mode &&
           a->bias_correction == b->bias_correction && a->maximize == b->maximize;
}

/* "" when equal, else what differs first. */
static const char *snapshot_difference(const snapshot *a, const snapshot *b) {
    static char why[160];
    int g;
    if (a->step != b->step) {
        snprintf(why, sizeof why, "step %lld vs %lld", (long long)a->step, (long long)b->step);
        return why;
    }
    if (a->n_groups != b->n_groups) return "group count";
    for (g = 0; g < a->n_groups; g++)
        if (!hparams_equal(&a->groups[g], &b->groups[g])) {
            snprintf(why, sizeof why, "group %d hyperparameters (lr %g vs %g)", g, a->groups[g].lr, b->groups[g].lr);
            return why;
        }
    if (a->bytes != b->bytes) return "state size";
    if (a->bytes && memcmp(a->state, b->state, a->bytes) != 0) {
        size_t i = 0;
        while (a->state[i] == b->state[i]) i++;
        snprintf(why, sizeof why, "state byte %zu of %zu", i, a->bytes);
        return why;
    }
    return "";
}

/* Params downloaded to host bytes, for resume comparisons. */
static unsigned char *params_copy(const model *m, size_t *bytes_out) {
    size_t total = 0, used = 0;
    unsigned char *copy;
    int i;
    for (i = 0; i < m->spec.n_tensors; i++)
        total += (size_t)m->spec.tensors[i].numel * fadam_dtype_size(m->spec.tensors[i].param_dtype);
    copy = (unsigned char *)malloc(total + 1);
    for (i = 0; copy && i < m->spec.n_tensors; i++) {
        size_t bytes = (size_t)m->spec.tensors[i].numel * fadam_dtype_size(m->spec.tensors[i].param_dtype);
        buffer_download(m->device, copy + used, m->params[i], bytes);
        used += bytes;
    }
    *bytes_out = total;
    return copy;
}

static void params_restore(model *m, const unsigned char *copy) {
    size_t used = 0;
    int i;
    for (i = 0; i < m->spec.n_tensors; i++) {
        size_t bytes = (size_t)m->spec.tensors[i].numel * fadam_dtype_size(m->spec.tensors[i].param_dtype);
        buffer_upload(m->device, m->params[i], copy + used, bytes);
        used += bytes;
    }
}

/* ---- checkpoint bytes and edits of their header ---- */

/* The header as a C string (malloc'd). */
static char *header_text(const blob *b) {
    size_t length = blob_header_length(b);
    char *text = (char *)malloc(length + 1);
    memcpy(text, b->bytes + 8, length);
    text[length] = '\0';
    return text;
}

/* A checkpoint with `header` (any length) in front of b's data section. */
static blob with_header(const blob *b, const char *header, size_t header_length) {
    size_t data = b->size - 8 - blob_header_length(b);
    blob out;
    int i;
    out.size = 8 + header_length + data;
    out.bytes = (unsigned char *)malloc(out.size + 1);
    for (i = 0; i < 8; i++) out.bytes[i] = (unsigned char)((uint64_t)header_length >> (8 * i));
    memcpy(out.bytes + 8, header, header_length);
    memcpy(out.bytes + 8 + header_length, b->bytes + 8 + blob_header_length(b), data);
    return out;
}

/* b with the first `find` in its header replaced; size 0 when `find` is not there. */
static blob replace_in_header(const blob *b, const char *find, const char *replacement) {
    char *text = header_text(b), *at = strstr(text, find), *edited;
    blob out = {NULL, 0};
    size_t length;
    if (at) {
        length = strlen(text) - strlen(find) + strlen(replacement);
        edited = (char *)malloc(length + 1);
        memcpy(edited, text, (size_t)(at - text));
        strcpy(edited + (at - text), replacement);
        strcat(edited, at + strlen(find));
        out = with_header(b, edited, length);
        free(edited);
    }
    free(text);
    return out;
}

/* b with one field of one entry ("dtype", "shape" or "data_offsets") given a new JSON value. */
static blob edit_entry(const blob *b, const char *entry, const char *field, const char *value) {
    char *text = header_text(b), key[160], *object, *at, *end, *edited;
    blob out = {NULL, 0};
    snprintf(key, sizeof key, "\"%s\":{", entry);
    object = strstr(text, key);
    snprintf(key, sizeof key, "\"%s\":", field);
    at = object ? strstr(object, key) : NULL;
    if (at) {
        at += strlen(key);
        end = at + 1;
        while (*end && *end != (*at == '[' ? ']' : '"')) end++;
        end++;
        edited = (char *)malloc(strlen(text) + strlen(value) + 1);
        memcpy(edited, text, (size_t)(at - text));
        strcpy(edited + (at - text), value);
        strcat(edited, end);
        out = with_header(b, edited, strlen(edited));
        free(edited);
    }
    free(text);
    return out;
}

static int entry_offsets(const blob *b, const char *entry, unsigned long long *begin, unsigned long long *end) {
    char *text = header_text(b), key[160], *at;
    int found = 0;
    snprintf(key, sizeof key, "\"%s\":{", entry);
    at = strstr(text, key);
    if (at && (at = strstr(at, "\"data_offsets\":[")) != NULL)
        found = sscanf(at + strlen("\"data_offsets\":["), "%llu,%llu", begin, end) == 2;
    free(text);
    return found;
}

static blob blob_copy(const blob *b) {
    blob out;
    out.size = b->size;
    out.bytes = (unsigned char *)malloc(b->size + 1);
    memcpy(out.bytes, b->bytes, b->size);
    return out;
}

static int write_file(const char *path, const void *bytes, size_t size) {
    FILE *file = fopen(path, "wb");
    int ok = file && fwrite(bytes, 1, size, file) == size;
    if (file && fclose(file) != 0) ok = 0;
    return ok;
}

static blob read_file(const char *path) {
    blob out = {NULL, 0};
    FILE *file = fopen(path, "rb");
    long length;
    if (!file) return out;
    if (fseek(file, 0, SEEK_END) == 0 && (length = ftell(file)) >= 0 && fseek(file, 0, SEEK_SET) == 0) {
        out.bytes = (unsigned char *)malloc((size_t)length + 1);
        if (out.bytes && fread(out.bytes, 1, (size_t)length, file) == (size_t)length) out.size = (size_t)length;
    }
    fclose(file);
    return out;
}

static int count_temporary_files(void) {
    DIR *directory = opendir(temp_dir);
    struct dirent *item;
    int count = 0;
    if (!directory) return -1;
    while ((item = readdir(directory)) != NULL)
        if (strstr(item->d_name, ".tmp.") || strncmp(item->d_name, ".fadam-", 7) == 0) count++;
    closedir(directory);
    return count;
}

/* ---- the bad-file corpus: each case one line, its status and message, the state untouched ---- */

typedef struct corpus {
    model target;
    snapshot before;
    const blob *good;
} corpus;

/* Loads `bad` into the target; expects `expected` with `message_part` in the message, and the
 * optimizer exactly as before. Frees bad. Returns 1 when it held. */
static int expect_refused_quiet(corpus *c, blob bad, fadam_status expected, const char *message_part, char *why,
                                size_t why_size) {
    snapshot after;
    fadam_status status;
    char message[512];
    const char *difference;
    int held = 1;
    why[0] = '\0';
    if (!bad.bytes) {
        snprintf(why, why_size, "the test could not build this case (edit did not apply)");
        return 0;
    }
    status = fadam_load_bytes(c->target.opt, bad.bytes, bad.size, NULL);
    snprintf(message, sizeof message, "%s", fadam_last_error_message());
    snapshot_take(&c->target, &after);
    difference = snapshot_difference(&c->before, &after);
    if (status != expected) {
        snprintf(why, why_size, "status %s, expected %s; message: %s", fadam_status_string(status),
                 fadam_status_string(expected), message);
        held = 0;
    } else if (message_part && !strstr(message, message_part)) {
        snprintf(why, why_size, "message lacks \"%s\": %s", message_part, message);
        held = 0;
    } else if (difference[0]) {
        snprintf(why, why_size, "refused, but the state changed: %s", difference);
        held = 0;
    }
    snapshot_free(&after);
    free(bad.bytes);
    return held;
}

static void expect_refused(corpus *c, const char *name, blob bad, fadam_status expected, const char *message_part) {
    char case_name[128], why[1024];
    check_case_begin();
    snprintf(case_name, sizeof case_name, "bad_file/%s", name);
    CHECK(expect_refused_quiet(c, bad, expected, message_part, why, sizeof why), "%.400s", why);
    check_case_end(case_name);
}

static void bad_file_corpus(uint64_t seed) {
    tensor_spec storage[6], other_storage[7];
    model_spec spec, other;
    model source, variant;
    corpus c;
    blob good, b;
    char *text, find[256], replacement[512], why[1024];
    size_t header_length, i;
    uint64_t rng = seed;
    unsigned long long begin, end, sq_begin, sq_end;
    int ok;

    standard_spec(&spec, storage, &rng);
    if (model_create(&source, &spec, FADAM_DEVICE_CPU, seed + 1) != FADAM_SUCCESS || !model_train(&source, 1, 3, seed + 2) ||
        model_create(&c.target, &spec, FADAM_DEVICE_CPU, seed + 3) != FADAM_SUCCESS || !model_train(&c.target, 1, 2, seed + 4)) {
        check_case_begin();
        CHECK(0, "cannot set up the models: %s", fadam_last_error_message());
        check_case_end("bad_file/setup");
        return;
    }
    good = blob_of(source.opt);
    c.good = &good;
    snapshot_take(&c.target, &c.before);
    header_length = blob_header_length(&good);
    text = header_text(&good);

    /* Truncated at every byte of the length prefix and the header, and inside every entry's data. */
    check_case_begin();
    for (i = 0; i <= 8 + header_length && !check_case_failed; i++) {
        b = blob_copy(&good);
        b.size = i;
        ok = expect_refused_quiet(&c, b, FADAM_ERR_CORRUPT,
                                  i < 8 ? "shorter than the 8-byte header length"
                                  : i < 8 + header_length ? "reaches past the end"
                                                          : "reach past the",
                                  why, sizeof why);
        CHECK(ok, "cut at byte %zu: %.400s", i, why);
    }
    for (i = 0; i < 6 && !check_case_failed; i++) {
        static const char *suffixes[3] = {".exp_avg", ".exp_avg_sq", ".master"};
        int kind;
        for (kind = 0; kind < 3; kind++) {
            char entry[128];
            snprintf(entry, sizeof entry, "%.60s%s", storage[i].named ? storage[i].name : "4", suffixes[kind]);
            if (!entry_offsets(&good, entry, &begin, &end) || end == begin) continue;
            b = blob_copy(&good);
            b.size = 8 + header_length + (size_t)begin + (size_t)(end - begin) / 2;
            ok = expect_refused_quiet(&c, b, FADAM_ERR_CORRUPT, "reach past the", why, sizeof why);
            CHECK(ok, "cut inside %.60s: %.300s", entry, why);
        }
    }
    b = blob_copy(&good);
    b.size--;
    CHECK(expect_refused_quiet(&c, b, FADAM_ERR_CORRUPT, "reach past the", why, sizeof why), "cut last byte: %.400s", why);
    check_case_end("bad_file/truncated_at_every_region");

    /* The header length. */
    b = blob_copy(&good);
    memset(b.bytes, 0, 8);
    expect_refused(&c, "header_length_zero", b, FADAM_ERR_CORRUPT, "header length is 0");
    b = blob_copy(&good);
    memset(b.bytes, 0xFF, 8);
    expect_refused(&c, "header_length_minus_one", b, FADAM_ERR_CORRUPT, "negative (-1 as a signed");
    b = blob_copy(&good);
    b.bytes[7] = 0x80;
    expect_refused(&c, "header_length_negative", b, FADAM_ERR_CORRUPT, "negative");
    b = blob_copy(&good);
    b.bytes[5] = 0x01; /* 2^40 and a bit */
    expect_refused(&c, "header_length_huge", b, FADAM_ERR_CORRUPT, "reaches past the end");
    {
        blob big;
        big.size = (size_t)(100u << 20) + 64;
        big.bytes = (unsigned char *)calloc(big.size, 1);
        if (big.bytes) {
            uint64_t length = (uint64_t)(100u << 20) + 1;
            int k;
            for (k = 0; k < 8; k++) big.bytes[k] = (unsigned char)(length >> (8 * k));
            big.bytes[8] = '{';
        }
        expect_refused(&c, "header_length_over_limit", big, FADAM_ERR_CORRUPT, "limit");
    }
    b = blob_copy(&good);
    b.bytes[0] = (unsigned char)(b.bytes[0] + 8); /* the header swallows data bytes */
    expect_refused(&c, "header_length_into_data", b, FADAM_ERR_CORRUPT, NULL);

    /* Malformed JSON. */
    expect_refused(&c, "json_not_an_object", replace_in_header(&good, "{\"__metadata__\"", "[\"__metadata__\""),
                   FADAM_ERR_CORRUPT, "does not start with '{'");
    {
        char *blank = (char *)malloc(header_length + 1);
        memset(blank, ' ', header_length);
        expect_refused(&c, "json_all_spaces", with_header(&good, blank, header_length), FADAM_ERR_CORRUPT,
                       "does not start with '{'");
        free(blank);
    }
    {
        size_t last = strlen(text);
        char *cut;
        while (last && text[last - 1] == ' ') last--;
        cut = (char *)malloc(last + 1);
        memcpy(cut, text, last - 1);
        expect_refused(&c, "json_missing_closing_brace", with_header(&good, cut, last - 1), FADAM_ERR_CORRUPT,
                       "expected ',' or '}'");
        memcpy(cut, text, last - 1);
        cut[last - 1] = ',';
        cut[last] = '}';
        expect_refused(&c, "json_trailing_comma", with_header(&good, cut, last + 1), FADAM_ERR_CORRUPT,
                       "expected a string");
        memcpy(cut, text, last);
        cut[last] = 'x';
        expect_refused(&c, "json_garbage_after_object", with_header(&good, cut, last + 1), FADAM_ERR_CORRUPT,
                       "bytes after the JSON object");
        free(cut);
    }
    expect_refused(&c, "json_unterminated_string", with_header(&good, "{\"__metadata__\":{\"chec", 22),
                   FADAM_ERR_CORRUPT, "unterminated string");
    expect_refused(&c, "json_bad_escape", replace_in_header(&good, "\"format\"", "\"for\\qmat\""), FADAM_ERR_CORRUPT,
                   "unknown escape");
    expect_refused(&c, "json_bad_unicode_escape", replace_in_header(&good, "\"format\"", "\"for\\u12G4mat\""),
                   FADAM_ERR_CORRUPT, "bad \\u escape");
    expect_refused(&c, "json_control_character", replace_in_header(&good, "\"format\"", "\"for\x01mat\""),
                   FADAM_ERR_CORRUPT, "control character");
    expect_refused(&c, "json_invalid_utf8", replace_in_header(&good, "\"format\"", "\"for\xc3\x28mat\""),
                   FADAM_ERR_CORRUPT, "invalid UTF-8");
    expect_refused(&c, "json_overlong_utf8", replace_in_header(&good, "\"format\"", "\"for\xc0\xafmat\""),
                   FADAM_ERR_CORRUPT, "invalid UTF-8");
    expect_refused(&c, "json_lone_surrogate", replace_in_header(&good, "\"format\"", "\"for\\ud800mat\""),
                   FADAM_ERR_CORRUPT, "unpaired surrogate");
    expect_refused(&c, "json_nul_escape", replace_in_header(&good, "\"format\"", "\"for\\u0000mat\""),
                   FADAM_ERR_CORRUPT, "NUL");
    expect_refused(&c, "json_missing_colon", replace_in_header(&good, "\"format\":", "\"format\" "),
                   FADAM_ERR_CORRUPT, "expected ':'");
    expect_refused(&c, "json_duplicate_metadata_key", replace_in_header(&good, "\"format\":", "\"step\":\"1\",\"format\":"),
                   FADAM_ERR_CORRUPT, "duplicate __metadata__ key 'step'");
    expect_refused(&c, "json_duplicate_metadata_block",
                   replace_in_header(&good, "{\"__metadata__\":", "{\"__metadata__\":{},\"__metadata__\":"),
                   FADAM_ERR_CORRUPT, "duplicate key \"__metadata__\"");
    {
        char *object = strstr(text, "\"wte.exp_avg\":{"), *close = object ? strchr(object, '}') : NULL;
        if (close) {
            snprintf(find, sizeof find, "%.*s", (int)(close - object + 1), object);
            snprintf(replacement, sizeof replacement, "%s,%s", find, find);
        }
        expect_refused(&c, "json_duplicate_tensor_key", close ? replace_in_header(&good, find, replacement) : (blob){NULL, 0},
                       FADAM_ERR_CORRUPT, "duplicate key 'wte.exp_avg'");
    }
    expect_refused(&c, "json_duplicate_field", edit_entry(&good, "wte.exp_avg", "dtype", "\"F32\",\"dtype\":\"F32\""),
                   FADAM_ERR_CORRUPT, "duplicate key \"dtype\"");
    expect_refused(&c, "json_metadata_value_not_string", replace_in_header(&good, "\"format\":\"fusedadam.optimizer\"",
                                                                           "\"format\":7"),
                   FADAM_ERR_CORRUPT, "not a string");
    expect_refused(&c, "json_nested_too_deep", edit_entry(&good, "wte.exp_avg", "shape", "[[[[[1]]]]]"),
                   FADAM_ERR_CORRUPT, "expected an integer");
    expect_refused(&c, "json_entry_not_object", replace_in_header(&good, "\"wte.exp_avg\":{", "\"wte.exp_avg\":[{"),
                   FADAM_ERR_CORRUPT, "not an object");
    expect_refused(&c, "json_literal", edit_entry(&good, "wte.exp_avg", "shape", "[true]"), FADAM_ERR_CORRUPT,
                   "expected an integer");
    expect_refused(&c, "json_fraction", edit_entry(&good, "wte.exp_avg", "shape", "[1.5]"), FADAM_ERR_CORRUPT,
                   "not an integer");
    expect_refused(&c, "json_exponent", edit_entry(&good, "wte.exp_avg", "shape", "[1e3]"), FADAM_ERR_CORRUPT,
                   "not an integer");
    expect_refused(&c, "json_leading_zero", edit_entry(&good, "wte.exp_avg", "shape", "[01]"), FADAM_ERR_CORRUPT,
                   "leading zero");
    expect_refused(&c, "json_negative_offset", edit_entry(&good, "wte.exp_avg", "data_offsets", "[-4,0]"),
                   FADAM_ERR_CORRUPT, "negative number");
    expect_refused(&c, "json_number_over_int64", edit_entry(&good, "wte.exp_avg", "shape", "[99999999999999999999]"),
                   FADAM_ERR_CORRUPT, "larger than 2^63-1");
    expect_refused(&c, "json_three_offsets", edit_entry(&good, "wte.exp_avg", "data_offsets", "[0,4,8]"),
                   FADAM_ERR_CORRUPT, "exactly two integers");
    expect_refused(&c, "json_unknown_entry_key", edit_entry(&good, "wte.exp_avg", "dtype", "\"F32\",\"strides\":[1]"),
                   FADAM_ERR_CORRUPT, "unknown key");
    expect_refused(&c, "json_entry_lacks_dtype", replace_in_header(&good, "\"wte.exp_avg\":{\"dtype\":\"F32\",",
                                                                   "\"wte.exp_avg\":{"),
                   FADAM_ERR_CORRUPT, "lacks dtype");
    expect_refused(&c, "json_empty_entry", replace_in_header(&good, "\"wte.exp_avg\":{", "\"wte.exp_avg\":{},\"x\":{"),
                   FADAM_ERR_CORRUPT, "empty tensor entry");
    expect_refused(&c, "json_too_many_dims",
                   edit_entry(&good, "wte.exp_avg", "shape", "[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1]"),
                   FADAM_ERR_CORRUPT, "more than 32 dimensions");

    /* dtypes and shapes. */
    expect_refused(&c, "dtype_unknown", edit_entry(&good, "wte.exp_avg", "dtype", "\"F33\""), FADAM_ERR_CORRUPT,
                   "unknown dtype \"F33\"");
    expect_refused(&c, "dtype_wrong", edit_entry(&good, "wte.exp_avg_sq", "dtype", "\"I32\""), FADAM_ERR_MISMATCH,
                   "tensor 'wte' exp_avg_sq: wrong dtype: I32 in the checkpoint, F32 expected");
    expect_refused(&c, "dtype_wrong_size", edit_entry(&good, "wte.exp_avg", "dtype", "\"BF16\""), FADAM_ERR_CORRUPT,
                   "of BF16 needs");
    expect_refused(&c, "shape_overflows_64_bits", edit_entry(&good, "wte.exp_avg", "shape", "[4294967296,4294967296,2]"),
                   FADAM_ERR_CORRUPT, "overflows 64 bits");
    expect_refused(&c, "shape_bytes_overflow_64_bits", edit_entry(&good, "wte.exp_avg", "shape", "[4611686018427387904]"),
                   FADAM_ERR_CORRUPT, "overflows 64 bits");
    snprintf(replacement, sizeof replacement, "[%lld]", (long long)storage[0].numel + 1);
    expect_refused(&c, "shape_disagrees_with_offsets", edit_entry(&good, "wte.exp_avg", "shape", replacement),
                   FADAM_ERR_CORRUPT, "span");

    /* Byte ranges. */
    entry_offsets(&good, "wte.exp_avg", &begin, &end);
    entry_offsets(&good, "wte.exp_avg_sq", &sq_begin, &sq_end);
    snprintf(replacement, sizeof replacement, "[%llu,%llu]", end, begin);
    expect_refused(&c, "offsets_reversed", edit_entry(&good, "wte.exp_avg", "data_offsets", replacement),
                   FADAM_ERR_CORRUPT, "end before they begin");
    snprintf(replacement, sizeof replacement, "[%llu,%llu]", (unsigned long long)good.size,
             (unsigned long long)good.size + (end - begin));
    expect_refused(&c, "offsets_out_of_range", edit_entry(&good, "wte.exp_avg", "data_offsets", replacement),
                   FADAM_ERR_CORRUPT, "reach past the");
    snprintf(replacement, sizeof replacement, "[%llu,%llu]", begin, end);
    expect_refused(&c, "offsets_overlapping", edit_entry(&good, "wte.exp_avg_sq", "data_offsets", replacement),
                   FADAM_ERR_CORRUPT, "overlap");
    {
        /* A hole: the last entry in data (= name) order moved 4 bytes on, the data grown by 4. */
        const char *last_name = NULL;
        unsigned long long last_begin = 0, last_end = 0;
        int t, kind;
        static const char *suffixes[3] = {".exp_avg", ".exp_avg_sq", ".master"};
        char entry[128], best[128] = "";
        for (t = 0; t < 6; t++)
            for (kind = 0; kind < 3; kind++) {
                unsigned long long eb, ee;
                snprintf(entry, sizeof entry, "%.60s%s", storage[t].named ? storage[t].name : "4", suffixes[kind]);
                if (strchr(entry, '"') || !entry_offsets(&good, entry, &eb, &ee)) continue;
                if (ee > last_end || (ee == last_end && ee > eb)) {
                    last_end = ee, last_begin = eb;
                    snprintf(best, sizeof best, "%s", entry);
                    last_name = best;
                }
            }
        if (last_name && last_end == good.size - 8 - header_length) {
            blob grown;
            snprintf(replacement, sizeof replacement, "[%llu,%llu]", last_begin + 4, last_end + 4);
            b = edit_entry(&good, last_name, "data_offsets", replacement);
            grown.size = b.size + 4;
            grown.bytes = (unsigned char *)calloc(grown.size, 1);
            memcpy(grown.bytes, b.bytes, b.size);
            free(b.bytes);
            expect_refused(&c, "offsets_leave_a_hole", grown, FADAM_ERR_CORRUPT, "4 data bytes before entry");
        } else {
            expect_refused(&c, "offsets_leave_a_hole", (blob){NULL, 0}, FADAM_ERR_CORRUPT, NULL);
        }
    }
    b = blob_copy(&good);
    b.bytes = (unsigned char *)realloc(b.bytes, b.size + 3);
    memset(b.bytes + b.size, 0, 3);
    b.size += 3;
    expect_refused(&c, "offsets_trailing_bytes", b, FADAM_ERR_CORRUPT, "last 3 data bytes belong to no entry");

    /* Names and registration. */
    expect_refused(&c, "name_missing_master", replace_in_header(&good, "\"h.0.ln.bias.master\"", "\"h.0.ln.bias.masterX\""),
                   FADAM_ERR_MISMATCH, "tensor 'h.0.ln.bias' master: missing from the checkpoint");
    {
        /* The target registers one tensor less than the checkpoint has: "extra". Built from a
         * model with a 7th tensor. */
        memcpy(other_storage, storage, sizeof storage);
        other_storage[6] = storage[0];
        snprintf(other_storage[6].name, sizeof other_storage[6].name, "lm_head");
        other.tensors = other_storage;
        other.n_tensors = 7;
        other.n_groups = 2;
        if (model_create(&variant, &other, FADAM_DEVICE_CPU, seed + 5) == FADAM_SUCCESS) {
            expect_refused(&c, "name_extra_tensor", blob_of(variant.opt), FADAM_ERR_MISMATCH,
                           "extra entry 'lm_head.exp_avg' in the checkpoint");
        } else {
            expect_refused(&c, "name_extra_tensor", (blob){NULL, 0}, FADAM_ERR_MISMATCH, NULL);
        }
        model_destroy(&variant);
        /* Renamed tensor: "missing". */
        memcpy(other_storage, storage, sizeof storage);
        snprintf(other_storage[0].name, sizeof other_storage[0].name, "wpe");
        other.n_tensors = 6;
        if (model_create(&variant, &other, FADAM_DEVICE_CPU, seed + 5) == FADAM_SUCCESS)
            expect_refused(&c, "name_missing_tensor", blob_of(variant.opt), FADAM_ERR_MISMATCH,
                           "tensor 'wte' is missing from the checkpoint (no entry 'wte.exp_avg')");
        model_destroy(&variant);
        /* One more element: "wrong shape". */
        memcpy(other_storage, storage, sizeof storage);
        other_storage[1].numel++;
        if (model_create(&variant, &other, FADAM_DEVICE_CPU, seed + 5) == FADAM_SUCCESS) {
            snprintf(replacement, sizeof replacement,
                     "tensor 'h.0.attn.weight' exp_avg: wrong shape: [%lld] (%lld elements) in the checkpoint, %lld "
                     "elements registered",
                     (long long)other_storage[1].numel, (long long)other_storage[1].numel, (long long)storage[1].numel);
            expect_refused(&c, "name_wrong_shape", blob_of(variant.opt), FADAM_ERR_MISMATCH, replacement);
        }
        model_destroy(&variant);
        /* bf16 saved, fp16 registered: "param dtype". */
        memcpy(other_storage, storage, sizeof storage);
        other_storage[1].param_dtype = FADAM_FLOAT16;
        if (model_create(&variant, &other, FADAM_DEVICE_CPU, seed + 5) == FADAM_SUCCESS)
            expect_refused(&c, "name_wrong_param_dtype", blob_of(variant.opt), FADAM_ERR_MISMATCH,
                           "tensor 'h.0.attn.weight': param dtype F16 in the checkpoint, BF16 registered");
        model_destroy(&variant);
        /* fp32 saved, bf16 registered. */
        memcpy(other_storage, storage, sizeof storage);
        other_storage[2].param_dtype = FADAM_FLOAT32;
        if (model_create(&variant, &other, FADAM_DEVICE_CPU, seed + 5) == FADAM_SUCCESS)
            expect_refused(&c, "name_fp32_param_saved", blob_of(variant.opt), FADAM_ERR_MISMATCH,
                           "param dtype F32 in the checkpoint, F16 registered");
        model_destroy(&variant);
        /* Another group. */
        memcpy(other_storage, storage, sizeof storage);
        other_storage[0].group = 1;
        if (model_create(&variant, &other, FADAM_DEVICE_CPU, seed + 5) == FADAM_SUCCESS)
            expect_refused(&c, "name_wrong_group", blob_of(variant.opt), FADAM_ERR_MISMATCH,
                           "tensor 'wte': group 1 in the checkpoint, 0 registered");
        model_destroy(&variant);
        /* Another group count. */
        memcpy(other_storage, storage, sizeof storage);
        other.n_groups = 3;
        if (model_create(&variant, &other, FADAM_DEVICE_CPU, seed + 5) == FADAM_SUCCESS)
            expect_refused(&c, "groups_count_differs", blob_of(variant.opt), FADAM_ERR_MISMATCH,
                           "the checkpoint has 3 parameter group(s), the optimizer 2");
        model_destroy(&variant);
    }

    /* Metadata. */
    expect_refused(&c, "metadata_missing_block", replace_in_header(&good, "\"__metadata__\"", "\"__metadata_x\""),
                   FADAM_ERR_CORRUPT, "a tensor entry");
    {
        char *object_end = strstr(text, "},\""), *copy;
        /* Drop the whole __metadata__ object. */
        if (object_end) {
            copy = (char *)malloc(strlen(text) + 1);
            sprintf(copy, "{%s", object_end + 3 - 1);
            expect_refused(&c, "metadata_absent", with_header(&good, copy, strlen(copy)), FADAM_ERR_CORRUPT,
                           "has no __metadata__");
            free(copy);
        }
    }
    expect_refused(&c, "metadata_wrong_format", replace_in_header(&good, "\"fusedadam.optimizer\"", "\"other.optimizer\""),
                   FADAM_ERR_CORRUPT, "format is \"other.optimizer\"");
    expect_refused(&c, "metadata_unknown_version", replace_in_header(&good, "\"format_version\":\"2\"", "\"format_version\":\"3\""),
                   FADAM_ERR_CORRUPT, "format_version \"3\" is not one this library reads (1 or 2)");
    /* A version 1 file carries a SHA-256: a version 2 checksum under version 1 is malformed. */
    expect_refused(&c, "metadata_version_1_with_xxh3_checksum",
                   replace_in_header(&good, "\"format_version\":\"2\"", "\"format_version\":\"1\""), FADAM_ERR_CORRUPT,
                   "is not \"sha256:\" and 64 hex digits (format_version 1)");
    expect_refused(&c, "metadata_missing_step", replace_in_header(&good, "\"step\":", "\"steps\":"), FADAM_ERR_CORRUPT,
                   "__metadata__ has no \"step\"");
    expect_refused(&c, "metadata_step_not_a_number", replace_in_header(&good, "\"step\":\"3\"", "\"step\":\"3x\""),
                   FADAM_ERR_CORRUPT, "step \"3x\" is not an integer");
    expect_refused(&c, "metadata_step_negative", replace_in_header(&good, "\"step\":\"3\"", "\"step\":\"-3\""),
                   FADAM_ERR_CORRUPT, "step \"-3\"");
    expect_refused(&c, "metadata_step_overflows", replace_in_header(&good, "\"step\":\"3\"", "\"step\":\"9223372036854775808\""),
                   FADAM_ERR_CORRUPT, "step \"9223372036854775808\"");
    expect_refused(&c, "metadata_bad_checksum_text", replace_in_header(&good, "\"checksum\":\"xxh3-128:", "\"checksum\":\"md5:xx"),
                   FADAM_ERR_CORRUPT, "32 hex digits");
    expect_refused(&c, "metadata_lr_not_a_number", replace_in_header(&good, "\"group.0.lr\":\"", "\"group.0.lr\":\"x"),
                   FADAM_ERR_CORRUPT, "not a finite number");
    expect_refused(&c, "metadata_beta_out_of_range", replace_in_header(&good, "\"group.1.beta1\":\"", "\"group.1.beta1\":\"1"),
                   FADAM_ERR_CORRUPT, "hyperparameters out of range");
    expect_refused(&c, "metadata_unknown_mode", replace_in_header(&good, "\"group.0.mode\":\"adamw\"", "\"group.0.mode\":\"sgd\""),
                   FADAM_ERR_CORRUPT, "not \"adamw\", \"adam_l2\" or \"lion\"");
    expect_refused(&c, "metadata_missing_param_dtype", replace_in_header(&good, "\"wte.param_dtype\"", "\"wte.param_dtypo\""),
                   FADAM_ERR_CORRUPT, "has no \"wte.param_dtype\"");

    /* Silent corruption: one flipped bit anywhere in the data, in a metadata value, in the checksum. */
    check_case_begin();
    for (i = 0; i < 6; i++) {
        static const char *suffixes[3] = {".exp_avg", ".exp_avg_sq", ".master"};
        int kind;
        for (kind = 0; kind < 3; kind++) {
            char entry[128];
            size_t bit;
            snprintf(entry, sizeof entry, "%.60s%s", storage[i].named ? storage[i].name : "4", suffixes[kind]);
            if (strchr(entry, '"') || !entry_offsets(&good, entry, &begin, &end) || end == begin) continue;
            bit = (size_t)(check_rng_next(&rng) % ((end - begin) * 8));
            b = blob_copy(&good);
            b.bytes[8 + header_length + begin + bit / 8] ^= (unsigned char)(1u << (bit % 8));
            ok = expect_refused_quiet(&c, b, FADAM_ERR_CORRUPT, "checksum mismatch", why, sizeof why);
            CHECK(ok, "bit %zu of %.60s flipped: %.300s", bit, entry, why);
        }
    }
    check_case_end("bad_file/flipped_data_bit");
    expect_refused(&c, "flipped_metadata_value", replace_in_header(&good, "\"step\":\"3\"", "\"step\":\"2\""),
                   FADAM_ERR_CORRUPT, "checksum mismatch");
    expect_refused(&c, "added_metadata_key", replace_in_header(&good, "\"format\":", "\"note\":\"hi\",\"format\":"),
                   FADAM_ERR_CORRUPT, "checksum mismatch");
    {
        char *digits = strstr(text, "xxh3-128:");
        if (digits) {
            snprintf(find, sizeof find, "%.41s", digits);
            snprintf(replacement, sizeof replacement, "%s", find);
            replacement[9] = replacement[9] == 'a' ? 'b' : 'a';
        }
        expect_refused(&c, "flipped_checksum", digits ? replace_in_header(&good, find, replacement) : (blob){NULL, 0},
                       FADAM_ERR_CORRUPT, "checksum mismatch");
    }
    /* Swapping two same-sized entries' data keeps every range valid: only the checksum sees it. */
    {
        char a[64], bb[64];
        snprintf(a, sizeof a, "[%llu,%llu]", begin, end);
        entry_offsets(&good, "wte.exp_avg", &begin, &end);
        snprintf(a, sizeof a, "[%llu,%llu]", sq_begin, sq_end);
        snprintf(bb, sizeof bb, "[%llu,%llu]", begin, end);
        b = edit_entry(&good, "wte.exp_avg", "data_offsets", a);
        {
            blob swapped = edit_entry(&b, "wte.exp_avg_sq", "data_offsets", bb);
            free(b.bytes);
            expect_refused(&c, "swapped_entries", swapped, FADAM_ERR_CORRUPT, "checksum mismatch");
        }
    }

    /* After all that, the good file still loads, and the target becomes the source. */
    check_case_begin();
    {
        snapshot want, got;
        CHECK(fadam_load_bytes(c.target.opt, good.bytes, good.size, NULL) == FADAM_SUCCESS, "%s",
              fadam_last_error_message());
        snapshot_take(&source, &want);
        snapshot_take(&c.target, &got);
        CHECK(snapshot_difference(&want, &got)[0] == '\0', "after load: %s", snapshot_difference(&want, &got));
        snapshot_free(&want);
        snapshot_free(&got);
    }
    check_case_end("bad_file/good_file_loads_after_the_corpus");

    free(text);
    free(good.bytes);
    snapshot_free(&c.before);
    model_destroy(&source);
    model_destroy(&c.target);
}

/* ---- cases ---- */

static void test_sha256_known(int accelerated);

static void sha256_hex(const void *message, size_t bytes, size_t piece, char hex[65]) {
    unsigned char digest[FADAM_SHA256_DIGEST_BYTES];
    fadam_sha256 hash;
    size_t done = 0;
    int i;
    fadam_sha256_init(&hash);
    while (done < bytes) {
        size_t take = bytes - done < piece ? bytes - done : piece;
        fadam_sha256_update(&hash, (const char *)message + done, take);
        done += take;
    }
    fadam_sha256_final(&hash, digest);
    for (i = 0; i < 32; i++) sprintf(hex + 2 * i, "%02x", digest[i]);
}

/* Known answers on the path in use, and random messages in random pieces through both paths (the
 * SHA extensions where the CPU has them, and plain C). */
static void test_sha256(uint64_t seed) {
    uint64_t rng = seed;
    unsigned char *message = (unsigned char *)malloc(70000);
    char fast[65], portable[65];
    int round, accelerated = fadam_sha256_set_accelerated(1);
    size_t i;
    check_case_begin();
    for (i = 0; i < 70000; i++) message[i] = (unsigned char)check_rng_next(&rng);
    for (round = 0; round < 40; round++) {
        size_t bytes = (size_t)(check_rng_next(&rng) % 70000), piece = 1 + (size_t)(check_rng_next(&rng) % 300);
        if (round < 20) bytes = 50 + (size_t)round; /* around the padding boundary (55, 56, 64 bytes) */
        fadam_sha256_set_accelerated(1);
        sha256_hex(message, bytes, round % 2 ? piece : bytes + 1, fast);
        fadam_sha256_set_accelerated(0);
        sha256_hex(message, bytes, round % 3 ? piece : 64, portable);
        CHECK(strcmp(fast, portable) == 0, "%zu bytes: %s (accelerated) vs %s", bytes, fast, portable);
    }
    fadam_sha256_set_accelerated(1);
    free(message);
    check_case_end(accelerated ? "sha256_sha_extensions_equal_plain_c" : "sha256_plain_c_only");
    if (accelerated) test_sha256_known(1);
    fadam_sha256_set_accelerated(0);
    test_sha256_known(0);
    fadam_sha256_set_accelerated(1);
}

static void test_sha256_known(int accelerated) {
    static const struct {
        const char *message;
        const char *digest;
    } vectors[] = {
        {"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
        {"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
        {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
         "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
    };
    unsigned char digest[FADAM_SHA256_DIGEST_BYTES];
    char hex[65];
    fadam_sha256 hash;
    size_t v;
    int i;
    check_case_begin();
    for (v = 0; v < sizeof vectors / sizeof vectors[0]; v++) {
        fadam_sha256_init(&hash);
        /* Byte by byte for one, whole for the others: the block buffering must not matter. */
        if (v == 2)
            for (i = 0; vectors[v].message[i]; i++) fadam_sha256_update(&hash, vectors[v].message + i, 1);
        else fadam_sha256_update(&hash, vectors[v].message, strlen(vectors[v].message));
        fadam_sha256_final(&hash, digest);
        for (i = 0; i < 32; i++) sprintf(hex + 2 * i, "%02x", digest[i]);
        CHECK(strcmp(hex, vectors[v].digest) == 0, "sha256(\"%s\") = %s", vectors[v].message, hex);
    }
    {
        /* One million 'a', in uneven pieces. */
        static char block[1000];
        int total = 0;
        memset(block, 'a', sizeof block);
        fadam_sha256_init(&hash);
        while (total < 1000000) {
            int piece = 1 + (total * 7 + 13) % 997;
            if (piece > 1000000 - total) piece = 1000000 - total;
            fadam_sha256_update(&hash, block, (size_t)piece);
            total += piece;
        }
        fadam_sha256_final(&hash, digest);
        for (i = 0; i < 32; i++) sprintf(hex + 2 * i, "%02x", digest[i]);
        CHECK(strcmp(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0") == 0,
              "sha256(a x 1e6) = %s", hex);
    }
    check_case_end(accelerated ? "sha256_known_answers_accelerated" : "sha256_known_answers_plain_c");
}

/* Save from a trained model, load into a fresh one with other params and hyperparameters: equal. */
static void test_round_trip(fadam_device_kind save_device, fadam_device_kind load_device, int through_file,
                            const char *name, uint64_t seed) {
    tensor_spec storage[6];
    model_spec spec;
    model a, b;
    snapshot want, got;
    uint64_t rng = seed;
    char path[512];
    check_case_begin();
    standard_spec(&spec, storage, &rng);
    CHECK(model_create(&a, &spec, save_device, seed + 1) == FADAM_SUCCESS, "create: %s", fadam_last_error_message());
    CHECK(model_train(&a, 1, 5, seed + 2), "train: %s", fadam_last_error_message());
    CHECK(fadam_set_lr(a.opt, 1, 0.0123f) == FADAM_SUCCESS, "set_lr");
    CHECK(model_create(&b, &spec, load_device, seed + 3) == FADAM_SUCCESS, "create: %s", fadam_last_error_message());
    CHECK(model_train(&b, 1, 2, seed + 4), "train");
    snprintf(path, sizeof path, "%s/round_trip.safetensors", temp_dir);
    if (!check_case_failed) {
        if (through_file) {
            CHECK(fadam_save(a.opt, path, NULL) == FADAM_SUCCESS, "save: %s", fadam_last_error_message());
            CHECK(fadam_load(b.opt, path, NULL) == FADAM_SUCCESS, "load: %s", fadam_last_error_message());
        } else {
            blob saved = blob_of(a.opt);
            CHECK(saved.size > 0, "save_bytes: %s", fadam_last_error_message());
            CHECK(fadam_load_bytes(b.opt, saved.bytes, saved.size, NULL) == FADAM_SUCCESS, "load_bytes: %s",
                  fadam_last_error_message());
            free(saved.bytes);
        }
        snapshot_take(&a, &want);
        snapshot_take(&b, &got);
        CHECK(want.step == 5, "step %lld", (long long)want.step);
        CHECK(snapshot_difference(&want, &got)[0] == '\0', "after load: %s", snapshot_difference(&want, &got));
        snapshot_free(&want);
        snapshot_free(&got);
    }
    CHECK(count_temporary_files() == 0, "temporary files left in %s", temp_dir);
    unlink(path);
    model_destroy(&a);
    model_destroy(&b);
    check_case_end(name);
}

/* 2K steps in one go against K steps, save, a new process's worth of setup, load, K steps. */
static void test_resume(fadam_device_kind device, const char *name, uint64_t seed) {
    tensor_spec storage[6];
    model_spec spec;
    model straight, first, second;
    snapshot want, got;
    unsigned char *params_straight = NULL, *params_saved = NULL, *params_resumed = NULL;
    size_t bytes = 0;
    uint64_t rng = seed;
    char path[512];
    const int64_t half = 6;
    check_case_begin();
    standard_spec(&spec, storage, &rng);
    snprintf(path, sizeof path, "%s/resume.safetensors", temp_dir);
    CHECK(model_create(&straight, &spec, device, seed + 1) == FADAM_SUCCESS, "create: %s", fadam_last_error_message());
    CHECK(model_train(&straight, 1, 2 * half, seed + 2), "train: %s", fadam_last_error_message());
    CHECK(model_create(&first, &spec, device, seed + 1) == FADAM_SUCCESS, "create: %s", fadam_last_error_message());
    CHECK(model_train(&first, 1, half, seed + 2), "train: %s", fadam_last_error_message());
    if (!check_case_failed) {
        CHECK(fadam_save(first.opt, path, NULL) == FADAM_SUCCESS, "save: %s", fadam_last_error_message());
        params_saved = params_copy(&first, &bytes); /* the caller's part of a checkpoint */
    }
    model_destroy(&first);
    /* Another seed for the params: the restored params and the loaded state must win. */
    CHECK(model_create(&second, &spec, device, seed + 99) == FADAM_SUCCESS, "create: %s", fadam_last_error_message());
    if (!check_case_failed) {
        params_restore(&second, params_saved);
        CHECK(fadam_load(second.opt, path, NULL) == FADAM_SUCCESS, "load: %s", fadam_last_error_message());
        CHECK(model_train(&second, half + 1, 2 * half, seed + 2), "train: %s", fadam_last_error_message());
        params_straight = params_copy(&straight, &bytes);
        params_resumed = params_copy(&second, &bytes);
        CHECK(memcmp(params_straight, params_resumed, bytes) == 0, "params differ after resuming");
        snapshot_take(&straight, &want);
        snapshot_take(&second, &got);
        CHECK(snapshot_difference(&want, &got)[0] == '\0', "state: %s", snapshot_difference(&want, &got));
        snapshot_free(&want);
        snapshot_free(&got);
    }
    free(params_straight);
    free(params_saved);
    free(params_resumed);
    unlink(path);
    model_destroy(&straight);
    model_destroy(&second);
    check_case_end(name);
}

static int read_counters(const model *m, fadam_step_counters *out) {
    memset(out, 0, sizeof *out);
    if (fadam_read_step_counters(m->opt, out, NULL) != FADAM_SUCCESS) return 0;
    return m->device != FADAM_DEVICE_CUDA || cudaDeviceSynchronize() == cudaSuccess;
}

/* Bitwise, except that any NaN equals any NaN (a NaN's payload is not kept). */
static int same_float(float a, float b) { return (a != a && b != b) || memcmp(&a, &b, sizeof a) == 0; }

static int counters_equal(const fadam_step_counters *a, const fadam_step_counters *b) {
    return a->step == b->step && a->skipped_total == b->skipped_total && same_float(a->grad_norm, b->grad_norm) &&
           same_float(a->clip_coef, b->clip_coef) && same_float(a->lr_scale, b->lr_scale) &&
           same_float(a->loss_scale, b->loss_scale) && a->skipped == b->skipped && a->good_steps == b->good_steps;
}

/* The fused step (clipping, dynamic loss scaling with a skipped step just before the save, warmup
 * and cosine): its counters travel in the checkpoint, so resuming still equals never stopping. */
static void test_resume_fused(fadam_device_kind device, const char *name, uint64_t seed) {
    tensor_spec storage[6];
    model_spec spec;
    model straight, first, second, plain;
    fadam_fused_step_config config = fadam_fused_step_config_default();
    fadam_step_counters want_counters, got_counters, saved_counters;
    snapshot want, got;
    unsigned char *params_straight = NULL, *params_saved = NULL, *params_resumed = NULL;
    size_t bytes = 0;
    uint64_t rng = seed;
    char path[512];
    int64_t step = -1;
    const int64_t half = 5;
    check_case_begin();
    standard_spec(&spec, storage, &rng);
    config.max_grad_norm = 0.5f;
    config.dynamic_loss_scaling = 1;
    config.initial_loss_scale = 1024.0f;
    config.growth_interval = 2;
    config.schedule = FADAM_SCHEDULE_WARMUP_COSINE;
    config.warmup_steps = 3;
    config.total_steps = 20;
    config.min_lr_ratio = 0.1f;
    snprintf(path, sizeof path, "%s/resume_fused.safetensors", temp_dir);
    CHECK(model_create_fused(&straight, &spec, device, seed + 1, &config) == FADAM_SUCCESS, "create: %s",
          fadam_last_error_message());
    CHECK(model_train_with(&straight, 1, 2 * half, seed + 2, 1, half), "train: %s", fadam_last_error_message());
    CHECK(model_create_fused(&first, &spec, device, seed + 1, &config) == FADAM_SUCCESS, "create");
    CHECK(model_train_with(&first, 1, half, seed + 2, 1, half), "train: %s", fadam_last_error_message());
    if (!check_case_failed) {
        CHECK(read_counters(&first, &saved_counters) && saved_counters.skipped == 1 && saved_counters.step == half - 1,
              "expected a skipped last step: skipped %d, step %lld", (int)saved_counters.skipped,
              (long long)saved_counters.step);
        CHECK(fadam_save(first.opt, path, NULL) == FADAM_SUCCESS, "save: %s", fadam_last_error_message());
        params_saved = params_copy(&first, &bytes);
    }
    model_destroy(&first);
    CHECK(model_create_fused(&second, &spec, device, seed + 99, &config) == FADAM_SUCCESS, "create");
    if (!check_case_failed) {
        params_restore(&second, params_saved);
        CHECK(fadam_load(second.opt, path, NULL) == FADAM_SUCCESS, "load: %s", fadam_last_error_message());
        CHECK(read_counters(&second, &got_counters) && counters_equal(&got_counters, &saved_counters),
              "counters after load differ (grad norm %g vs %g, loss scale %g vs %g)", got_counters.grad_norm,
              saved_counters.grad_norm, got_counters.loss_scale, saved_counters.loss_scale);
        CHECK(model_train_with(&second, half + 1, 2 * half, seed + 2, 1, half), "train: %s", fadam_last_error_message());
        params_straight = params_copy(&straight, &bytes);
        params_resumed = params_copy(&second, &bytes);
        CHECK(memcmp(params_straight, params_resumed, bytes) == 0, "params differ after resuming");
        snapshot_take(&straight, &want);
        snapshot_take(&second, &got);
        CHECK(snapshot_difference(&want, &got)[0] == '\0', "state: %s", snapshot_difference(&want, &got));
        snapshot_free(&want);
        snapshot_free(&got);
        CHECK(read_counters(&straight, &want_counters) && read_counters(&second, &got_counters) &&
                  counters_equal(&want_counters, &got_counters),
              "final counters differ: step %lld vs %lld, loss scale %g vs %g", (long long)want_counters.step,
              (long long)got_counters.step, want_counters.loss_scale, got_counters.loss_scale);
        /* Into an optimizer without the fused step: the fused step count becomes its step. */
        CHECK(model_create(&plain, &spec, device, seed + 5) == FADAM_SUCCESS, "create");
        CHECK(fadam_load(plain.opt, path, NULL) == FADAM_SUCCESS && fadam_get_step(plain.opt, &step) == FADAM_SUCCESS &&
                  step == saved_counters.step,
              "plain optimizer: step %lld after load, fused.step %lld", (long long)step, (long long)saved_counters.step);
        model_destroy(&plain);
    }
    free(params_straight);
    free(params_saved);
    free(params_resumed);
    unlink(path);
    model_destroy(&straight);
    model_destroy(&second);
    check_case_end(name);
}

/* A size query answers for the registration, not the values: steps, hyperparameters and counters
 * change nothing, so a buffer sized once fits every later save. */
static void test_size_query(uint64_t seed) {
    tensor_spec storage[6];
    model_spec spec;
    model a;
    fadam_hparams odd = fadam_hparams_default();
    fadam_fused_step_config config = fadam_fused_step_config_default();
    size_t size_before = 0, size_after = 0, written = 0;
    unsigned char *buffer;
    uint64_t rng = seed;
    check_case_begin();
    standard_spec(&spec, storage, &rng);
    config.dynamic_loss_scaling = 1;
    CHECK(model_create_fused(&a, &spec, FADAM_DEVICE_CPU, seed, &config) == FADAM_SUCCESS, "create");
    CHECK(fadam_save_bytes(a.opt, &size_before, NULL, 0, NULL) == FADAM_SUCCESS, "query");
    CHECK(model_train_with(&a, 1, 12, seed, 1, 3), "train");
    odd.lr = 1.17549435e-38f;
    odd.eps = -0.0f;
    odd.mode = FADAM_ADAM_L2;
    odd.bias_correction = 0;
    CHECK(fadam_set_hparams(a.opt, 0, &odd) == FADAM_SUCCESS, "set_hparams");
    /* The fused step counts on the device; its host counter cannot be moved after finalize. */
    CHECK(fadam_set_step(a.opt, INT64_MAX) == FADAM_ERR_BAD_STATE, "set_step after finalize with the fused step");
    {
        /* Without the fused step the host counter is the step: its digits must not change the size. */
        model plain;
        size_t plain_before = 0, plain_after = 0;
        CHECK(model_create(&plain, &spec, FADAM_DEVICE_CPU, seed) == FADAM_SUCCESS, "create plain");
        CHECK(fadam_save_bytes(plain.opt, &plain_before, NULL, 0, NULL) == FADAM_SUCCESS, "query plain");
        CHECK(fadam_set_step(plain.opt, INT64_MAX - 1) == FADAM_SUCCESS, "set_step: %s", fadam_last_error_message());
        CHECK(fadam_save_bytes(plain.opt, &plain_after, NULL, 0, NULL) == FADAM_SUCCESS, "query plain");
        CHECK(plain_before == plain_after, "plain: size %zu at step 0, %zu at step INT64_MAX - 1", plain_before,
              plain_after);
        model_destroy(&plain);
    }
    CHECK(fadam_save_bytes(a.opt, &size_after, NULL, 0, NULL) == FADAM_SUCCESS, "query");
    CHECK(size_before == size_after, "size %zu before training, %zu after", size_before, size_after);
    buffer = (unsigned char *)malloc(size_before);
    CHECK(fadam_save_bytes(a.opt, &written, buffer, size_before, NULL) == FADAM_SUCCESS && written == size_before,
          "save into the queried size: %s", fadam_last_error_message());
    CHECK(fadam_load_bytes(a.opt, buffer, written, NULL) == FADAM_SUCCESS, "load back: %s", fadam_last_error_message());
    {
        /* Bad counters are refused like any other bad metadata. */
        blob good = {buffer, written}, bad;
        fadam_status status;
        bad = replace_in_header(&good, "\"fused.loss_scale\":\"", "\"fused.loss_scale\":\"x");
        status = bad.bytes ? fadam_load_bytes(a.opt, bad.bytes, bad.size, NULL) : FADAM_SUCCESS;
        CHECK(status == FADAM_ERR_CORRUPT && strstr(fadam_last_error_message(), "fused.loss_scale"),
              "bad loss scale: %s: %s", fadam_status_string(status), fadam_last_error_message());
        free(bad.bytes);
        bad = replace_in_header(&good, "\"fused.good_steps\":", "\"fused.good_stepz\":");
        status = bad.bytes ? fadam_load_bytes(a.opt, bad.bytes, bad.size, NULL) : FADAM_SUCCESS;
        CHECK(status == FADAM_ERR_CORRUPT && strstr(fadam_last_error_message(), "has no \"fused.good_steps\""),
              "missing counter: %s: %s", fadam_status_string(status), fadam_last_error_message());
        free(bad.bytes);
    }
    free(buffer);
    model_destroy(&a);
    check_case_end("size_query_independent_of_values");
}

static void test_atomic_save(uint64_t seed) {
    tensor_spec storage[6];
    model_spec spec;
    model a, b;
    blob before, after;
    uint64_t rng = seed;
    char path[512], missing[600];
    struct rlimit old_limit, small_limit;
    fadam_status status;
    check_case_begin();
    standard_spec(&spec, storage, &rng);
    storage[0].numel = 40000 + (int64_t)(check_rng_next(&rng) % 1000); /* the file outgrows the limit below */
    snprintf(path, sizeof path, "%s/atomic.safetensors", temp_dir);
    CHECK(model_create(&a, &spec, FADAM_DEVICE_CPU, seed + 1) == FADAM_SUCCESS && model_train(&a, 1, 2, seed + 2),
          "setup: %s", fadam_last_error_message());
    CHECK(model_create(&b, &spec, FADAM_DEVICE_CPU, seed + 3) == FADAM_SUCCESS && model_train(&b, 1, 3, seed + 4),
          "setup: %s", fadam_last_error_message());
    CHECK(fadam_save(a.opt, path, NULL) == FADAM_SUCCESS, "save: %s", fadam_last_error_message());
    before = read_file(path);
    CHECK(before.size > 100000, "checkpoint of %zu bytes", before.size);
    /* A save that fails halfway (the file size limit, as a full disk would): target untouched. */
    signal(SIGXFSZ, SIG_IGN);
    getrlimit(RLIMIT_FSIZE, &old_limit);
    small_limit = old_limit;
    small_limit.rlim_cur = 65536;
    if (setrlimit(RLIMIT_FSIZE, &small_limit) == 0) {
        status = fadam_save(b.opt, path, NULL);
        setrlimit(RLIMIT_FSIZE, &old_limit);
        CHECK(status == FADAM_ERR_IO, "save past the size limit gave %s: %s", fadam_status_string(status),
              fadam_last_error_message());
        after = read_file(path);
        CHECK(after.size == before.size && memcmp(after.bytes, before.bytes, before.size) == 0,
              "the previous checkpoint changed under a failed save");
        free(after.bytes);
        CHECK(count_temporary_files() == 0, "a failed save left its temporary file");
    }
    /* A good save replaces it; nothing is left beside it. */
    CHECK(fadam_save(b.opt, path, NULL) == FADAM_SUCCESS, "save: %s", fadam_last_error_message());
    after = read_file(path);
    CHECK(after.size == before.size && memcmp(after.bytes, before.bytes, before.size) != 0, "the file was not replaced");
    free(after.bytes);
    CHECK(count_temporary_files() == 0, "temporary files left");
    snprintf(missing, sizeof missing, "%s/no/such/dir/x.safetensors", temp_dir);
    status = fadam_save(a.opt, missing, NULL);
    CHECK(status == FADAM_ERR_IO && strstr(fadam_last_error_message(), "creating the temporary file"),
          "save into a missing directory: %s: %s", fadam_status_string(status), fadam_last_error_message());
    free(before.bytes);
    unlink(path);
    model_destroy(&a);
    model_destroy(&b);
    check_case_end("atomic_save_keeps_previous_file");
}

static void test_arguments(uint64_t seed) {
    tensor_spec storage[6];
    model_spec spec;
    model a;
    fadam_optimizer *unfinalized = NULL;
    snapshot before, after;
    uint64_t rng = seed;
    size_t size = 0, tiny = 16;
    unsigned char small[16];
    char path[512];
    fadam_status status;
    check_case_begin();
    standard_spec(&spec, storage, &rng);
    CHECK(model_create(&a, &spec, FADAM_DEVICE_CPU, seed) == FADAM_SUCCESS, "create");
    CHECK(fadam_save(NULL, "x", NULL) == FADAM_ERR_NULL_POINTER, "save NULL opt");
    CHECK(fadam_save(a.opt, NULL, NULL) == FADAM_ERR_NULL_POINTER, "save NULL path");
    CHECK(fadam_save(a.opt, "", NULL) == FADAM_ERR_INVALID_VALUE, "save empty path");
    CHECK(fadam_load(a.opt, NULL, NULL) == FADAM_ERR_NULL_POINTER, "load NULL path");
    CHECK(fadam_load_bytes(a.opt, NULL, 5, NULL) == FADAM_ERR_NULL_POINTER, "load_bytes NULL");
    CHECK(fadam_save_bytes(a.opt, NULL, NULL, 0, NULL) == FADAM_ERR_NULL_POINTER, "save_bytes NULL size_out");
    CHECK(fadam_save_bytes(a.opt, &size, NULL, 0, NULL) == FADAM_SUCCESS && size > tiny, "size query");
    status = fadam_save_bytes(a.opt, &tiny, small, sizeof small, NULL);
    CHECK(status == FADAM_ERR_WORKSPACE_TOO_SMALL && tiny == size, "small buffer: %s, size %zu",
          fadam_status_string(status), tiny);
    fadam_create(&unfinalized, FADAM_DEVICE_CPU, 0, NULL, NULL);
    CHECK(fadam_save(unfinalized, "x", NULL) == FADAM_ERR_BAD_STATE, "save before finalize");
    CHECK(fadam_load_bytes(unfinalized, small, sizeof small, NULL) == FADAM_ERR_BAD_STATE, "load before finalize");
    fadam_destroy(unfinalized);
    snapshot_take(&a, &before);
    snprintf(path, sizeof path, "%s/does_not_exist.safetensors", temp_dir);
    status = fadam_load(a.opt, path, NULL);
    CHECK(status == FADAM_ERR_IO && strstr(fadam_last_error_message(), "does_not_exist"), "missing file: %s: %s",
          fadam_status_string(status), fadam_last_error_message());
    status = fadam_load(a.opt, temp_dir, NULL);
    CHECK(status == FADAM_ERR_IO, "directory: %s: %s", fadam_status_string(status), fadam_last_error_message());
    /* A truncated file on disk, through the file path. */
    {
        blob saved = blob_of(a.opt);
        snprintf(path, sizeof path, "%s/truncated.safetensors", temp_dir);
        write_file(path, saved.bytes, saved.size - 5);
        status = fadam_load(a.opt, path, NULL);
        CHECK(status == FADAM_ERR_CORRUPT && strstr(fadam_last_error_message(), "reach past the"),
              "truncated file: %s: %s", fadam_status_string(status), fadam_last_error_message());
        unlink(path);
        free(saved.bytes);
    }
    snapshot_take(&a, &after);
    CHECK(snapshot_difference(&before, &after)[0] == '\0', "state changed: %s", snapshot_difference(&before, &after));
    snapshot_free(&before);
    snapshot_free(&after);
    model_destroy(&a);
    check_case_end("arguments_and_io_errors");
}

/* Names: invalid UTF-8 is refused at registration; a JSON header with other whitespace and key
 * order still loads (the checksum covers content), a multi-dimensional shape of the same element
 * count does not (a save writes [numel]). */
static void test_header_variants(uint64_t seed) {
    tensor_spec storage[6];
    model_spec spec;
    model a, b;
    blob good, edited;
    snapshot want, got;
    uint64_t rng = seed;
    fadam_optimizer *bad_name = NULL;
    float param[4] = {0}, grad[4] = {0};
    char *text, *spaced, shape[64];
    size_t i, j;
    check_case_begin();
    standard_spec(&spec, storage, &rng);
    CHECK(model_create(&a, &spec, FADAM_DEVICE_CPU, seed) == FADAM_SUCCESS && model_train(&a, 1, 2, seed), "setup");
    CHECK(model_create(&b, &spec, FADAM_DEVICE_CPU, seed + 1) == FADAM_SUCCESS, "setup");
    good = blob_of(a.opt);
    text = header_text(&good);
    spaced = (char *)malloc(3 * strlen(text) + 1);
    /* A newline and a space after each separator that precedes a value or key (names here hold no
     * such pairs, so strings are unchanged). */
    for (i = j = 0; text[i]; i++) {
        spaced[j++] = text[i];
        if ((text[i] == ',' || text[i] == ':') && (text[i + 1] == '"' || text[i + 1] == '{' || text[i + 1] == '[')) {
            spaced[j++] = '\n';
            spaced[j++] = ' ';
        }
    }
    spaced[j] = '\0';
    edited = with_header(&good, spaced, j);
    CHECK(fadam_load_bytes(b.opt, edited.bytes, edited.size, NULL) == FADAM_SUCCESS, "whitespace: %s",
          fadam_last_error_message());
    free(edited.bytes);
    if (storage[0].numel % 2 == 0) snprintf(shape, sizeof shape, "[2,%lld]", (long long)storage[0].numel / 2);
    else snprintf(shape, sizeof shape, "[1,%lld,1]", (long long)storage[0].numel);
    edited = edit_entry(&good, "wte.exp_avg", "shape", shape);
    CHECK(edited.bytes && fadam_load_bytes(b.opt, edited.bytes, edited.size, NULL) == FADAM_ERR_CORRUPT &&
              strstr(fadam_last_error_message(), "dimensions"),
          "shape %s: %s", shape, fadam_last_error_message());
    free(edited.bytes);
    snapshot_take(&a, &want);
    snapshot_take(&b, &got);
    CHECK(snapshot_difference(&want, &got)[0] == '\0', "%s", snapshot_difference(&want, &got));
    snapshot_free(&want);
    snapshot_free(&got);
    fadam_create(&bad_name, FADAM_DEVICE_CPU, 0, NULL, NULL);
    {
        fadam_status status = fadam_add_tensor(bad_name, "bad\xff", param, grad, 4, FADAM_FLOAT32, FADAM_FLOAT32, 0, NULL);
        CHECK(status == FADAM_ERR_INVALID_VALUE && strstr(fadam_last_error_message(), "UTF-8"), "invalid UTF-8 name: %s",
              fadam_status_string(status));
    }
    fadam_destroy(bad_name);
    free(spaced);
    free(text);
    free(good.bytes);
    model_destroy(&a);
    model_destroy(&b);
    check_case_end("header_variants_load_and_bad_names_refused");
}

/* Zero tensors, and thousands of small ones (names looked up, not scanned). */
static void test_sizes(uint64_t seed) {
    enum { MANY = 3000 };
    tensor_spec *storage = (tensor_spec *)calloc(MANY, sizeof *storage);
    model_spec spec;
    model a, b;
    snapshot want, got;
    uint64_t rng = seed;
    blob saved;
    int i;
    check_case_begin();
    spec.tensors = storage;
    spec.n_tensors = 0;
    spec.n_groups = 1;
    CHECK(model_create(&a, &spec, FADAM_DEVICE_CPU, seed) == FADAM_SUCCESS, "empty create");
    saved = blob_of(a.opt);
    CHECK(saved.size > 0 && fadam_load_bytes(a.opt, saved.bytes, saved.size, NULL) == FADAM_SUCCESS,
          "empty optimizer round trip: %s", fadam_last_error_message());
    free(saved.bytes);
    model_destroy(&a);
    for (i = 0; i < MANY; i++) {
        snprintf(storage[i].name, sizeof storage[i].name, "layers.%d.w", (i * 7919) % MANY);
        storage[i].named = 1;
        storage[i].numel = (int64_t)(check_rng_next(&rng) % 9);
        storage[i].param_dtype = i % 3 == 0 ? FADAM_BFLOAT16 : FADAM_FLOAT32;
        storage[i].grad_dtype = storage[i].param_dtype;
        storage[i].group = 0;
    }
    spec.n_tensors = MANY;
    CHECK(model_create(&a, &spec, FADAM_DEVICE_CPU, seed) == FADAM_SUCCESS && model_train(&a, 1, 2, seed), "create");
    CHECK(model_create(&b, &spec, FADAM_DEVICE_CPU, seed + 1) == FADAM_SUCCESS, "create");
    saved = blob_of(a.opt);
    CHECK(saved.size > 0 && fadam_load_bytes(b.opt, saved.bytes, saved.size, NULL) == FADAM_SUCCESS, "%d tensors: %s",
          MANY, fadam_last_error_message());
    snapshot_take(&a, &want);
    snapshot_take(&b, &got);
    CHECK(snapshot_difference(&want, &got)[0] == '\0', "%s", snapshot_difference(&want, &got));
    snapshot_free(&want);
    snapshot_free(&got);
    free(saved.bytes);
    model_destroy(&a);
    model_destroy(&b);
    free(storage);
    check_case_end("empty_and_3000_tensors_round_trip");
}

/* The checked-in fuzz seeds are valid checkpoints of the fuzz model (so a format change that
 * orphans them shows here). */
static void test_fuzz_seeds(void) {
    static const char *seeds[] = {"tests/fuzz/corpus/step0.safetensors", "tests/fuzz/corpus/step3.safetensors"};
    fadam_optimizer *opt = fuzz_model_create();
    size_t s;
    check_case_begin();
    CHECK(opt != NULL, "fuzz model: %s", fadam_last_error_message());
    for (s = 0; opt && s < sizeof seeds / sizeof seeds[0]; s++) {
        blob seed = read_file(seeds[s]);
        if (!seed.bytes) {
            free(seed.bytes);
            fadam_destroy(opt);
            check_skip("fuzz_seed_corpus_loads", "run from the repository root to find tests/fuzz/corpus");
            return;
        }
        CHECK(fadam_load_bytes(opt, seed.bytes, seed.size, NULL) == FADAM_SUCCESS, "%s: %s", seeds[s],
              fadam_last_error_message());
        free(seed.bytes);
    }
    fadam_destroy(opt);
    check_case_end("fuzz_seed_corpus_loads");
}

/* Bytes of fadam_save_bytes of `opt` (malloc'd; NULL on failure). */
static blob saved_bytes(fadam_optimizer *opt) {
    blob b = {NULL, 0};
    if (fadam_save_bytes(opt, &b.size, NULL, 0, NULL) != FADAM_SUCCESS || !(b.bytes = (unsigned char *)malloc(b.size)))
        return b;
    if (fadam_save_bytes(opt, &b.size, b.bytes, b.size, NULL) != FADAM_SUCCESS) {
        free(b.bytes);
        b.bytes = NULL;
    }
    return b;
}

/* tests/data/format_v1_step3.safetensors is the fuzz model at step 3 as format_version 1 wrote it
 * (SHA-256 checksum): it still loads, into the same state as the version 2 seed of that step, and its
 * checksum is still checked (one data bit flipped: refused). */
static void test_format_v1(void) {
    blob v1 = read_file("tests/data/format_v1_step3.safetensors");
    blob v2 = read_file("tests/fuzz/corpus/step3.safetensors");
    fadam_optimizer *a = fuzz_model_create(), *b = fuzz_model_create();
    check_case_begin();
    if (!v1.bytes || !v2.bytes) {
        check_skip("format_v1_file_loads_as_v2", "run from the repository root to find tests/data");
    } else {
        CHECK(a && b, "fuzz model: %s", fadam_last_error_message());
        CHECK(strstr((const char *)v1.bytes + 8, "\"format_version\":\"1\"") &&
                  strstr((const char *)v1.bytes + 8, "\"checksum\":\"sha256:"),
              "tests/data/format_v1_step3.safetensors is not a version 1 file");
        if (a && b) {
            blob from_v1, from_v2;
            CHECK(fadam_load_bytes(a, v1.bytes, v1.size, NULL) == FADAM_SUCCESS, "version 1: %s", fadam_last_error_message());
            CHECK(fadam_load_bytes(b, v2.bytes, v2.size, NULL) == FADAM_SUCCESS, "version 2: %s", fadam_last_error_message());
            from_v1 = saved_bytes(a);
            from_v2 = saved_bytes(b);
            CHECK(from_v1.bytes && from_v2.bytes && from_v1.size == from_v2.size &&
                      memcmp(from_v1.bytes, from_v2.bytes, from_v1.size) == 0,
                  "the state loaded from version 1 differs from version 2's (re-saved: %zu vs %zu bytes)", from_v1.size,
                  from_v2.size);
            free(from_v1.bytes);
            free(from_v2.bytes);
            v1.bytes[v1.size - 1] ^= 0x10; /* the last data byte */
            CHECK(fadam_load_bytes(a, v1.bytes, v1.size, NULL) == FADAM_ERR_CORRUPT &&
                      strstr(fadam_last_error_message(), "checksum mismatch") &&
                      strstr(fadam_last_error_message(), "sha256:"),
                  "a version 1 file with a flipped bit: %s", fadam_last_error_message());
        }
        check_case_end("format_v1_file_loads_as_v2");
    }
    fadam_destroy(a);
    fadam_destroy(b);
    free(v1.bytes);
    free(v2.bytes);
}

static int write_corpus(const char *directory) {
    fadam_optimizer *opt = fuzz_model_create();
    int steps[2] = {0, 3}, i;
    if (!opt) return 1;
    for (i = 0; i < 2; i++) {
        char path[1024];
        if (!fuzz_model_train(opt, steps[i] - (i ? steps[i - 1] : 0))) return 1;
        snprintf(path, sizeof path, "%s/step%d.safetensors", directory, steps[i]);
        if (fadam_save(opt, path, NULL) != FADAM_SUCCESS) {
            fprintf(stderr, "%s\n", fadam_last_error_message());
            return 1;
        }
        printf("wrote %s\n", path);
    }
    fadam_destroy(opt);
    return 0;
}

/* ---- Python's safetensors ---- */

static const char *python_check =
    "import ctypes, ctypes.util, sys\n"
    "import numpy as np\n"
    "from safetensors import safe_open\n"
    "from safetensors.numpy import load_file, save_file\n"
    "path, step, count = sys.argv[1], sys.argv[2], int(sys.argv[3])\n"
    "tensors = load_file(path)\n"
    "with safe_open(path, framework='numpy') as f:\n"
    "    meta = f.metadata()\n"
    "assert meta['format'] == 'fusedadam.optimizer', meta.get('format')\n"
    "assert meta['format_version'] == '2'\n"
    "assert meta['step'] == step, (meta['step'], step)\n"
    "assert len(tensors) == count, (len(tensors), count)\n"
    "assert all(t.dtype == np.float32 and t.ndim == 1 for t in tensors.values())\n"
    "# The checksum as README.md defines it, recomputed from what Python read, with libxxhash's\n"
    "# XXH3_128bits through ctypes (its canonical form: high 64 bits, then low, big-endian).\n"
    "class H128(ctypes.Structure):\n"
    "    _fields_ = [('low', ctypes.c_uint64), ('high', ctypes.c_uint64)]\n"
    "xxh = ctypes.CDLL(ctypes.util.find_library('xxhash') or 'libxxhash.so.0')\n"
    "xxh.XXH3_128bits.restype = H128\n"
    "xxh.XXH3_128bits.argtypes = [ctypes.c_char_p, ctypes.c_size_t]\n"
    "def xxh3(b):\n"
    "    h = xxh.XXH3_128bits(b, len(b))\n"
    "    return h.high.to_bytes(8, 'big') + h.low.to_bytes(8, 'big')\n"
    "stream = b''\n"
    "for k in sorted(meta):\n"
    "    if k != 'checksum':\n"
    "        stream += k.encode() + b'\\0' + meta[k].encode() + b'\\0'\n"
    "for k in sorted(tensors):\n"
    "    b = np.ascontiguousarray(tensors[k], dtype='<f4').tobytes()\n"
    "    stream += k.encode() + b'\\0' + str(len(b)).encode() + b'\\0'\n"
    "    stream += b''.join(xxh3(b[i:i + (8 << 20)]) for i in range(0, len(b), 8 << 20))\n"
    "assert meta['checksum'] == 'xxh3-128:' + xxh3(stream).hex(), 'checksum differs'\n"
    "if len(sys.argv) > 4:\n"
    "    save_file(dict(reversed(list(tensors.items()))), sys.argv[4], metadata=meta)\n";

static int python_has_safetensors(void) {
    return system("python3 -c 'import safetensors.numpy, numpy' >/dev/null 2>&1") == 0;
}

static void test_python(uint64_t seed) {
    tensor_spec storage[6];
    model_spec spec;
    model a, b;
    snapshot want, got;
    uint64_t rng = seed;
    char script[512], path[512], resaved[512], command[2048];
    int code, entries = 0, i;
    if (!python_has_safetensors()) {
        check_skip("python_safetensors_reads_our_file", "python3 with safetensors and numpy not installed "
                                                        "(pip install safetensors numpy)");
        check_skip("python_resaved_file_loads", "python3 with safetensors and numpy not installed");
        return;
    }
    standard_spec(&spec, storage, &rng);
    for (i = 0; i < 6; i++) entries += storage[i].param_dtype == FADAM_FLOAT32 ? 2 : 3;
    snprintf(script, sizeof script, "%s/check.py", temp_dir);
    snprintf(path, sizeof path, "%s/python.safetensors", temp_dir);
    snprintf(resaved, sizeof resaved, "%s/python_resaved.safetensors", temp_dir);
    write_file(script, python_check, strlen(python_check));

    check_case_begin();
    CHECK(model_create(&a, &spec, FADAM_DEVICE_CPU, seed) == FADAM_SUCCESS && model_train(&a, 1, 4, seed), "setup");
    CHECK(fadam_save(a.opt, path, NULL) == FADAM_SUCCESS, "save: %s", fadam_last_error_message());
    snprintf(command, sizeof command, "python3 '%s' '%s' 4 %d '%s' 1>&2", script, path, entries, resaved);
    code = system(command);
    CHECK(code == 0, "python exited with %d (its output is above)", code);
    check_case_end("python_safetensors_reads_our_file");

    check_case_begin();
    CHECK(model_create(&b, &spec, FADAM_DEVICE_CPU, seed + 1) == FADAM_SUCCESS, "setup");
    CHECK(fadam_load(b.opt, resaved, NULL) == FADAM_SUCCESS, "load of the file Python re-saved: %s",
          fadam_last_error_message());
    snapshot_take(&a, &want);
    snapshot_take(&b, &got);
    CHECK(snapshot_difference(&want, &got)[0] == '\0', "%s", snapshot_difference(&want, &got));
    snapshot_free(&want);
    snapshot_free(&got);
    check_case_end("python_resaved_file_loads");
    unlink(script);
    unlink(path);
    unlink(resaved);
    model_destroy(&a);
    model_destroy(&b);
}

int main(int argc, char **argv) {
    const char *tmp = getenv("TMPDIR");
    uint64_t seed;
    int gpu;
    if (argc == 3 && strcmp(argv[1], "--write-corpus") == 0) return write_corpus(argv[2]);
    seed = check_seed("test_checkpoint");
    snprintf(temp_dir, sizeof temp_dir, "%s/fadam_checkpoint_XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
    if (!mkdtemp(temp_dir)) {
        printf("FAIL setup: mkdtemp(%s): %s\n", temp_dir, strerror(errno));
        return 1;
    }
    gpu = fadam_cuda_device_count() > 0;

    test_sha256(seed);
    test_round_trip(FADAM_DEVICE_CPU, FADAM_DEVICE_CPU, 0, "round_trip_cpu_bytes", seed + 10);
    test_round_trip(FADAM_DEVICE_CPU, FADAM_DEVICE_CPU, 1, "round_trip_cpu_file", seed + 20);
    test_resume(FADAM_DEVICE_CPU, "resume_equals_uninterrupted_cpu", seed + 30);
    test_resume_fused(FADAM_DEVICE_CPU, "resume_fused_step_equals_uninterrupted_cpu", seed + 35);
    if (gpu) {
        test_round_trip(FADAM_DEVICE_CUDA, FADAM_DEVICE_CUDA, 1, "round_trip_gpu_file", seed + 40);
        test_round_trip(FADAM_DEVICE_CUDA, FADAM_DEVICE_CUDA, 0, "round_trip_gpu_bytes", seed + 50);
        test_round_trip(FADAM_DEVICE_CUDA, FADAM_DEVICE_CPU, 1, "round_trip_gpu_to_cpu", seed + 60);
        test_round_trip(FADAM_DEVICE_CPU, FADAM_DEVICE_CUDA, 0, "round_trip_cpu_to_gpu", seed + 70);
        test_resume(FADAM_DEVICE_CUDA, "resume_equals_uninterrupted_gpu", seed + 80);
        test_resume_fused(FADAM_DEVICE_CUDA, "resume_fused_step_equals_uninterrupted_gpu", seed + 85);
    } else {
        check_skip("round_trip_gpu_file", "no CUDA device");
        check_skip("round_trip_gpu_bytes", "no CUDA device");
        check_skip("round_trip_gpu_to_cpu", "no CUDA device");
        check_skip("round_trip_cpu_to_gpu", "no CUDA device");
        check_skip("resume_equals_uninterrupted_gpu", "no CUDA device");
        check_skip("resume_fused_step_equals_uninterrupted_gpu", "no CUDA device");
    }
    test_size_query(seed + 87);
    test_atomic_save(seed + 90);
    test_arguments(seed + 100);
    test_header_variants(seed + 110);
    test_sizes(seed + 120);
    bad_file_corpus(seed + 130);
    test_fuzz_seeds();
    test_format_v1();
    test_python(seed + 140);
    rmdir(temp_dir);
    return check_exit_code();
}
