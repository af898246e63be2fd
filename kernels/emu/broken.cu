// Deliberately broken kernels, compiled into the emulated build only: each has one bug
// that real hardware punishes at random and the plain emulator lets through, and the
// check that must catch it (src/backend/gpu/emu_checks.rs).
// With `fixed` set each runs its correct version, which must pass every check.
#pragma once
#include "../mma.cuh"

struct BrokenParams {
    float* out;       // [blocks][threads]
    const float* src;  // [threads * 4 + 8], 16-byte aligned
    int fixed;
};

// async: copies land at their wait; without it the block reads poisoned shared memory.
extern "C" __global__ void broken_missing_wait(const BrokenParams p) {
    DS_DYN_SMEM(float, s);
    int t = (int)threadIdx.x;
    cp_async_16(s + 4 * t, p.src + 4 * t);
    cp_async_commit();
    if (p.fixed) cp_async_wait<0>();
    __syncthreads();
    p.out[blockIdx.x * blockDim.x + t] = s[(4 * t + 4) % (4 * (int)blockDim.x)];
}
DS_REGISTER(broken_missing_wait, BrokenParams)

// sched: thread t reads what thread t - 1 wrote; in the plain order it always has.
extern "C" __global__ void broken_missing_barrier(const BrokenParams p) {
    DS_DYN_SMEM(float, s);
    int t = (int)threadIdx.x;
    s[t] = p.src[t];
    if (p.fixed) __syncthreads();
    p.out[blockIdx.x * blockDim.x + t] = t > 0 ? s[t - 1] : 0.f;
}
DS_REGISTER(broken_missing_barrier, BrokenParams)

// sync: the two halves of the block meet at different barriers.
extern "C" __global__ void broken_divergent_barrier(const BrokenParams p) {
    int t = (int)threadIdx.x;
    if (p.fixed || t < 32) {
        __syncthreads();
    } else {
        __syncthreads();
    }
    p.out[blockIdx.x * blockDim.x + t] = p.src[t];
}
DS_REGISTER(broken_divergent_barrier, BrokenParams)

// sync: lanes of one warp shuffle from different call sites.
extern "C" __global__ void broken_divergent_shuffle(const BrokenParams p) {
    int t = (int)threadIdx.x;
    float v = p.src[t];
    if (p.fixed || (t & 1)) {
        v = __shfl_xor_sync(0xffffffffu, v, 1);
    } else {
        v = __shfl_xor_sync(0xffffffffu, v, 1);
    }
    p.out[blockIdx.x * blockDim.x + t] = v;
}
DS_REGISTER(broken_divergent_shuffle, BrokenParams)

// align: a 16-byte cp.async to a shared address 4 bytes off its alignment.
extern "C" __global__ void broken_misaligned_cp_async(const BrokenParams p) {
    DS_DYN_SMEM(float, s);
    int t = (int)threadIdx.x;
    cp_async_16(s + 4 * t + (p.fixed ? 0 : 1), p.src + 4 * t);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    p.out[blockIdx.x * blockDim.x + t] = s[4 * t + (p.fixed ? 0 : 1)];
}
DS_REGISTER(broken_misaligned_cp_async, BrokenParams)

// align: ldmatrix row addresses 8 bytes off their 16-byte alignment.
extern "C" __global__ void broken_misaligned_ldmatrix(const BrokenParams p) {
    DS_DYN_SMEM(float, s);
    int t = (int)threadIdx.x;
    for (int i = t; i < 4 * (int)blockDim.x + 8; i += (int)blockDim.x) s[i] = p.src[i];
    __syncthreads();
    uint32_t r[1];
    // Lanes 0..7 give the 8 row addresses (16 bytes = 4 floats each).
    ldmatrix<1, false>(r, s + 4 * (t % 8) + (p.fixed ? 0 : 2));
    p.out[blockIdx.x * blockDim.x + t] = (float)(r[0] & 0xffff);
}
DS_REGISTER(broken_misaligned_ldmatrix, BrokenParams)

// Any mode: thread 1 waits for its warp while the warp waits for it at the block
// barrier; the launch fails as a deadlock (it used to abort the process).
extern "C" __global__ void broken_deadlock(const BrokenParams p) {
    int t = (int)threadIdx.x;
    if (p.fixed || t != 1) __syncthreads();
    __syncwarp();
    if (!p.fixed && t == 1) __syncthreads();
    p.out[blockIdx.x * blockDim.x + t] = p.src[t];
}
DS_REGISTER(broken_deadlock, BrokenParams)
