# mk/step_kernels.mk - the step kernel's two instantiations (issue 12 follow-up: the lean loop's registers
# only for tables that hold a lean tensor), through the emulator: the encoder's header flag, which
# kernel each table kind launches with the flags known and unknown (fadam_step_table), bit for bit
# against the C reference; Lion tensors without exp_avg_sq in a table from fadam_table_encode_groups
# (tests/test_step_kernels.cpp).
TEST_PROGRAMS += $(TEST_BIN)/test_step_kernels
TEST_RUN += $(TEST_BIN)/test_step_kernels
TEST_DEPS_test_step_kernels := tests/emulated_runs.h

# The managed optimizer's CUDA path through its public calls, the kernels emulated over a stand-in CUDA
# runtime defined in the test (as bench/emul_bench.cpp): which kernel fadam_step / fadam_fused_step launch
# for a table, and the CPU device's bits (tests/test_step_kernels_api.cpp). Its own rule: every kernel
# source is -included and the whole host library linked, without libcudart.
STEP_KERNELS_API_HOST := $(patsubst csrc/%.c,$(BUILD)/obj/%.o,$(LIB_C_SOURCES))
$(TEST_BIN)/test_step_kernels_api: tests/test_step_kernels_api.cpp tests/emul/cuda_emul.h $(TEST_HEADERS) \
                                   $(KERNEL_SOURCES) $(HEADERS) $(STEP_KERNELS_API_HOST)
	@mkdir -p $(@D)
	$(CXX) $(EMUL_CXXFLAGS) $(foreach k,$(KERNEL_SOURCES),-include $(k)) $< -o $@ $(STEP_KERNELS_API_HOST) \
	    $(XXHASH_LIBS) -lm -lpthread
TEST_PROGRAMS += $(TEST_BIN)/test_step_kernels_api
TEST_RUN += $(TEST_BIN)/test_step_kernels_api
