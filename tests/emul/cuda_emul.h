/* cuda_emul.h: build a .cu kernel file with g++ and run it on the CPU (tests only, never nvcc).
 *
 *   g++ -std=c++17 -O1 -g -ffp-contract=off -fno-strict-aliasing -fsanitize=alignment,undefined \
 *       -fno-sanitize-recover=all -DFADAM_EMULATION -I/usr/local/cuda/include -Iinclude -Ikernels \
 *       -include tests/emul/cuda_emul.h -x c++ kernels/foo.cu ...
 *
 * Blocks run one after another; the threads of a block run as cooperative fibers (ucontext) that
 * switch only at barriers, warp intrinsics and exit, in the order set by emul_set_thread_order().
 * A failed launch (deadlock, bad mask, bad config) is recorded, never fatal: emul_take_launch_error().
 *
 * __shared__ variables become `static thread_local`: one copy per block (blocks run one at a time), and
 * all of them sit in the program's TLS segment, which is poisoned with 0xFF before every block. (A
 * linker section does not work: g++ 12 ignores section attributes on statics of templates and rejects
 * them on statics of inline functions.) So kernel and test code must not use thread_local themselves.
 */
#ifndef FADAM_TESTS_CUDA_EMUL_H
#define FADAM_TESTS_CUDA_EMUL_H

#if defined(__CUDACC__)
#error "cuda_emul.h is CPU-emulation test infrastructure: never include it in an nvcc build"
#endif
#ifndef __cplusplus
#error "cuda_emul.h needs C++17 (build the .cu file with g++ -x c++)"
#endif
#ifndef FADAM_EMULATION
#define FADAM_EMULATION 1
#endif

#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <device_launch_parameters.h> /* declare the extern threadIdx etc. now, so our macros win later */

#include <link.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>
#include <tuple>
#include <type_traits>
#include <utility>

#ifndef EMUL_STACK_BYTES
#define EMUL_STACK_BYTES (64 * 1024) /* per fiber; a guard page below each catches overflow */
#endif

enum emul_thread_order { EMUL_ORDER_FORWARD = 0, EMUL_ORDER_REVERSE = 1, EMUL_ORDER_SHUFFLED = 2 };

namespace emul_detail {

enum State : unsigned char { RUNNABLE, AT_BARRIER, AT_WARP, EXITED };
enum Op : unsigned char { OP_IDX, OP_UP, OP_DOWN, OP_XOR, OP_BALLOT, OP_ANY, OP_ALL, OP_SYNCWARP };
enum BarKind : unsigned char { BAR_SYNC, BAR_COUNT, BAR_AND, BAR_OR };
inline const char *const op_names[] = {"__shfl_sync", "__shfl_up_sync", "__shfl_down_sync", "__shfl_xor_sync",
                                       "__ballot_sync", "__any_sync", "__all_sync", "__syncwarp"};
inline const char *const bar_names[] = {"__syncthreads", "__syncthreads_count", "__syncthreads_and",
                                        "__syncthreads_or"};
enum { MAX_THREADS = 1024 };

struct Fiber {
    ucontext_t ctx; /* never moved: glibc keeps a pointer into it (fpregs) */
    uint3 tid;
    unsigned lane, warp;
    State state;
    Op op; /* the pending warp operation, valid while AT_WARP */
    unsigned mask;
    int arg, width;
    uint64_t val, result;
    const char *file;
    int line;
};

struct Emu {
    Fiber *fibers;            /* MAX_THREADS of them, allocated once */
    unsigned stacks_ready;    /* fibers [0, stacks_ready) have a stack */
    unsigned *order;          /* resume order of the current round */
    ucontext_t sched;         /* the scheduler's context */
    Fiber *cur;               /* the running fiber, null outside a launch */
    bool in_launch;
    dim3 grid, block;
    uint3 block_idx;
    unsigned nthreads, exited;
    struct { unsigned arrived, count; BarKind kind; const char *file; int line; int result; } bar;
    void (*invoke)(void *);
    void *invoke_arg;
    unsigned char *dyn_smem;
    size_t dyn_bytes;
    unsigned char *tls; /* this OS thread's copy of the program's TLS segment: all __shared__ variables */
    size_t tls_bytes;
    emul_thread_order order_kind;
    uint64_t rng;
    bool failed;
    cudaError_t err;
    char msg[1024];
};
inline Emu g;

[[noreturn]] inline void fatal(const char *what) {
    fprintf(stderr, "cuda_emul: %s\n", what);
    abort();
}

inline Fiber *cur_fiber() {
    if (!g.cur) fatal("a device intrinsic was called outside an emulated kernel launch");
    return g.cur;
}
inline const uint3 &thread_idx() { return cur_fiber()->tid; }
inline const uint3 &block_idx() { return cur_fiber(), g.block_idx; }
inline const dim3 &block_dim() { return cur_fiber(), g.block; }
inline const dim3 &grid_dim() { return cur_fiber(), g.grid; }

/* Records a failure of the current launch; the scheduler stops it after this fiber switches out. */
inline void record_failure(const char *fmt, ...) {
    g.failed = true;
    g.err = cudaErrorLaunchFailure;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g.msg, sizeof g.msg, fmt, ap);
    va_end(ap);
}

/* Called from a fiber: record, prefix which thread, and leave this fiber for good. */
[[noreturn]] inline void fiber_fail(const char *fmt, ...) {
    Fiber *f = cur_fiber();
    char what[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    record_failure("block (%u,%u,%u) thread (%u,%u,%u): %s", g.block_idx.x, g.block_idx.y, g.block_idx.z,
                   f->tid.x, f->tid.y, f->tid.z, what);
    f->state = EXITED;
    setcontext(&g.sched);
    fatal("setcontext failed");
}

/* Switch back to the scheduler; the compiler barrier keeps shared-memory accesses on their side. */
inline void yield() {
    __asm__ __volatile__("" ::: "memory");
    swapcontext(&g.cur->ctx, &g.sched);
    __asm__ __volatile__("" ::: "memory");
}

/* ---- poison ---------------------------------------------------------------------------------- */

inline int find_tls(struct dl_phdr_info *info, size_t, void *out) {
    for (int i = 0; i < info->dlpi_phnum; i++)
        if (info->dlpi_phdr[i].p_type == PT_TLS) {
            ((void **)out)[0] = info->dlpi_tls_data;
            ((void **)out)[1] = (void *)(uintptr_t)info->dlpi_phdr[i].p_memsz;
        }
    return 1; /* the first entry is the main program, which holds every __shared__ variable */
}

inline void locate_shared() {
    void *tls[2] = {nullptr, nullptr};
    dl_iterate_phdr(find_tls, tls);
    g.tls = (unsigned char *)tls[0], g.tls_bytes = tls[0] ? (size_t)(uintptr_t)tls[1] : 0;
}

/* Fill all shared memory with 0xFF so a read before a write in this block shows, not stale data. */
inline void poison_shared() {
    if (g.tls) memset(g.tls, 0xFF, g.tls_bytes);
    memset(g.dyn_smem, 0xFF, g.dyn_bytes);
}

/* ---- block barrier --------------------------------------------------------------------------- */

inline int block_barrier(BarKind kind, int pred, const char *file, int line) {
    Fiber *f = cur_fiber();
    if (g.exited)
        fiber_fail("%s at %s:%d reached after %u of %u threads of the block exited (barrier reached after "
                   "some threads exited)", bar_names[kind], file, line, g.exited, g.nthreads);
    if (g.bar.arrived == 0) {
        g.bar.kind = kind, g.bar.file = file, g.bar.line = line, g.bar.count = 0;
    } else if (g.bar.kind != kind || g.bar.line != line || strcmp(g.bar.file, file) != 0) {
        fiber_fail("threads wait at different barriers: %s at %s:%d, while %u threads wait at %s at %s:%d",
                   bar_names[kind], file, line, g.bar.arrived, bar_names[g.bar.kind], g.bar.file, g.bar.line);
    }
    g.bar.arrived++;
    g.bar.count += pred != 0;
    f->state = AT_BARRIER;
    if (g.bar.arrived == g.nthreads) { /* last one in: release everybody, results first */
        unsigned c = g.bar.count;
        g.bar.result = kind == BAR_COUNT ? (int)c : kind == BAR_AND ? c == g.nthreads : kind == BAR_OR ? c > 0 : 0;
        g.bar.arrived = 0;
        for (unsigned i = 0; i < g.nthreads; i++)
            if (g.fibers[i].state == AT_BARRIER) g.fibers[i].state = RUNNABLE;
    }
    yield();
    return g.bar.result; /* safe: the next barrier cannot complete before this thread reaches it */
}

/* ---- warp operations ------------------------------------------------------------------------- */

inline bool is_shuffle(Op op) { return op <= OP_XOR; }

/* Source lane of a shuffle, following the PTX shfl.sync definition that CUDA's intrinsics use:
 * c = ((32 - width) << 8) | (up ? 0 : 31); an out-of-segment source means "your own value". */
inline unsigned shuffle_source(Op op, unsigned lane, int arg, int width) {
    unsigned segmask = (unsigned)(32 - width) & 31u, b = (unsigned)arg & 31u;
    unsigned cval = op == OP_UP ? 0u : 31u;
    int max_lane = (int)((lane & segmask) | (cval & ~segmask)), min_lane = (int)(lane & segmask), j = 0;
    bool ok = false;
    switch (op) {
    case OP_UP: j = (int)lane - (int)b; ok = j >= max_lane; break;
    case OP_DOWN: j = (int)(lane + b); ok = j <= max_lane; break;
    case OP_XOR: j = (int)(lane ^ b); ok = j <= max_lane; break;
    default: j = min_lane | (int)(b & ~segmask); ok = j <= max_lane; break;
    }
    return ok ? (unsigned)j : lane;
}

/* Completes the rendezvous that lane `rep` of `warp` waits in if every lane its mask names that exists
 * and has not exited waits in the same operation with the same mask (call sites may differ, as on
 * sm_70+). Lanes past the end of the block, or exited, do not take part (as on the GPU). */
inline void try_complete_warp(unsigned warp, unsigned rep) {
    Fiber *lanes = g.fibers + warp * 32;
    unsigned n = g.nthreads - warp * 32 < 32 ? g.nthreads - warp * 32 : 32, part = 0, votes = 0;
    unsigned mask = lanes[rep].mask;
    Op op = lanes[rep].op;
    for (unsigned l = 0; l < n; l++) {
        if (!(mask >> l & 1) || lanes[l].state == EXITED) continue;
        if (lanes[l].state != AT_WARP || lanes[l].op != op || lanes[l].mask != mask) return;
        part |= 1u << l;
        votes |= (lanes[l].val != 0 ? 1u : 0u) << l;
    }
    if (!part) return;
    for (unsigned l = 0; l < n; l++) {
        if (!(part >> l & 1)) continue;
        Fiber &f = lanes[l];
        if (is_shuffle(f.op)) {
            unsigned src = shuffle_source(f.op, l, f.arg, f.width);
            f.result = part >> src & 1 ? lanes[src].val : ~0ull; /* undefined on the GPU: poison */
        } else {
            f.result = f.op == OP_BALLOT ? votes : f.op == OP_ANY ? votes != 0 : f.op == OP_ALL ? votes == part : 0;
        }
    }
    for (unsigned l = 0; l < n; l++)
        if (part >> l & 1) lanes[l].state = RUNNABLE;
}

inline uint64_t warp_op(Op op, unsigned mask, uint64_t val, int arg, int width, const char *file, int line) {
    Fiber *f = cur_fiber();
    if (!(mask >> f->lane & 1))
        fiber_fail("%s at %s:%d: mask 0x%08x does not include the calling lane %u of warp %u", op_names[op],
                   file, line, mask, f->lane, f->warp);
    if (is_shuffle(op) && (width < 1 || width > 32 || (width & (width - 1))))
        fiber_fail("%s at %s:%d: width %d is not a power of two in [1, 32]", op_names[op], file, line, width);
    Fiber *lanes = g.fibers + f->warp * 32;
    unsigned n = g.nthreads - f->warp * 32 < 32 ? g.nthreads - f->warp * 32 : 32;
    for (unsigned l = 0; l < n; l++) { /* lanes naming each other at the same call site must agree */
        const Fiber &o = lanes[l];
        if (l == f->lane || o.state != AT_WARP || o.op != op || o.mask == mask || o.line != line ||
            strcmp(o.file, file) != 0)
            continue;
        if ((mask >> l & 1) || (o.mask >> f->lane & 1))
            fiber_fail("lanes of warp %u disagree: lane %u calls %s with mask 0x%08x at %s:%d while lane %u waits "
                       "in %s with mask 0x%08x at %s:%d", f->warp, f->lane, op_names[op], mask, file, line, l,
                       op_names[o.op], o.mask, o.file, o.line);
    }
    f->op = op, f->mask = mask, f->val = val, f->arg = arg, f->width = width, f->file = file, f->line = line;
    f->state = AT_WARP;
    try_complete_warp(f->warp, f->lane);
    yield();
    return f->result;
}

template <typename T> inline uint64_t to_bits(T v) {
    static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8, "shuffle of an unsupported type");
    uint64_t u = 0;
    memcpy(&u, &v, sizeof v);
    return u;
}
template <typename T> inline T from_bits(uint64_t u) {
    T v;
    memcpy(&v, &u, sizeof v);
    return v;
}
template <typename T>
inline T shuffle(const char *file, int line, Op op, unsigned mask, T var, int arg, int width = 32) {
    return from_bits<T>(warp_op(op, mask, to_bits(var), arg, width, file, line));
}

/* ---- fibers and the scheduler ---------------------------------------------------------------- */

inline void thread_exited() {
    Fiber *f = g.cur;
    f->state = EXITED;
    g.exited++;
    if (g.bar.arrived)
        record_failure("block (%u,%u,%u) thread (%u,%u,%u) exited while %u threads wait at %s at %s:%d "
                       "(barrier reached after some threads exited)", g.block_idx.x, g.block_idx.y, g.block_idx.z,
                       f->tid.x, f->tid.y, f->tid.z, g.bar.arrived, bar_names[g.bar.kind], g.bar.file, g.bar.line);
    Fiber *lanes = g.fibers + f->warp * 32; /* a rendezvous may now be complete without us */
    for (unsigned l = 0; l < 32 && f->warp * 32 + l < g.nthreads; l++)
        if (lanes[l].state == AT_WARP) try_complete_warp(f->warp, l);
}

inline void fiber_main() {
    g.invoke(g.invoke_arg);
    thread_exited();
    setcontext(&g.sched);
    fatal("setcontext failed");
}

inline void ensure_fibers(unsigned n) {
    if (!g.fibers) {
        g.fibers = (Fiber *)calloc(MAX_THREADS, sizeof(Fiber));
        g.order = (unsigned *)calloc(MAX_THREADS, sizeof(unsigned));
        if (!g.fibers || !g.order) fatal("out of memory");
    }
    size_t page = (size_t)sysconf(_SC_PAGESIZE), bytes = ((size_t)EMUL_STACK_BYTES + page - 1) / page * page;
    for (; g.stacks_ready < n; g.stacks_ready++) {
        void *p = mmap(nullptr, bytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED || mprotect(p, page, PROT_NONE) != 0) fatal("cannot map a fiber stack");
        Fiber &f = g.fibers[g.stacks_ready];
        if (getcontext(&f.ctx) != 0) fatal("getcontext failed");
        f.ctx.uc_stack.ss_sp = (char *)p + page;
        f.ctx.uc_stack.ss_size = bytes;
    }
}

inline uint64_t next_random() { /* splitmix64 */
    uint64_t z = (g.rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

inline void describe_deadlock() {
    unsigned at_bar = 0, at_warp = 0;
    const Fiber *w = nullptr;
    for (unsigned i = 0; i < g.nthreads; i++) {
        at_bar += g.fibers[i].state == AT_BARRIER;
        if (g.fibers[i].state == AT_WARP && !at_warp++) w = &g.fibers[i];
    }
    char bar_part[256] = "", warp_part[320] = "";
    if (at_bar)
        snprintf(bar_part, sizeof bar_part, "; %u threads wait at barrier %s at %s:%d", at_bar,
                 bar_names[g.bar.kind], g.bar.file, g.bar.line);
    if (w)
        snprintf(warp_part, sizeof warp_part, "; %u threads wait in warp operations (first: lane %u of warp %u in "
                 "%s with mask 0x%08x at %s:%d)", at_warp, w->lane, w->warp, op_names[w->op], w->mask, w->file,
                 w->line);
    record_failure("deadlock in block (%u,%u,%u)%s%s; %u exited", g.block_idx.x, g.block_idx.y, g.block_idx.z,
                   bar_part, warp_part, g.exited);
}

inline void run_block() {
    unsigned n = g.nthreads;
    for (unsigned i = 0; i < n; i++) {
        Fiber &f = g.fibers[i];
        f.tid = make_uint3(i % g.block.x, i / g.block.x % g.block.y, i / (g.block.x * g.block.y));
        f.lane = i % 32, f.warp = i / 32, f.state = RUNNABLE, f.mask = 0;
        f.ctx.uc_link = nullptr;
        makecontext(&f.ctx, fiber_main, 0);
    }
    g.exited = 0;
    g.bar.arrived = 0;
    poison_shared();
    while (g.exited < n) { /* one round: resume every runnable fiber once, in the chosen order */
        for (unsigned k = 0; k < n; k++) g.order[k] = g.order_kind == EMUL_ORDER_REVERSE ? n - 1 - k : k;
        if (g.order_kind == EMUL_ORDER_SHUFFLED)
            for (unsigned k = n - 1; k > 0; k--) std::swap(g.order[k], g.order[next_random() % (k + 1)]);
        unsigned ran = 0;
        for (unsigned k = 0; k < n && !g.failed; k++) {
            Fiber *f = &g.fibers[g.order[k]];
            if (f->state != RUNNABLE) continue;
            g.cur = f;
            swapcontext(&g.sched, &f->ctx);
            g.cur = nullptr;
            ran++;
        }
        if (g.failed) return;
        if (!ran) return describe_deadlock(); /* everyone waits, nobody can move */
    }
}

inline bool check_config(dim3 grid, dim3 block) {
    unsigned long long threads = (unsigned long long)block.x * block.y * block.z;
    const char *why = !grid.x || !grid.y || !grid.z ? "a grid dimension is zero"
                    : !block.x || !block.y || !block.z ? "a block dimension is zero"
                    : threads > MAX_THREADS ? "more than 1024 threads per block"
                    : block.x > 1024 || block.y > 1024 || block.z > 64 ? "block dimension over (1024, 1024, 64)"
                    : grid.x > 0x7FFFFFFFu || grid.y > 65535 || grid.z > 65535 ? "grid dimension over (2^31-1, 65535, 65535)"
                    : nullptr;
    if (!why) return true;
    g.failed = true;
    g.err = cudaErrorInvalidConfiguration;
    snprintf(g.msg, sizeof g.msg, "invalid launch configuration grid (%u,%u,%u) block (%u,%u,%u): %s", grid.x,
             grid.y, grid.z, block.x, block.y, block.z, why);
    return false;
}

inline void launch(dim3 grid, dim3 block, size_t smem, void (*invoke)(void *), void *arg) {
    if (g.in_launch) fatal("emul_launch called from inside a kernel");
    g.failed = false;
    if (!check_config(grid, block)) return;
    g.in_launch = true;
    g.grid = grid, g.block = block, g.nthreads = block.x * block.y * block.z;
    g.invoke = invoke, g.invoke_arg = arg;
    ensure_fibers(g.nthreads);
    locate_shared();
    g.dyn_bytes = smem;
    g.dyn_smem = (unsigned char *)aligned_alloc(128, (smem + 127) / 128 * 128 + 128);
    if (!g.dyn_smem) fatal("out of memory for dynamic shared memory");
    for (unsigned z = 0; z < grid.z && !g.failed; z++)
        for (unsigned y = 0; y < grid.y && !g.failed; y++)
            for (unsigned x = 0; x < grid.x && !g.failed; x++) {
                g.block_idx = make_uint3(x, y, z);
                run_block();
            }
    free(g.dyn_smem);
    g.dyn_smem = nullptr, g.dyn_bytes = 0, g.cur = nullptr, g.in_launch = false;
}

} /* namespace emul_detail */

/* ---- public API ------------------------------------------------------------------------------ */

/* Runs kernel<<<grid, block, dynamic_smem_bytes>>>(args...) to completion (or to its first failure). */
template <typename... Params, typename... Args>
void emul_launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t dynamic_smem_bytes, Args &&...args) {
    struct Call {
        void (*kernel)(Params...);
        std::tuple<std::decay_t<Params>...> params; /* converted once; each thread gets its own copy */
    } call{kernel, std::tuple<std::decay_t<Params>...>(std::forward<Args>(args)...)};
    emul_detail::launch(grid, block, dynamic_smem_bytes,
                        [](void *p) { Call *c = (Call *)p; std::apply(c->kernel, c->params); }, &call);
}

inline void emul_set_thread_order(emul_thread_order order, uint64_t seed) {
    emul_detail::g.order_kind = order;
    emul_detail::g.rng = seed;
}

/* cudaSuccess, cudaErrorLaunchFailure or cudaErrorInvalidConfiguration; clears it. */
inline cudaError_t emul_take_launch_error(void) {
    cudaError_t e = emul_detail::g.err;
    emul_detail::g.err = cudaSuccess;
    return e;
}
inline const char *emul_last_failure_message(void) { return emul_detail::g.msg; }

/* This block's dynamic shared memory (the launch's dynamic_smem_bytes, 128-byte aligned, poisoned). */
inline void *emul_dynamic_shared(void) { return emul_detail::cur_fiber(), emul_detail::g.dyn_smem; }

/* ---- CUDA names -------------------------------------------------------------------------------- */

#define threadIdx (emul_detail::thread_idx())
#define blockIdx (emul_detail::block_idx())
#define blockDim (emul_detail::block_dim())
#define gridDim (emul_detail::grid_dim())
#define warpSize 32

#undef __shared__
#define __shared__ static thread_local
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif

#define __syncthreads() emul_detail::block_barrier(emul_detail::BAR_SYNC, 1, __FILE__, __LINE__)
#define __syncthreads_count(p) emul_detail::block_barrier(emul_detail::BAR_COUNT, (p), __FILE__, __LINE__)
#define __syncthreads_and(p) emul_detail::block_barrier(emul_detail::BAR_AND, (p), __FILE__, __LINE__)
#define __syncthreads_or(p) emul_detail::block_barrier(emul_detail::BAR_OR, (p), __FILE__, __LINE__)

#define __shfl_sync(...) emul_detail::shuffle(__FILE__, __LINE__, emul_detail::OP_IDX, __VA_ARGS__)
#define __shfl_up_sync(...) emul_detail::shuffle(__FILE__, __LINE__, emul_detail::OP_UP, __VA_ARGS__)
#define __shfl_down_sync(...) emul_detail::shuffle(__FILE__, __LINE__, emul_detail::OP_DOWN, __VA_ARGS__)
#define __shfl_xor_sync(...) emul_detail::shuffle(__FILE__, __LINE__, emul_detail::OP_XOR, __VA_ARGS__)
#define __ballot_sync(mask, p) \
    ((unsigned)emul_detail::warp_op(emul_detail::OP_BALLOT, (mask), (p) != 0, 0, 32, __FILE__, __LINE__))
#define __any_sync(mask, p) ((int)emul_detail::warp_op(emul_detail::OP_ANY, (mask), (p) != 0, 0, 32, __FILE__, __LINE__))
#define __all_sync(mask, p) ((int)emul_detail::warp_op(emul_detail::OP_ALL, (mask), (p) != 0, 0, 32, __FILE__, __LINE__))
#define __syncwarp(...) emul_detail::SyncWarpAt{__FILE__, __LINE__}(__VA_ARGS__) /* mask is optional */
namespace emul_detail {
struct SyncWarpAt {
    const char *file;
    int line;
    void operator()(unsigned mask = 0xFFFFFFFFu) const { warp_op(OP_SYNCWARP, mask, 0, 0, 32, file, line); }
};
} /* namespace emul_detail */

/* Lanes of the caller's warp that exist and have not exited: the emulator cannot see divergence. */
inline unsigned __activemask(void) {
    emul_detail::Fiber *f = emul_detail::cur_fiber(), *lanes = emul_detail::g.fibers + f->warp * 32;
    unsigned m = 0;
    for (unsigned l = 0; l < 32 && f->warp * 32 + l < emul_detail::g.nthreads; l++)
        m |= (lanes[l].state != emul_detail::EXITED ? 1u : 0u) << l;
    return m;
}

/* Atomics: blocks run one at a time and fibers switch only at barriers, so plain updates are atomic. */
#define EMUL_ATOMIC(name, T, expr) \
    inline T name(T *a, T v) { T old = *a; *a = (expr); return old; }
#define EMUL_ATOMIC_INTS(name, expr) \
    EMUL_ATOMIC(name, int, expr) EMUL_ATOMIC(name, unsigned, expr) EMUL_ATOMIC(name, unsigned long long, expr)
EMUL_ATOMIC_INTS(atomicAdd, old + v)
EMUL_ATOMIC(atomicAdd, float, old + v)
EMUL_ATOMIC(atomicAdd, double, old + v)
EMUL_ATOMIC(atomicSub, int, old - v)
EMUL_ATOMIC(atomicSub, unsigned, old - v)
EMUL_ATOMIC_INTS(atomicMax, old > v ? old : v)
EMUL_ATOMIC_INTS(atomicMin, old < v ? old : v)
EMUL_ATOMIC(atomicMax, long long, old > v ? old : v)
EMUL_ATOMIC(atomicMin, long long, old < v ? old : v)
EMUL_ATOMIC_INTS(atomicExch, v)
EMUL_ATOMIC(atomicExch, float, v)
EMUL_ATOMIC_INTS(atomicOr, old | v)
EMUL_ATOMIC_INTS(atomicAnd, old & v)
EMUL_ATOMIC_INTS(atomicXor, old ^ v)
EMUL_ATOMIC(atomicInc, unsigned, old >= v ? 0u : old + 1u)
EMUL_ATOMIC(atomicDec, unsigned, old == 0u || old > v ? v : old - 1u)
#undef EMUL_ATOMIC_INTS
#undef EMUL_ATOMIC
#define EMUL_ATOMIC_CAS(T) \
    inline T atomicCAS(T *a, T compare, T v) { T old = *a; if (old == compare) *a = v; return old; }
EMUL_ATOMIC_CAS(int)
EMUL_ATOMIC_CAS(unsigned)
EMUL_ATOMIC_CAS(unsigned long long)
#undef EMUL_ATOMIC_CAS
inline void __threadfence(void) {}
inline void __threadfence_block(void) {}
inline void __threadfence_system(void) {}

/* The occupancy API for a host launcher built here: the emulator has no SMs, so what a block of
 * this size could get on an sm_90 SM by threads alone (registers are unknown on the CPU). */
inline cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(int *blocks, const void *, int block_size,
                                                                          size_t, unsigned) {
    if (!blocks || block_size < 1 || block_size > 1024) return cudaErrorInvalidValue;
    *blocks = 2048 / block_size < 32 ? 2048 / block_size : 32;
    return cudaSuccess;
}
inline cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int *blocks, const void *kernel, int block_size,
                                                                 size_t dynamic_smem) {
    return cudaOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(blocks, kernel, block_size, dynamic_smem, 0);
}

/* ---- device functions the host headers lack (checked against CUDA 13 with g++ 12) -------------- */

template <typename T> inline T __ldg(const T *p) { return *p; }
template <typename T> inline T __ldcg(const T *p) { return *p; }
template <typename T> inline T __ldcs(const T *p) { return *p; }
template <typename T> inline void __stcg(T *p, T v) { *p = v; }
template <typename T> inline void __stcs(T *p, T v) { *p = v; }

#if !defined(__GLIBC__) || (__GLIBC__ * 1000 + __GLIBC_MINOR__) < 2041 /* glibc 2.41 adds C23 rsqrtf */
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); } /* the GPU's is within 2 ulp; this is within 1 */
#endif
inline float __fdividef(float x, float y) { return x / y; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float __fmaf_rn(float x, float y, float z) { return fmaf(x, y, z); }
inline float __fadd_rn(float x, float y) { return x + y; } /* _rn forms are never contracted into an FMA */
inline float __fsub_rn(float x, float y) { return x - y; }
inline float __fmul_rn(float x, float y) { return x * y; }
inline float __fdiv_rn(float x, float y) { return x / y; }
inline float __saturatef(float x) { return x >= 1.0f ? 1.0f : x > 0.0f ? x : 0.0f; } /* NaN -> 0 */

inline unsigned __float_as_uint(float x) { unsigned u; memcpy(&u, &x, 4); return u; }
inline int __float_as_int(float x) { int i; memcpy(&i, &x, 4); return i; }
inline float __uint_as_float(unsigned u) { float x; memcpy(&x, &u, 4); return x; }
inline float __int_as_float(int i) { float x; memcpy(&x, &i, 4); return x; }
inline long long __double_as_longlong(double x) { long long i; memcpy(&i, &x, 8); return i; }
inline double __longlong_as_double(long long i) { double x; memcpy(&x, &i, 8); return x; }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x ? __builtin_clz((unsigned)x) : 32; }
inline int __ffs(int x) { return __builtin_ffs(x); }

/* min/max: the same overload set as CUDA's math_functions.hpp (mixed signedness goes unsigned). */
#define EMUL_MINMAX(R, A, B)                                    \
    inline R min(A a, B b) { return (R)a < (R)b ? (R)a : (R)b; } \
    inline R max(A a, B b) { return (R)a > (R)b ? (R)a : (R)b; }
EMUL_MINMAX(int, int, int)
EMUL_MINMAX(unsigned, unsigned, unsigned)
EMUL_MINMAX(unsigned, int, unsigned)
EMUL_MINMAX(unsigned, unsigned, int)
EMUL_MINMAX(long, long, long)
EMUL_MINMAX(unsigned long, unsigned long, unsigned long)
EMUL_MINMAX(unsigned long, long, unsigned long)
EMUL_MINMAX(unsigned long, unsigned long, long)
EMUL_MINMAX(long long, long long, long long)
EMUL_MINMAX(unsigned long long, unsigned long long, unsigned long long)
EMUL_MINMAX(unsigned long long, long long, unsigned long long)
EMUL_MINMAX(unsigned long long, unsigned long long, long long)
#undef EMUL_MINMAX
inline float min(float a, float b) { return fminf(a, b); } /* NaN-ignoring, like the GPU's */
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }
inline double min(float a, double b) { return fmin(a, b); }
inline double max(float a, double b) { return fmax(a, b); }
inline double min(double a, float b) { return fmin(a, b); }
inline double max(double a, float b) { return fmax(a, b); }

#endif /* FADAM_TESTS_CUDA_EMUL_H */
