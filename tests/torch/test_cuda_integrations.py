"""test_cuda_integrations.py - the GPU side of the integrations that test_scaling.py,
test_distributed.py and test_capture.py check on CPU (each case skips without a CUDA device):
GradScaler("cuda") with fp16 parameters against torch.optim.AdamW(fused=True), the skip decided on the
device with the step counts taken back at the next step, max_grad_norm with no host read of the norm,
and FSDP2 with one GPU (a 1-process NCCL group) against the unsharded model."""

import os
import socket

import torch

from fusedadam.torch import FusedAdamW
from harness import FP32_TOL, HALF_TOL, Skip, check_close, run


def need_cuda():
    if not torch.cuda.is_available():
        raise Skip("no CUDA device")


def grad_scaler_fp16_vs_torch_fused():
    need_cuda()
    values = [torch.randn(64, 32, device="cuda").half(), torch.randn(32, device="cuda").half()]
    ours = [torch.nn.Parameter(v.clone()) for v in values]
    theirs = [torch.nn.Parameter(v.clone()) for v in values]
    runs = []
    for params, opt in ((ours, FusedAdamW(ours, lr=1e-3, master_weights=False)),
                        (theirs, torch.optim.AdamW(theirs, lr=1e-3, fused=True))):
        scaler = torch.amp.GradScaler("cuda", init_scale=2.0**12, growth_interval=3)
        generator = torch.Generator(device="cuda").manual_seed(5)
        scales = []
        for step in range(10):
            opt.zero_grad(set_to_none=True)
            x = torch.randn(16, 64, device="cuda", generator=generator).half()
            loss = (x @ params[0] + params[1]).float().square().mean()
            scaler.scale(loss).backward()
            if step == 4:
                params[0].grad[0, 0] = float("inf")
            scaler.step(opt)
            scaler.update()
            scales.append(scaler.get_scale())
        runs.append(scales)
    if runs[0] != runs[1]:
        raise AssertionError(f"loss scales {runs[0]}, torch's {runs[1]}")
    for i, (p, q) in enumerate(zip(ours, theirs)):
        check_close(f"parameter {i}", p, q, **HALF_TOL)


def skipped_step_counts_taken_back():
    """found_inf set on the device: nothing changes, and the count the binding advanced is taken back
    at the next step (read then, not during the skipped one)."""
    need_cuda()
    p = torch.nn.Parameter(torch.randn(100, device="cuda"))
    opt = FusedAdamW([p], lr=1e-2)
    p.grad = torch.randn_like(p)
    opt.step()
    before = p.detach().clone()
    opt.grad_scale, opt.found_inf = torch.ones((), device="cuda"), torch.ones((), device="cuda")
    opt.step()
    del opt.grad_scale, opt.found_inf
    torch.cuda.synchronize()
    if not torch.equal(p, before):
        raise AssertionError("a step with found_inf=1 changed the parameter")
    opt.step()
    if float(opt.state[p]["step"]) != 2:
        raise AssertionError(f"step count {float(opt.state[p]['step'])}, expected 2 (one skipped)")


def max_grad_norm_matches_clip_grad_norm():
    need_cuda()
    values = [torch.randn(300, device="cuda"), torch.randn(20, 7, device="cuda")]
    ours = [torch.nn.Parameter(v.clone()) for v in values]
    theirs = [torch.nn.Parameter(v.clone()) for v in values]
    fused = FusedAdamW(ours, lr=1e-2, max_grad_norm=0.5)
    reference = torch.optim.AdamW(theirs, lr=1e-2, fused=True)
    for _ in range(5):
        for p, q in zip(ours, theirs):
            q.grad = 3 * torch.randn_like(q)
            p.grad = q.grad.clone()
        torch.nn.utils.clip_grad_norm_(theirs, 0.5)
        fused.step()
        reference.step()
    for i, (p, q) in enumerate(zip(ours, theirs)):
        check_close(f"parameter {i}", p, q, **FP32_TOL)


def fsdp2_one_gpu():
    need_cuda()
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("nccl", rank=0, world_size=1)
    try:
        torch.manual_seed(3)
        model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 5)).cuda()
        reference = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 5)).cuda()
        reference.load_state_dict(model.state_dict())
        for layer in model:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer)
        fully_shard(model)
        opt = FusedAdamW(model.parameters(), lr=1e-2, max_grad_norm=1.0)
        reference_opt = FusedAdamW(reference.parameters(), lr=1e-2, max_grad_norm=1.0)
        for _ in range(4):
            x = torch.randn(8, 16, device="cuda")
            for m, o in ((model, opt), (reference, reference_opt)):
                o.zero_grad()
                m(x).square().mean().backward()
                o.step()
        for (name, p), q in zip(model.named_parameters(), reference.parameters()):
            check_close(f"FSDP2 {name}", p.full_tensor(), q, **FP32_TOL)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    run(
        [
            ("cuda_grad_scaler_fp16_vs_torch_fused", grad_scaler_fp16_vs_torch_fused),
            ("cuda_found_inf_skip_counts_taken_back", skipped_step_counts_taken_back),
            ("cuda_max_grad_norm_matches_clip_grad_norm", max_grad_norm_matches_clip_grad_norm),
            ("cuda_fsdp2_one_gpu_matches_unsharded", fsdp2_one_gpu),
        ]
    )
