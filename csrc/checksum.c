/* checksum.c - the checkpoint checksums (checksum.h). Version 2 cuts each entry into fixed pieces
 * whose XXH3-128 digests are independent, so the pool's threads hash them at once, and the final hash
 * takes the digests in the one fixed order whatever thread computed them. */
#include <stdio.h>
#include <string.h>

#include "checksum.h"

/* Pieces hashed per pool job: their digests live on the stack (1 KiB), so hashing never allocates. */
#define PIECES_PER_JOB 64

const char *fadam_checksum_prefix(int version) {
    return version == 1 ? "sha256:" : version == 2 ? "xxh3-128:" : NULL;
}

size_t fadam_checksum_bytes(int version) {
    return version == 1 ? FADAM_SHA256_DIGEST_BYTES : version == 2 ? sizeof(XXH128_canonical_t) : 0;
}

static void hash_bytes(fadam_checksum *c, const void *data, size_t bytes) {
    if (c->version == 1)
        fadam_sha256_update(&c->sha256, data, bytes);
    else
        (void)XXH3_128bits_update(&c->xxh3, data, bytes); /* fails only for a NULL state */
}

void fadam_checksum_init(fadam_checksum *c, int version) {
    c->version = version;
    if (version == 1) {
        fadam_sha256_init(&c->sha256);
    } else {
        XXH3_INITSTATE(&c->xxh3);
        (void)XXH3_128bits_reset(&c->xxh3);
    }
}

void fadam_checksum_metadata(fadam_checksum *c, char *const *items, size_t n_items) {
    size_t i;
    for (i = 0; i < n_items; i++) {
        if (strcmp(items[2 * i], "checksum") == 0) continue;
        hash_bytes(c, items[2 * i], strlen(items[2 * i]) + 1);
        hash_bytes(c, items[2 * i + 1], strlen(items[2 * i + 1]) + 1);
    }
}

void fadam_checksum_entry(fadam_checksum *c, const char *name, uint64_t bytes) {
    char length[24];
    snprintf(length, sizeof length, "%llu", (unsigned long long)bytes);
    hash_bytes(c, name, strlen(name) + 1);
    hash_bytes(c, length, strlen(length) + 1);
}

typedef struct piece_job {
    const unsigned char *data;
    size_t bytes;
    XXH128_canonical_t digests[PIECES_PER_JOB];
} piece_job;

static void hash_piece(void *context, int64_t piece) {
    piece_job *job = (piece_job *)context;
    size_t begin = (size_t)piece * FADAM_CHECKSUM_PIECE_BYTES;
    size_t length = job->bytes - begin < FADAM_CHECKSUM_PIECE_BYTES ? job->bytes - begin : FADAM_CHECKSUM_PIECE_BYTES;
    XXH128_canonicalFromHash(&job->digests[piece], XXH3_128bits(job->data + begin, length));
}

void fadam_checksum_data(fadam_checksum *c, fadam_cpu_pool *pool, const void *data, size_t bytes) {
    const unsigned char *bytes_at = (const unsigned char *)data;
    piece_job job;
    if (c->version == 1) {
        fadam_sha256_update(&c->sha256, data, bytes);
        return;
    }
    while (bytes > 0) {
        size_t span = bytes < PIECES_PER_JOB * FADAM_CHECKSUM_PIECE_BYTES ? bytes : PIECES_PER_JOB * FADAM_CHECKSUM_PIECE_BYTES;
        int64_t n_pieces = (int64_t)((span + FADAM_CHECKSUM_PIECE_BYTES - 1) / FADAM_CHECKSUM_PIECE_BYTES);
        job.data = bytes_at;
        job.bytes = span;
        fadam_cpu_pool_run(pool, n_pieces, hash_piece, &job);
        hash_bytes(c, job.digests, (size_t)n_pieces * sizeof job.digests[0]);
        bytes_at += span;
        bytes -= span;
    }
}

void fadam_checksum_piece(const void *data, size_t bytes, unsigned char digest[16]) {
    XXH128_canonical_t canonical;
    XXH128_canonicalFromHash(&canonical, XXH3_128bits(data, bytes));
    memcpy(digest, canonical.digest, 16);
}

void fadam_checksum_add_piece(fadam_checksum *c, const unsigned char digest[16]) { hash_bytes(c, digest, 16); }

void fadam_checksum_final(fadam_checksum *c, unsigned char digest[FADAM_CHECKSUM_MAX_BYTES]) {
    if (c->version == 1) {
        fadam_sha256_final(&c->sha256, digest);
    } else {
        XXH128_canonical_t canonical;
        XXH128_canonicalFromHash(&canonical, XXH3_128bits_digest(&c->xxh3));
        memcpy(digest, canonical.digest, sizeof canonical.digest);
    }
}
