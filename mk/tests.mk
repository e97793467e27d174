# Core tests: the reference against float64, the kernel source emulated on the CPU, the public API's
# error paths (under ASan/UBSan), the managed optimizer, and the same cases on a GPU when present.
TEST_BIN := $(BUILD)/tests
TEST_HEADERS := tests/check.h tests/dtype_values.h tests/checksum_v2.h
TEST_CFLAGS := $(CFLAGS_COMMON) -Itests -Wno-unused-function
SANITIZE := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer

$(TEST_BIN)/test_reference: tests/test_reference.c $(TEST_HEADERS) $(STATIC_LIB)
	@mkdir -p $(@D)
	$(CC) $(TEST_CFLAGS) $< -o $@ $(STATIC_LIB) $(LIBS_CUDA) -lstdc++

TEST_PROGRAMS += $(TEST_BIN)/test_reference
TEST_RUN += $(TEST_BIN)/test_reference

# The host library again, with AddressSanitizer/UBSan: error paths must not leak or overflow.
ASAN_OBJECTS := $(patsubst csrc/%.c,$(BUILD)/asan/%.o,$(LIB_C_SOURCES)) \
                $(patsubst kernels/%.cu,$(BUILD)/obj/%.cu.o,$(KERNEL_SOURCES))
$(BUILD)/asan/%.o: csrc/%.c $(HEADERS)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS_COMMON) $(SANITIZE) -c $< -o $@

$(TEST_BIN)/test_api_errors: tests/test_api_errors.c $(TEST_HEADERS) $(ASAN_OBJECTS)
	@mkdir -p $(@D)
	$(CC) $(TEST_CFLAGS) $(SANITIZE) $< -o $@ $(ASAN_OBJECTS) $(LIBS_CUDA) -lstdc++

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

$(TEST_BIN)/test_emul: tests/test_emul.cpp tests/emul/cuda_emul.h $(TEST_HEADERS)
	@mkdir -p $(@D)
	$(CXX) $(EMUL_CXXFLAGS) $< -o $@ -lpthread

$(TEST_BIN)/test_kernel_emulated: tests/test_kernel_emulated.cpp tests/emul/cuda_emul.h $(TEST_HEADERS) \
                                  $(KERNEL_SOURCES) $(HEADERS) $(HOST_CORE_OBJECTS)
	@mkdir -p $(@D)
	$(CXX) $(EMUL_CXXFLAGS) $< -o $@ $(HOST_CORE_OBJECTS) -lm -lpthread

TEST_PROGRAMS += $(TEST_BIN)/test_emul $(TEST_BIN)/test_kernel_emulated
TEST_RUN += $(TEST_BIN)/test_emul $(TEST_BIN)/test_kernel_emulated

$(TEST_BIN)/test_managed: tests/test_managed.c $(TEST_HEADERS) $(STATIC_LIB)
	@mkdir -p $(@D)
	$(CC) $(TEST_CFLAGS) $< -o $@ $(STATIC_LIB) $(LIBS_CUDA) -lstdc++

TEST_PROGRAMS += $(TEST_BIN)/test_managed
TEST_RUN += $(TEST_BIN)/test_managed

TEST_RUN += tests/test_source_rules.sh
TEST_RUN += tests/test_install.sh

$(TEST_BIN)/test_fused_step: tests/test_fused_step.cpp tests/emul/cuda_emul.h $(TEST_HEADERS) \
                             $(KERNEL_SOURCES) $(HEADERS) $(HOST_CORE_OBJECTS)
	@mkdir -p $(@D)
	$(CXX) $(EMUL_CXXFLAGS) $< -o $@ $(HOST_CORE_OBJECTS) -lm -lpthread

TEST_PROGRAMS += $(TEST_BIN)/test_fused_step
TEST_RUN += $(TEST_BIN)/test_fused_step

$(TEST_BIN)/test_fused_managed: tests/test_fused_managed.c $(TEST_HEADERS) $(STATIC_LIB)
	@mkdir -p $(@D)
	$(CC) $(TEST_CFLAGS) $< -o $@ $(STATIC_LIB) $(LIBS_CUDA) -lstdc++

TEST_PROGRAMS += $(TEST_BIN)/test_fused_managed
TEST_RUN += $(TEST_BIN)/test_fused_managed

$(TEST_BIN)/test_cpu_fast: tests/test_cpu_fast.c $(TEST_HEADERS) $(STATIC_LIB)
	@mkdir -p $(@D)
	$(CC) $(TEST_CFLAGS) $< -o $@ $(STATIC_LIB) $(LIBS_CUDA) -lstdc++

TEST_PROGRAMS += $(TEST_BIN)/test_cpu_fast
TEST_RUN += $(TEST_BIN)/test_cpu_fast
