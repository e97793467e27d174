"""harness.py - what the PyTorch binding's tests share: the ok/FAIL/skip protocol of tests/run_tests.sh,
the seed, and comparisons with the tolerances of NUMERICS.md."""

import io
import os
import sys
import time
import traceback

import torch

# Against PyTorch, per NUMERICS.md: fp32 parameters atol 1e-5 / rtol 1e-6 per step; a bf16/fp16
# parameter kept by an fp32 master rtol = atol = 5e-3.
FP32_TOL = {"atol": 1e-5, "rtol": 1e-6}
HALF_TOL = {"atol": 5e-3, "rtol": 5e-3}
# The moments: fadam_hparams carries beta2 as a float, and 1 - float(0.999) differs from PyTorch's
# 1 - 0.999 (double) by 1.3e-5 relative, which exp_avg_sq inherits. atol covers an exp_avg that
# cancels to near zero: torch computes it as a lerp, rounded differently, and the tests' gradients
# are N(0, 1), so the terms summed are O(1) with ulps up to 5e-7.
MOMENT_TOL = {"atol": 1e-6, "rtol": 1e-4}


class Skip(Exception):
    """Raised by a case that cannot run here; reported as 'skip NAME: why'."""


def check_close(what, actual, expected, atol, rtol):
    """Raises AssertionError naming `what` and the worst element; NaN never passes."""
    actual = actual.detach().double().cpu()
    expected = expected.detach().double().cpu()
    if actual.shape != expected.shape:
        raise AssertionError(f"{what}: shape {tuple(actual.shape)}, expected {tuple(expected.shape)}")
    if actual.numel() == 0:
        return
    error = (actual - expected).abs()
    bound = atol + rtol * expected.abs()
    bad = ~(error <= bound)  # NaN compares false: it fails
    if bad.any():
        index = int(torch.nonzero(bad.flatten())[0])
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {actual.numel()} elements off, e.g. [{index}] "
            f"{actual.flatten()[index].item():.9g} vs {expected.flatten()[index].item():.9g} "
            f"(atol {atol}, rtol {rtol})"
        )


def check_equal(what, actual, expected):
    if not torch.equal(actual.detach().cpu(), expected.detach().cpu()):
        diff = (actual.detach().double().cpu() - expected.detach().double().cpu()).abs().max().item()
        raise AssertionError(f"{what}: not bitwise equal (largest difference {diff:.3g})")


def param_of_master(master, dtype):
    """The 16-bit param fusedadam writes from an fp32 master: bf16 rounded to nearest with ties away from
    zero (docs/NUMERICS.md: the remainder layout's rule, so both layouts agree bit for bit), fp16 to even."""
    if dtype != torch.bfloat16:
        return master.to(dtype)
    bits = master.contiguous().view(torch.int32)
    away = ((bits + 0x8000) >> 16).to(torch.int16).view(torch.bfloat16).reshape(master.shape)
    return torch.where(torch.isnan(master), master.to(dtype), away)


def through_file(state_dict):
    """A state_dict as a checkpoint gives it back: through torch.save and torch.load, in memory."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer)


def expect_raises(kind, text, function):
    """Calls function(); raises AssertionError unless it raises `kind` with `text` in its message."""
    try:
        function()
    except kind as error:
        if text not in str(error):
            raise AssertionError(f"{kind.__name__} without {text!r}: {error}")
        return
    raise AssertionError(f"no {kind.__name__} ({text!r})")


def run(cases):
    """Runs (name, function) pairs; each gets torch.manual_seed(seed) first. Exits 0, or 1 after a FAIL line."""
    seed = int(os.environ.get("FADAM_TEST_SEED", int(time.time() * 1000) % 1_000_000))
    print(f"# {os.path.basename(sys.argv[0])}: seed {seed} (FADAM_TEST_SEED={seed} repeats it), torch {torch.__version__}")
    failed = 0
    for name, function in cases:
        torch.manual_seed(seed)
        try:
            function()
            print(f"ok {name}")
        except Skip as why:
            print(f"skip {name}: {why}")
        except Exception as error:  # noqa: BLE001 - every failure is reported, the run goes on
            failed += 1
            message = " ".join(str(error).split()) or type(error).__name__
            print(f"FAIL {name}: {type(error).__name__}: {message[:400]}")
            traceback.print_exc(file=sys.stdout)
        sys.stdout.flush()
    sys.exit(1 if failed else 0)


def random_shapes(generator_count):
    """Shapes a model has, and ones it rarely has: a scalar, an empty tensor, odd sizes."""
    shapes = [(), (0,), (1,), (3, 0, 2)]
    for _ in range(generator_count):
        dims = int(torch.randint(1, 4, ()))
        shapes.append(tuple(int(torch.randint(1, 40, ())) for _ in range(dims)))
    return shapes
