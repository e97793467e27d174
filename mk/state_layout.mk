# State layouts (issue 12): kernels/state_layout.h's encodings against float64 and the fp32-master path
# (gcc), and the same digest of every function's output from g++, from nvcc's host code and, on a GPU,
# from the device: one encoding, the same bits everywhere.
#   FADAM_STATE_LAYOUT_EXHAUSTIVE=1 build/tests/test_state_layout   split/join over all 2^32 patterns
STATE_LAYOUT_HEADERS := kernels/state_layout.h tests/state_layout_digest.h tests/check.h

TEST_DEPS_test_state_layout := $(STATE_LAYOUT_HEADERS)

$(TEST_BIN)/test_state_layout_gxx: tests/test_state_layout_nvcc.cu $(STATE_LAYOUT_HEADERS)
	@mkdir -p $(@D)
	$(CXX) -std=c++11 -O2 -Wall -Wextra -Werror -pedantic -Wno-unused-function -ffp-contract=off -Ikernels -Itests -x c++ $< -o $@

$(TEST_BIN)/test_state_layout_nvcc: tests/test_state_layout_nvcc.cu $(STATE_LAYOUT_HEADERS)
	@mkdir -p $(@D)
	$(NVCC) $(NVCCFLAGS) -Xcompiler -Wno-unused-function -Itests $< -o $@ -L$(CUDA_LIB) -Xlinker -rpath,$(CUDA_LIB) -lcudart

# The header alone as C99 -pedantic (the CPU path and the reference are C): a stamp, built with the programs.
$(TEST_BIN)/state_layout_c99.stamp: kernels/state_layout.h
	@mkdir -p $(@D)
	$(CC) -std=c99 -pedantic -Wall -Wextra -Werror -Wno-unused-function -fsyntax-only -x c $<
	@touch $@

TEST_PROGRAMS += $(TEST_BIN)/state_layout_c99.stamp $(TEST_BIN)/test_state_layout $(TEST_BIN)/test_state_layout_gxx $(TEST_BIN)/test_state_layout_nvcc
TEST_RUN += $(TEST_BIN)/test_state_layout $(TEST_BIN)/test_state_layout_gxx $(TEST_BIN)/test_state_layout_nvcc
