// The kernels, compiled for the host against the emulation runtime.
#include "../all.cu"

// Referenced by the runtime so that the linker keeps this object (and with it the
// kernels' registrars) when it is pulled from the static library.
extern "C" int ds_emu_kernels_anchor() { return 1; }
