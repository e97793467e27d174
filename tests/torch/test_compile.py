"""test_compile.py - torch.compile(model) with FusedAdamW stepping the compiled model's parameters
(the optimizer step itself runs eagerly), on CPU with the aot_eager backend (no C++ compiler needed,
seconds to compile): the same as torch.optim.AdamW on the same compiled model."""

import torch

from fusedadam.torch import FusedAdamW
from harness import FP32_TOL, check_close, run


def compiled_model_trains_like_torch():
    torch._dynamo.reset()
    reference_model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.GELU(), torch.nn.Linear(16, 3))
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.GELU(), torch.nn.Linear(16, 3))
    model.load_state_dict(reference_model.state_dict())
    compiled = torch.compile(model, backend="aot_eager")
    compiled_reference = torch.compile(reference_model, backend="aot_eager")
    opt = FusedAdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    reference = torch.optim.AdamW(reference_model.parameters(), lr=1e-2, weight_decay=0.1)
    for step in range(5):
        x, y = torch.randn(8, 6), torch.randn(8, 3)
        for m, o in ((compiled, opt), (compiled_reference, reference)):
            o.zero_grad()
            torch.nn.functional.mse_loss(m(x), y).backward()
            o.step()
        for (name, p), q in zip(model.named_parameters(), reference_model.parameters()):
            check_close(f"step {step} {name}", p, q, **FP32_TOL)


if __name__ == "__main__":
    run([("torch_compile_model_aot_eager_cpu", compiled_model_trains_like_torch)])
