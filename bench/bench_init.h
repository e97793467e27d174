/* bench_init.h - the benchmarks' input values: a pure function of (replica, tensor, buffer, element), so
 * the GPU fills its buffers with a kernel and the host recomputes any element it wants to check,
 * bit for bit, without copying the buffers back. C99 and CUDA. */
#ifndef FADAM_BENCH_INIT_H
#define FADAM_BENCH_INIT_H

#include <stdint.h>
#include <string.h>

#if defined(__CUDACC__)
#define BENCH_HD __host__ __device__
#else
#define BENCH_HD
#endif

/* Which buffer of a tensor a value is for. The master of a bf16 param holds the param's own value. The
 * lean layouts' buffers (issue 12) have roles of their own: a 16-bit remainder, the 8-bit scales, and
 * the seed of stochastic rounding. */
enum {
    BENCH_ROLE_PARAM = 1,
    BENCH_ROLE_GRAD = 2,
    BENCH_ROLE_EXP_AVG = 3,
    BENCH_ROLE_EXP_AVG_SQ = 4,
    BENCH_ROLE_REMAINDER = 5,
    BENCH_ROLE_EXP_AVG_SCALE = 6,
    BENCH_ROLE_EXP_AVG_SQ_SCALE = 7,
    BENCH_ROLE_SEED = 8
};

/* splitmix64's finalizer. */
static inline BENCH_HD uint64_t bench_mix(uint64_t x) {
    x ^= x >> 30;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 27;
    x *= 0x94D049BB133111EBull;
    x ^= x >> 31;
    return x;
}

static inline BENCH_HD uint64_t bench_key(int replica, int64_t tensor, int role) {
    return bench_mix(((uint64_t)replica << 48) ^ ((uint64_t)tensor << 4) ^ (uint64_t)role) | 1u;
}

/* Element i of a buffer. Every value is exact in its storage type and every scaling is by a power
 * of two, so host and device compute the same bits: `bf16_exact` gives 8 significant bits, otherwise 24.
 * params in [-1, 1), grads in [-2^-6, 2^-6), exp_avg in [-2^-8, 2^-8), exp_avg_sq in [0, 2^-14]. */
static inline BENCH_HD float bench_value(uint64_t key, int64_t i, int role, int bf16_exact) {
    uint64_t h = bench_mix(key + (uint64_t)i * 0x9E3779B97F4A7C15ull);
    float x = bf16_exact ? (float)((int32_t)(h >> 56) - 128) * 0x1p-7f
                         : (float)((int32_t)(h >> 40) - (1 << 23)) * 0x1p-23f;
    switch (role) {
    case BENCH_ROLE_GRAD: return x * 0x1p-6f;
    case BENCH_ROLE_EXP_AVG: return x * 0x1p-8f;
    case BENCH_ROLE_EXP_AVG_SQ: return (x < 0.0f ? -x : x) * 0x1p-14f;
    default: return x;
    }
}

/* The bf16 bits of a value that is exact in bf16 (as bench_value makes them): its top half. */
static inline BENCH_HD uint16_t bench_bf16_bits_of_exact(float value) {
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    return (uint16_t)(bits >> 16);
}

static inline BENCH_HD float bench_bf16_bits_to_float(uint16_t bits) {
    uint32_t wide = (uint32_t)bits << 16;
    float value;
    memcpy(&value, &wide, sizeof value);
    return value;
}

/* Lean states, valid encodings only (kernels/state_layout.h), also pure functions of the element. */

/* The remainder beside bf16 param bits: any 16 bits, except that beside +-0 it stays below 0x8000
 * (a remainder >= 0x8000 says the param was rounded up, which no master rounds to 0). */
static inline BENCH_HD uint16_t bench_remainder(uint64_t key, int64_t i, uint16_t param_bits) {
    uint16_t remainder = (uint16_t)(bench_mix(key + (uint64_t)i * 0x9E3779B97F4A7C15ull) >> 48);
    return (param_bits & 0x7FFFu) == 0 ? (uint16_t)(remainder & 0x7FFFu) : remainder;
}

/* An 8-bit code: m in -127..127 (role BENCH_ROLE_EXP_AVG), v in 0..254; never the NaN codes. */
static inline BENCH_HD int32_t bench_code(uint64_t key, int64_t i, int role) {
    uint32_t h = (uint32_t)(bench_mix(key + (uint64_t)i * 0x9E3779B97F4A7C15ull) >> 32) % 255u;
    return role == BENCH_ROLE_EXP_AVG ? (int32_t)h - 127 : (int32_t)h;
}

/* The scale of 8-bit block `block`: |a value| of the moment's range, >= 0 and never subnormal. */
static inline BENCH_HD float bench_scale(uint64_t key, int64_t block, int moment_role) {
    float value = bench_value(key, block, moment_role, 0);
    return value < 0.0f ? -value : value;
}

#endif
