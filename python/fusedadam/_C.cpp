// _C.cpp - the PyTorch binding of fusedadam: a thin layer that turns lists of torch tensors into
// fadam_tensor entries and steps them through the C library. CUDA tensors go through the functional
// call (one fadam_step_table launch per device on PyTorch's current stream, with the device table
// cached while no pointer changes); CPU tensors go through fadam_cpu_step. Everything is checked
// before anything is written, so a raised error leaves parameters, state and step counts as they were.
// Only the headers needed: <torch/extension.h> would triple the compile time.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/csrc/utils/pybind.h>

#include <algorithm>
#include <cmath>
#include <deque>
#include <functional>
#include <map>
#include <regex>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "fusedadam.h"

namespace {

// (lr, beta1, beta2, eps, weight_decay, decoupled_weight_decay, bias_correction, maximize)
using GroupHparams = std::tuple<double, double, double, double, double, bool, bool, bool>;

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
// which parameter each "tensor N" the message names is.
void raise_on_failure(fadam_status status, const std::function<std::string(size_t)> &describe_tensor = nullptr) {
    if (status == FADAM_SUCCESS) return;
    std::string detail = fadam_last_error_message();
    std::string message = "fusedadam: " + detail + " (" + fadam_status_string(status) + ")";
    if (describe_tensor) {
        std::set<size_t> named;
        std::regex tensor_number("tensor (\\d+)");
        for (std::sregex_iterator it(detail.begin(), detail.end(), tensor_number), end; it != end; ++it)
            named.insert(std::stoul((*it)[1].str()));
        for (size_t n : named) message += "; tensor " + std::to_string(n) + " is " + describe_tensor(n);
    }
    if (status == FADAM_ERR_INVALID_VALUE) throw pybind11::value_error(message);
    if (status == FADAM_ERR_UNSUPPORTED_DTYPE) throw pybind11::type_error(message);
    throw std::runtime_error(message);
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
    if (a.sizes() != b.sizes()) return false;
    for (int64_t d = 0; d < a.dim(); d++)
        if (a.size(d) > 1 && a.stride(d) != b.stride(d)) return false;
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
    at::Tensor device_table; // uint8, from PyTorch's caching allocator
    cudaStream_t allocated_on = nullptr;
    bool used = false;
};

// Device tables of one optimizer, one per (device, bucket), plus counters the tests read.
class TableCache {
  public:
    int64_t encodes = 0;  // tables encoded and copied to a device
    int64_t launches = 0; // fadam_step_table calls
    int64_t cpu_calls = 0;

    void clear() { tables_.clear(); }
    size_t size() const { return tables_.size(); }

    // The device table for `bucket`, encoded and copied on `stream` when it differs from the cached one.
    const at::Tensor &table_for(const Bucket &bucket, int ordinal, int n_groups, size_t table_bytes,
                                const c10::cuda::CUDAStream &stream) {
        CachedTable &cached = tables_[{bucket.device, ordinal}];
        cached.used = true;
        bool unchanged = cached.device_table.defined() && cached.n_groups == n_groups &&
                         cached.tensors.size() == bucket.tensors.size() &&
                         std::equal(cached.tensors.begin(), cached.tensors.end(), bucket.tensors.begin(), same_entry);
        if (unchanged) {
            // The caching allocator must not hand the table out again while another stream reads it.
            if (stream.stream() != cached.allocated_on) cached.device_table.record_stream(stream);
            return cached.device_table;
        }
        // Pinned memory from PyTorch's caching host allocator: the copy is asynchronous, and the
        // allocator keeps the block until the copy has run.
        at::Tensor host_table =
            at::empty({(int64_t)table_bytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
        raise_on_failure(fadam_table_encode(bucket.tensors.data(), (int64_t)bucket.tensors.size(), n_groups,
                                            host_table.data_ptr(), table_bytes));
        at::Tensor device_table = at::empty(
            {(int64_t)table_bytes}, at::TensorOptions().dtype(at::kByte).device(at::kCUDA, bucket.device));
        device_table.copy_(host_table, /*non_blocking=*/true);
        cached.tensors = bucket.tensors;
        cached.n_groups = n_groups;
        cached.device_table = device_table;
        cached.allocated_on = stream.stream();
        encodes++;
        return cached.device_table;
    }

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
    std::map<std::pair<int, int>, CachedTable> tables_;
};

fadam_hparams to_fadam_hparams(const GroupHparams &h) {
    fadam_hparams out = fadam_hparams_default();
    out.lr = (float)std::get<0>(h);
    out.beta1 = (float)std::get<1>(h);
    out.beta2 = (float)std::get<2>(h);
    out.eps = (float)std::get<3>(h);
    out.weight_decay = (float)std::get<4>(h);
    out.mode = std::get<5>(h) ? FADAM_ADAMW : FADAM_ADAM_L2;
    out.bias_correction = std::get<6>(h) ? 1 : 0;
    out.maximize = std::get<7>(h) ? 1 : 0;
    return out;
}

// The number of steps taken so far, from PyTorch's state['step'] (a CPU float32 scalar tensor).
int64_t read_step(int64_t group, const at::Tensor &param, const at::Tensor &step) {
    if (!step.defined() || step.device().type() != at::kCPU || step.scalar_type() != at::kFloat ||
        step.numel() != 1)
        throw std::runtime_error("fusedadam: " + describe_parameter(group, param) +
                                 ": state['step'] must be a one-element float32 tensor on the CPU");
    float taken = *step.data_ptr<float>();
    if (!(taken >= 0.0f && taken < 16777216.0f) || taken != std::floor(taken))
        throw pybind11::value_error("fusedadam: " + describe_parameter(group, param) + ": state['step']=" +
                                    std::to_string(taken) + " is not a step count in [0, 2^24)");
    return (int64_t)taken;
}

// One optimizer step over parallel lists (one entry per parameter that has a gradient). masters[i]
// is None where the parameter is its own master. group_of[i] indexes hparams. steps[i] is the
// parameter's state['step'], advanced by one once every update is queued.
void fused_step(TableCache &cache, const std::vector<at::Tensor> &params, const std::vector<at::Tensor> &grads,
                const std::vector<c10::optional<at::Tensor>> &masters, const std::vector<at::Tensor> &exp_avgs,
                const std::vector<at::Tensor> &exp_avg_sqs, const std::vector<int64_t> &group_of,
                const std::vector<GroupHparams> &hparams, const std::vector<at::Tensor> &steps) {
    const size_t n = params.size();
    if (grads.size() != n || masters.size() != n || exp_avgs.size() != n || exp_avg_sqs.size() != n ||
        group_of.size() != n || steps.size() != n)
        throw pybind11::value_error("fusedadam: step: the per-parameter lists differ in length");
    if (hparams.empty() || hparams.size() > FADAM_MAX_GROUPS)
        throw pybind11::value_error("fusedadam: " + std::to_string(hparams.size()) +
                                    " parameter groups; between 1 and " + std::to_string(FADAM_MAX_GROUPS) +
                                    " are supported");
    const int n_groups = (int)hparams.size();
    std::vector<fadam_hparams> groups;
    for (const GroupHparams &h : hparams) groups.push_back(to_fadam_hparams(h));

    // 1. Check every tensor and sort it into its bucket.
    std::map<std::pair<int, int64_t>, Bucket> by_key;
    std::deque<at::Tensor> relaid_grads; // a deque: pointers to its elements stay valid
    for (size_t i = 0; i < n; i++) {
        const at::Tensor &param = params[i];
        auto where = [&] { return describe_parameter(group_of[i], param); };
        if (param.layout() != at::kStrided)
            throw std::runtime_error("fusedadam: " + where() + " is not a strided (dense) tensor");
        at::DeviceType type = param.device().type();
        if (type != at::kCPU && type != at::kCUDA)
            throw std::runtime_error("fusedadam: " + where() + " is on " + param.device().str() +
                                     "; FusedAdamW steps CPU and CUDA tensors");
        fadam_tensor entry{};
        if (!to_fadam_dtype(param.scalar_type(), &entry.param_dtype))
            throw pybind11::type_error("fusedadam: " + where() + ": float32, bfloat16 and float16 parameters are supported");
        if (!param.is_non_overlapping_and_dense())
            throw std::runtime_error("fusedadam: " + where() + " has strides " + c10::str(param.strides()) +
                                     " with gaps or overlaps; FusedAdamW steps dense tensors only");
        // A gradient laid out unlike its parameter (assigned by hand; autograd matches them) is
        // stepped from a copy laid out like the parameter, kept until the update is queued.
        const at::Tensor *grad = &grads[i];
        if (grad->layout() == at::kStrided && grad->device() == param.device() && grad->sizes() == param.sizes() &&
            !same_layout(param, *grad)) {
            relaid_grads.push_back(at::empty_like(param, grad->options()).copy_(*grad));
            grad = &relaid_grads.back();
        }
        check_companion(group_of[i], param, *grad, "grad", false);
        check_companion(group_of[i], param, exp_avgs[i], "state['exp_avg']", true);
        check_companion(group_of[i], param, exp_avg_sqs[i], "state['exp_avg_sq']", true);
        if (masters[i].has_value()) {
            if (entry.param_dtype == FADAM_FLOAT32)
                throw pybind11::value_error("fusedadam: " + where() + ": a float32 parameter is its own master");
            check_companion(group_of[i], param, *masters[i], "state['master_param']", true);
            entry.master = masters[i]->data_ptr<float>();
        }
        if (group_of[i] < 0 || group_of[i] >= n_groups)
            throw pybind11::value_error("fusedadam: " + where() + ": group " + std::to_string(group_of[i]) +
                                        " out of range");
        to_fadam_dtype(grad->scalar_type(), &entry.grad_dtype);
        entry.param = param.data_ptr();
        entry.grad = grad->data_ptr();
        entry.exp_avg = exp_avgs[i].data_ptr<float>();
        entry.exp_avg_sq = exp_avg_sqs[i].data_ptr<float>();
        entry.numel = param.numel();
        entry.group = (int)group_of[i];
        int device = type == at::kCUDA ? param.device().index() : -1;
        int64_t step = read_step(group_of[i], param, steps[i]) + 1;
        Bucket &bucket = by_key[{device, -step}]; // within a device, the most advanced step count first
        bucket.device = device;
        bucket.step = step;
        bucket.tensors.push_back(entry);
        bucket.members.push_back(i);
    }

    // 2. Let the library check what it will be given: the groups' hyperparameters (a call with no
    // tensor checks them and does nothing), and each bucket's tensors (alignment, overlaps).
    fadam_step_source first_step{};
    first_step.step = 1;
    raise_on_failure(fadam_cpu_step(nullptr, 0, groups.data(), n_groups, &first_step));
    auto tensors_of = [&](const Bucket &bucket) {
        return [&](size_t n) {
            if (n >= bucket.members.size()) return std::string("not in this call");
            size_t i = bucket.members[n];
            return describe_parameter(group_of[i], params[i]);
        };
    };
    std::vector<size_t> table_bytes;
    for (const auto &item : by_key) {
        size_t bytes = 0;
        raise_on_failure(fadam_table_bytes(item.second.tensors.data(), (int64_t)item.second.tensors.size(),
                                           n_groups, &bytes),
                         tensors_of(item.second));
        table_bytes.push_back(bytes);
    }

    // 3. Update: CUDA buckets first (a launch that fails has modified nothing), then the CPU ones.
    size_t bucket_index = 0;
    int ordinal = 0, previous_device = -2;
    for (const auto &item : by_key) {
        const Bucket &bucket = item.second;
        size_t bytes = table_bytes[bucket_index++];
        if (bucket.device < 0) continue;
        ordinal = bucket.device == previous_device ? ordinal + 1 : 0;
        previous_device = bucket.device;
        c10::cuda::CUDAGuard guard((c10::DeviceIndex)bucket.device);
        c10::cuda::CUDAStream stream = c10::cuda::getCurrentCUDAStream((c10::DeviceIndex)bucket.device);
        const at::Tensor &table = cache.table_for(bucket, ordinal, n_groups, bytes, stream);
        fadam_step_source source{};
        source.step = bucket.step;
        raise_on_failure(fadam_step_table(table.data_ptr(), groups.data(), n_groups, &source,
                                          reinterpret_cast<fadam_stream>(stream.stream())),
                         tensors_of(bucket));
        cache.launches++;
    }
    if (previous_device != -2) cache.drop_unused();
    for (const auto &item : by_key) {
        const Bucket &bucket = item.second;
        if (bucket.device >= 0) continue;
        fadam_step_source source{};
        source.step = bucket.step;
        fadam_status status;
        {
            pybind11::gil_scoped_release no_gil;
            status = fadam_cpu_step(bucket.tensors.data(), (int64_t)bucket.tensors.size(), groups.data(), n_groups,
                                    &source);
        }
        raise_on_failure(status, tensors_of(bucket));
        cache.cpu_calls++;
    }

    // 4. Record what was written: step counts, and the version counters autograd checks.
    for (size_t i = 0; i < n; i++) {
        *steps[i].data_ptr<float>() += 1.0f;
        steps[i].unsafeGetTensorImpl()->bump_version();
        params[i].unsafeGetTensorImpl()->bump_version();
        exp_avgs[i].unsafeGetTensorImpl()->bump_version();
        exp_avg_sqs[i].unsafeGetTensorImpl()->bump_version();
        if (masters[i].has_value()) masters[i]->unsafeGetTensorImpl()->bump_version();
    }
}

} // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.doc() = "fusedadam's C library, for fusedadam.torch";
    m.attr("MAX_GROUPS") = FADAM_MAX_GROUPS;
    m.def("version", []() { return std::string(fadam_version_string()); }, "The C library's version");
    m.def("cuda_device_count", &fadam_cuda_device_count, "CUDA devices the C library can use");
    pybind11::class_<TableCache>(m, "TableCache", "Device tables of one optimizer, reused while pointers stay put")
        .def(pybind11::init<>())
        .def("clear", &TableCache::clear)
        .def("__len__", &TableCache::size)
        .def_readonly("encodes", &TableCache::encodes)
        .def_readonly("launches", &TableCache::launches)
        .def_readonly("cpu_calls", &TableCache::cpu_calls);
    m.def("step", &fused_step, "One fused AdamW/Adam step over parallel lists of tensors", pybind11::arg("cache"),
          pybind11::arg("params"), pybind11::arg("grads"), pybind11::arg("masters"), pybind11::arg("exp_avgs"),
          pybind11::arg("exp_avg_sqs"), pybind11::arg("group_of"), pybind11::arg("hparams"),
          pybind11::arg("steps"));
}
