# Issue 11: the fused step's norm kernel through the emulator: every per-chunk path against float64,
# the same bits for every grid and thread order, the groups' scalars it leaves for the update.
TEST_PROGRAMS += $(TEST_BIN)/test_norm_kernel
TEST_RUN += $(TEST_BIN)/test_norm_kernel
