# The CPU path split over threads (issue 11): every thread count gives the reference's bits.
TEST_PROGRAMS += $(TEST_BIN)/test_cpu_threads
TEST_RUN += $(TEST_BIN)/test_cpu_threads
