// The kernels compiled for the host a second time, instrumented: built with
// -fsanitize=thread but without the TSAN runtime, every load and store of kernel code
// calls a `__tsan_*` hook, which memcheck.cpp defines to run the race, init and mem
// checks. Chosen per launch only when one of those checks is asked for, so the plain
// copy (kernels.cpp) keeps its speed.
//
// Everything of the kernel sources lands in an anonymous namespace, so that none of
// its inline functions or templates is shared with the plain copy (the linker would
// keep one of the two). The runtime's interface and the parameter structs stay
// outside: one of each for both copies.
#define DS_EMU_CHECKED_BUILD 1
#include "emu.h"
#include "../params.h"

namespace {
#include "../all.cu"
#include "broken.cu"
}  // namespace

// Referenced by the runtime so that the linker keeps this object (and with it the
// instrumented kernels' registrars) when it is pulled from the static library.
extern "C" int ds_emu_checked_kernels_anchor() { return 1; }
