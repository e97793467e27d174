"""test_masters.py - fp32 master weights never silently undo training: a master that no longer rounds
to its bf16/fp16 parameter after a load (the FusedAdamW -> torch.optim.AdamW -> FusedAdamW round trip
of issue 14) is rebuilt from the parameter with a warning, and resync_master_weights() does the same
after an in-place edit of the parameters."""

import warnings

import torch

from fusedadam.torch import FusedAdamW
from harness import HALF_TOL, check_close, check_equal, run

SHAPES = [(33, 7), (50,), (4, 4, 3)]
OPTIONS = {"lr": 1e-2, "weight_decay": 0.1}


def set_grads(params):
    for p in params:
        p.grad = torch.randn(p.shape).to(p.dtype)


def round_trip(dtype):
    """FusedAdamW 5 steps -> state_dict -> torch AdamW 20 steps -> state_dict -> FusedAdamW: the first
    step after the load starts from the parameters torch left (not from the stale master)."""
    params = [torch.nn.Parameter(torch.randn(shape).to(dtype)) for shape in SHAPES]
    fused = FusedAdamW(params, **OPTIONS)
    for _ in range(5):
        set_grads(params)
        fused.step()
    theirs = torch.optim.AdamW(params, **OPTIONS)
    theirs.load_state_dict(fused.state_dict())  # torch carries master_param along, untouched
    for _ in range(20):
        set_grads(params)
        theirs.step()
    trained = [p.detach().clone() for p in params]
    back = FusedAdamW(params, **OPTIONS)
    back.load_state_dict(theirs.state_dict())
    set_grads(params)
    grads = [p.grad.clone() for p in params]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        back.step()
    # The same step by torch from where it stopped: FusedAdamW continues torch's run.
    for p, t, g in zip(params, trained, grads):
        check_close("master after the step", back.state[p]["master_param"].to(dtype), p, atol=0, rtol=0)
    continued = [torch.nn.Parameter(t.clone()) for t in trained]
    reference = torch.optim.AdamW(continued, **OPTIONS)
    reference.load_state_dict(theirs.state_dict())
    for q, g in zip(continued, grads):
        q.grad = g.clone()
    reference.step()
    for i, (p, q) in enumerate(zip(params, continued)):
        # torch steps a 16-bit parameter in its own dtype, we in fp32 from the rebuilt master: one ulp
        # apart at most, and an ulp of x is at most |x| * eps (HALF_TOL's rtol is less than that)
        check_close(f"parameter {i} one step after the round trip", p, q, atol=HALF_TOL["atol"],
                    rtol=max(HALF_TOL["rtol"], torch.finfo(dtype).eps))
    if not any("no longer round" in str(w.message) for w in caught):
        raise AssertionError("no warning about the stale masters")


def round_trip_bf16():
    round_trip(torch.bfloat16)


def round_trip_fp16():
    round_trip(torch.float16)


def in_place_edit(dtype):
    """A parameter re-initialised in place between steps: resync_master_weights() makes the next step
    start from the new values; masters of untouched parameters keep their fp32 bits."""
    params = [torch.nn.Parameter(torch.randn(shape).to(dtype)) for shape in SHAPES]
    opt = FusedAdamW(params, **OPTIONS)
    for _ in range(3):
        set_grads(params)
        opt.step()
    untouched = opt.state[params[1]]["master_param"].clone()
    with torch.no_grad():
        params[0].normal_(mean=5.0)
    new_values = params[0].detach().float().clone()
    if opt.resync_master_weights() != 1:
        raise AssertionError("resync_master_weights did not report exactly the edited parameter")
    check_equal("master of an untouched parameter", opt.state[params[1]]["master_param"], untouched)
    check_equal("master of the edited parameter", opt.state[params[0]]["master_param"], new_values)
    set_grads(params)
    opt.step()
    # one AdamW step moves a parameter by at most ~lr (plus the decay): still near the new values
    check_close("edited parameter after a step", params[0], new_values, atol=0.03, rtol=0.01)


def in_place_edit_bf16():
    in_place_edit(torch.bfloat16)


def in_place_edit_fp16():
    in_place_edit(torch.float16)


def fused_round_trip_keeps_masters():
    """FusedAdamW -> FusedAdamW: masters that round to their parameters are kept bit for bit, no warning."""
    params = [torch.nn.Parameter(torch.randn(shape).to(torch.bfloat16)) for shape in SHAPES]
    opt = FusedAdamW(params, **OPTIONS)
    for _ in range(3):
        set_grads(params)
        opt.step()
    masters = [opt.state[p]["master_param"].clone() for p in params]
    twin = FusedAdamW(params, **OPTIONS)
    twin.load_state_dict(opt.state_dict())
    for p in params:
        p.grad = torch.zeros_like(p)
    twin.param_groups[0]["lr"] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        twin.step()
    for p, m in zip(params, masters):
        check_equal("kept master", twin.state[p]["master_param"], m)


def halfway_masters_are_not_stale():
    """A master exactly halfway between two bf16 values rounds to either (fusedadam's bf16 param from a
    master rounds ties away from zero, torch's .to() to even): resync keeps it, whichever the parameter
    holds; a parameter one more ulp away is stale."""
    n = 64
    upper = (torch.randint(0x3C00, 0x4100, (n,), dtype=torch.int32) & ~1) | torch.randint(0, 2, (n,), dtype=torch.int32) * 0x8000
    master = ((upper << 16) | 0x8000).view(torch.float32)  # halfway, half of them negative, the lower neighbour even
    away = ((upper + 1) & 0xFFFF).to(torch.int16).view(torch.bfloat16)  # one up in magnitude, either sign
    for name, param_value, want_stale in (("away", away, 0), ("even", master.to(torch.bfloat16), 0),
                                          ("two ulps", (away.view(torch.int16) + 1).view(torch.bfloat16), 1)):
        param = torch.nn.Parameter(param_value.clone())
        opt = FusedAdamW([param], **OPTIONS)
        param.grad = torch.zeros_like(param)
        opt.param_groups[0]["lr"] = 0.0
        opt.step()
        opt.state[param]["master_param"].copy_(master)
        if opt.resync_master_weights() != want_stale:
            raise AssertionError(f"{name}: resync_master_weights() should report {want_stale}")
        if not want_stale:
            check_equal(f"{name}: the halfway master kept", opt.state[param]["master_param"], master)


if __name__ == "__main__":
    run(
        [
            ("stale_master_round_trip_via_torch_adamw_bf16", round_trip_bf16),
            ("stale_master_round_trip_via_torch_adamw_fp16", round_trip_fp16),
            ("resync_master_weights_after_in_place_edit_bf16", in_place_edit_bf16),
            ("resync_master_weights_after_in_place_edit_fp16", in_place_edit_fp16),
            ("fused_round_trip_keeps_masters_bitwise", fused_round_trip_keeps_masters),
            ("resync_keeps_halfway_masters_either_neighbour", halfway_masters_are_not_stale),
        ]
    )
