/* kernels/state_layout.h against float64 and against the fp32-master path (issue 12's storage half).
 *   FADAM_STATE_LAYOUT_EXHAUSTIVE=1   split/join over all 2^32 fp32 patterns (2 threads, about 30 s);
 *                                     by default every upper half x 72 lower halves plus 2^24 random ones. */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "internal.h"
#include "state_layout.h"
#include "state_layout_digest.h"

static uint64_t rng;

static uint32_t fbits(float x) { return fadam_sl_float_bits(x); }
static float bitsf(uint32_t b) { return fadam_sl_bits_float(b); }
static int is_nan_bits(uint32_t b) { return (b & 0x7FFFFFFFu) > 0x7F800000u; }

/* ---------------------------------------------------------------------------------------------------
 * 1. master remainder
 * ------------------------------------------------------------------------------------------------- */

/* Checks one fp32 pattern; returns 0 or a short reason (static string). */
static const char *check_master_pattern(uint32_t bits) {
    float x = bitsf(bits);
    uint16_t remainder, remainder_rne, param, param_rne, rne = fadam_round_bf16_nearest(x);
    uint32_t back, back_rne;
    int nan = is_nan_bits(bits), even_tie = fadam_master_is_even_tie(x);
    if (even_tie != (!nan && (bits & 0x1FFFFu) == 0x8000u)) return "fadam_master_is_even_tie";
    param = fadam_master_split(x, &remainder);
    param_rne = fadam_master_split_rne(x, &remainder_rne);
    back = fbits(fadam_master_join(param, remainder));
    back_rne = fbits(fadam_master_join(param_rne, remainder_rne));
    if (param_rne != rne) return "split_rne: param != RNE(master)";
    if (param != (uint16_t)(even_tie ? rne + 1 : rne)) return "split: param != RNE(master) (+1 at even ties)";
    if (fadam_bf16_from_master(x) != param) return "fadam_bf16_from_master != split's param";
    if (nan) {
        if (back != (bits | 0x00400000u) || back_rne != back) return "NaN: join != the quiet master";
    } else {
        if (back != bits) return "split: join(split(x)) != x";
        if (back_rne != (even_tie ? bits - 1 : bits)) return "split_rne: join != x (x - 1 ulp at even ties)";
    }
    return NULL;
}

typedef struct sweep_job {
    uint64_t begin, end, failures;
    uint32_t first_failure;
    const char *why;
} sweep_job;

static void *sweep_thread(void *arg) {
    sweep_job *job = (sweep_job *)arg;
    uint64_t b;
    for (b = job->begin; b < job->end; b++) {
        const char *why = check_master_pattern((uint32_t)b);
        if (why && job->failures++ == 0) job->first_failure = (uint32_t)b, job->why = why;
    }
    return NULL;
}

static void test_master_remainder(void) {
    static const uint32_t fixed_lows[] = {0x0000, 0x0001, 0x0002, 0x3FFF, 0x7FFE, 0x7FFF, 0x8000, 0x8001, 0x8002, 0xBFFF, 0xFFFE, 0xFFFF};
    const char *env = getenv("FADAM_STATE_LAYOUT_EXHAUSTIVE");
    uint64_t failures = 0, checked = 0;
    uint32_t first = 0;
    const char *why = NULL;
    check_case_begin();
    if (env && env[0] == '1') {
        sweep_job jobs[2] = {{0, 1ull << 31, 0, 0, NULL}, {1ull << 31, 1ull << 32, 0, 0, NULL}};
        pthread_t thread;
        pthread_create(&thread, NULL, sweep_thread, &jobs[1]);
        sweep_thread(&jobs[0]);
        pthread_join(thread, NULL);
        failures = jobs[0].failures + jobs[1].failures;
        first = jobs[0].failures ? jobs[0].first_failure : jobs[1].first_failure;
        why = jobs[0].failures ? jobs[0].why : jobs[1].why;
        checked = 1ull << 32;
    } else {
        uint32_t high, k;
        uint64_t n;
        for (high = 0; high < 65536; high++) {
            for (k = 0; k < 72; k++) {
                uint32_t low = k < 12 ? fixed_lows[k] : (uint32_t)(check_rng_next(&rng) & 0xFFFF);
                uint32_t bits = high << 16 | low;
                const char *w = check_master_pattern(bits);
                checked++;
                if (w && failures++ == 0) first = bits, why = w;
            }
        }
        for (n = 0; n < (1u << 24); n++) {
            uint32_t bits = (uint32_t)check_rng_next(&rng);
            const char *w = check_master_pattern(bits);
            checked++;
            if (w && failures++ == 0) first = bits, why = w;
        }
    }
    printf("# master split/join: %llu patterns%s\n", (unsigned long long)checked,
           checked == (1ull << 32) ? " (all of them)" : " (set FADAM_STATE_LAYOUT_EXHAUSTIVE=1 for all 2^32)");
    CHECK(failures == 0, "%llu patterns fail, first 0x%08x: %s", (unsigned long long)failures, first, why);
    check_case_end(failures == 0 && checked == (1ull << 32) ? "master_split_join_all_2^32_patterns"
                                                              : "master_split_join_every_upper_half");
}

/* The library's RNE (csrc/reference.c, what the fp32-master path writes) and ours agree everywhere. */
static void test_rne_matches_reference(void) {
    uint32_t high, k, bad = 0, first = 0;
    check_case_begin();
    for (high = 0; high < 65536; high++) {
        for (k = 0; k < 16; k++) {
            uint32_t low = k == 0 ? 0x8000u : k == 1 ? 0x7FFFu : k == 2 ? 0x8001u : k == 3 ? 0 : (uint32_t)(check_rng_next(&rng) & 0xFFFF);
            uint32_t bits = high << 16 | low;
            if (fadam_round_bf16_nearest(bitsf(bits)) != fadam_float_to_bf16_bits(bitsf(bits)) && bad++ == 0) first = bits;
        }
    }
    CHECK(bad == 0, "%u patterns differ from fadam_float_to_bf16_bits, first 0x%08x", bad, first);
    check_case_end("bf16_round_nearest_equals_reference");
}

/* One AdamW element step in fp32, NUMERICS.md's order (the same for every track below). */
typedef struct adamw_scalars { float beta1, omb1, beta2, omb2, eps, decay, step_size, bc2_sqrt; } adamw_scalars;

static float adamw_element(const adamw_scalars *s, float p, float g, float *m, float *v) {
    float denom;
    p = p * s->decay;
    *m = s->beta1 * *m + s->omb1 * g;
    *v = s->beta2 * *v + s->omb2 * g * g;
    denom = sqrtf(*v) / s->bc2_sqrt + s->eps;
    return p - s->step_size * *m / denom;
}

static adamw_scalars adamw_for_step(float lr, float wd, int64_t t) {
    adamw_scalars s;
    s.beta1 = 0.9f, s.beta2 = 0.999f;
    s.omb1 = (float)(1.0 - (double)s.beta1), s.omb2 = (float)(1.0 - (double)s.beta2);
    s.eps = 1e-8f;
    s.decay = (float)(1.0 - (double)lr * (double)wd);
    s.step_size = (float)((double)lr / (1.0 - pow((double)s.beta1, (double)t)));
    s.bc2_sqrt = (float)sqrt(1.0 - pow((double)s.beta2, (double)t));
    return s;
}

/* The remainder layout against the fp32-master path over random AdamW updates: with
 * fadam_master_split the params, masters, m and v stay bit for bit equal (both round a param with
 * fadam_bf16_from_master, which differs from RNE exactly at the even ties, counted); with
 * fadam_master_split_rne the param is RNE(master) always and the masters drift from the first even
 * tie on. Prints both rates. */
static void test_remainder_vs_fp32_master(void) {
    enum { N = 1 << 16, STEPS = 200 };
    float *master = malloc(N * sizeof(float)), *m = calloc(N, sizeof(float)), *v = calloc(N, sizeof(float));
    uint16_t *p_exact = malloc(N * 2), *r_exact = malloc(N * 2), *p_rne = malloc(N * 2), *r_rne = malloc(N * 2);
    float *m_rne = calloc(N, sizeof(float)), *v_rne = calloc(N, sizeof(float));
    long ties = 0, param_diff = 0, unexplained = 0, master_diff = 0, rne_master_diff = 0, rne_param_diff = 0;
    long rne_first_param_step = -1;
    int t, i;
    check_case_begin();
    for (i = 0; i < N; i++) {
        master[i] = (float)(0.02 * check_rng_normal(&rng));
        p_exact[i] = fadam_master_split(master[i], &r_exact[i]);
        p_rne[i] = fadam_master_split_rne(master[i], &r_rne[i]);
    }
    for (t = 1; t <= STEPS; t++) {
        adamw_scalars s = adamw_for_step(1e-3f, 0.1f, t);
        for (i = 0; i < N; i++) {
            float g = (float)(1e-3 * check_rng_normal(&rng)), m_exact = m[i], v_exact = v[i];
            float want = adamw_element(&s, master[i], g, &m[i], &v[i]);
            float got = adamw_element(&s, fadam_master_join(p_exact[i], r_exact[i]), g, &m_exact, &v_exact);
            float got_rne = adamw_element(&s, fadam_master_join(p_rne[i], r_rne[i]), g, &m_rne[i], &v_rne[i]);
            uint16_t path = fadam_bf16_from_master(want), rne = fadam_round_bf16_nearest(want);
            master[i] = want;
            p_exact[i] = fadam_master_split(got, &r_exact[i]);
            p_rne[i] = fadam_master_split_rne(got_rne, &r_rne[i]);
            if (fbits(got) != fbits(want) || fbits(m_exact) != fbits(m[i]) || fbits(v_exact) != fbits(v[i])) master_diff++;
            if (fadam_master_is_even_tie(want)) ties++;
            if (p_exact[i] != path) unexplained++;
            if (path != rne) {
                param_diff++;
                if (!fadam_master_is_even_tie(want) || path != rne + 1) unexplained++;
            }
            if (fbits(fadam_master_join(p_rne[i], r_rne[i])) != fbits(want)) rne_master_diff++;
            if (p_rne[i] != rne) {
                rne_param_diff++;
                if (rne_first_param_step < 0) rne_first_param_step = t;
            }
        }
    }
    printf("# %d elements x %d AdamW steps: %ld even-tie masters (rate %.2e, 2^-17 = %.2e)\n", N, STEPS, ties,
           (double)ties / ((double)N * STEPS), 1.0 / 131072.0);
    printf("# fadam_master_split: param/master/m/v differ %ld times; the param differs from RNE %ld times (at even ties)\n",
           master_diff, param_diff);
    printf("# fadam_master_split_rne: master differs in %ld element-steps, param in %ld (first at step %ld)\n",
           rne_master_diff, rne_param_diff, rne_first_param_step);
    CHECK(master_diff == 0, "the exact split's master, m or v left the fp32-master path %ld times", master_diff);
    CHECK(unexplained == 0 && param_diff == ties, "%ld params off the fp32-master path's or off RNE not at an even tie (%ld ties, %ld diffs)",
          unexplained, ties, param_diff);
    check_case_end("remainder_split_equals_fp32_master_path_bitwise");
    free(master), free(m), free(v), free(p_exact), free(r_exact), free(p_rne), free(r_rne), free(m_rne), free(v_rne);
}

/* A master whose new value is an even tie: the exact split keeps it, the RNE split loses an ulp. */
static void test_even_tie_example(void) {
    float tie = bitsf(0x3F808000u); /* 1 + 2^-8: exactly between bf16 1.0 (even) and 1.0078125 */
    uint16_t r, r_rne, p = fadam_master_split(tie, &r), p_rne = fadam_master_split_rne(tie, &r_rne);
    check_case_begin();
    CHECK(fadam_master_is_even_tie(tie), "1 + 2^-8 is an even tie");
    CHECK(fadam_round_bf16_nearest(tie) == 0x3F80u, "RNE(1 + 2^-8) = 1.0");
    CHECK(p == 0x3F81u && r == 0x8000u && fbits(fadam_master_join(p, r)) == 0x3F808000u, "exact split: 0x%04x/0x%04x", p, r);
    CHECK(p_rne == 0x3F80u && r_rne == 0x7FFFu && fbits(fadam_master_join(p_rne, r_rne)) == 0x3F807FFFu,
          "rne split: 0x%04x/0x%04x", p_rne, r_rne);
    CHECK(fbits(fadam_master_join(0x3F80u, 0)) == 0x3F800000u, "remainder 0: master == param (initial state)");
    check_case_end("master_even_tie_example");
}

/* ---------------------------------------------------------------------------------------------------
 * 2. stochastic rounding
 * ------------------------------------------------------------------------------------------------- */

/* v = beta2*v + (1-beta2)*g^2 with a tiny g^2 in bf16: round to nearest never moves; stochastic
 * rounding decays like float64 in the mean over 4096 independent elements. */
static void test_bf16_stall(uint64_t seed) {
    enum { CHAINS = 4096, STEPS = 2000 };
    const float beta2 = 0.999f, omb2 = (float)(1.0 - (double)0.999f), g2 = 1e-12f;
    uint16_t v_rne = fadam_round_bf16_nearest(1e-3f), *v_sr = malloc(CHAINS * 2);
    double exact = fadam_bf16_to_float(v_rne);
    int t, i, moved = 0, ok = 1;
    check_case_begin();
    for (i = 0; i < CHAINS; i++) v_sr[i] = v_rne;
    for (t = 1; t <= STEPS; t++) {
        float v = fadam_bf16_to_float(v_rne);
        uint16_t next = fadam_round_bf16_nearest(beta2 * v + omb2 * g2);
        moved |= next != v_rne;
        v_rne = next;
        exact = (double)beta2 * exact + (double)omb2 * (double)g2;
        for (i = 0; i < CHAINS; i++) {
            float x = fadam_bf16_to_float(v_sr[i]);
            v_sr[i] = fadam_round_bf16_stochastic(beta2 * x + omb2 * g2, fadam_random_bits(seed, (uint64_t)t, (uint64_t)i, 1));
        }
        if (t == 500 || t == 1000 || t == STEPS) {
            double sum = 0, sum2 = 0, mean, sd, tolerance;
            for (i = 0; i < CHAINS; i++) {
                double x = fadam_bf16_to_float(v_sr[i]);
                sum += x, sum2 += x * x;
            }
            mean = sum / CHAINS;
            sd = sqrt(sum2 / CHAINS - mean * mean);
            tolerance = 5.0 * sd / sqrt((double)CHAINS) + 2e-4 * exact;
            printf("# step %d: float64 %.6e, RNE bf16 %.6e, SR mean %.6e (sd %.2e, tolerance %.2e)\n", t, exact,
                   (double)fadam_bf16_to_float(v_rne), mean, sd, tolerance);
            if (!(fabs(mean - exact) <= tolerance)) ok = 0;
            CHECK(fabs(mean - exact) <= tolerance, "step %d: SR mean %.6e vs float64 %.6e (tolerance %.2e)", t, mean,
                  exact, tolerance);
        }
    }
    CHECK(!moved, "round to nearest moved: the stall this test shows is gone?");
    CHECK(fadam_bf16_to_float(v_rne) > 2.0 * exact, "RNE should stay far above the float64 value");
    (void)ok;
    check_case_end("bf16_rne_stalls_stochastic_decays");
    free(v_sr);
}

/* Over all 65536 random inputs, the mean of the rounded values is x exactly; and over hashed bits the
 * mean error is within 5 sigma. */
static void test_sr_unbiased(uint64_t seed) {
    int k, bad = 0;
    check_case_begin();
    for (k = 0; k < 2000; k++) {
        float x = bitsf((uint32_t)check_rng_next(&rng) & 0xFF7FFFFFu); /* finite, below 2^128 */
        double sum = 0;
        uint32_t r;
        if (!(fabsf(x) < 3.38e38f)) continue;
        for (r = 0; r < 65536; r++) sum += fadam_bf16_to_float(fadam_round_bf16_stochastic(x, r));
        if (sum / 65536.0 != (double)x && bad++ == 0) CHECK(0, "x=%.9g: exhaustive mean %.17g", x, sum / 65536.0);
    }
    for (k = 0; k < 8; k++) {
        enum { DRAWS = 1 << 18 };
        float x = (float)(check_rng_normal(&rng) * pow(10.0, (double)(k - 4)));
        uint32_t bits = fbits(x);
        double low = fadam_bf16_to_float((uint16_t)(bits >> 16)), ulp = fabs(fadam_bf16_to_float((uint16_t)((bits >> 16) + 1)) - low);
        double p = (double)(bits & 0xFFFF) / 65536.0, sum = 0, sigma;
        int i;
        for (i = 0; i < DRAWS; i++) sum += fadam_bf16_to_float(fadam_round_bf16_stochastic(x, fadam_random_bits(seed, 7, (uint64_t)i, 2)));
        sigma = ulp * sqrt(p * (1 - p) / DRAWS);
        CHECK(fabs(sum / DRAWS - (double)x) <= 5 * sigma + 1e-300, "x=%.9g: mean %.12g, %.1f sigma", x, sum / DRAWS,
              fabs(sum / DRAWS - x) / sigma);
    }
    check_case_end("bf16_stochastic_rounding_unbiased");
}

/* One of the two neighbours, specials kept. */
static void test_sr_neighbours_and_specials(void) {
    static const uint32_t specials[] = {0x00000000u, 0x80000000u, 0x7F800000u, 0xFF800000u, 0x00000001u, 0x807FFFFFu, 0x7F7FFFFFu};
    uint32_t n, bad = 0, first = 0;
    int k;
    check_case_begin();
    for (n = 0; n < (1u << 22); n++) {
        uint32_t bits = (uint32_t)check_rng_next(&rng), random = (uint32_t)check_rng_next(&rng);
        uint16_t got = fadam_round_bf16_stochastic(bitsf(bits), random);
        int good;
        if (is_nan_bits(bits)) good = got == fadam_round_bf16_nearest(bitsf(bits)) && (got & 0x7FFFu) > 0x7F80u;
        else good = got == (uint16_t)(bits >> 16) || (got == (uint16_t)((bits >> 16) + 1) && (bits & 0xFFFFu) != 0);
        if (!good && bad++ == 0) first = bits;
    }
    CHECK(bad == 0, "%u results not a neighbour (first 0x%08x)", bad, first);
    for (k = 0; k < 7; k++) {
        uint32_t r;
        for (r = 0; r < 65536; r += 4095) {
            uint16_t got = fadam_round_bf16_stochastic(bitsf(specials[k]), r);
            if (k < 4) CHECK(got == (uint16_t)(specials[k] >> 16), "0x%08x -> 0x%04x", specials[k], got);
        }
    }
    CHECK(fadam_round_bf16_stochastic(bitsf(0x7F7FFFFFu), 0xFFFF) == 0x7F80u, "FLT_MAX may round up to Inf");
    CHECK(fadam_round_bf16_stochastic(bitsf(0x7FFFFFFFu), 0xFFFF) == 0x7FFFu, "NaN stays NaN");
    CHECK(fadam_round_bf16_stochastic(bitsf(0xFF800001u), 0xFFFF) == 0xFFC0u, "signalling NaN -> quiet");
    check_case_end("bf16_stochastic_neighbours_and_specials");
}

/* The hash: pure (a resumed run equals an uninterrupted one), its low and high halves uniform
 * (chi-square over 256 bins), different streams and steps independent-looking. */
static void test_random_bits(uint64_t seed) {
    enum { DRAWS = 1 << 20 };
    static uint32_t bins_low[256], bins_high[256];
    double chi_low = 0, chi_high = 0, expected = DRAWS / 256.0;
    uint16_t straight = fadam_round_bf16_nearest(0.5f), resumed;
    int i, t, same_streams = 0;
    uint64_t key = fadam_random_key(seed, 3, 9);
    check_case_begin();
    memset(bins_low, 0, sizeof bins_low), memset(bins_high, 0, sizeof bins_high);
    for (i = 0; i < DRAWS; i++) {
        uint32_t r = fadam_random_bits(seed, (uint64_t)(i & 1023), (uint64_t)(i >> 10), 5);
        bins_low[(r >> 8) & 255]++, bins_high[r >> 24]++;
        if (fadam_random_bits_at(key, (uint64_t)i) != fadam_random_bits(seed, 3, (uint64_t)i, 9) && i < 4) CHECK(0, "key reuse");
        if (i < 4096) same_streams += fadam_random_bits(seed, 3, (uint64_t)i, 9) == fadam_random_bits(seed, 3, (uint64_t)i, 10);
    }
    for (i = 0; i < 256; i++) {
        chi_low += (bins_low[i] - expected) * (bins_low[i] - expected) / expected;
        chi_high += (bins_high[i] - expected) * (bins_high[i] - expected) / expected;
    }
    printf("# random bits: chi-square over 256 bins %.1f (low half), %.1f (high half); 255 +- 22.6 expected\n",
           chi_low, chi_high);
    CHECK(chi_low < 400 && chi_high < 400, "chi-square %.1f / %.1f", chi_low, chi_high);
    CHECK(same_streams < 3, "streams 9 and 10 agree %d times in 4096", same_streams);
    /* resume: 100 steps straight, or 60 then a fresh start from the stored bf16 bits */
    for (t = 1; t <= 100; t++)
        straight = fadam_round_bf16_stochastic(0.999f * fadam_bf16_to_float(straight), fadam_random_bits(seed, (uint64_t)t, 42, 1));
    resumed = fadam_round_bf16_nearest(0.5f);
    for (t = 1; t <= 60; t++)
        resumed = fadam_round_bf16_stochastic(0.999f * fadam_bf16_to_float(resumed), fadam_random_bits(seed, (uint64_t)t, 42, 1));
    {
        uint16_t saved = resumed; /* a checkpoint holds the bf16 bits and t; nothing else */
        resumed = saved;
        for (t = 61; t <= 100; t++)
            resumed = fadam_round_bf16_stochastic(0.999f * fadam_bf16_to_float(resumed), fadam_random_bits(seed, (uint64_t)t, 42, 1));
    }
    CHECK(resumed == straight, "resumed 0x%04x vs straight 0x%04x", resumed, straight);
    /* known answers: the function is part of the checkpoint contract (same seed -> same run) */
    CHECK(fadam_mix64(1) == 0x5692161D100B05E5ull, "fadam_mix64(1) = 0x%016llx", (unsigned long long)fadam_mix64(1));
    check_case_end("random_bits_uniform_pure_resumable");
}

/* ---------------------------------------------------------------------------------------------------
 * 3. 8-bit blockwise
 * ------------------------------------------------------------------------------------------------- */

/* Documented bounds (docs/STATE_LAYOUTS.md): with a = sqrt(|m|/s), d = 0.5/127:
 * |m' - m| <= s*d*(2a + d); with b = (v/s)^(1/4), e = 0.5/254: |v' - v| <= s*e*(2b + e)*(b^2 + (b + e)^2).
 * The slack covers fp32 rounding inside (de)quantization. */
static double bound_m(double s, double m) {
    double a = sqrt(fabs(m) / s), d = 0.5 / 127 + 2e-6;
    return s * d * (2 * a + d) * (1 + 1e-6) + 1e-7 * fabs(m);
}
static double bound_v(double s, double v) {
    double b = sqrt(sqrt(v / s)), e = 0.5 / 254 + 2e-6;
    return s * e * (2 * b + e) * (b * b + (b + e) * (b + e)) * (1 + 1e-6) + 1e-7 * v;
}

static void test_q8_bounds(void) {
    enum { BLOCKS = 2000 };
    float m[FADAM_Q8_BLOCK], v[FADAM_Q8_BLOCK], m_back[FADAM_Q8_BLOCK], v_back[FADAM_Q8_BLOCK];
    int8_t m_codes[FADAM_Q8_BLOCK];
    uint8_t v_codes[FADAM_Q8_BLOCK];
    double worst_m[4] = {0}, worst_v[4] = {0};
    int b, i, bad = 0;
    check_case_begin();
    for (b = 0; b < BLOCKS; b++) {
        int n = b % 7 == 0 ? 1 + (int)(check_rng_next(&rng) % FADAM_Q8_BLOCK) : FADAM_Q8_BLOCK; /* short tail blocks */
        double top = pow(10.0, -10.0 + 12.0 * check_rng_uniform(&rng));
        float s_m, s_v;
        for (i = 0; i < n; i++) {
            double r = pow(10.0, -6.0 * check_rng_uniform(&rng)); /* |g| / block's largest, heavy tailed */
            m[i] = (float)(top * r * (check_rng_next(&rng) & 1 ? 1 : -1));
            v[i] = (float)(top * top * r * r * (0.5 + check_rng_uniform(&rng)));
        }
        s_m = fadam_q8_quantize_m_block(m, n, m_codes);
        s_v = fadam_q8_quantize_v_block(v, n, v_codes);
        fadam_q8_dequantize_m_block(m_codes, s_m, n, m_back);
        fadam_q8_dequantize_v_block(v_codes, s_v, n, v_back);
        for (i = 0; i < n; i++) {
            double em = fabs((double)m_back[i] - m[i]), ev = fabs((double)v_back[i] - v[i]);
            double rm = sqrt(fabs((double)m[i]) / s_m), rv = sqrt(sqrt((double)v[i] / s_v));
            if ((em > bound_m(s_m, m[i]) || ev > bound_v(s_v, v[i])) && bad++ == 0)
                CHECK(0, "m %.9g -> %.9g (bound %.3g), v %.9g -> %.9g (bound %.3g)", m[i], m_back[i],
                      bound_m(s_m, m[i]), v[i], v_back[i], bound_v(s_v, v[i]));
            /* worst relative error by magnitude class of the companded value: >= 0.5, 0.1, 0.03, 0.01 */
            {
                int k;
                for (k = 0; k < 4; k++) {
                    double lim = k == 0 ? 0.5 : k == 1 ? 0.1 : k == 2 ? 0.03 : 0.01;
                    if (rm >= lim && m[i] != 0 && em / fabs(m[i]) > worst_m[k]) worst_m[k] = em / fabs(m[i]);
                    if (rv >= lim && v[i] != 0 && ev / v[i] > worst_v[k]) worst_v[k] = ev / v[i];
                }
            }
            if (fabsf(m[i]) == s_m) CHECK(m_back[i] == m[i] && abs(m_codes[i]) == 127, "the absmax element of m is exact");
            if (v[i] == s_v) CHECK(v_back[i] == v[i] && v_codes[i] == 254, "the absmax element of v is exact");
            if (m_codes[i] != 0) CHECK(v_codes[i] != 0 || v[i] < 1e-12f * s_v, "v coded 0 where m is not");
        }
    }
    printf("# q8 worst relative error, m (companded sqrt(|m|/s) >= 0.5/0.1/0.03/0.01): %.4f %.4f %.4f %.4f\n",
           worst_m[0], worst_m[1], worst_m[2], worst_m[3]);
    printf("# q8 worst relative error, v (companded (v/s)^(1/4) >= 0.5/0.1/0.03/0.01): %.4f %.4f %.4f %.4f\n",
           worst_v[0], worst_v[1], worst_v[2], worst_v[3]);
    CHECK(bad == 0, "%d elements outside the bound", bad);
    check_case_end("q8_error_within_documented_bounds");
}

static void test_q8_codes_round_trip(void) {
    int k, c;
    check_case_begin();
    for (k = 0; k < 200; k++) {
        float s = fadam_q8_scale_from_absmax((float)pow(10.0, -40.0 + 78.0 * check_rng_uniform(&rng)));
        float inverse = fadam_q8_inverse_scale(s), previous = -INFINITY;
        for (c = -127; c <= 127; c++) {
            float m = fadam_q8_dequantize_m((int8_t)c, s);
            int again = fadam_q8_quantize_m(m, inverse);
            CHECK(again == c || (fabsf(m) < 1.17549435e-38f && abs(again - c) <= 1), "s=%g: m code %d -> %g -> %d", s, c, m, again);
            CHECK(m >= previous, "m codes monotone");
            previous = m;
        }
        previous = -1;
        for (c = 0; c <= 254; c++) {
            float v = fadam_q8_dequantize_v((uint8_t)c, s);
            int again = fadam_q8_quantize_v(v, inverse);
            /* exact while v is a normal float; a subnormal v has lost bits (or underflowed to 0) */
            CHECK(again == c || (v < 1.17549435e-38f && again <= c + 1), "s=%g: v code %d -> %g -> %d", s, c, v, again);
            CHECK(v >= previous, "v codes monotone");
            previous = v;
        }
    }
    check_case_end("q8_codes_round_trip");
}

static void test_q8_special_blocks(void) {
    float x[FADAM_Q8_BLOCK], back[FADAM_Q8_BLOCK];
    int8_t m_codes[FADAM_Q8_BLOCK];
    uint8_t v_codes[FADAM_Q8_BLOCK];
    float s;
    int i;
    check_case_begin();
    /* a zero block (and -0) */
    for (i = 0; i < FADAM_Q8_BLOCK; i++) x[i] = i & 1 ? -0.0f : 0.0f;
    s = fadam_q8_quantize_m_block(x, FADAM_Q8_BLOCK, m_codes);
    CHECK(s == 0.0f, "zero block: scale %g", s);
    fadam_q8_dequantize_m_block(m_codes, s, FADAM_Q8_BLOCK, back);
    for (i = 0; i < FADAM_Q8_BLOCK; i++) CHECK(m_codes[i] == 0 && back[i] == 0.0f, "zero block element %d", i);
    s = fadam_q8_quantize_v_block(x, FADAM_Q8_BLOCK, v_codes);
    for (i = 0; i < FADAM_Q8_BLOCK; i++) CHECK(s == 0.0f && v_codes[i] == 0, "zero v block element %d", i);
    /* NaN and Inf poison only themselves */
    for (i = 0; i < FADAM_Q8_BLOCK; i++) x[i] = (float)(i + 1) * 0.01f;
    x[3] = NAN, x[7] = INFINITY, x[9] = -INFINITY;
    s = fadam_q8_quantize_m_block(x, FADAM_Q8_BLOCK, m_codes);
    CHECK(s == 2.56f, "scale of the finite elements: %g", s);
    fadam_q8_dequantize_m_block(m_codes, s, FADAM_Q8_BLOCK, back);
    CHECK(m_codes[3] == FADAM_Q8_M_NAN && m_codes[7] == FADAM_Q8_M_NAN && m_codes[9] == FADAM_Q8_M_NAN, "non-finite m -> NaN code");
    CHECK(isnan(back[3]) && isnan(back[7]) && isnan(back[9]), "NaN code -> NaN");
    CHECK(back[255] == 2.56f && fabs(back[100] - x[100]) <= bound_m(s, x[100]), "the finite elements are unaffected");
    s = fadam_q8_quantize_v_block(x, FADAM_Q8_BLOCK, v_codes);
    CHECK(s == 2.56f && v_codes[3] == FADAM_Q8_V_NAN && v_codes[7] == FADAM_Q8_V_NAN && v_codes[9] == FADAM_Q8_V_NAN,
          "non-finite v -> NaN code");
    CHECK(isnan(fadam_q8_dequantize_v(v_codes[3], s)) && fadam_q8_dequantize_v(v_codes[255], s) == 2.56f, "v NaN code");
    /* a block of subnormals: scale raised to FLT_MIN, codes finite */
    for (i = 0; i < FADAM_Q8_BLOCK; i++) x[i] = bitsf(1u + (uint32_t)i * 1000u);
    s = fadam_q8_quantize_v_block(x, FADAM_Q8_BLOCK, v_codes);
    CHECK(s == 1.17549435e-38f && v_codes[255] <= 254, "subnormal block: scale %g", s);
    check_case_end("q8_zero_nan_inf_subnormal_blocks");
}

/* Stochastic 8-bit codes: unbiased in the companded domain over all 65536 offsets. */
static void test_q8_stochastic(void) {
    int k;
    check_case_begin();
    for (k = 0; k < 200; k++) {
        float s = 3.0f, inverse = fadam_q8_inverse_scale(s), m = (float)(3.0 * (2 * check_rng_uniform(&rng) - 1));
        float v = (float)(3.0 * check_rng_uniform(&rng));
        double sum_m = 0, sum_v = 0, y_m = 127.0 * sqrt(fabs((double)m) / s), y_v = 254.0 * sqrt(sqrt((double)v / s));
        uint32_t r;
        for (r = 0; r < 65536; r++) {
            sum_m += abs(fadam_q8_quantize_m_stochastic(m, inverse, r));
            sum_v += fadam_q8_quantize_v_stochastic(v, inverse, r);
        }
        CHECK(fabs(sum_m / 65536 - y_m) < 1e-3 && fabs(sum_v / 65536 - y_v) < 1e-3, "m %g: %.5f vs %.5f; v %g: %.5f vs %.5f", m,
              sum_m / 65536, y_m, v, sum_v / 65536, y_v);
    }
    check_case_end("q8_stochastic_codes_unbiased_in_companded_domain");
}

/* AdamW on a noisy quadratic with 8-bit blockwise moments in the block order of state_layout.h, against
 * float64 AdamW: the loss follows within 5% of its decrease (a sanity check of the whole loop). */
static void test_q8_adamw_loop(void) {
    enum { N = 4 * FADAM_Q8_BLOCK, STEPS = 300 };
    static float p[N], target[N], curvature[N], m[N], v[N];
    static double p64[N], m64[N], v64[N];
    static int8_t m_codes[N];
    static uint8_t v_codes[N];
    float m_scale[N / FADAM_Q8_BLOCK] = {0}, v_scale[N / FADAM_Q8_BLOCK] = {0};
    double loss0 = 0, loss = 0, loss64 = 0;
    int i, t, b;
    check_case_begin();
    for (i = 0; i < N; i++) {
        p[i] = (float)check_rng_normal(&rng), p64[i] = p[i];
        target[i] = (float)check_rng_normal(&rng);
        curvature[i] = (float)pow(10.0, -2.0 + 4.0 * check_rng_uniform(&rng));
        loss0 += 0.5 * curvature[i] * (p[i] - target[i]) * (p[i] - target[i]);
    }
    for (t = 1; t <= STEPS; t++) {
        adamw_scalars s = adamw_for_step(1e-2f, 0.0f, t);
        double bc1 = 1 - pow(0.9, t), bc2 = 1 - pow(0.999, t);
        for (b = 0; b < N / FADAM_Q8_BLOCK; b++) {
            int base = b * FADAM_Q8_BLOCK;
            fadam_q8_dequantize_m_block(m_codes + base, m_scale[b], FADAM_Q8_BLOCK, m + base); /* 1 */
            fadam_q8_dequantize_v_block(v_codes + base, v_scale[b], FADAM_Q8_BLOCK, v + base);
            for (i = base; i < base + FADAM_Q8_BLOCK; i++) { /* 2 */
                double noise = 0.1 * check_rng_normal(&rng);
                float g = (float)(curvature[i] * ((double)p[i] - target[i]) + noise);
                double g64 = curvature[i] * (p64[i] - target[i]) + noise;
                p[i] = adamw_element(&s, p[i], g, &m[i], &v[i]);
                m64[i] = 0.9 * m64[i] + 0.1 * g64, v64[i] = 0.999 * v64[i] + 0.001 * g64 * g64;
                p64[i] -= 1e-2 * (m64[i] / bc1) / (sqrt(v64[i] / bc2) + 1e-8);
            }
            m_scale[b] = fadam_q8_quantize_m_block(m + base, FADAM_Q8_BLOCK, m_codes + base); /* 3, 4 */
            v_scale[b] = fadam_q8_quantize_v_block(v + base, FADAM_Q8_BLOCK, v_codes + base);
        }
    }
    for (i = 0; i < N; i++) {
        loss += 0.5 * curvature[i] * (p[i] - target[i]) * (p[i] - target[i]);
        loss64 += 0.5 * curvature[i] * (p64[i] - target[i]) * (p64[i] - target[i]);
    }
    printf("# noisy quadratic, %d AdamW steps: loss %.4f -> float64 %.4f, 8-bit moments %.4f\n", STEPS, loss0, loss64, loss);
    CHECK(fabs(loss - loss64) <= 0.05 * (loss0 - loss64), "8-bit loss %.4f vs float64 %.4f (start %.4f)", loss, loss64, loss0);
    check_case_end("q8_adamw_loop_follows_float64");
}

static void test_digest(void) {
    uint64_t digest = sl_digest_range(0, SL_DIGEST_COUNT);
    check_case_begin();
    printf("# state_layout digest (gcc) 0x%016llx\n", (unsigned long long)digest);
    CHECK(digest == SL_DIGEST_GOLDEN, "digest 0x%016llx != golden 0x%016llx: an encoding changed",
          (unsigned long long)digest, (unsigned long long)SL_DIGEST_GOLDEN);
    check_case_end("state_layout_digest_golden_gcc");
}

int main(void) {
    uint64_t seed = check_seed("test_state_layout");
    rng = seed;
    test_even_tie_example();
    test_rne_matches_reference();
    test_master_remainder();
    test_remainder_vs_fp32_master();
    test_bf16_stall(seed);
    test_sr_unbiased(seed);
    test_sr_neighbours_and_specials();
    test_random_bits(seed);
    test_q8_bounds();
    test_q8_codes_round_trip();
    test_q8_special_blocks();
    test_q8_stochastic();
    test_q8_adamw_loop();
    test_digest();
    return check_failures_total ? 1 : 0;
}
