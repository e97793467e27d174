# Checkpoints (issue 6): the save/load test, and a bounded fuzz run of the loader.
#   make fuzz FUZZ_SECONDS=600     a longer run of every fuzz target
#   make fuzz-corpus               rewrite the seed corpus tests/fuzz/corpus from tests/fuzz/fuzz_model.h
# A fuzz target (tests/fuzz/NAME.c) is built with clang's libFuzzer when `$(FUZZ_CC) -fsanitize=fuzzer`
# links (Debian: clang and libclang-rt-dev), and then fuzzes for FUZZ_SECONDS in make test; otherwise
# it is built with $(CC) and tests/fuzz/standalone_driver.c, which only replays the seed corpus (make
# test reports the fuzzing as skipped). Both with ASan and UBSan over the host code it needs.
FUZZ_CC ?= clang
FUZZ_SECONDS ?= 20
FUZZ_BINARY := $(BUILD)/fuzz_checkpoint_load
FUZZ_FLAGS := $(XXHASH_CFLAGS) -std=c11 -g -O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined \
              -DFUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION -DFADAM_NO_NVTX -Iinclude -Ikernels -Icsrc -Itests/fuzz \
              -I$(CUDA_INC)
# Each target's inputs (FUZZ_INPUTS_<name>). The loader's: the host code rebuilt sanitized; the
# kernels' objects (no host logic of ours) link as they are.
FUZZ_INPUTS_fuzz_checkpoint_load := tests/fuzz/fuzz_checkpoint_load.c $(LIB_C_SOURCES) $(filter %.cu.o,$(LIB_OBJECTS))
# The recipe of every fuzz target $@, from $(FUZZ_INPUTS_$(@F)).
define build_fuzz_target
	@mkdir -p $(@D)
	@if $(FUZZ_CC) $(FUZZ_FLAGS) -fsanitize=fuzzer $(FUZZ_INPUTS_$(@F)) -o $@ $(LIBS_CUDA) -lstdc++ \
	        >$(BUILD)/$(@F)-build.log 2>&1; then \
	    echo "fuzz target: libFuzzer ($(FUZZ_CC)) -> $@"; \
	else \
	    echo "fuzz target: $(FUZZ_CC) -fsanitize=fuzzer unavailable (see $(BUILD)/$(@F)-build.log); replay-only standalone driver -> $@"; \
	    $(CC) $(FUZZ_FLAGS) tests/fuzz/standalone_driver.c $(FUZZ_INPUTS_$(@F)) -o $@ $(LIBS_CUDA) -lstdc++; \
	fi
endef

$(BUILD)/test_checkpoint: tests/test_checkpoint.c tests/check.h tests/fuzz/fuzz_model.h $(STATIC_LIB)
	$(CC) $(CFLAGS_COMMON) -Itests $< -o $@ $(STATIC_LIB) $(LIBS_CUDA) -lstdc++

$(FUZZ_BINARY): tests/fuzz/fuzz_checkpoint_load.c tests/fuzz/standalone_driver.c tests/fuzz/fuzz_model.h \
                $(LIB_C_SOURCES) $(HEADERS) $(STATIC_LIB)
	$(build_fuzz_target)

TEST_PROGRAMS += $(BUILD)/test_checkpoint $(FUZZ_BINARY)
TEST_RUN += $(BUILD)/test_checkpoint "tests/fuzz/run_fuzz.sh $(FUZZ_BINARY) $(FUZZ_SECONDS) tests/fuzz/corpus"

# BINARY:CORPUS of every fuzz target; other fragments add theirs (and make fuzz depend on it).
FUZZ_RUNS := $(FUZZ_BINARY):tests/fuzz/corpus
.PHONY: fuzz fuzz-corpus
fuzz: $(FUZZ_BINARY)
	@for run in $(FUZZ_RUNS); do tests/fuzz/run_fuzz.sh $${run%%:*} $(FUZZ_SECONDS) $${run#*:} || exit 1; done

fuzz-corpus: $(BUILD)/test_checkpoint
	./$(BUILD)/test_checkpoint --write-corpus tests/fuzz/corpus
