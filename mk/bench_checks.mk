# Checks of the benchmarks in make test: the GPU bench's bytes per element (bench/roofline.h) against
# kernels/adam_step.cu's opening comment, and the GPU bench built (nvcc, no GPU needed), so that an
# API change that breaks it fails here rather than on a GPU lease.
TEST_DEPS_test_bench_roofline := bench/roofline.h bench/model_shapes.h
TEST_PROGRAMS += $(TEST_BIN)/test_bench_roofline $(BENCH_BUILD)/adam_step_bench
TEST_RUN += $(TEST_BIN)/test_bench_roofline
