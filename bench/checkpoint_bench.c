/* checkpoint_bench.c - fadam_save and fadam_load of a >= 1 GB optimizer state on the CPU device,
 * against plain sequential I/O of the same number of bytes on the same disk, in the same run.
 *
 * The model: 4 fp32 tensors whose exp_avg + exp_avg_sq total --gib GiB (default 1), stepped once so
 * the state is not zeros. Per round (the median of --rounds, default 5; odd rounds run ours first):
 *   plain write  write() of the checkpoint's size from one buffer in 8 MiB calls, then fsync
 *   fadam_save   the whole save: header, data, checksum, fsync of the file and the directory
 *   plain read   read() of that file after posix_fadvise(DONTNEED) (after fsync the pages are clean,
 *                so the cache really drops them and the read comes from the disk)
 *   fadam_load   the whole load, its file likewise dropped from the cache first
 * Before each timed operation: both files dropped from the page cache, sync, half a second's pause
 * (settle(), which says why). "ours / plain" is plain
 * time over our time: our throughput as a fraction of the disk's (target of issue 10: >= 70%). Also
 * timed: the save and load to and from memory (no disk), and the checksum alone over the state in
 * memory: SHA-256 (format version 1), XXH3-128 over 8 MiB pieces on one thread and on a pool.
 *
 * Usage: checkpoint_bench [--gib=G] [--rounds=R] [--dir=DIR] [--threads=N]   (DIR default build/bench: same disk) */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "checksum.h"
#include "fusedadam.h"

#define N_TENSORS 4
#define IO_PIECE ((size_t)8 << 20)

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void require_ok(fadam_status status, const char *what) {
    if (status != FADAM_SUCCESS) {
        fprintf(stderr, "%s: %s\n", what, fadam_last_error_message());
        exit(1);
    }
}

static void die(const char *what, const char *path) {
    fprintf(stderr, "%s %s: %s\n", what, path, strerror(errno));
    exit(1);
}

static void drop_cache(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) die("open", path);
    if (fsync(fd) != 0) die("fsync", path);
    (void)posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
}

static char replaced_plain[4096], replaced_checkpoint[4096];

/* Before each timed operation: everything earlier flushed and half a second of quiet, so no
 * operation pays for the write-back of the one before it (a shared VM disk keeps working after fsync). */
static void settle(void) {
    struct timespec pause = {0, 500000000};
    /* The file about to be replaced leaves the page cache first, on both sides: O_TRUNC frees the
     * plain file's cached pages before it writes, while the file fadam_save replaces keeps its pages
     * until the rename, after the write, which then must take fresh pages (slow to fault in on a
     * VM: measured 56% instead of 82% of the plain write without this). */
    if (access(replaced_plain, F_OK) == 0) drop_cache(replaced_plain);
    if (access(replaced_checkpoint, F_OK) == 0) drop_cache(replaced_checkpoint);
    sync();
    nanosleep(&pause, NULL);
}

static double plain_write(const char *path, const unsigned char *buffer, size_t bytes) {
    double start = now();
    size_t done = 0;
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) die("open", path);
    while (done < bytes) {
        size_t piece = bytes - done < IO_PIECE ? bytes - done : IO_PIECE;
        ssize_t n = write(fd, buffer + done, piece);
        if (n <= 0) die("write", path);
        done += (size_t)n;
    }
    if (fsync(fd) != 0) die("fsync", path);
    close(fd);
    return now() - start;
}

static double plain_read(const char *path, unsigned char *buffer, size_t bytes) {
    double start;
    size_t done = 0;
    int fd;
    drop_cache(path);
    start = now();
    if ((fd = open(path, O_RDONLY)) < 0) die("open", path);
    while (done < bytes) {
        size_t piece = bytes - done < IO_PIECE ? bytes - done : IO_PIECE;
        ssize_t n = read(fd, buffer + done, piece);
        if (n <= 0) die("read", path);
        done += (size_t)n;
    }
    close(fd);
    return now() - start;
}

static int compare_doubles(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *values, int n) {
    qsort(values, (size_t)n, sizeof *values, compare_doubles);
    return n % 2 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

/* The checksum of the state alone, the way checksum.c computes it for a load from memory. */
static double time_checksum(int version, fadam_cpu_pool *pool, float *const *states, size_t state_bytes, int n_states) {
    unsigned char digest[FADAM_CHECKSUM_MAX_BYTES];
    fadam_checksum c;
    double start = now();
    int s;
    fadam_checksum_init(&c, version);
    for (s = 0; s < n_states; s++) {
        size_t done, span = (size_t)fadam_cpu_pool_size(pool) * FADAM_CHECKSUM_PIECE_BYTES;
        fadam_checksum_entry(&c, "x", state_bytes);
        for (done = 0; done < state_bytes; done += span)
            fadam_checksum_data(&c, pool, (const unsigned char *)states[s] + done,
                                state_bytes - done < span ? state_bytes - done : span);
    }
    fadam_checksum_final(&c, digest);
    return now() - start;
}

int main(int argc, char **argv) {
    double gib = 1.0, t_write[16], t_save[16], t_read[16], t_load[16];
    const char *dir = "build/bench";
    int rounds = 5, r, i, threads = 0;
    char ckpt[4096], plain[4096];
    int64_t numel;
    float *params[N_TENSORS], *grads[N_TENSORS];
    fadam_optimizer *opt = NULL;
    unsigned char *buffer;
    size_t file_bytes;
    struct stat file_status;
    for (i = 1; i < argc; i++) {
        if (strncmp(argv[i], "--gib=", 6) == 0) gib = atof(argv[i] + 6);
        else if (strncmp(argv[i], "--rounds=", 9) == 0) rounds = atoi(argv[i] + 9);
        else if (strncmp(argv[i], "--dir=", 6) == 0) dir = argv[i] + 6;
        else if (strncmp(argv[i], "--threads=", 10) == 0) threads = atoi(argv[i] + 10);
        else {
            fprintf(stderr, "usage: %s [--gib=G] [--rounds=R] [--dir=DIR] [--threads=N]\n", argv[0]);
            return 2;
        }
    }
    if (rounds < 1 || rounds > 16 || gib <= 0) return 2;
    mkdir(dir, 0755);
    snprintf(ckpt, sizeof ckpt, "%s/checkpoint_bench.safetensors", dir);
    snprintf(plain, sizeof plain, "%s/checkpoint_bench.plain", dir);
    memcpy(replaced_plain, plain, sizeof replaced_plain);
    memcpy(replaced_checkpoint, ckpt, sizeof replaced_checkpoint);
    /* exp_avg + exp_avg_sq: 8 bytes per element. */
    numel = (int64_t)(gib * (double)(1ull << 30) / 8.0 / N_TENSORS);
    require_ok(fadam_create(&opt, FADAM_DEVICE_CPU, 0, NULL, NULL), "fadam_create");
    require_ok(fadam_set_cpu_threads(opt, threads), "fadam_set_cpu_threads"); /* 0: one per core */
    srand(1);
    for (i = 0; i < N_TENSORS; i++) {
        char name[32];
        int64_t k;
        params[i] = (float *)malloc((size_t)numel * sizeof(float));
        grads[i] = (float *)malloc((size_t)numel * sizeof(float));
        if (!params[i] || !grads[i]) die("malloc", "model");
        for (k = 0; k < numel; k++) {
            params[i][k] = (float)rand() / (float)RAND_MAX - 0.5f;
            grads[i][k] = 1e-2f * ((float)rand() / (float)RAND_MAX - 0.5f);
        }
        snprintf(name, sizeof name, "layer%d.weight", i);
        require_ok(fadam_add_tensor(opt, name, params[i], grads[i], numel, FADAM_FLOAT32, FADAM_FLOAT32, 0, NULL),
                   "fadam_add_tensor");
    }
    require_ok(fadam_finalize(opt, NULL), "fadam_finalize");
    require_ok(fadam_step(opt, NULL), "fadam_step");
    require_ok(fadam_get_cpu_threads(opt, &threads), "fadam_get_cpu_threads");
    require_ok(fadam_save(opt, ckpt, NULL), "fadam_save (warm-up)");
    if (stat(ckpt, &file_status) != 0) die("stat", ckpt);
    file_bytes = (size_t)file_status.st_size;
    if (!(buffer = (unsigned char *)malloc(file_bytes))) die("malloc", "buffer");
    memset(buffer, 0x5a, file_bytes);
    for (r = 0; r < rounds; r++) {
        /* Odd rounds go ours first: the disk's lingering write-back then burdens each side alike. */
        double start;
        if (r % 2 == 0) settle(), t_write[r] = plain_write(plain, buffer, file_bytes);
        settle();
        start = now();
        require_ok(fadam_save(opt, ckpt, NULL), "fadam_save");
        t_save[r] = now() - start;
        if (r % 2 == 1) settle(), t_write[r] = plain_write(plain, buffer, file_bytes);
        if (r % 2 == 0) settle(), t_read[r] = plain_read(plain, buffer, file_bytes);
        drop_cache(ckpt);
        settle();
        start = now();
        require_ok(fadam_load(opt, ckpt, NULL), "fadam_load");
        t_load[r] = now() - start;
        if (r % 2 == 1) settle(), t_read[r] = plain_read(plain, buffer, file_bytes);
    }
    printf("per round, s (plain write / save / plain read / load):");
    for (r = 0; r < rounds; r++) printf(" [%.2f %.2f %.2f %.2f]", t_write[r], t_save[r], t_read[r], t_load[r]);
    printf("\n");
    {
        double w = median(t_write, rounds), s = median(t_save, rounds), rd = median(t_read, rounds),
               l = median(t_load, rounds), gb = (double)file_bytes / 1e9;
        printf("checkpoint of %.3f GB (%d fp32 tensors of %lld elements; state %.3f GiB) in %s, %d round(s), "
               "median; CPU device, %d thread(s)\n",
               gb, N_TENSORS, (long long)numel, (double)numel * 8.0 * N_TENSORS / (double)(1ull << 30), dir, rounds,
               threads);
        printf("| operation | plain I/O s | plain GB/s | fusedadam s | fusedadam GB/s | ours / plain |\n");
        printf("| --- | --- | --- | --- | --- | --- |\n");
        printf("| save (write + fsync) | %.3f | %.2f | %.3f | %.2f | %.0f%% |\n", w, gb / w, s, gb / s, 100.0 * w / s);
        printf("| load (read, cache dropped) | %.3f | %.2f | %.3f | %.2f | %.0f%% |\n", rd, gb / rd, l, gb / l,
               100.0 * rd / l);
    }
    {
        /* What the save and the load cost without the disk: fadam_save_bytes / fadam_load_bytes. */
        double start, s_mem, l_mem, gb = (double)file_bytes / 1e9;
        size_t size = file_bytes;
        start = now();
        require_ok(fadam_save_bytes(opt, &size, buffer, file_bytes, NULL), "fadam_save_bytes");
        s_mem = now() - start;
        start = now();
        require_ok(fadam_load_bytes(opt, buffer, size, NULL), "fadam_load_bytes");
        l_mem = now() - start;
        printf("| save to memory (fadam_save_bytes, no disk) | | | %.3f | %.2f | |\n", s_mem, gb / s_mem);
        printf("| load from memory (fadam_load_bytes, no disk) | | | %.3f | %.2f | |\n", l_mem, gb / l_mem);
    }
    {
        /* The checksum alone over the two state buffers of every tensor, from memory. */
        float *states[2 * N_TENSORS];
        fadam_cpu_pool *pool = NULL;
        size_t state_bytes = (size_t)numel * sizeof(float);
        double sha, one, many, gb = (double)state_bytes * 2 * N_TENSORS / 1e9;
        require_ok(fadam_cpu_pool_create(&pool, threads), "fadam_cpu_pool_create");
        for (i = 0; i < 2 * N_TENSORS; i++) states[i] = (float *)(buffer + (size_t)i * state_bytes % (file_bytes - state_bytes));
        sha = time_checksum(1, NULL, states, state_bytes, 2 * N_TENSORS);
        one = time_checksum(2, NULL, states, state_bytes, 2 * N_TENSORS);
        many = time_checksum(2, pool, states, state_bytes, 2 * N_TENSORS);
        printf("\n| checksum of the %.3f GB state in memory | s | GB/s |\n| --- | --- | --- |\n", gb);
        printf("| SHA-256 (format version 1) | %.3f | %.2f |\n", sha, gb / sha);
        printf("| XXH3-128 over 8 MiB pieces, 1 thread | %.3f | %.2f |\n", one, gb / one);
        printf("| XXH3-128 over 8 MiB pieces, %d threads | %.3f | %.2f |\n", threads, many, gb / many);
        fadam_cpu_pool_destroy(pool);
    }
    unlink(ckpt);
    unlink(plain);
    fadam_destroy(opt);
    for (i = 0; i < N_TENSORS; i++) free(params[i]), free(grads[i]);
    free(buffer);
    return 0;
}
