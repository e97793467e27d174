/* test_lion_emulated.cpp - Lion (issue 10): the step kernel run on the CPU through the emulator, the C
 * reference and the CPU fast path (1 and 3 threads) agree bit for bit on a table that mixes Lion and
 * AdamW groups in one launch, over every param/grad dtype combination with and without a master; Lion's
 * results match a float64 oracle written here; sign(0) = 0 (g = 0 and m = 0 leave p decayed only); NaN
 * gradients give NaN; grad scaling and maximize apply to g. */
#include "../kernels/adam_step.cu"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

#include "check.h"
#include "dtype_values.h"
#include "internal.h"

static uint64_t rng;

#include "emulated_runs.h"

static float as_dtype(fadam_dtype dtype, float x) {
    if (dtype == FADAM_BFLOAT16) return fadam_bf16_bits_to_float(fadam_float_to_bf16_bits(x));
    if (dtype == FADAM_FLOAT16) return fadam_fp16_bits_to_float(fadam_float_to_fp16_bits(x));
    return x;
}

static bool same(float a, float b) { return (std::isnan(a) && std::isnan(b)) || std::memcmp(&a, &b, 4) == 0; }

/* One tensor's buffers (param, grad, master, m, v), copied for each implementation. */
struct tensor_data {
    fadam_dtype param_dtype, grad_dtype;
    int group;
    bool master;
    int64_t numel;
    std::vector<float> param, grad, m, v; /* values (exact in their dtypes) */
};

struct side {
    std::vector<std::vector<unsigned char>> buffers;
    std::vector<fadam_tensor> tensors;
};

static void *buffer(side &s, size_t bytes) {
    s.buffers.emplace_back(bytes + 64);
    uintptr_t base = reinterpret_cast<uintptr_t>(s.buffers.back().data());
    return reinterpret_cast<void *>((base + 63) / 64 * 64); /* 16-byte aligned: the vector path */
}

static side make_side(const std::vector<tensor_data> &data, const std::vector<fadam_hparams> &groups) {
    side s;
    s.buffers.reserve(data.size() * 5);
    for (const tensor_data &d : data) {
        fadam_tensor t;
        std::memset(&t, 0, sizeof t);
        t.numel = d.numel;
        t.param_dtype = d.param_dtype;
        t.grad_dtype = d.grad_dtype;
        t.group = d.group;
        size_t n = (size_t)d.numel;
        t.param = buffer(s, n * fadam_dtype_size(d.param_dtype));
        void *grad = buffer(s, n * fadam_dtype_size(d.grad_dtype));
        t.grad = grad;
        t.exp_avg = static_cast<float *>(buffer(s, n * 4));
        bool lion = groups[d.group].mode == FADAM_LION;
        t.exp_avg_sq = lion ? NULL : static_cast<float *>(buffer(s, n * 4));
        t.master = d.master ? static_cast<float *>(buffer(s, n * 4)) : NULL;
        for (int64_t k = 0; k < d.numel; k++) {
            store_as(d.param_dtype, t.param, k, d.param[k]);
            store_as(d.grad_dtype, grad, k, d.grad[k]);
            ((float *)t.exp_avg)[k] = d.m[k];
            if (t.exp_avg_sq) ((float *)t.exp_avg_sq)[k] = d.v[k];
            if (t.master) ((float *)t.master)[k] = d.param[k];
        }
        s.tensors.push_back(t);
    }
    return s;
}

/* Lion in float64 from the same starting values: p, m after one step (p rounded to the dtype's
 * precision where it is stored as a 16-bit param without master). */
static void lion_oracle(const tensor_data &d, const fadam_hparams &h, double scale, int64_t k, double *p, double *m) {
    double g = (double)d.grad[k] * scale * (h.maximize ? -1.0 : 1.0);
    double c = (double)h.beta1 * d.m[k] + (1.0 - (double)h.beta1) * g;
    double sign = c > 0 ? 1.0 : c < 0 ? -1.0 : c;
    *p = (double)d.param[k] * (1.0 - (double)h.lr * (double)h.weight_decay) - (double)h.lr * sign;
    *m = (double)h.beta2 * d.m[k] + (1.0 - (double)h.beta2) * g;
}

static void test_mixed_table(bool scaled) {
    static const fadam_dtype dtypes[3] = {FADAM_FLOAT32, FADAM_BFLOAT16, FADAM_FLOAT16};
    char name[96];
    std::snprintf(name, sizeof name, "lion_and_adamw_one_launch_kernel_reference_cpu_bitwise_oracle%s",
                  scaled ? "_grad_multiplier" : "");
    check_case_begin();
    std::vector<fadam_hparams> groups;
    fadam_hparams lion = fadam_hparams_default_lion();
    lion.lr = 1e-3f;
    lion.weight_decay = 0.1f;
    groups.push_back(lion);
    groups.push_back(fadam_hparams_default()); /* AdamW */
    fadam_hparams lion_max = lion;
    lion_max.maximize = 1;
    lion_max.beta1 = 0.95f;
    lion_max.beta2 = 0.98f;
    lion_max.weight_decay = 0.0f;
    groups.push_back(lion_max);
    fadam_hparams l2 = fadam_hparams_default();
    l2.mode = FADAM_ADAM_L2;
    groups.push_back(l2);
    std::vector<tensor_data> data;
    for (int pd = 0; pd < 3; pd++)
        for (int gd = 0; gd < 3; gd++)
            for (int master = 0; master < (pd ? 2 : 1); master++)
                for (int g = 0; g < (int)groups.size(); g++) {
                    tensor_data d;
                    d.param_dtype = dtypes[pd];
                    d.grad_dtype = dtypes[gd];
                    d.group = g;
                    d.master = master;
                    d.numel = 1 + (int64_t)(check_rng_next(&rng) % 2500); /* odd sizes: vector and tail */
                    for (int64_t k = 0; k < d.numel; k++) {
                        double r = check_rng_uniform(&rng);
                        float grad = (float)(1e-2 * check_rng_normal(&rng)), m = (float)(1e-2 * check_rng_normal(&rng));
                        if (r < 0.05) grad = m = 0.0f;                  /* c == 0 exactly: sign 0 */
                        else if (r < 0.07) grad = std::nanf("");        /* NaN gradient */
                        d.param.push_back(as_dtype(d.param_dtype, (float)check_rng_normal(&rng)));
                        d.grad.push_back(as_dtype(d.grad_dtype, grad));
                        d.m.push_back(m);
                        d.v.push_back((float)(1e-4 * check_rng_uniform(&rng)));
                    }
                    data.push_back(d);
                }
    const float multiplier = 0.5f, *mult = scaled ? &multiplier : NULL;
    side kernel = make_side(data, groups), reference = make_side(data, groups), cpu1 = make_side(data, groups),
         cpu3 = make_side(data, groups);
    run_kernel(kernel.tensors, groups, 5, mult);
    run_reference(reference.tensors, groups, 5, mult);
    run_cpu(cpu1.tensors, groups, 5, 1, mult);
    run_cpu(cpu3.tensors, groups, 5, 3, mult);
    double worst = 0.0;
    int64_t sign_zero = 0, nans = 0;
    for (size_t i = 0; i < data.size() && !check_case_failed; i++) {
        const tensor_data &d = data[i];
        const fadam_hparams &h = groups[d.group];
        const side *others[3] = {&reference, &cpu1, &cpu3};
        for (int64_t k = 0; k < d.numel && !check_case_failed; k++) {
            const fadam_tensor &t = kernel.tensors[i];
            float p = t.master ? ((float *)t.master)[k] : load_as(d.param_dtype, t.param, k);
            for (const side *o : others) {
                const fadam_tensor &u = o->tensors[i];
                bool equal = same(load_as(d.param_dtype, t.param, k), load_as(d.param_dtype, u.param, k)) &&
                             same(((float *)t.exp_avg)[k], ((float *)u.exp_avg)[k]) && (!t.master || same(((float *)t.master)[k], ((float *)u.master)[k])) &&
                             (!u.exp_avg_sq || same(((float *)t.exp_avg_sq)[k], ((float *)u.exp_avg_sq)[k]));
                CHECK(equal, "tensor %zu (group %d, param %d grad %d master %d) element %lld: kernel p=%a m=%a, %s p=%a m=%a",
                      i, d.group, (int)d.param_dtype, (int)d.grad_dtype, (int)d.master, (long long)k,
                      (double)load_as(d.param_dtype, t.param, k), (double)((float *)t.exp_avg)[k],
                      o == &reference ? "reference" : o == &cpu1 ? "cpu 1 thread" : "cpu 3 threads",
                      (double)load_as(d.param_dtype, u.param, k), (double)((float *)u.exp_avg)[k]);
            }
            if (h.mode != FADAM_LION) continue;
            double want_p, want_m;
            lion_oracle(d, h, scaled ? 0.5 : 1.0, k, &want_p, &want_m);
            if (std::isnan(d.grad[k])) {
                nans++;
                CHECK(std::isnan(p) && std::isnan(((float *)t.exp_avg)[k]), "NaN gradient: p=%g m=%g, want NaN", (double)p,
                      (double)((float *)t.exp_avg)[k]);
                continue;
            }
            if (d.grad[k] == 0.0f && d.m[k] == 0.0f) {
                sign_zero++;
                float decayed = d.param[k] * (float)(1.0 - (double)h.lr * (double)h.weight_decay);
                if (!t.master) decayed = as_dtype(d.param_dtype, decayed);
                CHECK(same(p, decayed) && ((float *)t.exp_avg)[k] == 0.0f, "sign(0): p=%a, want the decay alone %a; m=%g",
                      (double)p, (double)decayed, (double)((float *)t.exp_avg)[k]);
                continue;
            }
            /* float rounding of c may flip the sign only when c is within a few ulps of 0 */
            double c_scale = std::fabs((double)h.beta1 * d.m[k]) + std::fabs((1.0 - h.beta1) * d.grad[k]);
            double c = (double)h.beta1 * d.m[k] + (1.0 - (double)h.beta1) * (double)d.grad[k] * (scaled ? 0.5 : 1.0) *
                                                      (h.maximize ? -1.0 : 1.0);
            if (std::fabs(c) <= 1e-6 * c_scale) continue;
            double err_p = std::fabs(p - want_p);
            double err_m = std::fabs(((float *)t.exp_avg)[k] - want_m);
            double tol_m = 4 * 6e-8 * (std::fabs(want_m) + std::fabs(d.m[k]) + std::fabs(d.grad[k]));
            /* fp32 (param or master): the roundings of 1 - lr*wd, of the product and of the difference, each half an ulp
             * of what it rounds (p and lr may cancel); a 16-bit param updated in place: its own rounding too */
            double unit = t.master || d.param_dtype == FADAM_FLOAT32 ? 0.0
                          : d.param_dtype == FADAM_BFLOAT16           ? 1.0 / 256
                                                                      : 1.0 / 2048;
            double tol_p = 2.5e-7 * (std::fabs((double)d.param[k]) + (double)h.lr) + unit * std::fabs(want_p) +
                           (unit && d.param_dtype == FADAM_FLOAT16 ? 0x1p-24 : 0.0); /* fp16's subnormal step */
            if (unit == 0.0 && err_p / tol_p > worst) worst = err_p / tol_p;
            CHECK(err_p <= tol_p && err_m <= tol_m, "tensor %zu element %lld: p=%.9g want %.9g, m=%.9g want %.9g", i,
                  (long long)k, (double)p, want_p, (double)((float *)t.exp_avg)[k], want_m);
        }
    }
    CHECK(sign_zero > 0 && nans > 0, "the inputs should hold sign-zero (%lld) and NaN (%lld) elements",
          (long long)sign_zero, (long long)nans);
    std::printf("# %s: Lion's fp32 param vs float64: worst error %.3g of its tolerance\n", name, worst);
    check_case_end(name);
}

int main() {
    rng = check_seed("test_lion_emulated");
    test_mixed_table(false);
    test_mixed_table(true);
    return check_exit_code();
}
