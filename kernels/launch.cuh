/* launch.cuh - the one place that spells a kernel launch, so that the same kernel file builds under
 * nvcc (a real launch) and under g++ with tests/emul/cuda_emul.h (run on the CPU as fibers). */
#ifndef FADAM_LAUNCH_CUH
#define FADAM_LAUNCH_CUH

#include <cuda_runtime.h>

#if defined(FADAM_EMULATION)
#define FADAM_LAUNCH(kernel, grid, block, shared_bytes, stream, ...) \
    ((void)(stream), emul_launch(kernel, grid, block, shared_bytes, __VA_ARGS__))
#define FADAM_LAUNCH_ERROR() emul_take_launch_error()
#else
#define FADAM_LAUNCH(kernel, grid, block, shared_bytes, stream, ...) \
    kernel<<<grid, block, shared_bytes, stream>>>(__VA_ARGS__)
#define FADAM_LAUNCH_ERROR() cudaGetLastError()
#endif

#endif
