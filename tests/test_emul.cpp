/* Self-test of tests/emul/cuda_emul.h: small kernels, each checked against a plain C++ model.
 * Build (see the header):  g++ -std=c++17 -O1 -g -ffp-contract=off -fno-strict-aliasing
 *   -fsanitize=alignment,undefined -fno-sanitize-recover=all -DFADAM_EMULATION -I/usr/local/cuda/include
 *   -include tests/emul/cuda_emul.h -x c++ tests/test_emul.cpp -o build/test_emul */
#include "emul/cuda_emul.h"
#include "check.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <vector>

static uint64_t rng;
static const emul_thread_order kOrders[] = {EMUL_ORDER_FORWARD, EMUL_ORDER_REVERSE, EMUL_ORDER_SHUFFLED};
static const char *const kOrderNames[] = {"forward", "reverse", "shuffled"};

/* Takes the launch error; a failure becomes a CHECK failure naming `what`. */
static bool launched(const char *what) {
    cudaError_t e = emul_take_launch_error();
    CHECK(e == cudaSuccess, "%s: launch failed (%d): %.300s", what, (int)e, emul_last_failure_message());
    return e == cudaSuccess;
}

/* Expects a failed launch with `err` whose message contains `needle`. */
static void expect_failure(const char *what, cudaError_t err, const char *needle) {
    cudaError_t e = emul_take_launch_error();
    CHECK(e == err, "%s: expected error %d, got %d", what, (int)err, (int)e);
    CHECK(strstr(emul_last_failure_message(), needle) != nullptr, "%s: message lacks \"%s\": %.300s", what, needle,
          emul_last_failure_message());
}

static std::vector<float> random_floats(size_t n, bool positive) {
    std::vector<float> v(n);
    for (auto &x : v) x = positive ? (float)check_rng_uniform(&rng) : (float)check_rng_normal(&rng);
    return v;
}

/* ---- indices ----------------------------------------------------------------------------------- */

__global__ void k_indices(unsigned *visits, unsigned *block_seq, unsigned *next_block, unsigned *bad, dim3 g, dim3 b) {
    unsigned bl = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    unsigned tl = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    unsigned per_block = blockDim.x * blockDim.y * blockDim.z;
    visits[bl * per_block + tl] += 1;
    if (tl == 0) block_seq[bl] = (*next_block)++;
    if (blockDim.x != b.x || blockDim.y != b.y || blockDim.z != b.z || gridDim.x != g.x || gridDim.y != g.y ||
        gridDim.z != g.z || threadIdx.x >= b.x || threadIdx.y >= b.y || threadIdx.z >= b.z || blockIdx.x >= g.x ||
        blockIdx.y >= g.y || blockIdx.z >= g.z || warpSize != 32)
        atomicAdd(bad, 1u);
}

static void test_indices() {
    check_case_begin();
    dim3 g(3, 2, 4), b(4, 3, 5); /* 60 threads: the second warp is partial */
    unsigned nb = g.x * g.y * g.z, nt = b.x * b.y * b.z, next = 0, bad = 0;
    std::vector<unsigned> visits(nb * nt, 0), seq(nb, ~0u);
    emul_set_thread_order(EMUL_ORDER_SHUFFLED, check_rng_next(&rng));
    emul_launch(k_indices, g, b, 0, visits.data(), seq.data(), &next, &bad, g, b);
    if (launched("indices")) {
        for (unsigned i = 0; i < nb * nt; i++) CHECK(visits[i] == 1, "slot %u visited %u times", i, visits[i]);
        for (unsigned i = 0; i < nb; i++) CHECK(seq[i] == i, "block %u ran as number %u (x must be fastest)", i, seq[i]);
        CHECK(bad == 0, "%u threads saw wrong blockDim/gridDim/indices/warpSize", bad);
    }
    check_case_end("emul_indices_3d");
}

/* ---- block and warp reductions ----------------------------------------------------------------- */

template <int BLOCK> __global__ void k_block_sum(const float *x, float *out, int n) {
    __shared__ float s[BLOCK]; /* template static: must be per block and poisoned too */
    int t = threadIdx.x, i = blockIdx.x * BLOCK + t;
    s[t] = i < n ? x[i] : 0.0f;
    __syncthreads();
    for (int stride = BLOCK / 2; stride > 0; stride >>= 1) {
        if (t < stride) s[t] += s[t + stride];
        __syncthreads();
    }
    if (t == 0) out[blockIdx.x] = s[0];
}

static void test_block_reduction() {
    check_case_begin();
    const int n = 256 * 37 + 101, blocks = (n + 255) / 256;
    std::vector<float> x = random_floats(n, false), first;
    for (int o = 0; o < 3; o++) {
        std::vector<float> out(blocks, 0.0f);
        emul_set_thread_order(kOrders[o], check_rng_next(&rng));
        emul_launch(k_block_sum<256>, blocks, 256, 0, x.data(), out.data(), n);
        if (!launched(kOrderNames[o])) continue;
        for (int b = 0; b < blocks; b++) {
            double ref = 0, mag = 0;
            for (int i = b * 256; i < n && i < (b + 1) * 256; i++) ref += x[i], mag += fabs(x[i]);
            CHECK(fabs(out[b] - ref) <= 1e-5 * mag, "%s block %d: %.9g vs float64 %.9g", kOrderNames[o], b, out[b], ref);
        }
        if (o == 0) first = out;
        else CHECK(memcmp(first.data(), out.data(), blocks * sizeof(float)) == 0, "%s order changed the bits",
                   kOrderNames[o]);
    }
    check_case_end("emul_block_reduction_orders");
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xFFFFFFFFu, v, offset);
    return v;
}

__global__ void k_warp_sum(const float *x, float *out, int n) {
    __shared__ float partial[32];
    int t = threadIdx.x, lane = t & 31, warp = t >> 5;
    float v = 0.0f;
    for (int i = blockIdx.x * blockDim.x + t; i < n; i += blockDim.x * gridDim.x) v += x[i];
    v = warp_sum(v);
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    if (warp == 0) { /* only one warp shuffles: the rendezvous must be per warp */
        v = lane < (int)(blockDim.x + 31) / 32 ? partial[lane] : 0.0f;
        v = warp_sum(v);
        if (lane == 0) out[blockIdx.x] = v;
    }
}

static void test_warp_reduction() {
    check_case_begin();
    const int n = 100003, blocks = 48;
    std::vector<float> x = random_floats(n, true);
    double ref = 0;
    for (float v : x) ref += v;
    double worst = 0;
    for (int o = 0; o < 3; o++) {
        std::vector<float> out(blocks);
        emul_set_thread_order(kOrders[o], check_rng_next(&rng));
        emul_launch(k_warp_sum, blocks, 256, 0, x.data(), out.data(), n);
        if (!launched(kOrderNames[o])) continue;
        double got = 0;
        for (float v : out) got += v;
        double rel = fabs(got - ref) / ref;
        worst = rel > worst ? rel : worst;
        CHECK(rel <= 1e-6, "%s: %.12g vs float64 %.12g (relative %.3g)", kOrderNames[o], got, ref, rel);
    }
    printf("# warp reduction: worst relative error %.3g against float64\n", worst);
    check_case_end("emul_warp_shuffle_reduction");
}

/* ---- shuffle edge rules ------------------------------------------------------------------------ */

enum { SH_IDX, SH_UP, SH_DOWN, SH_XOR };
struct ShflCase { int op, width, arg; };

__global__ void k_shfl_cases(const unsigned *in, const ShflCase *cases, int ncases, unsigned *out) {
    unsigned t = threadIdx.x, v = in[t];
    for (int c = 0; c < ncases; c++) {
        ShflCase sc = cases[c];
        unsigned r = 0;
        switch (sc.op) {
        case SH_IDX: r = __shfl_sync(0xFFFFFFFFu, v, sc.arg, sc.width); break;
        case SH_UP: r = __shfl_up_sync(0xFFFFFFFFu, v, (unsigned)sc.arg, sc.width); break;
        case SH_DOWN: r = __shfl_down_sync(0xFFFFFFFFu, v, (unsigned)sc.arg, sc.width); break;
        default: r = __shfl_xor_sync(0xFFFFFFFFu, v, sc.arg, sc.width); break;
        }
        out[c * blockDim.x + t] = r;
    }
}

/* The rules as the CUDA Programming Guide words them, written without looking at the header. */
static int model_source(int op, int lane, int arg, int width) {
    int group = lane / width, first = group * width, pos = lane % width;
    switch (op) {
    case SH_IDX: return first + ((arg % width) + width) % width;
    case SH_UP: return pos - arg >= 0 ? lane - arg : lane;
    case SH_DOWN: return pos + arg < width ? lane + arg : lane;
    default: { int other = lane ^ arg; return other / width > group ? lane : other; } /* later groups: own */
    }
}

template <typename T> __global__ void k_shfl_types(const T *in, T *out) {
    unsigned t = threadIdx.x, n = blockDim.x;
    T v = in[t];
    out[0 * n + t] = __shfl_sync(0xFFFFFFFFu, v, 3);
    out[1 * n + t] = __shfl_up_sync(0xFFFFFFFFu, v, 2);
    out[2 * n + t] = __shfl_down_sync(0xFFFFFFFFu, v, 5, 16);
    out[3 * n + t] = __shfl_xor_sync(0xFFFFFFFFu, v, 9, 8);
}

template <typename T> static void check_shfl_type(const char *name) {
    const int n = 64;
    std::vector<T> in(n), out(4 * n);
    for (auto &v : in) { uint64_t r = check_rng_next(&rng); memcpy(&v, &r, sizeof v); }
    emul_launch(k_shfl_types<T>, 1, n, 0, in.data(), out.data());
    if (!launched(name)) return;
    const int ops[4] = {SH_IDX, SH_UP, SH_DOWN, SH_XOR}, args[4] = {3, 2, 5, 9}, widths[4] = {32, 32, 16, 8};
    for (int k = 0; k < 4; k++)
        for (int t = 0; t < n; t++) {
            int src = (t & ~31) + model_source(ops[k], t & 31, args[k], widths[k]);
            CHECK(memcmp(&out[k * n + t], &in[src], sizeof(T)) == 0, "%s op %d lane %d: wrong bits", name, k, t);
        }
}

__global__ void k_shfl_partial(const unsigned *in, unsigned *out) {
    unsigned t = threadIdx.x, lane = t & 31, v = in[t];
    if (lane < 16) { /* only the low half-warp takes part: mask 0xFFFF */
        out[t] = __shfl_xor_sync(0x0000FFFFu, v, 1);
        out[64 + t] = __shfl_down_sync(0x0000FFFFu, v, 8); /* lanes 8..15 read non-participants */
    }
}

static void test_shuffle_edges() {
    check_case_begin();
    std::vector<ShflCase> cases;
    for (int width : {32, 16, 8}) {
        for (int arg : {0, 1, 5, width - 1, width, width + 3, 31, 37, -1, -width - 1})
            cases.push_back({SH_IDX, width, arg});
        for (int op : {SH_UP, SH_DOWN, SH_XOR})
            for (int arg : {0, 1, 2, 3, width - 1, width, 17, 31}) cases.push_back({op, width, arg});
    }
    const int n = 64, nc = (int)cases.size();
    std::vector<unsigned> in(n), out((size_t)nc * n);
    for (auto &v : in) v = (unsigned)check_rng_next(&rng);
    emul_set_thread_order(EMUL_ORDER_SHUFFLED, check_rng_next(&rng));
    emul_launch(k_shfl_cases, 1, n, 0, in.data(), cases.data(), nc, out.data());
    if (launched("shuffle cases"))
        for (int c = 0; c < nc; c++)
            for (int t = 0; t < n; t++) {
                int src = (t & ~31) + model_source(cases[c].op, t & 31, cases[c].arg, cases[c].width);
                CHECK(out[c * n + t] == in[src], "op %d width %d arg %d lane %d: got 0x%08x, want lane %d's 0x%08x",
                      cases[c].op, cases[c].width, cases[c].arg, t, out[c * n + t], src, in[src]);
            }
    check_shfl_type<int>("int");
    check_shfl_type<unsigned>("unsigned");
    check_shfl_type<float>("float");
    check_shfl_type<double>("double");
    check_shfl_type<long long>("long long");
    check_shfl_type<unsigned long long>("unsigned long long");

    std::vector<unsigned> pout(128, 0);
    emul_launch(k_shfl_partial, 1, n, 0, in.data(), pout.data());
    if (launched("partial mask"))
        for (int t = 0; t < n; t++) {
            int lane = t & 31;
            if (lane >= 16) continue;
            CHECK(pout[t] == in[t ^ 1], "partial xor lane %d", t);
            unsigned want = lane < 8 ? in[t + 8] : 0xFFFFFFFFu; /* a non-participant's value reads as poison */
            CHECK(pout[64 + t] == want, "partial down lane %d: 0x%08x, want 0x%08x", t, pout[64 + t], want);
        }
    check_case_end("emul_shuffle_edge_rules");
}

/* ---- votes and counting barriers --------------------------------------------------------------- */

__global__ void k_votes(const int *pred, unsigned *out) {
    unsigned t = threadIdx.x, lane = t & 31;
    int p = pred[t];
    out[4 * t + 0] = __ballot_sync(0xFFFFFFFFu, p);
    out[4 * t + 1] = (unsigned)__any_sync(0xFFFFFFFFu, p);
    out[4 * t + 2] = (unsigned)__all_sync(0xFFFFFFFFu, p);
    if (lane < 16) out[4 * t + 3] = __ballot_sync(0x0000FFFFu, p);
    __syncwarp();
}

__global__ void k_sync_counts(const int *pred, int *out) {
    int p = pred[threadIdx.x];
    int c = __syncthreads_count(p), a = __syncthreads_and(p), o = __syncthreads_or(p);
    if (threadIdx.x == 0) out[0] = c, out[1] = a, out[2] = o;
}

static void test_votes() {
    check_case_begin();
    for (int n : {96, 48}) { /* 48: the second warp has only 16 lanes */
        for (int density : {0, 1, 2}) {
            std::vector<int> pred(n);
            for (auto &p : pred) p = density == 0 ? 0 : density == 2 ? 7 : (int)(check_rng_next(&rng) & 1);
            if (density == 2 && n == 96) pred[40] = 0; /* warp 1 not all-true, warps 0 and 2 all-true */
            std::vector<unsigned> out(4 * n, 0);
            emul_set_thread_order(kOrders[density], check_rng_next(&rng));
            emul_launch(k_votes, 1, n, 0, pred.data(), out.data());
            if (!launched("votes")) continue;
            for (int t = 0; t < n; t++) {
                int w = t / 32, lanes = n - w * 32 < 32 ? n - w * 32 : 32;
                unsigned ballot = 0, low = 0;
                for (int l = 0; l < lanes; l++) ballot |= (pred[w * 32 + l] != 0 ? 1u : 0u) << l;
                low = ballot & 0xFFFFu;
                unsigned all = ballot == (lanes == 32 ? 0xFFFFFFFFu : (1u << lanes) - 1);
                CHECK(out[4 * t] == ballot, "n=%d ballot thread %d: 0x%08x want 0x%08x", n, t, out[4 * t], ballot);
                CHECK(out[4 * t + 1] == (ballot != 0), "n=%d any thread %d", n, t);
                CHECK(out[4 * t + 2] == all, "n=%d all thread %d", n, t);
                if ((t & 31) < 16) CHECK(out[4 * t + 3] == low, "n=%d half-warp ballot thread %d", n, t);
            }
            int counts[3] = {-1, -1, -1}, c = 0;
            for (int p : pred) c += p != 0;
            emul_launch(k_sync_counts, 1, n, 0, pred.data(), counts);
            if (launched("syncthreads_count"))
                CHECK(counts[0] == c && counts[1] == (c == n) && counts[2] == (c > 0),
                      "count/and/or %d %d %d, want %d %d %d", counts[0], counts[1], counts[2], c, c == n, c > 0);
        }
    }
    check_case_end("emul_ballot_any_all");
}

/* ---- races and poison -------------------------------------------------------------------------- */

__global__ void k_rotate(const int *in, int *out, bool with_barrier) {
    __shared__ int s[128];
    int t = threadIdx.x;
    s[t] = in[t];
    if (with_barrier) __syncthreads(); /* without it: a race between the write and the neighbour's read */
    out[t] = s[(t + 1) % blockDim.x];
}

__global__ void k_read_before_write(unsigned *out, unsigned *dyn_out) {
    __shared__ unsigned s[64];
    unsigned *d = (unsigned *)emul_dynamic_shared();
    unsigned t = threadIdx.x, i = blockIdx.x * blockDim.x + t;
    out[i] = s[t]; /* deliberate bug: read before write */
    dyn_out[i] = d[t];
    s[t] = 0x12345678u + blockIdx.x;
    d[t] = 0x9ABCDEF0u + blockIdx.x;
}

static void test_race_and_poison() {
    check_case_begin();
    const int n = 128;
    std::vector<int> in(n), out[2][3];
    for (auto &v : in) v = (int)(check_rng_next(&rng) & 0xFFFFFF);
    for (int b = 0; b < 2; b++)
        for (int o = 0; o < 3; o++) {
            out[b][o].assign(n, 0);
            emul_set_thread_order(kOrders[o], check_rng_next(&rng));
            emul_launch(k_rotate, 1, n, 0, in.data(), out[b][o].data(), b == 1);
            launched("rotate");
        }
    CHECK(out[0][0] != out[0][1], "missing barrier: forward and reverse order gave the same result");
    for (int o = 0; o < 3; o++)
        for (int t = 0; t < n; t++)
            CHECK(out[1][o][t] == in[(t + 1) % n], "with barrier, %s order: thread %d wrong", kOrderNames[o], t);

    std::vector<unsigned> plain(3 * 64, 0), dyn(3 * 64, 0);
    emul_launch(k_read_before_write, 3, 64, 64 * sizeof(unsigned), plain.data(), dyn.data());
    if (launched("read before write"))
        for (int i = 64; i < 3 * 64; i++) { /* blocks 1 and 2: the previous block's values must not show */
            CHECK(plain[i] == 0xFFFFFFFFu, "static shared [%d] = 0x%08x, not the poison", i, plain[i]);
            CHECK(dyn[i] == 0xFFFFFFFFu, "dynamic shared [%d] = 0x%08x, not the poison", i, dyn[i]);
        }
    check_case_end("emul_missing_barrier_and_poison");
}

/* ---- failures ---------------------------------------------------------------------------------- */

__global__ void k_divergent_barrier(int *out) {
    if (threadIdx.x < 16) __syncthreads();
    out[threadIdx.x] = 1;
}

__global__ void k_two_barriers(int *out) {
    if (threadIdx.x < 16) __syncthreads();
    else __syncthreads();
    out[threadIdx.x] = 1;
}

__global__ void k_cross_wait(int *out) {
    int v = (int)threadIdx.x;
    if (threadIdx.x == 5) __syncthreads(); /* lane 5 waits here, the rest of its warp in the shuffle */
    else v = __shfl_sync(0xFFFFFFFFu, v, 0);
    out[threadIdx.x] = v;
}

static void run_ok_after_failure(const char *what) {
    std::vector<float> x(512, 1.0f), out(2, 0.0f);
    emul_launch(k_block_sum<256>, 2, 256, 0, x.data(), out.data(), 512);
    if (launched(what)) CHECK(out[0] == 256.0f && out[1] == 256.0f, "%s: next launch gave %g %g", what, out[0], out[1]);
}

static void test_deadlock() {
    check_case_begin();
    std::vector<int> out(64);
    for (int o = 0; o < 3; o++) {
        emul_set_thread_order(kOrders[o], check_rng_next(&rng));
        emul_launch(k_divergent_barrier, 2, 64, 0, out.data());
        expect_failure(kOrderNames[o], cudaErrorLaunchFailure, "barrier reached after some threads exited");
        CHECK(strstr(emul_last_failure_message(), "__syncthreads") != nullptr, "no barrier name: %.300s",
              emul_last_failure_message());
        run_ok_after_failure("after divergent barrier");
    }
    emul_launch(k_two_barriers, 1, 64, 0, out.data());
    expect_failure("two barriers", cudaErrorLaunchFailure, "different barriers");
    emul_launch(k_cross_wait, 1, 32, 0, out.data());
    expect_failure("cross wait", cudaErrorLaunchFailure, "deadlock");
    printf("# deadlock message: %s\n", emul_last_failure_message());
    run_ok_after_failure("after deadlock");
    check_case_end("emul_deadlock_reported");
}

__global__ void k_mask_without_self(int *out) {
    out[threadIdx.x] = __shfl_sync(0xFFFFFFFEu, (int)threadIdx.x, 1); /* lane 0 is not in its own mask */
}

__global__ void k_masks_disagree(int *out) { /* neither group can finish alone, so any order sees both */
    unsigned mask = threadIdx.x < 16 ? 0xFFFFFFFFu : 0xFFFFFFFEu;
    out[threadIdx.x] = __shfl_xor_sync(mask, (int)threadIdx.x, 1);
}

__global__ void k_bad_width(int *out) { out[threadIdx.x] = __shfl_down_sync(0xFFFFFFFFu, (int)threadIdx.x, 1, 12); }

static void test_bad_masks() {
    check_case_begin();
    std::vector<int> out(32);
    for (int o = 0; o < 3; o++) {
        emul_set_thread_order(kOrders[o], check_rng_next(&rng));
        emul_launch(k_mask_without_self, 1, 32, 0, out.data());
        expect_failure("mask without self", cudaErrorLaunchFailure, "does not include the calling lane");
        emul_launch(k_masks_disagree, 1, 32, 0, out.data());
        expect_failure("masks disagree", cudaErrorLaunchFailure, "disagree");
    }
    emul_launch(k_bad_width, 1, 32, 0, out.data());
    expect_failure("width 12", cudaErrorLaunchFailure, "power of two");
    run_ok_after_failure("after bad mask");
    check_case_end("emul_bad_shuffle_mask");
}

/* ---- atomics ----------------------------------------------------------------------------------- */

__device__ float atomic_max_float(float *addr, float v) { /* the usual CAS loop */
    int *a = (int *)addr, old = *a, assumed;
    do {
        assumed = old;
        old = atomicCAS(a, assumed, __float_as_int(fmaxf(v, __int_as_float(assumed))));
    } while (old != assumed);
    return __int_as_float(old);
}

__global__ void k_atomics(const float *x, int n, float *fsum, double *dsum, int *isum, unsigned long long *usum,
                          int *imax, unsigned *umin, float *fmax_, unsigned *bits) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    atomicAdd(fsum, x[i]);
    atomicAdd(dsum, (double)x[i]);
    atomicAdd(isum, (int)(x[i] * 1000.0f));
    atomicSub(isum + 1, 3);
    atomicAdd(usum, (unsigned long long)i << 20);
    atomicMax(imax, (int)(x[i] * 1e6f));
    atomicMin(umin, (unsigned)(x[i] * 1e6f));
    atomic_max_float(fmax_, x[i]);
    atomicOr(bits, 1u << (i % 32));
    atomicAnd(bits + 1, ~(1u << (i % 31)));
}

static void test_atomics() {
    check_case_begin();
    const int n = 5000;
    std::vector<float> x = random_floats(n, true);
    float fsum = 0, fmx = -1;
    double dsum = 0, ref = 0;
    int isum[2] = {0, 0}, imax = -1;
    unsigned long long usum = 0, uref = 0;
    unsigned umin = ~0u, bits[2] = {0, ~0u};
    long long iref = 0;
    int imax_ref = -1;
    unsigned umin_ref = ~0u;
    float fmax_ref = -1;
    for (int i = 0; i < n; i++) {
        ref += x[i], iref += (int)(x[i] * 1000.0f), uref += (unsigned long long)i << 20;
        imax_ref = std::max(imax_ref, (int)(x[i] * 1e6f)), umin_ref = std::min(umin_ref, (unsigned)(x[i] * 1e6f));
        fmax_ref = std::max(fmax_ref, x[i]);
    }
    emul_set_thread_order(EMUL_ORDER_SHUFFLED, check_rng_next(&rng));
    emul_launch(k_atomics, (n + 127) / 128, 128, 0, x.data(), n, &fsum, &dsum, isum, &usum, &imax, &umin, &fmx, bits);
    if (launched("atomics")) {
        CHECK(fabs(fsum - ref) <= 1e-5 * ref, "float atomicAdd %.9g vs %.9g", fsum, ref);
        CHECK(fabs(dsum - ref) <= 1e-12 * ref, "double atomicAdd %.17g vs %.17g", dsum, ref);
        CHECK(isum[0] == iref && isum[1] == -3 * n, "int atomicAdd/Sub %d %d", isum[0], isum[1]);
        CHECK(usum == uref, "ull atomicAdd %llu vs %llu", usum, uref);
        CHECK(imax == imax_ref && umin == umin_ref, "atomicMax/Min %d %u vs %d %u", imax, umin, imax_ref, umin_ref);
        CHECK(fmx == fmax_ref, "CAS float max %g vs %g", fmx, fmax_ref);
        CHECK(bits[0] == 0xFFFFFFFFu && bits[1] == 0x80000000u, "atomicOr/And 0x%08x 0x%08x", bits[0], bits[1]);
    }
    unsigned u = 5, e = 7;
    CHECK(atomicCAS(&u, 4u, 9u) == 5 && u == 5 && atomicCAS(&u, 5u, 9u) == 5 && u == 9, "atomicCAS unsigned");
    CHECK(atomicExch(&e, 3u) == 7 && e == 3, "atomicExch");
    check_case_end("emul_atomics");
}

/* ---- launch configuration ---------------------------------------------------------------------- */

__global__ void k_flag(int *flag) { *flag = 1; }

static void test_bad_config() {
    check_case_begin();
    int flag = 0;
    const dim3 grids[] = {dim3(1), dim3(0, 1, 1), dim3(1), dim3(1, 70000, 1), dim3(1)};
    const dim3 blocks[] = {dim3(2048), dim3(32), dim3(1, 1, 65), dim3(32), dim3(32, 32, 2)};
    for (int k = 0; k < 5; k++) {
        emul_launch(k_flag, grids[k], blocks[k], 0, &flag);
        expect_failure("bad config", cudaErrorInvalidConfiguration, "invalid launch configuration");
    }
    CHECK(flag == 0, "a kernel with a bad configuration ran");
    emul_launch(k_flag, 1, 1024, 0, &flag);
    if (launched("1024 threads")) CHECK(flag == 1, "kernel did not run");
    CHECK(emul_take_launch_error() == cudaSuccess, "error not cleared");
    check_case_end("emul_invalid_launch_config");
}

/* ---- bf16 / half on the host ------------------------------------------------------------------- */

static uint16_t ref_bf16_rne(float f) { /* written from the IEEE rule, not from cuda_bf16.hpp */
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t upper = u >> 16, rest = u & 0xFFFFu;
    if (rest > 0x8000u || (rest == 0x8000u && (upper & 1u))) upper += 1; /* carries into the exponent: inf */
    return (uint16_t)upper;
}

static void test_bf16_half() {
    check_case_begin();
    for (int i = 0; i < 20000; i++) {
        uint32_t u = (uint32_t)check_rng_next(&rng);
        if (i % 4 == 1) u = (u & 0xFFFF0000u) | 0x8000u;                /* exact ties */
        if (i % 4 == 2) u = (u & 0x807FFFFFu) | (0xFEu << 23);          /* near overflow */
        if (i % 8 == 3) u = (u & 0x807FFFFFu) | (0xFFu << 23) | 1u;     /* NaN */
        float f;
        memcpy(&f, &u, 4);
        __nv_bfloat16 b = __float2bfloat16_rn(f);
        uint16_t got;
        memcpy(&got, &b, 2);
        if (f != f) CHECK((got & 0x7F80u) == 0x7F80u && (got & 0x7Fu) != 0, "NaN 0x%08x became 0x%04x", u, got);
        else CHECK(got == ref_bf16_rne(f), "0x%08x -> 0x%04x, want 0x%04x", u, got, ref_bf16_rne(f));
    }
    for (uint32_t h = 0; h < 65536; h++) { /* every bf16 and half survives a trip through float */
        uint16_t h16 = (uint16_t)h, back;
        __nv_bfloat16 b;
        memcpy((void *)&b, &h16, 2);
        float f = __bfloat162float(b);
        __nv_bfloat16 b2 = __float2bfloat16_rn(f);
        memcpy(&back, &b2, 2);
        CHECK(f != f ? (back & 0x7FFFu) > 0x7F80u : back == h16, "bf16 0x%04x -> %g -> 0x%04x", h, f, back);
        __half hf;
        memcpy((void *)&hf, &h16, 2);
        f = __half2float(hf);
        __half h2 = __float2half_rn(f);
        memcpy(&back, &h2, 2);
        CHECK(f != f ? (back & 0x7FFFu) > 0x7C00u : back == h16, "half 0x%04x -> %g -> 0x%04x", h, f, back);
    }
    check_case_end("emul_bf16_half_host_conversions");
}

/* ---- speed ------------------------------------------------------------------------------------- */

__global__ void k_scale(const float *x, float *y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = 2.0f * x[i];
}

static void test_speed() {
    check_case_begin();
    const int blocks = 2000, n = blocks * 256;
    std::vector<float> x = random_floats(n, false), y(n, 0.0f);
    emul_set_thread_order(EMUL_ORDER_FORWARD, 0);
    auto t0 = std::chrono::steady_clock::now();
    emul_launch(k_scale, blocks, 256, 0, x.data(), y.data(), n);
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    printf("# speed: %d blocks x 256 threads in %.3f s (%.0f ns per thread)\n", blocks, s, s * 1e9 / n);
    if (launched("speed"))
        for (int i = 0; i < n; i++) CHECK(y[i] == 2.0f * x[i], "y[%d] wrong", i);
    check_case_end("emul_speed_2000x256");
}

int main() {
    (void)check_skip; /* every case here runs on the CPU: nothing to skip */
    rng = check_seed("test_emul");
    test_indices();
    test_block_reduction();
    test_warp_reduction();
    test_shuffle_edges();
    test_votes();
    test_race_and_poison();
    test_deadlock();
    test_bad_masks();
    test_atomics();
    test_bad_config();
    test_bf16_half();
    test_speed();
    return check_exit_code();
}
