"""test_cpu_parity.py - FusedAdamW on CPU tensors (the library's CPU implementation) against
torch.optim.AdamW, and against torch.optim.Adam in the L2 mode: several steps, random shapes, param
groups with their own lr/betas/eps/weight decay, a scheduler, gradients left None, fp32/bf16/fp16."""

import math

import torch

from fusedadam.torch import FusedAdam, FusedAdamW
from harness import FP32_TOL, check_close, run
from parity import run_parity

GROUPS = [
    {"lr": 1e-2, "weight_decay": 0.1},
    {"lr": 3e-3, "weight_decay": 0.0, "betas": (0.8, 0.99)},
    {"lr": 1e-3, "weight_decay": 0.05, "eps": 1e-6, "maximize": True},
]


def cosine(optimizer):
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=8, eta_min=1e-4)


def inverse(optimizer):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))


def adamw_fp32():
    run_parity(GROUPS, scheduler=cosine, added_group={"lr": 5e-3, "weight_decay": 0.2})


def adamw_defaults():
    run_parity([{}], skip_probability=0.0)


def adam_l2_fp32():
    run_parity(
        GROUPS,
        reference_class=torch.optim.Adam,
        fused_kwargs={"decoupled_weight_decay": False},
        scheduler=inverse,
    )


def fused_adam_class():
    run_parity([{}, {"weight_decay": 0.01}], reference_class=torch.optim.Adam, fused_class=FusedAdam)


def bf16_master():
    run_parity(GROUPS, dtype=torch.bfloat16, scheduler=cosine)


def fp16_master():
    run_parity(GROUPS, dtype=torch.float16, scheduler=inverse)


def bf16_no_master():
    run_parity(GROUPS, dtype=torch.bfloat16, fused_kwargs={"master_weights": False}, round_reference=True)


def fp16_no_master_adam_l2():
    run_parity(
        GROUPS,
        dtype=torch.float16,
        reference_class=torch.optim.Adam,
        fused_kwargs={"master_weights": False, "decoupled_weight_decay": False},
        round_reference=True,
    )


def dense_layouts():
    """Transposed and channels_last parameters: dense, not contiguous (the test's gradients are
    contiguous: the binding steps them from a copy laid out like the parameter)."""

    def make():
        return [
            torch.nn.Parameter(torch.randn(7, 5).t()),
            torch.nn.Parameter(torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last)),
            torch.nn.Parameter(torch.randn(6, 1, 9)),
        ]

    fused, _ = run_parity([{"weight_decay": 0.1}], make_params=make)
    for p in fused.param_groups[0]["params"]:
        if fused.state[p]["exp_avg"].stride() != p.stride():
            raise AssertionError(f"exp_avg strides {fused.state[p]['exp_avg'].stride()}, parameter {p.stride()}")


def no_bias_correction():
    """bias_correction=False against a float64 oracle of the textbook update."""
    lr, beta1, beta2, eps, wd = 1e-2, 0.9, 0.99, 1e-8, 0.1
    for decoupled in (True, False):
        p = torch.nn.Parameter(torch.randn(257))
        oracle = p.detach().double().clone()
        m = torch.zeros_like(oracle)
        v = torch.zeros_like(oracle)
        opt = FusedAdamW([p], lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=wd, bias_correction=False,
                         decoupled_weight_decay=decoupled)
        for step in range(5):
            p.grad = torch.randn(257)
            g = p.grad.double()
            if decoupled:
                oracle = oracle * (1 - lr * wd)
            else:
                g = g + wd * oracle
            m = beta1 * m + (1 - beta1) * g
            v = beta2 * v + (1 - beta2) * g * g
            oracle = oracle - lr * m / (v.sqrt() + eps)
            opt.step()
            check_close(f"decoupled={decoupled} step {step}", p, oracle, **FP32_TOL)


def one_call_per_step_count():
    """All parameters at one step count: one CPU call; a parameter that skipped a step adds one."""
    params = [torch.nn.Parameter(torch.randn(n)) for n in (3, 300, 17)]
    opt = FusedAdamW(params)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    opt.step()
    if opt._tables.cpu_calls != 2:
        raise AssertionError(f"{opt._tables.cpu_calls} CPU calls for two steps")
    params[1].grad = None
    opt.step()
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    steps = [float(opt.state[p]["step"]) for p in params]
    if steps != [4.0, 3.0, 4.0] or opt._tables.cpu_calls != 5:
        raise AssertionError(f"steps {steps}, {opt._tables.cpu_calls} CPU calls (expected [4, 3, 4] and 5)")


def closure_and_hooks():
    """step(closure) returns the loss; torch's step hooks run; schedulers see the step as taken."""
    model = torch.nn.Linear(4, 3)
    opt = FusedAdamW(model.parameters(), lr=1e-2)
    seen = []
    opt.register_step_post_hook(lambda optimizer, args, kwargs: seen.append("post"))
    x = torch.randn(8, 4)

    def closure():
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        return loss

    losses = [opt.step(closure).item() for _ in range(20)]
    if seen != ["post"] * 20:
        raise AssertionError(f"post hooks ran {len(seen)} times")
    if not (math.isfinite(losses[-1]) and losses[-1] < losses[0]):
        raise AssertionError(f"loss went from {losses[0]} to {losses[-1]}")


if __name__ == "__main__":
    run(
        [
            ("cpu_adamw_fp32_groups_scheduler_none_grads", adamw_fp32),
            ("cpu_adamw_defaults", adamw_defaults),
            ("cpu_adam_l2_fp32_vs_torch_adam", adam_l2_fp32),
            ("cpu_fused_adam_class_vs_torch_adam", fused_adam_class),
            ("cpu_bf16_master", bf16_master),
            ("cpu_fp16_master", fp16_master),
            ("cpu_bf16_no_master", bf16_no_master),
            ("cpu_fp16_no_master_adam_l2", fp16_no_master_adam_l2),
            ("cpu_dense_non_contiguous_layouts", dense_layouts),
            ("cpu_no_bias_correction_vs_float64", no_bias_correction),
            ("cpu_one_call_per_step_count", one_call_per_step_count),
            ("cpu_closure_and_hooks", closure_and_hooks),
        ]
    )
