/* test_layouts_emulated.cpp - the lean state layouts (issue 12) in the update itself: the step kernel run
 * on the CPU through the emulator, the C reference and the CPU path (1 and 3 threads) agree bit for bit
 * on one table mixing every layout (16-bit master remainder; bf16 moments with stochastic rounding; 8-bit
 * blockwise moments; and their combinations) with every param/grad dtype and the Adam, Adam-L2 and Lion
 * rules; one step against a float64 oracle within docs/STATE_LAYOUTS.md's bounds; the remainder layout
 * against the fp32-master layout over 120 steps (param, master, m, v bitwise, even ties included);
 * bf16 moments keep decaying where round-to-nearest stalls; a resumed run equals an uninterrupted one;
 * a tensor split into slices (element_offset) gives the bits of the whole. */
#include "../kernels/adam_step.cu"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <deque>
#include <vector>

#include "check.h"
#include "dtype_values.h"
#include "internal.h"
#include "state_layout.h"

static uint64_t rng;

#include "emulated_runs.h"

enum { NO_MASTER = 0, FP32_MASTER = 1, REMAINDER = 2 };

/* One tensor of a test model: dtypes, group and layout. */
struct spec {
    fadam_dtype param_dtype, grad_dtype;
    int group;
    int master; /* NO_MASTER, FP32_MASTER or REMAINDER */
    fadam_moment_format moments;
    int64_t numel;
};

struct buffer {
    void *data;
    size_t bytes;
    const char *what;
    int64_t tensor;
};

/* Every buffer of every tensor, in one order, so that sides copy and compare buffer by buffer. */
struct side {
    std::deque<std::vector<unsigned char>> storage;
    std::vector<buffer> buffers;
    std::vector<fadam_tensor> tensors;
};

static void *allocate(side &s, size_t bytes, const char *what, int64_t tensor) {
    s.storage.emplace_back(bytes + 64);
    uintptr_t base = reinterpret_cast<uintptr_t>(s.storage.back().data());
    void *data = reinterpret_cast<void *>((base + 63) / 64 * 64); /* 16-byte aligned: the vector paths too */
    if (what) s.buffers.push_back({data, bytes, what, tensor});
    return data;
}

static size_t moment_bytes(fadam_moment_format f) { return f == FADAM_MOMENT_FP32 ? 4 : f == FADAM_MOMENT_BF16 ? 2 : 1; }
static int64_t blocks_of(int64_t n) { return (n + FADAM_MOMENT_BLOCK - 1) / FADAM_MOMENT_BLOCK; }

static side make_side(const std::vector<spec> &specs, const std::vector<fadam_hparams> &groups, uint64_t seed) {
    side s;
    for (size_t i = 0; i < specs.size(); i++) {
        const spec &d = specs[i];
        size_t n = (size_t)d.numel;
        fadam_tensor t;
        std::memset(&t, 0, sizeof t);
        t.numel = d.numel;
        t.param_dtype = d.param_dtype;
        t.grad_dtype = d.grad_dtype;
        t.group = d.group;
        t.moment_format = d.moments;
        t.master_format = d.master == REMAINDER ? FADAM_MASTER_REMAINDER : FADAM_MASTER_FP32;
        t.rounding_seed = seed + 0x1000 * i;
        t.param = allocate(s, n * fadam_dtype_size(d.param_dtype), "param", (int64_t)i);
        t.grad = allocate(s, n * fadam_dtype_size(d.grad_dtype), "grad", (int64_t)i);
        if (d.master) t.master = allocate(s, n * (d.master == REMAINDER ? 2 : 4), "master", (int64_t)i);
        t.exp_avg = allocate(s, n * moment_bytes(d.moments), "exp_avg", (int64_t)i);
        bool lion = groups[d.group].mode == FADAM_LION;
        if (!lion) t.exp_avg_sq = allocate(s, n * moment_bytes(d.moments), "exp_avg_sq", (int64_t)i);
        if (d.moments == FADAM_MOMENT_INT8) {
            t.exp_avg_scales = static_cast<float *>(allocate(s, (size_t)blocks_of(d.numel) * 4, "exp_avg_scales", (int64_t)i));
            if (!lion)
                t.exp_avg_sq_scales =
                    static_cast<float *>(allocate(s, (size_t)blocks_of(d.numel) * 4, "exp_avg_sq_scales", (int64_t)i));
        }
        s.tensors.push_back(t);
    }
    return s;
}

static void copy_side(side &to, const side &from) {
    for (size_t k = 0; k < from.buffers.size(); k++) std::memcpy(to.buffers[k].data, from.buffers[k].data, from.buffers[k].bytes);
}

/* The fp32 master an element starts a step from (what every layout's load gives). */
static float master_of(const fadam_tensor &t, int64_t i) {
    if (t.master_format == FADAM_MASTER_REMAINDER)
        return fadam_master_join(static_cast<const uint16_t *>(t.param)[i], static_cast<const uint16_t *>(t.master)[i]);
    if (t.master) return static_cast<const float *>(t.master)[i];
    return load_as(t.param_dtype, t.param, i);
}

/* A moment's value as the step loads it. */
static float moment_of(const fadam_tensor &t, int field, int64_t i) {
    const void *p = field ? t.exp_avg_sq : t.exp_avg;
    if (t.moment_format == FADAM_MOMENT_BF16) return fadam_bf16_to_float(static_cast<const uint16_t *>(p)[i]);
    if (t.moment_format == FADAM_MOMENT_INT8) {
        int64_t b = i / FADAM_MOMENT_BLOCK;
        return field ? fadam_q8_dequantize_v(static_cast<const uint8_t *>(p)[i], t.exp_avg_sq_scales[b])
                     : fadam_q8_dequantize_m(static_cast<const int8_t *>(p)[i], t.exp_avg_scales[b]);
    }
    return static_cast<const float *>(p)[i];
}

/* Stores moment values of a whole tensor in its format (8-bit: round to nearest per block; bf16: RNE). */
static void set_moment(fadam_tensor &t, int field, const std::vector<float> &x) {
    void *p = field ? t.exp_avg_sq : t.exp_avg;
    for (int64_t b = 0; b < blocks_of(t.numel) && t.moment_format == FADAM_MOMENT_INT8; b++) {
        int64_t first = b * FADAM_MOMENT_BLOCK;
        int n = (int)std::min<int64_t>(FADAM_MOMENT_BLOCK, t.numel - first);
        if (field) t.exp_avg_sq_scales[b] = fadam_q8_quantize_v_block(&x[first], n, static_cast<uint8_t *>(p) + first);
        else t.exp_avg_scales[b] = fadam_q8_quantize_m_block(&x[first], n, static_cast<int8_t *>(p) + first);
    }
    if (t.moment_format == FADAM_MOMENT_INT8) return;
    for (int64_t i = 0; i < t.numel; i++)
        if (t.moment_format == FADAM_MOMENT_BF16) static_cast<uint16_t *>(p)[i] = fadam_round_bf16_nearest(x[i]);
        else static_cast<float *>(p)[i] = x[i];
}

/* Random masters (param from them by the layout's split or RNE), moments and gradients. */
static void fill_side(side &s, double master_scale) {
    for (fadam_tensor &t : s.tensors) {
        std::vector<float> m(t.numel), v(t.numel);
        for (int64_t i = 0; i < t.numel; i++) {
            float x = (float)(master_scale * check_rng_normal(&rng));
            if (t.master_format == FADAM_MASTER_REMAINDER) {
                uint16_t low;
                static_cast<uint16_t *>(t.param)[i] = fadam_master_split(x, &low);
                static_cast<uint16_t *>(t.master)[i] = low;
            } else {
                if (t.master) static_cast<float *>(t.master)[i] = x;
                store_as(t.param_dtype, t.param, i, x);
            }
            m[i] = (float)(1e-2 * check_rng_normal(&rng));
            v[i] = (float)(1e-4 * check_rng_uniform(&rng) * check_rng_uniform(&rng));
        }
        set_moment(t, 0, m);
        if (t.exp_avg_sq) set_moment(t, 1, v);
    }
}

static void fill_grads(side &s) {
    for (fadam_tensor &t : s.tensors)
        for (int64_t i = 0; i < t.numel; i++) {
            double r = check_rng_uniform(&rng);
            store_as(t.grad_dtype, const_cast<void *>(t.grad), i, r < 0.03 ? 0.0f : (float)(1e-2 * check_rng_normal(&rng)));
        }
}

/* The first buffer where two sides differ, or -1. */
static int64_t first_difference(const side &a, const side &b, size_t *byte) {
    for (size_t k = 0; k < a.buffers.size(); k++)
        for (size_t j = 0; j < a.buffers[k].bytes; j++)
            if (static_cast<const unsigned char *>(a.buffers[k].data)[j] != static_cast<const unsigned char *>(b.buffers[k].data)[j]) {
                *byte = j;
                return (int64_t)k;
            }
    return -1;
}

static void expect_same(const side &a, const side &b, const char *what, const std::vector<spec> &specs) {
    size_t byte = 0;
    int64_t k = first_difference(a, b, &byte);
    if (k < 0) return;
    const buffer &x = a.buffers[(size_t)k];
    const spec &d = specs[(size_t)x.tensor];
    CHECK(false, "%s: tensor %lld (param %d grad %d group %d master %d moments %d numel %lld) %s differs at byte %zu", what,
          (long long)x.tensor, (int)d.param_dtype, (int)d.grad_dtype, d.group, d.master, (int)d.moments,
          (long long)d.numel, x.what, byte);
}


/* Every layout a dtype admits (REMAINDER: bf16 params only; fp32 params: no master). */
static std::vector<spec> every_layout(const std::vector<fadam_hparams> &groups, int64_t max_numel) {
    static const fadam_dtype dtypes[3] = {FADAM_FLOAT32, FADAM_BFLOAT16, FADAM_FLOAT16};
    static const fadam_moment_format moments[3] = {FADAM_MOMENT_FP32, FADAM_MOMENT_BF16, FADAM_MOMENT_INT8};
    std::vector<spec> specs;
    for (int pd = 0; pd < 3; pd++)
        for (int gd = 0; gd < 3; gd++)
            for (int master = 0; master < (pd == 0 ? 1 : pd == 1 ? 3 : 2); master++)
                for (int mf = 0; mf < 3; mf++)
                    for (int g = 0; g < (int)groups.size(); g++) {
                        int64_t r = (int64_t)(check_rng_next(&rng) % 4);
                        /* sizes: odd, a whole number of 8-bit blocks, one short block, random */
                        int64_t numel = r == 0 ? 1 + (int64_t)(check_rng_next(&rng) % max_numel)
                                        : r == 1 ? FADAM_MOMENT_BLOCK * (1 + (int64_t)(check_rng_next(&rng) % 4))
                                        : r == 2 ? 1 + (int64_t)(check_rng_next(&rng) % 255)
                                                 : 1 + (int64_t)(check_rng_next(&rng) % max_numel);
                        specs.push_back({dtypes[pd], dtypes[gd], g, master, moments[mf], numel});
                    }
    return specs;
}

/* ---- float64 oracle of one step from the loaded state ---- */

static double adam_oracle(const fadam_hparams &h, int64_t step, double scale, double p, double g, double *m, double *v) {
    g = g * scale * (h.maximize ? -1.0 : 1.0);
    if (h.mode == FADAM_LION) {
        double c = (double)h.beta1 * *m + (1.0 - (double)h.beta1) * g;
        double sign = c > 0 ? 1.0 : c < 0 ? -1.0 : 0.0;
        *m = (double)h.beta2 * *m + (1.0 - (double)h.beta2) * g;
        return p * (1.0 - (double)h.lr * (double)h.weight_decay) - (double)h.lr * sign;
    }
    if (h.mode == FADAM_ADAM_L2) g += (double)h.weight_decay * p;
    else p *= 1.0 - (double)h.lr * (double)h.weight_decay;
    *m = (double)h.beta1 * *m + (1.0 - (double)h.beta1) * g;
    *v = (double)h.beta2 * *v + (1.0 - (double)h.beta2) * g * g;
    double bc1 = 1.0 - std::pow((double)h.beta1, (double)step), bc2 = 1.0 - std::pow((double)h.beta2, (double)step);
    return p - (double)h.lr / bc1 * *m / (std::sqrt(*v) / std::sqrt(bc2) + (double)h.eps);
}

/* docs/STATE_LAYOUTS.md's bound on a stored moment vs its fp32 value x (8-bit: s the block's scale). */
static double moment_tolerance(const fadam_tensor &t, int field, int64_t i, double x, double terms) {
    /* fp32's roundings of b*x + (1-b)*g (terms: the magnitude of what is added, which may cancel) */
    double fp32_slack = 4 * 6e-8 * terms + 1e-30;
    /* one bf16 ulp: up to 2^-7 relative at the bottom of a binade */
    if (t.moment_format == FADAM_MOMENT_BF16) return std::fabs(x) / 128 * 1.0001 + fp32_slack;
    if (t.moment_format == FADAM_MOMENT_INT8) {
        double s = field ? t.exp_avg_sq_scales[i / FADAM_MOMENT_BLOCK] : t.exp_avg_scales[i / FADAM_MOMENT_BLOCK];
        if (field == 0) {
            double a = std::sqrt(std::fabs(x) / s), d = 0.5 / 127;
            return s * d * (2 * a + d) * 1.001 + 1e-6 * s + fp32_slack;
        }
        double b = std::sqrt(std::sqrt(std::fabs(x) / s)), e = 0.5 / 254;
        return s * e * (2 * b + e) * (b * b + (b + e) * (b + e)) * 1.001 + 1e-6 * s + fp32_slack;
    }
    return fp32_slack;
}

static void test_mixed_table(bool scaled) {
    char name[96];
    std::snprintf(name, sizeof name, "every_layout_dtype_rule_one_launch_kernel_reference_cpu_bitwise_oracle%s",
                  scaled ? "_grad_multiplier" : "");
    check_case_begin();
    std::vector<fadam_hparams> groups = rule_groups();
    std::vector<spec> specs = every_layout(groups, 900);
    /* one large tensor: the 3-thread split cuts it (and its 8-bit blocks' neighbours) at unaligned points */
    specs.push_back({FADAM_BFLOAT16, FADAM_BFLOAT16, 0, REMAINDER, FADAM_MOMENT_INT8, 70001});
    specs.push_back({FADAM_FLOAT32, FADAM_BFLOAT16, 1, NO_MASTER, FADAM_MOMENT_INT8, 33333});
    const uint64_t seed = check_rng_next(&rng);
    side start = make_side(specs, groups, seed), kernel = make_side(specs, groups, seed),
         reference = make_side(specs, groups, seed), cpu1 = make_side(specs, groups, seed),
         cpu3 = make_side(specs, groups, seed);
    fill_side(start, 1.0);
    const float multiplier = 0.75f, *mult = scaled ? &multiplier : NULL;
    int64_t checked[2] = {0, 0};
    double worst = 0.0;
    for (int64_t step = 7; step < 10 && !check_case_failed; step++) {
        fill_grads(start);
        copy_side(kernel, start);
        copy_side(reference, start);
        copy_side(cpu1, start);
        copy_side(cpu3, start);
        run_kernel(kernel.tensors, groups, step, mult);
        run_reference(reference.tensors, groups, step, mult);
        run_cpu(cpu1.tensors, groups, step, 1, mult);
        run_cpu(cpu3.tensors, groups, step, 3, mult);
        expect_same(kernel, reference, "kernel vs reference", specs);
        expect_same(kernel, cpu1, "kernel vs cpu 1 thread", specs);
        expect_same(kernel, cpu3, "kernel vs cpu 3 threads", specs);
        /* the oracle, from the state the step loaded */
        for (size_t k = 0; k < specs.size() && !check_case_failed; k++) {
            const fadam_tensor &before = start.tensors[k], &after = reference.tensors[k];
            const fadam_hparams &h = groups[specs[k].group];
            for (int64_t i = 0; i < before.numel && !check_case_failed; i++) {
                double m = moment_of(before, 0, i), v = before.exp_avg_sq ? moment_of(before, 1, i) : 0.0;
                double p0 = master_of(before, i), g = load_as(before.grad_dtype, before.grad, i);
                const double g_terms = std::fabs(g) * (scaled ? 0.75 : 1.0) + (double)h.weight_decay * std::fabs(p0);
                const double m_terms = std::fabs(m) + g_terms, v_terms = std::fabs(v) + g_terms * g_terms;
                double want_p = adam_oracle(h, step, scaled ? 0.75 : 1.0, p0, g, &m, &v);
                double got_m = moment_of(after, 0, i), got_v = after.exp_avg_sq ? moment_of(after, 1, i) : 0.0;
                CHECK(std::fabs(got_m - m) <= moment_tolerance(after, 0, i, m, m_terms), "tensor %zu element %lld: m=%.9g want %.9g (format %d)",
                      k, (long long)i, got_m, m, (int)after.moment_format);
                CHECK(!after.exp_avg_sq || std::fabs(got_v - v) <= moment_tolerance(after, 1, i, v, v_terms),
                      "tensor %zu element %lld: v=%.9g want %.9g (format %d)", k, (long long)i, got_v, v,
                      (int)after.moment_format);
                double update = std::fabs(want_p - p0);
                if (h.mode == FADAM_LION) {
                    double c_scale = std::fabs(0.9 * moment_of(before, 0, i)) + std::fabs(0.1 * g);
                    double c = (double)h.beta1 * moment_of(before, 0, i) + (1.0 - (double)h.beta1) * g * (scaled ? 0.75 : 1.0);
                    if (std::fabs(c) <= 1e-6 * c_scale) continue; /* the sign may flip by rounding */
                }
                /* fp32 master (or param): a few roundings of the update and of p */
                double tol = 2.5e-7 * std::fabs(p0) + 1e-5 * update + 1e-12;
                double got = master_of(after, i);
                if (!after.master && after.param_dtype != FADAM_FLOAT32) /* a 16-bit param updated in place */
                    tol += (after.param_dtype == FADAM_BFLOAT16 ? 1.0 / 256 : 1.0 / 2048) * std::fabs(want_p) + 0x1p-24;
                else if (tol > 0 && std::fabs(got - want_p) / tol > worst) worst = std::fabs(got - want_p) / tol;
                CHECK(std::fabs(got - want_p) <= tol, "tensor %zu (group %d master %d moments %d) element %lld: p=%.9g want %.9g",
                      k, specs[k].group, specs[k].master, (int)specs[k].moments, (long long)i, got, want_p);
                checked[after.moment_format == FADAM_MOMENT_FP32 ? 0 : 1]++;
            }
        }
        copy_side(start, reference);
    }
    std::printf("# %s: %zu tensors, %lld fp32-moment and %lld lean-moment element-steps vs float64; fp32 masters' worst "
                "error %.3g of tolerance\n",
                name, specs.size(), (long long)checked[0], (long long)checked[1], worst);
    check_case_end(name);
}

/* The remainder layout against the fp32-master layout (bf16 params), 120 steps on the CPU path and the
 * emulated kernel: the param, the joined master, m and v bit for bit at every step. The even ties (where
 * round-to-nearest-even would have given the other param) are counted, so the test shows it met them. */
static void test_remainder_vs_fp32_master() {
    const char *name = "remainder_equals_fp32_master_bitwise_120_steps";
    check_case_begin();
    std::vector<fadam_hparams> groups(1, fadam_hparams_default());
    groups[0].weight_decay = 0.1f;
    std::vector<spec> fp32_specs(1, spec{FADAM_BFLOAT16, FADAM_BFLOAT16, 0, FP32_MASTER, FADAM_MOMENT_FP32, 65536});
    std::vector<spec> rem_specs(1, spec{FADAM_BFLOAT16, FADAM_BFLOAT16, 0, REMAINDER, FADAM_MOMENT_FP32, 65536});
    side a = make_side(fp32_specs, groups, 1), b = make_side(rem_specs, groups, 1);
    fadam_tensor &ta = a.tensors[0], &tb = b.tensors[0];
    const int64_t n = ta.numel;
    for (int64_t i = 0; i < n; i++) {
        float x = (float)(0.02 * check_rng_normal(&rng));
        uint16_t low;
        static_cast<float *>(ta.master)[i] = x;
        static_cast<uint16_t *>(ta.param)[i] = fadam_bf16_from_master(x);
        static_cast<uint16_t *>(tb.param)[i] = fadam_master_split(x, &low);
        static_cast<uint16_t *>(tb.master)[i] = low;
        static_cast<float *>(ta.exp_avg)[i] = static_cast<float *>(tb.exp_avg)[i] = 0.0f;
        static_cast<float *>(ta.exp_avg_sq)[i] = static_cast<float *>(tb.exp_avg_sq)[i] = 0.0f;
    }
    int64_t ties = 0;
    for (int64_t step = 1; step <= 120 && !check_case_failed; step++) {
        for (int64_t i = 0; i < n; i++) {
            uint16_t g = fadam_float_to_bf16_bits((float)(1e-2 * check_rng_normal(&rng)));
            static_cast<uint16_t *>(const_cast<void *>(ta.grad))[i] = g;
            static_cast<uint16_t *>(const_cast<void *>(tb.grad))[i] = g;
        }
        if (step % 30 == 0) run_kernel(a.tensors, groups, step, NULL); /* the kernel's fp32-master path */
        else run_cpu(a.tensors, groups, step, step % 2 ? 1 : 3, NULL);
        if (step % 40 == 0) run_kernel(b.tensors, groups, step, NULL); /* the kernel's remainder path too */
        else run_cpu(b.tensors, groups, step, step % 2 ? 3 : 1, NULL);
        for (int64_t i = 0; i < n && !check_case_failed; i++) {
            float master = static_cast<float *>(ta.master)[i], joined = master_of(tb, i);
            uint16_t pa = static_cast<uint16_t *>(ta.param)[i], pb = static_cast<uint16_t *>(tb.param)[i], low;
            CHECK(std::memcmp(&master, &joined, 4) == 0, "step %lld element %lld: joined master %a, fp32 master %a",
                  (long long)step, (long long)i, (double)joined, (double)master);
            CHECK(std::memcmp(&static_cast<float *>(ta.exp_avg)[i], &static_cast<float *>(tb.exp_avg)[i], 4) == 0 &&
                      std::memcmp(&static_cast<float *>(ta.exp_avg_sq)[i], &static_cast<float *>(tb.exp_avg_sq)[i], 4) == 0,
                  "step %lld element %lld: m or v differ", (long long)step, (long long)i);
            CHECK(pa == pb, "step %lld element %lld: params %04x (fp32 master) and %04x (remainder), master %a",
                  (long long)step, (long long)i, pa, pb, (double)master);
            if (fadam_master_is_even_tie(master)) {
                ties++;
                CHECK(pa == fadam_master_split(master, &low) && pa != fadam_round_bf16_nearest(master),
                      "step %lld element %lld: even tie %a: param %04x, want %04x (ties away from zero)", (long long)step,
                      (long long)i, (double)master, pa, fadam_master_split(master, &low));
            }
        }
    }
    CHECK(ties > 0, "no even tie in %lld element-steps: the test does not exercise the tie rule", (long long)(n * 120));
    std::printf("# %s: %lld even ties in %lld element-steps (params equal there too)\n", name, (long long)ties,
                (long long)(n * 120));
    check_case_end(name);
}

/* bf16 moments through the real step: with zero gradients v decays by beta2 each step; rounding to nearest
 * would stall (0.999 v rounds back to v), stochastic rounding follows the float64 decay on average. */
static void test_bf16_stall() {
    const char *name = "bf16_moments_stochastic_rounding_decays_where_nearest_stalls";
    check_case_begin();
    std::vector<fadam_hparams> groups(1, fadam_hparams_default());
    groups[0].lr = 0.0f;
    groups[0].weight_decay = 0.0f;
    std::vector<spec> specs(1, spec{FADAM_FLOAT32, FADAM_FLOAT32, 0, NO_MASTER, FADAM_MOMENT_BF16, 4096});
    side s = make_side(specs, groups, check_rng_next(&rng));
    fadam_tensor &t = s.tensors[0];
    const uint16_t v0 = fadam_round_bf16_nearest(1e-3f);
    for (int64_t i = 0; i < t.numel; i++) {
        static_cast<float *>(t.param)[i] = 1.0f;
        static_cast<float *>(const_cast<void *>(t.grad))[i] = 0.0f;
        static_cast<uint16_t *>(t.exp_avg)[i] = 0;
        static_cast<uint16_t *>(t.exp_avg_sq)[i] = v0;
    }
    /* round to nearest: the step's own arithmetic (beta2 * v + (1 - beta2) * 0) comes back to v */
    const float beta2 = groups[0].beta2, one_minus = (float)(1.0 - (double)beta2);
    CHECK(fadam_round_bf16_nearest(beta2 * fadam_bf16_to_float(v0) + one_minus * 0.0f) == v0, "RNE should stall at v0");
    const int64_t steps = 2000;
    for (int64_t step = 1; step <= steps; step++) run_cpu(s.tensors, groups, step, 1, NULL);
    double mean = 0.0, want = (double)fadam_bf16_to_float(v0) * std::pow((double)beta2, (double)steps);
    for (int64_t i = 0; i < t.numel; i++) mean += fadam_bf16_to_float(static_cast<uint16_t *>(t.exp_avg_sq)[i]);
    mean /= (double)t.numel;
    CHECK(std::fabs(mean - want) <= 0.02 * want, "mean v after %lld steps %.6g, float64 %.6g (RNE: stays %.6g)",
          (long long)steps, mean, want, (double)fadam_bf16_to_float(v0));
    std::printf("# %s: v0 %.6g, after %lld steps SR mean %.6g, float64 %.6g, RNE %.6g\n", name,
                (double)fadam_bf16_to_float(v0), (long long)steps, mean, want, (double)fadam_bf16_to_float(v0));
    check_case_end(name);
}

/* A run saved after step k (a copy of every buffer) and resumed, on another implementation, equals the
 * uninterrupted run bit for bit: the random bits depend on (seed, t, element) only. */
static void test_resume() {
    const char *name = "resumed_run_equals_uninterrupted_bitwise";
    check_case_begin();
    std::vector<fadam_hparams> groups = rule_groups();
    std::vector<spec> specs = every_layout(groups, 600);
    const uint64_t seed = check_rng_next(&rng);
    side whole = make_side(specs, groups, seed), first = make_side(specs, groups, seed), resumed = make_side(specs, groups, seed);
    fill_side(whole, 1.0);
    copy_side(first, whole);
    std::vector<side> grads;
    for (int64_t step = 1; step <= 6; step++) {
        fill_grads(whole);
        if (step <= 3) {
            for (size_t k = 0; k < specs.size(); k++)
                std::memcpy(const_cast<void *>(first.tensors[k].grad), whole.tensors[k].grad,
                            (size_t)specs[k].numel * fadam_dtype_size(specs[k].grad_dtype));
            run_cpu(first.tensors, groups, step, 1, NULL);
            if (step == 3) copy_side(resumed, first); /* the "checkpoint" */
        } else {
            for (size_t k = 0; k < specs.size(); k++)
                std::memcpy(const_cast<void *>(resumed.tensors[k].grad), whole.tensors[k].grad,
                            (size_t)specs[k].numel * fadam_dtype_size(specs[k].grad_dtype));
            run_kernel(resumed.tensors, groups, step, NULL);
        }
        run_cpu(whole.tensors, groups, step, 3, NULL);
    }
    expect_same(whole, resumed, "uninterrupted vs resumed at step 3", specs);
    check_case_end(name);
}

/* A tensor updated as two slices (element_offset = where the second starts; the 8-bit scales from its
 * block on) gives the bits of the whole, in one launch and on the CPU. */
static void test_slices() {
    const char *name = "slices_with_element_offset_equal_the_whole";
    check_case_begin();
    std::vector<fadam_hparams> groups = rule_groups();
    struct layout {
        int master;
        fadam_moment_format moments;
        int64_t cut;
    } layouts[] = {{REMAINDER, FADAM_MOMENT_BF16, 1001}, {REMAINDER, FADAM_MOMENT_INT8, 1280},
                   {FP32_MASTER, FADAM_MOMENT_INT8, 512}, {NO_MASTER, FADAM_MOMENT_BF16, 777}};
    for (const layout &l : layouts)
        for (int g = 0; g < 2 && !check_case_failed; g++) {
            std::vector<spec> specs(1, spec{FADAM_BFLOAT16, FADAM_FLOAT32, g, l.master, l.moments, 3000});
            const uint64_t seed = check_rng_next(&rng);
            side whole = make_side(specs, groups, seed), sliced = make_side(specs, groups, seed);
            fill_side(whole, 1.0);
            copy_side(sliced, whole);
            /* the slices: views into sliced's buffers */
            const fadam_tensor w = sliced.tensors[0];
            fadam_tensor a = w, b = w;
            const int64_t cut = l.cut;
            size_t mb = moment_bytes(l.moments);
            a.numel = cut;
            b.numel = w.numel - cut;
            b.element_offset = cut;
            b.param = static_cast<uint16_t *>(w.param) + cut;
            b.grad = static_cast<const float *>(w.grad) + cut;
            if (w.master) b.master = static_cast<unsigned char *>(w.master) + cut * (l.master == REMAINDER ? 2 : 4);
            b.exp_avg = static_cast<unsigned char *>(w.exp_avg) + cut * mb;
            if (w.exp_avg_sq) b.exp_avg_sq = static_cast<unsigned char *>(w.exp_avg_sq) + cut * mb;
            if (w.exp_avg_scales) b.exp_avg_scales = w.exp_avg_scales + cut / FADAM_MOMENT_BLOCK;
            if (w.exp_avg_sq_scales) b.exp_avg_sq_scales = w.exp_avg_sq_scales + cut / FADAM_MOMENT_BLOCK;
            sliced.tensors.clear();
            sliced.tensors.push_back(a);
            sliced.tensors.push_back(b);
            for (int64_t step = 1; step <= 3; step++) {
                fill_grads(whole);
                std::memcpy(const_cast<void *>(w.grad), whole.tensors[0].grad, (size_t)w.numel * 4);
                run_cpu(whole.tensors, groups, step, 1, NULL);
                if (step == 2) run_cpu(sliced.tensors, groups, step, 1, NULL);
                else run_kernel(sliced.tensors, groups, step, NULL);
            }
            expect_same(whole, sliced, "whole vs two slices", specs);
        }
    check_case_end(name);
}

int main() {
    rng = check_seed("test_layouts_emulated");
    test_mixed_table(false);
    test_mixed_table(true);
    test_remainder_vs_fp32_master();
    test_bf16_stall();
    test_resume();
    test_slices();
    return check_exit_code();
}
