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
DS_KERNEL void broken_missing_wait(const BrokenParams p) {
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
DS_KERNEL void broken_missing_barrier(const BrokenParams p) {
    DS_DYN_SMEM(float, s);
    int t = (int)threadIdx.x;
    s[t] = p.src[t];
    if (p.fixed) __syncthreads();
    p.out[blockIdx.x * blockDim.x + t] = t > 0 ? s[t - 1] : 0.f;
}
DS_REGISTER(broken_missing_barrier, BrokenParams)

// sync: the two halves of the block meet at different barriers.
DS_KERNEL void broken_divergent_barrier(const BrokenParams p) {
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
DS_KERNEL void broken_divergent_shuffle(const BrokenParams p) {
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
DS_KERNEL void broken_misaligned_cp_async(const BrokenParams p) {
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
DS_KERNEL void broken_misaligned_ldmatrix(const BrokenParams p) {
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

// race: thread t overwrites what thread t - 1 reads in the same barrier interval; in the
// plain order the reader runs first.
DS_KERNEL void broken_racy_write(const BrokenParams p) {
    DS_DYN_SMEM(float, s);
    int t = (int)threadIdx.x;
    s[t] = p.src[t];
    __syncthreads();
    bool inner = t + 1 < (int)blockDim.x;  // the last thread, first after a barrier here, keeps its value
    float v = inner ? s[t + 1] : 0.f;
    if (p.fixed) __syncthreads();
    if (inner) s[t] = 2.f * v;
    __syncthreads();
    p.out[blockIdx.x * blockDim.x + t] = s[t];
}
DS_REGISTER(broken_racy_write, BrokenParams)

// init: thread 0 also reads the one element of a static __shared__ array that nobody
// wrote; on the host it holds an earlier block's value (zero at first), which the
// result does not show.
DS_KERNEL void broken_unwritten_shared(const BrokenParams p) {
    __shared__ float st[1025];
    int t = (int)threadIdx.x, n = (int)blockDim.x;
    st[t] = p.src[t];
    if (p.fixed && t == 0) st[n] = 0.f;
    __syncthreads();
    float extra = t == 0 ? st[n] : 0.f;
    p.out[blockIdx.x * n + t] = st[t] + (extra > 3.0e38f ? 1.f : 0.f);
}
DS_REGISTER(broken_unwritten_shared, BrokenParams)

// mem: the last thread also writes one element past the end of `out` (into the
// emulated allocation's red zone, where the plain emulator does not notice it).
DS_KERNEL void broken_out_of_bounds(const BrokenParams p) {
    int t = (int)threadIdx.x, i = (int)(blockIdx.x * blockDim.x) + t;
    int last = (int)(gridDim.x * blockDim.x) - 1;
    p.out[i] = p.src[t];
    if (!p.fixed && i == last) p.out[i + 1] = p.src[t];
}
DS_REGISTER(broken_out_of_bounds, BrokenParams)

// Any mode: thread 1 waits for its warp while the warp waits for it at the block
// barrier; the launch fails as a deadlock (it used to abort the process).
DS_KERNEL void broken_deadlock(const BrokenParams p) {
    int t = (int)threadIdx.x;
    if (p.fixed || t != 1) __syncthreads();
    __syncwarp();
    if (!p.fixed && t == 1) __syncthreads();
    p.out[blockIdx.x * blockDim.x + t] = p.src[t];
}
DS_REGISTER(broken_deadlock, BrokenParams)
