# Issue 9 (defects 3 and 4): the fused step's loss-scale floor, and steps, counters and loss scales at
# or past their limits through set_step and re-signed checkpoints; under ASan/UBSan like
# test_api_errors, so a signed overflow fails the run.
ASAN_TESTS += test_fused_limits

TEST_PROGRAMS += $(TEST_BIN)/test_fused_limits
TEST_RUN += $(TEST_BIN)/test_fused_limits
