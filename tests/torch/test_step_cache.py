"""test_step_cache.py - FusedAdamW.step() keeps its parameters and their state tensors in a cache
(fusedadam._C.ParamCache) that it checks against the optimizer at every step. Steady steps must not
rebuild it; anything that changes what a step reads (groups, their params, the state, a master,
master_weights, a parameter's dtype) must be seen at the next step, which then matches
torch.optim.AdamW doing the same."""

import copy
import gc
import weakref

import torch

from fusedadam.torch import FusedAdamW
from harness import FP32_TOL, HALF_TOL, check_close, check_equal, run


def twins(shapes=(5, 33, 7), dtype=torch.float32, **options):
    """A FusedAdamW and a torch.optim.AdamW over equal parameters (fp32 copies for torch)."""
    values = [torch.randn(n).to(dtype) for n in shapes]
    params = [torch.nn.Parameter(v.clone()) for v in values]
    reference = [torch.nn.Parameter(v.float()) for v in values]
    return FusedAdamW(params, **options), torch.optim.AdamW(reference, **options)


def params_of(optimizer):
    return [p for group in optimizer.param_groups for p in group["params"]]


def step_both(fused, reference, skip=()):
    """Gives every parameter not in `skip` (indices) the same gradient, steps both, compares."""
    for index, (p, r) in enumerate(zip(params_of(fused), params_of(reference))):
        if index in skip:
            p.grad, r.grad = None, None
        else:
            p.grad = torch.randn(p.shape).to(p.dtype)
            r.grad = p.grad.float()
    fused.step()
    reference.step()
    compare(fused, reference)


def compare(fused, reference):
    for index, (p, r) in enumerate(zip(params_of(fused), params_of(reference))):
        tolerance = FP32_TOL if p.dtype == torch.float32 else HALF_TOL
        check_close(f"parameter {index}", p.float(), r, **tolerance)
        s, t = fused.state.get(p), reference.state.get(r)
        if bool(s) != bool(t) or (s and float(s["step"]) != float(t["step"])):
            raise AssertionError(f"parameter {index}: step counts differ from torch's")


def expect_loads(optimizer, expected, what):
    if optimizer._cache.loads != expected:
        raise AssertionError(f"{what}: the cache was built {optimizer._cache.loads} times, expected {expected}")


def steady_steps_reuse_the_cache():
    """One build at the first step, none after, whichever parameters have a gradient."""
    fused, reference = twins(lr=1e-2)
    for step in range(6):
        step_both(fused, reference, skip={step % 3} if step else ())
    expect_loads(fused, 1, "6 steps")
    if len(fused._cache) != 3:
        raise AssertionError(f"the cache holds {len(fused._cache)} parameters, not 3")


def first_gradient_creates_state():
    """A parameter that gets its first gradient late gets its state then, as torch's does."""
    fused, reference = twins(lr=1e-2)
    step_both(fused, reference, skip={1})
    if params_of(fused)[1] in fused.state:
        raise AssertionError("state made for a parameter that had no gradient")
    step_both(fused, reference, skip={1})
    step_both(fused, reference)
    expect_loads(fused, 2, "a late first gradient")


def replaced_state_tensor():
    """state['exp_avg'] replaced by another tensor: the step reads the new one."""
    fused, reference = twins(lr=1e-2)
    step_both(fused, reference)
    for opt in (fused, reference):
        state = opt.state[params_of(opt)[0]]
        state["exp_avg"] = state["exp_avg"].float() * 0.5
        state["step"] = torch.tensor(10.0)
    step_both(fused, reference)
    step_both(fused, reference)


def replaced_and_dropped_state():
    """optimizer.state[p] replaced by an empty dict, or deleted: fresh state, as torch makes."""
    fused, reference = twins(lr=1e-2)
    step_both(fused, reference)
    for opt in (fused, reference):
        params = params_of(opt)
        opt.state[params[0]] = {}
        del opt.state[params[2]]
    step_both(fused, reference)
    if float(fused.state[params_of(fused)[0]]["step"]) != 1:
        raise AssertionError("replaced state did not start over")


def group_params_edited_in_place():
    """A parameter appended to a group's list, then one removed: the step follows the list."""
    fused, reference = twins(lr=1e-2)
    step_both(fused, reference)
    extra = torch.randn(9)
    fused.param_groups[0]["params"].append(torch.nn.Parameter(extra.clone()))
    reference.param_groups[0]["params"].append(torch.nn.Parameter(extra.clone()))
    step_both(fused, reference)
    for opt in (fused, reference):
        opt.param_groups[0]["params"].pop(0)
    step_both(fused, reference)


def added_group_and_scheduler():
    fused, reference = twins(lr=1e-2)
    step_both(fused, reference)
    values = [torch.randn(4), torch.randn(6)]
    fused.add_param_group({"params": [torch.nn.Parameter(v.clone()) for v in values], "lr": 3e-2})
    reference.add_param_group({"params": [torch.nn.Parameter(v.clone()) for v in values], "lr": 3e-2})
    for _ in range(3):
        for opt in (fused, reference):
            opt.param_groups[1]["lr"] *= 0.5  # read at every step, not cached
        step_both(fused, reference)
    expect_loads(fused, 2, "one group added")


def deleted_master_is_rebuilt():
    """Deleting state['master_param'] makes a new master from the parameter (documented)."""
    p = torch.nn.Parameter(torch.randn(64).bfloat16())
    opt = FusedAdamW([p], lr=1e-2)
    p.grad = torch.randn(64).bfloat16()
    opt.step()
    with torch.no_grad():
        p.mul_(2)  # changed outside the optimizer: the master is stale
    del opt.state[p]["master_param"]
    # The same state loaded into a twin: a checkpoint without a master gets one made from the parameter.
    q = torch.nn.Parameter(p.detach().clone())
    twin = FusedAdamW([q], lr=1e-2)
    twin.load_state_dict(copy.deepcopy(opt.state_dict()))
    q.grad = p.grad.clone()
    opt.step()
    twin.step()
    check_equal("master rebuilt from the parameter", opt.state[p]["master_param"], twin.state[q]["master_param"])
    check_equal("parameter", p, q)


def master_weights_toggled():
    """master_weights switched off then on for a bf16 group: without, the bf16 parameter is
    updated in place; with again, the master kept in the state is used."""
    p = torch.nn.Parameter(torch.randn(32).bfloat16())
    opt = FusedAdamW([p], lr=1e-2)
    p.grad = torch.randn(32).bfloat16()
    opt.step()
    master = opt.state[p]["master_param"].clone()
    opt.param_groups[0]["master_weights"] = False
    opt.step()
    if not torch.equal(opt.state[p]["master_param"], master):
        raise AssertionError("the master was updated with master_weights=False")
    opt.param_groups[0]["master_weights"] = True
    opt.step()
    if torch.equal(opt.state[p]["master_param"], master):
        raise AssertionError("the master was not updated with master_weights=True")
    check_equal("parameter = master rounded", p, opt.state[p]["master_param"].bfloat16())


def parameter_dtype_changed():
    """param.data replaced by a bf16 tensor (what module.bfloat16() does): a master is made for it."""
    p = torch.nn.Parameter(torch.randn(16))
    opt = FusedAdamW([p], lr=1e-2)
    p.grad = torch.randn(16)
    opt.step()
    p.data = p.data.bfloat16()
    p.grad = torch.randn(16).bfloat16()
    opt.step()
    master = opt.state[p].get("master_param")
    if master is None or master.dtype != torch.float32:
        raise AssertionError("no float32 master for the parameter made bf16")
    check_equal("parameter = master rounded", p, master.bfloat16())


def parameter_data_replaced():
    """param.data replaced by another buffer of the same shape: the step updates the new buffer."""
    fused, reference = twins(lr=1e-2)
    step_both(fused, reference)
    values = torch.randn(5)
    params_of(fused)[0].data = values.clone()
    params_of(reference)[0].data = values.clone()
    step_both(fused, reference)


def load_into_stepped_optimizer():
    """load_state_dict into an optimizer that has stepped: the loaded state is what steps next."""
    fused, reference = twins(lr=1e-2)
    step_both(fused, reference)
    step_both(fused, reference)
    checkpoint = copy.deepcopy(fused.state_dict())
    saved = [p.detach().clone() for p in params_of(fused)]
    step_both(fused, reference)
    fused.load_state_dict(checkpoint)
    reference.load_state_dict(checkpoint)
    with torch.no_grad():
        for p, r, value in zip(params_of(fused), params_of(reference), saved):
            p.copy_(value)
            r.copy_(value)
    step_both(fused, reference)
    expect_loads(fused, 2, "a checkpoint loaded")


def refused_step_then_good_steps():
    """A step refused while making state (a complex64 parameter) leaves no state; once the parameter
    is dropped from the group, steps go on as torch's do."""
    fused, reference = twins(lr=1e-2)
    step_both(fused, reference)
    bad = torch.nn.Parameter(torch.randn(3, dtype=torch.complex64))
    fused.param_groups[0]["params"].append(bad)
    for p in params_of(fused):
        p.grad = torch.randn_like(p)
    try:
        fused.step()
    except TypeError:
        pass
    else:
        raise AssertionError("a complex64 parameter was stepped")
    if bad in fused.state:
        raise AssertionError("the refused step left state behind")
    fused.param_groups[0]["params"].pop()
    step_both(fused, reference)


def unusual_step_refused():
    """A state['step'] without storage (sparse), deep in a long list the step fetches ahead: the
    step is refused with the binding's message and changes nothing."""
    params = [torch.nn.Parameter(torch.randn(4)) for _ in range(40)]
    opt = FusedAdamW(params)
    for p in params:
        p.grad = torch.randn(4)
    opt.step()
    opt.state[params[30]]["step"] = torch.tensor([1.0]).to_sparse()
    before = [p.detach().clone() for p in params]
    try:
        opt.step()
    except RuntimeError as error:
        if "state['step'] must be" not in str(error):
            raise AssertionError(f"message {error}")
    else:
        raise AssertionError("a sparse state['step'] was accepted")
    for index, (p, value) in enumerate(zip(params, before)):
        check_equal(f"parameter {index} after a refused step", p, value)
        if index != 30 and float(opt.state[p]["step"]) != 1:
            raise AssertionError(f"parameter {index}: the refused step advanced its step count")


def no_gradient_no_checks():
    """Without any gradient the step does nothing and checks nothing, as before."""
    fused, _ = twins()
    fused.param_groups[0]["lr"] = -1.0
    fused.step()
    if fused.state:
        raise AssertionError("state made without gradients")


def cycle_through_a_group_is_collected():
    """The cache holds Python objects: a cycle through them (a group naming its optimizer) is freed."""
    p = torch.nn.Parameter(torch.randn(3))
    p.grad = torch.randn(3)
    opt = FusedAdamW([p])
    opt.param_groups[0]["owner"] = opt
    opt.step()
    ref = weakref.ref(opt)
    del opt
    gc.collect()
    if ref() is not None:
        raise AssertionError("an optimizer in a reference cycle was never freed")


if __name__ == "__main__":
    run(
        [
            ("cache_steady_steps_reuse_it", steady_steps_reuse_the_cache),
            ("cache_first_gradient_creates_state", first_gradient_creates_state),
            ("cache_replaced_state_tensor", replaced_state_tensor),
            ("cache_replaced_and_dropped_state", replaced_and_dropped_state),
            ("cache_group_params_edited_in_place", group_params_edited_in_place),
            ("cache_added_group_and_scheduler", added_group_and_scheduler),
            ("cache_deleted_master_is_rebuilt", deleted_master_is_rebuilt),
            ("cache_master_weights_toggled", master_weights_toggled),
            ("cache_parameter_dtype_changed", parameter_dtype_changed),
            ("cache_parameter_data_replaced", parameter_data_replaced),
            ("cache_load_into_stepped_optimizer", load_into_stepped_optimizer),
            ("cache_refused_step_then_good_steps", refused_step_then_good_steps),
            ("cache_unusual_step_refused", unusual_step_refused),
            ("cache_no_gradient_no_checks", no_gradient_no_checks),
            ("cache_cycle_through_a_group_is_collected", cycle_through_a_group_is_collected),
        ]
    )
