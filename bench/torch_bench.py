#!/usr/bin/env python3
"""torch_bench.py - PyTorch's AdamW against fusedadam on the benchmark's parameter sets, in one process.

CPU section (any machine with torch): torch.optim.AdamW on CPU tensors (for-loop default, foreach,
fused when this torch has it) against fusedadam's CPU implementation (fadam_cpu_step_pool, called
through ctypes on torch-owned buffers, and FusedAdamW), on the scaled-down sets cpu_bench uses, at each
thread count of --threads (default 1 and all cores: torch.set_num_threads for torch and the binding, a
fadam_cpu_pool of that many threads for the ctypes path), then a summary of fusedadam's speedup over
torch fused per set and thread count.

GPU section (when torch sees CUDA): torch.optim.AdamW(fused=True) and (foreach=True) against fusedadam's
managed optimizer (ctypes: fadam_create(CUDA) + fadam_step on torch's stream) and
fusedadam.torch.FusedAdamW when that binding imports, on the real-size sets (Llama: as many layers
as fit).

The shapes come from `cpu_bench --dump-shapes` (bench/model_shapes.h), never from a copy here.
Precisions: fp32; bf16 params with an fp32 master, bf16 or fp32 grads. PyTorch's AdamW has no master
weights, so its bf16 cases are what a PyTorch user writes: AdamW on fp32 master copies, the bf16 grads
copied into the masters' .grad first (torch._foreach_copy_) and the masters copied back into the bf16
params after; every copy is inside the timed step.

"Ours" is fusedadam.torch.FusedAdamW when it imports, else the ctypes path. Every time is the median
per step; "t / t(ours)" is a row's time over ours, so on a torch row it is fusedadam's speedup (above 1:
fusedadam is faster).
"GB/s" is the step's floor bytes (docs/NUMERICS.md: 28/28/30 B per element) over its time, the
same count for every implementation. Each implementation starts replica 0 from the same values and takes
one step; "max |dp|" is its largest difference from fusedadam's result on the first 4096 elements of
every tensor (PyTorch computes m with lerp, so a few ulps are expected).
"""
import argparse
import ctypes
import os
import statistics
import subprocess
import sys
import time

def last_level_cache_bytes():
    """The CPU's last-level cache, from sysfs (32 MiB if it does not say)."""
    best = 0
    base = "/sys/devices/system/cpu/cpu0/cache"
    for index in (os.listdir(base) if os.path.isdir(base) else []):
        try:
            with open(os.path.join(base, index, "size")) as f:
                text = f.read().strip()
            unit = {"K": 1 << 10, "M": 1 << 20}.get(text[-1:], 0)
            best = max(best, int(text[:-1]) * unit if unit else int(text))
        except (OSError, ValueError):
            pass
    return best or 32 << 20


MAX_REPLICAS = 16
CHECK_ELEMS = 4096
PRECISIONS = [  # label, param bf16, grad bf16, floor bytes per element
    ("fp32", False, False, 28),
    ("bf16+master, bf16 grad", True, True, 28),
    ("bf16+master, fp32 grad", True, False, 30),
]
SET_NAMES = ["gpt2-124M", "gpt2-1.5B", "llama3-8B", "10k-small", "one-2^30"]
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


# ---- shapes ----

def load_shapes(args):
    """{(set, divisor): [(name, numel, no_decay, layer), ...]} from the TSV that cpu_bench prints."""
    if args.shapes:
        with open(args.shapes) as f:
            text = f.read()
    else:
        text = subprocess.run([args.shapes_from, "--dump-shapes"], check=True, capture_output=True,
                              text=True).stdout
    sets = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, divisor, _index, tensor, numel, no_decay, layer = line.split("\t")
        sets.setdefault((name, int(divisor)), []).append((tensor, int(numel), int(no_decay), int(layer)))
    return sets


def keep_layers(shapes, layers):
    return [s for s in shapes if s[3] < layers]


def label_of(name, shapes, full_shapes, divisor):
    label = name
    full_layers = len({s[3] for s in full_shapes if s[3] >= 0})
    layers = len({s[3] for s in shapes if s[3] >= 0})
    if layers < full_layers:
        label += " (%d/%d layers)" % (layers, full_layers)
    if divisor > 1:
        label += " /%d" % divisor
    return label


# ---- fusedadam through ctypes ----

class FadamTensor(ctypes.Structure):
    _fields_ = [("param", ctypes.c_void_p), ("grad", ctypes.c_void_p), ("master", ctypes.c_void_p),
                ("exp_avg", ctypes.c_void_p), ("exp_avg_sq", ctypes.c_void_p), ("numel", ctypes.c_int64),
                ("param_dtype", ctypes.c_int), ("grad_dtype", ctypes.c_int), ("group", ctypes.c_int)]


class FadamHparams(ctypes.Structure):
    _fields_ = [("lr", ctypes.c_float), ("beta1", ctypes.c_float), ("beta2", ctypes.c_float),
                ("eps", ctypes.c_float), ("weight_decay", ctypes.c_float), ("mode", ctypes.c_int),
                ("bias_correction", ctypes.c_int), ("maximize", ctypes.c_int)]


class FadamStepSource(ctypes.Structure):
    _fields_ = [("step", ctypes.c_int64), ("device_step", ctypes.c_void_p), ("device_lr", ctypes.c_void_p)]


FADAM_FLOAT32, FADAM_BFLOAT16 = 0, 1
FADAM_DEVICE_CUDA = 1
LR, BETAS, EPS, DECAY = 1e-3, (0.9, 0.999), 1e-8, 0.1


def load_library(path):
    if not path or not os.path.exists(path):
        return None
    lib = ctypes.CDLL(os.path.abspath(path))
    vp, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.fadam_status_string.restype = ctypes.c_char_p
    lib.fadam_status_string.argtypes = [i32]
    lib.fadam_last_error_message.restype = ctypes.c_char_p
    lib.fadam_cpu_step.argtypes = [ctypes.POINTER(FadamTensor), i64, ctypes.POINTER(FadamHparams), i32,
                                   ctypes.POINTER(FadamStepSource)]
    lib.fadam_cpu_step_pool.argtypes = [vp, ctypes.POINTER(FadamTensor), i64, ctypes.POINTER(FadamHparams), i32,
                                        ctypes.POINTER(FadamStepSource)]
    lib.fadam_cpu_pool_create.argtypes = [ctypes.POINTER(vp), i32]
    lib.fadam_cpu_pool_destroy.argtypes = [vp]
    lib.fadam_cpu_pool_destroy.restype = None
    lib.fadam_create.argtypes = [ctypes.POINTER(vp), i32, i32, ctypes.POINTER(FadamHparams), vp]
    lib.fadam_add_group.argtypes = [vp, ctypes.POINTER(FadamHparams), ctypes.POINTER(i32)]
    lib.fadam_add_tensor.argtypes = [vp, ctypes.c_char_p, vp, vp, i64, i32, i32, i32, ctypes.POINTER(i64)]
    lib.fadam_finalize.argtypes = [vp, vp]
    lib.fadam_step.argtypes = [vp, vp]
    lib.fadam_destroy.argtypes = [vp]
    lib.fadam_destroy.restype = None
    lib.fadam_cuda_device_count.restype = i32
    for name in ("fadam_cpu_step", "fadam_cpu_step_pool", "fadam_cpu_pool_create", "fadam_create", "fadam_add_group",
                 "fadam_add_tensor", "fadam_finalize", "fadam_step"):
        getattr(lib, name).restype = i32
    return lib


def check(lib, status, what):
    if status != 0:
        raise RuntimeError("%s: %s: %s" % (what, lib.fadam_status_string(status).decode(),
                                           lib.fadam_last_error_message().decode()))


def hparams(weight_decay):
    return FadamHparams(LR, BETAS[0], BETAS[1], EPS, weight_decay, 0, 1, 0)


# ---- one case: params and grads of R replicas, shared by every implementation ----

class Case:
    def __init__(self, torch, shapes, precision, device, replicas):
        self.torch, self.shapes, self.device, self.replicas = torch, shapes, device, replicas
        self.label, self.param_bf16, self.grad_bf16, self.floor_bytes = precision
        pdt = torch.bfloat16 if self.param_bf16 else torch.float32
        gdt = torch.bfloat16 if self.grad_bf16 else torch.float32
        gen = torch.Generator(device=device).manual_seed(1234)
        self.params, self.grads = [], []
        for r in range(replicas):
            ps, gs = [], []
            for (_, numel, _, _) in shapes:
                # Values as bench_init.h makes them: params in [-1, 1), grads 2^-6 smaller.
                p = (torch.rand(numel, generator=gen, device=device) * 2 - 1).to(pdt)
                g = ((torch.rand(numel, generator=gen, device=device) * 2 - 1) * 2 ** -6).to(gdt)
                ps.append(p)
                gs.append(g)
            self.params.append(ps)
            self.grads.append(gs)
        # Replica 0's params as they start: every implementation's checked step starts from them.
        self.pristine = [p.clone() for p in self.params[0]]
        self.elements = sum(s[1] for s in shapes)

    def restore(self):
        for p, q in zip(self.params[0], self.pristine):
            p.copy_(q)

    def snapshot(self):
        """The first CHECK_ELEMS elements of every param of replica 0, as float on the CPU."""
        return [p[:CHECK_ELEMS].float().cpu() for p in self.params[0]]


def max_difference(a, b):
    if a is None or b is None:
        return None
    return max(float((x - y).abs().max()) if x.numel() else 0.0 for x, y in zip(a, b))


# ---- implementations: each builds its state for all replicas and returns step(replica) and close() ----

def torch_impl(case, variant):
    """torch.optim.AdamW; on bf16 params, over fp32 masters with the copies a PyTorch user needs."""
    torch = case.torch
    kwargs = {"lr": LR, "betas": BETAS, "eps": EPS}
    if variant in ("fused", "foreach"):
        kwargs[variant] = True
    elif variant == "for-loop":
        kwargs["foreach"] = False
    optimizers, copies = [], []
    for r in range(case.replicas):
        params, grads = case.params[r], case.grads[r]
        if case.param_bf16:
            leaves = [p.detach().float() for p in params]
        else:
            leaves = [p for p in params]
        leaf_grads = []
        for leaf, g in zip(leaves, grads):
            leaf.grad = g if g.dtype == torch.float32 else torch.empty_like(leaf)
            leaf_grads.append(leaf.grad)
        decay = [leaf for leaf, s in zip(leaves, case.shapes) if not s[2]]
        no_decay = [leaf for leaf, s in zip(leaves, case.shapes) if s[2]]
        groups = [{"params": decay, "weight_decay": DECAY}, {"params": no_decay, "weight_decay": 0.0}]
        optimizers.append(torch.optim.AdamW([g for g in groups if g["params"]], **kwargs))
        copies.append((params, grads, leaves, leaf_grads))

    def step(r):
        params, grads, leaves, leaf_grads = copies[r]
        if case.param_bf16 and case.grad_bf16:
            torch._foreach_copy_(leaf_grads, grads)
        optimizers[r].step()
        if case.param_bf16:
            torch._foreach_copy_(params, leaves)

    def restore():  # replica 0's masters from the restored params
        if case.param_bf16:
            torch._foreach_copy_(copies[0][2], case.params[0])

    return step, restore, lambda: (optimizers.clear(), copies.clear())


def ours_cpu_impl(case, lib, threads):
    """fadam_cpu_step_pool on torch-owned host buffers, with a pool of `threads`; master, m, v are torch
    tensors too."""
    torch = case.torch
    groups = (FadamHparams * 2)(hparams(DECAY), hparams(0.0))
    pool = ctypes.c_void_p()
    check(lib, lib.fadam_cpu_pool_create(ctypes.byref(pool), threads), "fadam_cpu_pool_create")
    tables, keep = [], []
    for r in range(case.replicas):
        table = (FadamTensor * len(case.shapes))()
        for i, (p, g, s) in enumerate(zip(case.params[r], case.grads[r], case.shapes)):
            master = p.float() if case.param_bf16 else None
            m, v = torch.zeros(s[1]), torch.zeros(s[1])
            keep.append((master, m, v))
            table[i] = FadamTensor(p.data_ptr(), g.data_ptr(), master.data_ptr() if master is not None else None,
                                   m.data_ptr(), v.data_ptr(), s[1],
                                   FADAM_BFLOAT16 if case.param_bf16 else FADAM_FLOAT32,
                                   FADAM_BFLOAT16 if case.grad_bf16 else FADAM_FLOAT32, s[2])
        tables.append(table)
    counter = [0]

    def step(r):
        counter[0] += 1
        source = FadamStepSource(counter[0], None, None)
        check(lib, lib.fadam_cpu_step_pool(pool, tables[r], len(case.shapes), groups, 2, ctypes.byref(source)),
              "fadam_cpu_step_pool")

    def restore():
        for i, p in enumerate(case.params[0]):
            master = keep[i][0]
            if master is not None:
                master.copy_(p)

    def close():
        lib.fadam_cpu_pool_destroy(pool)
        tables.clear()
        keep.clear()

    return step, restore, close


def ours_cuda_impl(case, lib):
    """The managed optimizer on the CUDA device, stepping torch's tensors on torch's current stream."""
    torch = case.torch
    stream = ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)
    optimizers = []
    for r in range(case.replicas):
        opt = ctypes.c_void_p()
        check(lib, lib.fadam_create(ctypes.byref(opt), FADAM_DEVICE_CUDA, torch.cuda.current_device(),
                                    ctypes.byref(hparams(DECAY)), None), "fadam_create")
        optimizers.append(opt)
        check(lib, lib.fadam_add_group(opt, ctypes.byref(hparams(0.0)), None), "fadam_add_group")
        for p, g, s in zip(case.params[r], case.grads[r], case.shapes):
            check(lib, lib.fadam_add_tensor(opt, s[0].encode(), p.data_ptr(), g.data_ptr(), s[1],
                                            FADAM_BFLOAT16 if case.param_bf16 else FADAM_FLOAT32,
                                            FADAM_BFLOAT16 if case.grad_bf16 else FADAM_FLOAT32, s[2], None),
                  "fadam_add_tensor")
        check(lib, lib.fadam_finalize(opt, stream), "fadam_finalize")

    def step(r):
        check(lib, lib.fadam_step(optimizers[r], stream), "fadam_step")

    def close():
        torch.cuda.synchronize()
        for opt in optimizers:
            lib.fadam_destroy(opt)
        optimizers.clear()

    # The managed optimizer's masters come from the params at finalize, before any step.
    return step, None, close


def binding_impl(case, binding):
    """fusedadam.torch.FusedAdamW, used as torch.optim.AdamW would be."""
    if case.param_bf16 and not case.grad_bf16:
        raise ValueError("PyTorch requires .grad to have the param's dtype (bf16)")
    optimizers = []
    for r in range(case.replicas):
        for p, g in zip(case.params[r], case.grads[r]):
            p.grad = g
        decay = [p for p, s in zip(case.params[r], case.shapes) if not s[2]]
        no_decay = [p for p, s in zip(case.params[r], case.shapes) if s[2]]
        groups = [{"params": decay, "weight_decay": DECAY}, {"params": no_decay, "weight_decay": 0.0}]
        optimizers.append(binding([g for g in groups if g["params"]], lr=LR, betas=BETAS, eps=EPS))

    def close():
        optimizers.clear()
        for r in range(case.replicas):
            for p in case.params[r]:
                p.grad = None

    return (lambda r: optimizers[r].step()), None, close


# ---- timing ----

def time_cpu(step, replicas, seconds):
    for r in range(1, replicas):
        step(r)  # warm-up: the rest of one rotation (replica 0 took the checked step)
    samples, started, k = [], time.perf_counter(), 0
    while len(samples) < 200 and (len(samples) < 5 or time.perf_counter() - started < seconds):
        t0 = time.perf_counter()
        step(k % replicas)
        samples.append(time.perf_counter() - t0)
        k += 1
    return statistics.median(samples), None


def time_cuda(torch, step, replicas, seconds):
    per_batch = replicas * max(1, -(-8 // replicas))
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    batches, hosts, started = [], [], None
    for batch in range(-1, 200):
        if batch == 0:
            started = time.perf_counter()
        if batch >= 10 and time.perf_counter() - started > seconds:
            break
        start.record()
        for k in range(per_batch):
            t0 = time.perf_counter()
            step(k % replicas)
            if batch >= 0:
                hosts.append(time.perf_counter() - t0)
        stop.record()
        stop.synchronize()
        if batch >= 0:
            batches.append(start.elapsed_time(stop) * 1e-3 / per_batch)
    return statistics.median(batches), statistics.median(hosts)


def run_impl(case, make, seconds, cuda):
    """Builds an implementation, takes the checked first step, times it; (median, host, snapshot) or error."""
    torch = case.torch
    case.restore()  # before make(): an implementation may copy the params (masters) when it is built
    try:
        step, restore, close = make()
    except Exception as error:  # a variant this torch lacks, or a binding that does not take these params
        return None, None, None, "n/a: %s" % str(error).splitlines()[0][:80]
    try:
        case.restore()
        if restore:
            restore()
        step(0)
        if cuda:
            torch.cuda.synchronize()
        snap = case.snapshot()
        if cuda:
            median, host = time_cuda(torch, step, case.replicas, seconds)
        else:
            median, host = time_cpu(step, case.replicas, seconds)
        return median, host, snap, None
    except Exception as error:
        return None, None, None, "error: %s" % str(error).splitlines()[0][:80]
    finally:
        close()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()


def print_rows(label, case, results, candidates, cuda, label_is_row=False, threads=None):
    """One row per implementation; "ours" is the first of `candidates` that ran. With label_is_row the
    label already holds the precision column, and `threads` fills a column after it."""
    ours_name = next((name for name in candidates if results.get(name, (None,))[0] is not None), None)
    ours = results[ours_name][0] if ours_name else None
    reference_snap = results.get(ours_name, (None, None, None))[2]
    floor = case.elements * case.floor_bytes
    head = label if label_is_row else "%s | %s" % (label, case.label)
    if threads is not None:
        head += " | %d" % threads
    for name, (median, host, snap, error) in results.items():
        if median is None:
            print("| %s | %s | - | - |%s - | - | %s |" % (head, name, " - |" if cuda else "", error))
            continue
        speedup = "%.2fx" % (median / ours) if ours and name != ours_name else "-"
        difference = max_difference(snap, reference_snap) if name != ours_name else None
        diff_text = "%.1e" % difference if difference is not None else "-"
        host_text = " %.1f |" % (host * 1e6) if cuda else ""
        time_text = "%.1f" % (median * 1e6) if cuda else "%.2f" % (median * 1e3)
        print("| %s | %s | %s | %.2f |%s %s | %s | |" % (head, name, time_text, floor / median / 1e9, host_text, speedup,
                                                        diff_text))
    sys.stdout.flush()


# ---- sections ----

BINDING = "fusedadam.torch.FusedAdamW"


CTYPES_CPU = "fusedadam fadam_cpu_step_pool"


def cpu_section(torch, sets, selected, lib, binding, seconds, thread_counts, rounds):
    print("## PyTorch on the CPU against fusedadam's CPU implementation (scaled-down sets)\n")
    ours_name = BINDING if binding is not None else CTYPES_CPU
    print("torch %s, %d core(s) online. Each case at %s thread(s): torch.set_num_threads(n) for torch and %s,\n"
          "a fadam_cpu_pool of n threads for fadam_cpu_step_pool; torch's for-loop and foreach AdamW at 1 thread only.\n"
          "fusedadam and torch fused: the best of %d alternating rounds (--rounds), each a median over --seconds.\n"
          "t / t(ours): this row's time over %s's at the same thread count (%s's where that did not run),\n"
          "so on a torch row it is fusedadam's speedup.\n"
          % (torch.__version__, os.cpu_count() or 1, " and ".join(str(n) for n in thread_counts), BINDING, rounds,
             ours_name, CTYPES_CPU))
    if lib is None:
        print("fusedadam shared library not found (build/libfusedadam.so): its ctypes rows skipped\n")
    if binding is None:
        print("fusedadam.torch.FusedAdamW: not importable (binding not built: make torch-ext): its rows skipped\n")
    print("| set | precision | threads | implementation | median ms | GB/s | t / t(ours) | max abs dp vs ours | note |")
    print("| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | --- |")
    rotation = 2 * last_level_cache_bytes()
    summary = []  # (label, precision, threads, ours name, ours ms, torch fused ms)
    for name in selected:
        divisor = max(d for (n, d) in sets if n == name)
        shapes = sets[(name, divisor)]
        label = label_of(name, shapes, shapes, divisor)
        for precision in PRECISIONS:
            # Replicas stepped in turn until a step's inputs were last touched 2 LLCs of data ago (as cpu_bench).
            footprint = sum(s[1] for s in shapes) * (18 if precision[1] else 16)
            replicas = max(1, min(8, -(-rotation // footprint)))
            case = Case(torch, shapes, precision, "cpu", replicas)
            for threads in thread_counts:
                torch.set_num_threads(threads)
                results = {}
                # fusedadam and torch fused in `rounds` alternating rounds, each keeping its best median,
                # so that a burst of load from another process does not land on one side only.
                for _ in range(rounds):
                    round_results = {}
                    if binding is not None:
                        round_results[BINDING] = run_impl(case, lambda: binding_impl(case, binding), seconds, False)
                    if lib is not None:
                        round_results[CTYPES_CPU] = run_impl(case, lambda: ours_cpu_impl(case, lib, threads), seconds,
                                                             False)
                    round_results["torch AdamW fused"] = run_impl(case, lambda: torch_impl(case, "fused"), seconds,
                                                                  False)
                    for key, value in round_results.items():
                        if key not in results or (value[0] is not None and (results[key][0] is None or
                                                                             value[0] < results[key][0])):
                            results[key] = value
                if threads == 1:
                    for variant in ("for-loop", "foreach"):
                        results["torch AdamW " + variant] = run_impl(case, lambda: torch_impl(case, variant), seconds,
                                                                     False)
                print_rows("%s | %s" % (label, case.label), case, results, [BINDING, CTYPES_CPU], False,
                           label_is_row=True, threads=threads)
                ours = next((n for n in (BINDING, CTYPES_CPU) if results.get(n, (None,))[0] is not None), None)
                fused = results.get("torch AdamW fused", (None,))[0]
                summary.append((label, case.label, threads, ours, results[ours][0] if ours else None, fused))
            del case
    print()
    print("### fusedadam against torch.optim.AdamW(fused=True), CPU\n")
    print("Speedup = torch fused time / fusedadam's time at the same thread count (above 1: fusedadam is faster);\n"
          "fusedadam is %s where it ran, else %s.\n" % (BINDING, CTYPES_CPU))
    counts = list(thread_counts)
    print("| set | precision | " + " | ".join("%d thread(s): ours ms / fused ms / speedup" % n for n in counts) + " |")
    print("| --- | --- | " + " | ".join("---:" for _ in counts) + " |")
    rows = {}
    for label, precision, threads, ours, ours_ms, fused_ms in summary:
        cell = "-"
        if ours_ms and fused_ms:
            cell = "%.2f / %.2f / %.2fx%s" % (ours_ms * 1e3, fused_ms * 1e3, fused_ms / ours_ms,
                                             "" if ours == BINDING else " (ctypes)")
        rows.setdefault((label, precision), {})[threads] = cell
    for (label, precision), cells in rows.items():
        print("| %s | %s | %s |" % (label, precision, " | ".join(cells.get(n, "-") for n in counts)))
    print()


def cuda_section(torch, sets, selected, lib, binding, seconds):
    print("## PyTorch on the GPU against fusedadam (real-size sets)\n")
    props = torch.cuda.get_device_properties(0)
    l2 = getattr(props, "L2_cache_size", 50 << 20)
    ours_name = BINDING if binding is not None else "fusedadam managed"
    print("device: %s, torch %s. t / t(ours): this row's time over %s's (the managed optimizer's\n"
          "where that did not run), so on a torch row it is fusedadam's speedup.\n"
          % (props.name, torch.__version__, ours_name))
    if lib is None:
        print("fusedadam shared library not found: its ctypes rows skipped\n")
    if binding is None:
        print("fusedadam.torch.FusedAdamW: not importable (binding not built: make torch-ext): its rows skipped\n")
    print("| set | precision | implementation | median us | GB/s | host us/step | t / t(ours) | max abs dp vs ours | note |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for name in selected:
        full = sets[(name, 1)]
        free, _total = torch.cuda.mem_get_info()
        budget = 0.8 * free - (1 << 30)
        # Bytes per element at the peak: bf16 param + grad, fp32 master + master grad + m + v (20), the
        # pristine copy of the params (2-4) and foreach's temporary sqrt(v) (4).
        footprint = 26
        shapes = full
        layer_ids = sorted({s[3] for s in full if s[3] >= 0})
        while sum(s[1] for s in shapes) * footprint > budget and layer_ids:
            layer_ids.pop()
            shapes = keep_layers(full, len(layer_ids))
        if sum(s[1] for s in shapes) * footprint > budget or (layer_ids == [] and any(s[3] >= 0 for s in full)):
            print("| %s | - | - | - | - | - | - | - | skipped: does not fit in %.1f GiB free |" % (name, free / 2 ** 30))
            continue
        label = label_of(name, shapes, full, 1)
        for precision in PRECISIONS:
            set_bytes = sum(s[1] for s in shapes) * (18 if precision[1] else 16)
            replicas = max(1, min(MAX_REPLICAS, -(-4 * l2 // set_bytes)))
            case = Case(torch, shapes, precision, "cuda", replicas)
            results = {}
            if binding is not None:
                results[BINDING] = run_impl(case, lambda: binding_impl(case, binding), seconds, True)
            if lib is not None:
                results["fusedadam managed"] = run_impl(case, lambda: ours_cuda_impl(case, lib), seconds, True)
            for variant in ("fused", "foreach"):
                results["torch AdamW " + variant] = run_impl(case, lambda: torch_impl(case, variant), seconds, True)
            print_rows(label, case, results, [BINDING, "fusedadam managed"], True)
            del case
            torch.cuda.empty_cache()
    print()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lib", default=os.path.join(REPO, "build", "libfusedadam.so"))
    parser.add_argument("--shapes-from", default=os.path.join(REPO, "build", "bench", "cpu_bench"),
                        help="a cpu_bench binary, run with --dump-shapes")
    parser.add_argument("--shapes", help="a TSV file written by cpu_bench --dump-shapes")
    parser.add_argument("--sets", default=",".join(SET_NAMES))
    parser.add_argument("--seconds", type=float, default=0.25, help="time per implementation per case (GPU: at least 1)")
    parser.add_argument("--threads", default="1,0",
                        help="thread counts of the CPU section, comma-separated (0: all cores, os.cpu_count())")
    parser.add_argument("--rounds", type=int, default=2,
                        help="CPU section: alternating rounds of fusedadam and torch fused, the best kept")
    parser.add_argument("--no-cpu", action="store_true")
    parser.add_argument("--no-gpu", action="store_true")
    args = parser.parse_args()

    print("## PyTorch comparison\n")
    try:
        import torch
    except ImportError:
        print("torch not installed: skipped (%s)\n" % sys.executable)
        return 0
    selected = [s for s in args.sets.split(",") if s]
    for s in selected:
        if s not in SET_NAMES:
            print("unknown set %s; sets: %s" % (s, " ".join(SET_NAMES)), file=sys.stderr)
            return 2
    sets = load_shapes(args)
    lib = load_library(args.lib)
    binding = None
    sys.path.insert(0, os.path.join(REPO, "python"))
    try:
        from fusedadam.torch import FusedAdamW as binding  # noqa: N813
    except Exception:  # absent, unbuilt, or failing: its rows are skipped
        binding = None

    if not args.no_cpu:
        default_threads = torch.get_num_threads()
        counts = []
        for text in args.threads.split(","):
            n = int(text) if int(text) > 0 else (os.cpu_count() or 1)
            if n not in counts:
                counts.append(n)
        cpu_section(torch, sets, selected, lib, binding, args.seconds, counts, max(1, args.rounds))
        torch.set_num_threads(default_threads)
    if args.no_gpu:
        pass
    elif torch.cuda.is_available():
        cuda_section(torch, sets, selected, lib, binding, max(args.seconds, 1.0))
    else:
        print("## PyTorch on the GPU\n\nskipped: no CUDA device\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
