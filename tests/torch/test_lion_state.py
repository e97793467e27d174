"""test_lion_state.py - FusedLion keeps one moment: its state holds no exp_avg_sq buffer in any layout (the
device table no longer wants one either: fadam_table_encode_groups), and a step whose parameters sit in
several buckets (different step counts, e.g. a param group added later) checks Lion tensors without one."""

import torch

from fusedadam.torch import FusedAdamW, FusedLion
from harness import check_equal, run

SECOND_MOMENT_KEYS = ("exp_avg_sq", "exp_avg_sq_bf16", "exp_avg_sq_uint8", "exp_avg_sq_scales")  # torch.py: _LEAN_STATE_KEYS


def params(dtype):
    return [torch.nn.Parameter(torch.randn(shape).to(dtype)) for shape in ((7, 5), (300,), (1,))]


def step(optimizer, steps=2):
    for _ in range(steps):
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = torch.randn_like(p)
        optimizer.step()


def no_second_moment():
    """Every Lion state, fp32 and 16-bit params, fp32 and lean layouts: exp_avg only; AdamW beside it keeps v."""
    cases = [(torch.float32, {}), (torch.bfloat16, {}), (torch.bfloat16, {"master_weights": False}),
             (torch.bfloat16, {"master_weights": "remainder", "moment_dtype": torch.bfloat16}),
             (torch.bfloat16, {"moment_dtype": "int8"}), (torch.float16, {})]
    for dtype, options in cases:
        try:
            optimizer = FusedLion(params(dtype), lr=1e-3, **options)
        except TypeError as error:  # an option this layout does not take
            raise AssertionError(f"FusedLion({dtype}, {options}): {error}") from error
        step(optimizer)
        for p in optimizer.param_groups[0]["params"]:
            state = optimizer.state[p]
            found = [k for k in SECOND_MOMENT_KEYS if k in state]
            if found:
                raise AssertionError(f"FusedLion({dtype}, {options}) keeps {found} for a {tuple(p.shape)} parameter")
    adamw = FusedAdamW(params(torch.float32))
    step(adamw, 1)
    if not all("exp_avg_sq" in adamw.state[p] for p in adamw.param_groups[0]["params"]):
        raise AssertionError("FusedAdamW lost its exp_avg_sq")


def two_buckets():
    """Parameters at different step counts are stepped in separate buckets: Lion ones (no exp_avg_sq) pass
    the table checks there too, and each ends as a FusedLion of its own would leave it."""
    first, second = params(torch.float32), params(torch.float32)
    solo_first = [torch.nn.Parameter(p.detach().clone()) for p in first]
    solo_second = [torch.nn.Parameter(p.detach().clone()) for p in second]
    together = FusedLion(first, lr=1e-2, weight_decay=0.1)
    alone_first = FusedLion(solo_first, lr=1e-2, weight_decay=0.1)
    alone_second = FusedLion(solo_second, lr=1e-2, weight_decay=0.1)
    for round_ in range(3):
        if round_ == 2:
            together.add_param_group({"params": second})
        for mine, theirs in ((first, solo_first), (second, solo_second)):
            for p, q in zip(mine, theirs):
                p.grad = torch.randn_like(p)
                q.grad = p.grad.clone()
        together.step()
        alone_first.step()
        if round_ == 2:
            alone_second.step()
    for p, q in zip(first + second, solo_first + solo_second):
        check_equal("a parameter stepped in its own bucket", p, q)


if __name__ == "__main__":
    run(
        [
            ("lion_state_has_no_exp_avg_sq_in_any_layout", no_second_moment),
            ("lion_parameters_at_different_steps_two_buckets", two_buckets),
        ]
    )
