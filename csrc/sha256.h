/* sha256.h - SHA-256 (FIPS 180-4), streaming: verifies format_version 1 checkpoints only; not installed. */
#ifndef FADAM_SHA256_H
#define FADAM_SHA256_H

#include <stddef.h>
#include <stdint.h>

#define FADAM_SHA256_DIGEST_BYTES 32

typedef struct fadam_sha256 {
    uint32_t state[8];
    uint64_t total_bytes;
    unsigned char block[64];
    size_t block_used;
} fadam_sha256;

void fadam_sha256_init(fadam_sha256 *hash);
void fadam_sha256_update(fadam_sha256 *hash, const void *data, size_t bytes);
void fadam_sha256_final(fadam_sha256 *hash, unsigned char digest[FADAM_SHA256_DIGEST_BYTES]);

/* Uses the x86 SHA extensions when `enable` and the CPU has them (the default), else plain C;
 * returns whether they are now used. Process-wide: for tests, to check both paths. */
int fadam_sha256_set_accelerated(int enable);

#endif
