# mk/convergence.mk - issue 12's convergence comparison (bench/convergence.py), a benchmark, not a test:
#   make bench-convergence   trains the same 3.2M-parameter byte-level LM on the Python standard
#                            library's source for 2,000 steps per optimizer configuration (~10-20
#                            minutes each on 2 cores) and writes bench/convergence.{png,md,csv,json}
# CONVERGENCE_ARGS passes options (e.g. --steps 50 --quick for a smoke run). matplotlib is installed into
# the torch venv on first use, for the PNG.
.PHONY: bench-convergence
CONVERGENCE_ARGS ?= --jobs 2
bench-convergence: torch-ext
	$(TORCH_PYTHON) -c "import matplotlib" 2>/dev/null || $(TORCH_PYTHON) -m pip install --quiet "matplotlib==3.11.2"
	$(TORCH_PYTHON) bench/convergence.py $(CONVERGENCE_ARGS)
