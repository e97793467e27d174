# fadam_last_error_tensor (issue 10): every per-tensor failure names its tensor's index, any other
# failure -1; under ASan/UBSan like test_api_errors.
ASAN_TESTS += test_error_tensor
TEST_PROGRAMS += $(TEST_BIN)/test_error_tensor
TEST_RUN += $(TEST_BIN)/test_error_tensor
