/* adam_step.cu - one fused optimizer step over every tensor of a model, in one launch: each tensor by
 * its group's rule (kernels/rules.h: AdamW, Adam-L2 and Lion share the walk and the loops; the rule's
 * element function is the loops' template argument).
 *
 * Adam computes, per element (docs/NUMERICS.md, the same order as csrc/reference.c):
 *   g = float(grad) * grad_scale (1/loss_scale * clip coefficient, 1 in a plain step); if maximize g = -g
 *   ADAM_L2: g += wd*p            ADAMW: p *= 1 - lr*wd
 *   m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g*g
 *   p -= (lr/bc1) * m / (sqrt(v)/sqrt(bc2) + eps);  16-bit param = round_to_nearest_even(p), but a bf16
 *   param from an fp32 master rounds ties away from zero (fadam_bf16_from_master, as the remainder does)
 *
 * Bytes moved per element (read + write), the roofline the benchmark uses:
 *   fp32 param, fp32 grad, no master:           16 + 12 = 28 B
 *   16-bit param, 16-bit grad, fp32 master:     14 + 14 = 28 B
 *   16-bit param, fp32 grad, fp32 master:       16 + 14 = 30 B
 *   16-bit param updated in place (no master):  10-12 + 10 = 20-22 B
 * Lean layouts (docs/STATE_LAYOUTS.md; AdamW, bf16 param and grad; read + write; the 8-bit scales add
 * 16/256 B: two fp32 scales per 256 elements, read and written):
 *   16-bit remainder master, fp32 moments:      14 + 12 = 26 B (g2 + p2 + r2 + m4 + v4; p2 + r2 + m4 + v4)
 *   fp32 master, bf16 moments (SR):             10 + 10 = 20 B
 *   fp32 master, 8-bit moments:                  8 + 8 = 16 B (+ 16/256)
 *   remainder + bf16 moments:                   10 + 8 = 18 B
 *   remainder + 8-bit moments:                   8 + 6 = 14 B (+ 16/256)
 *   (an fp32 grad: +2 B; no master: the param is read, 2 B, and no master moves; Lion: no v, so -2 B
 *   for bf16, -1 B for 8-bit moments each way, and one scale per block: + 8/256 instead of 16/256)
 * Lion (FADAM_LION, one moment: no v):
 *   fp32 param, fp32 grad, no master:           12 + 8 = 20 B (p4 + g4 + m4 read, p4 + m4 written)
 *   16-bit param, 16-bit grad, fp32 master:     10 + 10 = 20 B (g2 + master4 + m4; p2 + master4 + m4: the
 *                                               param is not read when a master exists); fp32 grad: 22 B
 *
 * Launch shape: a 1-D grid of any size (production: one wave, the occupancy API's blocks per SM times
 * the SMs), a 1-D block of 32 to FADAM_BLOCK_THREADS threads, a multiple of 32. Warps own contiguous
 * ranges of the table's chunks of FADAM_CHUNK_ELEMS (8K) elements (warp w of block b is the grid's warp
 * b + w * gridDim.x, so a small model still spreads over every SM), find their first tensor with a
 * 32-ary search by the whole warp, prefetch the entries they will walk, and update each chunk with
 * their 32 lanes. The per-group scalars for step t come computed from the host
 * (fadam_launch_adam_step), or from the norm kernel's last block (the fused step: device_scalars), or,
 * when t or lr live in device memory, each block computes them once; all go to shared memory, and a
 * tensor's scalars are copied into registers before its loop.
 *
 * Small tensors (issue 11, target 2), estimated from the code for 10,000 tensors of 300 elements, bf16
 * params and grads with fp32 master (84 MB moved) on an H200 (132 SMs, 1.98 GHz, 4.8 TB/s: 18.4 B per
 * clock per SM; copy kernels reach ~90%), taking ~950 cycles per DRAM access and ~1,000 cycles for one
 * iteration's arithmetic (8 elements x ~61 instructions per lane):
 *   grid 5 x 132 = 660 blocks of 8 warps = 5,280 warps for 10,000 chunks (one per tensor): 1-2 each.
 *   Per warp, a dependent chain of: search 3 rounds (~2,900 cycles) + per chunk a walk step hitting L1
 *   after the prefetch (~1,000 with the entry's own load) + 2 iterations of load and arithmetic (lanes
 *   0-5 hold 2 of the 38 16-byte groups; ~3,900) = ~13,000 cycles, 6.6 us; the 84 MB need 19.5 us at
 *   copy bandwidth, and the SM's 40 warps keep ~170 KB of loads in flight where HBM needs ~18 KB. So
 *   the set is bandwidth-bound: >= 80% of copy bandwidth (the chain only delays the start).
 *   Before (a block per chunk: 41 of 256 threads busy, one chunk at a time per block, 15 chunks per
 *   block in a row, a 14-level search): ~15 x 3,350 + 10,000 cycles = 31 us, ~63% of copy; before
 *   commit f3f3a8b (a search per chunk, two waves, a second pass for tails): the issue's 25-33%.
 * A GPU measurement (make bench, set small_10k_300) replaces these figures when one is available.
 * Each dtype path is a loop inlined into the kernel (named in the sass-check's table by what it does):
 * 16-byte accesses where every pointer is 16-byte aligned (4 fp32 or 8 elements per lane when a 16-bit
 * type is involved), the tail of a tensor done in the same pass by the lanes past the vector work, and a
 * scalar loop for misaligned tensors. Built with -fmad=false so the GPU, the emulated CPU run and the
 * C reference agree bit for bit.
 */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <string.h>

#include "adam_math.h"
#include "launch.cuh"
#include "launchers.h"
#include "state_layout.h"
#include "tensor_table.cuh"

/* 32, unknown to the compiler: with the stride a constant it keeps one pointer per stream and iteration
 * offset live across the loops (more registers). */
static __device__ __forceinline__ int32_t opaque_warp_size() {
#if defined(__CUDA_ARCH__)
    int32_t size;
    asm("mov.u32 %0, WARP_SZ;" : "=r"(size));
    return size;
#else
    return 32;
#endif
}

/* The n elements of one chunk of a tensor (pointers at the chunk's start). With vector_ok,
 * groups of VEC elements per thread in 16-byte accesses; the last (end - begin) % VEC elements go to
 * the threads after the last group's, so they run alongside the vector work rather than after it.
 * The buffers never alias each other (fadam_table_check), hence __restrict__; `s` is a copy in
 * registers, so no store can make the compiler reload it. */
/* A rule's element function, as a template argument: rules sharing one (ADAMW, ADAM_L2) share the code. */
typedef void (*rule_element)(float *, float, float *, float *, const fadam_loop_scalars *);

template <rule_element Element, int States, typename ParamT, typename GradT, bool HasMaster>
static __device__ __forceinline__ void rule_range(ParamT *__restrict__ param, const GradT *__restrict__ grad,
                                                  float *__restrict__ master, float *__restrict__ state0,
                                                  float *__restrict__ state1, int32_t n, bool vector_ok,
                                                  const fadam_loop_scalars s) {
    constexpr int VEC = sizeof(ParamT) == 4 && sizeof(GradT) == 4 ? 4 : 8;
    const int32_t stride = opaque_warp_size(), thread = threadIdx.x % 32;
    int32_t scalar_begin = 0, offset = thread;
    if (vector_ok) {
        const int32_t groups = n / VEC;
#pragma unroll 1
        for (int32_t j = thread; j < groups; j += stride) {
            const int32_t i = j * VEC;
            /* 16-bit streams in one 16-byte access of 8; the fp32 ones per half of 4 elements, so at
             * most 4 of each are live (48 registers). */
            float g[VEC], p[VEC];
            if (sizeof(GradT) == 2) fadam_load16<VEC>(grad + i, g);
            if (!HasMaster && sizeof(ParamT) == 2) fadam_load16<VEC>(param + i, p);
#pragma unroll
            for (int h = 0; h < VEC; h += 4) {
                float m[4], v[4], *ph = p + h, *gh = g + h;
                if (sizeof(GradT) == 4) fadam_load16<4>(grad + i + h, *reinterpret_cast<float(*)[4]>(gh));
                if (HasMaster) fadam_load16<4>(master + i + h, *reinterpret_cast<float(*)[4]>(ph));
                else if (sizeof(ParamT) == 4) fadam_load16<4>(param + i + h, *reinterpret_cast<float(*)[4]>(ph));
                fadam_load16<4>(state0 + i + h, m);
                if (States > 1) fadam_load16<4>(state1 + i + h, v);
#pragma unroll
                for (int k = 0; k < 4; k++) Element(&ph[k], gh[k], &m[k], &v[k], &s);
                fadam_store16<4>(state0 + i + h, m);
                if (States > 1) fadam_store16<4>(state1 + i + h, v);
                if (HasMaster) fadam_store16<4>(master + i + h, *reinterpret_cast<float(*)[4]>(ph));
                else if (sizeof(ParamT) == 4) fadam_store16<4>(param + i + h, *reinterpret_cast<float(*)[4]>(ph));
            }
            if (sizeof(ParamT) == 2) fadam_store16<VEC, HasMaster>(param + i, p);
        }
        scalar_begin = groups * VEC;
        offset = (thread - groups % stride + stride) % stride; /* the thread after the last group's is 0 */
    }
#pragma unroll 1
    for (int32_t i = scalar_begin + offset; i < n; i += stride) {
        float p = HasMaster ? master[i] : fadam_to_float(param[i]);
        float m = state0[i], v = States > 1 ? state1[i] : 0.0f;
        Element(&p, fadam_to_float(grad[i]), &m, &v, &s);
        state0[i] = m;
        if (States > 1) state1[i] = v;
        if (HasMaster) master[i] = p;
        param[i] = HasMaster ? fadam_param_from_master<ParamT>(p) : fadam_from_float<ParamT>(p);
    }
}

/* ---- lean layouts (docs/STATE_LAYOUTS.md, kernels/state_layout.h) ----
 * Their own loop, selected per tensor (entry.lean), so the fp32 loops above stay as they were. One warp
 * iteration covers one 8-bit block of FADAM_Q8_BLOCK = 256 elements (a chunk starts at a multiple of it):
 * lane l takes elements l, l + 32, ..., l + 224 of the block, so every access of the warp is contiguous.
 * The formats are warp-uniform branches; the rule's element function is the fp32 loops'. An 8-bit block
 * needs its new absmax before any code is stored: a first pass computes the block's updated moments
 * for their absmax only (a shuffle max over the lanes, exact), the second recomputes them from the same
 * loaded values (the same bits) and stores; holding 16 values per lane instead took 108 registers. */
FADAM_STATIC_ASSERT(FADAM_Q8_BLOCK == 32 * 8 && FADAM_CHUNK_ELEMS % FADAM_Q8_BLOCK == 0, "a warp iteration is a block");

/* A moment's value from its data: fp32, bf16, or an 8-bit code times the block's scale. */
static __device__ __forceinline__ float lean_load_moment(const void *data, int format, int32_t i, float scale) {
    switch (format) {
    case FADAM_STATE_BF16: return fadam_bf16_to_float(static_cast<const uint16_t *>(data)[i]);
    case FADAM_STATE_Q8_SIGNED: return fadam_q8_dequantize_m(static_cast<const int8_t *>(data)[i], scale);
    case FADAM_STATE_Q8_QUARTIC: return fadam_q8_dequantize_v(static_cast<const uint8_t *>(data)[i], scale);
    default: return static_cast<const float *>(data)[i];
    }
}

/* Stores a moment in its format: bf16 with stochastic rounding on the low 16 bits of `random`, an 8-bit
 * code under the block's new scale (its inverse), or fp32. */
static __device__ __forceinline__ void lean_store_moment(void *data, int format, int32_t i, float x, uint32_t random,
                                                         float inverse_scale) {
    switch (format) {
    case FADAM_STATE_BF16: static_cast<uint16_t *>(data)[i] = fadam_round_bf16_stochastic(x, random); break;
    case FADAM_STATE_Q8_SIGNED: static_cast<int8_t *>(data)[i] = fadam_q8_quantize_m(x, inverse_scale); break;
    case FADAM_STATE_Q8_QUARTIC: static_cast<uint8_t *>(data)[i] = fadam_q8_quantize_v(x, inverse_scale); break;
    default: static_cast<float *>(data)[i] = x; break;
    }
}

/* The block's new scale: the absmax over its 256 elements, by a shuffle max of the lanes' (exact). */
static __device__ __forceinline__ float lean_block_scale(float lane_absmax) {
#pragma unroll
    for (int lanes = 16; lanes >= 1; lanes /= 2) {
        const float other = __shfl_xor_sync(0xffffffffu, lane_absmax, lanes);
        lane_absmax = other > lane_absmax ? other : lane_absmax;
    }
    return fadam_q8_scale_from_absmax(lane_absmax);
}

static __device__ __forceinline__ bool lean_is_q8(int format) {
    return format == FADAM_STATE_Q8_SIGNED || format == FADAM_STATE_Q8_QUARTIC;
}

/* Elements [begin, end) of a lean tensor (begin a multiple of FADAM_Q8_BLOCK); `step` is the t being
 * applied. Pointers are offset by `begin` so that the loop indexes with 32 bits. */
template <rule_element Element, int States, int Field0, int Field1, typename ParamT, typename GradT>
static __device__ __forceinline__ void lean_range(const fadam_table_entry &t, int64_t begin, int64_t end,
                                                  const fadam_loop_scalars &s, int64_t step) {
    ParamT *param = static_cast<ParamT *>(t.param) + begin;
    const GradT *grad = static_cast<const GradT *>(t.grad) + begin;
    const int32_t n = (int32_t)(end - begin), lane = threadIdx.x % 32;
    const int slot0 = FADAM_SLOT_OF_FIELD(Field0), slot1 = FADAM_SLOT_OF_FIELD(Field1 < 0 ? 0 : Field1);
    const int format0 = t.state_format[slot0], format1 = States > 1 ? (int)t.state_format[slot1] : (int)FADAM_STATE_FP32;
    const int master_format = t.states[FADAM_SLOT_MASTER].data ? t.state_format[FADAM_SLOT_MASTER] : -1;
    void *state0 = static_cast<unsigned char *>(t.states[slot0].data) + begin * fadam_state_format_bytes(format0);
    void *state1 = States > 1 ? static_cast<unsigned char *>(t.states[slot1].data) + begin * fadam_state_format_bytes(format1)
                              : NULL;
    float *const scales0 = t.states[slot0].block_scales, *const scales1 = t.states[slot1].block_scales;
    const int64_t block0 = begin / FADAM_Q8_BLOCK, index0 = t.element_offset + begin;
    /* one draw per element: its low half rounds exp_avg, its high half exp_avg_sq (docs/STATE_LAYOUTS.md) */
    const uint64_t key = fadam_random_key(t.rounding_seed, (uint64_t)step, 0);
    /* the fp32 master or the remainder, from `begin` on */
    void *const master_data = static_cast<unsigned char *>(t.states[FADAM_SLOT_MASTER].data) +
                              (master_format < 0 ? 0 : begin * fadam_state_format_bytes(master_format));
    float *const master = static_cast<float *>(master_data);
    uint16_t *const remainder = static_cast<uint16_t *>(master_data);
    const bool q8 = lean_is_q8(format0) || (States > 1 && lean_is_q8(format1));
#pragma unroll 1
    for (int32_t first = 0; first < n; first += FADAM_Q8_BLOCK) {
        const int64_t block = block0 + first / FADAM_Q8_BLOCK;
        const float old0 = lean_is_q8(format0) ? scales0[block] : 0.0f;
        const float old1 = States > 1 && lean_is_q8(format1) ? scales1[block] : 0.0f;
        float inverse0 = 0.0f, inverse1 = 0.0f, new0 = 0.0f, new1 = 0.0f;
        /* pass 0 (8-bit blocks only): the updated moments' absmax; pass 1: the update, stored */
#pragma unroll 1
        for (int pass = q8 ? 0 : 1; pass < 2; pass++) {
            float absmax0 = 0.0f, absmax1 = 0.0f;
#pragma unroll 1
            for (int32_t i = first + lane; i < first + FADAM_Q8_BLOCK && i < n; i += 32) {
                float p, v = 0.0f;
                if (master_format == FADAM_STATE_REMAINDER)
                    p = fadam_master_join(reinterpret_cast<const uint16_t *>(param)[i], remainder[i]);
                else if (master_format == FADAM_STATE_FP32) p = master[i];
                else p = fadam_to_float(param[i]);
                float m = lean_load_moment(state0, format0, i, old0);
                if (States > 1) v = lean_load_moment(state1, format1, i, old1);
                Element(&p, fadam_to_float(grad[i]), &m, &v, &s);
                if (pass == 0) {
                    absmax0 = fadam_q8_absmax_accumulate(absmax0, m);
                    absmax1 = fadam_q8_absmax_accumulate(absmax1, v);
                    continue;
                }
                if (master_format == FADAM_STATE_REMAINDER) {
                    uint16_t low;
                    reinterpret_cast<uint16_t *>(param)[i] = fadam_master_split(p, &low);
                    remainder[i] = low;
                } else {
                    if (master_format == FADAM_STATE_FP32) master[i] = p;
                    param[i] = master_format == FADAM_STATE_FP32 ? fadam_param_from_master<ParamT>(p) : fadam_from_float<ParamT>(p);
                }
                const uint32_t random = format0 == FADAM_STATE_BF16 ? fadam_random_bits_at(key, (uint64_t)(index0 + i)) : 0u;
                lean_store_moment(state0, format0, i, m, random, inverse0);
                if (States > 1) lean_store_moment(state1, format1, i, v, random >> 16, inverse1);
            }
            if (pass == 0) { /* every lane, after every lane read the old scales */
                new0 = lean_block_scale(absmax0);
                new1 = lean_block_scale(absmax1);
                inverse0 = fadam_q8_inverse_scale(new0);
                inverse1 = fadam_q8_inverse_scale(new1);
            }
        }
        if (q8 && lane == 0) {
            if (lean_is_q8(format0)) scales0[block] = new0;
            if (States > 1 && lean_is_q8(format1)) scales1[block] = new1;
        }
    }
}

/* Which loops an instantiation of the step kernel holds (each is its own kernel, named by its tag in
 * the sass-check: adam_step_kernel<fp32_loops>, adam_step_kernel<all_loops>). A kernel's registers are
 * those of its hungriest loop, and the lean loop's (~78) cost every table 3 blocks per SM instead of 4,
 * so a table without a lean tensor runs the kernel without it (bench/sass_budget.txt). */
struct fp32_loops { /* fp32 states, every rule: nearly every model */
    static constexpr bool lean = false;
};
struct all_loops { /* every layout and rule: a table with a lean tensor (header flag FADAM_TABLE_LEAN) */
    static constexpr bool lean = true;
};

/* A slot's fp32 data from `begin` on (lean tensors go to lean_range). */
static __device__ __forceinline__ float *slot_data(const fadam_table_entry &t, int slot, int64_t begin) {
    return static_cast<float *>(t.states[slot].data) + begin;
}

template <typename Loops, rule_element Element, int States, int Field0, int Field1, typename ParamT, typename GradT>
static __device__ __forceinline__ void rule_range_for_master(const fadam_table_entry &t, int64_t begin, int64_t end,
                                                             const fadam_loop_scalars &s, const int64_t *lean_step) {
    /* The pointers start at `begin`, so the loops index with 32 bits (a chunk is under 2^31 elements). */
    ParamT *param = static_cast<ParamT *>(t.param) + begin;
    const GradT *grad = static_cast<const GradT *>(t.grad) + begin;
    const int32_t n = (int32_t)(end - begin);
    float *state0 = slot_data(t, FADAM_SLOT_OF_FIELD(Field0), begin);
    float *state1 = States > 1 ? slot_data(t, FADAM_SLOT_OF_FIELD(Field1 < 0 ? 0 : Field1), begin) : NULL;
    /* An fp32 param is its own master (fadam_check_tensor): no code for fp32 with a master. */
    if (t.lean) { /* never in a kernel without the lean loop (it leaves such a table): left as it is */
        if (Loops::lean) lean_range<Element, States, Field0, Field1, ParamT, GradT>(t, begin, end, s, *lean_step);
    } else if (sizeof(ParamT) == 2 && t.states[FADAM_SLOT_MASTER].data)
        rule_range<Element, States, ParamT, GradT, sizeof(ParamT) == 2>(
            param, grad, slot_data(t, FADAM_SLOT_MASTER, begin), state0, state1, n, t.vector_ok, s);
    else
        rule_range<Element, States, ParamT, GradT, false>(param, grad, NULL, state0, state1, n, t.vector_ok, s);
}

template <typename Loops, rule_element Element, int States, int Field0, int Field1, typename ParamT>
static __device__ __forceinline__ void rule_range_for_grad(const fadam_table_entry &t, int64_t begin, int64_t end,
                                                           const fadam_loop_scalars &s, const int64_t *lean_step) {
    switch (t.grad_dtype) {
    case FADAM_FLOAT32:
        rule_range_for_master<Loops, Element, States, Field0, Field1, ParamT, float>(t, begin, end, s, lean_step);
        break;
    case FADAM_BFLOAT16:
        rule_range_for_master<Loops, Element, States, Field0, Field1, ParamT, __nv_bfloat16>(t, begin, end, s, lean_step);
        break;
    case FADAM_FLOAT16:
        rule_range_for_master<Loops, Element, States, Field0, Field1, ParamT, __half>(t, begin, end, s, lean_step);
        break;
    default: break; /* the host encoder rejects other dtypes */
    }
}

template <typename Loops, rule_element Element, int States, int Field0, int Field1>
static __device__ __forceinline__ void rule_range_for_param(const fadam_table_entry &t, int64_t begin, int64_t end,
                                                            const fadam_loop_scalars &s, const int64_t *lean_step) {
    switch (t.param_dtype) {
    case FADAM_FLOAT32: rule_range_for_grad<Loops, Element, States, Field0, Field1, float>(t, begin, end, s, lean_step); break;
    case FADAM_BFLOAT16:
        rule_range_for_grad<Loops, Element, States, Field0, Field1, __nv_bfloat16>(t, begin, end, s, lean_step);
        break;
    case FADAM_FLOAT16: rule_range_for_grad<Loops, Element, States, Field0, Field1, __half>(t, begin, end, s, lean_step); break;
    default: break;
    }
}

/* Two instantiations (fp32_loops, all_loops above; launchers.h: fadam_step_kernel), picked per launch
 * from the table's header flag that the encoder sets (fadam_adam_step_kernels):
 *   adam_step_kernel<fp32_loops>: 60 registers, no spills: 4 blocks of 256 per SM (47 and 5 blocks before
 *     Lion's loops joined Adam's in this kernel; bench/sass_budget.txt says why); every table without a
 *     lean tensor, so nearly every model.
 *   adam_step_kernel<all_loops>: 78 registers (the lean loop's), 3 blocks per SM; tables with a lean tensor.
 * What the loops need besides their data stays in
 * uniform registers where ptxas can: the scalars come from one place, shared memory (indexing the
 * by-value arguments took more registers), and the warp index is broadcast by a shuffle (ptxas cannot
 * tell threadIdx.x / 32 is warp-uniform). A minimum of 5 blocks in the launch bounds gets 48 registers
 * but a 16-byte stack frame, and costs an instruction per element in every loop. */
template <typename Loops>
__global__ void __launch_bounds__(FADAM_BLOCK_THREADS) adam_step_kernel(const fadam_step_kernel_args args) {
    __shared__ fadam_group_scalars group_scalars[FADAM_MAX_GROUPS];
    /* the t being applied (as fadam_scalars_for_step picks it): the lean loops' random bits; read there only */
    __shared__ int64_t lean_step;
    const fadam_table_header *table = args.table;

    /* The encoder's flag decides which instantiation a table belongs to; the other leaves at once (so
     * that fadam_step_table, which cannot read the device table, may launch both). */
    if (((table->flags & FADAM_TABLE_LEAN) != 0) != Loops::lean) return;

    /* A fused step whose gradients held Inf/NaN changes nothing (the whole block leaves together). */
    if (args.state && args.state->counters.skipped) return;
    if (args.found_inf && *args.found_inf != 0.0f) return; /* the caller's overflow flag (fadam_step_scaling) */
    /* The groups' scalars, once per block, into shared memory: from the host (scalars_given), from the
     * norm kernel (the fused step's device_scalars), or computed here when t or lr live in device
     * memory (a replayed CUDA graph). One source for the chunk loop keeps its registers down. */
    for (int g = threadIdx.x; g < args.n_groups; g += blockDim.x) {
        group_scalars[g] = args.scalars_given    ? args.scalars[g]
                           : args.device_scalars ? args.device_scalars[g]
                                                 : fadam_scalars_for_step(&args.groups[g], g, args.step,
                                                                          args.device_step, args.device_lr, args.state);
        /* the caller's multiplier (fadam_step_scaling), folded in here: the loops stay as they are */
        if (args.grad_multiplier) group_scalars[g].grad_scale = group_scalars[g].grad_scale * *args.grad_multiplier;
    }
    if (threadIdx.x == 0)
        lean_step = args.state ? args.state->counters.step : args.device_step ? *args.device_step : args.step;
    __syncthreads();

    const fadam_table_entry *entries = fadam_table_entries(table);
    const int64_t n_tensors = table->n_tensors, chunk_elems = table->chunk_elems;
    int64_t chunk, chunk_end, tensor = 0;
    fadam_warp_chunks(table->n_chunks, &chunk, &chunk_end);
    if (chunk < chunk_end) tensor = fadam_warp_find_tensor(entries, n_tensors, chunk);
    fadam_prefetch_entries(entries, n_tensors, tensor, chunk_end - chunk + 1, threadIdx.x % 32, 32);
    for (; chunk < chunk_end; chunk++) {
        tensor = fadam_advance_tensor(entries, n_tensors, tensor, chunk);
        /* A copy in registers: stores through the tensor's pointers could alias the table otherwise. */
        const fadam_table_entry t = entries[tensor];
        if (t.group < 0 || t.group >= args.n_groups) continue;
        const fadam_loop_scalars s = fadam_loop_scalars_of(&group_scalars[t.group]);
        const int64_t begin = (chunk - t.first_chunk) * chunk_elems;
        const int64_t end = begin + chunk_elems < t.numel ? begin + chunk_elems : t.numel;
        /* The group's rule, from the list (rules.h): a table made without the groups (fadam_table_encode)
         * may lack a state the rule keeps; such a tensor is left as it is. */
        switch (group_scalars[t.group].rule) {
#define RULE_CASE(mode, id, name, n_states, field0, field1, scalars, check, element)                          \
    case mode:                                                                                                 \
        if (t.states[FADAM_SLOT_OF_FIELD(field0)].data &&                                                      \
            (n_states < 2 || t.states[FADAM_SLOT_OF_FIELD((field1) < 0 ? 0 : (field1))].data))                  \
            rule_range_for_param<Loops, element, n_states, field0, field1>(t, begin, end, s, &lean_step);            \
        break;
            FADAM_RULES(RULE_CASE)
#undef RULE_CASE
        default: break;
        }
    }
}

/* The instantiations by fadam_step_kernel id (kernels/launchers.h). */
static void (*const step_kernels[FADAM_STEP_KERNEL_COUNT])(const fadam_step_kernel_args) = {
    adam_step_kernel<fp32_loops>, adam_step_kernel<all_loops>};

#if defined(FADAM_EMULATION)
/* The tests' view of the choice: a bit per fadam_step_kernel launched by the last fadam_launch_adam_step*. */
static unsigned fadam_emul_step_kernels_launched;
#endif

extern "C" unsigned fadam_adam_step_kernels(uint32_t table_flags) {
    const unsigned fp32 = 1u << FADAM_STEP_KERNEL_FP32, lean = 1u << FADAM_STEP_KERNEL_LEAN;
    if (!(table_flags & FADAM_TABLE_KNOWN)) return fp32 | lean; /* each leaves a table not of its kind */
    return table_flags & FADAM_TABLE_LEAN ? lean : fp32;
}

extern "C" cudaError_t fadam_launch_adam_step_kernel(const fadam_step_kernel_args *args, int kernel,
                                                     unsigned grid_blocks, unsigned block_threads, cudaStream_t stream) {
    fadam_step_kernel_args a;
    if (kernel < 0 || kernel >= FADAM_STEP_KERNEL_COUNT) return cudaErrorInvalidValue;
#if defined(FADAM_EMULATION)
    fadam_emul_step_kernels_launched |= 1u << kernel;
#endif
    if (grid_blocks == 0) return cudaSuccess; /* nothing to update */
    if (block_threads == 0 || block_threads % 32 || block_threads > FADAM_BLOCK_THREADS) return cudaErrorInvalidValue;
    if (args->n_groups < 0 || args->n_groups > FADAM_MAX_GROUPS) return cudaErrorInvalidValue;
    a = *args;
    a.scalars_given = 0;
    /* t and lr known here: the scalars once, on the host */
    if (!a.state && !a.device_step && !a.device_lr && !a.device_scalars) {
        fadam_group_scalars scalars[FADAM_MAX_GROUPS];
        for (int g = 0; g < a.n_groups; g++)
            scalars[g] = fadam_compute_group_scalars(&a.groups[g], a.groups[g].lr, a.step);
        memcpy(a.scalars, scalars, (size_t)a.n_groups * sizeof scalars[0]);
        a.scalars_given = 1;
    }
    FADAM_LAUNCH(step_kernels[kernel], dim3(grid_blocks), dim3(block_threads), 0, stream, a);
    return FADAM_LAUNCH_ERROR();
}

extern "C" cudaError_t fadam_launch_adam_step(const fadam_step_kernel_args *args, unsigned grid_blocks,
                                              unsigned block_threads, cudaStream_t stream) {
    const unsigned kernels = fadam_adam_step_kernels(args->table_flags);
#if defined(FADAM_EMULATION)
    fadam_emul_step_kernels_launched = 0;
#endif
    for (int k = 0; k < FADAM_STEP_KERNEL_COUNT; k++)
        if (kernels & 1u << k) {
            const cudaError_t error = fadam_launch_adam_step_kernel(args, k, grid_blocks, block_threads, stream);
            if (error != cudaSuccess) return error;
        }
    return cudaSuccess;
}

extern "C" cudaError_t fadam_adam_step_blocks_per_sm(int kernel, unsigned block_threads, int *blocks) {
    if (kernel < 0 || kernel >= FADAM_STEP_KERNEL_COUNT) return cudaErrorInvalidValue;
    return cudaOccupancyMaxActiveBlocksPerMultiprocessor(blocks, step_kernels[kernel], (int)block_threads, 0);
}
