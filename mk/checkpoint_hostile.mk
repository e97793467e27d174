# Hostile checkpoint headers made by hand (issue 9), and the loader's shape and name rules, against
# the host library built with ASan/UBSan (mk/tests.mk's ASAN_OBJECTS).
$(TEST_BIN)/test_checkpoint_hostile: tests/test_checkpoint_hostile.c $(TEST_HEADERS) $(ASAN_OBJECTS)
	@mkdir -p $(@D)
	$(CC) $(TEST_CFLAGS) $(SANITIZE) $< -o $@ $(ASAN_OBJECTS) $(LIBS_CUDA) -lstdc++

TEST_PROGRAMS += $(TEST_BIN)/test_checkpoint_hostile
TEST_RUN += $(TEST_BIN)/test_checkpoint_hostile
