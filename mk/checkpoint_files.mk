# fadam_save against the file system (issue 9): long names, full file system, size limit, read-only
# and missing directories, a directory at the path, symlinks, modes, fsync failures (injected through
# -Wl,--wrap=fsync), stale temporaries.
TEST_DEPS_test_checkpoint_files := tests/save_model.h
TEST_LDFLAGS_test_checkpoint_files := -Wl,--wrap=fsync

TEST_PROGRAMS += $(TEST_BIN)/test_checkpoint_files
TEST_RUN += $(TEST_BIN)/test_checkpoint_files
