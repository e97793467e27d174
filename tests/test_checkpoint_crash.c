/* test_checkpoint_crash.c - fadam_save killed (SIGKILL) at random moments while a child process saves
 * a ~54 MB optimizer state (CPU device) over and over to one path, alternating two versions. After
 * every kill the file loads and equals one version bit for bit (step, moments, master weights), and no
 * temporary file is left: with O_TMPFILE none at all (bar a complete one caught in the instant between
 * link and rename), with the named fallback at most the killed save's own, which the next save removes.
 * After each loop and one more save the directory holds the checkpoint alone. About 10-25 s. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "atomic_file.h"
#include "check.h"
#include "fusedadam.h"
#include "save_model.h"

/* State bytes: fp32 param 8 per element (two moments), bf16 param 12 (master and two moments). */
#define N32 4500000
#define N16 1500000
#define TARGET "ckpt.safetensors"

static char directory[256], path[512];

static double seconds_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void sleep_seconds(double s) {
    struct timespec t;
    t.tv_sec = (time_t)s;
    t.tv_nsec = (long)((s - (double)t.tv_sec) * 1e9);
    while (nanosleep(&t, &t) != 0 && errno == EINTR) {
    }
}

/* The child: saves a, b, a, b, ... (or b, a, ...) until it is killed. */
static void saver(const save_model *a, const save_model *b, int which, int named) {
    if (named) fadam_atomic_file_use_tmpfile(0);
    for (;; which ^= 1)
        if (fadam_save((which ? b : a)->opt, path, NULL) != FADAM_SUCCESS) {
            fprintf(stderr, "child: fadam_save failed: %s\n", fadam_last_error_message());
            _exit(3);
        }
}

/* `kills` kills, each after a random time in [0, window) seconds. */
static void kill_loop(const char *name, const save_model *a, const save_model *b, save_model *c, int kills,
                      double window, int named, uint64_t *rng) {
    int seen[2] = {0, 0}, left = 0, k, extras;
    char extra[256], extra_path[800];
    double start = seconds_now();
    check_case_begin();
    for (k = 0; k < kills && !check_case_failed; k++) {
        double delay = check_rng_uniform(rng) * window;
        const char *difference;
        fadam_status status;
        int wait_status = 0;
        pid_t child;
        fflush(stdout);
        fflush(stderr);
        child = fork();
        if (child == 0) saver(a, b, k & 1, named);
        CHECK(child > 0, "fork: %s", strerror(errno));
        if (child < 0) break;
        sleep_seconds(delay);
        kill(child, SIGKILL);
        waitpid(child, &wait_status, 0);
        CHECK(WIFSIGNALED(wait_status) && WTERMSIG(wait_status) == SIGKILL,
              "kill %d: the saver ended by itself (wait status 0x%x)", k, (unsigned)wait_status);
        status = fadam_load(c->opt, path, NULL);
        CHECK(status == FADAM_SUCCESS, "kill %d after %.3f s: the checkpoint does not load: %s", k, delay,
              fadam_last_error_message());
        if (status == FADAM_SUCCESS) {
            if (save_model_difference(c, a)[0] == '\0') seen[0]++;
            else if ((difference = save_model_difference(c, b))[0] == '\0') seen[1]++;
            else CHECK(0, "kill %d after %.3f s: the loaded state is neither version (%s differs)", k, delay, difference);
        }
        extras = save_directory_extras(directory, TARGET, extra, sizeof extra);
        if (extras > 0) left++;
        if (named) {
            /* Each save first removes the temporaries of dead writers: only the last kill's is left. */
            CHECK(extras <= 1, "kill %d: %d temporary files in the directory (%s, ...)", k, extras, extra);
        } else if (extras > 0) {
            /* Only a complete file can have a name: the killed save was between link and rename. */
            snprintf(extra_path, sizeof extra_path, "%s/%s", directory, extra);
            CHECK(extras == 1 && fadam_load(c->opt, extra_path, NULL) == FADAM_SUCCESS,
                  "kill %d after %.3f s: %d file(s) left beside the checkpoint, '%s' not a complete one: %s", k,
                  delay, extras, extra, fadam_last_error_message());
        }
    }
    /* One more save (default mode) removes what a killed named save left, and adds nothing. */
    CHECK(fadam_save(a->opt, path, NULL) == FADAM_SUCCESS, "the save after the loop: %s", fadam_last_error_message());
    extras = save_directory_extras(directory, TARGET, extra, sizeof extra);
    CHECK(extras == 0, "after the loop and one more save: %d files beside the checkpoint ('%s', ...)", extras, extra);
    if (named) CHECK(left > 0, "no kill left a named temporary, so their removal went untested");
    printf("# %s: %d kills in %.1f s (window %.3f s): the file held version 1 %d times, version 2 %d times; "
           "%d kills left a temporary file\n",
           name, k, seconds_now() - start, window, seen[0], seen[1], left);
    check_case_end(name);
}

int main(void) {
    const char *tmp = getenv("TMPDIR");
    save_model a, b, c;
    uint64_t seed = check_seed("test_checkpoint_crash"), rng = seed;
    struct stat file_status;
    double start, save_seconds, window;
    int ready;
    snprintf(directory, sizeof directory, "%s/fadam_crash_XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
    if (!mkdtemp(directory)) {
        printf("FAIL setup: mkdtemp(%s): %s\n", directory, strerror(errno));
        return 1;
    }
    snprintf(path, sizeof path, "%s/" TARGET, directory);
    /* Two versions from the same params: one step, and one more. c receives the loads. */
    ready = save_model_create(&a, N32, N16, seed + 1) && save_model_train(&a, 1, 1, seed + 2) &&
            save_model_create(&b, N32, N16, seed + 1) && save_model_train(&b, 1, 2, seed + 2) &&
            save_model_create(&c, N32, N16, seed + 3);
    start = seconds_now();
    ready = ready && fadam_save(a.opt, path, NULL) == FADAM_SUCCESS;
    save_seconds = seconds_now() - start;
    if (!ready || stat(path, &file_status) != 0 || file_status.st_size < 50000000) {
        printf("FAIL setup: %s (checkpoint of %lld bytes)\n", fadam_last_error_message(),
               ready ? (long long)file_status.st_size : -1LL);
        return 1;
    }
    printf("# one save of %lld bytes took %.3f s\n", (long long)file_status.st_size, save_seconds);
    /* Kills spread over about two saves, so every phase of one is hit and some saves complete; at
     * most 0.5 s, to stay bounded on a loaded machine. */
    window = 2.5 * save_seconds + 0.005 < 0.5 ? 2.5 * save_seconds + 0.005 : 0.5;
    kill_loop("save_killed_30_times_leaves_a_whole_version_and_no_temporary", &a, &b, &c, 30, window, 0, &rng);
    kill_loop("save_killed_12_times_named_fallback_temporaries_removed", &a, &b, &c, 12, window, 1, &rng);
    save_remove_directory(directory);
    save_model_destroy(&a);
    save_model_destroy(&b);
    save_model_destroy(&c);
    return check_exit_code();
}
