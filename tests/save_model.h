/* save_model.h - for the fadam_save tests: a CPU optimizer of two tensors (fp32 and bf16 params),
 * versions of it told apart by the steps taken, a bitwise comparison of everything a checkpoint
 * holds, and a look at what a save left in a directory. */
#ifndef FADAM_TESTS_SAVE_MODEL_H
#define FADAM_TESTS_SAVE_MODEL_H

#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "fusedadam.h"

typedef struct save_model {
    fadam_optimizer *opt;
    float *param32, *grad32;
    uint16_t *param16, *grad16;
    int64_t n32, n16;
} save_model;

/* Uniform in [-1, 1) as bf16 bits: cheap enough for tens of millions of values. */
static uint16_t save_model_bf16(uint64_t *rng) {
    float value = (float)(check_rng_uniform(rng) * 2.0 - 1.0);
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    return (uint16_t)(bits >> 16);
}

static void save_model_fill(save_model *m, uint64_t seed) {
    uint64_t rng = seed;
    int64_t i;
    for (i = 0; i < m->n32; i++) m->grad32[i] = (float)(check_rng_uniform(&rng) * 2.0 - 1.0);
    for (i = 0; i < m->n16; i++) m->grad16[i] = save_model_bf16(&rng);
}

static void save_model_destroy(save_model *m) {
    fadam_destroy(m->opt);
    free(m->param32);
    free(m->grad32);
    free(m->param16);
    free(m->grad16);
    memset(m, 0, sizeof *m);
}

/* Registers "w.fp32" (n32 elements) and "w.bf16" (n16) with params from `seed`; 1 on success. */
static int save_model_create(save_model *m, int64_t n32, int64_t n16, uint64_t seed) {
    uint64_t rng = seed;
    int64_t i;
    memset(m, 0, sizeof *m);
    m->n32 = n32, m->n16 = n16;
    m->param32 = (float *)aligned_alloc(256, ((size_t)n32 * 4 + 256) / 256 * 256);
    m->grad32 = (float *)aligned_alloc(256, ((size_t)n32 * 4 + 256) / 256 * 256);
    m->param16 = (uint16_t *)aligned_alloc(256, ((size_t)n16 * 2 + 256) / 256 * 256);
    m->grad16 = (uint16_t *)aligned_alloc(256, ((size_t)n16 * 2 + 256) / 256 * 256);
    if (!m->param32 || !m->grad32 || !m->param16 || !m->grad16) return 0;
    for (i = 0; i < n32; i++) m->param32[i] = (float)(check_rng_uniform(&rng) * 2.0 - 1.0);
    for (i = 0; i < n16; i++) m->param16[i] = save_model_bf16(&rng);
    return fadam_create(&m->opt, FADAM_DEVICE_CPU, 0, NULL, NULL) == FADAM_SUCCESS &&
           fadam_add_tensor(m->opt, "w.fp32", m->param32, m->grad32, n32, FADAM_FLOAT32, FADAM_FLOAT32, 0, NULL) ==
               FADAM_SUCCESS &&
           fadam_add_tensor(m->opt, "w.bf16", m->param16, m->grad16, n16, FADAM_BFLOAT16, FADAM_BFLOAT16, 0, NULL) ==
               FADAM_SUCCESS &&
           fadam_finalize(m->opt, NULL) == FADAM_SUCCESS;
}

/* Steps first..last, each with gradients drawn from `seed` and the step number. */
static int save_model_train(save_model *m, int first, int last, uint64_t seed) {
    int s;
    for (s = first; s <= last; s++) {
        save_model_fill(m, seed ^ ((uint64_t)s * 0xD1B54A32D192ED03ull));
        if (fadam_step(m->opt, NULL) != FADAM_SUCCESS) return 0;
    }
    return 1;
}

/* "" when a and b hold the same step, moments and master weights, bit for bit; else what differs. */
static const char *save_model_difference(const save_model *a, const save_model *b) {
    static const char *const what[3] = {"master", "exp_avg", "exp_avg_sq"};
    int64_t step_a = -1, step_b = -2, index;
    int kind;
    fadam_get_step(a->opt, &step_a);
    fadam_get_step(b->opt, &step_b);
    if (step_a != step_b) return "step";
    for (index = 0; index < 2; index++) {
        float *sa[3] = {NULL, NULL, NULL}, *sb[3] = {NULL, NULL, NULL};
        size_t bytes = (size_t)(index == 0 ? a->n32 : a->n16) * sizeof(float);
        fadam_get_state(a->opt, index, &sa[0], &sa[1], &sa[2]);
        fadam_get_state(b->opt, index, &sb[0], &sb[1], &sb[2]);
        for (kind = 0; kind < 3; kind++) {
            if (!sa[kind] && !sb[kind]) continue;
            if (!sa[kind] || !sb[kind] || memcmp(sa[kind], sb[kind], bytes) != 0) return what[kind];
        }
    }
    return "";
}

/* Entries of `directory` other than ".", ".." and `keep` (NULL: none kept); the first goes to
 * first (optional). -1 when the directory cannot be read. */
static int save_directory_extras(const char *directory, const char *keep, char *first, size_t first_size) {
    DIR *listing = opendir(directory);
    struct dirent *item;
    int count = 0;
    if (first && first_size) first[0] = '\0';
    if (!listing) return -1;
    while ((item = readdir(listing)) != NULL) {
        if (!strcmp(item->d_name, ".") || !strcmp(item->d_name, "..") || (keep && !strcmp(item->d_name, keep)))
            continue;
        if (count++ == 0 && first && first_size) snprintf(first, first_size, "%s", item->d_name);
    }
    closedir(listing);
    return count;
}

/* Removes `directory` with the files in it (what a failed test may have left). */
static void save_remove_directory(const char *directory) {
    DIR *listing = opendir(directory);
    struct dirent *item;
    char path[1024];
    if (!listing) return;
    while ((item = readdir(listing)) != NULL) {
        if (!strcmp(item->d_name, ".") || !strcmp(item->d_name, "..")) continue;
        snprintf(path, sizeof path, "%s/%s", directory, item->d_name);
        if (remove(path) != 0) save_remove_directory(path);
    }
    closedir(listing);
    remove(directory);
}

/* The whole file, or NULL (size 0). */
static unsigned char *save_read_file(const char *path, size_t *size) {
    FILE *file = fopen(path, "rb");
    unsigned char *bytes = NULL;
    long length;
    *size = 0;
    if (!file) return NULL;
    if (fseek(file, 0, SEEK_END) == 0 && (length = ftell(file)) >= 0 && fseek(file, 0, SEEK_SET) == 0) {
        bytes = (unsigned char *)malloc((size_t)length + 1);
        if (bytes && fread(bytes, 1, (size_t)length, file) == (size_t)length) *size = (size_t)length;
    }
    fclose(file);
    return bytes;
}

#endif
