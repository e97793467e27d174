"""test_dtypes_layouts.py - what torch.optim.AdamW steps, FusedAdamW steps too: float64 parameters
(through torch's own AdamW math, float64 state) and strided parameters with gaps (through a
contiguous copy, copied back), next to ordinary ones in the same groups; compared with torch."""

import torch

from fusedadam.torch import FusedAdam, FusedAdamW
from harness import FP32_TOL, check_close, run

GROUPS = [{"lr": 1e-2, "weight_decay": 0.1}, {"lr": 3e-3, "weight_decay": 0.0, "betas": (0.8, 0.99)}]


def make_values(kind):
    if kind == "float64":
        return [torch.randn(7, 3, dtype=torch.float64), torch.randn(5), torch.randn(4, dtype=torch.float64)]
    # gaps: every other column, a transposed narrow, a 3-D slice; plus a dense one
    return [torch.randn(6, 8)[:, ::2], torch.randn(5, 9).t()[2:6], torch.randn(3, 4, 6)[:, 1:3, ::3], torch.randn(5)]


def side_by_side(kind, fused_class, reference_class, steps=6):
    per_group = [make_values(kind) for _ in GROUPS]
    if kind == "gaps":  # the parameters themselves are strided views with gaps
        ours = [[torch.nn.Parameter(_strided_copy(v)) for v in values] for values in per_group]
    else:
        ours = [[torch.nn.Parameter(v.clone()) for v in values] for values in per_group]
    theirs = [[torch.nn.Parameter(v.detach().clone()) for v in values] for values in per_group]
    fused = fused_class([{"params": p, **o} for p, o in zip(ours, GROUPS)])
    reference = reference_class([{"params": p, **o} for p, o in zip(theirs, GROUPS)])
    flat_ours = [p for group in ours for p in group]
    flat_theirs = [p for group in theirs for p in group]
    if kind == "gaps" and all(p.is_contiguous() for p in flat_ours[:-1]):
        raise AssertionError("the test's parameters lost their gaps")
    for step in range(steps):
        for p, q in zip(flat_ours, flat_theirs):
            q.grad = torch.randn_like(q)
            p.grad = q.grad.clone()
        fused.step()
        reference.step()
        for i, (p, q) in enumerate(zip(flat_ours, flat_theirs)):
            tol = {"atol": 1e-12, "rtol": 1e-12} if p.dtype == torch.float64 else FP32_TOL
            check_close(f"step {step} parameter {i} ({p.dtype}, strides {p.stride()})", p, q, **tol)
    for p in flat_ours:
        if p.dtype == torch.float64 and fused.state[p]["exp_avg"].dtype != torch.float64:
            raise AssertionError("a float64 parameter's exp_avg is not float64")
        if float(fused.state[p]["step"]) != steps:
            raise AssertionError(f"step count {float(fused.state[p]['step'])}")


def _strided_copy(view):
    """A fresh tensor with the same gaps as view: a copy of its base, viewed the same way."""
    base = torch.zeros(view.untyped_storage().nbytes() // view.element_size(), dtype=view.dtype)
    fresh = base.as_strided(view.shape, view.stride(), view.storage_offset())
    fresh.copy_(view)
    return fresh


def float64_adamw():
    side_by_side("float64", FusedAdamW, torch.optim.AdamW)


def float64_adam_l2():
    side_by_side("float64", FusedAdam, torch.optim.Adam)


def gaps_adamw():
    side_by_side("gaps", FusedAdamW, torch.optim.AdamW)


def float64_state_dict_round_trip():
    """A float64 parameter's state keeps float64 through state_dict/load_state_dict."""
    p = torch.nn.Parameter(torch.randn(6, dtype=torch.float64))
    opt = FusedAdamW([p], lr=1e-2)
    p.grad = torch.randn_like(p)
    opt.step()
    twin = FusedAdamW([p], lr=1e-2)
    twin.load_state_dict(opt.state_dict())
    if twin.state[p]["exp_avg"].dtype != torch.float64:
        raise AssertionError(f"loaded exp_avg is {twin.state[p]['exp_avg'].dtype}")
    twin.step()
    if float(twin.state[p]["step"]) != 2:
        raise AssertionError("the loaded float64 parameter did not step")


def with_max_grad_norm():
    """max_grad_norm spans float64, gapped and ordinary parameters, as clip_grad_norm_ does."""
    values = [torch.randn(4, dtype=torch.float64), torch.randn(6, 4)[:, ::2], torch.randn(9)]
    ours = [torch.nn.Parameter(_strided_copy(v)) for v in values]
    theirs = [torch.nn.Parameter(v.detach().clone()) for v in values]
    fused, reference = FusedAdamW(ours, max_grad_norm=0.1), torch.optim.AdamW(theirs)
    for step in range(3):
        for p, q in zip(ours, theirs):
            q.grad = torch.randn_like(q)
            p.grad = q.grad.clone()
        torch.nn.utils.clip_grad_norm_(theirs, 0.1)
        fused.step()
        reference.step()
        for i, (p, q) in enumerate(zip(ours, theirs)):
            check_close(f"step {step} parameter {i}", p, q, **FP32_TOL)


if __name__ == "__main__":
    run(
        [
            ("float64_params_vs_torch_adamw", float64_adamw),
            ("float64_params_vs_torch_adam_l2", float64_adam_l2),
            ("strided_params_with_gaps_vs_torch_adamw", gaps_adamw),
            ("float64_state_dict_round_trip", float64_state_dict_round_trip),
            ("float64_and_gaps_with_max_grad_norm", with_max_grad_norm),
        ]
    )
