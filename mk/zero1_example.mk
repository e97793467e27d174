# Issue 13: examples/zero1.c, ZeRO-1 over NCCL, one process per GPU. The library links no NCCL; the
# example links the toolkit's (or the system's). Built with `make` (all) so CI compiles and links it;
# without nccl.h or libnccl it says so and is skipped. Run: ./build/zero1 (README, "Training across
# GPUs from C").
NCCL_HOME ?= $(CUDA_HOME)
NCCL_LIB_DIR ?= $(firstword $(foreach d,$(NCCL_HOME)/lib64 $(NCCL_HOME)/lib /usr/lib/x86_64-linux-gnu /usr/lib64,\
                  $(if $(wildcard $(d)/libnccl.so $(d)/libnccl.so.2),$(d))))
NCCL_HEADER := $(firstword $(wildcard $(NCCL_HOME)/include/nccl.h $(CUDA_INC)/nccl.h /usr/include/nccl.h))

.PHONY: zero1
all: zero1
ifneq ($(and $(NCCL_LIB_DIR),$(NCCL_HEADER)),)
zero1: $(BUILD)/zero1
$(BUILD)/zero1: examples/zero1.c $(STATIC_LIB)
	$(CC) $(CFLAGS_COMMON) -I$(dir $(NCCL_HEADER)) $< -o $@ $(STATIC_LIB) \
	    -L$(NCCL_LIB_DIR) -Wl,-rpath,$(NCCL_LIB_DIR) -l:$(notdir $(firstword $(wildcard $(NCCL_LIB_DIR)/libnccl.so $(NCCL_LIB_DIR)/libnccl.so.2))) \
	    $(LIBS_CUDA) -lstdc++
else
zero1:
	@echo "zero1 example skipped: NCCL not found (nccl.h: '$(NCCL_HEADER)', libnccl.so in: '$(NCCL_LIB_DIR)'; set NCCL_HOME)"
endif
