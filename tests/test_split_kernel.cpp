/* test_split_kernel.cpp - the CUDA side of the step split around the caller's all-reduce (issue 13),
 * through the kernels' own source run on the CPU: the norm kernel in "partial" mode (reduce_buffer set)
 * leaves [sum, non-finite flag] and decides nothing; fused_decide_kernel decides from the summed
 * buffers. One rank: norm(partial) + decide + update is the single fused step bit for bit. R = 2..4
 * ranks over uneven slices of the same tensors: the summed buffer within 1e-12 of the single rank's
 * sum, the same decision, and (same clip coefficient) the same update bits; an Inf in one rank's slice
 * skips every rank. */
#include "../kernels/adam_step.cu"
#include "../kernels/grad_norm.cu"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

#include "check.h"
#include "dtype_values.h"
#include "internal.h"

static uint64_t rng;
static uint64_t pick(uint64_t n) { return check_rng_next(&rng) % n; }

static const int32_t CHUNK = 256;

/* Full tensors: fp32 params and moments, gradients of every dtype. */
struct full_model {
    std::vector<int64_t> numel;
    std::vector<fadam_dtype> grad_dtype;
    std::vector<std::vector<float>> grad; /* storage for any dtype (4 bytes per element is enough) */
    std::vector<std::vector<float>> param, m, v;
    fadam_hparams groups[2];
};

static full_model make_model(int n_tensors) {
    static const fadam_dtype dtypes[3] = {FADAM_FLOAT32, FADAM_BFLOAT16, FADAM_FLOAT16};
    full_model f;
    f.groups[0] = fadam_hparams_default();
    f.groups[1] = fadam_hparams_default();
    f.groups[1].weight_decay = 0.0f;
    f.groups[1].beta1 = 0.8f;
    for (int i = 0; i < n_tensors; i++) {
        const int64_t sizes[5] = {1 + (int64_t)pick(7), 1 + (int64_t)pick(700), CHUNK * 3 + 1 + (int64_t)pick(CHUNK),
                                  5003, 97};
        int64_t n = sizes[pick(5)];
        f.numel.push_back(n);
        f.grad_dtype.push_back(dtypes[pick(3)]);
        f.grad.emplace_back((size_t)n + 4, 0.0f);
        f.param.emplace_back((size_t)n + 4, 0.0f);
        f.m.emplace_back((size_t)n + 4, 0.0f);
        f.v.emplace_back((size_t)n + 4, 0.0f);
        for (int64_t k = 0; k < n; k++) {
            f.param.back()[(size_t)k] = (float)check_rng_normal(&rng);
            store_as(f.grad_dtype.back(), f.grad.back().data(), k, (float)(0.05 * check_rng_normal(&rng)));
        }
    }
    return f;
}

/* fadam_shard_range's convention (shard.c is not in this emulated build): ceil-sized slices. */
static void slice(int64_t total, int rank, int ranks, int64_t *offset, int64_t *n) {
    const int64_t size = (total + ranks - 1) / ranks, begin = std::min<int64_t>(total, rank * size);
    *offset = begin;
    *n = std::min<int64_t>(total, begin + size) - begin;
}

/* One rank's table over its slices of `state` (params and moments) and of the shared gradients. */
static std::vector<unsigned char> rank_table(const full_model &f, full_model &state, int rank, int ranks) {
    std::vector<fadam_tensor> ts;
    for (size_t i = 0; i < f.numel.size(); i++) {
        int64_t offset = 0, n = 0;
        slice(f.numel[i], rank, ranks, &offset, &n);
        fadam_tensor t;
        std::memset(&t, 0, sizeof t);
        t.param = state.param[i].data() + offset;
        t.grad = reinterpret_cast<const char *>(f.grad[i].data()) + offset * (int64_t)fadam_dtype_size(f.grad_dtype[i]);
        t.exp_avg = state.m[i].data() + offset;
        t.exp_avg_sq = state.v[i].data() + offset;
        t.numel = n;
        t.param_dtype = FADAM_FLOAT32;
        t.grad_dtype = f.grad_dtype[i];
        t.group = (int)(i % 2);
        ts.push_back(t);
    }
    std::vector<unsigned char> table(fadam_table_size((int64_t)ts.size()) + 16);
    CHECK(fadam_table_check(ts.data(), (int64_t)ts.size(), 2, "test") == FADAM_SUCCESS, "%s", fadam_last_error_message());
    fadam_table_fill(ts.data(), (int64_t)ts.size(), 2, CHUNK, table.data());
    return table;
}

struct rank_state {
    std::vector<unsigned char> table;
    std::vector<double> partials;
    std::vector<fadam_group_scalars> scalars;
    fadam_device_state state;
    double reduce[FADAM_FUSED_REDUCE_COUNT];
};

static fadam_device_state initial_state(const fadam_fused_step_config &c) {
    fadam_device_state s;
    std::memset(&s, 0, sizeof s);
    s.counters.clip_coef = 1.0f;
    s.counters.lr_scale = 1.0f;
    s.counters.loss_scale = c.dynamic_loss_scaling ? c.initial_loss_scale : 1.0f;
    s.grad_scale = 1.0f;
    return s;
}

static fadam_norm_kernel_args norm_args(const full_model &f, rank_state &r, const fadam_fused_step_config &c,
                                        bool split) {
    fadam_norm_kernel_args a;
    std::memset(&a, 0, sizeof a);
    a.table = reinterpret_cast<const fadam_table_header *>(r.table.data());
    a.chunk_partials = r.partials.data();
    a.state = &r.state;
    a.scalars_out = r.scalars.data();
    a.config = c;
    a.n_groups = 2;
    std::memcpy(a.groups, f.groups, sizeof f.groups);
    a.reduce_buffer = split ? r.reduce : NULL;
    return a;
}

static void update(const full_model &f, rank_state &r) {
    fadam_step_kernel_args u;
    std::memset(&u, 0, sizeof u);
    u.table = reinterpret_cast<const fadam_table_header *>(r.table.data());
    u.state = &r.state;
    u.device_scalars = r.scalars.data();
    u.step = 1;
    u.n_groups = 2;
    std::memcpy(u.groups, f.groups, sizeof f.groups);
    CHECK(fadam_launch_adam_step(&u, 1 + (unsigned)pick(5), 64, NULL) == cudaSuccess, "update: %s",
          emul_last_failure_message());
}

static void init_rank(rank_state &r, std::vector<unsigned char> table, const fadam_fused_step_config &c) {
    r.table = std::move(table);
    const int64_t n_chunks = reinterpret_cast<const fadam_table_header *>(r.table.data())->n_chunks;
    r.partials.assign((size_t)(n_chunks > 0 ? n_chunks : 1), 0.0);
    r.scalars.assign(FADAM_MAX_GROUPS, fadam_group_scalars());
    r.state = initial_state(c);
}

/* Steps `steps` times: a single fused rank (the norm kernel deciding) against `ranks` split ranks. */
static void test_split(int ranks, int nan_step, const char *name) {
    check_case_begin();
    full_model f = make_model(10), single = f, sharded = f;
    fadam_fused_step_config c = fadam_fused_step_config_default();
    c.max_grad_norm = 0.25f;
    c.dynamic_loss_scaling = nan_step >= 0;
    c.initial_loss_scale = 8.0f;
    c.schedule = FADAM_SCHEDULE_WARMUP_COSINE;
    c.warmup_steps = 2;
    c.total_steps = 9;
    rank_state one;
    init_rank(one, rank_table(f, single, 0, 1), c);
    std::vector<rank_state> r((size_t)ranks);
    for (int q = 0; q < ranks; q++) init_rank(r[(size_t)q], rank_table(f, sharded, q, ranks), c);
    bool same_clip = true;
    for (int step = 0; step < 4 && !check_case_failed; step++) {
        if (step == nan_step) {
            size_t i = 2 + (size_t)pick(f.numel.size() - 2);
            store_as(f.grad_dtype[i], f.grad[i].data(), (int64_t)pick((uint64_t)f.numel[i]), INFINITY);
        }
        /* The single rank: split with no all-reduce must be the fused step; both run, on copies. */
        rank_state split_one = one;
        full_model split_state = single;
        {
            /* split_one's table points into `single`; a table over split_state instead. */
            init_rank(split_one, rank_table(f, split_state, 0, 1), c);
            split_one.state = one.state;
        }
        emul_set_thread_order(EMUL_ORDER_SHUFFLED, check_rng_next(&rng));
        fadam_norm_kernel_args a = norm_args(f, one, c, false);
        CHECK(fadam_launch_grad_norm(&a, 1 + (unsigned)pick(6), 64, NULL) == cudaSuccess, "%s",
              emul_last_failure_message());
        update(f, one);
        fadam_norm_kernel_args b = norm_args(f, split_one, c, true);
        const fadam_device_state before = split_one.state;
        CHECK(fadam_launch_grad_norm(&b, 1 + (unsigned)pick(6), 128, NULL) == cudaSuccess, "%s",
              emul_last_failure_message());
        CHECK(std::memcmp(&before.counters, &split_one.state.counters, sizeof before.counters) == 0,
              "the partial-mode norm kernel changed the counters");
        CHECK(fadam_launch_fused_decide(&b, NULL) == cudaSuccess, "%s", emul_last_failure_message());
        update(f, split_one);
        CHECK(std::memcmp(&one.state, &split_one.state, sizeof one.state) == 0,
              "step %d: one rank's split decision differs from the fused step's", step + 1);
        for (size_t i = 0; i < f.numel.size(); i++)
            CHECK(std::memcmp(single.param[i].data(), split_state.param[i].data(), (size_t)f.numel[i] * 4) == 0 &&
                      std::memcmp(single.m[i].data(), split_state.m[i].data(), (size_t)f.numel[i] * 4) == 0,
                  "step %d: tensor %zu: one rank's split update differs from the fused step's", step + 1, i);
        const double single_sum = split_one.reduce[0];

        /* R ranks: partial passes, the all-reduce (a sum in rank order), decide + update on each. */
        double total[FADAM_FUSED_REDUCE_COUNT] = {0.0, 0.0};
        for (int q = 0; q < ranks; q++) {
            fadam_norm_kernel_args p = norm_args(f, r[(size_t)q], c, true);
            CHECK(fadam_launch_grad_norm(&p, 1 + (unsigned)pick(4), 32, NULL) == cudaSuccess, "%s",
                  emul_last_failure_message());
            for (int k = 0; k < FADAM_FUSED_REDUCE_COUNT; k++) total[k] += r[(size_t)q].reduce[k];
        }
        for (int q = 0; q < ranks; q++) {
            std::memcpy(r[(size_t)q].reduce, total, sizeof total);
            fadam_norm_kernel_args p = norm_args(f, r[(size_t)q], c, true);
            CHECK(fadam_launch_fused_decide(&p, NULL) == cudaSuccess, "%s", emul_last_failure_message());
            update(f, r[(size_t)q]);
            CHECK(std::memcmp(&r[(size_t)q].state, &r[0].state, sizeof r[0].state) == 0,
                  "step %d: rank %d decided otherwise than rank 0", step + 1, q);
        }
        const fadam_step_counters &x = one.state.counters, &y = r[0].state.counters;
        if (step == nan_step) {
            CHECK(x.skipped && y.skipped && total[1] == 1.0, "step %d: skipped %d/%d, flags summed %g", step + 1,
                  x.skipped, y.skipped, total[1]);
        } else {
            CHECK(std::fabs(total[0] - single_sum) <= 1e-12 * single_sum, "step %d: summed %.17g, single %.17g",
                  step + 1, total[0], single_sum);
            CHECK(!x.skipped && !y.skipped && x.step == y.step && x.clip_coef < 1.0f, "step %d: t %lld/%lld clip %g",
                  step + 1, (long long)x.step, (long long)y.step, x.clip_coef);
        }
        CHECK(x.loss_scale == y.loss_scale && x.lr_scale == y.lr_scale && x.skipped_total == y.skipped_total,
              "step %d: counters differ", step + 1);
        if (x.clip_coef != y.clip_coef) same_clip = false;
        for (size_t i = 0; i < f.numel.size() && same_clip; i++)
            CHECK(std::memcmp(single.param[i].data(), sharded.param[i].data(), (size_t)f.numel[i] * 4) == 0 &&
                      std::memcmp(single.m[i].data(), sharded.m[i].data(), (size_t)f.numel[i] * 4) == 0 &&
                      std::memcmp(single.v[i].data(), sharded.v[i].data(), (size_t)f.numel[i] * 4) == 0,
                  "step %d: tensor %zu: the sharded update differs from the single rank's", step + 1, i);
        for (size_t i = 0; i < f.numel.size(); i++)
            for (int64_t k = 0; k < f.numel[i]; k++)
                store_as(f.grad_dtype[i], f.grad[i].data(), k, (float)(0.05 * check_rng_normal(&rng)));
    }
    if (!same_clip) std::printf("# %s: a clip coefficient rounded differently; bits not compared after it\n", name);
    check_case_end(name);
}

/* Another rank's flag alone (its sum finite, e.g. a communicator that summed an Inf into a finite
 * value) skips the step: the decide kernel trusts the flag, not the sum only. */
static void test_flag_alone_skips() {
    check_case_begin();
    full_model f = make_model(3), state = f;
    fadam_fused_step_config c = fadam_fused_step_config_default();
    rank_state r;
    init_rank(r, rank_table(f, state, 0, 1), c);
    r.reduce[0] = 4.0;
    r.reduce[1] = 1.0;
    fadam_norm_kernel_args a = norm_args(f, r, c, true);
    CHECK(fadam_launch_fused_decide(&a, NULL) == cudaSuccess, "%s", emul_last_failure_message());
    CHECK(r.state.counters.skipped == 1 && r.state.counters.step == 0 && r.state.counters.skipped_total == 1,
          "a flagged buffer with a finite sum did not skip: skipped %d t %lld", r.state.counters.skipped,
          (long long)r.state.counters.step);
    r.reduce[1] = 0.0;
    CHECK(fadam_launch_fused_decide(&a, NULL) == cudaSuccess, "%s", emul_last_failure_message());
    CHECK(r.state.counters.skipped == 0 && r.state.counters.step == 1 && r.state.counters.grad_norm == 2.0f,
          "a clean buffer [4, 0]: skipped %d t %lld norm %g", r.state.counters.skipped, (long long)r.state.counters.step,
          r.state.counters.grad_norm);
    a.reduce_buffer = NULL;
    CHECK(fadam_launch_fused_decide(&a, NULL) == cudaErrorInvalidValue, "a decide launch without a buffer accepted");
    check_case_end("decide_kernel_skips_on_a_flag_alone");
}

int main() {
    rng = check_seed("test_split_kernel");
    test_split(1, -1, "split_one_rank_equals_fused_kernels");
    test_split(2, -1, "split_2_ranks_kernels_equal_single");
    test_split(3, -1, "split_3_ranks_kernels_equal_single");
    test_split(4, 2, "split_4_ranks_kernels_inf_on_one_rank_skips_all");
    test_flag_alone_skips();
    return check_exit_code();
}
