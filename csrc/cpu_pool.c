/* cpu_pool.c - the persistent worker threads of the CPU path (fadam_cpu_pool): started once, they
 * sleep on a condition variable between steps, so a step pays a wake-up, never a thread creation.
 * The calling thread works too: a pool of n threads starts n - 1. A job is a count of blocks that
 * threads claim one at a time; what a block computes never depends on which thread runs it
 * (cpu_step.c), so the thread count changes speed, not bits. */
#define _GNU_SOURCE /* sched_getaffinity, CPU_COUNT */
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#include "internal.h"

struct fadam_cpu_pool {
    int n_threads; /* the caller's thread included */
    int n_workers; /* threads started: n_threads - 1 */
    pthread_t *workers;
    pthread_mutex_t mutex;
    pthread_cond_t wake, finished;
    uint64_t generation; /* bumped per job, under the mutex: what sleeping workers wait for */
    int stop;
    /* The current job. claim holds the job's number (high 32 bits) and its next block (low 32; all
     * ones while the job is being written): a worker that woke late for a finished job cannot claim
     * a block of the next one. */
    _Atomic uint64_t claim;
    _Atomic(fadam_cpu_block_job) job;
    _Atomic(void *) context;
    _Atomic int64_t n_blocks;
    _Atomic int64_t blocks_done;
    atomic_int in_use;
    void *scratch;
    size_t scratch_bytes;
};

/* Claims and runs blocks of the current job until none is left. A block is claimed only while its
 * job is unfinished, so the job's context (the caller's) is alive while it runs. */
static void run_blocks(fadam_cpu_pool *pool) {
    /* Sequentially consistent throughout: a worker that reads a newer job's fields than its claim
     * word then fails its claim, because the caller closed the old job's claims before writing them. */
    for (;;) {
        uint64_t claim = atomic_load(&pool->claim);
        fadam_cpu_block_job job = atomic_load(&pool->job);
        void *context = atomic_load(&pool->context);
        int64_t n_blocks = atomic_load(&pool->n_blocks);
        int64_t block = (int64_t)(claim & 0xFFFFFFFFu);
        if (block >= n_blocks) return;
        if (!atomic_compare_exchange_weak(&pool->claim, &claim, claim + 1)) continue;
        job(context, block);
        if (atomic_fetch_add(&pool->blocks_done, 1) + 1 == n_blocks) {
            /* The last block: the caller may be asleep waiting for it. */
            pthread_mutex_lock(&pool->mutex);
            pthread_cond_signal(&pool->finished);
            pthread_mutex_unlock(&pool->mutex);
        }
    }
}

static void *worker_main(void *argument) {
    fadam_cpu_pool *pool = (fadam_cpu_pool *)argument;
    uint64_t seen = 0;
    pthread_mutex_lock(&pool->mutex);
    for (;;) {
        while (pool->generation == seen && !pool->stop) pthread_cond_wait(&pool->wake, &pool->mutex);
        if (pool->stop) break;
        seen = pool->generation;
        pthread_mutex_unlock(&pool->mutex);
        run_blocks(pool);
        pthread_mutex_lock(&pool->mutex);
    }
    pthread_mutex_unlock(&pool->mutex);
    return NULL;
}

int fadam_cpu_default_threads(void) {
    long online;
#if defined(__linux__)
    cpu_set_t allowed;
    /* The cores this process may run on (a container or taskset may allow fewer than are online). */
    if (sched_getaffinity(0, sizeof allowed, &allowed) == 0 && CPU_COUNT(&allowed) > 0) {
        int count = CPU_COUNT(&allowed);
        return count < FADAM_MAX_CPU_THREADS ? count : FADAM_MAX_CPU_THREADS;
    }
#endif
    online = sysconf(_SC_NPROCESSORS_ONLN);
    if (online < 1) return 1;
    return online < FADAM_MAX_CPU_THREADS ? (int)online : FADAM_MAX_CPU_THREADS;
}

static void stop_workers(fadam_cpu_pool *pool) {
    int i;
    pthread_mutex_lock(&pool->mutex);
    pool->stop = 1;
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->mutex);
    for (i = 0; i < pool->n_workers; i++) pthread_join(pool->workers[i], NULL);
    pool->n_workers = 0;
}

fadam_status fadam_cpu_pool_open(fadam_cpu_pool **out, int n_threads, const char *function) {
    fadam_cpu_pool *pool;
    sigset_t all, previous;
    int i, error = 0;
    *out = NULL;
    if (n_threads < 0 || n_threads > FADAM_MAX_CPU_THREADS)
        return fadam_fail(FADAM_ERR_INVALID_VALUE, "%s: n_threads=%d must be in [0, %d] (0: one per core)", function,
                          n_threads, FADAM_MAX_CPU_THREADS);
    if (n_threads == 0) n_threads = fadam_cpu_default_threads();
    pool = (fadam_cpu_pool *)calloc(1, sizeof *pool);
    if (!pool) return fadam_fail(FADAM_ERR_OUT_OF_MEMORY, "%s: no host memory for the thread pool", function);
    pool->n_threads = n_threads;
    atomic_init(&pool->in_use, 0);
    atomic_init(&pool->claim, 0);
    atomic_init(&pool->job, NULL);
    atomic_init(&pool->context, NULL);
    atomic_init(&pool->n_blocks, 0);
    atomic_init(&pool->blocks_done, 0);
    if (n_threads > 1) {
        pool->workers = (pthread_t *)malloc((size_t)(n_threads - 1) * sizeof *pool->workers);
        if (!pool->workers) {
            free(pool);
            return fadam_fail(FADAM_ERR_OUT_OF_MEMORY, "%s: no host memory for the thread pool", function);
        }
    }
    if (pthread_mutex_init(&pool->mutex, NULL) != 0) {
        free(pool->workers);
        free(pool);
        return fadam_fail(FADAM_ERR_OUT_OF_MEMORY, "%s: cannot create the thread pool's mutex", function);
    }
    error = pthread_cond_init(&pool->wake, NULL);
    if (error == 0 && (error = pthread_cond_init(&pool->finished, NULL)) != 0) pthread_cond_destroy(&pool->wake);
    if (error != 0) {
        pthread_mutex_destroy(&pool->mutex);
        free(pool->workers);
        free(pool);
        return fadam_fail(FADAM_ERR_OUT_OF_MEMORY, "%s: cannot create the thread pool's condition variables", function);
    }
    /* Workers take no signals: the application's handlers run on its own threads. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &previous);
    for (i = 0; i < n_threads - 1; i++) {
        /* The pool itself is the argument: nothing is allocated here that a worker would free. */
        if ((error = pthread_create(&pool->workers[i], NULL, worker_main, pool)) != 0) break;
        pool->n_workers++;
    }
    pthread_sigmask(SIG_SETMASK, &previous, NULL);
    if (pool->n_workers != n_threads - 1) {
        fadam_cpu_pool_close(pool);
        return fadam_fail(FADAM_ERR_OUT_OF_MEMORY, "%s: started %d of %d worker threads (pthread_create: error %d)",
                          function, i, n_threads - 1, error);
    }
    *out = pool;
    return FADAM_SUCCESS;
}

void fadam_cpu_pool_close(fadam_cpu_pool *pool) {
    if (!pool) return;
    stop_workers(pool);
    pthread_cond_destroy(&pool->finished);
    pthread_cond_destroy(&pool->wake);
    pthread_mutex_destroy(&pool->mutex);
    free(pool->workers);
    free(pool->scratch);
    free(pool);
}

int fadam_cpu_pool_size(const fadam_cpu_pool *pool) { return pool ? pool->n_threads : 1; }

int fadam_cpu_pool_acquire(fadam_cpu_pool *pool) {
    int expected = 0;
    return !pool || atomic_compare_exchange_strong(&pool->in_use, &expected, 1);
}

void fadam_cpu_pool_release(fadam_cpu_pool *pool) {
    if (pool) atomic_store(&pool->in_use, 0);
}

void *fadam_cpu_pool_scratch(fadam_cpu_pool *pool, size_t bytes) {
    if (bytes <= pool->scratch_bytes) return pool->scratch;
    {
        /* Grows only: a model's step asks for the same size every time. */
        void *grown = realloc(pool->scratch, bytes);
        if (!grown) return NULL;
        pool->scratch = grown;
        pool->scratch_bytes = bytes;
    }
    return pool->scratch;
}

void fadam_cpu_pool_run(fadam_cpu_pool *pool, int64_t n_blocks, fadam_cpu_block_job job, void *context) {
    int64_t block;
    uint64_t job_number;
    if (!pool || pool->n_threads <= 1 || n_blocks <= 1) {
        for (block = 0; block < n_blocks; block++) job(context, block);
        return;
    }
    /* Close every claim of the previous job, write this one, then open it: a worker still looking at
     * the previous job (it woke late) can claim nothing of it, nor of this one by mistake. */
    job_number = (atomic_load(&pool->claim) >> 32) + 1;
    atomic_store(&pool->claim, (job_number << 32) | 0xFFFFFFFFu);
    atomic_store(&pool->job, job);
    atomic_store(&pool->context, context);
    atomic_store(&pool->n_blocks, n_blocks);
    atomic_store(&pool->blocks_done, 0);
    atomic_store(&pool->claim, job_number << 32);
    pthread_mutex_lock(&pool->mutex);
    pool->generation++;
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->mutex);
    /* The caller works too, and waits only for blocks that a worker is running: a worker that has
     * not woken yet (another process has its core) finds nothing left and costs nothing. */
    run_blocks(pool);
    if (atomic_load(&pool->blocks_done) < n_blocks) {
        pthread_mutex_lock(&pool->mutex);
        while (atomic_load(&pool->blocks_done) < n_blocks) pthread_cond_wait(&pool->finished, &pool->mutex);
        pthread_mutex_unlock(&pool->mutex);
    }
}

/* ---- the public pool of the functional call ---- */

fadam_status fadam_cpu_pool_create(fadam_cpu_pool **out, int n_threads) {
    fadam_clear_error();
    FADAM_REQUIRE_NOT_NULL(out, "fadam_cpu_pool_create");
    return fadam_cpu_pool_open(out, n_threads, "fadam_cpu_pool_create");
}

void fadam_cpu_pool_destroy(fadam_cpu_pool *pool) { fadam_cpu_pool_close(pool); }

fadam_status fadam_cpu_pool_threads(const fadam_cpu_pool *pool, int *n_threads_out) {
    fadam_clear_error();
    FADAM_REQUIRE_NOT_NULL(pool, "fadam_cpu_pool_threads");
    FADAM_REQUIRE_NOT_NULL(n_threads_out, "fadam_cpu_pool_threads");
    *n_threads_out = pool->n_threads;
    return FADAM_SUCCESS;
}
