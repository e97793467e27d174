/* checksum_v2.h - the tests' own writing of README.md's version 2 checkpoint checksum, straight on
 * libxxhash (not csrc/checksum.c), so a test that re-signs an edited file also checks the definition:
 * XXH3-128 over the metadata and framing bytes and, for each entry's data, the canonical (big-endian)
 * XXH3-128 digests of its 8 MiB pieces in order. */
#ifndef FADAM_TEST_CHECKSUM_V2_H
#define FADAM_TEST_CHECKSUM_V2_H

#include <stdio.h>
#include <string.h>

#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>

#define TEST_CHECKSUM_PIECE_BYTES ((size_t)8 << 20)
#define TEST_CHECKSUM_PREFIX "xxh3-128:"
#define TEST_CHECKSUM_HEX 32

typedef struct test_checksum {
    XXH3_state_t state;
} test_checksum;

static inline void test_checksum_init(test_checksum *c) {
    XXH3_INITSTATE(&c->state);
    XXH3_128bits_reset(&c->state);
}

/* A NUL-terminated string, its NUL included (metadata keys and values, entry names, byte counts). */
static inline void test_checksum_string(test_checksum *c, const char *text) {
    XXH3_128bits_update(&c->state, text, strlen(text) + 1);
}

/* One entry: its name, its byte count in decimal, then its pieces' digests. */
static inline void test_checksum_entry(test_checksum *c, const char *name, const void *data, size_t bytes) {
    char count[24];
    size_t done;
    snprintf(count, sizeof count, "%zu", bytes);
    test_checksum_string(c, name);
    test_checksum_string(c, count);
    for (done = 0; done < bytes; done += TEST_CHECKSUM_PIECE_BYTES) {
        size_t piece = bytes - done < TEST_CHECKSUM_PIECE_BYTES ? bytes - done : TEST_CHECKSUM_PIECE_BYTES;
        XXH128_canonical_t digest;
        XXH128_canonicalFromHash(&digest, XXH3_128bits((const unsigned char *)data + done, piece));
        XXH3_128bits_update(&c->state, digest.digest, sizeof digest.digest);
    }
}

/* The 32 lowercase hex digits of the digest, NUL-terminated. */
static inline void test_checksum_hex(test_checksum *c, char hex[TEST_CHECKSUM_HEX + 1]) {
    XXH128_canonical_t digest;
    int i;
    XXH128_canonicalFromHash(&digest, XXH3_128bits_digest(&c->state));
    for (i = 0; i < 16; i++) snprintf(hex + 2 * i, 3, "%02x", digest.digest[i]);
}

#endif
