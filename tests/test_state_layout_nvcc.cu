/* kernels/state_layout.h under nvcc (this file as .cu) and g++ (the same file as C++): the digest of
 * every function's output on the host, and on the GPU when there is one, equals the golden value that
 * gcc computes in tests/test_state_layout.c - the same bits from every compiler and device. */
#include <stdio.h>

#include "check.h"
#include "state_layout_digest.h"

#if defined(__CUDACC__)
#include <cuda_runtime.h>

#define SL_THREADS 256
#define SL_BLOCKS 256

/* Thread k digests inputs k, k + stride, ...: a different split of the range than the host's. */
__global__ void sl_digest_kernel(unsigned long long *total) {
    uint32_t stride = SL_THREADS * SL_BLOCKS, i;
    uint64_t sum = 0;
    for (i = blockIdx.x * SL_THREADS + threadIdx.x; i < SL_DIGEST_COUNT; i += stride) sum += sl_digest_one(i);
    atomicAdd(total, (unsigned long long)sum);
}

static void test_device(void) {
    int devices = 0;
    unsigned long long *total = NULL, host_total = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
        check_skip("state_layout_digest_golden_gpu", "no CUDA device");
        return;
    }
    check_case_begin();
    CHECK(cudaMalloc((void **)&total, sizeof *total) == cudaSuccess, "cudaMalloc");
    if (total) {
        cudaMemset(total, 0, sizeof *total);
        sl_digest_kernel<<<SL_BLOCKS, SL_THREADS>>>(total);
        CHECK(cudaMemcpy(&host_total, total, sizeof host_total, cudaMemcpyDeviceToHost) == cudaSuccess, "kernel or copy failed");
        cudaFree(total);
        printf("# state_layout digest (GPU) 0x%016llx\n", host_total);
        CHECK(host_total == SL_DIGEST_GOLDEN, "GPU digest 0x%016llx != golden 0x%016llx", host_total,
              (unsigned long long)SL_DIGEST_GOLDEN);
    }
    check_case_end("state_layout_digest_golden_gpu");
}
#define SL_COMPILER "nvcc"
#else
#define SL_COMPILER "gxx"
#endif

int main(void) {
    uint64_t digest = sl_digest_range(0, SL_DIGEST_COUNT / 2) + sl_digest_range(SL_DIGEST_COUNT / 2, SL_DIGEST_COUNT);
    printf("# state_layout digest (%s host) 0x%016llx\n", SL_COMPILER, (unsigned long long)digest);
    check_case_begin();
    CHECK(digest == SL_DIGEST_GOLDEN, "digest 0x%016llx != golden 0x%016llx", (unsigned long long)digest,
          (unsigned long long)SL_DIGEST_GOLDEN);
    check_case_end("state_layout_digest_golden_" SL_COMPILER "_host");
#if defined(__CUDACC__)
    test_device();
#endif
    return check_failures_total ? 1 : 0;
}
