# mk/torch_cpu_only.mk - the PyTorch extension's CPU-only build (setup.py with FADAM_CPU_ONLY=1, what a
# machine without a CUDA toolkit gets), into build/python-cpu-only/lib; after mk/torch.mk, whose
# interpreter it uses. tests/torch/test_cpu_only_extension.py imports it in a fresh interpreter.
TORCH_CPU_ONLY_STAMP := $(BUILD)/python-cpu-only/extension.stamp

$(TORCH_CPU_ONLY_STAMP): python/fusedadam/_C.cpp setup.py include/fusedadam.h $(CPU_ONLY_LIB) $(TORCH_READY)
	FADAM_CPU_ONLY=1 $(TORCH_PYTHON) setup.py --quiet build_ext --build-lib $(BUILD)/python-cpu-only/lib \
	    --build-temp $(BUILD)/python-cpu-only/tmp
	@mkdir -p $(@D) && touch $@

TEST_PROGRAMS += $(TORCH_CPU_ONLY_STAMP)
