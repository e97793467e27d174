/* test_zero_alloc.c - every host allocation of the sharded calls fails in turn (issue 13): create ->
 * add_tensor_shard (with an empty slice) -> set_shard_rank -> finalize -> fused_step_begin / end ->
 * save -> load_shards of 2 ranks' files into a rank of 3. The call that meets the failure returns
 * FADAM_ERR_OUT_OF_MEMORY and changes nothing (tensor count, state, the file), the same call then
 * succeeds; LeakSanitizer (ASan build) fails the run if anything leaked. Allocation functions wrapped
 * by the linker (mk/zero.mk). */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "fusedadam.h"

void *__real_malloc(size_t bytes);
void *__real_calloc(size_t count, size_t bytes);
void *__real_realloc(void *pointer, size_t bytes);
void *__real_aligned_alloc(size_t alignment, size_t bytes);

static struct {
    int armed;
    long count, fail_at;
    int injected;
} inj;

static int fail_now(void) {
    if (!inj.armed || ++inj.count != inj.fail_at) return 0;
    inj.injected = 1;
    return 1;
}
void *__wrap_malloc(size_t bytes) { return fail_now() ? NULL : __real_malloc(bytes); }
void *__wrap_calloc(size_t count, size_t bytes) { return fail_now() ? NULL : __real_calloc(count, bytes); }
void *__wrap_realloc(void *pointer, size_t bytes) { return fail_now() ? NULL : __real_realloc(pointer, bytes); }
void *__wrap_aligned_alloc(size_t alignment, size_t bytes) {
    return fail_now() ? NULL : __real_aligned_alloc(alignment, bytes);
}

#define N_TENSORS 4
static const int64_t sizes[N_TENSORS] = {7, 1, 300, 33};
static float params[N_TENSORS][300], grads[N_TENSORS][300];
static char directory[64], paths[2][96], own_path[96];

/* Rank `rank` of `ranks`: slices by fadam_shard_range (tensor 1 has 1 element: empty for rank > 0). */
static fadam_status add_slice(fadam_optimizer *opt, int t, int rank, int ranks) {
    char name[16];
    int64_t offset, count;
    snprintf(name, sizeof name, "t%d", t);
    (void)fadam_shard_range(sizes[t], rank, ranks, &offset, &count);
    return fadam_add_tensor_shard(opt, name, params[t] + offset, grads[t] + offset, count, sizes[t], offset,
                                  FADAM_FLOAT32, FADAM_FLOAT32, 0, NULL);
}

/* The two files loaded: ranks 0 and 1 of 2, saved once without injection. */
static void write_shards(void) {
    int r, t;
    fadam_fused_step_config c = fadam_fused_step_config_default();
    for (r = 0; r < 2; r++) {
        fadam_optimizer *opt = NULL;
        CHECK(fadam_create(&opt, FADAM_DEVICE_CPU, 0, NULL, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
        CHECK(fadam_configure_fused_step(opt, &c) == FADAM_SUCCESS, "%s", fadam_last_error_message());
        for (t = 0; t < N_TENSORS; t++) CHECK(add_slice(opt, t, r, 2) == FADAM_SUCCESS, "%s", fadam_last_error_message());
        CHECK(fadam_set_shard_rank(opt, r, 2) == FADAM_SUCCESS, "%s", fadam_last_error_message());
        CHECK(fadam_finalize(opt, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
        CHECK(fadam_fused_step(opt, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
        CHECK(fadam_save(opt, paths[r], NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
        fadam_destroy(opt);
    }
}

/* A fingerprint of what a failed call must not change. */
static unsigned long long fingerprint(fadam_optimizer *opt) {
    unsigned long long h = 1469598103934665603ull;
    int64_t n = 0, t, k;
    struct stat st;
    if (!opt) return 0;
    (void)fadam_num_tensors(opt, &n);
    h = (h ^ (unsigned long long)n) * 1099511628211ull;
    for (t = 0; t < n; t++) {
        float *master, *m, *v;
        if (fadam_get_state(opt, t, &master, &m, &v) != FADAM_SUCCESS) break;
        for (k = 0; m && k < (t == 2 ? 100 : 3); k++) {
            unsigned bits;
            memcpy(&bits, &m[k], 4);
            h = (h ^ bits) * 1099511628211ull;
        }
    }
    h = (h ^ (unsigned long long)(stat(own_path, &st) == 0 ? st.st_size + 1 : 0)) * 1099511628211ull;
    return h;
}

/* One call, armed: a failure it meets must be FADAM_ERR_OUT_OF_MEMORY and change nothing; then the same
 * call runs again, unarmed, and must succeed. */
#define STEP(opt, label, call)                                                                                   \
    do {                                                                                                        \
        unsigned long long before_ = fingerprint(opt);                                                          \
        fadam_status s_;                                                                                        \
        inj.armed = 1;                                                                                          \
        s_ = (call);                                                                                            \
        inj.armed = 0;                                                                                          \
        if (inj.injected) {                                                                                     \
            *hit = label;                                                                                       \
            CHECK(s_ == FADAM_ERR_OUT_OF_MEMORY, "point %ld in %s: status %d (%s)", fail_at, label, (int)s_,     \
                  fadam_last_error_message());                                                                  \
            CHECK(fingerprint(opt) == before_, "point %ld in %s: the failed call changed something", fail_at,    \
                  label);                                                                                       \
            inj.injected = 0;                                                                                   \
            s_ = (call);                                                                                        \
        }                                                                                                       \
        CHECK(s_ == FADAM_SUCCESS, "point %ld: %s failed: %s", fail_at, label, fadam_last_error_message());      \
    } while (0)

/* Runs the scenario with allocation `fail_at` failing (0: none); returns the points counted. */
static long scenario(long fail_at, const char **hit) {
    fadam_optimizer *opt = NULL;
    fadam_fused_step_config c = fadam_fused_step_config_default();
    const char *list[2] = {paths[0], paths[1]};
    int t;
    inj.count = 0;
    inj.fail_at = fail_at;
    inj.injected = 0;
    *hit = NULL;
    unlink(own_path);
    inj.armed = 1;
    if (fadam_create(&opt, FADAM_DEVICE_CPU, 0, NULL, NULL) != FADAM_SUCCESS) {
        inj.armed = 0;
        *hit = "fadam_create";
        CHECK(opt == NULL && inj.injected, "create failed without an injected failure: %s", fadam_last_error_message());
        inj.injected = 0;
        CHECK(fadam_create(&opt, FADAM_DEVICE_CPU, 0, NULL, NULL) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    }
    inj.armed = 0;
    if (!opt) return inj.count;
    STEP(opt, "fadam_configure_fused_step", fadam_configure_fused_step(opt, &c));
    for (t = 0; t < N_TENSORS; t++) STEP(opt, "fadam_add_tensor_shard", add_slice(opt, t, 1, 3));
    STEP(opt, "fadam_set_shard_rank", fadam_set_shard_rank(opt, 1, 3));
    STEP(opt, "fadam_finalize", fadam_finalize(opt, NULL));
    STEP(opt, "fadam_fused_step_begin", fadam_fused_step_begin(opt, NULL));
    STEP(opt, "fadam_fused_step_end", fadam_fused_step_end(opt, NULL));
    STEP(opt, "fadam_save", fadam_save(opt, own_path, NULL));
    STEP(opt, "fadam_load_shards", fadam_load_shards(opt, list, 2, NULL));
    fadam_destroy(opt);
    return inj.count;
}

int main(void) {
    const char *hit;
    long points, k, calls_hit = 0;
    check_seed("test_zero_alloc");
    check_case_begin();
    snprintf(directory, sizeof directory, "/tmp/fadam_zero_alloc_XXXXXX");
    CHECK(mkdtemp(directory) != NULL, "mkdtemp: %s", strerror(errno));
    snprintf(paths[0], sizeof paths[0], "%s/r0.safetensors", directory);
    snprintf(paths[1], sizeof paths[1], "%s/r1.safetensors", directory);
    snprintf(own_path, sizeof own_path, "%s/own.safetensors", directory);
    write_shards();
    points = scenario(0, &hit);
    CHECK(points > 10, "only %ld allocation points", points);
    for (k = 1; k <= points && !check_case_failed; k++) {
        scenario(k, &hit);
        CHECK(hit != NULL, "point %ld of %ld was never reached", k, points);
        calls_hit += hit != NULL;
    }
    printf("# %ld allocation points, each failed once\n", points);
    unlink(paths[0]);
    unlink(paths[1]);
    unlink(own_path);
    rmdir(directory);
    check_case_end("sharded_calls_survive_every_allocation_failure");
    return check_exit_code();
}
