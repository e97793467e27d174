/* model_shapes.h - the parameter sets every benchmark runs, in one place: real model shapes as lists of
 * tensors. Used by adam_step_bench.cu and cpu_bench.c; torch_bench.py reads the same lists from
 * `cpu_bench --dump-shapes`, so Python never keeps a copy of its own.
 *
 * Each tensor has a numel, a weight-decay group (1 = no decay: biases and norm weights, as LLM recipes
 * do) and the transformer layer it belongs to (-1 for embeddings, head, final norm), so a set that
 * does not fit in memory can drop its last layers and say so. Plain C99, header only. */
#ifndef FADAM_BENCH_MODEL_SHAPES_H
#define FADAM_BENCH_MODEL_SHAPES_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BENCH_NAME_LENGTH 48

typedef struct bench_shape {
    char name[BENCH_NAME_LENGTH];
    int64_t numel;
    int no_decay; /* 1: group 1 (weight_decay 0) */
    int layer;    /* transformer layer, -1 outside the layers */
} bench_shape;

typedef struct bench_model {
    char name[32];        /* e.g. "gpt2-124M" */
    bench_shape *tensors; /* malloc'd; bench_model_free releases it */
    int64_t n_tensors;
    int64_t capacity;
    int n_layers;         /* layers present (after bench_model_keep_layers) */
    int full_layers;      /* layers of the real model */
    int64_t divisor;      /* every numel divided by this (CPU scale-down); 1 = real size */
} bench_model;

/* The sets of the issue, in the order the tables print them. */
typedef enum bench_set {
    BENCH_GPT2_124M = 0,  /* 148 tensors */
    BENCH_GPT2_1_5B,      /* 580 tensors */
    BENCH_LLAMA3_8B,      /* 291 tensors; the GPU bench keeps as many layers as fit */
    BENCH_MANY_SMALL,     /* 10,000 tensors of 100..499 elements: the launch-bound case */
    BENCH_ONE_HUGE,       /* one tensor of 2^30 elements */
    BENCH_N_SETS
} bench_set;

static const char *const bench_set_names[BENCH_N_SETS] = {"gpt2-124M", "gpt2-1.5B", "llama3-8B", "10k-small",
                                                          "one-2^30"};

/* CPU scale-down: every numel divided by this (tensor count and proportions kept), so one CPU step
 * is tens of milliseconds: 15.5M, 24.4M, 31.4M, 3.0M and 16.8M elements. */
static const int64_t bench_cpu_divisors[BENCH_N_SETS] = {8, 64, 256, 1, 64};

static inline void bench_model_add(bench_model *model, const char *name, int64_t numel, int no_decay, int layer) {
    bench_shape *shape;
    if (model->n_tensors == model->capacity) {
        model->capacity = model->capacity ? 2 * model->capacity : 256;
        model->tensors = (bench_shape *)realloc(model->tensors, (size_t)model->capacity * sizeof(bench_shape));
        if (!model->tensors) {
            fprintf(stderr, "model_shapes: out of host memory\n");
            exit(2);
        }
    }
    shape = &model->tensors[model->n_tensors++];
    snprintf(shape->name, sizeof shape->name, "%s", name);
    shape->numel = numel;
    shape->no_decay = no_decay;
    shape->layer = layer;
}

/* GPT-2: tied token embedding, learned positions, pre-LayerNorm blocks with biases, final LayerNorm. */
static inline void bench_model_gpt2(bench_model *model, int64_t vocab, int64_t context, int64_t d, int layers) {
    char name[BENCH_NAME_LENGTH];
    int l;
    bench_model_add(model, "wte", vocab * d, 0, -1);
    bench_model_add(model, "wpe", context * d, 0, -1);
    for (l = 0; l < layers; l++) {
#define GPT2_TENSOR(suffix, numel, no_decay)                         \
    do {                                                             \
        snprintf(name, sizeof name, "h.%d.%s", l, suffix);           \
        bench_model_add(model, name, (numel), (no_decay), l);        \
    } while (0)
        GPT2_TENSOR("ln_1.weight", d, 1);
        GPT2_TENSOR("ln_1.bias", d, 1);
        GPT2_TENSOR("attn.c_attn.weight", d * 3 * d, 0);
        GPT2_TENSOR("attn.c_attn.bias", 3 * d, 1);
        GPT2_TENSOR("attn.c_proj.weight", d * d, 0);
        GPT2_TENSOR("attn.c_proj.bias", d, 1);
        GPT2_TENSOR("ln_2.weight", d, 1);
        GPT2_TENSOR("ln_2.bias", d, 1);
        GPT2_TENSOR("mlp.c_fc.weight", d * 4 * d, 0);
        GPT2_TENSOR("mlp.c_fc.bias", 4 * d, 1);
        GPT2_TENSOR("mlp.c_proj.weight", 4 * d * d, 0);
        GPT2_TENSOR("mlp.c_proj.bias", d, 1);
#undef GPT2_TENSOR
    }
    bench_model_add(model, "ln_f.weight", d, 1, -1);
    bench_model_add(model, "ln_f.bias", d, 1, -1);
    model->n_layers = model->full_layers = layers;
}

/* Llama 3: untied embedding and head, RMSNorm weights (no biases), grouped-query attention, SwiGLU. */
static inline void bench_model_llama(bench_model *model, int64_t vocab, int64_t d, int layers, int64_t ffn, int64_t kv_dim) {
    char name[BENCH_NAME_LENGTH];
    int l;
    bench_model_add(model, "tok_embeddings.weight", vocab * d, 0, -1);
    for (l = 0; l < layers; l++) {
#define LLAMA_TENSOR(suffix, numel, no_decay)                        \
    do {                                                             \
        snprintf(name, sizeof name, "layers.%d.%s", l, suffix);      \
        bench_model_add(model, name, (numel), (no_decay), l);        \
    } while (0)
        LLAMA_TENSOR("attention_norm.weight", d, 1);
        LLAMA_TENSOR("attention.wq.weight", d * d, 0);
        LLAMA_TENSOR("attention.wk.weight", kv_dim * d, 0);
        LLAMA_TENSOR("attention.wv.weight", kv_dim * d, 0);
        LLAMA_TENSOR("attention.wo.weight", d * d, 0);
        LLAMA_TENSOR("ffn_norm.weight", d, 1);
        LLAMA_TENSOR("feed_forward.w1.weight", ffn * d, 0);
        LLAMA_TENSOR("feed_forward.w3.weight", ffn * d, 0);
        LLAMA_TENSOR("feed_forward.w2.weight", d * ffn, 0);
#undef LLAMA_TENSOR
    }
    bench_model_add(model, "norm.weight", d, 1, -1);
    bench_model_add(model, "output.weight", vocab * d, 0, -1);
    model->n_layers = model->full_layers = layers;
}

/* 10,000 tensors of 100..499 elements (mean ~300), most not a multiple of 4: per-tensor overhead
 * dominates. Every tenth is a "bias" (no decay) so both groups appear. */
static inline void bench_model_many_small(bench_model *model, int count) {
    char name[BENCH_NAME_LENGTH];
    int i;
    for (i = 0; i < count; i++) {
        snprintf(name, sizeof name, "small.%d", i);
        bench_model_add(model, name, 100 + ((int64_t)i * 7919) % 400, i % 10 == 9, -1);
    }
}

/* Builds set `set` at real size (divisor 1) or scaled down (every numel / divisor, rounded up). */
static inline void bench_model_build(bench_model *model, bench_set set, int64_t divisor) {
    int64_t i;
    memset(model, 0, sizeof *model);
    snprintf(model->name, sizeof model->name, "%s", bench_set_names[set]);
    switch (set) {
    case BENCH_GPT2_124M: bench_model_gpt2(model, 50257, 1024, 768, 12); break;
    case BENCH_GPT2_1_5B: bench_model_gpt2(model, 50257, 1024, 1600, 48); break;
    case BENCH_LLAMA3_8B: bench_model_llama(model, 128256, 4096, 32, 14336, 1024); break;
    case BENCH_MANY_SMALL: bench_model_many_small(model, 10000); break;
    case BENCH_ONE_HUGE: bench_model_add(model, "huge", (int64_t)1 << 30, 0, -1); break;
    default: break;
    }
    model->divisor = divisor < 1 ? 1 : divisor;
    for (i = 0; i < model->n_tensors; i++)
        model->tensors[i].numel = (model->tensors[i].numel + model->divisor - 1) / model->divisor;
}

/* Drops every tensor of layer >= layers (the set's non-layer tensors stay). */
static inline void bench_model_keep_layers(bench_model *model, int layers) {
    int64_t i, kept = 0;
    for (i = 0; i < model->n_tensors; i++)
        if (model->tensors[i].layer < layers) model->tensors[kept++] = model->tensors[i];
    model->n_tensors = kept;
    if (layers < model->n_layers) model->n_layers = layers;
}

static inline int64_t bench_model_elements(const bench_model *model) {
    int64_t i, total = 0;
    for (i = 0; i < model->n_tensors; i++) total += model->tensors[i].numel;
    return total;
}

/* Elements of layer 0 (every layer of these models has the same size), 0 if the set has no layers. */
static inline int64_t bench_model_layer_elements(const bench_model *model) {
    int64_t i, total = 0;
    for (i = 0; i < model->n_tensors; i++)
        if (model->tensors[i].layer == 0) total += model->tensors[i].numel;
    return total;
}

static inline void bench_model_free(bench_model *model) {
    free(model->tensors);
    memset(model, 0, sizeof *model);
}

/* "gpt2-124M", "llama3-8B (12/32 layers)" or "gpt2-1.5B /64" for a scaled-down set. */
static inline void bench_model_label(const bench_model *model, char *out, size_t size) {
    int n = snprintf(out, size, "%s", model->name);
    if (n < 0 || (size_t)n >= size) return;
    if (model->n_layers < model->full_layers)
        n += snprintf(out + n, size - (size_t)n, " (%d/%d layers)", model->n_layers, model->full_layers);
    if (n < 0 || (size_t)n >= size) return;
    if (model->divisor > 1) snprintf(out + n, size - (size_t)n, " /%lld", (long long)model->divisor);
}

/* The three precision configurations of every set, with the bytes a step must move per element
 * (docs/NUMERICS.md): fp32 everything; bf16 params with an fp32 master and bf16 or fp32 grads. */
typedef struct bench_precision {
    const char *label;
    int param_bf16; /* 1: bf16 param with an fp32 master; 0: fp32 param, its own master */
    int grad_bf16;
    int bytes_per_element;
} bench_precision;

#define BENCH_N_PRECISIONS 3
static const bench_precision bench_precisions[BENCH_N_PRECISIONS] = {
    {"fp32", 0, 0, 28},
    {"bf16+master, bf16 grad", 1, 1, 28},
    {"bf16+master, fp32 grad", 1, 0, 30},
};

/* Device or host bytes one element occupies: param + grad + master + m + v. */
static inline int bench_precision_footprint(const bench_precision *precision) {
    return (precision->param_bf16 ? 2 + 4 : 4) + (precision->grad_bf16 ? 2 : 4) + 8;
}

/* Writes every set as TSV lines "set<TAB>divisor<TAB>index<TAB>name<TAB>numel<TAB>no_decay<TAB>layer":
 * real size and the CPU scale-down. torch_bench.py reads this. */
static inline void bench_dump_shapes(FILE *out) {
    int s;
    fprintf(out, "# set\tdivisor\tindex\tname\tnumel\tno_decay\tlayer\n");
    for (s = 0; s < BENCH_N_SETS; s++) {
        int pass;
        for (pass = 0; pass < 2; pass++) {
            bench_model model;
            int64_t i, divisor = pass == 0 ? 1 : bench_cpu_divisors[s];
            if (pass == 1 && divisor == 1) continue;
            bench_model_build(&model, (bench_set)s, divisor);
            for (i = 0; i < model.n_tensors; i++)
                fprintf(out, "%s\t%lld\t%lld\t%s\t%lld\t%d\t%d\n", model.name, (long long)divisor, (long long)i,
                        model.tensors[i].name, (long long)model.tensors[i].numel, model.tensors[i].no_decay,
                        model.tensors[i].layer);
            bench_model_free(&model);
        }
    }
}

#endif
