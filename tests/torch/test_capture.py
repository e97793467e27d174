"""test_capture.py - CUDA graphs: FusedAdamW is not capturable, and says so as torch does when a step
is captured (the check is exercised on CPU by making torch report a capture in progress); torch's
capturable=True checkpoints load (on CPU: a torch state dict with the flag set, as such a checkpoint
carries it) and the steps continue as torch's."""

from unittest import mock

import torch

from fusedadam.torch import FusedAdamW
from harness import FP32_TOL, check_close, check_equal, run


def capture_refused():
    params = [torch.nn.Parameter(torch.randn(5)), torch.nn.Parameter(torch.randn(3, 2))]
    opt = FusedAdamW(params, lr=1e-2)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    before = [p.detach().clone() for p in params]
    with mock.patch("torch.cuda.is_available", return_value=True), \
            mock.patch("torch.backends.cuda.is_built", return_value=True), \
            mock.patch("torch.cuda.is_current_stream_capturing", return_value=True):
        try:
            opt.step()
        except RuntimeError as error:
            if "capturable is False" not in str(error):
                raise AssertionError(f"message {error}")
        else:
            raise AssertionError("a step during a CUDA graph capture was not refused")
    for p, b in zip(params, before):
        check_equal("parameter after the refused step", p, b)
    if float(opt.state[params[0]]["step"]) != 1:
        raise AssertionError("the refused step advanced the step count")


def capturable_checkpoint_loads():
    values = [torch.randn(6), torch.randn(2, 3)]
    theirs = [torch.nn.Parameter(v.clone()) for v in values]
    reference = torch.optim.AdamW(theirs, lr=1e-2)
    for _ in range(3):
        for q in theirs:
            q.grad = torch.randn_like(q)
        reference.step()
    saved = reference.state_dict()
    for group in saved["param_groups"]:
        group["capturable"] = True
    ours = [torch.nn.Parameter(q.detach().clone()) for q in theirs]
    opt = FusedAdamW(ours, lr=0.5)
    opt.load_state_dict(saved)
    for step in range(3):
        for p, q in zip(ours, theirs):
            q.grad = torch.randn_like(q)
            p.grad = q.grad.clone()
        opt.step()
        reference.step()
        for i, (p, q) in enumerate(zip(ours, theirs)):
            check_close(f"step {step} parameter {i}", p, q, **FP32_TOL)


def capturable_true_refused():
    try:
        FusedAdamW([torch.nn.Parameter(torch.randn(3))], capturable=True)
    except ValueError as error:
        if "capturable" not in str(error):
            raise AssertionError(f"message {error}")
    else:
        raise AssertionError("capturable=True accepted")


def cuda_graph_capture_and_replay():
    from harness import Skip

    if not torch.cuda.is_available():
        raise Skip("no CUDA device")
    p = torch.nn.Parameter(torch.randn(16, device="cuda"))
    opt = FusedAdamW([p])
    p.grad = torch.randn_like(p)
    opt.step()
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            opt.step()
    except RuntimeError as error:
        if "capturable is False" not in str(error):
            raise
    else:
        raise AssertionError("capture of a non-capturable FusedAdamW was not refused")


if __name__ == "__main__":
    run(
        [
            ("cuda_graph_capture_refused_like_torch", capture_refused),
            ("torch_capturable_checkpoint_loads", capturable_checkpoint_loads),
            ("capturable_true_refused_at_construction", capturable_true_refused),
            ("cuda_graph_capture_refused_on_gpu", cuda_graph_capture_and_replay),
        ]
    )
