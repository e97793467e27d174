/* cpu_only/cuda_runtime.h - what csrc/ uses of the CUDA runtime's header, for the CPU-only build of
 * the library (no CUDA toolkit: `make cpu-only`, or setup.py when it finds no nvcc). Every call is
 * answered by cuda_stub.c with cudaErrorNoDevice, so the CUDA device reports FADAM_ERR_NO_DEVICE and
 * fadam_cuda_device_count() is 0, as on a machine without a GPU; the CPU device works as usual.
 * Only the names csrc/ uses are here; the values of the ones shared with the real header match it. */
#ifndef FADAM_CPU_ONLY_CUDA_RUNTIME_H
#define FADAM_CPU_ONLY_CUDA_RUNTIME_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum cudaError {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInsufficientDriver = 35,
    cudaErrorNoDevice = 100
} cudaError_t;

typedef struct CUstream_st *cudaStream_t;

enum cudaMemcpyKind { cudaMemcpyHostToHost = 0, cudaMemcpyHostToDevice = 1, cudaMemcpyDeviceToHost = 2 };
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount = 16 };
#define cudaHostAllocDefault 0x00

/* Our own names, so that a program that also links the real CUDA runtime meets no clash. */
#define cudaGetDeviceCount fadam_nocuda_cudaGetDeviceCount
#define cudaGetDevice fadam_nocuda_cudaGetDevice
#define cudaSetDevice fadam_nocuda_cudaSetDevice
#define cudaDeviceGetAttribute fadam_nocuda_cudaDeviceGetAttribute
#define cudaDeviceSynchronize fadam_nocuda_cudaDeviceSynchronize
#define cudaGetLastError fadam_nocuda_cudaGetLastError
#define cudaGetErrorName fadam_nocuda_cudaGetErrorName
#define cudaGetErrorString fadam_nocuda_cudaGetErrorString
#define cudaMalloc fadam_nocuda_cudaMalloc
#define cudaFree fadam_nocuda_cudaFree
#define cudaHostAlloc fadam_nocuda_cudaHostAlloc
#define cudaFreeHost fadam_nocuda_cudaFreeHost
#define cudaMemcpyAsync fadam_nocuda_cudaMemcpyAsync
#define cudaMemsetAsync fadam_nocuda_cudaMemsetAsync
#define cudaStreamSynchronize fadam_nocuda_cudaStreamSynchronize

cudaError_t cudaGetDeviceCount(int *count);
cudaError_t cudaGetDevice(int *device);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaDeviceGetAttribute(int *value, enum cudaDeviceAttr attr, int device);
cudaError_t cudaDeviceSynchronize(void);
cudaError_t cudaGetLastError(void);
const char *cudaGetErrorName(cudaError_t error);
const char *cudaGetErrorString(cudaError_t error);
cudaError_t cudaMalloc(void **pointer, size_t bytes);
cudaError_t cudaFree(void *pointer);
cudaError_t cudaHostAlloc(void **pointer, size_t bytes, unsigned int flags);
cudaError_t cudaFreeHost(void *pointer);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind, cudaStream_t stream);
cudaError_t cudaMemsetAsync(void *dst, int value, size_t bytes, cudaStream_t stream);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
