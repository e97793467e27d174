/* safetensors.h - the safetensors framing of a checkpoint (safetensors.c); not installed.
 *
 * Layout: u64 little-endian header length N, N bytes of JSON (space-padded so the data starts at a
 * multiple of 8), then the entries' bytes, back to back. The JSON:
 *   root:  { "__metadata__": { string: string, ... }, name: entry, ... }
 *   entry: { "dtype": string, "shape": [int, ...], "data_offsets": [int, int] }
 * This file writes such a header, and reads one back: the length's bounds, the JSON against that
 * schema (json_reader.h), unique keys, known dtypes, and byte ranges that tile the data exactly. */
#ifndef FADAM_SAFETENSORS_H
#define FADAM_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "fusedadam.h"
#include "json_writer.h"

/* A JSON header longer than this is refused before it is read (safetensors' own limit). */
#define FADAM_SAFETENSORS_HEADER_LIMIT ((uint64_t)100 << 20)
#define FADAM_SAFETENSORS_MAX_DIMS 32
/* Names are clipped in messages so one message keeps its end. */
#define FADAM_NAME_CLIP 120

/* An entry to write: a one-dimensional [numel] tensor of `dtype` taking `bytes` bytes of data. */
typedef struct fadam_st_item {
    char *name;
    const char *dtype;
    int64_t numel;
    uint64_t bytes;
    const void *data; /* the writer's, not used here */
} fadam_st_item;

/* An entry read back. */
typedef struct fadam_st_entry {
    const char *name;
    const char *dtype;
    const char *shape_text; /* the JSON array, for messages */
    int shape_length;
    int n_dims;
    uint64_t numel;
    int shape_overflows;
    uint64_t begin, end;
    int matched; /* the caller's */
} fadam_st_entry;

typedef struct fadam_st_header {
    fadam_st_entry *entries;
    size_t n_entries, entries_capacity;
    char **metadata; /* key, value, ...; sorted by key after fadam_safetensors_index */
    size_t n_metadata, metadata_capacity;
    int has_metadata;
    char *arena; /* every decoded string */
} fadam_st_header;

/* The header text: {"__metadata__":{...}, then `items` in the order given with offsets from 0},
 * `slack` spaces, and spaces up to a multiple of 8 of 8 + its length. `metadata` holds key, value,
 * ... sorted by key. *marked_position: where the value of `marked_key` starts (past its quote). */
fadam_status fadam_safetensors_write_header(fadam_text *out, char *const *metadata, size_t n_metadata,
                                            const fadam_st_item *items, size_t n_items, size_t slack,
                                            const char *marked_key, size_t *marked_position, uint64_t *data_bytes,
                                            const char *function);

/* A checkpoint of `size` bytes holds at least the 8-byte length. */
fadam_status fadam_safetensors_check_size(uint64_t size, const char *function);
/* The header length from the first 8 bytes: nonzero, inside the file, within the limit. */
fadam_status fadam_safetensors_header_length(const unsigned char prefix[8], uint64_t size, uint64_t *length,
                                             const char *function);
/* Parses `length` bytes of header JSON into *out (free it with fadam_safetensors_free, also on failure). */
fadam_status fadam_safetensors_parse(const char *text, size_t length, fadam_st_header *out, const char *function);
/* Unique entry names and metadata keys (by_name sorted, metadata sorted), then every entry's dtype,
 * shape and range: inside the `data_size` bytes, as long as its shape, and, in offset order
 * (by_offset), no overlap, no hole, nothing after the last. by_name and by_offset hold n_entries. */
fadam_status fadam_safetensors_index(fadam_st_header *header, fadam_st_entry **by_name, fadam_st_entry **by_offset,
                                     uint64_t data_size, const char *function);
/* The entry called `name` in by_name (sorted), and its index there; NULL when none. */
fadam_st_entry *fadam_safetensors_find(fadam_st_entry *const *by_name, size_t n_entries, const char *name,
                                       size_t *index_out);
void fadam_safetensors_free(fadam_st_header *header);

#endif
