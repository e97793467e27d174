/* sha256.c - SHA-256 as FIPS 180-4 defines it: 64-byte blocks, 64 rounds, big-endian words. Kept only
 * to verify checkpoints of format_version 1 (fadam_save writes version 2, checksummed with XXH3 from
 * libxxhash, checksum.c). Plain C does about 200 MB/s on one core; x86 CPUs with the SHA extensions
 * (cpuid leaf 7, EBX bit 29) run the same rounds in hardware, several times faster. */
#include <stdatomic.h>
#include <string.h>

#include "sha256.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FADAM_SHA256_X86 1
#include <cpuid.h>
#include <immintrin.h>
#endif

/* First 32 bits of the fractional parts of the cube roots of the first 64 primes. */
static const uint32_t round_constants[64] = {
    0x428a2f98u, 0x71374491u, 0xb5c0fbcfu, 0xe9b5dba5u, 0x3956c25bu, 0x59f111f1u, 0x923f82a4u, 0xab1c5ed5u,
    0xd807aa98u, 0x12835b01u, 0x243185beu, 0x550c7dc3u, 0x72be5d74u, 0x80deb1feu, 0x9bdc06a7u, 0xc19bf174u,
    0xe49b69c1u, 0xefbe4786u, 0x0fc19dc6u, 0x240ca1ccu, 0x2de92c6fu, 0x4a7484aau, 0x5cb0a9dcu, 0x76f988dau,
    0x983e5152u, 0xa831c66du, 0xb00327c8u, 0xbf597fc7u, 0xc6e00bf3u, 0xd5a79147u, 0x06ca6351u, 0x14292967u,
    0x27b70a85u, 0x2e1b2138u, 0x4d2c6dfcu, 0x53380d13u, 0x650a7354u, 0x766a0abbu, 0x81c2c92eu, 0x92722c85u,
    0xa2bfe8a1u, 0xa81a664bu, 0xc24b8b70u, 0xc76c51a3u, 0xd192e819u, 0xd6990624u, 0xf40e3585u, 0x106aa070u,
    0x19a4c116u, 0x1e376c08u, 0x2748774cu, 0x34b0bcb5u, 0x391c0cb3u, 0x4ed8aa4au, 0x5b9cca4fu, 0x682e6ff3u,
    0x748f82eeu, 0x78a5636fu, 0x84c87814u, 0x8cc70208u, 0x90befffau, 0xa4506cebu, 0xbef9a3f7u, 0xc67178f2u};

static uint32_t rotate_right(uint32_t x, unsigned n) { return (x >> n) | (x << (32 - n)); }

static void compress_block(uint32_t state[8], const unsigned char block[64]) {
    uint32_t schedule[64], a, b, c, d, e, f, g, h;
    int i;
    for (i = 0; i < 16; i++)
        schedule[i] = (uint32_t)block[4 * i] << 24 | (uint32_t)block[4 * i + 1] << 16 | (uint32_t)block[4 * i + 2] << 8 |
                      (uint32_t)block[4 * i + 3];
    for (i = 16; i < 64; i++) {
        uint32_t s0 = rotate_right(schedule[i - 15], 7) ^ rotate_right(schedule[i - 15], 18) ^ (schedule[i - 15] >> 3);
        uint32_t s1 = rotate_right(schedule[i - 2], 17) ^ rotate_right(schedule[i - 2], 19) ^ (schedule[i - 2] >> 10);
        schedule[i] = schedule[i - 16] + s0 + schedule[i - 7] + s1;
    }
    a = state[0], b = state[1], c = state[2], d = state[3], e = state[4], f = state[5], g = state[6], h = state[7];
    for (i = 0; i < 64; i++) {
        uint32_t sum1 = rotate_right(e, 6) ^ rotate_right(e, 11) ^ rotate_right(e, 25);
        uint32_t choose = (e & f) ^ (~e & g);
        uint32_t temp1 = h + sum1 + choose + round_constants[i] + schedule[i];
        uint32_t sum0 = rotate_right(a, 2) ^ rotate_right(a, 13) ^ rotate_right(a, 22);
        uint32_t majority = (a & b) ^ (a & c) ^ (b & c);
        uint32_t temp2 = sum0 + majority;
        h = g, g = f, f = e, e = d + temp1, d = c, c = b, b = a, a = temp1 + temp2;
    }
    state[0] += a, state[1] += b, state[2] += c, state[3] += d;
    state[4] += e, state[5] += f, state[6] += g, state[7] += h;
}

#if defined(FADAM_SHA256_X86)
/* The same 64 rounds with SHA-NI: the state lives as ABEF/CDGH vectors, sha256rnds2 does two rounds,
 * sha256msg1/msg2 extend the message schedule four words at a time. */
__attribute__((target("sha,sse4.1,ssse3"))) static void compress_blocks_x86(uint32_t state[8],
                                                                             const unsigned char *blocks,
                                                                             size_t n_blocks) {
    const __m128i byte_swap = _mm_set_epi64x(0x0c0d0e0f08090a0bLL, 0x0405060700010203LL);
    __m128i abef, cdgh, dcba, hgfe;
    dcba = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&state[0]), 0xB1); /* C D A B, high first */
    hgfe = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&state[4]), 0x1B); /* E F G H */
    abef = _mm_alignr_epi8(dcba, hgfe, 8);
    cdgh = _mm_blend_epi16(hgfe, dcba, 0xF0);
    for (; n_blocks; n_blocks--, blocks += 64) {
        __m128i words[4], abef_saved = abef, cdgh_saved = cdgh;
        int group;
        for (group = 0; group < 4; group++)
            words[group] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(blocks + 16 * group)), byte_swap);
        for (group = 0; group < 16; group++) {
            __m128i current = words[group % 4], schedule;
            if (group >= 4) {
                /* w[t] = s1(w[t-2]) + w[t-7] + s0(w[t-15]) + w[t-16], for t = 4*group .. 4*group+3 */
                __m128i older = words[group % 4], next = words[(group + 1) % 4];
                __m128i w7 = _mm_alignr_epi8(words[(group + 3) % 4], words[(group + 2) % 4], 4);
                current = _mm_sha256msg2_epu32(_mm_add_epi32(_mm_sha256msg1_epu32(older, next), w7),
                                               words[(group + 3) % 4]);
                words[group % 4] = current;
            }
            schedule = _mm_add_epi32(current, _mm_loadu_si128((const __m128i *)&round_constants[4 * group]));
            cdgh = _mm_sha256rnds2_epu32(cdgh, abef, schedule);
            abef = _mm_sha256rnds2_epu32(abef, cdgh, _mm_shuffle_epi32(schedule, 0x0E));
        }
        abef = _mm_add_epi32(abef, abef_saved);
        cdgh = _mm_add_epi32(cdgh, cdgh_saved);
    }
    {
        __m128i feba = _mm_shuffle_epi32(abef, 0x1B), dchg = _mm_shuffle_epi32(cdgh, 0xB1);
        _mm_storeu_si128((__m128i *)&state[0], _mm_blend_epi16(feba, dchg, 0xF0));
        _mm_storeu_si128((__m128i *)&state[4], _mm_alignr_epi8(dchg, feba, 8));
    }
}

static int cpu_has_sha_extensions(void) {
    unsigned a = 0, b = 0, c = 0, d = 0, ssse3, sse41;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    ssse3 = (c >> 9) & 1, sse41 = (c >> 19) & 1;
    if (!ssse3 || !sse41 || !__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    return (b >> 29) & 1;
}
#endif

/* -1: not looked at yet; 0: plain C; 1: SHA extensions. */
static atomic_int use_x86_extensions = -1;

int fadam_sha256_set_accelerated(int enable) {
    int available = 0;
#if defined(FADAM_SHA256_X86)
    available = cpu_has_sha_extensions();
#endif
    atomic_store_explicit(&use_x86_extensions, enable && available, memory_order_relaxed);
    return enable && available;
}

static void compress_blocks(uint32_t state[8], const unsigned char *blocks, size_t n_blocks) {
    int accelerated = atomic_load_explicit(&use_x86_extensions, memory_order_relaxed);
    if (accelerated < 0) accelerated = fadam_sha256_set_accelerated(1);
#if defined(FADAM_SHA256_X86)
    if (accelerated) {
        compress_blocks_x86(state, blocks, n_blocks);
        return;
    }
#endif
    for (; n_blocks; n_blocks--, blocks += 64) compress_block(state, blocks);
}

void fadam_sha256_init(fadam_sha256 *hash) {
    /* First 32 bits of the fractional parts of the square roots of the first 8 primes. */
    static const uint32_t initial[8] = {0x6a09e667u, 0xbb67ae85u, 0x3c6ef372u, 0xa54ff53au,
                                        0x510e527fu, 0x9b05688cu, 0x1f83d9abu, 0x5be0cd19u};
    memcpy(hash->state, initial, sizeof initial);
    hash->total_bytes = 0;
    hash->block_used = 0;
}

void fadam_sha256_update(fadam_sha256 *hash, const void *data, size_t bytes) {
    const unsigned char *input = (const unsigned char *)data;
    hash->total_bytes += bytes;
    if (hash->block_used) {
        size_t take = 64 - hash->block_used < bytes ? 64 - hash->block_used : bytes;
        memcpy(hash->block + hash->block_used, input, take);
        hash->block_used += take, input += take, bytes -= take;
        if (hash->block_used < 64) return;
        compress_blocks(hash->state, hash->block, 1);
        hash->block_used = 0;
    }
    compress_blocks(hash->state, input, bytes / 64);
    input += bytes / 64 * 64;
    bytes %= 64;
    memcpy(hash->block, input, bytes);
    hash->block_used = bytes;
}

void fadam_sha256_final(fadam_sha256 *hash, unsigned char digest[FADAM_SHA256_DIGEST_BYTES]) {
    uint64_t bit_length = hash->total_bytes * 8;
    int i;
    /* Padding: one 1 bit, zeros up to 56 mod 64 bytes, then the message length in bits, big-endian. */
    hash->block[hash->block_used++] = 0x80;
    if (hash->block_used > 56) {
        memset(hash->block + hash->block_used, 0, 64 - hash->block_used);
        compress_blocks(hash->state, hash->block, 1);
        hash->block_used = 0;
    }
    memset(hash->block + hash->block_used, 0, 56 - hash->block_used);
    for (i = 0; i < 8; i++) hash->block[56 + i] = (unsigned char)(bit_length >> (56 - 8 * i));
    compress_blocks(hash->state, hash->block, 1);
    for (i = 0; i < 8; i++) {
        digest[4 * i] = (unsigned char)(hash->state[i] >> 24);
        digest[4 * i + 1] = (unsigned char)(hash->state[i] >> 16);
        digest[4 * i + 2] = (unsigned char)(hash->state[i] >> 8);
        digest[4 * i + 3] = (unsigned char)hash->state[i];
    }
}
