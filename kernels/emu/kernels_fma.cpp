// The kernels with a*b+c contracted into fused multiply-adds (-ffp-contract=fast), as
// nvcc compiles them for a GPU: the emulator's model of a GPU's rounding, against which
// the real-GPU tests' tolerances are checked (DIFFSTYLE_EMU_CHECK=fma).
#define DS_EMU_COPY 2
#include "kernels_copy.inc"
