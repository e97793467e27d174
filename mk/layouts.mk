# mk/layouts.mk - lean state layouts in the update (issue 12): every layout x dtype x rule in one launch,
# the emulated kernel, the C reference and the CPU path bit for bit, float64 oracle, remainder vs fp32
# master over 120 steps, bf16 stochastic rounding vs the stall, resume, slices (tests/test_layouts_emulated.cpp);
# the validation of the new fields (tests/test_layouts_errors.c, ASan).
TEST_PROGRAMS += $(TEST_BIN)/test_layouts_emulated
TEST_RUN += $(TEST_BIN)/test_layouts_emulated

TEST_DEPS_test_layouts_emulated := tests/emulated_runs.h
ASAN_TESTS += test_layouts_errors
TEST_PROGRAMS += $(TEST_BIN)/test_layouts_errors
TEST_RUN += $(TEST_BIN)/test_layouts_errors
