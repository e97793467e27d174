# The GPU bench's bytes per element (bench/roofline.h) against kernels/adam_step.cu's opening comment.
TEST_DEPS_test_bench_roofline := bench/roofline.h bench/model_shapes.h
TEST_PROGRAMS += $(TEST_BIN)/test_bench_roofline
TEST_RUN += $(TEST_BIN)/test_bench_roofline
