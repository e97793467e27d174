/* test_reference.c - the CPU implementation against a float64 oracle: every mode, dtype combination,
 * bias correction on and off, one step and 100 steps, Inf/NaN gradients, and the bf16/fp16 rounding. */
#include <math.h>

#include "check.h"
#include "fusedadam.h"
#include "dtype_values.h"
#include "internal.h"
#include "state_layout.h"

static uint64_t rng;

static const char *dtype_name(fadam_dtype dtype) {
    return dtype == FADAM_FLOAT32 ? "f32" : dtype == FADAM_BFLOAT16 ? "bf16" : "f16";
}



/* ---------------- the oracle: NUMERICS.md in double, written from the spec ---------------- */

/* Besides each value, the oracle carries its "magnitude": the same recurrence over absolute values.
 * A float sum can only be accurate relative to the size of its terms, not of its (cancelled)
 * result, so errors are judged relative to this magnitude (a standard forward-error bound). */
typedef struct oracle_state {
    double p, m, v;
    double p_magnitude, m_magnitude;
} oracle_state;

static void oracle_step(oracle_state *s, double g, const fadam_hparams *h, int64_t t) {
    double lr = h->lr, wd = h->weight_decay, b1 = h->beta1, b2 = h->beta2;
    double bc1 = h->bias_correction ? 1.0 - pow(b1, (double)t) : 1.0;
    double bc2 = h->bias_correction ? 1.0 - pow(b2, (double)t) : 1.0;
    double g_magnitude, denom, update;
    if (h->maximize) g = -g;
    g_magnitude = fabs(g);
    if (h->mode == FADAM_ADAM_L2 && wd != 0.0) {
        g += wd * s->p;
        g_magnitude += wd * s->p_magnitude;
    }
    if (h->mode == FADAM_ADAMW) {
        s->p *= 1.0 - lr * wd;
        s->p_magnitude *= 1.0 - lr * wd;
    }
    s->m = b1 * s->m + (1.0 - b1) * g;
    s->m_magnitude = b1 * s->m_magnitude + (1.0 - b1) * g_magnitude;
    s->v = b2 * s->v + (1.0 - b2) * g * g;
    denom = sqrt(s->v) / sqrt(bc2) + h->eps;
    update = lr / bc1 * s->m / denom;
    s->p -= update;
    s->p_magnitude += lr / bc1 * s->m_magnitude / denom;
}

/* Largest error relative to the oracle's magnitude (the value itself where none is given); NaN on
 * either side where the other is not NaN fails (returns +inf). */
static double worst_error(const float *got, const double *want, const double *magnitude, int64_t n, int64_t *where) {
    double worst = 0.0;
    int64_t i;
    *where = -1;
    for (i = 0; i < n; i++) {
        double error;
        if (isnan(want[i]) || isnan(got[i])) {
            if (isnan(want[i]) && isnan(got[i])) continue;
            *where = i;
            return INFINITY;
        }
        if (isinf(want[i]) || isinf(got[i])) {
            if (want[i] == (double)got[i]) continue;
            *where = i;
            return INFINITY;
        }
        error = fabs((double)got[i] - want[i]) / fmax(magnitude ? magnitude[i] : fabs(want[i]), 1e-30);
        if (error > worst) {
            worst = error;
            *where = i;
        }
    }
    return worst;
}

/* One tensor's buffers for the reference and the oracle's doubles. */
typedef struct case_buffers {
    int64_t n;
    fadam_dtype param_dtype, grad_dtype;
    int with_master;
    void *param, *grad;
    float *master, *m, *v;
    oracle_state *oracle;
    double *want_p, *want_m, *want_v, *magnitude_p, *magnitude_m; /* the oracle, unpacked to compare */
} case_buffers;

static void case_alloc(case_buffers *c, int64_t n, fadam_dtype param_dtype, fadam_dtype grad_dtype, int with_master) {
    int64_t i;
    c->n = n;
    c->param_dtype = param_dtype;
    c->grad_dtype = grad_dtype;
    c->with_master = with_master;
    c->param = malloc((size_t)n * 4);
    c->grad = malloc((size_t)n * 4);
    c->master = with_master ? (float *)malloc((size_t)n * 4) : NULL;
    c->m = (float *)malloc((size_t)n * 4);
    c->v = (float *)malloc((size_t)n * 4);
    c->oracle = (oracle_state *)malloc((size_t)n * sizeof(oracle_state));
    c->want_p = (double *)malloc((size_t)n * 8);
    c->want_m = (double *)malloc((size_t)n * 8);
    c->want_v = (double *)malloc((size_t)n * 8);
    c->magnitude_p = (double *)malloc((size_t)n * 8);
    c->magnitude_m = (double *)malloc((size_t)n * 8);
    for (i = 0; i < n; i++) {
        float p = (float)check_rng_normal(&rng);
        store_as(param_dtype, c->param, i, p);
        p = load_as(param_dtype, c->param, i); /* the stored value is the starting point */
        if (with_master) c->master[i] = p;
        c->oracle[i].p = p;
        c->oracle[i].p_magnitude = fabs(p);
        /* Non-zero moments, as after earlier steps, so every term of the update matters. */
        c->m[i] = (float)(0.01 * check_rng_normal(&rng));
        c->v[i] = (float)(1e-4 * check_rng_uniform(&rng));
        c->oracle[i].m = c->m[i];
        c->oracle[i].m_magnitude = fabs(c->m[i]);
        c->oracle[i].v = c->v[i];
    }
}

static void case_free(case_buffers *c) {
    free(c->param);
    free(c->grad);
    free(c->master);
    free(c->m);
    free(c->v);
    free(c->oracle);
    free(c->want_p);
    free(c->want_m);
    free(c->want_v);
    free(c->magnitude_p);
    free(c->magnitude_m);
}

static void unpack_oracle(case_buffers *c) {
    int64_t i;
    for (i = 0; i < c->n; i++) {
        c->want_p[i] = c->oracle[i].p;
        c->want_m[i] = c->oracle[i].m;
        c->want_v[i] = c->oracle[i].v;
        c->magnitude_p[i] = c->oracle[i].p_magnitude;
        c->magnitude_m[i] = c->oracle[i].m_magnitude;
    }
}

static void fill_grads(case_buffers *c, double scale) {
    int64_t i;
    for (i = 0; i < c->n; i++) store_as(c->grad_dtype, c->grad, i, (float)(scale * check_rng_normal(&rng)));
}

static fadam_tensor case_tensor(const case_buffers *c) {
    fadam_tensor t;
    memset(&t, 0, sizeof t);
    t.param = c->param;
    t.grad = c->grad;
    t.master = c->master;
    t.exp_avg = c->m;
    t.exp_avg_sq = c->v;
    t.numel = c->n;
    t.param_dtype = c->param_dtype;
    t.grad_dtype = c->grad_dtype;
    return t;
}

/* Steps the reference and the oracle `steps` times and checks p (the master, or the fp32 param),
 * m, v against tolerance; a 16-bit param must equal round_to_nearest_even(master) exactly, and one
 * updated in place must be within one of its ulps of the oracle rounded each step. */
static void run_oracle_case(const char *name, fadam_hparams h, fadam_dtype param_dtype, fadam_dtype grad_dtype,
                            int with_master, int steps, double tolerance) {
    case_buffers c;
    fadam_tensor t;
    float *got_p;
    int64_t i, where, n = 1000 + (int64_t)(check_rng_next(&rng) % 3000);
    int step;
    double error;
    check_case_begin();
    case_alloc(&c, n, param_dtype, grad_dtype, with_master);
    t = case_tensor(&c);
    got_p = (float *)malloc((size_t)n * 4);
    for (step = 1; step <= steps; step++) {
        fadam_step_source source = {0, NULL, NULL};
        fadam_status status;
        source.step = step;
        fill_grads(&c, 1e-2);
        status = fadam_cpu_step(&t, 1, &h, 1, &source);
        CHECK(status == FADAM_SUCCESS, "fadam_cpu_step: %s", fadam_last_error_message());
        for (i = 0; i < n; i++) {
            oracle_step(&c.oracle[i], load_as(grad_dtype, c.grad, i), &h, step);
            /* A param updated in place is rounded to its dtype every step: so is the oracle's copy. */
            if (!with_master && param_dtype != FADAM_FLOAT32) {
                float rounded_as_reference = load_as(param_dtype, c.param, i);
                double ulp_relative = param_dtype == FADAM_BFLOAT16 ? 0x1p-7 : 0x1p-10;
                if (fabs(rounded_as_reference - c.oracle[i].p) > ulp_relative * c.oracle[i].p_magnitude + 1e-7) {
                    CHECK(0, "in-place %s param[%lld]=%g, oracle %g: more than one ulp apart", dtype_name(param_dtype),
                          (long long)i, rounded_as_reference, c.oracle[i].p);
                }
                c.oracle[i].p = rounded_as_reference; /* same rounding point, keep them in step */
            }
        }
    }
    for (i = 0; i < n; i++) got_p[i] = with_master ? c.master[i] : load_as(param_dtype, c.param, i);
    unpack_oracle(&c);
    if (with_master || param_dtype == FADAM_FLOAT32) {
        error = worst_error(got_p, c.want_p, c.magnitude_p, n, &where);
        CHECK(error <= tolerance, "param: error %.3g > %.1g at %lld (got %.9g, oracle %.9g)", error, tolerance,
              (long long)where, where >= 0 ? got_p[where] : 0.0, where >= 0 ? c.want_p[where] : 0.0);
    }
    error = worst_error(c.m, c.want_m, c.magnitude_m, n, &where);
    CHECK(error <= tolerance, "exp_avg: error %.3g > %.1g at %lld", error, tolerance, (long long)where);
    error = worst_error(c.v, c.want_v, NULL, n, &where);
    CHECK(error <= tolerance, "exp_avg_sq: error %.3g > %.1g at %lld", error, tolerance, (long long)where);
    if (with_master) {
        for (i = 0; i < n; i++) {
            uint16_t want = param_dtype == FADAM_BFLOAT16 ? fadam_bf16_from_master(c.master[i])
                                                          : fadam_float_to_fp16_bits(c.master[i]);
            if (((uint16_t *)c.param)[i] != want) {
                CHECK(0, "param[%lld]=0x%04x is not the master rounded to nearest (bf16: ties away)=0x%04x", (long long)i,
                      ((uint16_t *)c.param)[i], want);
                break;
            }
        }
    }
    free(got_p);
    case_free(&c);
    check_case_end(name);
}

static void test_oracle_matrix(void) {
    static const fadam_dtype dtypes[3] = {FADAM_FLOAT32, FADAM_BFLOAT16, FADAM_FLOAT16};
    int mode, bias, pd, gd, master;
    char name[160];
    for (mode = 0; mode < 2; mode++)
        for (bias = 0; bias < 2; bias++)
            for (pd = 0; pd < 3; pd++)
                for (gd = 0; gd < 3; gd++)
                    for (master = 0; master < 2; master++) {
                        fadam_hparams h = fadam_hparams_default();
                        if (dtypes[pd] == FADAM_FLOAT32 && master) continue;
                        h.mode = mode ? FADAM_ADAM_L2 : FADAM_ADAMW;
                        h.bias_correction = bias;
                        h.weight_decay = 0.1f;
                        h.maximize = (pd + gd) % 3 == 0; /* a third of the cases ascend */
                        snprintf(name, sizeof name, "oracle_%s_bc%d_param_%s_grad_%s%s_%s", mode ? "adam_l2" : "adamw",
                                 bias, dtype_name(dtypes[pd]), dtype_name(dtypes[gd]), master ? "_master" : "",
                                 h.maximize ? "max" : "min");
                        /* 1 step at 1e-6 and 100 steps at 1e-5 (NUMERICS.md). */
                        run_oracle_case(name, h, dtypes[pd], dtypes[gd], master, 1, 1e-6);
                        strcat(name, "_100_steps");
                        run_oracle_case(name, h, dtypes[pd], dtypes[gd], master, 100, 1e-5);
                    }
}

/* Inf and NaN gradients are data: they propagate exactly as in float64 (no silent masking). */
static void test_nonfinite_gradients(void) {
    fadam_hparams h = fadam_hparams_default();
    case_buffers c;
    fadam_tensor t;
    fadam_step_source source = {1, NULL, NULL};
    int64_t i, where;
    double error;
    float got[64];
    check_case_begin();
    case_alloc(&c, 64, FADAM_FLOAT32, FADAM_FLOAT32, 0);
    t = case_tensor(&c);
    fill_grads(&c, 1e-2);
    ((float *)c.grad)[3] = NAN;
    ((float *)c.grad)[17] = INFINITY;
    ((float *)c.grad)[18] = -INFINITY;
    CHECK(fadam_cpu_step(&t, 1, &h, 1, &source) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    for (i = 0; i < 64; i++) oracle_step(&c.oracle[i], ((float *)c.grad)[i], &h, 1);
    unpack_oracle(&c);
    CHECK(isnan(((float *)c.param)[3]) && isnan(((float *)c.param)[17]), "NaN/Inf gradient did not give a NaN param");
    memcpy(got, c.param, sizeof got);
    error = worst_error(got, c.want_p, c.magnitude_p, 64, &where);
    CHECK(error <= 1e-6, "finite elements beside the Inf/NaN ones: error %.3g at %lld", error, (long long)where);
    /* The comparison itself must not let a NaN through. */
    got[5] = NAN;
    CHECK(worst_error(got, c.want_p, c.magnitude_p, 64, &where) == INFINITY && where == 5, "worst_error let a NaN pass");
    case_free(&c);
    check_case_end("nonfinite_gradients_propagate");
}

/* Without bias correction AdamW is the textbook w - lr*m/(sqrt(v)+eps) - lr*wd*w, and Adam+L2
 * decays a weight with a large gradient history less than AdamW does. */
static void test_textbook_form(void) {
    fadam_hparams h = fadam_hparams_default();
    float p = 2.0f, g = 0.5f, m = 0.0f, v = 0.0f;
    double textbook, mm, vv;
    fadam_tensor t;
    fadam_step_source source = {1, NULL, NULL};
    check_case_begin();
    h.bias_correction = 0;
    h.weight_decay = 0.1f;
    memset(&t, 0, sizeof t);
    t.param = &p;
    t.grad = &g;
    t.exp_avg = &m;
    t.exp_avg_sq = &v;
    t.numel = 1;
    CHECK(fadam_cpu_step(&t, 1, &h, 1, &source) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    mm = (1.0 - h.beta1) * 0.5;
    vv = (1.0 - h.beta2) * 0.25;
    textbook = 2.0 - (double)h.lr * mm / (sqrt(vv) + h.eps) - (double)h.lr * h.weight_decay * 2.0;
    /* The textbook form subtracts lr*wd*w_old; PyTorch's order decays first: the same to O(lr^2). */
    CHECK(fabs(p - textbook) < 1e-6 * 2.0 + (double)h.lr * h.lr * h.weight_decay * 2.0, "p=%.9g textbook=%.9g", p,
          textbook);
    check_case_end("adamw_textbook_form_without_bias_correction");

    check_case_begin();
    {
        /* Same weight, same noisy large gradients; the only difference is the decay mode. */
        float p_w = 1.0f, p_l2 = 1.0f, m_w = 0, v_w = 0, m_l2 = 0, v_l2 = 0, grad;
        fadam_tensor tw = t, tl2 = t;
        fadam_hparams hw = fadam_hparams_default(), hl2 = fadam_hparams_default();
        int step;
        hw.weight_decay = hl2.weight_decay = 0.1f;
        hw.lr = hl2.lr = 1e-2f;
        hl2.mode = FADAM_ADAM_L2;
        tw.param = &p_w, tw.grad = &grad, tw.exp_avg = &m_w, tw.exp_avg_sq = &v_w;
        tl2.param = &p_l2, tl2.grad = &grad, tl2.exp_avg = &m_l2, tl2.exp_avg_sq = &v_l2;
        for (step = 1; step <= 200; step++) {
            source.step = step;
            grad = (step % 2 ? 1.0f : -1.0f) * 5.0f; /* large, zero-mean: an "active" weight */
            CHECK(fadam_cpu_step(&tw, 1, &hw, 1, &source) == FADAM_SUCCESS, "%s", fadam_last_error_message());
            CHECK(fadam_cpu_step(&tl2, 1, &hl2, 1, &source) == FADAM_SUCCESS, "%s", fadam_last_error_message());
        }
        CHECK(fabsf(p_w) < fabsf(p_l2) - 0.01f, "AdamW |w|=%g should be well below Adam+L2 |w|=%g", p_w, p_l2);
    }
    check_case_end("adam_l2_decays_active_weights_less_than_adamw");
}

/* ---------------- rounding: the reference's own bf16/fp16 conversions ---------------- */

/* Independent decoders via ldexp (not bit tricks). */
static double fp16_value(uint16_t h) {
    int exponent = (h >> 10) & 31, mantissa = h & 1023;
    double sign = (h & 0x8000) ? -1.0 : 1.0;
    if (exponent == 31) return mantissa ? NAN : sign * INFINITY;
    if (exponent == 0) return sign * ldexp(mantissa, -24);
    return sign * ldexp(1024 + mantissa, exponent - 25);
}

static double bf16_value(uint16_t b) {
    int exponent = (b >> 7) & 255, mantissa = b & 127;
    double sign = (b & 0x8000) ? -1.0 : 1.0;
    if (exponent == 255) return mantissa ? NAN : sign * INFINITY;
    if (exponent == 0) return sign * ldexp(mantissa, -133);
    return sign * ldexp(128 + mantissa, exponent - 134);
}

/* Nearest-even rounding judged from the two neighbours of x among the finite positive values. */
static int rounding_ok(double x, uint16_t got, double (*value)(uint16_t), uint16_t max_finite) {
    double magnitude = fabs(x), got_value = value(got);
    uint16_t k;
    double below, above;
    if (isnan(x)) return isnan(got_value);
    if ((x < 0) != ((got & 0x8000) != 0) && got_value != 0.0) return 0;
    /* Find the pair of neighbours by binary search over the ordered positive encodings. */
    {
        uint16_t low = 0, high = max_finite;
        if (magnitude >= value(max_finite)) {
            double next_step = value(max_finite) - value((uint16_t)(max_finite - 1));
            double halfway = value(max_finite) + next_step / 2;
            /* IEEE: overflow to infinity at and beyond halfway to the next (unrepresentable) power. */
            if (magnitude >= halfway) return isinf(got_value);
            return (got & 0x7FFF) == max_finite;
        }
        while (high - low > 1) {
            uint16_t mid = (uint16_t)((low + high) / 2);
            if (value(mid) <= magnitude) low = mid;
            else high = mid;
        }
        k = low;
        below = value(k);
        above = value((uint16_t)(k + 1));
    }
    if (magnitude - below < above - magnitude) return (got & 0x7FFF) == k;
    if (magnitude - below > above - magnitude) return (got & 0x7FFF) == k + 1;
    return (got & 0x7FFF) == ((k & 1) ? k + 1 : k); /* tie: the even encoding */
}

static void test_rounding(const char *name, fadam_dtype dtype) {
    double (*value)(uint16_t) = dtype == FADAM_BFLOAT16 ? bf16_value : fp16_value;
    uint16_t max_finite = dtype == FADAM_BFLOAT16 ? 0x7F7F : 0x7BFF;
    uint32_t k;
    int i, bad = 0;
    check_case_begin();
    /* Every midpoint between neighbours, and one float ulp either side of it, both signs. */
    for (k = 0; k < max_finite && bad < 5; k++) {
        float mid = (float)((value((uint16_t)k) + value((uint16_t)(k + 1))) / 2);
        float probes[3];
        probes[0] = mid;
        probes[1] = nextafterf(mid, 0.0f);
        probes[2] = nextafterf(mid, INFINITY);
        for (i = 0; i < 6; i++) {
            float x = i < 3 ? probes[i] : -probes[i - 3];
            uint16_t got = dtype == FADAM_BFLOAT16 ? fadam_float_to_bf16_bits(x) : fadam_float_to_fp16_bits(x);
            if (!rounding_ok(x, got, value, max_finite)) {
                CHECK(0, "%s(%a) = 0x%04x is not nearest-even", dtype_name(dtype), x, got);
                bad++;
            }
        }
        /* Decoding is exact. */
        {
            float decoded = dtype == FADAM_BFLOAT16 ? fadam_bf16_bits_to_float((uint16_t)k)
                                                    : fadam_fp16_bits_to_float((uint16_t)k);
            if ((double)decoded != value((uint16_t)k)) {
                CHECK(0, "load_as(0x%04x)=%a, want %a", k, decoded, value((uint16_t)k));
                bad++;
            }
        }
    }
    /* Random floats over the whole range, and the specials. */
    for (i = 0; i < 200000 && bad < 5; i++) {
        uint32_t bits = (uint32_t)check_rng_next(&rng);
        float x;
        uint16_t got;
        memcpy(&x, &bits, 4);
        got = dtype == FADAM_BFLOAT16 ? fadam_float_to_bf16_bits(x) : fadam_float_to_fp16_bits(x);
        if (!rounding_ok(x, got, value, max_finite)) {
            CHECK(0, "%s(%a) = 0x%04x is not nearest-even", dtype_name(dtype), x, got);
            bad++;
        }
    }
    {
        float specials[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, 65504.0f, 65519.99f, 65520.0f, 1e-8f, 3e38f};
        for (i = 0; i < (int)(sizeof specials / sizeof specials[0]); i++) {
            uint16_t got = dtype == FADAM_BFLOAT16 ? fadam_float_to_bf16_bits(specials[i])
                                                   : fadam_float_to_fp16_bits(specials[i]);
            CHECK(rounding_ok(specials[i], got, value, max_finite), "%s(%a) = 0x%04x", dtype_name(dtype),
                  specials[i], got);
        }
    }
    check_case_end(name);
}

int main(void) {
    rng = check_seed("test_reference");
    test_rounding("bf16_round_to_nearest_even", FADAM_BFLOAT16);
    test_rounding("fp16_round_to_nearest_even", FADAM_FLOAT16);
    test_oracle_matrix();
    test_nonfinite_gradients();
    test_textbook_form();
    return check_exit_code();
}
