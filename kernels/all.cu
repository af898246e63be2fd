// The one translation unit of the kernel build: nvcc compiles it into the embedded
// fatbin, and kernels/emu/kernels.cpp compiles the same sources for the host.
#include "common.cuh"
#include "mma.cuh"

#include "conv.cu"
#include "norm.cu"
#include "resample.cu"
#include "attention.cu"
#include "elementwise.cu"
#include "hspace.cu"
#include "step.cu"
