# mk/bench.mk - benchmarks (included by the Makefile).
#   make bench          builds and runs all three parts; writes nothing:
#                         build/bench/adam_step_bench  GPU harness ("skipped: no CUDA device" without one)
#                         build/bench/cpu_bench        the CPU implementation, scaled-down sets
#                         bench/torch_bench.py         PyTorch's AdamW against ours ("torch not installed: skipped")
#   make bench-record   the same, then appends date, device, commit, command and the tables to bench/RESULTS.md
#   make bench-gpu / bench-cpu / bench-torch   one part only
#   make bench-emul     the GPU harness run on the CPU emulator (tests/emul): checks the harness, no timing
#   BENCH_ARGS="--sets=gpt2-124M,10k-small"   passed to every part (--sets and --seconds only);
#   BENCH_GPU_ARGS, BENCH_CPU_ARGS, BENCH_TORCH_ARGS for one part: --versions=, --divisor=N, --quick (GPU),
#   --no-cpu / --no-gpu (torch). The torch part uses .venv/bin/python when it exists, else $(PYTHON).

BENCH_BUILD := $(BUILD)/bench
BENCH_HEADERS := bench/model_shapes.h bench/bench_init.h bench/roofline.h
# -O3 for the bench's own CPU loop (version 2); -ffp-contract=off stays, so it matches the reference bitwise.
BENCH_CFLAGS := $(CFLAGS_COMMON) -O3 -fopenmp -Ibench
BENCH_NVCCFLAGS := $(NVCCFLAGS) -Ibench
BENCH_PYTHON ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,$(PYTHON))
BENCH_ARGS ?=
BENCH_GPU_ARGS ?=
BENCH_CPU_ARGS ?=
BENCH_TORCH_ARGS ?=

.PHONY: bench bench-gpu bench-cpu bench-torch bench-record bench-programs

bench-programs: $(BENCH_BUILD)/adam_step_bench $(BENCH_BUILD)/cpu_bench $(BUILD)/libfusedadam.so

$(BENCH_BUILD)/adam_step_bench: bench/adam_step_bench.cu $(BENCH_HEADERS) $(STATIC_LIB) $(HEADERS)
	@mkdir -p $(@D)
	$(NVCC) $(BENCH_NVCCFLAGS) $< -o $@ $(STATIC_LIB) $(XXHASH_LIBS)

$(BENCH_BUILD)/cpu_bench: bench/cpu_bench.c $(BENCH_HEADERS) $(STATIC_LIB) $(HEADERS)
	@mkdir -p $(@D)
	$(CC) $(BENCH_CFLAGS) $< -o $@ $(STATIC_LIB) $(LIBS_CUDA) -lstdc++

bench-gpu: $(BENCH_BUILD)/adam_step_bench
	./$(BENCH_BUILD)/adam_step_bench $(BENCH_ARGS) $(BENCH_GPU_ARGS)

bench-cpu: $(BENCH_BUILD)/cpu_bench
	./$(BENCH_BUILD)/cpu_bench $(BENCH_ARGS) $(BENCH_CPU_ARGS)

bench-torch: $(BENCH_BUILD)/cpu_bench $(BUILD)/libfusedadam.so
	$(BENCH_PYTHON) bench/torch_bench.py --lib $(BUILD)/libfusedadam.so --shapes-from ./$(BENCH_BUILD)/cpu_bench \
	    $(BENCH_ARGS) $(BENCH_TORCH_ARGS)

BENCH_ENV = BENCH_PYTHON="$(BENCH_PYTHON)" BENCH_BUILD="$(BENCH_BUILD)" BENCH_LIB="$(BUILD)/libfusedadam.so" \
            BENCH_ARGS="$(BENCH_ARGS)" BENCH_GPU_ARGS="$(BENCH_GPU_ARGS)" BENCH_CPU_ARGS="$(BENCH_CPU_ARGS)" \
            BENCH_TORCH_ARGS="$(BENCH_TORCH_ARGS)"

# All three parts, each run even if another fails (bench/record.sh).
bench: bench-programs
	@$(BENCH_ENV) bash bench/record.sh

bench-record: bench-programs
	@$(BENCH_ENV) bash bench/record.sh --append

# The GPU harness run on the CPU (bench/emul_bench.cpp): the library's kernels and the bench's under
# tests/emul/cuda_emul.h, scaled-down sets, one timed batch, the lean-layout and Lion rows on llama3-8B as
# on a GPU. Checks the harness where no GPU is (~70 s on 2 cores, half of it the lean rows' 8-bit moments;
# BENCH_GPU_ARGS=--lean-sets=none skips them; add BENCH_GPU_ARGS=--sets=10k-small for the many-tensor
# set, ~2.5 min emulated).
BENCH_HOST_OBJECTS := $(patsubst csrc/%.c,$(BUILD)/obj/%.o,$(LIB_C_SOURCES))

$(BENCH_BUILD)/emul_bench: bench/emul_bench.cpp bench/adam_step_bench.cu $(BENCH_HEADERS) $(BENCH_HOST_OBJECTS) \
                           $(KERNEL_SOURCES) $(HEADERS) tests/emul/cuda_emul.h
	@mkdir -p $(@D)
	$(CXX) $(EMUL_CXXFLAGS) $(foreach k,$(KERNEL_SOURCES),-include $(k)) -Ibench $< -o $@ $(BENCH_HOST_OBJECTS) $(XXHASH_LIBS) -lm -lpthread

.PHONY: bench-emul
bench-emul: $(BENCH_BUILD)/emul_bench
	./$(BENCH_BUILD)/emul_bench --divisor=4096 --quick --seconds=0 --sets=gpt2-124M,llama3-8B,one-2^30 $(BENCH_GPU_ARGS)

# make bench-checkpoint: fadam_save / fadam_load of a 1 GiB state on the CPU device against plain
# write+fsync and read of the same size on the same disk (bench/checkpoint_bench.c says how).
# CHECKPOINT_BENCH_ARGS: --gib=G --rounds=R --dir=DIR.
CHECKPOINT_BENCH_ARGS ?=
$(BENCH_BUILD)/checkpoint_bench: bench/checkpoint_bench.c $(STATIC_LIB) $(HEADERS)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS_COMMON) $< -o $@ $(STATIC_LIB) $(LIBS_CUDA) -lstdc++

.PHONY: bench-checkpoint
bench-checkpoint: $(BENCH_BUILD)/checkpoint_bench
	./$(BENCH_BUILD)/checkpoint_bench $(CHECKPOINT_BENCH_ARGS)
