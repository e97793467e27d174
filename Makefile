# fusedadam - fused multi-tensor Adam/AdamW for CUDA, with a CPU implementation.
#   make            build/libfusedadam.a and build/libfusedadam.so
#   make demo       train a synthetic model with AdamW and with Adam+L2 (GPU if present, else CPU)
#   make test       every test; ends with "N passed, N failed, N skipped"
#   make test-programs   build every test program without running them
#   make bench      benchmarks (GPU part skipped without a GPU)
#   make install PREFIX=/usr/local   header, libraries, pkg-config file
#   make regs       register/spill report of every kernel
#   make sass-check the kernels' sm_90 machine code against bench/sass_budget.txt (bench/SASS_CHECK.md)
#   make asan       the host code and its tests under AddressSanitizer/UBSan
#   make check-header   the public header alone as C99 -pedantic -Werror

# Builds use every core unless -j is given: the emulated tests' compiles are most of `make test`'s time
# (a fresh clone on 2 cores: ~11 of 17 minutes built one at a time). The test run itself stays serial.
ifeq ($(filter -j%,$(MAKEFLAGS)),)
MAKEFLAGS += -j$(shell nproc 2>/dev/null || echo 2)
endif

PREFIX ?= /usr/local
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(shell command -v nvcc 2>/dev/null || echo /usr/local/cuda/bin/nvcc))
NVCC ?= $(CUDA_HOME)/bin/nvcc
CC ?= gcc
CXX ?= g++
PYTHON ?= python3

VERSION := $(shell sed -n 's/^\#define FADAM_VERSION_\(MAJOR\|MINOR\|PATCH\) \([0-9]*\)/\2/p' include/fusedadam.h | paste -sd.)
# 0.x: every minor release may change the ABI (0.2 grew fadam_fused_step_config and
# fadam_step_counters; 0.3 changed fadam_tensor: void * states, layouts; 0.4 the table header,
# ADATAB5, and a bf16 param's rounding from its master), so the soname carries it: libfusedadam.so.0.4.
VERSION_WORDS := $(subst ., ,$(VERSION))
SOVERSION := $(if $(filter 0,$(word 1,$(VERSION_WORDS))),0.$(word 2,$(VERSION_WORDS)),$(word 1,$(VERSION_WORDS)))

BUILD := build
CUDA_INC := $(CUDA_HOME)/include
CUDA_LIB := $(CUDA_HOME)/lib64

# -ffp-contract=off / -fmad=false: no fused multiply-add anywhere, so the GPU, the emulated kernel
# and the C reference compute the same bits (docs/NUMERICS.md).
CFLAGS_COMMON := -std=c11 -O3 -g -Wall -Wextra -Wpointer-arith -Werror -ffp-contract=off -fno-math-errno -fPIC \
                 -Iinclude -Ikernels -Icsrc -I$(CUDA_INC) $(XXHASH_CFLAGS) $(EXTRA_CFLAGS)
NVCC_ARCH := -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
             -gencode arch=compute_90,code=compute_90
NVCCFLAGS := -std=c++17 -O3 -fmad=false $(NVCC_ARCH) -Werror all-warnings \
             -Xcompiler -fPIC,-Wall,-Wextra,-ffp-contract=off -Iinclude -Ikernels $(EXTRA_NVCCFLAGS)

LIB_C_SOURCES := $(wildcard csrc/*.c)
KERNEL_SOURCES := $(wildcard kernels/*.cu)
LIB_OBJECTS := $(patsubst csrc/%.c,$(BUILD)/obj/%.o,$(LIB_C_SOURCES)) \
               $(patsubst kernels/%.cu,$(BUILD)/obj/%.cu.o,$(KERNEL_SOURCES))
HEADERS := $(wildcard include/*.h csrc/*.h kernels/*.h kernels/*.cuh)
# The checkpoint checksum is XXH3 from libxxhash (Debian/Ubuntu: apt-get install libxxhash-dev), found
# by pkg-config; every program that links the library's objects links it too (through LIBS_CUDA).
# XXHASH_CFLAGS and XXHASH_LIBS given (no pkg-config; bench/gpu_session.sh's carried copy) are used as
# they are.
ifndef XXHASH_LIBS
ifeq ($(filter-out clean,$(MAKECMDGOALS))$(if $(MAKECMDGOALS),,all),)
else ifneq ($(shell pkg-config --exists libxxhash 2>/dev/null && echo found),found)
$(error libxxhash not found by pkg-config (checkpoint checksums need it): install libxxhash-dev (apt-get install -y libxxhash-dev pkg-config), set PKG_CONFIG_PATH to its libxxhash.pc, or set XXHASH_CFLAGS and XXHASH_LIBS)
endif
XXHASH_CFLAGS := $(shell pkg-config --cflags libxxhash 2>/dev/null)
XXHASH_LIBS := $(shell pkg-config --libs libxxhash 2>/dev/null)
endif
LIBS_CUDA := -L$(CUDA_LIB) -Wl,-rpath,$(CUDA_LIB) -lcudart $(XXHASH_LIBS) -lm -lpthread

STATIC_LIB := $(BUILD)/libfusedadam.a
SHARED_LIB := $(BUILD)/libfusedadam.so.$(VERSION)

.PHONY: all demo test bench install uninstall clean regs asan check-header
all: $(STATIC_LIB) $(BUILD)/libfusedadam.so

$(BUILD)/obj/%.o: csrc/%.c $(HEADERS)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS_COMMON) -c $< -o $@

$(BUILD)/obj/%.cu.o: kernels/%.cu $(HEADERS)
	@mkdir -p $(@D)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@

$(STATIC_LIB): $(LIB_OBJECTS)
	@rm -f $@
	ar rcs $@ $^

$(SHARED_LIB): $(LIB_OBJECTS) csrc/fusedadam.map
	$(CXX) -shared -Wl,-soname,libfusedadam.so.$(SOVERSION) -Wl,--version-script=csrc/fusedadam.map \
	    -o $@ $(LIB_OBJECTS) $(LIBS_CUDA)

$(BUILD)/libfusedadam.so: $(SHARED_LIB)
	ln -sf libfusedadam.so.$(VERSION) $(BUILD)/libfusedadam.so.$(SOVERSION)
	ln -sf libfusedadam.so.$(VERSION) $@

# ---- demo ----
$(BUILD)/demo: examples/demo.c $(STATIC_LIB)
	$(CC) $(CFLAGS_COMMON) $< -o $@ $(STATIC_LIB) $(LIBS_CUDA) -lstdc++

demo: $(BUILD)/demo
	./$(BUILD)/demo

# ---- register/spill report ----
regs:
	@for f in $(KERNEL_SOURCES); do \
	    echo "== $$f"; \
	    $(NVCC) $(NVCCFLAGS) -Xptxas -v -c $$f -o /dev/null 2>&1 | grep -E "Compiling entry|registers|spill" ; \
	done

check-header:
	$(CC) -std=c99 -pedantic -Wall -Wextra -Werror -fsyntax-only -x c include/fusedadam.h
	$(CXX) -std=c++11 -pedantic -Wall -Wextra -Werror -fsyntax-only -x c++ include/fusedadam.h

# ---- install ----
install: all
	install -d $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/lib/pkgconfig
	install -m 644 include/fusedadam.h $(DESTDIR)$(PREFIX)/include/
	install -m 644 $(STATIC_LIB) $(DESTDIR)$(PREFIX)/lib/
	install -m 755 $(SHARED_LIB) $(DESTDIR)$(PREFIX)/lib/
	ln -sf libfusedadam.so.$(VERSION) $(DESTDIR)$(PREFIX)/lib/libfusedadam.so.$(SOVERSION)
	ln -sf libfusedadam.so.$(VERSION) $(DESTDIR)$(PREFIX)/lib/libfusedadam.so
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@VERSION@|$(VERSION)|g' -e 's|@CUDA_LIB@|$(CUDA_LIB)|g' \
	    fusedadam.pc.in > $(DESTDIR)$(PREFIX)/lib/pkgconfig/fusedadam.pc

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/include/fusedadam.h $(DESTDIR)$(PREFIX)/lib/libfusedadam.* \
	      $(DESTDIR)$(PREFIX)/lib/pkgconfig/fusedadam.pc

clean:
	rm -rf $(BUILD)

# ---- tests: each fragment adds programs to TEST_PROGRAMS (built first) and commands to TEST_RUN ----
TEST_PROGRAMS :=
TEST_RUN :=
include mk/tests.mk
# Every other fragment (mk/*.mk), in name order, after tests.mk whose variables they use.
include $(filter-out mk/tests.mk,$(sort $(wildcard mk/*.mk)))

.PHONY: test-programs
test-programs: all $(TEST_PROGRAMS)

test: all $(TEST_PROGRAMS)
	@bash tests/run_tests.sh $(TEST_RUN)
