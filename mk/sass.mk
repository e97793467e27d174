# mk/sass.mk - the performance gate that needs no GPU (issue 11; bench/SASS_CHECK.md).
#   make sass-check    disassembles the sm_90 code of every kernel object, prints registers, occupancy and
#                      each inner loop's global accesses and instructions per element, and checks them
#                      against bench/sass_budget.txt. cuobjdump comes from bench/sass_tools.sh (the
#                      toolkit's, or a pip install cached under ~/.cache/fusedadam); without it: skip.
SASS_OBJECTS := $(filter %.cu.o,$(LIB_OBJECTS))

.PHONY: sass-check
sass-check: $(SASS_OBJECTS)
	@bash bench/sass_check.sh $(SASS_OBJECTS)

TEST_RUN += "bench/sass_check.sh $(SASS_OBJECTS)"
