/* emulated_runs.h - one step over a list of tensors three ways, for the emulated tests that compare
 * them bit for bit: the kernel's own source run on the CPU (tests/emul), the CPU path (1 or more
 * threads) and the C reference. Included by a test after the kernel file and its `static uint64_t rng`
 * (the emulated threads' order is drawn from it). */
#ifndef FADAM_TEST_EMULATED_RUNS_H
#define FADAM_TEST_EMULATED_RUNS_H

#include <cstring>
#include <vector>

/* Three groups, one per rule: AdamW (group 0), Lion (1) and Adam + L2 with maximize (2), the tensors'
 * group indices in the tests that mix every rule in one launch. */
static std::vector<fadam_hparams> rule_groups() {
    std::vector<fadam_hparams> groups;
    fadam_hparams adamw = fadam_hparams_default();
    adamw.weight_decay = 0.1f;
    groups.push_back(adamw);
    fadam_hparams lion = fadam_hparams_default_lion();
    lion.lr = 1e-3f;
    lion.weight_decay = 0.1f;
    groups.push_back(lion);
    fadam_hparams l2 = fadam_hparams_default();
    l2.mode = FADAM_ADAM_L2;
    l2.weight_decay = 0.01f;
    l2.maximize = 1;
    groups.push_back(l2);
    return groups;
}

/* The emulated kernel over the tensors. A functional table takes every state field, so a Lion tensor's
 * exp_avg_sq (and its 8-bit scales) gets a buffer here that the kernel never touches. */
static void run_kernel(const std::vector<fadam_tensor> &tensors, const std::vector<fadam_hparams> &groups,
                       int64_t step, const float *multiplier) {
    std::vector<fadam_tensor> table_tensors = tensors;
    std::vector<std::vector<float>> unused;
    for (fadam_tensor &t : table_tensors)
        if (!t.exp_avg_sq) {
            unused.emplace_back((size_t)t.numel + 4);
            t.exp_avg_sq = unused.back().data();
            if (t.moment_format == FADAM_MOMENT_INT8) {
                unused.emplace_back((size_t)(t.numel / FADAM_MOMENT_BLOCK + 1));
                t.exp_avg_sq_scales = unused.back().data();
            }
        }
    std::vector<unsigned char> table(fadam_table_size((int64_t)table_tensors.size()) + 16);
    void *aligned = reinterpret_cast<void *>((reinterpret_cast<uintptr_t>(table.data()) + 15) / 16 * 16);
    CHECK(fadam_table_check(table_tensors.data(), (int64_t)table_tensors.size(), (int)groups.size(), "test") ==
              FADAM_SUCCESS,
          "%s", fadam_last_error_message());
    fadam_table_fill(table_tensors.data(), (int64_t)table_tensors.size(), (int)groups.size(), 1024, aligned);
    fadam_step_kernel_args args;
    std::memset(&args, 0, sizeof args);
    args.table = static_cast<const fadam_table_header *>(aligned);
    args.step = step;
    args.n_groups = (int32_t)groups.size();
    args.grad_multiplier = multiplier;
    std::memcpy(args.groups, groups.data(), groups.size() * sizeof(fadam_hparams));
    emul_set_thread_order(EMUL_ORDER_SHUFFLED, check_rng_next(&rng));
    CHECK(fadam_launch_adam_step(&args, 3, 64, NULL) == cudaSuccess, "launch: %s", emul_last_failure_message());
}

/* The CPU path on `threads` threads (a pool when more than 1). */
static void run_cpu(std::vector<fadam_tensor> &tensors, const std::vector<fadam_hparams> &groups, int64_t step,
                    int threads, const float *multiplier) {
    fadam_cpu_pool *pool = NULL;
    fadam_step_source source = {step, NULL, NULL};
    fadam_step_scaling scaling;
    std::memset(&scaling, 0, sizeof scaling);
    scaling.grad_multiplier = multiplier;
    if (threads > 1) CHECK(fadam_cpu_pool_create(&pool, threads) == FADAM_SUCCESS, "%s", fadam_last_error_message());
    CHECK(fadam_cpu_step_scaled(pool, tensors.data(), (int64_t)tensors.size(), groups.data(), (int)groups.size(),
                                &source, &scaling) == FADAM_SUCCESS,
          "cpu step: %s", fadam_last_error_message());
    fadam_cpu_pool_destroy(pool);
}

/* The reference's element loop, tensor by tensor (fadam_reference_update). */
static void run_reference(std::vector<fadam_tensor> &tensors, const std::vector<fadam_hparams> &groups, int64_t step,
                          const float *multiplier) {
    for (fadam_tensor &t : tensors) {
        fadam_group_scalars scalars = fadam_compute_group_scalars(&groups[t.group], groups[t.group].lr, step);
        if (multiplier) scalars.grad_scale = scalars.grad_scale * *multiplier;
        fadam_reference_update(&t, &scalars, step);
    }
}

#endif
