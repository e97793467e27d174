/* cuda_runtime_calls.c - the host side's CUDA plumbing: error messages, device selection, device
 * count, and the functional step's launch. Every CUDA runtime call of csrc/ goes through
 * FADAM_CUDA_CHECK so a failure names the call, its error and the line. */
#include <cuda_runtime.h>

#include "internal.h"
#include "launchers.h"
#include "nvtx_ranges.h"

fadam_status fadam_cuda_fail(int cuda_error, const char *call, const char *file, int line) {
    cudaError_t error = (cudaError_t)cuda_error;
    fadam_status status = error == cudaErrorMemoryAllocation ? FADAM_ERR_OUT_OF_MEMORY
                          : (error == cudaErrorNoDevice || error == cudaErrorInsufficientDriver) ? FADAM_ERR_NO_DEVICE
                                                                                                  : FADAM_ERR_CUDA;
    /* Clear the sticky "last error" for the caller's later checks, as a handled error should be. */
    (void)cudaGetLastError();
    return fadam_fail(status, "%s failed: %s (%s) at %s:%d", call, cudaGetErrorString(error), cudaGetErrorName(error),
                      file, line);
}

int fadam_cuda_device_count(void) {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return count;
}

fadam_status fadam_cuda_enter_device(int device, int *previous_device) {
    FADAM_CUDA_CHECK(cudaGetDevice(previous_device));
    if (*previous_device != device) FADAM_CUDA_CHECK(cudaSetDevice(device));
    return FADAM_SUCCESS;
}

void fadam_cuda_leave_device(int device, int previous_device) {
    if (previous_device != device) (void)cudaSetDevice(previous_device);
}

FADAM_STATIC_ASSERT(FADAM_STEP_GRIDS == FADAM_STEP_KERNEL_COUNT, "one grid per step kernel instantiation");

fadam_status fadam_cuda_step_grids(int64_t n_chunks, int device, unsigned grids[FADAM_STEP_GRIDS]) {
    int sm_count = 0, k;
    FADAM_CUDA_CHECK(cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, device));
    for (k = 0; k < FADAM_STEP_GRIDS; k++) {
        /* One wave: as many blocks as are resident at once (the occupancy API, for this instantiation's
         * registers); more would queue behind them and redo their setup. */
        int blocks_per_sm = 0;
        int64_t persistent;
        FADAM_CUDA_CHECK(fadam_adam_step_blocks_per_sm(k, FADAM_BLOCK_THREADS, &blocks_per_sm));
        if (blocks_per_sm < 1) blocks_per_sm = 1;
        persistent = (int64_t)sm_count * blocks_per_sm;
        grids[k] = (unsigned)(n_chunks < persistent ? n_chunks : persistent);
    }
    return FADAM_SUCCESS;
}

unsigned fadam_step_grid_for(const unsigned grids[FADAM_STEP_GRIDS], uint32_t table_flags) {
    return grids[table_flags & FADAM_TABLE_LEAN ? FADAM_STEP_KERNEL_LEAN : FADAM_STEP_KERNEL_FP32];
}

fadam_status fadam_cuda_launch_step(const fadam_step_kernel_args *args, const unsigned grids[FADAM_STEP_GRIDS],
                                    cudaStream_t stream) {
    const unsigned kernels = fadam_adam_step_kernels(args->table_flags);
    int k;
    for (k = 0; k < FADAM_STEP_GRIDS; k++)
        if (kernels & 1u << k)
            FADAM_CUDA_CHECK(fadam_launch_adam_step_kernel(args, k, grids[k], FADAM_BLOCK_THREADS, stream));
    return FADAM_SUCCESS;
}

fadam_status fadam_step_table(const void *device_table, const fadam_hparams *groups, int n_groups,
                              const fadam_step_source *source, fadam_stream stream) {
    return fadam_step_table_scaled(device_table, groups, n_groups, source, NULL, stream);
}

fadam_status fadam_step_table_scaled(const void *device_table, const fadam_hparams *groups, int n_groups,
                                     const fadam_step_source *source, const fadam_step_scaling *scaling,
                                     fadam_stream stream) {
    fadam_step_kernel_args args;
    fadam_status status;
    unsigned grids[FADAM_STEP_GRIDS];
    int g, device = 0;
    fadam_clear_error();
    FADAM_REQUIRE_NOT_NULL(device_table, "fadam_step_table");
    FADAM_REQUIRE_NOT_NULL(groups, "fadam_step_table");
    FADAM_REQUIRE_NOT_NULL(source, "fadam_step_table");
    if ((uintptr_t)device_table % 16)
        return fadam_fail(FADAM_ERR_MISALIGNED, "fadam_step_table: device_table %p is not 16-byte aligned",
                          device_table);
    if (n_groups < 1 || n_groups > FADAM_MAX_GROUPS)
        return fadam_fail(FADAM_ERR_INVALID_VALUE, "fadam_step_table: n_groups=%d must be in [1, %d]", n_groups,
                          FADAM_MAX_GROUPS);
    for (g = 0; g < n_groups; g++) {
        status = fadam_check_hparams(&groups[g], "fadam_step_table", g);
        if (status != FADAM_SUCCESS) return status;
    }
    status = fadam_check_step_source(source, "fadam_step_table");
    if (status != FADAM_SUCCESS) return status;
    FADAM_CUDA_CHECK(cudaGetDevice(&device));

    memset(&args, 0, sizeof args);
    args.table = (const fadam_table_header *)device_table;
    args.device_step = source->device_step;
    args.device_lr = source->device_lr;
    if (scaling) {
        args.grad_multiplier = scaling->grad_multiplier;
        args.found_inf = scaling->found_inf;
    }
    args.step = source->step;
    args.n_groups = n_groups;
    memcpy(args.groups, groups, (size_t)n_groups * sizeof(fadam_hparams));
    /* The table lives on the device only: its flags are unknown here (table_flags 0), so both the fp32
     * kernel and the lean one are launched; the one not built for the table leaves at once. */
    FADAM_RANGE_PUSH("step_table");
    /* The table's chunk count lives on the device: launch the persistent grid, blocks past the last
     * chunk exit at once. */
    status = fadam_cuda_step_grids(INT64_MAX, device, grids);
    if (status == FADAM_SUCCESS) status = fadam_cuda_launch_step(&args, grids, (cudaStream_t)stream);
    FADAM_RANGE_POP();
    return status;
}
