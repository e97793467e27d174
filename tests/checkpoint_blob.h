/* checkpoint_blob.h - a checkpoint held in memory, for tests that read or edit its bytes. */
#ifndef FADAM_TESTS_CHECKPOINT_BLOB_H
#define FADAM_TESTS_CHECKPOINT_BLOB_H

#include <stdint.h>
#include <stdlib.h>

#include "fusedadam.h"

typedef struct blob {
    unsigned char *bytes; /* malloc'd; NULL (size 0) when the save failed */
    size_t size;
} blob;

/* fadam_save_bytes into a new blob: the size query, then the bytes. */
static blob blob_of(const fadam_optimizer *opt) {
    blob out = {NULL, 0};
    size_t size = 0;
    if (fadam_save_bytes(opt, &size, NULL, 0, NULL) != FADAM_SUCCESS) return out;
    out.bytes = (unsigned char *)malloc(size);
    if (out.bytes && fadam_save_bytes(opt, &size, out.bytes, size, NULL) == FADAM_SUCCESS) out.size = size;
    return out;
}

/* The JSON header's length: safetensors' leading little-endian u64. */
static size_t blob_header_length(const blob *b) {
    uint64_t length = 0;
    int i;
    for (i = 7; i >= 0; i--) length = length << 8 | b->bytes[i];
    return (size_t)length;
}

#endif
