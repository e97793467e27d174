/* checksum.h - the checkpoint checksum of each format version: version 2 (written) is XXH3-128 over
 * the metadata and per-piece XXH3-128 digests of the data (README.md, "Checkpoints"); version 1 (read
 * only) is SHA-256 over the metadata and the data. Not installed. */
#ifndef FADAM_CHECKSUM_H
#define FADAM_CHECKSUM_H

#include <stddef.h>
#include <stdint.h>

#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t on the stack: hashing allocates nothing */
#include <xxhash.h>

#include "internal.h"
#include "sha256.h"

/* Version 2 hashes an entry's data in pieces of this many bytes (the last one shorter): a constant of
 * the format, so a file's checksum does not depend on the thread count or the I/O piece size. */
#define FADAM_CHECKSUM_PIECE_BYTES ((size_t)8 << 20)
/* The most digest bytes of any version (SHA-256's 32; XXH3-128 has 16). */
#define FADAM_CHECKSUM_MAX_BYTES 32

typedef struct fadam_checksum {
    XXH3_state_t xxh3; /* version 2: the hash of the metadata and the pieces' digests */
    fadam_sha256 sha256; /* version 1 */
    int version;
} fadam_checksum;

/* "sha256:" (version 1) or "xxh3-128:" (version 2); NULL for another version. */
const char *fadam_checksum_prefix(int version);
/* Digest bytes of a version: 32 or 16; 0 for another version. */
size_t fadam_checksum_bytes(int version);

void fadam_checksum_init(fadam_checksum *c, int version);
/* Every metadata key and value but "checksum", in key order, each NUL-terminated. `items` holds key,
 * value, key, value, ... sorted by key. */
void fadam_checksum_metadata(fadam_checksum *c, char *const *items, size_t n_items);
/* Starts an entry: its name and its byte count in decimal, each NUL-terminated. */
void fadam_checksum_entry(fadam_checksum *c, const char *name, uint64_t bytes);
/* The entry's data, in order. Every call but an entry's last must pass a whole number of
 * FADAM_CHECKSUM_PIECE_BYTES (so pieces never straddle calls). Pieces are hashed on `pool`'s threads
 * (NULL: the caller's), which the caller holds. */
void fadam_checksum_data(fadam_checksum *c, fadam_cpu_pool *pool, const void *data, size_t bytes);
/* Version 2 in two halves, for a caller that hashes pieces itself (overlapping them with reads):
 * the digest of one piece (any thread), then, in order, adding it as the next piece of the entry. */
void fadam_checksum_piece(const void *data, size_t bytes, unsigned char digest[16]);
void fadam_checksum_add_piece(fadam_checksum *c, const unsigned char digest[16]);
/* The digest (fadam_checksum_bytes(version) bytes, XXH3-128 in its canonical big-endian form). */
void fadam_checksum_final(fadam_checksum *c, unsigned char digest[FADAM_CHECKSUM_MAX_BYTES]);

#endif
