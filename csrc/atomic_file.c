/* atomic_file.c - replacing a file whole or not at all: an unnamed O_TMPFILE in the target's
 * directory, fsynced, then linked to the target's name when there is none, else to a short
 * temporary name and renamed over the target; then the directory is fsynced. Without O_TMPFILE the
 * file is created under the short temporary name from the start. Temporary names are locked by their
 * writer, so a later save can tell a dead writer's leftover from a live one's. */
#define _GNU_SOURCE /* O_TMPFILE, flock */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "atomic_file.h"
#include "internal.h"

#define TEMPORARY_PREFIX ".fadam-"
#define TEMPORARY_SUFFIX ".tmp"
/* Attempts at a fresh temporary name before giving up (a name is taken only by a leftover). */
#define NAME_ATTEMPTS 100

static atomic_int use_tmpfile = 1;
static atomic_uint temporary_counter;

int fadam_atomic_file_use_tmpfile(int enable) { return atomic_exchange(&use_tmpfile, enable ? 1 : 0); }

/* "<function>: <what> '<path>' failed: <reason>" for the errno value `error`. */
static fadam_status file_fail(const char *function, const char *what, const char *path, int error) {
    char buffer[128];
    const char *reason = strerror_r(error, buffer, sizeof buffer); /* the GNU strerror_r */
    return fadam_fail(FADAM_ERR_IO, "%s: %s '%.300s' failed: %s", function, what, path, reason);
}

static void next_temporary_name(fadam_atomic_file *file) {
    snprintf(file->temporary, sizeof file->temporary, TEMPORARY_PREFIX "%ld-%u" TEMPORARY_SUFFIX, (long)getpid(),
             atomic_fetch_add(&temporary_counter, 1u));
}

/* The writer's pid when `name` is exactly a temporary name of ours, else 0. */
static long temporary_owner(const char *name) {
    const char *p = name + strlen(TEMPORARY_PREFIX);
    long pid = 0;
    int digits = 0;
    if (strncmp(name, TEMPORARY_PREFIX, strlen(TEMPORARY_PREFIX)) != 0) return 0;
    for (; *p >= '0' && *p <= '9' && digits < 10; p++, digits++) pid = pid * 10 + (*p - '0');
    if (digits == 0 || *p++ != '-') return 0;
    for (digits = 0; *p >= '0' && *p <= '9' && digits < 10; p++) digits++;
    if (digits == 0 || strcmp(p, TEMPORARY_SUFFIX) != 0) return 0;
    return pid <= INT_MAX ? pid : 0; /* never 0 or negative: kill() would mean a process group */
}

/* Removes temporaries of writers that are gone: the pid is dead here, and no one (in another pid
 * namespace sharing the directory) holds the file's lock. Best effort: errors leave files be. */
static void remove_stale_temporaries(int directory_fd) {
    int fd = openat(directory_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    struct dirent *item;
    DIR *directory;
    if (fd < 0) return;
    if (!(directory = fdopendir(fd))) {
        close(fd);
        return;
    }
    while ((item = readdir(directory)) != NULL) {
        long pid = temporary_owner(item->d_name);
        struct stat file_status;
        int stale, unlocked;
        if (pid <= 0 || pid == (long)getpid() || kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue;
        stale = openat(directory_fd, item->d_name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
        if (stale < 0) continue;
        unlocked = flock(stale, LOCK_EX | LOCK_NB) == 0 || errno != EWOULDBLOCK;
        if (unlocked && fstat(stale, &file_status) == 0 && S_ISREG(file_status.st_mode))
            (void)unlinkat(directory_fd, item->d_name, 0);
        close(stale);
    }
    closedir(directory);
}

/* Opens the target's directory and sets file->name to the target's last component. */
static fadam_status open_directory(fadam_atomic_file *file, const char *function) {
    const char *slash = strrchr(file->path, '/');
    char directory[PATH_MAX];
    size_t length;
    if (!slash) {
        strcpy(directory, ".");
        file->name = file->path;
    } else {
        length = slash == file->path ? 1 : (size_t)(slash - file->path);
        if (length >= sizeof directory)
            return file_fail(function, "creating the temporary file in the directory of", file->path, ENAMETOOLONG);
        memcpy(directory, file->path, length);
        directory[length] = '\0';
        file->name = slash + 1;
    }
    if (file->name[0] == '\0')
        return fadam_fail(FADAM_ERR_IO, "%s: '%.300s' ends in '/': it names a directory, not a file", function, file->path);
    file->directory_fd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (file->directory_fd < 0) return file_fail(function, "creating the temporary file in directory", directory, errno);
    return FADAM_SUCCESS;
}

/* Refuses a directory or an impossible name before anything is written; notes a regular file's mode. */
static fadam_status check_target(fadam_atomic_file *file, const char *function) {
    struct stat target;
    if (fstatat(file->directory_fd, file->name, &target, AT_SYMLINK_NOFOLLOW) != 0) {
        if (errno == ENOENT) return FADAM_SUCCESS;
        if (errno == ENAMETOOLONG)
            return fadam_fail(FADAM_ERR_IO, "%s: the file name '%.300s' (%zu bytes) is longer than its file system allows",
                              function, file->name, strlen(file->name));
        return file_fail(function, "checking the target", file->path, errno);
    }
    if (S_ISDIR(target.st_mode))
        return fadam_fail(FADAM_ERR_IO, "%s: '%.300s' is a directory; fadam_save writes a file", function, file->path);
    file->target_exists = 1;
    if (S_ISREG(target.st_mode)) {
        file->keep_mode = 1;
        file->mode = (unsigned)(target.st_mode & 0777);
    }
    return FADAM_SUCCESS;
}

/* 1: file->fd is an unnamed O_TMPFILE that commit can link; 0: the file system cannot (use a named
 * temporary); -1: failed, errno says why. */
static int open_unnamed(fadam_atomic_file *file) {
    char link[64];
    struct stat opened, linked;
    int fd = openat(file->directory_fd, ".", O_TMPFILE | O_WRONLY | O_CLOEXEC, 0666);
    if (fd < 0) return errno == EOPNOTSUPP || errno == EISDIR || errno == EINVAL ? 0 : -1;
    /* commit links it through /proc/self/fd; without /proc, the named temporary instead. */
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    if (fstat(fd, &opened) != 0 || stat(link, &linked) != 0 || opened.st_ino != linked.st_ino ||
        opened.st_dev != linked.st_dev) {
        close(fd);
        return 0;
    }
    file->fd = fd;
    file->unnamed = 1;
    return 1;
}

static fadam_status create_named(fadam_atomic_file *file, const char *function) {
    int attempt, error = EEXIST;
    for (attempt = 0; attempt < NAME_ATTEMPTS; attempt++) {
        next_temporary_name(file);
        file->fd = openat(file->directory_fd, file->temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (file->fd >= 0) {
            (void)flock(file->fd, LOCK_EX | LOCK_NB); /* marks it live for other processes' cleanup */
            return FADAM_SUCCESS;
        }
        if ((error = errno) != EEXIST) break;
    }
    file->temporary[0] = '\0';
    return file_fail(function, "creating the temporary file in the directory of", file->path, error);
}

fadam_status fadam_atomic_file_open(fadam_atomic_file *file, const char *path, const char *function) {
    fadam_status status;
    int unnamed = 0;
    memset(file, 0, sizeof *file);
    file->fd = file->directory_fd = -1;
    file->path = path;
    if ((status = open_directory(file, function)) == FADAM_SUCCESS && (status = check_target(file, function)) == FADAM_SUCCESS) {
        remove_stale_temporaries(file->directory_fd);
        if (atomic_load(&use_tmpfile) && (unnamed = open_unnamed(file)) < 0)
            status = file_fail(function, "creating the temporary file in the directory of", path, errno);
        else if (unnamed == 0)
            status = create_named(file, function);
    }
    if (status != FADAM_SUCCESS) fadam_atomic_file_discard(file);
    return status;
}

static fadam_status rename_named(fadam_atomic_file *file, const char *function) {
    if (renameat(file->directory_fd, file->temporary, file->directory_fd, file->name) != 0)
        return file_fail(function, "renaming the new file to", file->path, errno);
    file->temporary[0] = '\0';
    return FADAM_SUCCESS;
}

/* Gives the unnamed file the target's name: directly when there is no target, else through a short
 * temporary name and rename, since linkat cannot replace. */
static fadam_status link_unnamed(fadam_atomic_file *file, const char *function) {
    char link[64];
    int attempt, error = EEXIST;
    snprintf(link, sizeof link, "/proc/self/fd/%d", file->fd);
    (void)flock(file->fd, LOCK_EX | LOCK_NB); /* locked before it has a name another cleanup could see */
    if (!file->target_exists) {
        if (linkat(AT_FDCWD, link, file->directory_fd, file->name, AT_SYMLINK_FOLLOW) == 0) return FADAM_SUCCESS;
        if (errno != EEXIST) return file_fail(function, "linking the new file to", file->path, errno);
    }
    for (attempt = 0; attempt < NAME_ATTEMPTS; attempt++) {
        next_temporary_name(file);
        if (linkat(AT_FDCWD, link, file->directory_fd, file->temporary, AT_SYMLINK_FOLLOW) == 0)
            return rename_named(file, function);
        if ((error = errno) != EEXIST) break;
    }
    file->temporary[0] = '\0';
    return file_fail(function, "linking the new file beside", file->path, error);
}

fadam_status fadam_atomic_file_commit(fadam_atomic_file *file, const char *function) {
    fadam_status status = FADAM_SUCCESS;
    char reason[128];
    if (file->keep_mode && fchmod(file->fd, (mode_t)file->mode) != 0)
        status = file_fail(function, "giving the new file the mode of", file->path, errno);
    if (status == FADAM_SUCCESS && fsync(file->fd) != 0)
        status = file_fail(function, "fsync of the new file for", file->path, errno);
    if (status == FADAM_SUCCESS) status = file->unnamed ? link_unnamed(file, function) : rename_named(file, function);
    if (status != FADAM_SUCCESS) {
        fadam_atomic_file_discard(file);
        return status;
    }
    /* fsync already reported any write-back error, so close cannot add one. */
    close(file->fd);
    file->fd = -1;
    /* The new file is in place; only the durability of its name is left (EINVAL: cannot be had). */
    if (fsync(file->directory_fd) != 0 && errno != EINVAL)
        status = fadam_fail(FADAM_ERR_IO,
                            "%s: the new file is in place at '%.300s' and complete, but fsync of its directory failed "
                            "(%s): the replacement may not survive a system crash",
                            function, file->path, strerror_r(errno, reason, sizeof reason));
    close(file->directory_fd);
    file->directory_fd = -1;
    return status;
}

void fadam_atomic_file_discard(fadam_atomic_file *file) {
    if (file->temporary[0] && file->directory_fd >= 0) (void)unlinkat(file->directory_fd, file->temporary, 0);
    if (file->fd >= 0) close(file->fd);
    if (file->directory_fd >= 0) close(file->directory_fd);
    file->fd = file->directory_fd = -1;
    file->temporary[0] = '\0';
}
