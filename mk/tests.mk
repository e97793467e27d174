# Core tests: the reference against float64, the kernel source emulated on the CPU, the public API's
# error paths (under ASan/UBSan), the managed optimizer, and the same cases on a GPU when present.
TEST_BIN := $(BUILD)/tests
TEST_HEADERS := tests/check.h tests/dtype_values.h tests/checksum_v2.h
TEST_CFLAGS := $(CFLAGS_COMMON) -Itests -Wno-unused-function
SANITIZE := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer

# Every plain C test program: $(TEST_BIN)/test_NAME from tests/test_NAME.c, linked with the static
# library. A fragment (mk/*.mk) adds the program to TEST_PROGRAMS and TEST_RUN and declares only
# its exceptions, all read when the rule runs (so after every fragment):
#   ASAN_TESTS += test_NAME             linked with the ASan/UBSan build of the host code instead
#   TEST_DEPS_test_NAME := a.h b.h      more prerequisites (headers it includes beyond TEST_HEADERS)
#   TEST_LDFLAGS_test_NAME := -Wl,...   more link flags (e.g. --wrap)
# Emulated kernel tests (tests/test_NAME.cpp) have the second pattern rule below; programs linked with
# another library keep rules of their own.
ASAN_TESTS :=
test_objects = $(if $(filter $(1),$(ASAN_TESTS)),$(ASAN_OBJECTS),$(STATIC_LIB))
.SECONDEXPANSION:
$(TEST_BIN)/test_%: tests/test_%.c $(TEST_HEADERS) $$(call test_objects,test_$$*) $$(TEST_DEPS_test_$$*)
	@mkdir -p $(@D)
	$(CC) $(TEST_CFLAGS) $(if $(filter test_$*,$(ASAN_TESTS)),$(SANITIZE)) $< -o $@ \
	    $(call test_objects,test_$*) $(TEST_LDFLAGS_test_$*) $(LIBS_CUDA) -lstdc++

TEST_PROGRAMS += $(TEST_BIN)/test_reference
TEST_RUN += $(TEST_BIN)/test_reference

# The host library again, with AddressSanitizer/UBSan: error paths must not leak or overflow.
ASAN_OBJECTS := $(patsubst csrc/%.c,$(BUILD)/asan/%.o,$(LIB_C_SOURCES)) \
                $(patsubst kernels/%.cu,$(BUILD)/obj/%.cu.o,$(KERNEL_SOURCES))
$(BUILD)/asan/%.o: csrc/%.c $(HEADERS)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS_COMMON) $(SANITIZE) -c $< -o $@
# Named only by the test programs' pattern rule: not intermediate files, kept between builds.
.SECONDARY: $(ASAN_OBJECTS)

ASAN_TESTS += test_api_errors
TEST_PROGRAMS += $(TEST_BIN)/test_api_errors
TEST_RUN += $(TEST_BIN)/test_api_errors

asan: $(TEST_BIN)/test_api_errors
	./$(TEST_BIN)/test_api_errors

# The kernels' own source run on the CPU (tests/emul/cuda_emul.h). UBSan's alignment check makes a
# misaligned vector access fail here as it would fault on a GPU.
EMUL_CXXFLAGS := -std=c++17 -O1 -g -ffp-contract=off -fno-strict-aliasing -Wall -Wextra -Werror \
                 -Wno-unused-function -Wno-unknown-pragmas -Wno-format-truncation -fsanitize=alignment,undefined -fno-sanitize-recover=all \
                 -DFADAM_EMULATION -Iinclude -Ikernels -Icsrc -Itests -I$(CUDA_INC) -include tests/emul/cuda_emul.h
HOST_CORE_OBJECTS := $(BUILD)/obj/table.o $(BUILD)/obj/hparams.o $(BUILD)/obj/reference.o $(BUILD)/obj/cpu_step.o $(BUILD)/obj/status.o $(BUILD)/obj/cpu_pool.o

# Every emulated test program: $(TEST_BIN)/test_NAME from tests/test_NAME.cpp, which includes the kernel
# files it runs; linked with the host code the comparisons need. TEST_DEPS_test_NAME as above.
$(TEST_BIN)/test_%: tests/test_%.cpp tests/emul/cuda_emul.h $(TEST_HEADERS) $(KERNEL_SOURCES) $(HEADERS) \
                    $(HOST_CORE_OBJECTS) $$(TEST_DEPS_test_$$*)
	@mkdir -p $(@D)
	$(CXX) $(EMUL_CXXFLAGS) $< -o $@ $(HOST_CORE_OBJECTS) -lm -lpthread

TEST_PROGRAMS += $(TEST_BIN)/test_emul $(TEST_BIN)/test_kernel_emulated
TEST_RUN += $(TEST_BIN)/test_emul $(TEST_BIN)/test_kernel_emulated

TEST_PROGRAMS += $(TEST_BIN)/test_managed
TEST_RUN += $(TEST_BIN)/test_managed

TEST_RUN += tests/test_source_rules.sh
TEST_RUN += tests/test_install.sh

TEST_PROGRAMS += $(TEST_BIN)/test_fused_step
TEST_RUN += $(TEST_BIN)/test_fused_step

TEST_PROGRAMS += $(TEST_BIN)/test_fused_managed
TEST_RUN += $(TEST_BIN)/test_fused_managed

TEST_PROGRAMS += $(TEST_BIN)/test_cpu_fast
TEST_RUN += $(TEST_BIN)/test_cpu_fast
