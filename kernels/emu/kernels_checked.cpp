// The kernels instrumented for the race / init / mem checks: built with
// -fsanitize=thread but without the TSAN runtime, every load and store of kernel code
// calls a `__tsan_*` hook first, which memcheck.cpp defines.
#define DS_EMU_COPY 1
#include "kernels_copy.inc"
