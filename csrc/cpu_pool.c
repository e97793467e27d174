/* cpu_pool.c - the persistent worker threads of the CPU path (fadam_cpu_pool): started once, they
 * sleep on a condition variable between steps, so a step pays a wake-up, never a thread creation.
 * The calling thread works too: a pool of n threads starts n - 1. What each thread computes never
 * depends on how many there are (cpu_step.c), so the thread count changes speed, not bits. */
#define _GNU_SOURCE /* sched_getaffinity, CPU_COUNT */
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#include "internal.h"

struct fadam_cpu_pool {
    int n_threads;      /* the caller's thread included */
    int n_workers;      /* threads started: n_threads - 1 */
    pthread_t *workers;
    pthread_mutex_t mutex;
    pthread_cond_t wake, done;
    uint64_t generation; /* bumped per job; a worker runs each generation once */
    int remaining;       /* workers still on the current job */
    int stop;
    fadam_cpu_job job;
    void *context;
    int n_active; /* workers with index < n_active run the job; the others go back to sleep */
    atomic_int in_use;
    void *scratch;
    size_t scratch_bytes;
};

typedef struct worker_start {
    fadam_cpu_pool *pool;
    int index;
} worker_start;

static void *worker_main(void *argument) {
    worker_start *start = (worker_start *)argument;
    fadam_cpu_pool *pool = start->pool;
    const int index = start->index;
    uint64_t seen = 0;
    free(start);
    pthread_mutex_lock(&pool->mutex);
    for (;;) {
        while (pool->generation == seen && !pool->stop) pthread_cond_wait(&pool->wake, &pool->mutex);
        if (pool->stop) break;
        seen = pool->generation;
        if (index < pool->n_active) {
            fadam_cpu_job job = pool->job;
            void *context = pool->context;
            pthread_mutex_unlock(&pool->mutex);
            job(context, index);
            pthread_mutex_lock(&pool->mutex);
        }
        if (--pool->remaining == 0) pthread_cond_signal(&pool->done);
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
    if (error == 0 && (error = pthread_cond_init(&pool->done, NULL)) != 0) pthread_cond_destroy(&pool->wake);
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
        worker_start *start = (worker_start *)malloc(sizeof *start);
        if (!start) {
            error = -1;
            break;
        }
        start->pool = pool;
        start->index = i + 1;
        error = pthread_create(&pool->workers[i], NULL, worker_main, start);
        if (error != 0) {
            free(start);
            break;
        }
        pool->n_workers++;
    }
    pthread_sigmask(SIG_SETMASK, &previous, NULL);
    if (pool->n_workers != n_threads - 1) {
        fadam_cpu_pool_close(pool);
        return fadam_fail(FADAM_ERR_OUT_OF_MEMORY, "%s: started %d of %d worker threads (%s)", function, i,
                          n_threads - 1, error == -1 ? "no host memory" : "pthread_create failed");
    }
    *out = pool;
    return FADAM_SUCCESS;
}

void fadam_cpu_pool_close(fadam_cpu_pool *pool) {
    if (!pool) return;
    stop_workers(pool);
    pthread_cond_destroy(&pool->done);
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

void fadam_cpu_pool_run(fadam_cpu_pool *pool, int n_active, fadam_cpu_job job, void *context) {
    if (!pool || n_active <= 1 || pool->n_threads <= 1) {
        job(context, 0);
        return;
    }
    if (n_active > pool->n_threads) n_active = pool->n_threads;
    pthread_mutex_lock(&pool->mutex);
    pool->job = job;
    pool->context = context;
    pool->n_active = n_active;
    pool->remaining = pool->n_workers;
    pool->generation++;
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->mutex);
    job(context, 0);
    pthread_mutex_lock(&pool->mutex);
    while (pool->remaining > 0) pthread_cond_wait(&pool->done, &pool->mutex);
    pthread_mutex_unlock(&pool->mutex);
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
