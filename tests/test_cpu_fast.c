/* test_cpu_fast.c - the CPU device's vectorized path (csrc/cpu_step.c) equals the readable reference
 * (fadam_reference_update) bit for bit: every param/grad dtype pair with and without a master, both
 * specializations (AdamW constants and run-time flags), every flag, a gradient scale, odd sizes,
 * unaligned starts, and special values (NaN, Inf, subnormals, values that round to Inf in 16 bits). */
#include <math.h>

#include "check.h"
#include "fusedadam.h"
#include "dtype_values.h"
#include "internal.h"

static uint64_t rng;

static float special_or_normal(double scale) {
    static const float specials[] = {0.0f, -0.0f, 1e-40f, -3e-39f, 65519.0f, 65520.0f, 3.3e38f, 1e-7f};
    uint64_t r = check_rng_next(&rng) % 200;
    if (r == 0) return NAN;
    if (r == 1) return INFINITY;
    if (r < 10) return specials[r - 2];
    return (float)(scale * check_rng_normal(&rng));
}

static void fill(fadam_dtype dtype, void *base, int64_t n, double scale) {
    int64_t i;
    for (i = 0; i < n; i++) {
        store_as(dtype, base, i, special_or_normal(scale));
    }
}

int main(void) {
    static const fadam_dtype dtypes[3] = {FADAM_FLOAT32, FADAM_BFLOAT16, FADAM_FLOAT16};
    int pd, gd, master, flags;
    rng = check_seed("test_cpu_fast");
    for (pd = 0; pd < 3; pd++)
        for (gd = 0; gd < 3; gd++)
            for (master = 0; master < 2; master++) {
                char name[96];
                if (pd == 0 && master) continue;
                snprintf(name, sizeof name, "cpu_fast_equals_reference_param%d_grad%d%s", pd, gd,
                         master ? "_master" : "");
                check_case_begin();
                for (flags = 0; flags < 8 && !check_case_failed; flags++) {
                    /* An odd size, starting at an odd element so no vector lane lines up. */
                    int64_t n = 3 * 16384 + 1 + (int64_t)(check_rng_next(&rng) % 100), offset = 1, i;
                    fadam_hparams h = fadam_hparams_default();
                    fadam_group_scalars s;
                    fadam_tensor fast, slow;
                    size_t pb = fadam_dtype_size(dtypes[pd]), gb = fadam_dtype_size(dtypes[gd]);
                    unsigned char *buffers[9];
                    for (i = 0; i < 9; i++) buffers[i] = (unsigned char *)malloc((size_t)(n + offset) * 4);
                    memset(&fast, 0, sizeof fast);
                    fast.numel = n;
                    fast.param_dtype = dtypes[pd];
                    fast.grad_dtype = dtypes[gd];
                    fast.param = buffers[0] + offset * pb;
                    fast.grad = buffers[1] + offset * gb;
                    fast.master = master ? (float *)buffers[2] + offset : NULL;
                    fast.exp_avg = (float *)buffers[3] + offset;
                    fast.exp_avg_sq = (float *)buffers[4] + offset;
                    slow = fast;
                    slow.param = buffers[5] + offset * pb;
                    slow.master = master ? (float *)buffers[6] + offset : NULL;
                    slow.exp_avg = (float *)buffers[7] + offset;
                    slow.exp_avg_sq = (float *)buffers[8] + offset;
                    fill(dtypes[pd], fast.param, n, 1.0);
                    fill(dtypes[gd], (void *)fast.grad, n, 1e-2);
                    if (master) fill(FADAM_FLOAT32, fast.master, n, 1.0);
                    fill(FADAM_FLOAT32, fast.exp_avg, n, 1e-2);
                    for (i = 0; i < n; i++) ((float *)fast.exp_avg_sq)[i] = fabsf(special_or_normal(1e-4));
                    memcpy(slow.param, fast.param, (size_t)n * pb);
                    if (master) memcpy(slow.master, fast.master, (size_t)n * 4);
                    memcpy(slow.exp_avg, fast.exp_avg, (size_t)n * 4);
                    memcpy(slow.exp_avg_sq, fast.exp_avg_sq, (size_t)n * 4);

                    h.mode = flags & 1 ? FADAM_ADAM_L2 : FADAM_ADAMW;
                    h.maximize = (flags >> 1) & 1;
                    h.bias_correction = !((flags >> 2) & 1);
                    h.weight_decay = 0.05f;
                    s = fadam_compute_group_scalars(&h, 3e-3f, 1 + (int64_t)(check_rng_next(&rng) % 1000));
                    s.grad_scale = flags & 4 ? 0.37109375f : 1.0f; /* an unscale/clip factor */
                    fadam_cpu_update_tensors(NULL, &fast, 1, &s, 1);
                    fadam_reference_update(&slow, &s, 1);
                    CHECK(same_params(dtypes[pd], fast.param, slow.param, n), "flags %d: params differ", flags);
                    CHECK(!master || same_floats(fast.master, slow.master, n), "flags %d: masters differ", flags);
                    CHECK(same_floats(fast.exp_avg, slow.exp_avg, n) && same_floats(fast.exp_avg_sq, slow.exp_avg_sq, n),
                          "flags %d: moments differ", flags);
                    for (i = 0; i < 9; i++) free(buffers[i]);
                }
                check_case_end(name);
            }
    return check_exit_code();
}
