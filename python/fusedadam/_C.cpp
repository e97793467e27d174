// _C.cpp - the PyTorch binding of fusedadam: a thin layer that turns an optimizer's parameters, their
// grads and state into fadam_tensor entries and steps them through the C library. The parameters and
// state tensors come from a ParamCache, checked against the optimizer at every step, so that a step
// costs Python nothing per parameter (FusedAdamW.step). CUDA tensors go through the functional
// call (one fadam_step_table launch per device on PyTorch's current stream, with the device table
// cached while no pointer changes); CPU tensors go through fadam_cpu_step_pool, on as many threads as
// torch.get_num_threads() says at that step (the pool is kept and restarted when that changes). Everything is checked
// before anything is written, so a raised error leaves parameters, state and step counts as they were.
// Only the headers needed: <torch/extension.h> would triple the compile time.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#ifndef FADAM_CPU_ONLY // the CPU-only build (setup.py without a CUDA toolkit) links no CUDA library
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/utils/pybind.h>

#include <algorithm>
#include <cmath>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "fusedadam.h"
#include "../../kernels/state_layout.h" // the encodings of the lean states (state_dict's conversions)

namespace {

// "torch.float64", as Python spells a dtype.
std::string dtype_name(at::ScalarType type) { return "torch." + c10::getDtypeNames(type).first; }

std::string describe_parameter(int64_t group, const at::Tensor &param) {
    std::ostringstream out;
    out << "a parameter of group " << group << " (shape " << param.sizes() << ", " << dtype_name(param.scalar_type())
        << ", " << param.device() << ")";
    return out.str();
}

// Raises a failed library call as a Python exception carrying the library's message: ValueError for
// a bad value, TypeError for a dtype, RuntimeError for the rest. describe_tensor (optional) says
// which parameter the tensor the failure was about (fadam_last_error_tensor) is.
void raise_on_failure(fadam_status status, const std::function<std::string(size_t)> &describe_tensor = nullptr) {
    if (status == FADAM_SUCCESS) return;
    int64_t tensor = fadam_last_error_tensor();
    std::string message = std::string("fusedadam: ") + fadam_last_error_message() + " (" + fadam_status_string(status) + ")";
    if (describe_tensor && tensor >= 0)
        message += "; tensor " + std::to_string(tensor) + " is " + describe_tensor((size_t)tensor);
    if (status == FADAM_ERR_INVALID_VALUE) throw pybind11::value_error(message);
    if (status == FADAM_ERR_UNSUPPORTED_DTYPE) throw pybind11::type_error(message);
    throw std::runtime_error(message);
}

// A parameter group's fadam_hparams as Python holds it (a type of this file, so that pybind11's
// hidden-visibility machinery does not outrank the public C type's visibility).
struct Hparams {
    fadam_hparams c;
};

// Which state tensors a parameter group's step reads (made by FusedAdamW._group_state from the group
// and its rule): the master of a 16-bit parameter, exp_avg_sq (Lion keeps exp_avg only), how they are
// stored (docs/STATE_LAYOUTS.md), and the seed of stochastic rounding.
struct GroupState {
    bool master = true;
    bool second_moment = true;
    int master_format = FADAM_MASTER_FP32;
    int moment_format = FADAM_MOMENT_FP32;
    uint64_t seed = 0;
};

// A tensor's rounding_seed: the group's seed mixed with the parameter's index in the optimizer
// (fadam_mix64 of both), so that tensors draw unrelated bits and a resumed run draws the same ones.
uint64_t rounding_seed(uint64_t seed, size_t index) {
    return fadam_mix64(seed ^ fadam_mix64((uint64_t)index + 0x9E3779B97F4A7C15ull));
}

bool to_fadam_dtype(at::ScalarType type, fadam_dtype *out) {
    switch (type) {
    case at::kFloat: *out = FADAM_FLOAT32; return true;
    case at::kBFloat16: *out = FADAM_BFLOAT16; return true;
    case at::kHalf: *out = FADAM_FLOAT16; return true;
    default: return false;
    }
}

// Two dense tensors hold their elements in the same order when sizes match and every dimension
// longer than one has the same stride; the kernels then update the flat buffers element by element.
bool same_layout(const at::Tensor &a, const at::Tensor &b) {
    at::IntArrayRef sizes = a.sizes(), a_strides = a.strides(), b_strides = b.strides();
    if (sizes != b.sizes()) return false;
    for (size_t d = 0; d < sizes.size(); d++)
        if (sizes[d] > 1 && a_strides[d] != b_strides[d]) return false;
    return true;
}

// Checks that `other` (the grad or a piece of optimizer state) can be stepped with `param`.
void check_companion(int64_t group, const at::Tensor &param, const at::Tensor &other, const char *what,
                     bool must_be_fp32) {
    auto where = [&] { return describe_parameter(group, param); };
    if (other.layout() != at::kStrided)
        throw std::runtime_error("fusedadam: " + where() + ": " + what +
                                 " is sparse; FusedAdamW does not support sparse gradients");
    if (other.device() != param.device())
        throw std::runtime_error("fusedadam: " + where() + ": " + what + " is on " + other.device().str() +
                                 ", the parameter on " + param.device().str() + "; both must be on one device");
    fadam_dtype unused;
    if (must_be_fp32 && other.scalar_type() != at::kFloat)
        throw pybind11::type_error("fusedadam: " + where() + ": " + what + " must be torch.float32, not " +
                                   dtype_name(other.scalar_type()));
    if (!must_be_fp32 && !to_fadam_dtype(other.scalar_type(), &unused))
        throw pybind11::type_error("fusedadam: " + where() + ": " + what + " has dtype " +
                                   dtype_name(other.scalar_type()) + "; float32, bfloat16 and float16 are supported");
    if (!same_layout(param, other))
        throw std::runtime_error("fusedadam: " + where() + ": " + what + " has shape " + c10::str(other.sizes()) +
                                 " and strides " + c10::str(other.strides()) + ", the parameter " +
                                 c10::str(param.sizes()) + " and " + c10::str(param.strides()) +
                                 "; they must be laid out alike (try .contiguous() on both)");
}

std::string key_name(PyObject *key); // a state key's text

// Checks a state tensor of a layout (docs/STATE_LAYOUTS.md): `type`, laid out like the parameter.
void check_state(int64_t group, const at::Tensor &param, const at::Tensor &state, PyObject *key, at::ScalarType type) {
    std::string what = "state['" + key_name(key) + "']";
    if (state.layout() == at::kStrided && state.scalar_type() != type)
        throw pybind11::type_error("fusedadam: " + describe_parameter(group, param) + ": " + what + " must be " +
                                   dtype_name(type) + ", not " + dtype_name(state.scalar_type()));
    if (type == at::kFloat || type == at::kBFloat16) {
        check_companion(group, param, state, what.c_str(), type == at::kFloat);
        return;
    }
    // int8/uint8/int16: the same checks as check_companion's, which knows the float dtypes only
    if (state.layout() != at::kStrided || state.device() != param.device() || !same_layout(param, state))
        throw std::runtime_error("fusedadam: " + describe_parameter(group, param) + ": " + what +
                                 " must be a dense tensor on the parameter's device laid out like it");
}

// The fp32 scales of 8-bit moments: ceil(numel / FADAM_MOMENT_BLOCK) contiguous floats beside the parameter.
void check_scales(int64_t group, const at::Tensor &param, const at::Tensor &scales, const char *what) {
    int64_t blocks = (param.numel() + FADAM_MOMENT_BLOCK - 1) / FADAM_MOMENT_BLOCK;
    if (scales.layout() != at::kStrided || scales.scalar_type() != at::kFloat || scales.device() != param.device() ||
        scales.numel() != blocks || !scales.is_contiguous())
        throw std::runtime_error("fusedadam: " + describe_parameter(group, param) + ": " + what +
                                 " must be a contiguous float32 tensor of " + std::to_string(blocks) +
                                 " elements on the parameter's device");
}

// Whether the C library steps the lean layouts: one that does checks the formats, so a format no
// enum has is refused (an older library ignores the fields and would read them as fp32).
bool lean_layouts_supported() {
    static const bool supported = [] {
        float param = 0.0f, grad = 0.0f;
        fadam_tensor probe{};
        probe.param = &param;
        probe.grad = &grad;
        probe.param_dtype = probe.grad_dtype = FADAM_FLOAT32;
        probe.master_format = (fadam_master_format)99;
        size_t bytes = 0;
        return fadam_table_bytes(&probe, 1, 1, &bytes) != FADAM_SUCCESS;
    }();
    return supported;
}

void require_lean_layouts() {
    if (!lean_layouts_supported())
        throw pybind11::value_error("fusedadam: this build of the C library does not step the lean state layouts "
                                    "(master_weights='remainder', moment_dtype bfloat16/'int8')");
}

// state_dict's conversions between the lean states and float32, on CPU tensors, element by element in
// memory order (the states are laid out like their parameter), with the library's own encodings.
void check_cpu_dense(const at::Tensor &t, at::ScalarType type, const char *what) {
    if (t.device().type() != at::kCPU || t.layout() != at::kStrided || t.scalar_type() != type ||
        !t.is_non_overlapping_and_dense())
        throw pybind11::type_error(std::string("fusedadam: ") + what + " must be a dense CPU " + dtype_name(type) + " tensor");
}

at::Tensor join_master(const at::Tensor &param, const at::Tensor &remainder) {
    check_cpu_dense(param, at::kBFloat16, "param");
    check_cpu_dense(remainder, at::kShort, "remainder");
    if (!same_layout(param, remainder)) throw pybind11::value_error("fusedadam: param and remainder differ in layout");
    at::Tensor out = at::empty_like(param, param.options().dtype(at::kFloat));
    const uint16_t *p = static_cast<const uint16_t *>(param.data_ptr());
    const uint16_t *r = static_cast<const uint16_t *>(remainder.data_ptr());
    float *o = out.data_ptr<float>();
    for (int64_t i = 0; i < param.numel(); i++) o[i] = fadam_master_join(p[i], r[i]);
    return out;
}

// (bf16 param, int16 remainder) of fp32 masters by fadam_master_split, the fp32-master path's own rounding.
// With `beside`, the bf16 params the remainders will be joined with: where one of them is the
// round-to-nearest-even image of an even-tie master (torch's .to(torch.bfloat16) made it, not us),
// fadam_master_split_rne's remainder, so the pair joins to that master less one ulp rather than to a
// value half a bf16 ulp away.
std::pair<at::Tensor, at::Tensor> split_master(const at::Tensor &master, const c10::optional<at::Tensor> &beside) {
    check_cpu_dense(master, at::kFloat, "master");
    if (beside) {
        check_cpu_dense(*beside, at::kBFloat16, "beside");
        if (!same_layout(master, *beside)) throw pybind11::value_error("fusedadam: master and beside differ in layout");
    }
    at::Tensor param = at::empty_like(master, master.options().dtype(at::kBFloat16));
    at::Tensor remainder = at::empty_like(master, master.options().dtype(at::kShort));
    const float *m = master.data_ptr<float>();
    const uint16_t *given = beside ? static_cast<const uint16_t *>(beside->data_ptr()) : nullptr;
    uint16_t *p = static_cast<uint16_t *>(param.data_ptr());
    uint16_t *r = static_cast<uint16_t *>(remainder.data_ptr());
    for (int64_t i = 0; i < master.numel(); i++) {
        p[i] = fadam_master_split(m[i], &r[i]);
        if (given && given[i] != p[i] && fadam_master_is_even_tie(m[i]) && given[i] == fadam_round_bf16_nearest(m[i]))
            p[i] = fadam_master_split_rne(m[i], &r[i]);
    }
    return {param, remainder};
}

// 8-bit codes (int8: exp_avg, uint8: exp_avg_sq) and their block scales -> float32.
at::Tensor dequantize_moment(const at::Tensor &codes, const at::Tensor &scales) {
    bool second = codes.scalar_type() == at::kByte;
    check_cpu_dense(codes, second ? at::kByte : at::kChar, "codes");
    int64_t n = codes.numel(), blocks = (n + FADAM_MOMENT_BLOCK - 1) / FADAM_MOMENT_BLOCK;
    if (scales.device().type() != at::kCPU || scales.scalar_type() != at::kFloat || scales.numel() != blocks ||
        !scales.is_contiguous())
        throw pybind11::value_error("fusedadam: scales must be " + std::to_string(blocks) + " contiguous CPU floats");
    at::Tensor out = at::empty_like(codes, codes.options().dtype(at::kFloat));
    const float *scale = scales.data_ptr<float>();
    float *o = out.data_ptr<float>();
    for (int64_t b = 0; b < blocks; b++) {
        int count = (int)std::min<int64_t>(FADAM_MOMENT_BLOCK, n - b * FADAM_MOMENT_BLOCK);
        if (second)
            fadam_q8_dequantize_v_block(static_cast<const uint8_t *>(codes.data_ptr()) + b * FADAM_MOMENT_BLOCK,
                                        scale[b], count, o + b * FADAM_MOMENT_BLOCK);
        else
            fadam_q8_dequantize_m_block(static_cast<const int8_t *>(codes.data_ptr()) + b * FADAM_MOMENT_BLOCK,
                                        scale[b], count, o + b * FADAM_MOMENT_BLOCK);
    }
    return out;
}

// float32 -> (codes, scales), rounding to nearest: int8 for exp_avg (second false), uint8 for exp_avg_sq.
std::pair<at::Tensor, at::Tensor> quantize_moment(const at::Tensor &values, bool second) {
    check_cpu_dense(values, at::kFloat, "values");
    int64_t n = values.numel(), blocks = (n + FADAM_MOMENT_BLOCK - 1) / FADAM_MOMENT_BLOCK;
    at::Tensor codes = at::empty_like(values, values.options().dtype(second ? at::kByte : at::kChar));
    at::Tensor scales = at::empty({blocks}, values.options().dtype(at::kFloat).memory_format(at::MemoryFormat::Contiguous));
    const float *v = values.data_ptr<float>();
    float *scale = scales.data_ptr<float>();
    for (int64_t b = 0; b < blocks; b++) {
        int count = (int)std::min<int64_t>(FADAM_MOMENT_BLOCK, n - b * FADAM_MOMENT_BLOCK);
        const float *from = v + b * FADAM_MOMENT_BLOCK;
        scale[b] = second ? fadam_q8_quantize_v_block(from, count, static_cast<uint8_t *>(codes.data_ptr()) + b * FADAM_MOMENT_BLOCK)
                          : fadam_q8_quantize_m_block(from, count, static_cast<int8_t *>(codes.data_ptr()) + b * FADAM_MOMENT_BLOCK);
    }
    return {codes, scales};
}

// One launch worth of tensors: those on one device whose step count is the same.
struct Bucket {
    int device = -1;  // CUDA device index, -1 for the CPU
    int64_t step = 0; // t of this step, 1 for the first
    std::vector<fadam_tensor> tensors;
    std::vector<size_t> members; // index into the step's lists of each tensor
};

bool same_entry(const fadam_tensor &a, const fadam_tensor &b) {
    return a.param == b.param && a.grad == b.grad && a.master == b.master && a.exp_avg == b.exp_avg &&
           a.exp_avg_sq == b.exp_avg_sq && a.numel == b.numel && a.param_dtype == b.param_dtype &&
           a.grad_dtype == b.grad_dtype && a.group == b.group;
}

// A device copy of an encoded tensor table, kept for as long as the tensors it points at stay put.
struct CachedTable {
    std::vector<fadam_tensor> tensors;
    int n_groups = 0;
    std::vector<int> modes; // the groups' rules it was checked against (fadam_table_encode_groups)
    at::Tensor device_table; // uint8, from PyTorch's caching allocator
    fadam_stream allocated_on = nullptr; // a cudaStream_t
    bool used = false;
};

// Device tables of one optimizer, one per (device, bucket), plus counters the tests read.
class TableCache {
  public:
    int64_t encodes = 0;  // tables encoded and copied to a device
    int64_t launches = 0; // fadam_step_table calls
    int64_t cpu_calls = 0;
    int cpu_threads = 0; // threads of the CPU pool (torch.get_num_threads() at the last CPU step)

    void clear() { tables_.clear(); }

    // The CPU steps' worker threads, as many as PyTorch's intra-op threads: started at the first CPU
    // step and again when torch.set_num_threads changes the count. Call with the GIL held (it may raise).
    fadam_cpu_pool *cpu_pool() {
        int wanted = std::max(1, std::min(at::get_num_threads(), FADAM_MAX_CPU_THREADS));
        if (!cpu_pool_ || cpu_threads != wanted) {
            fadam_cpu_pool *fresh = nullptr;
            cpu_pool_.reset(); // the old threads stop before the new ones start: never both at once
            cpu_threads = 0;
            raise_on_failure(fadam_cpu_pool_create(&fresh, wanted));
            cpu_pool_.reset(fresh);
            cpu_threads = wanted;
        }
        return cpu_pool_.get();
    }
    size_t size() const { return tables_.size(); }

    // Whether the table cached for `bucket` is the one it needs (it was checked when it was encoded,
    // against the groups' rules: a rule changed means other states, so a new check).
    bool holds(const Bucket &bucket, int ordinal, const std::vector<fadam_hparams> &groups, int n_groups) const {
        auto found = tables_.find({bucket.device, ordinal});
        if (found == tables_.end()) return false;
        const CachedTable &cached = found->second;
        return cached.device_table.defined() && cached.n_groups == n_groups && cached.modes == modes_of(groups, n_groups) &&
               cached.tensors.size() == bucket.tensors.size() &&
               std::equal(cached.tensors.begin(), cached.tensors.end(), bucket.tensors.begin(), same_entry);
    }

    // The device table for `bucket`, encoded and copied on `stream` when it differs from the cached
    // one (table_bytes: what fadam_table_bytes_groups gave for it; unused when the cached table is reused).
#ifndef FADAM_CPU_ONLY
    const at::Tensor &table_for(const Bucket &bucket, int ordinal, const std::vector<fadam_hparams> &groups,
                                int n_groups, size_t table_bytes, const c10::cuda::CUDAStream &stream) {
        bool unchanged = holds(bucket, ordinal, groups, n_groups);
        CachedTable &cached = tables_[{bucket.device, ordinal}];
        cached.used = true;
        if (unchanged) {
            // The caching allocator must not hand the table out again while another stream reads it.
            if (reinterpret_cast<fadam_stream>(stream.stream()) != cached.allocated_on)
                cached.device_table.record_stream(stream);
            return cached.device_table;
        }
        // Pinned memory from PyTorch's caching host allocator: the copy is asynchronous, and the
        // allocator keeps the block until the copy has run.
        at::Tensor host_table =
            at::empty({(int64_t)table_bytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
        // Knowing the rules, the table takes Lion tensors without exp_avg_sq (no 4 B/param buffer).
        raise_on_failure(fadam_table_encode_groups(bucket.tensors.data(), (int64_t)bucket.tensors.size(),
                                                   groups.data(), n_groups, host_table.data_ptr(), table_bytes));
        at::Tensor device_table = at::empty(
            {(int64_t)table_bytes}, at::TensorOptions().dtype(at::kByte).device(at::kCUDA, bucket.device));
        device_table.copy_(host_table, /*non_blocking=*/true);
        cached.tensors = bucket.tensors;
        cached.n_groups = n_groups;
        cached.modes = modes_of(groups, n_groups);
        cached.device_table = device_table;
        cached.allocated_on = reinterpret_cast<fadam_stream>(stream.stream());
        encodes++;
        return cached.device_table;
    }
#endif

    // Drops the tables no bucket of this step used (their tensors are gone or regrouped).
    void drop_unused() {
        for (auto it = tables_.begin(); it != tables_.end();) {
            if (!it->second.used) {
                it = tables_.erase(it);
            } else {
                it->second.used = false;
                ++it;
            }
        }
    }

  private:
    static std::vector<int> modes_of(const std::vector<fadam_hparams> &groups, int n_groups) {
        std::vector<int> modes((size_t)n_groups);
        for (int g = 0; g < n_groups; g++) modes[(size_t)g] = (int)groups[(size_t)g].mode;
        return modes;
    }
    std::map<std::pair<int, int>, CachedTable> tables_;
    std::unique_ptr<fadam_cpu_pool, void (*)(fadam_cpu_pool *)> cpu_pool_{nullptr, &fadam_cpu_pool_destroy};
};

// The number of steps taken so far, from PyTorch's state['step'] (a CPU float32 scalar tensor).
int64_t read_step(int64_t group, const at::Tensor &param, const at::Tensor &step) {
    if (!step.defined() || step.layout() != at::kStrided || step.device().type() != at::kCPU ||
        step.scalar_type() != at::kFloat || step.numel() != 1)
        throw std::runtime_error("fusedadam: " + describe_parameter(group, param) +
                                 ": state['step'] must be a one-element float32 tensor on the CPU");
    float taken = *step.data_ptr<float>();
    if (!(taken >= 0.0f && taken < 16777216.0f) || taken != std::floor(taken))
        throw pybind11::value_error("fusedadam: " + describe_parameter(group, param) + ": state['step']=" +
                                    std::to_string(taken) + " is not a step count in [0, 2^24)");
    return (int64_t)taken;
}

// Interned keys, made once at import (never freed: they live as long as the module).
PyObject *key_params, *key_step, *key_exp_avg, *key_exp_avg_sq, *key_master_param;
// The lean layouts' state keys (fusedadam.torch documents them).
PyObject *key_master_remainder, *key_exp_avg_bf16, *key_exp_avg_sq_bf16, *key_exp_avg_int8, *key_exp_avg_sq_uint8,
    *key_exp_avg_scales, *key_exp_avg_sq_scales;

PyObject *moment_key(int format, bool second) {
    if (format == FADAM_MOMENT_BF16) return second ? key_exp_avg_sq_bf16 : key_exp_avg_bf16;
    if (format == FADAM_MOMENT_INT8) return second ? key_exp_avg_sq_uint8 : key_exp_avg_int8;
    return second ? key_exp_avg_sq : key_exp_avg;
}
PyObject *master_key(int format) { return format == FADAM_MASTER_REMAINDER ? key_master_remainder : key_master_param; }
std::string key_name(PyObject *key) { return PyUnicode_AsUTF8(key); }

// The dtype a moment or master tensor of a format has.
at::ScalarType moment_type(int format, bool second) {
    if (format == FADAM_MOMENT_BF16) return at::kBFloat16;
    if (format == FADAM_MOMENT_INT8) return second ? at::kByte : at::kChar;
    return at::kFloat;
}
at::ScalarType master_type(int format) { return format == FADAM_MASTER_REMAINDER ? at::kShort : at::kFloat; }

bool is_16bit(at::ScalarType type) { return type == at::kBFloat16 || type == at::kHalf; }

// d[key] as a borrowed reference, nullptr when absent; d is a dict (or a subclass: defaultdict).
PyObject *dict_item(PyObject *d, PyObject *key) {
    PyObject *value = PyDict_GetItemWithError(d, key);
    if (!value && PyErr_Occurred()) throw pybind11::error_already_set();
    return value;
}

// A list or tuple as is, anything else iterable copied to a list (PySequence_Fast).
pybind11::object as_sequence(pybind11::handle obj, const char *what) {
    PyObject *sequence = PySequence_Fast(obj.ptr(), what);
    if (!sequence) throw pybind11::error_already_set();
    return pybind11::reinterpret_steal<pybind11::object>(sequence);
}

// The per-parameter loops below are bound by memory latency, not work: each parameter brings two
// dozen small heap objects (Python objects, TensorImpls, their storage and autograd metadata) that
// the previous update has evicted from the caches. So each loop asks for the objects of the
// parameters some iterations ahead, chained objects in stages (an object's address is in the one
// before it): kAhead iterations apart, deep enough to cover a miss, short enough to stay cached.
constexpr size_t kAhead = 4;

inline void prefetch_lines(const void *object, int lines) {
    for (int line = 0; line < lines; line++) __builtin_prefetch(static_cast<const char *>(object) + 64 * line);
}

// A TensorImpl: storage, sizes and strides, dtype, device and flags span three cache lines.
inline void prefetch_impl(const at::Tensor &tensor) { prefetch_lines(tensor.unsafeGetTensorImpl(), 3); }

// The StorageImpl (data pointer) of a tensor whose TensorImpl is loaded.
inline void prefetch_storage(const at::Tensor &tensor) {
    prefetch_lines(tensor.unsafeGetTensorImpl()->unsafe_storage().unsafeGetStorageImpl(), 1);
}

// The data of a tensor whose StorageImpl is loaded (for state['step'], which is read and written).
// It runs before the tensor is checked: a tensor without storage (sparse) has none to fetch.
inline void prefetch_data(const at::Tensor &tensor) {
    const c10::StorageImpl *storage = tensor.unsafeGetTensorImpl()->unsafe_storage().unsafeGetStorageImpl();
    if (storage) prefetch_lines(storage->data_ptr().get(), 1);
}

// One parameter of the optimizer's groups, with the Python objects its step reads. Holding them
// keeps their addresses from being reused, so pointer equality below means "the same object".
struct CachedParam {
    pybind11::object param;
    int64_t group = 0;
    bool ready = false;        // state holds step, exp_avg, exp_avg_sq (and master_param if wanted)
    bool wants_master = false; // a 16-bit parameter of a group with master_weights=True
    bool second_moment = true; // its group's rule keeps exp_avg_sq
    int master_format = FADAM_MASTER_FP32, moment_format = FADAM_MOMENT_FP32;
    pybind11::object state, step, exp_avg, exp_avg_sq, master; // null when not captured
    pybind11::object exp_avg_scales, exp_avg_sq_scales;         // FADAM_MOMENT_INT8 only
};

// One parameter stepped by this call. Its tensors are borrowed (no reference count touched) from the
// Python objects the cache holds, its grad is owned: the GIL is released during the CPU update, and
// another thread may drop the grad meanwhile.
struct StepItem {
    int64_t group;
    c10::MaybeOwned<at::Tensor> param, exp_avg, exp_avg_sq, step;
    c10::MaybeOwned<at::Tensor> master; // undefined when the parameter is its own master
    at::Tensor grad;
    c10::MaybeOwned<at::Tensor> exp_avg_scales, exp_avg_sq_scales; // undefined unless 8-bit moments
    int master_format = FADAM_MASTER_FP32, moment_format = FADAM_MOMENT_FP32;
    uint64_t rounding_seed = 0;
};

c10::MaybeOwned<at::Tensor> undefined_tensor() { return c10::MaybeOwned<at::Tensor>::owned(std::in_place); }

c10::MaybeOwned<at::Tensor> borrow(const pybind11::object &tensor) {
    return c10::MaybeOwned<at::Tensor>::borrowed(THPVariable_Unpack(tensor.ptr()));
}

// What FusedAdamW.step() would otherwise rebuild from Python every step: every parameter of every
// group, in group order, with its state tensors, plus a snapshot of the structures they came from
// (optimizer.param_groups, each group's params, optimizer.state). collect() compares that snapshot
// with the live objects, pointer by pointer, so a cache that no longer describes the optimizer is
// never used: the step reports it stale and the Python side rebuilds it.
class ParamCache {
  public:
    int64_t loads = 0; // load() calls, which the tests read: steady steps make none

    void clear() {
        int64_t kept = loads;
        *this = ParamCache();
        loads = kept;
    }
    size_t size() const { return params_ ? params_->size() : 0; }

    // Snapshots param_groups and state (optimizer.param_groups and optimizer.state, after the state
    // of every parameter with a gradient was created); group_states[g] says what group g's step reads.
    void load(pybind11::handle param_groups, pybind11::handle state, const std::vector<GroupState> &group_states) {
        clear();
        if (!PyDict_Check(state.ptr())) throw pybind11::type_error("fusedadam: optimizer.state must be a dict");
        ParamCache next;
        next.param_groups_ = pybind11::reinterpret_borrow<pybind11::object>(param_groups);
        next.state_ = pybind11::reinterpret_borrow<pybind11::object>(state);
        pybind11::object groups = as_sequence(param_groups, "fusedadam: param_groups must be a sequence");
        Py_ssize_t n_groups = PySequence_Fast_GET_SIZE(groups.ptr());
        if ((size_t)n_groups != group_states.size())
            throw pybind11::value_error("fusedadam: group states differ in number from the groups");
        for (Py_ssize_t g = 0; g < n_groups; g++) {
            PyObject *group = PySequence_Fast_GET_ITEM(groups.ptr(), g);
            if (!PyDict_Check(group)) throw pybind11::type_error("fusedadam: a parameter group must be a dict");
            PyObject *params = dict_item(group, key_params);
            if (!params) throw pybind11::key_error("fusedadam: a parameter group has no 'params'");
            next.groups_.push_back(pybind11::reinterpret_borrow<pybind11::object>(group));
            next.group_params_.push_back(pybind11::reinterpret_borrow<pybind11::object>(params));
            pybind11::object members = as_sequence(params, "fusedadam: a group's params must be a sequence");
            for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(members.ptr()); i++)
                next.add(g, PySequence_Fast_GET_ITEM(members.ptr(), i), group_states[g]);
            next.group_ends_.push_back(next.building_.size());
        }
        // The state's entries in order: a replaced, added or removed entry changes the sequence.
        PyObject *key, *value;
        Py_ssize_t position = 0;
        while (PyDict_Next(state.ptr(), &position, &key, &value)) {
            next.state_keys_.push_back(pybind11::reinterpret_borrow<pybind11::object>(key));
            next.state_values_.push_back(pybind11::reinterpret_borrow<pybind11::object>(value));
        }
        next.params_ = std::make_shared<const std::vector<CachedParam>>(std::move(next.building_));
        next.loads = loads + 1;
        *this = std::move(next);
    }

    // The parameters that have a gradient, as StepItems, when the cache still describes param_groups
    // and state; false (and items left incomplete) when it does not. `keep` holds the cached objects
    // the items point into until the step is over, whatever happens to the cache meanwhile (the GIL
    // is released during the CPU update).
    // defer_float64: float64 parameters are left to the caller (torch's own AdamW math); without it
    // one with a gradient makes the cache stale, so that the caller finds it and steps it.
    bool collect(pybind11::handle param_groups, pybind11::handle state, const std::vector<GroupState> &group_states,
                 std::vector<StepItem> &items, std::shared_ptr<const std::vector<CachedParam>> &keep,
                 bool defer_float64) const {
        if (!params_ || param_groups.ptr() != param_groups_.ptr() || state.ptr() != state_.ptr() ||
            group_states.size() != groups_.size() || !structure_unchanged())
            return false;
        keep = params_;
        const std::vector<CachedParam> &params = *params_;
        const size_t count = params.size();
        items.reserve(count);
        for (size_t j = 0; j < count; j++) {
            // Ahead: the cached Python objects, the parameter's TensorImpl, its autograd metadata, its grad.
            if (j + 4 * kAhead < count) {
                const CachedParam &ahead = params[j + 4 * kAhead];
                for (const pybind11::object *object : {&ahead.param, &ahead.state, &ahead.step, &ahead.exp_avg,
                                                       &ahead.exp_avg_sq, &ahead.master})
                    prefetch_lines(object->ptr(), 1);
            }
            if (j + 3 * kAhead < count) {
                const CachedParam &ahead = params[j + 3 * kAhead];
                prefetch_impl(THPVariable_Unpack(ahead.param.ptr()));
                // The state dict itself, which the lookups below read.
                if (ahead.ready) prefetch_lines(ahead.state.ptr(), 1);
            }
            if (j + 2 * kAhead < count)
                prefetch_lines(THPVariable_Unpack(params[j + 2 * kAhead].param.ptr()).unsafeGetTensorImpl()->autograd_meta(), 2);
            if (j + kAhead < count) {
                const at::Tensor &grad = THPVariable_Unpack(params[j + kAhead].param.ptr()).unsafeGetTensorImpl()->grad();
                if (grad.defined()) prefetch_lines(grad.unsafeGetTensorImpl(), 1);
            }
            const CachedParam &cached = params[j];
            const at::Tensor &param = THPVariable_Unpack(cached.param.ptr());
            // TensorImpl::grad, not Tensor::grad: the latter asks the dispatcher whether param is a leaf.
            const at::Tensor &grad = param.unsafeGetTensorImpl()->grad();
            if (!grad.defined()) continue; // skipped: its step count stays
            if (param.scalar_type() == at::kDouble) {
                if (defer_float64) continue;
                return false;
            }
            if (!cached.ready) return false;
            const GroupState &group_state = group_states[cached.group];
            bool wants_master = group_state.master && is_16bit(param.scalar_type());
            bool second_moment = group_state.second_moment;
            PyObject *state_dict = cached.state.ptr();
            const int moments = group_state.moment_format;
            const bool int8 = moments == FADAM_MOMENT_INT8;
            if (wants_master != cached.wants_master || second_moment != cached.second_moment ||
                group_state.master_format != cached.master_format || moments != cached.moment_format ||
                dict_item(state_dict, key_step) != cached.step.ptr() ||
                dict_item(state_dict, moment_key(moments, false)) != cached.exp_avg.ptr() ||
                (second_moment && dict_item(state_dict, moment_key(moments, true)) != cached.exp_avg_sq.ptr()) ||
                (int8 && dict_item(state_dict, key_exp_avg_scales) != cached.exp_avg_scales.ptr()) ||
                (int8 && second_moment && dict_item(state_dict, key_exp_avg_sq_scales) != cached.exp_avg_sq_scales.ptr()) ||
                (wants_master && dict_item(state_dict, master_key(cached.master_format)) != cached.master.ptr()))
                return false;
            items.push_back({cached.group, borrow(cached.param), borrow(cached.exp_avg),
                             second_moment ? borrow(cached.exp_avg_sq) : undefined_tensor(), borrow(cached.step),
                             wants_master ? borrow(cached.master) : undefined_tensor(), grad,
                             int8 ? borrow(cached.exp_avg_scales) : undefined_tensor(),
                             int8 && second_moment ? borrow(cached.exp_avg_sq_scales) : undefined_tensor(),
                             cached.master_format, moments, rounding_seed(group_state.seed, j)});
        }
        return true;
    }

    // Python's cycle collector must see the objects held here: a group that refers back to the
    // optimizer (which holds this cache) would otherwise make a cycle it can never free.
    int traverse(visitproc visit, void *arg) const {
        for (const pybind11::object *held : {&param_groups_, &state_}) Py_VISIT(held->ptr());
        for (const auto *objects : {&groups_, &group_params_, &state_keys_, &state_values_})
            for (const pybind11::object &held : *objects) Py_VISIT(held.ptr());
        if (params_)
            for (const CachedParam &cached : *params_)
                for (const pybind11::object *held : {&cached.param, &cached.state, &cached.step, &cached.exp_avg,
                                                     &cached.exp_avg_sq, &cached.master, &cached.exp_avg_scales,
                                                     &cached.exp_avg_sq_scales})
                    Py_VISIT(held->ptr());
        return 0;
    }

  private:
    void add(int64_t group, PyObject *param, const GroupState &group_state) {
        if (!THPVariable_Check(param)) throw pybind11::type_error("fusedadam: a parameter is not a tensor");
        CachedParam cached;
        cached.param = pybind11::reinterpret_borrow<pybind11::object>(param);
        cached.group = group;
        const at::Tensor &tensor = THPVariable_Unpack(param);
        cached.wants_master = group_state.master && is_16bit(tensor.scalar_type());
        cached.second_moment = group_state.second_moment;
        cached.master_format = group_state.master_format;
        cached.moment_format = group_state.moment_format;
        const int moments = cached.moment_format;
        bool stepped = tensor.unsafeGetTensorImpl()->grad().defined();
        PyObject *state = dict_item(state_.ptr(), param);
        if (state && PyDict_Check(state)) {
            cached.state = pybind11::reinterpret_borrow<pybind11::object>(state);
            cached.ready = capture(group, tensor, state, key_step, stepped, cached.step) &
                           capture(group, tensor, state, moment_key(moments, false), stepped, cached.exp_avg);
            if (cached.second_moment)
                cached.ready &= capture(group, tensor, state, moment_key(moments, true), stepped, cached.exp_avg_sq);
            if (moments == FADAM_MOMENT_INT8) {
                cached.ready &= capture(group, tensor, state, key_exp_avg_scales, stepped, cached.exp_avg_scales);
                if (cached.second_moment)
                    cached.ready &= capture(group, tensor, state, key_exp_avg_sq_scales, stepped, cached.exp_avg_sq_scales);
            }
            if (cached.wants_master)
                cached.ready &= capture(group, tensor, state, master_key(cached.master_format), stepped, cached.master);
        } else if (stepped) {
            throw pybind11::type_error("fusedadam: " + describe_parameter(group, tensor) +
                                       ": optimizer.state holds no dict for it");
        }
        building_.push_back(std::move(cached));
    }

    // Takes state[key] into out when it is a tensor. A parameter about to be stepped must have it
    // (the error torch.optim.AdamW gives for state it did not make); any other is merely not ready.
    static bool capture(int64_t group, const at::Tensor &param, PyObject *state, PyObject *key, bool stepped,
                        pybind11::object &out) {
        std::string name = key_name(key);
        PyObject *value = dict_item(state, key);
        if (value && THPVariable_Check(value)) {
            out = pybind11::reinterpret_borrow<pybind11::object>(value);
            return true;
        }
        if (!stepped) return false;
        if (!value)
            throw pybind11::key_error("fusedadam: " + describe_parameter(group, param) + ": state has no '" + name + "'");
        throw pybind11::type_error("fusedadam: " + describe_parameter(group, param) + ": state['" + name +
                                   "'] is not a tensor");
    }

    // The groups, their params and the state's entries are the objects snapshotted, in the same order.
    bool structure_unchanged() const {
        pybind11::object groups = as_sequence(param_groups_, "fusedadam: param_groups must be a sequence");
        if ((size_t)PySequence_Fast_GET_SIZE(groups.ptr()) != groups_.size()) return false;
        size_t begin = 0;
        for (size_t g = 0; g < groups_.size(); g++) {
            PyObject *group = PySequence_Fast_GET_ITEM(groups.ptr(), g);
            if (group != groups_[g].ptr() || dict_item(group, key_params) != group_params_[g].ptr()) return false;
            pybind11::object members = as_sequence(group_params_[g], "fusedadam: a group's params must be a sequence");
            size_t end = group_ends_[g];
            if ((size_t)PySequence_Fast_GET_SIZE(members.ptr()) != end - begin) return false;
            PyObject **member = PySequence_Fast_ITEMS(members.ptr());
            for (size_t i = begin; i < end; i++)
                if (member[i - begin] != (*params_)[i].param.ptr()) return false;
            begin = end;
        }
        if ((size_t)PyDict_Size(state_.ptr()) != state_keys_.size()) return false;
        PyObject *key, *value;
        Py_ssize_t position = 0;
        for (size_t i = 0; PyDict_Next(state_.ptr(), &position, &key, &value); i++)
            if (i >= state_keys_.size() || key != state_keys_[i].ptr() || value != state_values_[i].ptr()) return false;
        return true;
    }

    pybind11::object param_groups_, state_;
    std::vector<pybind11::object> groups_, group_params_; // each group's dict and its 'params'
    std::vector<size_t> group_ends_; // (*params_)[group_ends_[g-1] .. group_ends_[g]) are group g's
    std::vector<CachedParam> building_; // params_ while load() fills it
    std::shared_ptr<const std::vector<CachedParam>> params_; // null until loaded
    std::vector<pybind11::object> state_keys_, state_values_;
};

// One optimizer step over the parameters of `cache` that have a gradient. Returns false, having
// done nothing, when the cache no longer describes param_groups and state (the caller rebuilds it
// and calls again). hparams[g] and group_states[g] are group g's, read by the caller this step.
// Each stepped parameter's state['step'] is advanced by one once every update is queued.
// The one-element float32 tensor `value` (grad_multiplier or found_inf, optional) on `device` (-1: the
// CPU), copied there when it lives elsewhere; undefined when not given.
at::Tensor scaling_input(const c10::optional<at::Tensor> &value, int device, const char *what) {
    if (!value || !value->defined()) return at::Tensor();
    if (value->scalar_type() != at::kFloat || value->numel() != 1 || value->layout() != at::kStrided)
        throw pybind11::type_error(std::string("fusedadam: ") + what + " must be a one-element float32 tensor");
    at::Device target = device < 0 ? at::Device(at::kCPU) : at::Device(at::kCUDA, (c10::DeviceIndex)device);
    return value->device() == target ? *value : value->to(target, /*non_blocking=*/true);
}

// capturable=True: t (int64, one element) and the groups' lr (float32, one per group) in tensors on the
// bucket's device (-1: the CPU), read by the update when it runs; copied there when elsewhere.
at::Tensor memory_input(const c10::optional<at::Tensor> &value, int device, at::ScalarType type, int64_t numel,
                        const char *what) {
    if (!value || !value->defined()) return at::Tensor();
    if (value->scalar_type() != type || value->numel() != numel || value->layout() != at::kStrided ||
        !value->is_contiguous())
        throw pybind11::type_error(std::string("fusedadam: ") + what + " must be a contiguous " + dtype_name(type) +
                                   " tensor of " + std::to_string(numel) + " element(s)");
    at::Device target = device < 0 ? at::Device(at::kCPU) : at::Device(at::kCUDA, (c10::DeviceIndex)device);
    return value->device() == target ? *value : value->to(target, /*non_blocking=*/true);
}

// Pointers for fadam_step_scaling into the tensors of scaling_input (kept alive by the caller).
fadam_step_scaling scaling_of(const at::Tensor &grad_multiplier, const at::Tensor &found_inf) {
    fadam_step_scaling scaling{};
    if (grad_multiplier.defined()) scaling.grad_multiplier = grad_multiplier.const_data_ptr<float>();
    if (found_inf.defined()) scaling.found_inf = found_inf.const_data_ptr<float>();
    return scaling;
}

bool fused_step(TableCache &tables, const ParamCache &cache, pybind11::handle param_groups, pybind11::handle state,
                const std::vector<Hparams> &hparams, const std::vector<GroupState> &group_states,
                const c10::optional<at::Tensor> &grad_multiplier, const c10::optional<at::Tensor> &found_inf,
                bool defer_float64, const c10::optional<at::Tensor> &device_step,
                const c10::optional<at::Tensor> &device_lr) {
    // capturable: t and lr come from memory (device_step, device_lr), state['step'] is not read or
    // advanced here (it may live on the GPU; the caller advances it with device ops).
    const bool step_in_memory = device_step && device_step->defined();
    std::vector<StepItem> items;
    std::shared_ptr<const std::vector<CachedParam>> keep;
    if (!cache.collect(param_groups, state, group_states, items, keep, defer_float64)) return false;
    const size_t n = items.size();
    if (n == 0) return true; // no gradient anywhere: nothing to check or do, as torch
    if (hparams.empty() || hparams.size() > FADAM_MAX_GROUPS)
        throw pybind11::value_error("fusedadam: " + std::to_string(hparams.size()) +
                                    " parameter groups; between 1 and " + std::to_string(FADAM_MAX_GROUPS) +
                                    " are supported");
    const int n_groups = (int)hparams.size();
    std::vector<fadam_hparams> groups;
    for (const Hparams &h : hparams) groups.push_back(h.c);

    // 1. Check every tensor and sort it into its bucket.
    std::map<std::pair<int, int64_t>, Bucket> by_key;
    std::deque<at::Tensor> relaid_grads; // a deque: pointers to its elements stay valid
    for (size_t i = 0; i < n; i++) {
        const StepItem &item = items[i];
        // Ahead: every TensorImpl, then their storage, then the step's value.
        if (i + 3 * kAhead < n) {
            const StepItem &ahead = items[i + 3 * kAhead];
            for (const at::Tensor *t : {&*ahead.param, &ahead.grad, &*ahead.exp_avg, &*ahead.exp_avg_sq, &*ahead.step})
                prefetch_impl(*t);
            if (ahead.master->defined()) prefetch_impl(*ahead.master);
        }
        if (i + 2 * kAhead < n) {
            const StepItem &ahead = items[i + 2 * kAhead];
            for (const at::Tensor *t : {&*ahead.param, &ahead.grad, &*ahead.exp_avg, &*ahead.exp_avg_sq, &*ahead.step})
                prefetch_storage(*t);
            if (ahead.master->defined()) prefetch_storage(*ahead.master);
        }
        if (i + kAhead < n) prefetch_data(*items[i + kAhead].step);
        const at::Tensor &param = *item.param;
        auto where = [&] { return describe_parameter(item.group, param); };
        if (param.layout() != at::kStrided)
            throw std::runtime_error("fusedadam: " + where() + " is not a strided (dense) tensor");
        at::DeviceType type = param.device().type();
        if (type != at::kCPU && type != at::kCUDA)
            throw std::runtime_error("fusedadam: " + where() + " is on " + param.device().str() +
                                     "; FusedAdamW steps CPU and CUDA tensors");
#ifdef FADAM_CPU_ONLY
        if (type == at::kCUDA)
            throw std::runtime_error("fusedadam: " + where() + " is a CUDA tensor, and this is the CPU-only build of "
                                     "the extension (built without a CUDA toolkit; see the README's Install)");
#endif
        fadam_tensor entry{};
        if (!to_fadam_dtype(param.scalar_type(), &entry.param_dtype))
            throw pybind11::type_error("fusedadam: " + where() + ": float32, bfloat16 and float16 parameters are supported");
        if (!param.is_non_overlapping_and_dense())
            throw std::runtime_error("fusedadam: " + where() + " has strides " + c10::str(param.strides()) +
                                     " with gaps or overlaps; FusedAdamW steps dense tensors only");
        // A gradient laid out unlike its parameter (assigned by hand; autograd matches them) is
        // stepped from a copy laid out like the parameter, kept until the update is queued.
        const at::Tensor *grad = &item.grad;
        if (grad->layout() == at::kStrided && grad->device() == param.device() && grad->sizes() == param.sizes() &&
            !same_layout(param, *grad)) {
            relaid_grads.push_back(at::empty_like(param, grad->options()).copy_(*grad));
            grad = &relaid_grads.back();
        }
        check_companion(item.group, param, *grad, "grad", false);
        const int moments = item.moment_format;
        if (moments != FADAM_MOMENT_FP32 || item.master_format != FADAM_MASTER_FP32) require_lean_layouts();
        check_state(item.group, param, *item.exp_avg, moment_key(moments, false), moment_type(moments, false));
        if (item.exp_avg_sq->defined())
            check_state(item.group, param, *item.exp_avg_sq, moment_key(moments, true), moment_type(moments, true));
        if (item.exp_avg_scales->defined())
            check_scales(item.group, param, *item.exp_avg_scales, "state['exp_avg_scales']");
        if (item.exp_avg_sq_scales->defined())
            check_scales(item.group, param, *item.exp_avg_sq_scales, "state['exp_avg_sq_scales']");
        if (item.master->defined()) {
            if (entry.param_dtype == FADAM_FLOAT32)
                throw pybind11::value_error("fusedadam: " + where() + ": a float32 parameter is its own master");
            if (item.master_format == FADAM_MASTER_REMAINDER && entry.param_dtype != FADAM_BFLOAT16)
                throw pybind11::type_error("fusedadam: " + where() +
                                           ": master_weights='remainder' needs a bfloat16 parameter");
            check_state(item.group, param, *item.master, master_key(item.master_format), master_type(item.master_format));
            entry.master = item.master->data_ptr();
            entry.master_format = (fadam_master_format)item.master_format;
        }
        entry.moment_format = (fadam_moment_format)moments;
        if (item.exp_avg_scales->defined()) entry.exp_avg_scales = item.exp_avg_scales->data_ptr<float>();
        if (item.exp_avg_sq_scales->defined()) entry.exp_avg_sq_scales = item.exp_avg_sq_scales->data_ptr<float>();
        entry.rounding_seed = item.rounding_seed;
        entry.element_offset = 0;
        if (item.group < 0 || item.group >= n_groups)
            throw pybind11::value_error("fusedadam: " + where() + ": group " + std::to_string(item.group) +
                                        " out of range");
        to_fadam_dtype(grad->scalar_type(), &entry.grad_dtype);
        entry.param = param.data_ptr();
        entry.grad = grad->data_ptr();
        // check_state checked their dtypes: the untyped data_ptr skips a second check.
        entry.exp_avg = item.exp_avg->data_ptr();
        if (item.exp_avg_sq->defined()) entry.exp_avg_sq = item.exp_avg_sq->data_ptr(); // Lion: none, NULL
        entry.numel = param.numel();
        entry.group = (int)item.group;
        int device = type == at::kCUDA ? param.device().index() : -1;
        int64_t step = step_in_memory ? 0 : read_step(item.group, param, *item.step) + 1;
        Bucket &bucket = by_key[{device, -step}]; // within a device, the most advanced step count first
        bucket.device = device;
        bucket.step = step;
        if (by_key.size() == 1 && bucket.tensors.empty()) { // the first bucket is most often the only one
            bucket.tensors.reserve(n);
            bucket.members.reserve(n);
        }
        bucket.tensors.push_back(entry);
        bucket.members.push_back(i);
    }

    // 2. Let the library check what it will be given: the groups' hyperparameters (a call with no
    // tensor checks them and does nothing), and each bucket's tensors (alignment, overlaps) that
    // nothing checks before the first write: a CUDA bucket whose cached table is reused was checked
    // when it was encoded, and a lone CPU bucket is checked by fadam_cpu_step_pool before it writes.
    fadam_step_source first_step{};
    first_step.step = 1;
    raise_on_failure(fadam_cpu_step(nullptr, 0, groups.data(), n_groups, &first_step));
    auto tensors_of = [&](const Bucket &bucket) {
        return [&](size_t n) {
            if (n >= bucket.members.size()) return std::string("not in this call");
            size_t i = bucket.members[n];
            return describe_parameter(items[i].group, *items[i].param);
        };
    };
    std::vector<int> ordinals; // each bucket's index among its device's buckets
    int ordinal = 0, previous_device = -2;
    for (const auto &item : by_key) {
        ordinal = item.second.device == previous_device ? ordinal + 1 : 0;
        previous_device = item.second.device;
        ordinals.push_back(ordinal);
    }
    std::vector<size_t> table_bytes(by_key.size(), 0);
    size_t bucket_index = 0;
    for (const auto &item : by_key) {
        const Bucket &bucket = item.second;
        size_t index = bucket_index++;
        bool checked_later = bucket.device < 0 ? by_key.size() == 1
                                               : tables.holds(bucket, ordinals[index], groups, n_groups);
        if (checked_later) continue;
        raise_on_failure(fadam_table_bytes_groups(bucket.tensors.data(), (int64_t)bucket.tensors.size(), groups.data(),
                                                  n_groups, &table_bytes[index]),
                         tensors_of(bucket));
    }

    // 3. Update: CUDA buckets first (a launch that fails has modified nothing), then the CPU ones.
    bucket_index = 0;
    bool any_cuda = false;
    for (const auto &item : by_key) {
        const Bucket &bucket = item.second;
        size_t index = bucket_index++;
        if (bucket.device < 0) continue;
        any_cuda = true;
#ifdef FADAM_CPU_ONLY // no CUDA bucket there: step 1 refused CUDA tensors
        (void)index;
#else
        c10::cuda::CUDAGuard guard((c10::DeviceIndex)bucket.device);
        c10::cuda::CUDAStream stream = c10::cuda::getCurrentCUDAStream((c10::DeviceIndex)bucket.device);
        const at::Tensor &table =
            tables.table_for(bucket, ordinals[index], groups, n_groups, table_bytes[index], stream);
        fadam_step_source source{};
        source.step = bucket.step;
        at::Tensor t_memory = memory_input(device_step, bucket.device, at::kLong, 1, "device_step");
        at::Tensor lr_memory = memory_input(device_lr, bucket.device, at::kFloat, n_groups, "device_lr");
        if (t_memory.defined()) source.device_step = t_memory.const_data_ptr<int64_t>();
        if (lr_memory.defined()) source.device_lr = lr_memory.const_data_ptr<float>();
        at::Tensor multiplier = scaling_input(grad_multiplier, bucket.device, "grad_multiplier");
        at::Tensor inf_flag = scaling_input(found_inf, bucket.device, "found_inf");
        fadam_step_scaling scaling = scaling_of(multiplier, inf_flag);
        raise_on_failure(fadam_step_table_scaled(table.data_ptr(), groups.data(), n_groups, &source, &scaling,
                                                 reinterpret_cast<fadam_stream>(stream.stream())),
                         tensors_of(bucket));
        tables.launches++;
#endif
    }
    if (any_cuda) tables.drop_unused();
    for (const auto &item : by_key) {
        const Bucket &bucket = item.second;
        if (bucket.device >= 0) continue;
        fadam_step_source source{};
        source.step = bucket.step;
        at::Tensor t_memory = memory_input(device_step, -1, at::kLong, 1, "device_step");
        at::Tensor lr_memory = memory_input(device_lr, -1, at::kFloat, n_groups, "device_lr");
        if (t_memory.defined()) source.device_step = t_memory.const_data_ptr<int64_t>();
        if (lr_memory.defined()) source.device_lr = lr_memory.const_data_ptr<float>();
        at::Tensor multiplier = scaling_input(grad_multiplier, -1, "grad_multiplier");
        at::Tensor inf_flag = scaling_input(found_inf, -1, "found_inf");
        fadam_step_scaling scaling = scaling_of(multiplier, inf_flag);
        fadam_status status;
        fadam_cpu_pool *pool = tables.cpu_pool();
        {
            pybind11::gil_scoped_release no_gil;
            status = fadam_cpu_step_scaled(pool, bucket.tensors.data(), (int64_t)bucket.tensors.size(), groups.data(),
                                           n_groups, &source, &scaling);
        }
        raise_on_failure(status, tensors_of(bucket));
        tables.cpu_calls++;
    }

    // 4. Record what was written: step counts, and the version counters autograd checks; and let
    // go of the grads (here, where their TensorImpls are fetched ahead, rather than all at the end).
    for (size_t i = 0; i < n; i++) {
        if (i + 2 * kAhead < n) {
            const StepItem &ahead = items[i + 2 * kAhead];
            for (const at::Tensor *t : {&*ahead.param, &ahead.grad, &*ahead.exp_avg, &*ahead.step})
                prefetch_lines(t->unsafeGetTensorImpl(), 1); // the reference count and version counter
            if (ahead.master->defined()) prefetch_lines(ahead.master->unsafeGetTensorImpl(), 1);
            if (ahead.exp_avg_sq->defined()) prefetch_lines(ahead.exp_avg_sq->unsafeGetTensorImpl(), 1);
            prefetch_storage(*ahead.step);
        }
        if (i + kAhead < n) {
            const StepItem &ahead = items[i + kAhead];
            prefetch_data(*ahead.step);
        }
        StepItem &item = items[i];
        if (!step_in_memory)
            *static_cast<float *>(item.step->data_ptr()) += 1.0f; // read_step made it a CPU float32 scalar
        for (const at::Tensor *t : {&*item.step, &*item.param, &*item.exp_avg})
            t->unsafeGetTensorImpl()->bump_version();
        if (item.exp_avg_sq->defined()) item.exp_avg_sq->unsafeGetTensorImpl()->bump_version();
        for (const at::Tensor *t : {&*item.master, &*item.exp_avg_scales, &*item.exp_avg_sq_scales})
            if (t->defined()) t->unsafeGetTensorImpl()->bump_version();
        item.grad.reset();
    }
    return true;
}

} // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.doc() = "fusedadam's C library, for fusedadam.torch";
    for (auto [key, name] : {std::pair{&key_params, "params"}, {&key_step, "step"}, {&key_exp_avg, "exp_avg"},
                             {&key_exp_avg_sq, "exp_avg_sq"}, {&key_master_param, "master_param"},
                             {&key_master_remainder, "master_remainder"}, {&key_exp_avg_bf16, "exp_avg_bf16"},
                             {&key_exp_avg_sq_bf16, "exp_avg_sq_bf16"}, {&key_exp_avg_int8, "exp_avg_int8"},
                             {&key_exp_avg_sq_uint8, "exp_avg_sq_uint8"}, {&key_exp_avg_scales, "exp_avg_scales"},
                             {&key_exp_avg_sq_scales, "exp_avg_sq_scales"}})
        if (!(*key = PyUnicode_InternFromString(name))) throw pybind11::error_already_set();
    m.attr("MAX_GROUPS") = FADAM_MAX_GROUPS;
    m.def("version", []() { return std::string(fadam_version_string()); }, "The C library's version");
    // The hyperparameters cross as a fadam_hparams, one per group, made by fusedadam.torch from a
    // group's dict in one place (FusedAdamW._hparams); the C library's checks are the only ones.
    m.attr("ADAMW") = (int)FADAM_ADAMW;
    m.attr("ADAM_L2") = (int)FADAM_ADAM_L2;
    m.attr("LION") = (int)FADAM_LION;
    pybind11::class_<GroupState>(m, "GroupState", "Which state tensors a parameter group's step reads")
        .def(pybind11::init([](bool master, bool second_moment, int master_format, int moment_format, uint64_t seed) {
                 return GroupState{master, second_moment, master_format, moment_format, seed};
             }),
             pybind11::kw_only(), pybind11::arg("master") = true, pybind11::arg("second_moment") = true,
             pybind11::arg("master_format") = (int)FADAM_MASTER_FP32,
             pybind11::arg("moment_format") = (int)FADAM_MOMENT_FP32, pybind11::arg("seed") = 0)
        .def_readonly("master", &GroupState::master)
        .def_readonly("second_moment", &GroupState::second_moment)
        .def_readonly("master_format", &GroupState::master_format)
        .def_readonly("moment_format", &GroupState::moment_format)
        .def_readonly("seed", &GroupState::seed);
    m.attr("MASTER_FP32") = (int)FADAM_MASTER_FP32;
    m.attr("MASTER_REMAINDER") = (int)FADAM_MASTER_REMAINDER;
    m.attr("MOMENT_FP32") = (int)FADAM_MOMENT_FP32;
    m.attr("MOMENT_BF16") = (int)FADAM_MOMENT_BF16;
    m.attr("MOMENT_INT8") = (int)FADAM_MOMENT_INT8;
    m.attr("MOMENT_BLOCK") = FADAM_MOMENT_BLOCK;
    m.def("lean_layouts_supported", &lean_layouts_supported,
          "Whether the C library steps the lean layouts (remainder masters, bf16 and 8-bit moments)");
    m.def("join_master", &join_master, "fp32 masters from bf16 params and int16 remainders (CPU)");
    m.def("split_master", &split_master,
          "(bf16 params, int16 remainders) of fp32 masters (CPU), by fadam_master_split; beside: the bf16 params "
          "they go with (an RNE-rounded even tie among them gets fadam_master_split_rne's remainder)",
          pybind11::arg("master"), pybind11::arg("beside") = pybind11::none());
    m.def("dequantize_moment", &dequantize_moment, "8-bit codes and block scales -> float32 (CPU)");
    m.def("quantize_moment", &quantize_moment, "float32 -> (8-bit codes, block scales), round to nearest (CPU)",
          pybind11::arg("values"), pybind11::arg("second"));
    fadam_hparams defaults = fadam_hparams_default();
    pybind11::class_<Hparams>(m, "Hparams", "One parameter group's hyperparameters (the C fadam_hparams)")
        .def(pybind11::init([](float lr, float beta1, float beta2, float eps, float weight_decay, int mode,
                               bool bias_correction, bool maximize) {
                 Hparams h{fadam_hparams_default()};
                 h.c.lr = lr;
                 h.c.beta1 = beta1;
                 h.c.beta2 = beta2;
                 h.c.eps = eps;
                 h.c.weight_decay = weight_decay;
                 h.c.mode = (fadam_mode)mode;
                 h.c.bias_correction = bias_correction ? 1 : 0;
                 h.c.maximize = maximize ? 1 : 0;
                 return h;
             }),
             pybind11::kw_only(), pybind11::arg("lr") = defaults.lr, pybind11::arg("beta1") = defaults.beta1,
             pybind11::arg("beta2") = defaults.beta2, pybind11::arg("eps") = defaults.eps,
             pybind11::arg("weight_decay") = defaults.weight_decay, pybind11::arg("mode") = (int)defaults.mode,
             pybind11::arg("bias_correction") = defaults.bias_correction != 0,
             pybind11::arg("maximize") = defaults.maximize != 0)
        .def_property_readonly("lr", [](const Hparams &h) { return h.c.lr; })
        .def_property_readonly("beta1", [](const Hparams &h) { return h.c.beta1; })
        .def_property_readonly("beta2", [](const Hparams &h) { return h.c.beta2; })
        .def_property_readonly("eps", [](const Hparams &h) { return h.c.eps; })
        .def_property_readonly("weight_decay", [](const Hparams &h) { return h.c.weight_decay; })
        .def_property_readonly("mode", [](const Hparams &h) { return (int)h.c.mode; })
        .def_property_readonly("bias_correction", [](const Hparams &h) { return h.c.bias_correction != 0; })
        .def_property_readonly("maximize", [](const Hparams &h) { return h.c.maximize != 0; })
        .def("validate", [](const Hparams &h) { raise_on_failure(fadam_hparams_validate(&h.c)); },
             "Raises ValueError with the C library's message (fadam_hparams_validate) when a value is out of range")
        .def("__repr__", [](const Hparams &h) {
            std::ostringstream out;
            out << "Hparams(lr=" << h.c.lr << ", beta1=" << h.c.beta1 << ", beta2=" << h.c.beta2 << ", eps=" << h.c.eps
                << ", weight_decay=" << h.c.weight_decay << ", mode=" << (int)h.c.mode
                << ", bias_correction=" << h.c.bias_correction << ", maximize=" << h.c.maximize << ")";
            return out.str();
        });
    m.def("cuda_device_count", &fadam_cuda_device_count, "CUDA devices the C library can use");
    pybind11::class_<TableCache>(m, "TableCache", "Device tables of one optimizer, reused while pointers stay put")
        .def(pybind11::init<>())
        .def("clear", &TableCache::clear)
        .def("__len__", &TableCache::size)
        .def_readonly("encodes", &TableCache::encodes)
        .def_readonly("launches", &TableCache::launches)
        .def_readonly("cpu_calls", &TableCache::cpu_calls)
        .def_readonly("cpu_threads", &TableCache::cpu_threads);
    auto gc_support = [](PyHeapTypeObject *heap_type) {
        PyTypeObject *type = &heap_type->ht_type;
        type->tp_flags |= Py_TPFLAGS_HAVE_GC;
        type->tp_traverse = [](PyObject *self, visitproc visit, void *arg) {
            Py_VISIT(Py_TYPE(self)); // a heap type's instances hold a reference to it
            if (!pybind11::detail::is_holder_constructed(self)) return 0;
            return pybind11::cast<const ParamCache &>(pybind11::handle(self)).traverse(visit, arg);
        };
        type->tp_clear = [](PyObject *self) {
            if (pybind11::detail::is_holder_constructed(self)) pybind11::cast<ParamCache &>(pybind11::handle(self)).clear();
            return 0;
        };
    };
    pybind11::class_<ParamCache>(m, "ParamCache",
                                 "An optimizer's parameters and state tensors, checked against it at every step",
                                 pybind11::custom_type_setup(gc_support))
        .def(pybind11::init<>())
        .def_readonly("loads", &ParamCache::loads)
        .def("load", &ParamCache::load, pybind11::arg("param_groups"), pybind11::arg("state"),
             pybind11::arg("group_states"))
        .def("clear", &ParamCache::clear)
        .def("__len__", &ParamCache::size);
    m.def("step", &fused_step,
          "One fused AdamW/Adam/Lion step over the cached parameters that have a gradient; False (nothing done) "
          "when the cache no longer matches param_groups and state",
          pybind11::arg("tables"), pybind11::arg("cache"), pybind11::arg("param_groups"), pybind11::arg("state"),
          pybind11::arg("hparams"), pybind11::arg("group_states"), pybind11::arg("grad_multiplier") = pybind11::none(),
          pybind11::arg("found_inf") = pybind11::none(), pybind11::arg("defer_float64") = false,
          pybind11::arg("device_step") = pybind11::none(), pybind11::arg("device_lr") = pybind11::none());
}
