/* checkpoint_metadata.c - the __metadata__ keys as one table: each key's name, type, where its value
 * lives in fadam_checkpoint_values (or fadam_hparams for a group's), how wide it may grow, and its
 * range. fadam_metadata_write formats every key from it; fadam_metadata_read parses and checks every
 * key from it, in table order (the order of the load's messages). */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint_metadata.h"
#include "number_text.h"

/* Values that change between saves (step, hyperparameters, counters) are counted at their widest,
 * the difference padded with spaces, so the checkpoint's size depends only on what is registered: a
 * size query stays right however the training goes on. */
#define WIDEST_INTEGER 20
#define WIDEST_FLOAT 16
#define WIDEST_WORD 7

typedef enum key_scope {
    SCOPE_FILE,  /* once */
    SCOPE_GROUP, /* "group.G." + name, per parameter group; the value in fadam_hparams */
    SCOPE_LAYOUT, /* "group.G." + name, per group whose state layout is not the default (fp32, fp32, seed 0),
                     so files of fp32 layouts stay as before; the value in fadam_state_layout */
    SCOPE_FUSED, /* when the fused step is configured */
    SCOPE_SHARD  /* when the optimizer is sharded; read by fadam_load_shards only */
} key_scope;

typedef enum key_type {
    KEY_FORMAT,        /* FADAM_CHECKPOINT_FORMAT_NAME */
    KEY_VERSION,       /* 1 or FADAM_CHECKPOINT_FORMAT_VERSION */
    KEY_CHECKSUM,      /* the version's prefix and hex digits (a zero placeholder when written) */
    KEY_INTEGER,       /* an integer in [low, high]: "NAME \"v\" is not an integer in RANGE" */
    KEY_FLOAT,         /* a finite float */
    KEY_CHOICE,        /* one of a list of words, value its index */
    KEY_COUNTER,       /* a counter in [0, high]: "__metadata__ \"NAME\" is \"v\", not an integer in [0, high]" */
    KEY_COUNTER_FLOAT, /* a float in [low, high], "nan", "inf" */
    KEY_SHARD_COUNT,   /* a count, optional */
    KEY_UNSIGNED       /* a 64-bit unsigned integer (a seed) */
} key_type;

enum {
    KEY_OPTIONAL = 1,       /* absent: left as it is (checkpoints written before it existed) */
    KEY_NAN_IF_SKIPPED = 2, /* NaN allowed when fused.skipped is 1 */
    KEY_AT_MOST_SKIPPED = 4 /* at most fused.skipped_total */
};

typedef struct metadata_key {
    const char *name;
    key_scope scope;
    key_type type;
    size_t offset;     /* of the value in fadam_checkpoint_values (fadam_hparams for SCOPE_GROUP) */
    size_t size;       /* of an integer value: 4 or 8 */
    size_t width;      /* the widest text the value may take; 0: its length never changes */
    int64_t low, high; /* KEY_INTEGER, KEY_COUNTER */
    float low_float, high_float;
    const char *range; /* the range (KEY_INTEGER, KEY_COUNTER_FLOAT) or why the limit (KEY_COUNTER), for messages */
    const char *const *choices; /* KEY_CHOICE: the words for 0, 1, ..., then NULL */
    int flags;
} metadata_key;

/* The group mode's words, indexed by fadam_mode: the rule list's names (kernels/rules.h). */
#define RULE_WORD_(mode, id, name, ...) name,
static const char *const mode_words[FADAM_RULE_COUNT + 1] = {FADAM_RULES(RULE_WORD_) NULL};
#undef RULE_WORD_
static const char *const bool_words[3] = {"false", "true", NULL};
/* fadam_master_format and fadam_moment_format, indexed by their values. */
static const char *const master_words[3] = {"fp32", "remainder", NULL};
static const char *const moment_words[4] = {"fp32", "bf16", "int8", NULL};

static int choice_count(const char *const *choices) {
    int n = 0;
    while (choices[n]) n++;
    return n;
}

#define VALUE(field) offsetof(fadam_checkpoint_values, field), sizeof(((fadam_checkpoint_values *)0)->field)
#define HPARAM(field) offsetof(fadam_hparams, field), sizeof(((fadam_hparams *)0)->field)
#define LAYOUT(field) offsetof(fadam_state_layout, field), sizeof(((fadam_state_layout *)0)->field)
#define CANNOT_ADVANCE " (a counter at INT64_MAX cannot advance)"

static const metadata_key metadata_keys[] = {
    {"format", SCOPE_FILE, KEY_FORMAT, 0, 0, 0, 0, 0, 0, 0, NULL, NULL, 0},
    {"format_version", SCOPE_FILE, KEY_VERSION, VALUE(format_version), 0, 0, 0, 0, 0, NULL, NULL, 0},
    {"checksum", SCOPE_FILE, KEY_CHECKSUM, VALUE(checksum), 0, 0, 0, 0, 0, NULL, NULL, 0},
    /* INT64_MAX is refused too: the next step would overflow. */
    {"step", SCOPE_FILE, KEY_INTEGER, VALUE(step), WIDEST_INTEGER, 0, INT64_MAX - 1, 0, 0,
     "[0, 2^63-2] (a step counter at INT64_MAX cannot advance)", NULL, 0},
    {"n_groups", SCOPE_FILE, KEY_INTEGER, VALUE(n_groups), 0, 1, FADAM_MAX_GROUPS, 0, 0, NULL, NULL, 0},
    {"lr", SCOPE_GROUP, KEY_FLOAT, HPARAM(lr), WIDEST_FLOAT, 0, 0, 0, 0, NULL, NULL, 0},
    {"beta1", SCOPE_GROUP, KEY_FLOAT, HPARAM(beta1), WIDEST_FLOAT, 0, 0, 0, 0, NULL, NULL, 0},
    {"beta2", SCOPE_GROUP, KEY_FLOAT, HPARAM(beta2), WIDEST_FLOAT, 0, 0, 0, 0, NULL, NULL, 0},
    {"eps", SCOPE_GROUP, KEY_FLOAT, HPARAM(eps), WIDEST_FLOAT, 0, 0, 0, 0, NULL, NULL, 0},
    {"weight_decay", SCOPE_GROUP, KEY_FLOAT, HPARAM(weight_decay), WIDEST_FLOAT, 0, 0, 0, 0, NULL, NULL, 0},
    {"mode", SCOPE_GROUP, KEY_CHOICE, HPARAM(mode), WIDEST_WORD, 0, 0, 0, 0, NULL, mode_words, 0},
    {"bias_correction", SCOPE_GROUP, KEY_CHOICE, HPARAM(bias_correction), WIDEST_WORD, 0, 0, 0, 0, NULL, bool_words, 0},
    {"maximize", SCOPE_GROUP, KEY_CHOICE, HPARAM(maximize), WIDEST_WORD, 0, 0, 0, 0, NULL, bool_words, 0},
    /* A group's state layout: what its entries hold and what a conversion to another layout lost. */
    {"master_format", SCOPE_LAYOUT, KEY_CHOICE, LAYOUT(master), 0, 0, 0, 0, 0, NULL, master_words, KEY_OPTIONAL},
    {"moment_format", SCOPE_LAYOUT, KEY_CHOICE, LAYOUT(moments), 0, 0, 0, 0, 0, NULL, moment_words, KEY_OPTIONAL},
    {"seed", SCOPE_LAYOUT, KEY_UNSIGNED, LAYOUT(seed), 0, 0, 0, 0, 0, NULL, NULL, KEY_OPTIONAL},
    /* The fused step's counters: each a value the fused step itself can leave behind. A loaded 0,
     * negative or NaN loss scale would skip or flip every later step; a counter at INT64_MAX would
     * overflow at the next one. */
    {"fused.step", SCOPE_FUSED, KEY_COUNTER, VALUE(fused.step), WIDEST_INTEGER, 0, INT64_MAX - 1, 0, 0, CANNOT_ADVANCE,
     NULL, 0},
    {"fused.skipped_total", SCOPE_FUSED, KEY_COUNTER, VALUE(fused.skipped_total), WIDEST_INTEGER, 0, INT64_MAX - 1, 0,
     0, CANNOT_ADVANCE, NULL, 0},
    {"fused.skipped", SCOPE_FUSED, KEY_COUNTER, VALUE(fused.skipped), WIDEST_INTEGER, 0, 1, 0, 0, "", NULL, 0},
    /* +Inf: a finite norm past float's range; NaN: an Inf/NaN gradient, which skipped the step. */
    {"fused.grad_norm", SCOPE_FUSED, KEY_COUNTER_FLOAT, VALUE(fused.grad_norm), WIDEST_FLOAT, 0, 0, 0.0f,
     __builtin_inff(), NULL, NULL, KEY_NAN_IF_SKIPPED},
    {"fused.clip_coef", SCOPE_FUSED, KEY_COUNTER_FLOAT, VALUE(fused.clip_coef), WIDEST_FLOAT, 0, 0, 0.0f, 1.0f,
     "in [0, 1]", NULL, 0},
    {"fused.lr_scale", SCOPE_FUSED, KEY_COUNTER_FLOAT, VALUE(fused.lr_scale), WIDEST_FLOAT, 0, 0, 0.0f, 1.0f,
     "in [0, 1]", NULL, 0},
    {"fused.loss_scale", SCOPE_FUSED, KEY_COUNTER_FLOAT, VALUE(fused.loss_scale), WIDEST_FLOAT, 0, 0, 0x1p-126f,
     0x1.fffffep127f, "a finite number >= 2^-126 (the loss scale divides every gradient)", NULL, 0},
    {"fused.good_steps", SCOPE_FUSED, KEY_COUNTER, VALUE(fused.good_steps), WIDEST_INTEGER, 0, INT32_MAX - 1, 0, 0, "",
     NULL, 0},
    {"fused.skipped_at_min_scale", SCOPE_FUSED, KEY_COUNTER, VALUE(fused.skipped_at_min_scale), WIDEST_INTEGER, 0,
     INT64_MAX - 1, 0, 0, " (it counts some of fused.skipped_total)", NULL, KEY_OPTIONAL | KEY_AT_MOST_SKIPPED},
    {"shard.rank", SCOPE_SHARD, KEY_SHARD_COUNT, VALUE(shard_rank), 0, 0, 0, 0, 0, NULL, NULL, KEY_OPTIONAL},
    {"shard.count", SCOPE_SHARD, KEY_SHARD_COUNT, VALUE(shard_count), 0, 0, 0, 0, 0, NULL, NULL, KEY_OPTIONAL},
};
#define N_METADATA_KEYS (sizeof metadata_keys / sizeof metadata_keys[0])

/* A field added to the hyperparameters or the counters without its key here does not compile. */
_Static_assert(sizeof(fadam_hparams) == 8 * 4, "fadam_hparams changed: add its key to metadata_keys (8 group keys)");
_Static_assert(sizeof(fadam_step_counters) == 48,
               "fadam_step_counters changed: add its key to metadata_keys (9 fused keys)");
_Static_assert(N_METADATA_KEYS == 5 + 8 + 3 + 9 + 2, "metadata_keys: 5 file, 8 group, 3 layout, 9 fused and 2 shard keys");
_Static_assert(sizeof(fadam_state_layout) == 16, "fadam_state_layout changed: add its key to metadata_keys (3 layout keys)");
_Static_assert(sizeof(fadam_master_format) == sizeof(int) && sizeof(fadam_moment_format) == sizeof(int),
               "a KEY_CHOICE value is an int");
_Static_assert(sizeof(fadam_mode) == sizeof(int), "a KEY_CHOICE value is an int");

const char *const fadam_tensor_key_suffix[FADAM_N_TENSOR_KEYS] = {".param_dtype", ".group", ".offset", ".full_numel"};

const char *fadam_param_dtype_name(fadam_dtype dtype) {
    return dtype == FADAM_FLOAT32 ? "F32" : dtype == FADAM_BFLOAT16 ? "BF16" : "F16";
}

static int64_t get_integer(const void *field, size_t size) {
    return size == 8 ? *(const int64_t *)field : (int64_t) * (const int32_t *)field;
}

static void set_integer(void *field, size_t size, int64_t value) {
    if (size == 8)
        *(int64_t *)field = value;
    else
        *(int32_t *)field = (int32_t)value;
}

/* ---- writing ---- */

void fadam_metadata_list_free(fadam_metadata_list *list) {
    size_t i;
    for (i = 0; i < 2 * list->n_items; i++) free(list->items[i]);
    free(list->items);
}

static char *concatenate(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    char *joined = (char *)malloc(la + lb + 1);
    if (!joined) return NULL;
    memcpy(joined, a, la);
    memcpy(joined + la, b, lb + 1);
    return joined;
}

/* key_start + key_end = value; `width` (0: none) the widest the value may grow to. */
static void add_item(fadam_metadata_list *list, const char *key_start, const char *key_end, const char *value,
                     size_t width) {
    char *key, *copy;
    if (list->out_of_memory) return;
    if (strlen(value) < width) list->slack += width - strlen(value);
    if (list->n_items == list->capacity) {
        size_t capacity = list->capacity ? 2 * list->capacity : 64;
        char **grown = (char **)realloc(list->items, 2 * capacity * sizeof *grown);
        if (!grown) {
            list->out_of_memory = 1;
            return;
        }
        list->items = grown;
        list->capacity = capacity;
    }
    key = concatenate(key_start, key_end);
    copy = concatenate(value, "");
    if (!key || !copy) {
        free(key);
        free(copy);
        list->out_of_memory = 1;
        return;
    }
    list->items[2 * list->n_items] = key;
    list->items[2 * list->n_items + 1] = copy;
    list->n_items++;
}

/* One key's value as text; `base` is the values (or the group's hyperparameters). */
static void format_value(const metadata_key *key, const void *base, char text[FADAM_FLOAT_TEXT_MAX]) {
    const void *field = (const char *)base + key->offset;
    switch (key->type) {
    case KEY_FORMAT: snprintf(text, FADAM_FLOAT_TEXT_MAX, "%s", FADAM_CHECKPOINT_FORMAT_NAME); break;
    case KEY_VERSION: snprintf(text, FADAM_FLOAT_TEXT_MAX, "%d", FADAM_CHECKPOINT_FORMAT_VERSION); break;
    case KEY_CHECKSUM: {
        const char *prefix = fadam_checksum_prefix(FADAM_CHECKPOINT_FORMAT_VERSION);
        size_t length = strlen(prefix) + 2 * fadam_checksum_bytes(FADAM_CHECKPOINT_FORMAT_VERSION);
        memset(text, '0', length);
        memcpy(text, prefix, strlen(prefix));
        text[length] = '\0';
        break;
    }
    case KEY_FLOAT:
    case KEY_COUNTER_FLOAT: fadam_format_float(*(const float *)field, text); break;
    case KEY_CHOICE: {
        int choice = *(const int *)field;
        if (choice < 0 || choice >= choice_count(key->choices)) choice = choice != 0; /* a flag's nonzero is 1 */
        snprintf(text, FADAM_FLOAT_TEXT_MAX, "%s", key->choices[choice]);
        break;
    }
    case KEY_UNSIGNED: snprintf(text, FADAM_FLOAT_TEXT_MAX, "%llu", (unsigned long long)*(const uint64_t *)field); break;
    default: snprintf(text, FADAM_FLOAT_TEXT_MAX, "%lld", (long long)get_integer(field, key->size)); break;
    }
}

void fadam_checkpoint_values_of(const fadam_optimizer *opt, const fadam_step_counters *counters,
                                fadam_checkpoint_values *out) {
    memset(out, 0, sizeof *out);
    out->format_version = FADAM_CHECKPOINT_FORMAT_VERSION;
    out->step = opt->step;
    out->n_groups = opt->n_groups;
    memcpy(out->groups, opt->groups, sizeof out->groups);
    memcpy(out->layouts, opt->layouts, sizeof out->layouts);
    out->has_fused = counters != NULL;
    if (counters) out->fused = *counters;
    out->shard_rank = opt->shard_rank;
    out->shard_count = opt->shard_ranks;
}

void fadam_metadata_write(const fadam_optimizer *opt, const fadam_checkpoint_values *values,
                          fadam_metadata_list *list) {
    char text[FADAM_FLOAT_TEXT_MAX], prefix[32];
    size_t k;
    int64_t t;
    int g;
    for (k = 0; k < N_METADATA_KEYS; k++) {
        const metadata_key *key = &metadata_keys[k];
        if (key->scope == SCOPE_GROUP || key->scope == SCOPE_LAYOUT) {
            for (g = 0; g < values->n_groups; g++) {
                const fadam_state_layout *layout = &values->layouts[g];
                if (key->scope == SCOPE_LAYOUT && layout->master == FADAM_MASTER_FP32 &&
                    layout->moments == FADAM_MOMENT_FP32 && layout->seed == 0)
                    continue;
                snprintf(prefix, sizeof prefix, "group.%d.", g);
                format_value(key, key->scope == SCOPE_GROUP ? (const void *)&values->groups[g] : (const void *)layout,
                             text);
                add_item(list, prefix, key->name, text, key->width);
            }
            continue;
        }
        if ((key->scope == SCOPE_FUSED && !values->has_fused) || (key->scope == SCOPE_SHARD && opt->shard_ranks == 0))
            continue;
        format_value(key, values, text);
        add_item(list, key->name, "", text, key->width);
    }
    for (t = 0; t < opt->n_tensors; t++) {
        int64_t offset, full_numel;
        fadam_tensor_shard_of(opt, t, &offset, &full_numel);
        add_item(list, opt->names[t], fadam_tensor_key_suffix[FADAM_TENSOR_KEY_PARAM_DTYPE],
                 fadam_param_dtype_name(opt->tensors[t].param_dtype), 0);
        snprintf(text, sizeof text, "%d", opt->tensors[t].group);
        add_item(list, opt->names[t], fadam_tensor_key_suffix[FADAM_TENSOR_KEY_GROUP], text, 0);
        /* A sharded optimizer's tensor: where its slice lies in the full tensor. */
        if (opt->shard_ranks == 0) continue;
        snprintf(text, sizeof text, "%lld", (long long)offset);
        add_item(list, opt->names[t], fadam_tensor_key_suffix[FADAM_TENSOR_KEY_OFFSET], text, 0);
        snprintf(text, sizeof text, "%lld", (long long)full_numel);
        add_item(list, opt->names[t], fadam_tensor_key_suffix[FADAM_TENSOR_KEY_FULL_NUMEL], text, 0);
    }
}

/* ---- reading ---- */

static int compare_first_strings(const void *a, const void *b) {
    return strcmp(((const char *const *)a)[0], ((const char *const *)b)[0]);
}

const char *fadam_metadata_find(const fadam_st_header *header, const char *key) {
    const char *const *found;
    if (header->n_metadata == 0) return NULL;
    found = (const char *const *)bsearch(&key, header->metadata, header->n_metadata, 2 * sizeof(char *),
                                         compare_first_strings);
    return found ? found[1] : NULL;
}

fadam_status fadam_metadata_require(const fadam_st_header *header, const char *key, const char **value,
                                    const char *function) {
    *value = fadam_metadata_find(header, key);
    if (!*value)
        return fadam_fail(FADAM_ERR_CORRUPT, "%s: __metadata__ has no \"%.*s\"", function, FADAM_NAME_CLIP + 20, key);
    return FADAM_SUCCESS;
}

const char *fadam_metadata_tensor_value(const fadam_st_header *header, const char *name, int which) {
    char key[FADAM_MAX_NAME_LENGTH + 32];
    snprintf(key, sizeof key, "%s%s", name, fadam_tensor_key_suffix[which]);
    return fadam_metadata_find(header, key);
}

static fadam_status read_checksum(const char *value, fadam_checkpoint_values *out, const char *function) {
    const char *prefix = fadam_checksum_prefix(out->format_version);
    size_t digest_bytes = fadam_checksum_bytes(out->format_version), n;
    if (strlen(value) != strlen(prefix) + 2 * digest_bytes || strncmp(value, prefix, strlen(prefix)) != 0)
        return fadam_fail(FADAM_ERR_CORRUPT,
                          "%s: checksum \"%.80s\" is not \"%s\" and %zu hex digits (format_version %d)", function,
                          value, prefix, 2 * digest_bytes, out->format_version);
    for (n = 0; n < digest_bytes; n++) {
        int high = fadam_hex_value(value[strlen(prefix) + 2 * n]);
        int low = fadam_hex_value(value[strlen(prefix) + 2 * n + 1]);
        if (high < 0 || low < 0)
            return fadam_fail(FADAM_ERR_CORRUPT, "%s: checksum \"%.80s\" is not \"%s\" and %zu hex digits", function,
                              value, prefix, 2 * digest_bytes);
        out->checksum[n] = (unsigned char)(high * 16 + low);
    }
    return FADAM_SUCCESS;
}

/* One key (`name` as it is spelled in the file) into `base` (the values, or a group's hyperparameters). */
static fadam_status read_key(const metadata_key *key, const char *name, const fadam_st_header *header, void *base,
                             fadam_checkpoint_values *values, const char *path, const char *function) {
    void *field = (char *)base + key->offset;
    const char *value = fadam_metadata_find(header, name), *why;
    int64_t number = 0;
    fadam_status status;
    if (!value && (key->flags & KEY_OPTIONAL)) return FADAM_SUCCESS;
    if (!value && (status = fadam_metadata_require(header, name, &value, function)) != FADAM_SUCCESS) return status;
    switch (key->type) {
    case KEY_FORMAT:
        if (strcmp(value, FADAM_CHECKPOINT_FORMAT_NAME) != 0)
            return fadam_fail(FADAM_ERR_CORRUPT,
                              "%s: __metadata__ format is \"%.60s\", not \"" FADAM_CHECKPOINT_FORMAT_NAME "\"",
                              function, value);
        return FADAM_SUCCESS;
    case KEY_VERSION:
        /* Version 1 differs only in its checksum (SHA-256): still read. */
        if (!fadam_parse_count(value, &number) || (number != 1 && number != FADAM_CHECKPOINT_FORMAT_VERSION))
            return fadam_fail(FADAM_ERR_CORRUPT, "%s: format_version \"%.40s\" is not one this library reads (1 or %d)",
                              function, value, FADAM_CHECKPOINT_FORMAT_VERSION);
        values->format_version = (int)number;
        return FADAM_SUCCESS;
    case KEY_CHECKSUM: return read_checksum(value, values, function);
    case KEY_INTEGER:
        if (!fadam_parse_count(value, &number) || number < key->low || number > key->high) {
            if (key->range)
                return fadam_fail(FADAM_ERR_CORRUPT, "%s: %s \"%.40s\" is not an integer in %s", function, key->name,
                                  value, key->range);
            return fadam_fail(FADAM_ERR_CORRUPT, "%s: %s \"%.40s\" is not an integer in [%lld, %lld]", function,
                              key->name, value, (long long)key->low, (long long)key->high);
        }
        set_integer(field, key->size, number);
        return FADAM_SUCCESS;
    case KEY_FLOAT:
        if (!fadam_parse_float(value, (float *)field, &why))
            return fadam_fail(FADAM_ERR_CORRUPT, "%s: __metadata__ \"%s\" is \"%.40s\", %s", function, name, value,
                              why);
        return FADAM_SUCCESS;
    case KEY_CHOICE: {
        int choice, n = choice_count(key->choices);
        char words[96] = "";
        for (choice = 0; choice < n; choice++)
            if (strcmp(value, key->choices[choice]) == 0) {
                *(int *)field = choice;
                return FADAM_SUCCESS;
            }
        for (choice = 0; choice < n; choice++)
            snprintf(words + strlen(words), sizeof words - strlen(words), "%s\"%s\"",
                     choice == 0 ? "" : choice == n - 1 ? " or " : ", ", key->choices[choice]);
        return fadam_fail(FADAM_ERR_CORRUPT, "%s: __metadata__ \"%s\" is \"%.40s\", not %s", function, name, value,
                          words);
    }
    case KEY_COUNTER: {
        int64_t limit = key->flags & KEY_AT_MOST_SKIPPED ? values->fused.skipped_total : key->high;
        if (!fadam_parse_count(value, &number) || number > limit)
            return fadam_fail(FADAM_ERR_CORRUPT, "%s: __metadata__ \"%s\" is \"%.40s\", not an integer in [0, %lld]%s",
                              function, name, value, (long long)limit, key->range);
        set_integer(field, key->size, number);
        return FADAM_SUCCESS;
    }
    case KEY_COUNTER_FLOAT: {
        float *out = (float *)field;
        int nan_ok = (key->flags & KEY_NAN_IF_SKIPPED) && values->fused.skipped == 1;
        const char *range = key->range              ? key->range
                            : values->fused.skipped ? ">= 0 or nan"
                                                    : ">= 0 (nan only in a skipped step)";
        if (!fadam_parse_any_float(value, out))
            return fadam_fail(FADAM_ERR_CORRUPT, "%s: __metadata__ \"%s\" is \"%.40s\", not a number", function, name,
                              value);
        if (nan_ok && *out != *out) return FADAM_SUCCESS;
        if (!(*out >= key->low_float && *out <= key->high_float))
            return fadam_fail(FADAM_ERR_CORRUPT, "%s: __metadata__ \"%s\" is \"%.40s\", out of range: it must be %s",
                              function, name, value, range);
        return FADAM_SUCCESS;
    }
    case KEY_UNSIGNED: {
        /* Digits only, at most 20, no overflow: strtoull alone would take a sign and spaces. */
        size_t length = strlen(value), i;
        uint64_t parsed = 0;
        int ok = length >= 1 && length <= 20;
        for (i = 0; i < length && ok; i++) {
            unsigned digit = (unsigned)(value[i] - '0');
            if (digit > 9 || parsed > (UINT64_MAX - digit) / 10) ok = 0;
            else parsed = parsed * 10 + digit;
        }
        if (!ok)
            return fadam_fail(FADAM_ERR_CORRUPT, "%s: __metadata__ \"%s\" is \"%.40s\", not an integer in [0, 2^64-1]",
                              function, name, value);
        *(uint64_t *)field = parsed;
        return FADAM_SUCCESS;
    }
    case KEY_SHARD_COUNT:
        if (!fadam_parse_count(value, &number))
            return fadam_fail(FADAM_ERR_CORRUPT, "%s: '%.300s': %s \"%.40s\" is not a count", function, path, name,
                              value);
        set_integer(field, key->size, number);
        return FADAM_SUCCESS;
    }
    return FADAM_SUCCESS;
}

/* Every key of `scope`, in table order. */
static fadam_status read_scope(key_scope scope, const fadam_st_header *header, void *base, const char *prefix,
                               fadam_checkpoint_values *values, const char *path, const char *function) {
    char name[64];
    fadam_status status;
    size_t k;
    for (k = 0; k < N_METADATA_KEYS; k++) {
        if (metadata_keys[k].scope != scope) continue;
        snprintf(name, sizeof name, "%s%s", prefix, metadata_keys[k].name);
        if ((status = read_key(&metadata_keys[k], name, header, base, values, path, function)) != FADAM_SUCCESS)
            return status;
    }
    return FADAM_SUCCESS;
}

fadam_status fadam_metadata_read(const fadam_optimizer *opt, const fadam_st_header *header,
                                 fadam_checkpoint_values *out, const char *function) {
    char prefix[32], message[512];
    fadam_status status;
    int g;
    memset(out, 0, sizeof *out);
    if (!header->has_metadata)
        return fadam_fail(FADAM_ERR_CORRUPT, "%s: the header has no __metadata__: not a fusedadam checkpoint",
                          function);
    if ((status = read_scope(SCOPE_FILE, header, out, "", out, NULL, function)) != FADAM_SUCCESS) return status;
    if (out->n_groups != opt->n_groups)
        return fadam_fail(FADAM_ERR_MISMATCH, "%s: the checkpoint has %lld parameter group(s), the optimizer %d",
                          function, (long long)out->n_groups, opt->n_groups);
    for (g = 0; g < out->n_groups; g++) {
        snprintf(prefix, sizeof prefix, "group.%d.", g);
        if ((status = read_scope(SCOPE_GROUP, header, &out->groups[g], prefix, out, NULL, function)) != FADAM_SUCCESS)
            return status;
        if ((status = read_scope(SCOPE_LAYOUT, header, &out->layouts[g], prefix, out, NULL, function)) != FADAM_SUCCESS)
            return status;
        if (fadam_check_hparams(&out->groups[g], "checkpoint", g) != FADAM_SUCCESS) {
            snprintf(message, sizeof message, "%s", fadam_last_error_message());
            return fadam_fail(FADAM_ERR_CORRUPT, "%s: hyperparameters out of range: %s", function, message);
        }
    }
    /* The fused step's counters, when the checkpoint has them (its "fused.step" says so). */
    if (!fadam_metadata_find(header, "fused.step")) return FADAM_SUCCESS;
    out->has_fused = 1;
    return read_scope(SCOPE_FUSED, header, out, "", out, NULL, function);
}

fadam_status fadam_metadata_read_shard(const fadam_st_header *header, const char *path, fadam_checkpoint_values *out,
                                       const char *function) {
    out->shard_rank = 0;
    out->shard_count = 1;
    return read_scope(SCOPE_SHARD, header, out, "", out, path, function);
}
