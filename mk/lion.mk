# mk/lion.mk - Lion (issue 10): the emulated kernel, the C reference and the CPU path bit for bit on a
# table mixing Lion and AdamW groups, against a float64 oracle (tests/test_lion_emulated.cpp); the
# managed optimizer's Lion groups: states, errors, fused step with clipping, checkpoints (tests/test_lion.c).
TEST_PROGRAMS += $(TEST_BIN)/test_lion_emulated
TEST_RUN += $(TEST_BIN)/test_lion_emulated

ASAN_TESTS += test_lion

TEST_PROGRAMS += $(TEST_BIN)/test_lion
TEST_RUN += $(TEST_BIN)/test_lion
TEST_DEPS_test_lion_emulated := tests/emulated_runs.h
