/* state_layout_digest.h - one number summing every kernels/state_layout.h function's output over a
 * sample of inputs, computed the same way by gcc (tests/test_state_layout.c), g++ and nvcc on the host
 * and on a GPU (tests/test_state_layout_nvcc.cu): they must all equal SL_DIGEST_GOLDEN, which also
 * pins the encodings (change it only with the formulas, and say so in docs/STATE_LAYOUTS.md). */
#ifndef FADAM_TESTS_STATE_LAYOUT_DIGEST_H
#define FADAM_TESTS_STATE_LAYOUT_DIGEST_H

#include "state_layout.h"

#define SL_DIGEST_COUNT (1u << 22)
#define SL_DIGEST_GOLDEN 0x682A1AC8B9556DE6ull

/* Input i: an fp32 bit pattern spread over the whole space (odd multiplier: a bijection), specials
 * and ties forced every few patterns. */
static inline FADAM_HOST_DEVICE uint64_t sl_digest_one(uint32_t i) {
    uint32_t pattern = i * 0x9E3779B1u;
    float x, y, scale, inverse, back;
    uint16_t remainder, remainder_rne, param, param_rne;
    uint32_t random, words[8];
    uint64_t sum = 0;
    int k;
    if ((i & 15u) == 1u) pattern = (pattern & 0xFFFF0000u) | 0x8000u; /* a tie */
    if ((i & 255u) == 2u) pattern = (pattern & 0x80000000u) | 0x7F800000u | (i & 0x00400000u); /* Inf, NaN */
    x = fadam_sl_bits_float(pattern);
    param = fadam_master_split(x, &remainder);
    param_rne = fadam_master_split_rne(x, &remainder_rne);
    back = fadam_master_join(param, remainder);
    random = fadam_random_bits(0x5EEDull, i >> 10, i, i & 7u);
    /* a block scale of 2 and a value in [1, 2) of either sign, or the pattern itself */
    y = fadam_sl_bits_float(0x3F800000u | (pattern & 0x807FFFFFu));
    if ((i & 31u) == 3u) y = x;
    scale = fadam_q8_scale_from_absmax((i & 63u) == 4u ? 1e-39f : 2.0f);
    inverse = fadam_q8_inverse_scale(scale);
    words[0] = ((uint32_t)param << 16) | remainder;
    words[1] = ((uint32_t)param_rne << 16) | remainder_rne;
    words[2] = fadam_sl_float_bits(back);
    words[3] = random ^ ((uint32_t)fadam_round_bf16_stochastic(x, random) << 16) ^ fadam_round_bf16_nearest(x);
    words[4] = (uint32_t)(uint8_t)fadam_q8_quantize_m(y, inverse) |
               ((uint32_t)fadam_q8_quantize_v(y, inverse) << 8) |
               ((uint32_t)(uint8_t)fadam_q8_quantize_m_stochastic(y, inverse, random) << 16) |
               ((uint32_t)fadam_q8_quantize_v_stochastic(y, inverse, random >> 16) << 24);
    words[5] = fadam_sl_float_bits(fadam_q8_dequantize_m((int8_t)(pattern & 0xFFu), scale));
    words[6] = fadam_sl_float_bits(fadam_q8_dequantize_v((uint8_t)(pattern >> 8), scale));
    words[7] = (uint32_t)fadam_master_is_even_tie(x) | (fadam_sl_float_bits(fadam_q8_absmax_accumulate(y, x)) << 1);
    for (k = 0; k < 8; k++) sum += fadam_mix64(((uint64_t)k << 32 | words[k]) ^ ((uint64_t)i << 35));
    return sum;
}

/* The digest of inputs [begin, end): a wrapping sum, so any split of the range gives the same total. */
static inline FADAM_HOST_DEVICE uint64_t sl_digest_range(uint32_t begin, uint32_t end) {
    uint64_t sum = 0;
    uint32_t i;
    for (i = begin; i < end; i++) sum += sl_digest_one(i);
    return sum;
}

#endif
