"""test_distributed.py - FusedAdamW in multi-process training on the CPU: 2 processes over gloo
(127.0.0.1, a free port), a small transformer trained the same way

  - sharded by FSDP2 (fully_shard per block: parameters, gradients and optimizer state are DTensors),
  - replicated by DDP,
  - in one unsharded process (the reference, run by rank 0 alongside),

and torch.distributed.checkpoint (DCP): a checkpoint saved by the 2 ranks is loaded by 1 process, for
FusedAdamW and for torch.optim.AdamW, in both directions between them. The two workers do the
training and the saves once (one spawn, a few seconds); each case below checks its part."""

import json
import os
import socket
import sys
import tempfile
import time
import warnings
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from fusedadam.torch import FusedAdamW
from harness import FP32_TOL, MOMENT_TOL, Skip, check_close, check_equal, param_of_master, run

WORLD = 2
VOCAB, WIDTH, HEADS, SEQ, BATCH = 11, 12, 2, 6, 4  # odd sizes: FSDP2's shards of dim 0 are uneven
STEPS = 6
MAX_NORM = 0.3  # below the gradients' norm: every step is clipped
OPTIONS = {"lr": 1e-2, "weight_decay": 0.1, "betas": (0.9, 0.95)}
# Sharded training reduces the gradients in another order than one process does (the loss of each
# rank's half batch, averaged by the reduce-scatter): the gradients differ in their last bits, which
# Adam's normalised update can grow, so the parameters are compared with the per-step tolerance of
# NUMERICS.md times the steps taken.
TRAINED_TOL = {"atol": FP32_TOL["atol"] * STEPS, "rtol": 1e-4}
# bf16 gradients reduced in another order differ by bf16 ulps (2^-8 relative), which Adam's normalised
# update can turn into lr-sized steps on the odd element whose gradient nearly cancels: bf16 runs are
# compared over the whole model in the L2 norm, relative (a norm's bias, from 0, alone can be 1.5% off).
BF16_TRAINED_RTOL = 1e-2  # seen: 1.4e-3 to 2.2e-3; a shard left unstepped: ~30%


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.norm1 = torch.nn.LayerNorm(WIDTH)
        # No projection biases: the key's has a gradient of exactly zero (softmax ignores a shift), so
        # its computed gradient is rounding noise, which Adam's normalised update makes O(lr).
        self.attn = torch.nn.MultiheadAttention(WIDTH, HEADS, batch_first=True, bias=False)
        self.norm2 = torch.nn.LayerNorm(WIDTH)
        self.fc1 = torch.nn.Linear(WIDTH, 3 * WIDTH)
        self.fc2 = torch.nn.Linear(3 * WIDTH, WIDTH)

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class TinyGPT(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, WIDTH)
        self.blocks = torch.nn.ModuleList([Block(), Block()])
        self.norm = torch.nn.LayerNorm(WIDTH)
        self.head = torch.nn.Linear(WIDTH, VOCAB)

    def forward(self, tokens):
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def make_model(seed):
    torch.manual_seed(seed)
    return TinyGPT()


def make_batches(seed):
    generator = torch.Generator().manual_seed(seed + 1)
    return [torch.randint(0, VOCAB, (BATCH, SEQ + 1), generator=generator) for _ in range(STEPS)]


def loss_of(model, tokens):
    logits = model(tokens[:, :-1])
    return F.cross_entropy(logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))


def train(model, optimizer, batches, rows=slice(None), clip=None):
    for tokens in batches:
        optimizer.zero_grad(set_to_none=True)
        loss_of(model, tokens[rows]).backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)  # on DTensors under FSDP2
        optimizer.step()


def full(tensor):
    """The whole tensor of a DTensor (a collective: every rank calls it), else the tensor."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def compare_models(what, model, reference, tol):
    """Errors (strings) comparing every parameter of model (full tensors: every rank calls this) with
    reference's (None on the ranks that compare nothing)."""
    errors = []
    gathered = [(name.removeprefix("module."), full(param.detach())) for name, param in model.named_parameters()]
    if reference is None:
        return errors
    expected = dict(reference.named_parameters())
    for name, value in gathered:
        try:
            check_close(f"{what}: {name}", value, expected[name], **tol)
        except AssertionError as error:
            errors.append(str(error))
    return errors


def worker(rank, seed, port, out_dir):
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor
    from torch.nn.parallel import DistributedDataParallel
    import torch.distributed.checkpoint as dcp

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60))
    torch.set_num_threads(1)
    results = {}
    batches = make_batches(seed)
    rows = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)

    # The reference: one unsharded process over the whole batch (rank 0 only).
    if rank == 0:
        reference = make_model(seed)
        reference_opt = FusedAdamW(reference.parameters(), **OPTIONS)
        train(reference, reference_opt, batches)
        torch.save({"model": reference.state_dict(), "optim": reference_opt.state_dict()},
                   os.path.join(out_dir, "reference.pt"))
        torch_reference = make_model(seed)
        torch_reference_opt = torch.optim.AdamW(torch_reference.parameters(), **OPTIONS)
        train(torch_reference, torch_reference_opt, batches)
        torch.save({"model": torch_reference.state_dict(), "optim": torch_reference_opt.state_dict()},
                   os.path.join(out_dir, "torch_reference.pt"))
        clipped_reference = make_model(seed)
        train(clipped_reference, FusedAdamW(clipped_reference.parameters(), **OPTIONS), batches, clip=MAX_NORM)

    # FSDP2: fully_shard per block, then the root.
    model = make_model(seed)
    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)
    opt = FusedAdamW(model.parameters(), **OPTIONS)
    train(model, opt, batches, rows)
    errors = compare_models("FSDP2", model, reference if rank == 0 else None, TRAINED_TOL)
    for param in model.parameters():  # the state: DTensors sharded as their parameter
        for key in ("exp_avg", "exp_avg_sq"):
            value = opt.state[param][key]
            if not isinstance(value, DTensor) or value.placements != param.placements:
                errors.append(f"FSDP2: state['{key}'] is {type(value).__name__} "
                              f"{getattr(value, 'placements', '')}, the parameter {param.placements}")
    results["fsdp2"] = errors
    # The state of every parameter, gathered, against the reference's.
    state_errors = []
    for param, ref_param in zip(model.parameters(), reference.parameters() if rank == 0 else model.parameters()):
        for key in ("exp_avg", "exp_avg_sq"):
            value = full(opt.state[param][key])
            if rank == 0:
                try:
                    check_close(f"FSDP2 state['{key}']", value, reference_opt.state[ref_param][key],
                                atol=TRAINED_TOL["atol"], rtol=MOMENT_TOL["rtol"])
                except AssertionError as error:
                    state_errors.append(str(error))
    results["fsdp2_state"] = state_errors
    dcp.save({"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)},
             checkpoint_id=os.path.join(out_dir, "fused_fsdp2"))

    # torch.optim.AdamW under FSDP2, saved for FusedAdamW to load.
    torch_model = make_model(seed)
    for block in torch_model.blocks:
        fully_shard(block)
    fully_shard(torch_model)
    torch_opt = torch.optim.AdamW(torch_model.parameters(), **OPTIONS)
    train(torch_model, torch_opt, batches, rows)
    dcp.save({"model": get_model_state_dict(torch_model), "optim": get_optimizer_state_dict(torch_model, torch_opt)},
             checkpoint_id=os.path.join(out_dir, "torch_fsdp2"))

    # Clipping across ranks: inside the step (max_grad_norm: one all-reduce of one number per step),
    # and outside with clip_grad_norm_ on the DTensor gradients.
    for name, clip, max_grad_norm in (("fsdp2_max_grad_norm", None, MAX_NORM),
                                      ("fsdp2_clip_grad_norm_", MAX_NORM, None)):
        clipped = make_model(seed)
        for block in clipped.blocks:
            fully_shard(block)
        fully_shard(clipped)
        clipped_opt = FusedAdamW(clipped.parameters(), max_grad_norm=max_grad_norm, **OPTIONS)
        reductions, counted = [], None
        all_reduce = dist.all_reduce

        def counting_all_reduce(tensor, *args, **kwargs):
            reductions.append(tensor.numel())
            return all_reduce(tensor, *args, **kwargs)

        dist.all_reduce = counting_all_reduce
        try:
            for tokens in batches:
                clipped_opt.zero_grad(set_to_none=True)
                loss_of(clipped, tokens[rows]).backward()
                if clip is not None:
                    torch.nn.utils.clip_grad_norm_(clipped.parameters(), clip)
                before = len(reductions)
                clipped_opt.step()
                if max_grad_norm is not None and reductions[before:] != [1]:
                    counted = f"{name}: the step all-reduced {reductions[before:]} elements, not [1]"
        finally:
            dist.all_reduce = all_reduce
        results[name] = compare_models(name, clipped, clipped_reference if rank == 0 else None, TRAINED_TOL)
        if counted:
            results[name].append(counted)

    # bf16 parameters under FSDP2: the fp32 masters are DTensors sharded as their parameters. The
    # reduce-scatter sums bf16 gradients in another order than one process: the comparison is loose.
    bf16_model = make_model(seed).to(torch.bfloat16)
    for block in bf16_model.blocks:
        fully_shard(block)
    fully_shard(bf16_model)
    bf16_opt = FusedAdamW(bf16_model.parameters(), **OPTIONS)
    train(bf16_model, bf16_opt, batches, rows)
    errors = []
    for param in bf16_model.parameters():
        master = bf16_opt.state[param]["master_param"]
        if not isinstance(master, DTensor) or master.placements != param.placements or master.dtype != torch.float32:
            errors.append(f"bf16 FSDP2: master_param is {type(master).__name__} {getattr(master, 'placements', '')}")
        elif not torch.equal(param_of_master(master.to_local(), torch.bfloat16), param.to_local()):
            errors.append("bf16 FSDP2: a master does not round to its parameter's shard")
    bf16_reference = None
    if rank == 0:
        bf16_reference = make_model(seed).to(torch.bfloat16)
        train(bf16_reference, FusedAdamW(bf16_reference.parameters(), **OPTIONS), batches)
    gathered = [(name, full(param.detach()).float()) for name, param in bf16_model.named_parameters()]
    if rank == 0:
        difference = sum(float((value - expected.detach().float()).square().sum())
                         for (_, value), expected in zip(gathered, bf16_reference.parameters()))
        size = sum(float(expected.detach().float().square().sum()) for expected in bf16_reference.parameters())
        if not (difference / size) ** 0.5 <= BF16_TRAINED_RTOL:
            errors.append(f"bf16 FSDP2: the model differs by {(difference / size) ** 0.5:.3g} (L2, relative)")
    results["fsdp2_bf16"] = errors

    # Lean layouts under FSDP2 (16-bit master remainders, 8-bit moments): state_dict() gives float32
    # DTensors sharded as the parameters and no compact tensors, so DCP saves every rank's shard; a
    # fresh FSDP2 model and optimizer of the same layout load it back.
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    def lean_fsdp2(model_seed):
        lean_model = make_model(model_seed).to(torch.bfloat16)
        for block in lean_model.blocks:
            fully_shard(block)
        fully_shard(lean_model)
        return lean_model, FusedAdamW(lean_model.parameters(), master_weights="remainder", moment_dtype="int8", **OPTIONS)

    lean_model, lean_opt = lean_fsdp2(seed)
    train(lean_model, lean_opt, batches, rows)
    errors, exported = [], lean_opt.state_dict()["state"]
    for index, param in enumerate(lean_model.parameters()):
        for key in ("exp_avg", "exp_avg_sq", "master_param"):
            value = exported[index].get(key)
            if not isinstance(value, DTensor) or value.placements != param.placements or value.dtype != torch.float32:
                errors.append(f"lean FSDP2: state_dict()['{key}'] is {type(value).__name__} {getattr(value, 'placements', '')}")
        if "master_remainder" not in lean_opt.state[param] or "exp_avg_int8" not in lean_opt.state[param]:
            errors.append(f"lean FSDP2: the live state is not lean: {sorted(lean_opt.state[param])}")
        if set(exported[index]) - {"step", "exp_avg", "exp_avg_sq", "master_param"}:
            errors.append(f"lean FSDP2: state_dict() keys {sorted(exported[index])}")
    dcp.save({"model": get_model_state_dict(lean_model), "optim": get_optimizer_state_dict(lean_model, lean_opt)},
             checkpoint_id=os.path.join(out_dir, "lean_fsdp2"))
    loaded_model, loaded_opt = lean_fsdp2(seed + 7)  # other weights: the checkpoint brings them
    model_sd, optim_sd = get_state_dict(loaded_model, loaded_opt)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=os.path.join(out_dir, "lean_fsdp2"))
    set_state_dict(loaded_model, loaded_opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    again = loaded_opt.state_dict()["state"]
    for index, (param, loaded) in enumerate(zip(lean_model.parameters(), loaded_model.parameters())):
        try:  # the whole tensors, gathered: the master exactly (remainder split beside the loaded param);
            # the 8-bit moments requantized from their own dequantized values (the same codes)
            check_equal(f"lean DCP parameter {index}", full(loaded.detach()), full(param.detach()))
            check_equal(f"lean DCP parameter {index} master", full(again[index]["master_param"]),
                        full(exported[index]["master_param"]))
            for key in ("exp_avg", "exp_avg_sq"):
                want = full(exported[index][key])
                check_close(f"lean DCP parameter {index} {key}", full(again[index][key]), want,
                            atol=1e-6 * float(want.abs().max()) + 1e-30, rtol=0)
            if "exp_avg_int8" not in loaded_opt.state[loaded]:
                raise AssertionError(f"lean DCP: the loaded state is not lean: {sorted(loaded_opt.state[loaded])}")
        except AssertionError as error:
            errors.append(str(error))
    results["fsdp2_lean_dcp"] = errors

    # DDP over gloo.
    ddp_model = DistributedDataParallel(make_model(seed))
    ddp_opt = FusedAdamW(ddp_model.parameters(), **OPTIONS)
    train(ddp_model, ddp_opt, batches, rows)
    results["ddp"] = compare_models("DDP", ddp_model, reference if rank == 0 else None, TRAINED_TOL)

    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as out:
        json.dump(results, out)
    dist.barrier()
    dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Workers:
    """The 2-process run, done once for every case."""

    def __init__(self):
        self.results = None
        self.dir = None
        self.seed = None

    def get(self):
        if isinstance(self.results, Exception):
            raise RuntimeError(f"the 2-process run failed: {self.results}")
        if self.results is None:
            self.results = RuntimeError("it did not finish")
            self.seed = torch.initial_seed() % 1_000_000
            self.dir = tempfile.mkdtemp(prefix="fadam-dist-")
            started = time.time()
            try:
                mp.spawn(worker, args=(self.seed, free_port(), self.dir), nprocs=WORLD, join=True)
            except Exception as error:
                self.results = error
                raise
            print(f"# 2 workers: {time.time() - started:.1f} s")
            results = {}
            for rank in range(WORLD):
                with open(os.path.join(self.dir, f"rank{rank}.json")) as f:
                    for key, errors in json.load(f).items():
                        results.setdefault(key, []).extend(errors)
            self.results = results
        return self.results


WORKERS = Workers()


def expect_no_errors(key):
    errors = WORKERS.get()[key]
    if errors:
        raise AssertionError(f"{len(errors)} mismatches; " + "; ".join(errors[:3]))


def fsdp2_matches_single_process():
    expect_no_errors("fsdp2")


def fsdp2_state_matches_single_process():
    expect_no_errors("fsdp2_state")


def fsdp2_max_grad_norm():
    expect_no_errors("fsdp2_max_grad_norm")


def fsdp2_clip_grad_norm_():
    expect_no_errors("fsdp2_clip_grad_norm_")


def fsdp2_bf16_masters():
    expect_no_errors("fsdp2_bf16")


def ddp_matches_single_process():
    expect_no_errors("ddp")


def fsdp2_lean_dcp_round_trip():
    expect_no_errors("fsdp2_lean_dcp")


def load_at_one_rank(optimizer_class, checkpoint):
    """A fresh unsharded model and optimizer (1 process, no process group) loaded from a DCP checkpoint."""
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    import torch.distributed.checkpoint as dcp

    model = make_model(WORKERS.seed + 7)  # other weights: the checkpoint must bring them
    opt = optimizer_class(model.parameters(), lr=0.5)
    model_sd, optim_sd = get_state_dict(model, opt)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=os.path.join(WORKERS.dir, checkpoint))
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    return model, opt


def check_loaded(model, opt, reference_file, reference_class):
    """model/opt loaded at 1 rank hold the 2-rank run's state (the reference saved it), and one more
    step of each, with the same gradients, agrees."""
    saved = torch.load(os.path.join(WORKERS.dir, reference_file))
    reference = make_model(WORKERS.seed)
    reference.load_state_dict(saved["model"])
    reference_opt = reference_class(reference.parameters(), lr=0.5)
    reference_opt.load_state_dict(saved["optim"])
    errors = compare_models("loaded", model, reference, TRAINED_TOL)
    for param, ref_param in zip(model.parameters(), reference.parameters()):
        state, ref_state = opt.state[param], reference_opt.state[ref_param]
        if float(state["step"]) != float(ref_state["step"]):
            errors.append(f"step {float(state['step'])} vs {float(ref_state['step'])}")
        for key in ("exp_avg", "exp_avg_sq"):
            try:
                check_close(f"state['{key}']", state[key], ref_state[key], atol=TRAINED_TOL["atol"],
                            rtol=MOMENT_TOL["rtol"])
            except AssertionError as error:
                errors.append(str(error))
    if errors:
        raise AssertionError(f"{len(errors)} mismatches; " + "; ".join(errors[:3]))
    for group, ref_group in zip(opt.param_groups, reference_opt.param_groups):
        if group["lr"] != ref_group["lr"]:
            raise AssertionError(f"lr {group['lr']}, the checkpoint's {ref_group['lr']}")
    tokens = make_batches(WORKERS.seed + 3)[0]
    for m, o in ((model, opt), (reference, reference_opt)):
        o.zero_grad()
        loss_of(m, tokens).backward()
        o.step()
    errors = compare_models("a step after loading", model, reference, TRAINED_TOL)
    if errors:
        raise AssertionError(f"{len(errors)} mismatches; " + "; ".join(errors[:3]))


def dcp_fused_2_ranks_to_fused_1():
    WORKERS.get()
    model, opt = load_at_one_rank(FusedAdamW, "fused_fsdp2")
    check_loaded(model, opt, "reference.pt", FusedAdamW)


def dcp_torch_adamw_2_ranks_to_fused_1():
    WORKERS.get()
    model, opt = load_at_one_rank(FusedAdamW, "torch_fsdp2")
    check_loaded(model, opt, "torch_reference.pt", torch.optim.AdamW)


def dcp_fused_2_ranks_to_torch_adamw_1():
    WORKERS.get()
    model, opt = load_at_one_rank(torch.optim.AdamW, "fused_fsdp2")
    check_loaded(model, opt, "reference.pt", FusedAdamW)


if __name__ == "__main__":
    warnings.filterwarnings("ignore", message="torch.distributed is disabled")  # the 1-process loads
    if not dist.is_available():
        print("skip distributed: torch.distributed is not available")
        sys.exit(0)
    run(
        [
            ("fsdp2_gloo_2_ranks_matches_single_process", fsdp2_matches_single_process),
            ("fsdp2_state_dtensors_match_single_process", fsdp2_state_matches_single_process),
            ("fsdp2_max_grad_norm_across_ranks_matches_clip_grad_norm_", fsdp2_max_grad_norm),
            ("fsdp2_clip_grad_norm_on_dtensors_then_step", fsdp2_clip_grad_norm_),
            ("fsdp2_bf16_params_dtensor_masters", fsdp2_bf16_masters),
            ("ddp_gloo_2_ranks_matches_single_process", ddp_matches_single_process),
            ("fsdp2_lean_layouts_dcp_saves_every_shard_and_loads", fsdp2_lean_dcp_round_trip),
            ("dcp_fused_fsdp2_2_ranks_loads_at_1_rank", dcp_fused_2_ranks_to_fused_1),
            ("dcp_torch_adamw_fsdp2_2_ranks_loads_into_fused", dcp_torch_adamw_2_ranks_to_fused_1),
            ("dcp_fused_fsdp2_2_ranks_loads_into_torch_adamw", dcp_fused_2_ranks_to_torch_adamw_1),
        ]
    )
