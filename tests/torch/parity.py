"""parity.py - runs FusedAdamW and a PyTorch optimizer side by side on the same random parameters and
gradients, and compares parameters, masters, moments and step counts after every step."""

import torch

from fusedadam.torch import FusedAdamW
from harness import FP32_TOL, HALF_TOL, MOMENT_TOL, check_close, check_equal, param_of_master, random_shapes


def _parameters(device, dtype, count):
    return [torch.nn.Parameter(torch.randn(shape).to(device=device, dtype=dtype)) for shape in random_shapes(count)]


def _reference_copy(params):
    """fp32 copies of the parameters (exact: a bf16/fp16 value is an fp32 value)."""
    return [torch.nn.Parameter(p.detach().to(torch.float32).clone()) for p in params]


def distinct_steps(optimizer, params, device_type):
    """Distinct step counts among the parameters on device_type that have a gradient: the launches
    (CUDA) or CPU calls one fused step makes."""
    counts = set()
    for p in params:
        if p.grad is not None and p.device.type == device_type:
            state = optimizer.state.get(p)
            counts.add(int(state["step"]) if state else 0)
    return len(counts)


def run_parity(
    groups,
    *,
    reference_class=torch.optim.AdamW,
    reference_kwargs=None,
    fused_class=FusedAdamW,
    fused_kwargs=None,
    device="cpu",
    dtype=torch.float32,
    steps=8,
    skip_probability=0.25,
    scheduler=None,
    added_group=None,
    add_at=4,
    round_reference=False,
    params_per_group=3,
    make_params=None,
):
    """groups: one dict of options per parameter group (random parameters are made for each).
    The reference optimizer steps fp32 copies; with round_reference they are rounded to `dtype`
    after each step (what a 16-bit parameter without a master goes through)."""
    make_params = make_params or (lambda: _parameters(device, dtype, params_per_group))
    fused_groups, reference_groups = [], []
    for options in groups:
        params = make_params()
        fused_groups.append({"params": params, **options})
        reference_groups.append({"params": _reference_copy(params), **options})
    fused = fused_class(fused_groups, **(fused_kwargs or {}))
    reference = reference_class(reference_groups, **(reference_kwargs or {}))
    schedulers = [scheduler(fused), scheduler(reference)] if scheduler else []
    uses_master = dtype != torch.float32 and (fused_kwargs or {}).get("master_weights", True)

    def pairs():
        fused_params = [p for g in fused.param_groups for p in g["params"]]
        reference_params = [p for g in reference.param_groups for p in g["params"]]
        return list(zip(fused_params, reference_params))

    for step in range(steps):
        if added_group is not None and step == add_at:
            params = make_params()
            fused.add_param_group({"params": params, **added_group})
            reference.add_param_group({"params": _reference_copy(params), **added_group})
        fused.zero_grad(set_to_none=True)
        reference.zero_grad(set_to_none=True)
        for p, r in pairs():
            if step > 0 and float(torch.rand(())) < skip_probability:
                continue  # no gradient this step: skipped, its step count stays
            p.grad = torch.randn(p.shape).to(device=device, dtype=p.dtype)
            r.grad = p.grad.to(torch.float32).clone()
        launches = fused._tables.launches + distinct_steps(fused, [p for p, _ in pairs()], "cuda")
        cpu_calls = fused._tables.cpu_calls + distinct_steps(fused, [p for p, _ in pairs()], "cpu")
        fused.step()
        reference.step()
        if round_reference:
            with torch.no_grad():
                for _, r in pairs():
                    r.copy_(r.to(dtype).to(torch.float32))
        for s in schedulers:
            s.step()
        if fused._tables.launches != launches or fused._tables.cpu_calls != cpu_calls:
            raise AssertionError(
                f"step {step}: {fused._tables.launches} launches / {fused._tables.cpu_calls} CPU calls so far, "
                f"expected {launches} / {cpu_calls} (one per device and distinct step count)"
            )
        for index, (p, r) in enumerate(pairs()):
            what = f"step {step}, parameter {index} {tuple(p.shape)}"
            if dtype == torch.float32:
                check_close(what, p, r, **FP32_TOL)
            else:
                check_close(what, p.float(), r, **HALF_TOL)
            reference_state, state = reference.state.get(r), fused.state.get(p)
            if not reference_state:
                if state:
                    raise AssertionError(f"{what}: has state, torch's copy has none")
                continue
            if not state:
                raise AssertionError(f"{what}: no state, torch's copy has some")
            if float(state["step"]) != float(reference_state["step"]):
                raise AssertionError(f"{what}: step {float(state['step'])}, torch {float(reference_state['step'])}")
            if state["step"].device.type != "cpu" or state["step"].dtype != torch.float32:
                raise AssertionError(f"{what}: state['step'] is not a CPU float32 tensor")
            for key in ("exp_avg", "exp_avg_sq"):
                if state[key].dtype != torch.float32:
                    raise AssertionError(f"{what}: {key} is {state[key].dtype}")
                check_close(f"{what} {key}", state[key], reference_state[key], **MOMENT_TOL)
            if uses_master:
                master = state["master_param"]
                check_close(f"{what} master", master, r, **FP32_TOL)
                check_equal(f"{what} parameter = master rounded to nearest (bf16: ties away)", p, param_of_master(master, dtype))
            elif "master_param" in state:
                raise AssertionError(f"{what}: a master where none was asked for")
        if round_reference:
            # Where the two fp32 results straddle a rounding boundary, the 16-bit params differ by
            # one ulp (within HALF_TOL); the reference continues from ours, so the next step's
            # moments compare like for like instead of inheriting wd * 1 ulp of history.
            with torch.no_grad():
                for p, r in pairs():
                    r.copy_(p.to(torch.float32))
    return fused, reference
