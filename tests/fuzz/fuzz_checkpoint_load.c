/* fuzz_checkpoint_load.c - libFuzzer target for fadam_load_bytes: any input either loads or is refused
 * with a status and a message, and a refused input leaves the optimizer exactly as it was. Built with
 * -DFUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION, which lets inputs past the checksum. Run by
 * tests/fuzz/run_fuzz.sh (make test); the seeds are in tests/fuzz/corpus. */
#include <stdio.h>
#include <stdlib.h>

#include "fusedadam.h"
#include "fuzz_model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static fadam_optimizer *fuzz_optimizer;
static fuzz_model_snapshot fuzz_before, fuzz_after;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char message[512];
    fadam_status status;
    if (!fuzz_optimizer) {
        fuzz_optimizer = fuzz_model_create();
        if (!fuzz_optimizer) {
            fprintf(stderr, "fuzz_checkpoint_load: cannot create the optimizer: %s\n", fadam_last_error_message());
            abort();
        }
        fuzz_model_snapshot_take(fuzz_optimizer, &fuzz_before);
    }
    /* libFuzzer's data pointer may be NULL for the empty input; the API wants a pointer. */
    status = fadam_load_bytes(fuzz_optimizer, size ? (const void *)data : (const void *)"", size, NULL);
    snprintf(message, sizeof message, "%s", fadam_last_error_message()); /* the getters clear it */
    fuzz_model_snapshot_take(fuzz_optimizer, &fuzz_after);
    if (status == FADAM_SUCCESS) {
        fuzz_before = fuzz_after;
        return 0;
    }
    if (message[0] == '\0') {
        fprintf(stderr, "fuzz_checkpoint_load: status %d without a message\n", (int)status);
        abort();
    }
    if (status != FADAM_ERR_CORRUPT && status != FADAM_ERR_MISMATCH && status != FADAM_ERR_OUT_OF_MEMORY) {
        fprintf(stderr, "fuzz_checkpoint_load: unexpected status %s: %s\n", fadam_status_string(status),
                message);
        abort();
    }
    if (memcmp(&fuzz_before, &fuzz_after, sizeof fuzz_before) != 0) {
        fprintf(stderr, "fuzz_checkpoint_load: a refused input changed the optimizer: %s\n", message);
        abort();
    }
    return 0;
}
