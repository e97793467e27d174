# Checkpoints (issue 6): the save/load test, and a bounded fuzz run of the loader.
#   make fuzz FUZZ_SECONDS=600     a longer fuzz run alone
#   make fuzz-corpus               rewrite the seed corpus tests/fuzz/corpus from tests/fuzz/fuzz_model.h
# The fuzz target is built with clang's libFuzzer when `$(FUZZ_CC) -fsanitize=fuzzer` links (Debian:
# clang and libclang-rt-14-dev); otherwise with $(CC) and tests/fuzz/standalone_driver.c, which replays
# the corpus and mutates it for the same time. Both with ASan and UBSan over the library's host code.
FUZZ_CC ?= clang
FUZZ_SECONDS ?= 20
FUZZ_BINARY := $(BUILD)/fuzz_checkpoint_load
FUZZ_FLAGS := $(XXHASH_CFLAGS) -std=c11 -g -O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined \
              -DFUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION -DFADAM_NO_NVTX -Iinclude -Ikernels -Icsrc -Itests/fuzz \
              -I$(CUDA_INC)
# The host code is rebuilt sanitized; the kernels' objects (no host logic of ours) link as they are.
FUZZ_INPUTS := tests/fuzz/fuzz_checkpoint_load.c $(LIB_C_SOURCES) $(filter %.cu.o,$(LIB_OBJECTS))

$(BUILD)/test_checkpoint: tests/test_checkpoint.c tests/check.h tests/fuzz/fuzz_model.h $(STATIC_LIB)
	$(CC) $(CFLAGS_COMMON) -Itests $< -o $@ $(STATIC_LIB) $(LIBS_CUDA) -lstdc++

$(FUZZ_BINARY): tests/fuzz/fuzz_checkpoint_load.c tests/fuzz/standalone_driver.c tests/fuzz/fuzz_model.h \
                $(LIB_C_SOURCES) $(HEADERS) $(STATIC_LIB)
	@mkdir -p $(@D)
	@if $(FUZZ_CC) $(FUZZ_FLAGS) -fsanitize=fuzzer $(FUZZ_INPUTS) -o $@ $(LIBS_CUDA) -lstdc++ \
	        >$(BUILD)/fuzz-build.log 2>&1; then \
	    echo "fuzz target: libFuzzer ($(FUZZ_CC)) -> $@"; \
	else \
	    echo "fuzz target: $(FUZZ_CC) -fsanitize=fuzzer unavailable (see $(BUILD)/fuzz-build.log); standalone driver -> $@"; \
	    $(CC) $(FUZZ_FLAGS) tests/fuzz/standalone_driver.c $(FUZZ_INPUTS) -o $@ $(LIBS_CUDA) -lstdc++; \
	fi

TEST_PROGRAMS += $(BUILD)/test_checkpoint $(FUZZ_BINARY)
TEST_RUN += $(BUILD)/test_checkpoint "tests/fuzz/fuzz_checkpoint_load.sh $(FUZZ_BINARY) $(FUZZ_SECONDS)"

.PHONY: fuzz fuzz-corpus
fuzz: $(FUZZ_BINARY)
	tests/fuzz/fuzz_checkpoint_load.sh $(FUZZ_BINARY) $(FUZZ_SECONDS)

fuzz-corpus: $(BUILD)/test_checkpoint
	./$(BUILD)/test_checkpoint --write-corpus tests/fuzz/corpus
