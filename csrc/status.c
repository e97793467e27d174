/* status.c - status names and the per-thread detail message of the last failure. */
#include <stdio.h>
#include <string.h>

#include "internal.h"

#if defined(_MSC_VER)
#define FADAM_THREAD_LOCAL __declspec(thread)
#else
#define FADAM_THREAD_LOCAL __thread
#endif

static FADAM_THREAD_LOCAL char last_error_message[512];
/* -1 (not about one tensor) unless fadam_fail_tensor set it; thread-local data starts at 0, so it is
 * kept as the index plus one. */
static FADAM_THREAD_LOCAL int64_t last_error_tensor_plus_one;

fadam_status fadam_fail(fadam_status status, const char *format, ...) {
    va_list args;
    va_start(args, format);
    vsnprintf(last_error_message, sizeof last_error_message, format, args);
    va_end(args);
    last_error_tensor_plus_one = 0;
    return status;
}

fadam_status fadam_fail_tensor(int64_t tensor, fadam_status status, const char *format, ...) {
    va_list args;
    va_start(args, format);
    vsnprintf(last_error_message, sizeof last_error_message, format, args);
    va_end(args);
    last_error_tensor_plus_one = tensor < 0 ? 0 : tensor + 1;
    return status;
}

void fadam_clear_error(void) {
    last_error_message[0] = '\0';
    last_error_tensor_plus_one = 0;
}

const char *fadam_last_error_message(void) { return last_error_message; }

int64_t fadam_last_error_tensor(void) { return last_error_tensor_plus_one - 1; }

const char *fadam_status_string(fadam_status status) {
    switch (status) {
    case FADAM_SUCCESS: return "FADAM_SUCCESS: no error";
    case FADAM_ERR_NULL_POINTER: return "FADAM_ERR_NULL_POINTER: a required pointer was NULL";
    case FADAM_ERR_INVALID_VALUE: return "FADAM_ERR_INVALID_VALUE: a count, index or hyperparameter is out of range";
    case FADAM_ERR_MISALIGNED: return "FADAM_ERR_MISALIGNED: a pointer lacks the alignment of its dtype";
    case FADAM_ERR_UNSUPPORTED_DTYPE: return "FADAM_ERR_UNSUPPORTED_DTYPE: unknown or unsupported dtype";
    case FADAM_ERR_BAD_STATE: return "FADAM_ERR_BAD_STATE: call out of order for the optimizer's state";
    case FADAM_ERR_OUT_OF_MEMORY: return "FADAM_ERR_OUT_OF_MEMORY: an allocation failed";
    case FADAM_ERR_NO_DEVICE: return "FADAM_ERR_NO_DEVICE: no usable CUDA device";
    case FADAM_ERR_CUDA: return "FADAM_ERR_CUDA: a CUDA runtime call failed";
    case FADAM_ERR_WORKSPACE_TOO_SMALL: return "FADAM_ERR_WORKSPACE_TOO_SMALL: the buffer given is too small";
    case FADAM_ERR_OVERLAP: return "FADAM_ERR_OVERLAP: two tensors share memory";
    case FADAM_ERR_IO: return "FADAM_ERR_IO: reading or writing a file failed";
    case FADAM_ERR_CORRUPT: return "FADAM_ERR_CORRUPT: malformed data or checksum mismatch";
    case FADAM_ERR_MISMATCH: return "FADAM_ERR_MISMATCH: the checkpoint does not match the registered tensors";
    }
    return "FADAM_ERR_UNKNOWN: not a fusedadam status";
}

#define FADAM_STRINGIFY_(x) #x
#define FADAM_STRINGIFY(x) FADAM_STRINGIFY_(x)
const char *fadam_version_string(void) {
    return FADAM_STRINGIFY(FADAM_VERSION_MAJOR) "." FADAM_STRINGIFY(FADAM_VERSION_MINOR) "." FADAM_STRINGIFY(
        FADAM_VERSION_PATCH);
}

size_t fadam_dtype_size(fadam_dtype dtype) {
    switch (dtype) {
    case FADAM_FLOAT32: return 4;
    case FADAM_BFLOAT16: return 2;
    case FADAM_FLOAT16: return 2;
    }
    return 0;
}
