/* test_alloc_failure.c - every host allocation of the library fails in turn (issue 9).
 *
 * The scenario create -> add_group -> configure_fused_step -> add_tensor (every dtype combination,
 * zero-element tensors first) -> finalize -> step -> fused step -> the functional table_bytes,
 * table_encode and cpu_step -> save (bytes: size query and data; file, twice) -> load (file and
 * bytes) runs once to count its allocations (N points), then once per point k in a forked child
 * where allocation k returns NULL. The child checks that the call it hit returns
 * FADAM_ERR_OUT_OF_MEMORY with a message naming the call, that everything observable (params,
 * masters, moments, step, hyperparameters, counters, the checkpoint file, the directory, the
 * caller's outputs) is as before, that the same call then succeeds, and that destroy frees every
 * allocation; an alarm turns a hang into a failure, and LeakSanitizer checks each child's exit.
 * Three runs: the whole scenario with the default allocator (host malloc/aligned_alloc), the same
 * with a caller allocator whose own calls are the points, and 66 tensors without the checkpoints.
 *
 * Built with ASan/UBSan and -Wl,--wrap for every allocation function (mk/alloc_failure.mk).
 * FADAM_ALLOC_POINT=k replays one point and prints what its child found. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "fusedadam.h"

/* A child that runs longer than this hangs (a whole scenario takes milliseconds). */
#define CHILD_SECONDS 10
/* Children at once: each spends most of its time in fork and LeakSanitizer's exit check. */
#define PARALLEL 2

/* ---- the allocation functions, wrapped (ld --wrap): count, fail one, track what is live ---- */

void *__real_malloc(size_t bytes);
void *__real_calloc(size_t count, size_t bytes);
void *__real_realloc(void *pointer, size_t bytes);
void *__real_aligned_alloc(size_t alignment, size_t bytes);
int __real_posix_memalign(void **out, size_t alignment, size_t bytes);
char *__real_strdup(const char *text);
char *__real_strndup(const char *text, size_t bytes);
void __real_free(void *pointer);

static struct {
    int tracking;     /* inside a library call: allocations are counted, frees are tracked */
    int caller_only;  /* points are the caller allocator's calls only */
    long count;       /* points seen */
    long fail_at;     /* the point that fails (0: none) */
    int injected;     /* fail_at was reached */
    long live;        /* library allocations not freed yet */
} inj;

static int inject_here(int caller_allocator) {
    if (!inj.tracking || (inj.caller_only && !caller_allocator)) return 0;
    if (++inj.count != inj.fail_at) return 0;
    inj.injected = 1;
    return 1;
}

static void *tracked(void *pointer) {
    if (pointer && inj.tracking) inj.live++;
    return pointer;
}

void *__wrap_malloc(size_t bytes) { return inject_here(0) ? NULL : tracked(__real_malloc(bytes)); }
void *__wrap_calloc(size_t count, size_t bytes) { return inject_here(0) ? NULL : tracked(__real_calloc(count, bytes)); }
void *__wrap_aligned_alloc(size_t alignment, size_t bytes) {
    return inject_here(0) ? NULL : tracked(__real_aligned_alloc(alignment, bytes));
}
char *__wrap_strdup(const char *text) { return inject_here(0) ? NULL : (char *)tracked(__real_strdup(text)); }
char *__wrap_strndup(const char *text, size_t bytes) {
    return inject_here(0) ? NULL : (char *)tracked(__real_strndup(text, bytes));
}
int __wrap_posix_memalign(void **out, size_t alignment, size_t bytes) {
    int error;
    if (inject_here(0)) return ENOMEM;
    error = __real_posix_memalign(out, alignment, bytes);
    if (error == 0) tracked(*out);
    return error;
}
void *__wrap_realloc(void *pointer, size_t bytes) {
    void *grown;
    if (inject_here(0)) return NULL; /* the old block stays valid, as a real failure leaves it */
    grown = __real_realloc(pointer, bytes);
    if (grown && !pointer && inj.tracking) inj.live++;
    return grown;
}
void __wrap_free(void *pointer) {
    if (pointer && inj.tracking) inj.live--;
    __real_free(pointer);
}

/* The caller allocator of the second run: each call is a point. */
static void *caller_alloc(void *context, size_t bytes) {
    (void)context;
    if (inject_here(1)) return NULL;
    return tracked(__real_aligned_alloc(256, (bytes + 255) / 256 * 256));
}
static void caller_free(void *context, void *pointer) {
    (void)context;
    __wrap_free(pointer);
}

/* ---- what a child reports (shared memory, one slot per running child) ---- */

enum {
    BAD_STATUS = 1,     /* the failed call returned something else than OOM, or no message */
    STATE_CHANGED = 2,  /* something observable differs after the failed call */
    RETRY_FAILED = 4,   /* the same call without injection did not succeed (or gave wrong state) */
    LEAKED = 8,         /* allocations left after destroy */
    NOT_REACHED = 16,   /* the point was never reached (the scenario is not deterministic) */
    SCENARIO = 32,      /* a call failed without any injection */
};

typedef struct report {
    int finished; /* the child got to its exit */
    int flags;
    long points;  /* counting run: points seen */
    char op[64];  /* the call the injected point belonged to */
    char why[7][300]; /* per flag bit: the first problem of that kind */
    long op_points[128]; /* counting run: points per operation (MAX_OPS) */
} report;

static void note(report *r, int flag, const char *format, ...) __attribute__((format(printf, 3, 4)));
static void note(report *r, int flag, const char *format, ...) {
    va_list args;
    int bit = __builtin_ctz((unsigned)flag);
    if (!(r->flags & flag)) {
        va_start(args, format);
        vsnprintf(r->why[bit], sizeof r->why[bit], format, args);
        va_end(args);
    }
    r->flags |= flag;
}

/* The first problem noted among `flags`. */
static const char *why_of(const report *r, int flags) {
    int bit;
    for (bit = 0; bit < 7; bit++)
        if (r->flags & flags & (1 << bit)) return r->why[bit];
    return "";
}

/* ---- the model: tensors of every dtype combination, zero-element ones first (no master then) ---- */

/* 26 tensors make 69 checkpoint entries and 81 metadata pairs (each list grows past its first 64);
 * the scenario without checkpoints has 66, so the tensor list grows past 64 too. */
#define N_TENSORS 66
#define CHECKPOINT_TENSORS 26
#define ZERO_TENSORS 9

typedef struct model {
    int n_tensors;
    char names[N_TENSORS][48];
    int64_t numel[N_TENSORS];
    fadam_dtype param_dtype[N_TENSORS], grad_dtype[N_TENSORS];
    int group[N_TENSORS];
    void *param[N_TENSORS], *grad[N_TENSORS];
} model;

static const fadam_dtype dtypes[3] = {FADAM_FLOAT32, FADAM_BFLOAT16, FADAM_FLOAT16};

static uint16_t to_bf16(float x) {
    uint32_t bits;
    memcpy(&bits, &x, 4);
    return (uint16_t)((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}

static uint16_t to_fp16(float x) { /* values here are small normals: a plain conversion does */
    _Float16 h = (_Float16)x;
    uint16_t bits;
    memcpy(&bits, &h, 2);
    return bits;
}

static void store(fadam_dtype dtype, void *base, int64_t i, float value) {
    if (dtype == FADAM_FLOAT32) ((float *)base)[i] = value;
    else if (dtype == FADAM_BFLOAT16) ((uint16_t *)base)[i] = to_bf16(value);
    else ((uint16_t *)base)[i] = to_fp16(value);
}

/* n_tensors: zero-element tensors of all 9 combinations, then non-empty ones cycling through them. */
static void make_model(model *m, int n_tensors, uint64_t *rng) {
    int t;
    memset(m, 0, sizeof *m);
    m->n_tensors = n_tensors;
    for (t = 0; t < n_tensors; t++) {
        int combination = t % 9;
        int64_t i;
        m->param_dtype[t] = dtypes[combination / 3];
        m->grad_dtype[t] = dtypes[combination % 3];
        m->numel[t] = t < ZERO_TENSORS ? 0 : 1 + (int64_t)(check_rng_next(rng) % 40);
        m->group[t] = t % 2;
        /* Names that need JSON escaping and non-ASCII UTF-8 too. */
        if (t == ZERO_TENSORS) snprintf(m->names[t], sizeof m->names[t], "quote\"back\\slash.%d", t);
        else if (t == ZERO_TENSORS + 1) snprintf(m->names[t], sizeof m->names[t], "caf\xc3\xa9.%d", t);
        else snprintf(m->names[t], sizeof m->names[t], "layer.%02d.weight", t);
        if (m->numel[t] == 0) continue; /* an empty tensor's pointers may be NULL */
        m->param[t] = aligned_alloc(64, 64 * 4);
        m->grad[t] = aligned_alloc(64, 64 * 4);
        for (i = 0; i < m->numel[t]; i++) {
            store(m->param_dtype[t], m->param[t], i, (float)check_rng_normal(rng));
            store(m->grad_dtype[t], m->grad[t], i, (float)(0.1 * check_rng_normal(rng)));
        }
    }
}

/* ---- the world one scenario runs in ---- */

typedef struct world {
    const model *m;
    int caller_allocator;
    fadam_optimizer *opt;
    char dir[512], path[600];
    size_t queried_size;  /* fadam_save_bytes' size query */
    const char *output_problem; /* an operation's own finding about what the call wrote */
    /* The functional API's tensors: the caller's own state, a copy of the params. */
    fadam_tensor functional[N_TENSORS];
    fadam_hparams functional_groups[2];
    size_t table_bytes;
    void *table;
    unsigned char *bytes; /* the checkpoint fadam_save_bytes wrote */
    size_t bytes_capacity;
} world;

/* Everything a failed call must leave as it was, as labelled sections of bytes. */
typedef struct snapshot {
    unsigned char *data;
    size_t length, capacity;
    const char *labels[1024]; /* string literals */
    size_t ends[1024];
    int n_sections;
} snapshot;

static void snap_add(snapshot *s, const char *label, const void *bytes, size_t count) {
    if (s->length + count > s->capacity) {
        size_t capacity = s->capacity ? s->capacity : 4096;
        while (capacity < s->length + count) capacity *= 2;
        s->data = (unsigned char *)realloc(s->data, capacity);
        if (!s->data) abort();
        s->capacity = capacity;
    }
    if (count) memcpy(s->data + s->length, bytes, count);
    s->length += count;
    if (s->n_sections && (s->labels[s->n_sections - 1] == label || s->n_sections == 1024)) {
        s->ends[s->n_sections - 1] = s->length; /* the last section grows */
    } else {
        s->labels[s->n_sections] = label;
        s->ends[s->n_sections++] = s->length;
    }
}

static void snap_free(snapshot *s) {
    free(s->data);
    memset(s, 0, sizeof *s);
}

static int compare_names(const void *a, const void *b) { return strcmp((const char *)a, (const char *)b); }

/* The optimizer's state (what a load restores), then, with `everything`, what else the caller sees. */
static void take_snapshot(const world *w, snapshot *s, int everything) {
    const model *m = w->m;
    int64_t count = -1, step = -1, t;
    int n_groups = -1, g;
    memset(s, 0, sizeof *s);
    snap_add(s, "handle", &w->opt, sizeof w->opt);
    if (!w->opt) return;
    (void)fadam_num_tensors(w->opt, &count);
    (void)fadam_num_groups(w->opt, &n_groups);
    (void)fadam_get_step(w->opt, &step);
    snap_add(s, "tensor count", &count, sizeof count);
    snap_add(s, "group count", &n_groups, sizeof n_groups);
    snap_add(s, "step", &step, sizeof step);
    for (g = 0; g < n_groups; g++) {
        fadam_hparams h;
        memset(&h, 0, sizeof h);
        (void)fadam_get_hparams(w->opt, g, &h);
        snap_add(s, "hyperparameters", &h, sizeof h);
    }
    for (t = 0; t < count; t++) {
        float *master = NULL, *exp_avg = NULL, *exp_avg_sq = NULL;
        int finalized = fadam_get_state(w->opt, t, &master, &exp_avg, &exp_avg_sq) == FADAM_SUCCESS;
        size_t bytes = (size_t)m->numel[t] * 4;
        snap_add(s, "finalized", &finalized, sizeof finalized);
        if (!finalized || bytes == 0) continue;
        if (master) snap_add(s, "master", master, bytes);
        snap_add(s, "exp_avg", exp_avg, bytes);
        snap_add(s, "exp_avg_sq", exp_avg_sq, bytes);
    }
    {
        fadam_step_counters counters;
        memset(&counters, 0, sizeof counters);
        if (fadam_read_step_counters(w->opt, &counters, NULL) == FADAM_SUCCESS)
            snap_add(s, "fused step counters", &counters, sizeof counters);
    }
    if (!everything) return;
    for (t = 0; t < m->n_tensors; t++)
        if (m->numel[t]) snap_add(s, "params", m->param[t], (size_t)m->numel[t] * fadam_dtype_size(m->param_dtype[t]));
    for (t = 0; t < m->n_tensors; t++) {
        const fadam_tensor *f = &w->functional[t];
        size_t bytes = (size_t)f->numel * 4;
        if (!bytes) continue;
        snap_add(s, "functional params", f->param, (size_t)f->numel * fadam_dtype_size(f->param_dtype));
        if (f->master) snap_add(s, "functional master", f->master, bytes);
        snap_add(s, "functional exp_avg", f->exp_avg, bytes);
        snap_add(s, "functional exp_avg_sq", f->exp_avg_sq, bytes);
    }
    snap_add(s, "table size", &w->table_bytes, sizeof w->table_bytes);
    if (w->table) snap_add(s, "table", w->table, w->table_bytes);
    snap_add(s, "queried size", &w->queried_size, sizeof w->queried_size);
    if (w->bytes) snap_add(s, "fadam_save_bytes' buffer", w->bytes, w->bytes_capacity);
    {
        /* The directory's names, sorted: a failed save leaves no file behind. */
        char names[16][256];
        int n = 0, i;
        DIR *dir = opendir(w->dir);
        struct dirent *entry;
        while (dir && (entry = readdir(dir)) != NULL) {
            if (strcmp(entry->d_name, ".") == 0 || strcmp(entry->d_name, "..") == 0) continue;
            if (n < 16) snprintf(names[n++], sizeof names[0], "%s", entry->d_name);
        }
        if (dir) closedir(dir);
        qsort(names, (size_t)n, sizeof names[0], compare_names);
        for (i = 0; i < n; i++) snap_add(s, "directory entries", names[i], strlen(names[i]) + 1);
    }
    {
        int fd = open(w->path, O_RDONLY | O_CLOEXEC);
        unsigned char piece[65536];
        ssize_t got;
        while (fd >= 0 && (got = read(fd, piece, sizeof piece)) > 0) snap_add(s, "checkpoint file", piece, (size_t)got);
        if (fd >= 0) close(fd);
    }
}

/* The first section that differs, or NULL. */
static const char *snapshot_difference(const snapshot *a, const snapshot *b) {
    int i;
    size_t begin = 0;
    for (i = 0; i < a->n_sections && i < b->n_sections; i++) {
        if (a->labels[i] != b->labels[i] || a->ends[i] != b->ends[i] ||
            memcmp(a->data + begin, b->data + begin, a->ends[i] - begin) != 0)
            return a->labels[i];
        begin = a->ends[i];
    }
    if (a->n_sections != b->n_sections) return i < a->n_sections ? a->labels[i] : b->labels[i];
    return NULL;
}

/* ---- the scenario: one library call per operation ---- */

typedef struct operation {
    const char *name;     /* the call, which its failure message must name */
    fadam_status (*run)(world *w, int argument);
    int argument;
    int checks_load;      /* after success the state must equal the saved one */
} operation;

static fadam_status op_create(world *w, int unused) {
    fadam_allocator allocator = {caller_alloc, caller_free, NULL};
    fadam_hparams h = fadam_hparams_default();
    (void)unused;
    h.lr = 1e-2f;
    return fadam_create(&w->opt, FADAM_DEVICE_CPU, 0, &h, w->caller_allocator ? &allocator : NULL);
}

static fadam_status op_add_group(world *w, int unused) {
    fadam_hparams h = fadam_hparams_default();
    (void)unused;
    h.mode = FADAM_ADAM_L2;
    h.weight_decay = 0.05f;
    h.lr = 3e-3f;
    return fadam_add_group(w->opt, &h, NULL);
}

static fadam_status op_configure_fused(world *w, int unused) {
    fadam_fused_step_config c = fadam_fused_step_config_default();
    (void)unused;
    c.max_grad_norm = 1.0f; /* the norm pass needs its partials: one more allocation */
    c.dynamic_loss_scaling = 1;
    c.initial_loss_scale = 1.0f;
    return fadam_configure_fused_step(w->opt, &c);
}

static fadam_status op_add_tensor(world *w, int t) {
    const model *m = w->m;
    return fadam_add_tensor(w->opt, m->names[t], m->param[t], m->grad[t], m->numel[t], m->param_dtype[t],
                            m->grad_dtype[t], m->group[t], NULL);
}

static fadam_status op_finalize(world *w, int unused) {
    (void)unused;
    return fadam_finalize(w->opt, NULL);
}

static fadam_status op_step(world *w, int unused) {
    (void)unused;
    return fadam_step(w->opt, NULL);
}

static fadam_status op_fused_step(world *w, int unused) {
    (void)unused;
    return fadam_fused_step(w->opt, NULL);
}

#define UNTOUCHED ((size_t)0x5EED)

static fadam_status op_size_query(world *w, int unused) {
    size_t size = UNTOUCHED;
    fadam_status status = fadam_save_bytes(w->opt, &size, NULL, 0, NULL);
    (void)unused;
    if (status == FADAM_SUCCESS) w->queried_size = size;
    else if (size != UNTOUCHED) w->output_problem = "*size_out";
    return status;
}

static fadam_status op_save_bytes(world *w, int unused) {
    size_t size = UNTOUCHED;
    fadam_status status;
    (void)unused;
    status = fadam_save_bytes(w->opt, &size, w->bytes, w->bytes_capacity, NULL);
    if (status != FADAM_SUCCESS && size != UNTOUCHED) w->output_problem = "*size_out";
    if (status == FADAM_SUCCESS && size != w->bytes_capacity) w->output_problem = "*size_out (not the queried size)";
    return status;
}

static fadam_status op_table_bytes(world *w, int unused) {
    size_t bytes = UNTOUCHED;
    fadam_status status = fadam_table_bytes(w->functional, w->m->n_tensors, 2, &bytes);
    (void)unused;
    if (status == FADAM_SUCCESS) w->table_bytes = bytes;
    else if (bytes != UNTOUCHED) w->output_problem = "*bytes_out";
    return status;
}

static fadam_status op_table_encode(world *w, int unused) {
    (void)unused;
    return fadam_table_encode(w->functional, w->m->n_tensors, 2, w->table, w->table_bytes);
}

static fadam_status op_cpu_step(world *w, int unused) {
    fadam_step_source source;
    (void)unused;
    memset(&source, 0, sizeof source);
    source.step = 1;
    return fadam_cpu_step(w->functional, w->m->n_tensors, w->functional_groups, 2, &source);
}

static fadam_status op_save_file(world *w, int unused) {
    (void)unused;
    return fadam_save(w->opt, w->path, NULL);
}

static fadam_status op_load_file(world *w, int unused) {
    (void)unused;
    return fadam_load(w->opt, w->path, NULL);
}

static fadam_status op_load_bytes(world *w, int unused) {
    (void)unused;
    return fadam_load_bytes(w->opt, w->bytes, w->bytes_capacity, NULL);
}

#define MAX_OPS 128
static operation ops[MAX_OPS];
static int n_ops;
/* Points of each operation in the counting run: a child snapshots only the call its point is in. */
static long expected_points[MAX_OPS];

static void add_op(const char *name, fadam_status (*run)(world *, int), int argument, int checks_load) {
    operation o;
    o.name = name, o.run = run, o.argument = argument, o.checks_load = checks_load;
    ops[n_ops++] = o;
}

/* with_checkpoints 0: up to the first steps only (for many tensors, where saves cost the most). */
static void build_scenario(const model *m, int with_checkpoints) {
    int t;
    n_ops = 0;
    add_op("fadam_create", op_create, 0, 0);
    add_op("fadam_add_group", op_add_group, 0, 0);
    add_op("fadam_configure_fused_step", op_configure_fused, 0, 0);
    for (t = 0; t < m->n_tensors; t++) add_op("fadam_add_tensor", op_add_tensor, t, 0);
    add_op("fadam_finalize", op_finalize, 0, 0);
    add_op("fadam_step", op_step, 0, 0);
    add_op("fadam_fused_step", op_fused_step, 0, 0);
    add_op("fadam_table_bytes", op_table_bytes, 0, 0); /* the functional API: its overlap check allocates */
    add_op("fadam_table_encode", op_table_encode, 0, 0);
    add_op("fadam_cpu_step", op_cpu_step, 0, 0);
    if (!with_checkpoints) return;
    add_op("fadam_save_bytes", op_size_query, 0, 0); /* the size query: no buffer */
    add_op("fadam_save_bytes", op_save_bytes, 0, 0);
    add_op("fadam_save", op_save_file, 0, 0);
    add_op("fadam_step", op_step, 0, 0);
    add_op("fadam_load", op_load_file, 0, 1);
    add_op("fadam_fused_step", op_fused_step, 0, 0);
    add_op("fadam_load_bytes", op_load_bytes, 0, 1);
    add_op("fadam_step", op_step, 0, 0);
    add_op("fadam_save", op_save_file, 0, 0); /* over the existing file: a failure leaves it whole */
}

static void clear_directory(const char *path) {
    DIR *dir = opendir(path);
    struct dirent *entry;
    char file[1024];
    while (dir && (entry = readdir(dir)) != NULL) {
        if (strcmp(entry->d_name, ".") == 0 || strcmp(entry->d_name, "..") == 0) continue;
        snprintf(file, sizeof file, "%s/%s", path, entry->d_name);
        (void)unlink(file);
    }
    if (dir) closedir(dir);
}

/* Runs the whole scenario with point `fail_at` failing (0: none), filling `r`. */
static void run_scenario(const model *m, int caller_allocator, long fail_at, const char *dir, report *r) {
    world w;
    snapshot saved, before, after;
    int i, reported = 0;
    memset(&w, 0, sizeof w);
    memset(&saved, 0, sizeof saved);
    w.m = m;
    w.caller_allocator = caller_allocator;
    snprintf(w.dir, sizeof w.dir, "%s", dir);
    snprintf(w.path, sizeof w.path, "%s/optimizer.safetensors", dir);
    clear_directory(dir);
    for (i = 0; i < m->n_tensors; i++) {
        fadam_tensor *f = &w.functional[i];
        size_t n = (size_t)m->numel[i];
        f->numel = m->numel[i];
        f->param_dtype = m->param_dtype[i];
        f->grad_dtype = m->grad_dtype[i];
        f->group = m->group[i];
        f->grad = m->grad[i];
        if (!n) continue; /* NULL pointers, as an empty tensor may have */
        f->param = aligned_alloc(64, 256);
        memcpy(f->param, m->param[i], n * fadam_dtype_size(f->param_dtype));
        f->exp_avg = (float *)calloc(n, 4);
        f->exp_avg_sq = (float *)calloc(n, 4);
        if (f->param_dtype != FADAM_FLOAT32 && i % 2) f->master = (float *)calloc(n, 4); /* some in place */
    }
    w.functional_groups[0] = w.functional_groups[1] = fadam_hparams_default();
    w.functional_groups[1].mode = FADAM_ADAM_L2;
    memset(&inj, 0, sizeof inj);
    inj.caller_only = caller_allocator;
    inj.fail_at = fail_at;
    for (i = 0; i < n_ops; i++) {
        const operation *o = &ops[i];
        long points_before = inj.count;
        int injected_before = inj.injected;
        fadam_status status;
        int watched = !fail_at || (inj.count < fail_at && fail_at <= inj.count + expected_points[i]);
        memset(&before, 0, sizeof before);
        if (watched && fail_at) {
            take_snapshot(&w, &before, 1);
            snprintf(r->op, sizeof r->op, "%s", o->name); /* named even if the call never returns */
        }
        w.output_problem = NULL;
        inj.tracking = 1;
        status = o->run(&w, o->argument);
        inj.tracking = 0;
        r->op_points[i] = inj.count - points_before;
        if (inj.injected && !injected_before) {
            const char *message = fadam_last_error_message();
            const char *changed;
            reported = 1;
            if (!watched) note(r, NOT_REACHED, "point %ld came in %s, not in the call of the counting run", fail_at, o->name);
            snprintf(r->op, sizeof r->op, "%s", o->name);
            if (status == FADAM_SUCCESS)
                note(r, BAD_STATUS, "%s succeeded although allocation %ld failed", o->name, fail_at);
            else if (status != FADAM_ERR_OUT_OF_MEMORY)
                note(r, BAD_STATUS, "%s returned %s, not FADAM_ERR_OUT_OF_MEMORY: %s", o->name, fadam_status_string(status),
                     message);
            else if (strstr(message, o->name) == NULL)
                note(r, BAD_STATUS, "%s: the message '%s' does not name the call", o->name, message);
            if (watched) {
                take_snapshot(&w, &after, 1);
                changed = w.output_problem ? w.output_problem : snapshot_difference(&before, &after);
                if (changed) note(r, STATE_CHANGED, "%s changed %s although it failed", o->name, changed);
                snap_free(&after);
            }
            if (status != FADAM_SUCCESS) {
                w.output_problem = NULL;
                inj.tracking = 1; /* the same call again, nothing failing now */
                status = o->run(&w, o->argument);
                inj.tracking = 0;
                if (status != FADAM_SUCCESS)
                    note(r, RETRY_FAILED, "%s failed again without injection: %s: %s", o->name,
                         fadam_status_string(status), fadam_last_error_message());
                else if (w.output_problem)
                    note(r, RETRY_FAILED, "%s, retried, wrote a wrong %s", o->name, w.output_problem);
            }
        } else if (status != FADAM_SUCCESS) {
            note(r, SCENARIO, "%s failed without injection: %s: %s", o->name, fadam_status_string(status),
                 fadam_last_error_message());
        } else if (w.output_problem) {
            note(r, SCENARIO, "%s wrote a wrong %s", o->name, w.output_problem);
        }
        snap_free(&before);
        if (status != FADAM_SUCCESS) break; /* nothing later can work */
        if (o->run == op_size_query && !w.bytes) {
            w.bytes_capacity = w.queried_size;
            w.bytes = (unsigned char *)malloc(w.bytes_capacity);
            memset(w.bytes, 0xA5, w.bytes_capacity);
        }
        if (o->run == op_save_bytes) take_snapshot(&w, &saved, 0);
        if (o->run == op_table_bytes && !w.table) w.table = aligned_alloc(16, (w.table_bytes + 15) / 16 * 16);
        if (o->checks_load) {
            snapshot now;
            const char *changed;
            take_snapshot(&w, &now, 0);
            changed = snapshot_difference(&saved, &now);
            if (changed)
                note(r, reported && strcmp(r->op, o->name) == 0 ? RETRY_FAILED : SCENARIO,
                     "after %s, %s differs from the state saved", o->name, changed);
            snap_free(&now);
        }
    }
    inj.tracking = 1;
    fadam_destroy(w.opt);
    inj.tracking = 0;
    if (inj.live != 0) note(r, LEAKED, "%ld allocation(s) of the library left after fadam_destroy", inj.live);
    if (fail_at && !inj.injected) note(r, NOT_REACHED, "point %ld never reached (%ld points)", fail_at, inj.count);
    r->points = inj.count;
    snap_free(&saved);
    free(w.bytes);
    free(w.table);
    for (i = 0; i < m->n_tensors; i++) {
        free(w.functional[i].param);
        free(w.functional[i].master);
        free(w.functional[i].exp_avg);
        free(w.functional[i].exp_avg_sq);
    }
    clear_directory(dir);
}

/* ---- the parent: children, their outcomes ---- */

typedef struct tally {
    long points, hangs, leaks, statuses, changed, retries, crashes, unreached;
    char first[8][600]; /* the first failure of each kind */
} tally;

enum { K_HANG, K_LEAK, K_STATUS, K_CHANGED, K_RETRY, K_CRASH, K_UNREACHED };

static void remember(tally *t, int kind, long *counter, const char *format, ...) __attribute__((format(printf, 4, 5)));
static void remember(tally *t, int kind, long *counter, const char *format, ...) {
    va_list args;
    if ((*counter)++ == 0) {
        va_start(args, format);
        vsnprintf(t->first[kind], sizeof t->first[kind], format, args);
        va_end(args);
    }
}

/* Forks a child for `fail_at` with its report in `r` and directory `dir`. */
static pid_t start_child(const model *m, int caller_allocator, long fail_at, const char *dir, report *r) {
    pid_t pid;
    memset(r, 0, sizeof *r);
    fflush(stdout);
    fflush(stderr);
    pid = fork();
    if (pid == 0) {
        alarm(CHILD_SECONDS);
        run_scenario(m, caller_allocator, fail_at, dir, r);
        r->finished = 1;
        exit(0); /* exit, not _exit: LeakSanitizer checks at exit */
    }
    return pid;
}

static void judge(tally *t, const char *mode, long point, int wait_status, const report *r) {
    const char *op = r->op[0] ? r->op : "?";
    if (getenv("FADAM_ALLOC_POINT"))
        printf("# %s, point %ld: %s, flags %d, wait status %d; %s\n", mode, point, op, r->flags, wait_status,
               why_of(r, ~0));
    if (WIFSIGNALED(wait_status) && WTERMSIG(wait_status) == SIGALRM) {
        remember(t, K_HANG, &t->hangs, "%s, point %ld (%s): no end after %d s", mode, point, op, CHILD_SECONDS);
        return;
    }
    if (!r->finished || !WIFEXITED(wait_status)) {
        remember(t, K_CRASH, &t->crashes, "%s, point %ld (%s): the child died (%s %d; sanitizer report in the log)",
                 mode, point, op, WIFSIGNALED(wait_status) ? "signal" : "exit code",
                 WIFSIGNALED(wait_status) ? WTERMSIG(wait_status) : WEXITSTATUS(wait_status));
        return;
    }
    if (WEXITSTATUS(wait_status) != 0)
        remember(t, K_LEAK, &t->leaks, "%s, point %ld (%s): LeakSanitizer reported at exit (code %d)", mode, point, op,
                 WEXITSTATUS(wait_status));
    if (r->flags & LEAKED)
        remember(t, K_LEAK, &t->leaks, "%s, point %ld (%s): %s", mode, point, op, why_of(r, LEAKED));
    if (r->flags & BAD_STATUS)
        remember(t, K_STATUS, &t->statuses, "%s, point %ld: %s", mode, point, why_of(r, BAD_STATUS));
    if (r->flags & STATE_CHANGED)
        remember(t, K_CHANGED, &t->changed, "%s, point %ld: %s", mode, point, why_of(r, STATE_CHANGED));
    if (r->flags & (RETRY_FAILED | SCENARIO))
        remember(t, K_RETRY, &t->retries, "%s, point %ld: %s", mode, point, why_of(r, RETRY_FAILED | SCENARIO));
    if (r->flags & NOT_REACHED)
        remember(t, K_UNREACHED, &t->unreached, "%s, point %ld: %s", mode, point, why_of(r, NOT_REACHED));
}

/* Every point of one mode, PARALLEL children at a time. */
static void run_points(const model *m, int caller_allocator, const char *mode, long n_points,
                       char dirs[PARALLEL][512], report *slots, tally *t) {
    pid_t running[PARALLEL];
    long point_of[PARALLEL], next = 1;
    int busy = 0, s;
    for (s = 0; s < PARALLEL; s++) running[s] = 0;
    if (getenv("FADAM_ALLOC_POINT")) { /* replay one point: FADAM_ALLOC_POINT=k (of the first mode that has k) */
        long point = atol(getenv("FADAM_ALLOC_POINT"));
        if (point > n_points || t->points) return;
        next = n_points = point;
    }
    while (next <= n_points || busy) {
        int wait_status;
        pid_t done;
        for (s = 0; s < PARALLEL && next <= n_points; s++) {
            if (running[s]) continue;
            point_of[s] = next;
            running[s] = start_child(m, caller_allocator, next++, dirs[s], &slots[s]);
            busy++;
        }
        done = waitpid(-1, &wait_status, 0);
        if (done < 0) {
            if (errno == EINTR) continue;
            break;
        }
        for (s = 0; s < PARALLEL; s++) {
            if (running[s] != done) continue;
            running[s] = 0;
            busy--;
            t->points++;
            judge(t, mode, point_of[s], wait_status, &slots[s]);
        }
    }
}

/* Runs the scenario once without injection in a child; returns its points (-1 on failure). */
static long counting_run(const model *m, int caller_allocator, const char *dir, report *r, const char *case_name) {
    int wait_status;
    pid_t pid = start_child(m, caller_allocator, 0, dir, r);
    check_case_begin();
    if (waitpid(pid, &wait_status, 0) != pid) {
        CHECK(0, "waitpid failed");
    } else if (WIFSIGNALED(wait_status) && WTERMSIG(wait_status) == SIGALRM) {
        CHECK(0, "the scenario did not end within %d s", CHILD_SECONDS);
    } else {
        CHECK(r->finished && WIFEXITED(wait_status),
              "the scenario died (%s %d; the sanitizer report is in the log)",
              WIFSIGNALED(wait_status) ? "signal" : "exit code",
              WIFSIGNALED(wait_status) ? WTERMSIG(wait_status) : WEXITSTATUS(wait_status));
        CHECK(!r->finished || WEXITSTATUS(wait_status) == 0, "LeakSanitizer reported at exit");
        CHECK(!r->flags, "%s", why_of(r, ~0));
    }
    return check_case_end(case_name) ? r->points : -1;
}

static void print_points_per_call(const report *r, const char *mode) {
    char line[2048];
    size_t used = 0;
    int i;
    used += (size_t)snprintf(line, sizeof line, "# %s, points per call:", mode);
    for (i = 0; i < n_ops && i < 128 && used < sizeof line - 80; i++) {
        long n = r->op_points[i];
        int j = i;
        while (j + 1 < n_ops && ops[j + 1].run == ops[i].run && ops[j + 1].run == op_add_tensor) n += r->op_points[++j];
        used += (size_t)snprintf(line + used, sizeof line - used, " %s%s %ld%s", ops[i].name,
                                 ops[i].run == op_size_query ? "(size query)" : "", n, j > i ? " (all tensors)" : "");
        i = j;
    }
    printf("%s\n", line);
}

static void verdict(const char *name, long failures, const char *first, const char *what, long points) {
    check_case_begin();
    CHECK(failures == 0, "%ld of %ld points %s; first: %s", failures, points, what, first);
    check_case_end(name);
}

/* Counts one scenario's points, then fails each in turn. */
static long exercise(const model *m, int with_checkpoints, int caller_allocator, char dirs[PARALLEL][512],
                     report *slots, tally *t, const char *case_name, const char *mode) {
    long n;
    int i;
    build_scenario(m, with_checkpoints);
    n = counting_run(m, caller_allocator, dirs[0], &slots[0], case_name);
    if (n < 0) return 0;
    for (i = 0; i < n_ops; i++) expected_points[i] = slots[0].op_points[i];
    print_points_per_call(&slots[0], mode);
    run_points(m, caller_allocator, mode, n, dirs, slots, t);
    return n;
}

int main(void) {
    uint64_t rng = check_seed("test_alloc_failure");
    static model zero_model, checkpoint_model, many_model;
    /* tmpfs where there is one: the saves' fsyncs cost nothing there. */
    char base[64];
    char dirs[PARALLEL][512];
    report *slots;
    tally t;
    long counts[3];
    int s;
    snprintf(base, sizeof base, "%s/fadam_alloc_XXXXXX", access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
    if (!mkdtemp(base)) {
        printf("FAIL alloc_failure_setup: mkdtemp: %s\n", strerror(errno));
        return 1;
    }
    for (s = 0; s < PARALLEL; s++) {
        snprintf(dirs[s], sizeof dirs[s], "%s/%d", base, s);
        mkdir(dirs[s], 0700);
    }
    slots = (report *)mmap(NULL, PARALLEL * sizeof(report), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (slots == MAP_FAILED) {
        printf("FAIL alloc_failure_setup: mmap: %s\n", strerror(errno));
        return 1;
    }

    /* Issue 9, defect 5: zero-element tensors of every dtype combination (a bf16/fp16 one without
     * a master buffer) through step, fused step, save and load, under ASan/UBSan. */
    make_model(&zero_model, 2 * ZERO_TENSORS, &rng);
    build_scenario(&zero_model, 1);
    (void)counting_run(&zero_model, 0, dirs[0], &slots[0], "zero_element_tensors_step_save_load_sanitized");

    /* Issue 9, defect 2 and its like: each allocation fails in turn. */
    make_model(&checkpoint_model, CHECKPOINT_TENSORS, &rng);
    make_model(&many_model, N_TENSORS, &rng);
    memset(&t, 0, sizeof t);
    counts[0] = exercise(&checkpoint_model, 1, 0, dirs, slots, &t, "alloc_failure_scenario_default_allocator",
                         "default allocator");
    counts[1] = exercise(&checkpoint_model, 1, 1, dirs, slots, &t, "alloc_failure_scenario_caller_allocator",
                         "caller allocator");
    counts[2] = exercise(&many_model, 0, 0, dirs, slots, &t, "alloc_failure_scenario_many_tensors",
                         "66 tensors, no checkpoint");
    printf("# %ld allocation points exercised: %ld in the whole scenario (%d tensors), %ld of the caller allocator, "
           "%ld with %d tensors up to the fused step\n",
           t.points, counts[0], CHECKPOINT_TENSORS, counts[1], counts[2], N_TENSORS);
    if (getenv("FADAM_ALLOC_POINT")) {
        check_skip("alloc_failure_points_exercised", "FADAM_ALLOC_POINT replays one point");
    } else {
        check_case_begin();
        CHECK(counts[0] > 0 && counts[1] > 0 && counts[2] > 0 && t.points == counts[0] + counts[1] + counts[2],
              "%ld points exercised, of %ld + %ld + %ld", t.points, counts[0], counts[1], counts[2]);
        check_case_end("alloc_failure_points_exercised");
    }
    verdict("alloc_failure_no_hang", t.hangs, t.first[K_HANG], "hung", t.points);
    verdict("alloc_failure_no_leak", t.leaks, t.first[K_LEAK], "leaked", t.points);
    verdict("alloc_failure_status_out_of_memory", t.statuses, t.first[K_STATUS], "returned a wrong status", t.points);
    verdict("alloc_failure_state_unchanged", t.changed, t.first[K_CHANGED], "changed state", t.points);
    verdict("alloc_failure_retry_succeeds", t.retries, t.first[K_RETRY], "failed the retry", t.points);
    verdict("alloc_failure_no_sanitizer_error", t.crashes, t.first[K_CRASH], "crashed", t.points);
    verdict("alloc_failure_points_reached", t.unreached, t.first[K_UNREACHED], "were not reached", t.points);

    for (s = 0; s < PARALLEL; s++) rmdir(dirs[s]);
    rmdir(base);
    return check_exit_code();
}
