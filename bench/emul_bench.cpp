/* emul_bench.cpp - adam_step_bench.cu run on the CPU, to check the harness itself where no GPU is:
 * the library's kernels and the bench's own, built by g++ with tests/emul/cuda_emul.h, over a stand-in
 * for the few CUDA runtime calls the library and the bench make ("device" memory is host memory, every
 * call is synchronous, an event records the host clock). Its times mean nothing; its checks are real:
 * every version is validated against fadam_cpu_step exactly as on a GPU. `make bench-emul`. */
/* Every kernel source (kernels/, every .cu) comes first, through -include on the command line (mk/bench.mk). */
#include <chrono>
#include <cstdlib>
#include <cstring>

/* ---- the stand-in runtime: host memory, synchronous calls ---- */
static cudaError_t emul_runtime_last_error = cudaSuccess;

extern "C" {
cudaError_t cudaGetDeviceCount(int *count) {
    *count = 1;
    return cudaSuccess;
}
cudaError_t cudaGetDevice(int *device) {
    *device = 0;
    return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) { return device == 0 ? cudaSuccess : cudaErrorInvalidDevice; }
cudaError_t cudaDeviceGetAttribute(int *value, cudaDeviceAttr attr, int device) {
    (void)device;
    *value = attr == cudaDevAttrMultiProcessorCount ? 4 : 0;
    return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *prop, int device) {
    (void)device;
    memset(prop, 0, sizeof *prop);
    snprintf(prop->name, sizeof prop->name, "CPU emulation (times are meaningless)");
    prop->multiProcessorCount = 4;
    prop->l2CacheSize = 256 << 10;
    prop->totalGlobalMem = (size_t)2 << 30;
    prop->major = 9;
    return cudaSuccess;
}
cudaError_t cudaDriverGetVersion(int *version) {
    *version = 0;
    return cudaSuccess;
}
cudaError_t cudaRuntimeGetVersion(int *version) {
    *version = 0;
    return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes) {
    *free_bytes = (size_t)1 << 30;
    *total_bytes = (size_t)2 << 30;
    return cudaSuccess;
}
cudaError_t cudaMalloc(void **pointer, size_t bytes) {
    *pointer = aligned_alloc(256, (bytes + 255) / 256 * 256 + 256);
    return *pointer ? cudaSuccess : (emul_runtime_last_error = cudaErrorMemoryAllocation);
}
cudaError_t cudaMallocHost(void **pointer, size_t bytes) { return cudaMalloc(pointer, bytes); }
cudaError_t cudaHostAlloc(void **pointer, size_t bytes, unsigned int flags) {
    (void)flags;
    return cudaMalloc(pointer, bytes);
}
cudaError_t cudaFree(void *pointer) {
    free(pointer);
    return cudaSuccess;
}
cudaError_t cudaFreeHost(void *pointer) { return cudaFree(pointer); }
cudaError_t cudaMemcpyAsync(void *destination, const void *source, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream) {
    (void)kind;
    (void)stream;
    memmove(destination, source, bytes);
    return cudaSuccess;
}
cudaError_t cudaMemcpy(void *destination, const void *source, size_t bytes, cudaMemcpyKind kind) {
    return cudaMemcpyAsync(destination, source, bytes, kind, NULL);
}
cudaError_t cudaMemsetAsync(void *pointer, int value, size_t bytes, cudaStream_t stream) {
    (void)stream;
    memset(pointer, value, bytes);
    return cudaSuccess;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned int flags) {
    (void)flags;
    *stream = (cudaStream_t)malloc(1);
    return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
    free((void *)stream);
    return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
    (void)stream;
    return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }
cudaError_t cudaEventCreate(cudaEvent_t *event) {
    *event = (cudaEvent_t)calloc(1, sizeof(double));
    return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t event) {
    free((void *)event);
    return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
    (void)stream;
    *(double *)event =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
    return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t event) {
    (void)event;
    return cudaSuccess;
}
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t end) {
    *ms = (float)(*(double *)end - *(double *)start);
    return cudaSuccess;
}
cudaError_t cudaGetLastError(void) {
    cudaError_t error = emul_runtime_last_error;
    emul_runtime_last_error = cudaSuccess;
    return error;
}
const char *cudaGetErrorString(cudaError_t error) { return error == cudaSuccess ? "no error" : "emulated error"; }
const char *cudaGetErrorName(cudaError_t error) { return error == cudaSuccess ? "cudaSuccess" : "cudaErrorEmulated"; }
}

#include "adam_step_bench.cu"
