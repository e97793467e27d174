/* checkpoint_io.c - moving a checkpoint's bytes: writing to a file or memory (the checksum of a
 * file's host state computed while the previous piece is written), reading back (a file's pieces
 * hashed while the next is read), device state through one pinned buffer on the caller's stream,
 * and the header read and checked before anything else. */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cuda_runtime.h>

#include "checkpoint_internal.h"
#include "number_text.h"

fadam_status fadam_io_fail(const char *function, const char *what, const char *path) {
    char reason[128];
    int saved = errno;
    if (strerror_r(saved, reason, sizeof reason) != 0) snprintf(reason, sizeof reason, "errno %d", saved);
    return fadam_fail(FADAM_ERR_IO, "%s: %s '%.300s' failed: %s", function, what, path, reason);
}

fadam_status fadam_sink_write(fadam_sink *out, const void *bytes, size_t count, const char *function) {
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
            return fadam_io_fail(function, "writing", out->path);
        }
        source += written, count -= (size_t)written, out->position += (uint64_t)written;
    }
    return FADAM_SUCCESS;
}

fadam_status fadam_sink_patch(fadam_sink *out, uint64_t position, const void *bytes, size_t count,
                              const char *function) {
    const char *source = (const char *)bytes;
    if (out->memory) {
        memcpy(out->memory + position, bytes, count);
        return FADAM_SUCCESS;
    }
    while (count) {
        ssize_t written = pwrite(out->fd, source, count, (off_t)position);
        if (written < 0) {
            if (errno == EINTR) continue;
            return fadam_io_fail(function, "writing", out->path);
        }
        source += written, count -= (size_t)written, position += (uint64_t)written;
    }
    return FADAM_SUCCESS;
}

/* On the CUDA device: enters the optimizer's device and allocates the pinned buffer through which
 * state moves in FADAM_CHECKPOINT_PIECE_BYTES pieces. Nothing to do on the CPU. */
fadam_status fadam_staging_begin(const fadam_optimizer *opt, unsigned char **staging, int *previous_device,
                                 const char *function) {
    fadam_status status;
    *staging = NULL;
    if (opt->device != FADAM_DEVICE_CUDA) return FADAM_SUCCESS;
    if ((status = fadam_cuda_enter_device(opt->cuda_device, previous_device)) != FADAM_SUCCESS) return status;
    if (cudaHostAlloc((void **)staging, FADAM_CHECKPOINT_PIECE_BYTES, cudaHostAllocDefault) != cudaSuccess) {
        (void)cudaGetLastError();
        fadam_cuda_leave_device(opt->cuda_device, *previous_device);
        return fadam_fail(FADAM_ERR_OUT_OF_MEMORY, "%s: cannot allocate %zu bytes of pinned host memory", function,
                          FADAM_CHECKPOINT_PIECE_BYTES);
    }
    return FADAM_SUCCESS;
}

void fadam_staging_end(const fadam_optimizer *opt, unsigned char *staging, int previous_device) {
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
        ssize_t n =
            write(step->fd, step->write_from + step->written, left > ((size_t)1 << 30) ? (size_t)1 << 30 : left);
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
static fadam_status write_pipelined(const unsigned char *state, uint64_t bytes, fadam_sink *out, fadam_checksum *hash,
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
        step.hash_bytes =
            bytes - next < FADAM_CHECKSUM_PIECE_BYTES ? (size_t)(bytes - next) : FADAM_CHECKSUM_PIECE_BYTES;
        step.fd = out->fd;
        step.write_from = state + done;
        step.write_bytes = piece;
        fadam_cpu_pool_run(pool, 2, save_block, &step);
        out->position += step.written;
        if (step.write_errno) {
            errno = step.write_errno;
            return fadam_io_fail(function, "writing", out->path);
        }
        memcpy(digest, step.digest, sizeof digest);
        done = next;
    }
    return FADAM_SUCCESS;
}

fadam_status fadam_sink_write_state(const fadam_optimizer *opt, const char *name, const void *data, uint64_t bytes,
                                    fadam_sink *out, fadam_checksum *hash, fadam_cpu_pool *pool, unsigned char *staging,
                                    cudaStream_t stream, const char *function) {
    const unsigned char *state = (const unsigned char *)data;
    /* Host state goes as one checksum piece per pool thread at a time, hashed at once (then written
     * while still in cache); device state as one staging buffer, a piece too (FADAM_CHECKPOINT_PIECE_BYTES). */
    size_t span = opt->device == FADAM_DEVICE_CUDA ? FADAM_CHECKPOINT_PIECE_BYTES
                                                   : (size_t)fadam_cpu_pool_size(pool) * FADAM_CHECKSUM_PIECE_BYTES;
    uint64_t done;
    fadam_status status;
    fadam_checksum_entry(hash, name, bytes);
    if (opt->device != FADAM_DEVICE_CUDA && !out->memory && hash->version == 2)
        return write_pipelined(state, bytes, out, hash, pool, function);
    for (done = 0; done < bytes;) {
        size_t piece = bytes - done < span ? (size_t)(bytes - done) : span;
        const unsigned char *host = state + done;
        if (opt->device == FADAM_DEVICE_CUDA) {
            FADAM_CUDA_CHECK(cudaMemcpyAsync(staging, state + done, piece, cudaMemcpyDeviceToHost, stream));
            FADAM_CUDA_CHECK(cudaStreamSynchronize(stream));
            host = staging;
        }
        fadam_checksum_data(hash, pool, host, piece);
        if ((status = fadam_sink_write(out, host, piece, function)) != FADAM_SUCCESS) return status;
        done += piece;
    }
    return FADAM_SUCCESS;
}

/* Bytes of each half of a file's bounce buffer: a piece, or less for a smaller file. */
size_t fadam_source_bounce_half(const fadam_source *in) {
    return in->size < FADAM_CHECKPOINT_PIECE_BYTES ? (size_t)in->size + 1 : FADAM_CHECKPOINT_PIECE_BYTES;
}

/* Reads `count` bytes at `offset` of the checkpoint into `destination`. */
fadam_status fadam_source_read(const fadam_source *in, uint64_t offset, void *destination, size_t count,
                               const char *function) {
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
            return fadam_io_fail(function, "reading", in->path);
        }
        if (got == 0)
            return fadam_fail(FADAM_ERR_IO, "%s: '%.300s' became shorter while it was read", function, in->path);
        target += got, count -= (size_t)got, offset += (uint64_t)got;
    }
    return FADAM_SUCCESS;
}

/* A view of `count` (<= FADAM_CHECKPOINT_PIECE_BYTES) bytes at `offset`: the memory itself, or the bounce buffer. */
static fadam_status source_view(const fadam_source *in, uint64_t offset, size_t count, const unsigned char **view,
                                const char *function) {
    if (in->memory) {
        *view = in->memory + offset;
        return FADAM_SUCCESS;
    }
    *view = in->bounce;
    return fadam_source_read(in, offset, in->bounce, count, function);
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
static int next_piece(const fadam_load_plan *plan, size_t *e, uint64_t *done, uint64_t *offset, size_t *bytes) {
    while (*e < plan->parsed.n_entries && *done >= plan->by_name[*e]->end - plan->by_name[*e]->begin) (*e)++, *done = 0;
    if (*e == plan->parsed.n_entries) return 0;
    {
        uint64_t left = plan->by_name[*e]->end - plan->by_name[*e]->begin - *done;
        *offset = plan->by_name[*e]->begin + *done;
        *bytes = left < FADAM_CHECKPOINT_PIECE_BYTES ? (size_t)left : FADAM_CHECKPOINT_PIECE_BYTES;
        *done += *bytes;
    }
    return 1;
}

/* Version 2 from a file: reading piece k+1 and hashing piece k at once on the pool (pool NULL: one
 * after the other), through the two halves of the bounce buffer; the digests go in in order. */
static fadam_status verify_pipelined(const fadam_load_plan *plan, const fadam_source *in, fadam_cpu_pool *pool,
                                     fadam_checksum *hash, const char *function) {
    size_t half = fadam_source_bounce_half(in), e = 0, framed = 0, current_entry = 0, current_bytes = 0, next_bytes = 0;
    uint64_t done = 0, current_offset = 0, next_offset = 0;
    int have_current, have_next, which = 0;
    fadam_status status;
    FADAM_STATIC_ASSERT(FADAM_CHECKPOINT_PIECE_BYTES == FADAM_CHECKSUM_PIECE_BYTES,
                        "a bounce half holds one checksum piece");
    have_current = next_piece(plan, &e, &done, &current_offset, &current_bytes);
    current_entry = e;
    if (have_current && (status = fadam_source_read(in, in->data_offset + current_offset, in->bounce, current_bytes,
                                                    function)) != FADAM_SUCCESS)
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
            return fadam_io_fail(function, "reading", in->path);
        }
        if (step.read_short)
            return fadam_fail(FADAM_ERR_IO, "%s: '%.300s' became shorter while it was read", function, in->path);
        for (; framed <= current_entry; framed++)
            fadam_checksum_entry(hash, plan->by_name[framed]->name,
                                 plan->by_name[framed]->end - plan->by_name[framed]->begin);
        fadam_checksum_add_piece(hash, step.digest);
        have_current = have_next, current_entry = next_entry, current_bytes = next_bytes, which = 1 - which;
    }
    for (; framed < plan->parsed.n_entries; framed++)
        fadam_checksum_entry(hash, plan->by_name[framed]->name,
                             plan->by_name[framed]->end - plan->by_name[framed]->begin);
    return FADAM_SUCCESS;
}

/* Streams through the data in name order and compares the checksum of the file's format_version with
 * the recorded one. Data in memory goes a pool's worth of pieces at a time (hashed at once); a file's
 * through the bounce buffer, one piece at a time. */
fadam_status fadam_load_plan_verify(const fadam_load_plan *plan, const fadam_source *in, const fadam_optimizer *opt,
                                    const char *function) {
    unsigned char digest[FADAM_CHECKSUM_MAX_BYTES];
    char expected[2 * FADAM_CHECKSUM_MAX_BYTES + 1], computed[2 * FADAM_CHECKSUM_MAX_BYTES + 1];
    size_t digest_bytes = fadam_checksum_bytes(plan->values.format_version), span;
    fadam_checksum hash;
    fadam_cpu_pool *pool = NULL;
    fadam_status status = FADAM_SUCCESS;
    size_t i;
    if (opt->device == FADAM_DEVICE_CPU && opt->cpu_pool && fadam_cpu_pool_acquire(opt->cpu_pool)) pool = opt->cpu_pool;
    span = in->memory ? (size_t)fadam_cpu_pool_size(pool) * FADAM_CHECKSUM_PIECE_BYTES : FADAM_CHECKPOINT_PIECE_BYTES;
    fadam_checksum_init(&hash, plan->values.format_version);
    fadam_checksum_metadata(&hash, plan->parsed.metadata, plan->parsed.n_metadata);
    if (!in->memory && plan->values.format_version == 2) {
        status = verify_pipelined(plan, in, pool, &hash, function);
    } else {
        for (i = 0; i < plan->parsed.n_entries && status == FADAM_SUCCESS; i++) {
            const fadam_st_entry *entry = plan->by_name[i];
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
    if (memcmp(digest, plan->values.checksum, digest_bytes) != 0) {
#if !defined(FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION)
        const char *prefix = fadam_checksum_prefix(plan->values.format_version);
        fadam_hex_encode(plan->values.checksum, digest_bytes, expected);
        fadam_hex_encode(digest, digest_bytes, computed);
        return fadam_fail(FADAM_ERR_CORRUPT,
                          "%s: checksum mismatch: the data or metadata changed after the checkpoint "
                          "was written (recorded %s%.16s..., computed %s%.16s...)",
                          function, prefix, expected, prefix, computed);
#else
        (void)expected, (void)computed; /* the fuzzer explores what lies behind the checksum */
#endif
    }
    return FADAM_SUCCESS;
}

/* Reads the header of `in` and checks everything that does not depend on the registration's tensors:
 * header text stays in *header_copy (file sources). */
fadam_status fadam_load_plan_read(const fadam_optimizer *opt, fadam_source *in, fadam_load_plan *out,
                                  char **header_copy_out, const char *function) {
    unsigned char prefix[8];
    char *header_copy = NULL;
    const char *header_text;
    uint64_t header_length = 0;
    fadam_load_plan plan;
    fadam_status status;
    memset(&plan, 0, sizeof plan);
    memset(out, 0, sizeof *out);
    *header_copy_out = NULL;
    if ((status = fadam_safetensors_check_size(in->size, function)) != FADAM_SUCCESS ||
        (status = fadam_source_read(in, 0, prefix, 8, function)) != FADAM_SUCCESS ||
        (status = fadam_safetensors_header_length(prefix, in->size, &header_length, function)) != FADAM_SUCCESS)
        return status;
    in->data_offset = 8 + header_length;
    if (in->memory) {
        header_text = (const char *)in->memory + 8;
    } else {
        header_copy = (char *)malloc((size_t)header_length);
        if (!header_copy) return fadam_fail(FADAM_ERR_OUT_OF_MEMORY, "%s: no host memory for the header", function);
        if ((status = fadam_source_read(in, 8, header_copy, (size_t)header_length, function)) != FADAM_SUCCESS) {
            free(header_copy);
            return status;
        }
        header_text = header_copy;
    }
    status = fadam_safetensors_parse(header_text, (size_t)header_length, &plan.parsed, function);
    if (status == FADAM_SUCCESS) {
        size_t n = plan.parsed.n_entries ? plan.parsed.n_entries : 1;
        plan.by_name = (fadam_st_entry **)malloc(n * sizeof *plan.by_name);
        plan.by_offset = (fadam_st_entry **)malloc(n * sizeof *plan.by_offset);
        plan.entry_tensor = (int64_t *)calloc(n, sizeof *plan.entry_tensor);
        plan.entry_kind = (int *)calloc(n, sizeof *plan.entry_kind);
        if (!plan.by_name || !plan.by_offset || !plan.entry_tensor || !plan.entry_kind)
            status = fadam_fail(FADAM_ERR_OUT_OF_MEMORY, "%s: no host memory for the header", function);
    }
    if (status == FADAM_SUCCESS)
        status =
            fadam_safetensors_index(&plan.parsed, plan.by_name, plan.by_offset, in->size - in->data_offset, function);
    if (status == FADAM_SUCCESS) status = fadam_metadata_read(opt, &plan.parsed, &plan.values, function);
    *out = plan;
    *header_copy_out = header_copy;
    return status;
}

void fadam_load_plan_free(fadam_load_plan *plan) {
    fadam_safetensors_free(&plan->parsed);
    free(plan->by_name);
    free(plan->by_offset);
    free(plan->entry_tensor);
    free(plan->entry_kind);
}
