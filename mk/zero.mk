# Issue 13: data parallelism (ZeRO-1) on the CPU device, ranks as threads, the all-reduce as a barrier
# and a sum; under ASan/UBSan like test_api_errors.
ASAN_TESTS += test_zero

TEST_PROGRAMS += $(TEST_BIN)/test_zero
TEST_RUN += $(TEST_BIN)/test_zero

# The CUDA side of the split step (partial norm pass, decide kernel) through the emulator.
TEST_PROGRAMS += $(TEST_BIN)/test_split_kernel
TEST_RUN += $(TEST_BIN)/test_split_kernel

# The split step on a GPU (graph capture, two ranks on one device); "skip" without one.
TEST_PROGRAMS += $(TEST_BIN)/test_zero_gpu
TEST_RUN += $(TEST_BIN)/test_zero_gpu

# Every host allocation of the sharded calls failing in turn (ASan/UBSan/LSan, allocations wrapped).
ASAN_TESTS += test_zero_alloc
TEST_LDFLAGS_test_zero_alloc := -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc,--wrap=aligned_alloc

TEST_PROGRAMS += $(TEST_BIN)/test_zero_alloc
TEST_RUN += $(TEST_BIN)/test_zero_alloc
