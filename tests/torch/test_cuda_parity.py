"""test_cuda_parity.py - FusedAdamW on CUDA tensors (fusedadam's kernel) against
torch.optim.AdamW(fused=True) and torch.optim.Adam(fused=True): one launch per step on PyTorch's
current stream, the device table reused while no pointer changes, CPU and CUDA parameters in one
optimizer, checkpoints from torch's fused AdamW. Skipped without a GPU."""

import torch

from fusedadam import _C
from fusedadam.torch import FusedAdamW
from harness import FP32_TOL, Skip, check_close, check_equal, run
from parity import run_parity

GROUPS = [
    {"lr": 1e-2, "weight_decay": 0.1},
    {"lr": 3e-3, "weight_decay": 0.0, "betas": (0.8, 0.99)},
    {"lr": 1e-3, "weight_decay": 0.05, "eps": 1e-6, "maximize": True},
]
TORCH_FUSED = {"fused": True}


def need_gpu():
    if not torch.cuda.is_available():
        raise Skip("no CUDA device")
    if _C.cuda_device_count() == 0:
        raise Skip(f"torch sees {torch.cuda.device_count()} GPU(s), fusedadam's CUDA 13 runtime none (driver older than 580?)")


def cosine(optimizer):
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=8, eta_min=1e-4)


def adamw_fp32():
    need_gpu()
    run_parity(GROUPS, device="cuda", reference_kwargs=TORCH_FUSED, scheduler=cosine,
               added_group={"lr": 5e-3, "weight_decay": 0.2}, params_per_group=8)


def adam_l2_fp32():
    need_gpu()
    run_parity(GROUPS, device="cuda", reference_class=torch.optim.Adam, reference_kwargs=TORCH_FUSED,
               fused_kwargs={"decoupled_weight_decay": False}, scheduler=cosine)


def bf16_master():
    need_gpu()
    run_parity(GROUPS, device="cuda", dtype=torch.bfloat16, reference_kwargs=TORCH_FUSED, scheduler=cosine)


def fp16_no_master():
    need_gpu()
    run_parity(GROUPS, device="cuda", dtype=torch.float16, reference_kwargs=TORCH_FUSED,
               fused_kwargs={"master_weights": False}, round_reference=True)


def mixed_dtypes_one_launch():
    """fp32, bf16 and fp16 parameters in several groups: still one launch per step."""
    need_gpu()
    dtypes = [torch.float32, torch.bfloat16, torch.float16]
    params = [torch.nn.Parameter(torch.randn(n, device="cuda").to(dtypes[n % 3])) for n in range(1, 40)]
    groups = [{"params": params[i::4], "lr": 1e-3 * (i + 1), "weight_decay": 0.01 * i} for i in range(4)]
    opt = FusedAdamW(groups)
    for step in range(5):
        for p in params:
            if p.grad is None:
                p.grad = torch.randn_like(p)
            else:
                p.grad.normal_()  # the same buffers: the table stays valid
        opt.step()
        if opt._tables.launches != step + 1:
            raise AssertionError(f"{opt._tables.launches} launches after {step + 1} steps")
    if opt._tables.encodes != 1:
        raise AssertionError(f"the table was encoded {opt._tables.encodes} times for unchanged pointers")


def table_follows_new_gradients():
    """zero_grad(set_to_none=True) gives new gradient buffers: the table is re-encoded when a pointer
    changed, and the result matches torch's."""
    need_gpu()
    values = [torch.randn(n, device="cuda") for n in (1000, 3, 4097)]
    params = [torch.nn.Parameter(v.clone()) for v in values]
    reference_params = [torch.nn.Parameter(v.clone()) for v in values]
    opt = FusedAdamW(params, lr=1e-2)
    reference = torch.optim.AdamW(reference_params, lr=1e-2, fused=True)
    keep = []  # holding old gradients makes the allocator give new addresses
    for step in range(6):
        opt.zero_grad(set_to_none=True)
        reference.zero_grad(set_to_none=True)
        for p, r in zip(params, reference_params):
            p.grad = torch.randn_like(p)
            r.grad = p.grad.clone()
            keep.append(p.grad)
        opt.step()
        reference.step()
        for index, (p, r) in enumerate(zip(params, reference_params)):
            check_close(f"step {step} parameter {index}", p, r, **FP32_TOL)
    if opt._tables.encodes != 6:
        raise AssertionError(f"{opt._tables.encodes} encodes for 6 sets of new gradient buffers")


def current_stream():
    """The step runs on PyTorch's current stream: a side stream's step is complete once it is synchronized."""
    need_gpu()
    values = [torch.randn(n, device="cuda") for n in (5000, 77)]
    params = [torch.nn.Parameter(v.clone()) for v in values]
    reference_params = [torch.nn.Parameter(v.clone()) for v in values]
    opt = FusedAdamW(params, lr=1e-2)
    reference = torch.optim.AdamW(reference_params, lr=1e-2, fused=True)
    side = torch.cuda.Stream()
    for step in range(3):
        for p, r in zip(params, reference_params):
            p.grad = torch.randn_like(p)
            r.grad = p.grad.clone()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            opt.step()
        side.synchronize()
        reference.step()
        for index, (p, r) in enumerate(zip(params, reference_params)):
            check_close(f"step {step} parameter {index}", p, r, **FP32_TOL)


def cpu_and_cuda_parameters():
    """CPU parameters go through the CPU implementation, CUDA ones through the kernel, in one step."""
    need_gpu()

    def make():
        return [torch.nn.Parameter(torch.randn(31)), torch.nn.Parameter(torch.randn(64, 3, device="cuda")),
                torch.nn.Parameter(torch.randn(5, 5))]

    run_parity([{"weight_decay": 0.1}, {"lr": 3e-3}], make_params=make)


def misplaced_state():
    """A moment moved to the CPU is refused before anything is written."""
    need_gpu()
    p = torch.nn.Parameter(torch.randn(8, device="cuda"))
    opt = FusedAdamW([p])
    p.grad = torch.randn_like(p)
    opt.step()
    opt.state[p]["exp_avg"] = opt.state[p]["exp_avg"].cpu()
    before = p.detach().clone()
    try:
        opt.step()
    except RuntimeError as error:
        if "one device" not in str(error):
            raise AssertionError(f"message {error}")
    else:
        raise AssertionError("no error for a moment on the CPU")
    check_equal("parameter after a refused step", p, before)
    if float(opt.state[p]["step"]) != 1:
        raise AssertionError("the refused step advanced the step count")


def from_torch_fused_checkpoint():
    """torch's fused AdamW keeps step on the GPU: loading makes it a CPU float32, and training goes on."""
    need_gpu()
    values = [torch.randn(n, device="cuda") for n in (100, 7)]
    params = [torch.nn.Parameter(v.clone()) for v in values]
    reference = torch.optim.AdamW(params, lr=1e-2, fused=True)
    for _ in range(3):
        for p in params:
            p.grad = torch.randn_like(p)
        reference.step()
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt = FusedAdamW(copies)
    opt.load_state_dict(reference.state_dict())
    for p, c in zip(params, copies):
        step = opt.state[c]["step"]
        if step.device.type != "cpu" or float(step) != 3:
            raise AssertionError(f"loaded step {step!r}")
        p.grad = torch.randn_like(p)
        c.grad = p.grad.clone()
    reference.step()
    opt.step()
    for index, (p, c) in enumerate(zip(params, copies)):
        check_close(f"parameter {index}", c, p, **FP32_TOL)


def trains_like_fp32():
    """A bf16 model with masters follows its fp32 twin: the claim of the master weights."""
    need_gpu()
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 1)).cuda()
    twin = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 1)).cuda()
    twin.load_state_dict(model.state_dict())
    model = model.bfloat16()
    opt = FusedAdamW(model.parameters(), lr=3e-3)
    twin_opt = torch.optim.AdamW(twin.parameters(), lr=3e-3, fused=True)
    x = torch.randn(256, 32, device="cuda")
    y = x[:, :1].sin()
    with torch.no_grad():
        initial = torch.nn.functional.mse_loss(twin(x), y).item()
    for _ in range(200):
        for m, o, inputs in ((model, opt, x.bfloat16()), (twin, twin_opt, x)):
            o.zero_grad()
            torch.nn.functional.mse_loss(m(inputs).float(), y).backward()
            o.step()
    with torch.no_grad():
        loss = torch.nn.functional.mse_loss(model(x.bfloat16()).float(), y).item()
        twin_loss = torch.nn.functional.mse_loss(twin(x), y).item()
    if not (loss < 0.25 * initial and loss < 2 * twin_loss + 5e-3):
        raise AssertionError(f"bf16 with masters reached loss {loss:.4g}, the fp32 twin {twin_loss:.4g} "
                             f"(from {initial:.4g})")


if __name__ == "__main__":
    run(
        [
            ("cuda_adamw_fp32_vs_torch_fused", adamw_fp32),
            ("cuda_adam_l2_fp32_vs_torch_fused_adam", adam_l2_fp32),
            ("cuda_bf16_master_vs_torch_fused", bf16_master),
            ("cuda_fp16_no_master", fp16_no_master),
            ("cuda_mixed_dtypes_one_launch", mixed_dtypes_one_launch),
            ("cuda_table_follows_new_gradients", table_follows_new_gradients),
            ("cuda_current_stream", current_stream),
            ("cuda_cpu_and_cuda_parameters", cpu_and_cuda_parameters),
            ("cuda_misplaced_state", misplaced_state),
            ("cuda_from_torch_fused_checkpoint", from_torch_fused_checkpoint),
            ("cuda_bf16_trains_like_fp32", trains_like_fp32),
        ]
    )
