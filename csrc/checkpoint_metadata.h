/* checkpoint_metadata.h - the checkpoint's __metadata__ keys as one table (checkpoint_metadata.c),
 * walked by the save to write them and by the load to parse and range-check them; not installed. */
#ifndef FADAM_CHECKPOINT_METADATA_H
#define FADAM_CHECKPOINT_METADATA_H

#include "optimizer_internal.h"
#include "checksum.h"
#include "safetensors.h"

#define FADAM_CHECKPOINT_FORMAT_NAME "fusedadam.optimizer"

/* Every value the metadata carries besides the per-tensor keys: what a save writes from the
 * optimizer, what a load parses and checks before anything changes. */
typedef struct fadam_checkpoint_values {
    int format_version;                               /* 1 (SHA-256) or 2 (XXH3-128 over pieces) */
    unsigned char checksum[FADAM_CHECKSUM_MAX_BYTES]; /* as recorded (load) */
    int64_t step;
    int n_groups;
    fadam_hparams groups[FADAM_MAX_GROUPS];
    fadam_state_layout layouts[FADAM_MAX_GROUPS]; /* group.G.master_format, ...; absent: fp32, fp32, seed 0 */
    int has_fused; /* the fused step's counters are there */
    fadam_step_counters fused;
    int64_t shard_rank, shard_count; /* 0 of 1 when not sharded */
} fadam_checkpoint_values;

/* The per-tensor keys, NAME + suffix; the sharded ones only for a sharded optimizer. */
enum {
    FADAM_TENSOR_KEY_PARAM_DTYPE,
    FADAM_TENSOR_KEY_GROUP,
    FADAM_TENSOR_KEY_OFFSET,
    FADAM_TENSOR_KEY_FULL_NUMEL,
    FADAM_N_TENSOR_KEYS
};
extern const char *const fadam_tensor_key_suffix[FADAM_N_TENSOR_KEYS];

/* key, value, key, value, ... as a save collects them; `slack` counts the spaces that make the
 * header as long as with every changing value at its widest. */
typedef struct fadam_metadata_list {
    char **items;
    size_t n_items, capacity; /* pairs */
    size_t slack;
    int out_of_memory;
} fadam_metadata_list;

void fadam_metadata_list_free(fadam_metadata_list *list);

/* The values of the optimizer (and the fused step's counters, or NULL) as a save writes them. */
void fadam_checkpoint_values_of(const fadam_optimizer *opt, const fadam_step_counters *counters,
                                fadam_checkpoint_values *out);
/* Every key of the table that applies, the per-tensor keys, and "checksum" with a zero placeholder;
 * fails only for lack of memory (list->out_of_memory). */
void fadam_metadata_write(const fadam_optimizer *opt, const fadam_checkpoint_values *values, fadam_metadata_list *list);
/* A tensor's param dtype as the metadata spells it ("F32", "BF16", "F16"). */
const char *fadam_param_dtype_name(fadam_dtype dtype);

/* The value of `key`, NULL when absent (metadata sorted by key). */
const char *fadam_metadata_find(const fadam_st_header *header, const char *key);
fadam_status fadam_metadata_require(const fadam_st_header *header, const char *key, const char **value,
                                    const char *function);
/* NAME + the suffix of per-tensor key `which`, NULL when absent. */
const char *fadam_metadata_tensor_value(const fadam_st_header *header, const char *name, int which);

/* format, format_version, checksum, step, n_groups (equal to the optimizer's), every group's
 * hyperparameters, then the fused step's counters when "fused.step" is there: in that order, the
 * first failure's message. */
fadam_status fadam_metadata_read(const fadam_optimizer *opt, const fadam_st_header *header,
                                 fadam_checkpoint_values *out, const char *function);
/* shard.rank and shard.count (a file without them is shard 0 of 1); `path` for messages. */
fadam_status fadam_metadata_read_shard(const fadam_st_header *header, const char *path, fadam_checkpoint_values *out,
                                       const char *function);

#endif
