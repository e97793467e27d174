#!/usr/bin/env python3
"""sass_check.py - the performance gate that needs no GPU: reads the sm_90 machine code of every kernel
and holds each inner loop to the budget in bench/sass_budget.txt (how to read it: bench/SASS_CHECK.md).

    sass_check.py --tools DIR [--budget FILE] [--arch sm_90] OBJECT...

DIR holds cuobjdump and nvdisasm (bench/sass_tools.sh finds or installs them). Prints a table per
kernel and per loop, then one line per kernel and per loop: "ok NAME", "FAIL NAME: why".
Exit status 1 when any line failed. Python 3 standard library only.
"""
import argparse
import math
import os
import re
import subprocess
import sys

# sm_90 limits (CUDA occupancy calculator): per SM 64K registers in 4 partitions, 64 warps, 32 blocks,
# 228 KB of shared memory of which 1 KB is reserved per block; registers go out per warp in units of 256.
SM_REGS_PER_PARTITION = 16384
SM_PARTITIONS = 4
SM_MAX_WARPS = 64
SM_MAX_BLOCKS = 32
SM_SHARED_BYTES = 228 * 1024
SHARED_RESERVED_PER_BLOCK = 1024
REG_UNIT = 256

INSTRUCTION = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);")
FUNCTION = re.compile(r"^\s*Function\s*:\s*(\S+)")
SYMBOL = re.compile(r"^\s*0x[0-9a-f]+\s+(0x[0-9a-f]+|0)\s+(0x[0-9a-f]+|0)\s+\S+\s+\S+\s+\S+\s+(\$\S+)\s*$")
RESOURCE = re.compile(r"^\s*Function\s+(\S+):\s*$")
RESOURCE_VALUES = re.compile(r"(REG|STACK|SHARED|LOCAL):(\d+)")

GLOBAL_LOADS = ("LDG", "LD")
GLOBAL_STORES = ("STG", "ST")


def run(tools, *args):
    result = subprocess.run([os.path.join(tools, "cuobjdump")] + list(args), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True, env=dict(os.environ, PATH=tools +
                                                                                      os.pathsep + os.environ.get("PATH", "")))
    if result.returncode != 0:
        raise RuntimeError("cuobjdump %s failed: %s" % (" ".join(args), result.stderr.strip()))
    return result.stdout


def demangle(names):
    if not names:
        return {}
    try:
        out = subprocess.run(["c++filt"], input="\n".join(names), stdout=subprocess.PIPE, universal_newlines=True,
                             check=True).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return {n: n for n in names}
    return dict(zip(names, out))


SHORT_TYPES = [("__nv_bfloat16", "bf16"), ("__half", "f16"), ("float", "f32"), ("double", "f64")]


def short_name(demangled):
    """'void adam_vector<float, __half, true>(fadam_table_entry const&, ...)' -> 'adam_vector<f32,f16,true>'."""
    name = demangled
    depth, cut = 0, len(name)
    for i, c in enumerate(name):  # the argument list: the first '(' outside template brackets
        if c == "<":
            depth += 1
        elif c == ">":
            depth -= 1
        elif c == "(" and depth == 0:
            cut = i
            break
    name = name[:cut]
    if " " in name.split("<")[0]:  # a return type before the name
        name = name.split("<")[0].rsplit(" ", 1)[1] + ("<" + name.split("<", 1)[1] if "<" in name else "")
    for long, short in SHORT_TYPES:
        name = re.sub(r"\b%s\b" % long, short, name)
    name = re.sub(r"\b_INTERNAL_\w+?::", "", name)  # the file-local namespace of static functions
    return name.replace(" ", "")


def access_width(opcode):
    """Bits moved by one global load or store, from its opcode's suffixes."""
    parts = opcode.split(".")
    for part in parts[1:]:
        if part in ("128", "64"):
            return int(part)
        if part in ("U16", "S16"):
            return 16
        if part in ("U8", "S8"):
            return 8
    return 32


class Kernel:
    def __init__(self, name):
        self.name = name
        self.instructions = []  # (address, opcode, operands)
        self.regs = self.stack = self.shared = self.local = 0
        self.subfunctions = []  # (start, end, mangled name)


def parse(tools, arch, obj):
    kernels = {}
    current = None
    for line in run(tools, "-sass", "-arch", arch, obj).splitlines():
        m = FUNCTION.match(line)
        if m:
            current = kernels.setdefault(m.group(1), Kernel(m.group(1)))
            continue
        m = INSTRUCTION.match(line)
        if m and current is not None:
            current.instructions.append((int(m.group(1), 16), m.group(2), m.group(3).strip()))
    current = None
    for line in run(tools, "-res-usage", "-arch", arch, obj).splitlines():
        m = RESOURCE.match(line)
        if m:
            current = kernels.get(m.group(1))
            continue
        if current is not None:
            for key, value in RESOURCE_VALUES.findall(line):
                setattr(current, {"REG": "regs"}.get(key, key.lower()), int(value))
            current = None
    for line in run(tools, "-elf", "-arch", arch, obj).splitlines():
        m = SYMBOL.match(line)
        if not m:
            continue
        parts = m.group(3).split("$")  # $kernel$function
        if len(parts) == 3 and parts[1] in kernels:
            start, size = int(m.group(1), 16), int(m.group(2), 16)
            kernels[parts[1]].subfunctions.append((start, start + size, parts[2]))
    return list(kernels.values())


def branch_target(operands):
    m = re.match(r"(?:`\(\S+\)\s*)?(0x[0-9a-f]+)", operands)
    return int(m.group(1), 16) if m else None


def inner_loops(kernel):
    """Loops as [start, end] address ranges closed by a backward BRA; those holding no other loop."""
    ends = {}
    for address, opcode, operands in kernel.instructions:
        if opcode.split(".")[0] != "BRA":
            continue
        target = branch_target(operands)
        if target is not None and target <= address:
            ends[target] = max(ends.get(target, 0), address)
    loops = sorted(ends.items())
    return [(s, e) for s, e in loops if not any((s2, e2) != (s, e) and s <= s2 and e2 <= e for s2, e2 in loops)]


def occupancy(regs, shared, threads):
    warps = (threads + 31) // 32
    regs_per_warp = -(-max(regs, 1) * 32 // REG_UNIT) * REG_UNIT
    by_regs = (SM_REGS_PER_PARTITION // regs_per_warp) * SM_PARTITIONS // warps
    by_shared = SM_SHARED_BYTES // (shared + SHARED_RESERVED_PER_BLOCK)
    blocks = min(SM_MAX_BLOCKS, SM_MAX_WARPS // warps, by_regs, by_shared)
    return blocks, blocks * warps / SM_MAX_WARPS


def describe_accesses(widths):
    """[128, 128, 64] -> '128x2+64x1'; empty -> '-'."""
    if not widths:
        return "-"
    counts = {}
    for w in widths:
        counts[w] = counts.get(w, 0) + 1
    return "+".join("%dx%d" % (w, counts[w]) for w in sorted(counts, reverse=True))


CONVERSIONS = [("F2FP.BF16", "f2bf"), ("F2FP.F16", "f2h"), ("F2F.F16.F32", "f2h"), ("HADD2.F32", "h2f"),
               ("F2F.F32.F16", "h2f"), ("F2F.F64.F32", "f2d"), ("DADD", "dadd"), ("DFMA", "dfma"), ("MUFU.RSQ", "rsq")]


def signature(body, ldg, stg):
    """What an inlined loop does: its global loads (L) and stores (S) as bits x count, then the dtype
    conversions and math it holds: f2bf/f2h round to bf16/fp16, h2f widens fp16, f2d widens to double,
    dadd/dfma double arithmetic, rsq a square root. bf16 widening is a shift, not tagged."""
    tags = []
    for prefix, tag in CONVERSIONS:
        if tag not in tags and any(op.startswith(prefix) for _, op, _ in body):
            tags.append(tag)
    return "L%s/S%s" % (ldg, stg) + "".join("/" + t for t in tags)


def measure(kernel, names):
    kernel_short = short_name(names.get(kernel.name, kernel.name))
    loops = []
    for start, end in inner_loops(kernel):
        owner = kernel_short
        for s, e, mangled in kernel.subfunctions:
            if s <= start < e:
                owner = kernel_short + ":" + short_name(names.get(mangled, mangled))
        body = [(a, op, args) for a, op, args in kernel.instructions if start <= a <= end and op != "NOP"]
        base = [op.split(".")[0] for _, op, _ in body]
        ldg = describe_accesses([access_width(op) for (_, op, _), b in zip(body, base) if b in GLOBAL_LOADS])
        stg = describe_accesses([access_width(op) for (_, op, _), b in zip(body, base) if b in GLOBAL_STORES])
        owner += ":" + signature(body, ldg, stg)  # a function may hold several loops: named by what they do
        loops.append({
            "owner": owner,
            "start": start,
            "instructions": len(body),
            "ldg": ldg,
            "stg": stg,
            "lds": sum(1 for b in base if b in ("LDS", "LDSM")),
            "ldc": sum(1 for b in base if b == "LDC"),
            "local": sum(1 for b in base if b in ("LDL", "STL")),
        })
    for loop in loops:  # loops of one signature share one name and one budget line
        loop["name"] = loop["owner"]
    kernel.local_instructions = sum(1 for _, op, _ in kernel.instructions if op.split(".")[0] in ("LDL", "STL"))
    return kernel_short, loops


def read_budget(path):
    kernels, loops = {}, {}
    with open(path) as f:
        for number, line in enumerate(f, 1):
            line = re.split(r"(?:^|\s)#", line, 1)[0].strip()  # '#' inside a loop's name is not a comment
            if not line:
                continue
            fields = line.split()
            if len(fields) < 2 or fields[0] not in ("kernel", "loop"):
                raise ValueError("%s:%d: expected 'kernel NAME ...' or 'loop NAME ...'" % (path, number))
            values = {}
            for field in fields[2:]:
                m = re.match(r"([a-z_/]+)(<=|>=|=)(\S+)$", field)
                if not m:
                    raise ValueError("%s:%d: bad field %r" % (path, number, field))
                values[m.group(1)] = m.group(3)
            (kernels if fields[0] == "kernel" else loops)[fields[1]] = values
    return kernels, loops


def min_width(description):
    return min((int(p.split("x")[0]) for p in description.split("+")), default=0) if description != "-" else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tools", required=True)
    parser.add_argument("--budget", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "sass_budget.txt"))
    parser.add_argument("--arch", default="sm_90")
    parser.add_argument("--no-budget", action="store_true", help="print the table only")
    parser.add_argument("--propose", action="store_true",
                        help="also print budget lines matching the code as it is (elems from the budget, else 1)")
    parser.add_argument("objects", nargs="+")
    args = parser.parse_args()

    kernels = []
    for obj in args.objects:
        kernels += parse(args.tools, args.arch, obj)
    names = demangle([k.name for k in kernels] + [m for k in kernels for _, _, m in k.subfunctions])
    budget_kernels, budget_loops = ({}, {}) if args.no_budget else read_budget(args.budget)

    results = []
    all_loops = []
    print("# %-30s %5s %7s %6s %7s %10s %6s" % ("kernel", "regs", "shared", "local", "threads", "blocks/SM", "occup"))
    for kernel in kernels:
        short, loops = measure(kernel, names)
        kernel.short = short
        all_loops += loops
        b = budget_kernels.get(short, {})
        threads = int(b.get("threads", 256))
        blocks, occ = occupancy(kernel.regs, kernel.shared, threads)
        local = kernel.stack + kernel.local
        print("# %-30s %5d %7d %6d %7d %10d %5.0f%%" % (short, kernel.regs, kernel.shared, local, threads, blocks,
                                                       100 * occ))
        if args.no_budget:
            continue
        if not b:
            results.append("FAIL sass %s: no 'kernel %s' line in the budget" % (short, short))
            continue
        why = []
        if kernel.regs > int(b.get("regs", 255)):
            why.append("%d registers > budget %s" % (kernel.regs, b["regs"]))
        if local > int(b.get("local", 0)) or kernel.local_instructions > int(b.get("local", 0)):
            why.append("%d bytes of stack/local, %d local-memory instructions (spills) > budget %s" %
                       (local, kernel.local_instructions, b.get("local", 0)))
        if occ + 1e-9 < float(b.get("occupancy", 0)):
            why.append("occupancy %.3f < budget %s" % (occ, b["occupancy"]))
        results.append(("FAIL sass %s: " % short + "; ".join(why)) if why else
                       "ok sass %s: %d regs, %d B local, occupancy %.0f%%" % (short, kernel.regs, local, 100 * occ))

    print("# %-62s %5s %6s %9s %-14s %-12s %4s %4s %5s" % ("inner loop", "elems", "instr", "instr/el", "LDG bits",
                                                         "STG bits", "LDS", "LDC", "local"))
    for loop in all_loops:
        b = budget_loops.get(loop["name"], {})
        elems = int(b.get("elems", 0))
        per_element = "%9.2f" % (loop["instructions"] / elems) if elems else "%9s" % "?"
        print("# %-62s %5s %6d %s %-14s %-12s %4d %4d %5d" % (loop["name"], elems or "?", loop["instructions"],
                                                            per_element, loop["ldg"], loop["stg"], loop["lds"],
                                                            loop["ldc"], loop["local"]))
        if args.no_budget:
            continue
        if not b:
            results.append("FAIL sass %s: a loop without a budget line (add 'loop %s elems=... ipe<=... ldg=... "
                           "stg=... lds<=0')" % (loop["name"], loop["name"]))
            continue
        why = []
        if elems and loop["instructions"] / elems > float(b.get("ipe", "inf")) + 1e-9:
            why.append("%.2f instructions per element > budget %s" % (loop["instructions"] / elems, b["ipe"]))
        for kind in ("ldg", "stg"):
            want = b.get(kind)
            if want is None or loop[kind] == want:
                continue
            if min_width(loop[kind]) < min_width(want):
                why.append("%s %s: a vector access became narrower (budget %s)" % (kind.upper(), loop[kind], want))
            else:
                why.append("%s %s differs from budget %s (fewer or wider accesses: update the budget, with the "
                           "reason)" % (kind.upper(), loop[kind], want))
        if loop["lds"] > int(b.get("lds", 0)):
            why.append("%d shared-memory loads in the loop > budget %s" % (loop["lds"], b.get("lds", 0)))
        if loop["local"] > int(b.get("local", 0)):
            why.append("%d local-memory accesses (spills) in the loop > budget %s" % (loop["local"], b.get("local", 0)))
        results.append(("FAIL sass %s: " % loop["name"] + "; ".join(why)) if why else
                       "ok sass %s: %.2f instr/element, LDG %s, STG %s" % (loop["name"], loop["instructions"] / elems,
                                                                           loop["ldg"], loop["stg"]))
    found = {l["name"] for l in all_loops}
    for name in budget_loops:
        if name not in found:
            results.append("FAIL sass %s: in the budget but not in the machine code (renamed or gone: update the "
                           "budget)" % name)
    if args.propose:
        for kernel in kernels:
            b = budget_kernels.get(kernel.short, {})
            threads = int(b.get("threads", 256))
            print("propose: kernel %s threads=%d regs<=%d local<=%d occupancy>=%.3f" % (
                kernel.short, threads, kernel.regs, kernel.stack + kernel.local,
                occupancy(kernel.regs, kernel.shared, threads)[1]))
        for loop in all_loops:
            elems = int(budget_loops.get(loop["name"], {}).get("elems", 1))
            print("propose: loop %s elems=%d ipe<=%.2f ldg=%s stg=%s lds<=%d%s" % (
                loop["name"], elems, math.ceil(loop["instructions"] / elems * 100) / 100, loop["ldg"], loop["stg"], loop["lds"],
                " local<=%d" % loop["local"] if loop["local"] else ""))
    for line in results:
        print(line)
    return 1 if any(r.startswith("FAIL") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
