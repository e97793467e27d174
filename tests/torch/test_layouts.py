"""test_layouts.py - the memory-lean state layouts through fusedadam.torch (issue 12), on CPU tensors:
master_weights="remainder", moment_dtype=torch.bfloat16 / "int8" and their combinations step close to
torch.optim.AdamW on float32 copies over 50 steps; the remainder layout is bit for bit the fp32-master
run (parameter, master, m, v); state_dict interchange with torch.optim.AdamW
both ways and across layouts; stochastic rounding's seed; bad keyword arguments raise.

Tolerances against torch.optim.AdamW (lr 1e-3, 50 steps, bf16 parameters; the distance of each
element's master from torch's float32 parameter, as a fraction of the run's largest movement
steps * lr): fp32 moments and the remainder 1e-4 (float32 rounding; observed ~5e-6); bf16 moments 3%
(one bf16 ulp, 2^-8 relative, per step on m and v, unbiased; observed ~0.3%); 8-bit moments 10%
(docs/STATE_LAYOUTS.md: up to 8% on m and v near a block's smallest codes, where the update is small;
observed ~1%)."""

import torch

from fusedadam import _C
from fusedadam.torch import FusedAdamW, FusedLion
from harness import Skip, check_close, check_equal, expect_raises, run, through_file

SHAPES = [(300,), (17, 23), (1,), (3, 0), (256, 3)]
LR, STEPS = 1e-3, 50
LAYOUTS = {  # name: (keyword arguments, tolerance as a fraction of STEPS * LR)
    "fp32": ({}, 1e-4),
    "remainder": ({"master_weights": "remainder"}, 1e-4),
    "bf16_moments": ({"moment_dtype": torch.bfloat16}, 0.03),
    "int8_moments": ({"moment_dtype": "int8"}, 0.1),
    "remainder_bf16": ({"master_weights": "remainder", "moment_dtype": torch.bfloat16}, 0.03),
    "remainder_int8": ({"master_weights": "remainder", "moment_dtype": "int8"}, 0.1),
}


def needs_lean():
    if not _C.lean_layouts_supported():
        raise Skip("this build of the C library does not step the lean layouts")


def bf16_values():
    return [torch.randn(s).to(torch.bfloat16) for s in SHAPES]


def params_of(optimizer):
    return [p for group in optimizer.param_groups for p in group["params"]]


def master_of(optimizer, param):
    """The float32 master of a bf16 parameter in whichever form its state keeps it."""
    state = optimizer.state[param]
    if "master_remainder" in state:
        return _C.join_master(param.detach(), state["master_remainder"])
    return state["master_param"]


def versus_torch(kwargs, tolerance):
    needs_lean()
    values = bf16_values()
    ours = FusedAdamW([torch.nn.Parameter(v.clone()) for v in values], lr=LR, weight_decay=0.1, **kwargs)
    theirs = torch.optim.AdamW([torch.nn.Parameter(v.float()) for v in values], lr=LR, weight_decay=0.1)
    for _ in range(STEPS):
        for p, q in zip(params_of(ours), params_of(theirs)):
            p.grad = torch.randn(p.shape).to(torch.bfloat16)
            q.grad = p.grad.float()
        ours.step()
        theirs.step()
    exported = ours.state_dict()["state"]
    for index, (p, q) in enumerate(zip(params_of(ours), params_of(theirs))):
        bound = tolerance * STEPS * LR
        check_close(f"parameter {index} {tuple(p.shape)} master", master_of(ours, p), q, atol=bound, rtol=0)
        check_close(f"parameter {index} bf16", p, q.to(torch.bfloat16), atol=bound, rtol=2**-7)  # one bf16 ulp
        # the moments' errors are relative to the gradients' scale: m's largest or sqrt(v) (m cancels), v's largest
        m_max = float(theirs.state[q]["exp_avg"].abs().max()) if q.numel() else 0.0
        v_max = float(theirs.state[q]["exp_avg_sq"].max()) if q.numel() else 0.0
        for key, scale in (("exp_avg", max(m_max, v_max**0.5)), ("exp_avg_sq", v_max)):
            if key == "exp_avg_sq" and kwargs.get("moment_dtype") is torch.bfloat16:
                check_stochastic_walk(f"parameter {index} {key} (exported float32)", exported[index][key], theirs.state[q][key])
                continue
            check_close(f"parameter {index} {key} (exported float32)", exported[index][key], theirs.state[q][key],
                        atol=max(tolerance, 1e-3) * scale + 1e-12, rtol=0)


def check_stochastic_walk(what, got, want):
    """A bf16 exp_avg_sq kept with stochastic rounding against float32: v hardly decays (beta2 0.999), so
    its error is a walk of STEPS unbiased roundings, each under one bf16 ulp of v (standard deviation
    under half an ulp). Each element within 8 standard deviations of that walk, and their mean error
    within 8 standard deviations of a mean (a biased rounding, such as a stall, fails that)."""
    want = want.double()
    ulps = (got.double() - want) / torch.exp2(torch.floor(torch.log2(want.clamp_min(1e-30))) - 7)
    sd = 0.5 * STEPS**0.5
    if ulps.numel() and float(ulps.abs().max()) > 8 * sd:
        raise AssertionError(f"{what}: an error of {float(ulps.abs().max()):.1f} bf16 ulps > {8 * sd:.1f}")
    if ulps.numel() >= 100 and abs(float(ulps.mean())) > 8 * sd / ulps.numel() ** 0.5:
        raise AssertionError(f"{what}: mean error {float(ulps.mean()):.2f} ulps over {ulps.numel()} elements: biased")


def remainder_equals_fp32_master(optimizer_class=FusedAdamW, steps=120):
    """The remainder layout against the fp32-master layout on the same bf16 parameters and gradients:
    the parameter, the joined master, m and v bit for bit at every step. Counts the parameters where
    torch's round-to-nearest-even of the master would have differed (even ties: both layouts round
    those away from zero)."""
    needs_lean()
    values = [torch.randn(s).mul(0.02).to(torch.bfloat16) for s in [(4096,), (33, 7)]]
    fp32 = optimizer_class([torch.nn.Parameter(v.clone()) for v in values], lr=1e-3, weight_decay=0.1)
    lean = optimizer_class([torch.nn.Parameter(v.clone()) for v in values], lr=1e-3, weight_decay=0.1,
                           master_weights="remainder")
    ties = 0
    for step in range(steps):
        for p, q in zip(params_of(fp32), params_of(lean)):
            p.grad = torch.randn(p.shape).to(torch.bfloat16)
            q.grad = p.grad.clone()
        fp32.step()
        lean.step()
        for index, (p, q) in enumerate(zip(params_of(fp32), params_of(lean))):
            a, b = fp32.state[p], lean.state[q]
            if "master_param" in b or "exp_avg" not in b and optimizer_class is FusedAdamW:
                raise AssertionError(f"remainder state keys {sorted(b)}")
            check_equal(f"step {step} parameter {index} joined master", master_of(lean, q), a["master_param"])
            for key in optimizer_class._STATE_KEYS:
                check_equal(f"step {step} parameter {index} {key}", b[key], a[key])
            check_equal(f"step {step} parameter {index} param", q, p)
            ties += int((q != a["master_param"].to(torch.bfloat16)).sum())
    print(f"# {optimizer_class.__name__}: {ties} parameter elements were even ties over {steps} steps (equal there too)")


def split_master_beside_a_param():
    """_C.split_master: exact for the parameter fusedadam writes (ties away from zero); beside a parameter
    that torch rounded to even at an even-tie master, the remainder that keeps that parameter (the master
    one fp32 ulp toward zero) rather than one that joins half a bf16 ulp away."""
    n = 256
    upper = (torch.randint(0x3C00, 0x4100, (n,), dtype=torch.int32) & ~1) | torch.randint(0, 2, (n,), dtype=torch.int32) * 0x8000
    ties = ((upper << 16) | 0x8000).view(torch.float32)
    plain = torch.randn(n)
    master = torch.where(torch.arange(n) % 2 == 0, ties, plain)
    param, remainder = _C.split_master(master)
    check_equal("split_master's param, ties away from zero", param.view(torch.int16),
                torch.where(torch.arange(n) % 2 == 0, ((upper + 1) & 0xFFFF).to(torch.int16), param.view(torch.int16)))
    check_equal("join(split(master))", _C.join_master(param, remainder), master)
    check_equal("beside its own param: the same remainder", _C.split_master(master, param)[1], remainder)
    rne = master.to(torch.bfloat16)
    joined = _C.join_master(rne, _C.split_master(master, rne)[1])
    toward_zero = torch.where(torch.arange(n) % 2 == 0, (master.view(torch.int32) - 1).view(torch.float32), master)
    check_equal("beside torch's round-to-nearest-even param", joined, toward_zero)


def lion_remainder_equals_fp32_master():
    remainder_equals_fp32_master(FusedLion, steps=40)


def train(optimizer, grads):
    for step_grads in grads:
        for p, g in zip(params_of(optimizer), step_grads):
            p.grad = g.clone()
        optimizer.step()


def resumed_equals_uninterrupted(kwargs):
    """Our own state dict restores a lean layout bit for bit (stochastic rounding included: its bits
    are a function of the seed, the parameter's index, the step and the element)."""
    needs_lean()
    values = bf16_values()
    grads = [[torch.randn(v.shape).to(torch.bfloat16) for v in values] for _ in range(8)]
    first = FusedAdamW([torch.nn.Parameter(v.clone()) for v in values], lr=LR, seed=7, **kwargs)
    uninterrupted = FusedAdamW([torch.nn.Parameter(v.clone()) for v in values], lr=LR, seed=7, **kwargs)
    train(first, grads[:4])
    second = FusedAdamW([torch.nn.Parameter(p.detach().clone()) for p in params_of(first)], lr=0.5, seed=7, **kwargs)
    second.load_state_dict(through_file(first.state_dict()))
    train(second, grads[4:])
    train(uninterrupted, grads)
    for index, (p, q) in enumerate(zip(params_of(second), params_of(uninterrupted))):
        check_equal(f"parameter {index}", p, q)
        s, t = second.state[p], uninterrupted.state[q]
        if sorted(s) != sorted(t):
            raise AssertionError(f"parameter {index}: loaded state keys {sorted(s)}, expected {sorted(t)}")
        for key in t:
            check_equal(f"parameter {index} {key}", s[key], t[key])


def to_torch_and_back():
    """A lean state dict loads into torch.optim.AdamW (float32 exp_avg/exp_avg_sq exported), and a
    torch.optim.AdamW state dict loads into each lean layout, quantized (bf16: to nearest even; 8-bit:
    to nearest; the remainder: the master is the parameter)."""
    needs_lean()
    values = [torch.randn(s) for s in SHAPES]
    grads = [[torch.randn(v.shape) for v in values] for _ in range(3)]
    reference = torch.optim.AdamW([torch.nn.Parameter(v.clone()) for v in values], lr=LR)
    train(reference, grads)
    saved = through_file(reference.state_dict())
    for name, (kwargs, _) in LAYOUTS.items():
        params = [torch.nn.Parameter(p.detach().to(torch.bfloat16)) for p in params_of(reference)]
        lean = FusedAdamW(params, lr=0.5, **kwargs)
        lean.load_state_dict(saved)
        for index, (p, q) in enumerate(zip(params, params_of(reference))):
            state, want = lean.state[p], reference.state[q]
            moments = kwargs.get("moment_dtype", torch.float32)
            for key in ("exp_avg", "exp_avg_sq"):
                if moments == torch.bfloat16:
                    check_equal(f"{name} parameter {index} {key}", state[key + "_bf16"], want[key].to(torch.bfloat16))
                elif moments == "int8":
                    codes = state["exp_avg_int8" if key == "exp_avg" else "exp_avg_sq_uint8"]
                    value = _C.dequantize_moment(codes, state[key + "_scales"])
                    scale = float(want[key].abs().max()) if want[key].numel() else 0.0
                    check_close(f"{name} parameter {index} {key}", value, want[key], atol=0.02 * scale + 1e-30, rtol=0.1)
                else:
                    check_equal(f"{name} parameter {index} {key}", state[key], want[key])
            if kwargs.get("master_weights") == "remainder":
                check_equal(f"{name} parameter {index} master", master_of(lean, p), p.float())
        train(lean, [[g.to(torch.bfloat16) for g in grads[0]]])
        # and back: torch loads what we export (float32 moments, the joined master beside the param)
        back = torch.optim.AdamW([torch.nn.Parameter(master_of(lean, p).clone()) for p in params], lr=LR)
        exported = lean.state_dict()
        back.load_state_dict(through_file(exported))
        for index, (p, q) in enumerate(zip(params, params_of(back))):
            for key in ("exp_avg", "exp_avg_sq"):
                if exported["state"][index][key].dtype != torch.float32:
                    raise AssertionError(f"{name}: exported {key} is {exported['state'][index][key].dtype}")
                check_equal(f"{name} parameter {index} {key} in torch", back.state[q][key], exported["state"][index][key])
        train(back, [grads[1]])


def even_tie(master):
    """fadam_master_is_even_tie: finite, low 17 bits 0x08000 (the remainder 0x8000, the bf16 param even)."""
    bits = master.view(torch.int32)
    return ((bits & 0x7FFFFFFF) <= 0x7F800000) & ((bits & 0x1FFFF) == 0x8000)


def across_layouts():
    """fp32 states -> each lean layout -> fp32 states: the remainder converts losslessly; moments lose
    what their format cannot hold."""
    needs_lean()
    values = bf16_values()
    grads = [[torch.randn(v.shape).to(torch.bfloat16) for v in values] for _ in range(3)]
    fp32 = FusedAdamW([torch.nn.Parameter(v.clone()) for v in values], lr=LR)
    train(fp32, grads)
    saved = through_file(fp32.state_dict())
    for name, (kwargs, tolerance) in LAYOUTS.items():
        lean = FusedAdamW([torch.nn.Parameter(p.detach().clone()) for p in params_of(fp32)], lr=LR, **kwargs)
        lean.load_state_dict(saved)
        back = FusedAdamW([torch.nn.Parameter(p.detach().clone()) for p in params_of(lean)], lr=LR)
        back.load_state_dict(through_file(lean.state_dict()))
        for index, (p, q) in enumerate(zip(params_of(back), params_of(fp32))):
            s, t = back.state[p], fp32.state[q]
            master = t["master_param"]
            if kwargs.get("master_weights") == "remainder":  # even ties lose their last ulp (split_rne)
                master = torch.where(even_tie(master), torch.nextafter(master, torch.zeros_like(master)), master)
            check_equal(f"{name} parameter {index} master", s["master_param"], master)
            for key in ("exp_avg", "exp_avg_sq"):
                scale = float(t[key].abs().max()) if t[key].numel() else 0.0
                check_close(f"{name} parameter {index} {key}", s[key], t[key], atol=0.02 * scale + 1e-30,
                            rtol=0 if "moment_dtype" not in kwargs else 0.1)
        train(back, grads[:1])


def seed_decides_rounding():
    """bf16 moments: the same seed gives the same bits, another seed others."""
    needs_lean()
    values = bf16_values()
    grads = [[torch.randn(v.shape).to(torch.bfloat16) for v in values] for _ in range(3)]
    runs = []
    for seed in (3, 3, 4):
        optimizer = FusedAdamW([torch.nn.Parameter(v.clone()) for v in values], lr=LR, moment_dtype=torch.bfloat16,
                               seed=seed)
        train(optimizer, grads)
        runs.append(torch.cat([optimizer.state[p]["exp_avg_sq_bf16"].flatten().float() for p in params_of(optimizer)]))
    check_equal("exp_avg_sq with one seed, twice", runs[0], runs[1])
    if torch.equal(runs[0], runs[2]):
        raise AssertionError("seeds 3 and 4 rounded every element alike")


def bad_arguments():
    """Values outside the documented ones raise ValueError (a truthy string no longer means True)."""
    param = torch.nn.Parameter(torch.randn(4).to(torch.bfloat16))
    expect_raises(ValueError, "master_weights='yes'", lambda: FusedAdamW([param], master_weights="yes"))
    expect_raises(ValueError, "master_weights=1", lambda: FusedAdamW([param], master_weights=1))
    expect_raises(ValueError, "moment_dtype=torch.float16", lambda: FusedAdamW([param], moment_dtype=torch.float16))
    expect_raises(ValueError, "moment_dtype='int4'", lambda: FusedAdamW([param], moment_dtype="int4"))
    expect_raises(ValueError, "seed=-1", lambda: FusedAdamW([param], seed=-1))
    expect_raises(ValueError, "seed=1.5", lambda: FusedAdamW([param], seed=1.5))
    optimizer = FusedAdamW([param])
    other = torch.nn.Parameter(torch.randn(3).to(torch.bfloat16))
    expect_raises(ValueError, "moment_dtype='float8'", lambda: optimizer.add_param_group({"params": [other], "moment_dtype": "float8"}))
    optimizer.param_groups[0]["master_weights"] = "Remainder"
    param.grad = torch.randn(4).to(torch.bfloat16)
    expect_raises(ValueError, "master_weights='Remainder'", optimizer.step)
    if optimizer.state.get(param):
        raise AssertionError("a refused step made state")


def lean_errors():
    """The remainder needs bf16 parameters; a layout cannot change once its state exists."""
    needs_lean()
    half = torch.nn.Parameter(torch.randn(5).to(torch.float16))
    optimizer = FusedAdamW([half], master_weights="remainder")
    half.grad = torch.randn(5).to(torch.float16)
    before = half.detach().clone()
    expect_raises(TypeError, "needs bfloat16", optimizer.step)
    check_equal("a float16 parameter after a refused step", half, before)
    param = torch.nn.Parameter(torch.randn(5).to(torch.bfloat16))
    optimizer = FusedAdamW([param], moment_dtype=torch.bfloat16)
    param.grad = torch.randn(5).to(torch.bfloat16)
    optimizer.step()
    optimizer.param_groups[0]["moment_dtype"] = "int8"
    expect_raises(ValueError, "moment_dtype is fixed", optimizer.step)
    optimizer.param_groups[0]["moment_dtype"] = torch.bfloat16
    optimizer.param_groups[0]["master_weights"] = "remainder"
    expect_raises(ValueError, "master_weights is fixed", optimizer.step)
    optimizer.param_groups[0]["master_weights"] = True
    optimizer.step()


def lion_lean():
    """FusedLion keeps its one moment in a lean format too (no exp_avg_sq state)."""
    needs_lean()
    for moments, keys in ((torch.bfloat16, ["exp_avg_bf16", "master_remainder", "step"]),
                          ("int8", ["exp_avg_int8", "exp_avg_scales", "master_remainder", "step"])):
        param = torch.nn.Parameter(torch.randn(700).to(torch.bfloat16))
        optimizer = FusedLion([param], lr=1e-2, master_weights="remainder", moment_dtype=moments)
        before = param.detach().clone()
        for _ in range(3):
            param.grad = torch.randn(700).to(torch.bfloat16)
            optimizer.step()
        if sorted(optimizer.state[param]) != keys:
            raise AssertionError(f"Lion {moments} state keys {sorted(optimizer.state[param])}")
        moved = (master_of(optimizer, param) - before.float()).abs().max()
        if not 0.01 < float(moved) <= 0.0301:
            raise AssertionError(f"Lion moved a parameter by {float(moved)} in 3 steps of lr 0.01")


if __name__ == "__main__":
    cases = [(f"layout_{name}_vs_torch_adamw_{STEPS}_steps", lambda k=kwargs, t=tol: versus_torch(k, t))
             for name, (kwargs, tol) in LAYOUTS.items()]
    cases += [
        ("layout_remainder_bitwise_equals_fp32_master", remainder_equals_fp32_master),
        ("layout_remainder_bitwise_equals_fp32_master_lion", lion_remainder_equals_fp32_master),
        ("layout_split_master_beside_a_param", split_master_beside_a_param),
    ]
    cases += [(f"layout_{name}_state_dict_resume_bitwise", lambda k=kwargs: resumed_equals_uninterrupted(k))
              for name, (kwargs, _) in LAYOUTS.items() if kwargs]
    cases += [
        ("layout_state_dict_torch_adamw_both_ways", to_torch_and_back),
        ("layout_state_dict_across_layouts", across_layouts),
        ("layout_bf16_seed_decides_rounding", seed_decides_rounding),
        ("layout_bad_arguments_raise", bad_arguments),
        ("layout_remainder_fp16_and_fixed_layouts_raise", lean_errors),
        ("layout_lion_lean_moments", lion_lean),
    ]
    run(cases)
