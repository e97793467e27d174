/* Tiny test vocabulary shared by every test program (C and C++).
 * Each case prints one line: "ok <name>", "FAIL <name>: <why>" or "skip <name>: <why>";
 * tests/run_tests.sh counts those lines. A program exits 0 when nothing failed, 1 otherwise. */
#ifndef FADAM_TESTS_CHECK_H
#define FADAM_TESTS_CHECK_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int check_failures_total = 0;

/* Per-case state: a case fails at its first failed CHECK, the rest of the case still runs. */
static int check_case_failed = 0;
static char check_case_why[512];

#define CHECK(cond, ...)                                                              \
    do {                                                                              \
        if (!(cond)) {                                                                \
            if (!check_case_failed) {                                                 \
                int check_len_ = snprintf(check_case_why, sizeof check_case_why,       \
                                          "%s:%d: ", __FILE__, __LINE__);             \
                snprintf(check_case_why + check_len_, sizeof check_case_why - (size_t)check_len_, \
                         __VA_ARGS__);                                                \
            }                                                                         \
            check_case_failed = 1;                                                    \
        }                                                                             \
    } while (0)

static void check_case_begin(void) { check_case_failed = 0; check_case_why[0] = '\0'; }

/* Ends a case and prints its line; returns 1 when it passed. */
static int check_case_end(const char *name) {
    if (check_case_failed) {
        printf("FAIL %s: %s\n", name, check_case_why);
        check_failures_total++;
    } else {
        printf("ok %s\n", name);
    }
    fflush(stdout);
    return !check_case_failed;
}

static void check_skip(const char *name, const char *why) {
    printf("skip %s: %s\n", name, why);
    fflush(stdout);
}

/* Seed from FADAM_TEST_SEED when set (to replay a failure), else fresh; always printed. */
static uint64_t check_seed(const char *program) {
    const char *env = getenv("FADAM_TEST_SEED");
    uint64_t seed = env ? strtoull(env, NULL, 0)
                        : ((uint64_t)time(NULL) << 20) ^ (uint64_t)clock() ^ (uint64_t)(uintptr_t)&seed;
    printf("# %s seed=%llu (replay with FADAM_TEST_SEED=%llu)\n", program,
           (unsigned long long)seed, (unsigned long long)seed);
    return seed;
}

/* splitmix64: small, fast, good enough for test data. */
static uint64_t check_rng_next(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform in [0, 1). */
static double check_rng_uniform(uint64_t *state) {
    return (double)(check_rng_next(state) >> 11) * (1.0 / 9007199254740992.0);
}

/* Standard normal (Box-Muller). */
static double check_rng_normal(uint64_t *state) {
    double u1 = check_rng_uniform(state), u2 = check_rng_uniform(state);
    if (u1 < 1e-300) u1 = 1e-300;
    return __builtin_sqrt(-2.0 * __builtin_log(u1)) * __builtin_cos(6.283185307179586 * u2);
}

static int check_exit_code(void) { return check_failures_total ? 1 : 0; }

#endif
