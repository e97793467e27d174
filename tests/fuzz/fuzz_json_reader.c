/* fuzz_json_reader.c - libFuzzer target for csrc/json_reader.c: any input is walked as one JSON value
 * (fadam_json_skip_value, depth 64, then fadam_json_end) and as a safetensors header
 * (fadam_safetensors_parse); each either succeeds or fails with FADAM_ERR_CORRUPT (or out of memory)
 * and a message, never reads past the input (an exactly sized copy under ASan), never recurses. Run
 * by tests/fuzz/run_fuzz.sh (make test); the seeds are in tests/fuzz/corpus_json. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "json_reader.h"
#include "safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void require(int condition, const char *what, fadam_status status) {
    if (condition) return;
    fprintf(stderr, "fuzz_json_reader: %s (status %s: %s)\n", what, fadam_status_string(status),
            fadam_last_error_message());
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = (char *)malloc(size ? size : 1), *arena = (char *)malloc(size + 1);
    fadam_json_reader reader;
    fadam_st_header header;
    fadam_status status;
    size_t i;
    require(text && arena, "out of host memory", FADAM_SUCCESS);
    if (size) memcpy(text, data, size);
    fadam_clear_error();
    fadam_json_reader_init(&reader, text, size, arena, "fuzz");
    status = fadam_json_skip_value(&reader, 64);
    if (status == FADAM_SUCCESS) status = fadam_json_end(&reader);
    require(status == FADAM_SUCCESS || status == FADAM_ERR_CORRUPT, "walk: unexpected status", status);
    require(status == FADAM_SUCCESS || strstr(fadam_last_error_message(), "malformed header: ") != NULL,
            "walk: a failure without its message", status);
    require(reader.position <= size && reader.arena_used <= size + 1, "walk: past the input or the arena", status);

    fadam_clear_error();
    status = fadam_safetensors_parse(text, size, &header, "fuzz");
    require(status == FADAM_SUCCESS || status == FADAM_ERR_CORRUPT || status == FADAM_ERR_OUT_OF_MEMORY,
            "safetensors: unexpected status", status);
    require(status == FADAM_SUCCESS || fadam_last_error_message()[0] != '\0', "safetensors: no message", status);
    for (i = 0; status == FADAM_SUCCESS && i < header.n_entries; i++)
        require(header.entries[i].name && header.entries[i].dtype &&
                    header.entries[i].n_dims <= FADAM_SAFETENSORS_MAX_DIMS,
                "safetensors: an entry without its fields", status);
    fadam_safetensors_free(&header);
    free(text);
    free(arena);
    return 0;
}
