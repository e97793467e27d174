/* test_checkpoint_files.c - fadam_save against the file system, and what the header promises about it:
 * names of 237 and 255 bytes save, 256 is refused; a full file system (a small tmpfs, where this
 * process may mount one), the file size limit, a read-only directory, a missing parent directory and
 * a path that is a directory each give FADAM_ERR_IO with a clear message, the previous file whole and
 * nothing left beside it; a symlink at the path is replaced; a replaced file's mode is kept; a failed
 * fsync of the file or (after the rename) of the directory; stale temporaries of dead writers removed;
 * fadam_create's *out on failure, and no file descriptor left open. Each case runs with O_TMPFILE and
 * with the named fallback.
 * fsync failures are injected by linking with -Wl,--wrap=fsync. */
#define _GNU_SOURCE /* unshare, mount flags */
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "atomic_file.h"
#include "check.h"
#include "fusedadam.h"
#include "save_model.h"

#define N32 20000
#define N16 10000

static char temp_dir[256];
static save_model version_a, version_b, loaded;
static unsigned char *bytes_a; /* version_a's checkpoint as a file holds it */
static size_t size_a;

/* ---- fsync failures on demand ---- */
int __real_fsync(int fd);
int __wrap_fsync(int fd);
static mode_t fail_fsync_of; /* 0, S_IFREG or S_IFDIR: fsync of that kind of file fails with EIO */

int __wrap_fsync(int fd) {
    struct stat file_status;
    if (fail_fsync_of && fstat(fd, &file_status) == 0 && (file_status.st_mode & S_IFMT) == fail_fsync_of) {
        errno = EIO;
        return -1;
    }
    return __real_fsync(fd);
}

/* ---- helpers ---- */

static const char *mode_name(int named) { return named ? "named temporary" : "O_TMPFILE"; }

/* A fresh, empty directory temp_dir/<name>. */
static void case_directory(const char *name, char *out, size_t size) {
    snprintf(out, size, "%s/%s", temp_dir, name);
    mkdir(out, 0755);
}

static int file_equals_a(const char *path) {
    size_t size = 0;
    unsigned char *bytes = save_read_file(path, &size);
    int equal = bytes && size == size_a && memcmp(bytes, bytes_a, size) == 0;
    free(bytes);
    return equal;
}

/* 1 when the file at path loads and holds exactly `expected`'s state. */
static int file_holds(const char *path, const save_model *expected) {
    return fadam_load(loaded.opt, path, NULL) == FADAM_SUCCESS && save_model_difference(&loaded, expected)[0] == '\0';
}

/* Checks a failed save: FADAM_ERR_IO, each of the message parts in the message, `target` (in
 * `directory`, may be NULL) still version a's file bit for bit (unless it is a directory), and
 * nothing else in `directory`. */
static void check_failed_save(fadam_status status, const char *directory, const char *target, const char *part1,
                              const char *part2, int named) {
    struct stat target_status;
    char path[1024], extra[256];
    const char *message = fadam_last_error_message();
    int extras;
    CHECK(status == FADAM_ERR_IO, "%s: the save gave %s: %s", mode_name(named), fadam_status_string(status), message);
    CHECK(strstr(message, part1) && (!part2 || strstr(message, part2)), "%s: the message lacks '%s'/'%s': %s",
          mode_name(named), part1, part2 ? part2 : "", message);
    if (target) {
        snprintf(path, sizeof path, "%s/%s", directory, target);
        CHECK((stat(path, &target_status) == 0 && S_ISDIR(target_status.st_mode)) || file_equals_a(path),
              "%s: the previous file changed under a failed save", mode_name(named));
    }
    extras = save_directory_extras(directory, target, extra, sizeof extra);
    CHECK(extras == 0, "%s: %d file(s) left in the directory ('%s', ...)", mode_name(named), extras, extra);
}

/* Runs body in a child process (for mounts in its own namespace and for resource limits); the child
 * prints the case's line. */
static void run_in_child(const char *name, void (*body)(const char *name)) {
    int wait_status = 0;
    pid_t child;
    fflush(stdout);
    child = fork();
    if (child == 0) {
        body(name);
        fflush(stdout);
        _exit(check_failures_total ? 1 : 0);
    }
    if (child < 0 || waitpid(child, &wait_status, 0) != child || !WIFEXITED(wait_status)) {
        printf("FAIL %s: the child process did not finish (wait status 0x%x)\n", name, (unsigned)wait_status);
        check_failures_total++;
    } else if (WEXITSTATUS(wait_status) != 0) {
        check_failures_total++;
    }
}

/* ---- names ---- */

static void test_long_names(void) {
    static const int lengths[2] = {237, 255};
    char directory[512], name[300], path[1024];
    int named, i;
    check_case_begin();
    case_directory("names", directory, sizeof directory);
    for (named = 0; named < 2; named++) {
        fadam_atomic_file_use_tmpfile(!named);
        for (i = 0; i < 2; i++) {
            memset(name, 'n', (size_t)lengths[i]);
            name[lengths[i]] = '\0';
            snprintf(path, sizeof path, "%s/%s", directory, name);
            /* A new file, then one replacing it (the rename path). */
            CHECK(fadam_save(version_a.opt, path, NULL) == FADAM_SUCCESS && file_holds(path, &version_a),
                  "%s: a %d-byte name: %s", mode_name(named), lengths[i], fadam_last_error_message());
            CHECK(fadam_save(version_b.opt, path, NULL) == FADAM_SUCCESS && file_holds(path, &version_b),
                  "%s: replacing a %d-byte name: %s", mode_name(named), lengths[i], fadam_last_error_message());
            CHECK(save_directory_extras(directory, name, NULL, 0) == 0, "%s: files left beside the %d-byte name",
                  mode_name(named), lengths[i]);
            unlink(path);
        }
    }
    fadam_atomic_file_use_tmpfile(1);
    save_remove_directory(directory);
    check_case_end("save_names_of_237_and_255_bytes");
}

static void test_name_too_long(void) {
    char directory[512], name[300], path[1024];
    int named;
    check_case_begin();
    case_directory("name256", directory, sizeof directory);
    memset(name, 'n', 256);
    name[256] = '\0';
    snprintf(path, sizeof path, "%s/%s", directory, name);
    for (named = 0; named < 2; named++) {
        fadam_atomic_file_use_tmpfile(!named);
        check_failed_save(fadam_save(version_a.opt, path, NULL), directory, NULL, "(256 bytes) is longer than", NULL,
                          named);
    }
    fadam_atomic_file_use_tmpfile(1);
    save_remove_directory(directory);
    check_case_end("save_name_of_256_bytes_refused");
}

/* ---- where the save cannot go ---- */

static void test_missing_parent(void) {
    char directory[512], path[1024];
    int named;
    check_case_begin();
    case_directory("missing", directory, sizeof directory);
    snprintf(path, sizeof path, "%s/no/such/ckpt", directory);
    for (named = 0; named < 2; named++) {
        fadam_atomic_file_use_tmpfile(!named);
        check_failed_save(fadam_save(version_a.opt, path, NULL), directory, NULL, "/no/such'",
                          "No such file or directory", named);
    }
    fadam_atomic_file_use_tmpfile(1);
    save_remove_directory(directory);
    check_case_end("save_into_missing_directory_refused");
}

static void test_path_is_directory(void) {
    static const char *const suffixes[3] = {"", "/", "/."};
    char directory[512], inner[600], path[1024];
    struct stat inner_status;
    int named, i;
    check_case_begin();
    case_directory("isdir", directory, sizeof directory);
    snprintf(inner, sizeof inner, "%s/d", directory);
    mkdir(inner, 0755);
    for (named = 0; named < 2; named++) {
        fadam_atomic_file_use_tmpfile(!named);
        for (i = 0; i < 3; i++) {
            snprintf(path, sizeof path, "%s%s", inner, suffixes[i]);
            check_failed_save(fadam_save(version_a.opt, path, NULL), directory, "d",
                              i == 1 ? "ends in '/'" : "is a directory", NULL, named);
            CHECK(stat(inner, &inner_status) == 0 && S_ISDIR(inner_status.st_mode) &&
                      save_directory_extras(inner, NULL, NULL, 0) == 0,
                  "%s: the directory '%.300s' was changed", mode_name(named), path);
        }
    }
    fadam_atomic_file_use_tmpfile(1);
    save_remove_directory(directory);
    check_case_end("save_to_a_directory_refused");
}

/* In a child: a tmpfs of 1.5 checkpoints, so the previous file fits and the new one does not. */
static void full_filesystem_body(const char *name) {
    char directory[512], options[64], reason[300];
    int named;
    case_directory("full", directory, sizeof directory);
    snprintf(options, sizeof options, "size=%zu", size_a + size_a / 2);
    if (unshare(CLONE_NEWNS) != 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0 ||
        mount("fadam-test", directory, "tmpfs", 0, options) != 0) {
        snprintf(reason, sizeof reason, "cannot mount a small tmpfs here (%s); the file size limit case covers ENOSPC/EFBIG",
                 strerror(errno));
        check_skip(name, reason);
        return;
    }
    check_case_begin();
    for (named = 0; named < 2; named++) {
        char path[1024];
        fadam_atomic_file_use_tmpfile(!named);
        snprintf(path, sizeof path, "%s/ckpt", directory);
        CHECK(fadam_save(version_a.opt, path, NULL) == FADAM_SUCCESS, "%s: the first save: %s", mode_name(named),
              fadam_last_error_message());
        check_failed_save(fadam_save(version_b.opt, path, NULL), directory, "ckpt", "No space left on device", NULL,
                          named);
        unlink(path);
    }
    check_case_end(name);
}

/* In a child: RLIMIT_FSIZE below a checkpoint's size, SIGXFSZ ignored, so writes fail with EFBIG. */
static void size_limit_body(const char *name) {
    char directory[512], path[1024];
    struct rlimit limit;
    int named;
    check_case_begin();
    case_directory("fsize", directory, sizeof directory);
    snprintf(path, sizeof path, "%s/ckpt", directory);
    signal(SIGXFSZ, SIG_IGN);
    for (named = 0; named < 2; named++) {
        fadam_atomic_file_use_tmpfile(!named);
        CHECK(fadam_save(version_a.opt, path, NULL) == FADAM_SUCCESS, "the first save: %s", fadam_last_error_message());
        getrlimit(RLIMIT_FSIZE, &limit);
        limit.rlim_cur = size_a / 2;
        CHECK(setrlimit(RLIMIT_FSIZE, &limit) == 0, "setrlimit: %s", strerror(errno));
        check_failed_save(fadam_save(version_b.opt, path, NULL), directory, "ckpt", "File too large", NULL, named);
        limit.rlim_cur = limit.rlim_max;
        setrlimit(RLIMIT_FSIZE, &limit);
        unlink(path);
    }
    rmdir(directory);
    check_case_end(name);
}

/* In a child: the directory made read-only by a read-only bind mount (root ignores permissions), or
 * by its permissions for other users. */
static void read_only_body(const char *name) {
    char directory[512], path[1024], reason[300];
    int named;
    case_directory("readonly", directory, sizeof directory);
    snprintf(path, sizeof path, "%s/ckpt", directory);
    if (fadam_save(version_a.opt, path, NULL) != FADAM_SUCCESS) {
        printf("FAIL %s: the first save: %s\n", name, fadam_last_error_message());
        check_failures_total++;
        return;
    }
    if (geteuid() != 0) {
        chmod(directory, 0555);
    } else if (unshare(CLONE_NEWNS) != 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0 ||
               mount(directory, directory, NULL, MS_BIND, NULL) != 0 ||
               mount(NULL, directory, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY, NULL) != 0) {
        snprintf(reason, sizeof reason, "running as root, and a read-only bind mount is not permitted here (%s)",
                 strerror(errno));
        check_skip(name, reason);
        return;
    }
    check_case_begin();
    for (named = 0; named < 2; named++) {
        fadam_atomic_file_use_tmpfile(!named);
        check_failed_save(fadam_save(version_b.opt, path, NULL), directory, "ckpt",
                          geteuid() != 0 ? "Permission denied" : "Read-only file system", NULL, named);
    }
    check_case_end(name);
}

/* ---- what a successful save does with what is there ---- */

static void test_symlink_replaced(void) {
    char directory[512], link_path[1024], real_path[1024];
    struct stat link_status;
    int named;
    check_case_begin();
    case_directory("symlink", directory, sizeof directory);
    snprintf(link_path, sizeof link_path, "%s/link", directory);
    snprintf(real_path, sizeof real_path, "%s/real", directory);
    for (named = 0; named < 2; named++) {
        fadam_atomic_file_use_tmpfile(!named);
        CHECK(fadam_save(version_a.opt, real_path, NULL) == FADAM_SUCCESS && symlink("real", link_path) == 0,
              "setup: %s", fadam_last_error_message());
        CHECK(fadam_save(version_b.opt, link_path, NULL) == FADAM_SUCCESS, "%s: save through the link: %s",
              mode_name(named), fadam_last_error_message());
        CHECK(lstat(link_path, &link_status) == 0 && S_ISREG(link_status.st_mode),
              "%s: the symlink is still there, not replaced by the file", mode_name(named));
        CHECK(file_holds(link_path, &version_b), "%s: the new file does not hold the new state", mode_name(named));
        CHECK(file_equals_a(real_path), "%s: the symlink's old target was written through", mode_name(named));
        CHECK(save_directory_extras(directory, NULL, NULL, 0) == 2, "%s: files other than link and real",
              mode_name(named));
        unlink(link_path);
        unlink(real_path);
    }
    fadam_atomic_file_use_tmpfile(1);
    save_remove_directory(directory);
    check_case_end("save_replaces_a_symlink_not_its_target");
}

static void test_mode_kept(void) {
    static const mode_t kept[2] = {0640, 0600};
    char directory[512], path[1024];
    struct stat file_status;
    mode_t old_umask = umask(022);
    int named;
    check_case_begin();
    case_directory("mode", directory, sizeof directory);
    snprintf(path, sizeof path, "%s/ckpt", directory);
    for (named = 0; named < 2; named++) {
        fadam_atomic_file_use_tmpfile(!named);
        CHECK(fadam_save(version_a.opt, path, NULL) == FADAM_SUCCESS && stat(path, &file_status) == 0 &&
                  (file_status.st_mode & 07777) == 0644,
              "%s: a new file has mode %o, not 0666 & ~umask(022)", mode_name(named), (unsigned)(file_status.st_mode & 07777));
        chmod(path, kept[named]);
        CHECK(fadam_save(version_b.opt, path, NULL) == FADAM_SUCCESS && stat(path, &file_status) == 0 &&
                  (file_status.st_mode & 07777) == kept[named],
              "%s: the file replacing one of mode %o has mode %o", mode_name(named), (unsigned)kept[named],
              (unsigned)(file_status.st_mode & 07777));
        unlink(path);
    }
    fadam_atomic_file_use_tmpfile(1);
    umask(old_umask);
    save_remove_directory(directory);
    check_case_end("save_keeps_the_mode_of_the_file_it_replaces");
}

/* ---- fsync failures: of the file (before the rename: nothing changes), of the directory (after it) ---- */

static void test_file_fsync_fails(void) {
    char directory[512], path[1024];
    int named;
    check_case_begin();
    case_directory("fsync_file", directory, sizeof directory);
    snprintf(path, sizeof path, "%s/ckpt", directory);
    for (named = 0; named < 2; named++) {
        fadam_atomic_file_use_tmpfile(!named);
        CHECK(fadam_save(version_a.opt, path, NULL) == FADAM_SUCCESS, "setup: %s", fadam_last_error_message());
        fail_fsync_of = S_IFREG;
        check_failed_save(fadam_save(version_b.opt, path, NULL), directory, "ckpt", "fsync of the new file",
                          "Input/output error", named);
        fail_fsync_of = 0;
        unlink(path);
    }
    fadam_atomic_file_use_tmpfile(1);
    save_remove_directory(directory);
    check_case_end("save_file_fsync_failure_keeps_the_previous_file");
}

/* The header: the one failure after which the new file is in place, complete, and the message says so. */
static void test_directory_fsync_fails(void) {
    char directory[512], path[1024], extra[256];
    fadam_status status;
    int named, extras;
    check_case_begin();
    case_directory("fsync_directory", directory, sizeof directory);
    snprintf(path, sizeof path, "%s/ckpt", directory);
    for (named = 0; named < 2; named++) {
        fadam_atomic_file_use_tmpfile(!named);
        CHECK(fadam_save(version_a.opt, path, NULL) == FADAM_SUCCESS, "setup: %s", fadam_last_error_message());
        fail_fsync_of = S_IFDIR;
        status = fadam_save(version_b.opt, path, NULL);
        fail_fsync_of = 0;
        CHECK(status == FADAM_ERR_IO && strstr(fadam_last_error_message(), "is in place") &&
                  strstr(fadam_last_error_message(), "may not survive a system crash"),
              "%s: %s: %s", mode_name(named), fadam_status_string(status), fadam_last_error_message());
        CHECK(file_holds(path, &version_b), "%s: the new file is not in place, complete", mode_name(named));
        extras = save_directory_extras(directory, "ckpt", extra, sizeof extra);
        CHECK(extras == 0, "%s: %d file(s) left ('%s')", mode_name(named), extras, extra);
        unlink(path);
    }
    fadam_atomic_file_use_tmpfile(1);
    save_remove_directory(directory);
    check_case_end("save_directory_fsync_failure_reports_the_file_in_place");
}

/* ---- leftovers of other writers ---- */

static void test_stale_temporaries(void) {
    char directory[512], path[1024], names[6][64];
    int keep[6] = {0, 1, 1, 1, 1, 1}, i, fd, locked_fd;
    pid_t dead = fork();
    if (dead == 0) _exit(0);
    waitpid(dead, NULL, 0); /* reaped: the pid no longer exists */
    check_case_begin();
    case_directory("stale", directory, sizeof directory);
    snprintf(names[0], sizeof names[0], ".fadam-%ld-1.tmp", (long)dead);         /* a dead writer's: removed */
    snprintf(names[1], sizeof names[1], ".fadam-%ld-2.tmp", (long)dead);         /* locked: live elsewhere */
    snprintf(names[2], sizeof names[2], ".fadam-%ld-999999.tmp", (long)getpid()); /* this process's own */
    snprintf(names[3], sizeof names[3], ".fadam-%ld-x.tmp", (long)dead);         /* not our pattern */
    snprintf(names[4], sizeof names[4], ".fadam-0-1.tmp");                       /* pid 0: a process group */
    snprintf(names[5], sizeof names[5], ".fadam-%ld-1.tmp.bak", (long)dead);     /* not our pattern */
    locked_fd = -1;
    for (i = 0; i < 6; i++) {
        snprintf(path, sizeof path, "%s/%s", directory, names[i]);
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (i == 1) {
            flock(fd, LOCK_EX);
            locked_fd = fd;
        } else if (fd >= 0) {
            close(fd);
        }
    }
    snprintf(path, sizeof path, "%s/ckpt", directory);
    CHECK(fadam_save(version_a.opt, path, NULL) == FADAM_SUCCESS, "save: %s", fadam_last_error_message());
    for (i = 0; i < 6; i++) {
        struct stat file_status;
        snprintf(path, sizeof path, "%s/%s", directory, names[i]);
        CHECK((stat(path, &file_status) == 0) == keep[i], "'%s' was %s", names[i], keep[i] ? "removed" : "kept");
    }
    if (locked_fd >= 0) close(locked_fd);
    save_remove_directory(directory);
    check_case_end("save_removes_temporaries_of_dead_writers_only");
}

/* The header: a failed fadam_create sets *out to NULL (so fadam_destroy(*out) is always safe). */
static void test_create_failure_sets_null(void) {
    fadam_hparams bad = fadam_hparams_default();
    fadam_optimizer *opt;
    fadam_status status;
    check_case_begin();
    opt = (fadam_optimizer *)&bad;
    status = fadam_create(&opt, (fadam_device_kind)7, 0, NULL, NULL);
    CHECK(status == FADAM_ERR_INVALID_VALUE && opt == NULL, "bad device: %s, *out %p", fadam_status_string(status),
          (void *)opt);
    bad.lr = -1.0f;
    opt = (fadam_optimizer *)&bad;
    status = fadam_create(&opt, FADAM_DEVICE_CPU, 0, &bad, NULL);
    CHECK(status == FADAM_ERR_INVALID_VALUE && opt == NULL, "bad lr: %s, *out %p", fadam_status_string(status),
          (void *)opt);
    fadam_destroy(opt);
    check_case_end("create_failure_sets_out_to_null");
}

/* Open file descriptors of this process. */
static int open_descriptors(void) {
    return save_directory_extras("/proc/self/fd", NULL, NULL, 0) - 1; /* less the listing's own */
}

int main(void) {
    const char *tmp = getenv("TMPDIR");
    uint64_t seed = check_seed("test_checkpoint_files");
    char path[600];
    int descriptors;
    snprintf(temp_dir, sizeof temp_dir, "%s/fadam_files_XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
    if (!mkdtemp(temp_dir)) {
        printf("FAIL setup: mkdtemp(%s): %s\n", temp_dir, strerror(errno));
        return 1;
    }
    snprintf(path, sizeof path, "%s/a", temp_dir);
    if (!save_model_create(&version_a, N32, N16, seed + 1) || !save_model_train(&version_a, 1, 1, seed + 2) ||
        !save_model_create(&version_b, N32, N16, seed + 1) || !save_model_train(&version_b, 1, 2, seed + 2) ||
        !save_model_create(&loaded, N32, N16, seed + 3) || fadam_save(version_a.opt, path, NULL) != FADAM_SUCCESS ||
        !(bytes_a = save_read_file(path, &size_a))) {
        printf("FAIL setup: %s\n", fadam_last_error_message());
        return 1;
    }
    unlink(path);
    descriptors = open_descriptors();
    test_long_names();
    test_name_too_long();
    test_missing_parent();
    test_path_is_directory();
    run_in_child("save_into_full_tmpfs_refused", full_filesystem_body);
    run_in_child("save_past_file_size_limit_refused", size_limit_body);
    run_in_child("save_into_read_only_directory_refused", read_only_body);
    test_symlink_replaced();
    test_mode_kept();
    test_file_fsync_fails();
    test_directory_fsync_fails();
    test_stale_temporaries();
    test_create_failure_sets_null();
    check_case_begin();
    CHECK(open_descriptors() == descriptors, "%d file descriptors open before the cases, %d after", descriptors,
          open_descriptors());
    check_case_end("saves_leak_no_file_descriptor");
    save_remove_directory(temp_dir);
    free(bytes_a);
    save_model_destroy(&version_a);
    save_model_destroy(&version_b);
    save_model_destroy(&loaded);
    return check_exit_code();
}
