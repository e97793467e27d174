# mk/cpu_only.mk - the library without CUDA (issue 14, installation): csrc/ compiled against
# csrc/cpu_only/cuda_runtime.h, the kernels replaced by csrc/cpu_only/cuda_stub.c (no device). Needs no
# CUDA toolkit; setup.py builds the PyTorch extension on it when it finds no nvcc.
#   make cpu-only     build/cpu-only/libfusedadam.a
# make test runs tests/test_cpu_only.sh: the CPU-only library references no CUDA symbol, and a C test
# program linked with it alone (no libcudart) steps on the CPU and reports no CUDA device.
CPU_ONLY_BUILD := $(BUILD)/cpu-only
CPU_ONLY_LIB := $(CPU_ONLY_BUILD)/libfusedadam.a
CPU_ONLY_OBJECTS := $(patsubst csrc/%.c,$(CPU_ONLY_BUILD)/obj/%.o,$(LIB_C_SOURCES)) $(CPU_ONLY_BUILD)/obj/cuda_stub.o
# The stand-in header comes first; NVTX (a CUDA toolkit header) is compiled out.
CPU_ONLY_CFLAGS := -Icsrc/cpu_only $(filter-out -I$(CUDA_INC),$(CFLAGS_COMMON)) -DFADAM_NO_NVTX -DFADAM_CPU_ONLY

.PHONY: cpu-only
cpu-only: $(CPU_ONLY_LIB)

$(CPU_ONLY_BUILD)/obj/%.o: csrc/%.c $(HEADERS) csrc/cpu_only/cuda_runtime.h
	@mkdir -p $(@D)
	$(CC) $(CPU_ONLY_CFLAGS) -c $< -o $@

$(CPU_ONLY_BUILD)/obj/cuda_stub.o: csrc/cpu_only/cuda_stub.c $(HEADERS) csrc/cpu_only/cuda_runtime.h
	@mkdir -p $(@D)
	$(CC) $(CPU_ONLY_CFLAGS) -c $< -o $@

$(CPU_ONLY_LIB): $(CPU_ONLY_OBJECTS)
	@rm -f $@
	ar rcs $@ $^

# Linked with the CPU-only library and libxxhash alone: no -lcudart, no C++ runtime.
$(CPU_ONLY_BUILD)/test_cpu_only: tests/test_cpu_only.c $(TEST_HEADERS) $(CPU_ONLY_LIB)
	$(CC) $(CPU_ONLY_CFLAGS) -Itests -Wno-unused-function $< -o $@ $(CPU_ONLY_LIB) $(XXHASH_LIBS) -lm -lpthread

TEST_PROGRAMS += $(CPU_ONLY_LIB) $(CPU_ONLY_BUILD)/test_cpu_only
TEST_RUN += tests/test_cpu_only.sh
