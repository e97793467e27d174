# The version 2 checksum on files of several 8 MiB pieces (issue 10, item 5): recomputed by the
# test's own code, loaded from a file and from memory on 1 and 2 threads, a flipped bit in any piece refused.
$(TEST_BIN)/test_checkpoint_pieces: tests/test_checkpoint_pieces.c $(TEST_HEADERS) $(STATIC_LIB)
	@mkdir -p $(@D)
	$(CC) $(TEST_CFLAGS) $< -o $@ $(STATIC_LIB) $(LIBS_CUDA) -lstdc++

TEST_PROGRAMS += $(TEST_BIN)/test_checkpoint_pieces
TEST_RUN += $(TEST_BIN)/test_checkpoint_pieces
