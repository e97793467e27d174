/* checkpoint_convert.c - a tensor whose checkpoint entries are in another state layout than its own
 * (docs/STATE_LAYOUTS.md): decoded to fp32 and encoded again, through kernels/state_layout.h's
 * encodings (no second copy of any). fadam_load checks everything before it calls these. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime.h>

#include "checkpoint_internal.h"
#include "state_layout.h"

/* 1 when the file's entries of tensor t are in the tensor's own formats (copied as they are). */
int fadam_checkpoint_same_layout(const fadam_optimizer *opt, const fadam_load_plan *plan, int64_t t) {
    fadam_checkpoint_state file[FADAM_CHECKPOINT_MAX_STATES], own[FADAM_CHECKPOINT_MAX_STATES];
    int n = fadam_checkpoint_states_as(opt, t, &plan->values.layouts[opt->tensors[t].group], file), k;
    if (n != fadam_checkpoint_states(opt, t, own)) return 0;
    for (k = 0; k < n; k++)
        if (strcmp(file[k].suffix, own[k].suffix) != 0 || strcmp(file[k].dtype, own[k].dtype) != 0) return 0;
    return 1;
}

void fadam_convert_buffers_free(fadam_convert_buffers *b) {
    int i;
    for (i = 0; i < 1 + FADAM_FIELD_COUNT; i++) free(b->values[i]);
    free(b->raw);
    free(b->scales);
    free(b->param);
}

fadam_status fadam_convert_buffers_alloc(const fadam_optimizer *opt, const fadam_load_plan *plan,
                                         fadam_convert_buffers *b, const char *function) {
    int64_t t, most = -1;
    size_t n, blocks;
    int i, ok = 1;
    memset(b, 0, sizeof *b);
    for (t = 0; t < opt->n_tensors; t++)
        if (!fadam_checkpoint_same_layout(opt, plan, t) && opt->tensors[t].numel > most) most = opt->tensors[t].numel;
    if (most < 0) return FADAM_SUCCESS;
    n = (size_t)most + 1;
    blocks = n / FADAM_MOMENT_BLOCK + 1;
    for (i = 0; i < 1 + FADAM_FIELD_COUNT; i++) ok &= (b->values[i] = (float *)malloc(n * sizeof(float))) != NULL;
    ok &= (b->raw = (unsigned char *)malloc(n * sizeof(float))) != NULL;
    ok &= (b->scales = (float *)malloc(blocks * sizeof(float))) != NULL;
    ok &= (b->param = (uint16_t *)malloc(n * sizeof(uint16_t))) != NULL;
    if (ok) return FADAM_SUCCESS;
    fadam_convert_buffers_free(b);
    return fadam_fail(FADAM_ERR_OUT_OF_MEMORY, "%s: no host memory to convert a checkpoint's state layout", function);
}

/* bytes between host memory and optimizer memory (device memory on the CUDA device). */
static fadam_status move_state(const fadam_optimizer *opt, void *destination, const void *source, size_t bytes,
                               int to_optimizer, cudaStream_t stream) {
    if (opt->device == FADAM_DEVICE_CPU) {
        memcpy(destination, source, bytes);
        return FADAM_SUCCESS;
    }
    FADAM_CUDA_CHECK(cudaMemcpyAsync(destination, source, bytes,
                                     to_optimizer ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost, stream));
    return FADAM_CUDA_STATUS(cudaStreamSynchronize(stream));
}

/* The file's entry of `state` of tensor t into `into`. */
static fadam_status read_file_state(const fadam_optimizer *opt, const fadam_load_plan *plan, const fadam_source *in,
                                    int64_t t, const fadam_checkpoint_state *state, void *into, const char *function) {
    char key[FADAM_MAX_NAME_LENGTH + 32];
    const fadam_st_entry *entry;
    size_t index = 0;
    snprintf(key, sizeof key, "%s%s", opt->names[t], state->suffix);
    entry = fadam_safetensors_find(plan->by_name, plan->parsed.n_entries, key, &index); /* matched: present */
    return fadam_source_read(in, in->data_offset + entry->begin, into, (size_t)(entry->end - entry->begin), function);
}

/* Tensor t from the file's layout into its own: every state decoded to fp32 (8-bit codes with their
 * block scales, bf16 widened, a remainder joined with the param), then encoded as the tensor's layout
 * (bf16: round to nearest even; 8-bit: block scales recomputed from the tensor's element 0, codes
 * rounded to nearest; a remainder split from the master, which also writes the param). */
fadam_status fadam_checkpoint_convert_tensor(fadam_optimizer *opt, const fadam_load_plan *plan, const fadam_source *in,
                                             int64_t t, fadam_convert_buffers *b, cudaStream_t stream,
                                             const char *function) {
    const fadam_tensor *tensor = &opt->tensors[t];
    fadam_checkpoint_state file[FADAM_CHECKPOINT_MAX_STATES], own[FADAM_CHECKPOINT_MAX_STATES];
    int n_file = fadam_checkpoint_states_as(opt, t, &plan->values.layouts[tensor->group], file);
    int n_own = fadam_checkpoint_states(opt, t, own), k;
    int64_t n = tensor->numel, i, block;
    fadam_status status = FADAM_SUCCESS;
    if (n == 0) return FADAM_SUCCESS;
    /* Decode. */
    for (k = 0; k < n_file && status == FADAM_SUCCESS; k++) {
        const fadam_checkpoint_state *s = &file[k];
        float *out;
        if (s->role >= FADAM_FIELD_COUNT) continue; /* scales: read with their codes */
        out = b->values[s->role == FADAM_CHECKPOINT_ROLE_MASTER ? 0 : 1 + s->role];
        if ((status = read_file_state(opt, plan, in, t, s, b->raw, function)) != FADAM_SUCCESS) break;
        if (s->role == FADAM_CHECKPOINT_ROLE_MASTER && s->format == FADAM_MASTER_REMAINDER) {
            status = move_state(opt, b->param, tensor->param, (size_t)n * 2, 0, stream);
            for (i = 0; i < n && status == FADAM_SUCCESS; i++)
                out[i] = fadam_master_join(b->param[i], ((const uint16_t *)b->raw)[i]);
        } else if (s->role == FADAM_CHECKPOINT_ROLE_MASTER || s->format == FADAM_MOMENT_FP32) {
            memcpy(out, b->raw, (size_t)n * sizeof(float));
        } else if (s->format == FADAM_MOMENT_BF16) {
            for (i = 0; i < n; i++) out[i] = fadam_bf16_bits_to_float(((const uint16_t *)b->raw)[i]);
        } else {
            int kind;
            for (kind = 0; kind < n_file && file[kind].role != FADAM_CHECKPOINT_ROLE_SCALES(s->role); kind++) continue;
            if ((status = read_file_state(opt, plan, in, t, &file[kind], b->scales, function)) != FADAM_SUCCESS) break;
            for (block = 0; block * FADAM_MOMENT_BLOCK < n; block++) {
                int count = (int)(n - block * FADAM_MOMENT_BLOCK < FADAM_MOMENT_BLOCK ? n - block * FADAM_MOMENT_BLOCK
                                                                                    : FADAM_MOMENT_BLOCK);
                size_t at = (size_t)block * FADAM_MOMENT_BLOCK;
                if (s->role == FADAM_FIELD_EXP_AVG)
                    fadam_q8_dequantize_m_block((const int8_t *)b->raw + at, b->scales[block], count, out + at);
                else
                    fadam_q8_dequantize_v_block((const uint8_t *)b->raw + at, b->scales[block], count, out + at);
            }
        }
    }
    /* Encode and store. */
    for (k = 0; k < n_own && status == FADAM_SUCCESS; k++) {
        const fadam_checkpoint_state *s = &own[k];
        const float *values;
        if (s->role >= FADAM_FIELD_COUNT) continue; /* scales: stored with their codes */
        values = b->values[s->role == FADAM_CHECKPOINT_ROLE_MASTER ? 0 : 1 + s->role];
        if (s->role == FADAM_CHECKPOINT_ROLE_MASTER && s->format == FADAM_MASTER_REMAINDER) {
            for (i = 0; i < n; i++) b->param[i] = fadam_master_split(values[i], (uint16_t *)b->raw + i);
            status = move_state(opt, tensor->param, b->param, (size_t)n * 2, 1, stream);
        } else if (s->role == FADAM_CHECKPOINT_ROLE_MASTER || s->format == FADAM_MOMENT_FP32) {
            memcpy(b->raw, values, (size_t)n * sizeof(float));
        } else if (s->format == FADAM_MOMENT_BF16) {
            for (i = 0; i < n; i++) ((uint16_t *)b->raw)[i] = fadam_float_to_bf16_bits(values[i]);
        } else {
            int kind;
            for (block = 0; block * FADAM_MOMENT_BLOCK < n; block++) {
                int count = (int)(n - block * FADAM_MOMENT_BLOCK < FADAM_MOMENT_BLOCK ? n - block * FADAM_MOMENT_BLOCK
                                                                                    : FADAM_MOMENT_BLOCK);
                size_t at = (size_t)block * FADAM_MOMENT_BLOCK;
                b->scales[block] = s->role == FADAM_FIELD_EXP_AVG
                                       ? fadam_q8_quantize_m_block(values + at, count, (int8_t *)b->raw + at)
                                       : fadam_q8_quantize_v_block(values + at, count, (uint8_t *)b->raw + at);
            }
            for (kind = 0; kind < n_own && own[kind].role != FADAM_CHECKPOINT_ROLE_SCALES(s->role); kind++) continue;
            status = move_state(opt, own[kind].data, b->scales, (size_t)own[kind].numel * sizeof(float), 1, stream);
        }
        if (status == FADAM_SUCCESS)
            status = move_state(opt, s->data, b->raw, (size_t)n * s->element_bytes, 1, stream);
    }
    return status;
}

