# The CPU path split over threads (issue 11): every thread count gives the reference's bits.
$(TEST_BIN)/test_cpu_threads: tests/test_cpu_threads.c $(TEST_HEADERS) $(STATIC_LIB)
	@mkdir -p $(@D)
	$(CC) $(TEST_CFLAGS) $< -o $@ $(STATIC_LIB) $(LIBS_CUDA) -lstdc++

TEST_PROGRAMS += $(TEST_BIN)/test_cpu_threads
TEST_RUN += $(TEST_BIN)/test_cpu_threads
