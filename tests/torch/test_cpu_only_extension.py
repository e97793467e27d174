"""test_cpu_only_extension.py - the extension built without a CUDA toolkit (FADAM_CPU_ONLY=1, as
setup.py does when it finds no nvcc; mk/torch_cpu_only.mk builds it): it links no CUDA library, and in
a fresh interpreter FusedAdamW steps CPU parameters with it as torch.optim.AdamW does."""

import glob
import os
import subprocess
import sys
import tempfile

from harness import run

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILT = glob.glob(os.path.join(ROOT, "build", "python-cpu-only", "lib", "fusedadam", "_C*.so"))

CHILD = r"""
import sys, torch
import fusedadam.torch as ft
assert ft._C.__file__.startswith(sys.argv[1]), ft._C.__file__
assert ft._C.cuda_device_count() == 0
values = [torch.randn(5, 3), torch.randn(7)]
ours = [torch.nn.Parameter(v.clone()) for v in values]
theirs = [torch.nn.Parameter(v.clone()) for v in values]
opt, ref = ft.FusedAdamW(ours, lr=1e-2, max_grad_norm=1.0), torch.optim.AdamW(theirs, lr=1e-2)
for _ in range(4):
    for p, q in zip(ours, theirs):
        q.grad = 3 * torch.randn_like(q)
        p.grad = q.grad.clone()
    torch.nn.utils.clip_grad_norm_(theirs, 1.0)
    opt.step()
    ref.step()
for p, q in zip(ours, theirs):
    torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-6)
print("stepped")
"""


def built():
    if not BUILT:
        raise AssertionError("build/python-cpu-only/lib/fusedadam/_C*.so is missing (make test builds it)")
    return BUILT[0]


def links_no_cuda():
    libraries = subprocess.run(["ldd", built()], capture_output=True, text=True).stdout
    cuda = [line.split()[0] for line in libraries.splitlines() if "cuda" in line or "nvrtc" in line]
    if cuda:
        raise AssertionError(f"the CPU-only extension links {cuda}")


def steps_in_fresh_interpreter():
    with tempfile.TemporaryDirectory() as tmp:
        package = os.path.join(tmp, "fusedadam")
        os.mkdir(package)
        for name in ("__init__.py", "torch.py"):
            os.symlink(os.path.join(ROOT, "python", "fusedadam", name), os.path.join(package, name))
        os.symlink(built(), os.path.join(package, os.path.basename(built())))
        result = subprocess.run([sys.executable, "-c", CHILD, package], capture_output=True, text=True,
                                env={**os.environ, "PYTHONPATH": tmp}, timeout=120)
        if result.returncode != 0 or "stepped" not in result.stdout:
            raise AssertionError(f"exit {result.returncode}: {(result.stdout + result.stderr)[-600:]}")


if __name__ == "__main__":
    run(
        [
            ("cpu_only_extension_links_no_cuda_library", links_no_cuda),
            ("cpu_only_extension_steps_like_torch_adamw", steps_in_fresh_interpreter),
        ]
    )
