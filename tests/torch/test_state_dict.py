"""test_state_dict.py - checkpoints move between FusedAdamW and torch.optim.AdamW in both directions:
a run switched from one optimizer to the other through state_dict()/load_state_dict() (and
torch.save/torch.load) continues as the uninterrupted run does."""

import copy
import io

import torch

from fusedadam.torch import FusedAdamW
from harness import FP32_TOL, check_close, check_equal, random_shapes, run

GROUP_OPTIONS = [{"lr": 1e-2, "weight_decay": 0.1}, {"lr": 3e-3, "weight_decay": 0.0, "betas": (0.8, 0.99)}]
TORCH_ADAMW_GROUP_KEYS = {"params", "lr", "betas", "eps", "weight_decay", "amsgrad", "maximize", "foreach",
                          "capturable", "differentiable", "fused", "decoupled_weight_decay"}


def make_params(dtype=torch.float32):
    """Two groups' worth of parameters (fp32 values, cast to dtype)."""
    return [[torch.randn(shape).to(dtype) for shape in random_shapes(3)] for _ in GROUP_OPTIONS]


def make_optimizer(optimizer_class, values, **kwargs):
    """An optimizer over fresh Parameters holding `values` (per group), with GROUP_OPTIONS."""
    groups = [{"params": [torch.nn.Parameter(v.clone()) for v in group], **options}
              for group, options in zip(values, GROUP_OPTIONS)]
    return optimizer_class(groups, **kwargs)


def fresh(optimizer_class, values, **kwargs):
    """The optimizer a checkpoint is loaded into, with deliberately wrong hyperparameters (lr=0.5):
    the loaded state dict must bring the groups' own."""
    groups = [{"params": [torch.nn.Parameter(v.clone()) for v in group]} for group in values]
    return optimizer_class(groups, lr=0.5, weight_decay=0.5, **kwargs)


def params_of(optimizer):
    return [p for group in optimizer.param_groups for p in group["params"]]


def make_gradients(values, steps, dtype):
    """Per step, one gradient per parameter or None (about one in five)."""
    sequence = []
    for step in range(steps):
        grads = []
        for group in values:
            for v in group:
                keep = step == 0 or float(torch.rand(())) > 0.2
                grads.append(torch.randn(v.shape).to(dtype) if keep else None)
        sequence.append(grads)
    return sequence


def train(optimizer, gradients):
    for grads in gradients:
        optimizer.zero_grad(set_to_none=True)
        for p, g in zip(params_of(optimizer), grads):
            p.grad = None if g is None else g.clone()
        optimizer.step()


def through_file(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer)


def switch(first_class, second_class, dtype=torch.float32, first_kwargs=None, second_kwargs=None, check_loaded=None):
    """first_class trains 4 steps, its checkpoint is loaded into second_class, which trains 4 more.
    Returns (the switched optimizer, the first optimizer after 8 uninterrupted steps); check_loaded
    (optional) is called with the first optimizer and the second just after the load."""
    values = make_params(dtype)
    gradients = make_gradients(values, 8, dtype)
    first = make_optimizer(first_class, values, **(first_kwargs or {}))
    uninterrupted = make_optimizer(first_class, values, **(first_kwargs or {}))
    train(first, gradients[:4])
    checkpoint = through_file(first.state_dict())
    current = [[p.detach().clone() for p in group["params"]] for group in first.param_groups]
    second = fresh(second_class, current, **(second_kwargs or {}))
    second.load_state_dict(checkpoint)
    for group, options in zip(second.param_groups, GROUP_OPTIONS):
        if group["lr"] != options["lr"] or group["weight_decay"] != options["weight_decay"]:
            raise AssertionError(f"loaded group has lr={group['lr']} weight_decay={group['weight_decay']}")
    if check_loaded:
        check_loaded(first, second)
    train(second, gradients[4:])
    train(uninterrupted, gradients)
    return second, uninterrupted


def compare(second, uninterrupted, tolerance):
    for index, (p, q) in enumerate(zip(params_of(second), params_of(uninterrupted))):
        check_close(f"parameter {index} {tuple(p.shape)}", p.float(), q.float(), **tolerance)
        s, t = second.state.get(p), uninterrupted.state.get(q)
        if bool(s) != bool(t) or (s and float(s["step"]) != float(t["step"])):
            raise AssertionError(f"parameter {index}: step counts differ")


def torch_to_fused_fp32():
    second, uninterrupted = switch(torch.optim.AdamW, FusedAdamW)
    compare(second, uninterrupted, FP32_TOL)


def fused_to_torch_fp32():
    second, uninterrupted = switch(FusedAdamW, torch.optim.AdamW)
    compare(second, uninterrupted, FP32_TOL)


def fused_to_fused_bf16_bitwise():
    """Our own checkpoint keeps the fp32 moments and masters: the resumed run is bit for bit the same."""
    second, uninterrupted = switch(FusedAdamW, FusedAdamW, dtype=torch.bfloat16)
    for index, (p, q) in enumerate(zip(params_of(second), params_of(uninterrupted))):
        check_equal(f"parameter {index}", p, q)
        s, t = second.state.get(p), uninterrupted.state.get(q)
        if s:
            for key in ("exp_avg", "exp_avg_sq", "master_param"):
                if s[key].dtype != torch.float32:
                    raise AssertionError(f"parameter {index}: {key} loaded as {s[key].dtype}")
                check_equal(f"parameter {index} {key}", s[key], t[key])


# torch.optim.AdamW on bf16 parameters has no master and rounds its moments to bf16, so its run and
# ours drift apart by bf16 ulps: the loaded state is checked exactly, the continuation loosely.
BF16_DRIFT_TOL = {"atol": 1e-2, "rtol": 2e-2}


def check_moments_carried(first, second):
    for index, (p, q) in enumerate(zip(params_of(first), params_of(second))):
        s, t = first.state.get(p), second.state.get(q)
        if not s:
            continue
        for key in ("exp_avg", "exp_avg_sq"):
            if t[key].dtype == torch.float32:  # ours, from torch's bf16: exact
                check_equal(f"parameter {index} {key}", t[key], s[key].float())
            else:  # torch's, from our fp32: rounded to bf16 as torch's loader does
                check_equal(f"parameter {index} {key}", t[key], s[key].to(t[key].dtype))
        if float(s["step"]) != float(t["step"]):
            raise AssertionError(f"parameter {index}: step {float(t['step'])} after loading {float(s['step'])}")


def fused_to_torch_bf16():
    """torch.optim.AdamW takes our bf16 checkpoint (moments cast to bf16, as it keeps them)."""
    second, uninterrupted = switch(FusedAdamW, torch.optim.AdamW, dtype=torch.bfloat16,
                                   check_loaded=check_moments_carried)
    compare(second, uninterrupted, BF16_DRIFT_TOL)


def torch_to_fused_bf16():
    """A torch bf16 checkpoint has no master: it is made from the parameter; moments become fp32."""

    def check_loaded(first, second):
        check_moments_carried(first, second)
        for index, p in enumerate(params_of(second)):
            if second.state.get(p):
                check_equal(f"parameter {index}: master made from the parameter", second.state[p]["master_param"],
                            p.float())

    second, uninterrupted = switch(torch.optim.AdamW, FusedAdamW, dtype=torch.bfloat16, check_loaded=check_loaded)
    compare(second, uninterrupted, BF16_DRIFT_TOL)
    for p in params_of(second):
        state = second.state.get(p)
        if state and (state["exp_avg"].dtype != torch.float32 or state["master_param"].dtype != torch.float32):
            raise AssertionError("moments or master not fp32 after a step")


def state_dict_layout():
    """Keys and types as torch.optim.AdamW's, plus master_param for 16-bit parameters."""
    params = [torch.nn.Parameter(torch.randn(5)), torch.nn.Parameter(torch.randn(3).bfloat16())]
    opt = FusedAdamW(params)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    state_dict = opt.state_dict()
    keys = [set(state_dict["state"][i]) for i in (0, 1)]
    if keys != [{"step", "exp_avg", "exp_avg_sq"}, {"step", "exp_avg", "exp_avg_sq", "master_param"}]:
        raise AssertionError(f"state keys {keys}")
    step = state_dict["state"][0]["step"]
    if not (torch.is_tensor(step) and step.dtype == torch.float32 and step.device.type == "cpu" and float(step) == 1):
        raise AssertionError(f"step is {step!r}")
    missing = TORCH_ADAMW_GROUP_KEYS - set(state_dict["param_groups"][0])
    if missing:
        raise AssertionError(f"param group lacks torch.optim.AdamW's keys {missing}")


def deepcopy_continues():
    """copy.deepcopy (torch's __getstate__/__setstate__) gives an optimizer that steps on its own."""
    params = [torch.nn.Parameter(torch.randn(n)) for n in (4, 9)]
    opt = FusedAdamW(params, lr=1e-2)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    twin = copy.deepcopy(opt)
    for p, q in zip(params_of(opt), params_of(twin)):
        q.grad = p.grad.clone()
    opt.step()
    twin.step()
    for p, q in zip(params_of(opt), params_of(twin)):
        check_equal("deep copy's parameter", q, p)


if __name__ == "__main__":
    run(
        [
            ("state_dict_torch_adamw_to_fused_fp32", torch_to_fused_fp32),
            ("state_dict_fused_to_torch_adamw_fp32", fused_to_torch_fp32),
            ("state_dict_fused_to_fused_bf16_bitwise", fused_to_fused_bf16_bitwise),
            ("state_dict_fused_to_torch_adamw_bf16", fused_to_torch_bf16),
            ("state_dict_torch_adamw_to_fused_bf16", torch_to_fused_bf16),
            ("state_dict_layout", state_dict_layout),
            ("state_dict_deepcopy_continues", deepcopy_continues),
        ]
    )
