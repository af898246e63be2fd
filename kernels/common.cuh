// Shared by every kernel family: the CUDA / host-emulation switch, the parameter
// blocks, and conversions for the weight storage types.
#pragma once

#ifdef __CUDACC__
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>
#include <type_traits>
// Dynamic shared memory, written the same way for both builds.
#define DS_DYN_SMEM(T, name)                                            \
    extern __shared__ __align__(16) unsigned char ds_dyn_smem_##name[]; \
    T* name = reinterpret_cast<T*>(ds_dyn_smem_##name)
// The emulated build registers kernels by name; nvcc needs nothing.
#define DS_REGISTER(name, P)
// The emulator's checks name the call site of a wrapper (mma.cuh); nvcc needs nothing.
#define DS_SITE_PARAM
// Kernels keep their names in the fatbin (the launchers look them up by name).
#define DS_KERNEL extern "C" __global__
#else
#include "emu/emu.h"
#define DS_SITE_PARAM , DS_EMU_SITE
// On the host a kernel is reached through its DS_REGISTER entry; internal linkage lets
// the plain and the instrumented copy of one kernel live in one binary.
#define DS_KERNEL static
#endif

#include "params.h"

#define DS_DEV __device__ __forceinline__

// Storage type <-> f32. Weights may be f32, f16 or bf16; activations are f32.
template <class T>
DS_DEV float ds_to_f32(T v);
template <>
DS_DEV float ds_to_f32<float>(float v) {
    return v;
}
template <>
DS_DEV float ds_to_f32<__half>(__half v) {
    return __half2float(v);
}
template <>
DS_DEV float ds_to_f32<__nv_bfloat16>(__nv_bfloat16 v) {
    return __bfloat162float(v);
}

template <class T>
DS_DEV T ds_from_f32(float v);
template <>
DS_DEV float ds_from_f32<float>(float v) {
    return v;
}
template <>
DS_DEV __half ds_from_f32<__half>(float v) {
    return __float2half_rn(v);
}
template <>
DS_DEV __nv_bfloat16 ds_from_f32<__nv_bfloat16>(float v) {
    return __float2bfloat16_rn(v);
}

// Two 16-bit values packed into the 32-bit register layout of mma operands: `lo` is
// the element with the lower index.
template <class T>
DS_DEV uint32_t ds_pack2(float lo, float hi) {
    T a = ds_from_f32<T>(lo), b = ds_from_f32<T>(hi);
    uint16_t ua, ub;
    memcpy(&ua, &a, 2);
    memcpy(&ub, &b, 2);
    return (uint32_t)ua | ((uint32_t)ub << 16);
}
