# fadam_save against the file system (issue 9): long names, full file system, size limit, read-only
# and missing directories, a directory at the path, symlinks, modes, fsync failures (injected through
# -Wl,--wrap=fsync), stale temporaries.
$(TEST_BIN)/test_checkpoint_files: tests/test_checkpoint_files.c tests/save_model.h $(TEST_HEADERS) $(STATIC_LIB)
	@mkdir -p $(@D)
	$(CC) $(TEST_CFLAGS) $< -o $@ -Wl,--wrap=fsync $(STATIC_LIB) $(LIBS_CUDA) -lstdc++

TEST_PROGRAMS += $(TEST_BIN)/test_checkpoint_files
TEST_RUN += $(TEST_BIN)/test_checkpoint_files
