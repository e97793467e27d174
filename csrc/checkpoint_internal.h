/* checkpoint_internal.h - what the checkpoint files share (checkpoint.c: the optimizer <-> entries
 * mapping and the public calls; checkpoint_io.c: moving the bytes; checkpoint_shards.c:
 * fadam_load_shards); not installed. */
#ifndef FADAM_CHECKPOINT_INTERNAL_H
#define FADAM_CHECKPOINT_INTERNAL_H

#include "checkpoint_metadata.h"
#include "checksum.h"
#include "optimizer_internal.h"
#include "safetensors.h"

/* Bytes per piece when state is copied through host memory (pinned on the CUDA device). */
#define FADAM_CHECKPOINT_PIECE_BYTES ((size_t)8 << 20)
/* the rule's states, their 8-bit scales, the master */
#define FADAM_CHECKPOINT_MAX_STATES (1 + 2 * FADAM_MAX_RULE_STATES)

/* What a checkpoint state is: the master, or a rule's state field f (enum fadam_state_field) or its
 * 8-bit scales. */
#define FADAM_CHECKPOINT_ROLE_MASTER (-1)
#define FADAM_CHECKPOINT_ROLE_SCALES(field) (FADAM_FIELD_COUNT + (field))

/* One state buffer of a tensor as a checkpoint entry: NAME + suffix, `numel` elements of `dtype`. */
typedef struct fadam_checkpoint_state {
    const char *suffix; /* ".exp_avg", ... */
    void *data;         /* NULL when the layout asked for is not the tensor's own */
    int64_t numel;
    const char *dtype; /* safetensors' name: "F32", "BF16", "I8", "U8", "U16" */
    size_t element_bytes;
    int role;          /* a state field, FADAM_CHECKPOINT_ROLE_SCALES(field) or FADAM_CHECKPOINT_ROLE_MASTER */
    int format;        /* fadam_moment_format of a field, fadam_master_format of the master, FP32 for scales */
} fadam_checkpoint_state;

/* Tensor t's states, in the order their entries are matched on load (the first one's absence means
 * "the tensor is missing"): its group's rule's states (kernels/rules.h) as its group's layout stores
 * them, their 8-bit scales (NAME.exp_avg.scales, ...), then the master of a 16-bit param (NAME.master,
 * or NAME.master_remainder for a bf16 param of a REMAINDER group); returns how many. The one place that
 * lists them. fadam_checkpoint_states_as lists them for another layout of the tensor's group (a
 * checkpoint's): data pointers only where a state's format is the tensor's own. */
int fadam_checkpoint_states(const fadam_optimizer *opt, int64_t t,
                            fadam_checkpoint_state states[FADAM_CHECKPOINT_MAX_STATES]);
int fadam_checkpoint_states_as(const fadam_optimizer *opt, int64_t t, const fadam_state_layout *layout,
                               fadam_checkpoint_state states[FADAM_CHECKPOINT_MAX_STATES]);

/* Where a save writes: memory, or a file descriptor. */
typedef struct fadam_sink {
    unsigned char *memory; /* or NULL: the file descriptor */
    int fd;
    const char *path;
    uint64_t position;
} fadam_sink;

/* Where a load reads from: memory, or a file descriptor. */
typedef struct fadam_source {
    const unsigned char *memory; /* or NULL: the file descriptor */
    int fd;
    const char *path;
    uint64_t size;         /* of the whole checkpoint */
    uint64_t data_offset;  /* 8 + header length */
    unsigned char *bounce; /* 2 x fadam_source_bounce_half(): host memory for a file's pieces */
} fadam_source;

/* A checked header: its entries, and the metadata's values. */
typedef struct fadam_load_plan {
    fadam_st_header parsed;
    fadam_st_entry **by_name;   /* entries sorted by name */
    fadam_st_entry **by_offset; /* entries sorted by begin */
    fadam_checkpoint_values values;
    int64_t *entry_tensor; /* per by_name entry: the registered tensor */
    int *entry_kind;       /* and its state's index in fadam_checkpoint_states */
} fadam_load_plan;

fadam_status fadam_io_fail(const char *function, const char *what, const char *path);

fadam_status fadam_sink_write(fadam_sink *out, const void *bytes, size_t count, const char *function);
fadam_status fadam_sink_patch(fadam_sink *out, uint64_t position, const void *bytes, size_t count,
                              const char *function);
/* Writes `bytes` of state at `data` (device memory on the CUDA device, through `staging`), hashing it
 * on the way as entry `name`. */
fadam_status fadam_sink_write_state(const fadam_optimizer *opt, const char *name, const void *data, uint64_t bytes,
                                    fadam_sink *out, fadam_checksum *hash, fadam_cpu_pool *pool, unsigned char *staging,
                                    struct CUstream_st *stream, const char *function);

/* Bytes of each half of a file's bounce buffer: a piece, or less for a smaller file. */
size_t fadam_source_bounce_half(const fadam_source *in);
/* Reads `count` bytes at `offset` of the checkpoint into `destination`. */
fadam_status fadam_source_read(const fadam_source *in, uint64_t offset, void *destination, size_t count,
                               const char *function);

/* On the CUDA device: enters the optimizer's device and allocates the pinned buffer through which
 * state moves in pieces. Nothing to do on the CPU. */
fadam_status fadam_staging_begin(const fadam_optimizer *opt, unsigned char **staging, int *previous_device,
                                 const char *function);
void fadam_staging_end(const fadam_optimizer *opt, unsigned char *staging, int previous_device);

/* Reads the header of `in` and checks everything that does not depend on the registration's
 * tensors: bounds, JSON, keys, byte ranges, the metadata's values. The header text stays in
 * *header_copy (file sources), which the caller frees with the plan. */
fadam_status fadam_load_plan_read(const fadam_optimizer *opt, fadam_source *in, fadam_load_plan *out,
                                  char **header_copy, const char *function);
void fadam_load_plan_free(fadam_load_plan *plan);
/* Streams through the data in name order and compares the checksum of the file's format_version
 * with the recorded one. */
fadam_status fadam_load_plan_verify(const fadam_load_plan *plan, const fadam_source *in, const fadam_optimizer *opt,
                                    const char *function);

/* A file's slice of a tensor: NAME.offset and NAME.full_numel, or (not sharded) the whole tensor. */
fadam_status fadam_checkpoint_file_slice(const fadam_st_header *parsed, const char *name, int64_t numel,
                                         int64_t *offset, int64_t *full_numel, const char *function);
fadam_status fadam_checkpoint_require_finalized(const fadam_optimizer *opt, const char *function);
/* The loaded step and hyperparameters into the optimizer, the last part of a load. */
void fadam_checkpoint_apply_values(fadam_optimizer *opt, const fadam_checkpoint_values *values);

/* ---- checkpoint_convert.c: a tensor saved in another state layout ---- */

/* 1 when the file's entries of tensor t are in the tensor's own formats (copied as they are). */
int fadam_checkpoint_same_layout(const fadam_optimizer *opt, const fadam_load_plan *plan, int64_t t);

/* Host memory for converting the largest tensor that needs it, taken before anything changes. */
typedef struct fadam_convert_buffers {
    float *values[1 + FADAM_FIELD_COUNT]; /* the master, then each field, as fp32 */
    unsigned char *raw;                   /* one entry's bytes, or one encoded state */
    float *scales;                        /* one entry's 8-bit scales */
    uint16_t *param;                      /* a bf16 param's bits */
} fadam_convert_buffers;

fadam_status fadam_convert_buffers_alloc(const fadam_optimizer *opt, const fadam_load_plan *plan,
                                         fadam_convert_buffers *b, const char *function);
void fadam_convert_buffers_free(fadam_convert_buffers *b);

/* Tensor t from the file's layout into its own (see checkpoint_convert.c); may write its param (a
 * remainder layout). */
fadam_status fadam_checkpoint_convert_tensor(fadam_optimizer *opt, const fadam_load_plan *plan,
                                             const fadam_source *in, int64_t t, fadam_convert_buffers *b,
                                             struct CUstream_st *stream, const char *function);

#endif
