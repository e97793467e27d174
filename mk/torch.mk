# mk/torch.mk - the PyTorch binding (python/fusedadam, included by the Makefile).
#   make torch-venv   .venv: a virtual environment with the pinned torch from PyPI, set up once per
#                     machine and reused (tests/torch/setup_venv.sh)
#   make torch-ext    builds the extension fusedadam._C in place (python/fusedadam/_C.*.so) against
#                     .venv's torch, linking build/libfusedadam.a
#   make test         also runs tests/torch/run_torch_tests.sh: parity with torch.optim.AdamW/Adam on
#                     CPU tensors, state_dict interchange, errors; the CUDA cases when a GPU is present
# FADAM_TORCH_PYTHON=/path/to/python uses that interpreter (torch installed) instead of .venv.

.PHONY: torch-venv torch-ext torch-ext-missing

TORCH_EXT_STAMP := $(BUILD)/python/extension.stamp
# The stamp alone would not notice a deleted extension.
TORCH_EXT_MISSING := $(if $(wildcard python/fusedadam/_C*.so),,torch-ext-missing)

ifdef FADAM_TORCH_PYTHON
TORCH_PYTHON := $(FADAM_TORCH_PYTHON)
TORCH_READY :=
export FADAM_TORCH_PYTHON
else
TORCH_PYTHON := .venv/bin/python
TORCH_READY := .venv/.fusedadam-torch
endif

.venv/.fusedadam-torch: tests/torch/setup_venv.sh
	PYTHON=$(PYTHON) bash tests/torch/setup_venv.sh .venv

torch-venv: $(TORCH_READY)

$(TORCH_EXT_STAMP): python/fusedadam/_C.cpp setup.py include/fusedadam.h $(STATIC_LIB) $(TORCH_READY) $(TORCH_EXT_MISSING)
	CUDA_HOME=$(CUDA_HOME) $(TORCH_PYTHON) setup.py --quiet build_ext --inplace
	@mkdir -p $(@D) && touch $@

torch-ext: $(TORCH_EXT_STAMP)

TEST_PROGRAMS += $(TORCH_EXT_STAMP)
TEST_RUN += tests/torch/run_torch_tests.sh

# The PyTorch comparison times the extension: rebuild it first when the venv is there (never install
# torch just to benchmark).
bench-torch bench-record: $(if $(wildcard $(TORCH_PYTHON)),$(TORCH_EXT_STAMP))
