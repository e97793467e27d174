/* test_fused_step.cpp - the whole step on the device, through the kernels' own source run on the CPU:
 * the global norm against float64 (huge and tiny values), its determinism across grids and thread
 * orders, clipping on and off, Inf/NaN skips with loss scaling and with the default configuration,
 * the loss scale's floor, counters at INT64_MAX, the schedule, and a "captured" step (launch
 * arguments frozen once) replayed N times, bit for bit equal to N eager steps. */
#include "../kernels/adam_step.cu"
#include "../kernels/grad_norm.cu"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

#include "check.h"
#include "dtype_values.h"
#include "internal.h"

static uint64_t rng;
static uint64_t pick(uint64_t n) { return check_rng_next(&rng) % n; }

/* A model with caller-style buffers (fp32 master for 16-bit params), host memory. */
struct model {
    std::vector<fadam_tensor> tensors;
    std::vector<std::vector<float>> storage;
    std::vector<fadam_hparams> groups;
};

static void *buffer(model &m, size_t floats) {
    m.storage.emplace_back(floats + 4, 0.0f);
    return m.storage.back().data();
}



static model make_model(int n_tensors, int32_t chunk_elems) {
    static const fadam_dtype dtypes[3] = {FADAM_FLOAT32, FADAM_BFLOAT16, FADAM_FLOAT16};
    model m;
    m.storage.reserve((size_t)n_tensors * 6);
    for (int g = 0; g < 2; g++) {
        fadam_hparams h = fadam_hparams_default();
        h.weight_decay = g == 0 ? 0.1f : 0.0f;
        h.mode = g == 0 ? FADAM_ADAMW : FADAM_ADAM_L2;
        m.groups.push_back(h);
    }
    for (int i = 0; i < n_tensors; i++) {
        fadam_tensor t;
        std::memset(&t, 0, sizeof t);
        t.numel = (int64_t)pick(3 * (uint64_t)chunk_elems);
        t.param_dtype = dtypes[pick(3)];
        t.grad_dtype = dtypes[pick(2)]; /* fp32 or bf16: fp16 grads would overflow at loss scale 2^16 */
        t.group = (int)pick(2);
        t.param = buffer(m, (size_t)t.numel);
        t.grad = buffer(m, (size_t)t.numel);
        t.master = t.param_dtype == FADAM_FLOAT32 ? NULL : static_cast<float *>(buffer(m, (size_t)t.numel));
        t.exp_avg = static_cast<float *>(buffer(m, (size_t)t.numel));
        t.exp_avg_sq = static_cast<float *>(buffer(m, (size_t)t.numel));
        for (int64_t k = 0; k < t.numel; k++) {
            store_as(t.param_dtype, t.param, k, (float)check_rng_normal(&rng));
            if (t.master) ((float *)t.master)[k] = load_as(t.param_dtype, t.param, k);
        }
        m.tensors.push_back(t);
    }
    return m;
}

static void fill_gradients(model &m, double scale) {
    for (auto &t : m.tensors)
        for (int64_t k = 0; k < t.numel; k++)
            store_as(t.grad_dtype, const_cast<void *>(t.grad), k, (float)(scale * check_rng_normal(&rng)));
}

static std::vector<unsigned char> encode(const model &m, int32_t chunk_elems) {
    std::vector<unsigned char> table(fadam_table_size((int64_t)m.tensors.size()) + 16);
    CHECK(fadam_table_check(m.tensors.data(), (int64_t)m.tensors.size(), (int)m.groups.size(), "test") ==
              FADAM_SUCCESS,
          "%s", fadam_last_error_message());
    fadam_table_fill(m.tensors.data(), (int64_t)m.tensors.size(), (int)m.groups.size(), chunk_elems, table.data());
    return table;
}

static int64_t chunks_of(const std::vector<unsigned char> &table) {
    return reinterpret_cast<const fadam_table_header *>(table.data())->n_chunks;
}

static fadam_device_state initial_state(const fadam_fused_step_config &c, int64_t step) {
    fadam_device_state s;
    std::memset(&s, 0, sizeof s);
    s.counters.step = step;
    s.counters.clip_coef = 1.0f;
    s.counters.lr_scale = 1.0f;
    s.counters.loss_scale = c.dynamic_loss_scaling ? c.initial_loss_scale : 1.0f;
    s.grad_scale = 1.0f;
    return s;
}

/* Everything one launch pair needs, frozen: what a CUDA graph captures. */
struct captured_step {
    const fadam_table_header *table;
    double *partials;
    fadam_device_state *state;
    fadam_fused_step_config config;
    fadam_norm_kernel_args norm;
    fadam_step_kernel_args update;
    unsigned grid, block;
};

static captured_step capture(const model &m, const std::vector<unsigned char> &table, std::vector<double> &partials,
                             fadam_device_state *state, const fadam_fused_step_config &config, unsigned grid,
                             unsigned block) {
    captured_step c;
    /* After the partials, room for the groups' scalars that the norm kernel leaves for the update. */
    const size_t n_partials = (size_t)chunks_of(table) + 1;
    const size_t scalar_doubles = (FADAM_MAX_GROUPS * sizeof(fadam_group_scalars) + sizeof(double) - 1) / sizeof(double);
    if (partials.size() < n_partials + scalar_doubles) partials.resize(n_partials + scalar_doubles);
    fadam_group_scalars *scalars = reinterpret_cast<fadam_group_scalars *>(partials.data() + n_partials);
    c.table = reinterpret_cast<const fadam_table_header *>(table.data());
    c.partials = partials.data();
    c.state = state;
    c.config = config;
    std::memset(&c.norm, 0, sizeof c.norm);
    c.norm.table = c.table;
    c.norm.chunk_partials = c.partials;
    c.norm.state = state;
    c.norm.scalars_out = scalars;
    c.norm.config = config;
    c.norm.n_groups = (int32_t)m.groups.size();
    std::memcpy(c.norm.groups, m.groups.data(), m.groups.size() * sizeof(fadam_hparams));
    std::memset(&c.update, 0, sizeof c.update);
    c.update.table = c.table;
    c.update.state = state;
    c.update.device_scalars = scalars;
    c.update.step = 1;
    c.update.n_groups = (int32_t)m.groups.size();
    std::memcpy(c.update.groups, m.groups.data(), m.groups.size() * sizeof(fadam_hparams));
    c.grid = grid;
    c.block = block;
    return c;
}

static void run(const captured_step &c) {
    cudaError_t e = fadam_launch_grad_norm(&c.norm, c.grid, c.block, NULL);
    CHECK(e == cudaSuccess, "grad_norm launch: %s", emul_last_failure_message());
    e = fadam_launch_adam_step(&c.update, c.grid, c.block, NULL);
    CHECK(e == cudaSuccess, "adam_step launch: %s", emul_last_failure_message());
}

static void run_norm_only(const captured_step &c) {
    cudaError_t e = fadam_launch_grad_norm(&c.norm, c.grid, c.block, NULL);
    CHECK(e == cudaSuccess, "grad_norm launch: %s", emul_last_failure_message());
}

/* float64 oracle of the norm: sum of squares in long double, sorted by size to lose nothing. */
static double oracle_norm(const model &m) {
    long double sum = 0.0L;
    for (auto &t : m.tensors)
        for (int64_t k = 0; k < t.numel; k++) {
            long double g = load_as(t.grad_dtype, t.grad, k);
            sum += g * g;
        }
    return (double)sqrtl(sum);
}

static void test_norm(const char *name, double grad_scale, bool extreme_values) {
    check_case_begin();
    const int32_t chunk = 128;
    model m = make_model(30, chunk);
    fill_gradients(m, grad_scale);
    if (extreme_values) { /* a few huge and tiny values: their squares leave float's range */
        for (auto &t : m.tensors)
            if (t.numel > 2 && t.grad_dtype == FADAM_FLOAT32) {
                static_cast<float *>(const_cast<void *>(t.grad))[0] = 3e30f;
                static_cast<float *>(const_cast<void *>(t.grad))[1] = -2e-30f;
            }
    }
    std::vector<unsigned char> table = encode(m, chunk);
    std::vector<double> partials((size_t)chunks_of(table) + 1);
    fadam_fused_step_config config = fadam_fused_step_config_default();
    config.max_grad_norm = 1.0f;
    double want = oracle_norm(m);
    uint32_t first_bits = 0;
    const unsigned grids[3] = {1, 5, 300};
    const emul_thread_order orders[3] = {EMUL_ORDER_FORWARD, EMUL_ORDER_REVERSE, EMUL_ORDER_SHUFFLED};
    for (int i = 0; i < 3; i++) {
        fadam_device_state state = initial_state(config, 0);
        emul_set_thread_order(orders[i], check_rng_next(&rng));
        captured_step c = capture(m, table, partials, &state, config, grids[i], 64);
        run_norm_only(c);
        double got = state.counters.grad_norm;
        CHECK(std::fabs(got - want) <= 1e-6 * want, "grid %u: norm %.9g, float64 %.9g", grids[i], got, want);
        CHECK(state.blocks_done == 0, "arrival counter not reset: %u", state.blocks_done);
        uint32_t bits;
        std::memcpy(&bits, &state.counters.grad_norm, 4);
        if (i == 0) first_bits = bits;
        CHECK(bits == first_bits, "norm bits differ between grids/thread orders: 0x%08x vs 0x%08x", bits, first_bits);
    }
    check_case_end(name);
}

/* Clipping active: every gradient is multiplied by max_norm/(norm+1e-6) on the way in, which the
 * reference, given the kernel's decision, reproduces bit for bit, and a float64 oracle confirms. */
static void test_clipping(bool active) {
    check_case_begin();
    const int32_t chunk = 256;
    model m = make_model(25, chunk), mirror = make_model(0, chunk);
    fill_gradients(m, 1e-2);
    /* The mirror: the same tensors, copied buffers, updated by the reference. */
    mirror.groups = m.groups;
    for (auto &t : m.tensors) {
        fadam_tensor r = t;
        size_t n = (size_t)t.numel;
        r.param = buffer(mirror, n);
        std::memcpy(r.param, t.param, n * fadam_dtype_size(t.param_dtype));
        r.grad = t.grad; /* read only, shared */
        r.master = t.master ? static_cast<float *>(buffer(mirror, n)) : NULL;
        if (t.master) std::memcpy(r.master, t.master, n * 4);
        r.exp_avg = static_cast<float *>(buffer(mirror, n));
        r.exp_avg_sq = static_cast<float *>(buffer(mirror, n));
        mirror.tensors.push_back(r);
    }
    std::vector<unsigned char> table = encode(m, chunk);
    std::vector<double> partials((size_t)chunks_of(table) + 1);
    double norm = oracle_norm(m);
    fadam_fused_step_config config = fadam_fused_step_config_default();
    config.max_grad_norm = active ? (float)(norm / 4) : (float)(norm * 4);
    fadam_device_state state = initial_state(config, 0);
    emul_set_thread_order(EMUL_ORDER_SHUFFLED, check_rng_next(&rng));
    run(capture(m, table, partials, &state, config, 4, 128));
    double want_coef = active ? config.max_grad_norm / (norm + 1e-6) : 1.0;
    CHECK(std::fabs(state.counters.clip_coef - want_coef) <= 1e-6 * want_coef, "clip_coef %.9g, want %.9g",
          state.counters.clip_coef, want_coef);
    CHECK(active || (state.counters.clip_coef == 1.0f && state.grad_scale == 1.0f),
          "inactive clipping must leave the gradients exactly as they are");
    CHECK(state.counters.step == 1 && !state.counters.skipped, "step %lld skipped %d", (long long)state.counters.step,
          state.counters.skipped);
    /* The reference with the kernel's decision. */
    fadam_step_source source = {1, NULL, NULL};
    CHECK(fadam_cpu_update_all(nullptr, mirror.tensors.data(), (int64_t)mirror.tensors.size(), mirror.groups.data(),
                               (int)mirror.groups.size(), &source, &state, "test") == FADAM_SUCCESS,
          "%s", fadam_last_error_message());
    for (size_t i = 0; i < m.tensors.size() && !check_case_failed; i++) {
        const fadam_tensor &t = m.tensors[i], &r = mirror.tensors[i];
        size_t n = (size_t)t.numel;
        CHECK(std::memcmp(t.param, r.param, n * fadam_dtype_size(t.param_dtype)) == 0 &&
                  std::memcmp(t.exp_avg, r.exp_avg, n * 4) == 0 && std::memcmp(t.exp_avg_sq, r.exp_avg_sq, n * 4) == 0,
              "tensor %zu differs from the reference", i);
        /* float64: first moment after one step from zero is (1-beta1) * clip * g. */
        for (int64_t k = 0; k < t.numel; k++) {
            double want = (1.0 - (double)m.groups[t.group].beta1) * want_coef * load_as(t.grad_dtype, t.grad, k);
            if (t.group == 1 && m.groups[1].weight_decay != 0.0f) break; /* L2 adds wd*p: skip the check */
            if (std::fabs(((float *)t.exp_avg)[k] - want) > 1e-6 * std::fabs(want) + 1e-12) {
                CHECK(false, "tensor %zu m[%lld]=%.9g, float64 %.9g", i, (long long)k, ((float *)t.exp_avg)[k], want);
                break;
            }
        }
    }
    check_case_end(active ? "clipping_active_scales_gradients" : "clipping_inactive_changes_nothing");
}

/* One Inf or NaN in one tensor among many: the step is skipped, every buffer byte-identical, the step
 * counter unmoved, the loss scale halved; then clean steps grow it back after growth_interval. */
static void test_overflow_skip(bool use_nan) {
    check_case_begin();
    const int32_t chunk = 128;
    model m = make_model(40, chunk);
    fadam_fused_step_config config = fadam_fused_step_config_default();
    config.dynamic_loss_scaling = 1;
    config.initial_loss_scale = 1024.0f;
    config.growth_interval = 3;
    config.max_grad_norm = 1.0f;
    std::vector<unsigned char> table = encode(m, chunk);
    std::vector<double> partials((size_t)chunks_of(table) + 1);
    fadam_device_state state = initial_state(config, 7);
    captured_step c = capture(m, table, partials, &state, config, 6, 64);
    fill_gradients(m, 1e-2 * 1024.0);
    /* Poison one element of one non-empty tensor. */
    size_t victim = 0;
    while (m.tensors[victim].numel == 0) victim++;
    store_as(m.tensors[victim].grad_dtype, const_cast<void *>(m.tensors[victim].grad), m.tensors[victim].numel / 2,
          use_nan ? NAN : INFINITY);
    std::vector<std::vector<float>> before = m.storage;
    run(c);
    bool untouched = true;
    for (size_t i = 0; i < m.storage.size(); i++) untouched &= std::memcmp(before[i].data(), m.storage[i].data(),
                                                                           before[i].size() * 4) == 0;
    CHECK(untouched, "a skipped step modified a parameter, master or moment");
    CHECK(state.counters.skipped == 1 && state.counters.step == 7 && state.counters.skipped_total == 1,
          "skipped %d step %lld total %lld", state.counters.skipped, (long long)state.counters.step,
          (long long)state.counters.skipped_total);
    CHECK(state.counters.loss_scale == 512.0f, "loss scale %g after overflow, want 512", state.counters.loss_scale);
    CHECK(!(state.counters.grad_norm <= 3e38f), "the norm of an Inf/NaN gradient should not be finite");
    /* Clean steps: t advances, scale doubles after 3 of them. */
    for (int s = 0; s < 3; s++) {
        fill_gradients(m, 1e-2 * 512.0);
        run(c);
    }
    CHECK(state.counters.skipped == 0 && state.counters.step == 10, "after 3 clean steps: skipped %d step %lld",
          state.counters.skipped, (long long)state.counters.step);
    CHECK(state.counters.loss_scale == 1024.0f && state.counters.good_steps == 0,
          "loss scale %g good %d, want 1024 and 0", state.counters.loss_scale, state.counters.good_steps);
    CHECK(std::fabs(state.counters.grad_norm - oracle_norm(m) / 512.0) <= 1e-6 * oracle_norm(m) / 512.0,
          "unscaled norm %.9g, float64 %.9g", state.counters.grad_norm, oracle_norm(m) / 512.0);
    check_case_end(use_nan ? "nan_gradient_skips_step_and_backs_off_scale" : "inf_gradient_skips_step_and_backs_off_scale");
}

/* The schedule at warmup start and end, mid-decay, the end and past it, against float64; and the
 * kernel's last block computes the same factor for the step it takes. */
static void test_schedule() {
    check_case_begin();
    fadam_fused_step_config c = fadam_fused_step_config_default();
    c.schedule = FADAM_SCHEDULE_WARMUP_COSINE;
    c.warmup_steps = 100;
    c.total_steps = 1100;
    c.min_lr_ratio = 0.1f;
    struct {
        int64_t t;
        double want;
    } points[] = {{1, 0.01},
                  {50, 0.5},
                  {100, 1.0},
                  {600, 0.1 + 0.9 * 0.5},
                  {350, 0.1 + 0.9 * 0.5 * (1 + std::cos(M_PI * 0.25))},
                  {1100, 0.1},
                  {5000, 0.1}};
    for (auto &p : points) {
        float got = fadam_schedule_factor(&c, p.t);
        CHECK(std::fabs(got - p.want) <= 1e-6 * p.want, "t=%lld: factor %.9g, float64 %.9g", (long long)p.t, got,
              p.want);
    }
    fadam_fused_step_config constant = fadam_fused_step_config_default();
    CHECK(fadam_schedule_factor(&constant, 12345) == 1.0f, "constant schedule");
    /* Through the kernel: a state at t=599 takes step 600. */
    model m = make_model(3, 64);
    fill_gradients(m, 1e-2);
    std::vector<unsigned char> table = encode(m, 64);
    std::vector<double> partials((size_t)chunks_of(table) + 1);
    fadam_device_state state = initial_state(c, 599);
    run(capture(m, table, partials, &state, c, 2, 32));
    CHECK(state.counters.step == 600 && state.counters.lr_scale == fadam_schedule_factor(&c, 600),
          "kernel: step %lld factor %.9g", (long long)state.counters.step, state.counters.lr_scale);
    check_case_end("schedule_warmup_cosine_values");
}

/* A captured step replayed N times (frozen arguments, gradients rewritten in place between replays,
 * one overflow among them) equals N eager steps whose arguments are built afresh each time. */
static void test_graph_replay() {
    check_case_begin();
    const int32_t chunk = 128;
    const int steps = 8;
    fadam_fused_step_config config = fadam_fused_step_config_default();
    config.max_grad_norm = 0.5f;
    config.dynamic_loss_scaling = 1;
    config.initial_loss_scale = 256.0f;
    config.growth_interval = 2;
    config.schedule = FADAM_SCHEDULE_WARMUP_COSINE;
    config.warmup_steps = 2;
    config.total_steps = 6;
    config.min_lr_ratio = 0.2f;
    uint64_t data_seed = check_rng_next(&rng);
    model replayed = make_model(20, chunk);
    /* The eager model: identical content. */
    model eager = replayed;
    for (size_t i = 0; i < eager.tensors.size(); i++) {
        /* Point the copied descriptors at the copied storage (same layout). */
        fadam_tensor &t = eager.tensors[i];
        auto rebase = [&](const void *p) -> void * {
            for (size_t s = 0; s < replayed.storage.size(); s++)
                if (p == replayed.storage[s].data()) return eager.storage[s].data();
            return NULL;
        };
        t.param = rebase(t.param);
        t.grad = rebase(t.grad);
        if (t.master) t.master = static_cast<float *>(rebase(t.master));
        t.exp_avg = static_cast<float *>(rebase(t.exp_avg));
        t.exp_avg_sq = static_cast<float *>(rebase(t.exp_avg_sq));
    }
    std::vector<unsigned char> table_r = encode(replayed, chunk), table_e = encode(eager, chunk);
    std::vector<double> partials_r((size_t)chunks_of(table_r) + 1), partials_e(partials_r.size());
    fadam_device_state state_r = initial_state(config, 0), state_e = initial_state(config, 0);
    captured_step graph = capture(replayed, table_r, partials_r, &state_r, config, 3, 64);
    for (int s = 0; s < steps; s++) {
        uint64_t step_seed = data_seed + (uint64_t)s;
        for (model *mm : {&replayed, &eager}) {
            rng = step_seed;
            fill_gradients(*mm, 1e-2 * 256.0);
            if (s == 3) store_as(mm->tensors[1].grad_dtype, const_cast<void *>(mm->tensors[1].grad), 0, INFINITY);
        }
        emul_set_thread_order(s % 2 ? EMUL_ORDER_REVERSE : EMUL_ORDER_SHUFFLED, step_seed);
        run(graph);                                                                  /* replay */
        run(capture(eager, table_e, partials_e, &state_e, config, 1 + (unsigned)s, 32)); /* eager, fresh */
    }
    for (size_t i = 0; i < replayed.storage.size(); i++)
        CHECK(std::memcmp(replayed.storage[i].data(), eager.storage[i].data(), replayed.storage[i].size() * 4) == 0,
              "buffer %zu differs between replayed and eager steps", i);
    CHECK(std::memcmp(&state_r.counters, &state_e.counters, sizeof state_r.counters) == 0,
          "counters differ: replay step %lld scale %g, eager step %lld scale %g", (long long)state_r.counters.step,
          state_r.counters.loss_scale, (long long)state_e.counters.step, state_e.counters.loss_scale);
    CHECK(state_r.counters.step == steps - 1 && state_r.counters.skipped_total == 1,
          "step %lld skipped_total %lld, want %d and 1", (long long)state_r.counters.step,
          (long long)state_r.counters.skipped_total, steps - 1);
    check_case_end("captured_step_replayed_equals_eager_steps");
}

/* A copy of m's tensors in fresh buffers (gradients shared, read only), for the reference. */
static model mirror_of(const model &m) {
    model mirror;
    mirror.storage.reserve(m.tensors.size() * 4);
    mirror.groups = m.groups;
    for (auto &t : m.tensors) {
        fadam_tensor r = t;
        size_t n = (size_t)t.numel;
        r.param = buffer(mirror, n);
        std::memcpy(r.param, t.param, n * fadam_dtype_size(t.param_dtype));
        r.master = t.master ? static_cast<float *>(buffer(mirror, n)) : NULL;
        if (t.master) std::memcpy(r.master, t.master, n * 4);
        r.exp_avg = static_cast<float *>(buffer(mirror, n));
        std::memcpy(r.exp_avg, t.exp_avg, n * 4);
        r.exp_avg_sq = static_cast<float *>(buffer(mirror, n));
        std::memcpy(r.exp_avg_sq, t.exp_avg_sq, n * 4);
        mirror.tensors.push_back(r);
    }
    return mirror;
}

/* The reference steps the mirror with the kernel's decision; then both must hold the same bytes. */
static bool reference_agrees(const model &m, model &mirror, const fadam_device_state &state) {
    fadam_step_source source = {1, NULL, NULL};
    CHECK(fadam_cpu_update_all(nullptr, mirror.tensors.data(), (int64_t)mirror.tensors.size(), mirror.groups.data(),
                               (int)mirror.groups.size(), &source, &state, "test") == FADAM_SUCCESS,
          "%s", fadam_last_error_message());
    for (size_t i = 0; i < m.tensors.size(); i++) {
        const fadam_tensor &t = m.tensors[i], &r = mirror.tensors[i];
        size_t n = (size_t)t.numel;
        if (std::memcmp(t.param, r.param, n * fadam_dtype_size(t.param_dtype)) != 0 ||
            (t.master && std::memcmp(t.master, r.master, n * 4) != 0) || std::memcmp(t.exp_avg, r.exp_avg, n * 4) != 0 ||
            std::memcmp(t.exp_avg_sq, r.exp_avg_sq, n * 4) != 0) {
            CHECK(false, "tensor %zu differs from the reference", i);
            return false;
        }
    }
    return true;
}

static bool storage_equal(const std::vector<std::vector<float>> &a, const model &m) {
    for (size_t i = 0; i < a.size(); i++)
        if (std::memcmp(a[i].data(), m.storage[i].data(), a[i].size() * 4) != 0) return false;
    return true;
}

/* Issue 9, defect 1, the smallest case: with the default configuration (no clipping, no loss
 * scaling) the gradient pass still runs: grad_norm is reported and a NaN gradient skips the step. */
static void test_default_config_smallest() {
    check_case_begin();
    model m;
    m.storage.reserve(8);
    m.groups.push_back(fadam_hparams_default());
    fadam_tensor t;
    std::memset(&t, 0, sizeof t);
    t.numel = 4;
    t.param_dtype = t.grad_dtype = FADAM_FLOAT32;
    t.param = buffer(m, 4);
    t.grad = buffer(m, 4);
    t.exp_avg = static_cast<float *>(buffer(m, 4));
    t.exp_avg_sq = static_cast<float *>(buffer(m, 4));
    const float params[4] = {1, 2, 3, 4}, grads[4] = {0.5f, -1, 2, 0};
    std::memcpy(t.param, params, sizeof params);
    std::memcpy(const_cast<void *>(t.grad), grads, sizeof grads);
    m.tensors.push_back(t);
    model mirror = mirror_of(m);
    std::vector<unsigned char> table = encode(m, 64);
    std::vector<double> partials((size_t)chunks_of(table) + 1);
    fadam_fused_step_config config = fadam_fused_step_config_default();
    fadam_device_state state = initial_state(config, 0);
    captured_step c = capture(m, table, partials, &state, config, 2, 32);
    run(c);
    CHECK(state.counters.grad_norm == (float)std::sqrt(5.25), "grad_norm %.9g, want sqrt(5.25) = %.9g",
          state.counters.grad_norm, std::sqrt(5.25));
    CHECK(state.counters.step == 1 && !state.counters.skipped, "step %lld skipped %d", (long long)state.counters.step,
          state.counters.skipped);
    reference_agrees(m, mirror, state);
    static_cast<float *>(const_cast<void *>(t.grad))[1] = NAN;
    std::vector<std::vector<float>> before = m.storage;
    run(c);
    CHECK(storage_equal(before, m), "a NaN gradient changed a parameter or moment");
    CHECK(state.counters.skipped == 1 && state.counters.skipped_total == 1 && state.counters.step == 1,
          "after a NaN gradient: skipped %d total %lld step %lld", state.counters.skipped,
          (long long)state.counters.skipped_total, (long long)state.counters.step);
    check_case_end("default_config_reports_norm_and_skips_nan_smallest");
}

/* Defect 1 at random: the default configuration, random sizes and dtypes (fp16 gradients too), one
 * NaN/+Inf/-Inf at a random element: the step is skipped; clean steps report the norm (float64
 * oracle) and match the reference bit for bit. */
static void test_default_config_random() {
    static const fadam_dtype dtypes[3] = {FADAM_FLOAT32, FADAM_BFLOAT16, FADAM_FLOAT16};
    static const float poisons[3] = {NAN, INFINITY, -INFINITY};
    check_case_begin();
    for (int trial = 0; trial < 6 && !check_case_failed; trial++) {
        const int32_t chunk = 64 << pick(3);
        model m = make_model(1 + (int)pick(12), chunk);
        for (auto &t : m.tensors) t.grad_dtype = dtypes[pick(3)];
        if (m.tensors[0].numel == 0) m.tensors[0].numel = 1; /* at least one element to poison */
        fadam_fused_step_config config = fadam_fused_step_config_default();
        std::vector<unsigned char> table = encode(m, chunk);
        std::vector<double> partials((size_t)chunks_of(table) + 1);
        fadam_device_state state = initial_state(config, 0);
        emul_set_thread_order(EMUL_ORDER_SHUFFLED, check_rng_next(&rng));
        captured_step c = capture(m, table, partials, &state, config, 1 + (unsigned)pick(6), 32u << pick(3));
        for (int round = 0; round < 2 && !check_case_failed; round++) {
            fill_gradients(m, 1e-2);
            model mirror = mirror_of(m);
            double want = oracle_norm(m);
            run(c);
            CHECK(!state.counters.skipped && state.counters.step == round + 1, "trial %d: clean step skipped", trial);
            CHECK(std::fabs(state.counters.grad_norm - want) <= 1e-6 * want, "trial %d: grad_norm %.9g, float64 %.9g",
                  trial, state.counters.grad_norm, want);
            reference_agrees(m, mirror, state);
            size_t victim;
            do victim = (size_t)pick(m.tensors.size());
            while (m.tensors[victim].numel == 0);
            const fadam_tensor &v = m.tensors[victim];
            store_as(v.grad_dtype, const_cast<void *>(v.grad), (int64_t)pick((uint64_t)v.numel), poisons[pick(3)]);
            std::vector<std::vector<float>> before = m.storage;
            run(c);
            CHECK(storage_equal(before, m), "trial %d: a non-finite gradient changed the state", trial);
            CHECK(state.counters.skipped == 1 && state.counters.skipped_total == round + 1 &&
                      state.counters.step == round + 1 && !(state.counters.grad_norm <= 3e38f),
                  "trial %d: skipped %d total %lld step %lld norm %g", trial, state.counters.skipped,
                  (long long)state.counters.skipped_total, (long long)state.counters.step, state.counters.grad_norm);
        }
    }
    check_case_end("default_config_random_nonfinite_skips");
}

/* Defect 3: 200 overflows in a row take the dynamic loss scale down to its floor, never to 0; the
 * counters show it; then a clean step is applied. */
static void test_loss_scale_floor(float min_scale, const char *name) {
    check_case_begin();
    model m = make_model(4, 64);
    if (m.tensors[0].numel == 0) m.tensors[0].numel = 1;
    fadam_fused_step_config config = fadam_fused_step_config_default();
    config.dynamic_loss_scaling = 1;
    config.min_loss_scale = min_scale;
    std::vector<unsigned char> table = encode(m, 64);
    std::vector<double> partials((size_t)chunks_of(table) + 1);
    fadam_device_state state = initial_state(config, 0);
    captured_step c = capture(m, table, partials, &state, config, 3, 32);
    const int overflows = 200;
    int to_floor = 0;
    for (double scale = config.initial_loss_scale; scale > min_scale; to_floor++) /* float64 oracle */
        scale = std::fmax(scale * config.backoff_factor, (double)min_scale);
    fill_gradients(m, 1e-2);
    store_as(m.tensors[0].grad_dtype, const_cast<void *>(m.tensors[0].grad), 0, INFINITY);
    for (int s = 0; s < overflows && !check_case_failed; s++) {
        run(c);
        CHECK(state.counters.loss_scale >= min_scale, "overflow %d: loss scale %g under the floor %g", s + 1,
              state.counters.loss_scale, min_scale);
    }
    CHECK(state.counters.loss_scale == min_scale && state.counters.skipped_total == overflows &&
              state.counters.skipped_at_min_scale == overflows - to_floor,
          "after %d overflows: loss scale %g (floor %g), skipped_total %lld, skipped_at_min_scale %lld (want %d)",
          overflows, state.counters.loss_scale, min_scale, (long long)state.counters.skipped_total,
          (long long)state.counters.skipped_at_min_scale, overflows - to_floor);
    fill_gradients(m, 1e-2 * min_scale * 16.0);
    model mirror = mirror_of(m);
    run(c);
    CHECK(!state.counters.skipped && state.counters.step == 1, "the clean step after the floor: skipped %d step %lld",
          state.counters.skipped, (long long)state.counters.step);
    reference_agrees(m, mirror, state);
    check_case_end(name);
}

/* Defect 4: counters at INT64_MAX never overflow (this program runs under UBSan): a step counter
 * there cannot advance, so the step is skipped; skipped_total and skipped_at_min_scale saturate. */
static void test_counters_at_limit() {
    check_case_begin();
    model m = make_model(3, 64);
    fadam_fused_step_config config = fadam_fused_step_config_default();
    config.dynamic_loss_scaling = 1;
    std::vector<unsigned char> table = encode(m, 64);
    std::vector<double> partials((size_t)chunks_of(table) + 1);
    fadam_device_state state = initial_state(config, INT64_MAX - 1);
    state.counters.skipped_total = INT64_MAX - 1;
    captured_step c = capture(m, table, partials, &state, config, 2, 32);
    fill_gradients(m, 1e-2);
    run(c); /* the last step there is */
    CHECK(state.counters.step == INT64_MAX && !state.counters.skipped, "step %lld skipped %d",
          (long long)state.counters.step, state.counters.skipped);
    std::vector<std::vector<float>> before = m.storage;
    run(c);
    CHECK(storage_equal(before, m) && state.counters.step == INT64_MAX && state.counters.skipped == 1 &&
              state.counters.skipped_total == INT64_MAX,
          "at INT64_MAX: step %lld skipped %d total %lld, state %s", (long long)state.counters.step,
          state.counters.skipped, (long long)state.counters.skipped_total,
          storage_equal(before, m) ? "unchanged" : "changed");
    state.counters.loss_scale = config.min_loss_scale;
    state.counters.skipped_at_min_scale = INT64_MAX;
    store_as(m.tensors[0].grad_dtype, const_cast<void *>(m.tensors[0].grad), 0, NAN);
    run(c);
    CHECK(state.counters.skipped_total == INT64_MAX && state.counters.skipped_at_min_scale == INT64_MAX &&
              state.counters.loss_scale == config.min_loss_scale,
          "saturation: total %lld at_min %lld scale %g", (long long)state.counters.skipped_total,
          (long long)state.counters.skipped_at_min_scale, state.counters.loss_scale);
    check_case_end("counters_at_int64_max_do_not_overflow");
}

int main() {
    rng = check_seed("test_fused_step");
    test_norm("grad_norm_matches_float64_deterministic", 1e-2, false);
    test_norm("grad_norm_huge_and_tiny_values", 1.0, true);
    test_clipping(true);
    test_clipping(false);
    test_overflow_skip(false);
    test_overflow_skip(true);
    test_schedule();
    test_graph_replay();
    test_default_config_smallest();
    test_default_config_random();
    test_loss_scale_floor(1.0f, "loss_scale_floor_default_after_200_overflows");
    test_loss_scale_floor(0x1p-126f, "loss_scale_floor_smallest_after_200_overflows");
    test_counters_at_limit(); /* last: before the fix UBSan stops the program here */
    return check_exit_code();
}
