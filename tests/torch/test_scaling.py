"""test_scaling.py - clipping and loss scaling inside FusedAdamW's step, on CPU tensors:
max_grad_norm against torch.nn.utils.clip_grad_norm_ + torch.optim.AdamW (and an Inf/NaN gradient
skips the step), and torch.amp.GradScaler("cpu") with fp32 and fp16 parameters against
torch.optim.AdamW(fused=True) under the same scaler (its grad_scale/found_inf protocol). The
multi-rank norm (FSDP2) is in test_distributed.py."""

import torch

from fusedadam.torch import FusedAdamW
from harness import FP32_TOL, HALF_TOL, Skip, check_close, check_equal, run

SHAPES = [(7, 5), (5,), (3, 4, 2), (1,)]
OPTIONS = {"lr": 1e-2, "weight_decay": 0.1}


def twin_params(dtype=torch.float32):
    values = [torch.randn(shape).to(dtype) for shape in SHAPES]
    return ([torch.nn.Parameter(v.clone()) for v in values], [torch.nn.Parameter(v.clone()) for v in values])


def clip_matches_clip_grad_norm():
    """max_grad_norm=0.5 clips as clip_grad_norm_ does (large gradients: every step clipped), and the
    one-step-later norm is reported; a step whose gradients hold an Inf changes nothing."""
    ours, theirs = twin_params()
    fused = FusedAdamW(ours, max_grad_norm=0.5, **OPTIONS)
    reference = torch.optim.AdamW(theirs, **OPTIONS)
    for step in range(6):
        grads = [3 * torch.randn(shape) for shape in SHAPES]
        for p, q, g in zip(ours, theirs, grads):
            p.grad, q.grad = g.clone(), g.clone()
        if step == 3:
            ours[1].grad[2] = float("inf")
            before = [p.detach().clone() for p in ours]
            fused.step()
            for p, b in zip(ours, before):
                check_equal("a parameter after a step with an Inf gradient", p, b)
            if float(fused.state[ours[0]]["step"]) != 3:
                raise AssertionError(f"step count {float(fused.state[ours[0]]['step'])} after a skipped step")
            continue
        norm = torch.nn.utils.clip_grad_norm_(theirs, 0.5)
        fused.step()
        reference.step()
        check_close("last_grad_norm", fused.last_grad_norm.reshape(()), norm, atol=0, rtol=1e-6)
        for i, (p, q) in enumerate(zip(ours, theirs)):
            check_close(f"step {step} parameter {i}", p, q, **FP32_TOL)


def clip_outside_with_clip_grad_norm():
    """Users who clip outside: clip_grad_norm_ then FusedAdamW.step() is torch's AdamW after it."""
    ours, theirs = twin_params()
    fused = FusedAdamW(ours, **OPTIONS)
    reference = torch.optim.AdamW(theirs, **OPTIONS)
    for step in range(4):
        for p, q in zip(ours, theirs):
            p.grad = 3 * torch.randn(p.shape)
            q.grad = p.grad.clone()
        torch.nn.utils.clip_grad_norm_(ours, 0.5)
        torch.nn.utils.clip_grad_norm_(theirs, 0.5)
        fused.step()
        reference.step()
        for i, (p, q) in enumerate(zip(ours, theirs)):
            check_close(f"step {step} parameter {i}", p, q, **FP32_TOL)


def train_with_scaler(optimizer, params, scaler, batches, overflow_at):
    scales = []
    for step, (x, y) in enumerate(batches):
        optimizer.zero_grad(set_to_none=True)
        w, b = params[0], params[1]
        loss = ((x.to(w.dtype) @ w).float().sum(-1) + b.float().sum() - y).square().mean()
        scaler.scale(loss).backward()
        if step == overflow_at:
            w.grad[0, 0] = float("inf")
        scaler.step(optimizer)
        scaler.update()
        scales.append(scaler.get_scale())
    return scales


def grad_scaler(dtype, tol):
    try:
        torch.amp.GradScaler("cpu")
    except Exception as error:  # noqa: BLE001
        raise Skip(f"GradScaler('cpu') unavailable: {error}")
    values = [torch.randn(6, 3).to(dtype), (0.1 * torch.randn(3)).to(dtype)]
    batches = [(torch.randn(8, 6), torch.randn(8)) for _ in range(8)]
    ours = [torch.nn.Parameter(v.clone()) for v in values]
    theirs = [torch.nn.Parameter(v.clone()) for v in values]
    # growth_interval=2: the scale grows and backs off within the run
    our_scales = train_with_scaler(FusedAdamW(ours, **OPTIONS, master_weights=False), ours,
                                   torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=2), batches, 4)
    their_scales = train_with_scaler(torch.optim.AdamW(theirs, **OPTIONS, fused=True), theirs,
                                     torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=2), batches, 4)
    if our_scales != their_scales:
        raise AssertionError(f"loss scales {our_scales}, torch's {their_scales}")
    for i, (p, q) in enumerate(zip(ours, theirs)):
        check_close(f"parameter {i}", p, q, **tol)


def grad_scaler_fp32():
    grad_scaler(torch.float32, FP32_TOL)


def grad_scaler_fp16():
    grad_scaler(torch.float16, HALF_TOL)


def amp_scaling_attributes():
    """What GradScaler sets on an optimizer: grad_scale divides the gradients, found_inf=1 skips."""
    ours, theirs = twin_params()
    fused = FusedAdamW(ours, **OPTIONS)
    reference = torch.optim.AdamW(theirs, **OPTIONS)
    if not getattr(FusedAdamW, "_step_supports_amp_scaling", False):
        raise AssertionError("_step_supports_amp_scaling is not set")
    for step in range(3):
        for p, q in zip(ours, theirs):
            q.grad = torch.randn(p.shape)
            p.grad = q.grad * 512.0
        fused.grad_scale = torch.tensor(512.0)
        fused.found_inf = torch.tensor(1.0 if step == 1 else 0.0)
        fused.step()
        del fused.grad_scale, fused.found_inf
        if step != 1:
            reference.step()
        for i, (p, q) in enumerate(zip(ours, theirs)):
            check_close(f"step {step} parameter {i}", p, q, **FP32_TOL)
    if float(fused.state[ours[0]]["step"]) != 2:
        raise AssertionError(f"step count {float(fused.state[ours[0]]['step'])}, expected 2 (one skipped)")


if __name__ == "__main__":
    run(
        [
            ("max_grad_norm_matches_clip_grad_norm_and_skips_inf", clip_matches_clip_grad_norm),
            ("clip_grad_norm_outside_then_step", clip_outside_with_clip_grad_norm),
            ("amp_grad_scale_found_inf_attributes", amp_scaling_attributes),
            ("grad_scaler_cpu_fp32_vs_torch_fused", grad_scaler_fp32),
            ("grad_scaler_cpu_fp16_vs_torch_fused", grad_scaler_fp16),
        ]
    )
