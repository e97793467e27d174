# fadam_save killed at random moments (issue 9): >= 30 SIGKILLs while a ~54 MB state is saved to one
# path; after each the file loads as one whole version and no temporary file is left.
TEST_DEPS_test_checkpoint_crash := tests/save_model.h

TEST_PROGRAMS += $(TEST_BIN)/test_checkpoint_crash
TEST_RUN += $(TEST_BIN)/test_checkpoint_crash
