"""test_cpu_threads.py - FusedAdamW on CPU tensors steps on as many threads as torch.get_num_threads()
says at each step (torch.set_num_threads changes it between steps), with the same bits at every count."""

import torch

from fusedadam.torch import FusedAdamW
from harness import check_equal, run

# Enough elements (over 64K in all) that the library splits the step over its threads.
SHAPES = [(300, 257), (70001,), (5,), (0,), (33, 7)]


def model(dtype):
    values = [torch.randn(shape).to(dtype) for shape in SHAPES]
    grads = [[torch.randn(shape).to(dtype) for shape in SHAPES] for _ in range(3)]
    return values, grads


def steps_at(threads, values, grads, dtype):
    """Three steps with `threads` torch threads; the params and the count the binding used."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        params = [torch.nn.Parameter(v.clone()) for v in values]
        opt = FusedAdamW(params, lr=1e-2, weight_decay=0.1)
        for step_grads in grads:
            for p, g in zip(params, step_grads):
                p.grad = g.clone()
            opt.step()
        return [p.detach().clone() for p in params], opt._tables.cpu_threads
    finally:
        torch.set_num_threads(previous)


def follows_torch_threads_same_bits():
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        values, grads = model(dtype)
        want, used = steps_at(1, values, grads, dtype)
        if used != 1:
            raise AssertionError(f"torch.set_num_threads(1): the binding used {used} threads")
        for threads in (2, 3):
            got, used = steps_at(threads, values, grads, dtype)
            if used != threads:
                raise AssertionError(f"torch.set_num_threads({threads}): the binding used {used} threads")
            for index, (a, b) in enumerate(zip(got, want)):
                check_equal(f"{dtype}, {threads} threads, parameter {index}", a, b)


def count_changes_between_steps():
    params = [torch.nn.Parameter(torch.randn(70000))]
    opt = FusedAdamW(params)
    previous = torch.get_num_threads()
    try:
        for threads in (2, 1, 3):
            torch.set_num_threads(threads)
            params[0].grad = torch.randn(70000)
            opt.step()
            if opt._tables.cpu_threads != threads:
                raise AssertionError(f"after set_num_threads({threads}): {opt._tables.cpu_threads} threads")
    finally:
        torch.set_num_threads(previous)


if __name__ == "__main__":
    run(
        [
            ("cpu_threads_follow_torch_same_bits", follows_torch_threads_same_bits),
            ("cpu_threads_count_changes_between_steps", count_changes_between_steps),
        ]
    )
