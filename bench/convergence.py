"""convergence.py - does a memory-lean optimizer state train as well as fp32 state? (issue 12)

Trains one small byte-level transformer language model on real text, the Python standard library's
own source files (on every machine that runs Python), once per optimizer configuration, from the same
initial weights and the same batches, on the CPU through the PyTorch binding. Then it reports the
final held-out loss of each, the bytes per parameter each holds and moves, the optimizer step's time,
and draws the loss curves into a PNG.

    python bench/convergence.py                     # the whole comparison (>= 2,000 steps each)
    python bench/convergence.py --steps 50 --quick  # a smoke run of the plumbing

Not a test: nothing here asserts. The recipe is the usual one for LLM pretraining: AdamW, warmup then
cosine decay to 10% of the peak lr, global-norm clipping at 1.0, weight decay 0.1 on matrices (two or
more dimensions) and 0 on biases and norm weights, bf16 compute.

The configurations (each is one set of FusedAdamW keyword arguments; one this build of fusedadam does
not accept is reported as unavailable rather than silently dropped):
    torch-adamw     torch.optim.AdamW on float32 parameters, forward and backward under bf16 autocast
    fp32-states     FusedAdamW on bf16 parameters, float32 master weights and moments (16 B/param held)
    and the lean layouts of LAYOUTS below.
"""

import argparse
import csv
import hashlib
import json
import math
import os
import platform
import statistics
import sys
import sysconfig
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "python"))


# --------------------------------------------------------------------------------------------------
# Data: the standard library's .py files, bytes; every 20th file (in sorted order) held out.
def load_corpus(max_bytes):
    root = sysconfig.get_paths()["stdlib"]
    files = []
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in ("site-packages", "__pycache__"))
        files += [os.path.join(directory, n) for n in sorted(names) if n.endswith(".py")]
    files.sort()
    train, held_out = bytearray(), bytearray()
    for i, path in enumerate(files):
        with open(path, "rb") as f:
            text = f.read()
        (held_out if i % 20 == 19 else train).extend(text)
        if len(train) + len(held_out) >= max_bytes:
            break
    digest = hashlib.sha256(bytes(train) + bytes(held_out)).hexdigest()[:16]
    return (torch.frombuffer(train, dtype=torch.uint8).long(), torch.frombuffer(held_out, dtype=torch.uint8).long(),
            root, digest)


def batch(data, batch_size, seq_len, generator):
    starts = torch.randint(0, data.numel() - seq_len - 1, (batch_size,), generator=generator)
    rows = torch.stack([data[s:s + seq_len + 1] for s in starts.tolist()])
    return rows[:, :-1], rows[:, 1:]


# --------------------------------------------------------------------------------------------------
# Model: a pre-norm GPT (learned positions, causal attention, 4x GELU MLP, tied embedding).
class Block(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.up = nn.Linear(width, 4 * width)
        self.down = nn.Linear(4 * width, width)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, c // self.heads).transpose(1, 3).unbind(2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.down(F.gelu(self.up(self.norm2(x))))


class TinyLM(nn.Module):
    def __init__(self, width, layers, heads, seq_len, vocab=256):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.position = nn.Parameter(torch.zeros(seq_len, width))
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, std=0.02 / (math.sqrt(2 * layers) if name.endswith("down.weight") else 1.0))
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, tokens, targets):
        x = self.embed(tokens) + self.position[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        logits = self.norm(x) @ self.embed.weight.t()
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1))


def param_groups(model, weight_decay):
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# --------------------------------------------------------------------------------------------------
# Configurations. Bytes per parameter for a bf16 model (param 2 + grad 2 + optimizer state), held
# between steps and moved (read + written) by one step; 8-bit codes carry one fp32 scale per 256.
LAYOUTS = {
    # name: (FusedAdamW keyword arguments, bytes held, bytes moved)
    "fp32-states": ({}, 16, 28),
    "remainder": ({"master_weights": "remainder"}, 14, 26),
    "bf16-moments": ({"moment_dtype": torch.bfloat16}, 12, 20),
    "int8-moments": ({"moment_dtype": "int8"}, 10 + 8 / 256, 16 + 16 / 256),
    "remainder+bf16": ({"master_weights": "remainder", "moment_dtype": torch.bfloat16}, 10, 18),
    "remainder+int8": ({"master_weights": "remainder", "moment_dtype": "int8"}, 8 + 8 / 256, 14 + 16 / 256),
}
TORCH_BYTES = (16, 28)  # fp32 params with autocast: param 4 + grad 4 + m 4 + v 4; moves 16 + 12


def make_optimizer(name, model, args):
    groups = param_groups(model, args.weight_decay)
    if name == "torch-adamw":
        return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=False, foreach=False)
    from fusedadam.torch import FusedAdamW

    return FusedAdamW(groups, lr=args.lr, betas=(0.9, 0.95), eps=1e-8, **LAYOUTS[name][0])


def lr_factor(step, warmup, total, floor=0.1):
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def evaluate(model, batches, autocast):
    model.eval()
    losses = []
    for x, y in batches:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            losses.append(model(x, y).item())
    model.train()
    return sum(losses) / len(losses)


def train(name, args, train_data, eval_batches):
    torch.manual_seed(args.seed)
    model = TinyLM(args.width, args.layers, args.heads, args.seq_len)
    autocast = name == "torch-adamw"
    if not autocast:
        model = model.to(torch.bfloat16)
    try:
        opt = make_optimizer(name, model, args)
    except (TypeError, ValueError) as e:  # a layout this build does not have
        return {"name": name, "unavailable": str(e)}
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, args.warmup, args.steps))
    generator = torch.Generator().manual_seed(args.seed + 1)  # the same batches for every configuration
    curve, step_times = [], []
    start = time.perf_counter()
    for step in range(args.steps):
        x, y = batch(train_data, args.batch_size, args.seq_len, generator)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        began = time.perf_counter()
        opt.step()
        step_times.append(time.perf_counter() - began)
        opt.zero_grad(set_to_none=True)
        schedule.step()
        if not math.isfinite(loss.item()):
            return {"name": name, "unavailable": f"diverged at step {step + 1} (loss {loss.item()})"}
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            held_out = evaluate(model, eval_batches, autocast)
            curve.append((step + 1, loss.item(), held_out))
            print(f"  {name:>16} step {step + 1:5d}  train {loss.item():.4f}  eval {held_out:.4f}", flush=True)
    held, moved = TORCH_BYTES if name == "torch-adamw" else LAYOUTS[name][1:]
    result = {
        "name": name,
        "final_eval": curve[-1][2],
        "curve": curve,
        "held": held,
        "moved": moved,
        "step_ms": 1e3 * statistics.median(step_times),
        "total_s": time.perf_counter() - start,
        "params": sum(p.numel() for p in model.parameters()),
    }
    with open(f"{args.out}.{name}.json", "w") as f:  # each configuration as it ends: a cut-short run keeps it
        json.dump(result, f)
    return result


def corpus_and_eval_batches(args):
    train_data, held_out, root, digest = load_corpus(args.corpus_bytes)
    eval_generator = torch.Generator().manual_seed(args.seed + 2)
    eval_batches = [batch(held_out, args.batch_size, args.seq_len, eval_generator) for _ in range(args.eval_batches)]
    return train_data, eval_batches, root, digest, held_out.numel()


def train_in_worker(name, args):
    train_data, eval_batches, _, _, _ = corpus_and_eval_batches(args)
    return train(name, args, train_data, eval_batches)


def plot(results, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for r in results:
        if "curve" in r:
            steps = [c[0] for c in r["curve"]]
            ax.plot(steps, [c[2] for c in r["curve"]], label=f"{r['name']} ({r['final_eval']:.4f})")
    ax.set_xlabel("step")
    ax.set_ylabel("held-out loss (nats per byte)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    lows = [r["final_eval"] for r in results if "curve" in r]
    if lows:  # the interesting part: the last stretch, where layouts could part
        ax.set_ylim(min(lows) - 0.1, min(lows) + 1.0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def table(results, baseline):
    rows = ["| configuration | final held-out loss | vs fp32-states | B/param held | B/param moved | optimizer step (median ms) |",
            "|---|---|---|---|---|---|"]
    for r in results:
        if "curve" not in r:
            rows.append(f"| {r['name']} | unavailable: {r['unavailable']} | | | | |")
            continue
        delta = f"{100 * (r['final_eval'] / baseline - 1):+.2f}%" if baseline else ""
        rows.append(f"| {r['name']} | {r['final_eval']:.4f} | {delta} | {r['held']:.2f} | {r['moved']:.2f} | "
                    f"{r['step_ms']:.2f} |")
    return "\n".join(rows)


# A remainder layout and the layout with an fp32 master and the same moments: the same run, bit for bit
# (docs/STATE_LAYOUTS.md), so every logged loss must be equal.
REMAINDER_TWINS = {"remainder": "fp32-states", "remainder+bf16": "bf16-moments", "remainder+int8": "int8-moments"}


def twin_lines(results):
    """One line per remainder layout run beside its fp32-master twin: identical curves or where they part."""
    by_name = {r["name"]: r for r in results if "curve" in r}
    lines = []
    for name, twin in REMAINDER_TWINS.items():
        if name not in by_name or twin not in by_name:
            continue
        a, b = by_name[name]["curve"], by_name[twin]["curve"]
        parted = next((x[0] for x, y in zip(a, b) if x != y), None)
        if len(a) == len(b) and parted is None:
            lines.append(f"- `{name}` = `{twin}` at every one of the {len(a)} logged steps (train and held-out "
                         f"loss equal to the last bit): the same run, as the remainder layout promises.")
        else:
            lines.append(f"- `{name}` and `{twin}` part at step {parted}: NOT the same run.")
    return lines


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--eval-batches", type=int, default=16)
    p.add_argument("--corpus-bytes", type=int, default=16 << 20)
    p.add_argument("--seed", type=int, default=int(os.environ.get("FADAM_TEST_SEED", 1234)))
    p.add_argument("--configs", default="torch-adamw," + ",".join(LAYOUTS))
    p.add_argument("--out", default=os.path.join(HERE, "convergence"), help="prefix of the .png, .csv, .md written")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--jobs", type=int, default=1, help="configurations trained at once, one thread each")
    p.add_argument("--report-only", action="store_true",
                   help="no training: the table and PNG from the OUT.NAME.json each configuration saved")
    p.add_argument("--quick", action="store_true", help="a smaller model, for checking the plumbing")
    args = p.parse_args()
    if args.quick:
        args.width, args.layers, args.heads, args.eval_every, args.eval_batches = 64, 2, 4, 10, 4
    if args.threads:
        torch.set_num_threads(args.threads)

    train_data, eval_batches, root, digest, held_out_bytes = corpus_and_eval_batches(args)
    print(f"# seed {args.seed} (FADAM_TEST_SEED={args.seed} or --seed repeats it); corpus {root}: "
          f"{train_data.numel():,} training bytes, {held_out_bytes:,} held out (sha256 {digest}); "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)

    names = args.configs.split(",")
    if args.report_only:  # the configurations' results saved by earlier runs
        results = []
        for name in names:
            try:
                with open(f"{args.out}.{name}.json") as f:
                    results.append(json.load(f))
            except FileNotFoundError:
                results.append({"name": name, "unavailable": "not run"})
    elif args.jobs > 1:  # one process per configuration at a time, one thread each: small matmuls scale poorly
        import concurrent.futures
        import multiprocessing

        # Each worker reads the corpus itself: tensors passed between processes need torch's fd sharing.
        with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"),
                                                    initializer=torch.set_num_threads, initargs=(1,)) as pool:
            results = list(pool.map(train_in_worker, names, [args] * len(names)))
    else:
        results = [train(name, args, train_data, eval_batches) for name in names]
    baseline = next((r["final_eval"] for r in results if r["name"] == "fp32-states" and "curve" in r), None)
    n_params = next((r["params"] for r in results if "params" in r), 0)
    command = "python bench/convergence.py " + " ".join(sys.argv[1:])
    title = (f"{n_params / 1e6:.2f}M-parameter byte-level LM, {args.steps} steps of {args.batch_size}x{args.seq_len} "
             f"bytes, Python stdlib source; seed {args.seed}")
    report = "\n".join([
        f"Command: `{command}` ({platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads() if args.jobs == 1 else f'{args.jobs} processes of 1'} threads). {title}; held-out: every 20th file, {len(eval_batches)} fixed "
        f"batches. Recipe: lr {args.lr} warmup {args.warmup} cosine to 10%, clip {args.clip}, wd "
        f"{args.weight_decay} on matrices, betas (0.9, 0.95); FusedAdamW rows on bf16 parameters, torch on "
        f"fp32 parameters with bf16 autocast.",
        "",
        table(results, baseline),
        "",
        *twin_lines(results),
    ])
    print("\n" + report)
    with open(args.out + ".md", "w") as f:
        f.write(report + "\n")
    with open(args.out + ".csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["configuration", "step", "train_loss", "eval_loss"])
        for r in results:
            for c in r.get("curve", []):
                w.writerow([r["name"], *c])
    with open(args.out + ".json", "w") as f:
        json.dump({"args": vars(args), "results": results}, f, indent=1)
    try:
        plot(results, args.out + ".png", title)
        print(f"wrote {args.out}.png, .md, .csv, .json")
    except ImportError:
        print(f"matplotlib not installed: no PNG (bench/convergence.sh installs it); wrote {args.out}.md, .csv, .json")


if __name__ == "__main__":
    main()
