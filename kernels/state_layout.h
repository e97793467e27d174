/* state_layout.h - how an optimizer state is stored, element by element: the bit-level encodings that
 * the kernel, the emulated kernel, the C reference and the CPU path must share (docs/STATE_LAYOUTS.md).
 * Plain C99 that gcc, g++ and nvcc accept; integer bit manipulation through memcpy, IEEE operations
 * only (+, *, /, sqrt: correctly rounded on both sides; built with -ffp-contract=off / -fmad=false),
 * so every function returns the same bits on the CPU and the GPU.
 *
 *   1. fp32 master as bf16 param + 16-bit remainder    fadam_master_split / fadam_master_join
 *   2. bf16 with reproducible stochastic rounding       fadam_round_bf16_stochastic, fadam_random_bits
 *   3. 8-bit blockwise moments, one fp32 scale per block of FADAM_Q8_BLOCK elements   fadam_q8_*
 */
#ifndef FADAM_STATE_LAYOUT_H
#define FADAM_STATE_LAYOUT_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#ifndef FADAM_HOST_DEVICE
#if defined(__CUDACC__)
#define FADAM_HOST_DEVICE __host__ __device__
#else
#define FADAM_HOST_DEVICE
#endif
#endif

static inline FADAM_HOST_DEVICE uint32_t fadam_sl_float_bits(float x) {
    uint32_t bits;
    memcpy(&bits, &x, sizeof bits);
    return bits;
}

static inline FADAM_HOST_DEVICE float fadam_sl_bits_float(uint32_t bits) {
    float x;
    memcpy(&x, &bits, sizeof x);
    return x;
}

/* ---------------------------------------------------------------------------------------------------
 * bf16 conversions
 * ------------------------------------------------------------------------------------------------- */

/* bf16 -> fp32: exact. */
static inline FADAM_HOST_DEVICE float fadam_bf16_to_float(uint16_t bits) {
    return fadam_sl_bits_float((uint32_t)bits << 16);
}

/* fp32 -> bf16, round to nearest, ties to even; a NaN becomes a quiet NaN with its upper payload.
 * The same bits as csrc/reference.c's fadam_float_to_bf16_bits (gradients, params without a master). */
static inline FADAM_HOST_DEVICE uint16_t fadam_round_bf16_nearest(float x) {
    uint32_t bits = fadam_sl_float_bits(x);
    if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((bits >> 16) | 0x0040u);
    return (uint16_t)((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}

/* ---------------------------------------------------------------------------------------------------
 * 1. The fp32 master as the bf16 param plus a 16-bit remainder (14 B/param held for AdamW).
 *
 * Master bits X = H:L (upper and lower 16 bits). The remainder is L; the param is H rounded by L.
 * Every finite bf16 value p that is even (lowest bit 0) is the round-to-nearest-even image of 65,537
 * fp32 values: H = p with L in [0, 0x8000] and H = p - 1 with L in [0x8000, 0xFFFF] (both ties
 * included), one more than 16 bits can name. So no 16-bit remainder gives both "param = RNE(master)"
 * and "join(split(x)) == x" for every x: the one fp32 value per even p that is lost is a tie
 * (L == 0x8000). So the fp32-master path does not use RNE for a bf16 param either: every path with an
 * fp32 master writes its bf16 param rounded to nearest with ties away from zero
 * (fadam_bf16_from_master; TransformerEngine's store_param_remainders rounds the same way), and
 * then the remainder layout is the fp32-master layout bit for bit: param, master, m and v, at every
 * step. The param differs from RNE(master) only when L == 0x8000 and H is even
 * (fadam_master_is_even_tie), where both neighbours are exactly as close (rate about 2^-17 per element
 * and step for masters with uniform low bits). Two splits share one join:
 *
 *   fadam_master_split      exact: join(split(x)) == x for every x except signalling NaNs (they come
 *                           back quiet); the param is fadam_bf16_from_master(x).
 *   fadam_master_split_rne  param == RNE(master) always, for a param rounded elsewhere (torch's
 *                           .to(torch.bfloat16)); an even-tie master is stored one fp32 ulp toward
 *                           zero (L = 0x7FFF, same param).
 *
 * Initial state: remainder 0 gives master == param exactly (the fp32-master path's init). */

/* 1 when `master` is finite with L == 0x8000 and H even: the only masters whose param
 * (fadam_bf16_from_master) differs from RNE(master), and where fadam_master_split_rne loses the
 * master's last ulp. */
static inline FADAM_HOST_DEVICE int fadam_master_is_even_tie(float master) {
    uint32_t bits = fadam_sl_float_bits(master);
    return (bits & 0x7FFFFFFFu) <= 0x7F800000u && (bits & 0x1FFFFu) == 0x08000u;
}

/* The bf16 param of an fp32 master: round to nearest, ties away from zero (fadam_master_split's
 * param). Every path that keeps an fp32 master beside a bf16 param writes the param with this rule, so
 * the remainder layout is the fp32-master layout bit for bit, params included. It differs from RNE
 * only when the master lies exactly halfway between two bf16 values with an even lower one. */
static inline FADAM_HOST_DEVICE uint16_t fadam_bf16_from_master(float master) {
    uint32_t bits = fadam_sl_float_bits(master);
    if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((bits >> 16) | 0x0040u);
    return (uint16_t)((bits + 0x8000u) >> 16);
}

/* Splits an fp32 master into the bf16 param bits (returned) and the remainder (*remainder), exactly
 * (see above): the param is fadam_bf16_from_master's. NaN: the quiet NaN H | 0x0040 with L kept. */
static inline FADAM_HOST_DEVICE uint16_t fadam_master_split(float master, uint16_t *remainder) {
    *remainder = (uint16_t)(fadam_sl_float_bits(master) & 0xFFFFu);
    return fadam_bf16_from_master(master); /* H + (L >> 15); 0x7F7F + 1 carries into the exponent: +Inf */
}

/* Like fadam_master_split but the param is RNE(master) always; an even-tie master is stored as the
 * next fp32 value toward zero (remainder 0x7FFF), which rounds to the same param. */
static inline FADAM_HOST_DEVICE uint16_t fadam_master_split_rne(float master, uint16_t *remainder) {
    uint32_t bits = fadam_sl_float_bits(master);
    uint32_t high = bits >> 16, low = bits & 0xFFFFu;
    uint32_t even_tie = (uint32_t)fadam_master_is_even_tie(master);
    *remainder = (uint16_t)(low - even_tie);
    if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)(high | 0x0040u);
    return (uint16_t)(high + (low >> 15) - even_tie);
}

/* The fp32 master from the param bits and the remainder: the inverse of both splits. A remainder
 * >= 0x8000 means the param was rounded up, so the upper half is param - 1. A NaN param: its bits
 * and the remainder as they are. Pairs that no split produces (e.g. param +-0 with remainder
 * >= 0x8000) give some deterministic value. */
static inline FADAM_HOST_DEVICE float fadam_master_join(uint16_t param_bits, uint16_t remainder) {
    uint32_t high = param_bits;
    if ((high & 0x7FFFu) <= 0x7F80u) high = (high - ((uint32_t)remainder >> 15)) & 0xFFFFu;
    return fadam_sl_bits_float((high << 16) | remainder);
}

/* ---------------------------------------------------------------------------------------------------
 * 2. Reproducible random bits and bf16 stochastic rounding (bf16 moments: 2+2 B instead of 4+4).
 *
 * The bits are a pure function of (seed, step, element index, stream): no generator state, so the GPU,
 * the emulated kernel and the CPU agree bit for bit whatever the thread layout, and a run resumed at
 * step t (same seed) equals an uninterrupted one. Use the element's index within its tensor and a
 * stream that names the tensor and the state (e.g. tensor_id * 16 + state_slot), so chunking,
 * threading and sharding do not change the bits. One call gives 32 bits: a layout that needs two
 * 16-bit draws per element (m and v) may use the low half for one and the high half for the other.
 * ------------------------------------------------------------------------------------------------- */

/* splitmix64's output function (Steele, Lea, Flood 2014; Stafford's "mix13" constants): a bijection on
 * 64 bits with full avalanche. */
static inline FADAM_HOST_DEVICE uint64_t fadam_mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* The per-(seed, step, stream) key: computed once per thread or per tensor, then reused per element. */
static inline FADAM_HOST_DEVICE uint64_t fadam_random_key(uint64_t seed, uint64_t step, uint32_t stream) {
    uint64_t key = fadam_mix64(seed + 0x9E3779B97F4A7C15ull);
    key = fadam_mix64(key ^ (step + 0xD1B54A32D192ED03ull));
    return fadam_mix64(key ^ ((uint64_t)stream * 0xAEF17502108EF2D9ull + 0x8CB92BA72F3D8DD7ull));
}

/* 32 random bits for one element under a key: splitmix64 of the element's Weyl-sequence position. */
static inline FADAM_HOST_DEVICE uint32_t fadam_random_bits_at(uint64_t key, uint64_t element_index) {
    return (uint32_t)(fadam_mix64(key + element_index * 0x9E3779B97F4A7C15ull) >> 32);
}

/* 32 random bits: fadam_random_bits_at(fadam_random_key(seed, step, stream), element_index). */
static inline FADAM_HOST_DEVICE uint32_t fadam_random_bits(uint64_t seed, uint64_t step, uint64_t element_index,
                                                           uint32_t stream) {
    return fadam_random_bits_at(fadam_random_key(seed, step, stream), element_index);
}

/* fp32 -> bf16 with stochastic rounding on the low 16 bits of `random16`: rounds up in magnitude with
 * probability L / 65536 (L the 16 bits dropped), so E[result] == x exactly (finite results) and the
 * result is one of x's two bf16 neighbours (x itself when representable). +-Inf and +-0 stay; a NaN
 * becomes the quiet NaN RNE gives; a finite x above the largest bf16 (0x7F7F) may round to Inf. */
static inline FADAM_HOST_DEVICE uint16_t fadam_round_bf16_stochastic(float x, uint32_t random16) {
    uint32_t bits = fadam_sl_float_bits(x);
    if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((bits >> 16) | 0x0040u);
    return (uint16_t)((bits + (random16 & 0xFFFFu)) >> 16);
}

/* ---------------------------------------------------------------------------------------------------
 * 3. 8-bit blockwise moments: FADAM_Q8_BLOCK consecutive elements of a tensor (block b holds elements
 * [b*B, b*B + B) of its tensor; the last block may be short) share one fp32 scale, the absmax of the
 * block's finite values (fadam_q8_scale_from_absmax). Codes, both companded so that the resolution is
 * proportional to the gradient's magnitude r = |g| / (the block's largest |g|) for both moments:
 *   m: int8,  c = sign(m) * round(127 * sqrt(|m| / s)),    m' = sign(c) * s * (|c|/127)^2
 *   v: uint8, c = round(254 * (v / s)^(1/4)),              v' = s * (c/254)^4
 * (m ~ r, v ~ r^2: the smallest nonzero m code is r ~ 1.6e-5 and the smallest nonzero v code
 * r ~ 3.8e-6, so v keeps a nonzero code wherever m does and m/sqrt(v) never meets a zero v alone.)
 * The element with |x| == s gets the largest code and comes back exactly. Reserved codes:
 * FADAM_Q8_M_NAN (-128) and FADAM_Q8_V_NAN (255) hold a non-finite element (NaN or +-Inf), which
 * dequantizes to NaN and does not enter the block's scale, so it poisons only itself.
 *
 * One step over one block (the kernel finds the scale in the same launch; max is exact and
 * order-free, so any reduction tree gives the same scale as the serial loop):
 *   1. load the block's codes and its scale s_old; dequantize every element to fp32;
 *   2. apply the update rule per element in fp32 (the param update uses these unquantized m, v);
 *   3. s_new = fadam_q8_scale_from_absmax(max over the block of fadam_q8_absmax_accumulate);
 *   4. quantize every element with fadam_q8_inverse_scale(s_new); store the codes and s_new.
 * Round to nearest here; the _stochastic quantizers round the companded value stochastically
 * (unbiased in the companded domain, not in m or v).
 * ------------------------------------------------------------------------------------------------- */
#define FADAM_Q8_BLOCK 256
#define FADAM_Q8_M_LEVELS 127 /* m codes -127..127 */
#define FADAM_Q8_V_LEVELS 254 /* v codes 0..254 */
#define FADAM_Q8_M_NAN (-128)
#define FADAM_Q8_V_NAN 255

/* max(running, |x|) over finite x; start from 0. Non-finite x are skipped (they get the NaN code). */
static inline FADAM_HOST_DEVICE float fadam_q8_absmax_accumulate(float running, float x) {
    float magnitude = fabsf(x);
    return magnitude <= 3.40282347e38f && magnitude > running ? magnitude : running;
}

/* The stored scale for a block's absmax: the absmax itself, raised to FLT_MIN when subnormal so that
 * 1/scale stays finite (such elements are far below any eps). 0 for an all-zero block. */
static inline FADAM_HOST_DEVICE float fadam_q8_scale_from_absmax(float absmax) {
    return absmax > 0.0f && absmax < 1.17549435e-38f ? 1.17549435e-38f : absmax;
}

/* 1/scale, or 0 for a zero scale (every code 0). */
static inline FADAM_HOST_DEVICE float fadam_q8_inverse_scale(float scale) {
    return scale > 0.0f ? 1.0f / scale : 0.0f;
}

/* |x| * inverse_scale clamped to [0, 1] (x * (1/s) may exceed 1 by an ulp). */
static inline FADAM_HOST_DEVICE float fadam_q8_unit(float x, float inverse_scale) {
    float unit = fabsf(x) * inverse_scale;
    return unit < 1.0f ? unit : 1.0f;
}

/* The code from a companded value y in [0, levels] and a rounding offset in [0, 1): 0.5 rounds to
 * nearest (half up), a uniform offset rounds stochastically. */
static inline FADAM_HOST_DEVICE int32_t fadam_q8_round(float y, float offset, int32_t levels) {
    int32_t code = (int32_t)(y + offset);
    return code < levels ? code : levels;
}

/* A uniform offset in [0, 1) from the low 16 bits of a random word (exact in fp32). */
static inline FADAM_HOST_DEVICE float fadam_q8_offset(uint32_t random16) {
    return (float)(random16 & 0xFFFFu) * (1.0f / 65536.0f);
}

static inline FADAM_HOST_DEVICE int8_t fadam_q8_quantize_m_offset(float m, float inverse_scale, float offset) {
    int32_t code;
    if (!(fabsf(m) <= 3.40282347e38f)) return (int8_t)FADAM_Q8_M_NAN;
    code = fadam_q8_round((float)FADAM_Q8_M_LEVELS * sqrtf(fadam_q8_unit(m, inverse_scale)), offset,
                          FADAM_Q8_M_LEVELS);
    return (int8_t)(m < 0.0f ? -code : code);
}

static inline FADAM_HOST_DEVICE uint8_t fadam_q8_quantize_v_offset(float v, float inverse_scale, float offset) {
    if (!(fabsf(v) <= 3.40282347e38f)) return (uint8_t)FADAM_Q8_V_NAN;
    if (!(v > 0.0f)) return 0; /* a negative v (impossible in Adam) is stored as 0 */
    return (uint8_t)fadam_q8_round((float)FADAM_Q8_V_LEVELS * sqrtf(sqrtf(fadam_q8_unit(v, inverse_scale))), offset,
                                   FADAM_Q8_V_LEVELS);
}

/* m -> signed code, round to nearest; inverse_scale = fadam_q8_inverse_scale(block scale). */
static inline FADAM_HOST_DEVICE int8_t fadam_q8_quantize_m(float m, float inverse_scale) {
    return fadam_q8_quantize_m_offset(m, inverse_scale, 0.5f);
}

/* m -> signed code, stochastic rounding of 127*sqrt(|m|/s) with the low 16 bits of random16. */
static inline FADAM_HOST_DEVICE int8_t fadam_q8_quantize_m_stochastic(float m, float inverse_scale, uint32_t random16) {
    return fadam_q8_quantize_m_offset(m, inverse_scale, fadam_q8_offset(random16));
}

/* signed code -> m. */
static inline FADAM_HOST_DEVICE float fadam_q8_dequantize_m(int8_t code, float scale) {
    float unit, magnitude;
    if (code == FADAM_Q8_M_NAN) return fadam_sl_bits_float(0x7FC00000u);
    unit = (float)(code < 0 ? -code : code) / (float)FADAM_Q8_M_LEVELS;
    magnitude = unit * unit * scale;
    return code < 0 ? -magnitude : magnitude;
}

/* v -> unsigned code, round to nearest. */
static inline FADAM_HOST_DEVICE uint8_t fadam_q8_quantize_v(float v, float inverse_scale) {
    return fadam_q8_quantize_v_offset(v, inverse_scale, 0.5f);
}

/* v -> unsigned code, stochastic rounding of 254*(v/s)^(1/4) with the low 16 bits of random16. */
static inline FADAM_HOST_DEVICE uint8_t fadam_q8_quantize_v_stochastic(float v, float inverse_scale, uint32_t random16) {
    return fadam_q8_quantize_v_offset(v, inverse_scale, fadam_q8_offset(random16));
}

/* unsigned code -> v. */
static inline FADAM_HOST_DEVICE float fadam_q8_dequantize_v(uint8_t code, float scale) {
    float unit, square;
    if (code == FADAM_Q8_V_NAN) return fadam_sl_bits_float(0x7FC00000u);
    unit = (float)code / (float)FADAM_Q8_V_LEVELS;
    square = unit * unit;
    return square * square * scale;
}

/* Serial block helpers (steps 3-4 and 1 of the order above) for the reference, the CPU path and the
 * tests; n <= FADAM_Q8_BLOCK elements. They return / take the block's scale. */
static inline FADAM_HOST_DEVICE float fadam_q8_block_scale(const float *x, int n) {
    float absmax = 0.0f;
    int i;
    for (i = 0; i < n; i++) absmax = fadam_q8_absmax_accumulate(absmax, x[i]);
    return fadam_q8_scale_from_absmax(absmax);
}

static inline FADAM_HOST_DEVICE float fadam_q8_quantize_m_block(const float *m, int n, int8_t *codes) {
    float scale = fadam_q8_block_scale(m, n), inverse = fadam_q8_inverse_scale(scale);
    int i;
    for (i = 0; i < n; i++) codes[i] = fadam_q8_quantize_m(m[i], inverse);
    return scale;
}

static inline FADAM_HOST_DEVICE float fadam_q8_quantize_v_block(const float *v, int n, uint8_t *codes) {
    float scale = fadam_q8_block_scale(v, n), inverse = fadam_q8_inverse_scale(scale);
    int i;
    for (i = 0; i < n; i++) codes[i] = fadam_q8_quantize_v(v[i], inverse);
    return scale;
}

static inline FADAM_HOST_DEVICE void fadam_q8_dequantize_m_block(const int8_t *codes, float scale, int n, float *m) {
    int i;
    for (i = 0; i < n; i++) m[i] = fadam_q8_dequantize_m(codes[i], scale);
}

static inline FADAM_HOST_DEVICE void fadam_q8_dequantize_v_block(const uint8_t *codes, float scale, int n, float *v) {
    int i;
    for (i = 0; i < n; i++) v[i] = fadam_q8_dequantize_v(codes[i], scale);
}

#endif
