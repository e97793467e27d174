"""test_lion.py - fusedadam.torch.FusedLion on CPU tensors against a float64 oracle written here
(Chen et al. 2023: c = b1*m + (1-b1)*g; p = p*(1 - lr*wd) - lr*sign(c); m = b2*m + (1-b2)*g, with
sign(0) = 0 as torch.sign): fp32/bf16/fp16 parameters with and without masters, maximize, weight
decay, several groups; beside a FusedAdamW; state_dict round trip and interchange with a plain-torch
Lion (state['exp_avg'], as lion-pytorch and timm keep it); max_grad_norm, the GradScaler protocol;
the C library's checks on bad hyperparameters."""

import inspect

import torch

from fusedadam.torch import FusedAdamW, FusedLion
from harness import (FP32_TOL, MOMENT_TOL, check_close, check_equal, expect_raises, param_of_master, random_shapes, run,
                     through_file)

GROUPS = [{"lr": 3e-2, "weight_decay": 0.1}, {"lr": 1e-2, "weight_decay": 0.0, "betas": (0.8, 0.95)}]
# One ulp of each 16-bit dtype, relative: a 16-bit parameter updated in place is rounded once from
# float32 (ours) or float64 (the oracle), which may differ by one ulp at a near-tie (an absolute one
# among subnormals): (relative, absolute).
ULP = {torch.bfloat16: (2.0**-7, 2.0**-133), torch.float16: (2.0**-10, 2.0**-24)}


def f32(value):
    """value as the C library holds it (fadam_hparams carries floats)."""
    return float(torch.tensor(float(value), dtype=torch.float32))


def oracle(p, m, g, group, maximize=False):
    """One Lion step in float64 from (p, m, g) (float64 tensors) with a group's hyperparameters as
    float32 values. Returns (p, m, ambiguous): ambiguous marks the elements whose c cancels to within
    float32's rounding (its sign may differ in float32); c == 0 exactly is not ambiguous."""
    lr, wd = f32(group["lr"]), f32(group.get("weight_decay", 0.0))
    b1, b2 = (f32(b) for b in group.get("betas", (0.9, 0.99)))
    if maximize:
        g = -g
    first, second = b1 * m, (1.0 - b1) * g
    c = first + second
    ambiguous = c.abs() < 1e-6 * (first.abs() + second.abs())
    p = p * (1.0 - lr * wd) - lr * torch.sign(c)
    return p, b2 * m + (1.0 - b2) * g, ambiguous


def make_groups(dtype, options, count=4):
    return [{"params": [torch.nn.Parameter(torch.randn(s).to(dtype)) for s in random_shapes(count)], **o}
            for o in options]


def params_of(optimizer):
    return [p for group in optimizer.param_groups for p in group["params"]]


def give_grads(params, step):
    """N(0, 1) gradients in each parameter's dtype; at step 0 every third element is exactly 0 (m is 0
    then too, so c = 0 and sign(0) = 0 is exercised)."""
    for p in params:
        g = torch.randn(p.shape).to(p.dtype)
        if step == 0:
            g.view(-1)[::3] = 0
        p.grad = g


def check_against_oracle(optimizer, steps=6, maximize=False):
    """Steps optimizer, comparing each step with the oracle taken from its own state before it."""
    dtype = params_of(optimizer)[0].dtype
    for step in range(steps):
        taken = {p: int(optimizer.state[p]["step"]) if p in optimizer.state else 0 for p in params_of(optimizer)}
        give_grads(params_of(optimizer), step)
        expected = []
        for group in optimizer.param_groups:
            for p in group["params"]:
                state = optimizer.state.get(p, {})
                master = state.get("master_param")
                start = (master if master is not None else p).double()
                m = state["exp_avg"].double() if "exp_avg" in state else torch.zeros_like(start)
                expected.append((p, *oracle(start, m, p.grad.double(), group, maximize)))
        optimizer.step()
        for index, (p, want_p, want_m, ambiguous) in enumerate(expected):
            state = optimizer.state[p]
            what = f"step {step} parameter {index} {tuple(p.shape)} {dtype}"
            if set(state) - {"step", "exp_avg", "master_param"}:
                raise AssertionError(f"{what}: state keys {sorted(state)}")
            check_close(f"{what} exp_avg", state["exp_avg"], want_m, **MOMENT_TOL)
            master = state.get("master_param")
            if master is not None:
                check_close(f"{what} master", master, torch.where(ambiguous, master.double(), want_p), **FP32_TOL)
                check_equal(f"{what} param rounds its master", p, param_of_master(master, dtype))
            elif dtype == torch.float32:
                check_close(what, p, torch.where(ambiguous, p.double(), want_p), **FP32_TOL)
            else:
                want = torch.where(ambiguous, p.double(), want_p.to(dtype).double())
                check_close(what, p, want, atol=ULP[dtype][1], rtol=ULP[dtype][0])
            if int(state["step"]) != taken[p] + 1:
                raise AssertionError(f"{what}: state['step'] is {float(state['step'])}")


def fp32():
    check_against_oracle(FusedLion(make_groups(torch.float32, GROUPS)))


def half_with_master(dtype):
    optimizer = FusedLion(make_groups(dtype, GROUPS))
    check_against_oracle(optimizer)
    if not all("master_param" in optimizer.state[p] for p in params_of(optimizer)):
        raise AssertionError("a 16-bit parameter has no master")


def half_without_master(dtype):
    check_against_oracle(FusedLion(make_groups(dtype, GROUPS), master_weights=False))


def maximize():
    check_against_oracle(FusedLion(make_groups(torch.float32, GROUPS), maximize=True), maximize=True)


def sign_of_zero():
    """sign(0) = 0: at the first step an element with a zero gradient has c = 0 and, without weight
    decay, keeps its exact value (a sign(0) of +-1 would move it by lr)."""
    params = [torch.nn.Parameter(torch.randn(37)) for _ in range(2)]
    before = [p.detach().clone() for p in params]
    optimizer = FusedLion(params, lr=0.1)
    give_grads(params, 0)
    optimizer.step()
    for p, b in zip(params, before):
        zero = p.grad == 0
        check_equal("elements with a zero gradient", p[zero], b[zero])
        if not bool((p[~zero] != b[~zero]).all()):
            raise AssertionError("an element with a nonzero gradient did not move")


def defaults():
    signature = inspect.signature(FusedLion)
    found = {name: signature.parameters[name].default for name in ("lr", "betas", "weight_decay")}
    if found != {"lr": 1e-4, "betas": (0.9, 0.99), "weight_decay": 0.0}:
        raise AssertionError(f"FusedLion's defaults are {found}")
    optimizer = FusedLion([torch.nn.Parameter(torch.randn(5))])
    if optimizer.defaults["lr"] != 1e-4 or optimizer.defaults["betas"] != (0.9, 0.99):
        raise AssertionError(f"defaults {optimizer.defaults}")
    check_against_oracle(optimizer, steps=2)


def beside_adamw():
    """A FusedLion and a FusedAdamW over parameters of one model, stepped alternately: each follows
    its own rule (torch's API holds one rule per optimizer object; the C library's one launch over
    groups of both rules is tested in tests/test_lion_emulated.cpp)."""
    lion = FusedLion(make_groups(torch.float32, GROUPS[:1]))
    adam_values = [torch.randn(s) for s in random_shapes(3)]
    adamw = FusedAdamW([torch.nn.Parameter(v.clone()) for v in adam_values], lr=1e-2, weight_decay=0.1)
    reference = torch.optim.AdamW([torch.nn.Parameter(v.clone()) for v in adam_values], lr=1e-2, weight_decay=0.1)
    for step in range(4):
        for p, q in zip(params_of(adamw), params_of(reference)):
            q.grad = torch.randn(p.shape)
            p.grad = q.grad.clone()
        adamw.step()
        reference.step()
        check_against_oracle(lion, steps=1)
        for p, q in zip(params_of(adamw), params_of(reference)):
            check_close(f"AdamW parameter at step {step}", p, q, **FP32_TOL)
            check_close("AdamW exp_avg_sq", adamw.state[p]["exp_avg_sq"], reference.state[q]["exp_avg_sq"], **MOMENT_TOL)


class ReferenceLion(torch.optim.Optimizer):
    """Lion in plain torch ops, its state as lion-pytorch and timm keep it: state['exp_avg'] in the
    parameter's dtype, no step count. Its constants are float32 as the C library's (1 - beta rounded
    from float64), so that a c which nearly cancels gets the same sign in both."""

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0):
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            beta1, beta2 = (f32(b) for b in group["betas"])
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "exp_avg" not in state:
                    state["exp_avg"] = torch.zeros_like(p)
                m = state["exp_avg"]
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_((m * beta1 + p.grad * f32(1 - beta1)).sign(), alpha=-group["lr"])
                m.copy_(m * beta2 + p.grad * f32(1 - beta2))


def switch(first_class, second_class, dtype=torch.float32, steps=(4, 4)):
    """first_class trains, its state dict is loaded into a second_class made with the wrong lr, which
    trains on; returns (switched params, uninterrupted first_class params, switched optimizer, first)."""
    values = [torch.randn(s).to(dtype) for s in random_shapes(4)]
    grads = [[torch.randn(v.shape).to(dtype) for v in values] for _ in range(sum(steps))]

    def make(cls, lr):
        return cls([{"params": [torch.nn.Parameter(v.clone()) for v in values], "lr": lr, "weight_decay": 0.1}])

    def train(optimizer, sequence):
        for step_grads in sequence:
            for p, g in zip(params_of(optimizer), step_grads):
                p.grad = g.clone()
            optimizer.step()

    first, uninterrupted = make(first_class, 1e-2), make(first_class, 1e-2)
    train(first, grads[: steps[0]])
    second = make(second_class, 0.5)
    with torch.no_grad():
        for p, q in zip(params_of(second), params_of(first)):
            p.copy_(q)
    second.load_state_dict(through_file(first.state_dict()))
    if second.param_groups[0]["lr"] != 1e-2:
        raise AssertionError(f"the loaded group has lr={second.param_groups[0]['lr']}")
    train(second, grads[steps[0]:])
    train(uninterrupted, grads)
    return second, uninterrupted


def round_trip_bf16_bitwise():
    """Our own state dict keeps exp_avg and the masters in float32: the resumed run is bit for bit the
    uninterrupted one."""
    second, uninterrupted = switch(FusedLion, FusedLion, dtype=torch.bfloat16)
    for index, (p, q) in enumerate(zip(params_of(second), params_of(uninterrupted))):
        check_equal(f"parameter {index}", p, q)
        s, t = second.state[p], uninterrupted.state[q]
        if sorted(s) != ["exp_avg", "master_param", "step"]:
            raise AssertionError(f"parameter {index}: loaded state keys {sorted(s)}")
        for key in ("exp_avg", "master_param"):
            if s[key].dtype != torch.float32:
                raise AssertionError(f"parameter {index}: {key} loaded as {s[key].dtype}")
            check_equal(f"parameter {index} {key}", s[key], t[key])
        if float(s["step"]) != float(t["step"]):
            raise AssertionError(f"parameter {index}: step counts differ")


def interchange(first_class, second_class):
    second, uninterrupted = switch(first_class, second_class)
    for index, (p, q) in enumerate(zip(params_of(second), params_of(uninterrupted))):
        check_close(f"parameter {index}", p, q, **FP32_TOL)
        check_close(f"parameter {index} exp_avg", second.state[p]["exp_avg"], uninterrupted.state[q]["exp_avg"],
                    **MOMENT_TOL)


def reference_to_fused():
    """A plain-torch Lion's state dict (no step count) loads into FusedLion, which continues its run."""
    interchange(ReferenceLion, FusedLion)


def fused_to_reference():
    interchange(FusedLion, ReferenceLion)


def clipping():
    """max_grad_norm: the oracle's gradients clipped by torch.nn.utils.clip_grad_norm_; a step whose
    gradients hold an Inf changes nothing."""
    params = [torch.nn.Parameter(torch.randn(s)) for s in [(7, 5), (5,), (3, 4, 2)]]
    optimizer = FusedLion(params, lr=1e-2, weight_decay=0.1, max_grad_norm=0.5)
    group = optimizer.param_groups[0]
    for step in range(4):
        give_grads(params, step)
        if step == 2:
            params[1].grad[0] = float("inf")
            before = [(p.detach().clone(), optimizer.state[p]["exp_avg"].clone()) for p in params]
            optimizer.step()
            for p, (b, m) in zip(params, before):
                check_equal("a parameter after a step with an Inf gradient", p, b)
                check_equal("exp_avg after a step with an Inf gradient", optimizer.state[p]["exp_avg"], m)
            if float(optimizer.state[params[0]]["step"]) != 2:
                raise AssertionError("the skipped step advanced the step count")
            continue
        clipped = [p.grad.clone() for p in params]
        copies = [torch.nn.Parameter(torch.empty(g.shape)) for g in clipped]
        for c, g in zip(copies, clipped):
            c.grad = g
        norm = torch.nn.utils.clip_grad_norm_(copies, 0.5)
        expected = []
        for p, c in zip(params, copies):
            state = optimizer.state.get(p, {})
            m = state["exp_avg"].double() if "exp_avg" in state else torch.zeros(p.shape, dtype=torch.float64)
            expected.append(oracle(p.double(), m, c.grad.double(), group))
        optimizer.step()
        check_close("last_grad_norm", optimizer.last_grad_norm.reshape(()), norm, atol=0, rtol=1e-6)
        for index, (p, (want_p, want_m, ambiguous)) in enumerate(zip(params, expected)):
            check_close(f"step {step} parameter {index}", p, torch.where(ambiguous, p.double(), want_p), **FP32_TOL)
            check_close(f"step {step} exp_avg {index}", optimizer.state[p]["exp_avg"], want_m, **MOMENT_TOL)


def grad_scaler_protocol():
    """What torch.amp.GradScaler sets on an optimizer: grad_scale divides the gradients as the update
    reads them (a power of two: exactly, so the run equals an unscaled one bit for bit), found_inf=1
    skips the step."""
    values = [torch.randn(s) for s in [(6, 3), (3,)]]
    scaled = FusedLion([torch.nn.Parameter(v.clone()) for v in values], lr=1e-2, weight_decay=0.1)
    plain = FusedLion([torch.nn.Parameter(v.clone()) for v in values], lr=1e-2, weight_decay=0.1)
    for step in range(4):
        for p, q in zip(params_of(scaled), params_of(plain)):
            q.grad = torch.randn(p.shape)
            p.grad = q.grad * 1024.0
        scaled.grad_scale = torch.tensor(1024.0)
        scaled.found_inf = torch.tensor(1.0 if step == 2 else 0.0)
        scaled.step()
        del scaled.grad_scale, scaled.found_inf
        if step != 2:
            plain.step()
        for i, (p, q) in enumerate(zip(params_of(scaled), params_of(plain))):
            check_equal(f"step {step} parameter {i}", p, q)
            check_equal(f"step {step} exp_avg {i}", scaled.state[p]["exp_avg"], plain.state[q]["exp_avg"])
    if float(scaled.state[params_of(scaled)[0]]["step"]) != 3:
        raise AssertionError("the skipped step advanced the step count")


def bad_hyperparameters():
    """The C library's checks (fadam_hparams_validate), its message in a ValueError: at construction,
    and at the step for a group added later (nothing changed then)."""
    param = torch.nn.Parameter(torch.randn(4))
    expect_raises(ValueError, "beta2=1.5 must be in [0, 1] for FADAM_LION", lambda: FusedLion([param], betas=(0.9, 1.5)))
    expect_raises(ValueError, "beta1=-0.1 must be in [0, 1] for FADAM_LION", lambda: FusedLion([param], betas=(-0.1, 0.9)))
    expect_raises(ValueError, "lr=-1 must be finite", lambda: FusedLion([param], lr=-1.0))
    expect_raises(ValueError, "weight_decay=-0.5", lambda: FusedLion([param], weight_decay=-0.5))
    FusedLion([param], betas=(1.0, 1.0))  # Lion divides by no 1 - beta: 1 is allowed
    other = torch.nn.Parameter(torch.randn(3))
    optimizer = FusedLion([param])
    optimizer.add_param_group({"params": [other], "betas": (0.9, 2.0)})
    param.grad, other.grad = torch.randn(4), torch.randn(3)
    before = (param.detach().clone(), other.detach().clone())
    expect_raises(ValueError, "beta2=2 must be in [0, 1] for FADAM_LION", optimizer.step)
    check_equal("a parameter after a refused step", param, before[0])
    check_equal("a parameter after a refused step", other, before[1])
    if optimizer.state.get(param):
        raise AssertionError("a refused step left state behind")


def float64_refused():
    params = [torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(3, dtype=torch.float64))]
    before = [p.detach().clone() for p in params]
    optimizer = FusedLion(params)
    for p in params:
        p.grad = torch.randn_like(p)
    expect_raises(TypeError, "FusedLion does not support float64", optimizer.step)
    for p, b in zip(params, before):
        check_equal("a parameter after a refused step", p, b)


if __name__ == "__main__":
    run(
        [
            ("lion_fp32_vs_float64_oracle", fp32),
            ("lion_bf16_master_vs_float64_oracle", lambda: half_with_master(torch.bfloat16)),
            ("lion_fp16_master_vs_float64_oracle", lambda: half_with_master(torch.float16)),
            ("lion_bf16_no_master_vs_float64_oracle", lambda: half_without_master(torch.bfloat16)),
            ("lion_fp16_no_master_vs_float64_oracle", lambda: half_without_master(torch.float16)),
            ("lion_maximize", maximize),
            ("lion_sign_of_zero_is_zero", sign_of_zero),
            ("lion_defaults", defaults),
            ("lion_beside_adamw", beside_adamw),
            ("lion_state_dict_round_trip_bf16_bitwise", round_trip_bf16_bitwise),
            ("lion_state_dict_from_reference_lion", reference_to_fused),
            ("lion_state_dict_to_reference_lion", fused_to_reference),
            ("lion_max_grad_norm_and_inf_skip", clipping),
            ("lion_grad_scale_found_inf", grad_scaler_protocol),
            ("lion_bad_hyperparameters_raise_value_error", bad_hyperparameters),
            ("lion_float64_refused", float64_refused),
        ]
    )
