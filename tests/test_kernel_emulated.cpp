/* test_kernel_emulated.cpp - the kernels' own source (every .cu in kernels/), built by g++ with
 * tests/emul/cuda_emul.h and run on the CPU, against the C reference, bit for bit: many tensors of odd
 * sizes, misaligned pointers, empty tensors, mixed dtypes, several groups, chunk boundaries, grids
 * smaller and larger than the chunk count, thread orders forward/reverse/shuffled, t and lr read from
 * memory, and a tensor past 2^31 elements. */
#include "../kernels/adam_step.cu"
#include "../kernels/master_init.cu"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

#include "check.h"
#include "dtype_values.h"
#include "internal.h"

static uint64_t rng;

static uint64_t pick(uint64_t n) { return check_rng_next(&rng) % n; }

static const char *order_name(emul_thread_order order) {
    return order == EMUL_ORDER_FORWARD ? "forward" : order == EMUL_ORDER_REVERSE ? "reverse" : "shuffled";
}

static float random_value(fadam_dtype dtype, double scale) {
    float x = (float)(scale * check_rng_normal(&rng));
    /* Store what the dtype can hold, so both sides start from the same value. */
    if (dtype == FADAM_BFLOAT16) return fadam_bf16_bits_to_float(fadam_float_to_bf16_bits(x));
    if (dtype == FADAM_FLOAT16) return fadam_fp16_bits_to_float(fadam_float_to_fp16_bits(x));
    return x;
}


/* Equal bits, or both NaN (a NaN's payload is not part of the contract). */
static bool same_float(float a, float b) {
    if (std::isnan(a) && std::isnan(b)) return true;
    return std::memcmp(&a, &b, 4) == 0;
}

static bool same_element(fadam_dtype dtype, const void *a, const void *b, int64_t i) {
    if (dtype == FADAM_FLOAT32) return same_float(static_cast<const float *>(a)[i], static_cast<const float *>(b)[i]);
    uint16_t x = static_cast<const uint16_t *>(a)[i], y = static_cast<const uint16_t *>(b)[i];
    if (x == y) return true;
    float fx = dtype == FADAM_BFLOAT16 ? fadam_bf16_bits_to_float(x) : fadam_fp16_bits_to_float(x);
    float fy = dtype == FADAM_BFLOAT16 ? fadam_bf16_bits_to_float(y) : fadam_fp16_bits_to_float(y);
    return std::isnan(fx) && std::isnan(fy);
}

/* One model: every tensor's buffers twice, for the kernel and for the reference. Buffers live in one
 * arena each, with a chosen misalignment, so pointer alignment is under the test's control. */
struct model {
    std::vector<fadam_tensor> kernel_side, reference_side;
    std::vector<std::vector<unsigned char>> arenas;
    std::vector<fadam_hparams> groups;
};

/* A buffer of `bytes` at `misalign` bytes past a 64-byte boundary, inside its own arena. */
static void *arena_buffer(model &m, size_t bytes, size_t misalign) {
    m.arenas.emplace_back(bytes + 128);
    uintptr_t base = reinterpret_cast<uintptr_t>(m.arenas.back().data());
    uintptr_t aligned = (base + 63) / 64 * 64;
    return reinterpret_cast<void *>(aligned + misalign);
}

static int64_t odd_size(int32_t chunk_elems) {
    static const int64_t fixed[] = {0, 1, 2, 3, 4, 5, 7, 31, 33, 255, 257, 1023};
    switch (pick(4)) {
    case 0: return fixed[pick(sizeof fixed / sizeof fixed[0])];
    case 1: return chunk_elems + (int64_t)pick(9) - 4; /* around one chunk */
    case 2: return 2 * chunk_elems + (int64_t)pick(9) - 4;
    default: return (int64_t)pick(5 * (uint64_t)chunk_elems);
    }
}

static model make_model(int n_tensors, int n_groups, int32_t chunk_elems, bool allow_misaligned) {
    static const fadam_dtype dtypes[3] = {FADAM_FLOAT32, FADAM_BFLOAT16, FADAM_FLOAT16};
    model m;
    for (int g = 0; g < n_groups; g++) {
        fadam_hparams h = fadam_hparams_default();
        h.lr = (float)(1e-3 * (1 + pick(10)));
        h.beta1 = g % 3 == 2 ? 0.8f : 0.9f;
        h.beta2 = g % 2 ? 0.95f : 0.999f;
        h.eps = g % 2 ? 1e-6f : 1e-8f;
        h.weight_decay = g == 0 ? 0.0f : 0.05f * (float)g;
        h.mode = g % 2 ? FADAM_ADAM_L2 : FADAM_ADAMW;
        h.bias_correction = g % 4 != 3;
        h.maximize = g == 2;
        m.groups.push_back(h);
    }
    m.arenas.reserve((size_t)n_tensors * 10);
    for (int i = 0; i < n_tensors; i++) {
        fadam_tensor t;
        std::memset(&t, 0, sizeof t);
        t.numel = odd_size(chunk_elems);
        t.param_dtype = dtypes[pick(3)];
        t.grad_dtype = dtypes[pick(3)];
        t.group = (int)pick((uint64_t)n_groups);
        bool with_master = t.param_dtype != FADAM_FLOAT32 && pick(4) != 0; /* some 16-bit params in place */
        /* A quarter of the tensors get a misaligned buffer: the scalar path must handle them. */
        bool misaligned = allow_misaligned && pick(4) == 0;
        size_t n = (size_t)t.numel, param_bytes = fadam_dtype_size(t.param_dtype),
               grad_bytes = fadam_dtype_size(t.grad_dtype);
        fadam_tensor r = t;
        for (int side = 0; side < 2; side++) {
            fadam_tensor &x = side == 0 ? t : r;
            x.param = arena_buffer(m, n * param_bytes, misaligned && pick(2) ? param_bytes : 0);
            x.grad = arena_buffer(m, n * grad_bytes, misaligned && pick(2) ? grad_bytes : 0);
            x.master = with_master ? static_cast<float *>(arena_buffer(m, n * 4, misaligned && pick(2) ? 4 : 0)) : NULL;
            x.exp_avg = static_cast<float *>(arena_buffer(m, n * 4, misaligned && pick(2) ? 4 : 0));
            x.exp_avg_sq = static_cast<float *>(arena_buffer(m, n * 4, misaligned && pick(2) ? 8 : 0));
        }
        for (size_t k = 0; k < n; k++) {
            float p = random_value(t.param_dtype, 1.0);
            store_as(t.param_dtype, t.param, (int64_t)k, p);
            store_as(t.param_dtype, r.param, (int64_t)k, p);
            if (with_master) ((float *)t.master)[k] = ((float *)r.master)[k] = p;
            ((float *)t.exp_avg)[k] = ((float *)r.exp_avg)[k] = (float)(0.01 * check_rng_normal(&rng));
            ((float *)t.exp_avg_sq)[k] = ((float *)r.exp_avg_sq)[k] = (float)(1e-4 * check_rng_uniform(&rng));
        }
        m.kernel_side.push_back(t);
        m.reference_side.push_back(r);
    }
    return m;
}

/* Fresh gradients, the same on both sides; occasionally an Inf or NaN, which must propagate alike. */
static void fill_gradients(model &m, bool with_nonfinite) {
    for (size_t i = 0; i < m.kernel_side.size(); i++) {
        fadam_tensor &t = m.kernel_side[i], &r = m.reference_side[i];
        for (int64_t k = 0; k < t.numel; k++) {
            float g = random_value(t.grad_dtype, 1e-2);
            if (with_nonfinite && pick(5000) == 0) g = pick(2) ? NAN : -INFINITY;
            store_as(t.grad_dtype, const_cast<void *>(t.grad), k, g);
            store_as(t.grad_dtype, const_cast<void *>(r.grad), k, g);
        }
    }
}

/* Every buffer equal, bit for bit; the first difference is reported. */
static void compare_models(const model &m, const char *when) {
    for (size_t i = 0; i < m.kernel_side.size(); i++) {
        const fadam_tensor &t = m.kernel_side[i], &r = m.reference_side[i];
        for (int64_t k = 0; k < t.numel; k++) {
            bool same = same_element(t.param_dtype, t.param, r.param, k) &&
                        same_float(((float *)t.exp_avg)[k], ((float *)r.exp_avg)[k]) && same_float(((float *)t.exp_avg_sq)[k], ((float *)r.exp_avg_sq)[k]) &&
                        (!t.master || same_float(((float *)t.master)[k], ((float *)r.master)[k]));
            if (!same) {
                CHECK(false, "%s: tensor %zu (numel %lld, param %d grad %d master %d) element %lld differs: "
                             "m %a vs %a, v %a vs %a",
                      when, i, (long long)t.numel, (int)t.param_dtype, (int)t.grad_dtype, t.master != NULL,
                      (long long)k, ((float *)t.exp_avg)[k], ((float *)r.exp_avg)[k], ((float *)t.exp_avg_sq)[k], ((float *)r.exp_avg_sq)[k]);
                return;
            }
        }
    }
}

/* The table for the kernel side, in host memory (the emulated device reads host memory). */
static std::vector<unsigned char> encode_table(const model &m, int32_t chunk_elems) {
    size_t bytes = fadam_table_size((int64_t)m.kernel_side.size());
    std::vector<unsigned char> table(bytes + 16);
    fadam_status status = fadam_table_check(m.kernel_side.data(), (int64_t)m.kernel_side.size(),
                                            (int)m.groups.size(), "test");
    CHECK(status == FADAM_SUCCESS, "table check: %s", fadam_last_error_message());
    fadam_table_fill(m.kernel_side.data(), (int64_t)m.kernel_side.size(), (int)m.groups.size(), chunk_elems,
                     table.data());
    return table;
}

static fadam_step_kernel_args make_args(const model &m, const void *table, int64_t step) {
    fadam_step_kernel_args args;
    std::memset(&args, 0, sizeof args);
    args.table = static_cast<const fadam_table_header *>(table);
    args.step = step;
    args.n_groups = (int32_t)m.groups.size();
    std::memcpy(args.groups, m.groups.data(), m.groups.size() * sizeof(fadam_hparams));
    return args;
}

static void run_reference(model &m, int64_t step) {
    fadam_step_source source = {step, NULL, NULL};
    fadam_status status = fadam_cpu_step(m.reference_side.data(), (int64_t)m.reference_side.size(), m.groups.data(),
                                         (int)m.groups.size(), &source);
    CHECK(status == FADAM_SUCCESS, "reference: %s", fadam_last_error_message());
}

static void run_kernel(const fadam_step_kernel_args &args, unsigned grid, unsigned block) {
    cudaError_t error = fadam_launch_adam_step(&args, grid, block, NULL);
    CHECK(error == cudaSuccess, "emulated launch failed: %s", emul_last_failure_message());
}

/* Many tensors, three steps, against the reference, for one thread order and launch shape. */
static void test_random_model(emul_thread_order order, unsigned grid, unsigned block, int32_t chunk_elems,
                              bool with_nonfinite) {
    char name[160];
    std::snprintf(name, sizeof name, "kernel_vs_reference_%s_grid%u_block%u_chunk%d%s", order_name(order), grid, block,
                  (int)chunk_elems, with_nonfinite ? "_with_inf_nan" : "");
    check_case_begin();
    emul_set_thread_order(order, check_rng_next(&rng));
    model m = make_model(40 + (int)pick(30), 1 + (int)pick(5), chunk_elems, true);
    std::vector<unsigned char> table = encode_table(m, chunk_elems);
    int64_t vector_tensors = 0;
    for (size_t i = 0; i < m.kernel_side.size(); i++)
        vector_tensors += reinterpret_cast<const fadam_table_entry *>(table.data() + sizeof(fadam_table_header))[i]
                              .vector_ok;
    CHECK(vector_tensors > 0 && vector_tensors < (int64_t)m.kernel_side.size(),
          "the model should mix vector and scalar tensors (%lld of %zu vector)", (long long)vector_tensors,
          m.kernel_side.size());
    for (int64_t step = 1; step <= 3 && !check_case_failed; step++) {
        fill_gradients(m, with_nonfinite);
        fadam_step_kernel_args args = make_args(m, table.data(), step);
        run_kernel(args, grid, block);
        run_reference(m, step);
        char when[32];
        std::snprintf(when, sizeof when, "step %lld", (long long)step);
        compare_models(m, when);
    }
    check_case_end(name);
}

/* t and every group's lr read from memory (the graph-capture path) give the same result as the same
 * values passed by value; the by-value lr is ignored when device_lr is given. */
static void test_step_and_lr_from_memory() {
    check_case_begin();
    emul_set_thread_order(EMUL_ORDER_SHUFFLED, check_rng_next(&rng));
    model m = make_model(12, 3, 256, true);
    std::vector<unsigned char> table = encode_table(m, 256);
    std::vector<fadam_hparams> true_groups = m.groups;
    int64_t device_step = 0;
    std::vector<float> device_lr(m.groups.size());
    for (int64_t step = 1; step <= 4 && !check_case_failed; step++) {
        fill_gradients(m, false);
        device_step = step + 10; /* e.g. resumed at step 10 */
        for (size_t g = 0; g < m.groups.size(); g++) device_lr[g] = true_groups[g].lr * (float)step;
        fadam_step_kernel_args args = make_args(m, table.data(), 999);
        for (int g = 0; g < args.n_groups; g++) args.groups[g].lr = 123.0f; /* must not be used */
        args.device_step = &device_step;
        args.device_lr = device_lr.data();
        run_kernel(args, 5, 64);
        fadam_step_source source = {0, &device_step, device_lr.data()};
        CHECK(fadam_cpu_step(m.reference_side.data(), (int64_t)m.reference_side.size(), true_groups.data(),
                             (int)true_groups.size(), &source) == FADAM_SUCCESS,
              "%s", fadam_last_error_message());
        compare_models(m, "device step/lr");
    }
    check_case_end("kernel_reads_step_and_lr_from_memory");
}

/* fadam_step_scaling: a gradient multiplier read from memory gives the kernel and fadam_cpu_step_scaled
 * the same bits (a multiplier of 1 those of the plain fadam_cpu_step); a found_inf flag that is set
 * leaves every buffer of both sides as it was. */
static void test_gradient_scaling_from_memory() {
    check_case_begin();
    emul_set_thread_order(EMUL_ORDER_SHUFFLED, check_rng_next(&rng));
    model m = make_model(10, 3, 256, true);
    std::vector<unsigned char> table = encode_table(m, 256);
    const float multipliers[3] = {1.0f, 0.7f / 1024.0f, 3.0f};
    for (int64_t step = 1; step <= 4 && !check_case_failed; step++) {
        fill_gradients(m, false);
        float multiplier = multipliers[(step - 1) % 3], found_inf = step == 3 ? 1.0f : 0.0f;
        std::vector<float> before((float *)m.kernel_side[0].exp_avg, (float *)m.kernel_side[0].exp_avg + m.kernel_side[0].numel);
        fadam_step_kernel_args args = make_args(m, table.data(), step);
        args.grad_multiplier = &multiplier;
        args.found_inf = &found_inf;
        run_kernel(args, 5, 64);
        fadam_step_source source = {step, NULL, NULL};
        fadam_step_scaling scaling = {&multiplier, &found_inf};
        fadam_status status = step == 1 ? fadam_cpu_step(m.reference_side.data(), (int64_t)m.reference_side.size(),
                                                         m.groups.data(), (int)m.groups.size(), &source)
                                        : fadam_cpu_step_scaled(NULL, m.reference_side.data(),
                                                                (int64_t)m.reference_side.size(), m.groups.data(),
                                                                (int)m.groups.size(), &source, &scaling);
        CHECK(status == FADAM_SUCCESS, "%s", fadam_last_error_message());
        compare_models(m, "gradient multiplier from memory");
        if (found_inf != 0.0f)
            for (size_t k = 0; k < before.size(); k++)
                CHECK(same_float(before[k], ((float *)m.kernel_side[0].exp_avg)[k]), "found_inf=1 changed exp_avg[%zu]", k);
        else
            CHECK(before.empty() || !same_float(before[0], ((float *)m.kernel_side[0].exp_avg)[0]), "the step changed nothing");
    }
    /* Bad calls fail whatever the flag says (checked before it), and change nothing. */
    float set = 1.0f;
    fadam_step_scaling skip_all = {NULL, &set};
    fadam_step_source bad_step = {0, NULL, NULL}, good_step = {1, NULL, NULL};
    CHECK(fadam_cpu_step_scaled(NULL, m.reference_side.data(), (int64_t)m.reference_side.size(), NULL,
                                (int)m.groups.size(), &good_step, &skip_all) == FADAM_ERR_NULL_POINTER,
          "NULL groups accepted");
    CHECK(fadam_cpu_step_scaled(NULL, m.reference_side.data(), (int64_t)m.reference_side.size(), m.groups.data(),
                                (int)m.groups.size(), &bad_step, &skip_all) == FADAM_ERR_INVALID_VALUE,
          "step 0 accepted");
    fadam_tensor broken = m.reference_side[0];
    broken.param = NULL;
    broken.numel = 4;
    CHECK(fadam_cpu_step_scaled(NULL, &broken, 1, m.groups.data(), (int)m.groups.size(), &good_step, &skip_all) !=
              FADAM_SUCCESS,
          "a NULL param accepted because found_inf was set");
    check_case_end("kernel_reads_gradient_multiplier_and_found_inf_from_memory");
}

/* Tensors whose group has no entry are left alone (a table encoded for more groups than passed). */
static void test_group_out_of_range_untouched() {
    check_case_begin();
    model m = make_model(6, 2, 128, false);
    for (auto &t : m.kernel_side) t.group = 1;
    std::vector<unsigned char> table = encode_table(m, 128);
    std::vector<unsigned char> before;
    fill_gradients(m, false);
    fadam_step_kernel_args args = make_args(m, table.data(), 1);
    args.n_groups = 1;
    float first_m = m.kernel_side[0].numel ? ((float *)m.kernel_side[0].exp_avg)[0] : 0.0f;
    run_kernel(args, 3, 32);
    CHECK(m.kernel_side[0].numel == 0 || same_float(first_m, ((float *)m.kernel_side[0].exp_avg)[0]),
          "a tensor of a group without hyperparameters was updated");
    check_case_end("kernel_skips_tensors_of_missing_groups");
}

/* A tensor past 2^31 elements: the table's chunk numbering is shifted so that the three chunks the
 * kernel sees are the ones around element 2^31, and the buffers are biased so that only that window
 * exists. Every index computation crosses 2^31 as it would on a real 2^31+ tensor. */
static void test_tensor_past_2_31() {
    check_case_begin();
    const int64_t chunk = FADAM_CHUNK_ELEMS;
    const int64_t window_start = ((int64_t)1 << 31) - chunk; /* chunk-aligned, just below 2^31 */
    const int64_t numel = ((int64_t)1 << 31) + chunk + 1001;
    const int64_t window = numel - window_start;
    std::vector<float> param(window), grad(window), m(window), v(window);
    std::vector<float> ref_param(window), ref_m(window), ref_v(window);
    for (int64_t k = 0; k < window; k++) {
        ref_param[k] = param[k] = (float)check_rng_normal(&rng);
        grad[k] = (float)(1e-2 * check_rng_normal(&rng));
        ref_m[k] = m[k] = (float)(1e-2 * check_rng_normal(&rng));
        ref_v[k] = v[k] = (float)(1e-4 * check_rng_uniform(&rng));
    }
    struct {
        fadam_table_header header;
        fadam_table_entry entry;
    } table;
    std::memset(&table, 0, sizeof table);
    table.header.magic = FADAM_TABLE_MAGIC;
    table.header.n_tensors = 1;
    table.header.n_chunks = 3;
    table.header.chunk_elems = (int32_t)chunk;
    table.header.n_groups = 1;
    /* Pointers biased back by window_start elements: element window_start is param[0]. Only the
     * window is ever dereferenced. */
    table.entry.param = reinterpret_cast<float *>(reinterpret_cast<uintptr_t>(param.data()) - window_start * 4);
    table.entry.grad = reinterpret_cast<float *>(reinterpret_cast<uintptr_t>(grad.data()) - window_start * 4);
    table.entry.states[FADAM_SLOT_OF_FIELD(FADAM_FIELD_EXP_AVG)].data = reinterpret_cast<float *>(reinterpret_cast<uintptr_t>(m.data()) - window_start * 4);
    table.entry.states[FADAM_SLOT_OF_FIELD(FADAM_FIELD_EXP_AVG_SQ)].data = reinterpret_cast<float *>(reinterpret_cast<uintptr_t>(v.data()) - window_start * 4);
    table.entry.numel = numel;
    table.entry.first_chunk = -(window_start / chunk); /* global chunk 0 is the window's first */
    table.entry.param_dtype = FADAM_FLOAT32;
    table.entry.grad_dtype = FADAM_FLOAT32;
    table.entry.vector_ok = 1;
    fadam_hparams h = fadam_hparams_default();
    fadam_step_kernel_args args;
    std::memset(&args, 0, sizeof args);
    args.table = &table.header;
    args.step = 7;
    args.n_groups = 1;
    args.groups[0] = h;
    emul_set_thread_order(EMUL_ORDER_FORWARD, 0);
    run_kernel(args, 2, 256);

    fadam_tensor r;
    std::memset(&r, 0, sizeof r);
    r.param = ref_param.data();
    r.grad = grad.data();
    r.exp_avg = ref_m.data();
    r.exp_avg_sq = ref_v.data();
    r.numel = window;
    fadam_step_source source = {7, NULL, NULL};
    CHECK(fadam_cpu_step(&r, 1, &h, 1, &source) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    int64_t differing = 0, first = -1;
    for (int64_t k = 0; k < window; k++)
        if (!same_float(param[k], ref_param[k]) || !same_float(m[k], ref_m[k]) || !same_float(v[k], ref_v[k])) {
            if (first < 0) first = k;
            differing++;
        }
    CHECK(differing == 0, "%lld elements differ, first at global index %lld", (long long)differing,
          (long long)(first + window_start));
    check_case_end("kernel_tensor_past_2_31_elements");
}

/* Master init: master = float(param) exactly, fp32 params and tensors without a master untouched. */
static void test_master_init() {
    check_case_begin();
    emul_set_thread_order(EMUL_ORDER_REVERSE, 0);
    model m = make_model(30, 1, 256, true);
    for (auto &t : m.kernel_side)
        if (t.master)
            for (int64_t k = 0; k < t.numel; k++) ((float *)t.master)[k] = -12345.0f;
    std::vector<unsigned char> table = encode_table(m, 256);
    cudaError_t error =
        fadam_launch_master_init(reinterpret_cast<const fadam_table_header *>(table.data()), 4, 96, NULL);
    CHECK(error == cudaSuccess, "launch: %s", emul_last_failure_message());
    for (auto &t : m.kernel_side) {
        if (!t.master) continue;
        for (int64_t k = 0; k < t.numel; k++) {
            uint16_t bits = static_cast<const uint16_t *>(t.param)[k];
            float want = t.param_dtype == FADAM_BFLOAT16 ? fadam_bf16_bits_to_float(bits) : fadam_fp16_bits_to_float(bits);
            if (!same_float(((float *)t.master)[k], want)) {
                CHECK(false, "master[%lld]=%a, want %a", (long long)k, ((float *)t.master)[k], want);
                break;
            }
        }
    }
    check_case_end("master_init_kernel_exact");
}

/* An empty model and a model of empty tensors launch and touch nothing. */
static void test_empty() {
    check_case_begin();
    model m = make_model(0, 1, 128, false);
    std::vector<unsigned char> table = encode_table(m, 128);
    fadam_step_kernel_args args = make_args(m, table.data(), 1);
    run_kernel(args, 3, 64);
    fadam_tensor empty;
    std::memset(&empty, 0, sizeof empty);
    std::vector<fadam_tensor> empties(5, empty);
    std::vector<unsigned char> table2(fadam_table_size(5));
    fadam_table_fill(empties.data(), 5, 1, 128, table2.data());
    args.table = reinterpret_cast<const fadam_table_header *>(table2.data());
    run_kernel(args, 2, 32);
    CHECK(reinterpret_cast<const fadam_table_header *>(table2.data())->n_chunks == 0, "empty tensors got chunks");
    check_case_end("kernel_empty_model_and_empty_tensors");
}

int main() {
    rng = check_seed("test_kernel_emulated");
    const emul_thread_order orders[3] = {EMUL_ORDER_FORWARD, EMUL_ORDER_REVERSE, EMUL_ORDER_SHUFFLED};
    for (emul_thread_order order : orders) {
        test_random_model(order, 3, 64, 256, false);   /* few blocks striding over many chunks */
        test_random_model(order, 200, 32, 128, false); /* more blocks than chunks at times */
    }
    test_random_model(EMUL_ORDER_SHUFFLED, 7, 96, 64, true);
    test_random_model(EMUL_ORDER_SHUFFLED, 2, 256, FADAM_CHUNK_ELEMS, false); /* production chunk and block */
    test_step_and_lr_from_memory();
    test_gradient_scaling_from_memory();
    test_group_out_of_range_untouched();
    test_master_init();
    test_empty();
    test_tensor_past_2_31();
    return check_exit_code();
}
