/* test_norm_kernel.cpp - the fused step's norm kernel (kernels/grad_norm.cu) run on the CPU through the
 * emulator: every path of the per-chunk sums (16-byte batches, the partial batch, the n % 8 tail,
 * misaligned gradients; chunks summed by one warp and by the whole block) against a float64 oracle
 * per chunk, the same bits for every grid and thread order, the groups' scalars it leaves for the
 * update equal to the host's, and the update reading them equal to the update computing them. */
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

struct model {
    std::vector<fadam_tensor> tensors;
    std::vector<std::vector<float>> storage;
    std::vector<fadam_hparams> groups;
};

static float *buffer(model &m, size_t floats) {
    m.storage.emplace_back(floats + 8, 0.0f);
    return m.storage.back().data();
}

/* Sizes that reach every path for a chunk of `chunk` elements: below a 16-byte group, around a batch
 * (32 lanes x 32 elements), partial chunks below and above NORM_WARP_ELEMS, several full chunks.
 * Gradients misaligned (one element past 16 bytes) for about a quarter of the tensors. */
static model make_model(int n_tensors, int32_t chunk, int n_groups) {
    static const fadam_dtype dtypes[3] = {FADAM_FLOAT32, FADAM_BFLOAT16, FADAM_FLOAT16};
    model m;
    m.storage.reserve((size_t)n_tensors * 5);
    for (int g = 0; g < n_groups; g++) {
        fadam_hparams h = fadam_hparams_default();
        h.lr = (float)(1e-3 * (1 + g));
        h.beta1 = g % 2 ? 0.8f : 0.9f;
        h.weight_decay = g % 3 == 0 ? 0.0f : 0.05f;
        h.mode = g % 2 ? FADAM_ADAM_L2 : FADAM_ADAMW;
        h.bias_correction = g != 2;
        h.maximize = g == 3;
        m.groups.push_back(h);
    }
    for (int i = 0; i < n_tensors; i++) {
        fadam_tensor t;
        std::memset(&t, 0, sizeof t);
        const int64_t sizes[6] = {1 + (int64_t)pick(9), 1 + (int64_t)pick(1100), (int64_t)chunk - 1 - (int64_t)pick(40),
                                  (int64_t)chunk * (1 + (int64_t)pick(3)), chunk + 1 + (int64_t)pick((uint64_t)chunk),
                                  300};
        t.numel = sizes[pick(6)];
        if (t.numel < 1) t.numel = 1;
        t.param_dtype = FADAM_FLOAT32;
        t.grad_dtype = dtypes[pick(3)];
        t.group = (int)pick((uint64_t)n_groups);
        const bool misaligned = pick(4) == 0;
        t.param = buffer(m, (size_t)t.numel);
        float *grad = buffer(m, (size_t)t.numel + 4);
        t.grad = misaligned ? static_cast<void *>(reinterpret_cast<char *>(grad) + fadam_dtype_size(t.grad_dtype))
                            : static_cast<void *>(grad);
        t.exp_avg = buffer(m, (size_t)t.numel);
        t.exp_avg_sq = buffer(m, (size_t)t.numel);
        for (int64_t k = 0; k < t.numel; k++) {
            static_cast<float *>(t.param)[k] = (float)check_rng_normal(&rng);
            store_as(t.grad_dtype, const_cast<void *>(t.grad), k, (float)(0.1 * check_rng_normal(&rng)));
        }
        m.tensors.push_back(t);
    }
    return m;
}

static std::vector<unsigned char> encode(const model &m, int32_t chunk) {
    std::vector<unsigned char> table(fadam_table_size((int64_t)m.tensors.size()) + 16);
    CHECK(fadam_table_check(m.tensors.data(), (int64_t)m.tensors.size(), (int)m.groups.size(), "test") ==
              FADAM_SUCCESS,
          "%s", fadam_last_error_message());
    fadam_table_fill(m.tensors.data(), (int64_t)m.tensors.size(), (int)m.groups.size(), chunk, table.data());
    return table;
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

static fadam_norm_kernel_args norm_args(const model &m, const std::vector<unsigned char> &table, double *partials,
                                        fadam_device_state *state, fadam_group_scalars *scalars,
                                        const fadam_fused_step_config &config) {
    fadam_norm_kernel_args a;
    std::memset(&a, 0, sizeof a);
    a.table = reinterpret_cast<const fadam_table_header *>(table.data());
    a.chunk_partials = partials;
    a.state = state;
    a.scalars_out = scalars;
    a.config = config;
    a.n_groups = (int32_t)m.groups.size();
    std::memcpy(a.groups, m.groups.data(), m.groups.size() * sizeof(fadam_hparams));
    return a;
}

/* float64 oracle of every chunk's sum of squares (long double, then rounded once). */
static std::vector<double> oracle_partials(const model &m, int32_t chunk, int64_t n_chunks) {
    std::vector<double> out((size_t)n_chunks);
    int64_t c = 0;
    for (auto &t : m.tensors)
        for (int64_t begin = 0; begin < t.numel; begin += chunk, c++) {
            long double sum = 0.0L;
            for (int64_t k = begin; k < t.numel && k < begin + chunk; k++) {
                long double g = load_as(t.grad_dtype, t.grad, k);
                sum += g * g;
            }
            out[(size_t)c] = (double)sum;
        }
    return out;
}

/* Each chunk's partial within 1e-12 of float64 (a double sum of a few thousand positive terms), the
 * norm within float rounding, and all of them the same bits for every grid and thread order. */
static void test_partials(int32_t chunk, unsigned block, const char *name) {
    check_case_begin();
    model m = make_model(24, chunk, 2);
    std::vector<unsigned char> table = encode(m, chunk);
    const int64_t n_chunks = reinterpret_cast<const fadam_table_header *>(table.data())->n_chunks;
    const std::vector<double> want = oracle_partials(m, chunk, n_chunks);
    long double total = 0.0L;
    for (double w : want) total += w;
    const double want_norm = std::sqrt((double)total);
    fadam_fused_step_config config = fadam_fused_step_config_default();
    std::vector<double> first;
    uint32_t first_bits = 0;
    const unsigned grids[4] = {1, 3, 7, (unsigned)n_chunks + 3};
    const emul_thread_order orders[4] = {EMUL_ORDER_FORWARD, EMUL_ORDER_SHUFFLED, EMUL_ORDER_REVERSE,
                                         EMUL_ORDER_SHUFFLED};
    for (int i = 0; i < 4 && !check_case_failed; i++) {
        std::vector<double> partials((size_t)n_chunks, -1.0);
        std::vector<fadam_group_scalars> scalars(FADAM_MAX_GROUPS);
        fadam_device_state state = initial_state(config, 0);
        emul_set_thread_order(orders[i], check_rng_next(&rng));
        fadam_norm_kernel_args a = norm_args(m, table, partials.data(), &state, scalars.data(), config);
        CHECK(fadam_launch_grad_norm(&a, grids[i], block, NULL) == cudaSuccess, "launch: %s",
              emul_last_failure_message());
        for (int64_t c = 0; c < n_chunks && !check_case_failed; c++)
            CHECK(std::fabs(partials[(size_t)c] - want[(size_t)c]) <= 1e-12 * want[(size_t)c],
                  "grid %u: chunk %lld partial %.17g, float64 %.17g", grids[i], (long long)c, partials[(size_t)c],
                  want[(size_t)c]);
        CHECK(std::fabs(state.counters.grad_norm - want_norm) <= 0x1p-23 * want_norm, "grid %u: norm %.9g, float64 %.9g",
              grids[i], state.counters.grad_norm, want_norm);
        uint32_t bits;
        std::memcpy(&bits, &state.counters.grad_norm, 4);
        if (i == 0) {
            first = partials;
            first_bits = bits;
        }
        CHECK(std::memcmp(first.data(), partials.data(), partials.size() * sizeof(double)) == 0 && bits == first_bits,
              "grid %u: partials or norm bits differ from grid %u's", grids[i], grids[0]);
        CHECK(state.blocks_done == 0, "arrival counter not reset: %u", state.blocks_done);
    }
    check_case_end(name);
}

/* The scalars the last block leaves are the host's for the decided step, bit for bit; an update that
 * reads them equals one whose blocks compute them (device_scalars unset). Clipping, loss scaling, a
 * warmup-cosine schedule and groups that differ in every hparam. */
static void test_device_scalars() {
    check_case_begin();
    const int32_t chunk = 256;
    const int n_groups = 5;
    model m = make_model(12, chunk, n_groups), copy = m;
    /* The copy: the same tensors in its own storage (gradients shared, read only). */
    for (size_t i = 0; i < m.tensors.size(); i++) {
        fadam_tensor &t = copy.tensors[i];
        size_t n = (size_t)t.numel;
        t.param = buffer(copy, n);
        std::memcpy(t.param, m.tensors[i].param, n * 4);
        t.exp_avg = buffer(copy, n);
        t.exp_avg_sq = buffer(copy, n);
    }
    std::vector<unsigned char> table = encode(m, chunk), table_copy = encode(copy, chunk);
    const int64_t n_chunks = reinterpret_cast<const fadam_table_header *>(table.data())->n_chunks;
    fadam_fused_step_config config = fadam_fused_step_config_default();
    config.max_grad_norm = 0.01f;
    config.dynamic_loss_scaling = 1;
    config.initial_loss_scale = 4.0f;
    config.schedule = FADAM_SCHEDULE_WARMUP_COSINE;
    config.warmup_steps = 3;
    config.total_steps = 50;
    fadam_device_state state = initial_state(config, 6);
    std::vector<double> partials((size_t)n_chunks);
    std::vector<fadam_group_scalars> scalars(FADAM_MAX_GROUPS);
    fadam_norm_kernel_args a = norm_args(m, table, partials.data(), &state, scalars.data(), config);
    emul_set_thread_order(EMUL_ORDER_SHUFFLED, check_rng_next(&rng));
    CHECK(fadam_launch_grad_norm(&a, 4, 64, NULL) == cudaSuccess, "launch: %s", emul_last_failure_message());
    CHECK(!state.counters.skipped && state.counters.step == 7 && state.counters.clip_coef < 1.0f,
          "step %lld skipped %d clip %g", (long long)state.counters.step, state.counters.skipped,
          state.counters.clip_coef);
    for (int g = 0; g < n_groups; g++) {
        fadam_group_scalars want = fadam_scalars_for_step(&m.groups[(size_t)g], g, 0, NULL, NULL, &state);
        CHECK(std::memcmp(&want, &scalars[(size_t)g], sizeof want) == 0, "group %d: device scalars differ from the host's",
              g);
    }
    /* The update both ways. */
    fadam_step_kernel_args u;
    std::memset(&u, 0, sizeof u);
    u.state = &state;
    u.step = 1;
    u.n_groups = n_groups;
    std::memcpy(u.groups, m.groups.data(), m.groups.size() * sizeof(fadam_hparams));
    fadam_step_kernel_args v = u;
    u.table = reinterpret_cast<const fadam_table_header *>(table.data());
    u.device_scalars = scalars.data();
    v.table = reinterpret_cast<const fadam_table_header *>(table_copy.data());
    CHECK(fadam_launch_adam_step(&u, 3, 64, NULL) == cudaSuccess, "update: %s", emul_last_failure_message());
    CHECK(fadam_launch_adam_step(&v, 5, 32, NULL) == cudaSuccess, "update: %s", emul_last_failure_message());
    for (size_t i = 0; i < m.tensors.size(); i++) {
        const fadam_tensor &t = m.tensors[i], &r = copy.tensors[i];
        size_t n = (size_t)t.numel * 4;
        CHECK(std::memcmp(t.param, r.param, n) == 0 && std::memcmp(t.exp_avg, r.exp_avg, n) == 0 &&
                  std::memcmp(t.exp_avg_sq, r.exp_avg_sq, n) == 0,
              "tensor %zu: the update with device scalars differs from the one computing them", i);
    }
    check_case_end("device_scalars_equal_host_and_update_agrees");
}

static void test_bad_launch() {
    check_case_begin();
    model m = make_model(2, 64, 1);
    std::vector<unsigned char> table = encode(m, 64);
    std::vector<double> partials(64);
    fadam_fused_step_config config = fadam_fused_step_config_default();
    fadam_device_state state = initial_state(config, 0);
    fadam_norm_kernel_args a = norm_args(m, table, partials.data(), &state, NULL, config);
    const unsigned blocks[5] = {16, 48, 512, 2048, 0};
    for (unsigned b : blocks)
        CHECK(fadam_launch_grad_norm(&a, 2, b, NULL) == cudaErrorInvalidValue, "block of %u threads accepted", b);
    a.n_groups = FADAM_MAX_GROUPS + 1;
    CHECK(fadam_launch_grad_norm(&a, 2, 64, NULL) == cudaErrorInvalidValue, "n_groups %d accepted", a.n_groups);
    CHECK(state.counters.step == 0 && state.blocks_done == 0, "a refused launch changed the state");
    /* The update: warps own chunks, so whole warps only. */
    fadam_step_kernel_args u;
    std::memset(&u, 0, sizeof u);
    u.table = a.table;
    u.step = 1;
    u.n_groups = 1;
    u.groups[0] = m.groups[0];
    const unsigned update_blocks[3] = {16, 48, 512};
    for (unsigned b : update_blocks)
        CHECK(fadam_launch_adam_step(&u, 2, b, NULL) == cudaErrorInvalidValue, "update block of %u threads accepted", b);
    check_case_end("launches_refuse_bad_shapes");
}

int main() {
    rng = check_seed("test_norm_kernel");
    test_partials(64, 32, "norm_partials_chunk64_block32");
    test_partials(256, 64, "norm_partials_chunk256_block64");
    test_partials(8192, 128, "norm_partials_chunk8192_block128_warp_and_block_chunks");
    test_device_scalars();
    test_bad_launch();
    return check_exit_code();
}
