// The kernels, compiled for the host against the emulation runtime.
#include "../all.cu"
