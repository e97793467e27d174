/* One element of a param or grad buffer of any dtype, read or written through the reference's own
 * conversions (round to nearest even), for the tests that build and check models. */
#ifndef FADAM_TESTS_DTYPE_VALUES_H
#define FADAM_TESTS_DTYPE_VALUES_H

#include <math.h>
#include <string.h>

#include "internal.h"

static void store_as(fadam_dtype dtype, void *base, int64_t i, float x) {
    if (dtype == FADAM_FLOAT32) ((float *)base)[i] = x;
    else if (dtype == FADAM_BFLOAT16) ((uint16_t *)base)[i] = fadam_float_to_bf16_bits(x);
    else ((uint16_t *)base)[i] = fadam_float_to_fp16_bits(x);
}

static float load_as(fadam_dtype dtype, const void *base, int64_t i) {
    if (dtype == FADAM_FLOAT32) return ((const float *)base)[i];
    if (dtype == FADAM_BFLOAT16) return fadam_bf16_bits_to_float(((const uint16_t *)base)[i]);
    return fadam_fp16_bits_to_float(((const uint16_t *)base)[i]);
}

/* Bitwise, except that any NaN equals any NaN (payloads are not part of the contract). */
static int same_floats(const float *a, const float *b, int64_t n) {
    int64_t i;
    for (i = 0; i < n; i++)
        if (memcmp(&a[i], &b[i], 4) != 0 && !(isnan(a[i]) && isnan(b[i]))) return 0;
    return 1;
}

/* The same for a param buffer of any dtype. */
static int same_params(fadam_dtype dtype, const void *a, const void *b, int64_t n) {
    int64_t i;
    if (dtype == FADAM_FLOAT32) return same_floats((const float *)a, (const float *)b, n);
    for (i = 0; i < n; i++) {
        uint16_t x = ((const uint16_t *)a)[i], y = ((const uint16_t *)b)[i];
        if (x != y && !(isnan(load_as(dtype, a, i)) && isnan(load_as(dtype, b, i)))) return 0;
    }
    return 1;
}

#endif
