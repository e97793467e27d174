"""test_errors.py - what FusedAdamW refuses: each error is a Python exception with the library's (or
the binding's) message, raised before any parameter, state tensor or step count is modified."""

import torch

from fusedadam.torch import MAX_GROUPS, FusedAdam, FusedAdamW
from harness import run


def snapshot(optimizer):
    """Copies of every parameter and state tensor (meta tensors hold no values), and the state's keys."""
    params = [p.detach().clone() for g in optimizer.param_groups for p in g["params"] if not p.is_meta]
    state = {id(p): {k: v.clone() for k, v in s.items()} for p, s in optimizer.state.items()}
    return params, state


def expect_error(optimizer, error_class, phrase, before=None):
    """optimizer.step() raises error_class with `phrase` in its message and changes nothing."""
    before = before or snapshot(optimizer)
    try:
        optimizer.step()
    except error_class as error:
        if phrase not in str(error):
            raise AssertionError(f"message {str(error)!r} lacks {phrase!r}")
    else:
        raise AssertionError(f"no {error_class.__name__} raised")
    params, state = snapshot(optimizer)
    for index, (a, b) in enumerate(zip(before[0], params)):
        if not torch.equal(a, b):
            raise AssertionError(f"parameter {index} was modified by the failed step")
    if set(state) != set(before[1]):
        raise AssertionError("the failed step created or dropped state")
    for key, values in state.items():
        for name, value in values.items():
            if not torch.equal(value, before[1][key][name]):
                raise AssertionError(f"state[{name!r}] was modified by the failed step")


def stepped_optimizer(extra=(), **kwargs):
    """An optimizer that has taken one step over good parameters, then gets `extra` ones."""
    params = [torch.nn.Parameter(torch.randn(n)) for n in (5, 33)]
    opt = FusedAdamW(params, **kwargs)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    for p in params:
        p.grad = torch.randn_like(p)
    if extra:
        opt.add_param_group({"params": list(extra)})
    return opt


def sparse_gradient():
    embedding = torch.nn.Embedding(10, 4, sparse=True)
    opt = stepped_optimizer([embedding.weight])
    embedding(torch.tensor([1, 2, 2])).sum().backward()
    expect_error(opt, RuntimeError, "sparse gradients")


def unsupported_dtype():
    p = torch.nn.Parameter(torch.randn(3, dtype=torch.complex64))
    p.grad = torch.randn_like(p)
    expect_error(stepped_optimizer([p]), TypeError, "complex64")


def unsupported_device():
    p = torch.nn.Parameter(torch.empty(3, device="meta"))
    p.grad = torch.empty(3, device="meta")
    expect_error(stepped_optimizer([p]), RuntimeError, "CPU and CUDA")


def tensor_with_overlaps():
    """Elements sharing memory (an expanded tensor) cannot be updated one by one (tensors with gaps
    are stepped: test_dtypes_layouts.py)."""
    p = torch.nn.Parameter(torch.randn(4, 1).expand(4, 3))
    p.grad = torch.randn(4, 3)
    expect_error(stepped_optimizer([p]), RuntimeError, "overlap")


def overlapping_parameters():
    """Two parameters viewing one buffer: the library's overlap check names them."""
    base = torch.randn(10)
    p, q = torch.nn.Parameter(base[:6]), torch.nn.Parameter(base[4:])
    p.grad, q.grad = torch.randn(6), torch.randn(6)
    expect_error(stepped_optimizer([p, q]), RuntimeError, "overlaps")
    # fadam_last_error_tensor names the later of the two; the binding says which parameter it is.
    expect_error(stepped_optimizer([p, q]), RuntimeError, "is a parameter of group 1 (shape [6]")


def negative_lr():
    opt = stepped_optimizer()
    opt.param_groups[0]["lr"] = -1.0  # a scheduler gone wrong: the library's check names it
    expect_error(opt, ValueError, "lr=-1")


def nan_lr():
    opt = stepped_optimizer()
    opt.param_groups[0]["lr"] = float("nan")
    expect_error(opt, ValueError, "must be finite")


def bad_beta():
    opt = stepped_optimizer()
    opt.param_groups[0]["betas"] = (1.0, 0.999)
    expect_error(opt, ValueError, "beta1=1")


def corrupted_state():
    opt = stepped_optimizer()
    first = opt.param_groups[0]["params"][0]
    opt.state[first]["exp_avg"] = torch.zeros(4)
    expect_error(opt, RuntimeError, "exp_avg")


def wrong_grad_shape():
    opt = stepped_optimizer()
    # Bypass the check of the .grad setter, as a buggy custom autograd function might.
    opt.param_groups[0]["params"][1].grad.data = torch.randn(2)
    expect_error(opt, RuntimeError, "shape")


def unsupported_options():
    params = [torch.nn.Parameter(torch.randn(3))]
    for option in ("amsgrad", "differentiable"):  # capturable=True is supported: test_capture.py
        try:
            FusedAdamW(params, **{option: True})
        except ValueError as error:
            if option not in str(error):
                raise AssertionError(f"message {error} does not name {option}")
        else:
            raise AssertionError(f"{option}=True accepted")
    # The C library's checks (fadam_hparams_validate) and message, naming the value.
    for cls in (FusedAdamW, FusedAdam):
        for bad, phrase in (({"lr": -1.0}, "lr=-1"), ({"lr": float("inf")}, "lr=inf"), ({"betas": (0.9, 1.0)}, "beta2=1"),
                            ({"betas": (-0.1, 0.9)}, "beta1=-0.1"), ({"eps": -1e-8}, "eps=-1e-08"),
                            ({"weight_decay": -0.1}, "weight_decay=-0.1")):
            try:
                cls(params, **bad)
            except ValueError as error:
                if phrase not in str(error):
                    raise AssertionError(f"{cls.__name__}({bad}): message {error} lacks {phrase!r}")
                continue
            raise AssertionError(f"{cls.__name__}({bad}) accepted")


def too_many_groups():
    groups = [{"params": [torch.nn.Parameter(torch.randn(2))]} for _ in range(MAX_GROUPS + 1)]
    try:
        FusedAdamW(groups)
    except ValueError as error:
        if str(MAX_GROUPS) not in str(error):
            raise AssertionError(f"message {error} does not give the limit")
    else:
        raise AssertionError(f"{MAX_GROUPS + 1} groups accepted")
    FusedAdamW(groups[:MAX_GROUPS])  # the limit itself is fine


if __name__ == "__main__":
    run(
        [
            ("error_sparse_gradient", sparse_gradient),
            ("error_unsupported_dtype", unsupported_dtype),
            ("error_unsupported_device", unsupported_device),
            ("error_tensor_with_overlaps", tensor_with_overlaps),
            ("error_overlapping_parameters", overlapping_parameters),
            ("error_negative_lr", negative_lr),
            ("error_nan_lr", nan_lr),
            ("error_bad_beta", bad_beta),
            ("error_corrupted_state", corrupted_state),
            ("error_wrong_grad_shape", wrong_grad_shape),
            ("error_unsupported_options", unsupported_options),
            ("error_too_many_groups", too_many_groups),
        ]
    )
