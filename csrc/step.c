/* step.c - the managed optimizer's step entry points: fadam_step and fadam_step_from, one launch on
 * the CUDA device or the CPU path's threads (the fused step is in fused_step.c). */
#include <string.h>

#include <cuda_runtime.h>

#include "internal.h"
#include "launchers.h"
#include "nvtx_ranges.h"
#include "optimizer_internal.h"

static fadam_status run_step(fadam_optimizer *opt, const fadam_step_source *source, fadam_stream stream,
                             const char *function) {
    fadam_status status;
    if (opt->device == FADAM_DEVICE_CPU) {
        return fadam_cpu_update_all(opt->cpu_pool, opt->tensors, opt->n_tensors, opt->groups, opt->n_groups, source,
                                    NULL, function);
    } else {
        fadam_step_kernel_args args;
        int previous_device = 0;
        if ((status = fadam_check_step_source(source, function)) != FADAM_SUCCESS) return status;
        memset(&args, 0, sizeof args);
        args.table = (const fadam_table_header *)opt->device_table;
        args.device_step = source->device_step;
        args.device_lr = source->device_lr;
        args.step = source->step;
        args.n_groups = opt->n_groups;
        args.table_flags = opt->table_flags; /* the kernel built for this table (fadam_adam_step_kernels) */
        memcpy(args.groups, opt->groups, (size_t)opt->n_groups * sizeof(fadam_hparams));
        if ((status = fadam_cuda_enter_device(opt->cuda_device, &previous_device)) != FADAM_SUCCESS) return status;
        status = fadam_cuda_launch_step(&args, opt->step_grids, (cudaStream_t)stream);
        fadam_cuda_leave_device(opt->cuda_device, previous_device);
        return status;
    }
}

fadam_status fadam_step(fadam_optimizer *opt, fadam_stream stream) {
    fadam_step_source source;
    fadam_status status;
    fadam_clear_error();
    FADAM_REQUIRE_NOT_NULL(opt, "fadam_step");
    if ((status = fadam_require_finalized(opt, "fadam_step")) != FADAM_SUCCESS) return status;
    if (opt->step == INT64_MAX) /* t + 1 would overflow */
        return fadam_fail(FADAM_ERR_BAD_STATE, "fadam_step: the step counter is at INT64_MAX and cannot advance");
    memset(&source, 0, sizeof source);
    source.step = opt->step + 1;
    FADAM_RANGE_PUSH("step");
    status = run_step(opt, &source, stream, "fadam_step");
    FADAM_RANGE_POP();
    if (status == FADAM_SUCCESS) opt->step++; /* a failed launch took no step */
    return status;
}

fadam_status fadam_step_from(fadam_optimizer *opt, const fadam_step_source *source, fadam_stream stream) {
    fadam_status status;
    fadam_clear_error();
    FADAM_REQUIRE_NOT_NULL(opt, "fadam_step_from");
    FADAM_REQUIRE_NOT_NULL(source, "fadam_step_from");
    if ((status = fadam_require_finalized(opt, "fadam_step_from")) != FADAM_SUCCESS) return status;
    FADAM_RANGE_PUSH("step_from");
    status = run_step(opt, source, stream, "fadam_step_from");
    FADAM_RANGE_POP();
    return status;
}

