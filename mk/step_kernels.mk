# mk/step_kernels.mk - the step kernel's two instantiations (issue 12 follow-up: the lean loop's registers
# only for tables that hold a lean tensor), through the emulator: the encoder's header flag, which
# kernel each table kind launches with the flags known and unknown (fadam_step_table), bit for bit
# against the C reference; Lion tensors without exp_avg_sq in a table from fadam_table_encode_groups
# (tests/test_step_kernels.cpp).
TEST_PROGRAMS += $(TEST_BIN)/test_step_kernels
TEST_RUN += $(TEST_BIN)/test_step_kernels
TEST_DEPS_test_step_kernels := tests/emulated_runs.h
