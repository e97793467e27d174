# State layouts in the managed optimizer and its checkpoints (issue 12): allocation, validation,
# checkpoint round trips and cross-layout loads; under ASan/UBSan like test_api_errors.
ASAN_TESTS += test_layout_managed test_layout_checkpoint
TEST_PROGRAMS += $(TEST_BIN)/test_layout_managed
TEST_RUN += $(TEST_BIN)/test_layout_managed
TEST_PROGRAMS += $(TEST_BIN)/test_layout_checkpoint
TEST_RUN += $(TEST_BIN)/test_layout_checkpoint
