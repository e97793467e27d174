# Issue 9: every host allocation of a create -> add -> finalize -> step -> fused step -> save -> load
# scenario fails in turn (tests/test_alloc_failure.c), over the ASan/UBSan objects of tests.mk, with
# the allocation functions wrapped by the linker so the test decides which call returns NULL.
ALLOC_FAILURE_WRAP := -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc,--wrap=free,--wrap=aligned_alloc \
                      -Wl,--wrap=posix_memalign,--wrap=strdup,--wrap=strndup

ASAN_TESTS += test_alloc_failure
TEST_LDFLAGS_test_alloc_failure := $(ALLOC_FAILURE_WRAP)

TEST_PROGRAMS += $(TEST_BIN)/test_alloc_failure
TEST_RUN += $(TEST_BIN)/test_alloc_failure
