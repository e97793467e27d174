/* cpu_only/cuda_stub.c - the CUDA runtime and the kernel launchers of the CPU-only build: no device.
 * Device queries and allocations fail with cudaErrorNoDevice (the library turns it into
 * FADAM_ERR_NO_DEVICE); the calls that free or wait on nothing succeed, as they would with nothing to do.
 * cuda_runtime.h renames them (fadam_nocuda_*): no clash with a real CUDA runtime in the process. */
#include <stdint.h>

#include "cuda_runtime.h"
#include "launchers.h"

cudaError_t cudaGetDeviceCount(int *count) {
    *count = 0;
    return cudaErrorNoDevice;
}
cudaError_t cudaGetDevice(int *device) {
    *device = 0;
    return cudaErrorNoDevice;
}
cudaError_t cudaSetDevice(int device) {
    (void)device;
    return cudaErrorNoDevice;
}
cudaError_t cudaDeviceGetAttribute(int *value, enum cudaDeviceAttr attr, int device) {
    (void)attr, (void)device;
    *value = 0;
    return cudaErrorNoDevice;
}
cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }
cudaError_t cudaGetLastError(void) { return cudaSuccess; }
const char *cudaGetErrorName(cudaError_t error) {
    return error == cudaSuccess ? "cudaSuccess" : error == cudaErrorNoDevice ? "cudaErrorNoDevice" : "cudaError";
}
const char *cudaGetErrorString(cudaError_t error) {
    return error == cudaSuccess ? "no error" : "no CUDA device: this is fusedadam's CPU-only build";
}
cudaError_t cudaMalloc(void **pointer, size_t bytes) {
    (void)bytes;
    *pointer = NULL;
    return cudaErrorNoDevice;
}
cudaError_t cudaFree(void *pointer) {
    (void)pointer;
    return cudaSuccess;
}
cudaError_t cudaHostAlloc(void **pointer, size_t bytes, unsigned int flags) {
    (void)bytes, (void)flags;
    *pointer = NULL;
    return cudaErrorNoDevice;
}
cudaError_t cudaFreeHost(void *pointer) {
    (void)pointer;
    return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind, cudaStream_t stream) {
    (void)dst, (void)src, (void)bytes, (void)kind, (void)stream;
    return cudaErrorNoDevice;
}
cudaError_t cudaMemsetAsync(void *dst, int value, size_t bytes, cudaStream_t stream) {
    (void)dst, (void)value, (void)bytes, (void)stream;
    return cudaErrorNoDevice;
}
cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
    (void)stream;
    return cudaSuccess;
}

unsigned fadam_adam_step_kernels(uint32_t table_flags) {
    (void)table_flags;
    return 1u << FADAM_STEP_KERNEL_LEAN;
}
cudaError_t fadam_launch_adam_step(const fadam_step_kernel_args *args, unsigned grid_blocks, unsigned block_threads,
                                   cudaStream_t stream) {
    (void)args, (void)grid_blocks, (void)block_threads, (void)stream;
    return cudaErrorNoDevice;
}
cudaError_t fadam_launch_adam_step_kernel(const fadam_step_kernel_args *args, int kernel, unsigned grid_blocks,
                                          unsigned block_threads, cudaStream_t stream) {
    (void)args, (void)kernel, (void)grid_blocks, (void)block_threads, (void)stream;
    return cudaErrorNoDevice;
}
cudaError_t fadam_adam_step_blocks_per_sm(int kernel, unsigned block_threads, int *blocks) {
    (void)kernel, (void)block_threads;
    *blocks = 0;
    return cudaErrorNoDevice;
}
cudaError_t fadam_launch_master_init(const fadam_table_header *table, unsigned grid_blocks, unsigned block_threads,
                                     cudaStream_t stream) {
    (void)table, (void)grid_blocks, (void)block_threads, (void)stream;
    return cudaErrorNoDevice;
}
cudaError_t fadam_launch_grad_norm(const fadam_norm_kernel_args *args, unsigned grid_blocks, unsigned block_threads,
                                   cudaStream_t stream) {
    (void)args, (void)grid_blocks, (void)block_threads, (void)stream;
    return cudaErrorNoDevice;
}
cudaError_t fadam_launch_fused_decide(const fadam_norm_kernel_args *args, cudaStream_t stream) {
    (void)args, (void)stream;
    return cudaErrorNoDevice;
}
