/* One element of a param or grad buffer of any dtype, read or written through the reference's own
 * conversions (round to nearest even), for the tests that build and check models. */
#ifndef FADAM_TESTS_DTYPE_VALUES_H
#define FADAM_TESTS_DTYPE_VALUES_H

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

#endif
