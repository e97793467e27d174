/* nvtx_ranges.h - NVTX ranges named "fusedadam/<what>" around public calls that do work, so a
 * profile in Nsight shows ours. NVTX3 is header-only; -DFADAM_NO_NVTX compiles the ranges out. */
#ifndef FADAM_NVTX_RANGES_H
#define FADAM_NVTX_RANGES_H

#if defined(FADAM_NO_NVTX)
#define FADAM_RANGE_PUSH(name) ((void)0)
#define FADAM_RANGE_POP() ((void)0)
#else
#include <nvtx3/nvToolsExt.h>
#define FADAM_RANGE_PUSH(name) nvtxRangePushA("fusedadam/" name)
#define FADAM_RANGE_POP() nvtxRangePop()
#endif

#endif
