/* test_step_kernels.cpp - which instantiation of the step kernel runs a table (kernels/adam_step.cu:
 * adam_step_kernel<fp32_loops>, 60 registers, and adam_step_kernel<all_loops>, the lean loop's 78), run
 * on the CPU through the emulator: the encoder's header flag (FADAM_TABLE_LEAN) comes from the entries;
 * a table without a lean tensor, a lean-only one and a mixed one each launch the one kernel built for
 * them when the host knows the flags (the managed optimizer's steps), both when it does not
 * (fadam_step_table), and every tensor, the lean ones of a mixed table included, ends bit for bit as the
 * C reference leaves it; each instantiation leaves a table not of its kind untouched. Lion tensors
 * without an exp_avg_sq buffer: fadam_table_encode_groups takes them and they step as the reference
 * does; an AdamW tensor without one is refused with a message naming it. */
#include "../kernels/adam_step.cu"

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
enum table_kind { FP32_ONLY = 0, LEAN_ONLY = 1, MIXED = 2 };
static const char *const kind_names[3] = {"fp32_only", "lean_only", "mixed"};

struct spec {
    fadam_dtype param_dtype, grad_dtype;
    int group, master;
    fadam_moment_format moments;
    int64_t numel;
};

struct buffer {
    void *data;
    size_t bytes;
};

/* Every buffer of a model, so that two models built from the same specs copy and compare buffer by buffer. */
struct side {
    std::deque<std::vector<unsigned char>> storage;
    std::vector<buffer> buffers;
    std::vector<fadam_tensor> tensors;
};

static void *allocate(side &s, size_t bytes) {
    s.storage.emplace_back(bytes + 64);
    uintptr_t base = reinterpret_cast<uintptr_t>(s.storage.back().data());
    void *data = reinterpret_cast<void *>((base + 63) / 64 * 64); /* 16-byte aligned: the vector loops too */
    s.buffers.push_back({data, bytes});
    return data;
}

static size_t moment_bytes(fadam_moment_format f) { return f == FADAM_MOMENT_FP32 ? 4 : f == FADAM_MOMENT_BF16 ? 2 : 1; }
static int64_t blocks_of(int64_t n) { return (n + FADAM_MOMENT_BLOCK - 1) / FADAM_MOMENT_BLOCK; }


/* A tensor of every group for each dtype pair; lean ones (bf16 params: remainder or fp32 master with
 * bf16 or 8-bit moments) and fp32-state ones as the kind says, their order shuffled. */
static std::vector<spec> specs_of(table_kind kind) {
    static const fadam_dtype dtypes[3] = {FADAM_FLOAT32, FADAM_BFLOAT16, FADAM_FLOAT16};
    std::vector<spec> specs;
    for (int pd = 0; pd < 3; pd++)
        for (int gd = 0; gd < 3; gd++)
            for (int g = 0; g < 3; g++) {
                int64_t numel = 1 + (int64_t)(check_rng_next(&rng) % 2500);
                bool lean = kind == LEAN_ONLY || (kind == MIXED && check_rng_next(&rng) % 2);
                if (lean) {
                    int master = check_rng_next(&rng) % 2 ? REMAINDER : FP32_MASTER;
                    fadam_moment_format m = check_rng_next(&rng) % 2 ? FADAM_MOMENT_BF16 : FADAM_MOMENT_INT8;
                    specs.push_back({FADAM_BFLOAT16, dtypes[gd], g, master, m, numel});
                } else {
                    int master = pd == 0 ? NO_MASTER : (int)(check_rng_next(&rng) % 2);
                    specs.push_back({dtypes[pd], dtypes[gd], g, master, FADAM_MOMENT_FP32, numel});
                }
            }
    /* a mixed table with its one lean tensor last (the flag must not come from the first entry alone) */
    if (kind == MIXED) specs.push_back({FADAM_BFLOAT16, FADAM_BFLOAT16, 0, REMAINDER, FADAM_MOMENT_INT8, 777});
    for (size_t i = specs.size() - (kind == MIXED ? 1 : 0); i > 1; i--) std::swap(specs[i - 1], specs[check_rng_next(&rng) % i]);
    return specs;
}

/* Buffers as the specs say (Lion: no exp_avg_sq, no exp_avg_sq_scales), random masters, zero moments. */
static side make_side(const std::vector<spec> &specs, const std::vector<fadam_hparams> &groups, uint64_t seed) {
    side s;
    uint64_t values = seed;
    for (size_t i = 0; i < specs.size(); i++) {
        const spec &d = specs[i];
        size_t n = (size_t)d.numel;
        bool lion = groups[d.group].mode == FADAM_LION;
        fadam_tensor t;
        std::memset(&t, 0, sizeof t);
        t.numel = d.numel;
        t.param_dtype = d.param_dtype;
        t.grad_dtype = d.grad_dtype;
        t.group = d.group;
        t.moment_format = d.moments;
        t.master_format = d.master == REMAINDER ? FADAM_MASTER_REMAINDER : FADAM_MASTER_FP32;
        t.rounding_seed = seed + 0x1000 * i;
        t.param = allocate(s, n * fadam_dtype_size(d.param_dtype));
        t.grad = allocate(s, n * fadam_dtype_size(d.grad_dtype));
        if (d.master) t.master = allocate(s, n * (d.master == REMAINDER ? 2 : 4));
        t.exp_avg = allocate(s, n * moment_bytes(d.moments));
        if (!lion) t.exp_avg_sq = allocate(s, n * moment_bytes(d.moments));
        if (d.moments == FADAM_MOMENT_INT8) {
            t.exp_avg_scales = static_cast<float *>(allocate(s, (size_t)blocks_of(d.numel) * 4));
            if (!lion) t.exp_avg_sq_scales = static_cast<float *>(allocate(s, (size_t)blocks_of(d.numel) * 4));
        }
        for (int64_t k = 0; k < t.numel; k++) {
            float x = (float)check_rng_normal(&values);
            if (d.master == REMAINDER) {
                uint16_t low;
                static_cast<uint16_t *>(t.param)[k] = fadam_master_split(x, &low);
                static_cast<uint16_t *>(t.master)[k] = low;
            } else {
                if (t.master) static_cast<float *>(t.master)[k] = x;
                store_as(t.param_dtype, t.param, k, x);
            }
        }
        s.tensors.push_back(t);
    }
    return s;
}

static void fill_grads(side &a, side &b) {
    for (size_t i = 0; i < a.tensors.size(); i++)
        for (int64_t k = 0; k < a.tensors[i].numel; k++) {
            float g = (float)(1e-2 * check_rng_normal(&rng));
            store_as(a.tensors[i].grad_dtype, const_cast<void *>(a.tensors[i].grad), k, g);
            store_as(b.tensors[i].grad_dtype, const_cast<void *>(b.tensors[i].grad), k, g);
        }
}

/* The first buffer where two sides differ, or -1. */
static int64_t first_difference(const side &a, const side &b) {
    for (size_t k = 0; k < a.buffers.size(); k++)
        if (std::memcmp(a.buffers[k].data, b.buffers[k].data, a.buffers[k].bytes)) return (int64_t)k;
    return -1;
}

/* The table of `s` through the public call that knows the groups (Lion tensors lack exp_avg_sq). */
static std::vector<unsigned char> encode(const side &s, const std::vector<fadam_hparams> &groups, void **aligned) {
    size_t bytes = 0;
    CHECK(fadam_table_bytes_groups(s.tensors.data(), (int64_t)s.tensors.size(), groups.data(), (int)groups.size(),
                                   &bytes) == FADAM_SUCCESS,
          "fadam_table_bytes_groups: %s", fadam_last_error_message());
    std::vector<unsigned char> table(bytes + 16);
    *aligned = reinterpret_cast<void *>((reinterpret_cast<uintptr_t>(table.data()) + 15) / 16 * 16);
    CHECK(fadam_table_encode_groups(s.tensors.data(), (int64_t)s.tensors.size(), groups.data(), (int)groups.size(),
                                    *aligned, bytes) == FADAM_SUCCESS,
          "fadam_table_encode_groups: %s", fadam_last_error_message());
    return table;
}

static fadam_step_kernel_args args_for(const void *table, const std::vector<fadam_hparams> &groups, int64_t step,
                                       uint32_t table_flags) {
    fadam_step_kernel_args args;
    std::memset(&args, 0, sizeof args);
    args.table = static_cast<const fadam_table_header *>(table);
    args.step = step;
    args.n_groups = (int32_t)groups.size();
    args.table_flags = table_flags;
    std::memcpy(args.groups, groups.data(), groups.size() * sizeof(fadam_hparams));
    return args;
}

/* The encoder sets FADAM_TABLE_LEAN exactly when some entry is lean, wherever it sits. */
static void test_header_flag() {
    const char *name = "header_flag_lean_set_by_encoder_from_every_entry";
    check_case_begin();
    std::vector<fadam_hparams> groups = rule_groups();
    for (int kind = 0; kind < 3; kind++) {
        std::vector<spec> specs = specs_of((table_kind)kind);
        side s = make_side(specs, groups, 1);
        void *table = NULL;
        std::vector<unsigned char> storage = encode(s, groups, &table);
        const fadam_table_header *h = static_cast<const fadam_table_header *>(table);
        bool any_lean = false;
        for (const fadam_tensor &t : s.tensors) any_lean |= fadam_tensor_is_lean(&t) != 0;
        CHECK(h->magic == FADAM_TABLE_MAGIC, "%s: magic %llx", kind_names[kind], (unsigned long long)h->magic);
        CHECK((h->flags == FADAM_TABLE_LEAN) == any_lean && (h->flags & ~FADAM_TABLE_LEAN) == 0,
              "%s: flags %#x for a table %s a lean tensor", kind_names[kind], h->flags, any_lean ? "with" : "without");
        CHECK(h->reserved[0] == 0 && h->reserved[1] == 0 && h->reserved[2] == 0, "%s: reserved not zero", kind_names[kind]);
        CHECK(fadam_table_known_flags(table) == (h->flags | FADAM_TABLE_KNOWN), "%s: known flags %#x", kind_names[kind],
              fadam_table_known_flags(table));
    }
    side empty;
    void *table = NULL;
    std::vector<unsigned char> storage = encode(empty, groups, &table);
    CHECK(static_cast<const fadam_table_header *>(table)->flags == 0, "empty table: flags %#x",
          static_cast<const fadam_table_header *>(table)->flags);
    check_case_end(name);
}

/* Three steps of each kind of table with the flags known (one kernel: the one built for the table) and
 * unknown (both, as fadam_step_table launches them): every buffer as the reference leaves it. */
static void test_kinds() {
    const char *name = "each_table_kind_runs_its_instantiation_bitwise_reference";
    check_case_begin();
    std::vector<fadam_hparams> groups = rule_groups();
    const unsigned fp32 = 1u << FADAM_STEP_KERNEL_FP32, lean = 1u << FADAM_STEP_KERNEL_LEAN;
    for (int kind = 0; kind < 3; kind++)
        for (int known = 0; known < 2; known++) {
            std::vector<spec> specs = specs_of((table_kind)kind);
            uint64_t seed = check_rng_next(&rng);
            side kernel_side = make_side(specs, groups, seed), reference = make_side(specs, groups, seed);
            void *table = NULL;
            std::vector<unsigned char> storage = encode(kernel_side, groups, &table);
            uint32_t flags = known ? fadam_table_known_flags(table) : 0;
            unsigned expected = !known ? fp32 | lean : kind == FP32_ONLY ? fp32 : lean;
            for (int64_t step = 1; step <= 3; step++) {
                fill_grads(kernel_side, reference);
                fadam_step_kernel_args args = args_for(table, groups, step, flags);
                CHECK(fadam_adam_step_kernels(flags) == expected, "%s known=%d: kernels %#x, expected %#x",
                      kind_names[kind], known, fadam_adam_step_kernels(flags), expected);
                emul_set_thread_order(EMUL_ORDER_SHUFFLED, check_rng_next(&rng));
                CHECK(fadam_launch_adam_step(&args, 3, 64, NULL) == cudaSuccess, "launch: %s", emul_last_failure_message());
                CHECK(fadam_emul_step_kernels_launched == expected, "%s known=%d: launched %#x, expected %#x",
                      kind_names[kind], known, fadam_emul_step_kernels_launched, expected);
                run_reference(reference.tensors, groups, step, NULL);
            }
            int64_t k = first_difference(kernel_side, reference);
            CHECK(k < 0, "%s known=%d: buffer %lld differs from the reference after 3 steps", kind_names[kind], known,
                  (long long)k);
        }
    check_case_end(name);
}

/* Each instantiation alone on a table not of its kind changes nothing: the header flag decides, so the
 * pair launched by fadam_step_table never updates a tensor twice. */
static void test_wrong_kind_untouched() {
    const char *name = "instantiation_leaves_a_table_not_of_its_kind_untouched";
    check_case_begin();
    std::vector<fadam_hparams> groups = rule_groups();
    const struct {
        table_kind kind;
        int kernel;
    } cases[] = {{MIXED, FADAM_STEP_KERNEL_FP32}, {LEAN_ONLY, FADAM_STEP_KERNEL_FP32}, {FP32_ONLY, FADAM_STEP_KERNEL_LEAN}};
    for (const auto &c : cases) {
        std::vector<spec> specs = specs_of(c.kind);
        side s = make_side(specs, groups, 7), before = make_side(specs, groups, 7);
        fill_grads(s, before);
        void *table = NULL;
        std::vector<unsigned char> storage = encode(s, groups, &table);
        fadam_step_kernel_args args = args_for(table, groups, 1, fadam_table_known_flags(table));
        CHECK(fadam_launch_adam_step_kernel(&args, c.kernel, 3, 64, NULL) == cudaSuccess, "launch: %s",
              emul_last_failure_message());
        CHECK(first_difference(s, before) < 0, "kernel %d changed a %s table", c.kernel, kind_names[c.kind]);
    }
    check_case_end(name);
}

/* Lion tensors without exp_avg_sq through the table (issue: the table wanted a 4 B/param buffer that
 * Lion never touches); the plain encoder, which knows no rule, still takes both states of every tensor. */
static void test_lion_without_second_moment() {
    const char *name = "lion_table_without_exp_avg_sq_encodes_and_steps";
    check_case_begin();
    std::vector<fadam_hparams> lion(1, fadam_hparams_default_lion());
    lion[0].lr = 1e-3f;
    std::vector<spec> specs = {{FADAM_FLOAT32, FADAM_FLOAT32, 0, NO_MASTER, FADAM_MOMENT_FP32, 1000},
                               {FADAM_BFLOAT16, FADAM_BFLOAT16, 0, FP32_MASTER, FADAM_MOMENT_FP32, 333},
                               {FADAM_BFLOAT16, FADAM_FLOAT32, 0, REMAINDER, FADAM_MOMENT_INT8, 600},
                               {FADAM_FLOAT16, FADAM_BFLOAT16, 0, FP32_MASTER, FADAM_MOMENT_BF16, 257}};
    side kernel_side = make_side(specs, lion, 3), reference = make_side(specs, lion, 3);
    void *table = NULL;
    std::vector<unsigned char> storage = encode(kernel_side, lion, &table);
    for (int64_t step = 1; step <= 3; step++) {
        fill_grads(kernel_side, reference);
        fadam_step_kernel_args args = args_for(table, lion, step, step == 2 ? 0 : fadam_table_known_flags(table));
        CHECK(fadam_launch_adam_step(&args, 2, 64, NULL) == cudaSuccess, "launch: %s", emul_last_failure_message());
        run_reference(reference.tensors, lion, step, NULL);
    }
    CHECK(first_difference(kernel_side, reference) < 0, "Lion without exp_avg_sq: differs from the reference");
    size_t bytes = 0;
    CHECK(fadam_table_bytes(kernel_side.tensors.data(), 4, 1, &bytes) == FADAM_ERR_NULL_POINTER &&
              std::strstr(fadam_last_error_message(), "exp_avg_sq"),
          "fadam_table_bytes (no rules) took a NULL exp_avg_sq: %s", fadam_last_error_message());
    check_case_end(name);
}

/* A rule that keeps exp_avg_sq refuses a tensor without it, naming the tensor; a Lion tensor given one
 * is refused too (as fadam_cpu_step does), and a failed encode leaves the caller's table as it was. */
static void test_adamw_without_second_moment_refused() {
    const char *name = "adamw_tensor_without_exp_avg_sq_refused_naming_it";
    check_case_begin();
    std::vector<fadam_hparams> groups = rule_groups();
    std::vector<spec> specs = specs_of(MIXED);
    side s = make_side(specs, groups, 5);
    int64_t victim = -1;
    for (size_t i = 0; i < s.tensors.size() && victim < 0; i++)
        if (i > 0 && groups[s.tensors[i].group].mode == FADAM_ADAMW) victim = (int64_t)i;
    char needle[64];
    std::snprintf(needle, sizeof needle, "tensor %lld: exp_avg_sq is NULL", (long long)victim);
    std::vector<fadam_tensor> broken = s.tensors;
    broken[(size_t)victim].exp_avg_sq = NULL;
    broken[(size_t)victim].exp_avg_sq_scales = NULL;
    size_t bytes = 12345;
    CHECK(fadam_table_bytes_groups(broken.data(), (int64_t)broken.size(), groups.data(), 3, &bytes) ==
              FADAM_ERR_NULL_POINTER,
          "bytes: an AdamW tensor without exp_avg_sq was accepted");
    CHECK(std::strstr(fadam_last_error_message(), needle) && std::strstr(fadam_last_error_message(), "adamw"),
          "bytes: message lacks \"%s\" and the rule: %s", needle, fadam_last_error_message());
    CHECK(fadam_last_error_tensor() == victim, "bytes: fadam_last_error_tensor %lld, expected %lld",
          (long long)fadam_last_error_tensor(), (long long)victim);
    CHECK(bytes == 12345, "bytes: written by a failed call");
    std::vector<unsigned char> table(fadam_table_size((int64_t)broken.size()) + 16, 0xA5);
    void *aligned = reinterpret_cast<void *>((reinterpret_cast<uintptr_t>(table.data()) + 15) / 16 * 16);
    std::vector<unsigned char> copy = table;
    CHECK(fadam_table_encode_groups(broken.data(), (int64_t)broken.size(), groups.data(), 3, aligned,
                                    fadam_table_size((int64_t)broken.size())) == FADAM_ERR_NULL_POINTER &&
              std::strstr(fadam_last_error_message(), needle) && fadam_last_error_tensor() == victim,
          "encode: %s", fadam_last_error_message());
    CHECK(table == copy, "encode: a failed call wrote the table");
    /* a Lion tensor given an exp_avg_sq */
    broken = s.tensors;
    for (size_t i = 0; i < broken.size(); i++)
        if (groups[broken[i].group].mode == FADAM_LION && broken[i].moment_format == FADAM_MOMENT_FP32) {
            broken[i].exp_avg_sq = allocate(s, (size_t)broken[i].numel * 4);
            std::snprintf(needle, sizeof needle, "tensor %lld: exp_avg_sq must be NULL", (long long)i);
            break;
        }
    fadam_status status = fadam_table_bytes_groups(broken.data(), (int64_t)broken.size(), groups.data(), 3, &bytes);
    CHECK(status == FADAM_ERR_INVALID_VALUE && std::strstr(fadam_last_error_message(), needle),
          "a Lion tensor with exp_avg_sq: status %d, %s", (int)status, fadam_last_error_message());
    /* groups: NULL, or a bad mode */
    CHECK(fadam_table_bytes_groups(s.tensors.data(), (int64_t)s.tensors.size(), NULL, 3, &bytes) ==
              FADAM_ERR_NULL_POINTER,
          "NULL groups accepted");
    std::vector<fadam_hparams> bad = groups;
    bad[2].mode = (fadam_mode)7;
    CHECK(fadam_table_bytes_groups(s.tensors.data(), (int64_t)s.tensors.size(), bad.data(), 3, &bytes) ==
              FADAM_ERR_INVALID_VALUE,
          "mode 7 accepted");
    check_case_end(name);
}

int main() {
    rng = check_seed("test_step_kernels");
    test_header_flag();
    test_kinds();
    test_wrong_kind_untouched();
    test_lion_without_second_moment();
    test_adamw_without_second_moment_refused();
    return check_exit_code();
}
