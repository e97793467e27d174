/* safetensors.c - the safetensors framing of safetensors.h: writing a header, reading one back and
 * checking that its entries' byte ranges tile the data. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "json_reader.h"
#include "safetensors.h"

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

static int compare_first_strings(const void *a, const void *b) {
    return strcmp(((const char *const *)a)[0], ((const char *const *)b)[0]);
}

fadam_status fadam_safetensors_write_header(fadam_text *out, char *const *metadata, size_t n_metadata,
                                            const fadam_st_item *items, size_t n_items, size_t slack,
                                            const char *marked_key, size_t *marked_position, uint64_t *data_bytes,
                                            const char *function) {
    uint64_t offset = 0;
    size_t i;
    fadam_text_append_string(out, "{\"__metadata__\":{");
    for (i = 0; i < n_metadata; i++) {
        if (i) fadam_text_append(out, ",", 1);
        fadam_text_append_json_string(out, metadata[2 * i]);
        fadam_text_append(out, ":", 1);
        if (strcmp(metadata[2 * i], marked_key) == 0) *marked_position = out->length + 1;
        fadam_text_append_json_string(out, metadata[2 * i + 1]);
    }
    fadam_text_append(out, "}", 1);
    for (i = 0; i < n_items; i++) {
        char fields[160];
        fadam_text_append(out, ",", 1);
        fadam_text_append_json_string(out, items[i].name);
        snprintf(fields, sizeof fields, ":{\"dtype\":\"%s\",\"shape\":[%lld],\"data_offsets\":[%llu,%llu]}",
                 items[i].dtype, (long long)items[i].numel, (unsigned long long)offset,
                 (unsigned long long)(offset + items[i].bytes));
        fadam_text_append_string(out, fields);
        offset += items[i].bytes;
    }
    fadam_text_append(out, "}", 1);
    /* Spaces (as safetensors pads): the slack, then up to a multiple of 8 for the data. A failed
     * append adds nothing, so the loops stop at the first failure instead of spinning on it. */
    for (i = 0; i < slack && !out->out_of_memory; i++) fadam_text_append(out, " ", 1);
    while ((8 + out->length) % 8 && !out->out_of_memory) fadam_text_append(out, " ", 1);
    if (out->out_of_memory)
        return fadam_fail(FADAM_ERR_OUT_OF_MEMORY, "%s: no host memory for the checkpoint header", function);
    if (out->length > FADAM_SAFETENSORS_HEADER_LIMIT)
        return fadam_fail(FADAM_ERR_INVALID_VALUE,
                          "%s: the checkpoint header would be %zu bytes, over the %llu-byte limit", function,
                          out->length, (unsigned long long)FADAM_SAFETENSORS_HEADER_LIMIT);
    *data_bytes = offset;
    return FADAM_SUCCESS;
}

fadam_status fadam_safetensors_check_size(uint64_t size, const char *function) {
    if (size < 8)
        return fadam_fail(FADAM_ERR_CORRUPT, "%s: the checkpoint is %llu bytes, shorter than the 8-byte header length",
                          function, (unsigned long long)size);
    return FADAM_SUCCESS;
}

fadam_status fadam_safetensors_header_length(const unsigned char prefix[8], uint64_t size, uint64_t *length,
                                             const char *function) {
    uint64_t header_length = 0;
    int i;
    for (i = 7; i >= 0; i--) header_length = header_length << 8 | prefix[i];
    if (header_length == 0) return fadam_fail(FADAM_ERR_CORRUPT, "%s: the header length is 0", function);
    if (header_length > (uint64_t)INT64_MAX)
        return fadam_fail(FADAM_ERR_CORRUPT, "%s: the header length is negative (%lld as a signed 64-bit number)",
                          function, (long long)(header_length - (uint64_t)INT64_MAX - 1) + INT64_MIN);
    if (header_length > size - 8)
        return fadam_fail(FADAM_ERR_CORRUPT,
                          "%s: the header length %llu reaches past the end of the %llu-byte checkpoint "
                          "(truncated?)",
                          function, (unsigned long long)header_length, (unsigned long long)size);
    if (header_length > FADAM_SAFETENSORS_HEADER_LIMIT)
        return fadam_fail(FADAM_ERR_CORRUPT, "%s: the header length %llu is over the %llu-byte limit", function,
                          (unsigned long long)header_length, (unsigned long long)FADAM_SAFETENSORS_HEADER_LIMIT);
    *length = header_length;
    return FADAM_SUCCESS;
}

static fadam_status parse_metadata(fadam_json_reader *p, fadam_st_header *out) {
    fadam_status status;
    if ((status = fadam_json_expect(p, '{', "__metadata__ is not an object")) != FADAM_SUCCESS) return status;
    if (fadam_json_peek(p) == '}') {
        p->position++;
        return FADAM_SUCCESS;
    }
    for (;;) {
        const char *key, *value;
        if ((status = fadam_json_string(p, &key)) != FADAM_SUCCESS) return status;
        if ((status = fadam_json_expect(p, ':', "expected ':' after a key")) != FADAM_SUCCESS) return status;
        if (fadam_json_peek(p) != '"') return fadam_json_error(p, "a __metadata__ value is not a string");
        if ((status = fadam_json_string(p, &value)) != FADAM_SUCCESS) return status;
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
        if (fadam_json_accept(p, ',')) continue;
        return fadam_json_expect(p, '}', "expected ',' or '}' in __metadata__");
    }
}

static fadam_status parse_entry(fadam_json_reader *p, fadam_st_entry *entry) {
    int seen_dtype = 0, seen_shape = 0, seen_offsets = 0;
    fadam_status status;
    if ((status = fadam_json_expect(p, '{', "a tensor entry is not an object")) != FADAM_SUCCESS) return status;
    if (fadam_json_peek(p) == '}') return fadam_json_error(p, "empty tensor entry");
    for (;;) {
        const char *key;
        if ((status = fadam_json_string(p, &key)) != FADAM_SUCCESS) return status;
        if ((status = fadam_json_expect(p, ':', "expected ':' after a key")) != FADAM_SUCCESS) return status;
        if (strcmp(key, "dtype") == 0) {
            if (seen_dtype++) return fadam_json_error(p, "duplicate key \"dtype\"");
            if ((status = fadam_json_string(p, &entry->dtype)) != FADAM_SUCCESS) return status;
        } else if (strcmp(key, "shape") == 0) {
            size_t start;
            int dims = 0;
            if (seen_shape++) return fadam_json_error(p, "duplicate key \"shape\"");
            if ((status = fadam_json_expect(p, '[', "shape is not an array")) != FADAM_SUCCESS) return status;
            start = p->position - 1;
            entry->numel = 1;
            if (fadam_json_peek(p) == ']') {
                p->position++;
            } else {
                for (;;) {
                    uint64_t dim;
                    if ((status = fadam_json_integer(p, &dim)) != FADAM_SUCCESS) return status;
                    if (++dims > FADAM_SAFETENSORS_MAX_DIMS)
                        return fadam_json_error(p, "shape has more than 32 dimensions");
                    entry->n_dims = dims;
                    if (dim != 0 && entry->numel > (uint64_t)INT64_MAX / dim)
                        entry->shape_overflows = 1;
                    else
                        entry->numel *= dim;
                    if (fadam_json_accept(p, ',')) continue;
                    if ((status = fadam_json_expect(p, ']', "expected ',' or ']' in shape")) != FADAM_SUCCESS)
                        return status;
                    break;
                }
            }
            entry->shape_text = p->text + start;
            entry->shape_length = (int)(p->position - start);
        } else if (strcmp(key, "data_offsets") == 0) {
            if (seen_offsets++) return fadam_json_error(p, "duplicate key \"data_offsets\"");
            if ((status = fadam_json_expect(p, '[', "data_offsets is not an array")) != FADAM_SUCCESS) return status;
            if ((status = fadam_json_integer(p, &entry->begin)) != FADAM_SUCCESS) return status;
            if ((status = fadam_json_expect(p, ',', "data_offsets needs two integers")) != FADAM_SUCCESS) return status;
            if ((status = fadam_json_integer(p, &entry->end)) != FADAM_SUCCESS) return status;
            if ((status = fadam_json_expect(p, ']', "data_offsets needs exactly two integers")) != FADAM_SUCCESS)
                return status;
        } else {
            return fadam_json_error(p, "unknown key in a tensor entry (only dtype, shape, data_offsets)");
        }
        if (fadam_json_accept(p, ',')) continue;
        if ((status = fadam_json_expect(p, '}', "expected ',' or '}' in a tensor entry")) != FADAM_SUCCESS)
            return status;
        break;
    }
    if (!seen_dtype || !seen_shape || !seen_offsets)
        return fadam_fail(FADAM_ERR_CORRUPT, "%s: malformed header: tensor '%.*s' lacks %s", p->function,
                          FADAM_NAME_CLIP, entry->name,
                          !seen_dtype   ? "dtype"
                          : !seen_shape ? "shape"
                                        : "data_offsets");
    return FADAM_SUCCESS;
}

fadam_status fadam_safetensors_parse(const char *text, size_t length, fadam_st_header *out, const char *function) {
    fadam_json_reader reader, *p = &reader;
    fadam_status status;
    memset(out, 0, sizeof *out);
    out->arena = (char *)malloc(length + 1);
    if (!out->arena) return fadam_fail(FADAM_ERR_OUT_OF_MEMORY, "%s: no host memory for the header", function);
    fadam_json_reader_init(p, text, length, out->arena, function);
    if (length == 0 || text[0] != '{') return fadam_json_error(p, "the header does not start with '{'");
    p->position = 1;
    if (fadam_json_peek(p) == '}') {
        p->position++;
    } else {
        for (;;) {
            const char *key;
            if ((status = fadam_json_string(p, &key)) != FADAM_SUCCESS) return status;
            if ((status = fadam_json_expect(p, ':', "expected ':' after a key")) != FADAM_SUCCESS) return status;
            if (strcmp(key, "__metadata__") == 0) {
                if (out->has_metadata++) return fadam_json_error(p, "duplicate key \"__metadata__\"");
                if ((status = parse_metadata(p, out)) != FADAM_SUCCESS) return status;
            } else {
                fadam_st_entry *entry;
                if (out->n_entries == out->entries_capacity) {
                    size_t capacity = out->entries_capacity ? 2 * out->entries_capacity : 64;
                    fadam_st_entry *grown = (fadam_st_entry *)realloc(out->entries, capacity * sizeof *grown);
                    if (!grown)
                        return fadam_fail(FADAM_ERR_OUT_OF_MEMORY, "%s: no host memory for the header", function);
                    out->entries = grown;
                    out->entries_capacity = capacity;
                }
                entry = &out->entries[out->n_entries++];
                memset(entry, 0, sizeof *entry);
                entry->name = key;
                if ((status = parse_entry(p, entry)) != FADAM_SUCCESS) return status;
            }
            if (fadam_json_accept(p, ',')) continue;
            if ((status = fadam_json_expect(p, '}', "expected ',' or '}' after a tensor entry")) != FADAM_SUCCESS)
                return status;
            break;
        }
    }
    return fadam_json_end(p);
}

void fadam_safetensors_free(fadam_st_header *parsed) {
    free(parsed->entries);
    free(parsed->metadata);
    free(parsed->arena);
}

static int compare_entry_names(const void *a, const void *b) {
    return strcmp((*(const fadam_st_entry *const *)a)->name, (*(const fadam_st_entry *const *)b)->name);
}

static int compare_entry_offsets(const void *a, const void *b) {
    const fadam_st_entry *x = *(const fadam_st_entry *const *)a, *y = *(const fadam_st_entry *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

fadam_st_entry *fadam_safetensors_find(fadam_st_entry *const *by_name, size_t n_entries, const char *name,
                                       size_t *index_out) {
    size_t low = 0, high = n_entries;
    while (low < high) {
        size_t middle = low + (high - low) / 2;
        int order = strcmp(by_name[middle]->name, name);
        if (order == 0) {
            *index_out = middle;
            return by_name[middle];
        }
        if (order < 0)
            low = middle + 1;
        else
            high = middle;
    }
    return NULL;
}

/* dtype known, shape without overflow, byte range inside the data and as long as the shape says;
 * then, in offset order, no overlap, no hole, nothing after the last entry (safetensors' rules). */
static fadam_status check_byte_ranges(fadam_st_header *parsed, fadam_st_entry **by_offset, uint64_t data_size,
                                      const char *function) {
    uint64_t previous_end = 0;
    size_t i;
    for (i = 0; i < parsed->n_entries; i++) {
        fadam_st_entry *entry = &parsed->entries[i];
        int dtype = find_dtype(entry->dtype);
        uint64_t bytes;
        if (dtype < 0)
            return fadam_fail(FADAM_ERR_CORRUPT, "%s: entry '%.*s': unknown dtype \"%.20s\"", function, FADAM_NAME_CLIP,
                              entry->name, entry->dtype);
        if (entry->shape_overflows || entry->numel > UINT64_MAX / known_dtypes[dtype].bytes)
            return fadam_fail(FADAM_ERR_CORRUPT, "%s: entry '%.*s': shape %.*s overflows 64 bits", function,
                              FADAM_NAME_CLIP, entry->name, entry->shape_length > 200 ? 200 : entry->shape_length,
                              entry->shape_text);
        bytes = entry->numel * known_dtypes[dtype].bytes;
        if (entry->begin > entry->end)
            return fadam_fail(FADAM_ERR_CORRUPT, "%s: entry '%.*s': data_offsets [%llu, %llu] end before they begin",
                              function, FADAM_NAME_CLIP, entry->name, (unsigned long long)entry->begin,
                              (unsigned long long)entry->end);
        if (entry->end > data_size)
            return fadam_fail(FADAM_ERR_CORRUPT,
                              "%s: entry '%.*s': data_offsets [%llu, %llu] reach past the %llu data "
                              "bytes (truncated?)",
                              function, FADAM_NAME_CLIP, entry->name, (unsigned long long)entry->begin,
                              (unsigned long long)entry->end, (unsigned long long)data_size);
        if (entry->end - entry->begin != bytes)
            return fadam_fail(FADAM_ERR_CORRUPT,
                              "%s: entry '%.*s': data_offsets [%llu, %llu] span %llu bytes, but shape "
                              "%.*s of %s needs %llu",
                              function, FADAM_NAME_CLIP, entry->name, (unsigned long long)entry->begin,
                              (unsigned long long)entry->end, (unsigned long long)(entry->end - entry->begin),
                              entry->shape_length > 100 ? 100 : entry->shape_length, entry->shape_text,
                              known_dtypes[dtype].name, (unsigned long long)bytes);
    }
    for (i = 0; i < parsed->n_entries; i++) by_offset[i] = &parsed->entries[i];
    if (parsed->n_entries > 1) qsort(by_offset, parsed->n_entries, sizeof *by_offset, compare_entry_offsets);
    for (i = 0; i < parsed->n_entries; i++) {
        const fadam_st_entry *entry = by_offset[i];
        if (entry->begin < previous_end)
            return fadam_fail(FADAM_ERR_CORRUPT, "%s: entries '%.*s' and '%.*s' overlap in the data", function,
                              FADAM_NAME_CLIP, by_offset[i - 1]->name, FADAM_NAME_CLIP, entry->name);
        if (entry->begin > previous_end)
            return fadam_fail(FADAM_ERR_CORRUPT, "%s: %llu data bytes before entry '%.*s' belong to no entry", function,
                              (unsigned long long)(entry->begin - previous_end), FADAM_NAME_CLIP, entry->name);
        previous_end = entry->end;
    }
    if (previous_end != data_size)
        return fadam_fail(FADAM_ERR_CORRUPT, "%s: the last %llu data bytes belong to no entry", function,
                          (unsigned long long)(data_size - previous_end));
    return FADAM_SUCCESS;
}

static fadam_status check_unique_keys(fadam_st_header *parsed, fadam_st_entry **by_name, const char *function) {
    size_t i;
    for (i = 0; i < parsed->n_entries; i++) by_name[i] = &parsed->entries[i];
    if (parsed->n_entries > 1) qsort(by_name, parsed->n_entries, sizeof *by_name, compare_entry_names);
    for (i = 1; i < parsed->n_entries; i++)
        if (strcmp(by_name[i]->name, by_name[i - 1]->name) == 0)
            return fadam_fail(FADAM_ERR_CORRUPT, "%s: malformed header: duplicate key '%.*s'", function,
                              FADAM_NAME_CLIP, by_name[i]->name);
    if (parsed->n_metadata > 1)
        qsort(parsed->metadata, parsed->n_metadata, 2 * sizeof *parsed->metadata, compare_first_strings);
    for (i = 1; i < parsed->n_metadata; i++)
        if (strcmp(parsed->metadata[2 * i], parsed->metadata[2 * i - 2]) == 0)
            return fadam_fail(FADAM_ERR_CORRUPT, "%s: malformed header: duplicate __metadata__ key '%.*s'", function,
                              FADAM_NAME_CLIP, parsed->metadata[2 * i]);
    return FADAM_SUCCESS;
}

fadam_status fadam_safetensors_index(fadam_st_header *header, fadam_st_entry **by_name, fadam_st_entry **by_offset,
                                     uint64_t data_size, const char *function) {
    fadam_status status = check_unique_keys(header, by_name, function);
    if (status == FADAM_SUCCESS) status = check_byte_ranges(header, by_offset, data_size, function);
    return status;
}
