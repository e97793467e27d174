/* fused_step.c - the whole step on the device (or the CPU): global gradient norm, clipping,
 * loss-scale unscaling with overflow skip, schedule; no host synchronization, capturable in a graph. */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime.h>

#include "internal.h"
#include "launchers.h"
#include "nvtx_ranges.h"
#include "optimizer_internal.h"


static fadam_status check_config(const fadam_fused_step_config *c) {
    const char *f = "fadam_configure_fused_step";
    if (!fadam_is_finite(c->max_grad_norm) || c->max_grad_norm < 0.0f)
        return fadam_fail(FADAM_ERR_INVALID_VALUE, "%s: max_grad_norm=%g must be finite and >= 0 (0: no clipping)", f,
                          c->max_grad_norm);
    if (c->dynamic_loss_scaling != 0 && c->dynamic_loss_scaling != 1)
        return fadam_fail(FADAM_ERR_INVALID_VALUE, "%s: dynamic_loss_scaling=%d must be 0 or 1", f,
                          c->dynamic_loss_scaling);
    if (c->dynamic_loss_scaling) {
        if (!fadam_is_finite(c->initial_loss_scale) || c->initial_loss_scale <= 0.0f)
            return fadam_fail(FADAM_ERR_INVALID_VALUE, "%s: initial_loss_scale=%g must be finite and > 0", f,
                              c->initial_loss_scale);
        if (!fadam_is_finite(c->growth_factor) || c->growth_factor <= 1.0f)
            return fadam_fail(FADAM_ERR_INVALID_VALUE, "%s: growth_factor=%g must be > 1", f, c->growth_factor);
        if (!(c->backoff_factor > 0.0f && c->backoff_factor < 1.0f))
            return fadam_fail(FADAM_ERR_INVALID_VALUE, "%s: backoff_factor=%g must be in (0, 1)", f, c->backoff_factor);
        /* good_steps counts up to growth_interval in an int32. */
        if (c->growth_interval < 1 || c->growth_interval > INT32_MAX)
            return fadam_fail(FADAM_ERR_INVALID_VALUE, "%s: growth_interval=%lld must be in [1, 2^31-1]", f,
                              (long long)c->growth_interval);
        /* 2^-126: every scale from there up has a finite float reciprocal, which the unscaling needs. */
        if (!fadam_is_finite(c->min_loss_scale) || c->min_loss_scale < FLT_MIN ||
            c->min_loss_scale > c->initial_loss_scale)
            return fadam_fail(FADAM_ERR_INVALID_VALUE,
                              "%s: min_loss_scale=%g must be in [2^-126, initial_loss_scale=%g] (the default is 1)", f,
                              c->min_loss_scale, c->initial_loss_scale);
    }
    if (c->schedule != FADAM_SCHEDULE_CONSTANT && c->schedule != FADAM_SCHEDULE_WARMUP_COSINE)
        return fadam_fail(FADAM_ERR_INVALID_VALUE, "%s: schedule=%d is not a fadam_schedule_kind", f, (int)c->schedule);
    if (c->schedule == FADAM_SCHEDULE_WARMUP_COSINE) {
        if (c->warmup_steps < 0 || c->total_steps <= c->warmup_steps)
            return fadam_fail(FADAM_ERR_INVALID_VALUE, "%s: need 0 <= warmup_steps (%lld) < total_steps (%lld)", f,
                              (long long)c->warmup_steps, (long long)c->total_steps);
        if (!(c->min_lr_ratio >= 0.0f && c->min_lr_ratio <= 1.0f))
            return fadam_fail(FADAM_ERR_INVALID_VALUE, "%s: min_lr_ratio=%g must be in [0, 1]", f, c->min_lr_ratio);
    }
    return FADAM_SUCCESS;
}

fadam_status fadam_configure_fused_step(fadam_optimizer *opt, const fadam_fused_step_config *config) {
    fadam_status status;
    fadam_clear_error();
    FADAM_REQUIRE_NOT_NULL(opt, "fadam_configure_fused_step");
    FADAM_REQUIRE_NOT_NULL(config, "fadam_configure_fused_step");
    if (opt->finalized)
        return fadam_fail(FADAM_ERR_BAD_STATE, "fadam_configure_fused_step: call it before fadam_finalize, which "
                                               "allocates the fused step's state");
    if ((status = check_config(config)) != FADAM_SUCCESS) return status;
    opt->fused_config = *config;
    opt->fused_configured = 1;
    return FADAM_SUCCESS;
}

fadam_status fadam_fused_state_create(fadam_optimizer *opt, cudaStream_t stream) {
    fadam_device_state initial;
    size_t partial_bytes;
    if (!opt->fused_configured) return FADAM_SUCCESS;
    memset(&initial, 0, sizeof initial);
    initial.counters.step = opt->step;
    initial.counters.clip_coef = 1.0f;
    initial.counters.lr_scale = 1.0f;
    initial.counters.loss_scale = opt->fused_config.dynamic_loss_scaling ? opt->fused_config.initial_loss_scale : 1.0f;
    initial.grad_scale = 1.0f;
    /* The chunks' partial sums, then the groups' scalars that the norm kernel computes for the update. */
    partial_bytes = (size_t)(opt->n_chunks > 0 ? opt->n_chunks : 1) * sizeof(double) +
                    FADAM_MAX_GROUPS * sizeof(fadam_group_scalars) + FADAM_FUSED_REDUCE_COUNT * sizeof(double);
    opt->fused_state = (fadam_device_state *)fadam_optimizer_alloc(opt, sizeof initial);
    opt->chunk_partials = (double *)fadam_optimizer_alloc(opt, partial_bytes);
    if (!opt->fused_state || !opt->chunk_partials) {
        fadam_fused_state_free(opt);
        return fadam_fail(FADAM_ERR_OUT_OF_MEMORY, "fadam_finalize: cannot allocate the fused step's state");
    }
    if (opt->device == FADAM_DEVICE_CPU) {
        *opt->fused_state = initial;
        return FADAM_SUCCESS;
    }
    /* finalize waits for the stream before `initial` goes out of scope. */
    FADAM_CUDA_CHECK(cudaMemcpyAsync(opt->fused_state, &initial, sizeof initial, cudaMemcpyHostToDevice, stream));
    FADAM_CUDA_CHECK(cudaStreamSynchronize(stream));
    return FADAM_SUCCESS;
}

void fadam_fused_state_free(fadam_optimizer *opt) {
    fadam_optimizer_free(opt, opt->fused_state);
    fadam_optimizer_free(opt, opt->chunk_partials);
    opt->fused_state = NULL;
    opt->chunk_partials = NULL;
}

static fadam_status require_fused(const fadam_optimizer *opt, const char *function) {
    if (!opt->finalized || !opt->fused_configured)
        return fadam_fail(FADAM_ERR_BAD_STATE, "%s: needs fadam_configure_fused_step, then fadam_finalize", function);
    return FADAM_SUCCESS;
}

/* Where the norm kernel leaves the groups' scalars: after the chunks' partials (fadam_fused_state_create). */
static fadam_group_scalars *device_group_scalars(const fadam_optimizer *opt) {
    return (fadam_group_scalars *)(opt->chunk_partials + (opt->n_chunks > 0 ? opt->n_chunks : 1));
}

/* The split step's [sum of squares, non-finite flag]: after the groups' scalars (8-byte aligned: the
 * scalars are 13 four-byte fields times FADAM_MAX_GROUPS, an even count). */
static double *reduce_buffer(const fadam_optimizer *opt) {
    return (double *)(device_group_scalars(opt) + FADAM_MAX_GROUPS);
}

static void fill_norm_args(const fadam_optimizer *opt, fadam_norm_kernel_args *norm) {
    memset(norm, 0, sizeof *norm);
    norm->table = (const fadam_table_header *)opt->device_table;
    norm->chunk_partials = opt->chunk_partials;
    norm->state = opt->fused_state;
    norm->scalars_out = device_group_scalars(opt);
    norm->config = opt->fused_config;
    norm->n_groups = opt->n_groups;
    memcpy(norm->groups, opt->groups, (size_t)opt->n_groups * sizeof(fadam_hparams));
}

static fadam_status launch_update(const fadam_optimizer *opt, cudaStream_t stream) {
    fadam_step_kernel_args args;
    memset(&args, 0, sizeof args);
    args.table = (const fadam_table_header *)opt->device_table;
    args.state = opt->fused_state;
    args.device_scalars = device_group_scalars(opt);
    args.step = 1; /* unused: the state's step wins */
    args.n_groups = opt->n_groups;
    args.table_flags = opt->table_flags; /* the kernel built for this table, chosen at capture time too */
    memcpy(args.groups, opt->groups, (size_t)opt->n_groups * sizeof(fadam_hparams));
    return fadam_cuda_launch_step(&args, opt->step_grids, stream);
}

/* The fused step whole, or one side of the caller's all-reduce of reduce_buffer (data parallelism). */
typedef enum fused_part { FUSED_WHOLE, FUSED_BEGIN, FUSED_END } fused_part;

static fadam_status fused_cpu(fadam_optimizer *opt, fused_part part, const char *function) {
    double *reduced = reduce_buffer(opt);
    fadam_step_source source = {1, NULL, NULL};
    double sum;
    if (part == FUSED_END) {
        sum = reduced[0];
        /* Any rank's Inf/NaN skips the step everywhere (fused_decide_kernel does the same). */
        if (reduced[1] != 0.0 && sum == sum) sum = HUGE_VAL;
    } else {
        /* Always: the Inf/NaN skip and grad_norm hold in every configuration. */
        sum = fadam_cpu_sum_of_squares(opt->cpu_pool, opt->tensors, opt->n_tensors);
    }
    if (part == FUSED_BEGIN) {
        reduced[0] = sum;
        reduced[1] = sum <= 1.0e308 ? 0.0 : 1.0;
        return FADAM_SUCCESS;
    }
    fadam_decide_step(opt->fused_state, &opt->fused_config, sum);
    return fadam_cpu_update_all(opt->cpu_pool, opt->tensors, opt->n_tensors, opt->groups, opt->n_groups, &source,
                                opt->fused_state, function);
}

static fadam_status fused_cuda(fadam_optimizer *opt, fused_part part, cudaStream_t stream) {
    fadam_norm_kernel_args norm;
    fill_norm_args(opt, &norm);
    if (part != FUSED_WHOLE) norm.reduce_buffer = reduce_buffer(opt);
    if (part == FUSED_END) {
        FADAM_CUDA_CHECK(fadam_launch_fused_decide(&norm, stream));
    } else {
        FADAM_CUDA_CHECK(
            fadam_launch_grad_norm(&norm, opt->grid_blocks > 0 ? opt->grid_blocks : 1, FADAM_BLOCK_THREADS, stream));
    }
    return part == FUSED_BEGIN ? FADAM_SUCCESS : launch_update(opt, stream);
}

static fadam_status run_fused(fadam_optimizer *opt, fused_part part, fadam_stream stream, const char *function) {
    fadam_status status;
    int previous_device = 0;
    if ((status = require_fused(opt, function)) != FADAM_SUCCESS) return status;
    if (opt->device == FADAM_DEVICE_CPU) return fused_cpu(opt, part, function);
    if ((status = fadam_cuda_enter_device(opt->cuda_device, &previous_device)) != FADAM_SUCCESS) return status;
    status = fused_cuda(opt, part, (cudaStream_t)stream);
    fadam_cuda_leave_device(opt->cuda_device, previous_device);
    return status;
}

fadam_status fadam_fused_step(fadam_optimizer *opt, fadam_stream stream) {
    fadam_status status;
    fadam_clear_error();
    FADAM_REQUIRE_NOT_NULL(opt, "fadam_fused_step");
    FADAM_RANGE_PUSH("fused_step");
    status = run_fused(opt, FUSED_WHOLE, stream, "fadam_fused_step");
    FADAM_RANGE_POP();
    return status;
}

/* ---- the step split around the caller's all-reduce (data parallelism) ---- */

fadam_status fadam_fused_step_reduce_buffer(const fadam_optimizer *opt, double **buffer, int *count) {
    fadam_status status;
    fadam_clear_error();
    FADAM_REQUIRE_NOT_NULL(opt, "fadam_fused_step_reduce_buffer");
    FADAM_REQUIRE_NOT_NULL(buffer, "fadam_fused_step_reduce_buffer");
    if ((status = require_fused(opt, "fadam_fused_step_reduce_buffer")) != FADAM_SUCCESS) return status;
    *buffer = reduce_buffer(opt);
    if (count) *count = FADAM_FUSED_REDUCE_COUNT;
    return FADAM_SUCCESS;
}

fadam_status fadam_fused_step_begin(fadam_optimizer *opt, fadam_stream stream) {
    fadam_status status;
    fadam_clear_error();
    FADAM_REQUIRE_NOT_NULL(opt, "fadam_fused_step_begin");
    FADAM_RANGE_PUSH("fused_step_begin");
    status = run_fused(opt, FUSED_BEGIN, stream, "fadam_fused_step_begin");
    FADAM_RANGE_POP();
    return status;
}

fadam_status fadam_fused_step_end(fadam_optimizer *opt, fadam_stream stream) {
    fadam_status status;
    fadam_clear_error();
    FADAM_REQUIRE_NOT_NULL(opt, "fadam_fused_step_end");
    FADAM_RANGE_PUSH("fused_step_end");
    status = run_fused(opt, FUSED_END, stream, "fadam_fused_step_end");
    FADAM_RANGE_POP();
    return status;
}

fadam_status fadam_step_counters_pointer(const fadam_optimizer *opt, const fadam_step_counters **counters) {
    fadam_status status;
    fadam_clear_error();
    FADAM_REQUIRE_NOT_NULL(opt, "fadam_step_counters_pointer");
    FADAM_REQUIRE_NOT_NULL(counters, "fadam_step_counters_pointer");
    if ((status = require_fused(opt, "fadam_step_counters_pointer")) != FADAM_SUCCESS) return status;
    *counters = &opt->fused_state->counters;
    return FADAM_SUCCESS;
}

fadam_status fadam_read_step_counters(const fadam_optimizer *opt, fadam_step_counters *host_out, fadam_stream stream) {
    fadam_status status;
    int previous_device = 0;
    fadam_clear_error();
    FADAM_REQUIRE_NOT_NULL(opt, "fadam_read_step_counters");
    FADAM_REQUIRE_NOT_NULL(host_out, "fadam_read_step_counters");
    if ((status = require_fused(opt, "fadam_read_step_counters")) != FADAM_SUCCESS) return status;
    if (opt->device == FADAM_DEVICE_CPU) {
        *host_out = opt->fused_state->counters;
        return FADAM_SUCCESS;
    }
    if ((status = fadam_cuda_enter_device(opt->cuda_device, &previous_device)) != FADAM_SUCCESS) return status;
    status = FADAM_CUDA_STATUS(cudaMemcpyAsync(host_out, &opt->fused_state->counters, sizeof *host_out,
                                               cudaMemcpyDeviceToHost, (cudaStream_t)stream));
    fadam_cuda_leave_device(opt->cuda_device, previous_device);
    return status;
}
