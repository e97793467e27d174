# The version 2 checksum on files of several 8 MiB pieces (issue 10, item 5): recomputed by the
# test's own code, loaded from a file and from memory on 1 and 2 threads, a flipped bit in any piece refused.
TEST_PROGRAMS += $(TEST_BIN)/test_checkpoint_pieces
TEST_RUN += $(TEST_BIN)/test_checkpoint_pieces
