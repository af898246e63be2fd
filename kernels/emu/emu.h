// Host emulation of the CUDA dialect the kernels use, so that kernels/*.cu compile as
// C++17 on a machine without a GPU and run in `cargo test`. Each CUDA thread is a
// fiber; a block's fibers run round-robin on one OS thread and switch only at
// barriers; blocks of one launch are spread over a pool of OS threads. Included only
// on the host (common.cuh picks it when __CUDACC__ is not defined).
//
// Rules for kernel code, so that it compiles both ways:
// - static shared memory: `__shared__` arrays of trivial types (no initialisers);
//   dynamic shared memory only through DS_DYN_SMEM(type, name);
// - __half / __nv_bfloat16 only through the conversion functions below (no arithmetic
//   operators, no constructors from float);
// - warp-level primitives with the full-warp mask; tensor-core / async-copy
//   instructions only through the wrappers of mma.cuh;
// - kernels declared `DS_KERNEL void name(const Params p)` and registered with
//   DS_REGISTER (on the host they are static, reached through the registry).
// The kernels are compiled three times for the host: plainly (kernels.cpp),
// instrumented for the race / init / mem checks (kernels_checked.cpp) and with FMA
// contraction (kernels_fma.cpp). The functions below are `static` so that each copy
// calls its own.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <type_traits>

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

namespace emu {

struct ThreadCtx {
    dim3 tid;
    unsigned linear;  // x + y*bx + z*bx*by
    unsigned lane;    // linear % 32
    unsigned warp;    // linear / 32
};

struct BlockCtx {
    dim3 bid, bdim, gdim;
    unsigned char* dyn_smem;
};

extern thread_local ThreadCtx* g_thread;
extern thread_local BlockCtx* g_block;

// The checks a launch runs (DIFFSTYLE_EMU_CHECK, parsed by src/backend/gpu/emu.rs).
enum Check : unsigned {
    kCheckRace = 1u << 0,   // shared memory: conflicting accesses of two threads in one barrier interval
    kCheckInit = 1u << 1,   // shared memory read before this block wrote it
    kCheckMem = 1u << 2,    // global accesses outside their allocation, shared outside the block's
    kCheckAsync = 1u << 3,  // cp.async lands at its wait_group, destination poisoned until then
    kCheckSched = 1u << 4,  // seeded permutation of the fibers' order
    kCheckSync = 1u << 5,   // a barrier or warp collective reached from different call sites
    kCheckAlign = 1u << 6,  // cp.async / ldmatrix addresses aligned
    kModeFma = 1u << 7,     // not a check: run the copy compiled with FMA contraction
};
// The checks of the running launch.
unsigned checks();
// Records a failed check for the launch (naming the kernel, block, thread and `site`)
// and ends the block: the launch then returns the message as its error.
[[noreturn]] void check_failed(const char* check, const char* file, int line, const char* fmt, ...)
    __attribute__((format(printf, 4, 5)));

// Barrier over the block's live threads (threads that returned count as arrived);
// `file` / `line`: the call site, for the sync check.
void syncthreads(const char* file, int line);
// Barrier over the live threads of the caller's warp.
void syncwarp(const char* file, int line);
// Each lane of the warp contributes `bytes` (<= 128) from `mine`; afterwards `all`
// holds the 32 contributions, lane after lane (`all` must have 32*bytes). Lanes that
// have exited leave stale data.
void warp_exchange(const void* mine, void* all, size_t bytes, const char* file, int line);
// The cheaper form: publishes this lane's bytes and returns the warp's exchange area
// (lane l's bytes at l * kWarpSlot). Read it at once: it stays valid until the lane's
// next warp barrier (consecutive exchanges use alternate areas).
constexpr size_t kWarpSlot = 128;
const unsigned char* warp_publish(const void* mine, size_t bytes, const char* file, int line);
// As warp_publish; `*first` is set for the one lane that completed the barrier. It runs
// before any other lane of the warp resumes (fibers switch only at barriers), so what
// it writes into the area (in any lane's slot) is there when the others read it.
unsigned char* warp_publish_first(const void* mine, size_t bytes, bool* first, const char* file, int line);
// cp.async of `bytes` from `src` (zeros when !valid) to shared `dst`: at once, or with
// the async check, read now and landed by the wait that covers its group.
void async_copy(void* dst, const void* src, size_t bytes, bool valid, const char* file, int line);
void async_commit();
void async_wait(int pending);
[[noreturn]] void trap(const char* what);

}  // namespace emu

#define threadIdx (::emu::g_thread->tid)
#define blockIdx (::emu::g_block->bid)
#define blockDim (::emu::g_block->bdim)
#define gridDim (::emu::g_block->gdim)
#define warpSize 32

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
// Per OS thread = per running block (blocks on one OS thread run one after another).
#define __shared__ static thread_local
#define __syncthreads() ::emu::syncthreads(__FILE__, __LINE__)
#define __syncwarp(...) ::emu::syncwarp(__FILE__, __LINE__)
// The call site of a warp primitive, as default arguments evaluated where it is called.
#define DS_EMU_SITE const char *ds_file = __builtin_FILE(), int ds_line = __builtin_LINE()
#define __threadfence() __atomic_thread_fence(__ATOMIC_SEQ_CST)
#define __trap() ::emu::trap("__trap()")
#define DS_DYN_SMEM(T, name) T* name = reinterpret_cast<T*>(::emu::g_block->dyn_smem)

// ---- warp primitives (full-warp participation assumed) ----
template <class T>
static inline T ds_emu_shfl(T v, int src_lane, const char* ds_file, int ds_line) {
    static_assert(sizeof(T) <= 16, "shuffle of a large type");
    const unsigned char* base = ::emu::warp_publish(&v, sizeof(T), ds_file, ds_line);
    T r;
    std::memcpy(&r, base + (src_lane & 31) * ::emu::kWarpSlot, sizeof(T));
    return r;
}
template <class T>
static inline T __shfl_sync(unsigned, T v, int src, int width = 32, DS_EMU_SITE) {
    int lane = (int)::emu::g_thread->lane;
    int base = lane & ~(width - 1);
    return ds_emu_shfl(v, base + (src & (width - 1)), ds_file, ds_line);
}
template <class T>
static inline T __shfl_xor_sync(unsigned, T v, int lane_mask, int width = 32, DS_EMU_SITE) {
    int lane = (int)::emu::g_thread->lane;
    int base = lane & ~(width - 1);
    int src = lane ^ lane_mask;
    if (src < base || src >= base + width) src = lane;
    return ds_emu_shfl(v, src, ds_file, ds_line);
}
template <class T>
static inline T __shfl_down_sync(unsigned, T v, unsigned delta, int width = 32, DS_EMU_SITE) {
    int lane = (int)::emu::g_thread->lane;
    int base = lane & ~(width - 1);
    int src = lane + (int)delta;
    if (src >= base + width) src = lane;
    return ds_emu_shfl(v, src, ds_file, ds_line);
}
template <class T>
static inline T __shfl_up_sync(unsigned, T v, unsigned delta, int width = 32, DS_EMU_SITE) {
    int lane = (int)::emu::g_thread->lane;
    int base = lane & ~(width - 1);
    int src = lane - (int)delta;
    if (src < base) src = lane;
    return ds_emu_shfl(v, src, ds_file, ds_line);
}
static inline unsigned __ballot_sync(unsigned, int pred, DS_EMU_SITE) {
    int mine = pred != 0;
    const unsigned char* base = ::emu::warp_publish(&mine, sizeof(int), ds_file, ds_line);
    unsigned r = 0;
    for (int i = 0; i < 32; i++) {
        int v;
        std::memcpy(&v, base + i * ::emu::kWarpSlot, sizeof(int));
        r |= (unsigned)(v != 0) << i;
    }
    return r;
}
static inline int __any_sync(unsigned m, int pred, DS_EMU_SITE) { return __ballot_sync(m, pred, ds_file, ds_line) != 0; }
static inline int __all_sync(unsigned, int pred, DS_EMU_SITE) {
    // Only live lanes matter; a partial warp's missing lanes hold stale zeros, so
    // count against the number of lanes that contributed.
    int all[32];
    int mine = pred != 0 ? 1 : 2;
    ::emu::warp_exchange(&mine, all, sizeof(int), ds_file, ds_line);
    for (int i = 0; i < 32; i++)
        if (all[i] == 2) return 0;
    return 1;
}

// ---- math ----
// (Those glibc declares too keep external linkage: they touch no kernel memory.)
static inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
static inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __sinf(float x) { return std::sin(x); }
inline float __cosf(float x) { return std::cos(x); }
static inline float __fdividef(float a, float b) { return a / b; }
static inline float __frcp_rn(float x) { return 1.0f / x; }
static inline float __fsqrt_rn(float x) { return std::sqrt(x); }
static inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
// nvcc never contracts these into an FMA; neither may the host compiler in the FMA copy
// (kernels_fma.cpp): the empty asm makes the rounded product / the operands opaque.
static inline float ds_emu_opaque(float x) {
#if defined(__x86_64__)
    __asm__("" : "+x"(x));
#else
    __asm__("" : "+r"(x));
#endif
    return x;
}
static inline float __fmul_rn(float a, float b) { return ds_emu_opaque(a * b); }
static inline float __fadd_rn(float a, float b) { return ds_emu_opaque(a) + ds_emu_opaque(b); }
static inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
inline void sincosf(float x, float* s, float* c) { *s = std::sin(x); *c = std::cos(x); }
inline void sincos(double x, double* s, double* c) { *s = std::sin(x); *c = std::cos(x); }
static inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
static inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
static inline int __float_as_int(float f) { int u; std::memcpy(&u, &f, 4); return u; }
static inline float __int_as_float(int u) { float f; std::memcpy(&f, &u, 4); return f; }
static inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((uint64_t)a * b) >> 32); }
static inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
    return (unsigned long long)(((__uint128_t)a * b) >> 64);
}
template <class T> static inline T __ldg(const T* p) { return *p; }
static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }
static inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
static inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
static inline long long min(long long a, long long b) { return a < b ? a : b; }
static inline long long max(long long a, long long b) { return a > b ? a : b; }
static inline float min(float a, float b) { return std::fmin(a, b); }
static inline float max(float a, float b) { return std::fmax(a, b); }

// ---- atomics (blocks of one launch may run on different OS threads) ----
static inline float atomicAdd(float* p, float v) {
    unsigned* u = reinterpret_cast<unsigned*>(p);
    unsigned old = __atomic_load_n(u, __ATOMIC_RELAXED);
    while (!__atomic_compare_exchange_n(u, &old, __float_as_uint(__uint_as_float(old) + v), true, __ATOMIC_SEQ_CST,
                                        __ATOMIC_RELAXED)) {
    }
    return __uint_as_float(old);
}
static inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
static inline unsigned atomicAdd(unsigned* p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
static inline int atomicMax(int* p, int v) {
    int old = __atomic_load_n(p, __ATOMIC_RELAXED);
    while (old < v && !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) {
    }
    return old;
}
static inline int atomicCAS(int* p, int cmp, int v) {
    __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return cmp;
}

// ---- 16-bit float storage types (conversions round to nearest even, as the GPU) ----
struct __half {
    uint16_t bits_;
};
struct __nv_bfloat16 {
    uint16_t bits_;
};
struct __half2 {
    __half x, y;
};
struct __nv_bfloat162 {
    __nv_bfloat16 x, y;
};

static inline float __bfloat162float(__nv_bfloat16 h) { return __uint_as_float((unsigned)h.bits_ << 16); }
static inline __nv_bfloat16 __float2bfloat16(float f) {
    unsigned u = __float_as_uint(f);
    __nv_bfloat16 r;
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        r.bits_ = (uint16_t)((u >> 16) | 0x40);  // quiet NaN
    } else {
        r.bits_ = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    }
    return r;
}
static inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __float2bfloat16(f); }

static inline float __half2float(__half h) {
    unsigned s = (unsigned)(h.bits_ & 0x8000u) << 16;
    unsigned e = (h.bits_ >> 10) & 0x1fu;
    unsigned m = h.bits_ & 0x3ffu;
    if (e == 0x1f) return __uint_as_float(s | 0x7f800000u | (m << 13));
    if (e == 0) {  // zero or subnormal: m * 2^-24, exact in f32 (no libm call: zeros are common)
        float v = (float)m * 5.9604644775390625e-8f;
        return s ? -v : v;
    }
    return __uint_as_float(s | ((e + 112u) << 23) | (m << 13));
}
static inline __half __float2half(float f) {
    unsigned u = __float_as_uint(f);
    unsigned s = (u >> 16) & 0x8000u;
    unsigned a = u & 0x7fffffffu;
    __half r;
    if (a > 0x7f800000u) {
        r.bits_ = (uint16_t)(s | 0x7e00u);
    } else if (a >= 0x477ff000u) {  // rounds to >= 65520: infinity
        r.bits_ = (uint16_t)(s | 0x7c00u);
    } else if (a < 0x38800000u) {  // below the smallest normal: subnormal or zero
        // value / 2^-24, rounded to nearest even, is the subnormal mantissa.
        float v = __uint_as_float(a) * 16777216.0f;  // exact (power of two scaling)
        float rv = std::nearbyint(v);                 // default rounding mode: even
        r.bits_ = (uint16_t)(s | (unsigned)rv);
    } else {
        unsigned m = a + 0xfffu + ((a >> 13) & 1u);
        r.bits_ = (uint16_t)(s | ((m - 0x38000000u) >> 13));
    }
    return r;
}
static inline __half __float2half_rn(float f) { return __float2half(f); }
static inline __half2 __floats2half2_rn(float a, float b) { return {__float2half(a), __float2half(b)}; }
static inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) { return {__float2bfloat16(a), __float2bfloat16(b)}; }

// ---- kernel registry: DS_REGISTER(name, Params) after each `extern "C" __global__`
// kernel taking one `const Params` argument makes it launchable by name ----
namespace emu {
using Invoker = void (*)(const void* params);
struct Registrar {
    // `params`: the parameter struct's name, so that the host can match each kernel
    // with its #[repr(C)] mirror (field layouts: kernels/emu/kernels.cpp).
    // `copy`: 0 plain (kernels.cpp), 1 instrumented, 2 contracted (kernels_copy.inc).
    Registrar(const char* name, Invoker f, size_t param_size, const char* params, int copy);
};
}  // namespace emu
#ifndef DS_EMU_COPY
#define DS_EMU_COPY 0
#endif
#define DS_REGISTER(name, P)                                                                             \
    static ::emu::Registrar ds_emu_reg_##name(                                                           \
        #name, [](const void* p) { name(*reinterpret_cast<const P*>(p)); }, sizeof(P), #P, DS_EMU_COPY);
