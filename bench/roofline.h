/* roofline.h - bytes one step moves per element (read + write): the roofline of adam_step_bench.cu, in
 * one table that copies kernels/adam_step.cu's opening comment line for line. tests/test_bench_roofline.c
 * (make test) reads that comment and fails when a line and its row disagree, when a row has no line,
 * or when a line of the form "NAME:  R + W = T B" has no row. Plain C99, header only. */
#ifndef FADAM_BENCH_ROOFLINE_H
#define FADAM_BENCH_ROOFLINE_H

/* One line of the kernel comment's list. */
typedef struct bench_roofline_row {
    const char *section; /* the comment's block: "Adam" (the first list), "Lean" or "Lion" */
    const char *layout;  /* the line's text before its colon, as the comment writes it */
    int read, write;     /* bytes per element */
    int scales;          /* 1: "(+ 16/256)", two fp32 8-bit scales per 256 elements, read and written */
} bench_roofline_row;

enum {
    BENCH_ROOF_FP32,                   /* fp32 param and grad, no master */
    BENCH_ROOF_BF16_MASTER,            /* bf16 param and grad, fp32 master */
    BENCH_ROOF_BF16_MASTER_FP32_GRAD,  /* bf16 param, fp32 grad, fp32 master */
    BENCH_ROOF_REMAINDER,              /* lean layouts: bf16 param and grad, AdamW */
    BENCH_ROOF_BF16_MOMENTS,
    BENCH_ROOF_INT8_MOMENTS,
    BENCH_ROOF_REMAINDER_BF16_MOMENTS,
    BENCH_ROOF_REMAINDER_INT8_MOMENTS,
    BENCH_ROOF_LION_FP32,              /* Lion: fp32 param and grad */
    BENCH_ROOF_LION_BF16_MASTER,       /* Lion: bf16 param and grad, fp32 master */
    BENCH_N_ROOFLINE
};

static const bench_roofline_row bench_roofline[BENCH_N_ROOFLINE] = {
    {"Adam", "fp32 param, fp32 grad, no master", 16, 12, 0},
    {"Adam", "16-bit param, 16-bit grad, fp32 master", 14, 14, 0},
    {"Adam", "16-bit param, fp32 grad, fp32 master", 16, 14, 0},
    {"Lean", "16-bit remainder master, fp32 moments", 14, 12, 0},
    {"Lean", "fp32 master, bf16 moments (SR)", 10, 10, 0},
    {"Lean", "fp32 master, 8-bit moments", 8, 8, 1},
    {"Lean", "remainder + bf16 moments", 10, 8, 0},
    {"Lean", "remainder + 8-bit moments", 8, 6, 1},
    {"Lion", "fp32 param, fp32 grad, no master", 12, 8, 0},
    {"Lion", "16-bit param, 16-bit grad, fp32 master", 10, 10, 0},
};

/* Bytes per element of a row: read + write, plus the 8-bit scales' 16/256. */
static inline double bench_roofline_bytes(int row) {
    return (double)(bench_roofline[row].read + bench_roofline[row].write) +
           (bench_roofline[row].scales ? 16.0 / 256.0 : 0.0);
}

#endif
