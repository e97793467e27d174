/* atomic_file.h - a file that replaces its target whole or not at all (fadam_save); not installed.
 *
 * open -> write to file.fd -> commit (or discard). Until commit links it, the new file has no name
 * (Linux O_TMPFILE), so a crash leaves nothing behind; where the file system lacks O_TMPFILE it is
 * a short-named ".fadam-<pid>-<n>.tmp" in the target's directory, which a later open there removes
 * once its process is gone. The target is at every moment either the old file or the new one. */
#ifndef FADAM_ATOMIC_FILE_H
#define FADAM_ATOMIC_FILE_H

#include "fusedadam.h"

/* ".fadam-" + two 10-digit numbers + ".tmp": far below any NAME_MAX. */
#define FADAM_ATOMIC_TEMPORARY_NAME_MAX 40

typedef struct fadam_atomic_file {
    int fd;           /* the new file's contents go here */
    int directory_fd; /* the target's directory */
    const char *path; /* the target, as given (for messages) */
    const char *name; /* its last component, inside path */
    int unnamed;      /* fd is an O_TMPFILE: no name until commit */
    int target_exists;
    int keep_mode;    /* a regular file is at the target: the new one gets its permission bits */
    unsigned mode;
    char temporary[FADAM_ATOMIC_TEMPORARY_NAME_MAX]; /* the named temporary, "" when none */
} fadam_atomic_file;

/* Opens a new, empty file to replace `path` (not created yet). Fails early, changing nothing, when
 * the directory is missing or unwritable, the name is too long, or `path` is a directory. Removes
 * stale temporaries of dead processes in that directory. */
fadam_status fadam_atomic_file_open(fadam_atomic_file *file, const char *path, const char *function);

/* fsyncs the new file, puts it at `path` in one step (link or rename), fsyncs the directory, and
 * releases everything, also on failure. On failure before the rename the target is untouched and
 * nothing is left; the one failure after it is the directory's fsync (the message says "in place"). */
fadam_status fadam_atomic_file_commit(fadam_atomic_file *file, const char *function);

/* Drops the new file (after a write failed); the target is untouched and nothing is left. */
void fadam_atomic_file_discard(fadam_atomic_file *file);

/* Uses O_TMPFILE when `enable` and the file system has it (the default), else the named temporary
 * from the start; returns the previous setting. Process-wide: for tests, to check both paths. */
int fadam_atomic_file_use_tmpfile(int enable);

#endif
