/* test_step_kernels_api.cpp - the managed optimizer on the CUDA device through its public calls, with the
 * kernels' own source run on the CPU (tests/emul) over a stand-in CUDA runtime ("device" memory is host
 * memory, every call synchronous; as bench/emul_bench.cpp): fadam_finalize reads the table's header flag
 * from its host copy, and fadam_step and fadam_fused_step then launch the one step kernel built for the
 * table (adam_step_kernel<fp32_loops> for fp32 states only, adam_step_kernel<all_loops> once a group has
 * a lean layout), and every parameter ends bit for bit as the same optimizer on the CPU device leaves it:
 * the lean tensors of a mixed model included. */
/* Every kernel source comes first, through -include on the command line (mk/step_kernels.mk). */
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

/* ---- the stand-in runtime: host memory, synchronous calls ---- */
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
    *value = attr == cudaDevAttrMultiProcessorCount ? 2 : 0;
    return cudaSuccess;
}
cudaError_t cudaMalloc(void **pointer, size_t bytes) {
    *pointer = aligned_alloc(256, (bytes + 255) / 256 * 256 + 256);
    return *pointer ? cudaSuccess : cudaErrorMemoryAllocation;
}
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
    (void)kind, (void)stream;
    memmove(destination, source, bytes);
    return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void *pointer, int value, size_t bytes, cudaStream_t stream) {
    (void)stream;
    memset(pointer, value, bytes);
    return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
    (void)stream;
    return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }
cudaError_t cudaGetLastError(void) { return cudaSuccess; }
const char *cudaGetErrorString(cudaError_t error) { return error == cudaSuccess ? "no error" : "emulated error"; }
const char *cudaGetErrorName(cudaError_t error) { return error == cudaSuccess ? "cudaSuccess" : "cudaErrorEmulated"; }
}

#include "check.h"
#include "dtype_values.h"

static uint64_t rng;

enum model_kind { FP32_ONLY = 0, MIXED = 1 };
static const char *const kind_names[2] = {"fp32_only", "mixed"};

/* One tensor's host buffers: the same values go to the CUDA-device optimizer and the CPU-device one. */
struct tensor_data {
    fadam_dtype param_dtype, grad_dtype;
    int group;
    int64_t numel;
    std::vector<unsigned char> param[2], grad[2]; /* [0] CUDA side, [1] CPU side */
};

static void *aligned_copy_target(std::vector<unsigned char> &v, size_t bytes) {
    v.assign(bytes + 64, 0);
    return reinterpret_cast<void *>((reinterpret_cast<uintptr_t>(v.data()) + 63) / 64 * 64);
}

static void *data_of(std::vector<unsigned char> &v) {
    return reinterpret_cast<void *>((reinterpret_cast<uintptr_t>(v.data()) + 63) / 64 * 64);
}

/* Groups: AdamW and Lion in fp32 states; in a MIXED model a third, AdamW, with the 16-bit remainder and
 * 8-bit moments, and a fourth, Lion, with bf16 moments. */
static fadam_optimizer *make_optimizer(fadam_device_kind device, model_kind kind, std::vector<tensor_data> &tensors,
                                       int side) {
    fadam_optimizer *opt = NULL;
    fadam_hparams adamw = fadam_hparams_default(), lion = fadam_hparams_default_lion();
    adamw.weight_decay = 0.1f;
    lion.lr = 1e-3f;
    CHECK(fadam_create(&opt, device, device == FADAM_DEVICE_CUDA ? 0 : -1, &adamw, NULL) == FADAM_SUCCESS, "create: %s",
          fadam_last_error_message());
    if (!opt) return NULL;
    int groups = kind == MIXED ? 4 : 2;
    for (int g = 1; g < groups; g++)
        CHECK(fadam_add_group(opt, g % 2 ? &lion : &adamw, NULL) == FADAM_SUCCESS, "group: %s", fadam_last_error_message());
    if (kind == MIXED) {
        fadam_state_layout remainder_q8 = {FADAM_MASTER_REMAINDER, FADAM_MOMENT_INT8, 11};
        fadam_state_layout bf16 = {FADAM_MASTER_FP32, FADAM_MOMENT_BF16, 12};
        CHECK(fadam_set_group_layout(opt, 2, &remainder_q8) == FADAM_SUCCESS, "layout: %s", fadam_last_error_message());
        CHECK(fadam_set_group_layout(opt, 3, &bf16) == FADAM_SUCCESS, "layout: %s", fadam_last_error_message());
    }
    for (tensor_data &t : tensors)
        if (t.group < groups)
            CHECK(fadam_add_tensor(opt, NULL, data_of(t.param[side]), data_of(t.grad[side]), t.numel, t.param_dtype,
                                   t.grad_dtype, t.group, NULL) == FADAM_SUCCESS,
                  "add_tensor: %s", fadam_last_error_message());
    fadam_fused_step_config config = fadam_fused_step_config_default();
    CHECK(fadam_configure_fused_step(opt, &config) == FADAM_SUCCESS, "configure: %s", fadam_last_error_message());
    CHECK(fadam_finalize(opt, NULL) == FADAM_SUCCESS, "finalize: %s", fadam_last_error_message());
    return opt;
}

static std::vector<tensor_data> make_tensors(model_kind kind) {
    static const fadam_dtype dtypes[3] = {FADAM_FLOAT32, FADAM_BFLOAT16, FADAM_FLOAT16};
    std::vector<tensor_data> tensors;
    int groups = kind == MIXED ? 4 : 2;
    for (int g = 0; g < groups; g++)
        for (int k = 0; k < 4; k++) {
            tensor_data t;
            t.param_dtype = dtypes[(g + k) % 3];
            t.grad_dtype = dtypes[check_rng_next(&rng) % 3];
            t.group = g;
            t.numel = 1 + (int64_t)(check_rng_next(&rng) % 3000);
            for (int side = 0; side < 2; side++) {
                aligned_copy_target(t.param[side], (size_t)t.numel * fadam_dtype_size(t.param_dtype));
                aligned_copy_target(t.grad[side], (size_t)t.numel * fadam_dtype_size(t.grad_dtype));
            }
            for (int64_t i = 0; i < t.numel; i++) {
                float x = (float)check_rng_normal(&rng);
                store_as(t.param_dtype, data_of(t.param[0]), i, x);
                store_as(t.param_dtype, data_of(t.param[1]), i, x);
            }
            tensors.push_back(std::move(t));
        }
    return tensors;
}

static void fill_grads(std::vector<tensor_data> &tensors) {
    for (tensor_data &t : tensors)
        for (int64_t i = 0; i < t.numel; i++) {
            float g = (float)(1e-2 * check_rng_normal(&rng));
            store_as(t.grad_dtype, data_of(t.grad[0]), i, g);
            store_as(t.grad_dtype, data_of(t.grad[1]), i, g);
        }
}

/* Two plain steps then two fused ones on both devices; after each, the kernel launched and every param. */
static void test_managed(model_kind kind) {
    char name[96];
    std::snprintf(name, sizeof name, "managed_cuda_step_runs_the_table_kernel_bitwise_cpu_device_%s", kind_names[kind]);
    check_case_begin();
    std::vector<tensor_data> tensors = make_tensors(kind);
    fadam_optimizer *cuda = make_optimizer(FADAM_DEVICE_CUDA, kind, tensors, 0);
    fadam_optimizer *cpu = make_optimizer(FADAM_DEVICE_CPU, kind, tensors, 1);
    const unsigned expected = 1u << (kind == MIXED ? FADAM_STEP_KERNEL_LEAN : FADAM_STEP_KERNEL_FP32);
    for (int step = 1; step <= 4 && cuda && cpu; step++) {
        fill_grads(tensors);
        fadam_emul_step_kernels_launched = 0;
        emul_set_thread_order(EMUL_ORDER_SHUFFLED, check_rng_next(&rng));
        bool fused = step > 2;
        CHECK((fused ? fadam_fused_step(cuda, NULL) : fadam_step(cuda, NULL)) == FADAM_SUCCESS, "cuda step %d: %s", step,
              fadam_last_error_message());
        CHECK((fused ? fadam_fused_step(cpu, NULL) : fadam_step(cpu, NULL)) == FADAM_SUCCESS, "cpu step %d: %s", step,
              fadam_last_error_message());
        CHECK(fadam_emul_step_kernels_launched == expected, "%s step %d: launched kernels %#x, expected %#x",
              fused ? "fused" : "plain", step, fadam_emul_step_kernels_launched, expected);
        for (size_t i = 0; i < tensors.size(); i++) {
            const tensor_data &t = tensors[i];
            size_t bytes = (size_t)t.numel * fadam_dtype_size(t.param_dtype);
            CHECK(std::memcmp(data_of(tensors[i].param[0]), data_of(tensors[i].param[1]), bytes) == 0,
                  "step %d: tensor %zu (group %d, param dtype %d) differs from the CPU device", step, i, t.group,
                  (int)t.param_dtype);
        }
    }
    fadam_destroy(cuda);
    fadam_destroy(cpu);
    check_case_end(name);
}

int main() {
    rng = check_seed("test_step_kernels_api");
    test_managed(FP32_ONLY);
    test_managed(MIXED);
    return check_exit_code();
}
