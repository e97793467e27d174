"""test_capture.py - CUDA graphs. capturable=True keeps the step counts and lr in tensors on the
parameters' device, read by the update when it runs: on CPU tensors (where torch itself has no
capturable mode) it steps as torch.optim.AdamW does, with a scheduler changing a tensor lr. Without
it, a captured step is refused as torch refuses it (the check exercised on CPU by making torch report a
capture in progress). torch's capturable=True checkpoints load. On a GPU: capture + replay against
eager steps for 20 steps with a changing lr (skipped without one)."""

from unittest import mock

import torch

from fusedadam.torch import FusedAdamW
from harness import FP32_TOL, Skip, check_close, check_equal, run


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


def capturable_cpu_matches_torch():
    """capturable=True on CPU tensors, lr a tensor that a scheduler changes in place, 10 steps."""
    values = [torch.randn(6, 5), torch.randn(7), torch.randn(3, 2).to(torch.bfloat16)]
    ours = [torch.nn.Parameter(v.clone()) for v in values]
    theirs = [torch.nn.Parameter(v.float().clone()) for v in values]
    opt = FusedAdamW(ours, lr=torch.tensor(1e-2), weight_decay=0.1, capturable=True)
    reference = torch.optim.AdamW(theirs, lr=1e-2, weight_decay=0.1)
    schedulers = [torch.optim.lr_scheduler.LambdaLR(o, lambda step: 1.0 / (1 + step)) for o in (opt, reference)]
    lr_tensor = opt.param_groups[0]["lr"]
    for step in range(10):
        for p, q in zip(ours, theirs):
            q.grad = torch.randn_like(q)
            p.grad = q.grad.to(p.dtype)
            q.grad = p.grad.float()
        opt.step()
        reference.step()
        for s in schedulers:
            s.step()
        for i, (p, q) in enumerate(zip(ours, theirs)):
            tol = FP32_TOL if p.dtype == torch.float32 else {"atol": 5e-3, "rtol": 5e-3}
            check_close(f"step {step} parameter {i}", p, q, **tol)
            if p.dtype == torch.bfloat16:  # round the reference as the parameter is rounded
                with torch.no_grad():
                    q.copy_(p.float())
    if opt.param_groups[0]["lr"] is not lr_tensor:
        raise AssertionError("the scheduler replaced the lr tensor")
    if float(opt.state[ours[0]]["step"]) != 10 or float(opt._capturable_t) != 10:
        raise AssertionError(f"step counts {float(opt.state[ours[0]]['step'])}, {float(opt._capturable_t)}")


def capturable_found_inf_on_device():
    """capturable with GradScaler's tensors: a skipped step advances neither the counter nor the counts."""
    p = torch.nn.Parameter(torch.randn(8))
    opt = FusedAdamW([p], lr=1e-2, capturable=True)
    for step, flag in enumerate((0.0, 0.0, 0.0)):
        p.grad = torch.randn_like(p)
        opt.step()
    before = p.detach().clone()
    p.grad = torch.randn_like(p)
    opt.grad_scale, opt.found_inf = torch.tensor(2.0), torch.tensor(1.0)
    opt.step()
    del opt.grad_scale, opt.found_inf
    check_equal("parameter after a skipped step", p, before)
    if float(opt.state[p]["step"]) != 3 or int(opt._capturable_t) != 3:
        raise AssertionError(f"counts after a skipped step: {float(opt.state[p]['step'])}, {int(opt._capturable_t)}")


def capturable_needs_one_step_count():
    """Parameters stepped apart (one had no gradient) cannot share capturable's one counter: refused."""
    a, b = torch.nn.Parameter(torch.randn(4)), torch.nn.Parameter(torch.randn(4))
    plain = FusedAdamW([a, b], lr=1e-2)
    a.grad = torch.randn_like(a)
    plain.step()
    b.grad = torch.randn_like(b)
    opt = FusedAdamW([a, b], lr=1e-2, capturable=True)
    opt.load_state_dict(plain.state_dict())
    try:
        opt.step()
    except ValueError as error:
        if "one step count" not in str(error):
            raise AssertionError(f"message {error}")
    else:
        raise AssertionError("differing step counts accepted with capturable=True")


def cuda_graph_capture_refused_on_gpu():
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


def cuda_graph_replay_matches_eager():
    """capturable=True on a GPU: one step captured and replayed 20 times, the lr changed in place
    between replays, against the same steps taken eagerly (fp32 and a bf16 parameter with a master)."""
    if not torch.cuda.is_available():
        raise Skip("no CUDA device")
    values = [torch.randn(1000, device="cuda"), torch.randn(33, 7, device="cuda").to(torch.bfloat16)]
    graphed = [torch.nn.Parameter(v.clone()) for v in values]
    eager = [torch.nn.Parameter(v.clone()) for v in values]
    graph_lr, eager_lr = torch.tensor(1e-2, device="cuda"), torch.tensor(1e-2, device="cuda")
    graph_opt = FusedAdamW(graphed, lr=graph_lr, weight_decay=0.1, capturable=True)
    eager_opt = FusedAdamW(eager, lr=eager_lr, weight_decay=0.1, capturable=True)
    grads = [[torch.randn_like(v) for v in values] for _ in range(21)]
    for p, g in zip(graphed, grads[0]):
        p.grad = g.clone()  # static gradient buffers the graph reads
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        graph_opt.step()  # warm-up: state, caches and the counter made outside the capture
    torch.cuda.current_stream().wait_stream(side)
    for p, g in zip(eager, grads[0]):
        p.grad = g.clone()
    eager_opt.step()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        graph_opt.step()
    for step in range(1, 21):
        lr = 1e-2 / (1 + step)
        graph_lr.fill_(lr)
        eager_lr.fill_(lr)
        for p, q, g in zip(graphed, eager, grads[step]):
            p.grad.copy_(g)
            q.grad = g.clone()
        graph.replay()
        eager_opt.step()
    torch.cuda.synchronize()
    for i, (p, q) in enumerate(zip(graphed, eager)):
        check_equal(f"parameter {i} after 20 replays", p, q)
    if float(graph_opt.state[graphed[0]]["step"]) != 21:
        raise AssertionError(f"step count {float(graph_opt.state[graphed[0]]['step'])} after 21 steps")


if __name__ == "__main__":
    run(
        [
            ("cuda_graph_capture_refused_like_torch", capture_refused),
            ("torch_capturable_checkpoint_loads", capturable_checkpoint_loads),
            ("capturable_cpu_tensor_lr_scheduler_matches_torch", capturable_cpu_matches_torch),
            ("capturable_found_inf_skips_on_device", capturable_found_inf_on_device),
            ("capturable_refuses_differing_step_counts", capturable_needs_one_step_count),
            ("cuda_graph_capture_refused_on_gpu", cuda_graph_capture_refused_on_gpu),
            ("cuda_graph_capture_replay_matches_eager_20_steps", cuda_graph_replay_matches_eager),
        ]
    )
