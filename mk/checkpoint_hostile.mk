# Hostile checkpoint headers made by hand (issue 9), and the loader's shape and name rules, against
# the host library built with ASan/UBSan (mk/tests.mk's ASAN_OBJECTS).
ASAN_TESTS += test_checkpoint_hostile

TEST_PROGRAMS += $(TEST_BIN)/test_checkpoint_hostile
TEST_RUN += $(TEST_BIN)/test_checkpoint_hostile
