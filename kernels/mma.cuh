// Tensor-core and async-copy instructions, only through these wrappers: an inline-PTX
// body on the GPU and an exact emulated body on the host (warp-cooperative through
// emu::warp_publish). Fragment layouts follow the PTX ISA for mma.m16n8k16 with
// .row.col f16/bf16 operands and f32 accumulators:
//   g = lane / 4, t = lane % 4
//   A (16x16, 4 regs of 2 halves): a0 = A[g][2t..2t+1], a1 = A[g+8][2t..2t+1],
//                                  a2 = A[g][2t+8..2t+9], a3 = A[g+8][2t+8..2t+9]
//   B (16x8, 2 regs):              b0 = B[2t..2t+1][g], b1 = B[2t+8..2t+9][g]
//   C/D (16x8 f32):                d0,d1 = D[g][2t], D[g][2t+1]; d2,d3 = D[g+8][2t..2t+1]
// In a packed register the lower 16 bits hold the element with the lower index.
#pragma once
#include "common.cuh"
#if !defined(__CUDACC__) && defined(__FMA__) && defined(__AVX__)
#include <immintrin.h>  // the emulated mma's tile product
#endif

// d += A * B for one m16n8k16 tile. T is __half or __nv_bfloat16.
template <class T>
DS_DEV void mma_16816(float d[4], const uint32_t a[4], const uint32_t b[2]) {
#ifdef __CUDA_ARCH__
    if constexpr (std::is_same<T, __half>::value) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    } else {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    }
#else
    // Each lane publishes its fragments, already converted, and its accumulators; the
    // lane that completes the exchange computes the whole 16x8 tile (its rows as
    // vectors over the 8 columns) and leaves each lane its 4 results in its slot.
    // Every result is the same FMA chain as the hardware-order reference:
    // d = fma(A[r][k], B[k][c], d) for k = 0..15 from the lane's accumulator.
    struct Frag {
        // a, b: register r's low half at 2r, high half at 2r + 1; d: the accumulators.
        float a[8], b[4], d[4];
    } mine;
    constexpr size_t kResult = sizeof(Frag);  // a lane's 4 results, in its slot
    static_assert(kResult + 4 * sizeof(float) <= emu::kWarpSlot, "mma exchange slot");
    auto half_at = [](uint32_t r, int hi) {
        T v;
        uint16_t u = (uint16_t)(hi ? r >> 16 : r & 0xffff);
        memcpy(&v, &u, 2);
        return ds_to_f32<T>(v);
    };
    for (int i = 0; i < 4; i++)
        for (int h = 0; h < 2; h++) mine.a[2 * i + h] = half_at(a[i], h);
    for (int i = 0; i < 2; i++)
        for (int h = 0; h < 2; h++) mine.b[2 * i + h] = half_at(b[i], h);
    for (int i = 0; i < 4; i++) mine.d[i] = d[i];
    bool first;
    unsigned char* area = emu::warp_publish_first(&mine, sizeof(Frag), &first, __FILE__, __LINE__);
    if (first) {
        // The tile from the fragments (layouts above): lane = 4g + t.
        alignas(32) float A[16][16], B[16][8], D[16][8];
        for (int lane = 0; lane < 32; lane++) {
            const Frag* f = reinterpret_cast<const Frag*>(area + lane * emu::kWarpSlot);
            int g = lane / 4, t = lane % 4;
            for (int h = 0; h < 2; h++) {
                A[g][2 * t + h] = f->a[h];
                A[g + 8][2 * t + h] = f->a[2 + h];
                A[g][2 * t + 8 + h] = f->a[4 + h];
                A[g + 8][2 * t + 8 + h] = f->a[6 + h];
                B[2 * t + h][g] = f->b[h];
                B[2 * t + 8 + h][g] = f->b[2 + h];
                D[g][2 * t + h] = f->d[h];
                D[g + 8][2 * t + h] = f->d[2 + h];
            }
        }
        for (int r = 0; r < 16; r++) {
#if defined(__FMA__) && defined(__AVX__)
            __m256 acc = _mm256_load_ps(D[r]);
            for (int k = 0; k < 16; k++) acc = _mm256_fmadd_ps(_mm256_set1_ps(A[r][k]), _mm256_load_ps(B[k]), acc);
            _mm256_store_ps(D[r], acc);
#else
            for (int c = 0; c < 8; c++)
                for (int k = 0; k < 16; k++) D[r][c] = std::fma(A[r][k], B[k][c], D[r][c]);
#endif
        }
        for (int lane = 0; lane < 32; lane++) {
            int g = lane / 4, t = lane % 4;
            float out[4] = {D[g][2 * t], D[g][2 * t + 1], D[g + 8][2 * t], D[g + 8][2 * t + 1]};
            memcpy(area + lane * emu::kWarpSlot + kResult, out, sizeof out);
        }
    }
    memcpy(d, area + (int)emu::g_thread->lane * emu::kWarpSlot + kResult, 4 * sizeof(float));
#endif
}

// ldmatrix: lanes 8m..8m+7 give the row addresses (16 bytes each, shared memory) of
// 8x8 matrix m; register m of every lane receives row lane/4, columns 2(lane%4) and
// 2(lane%4)+1 of matrix m (with TRANS: column lane/4, rows 2(lane%4), 2(lane%4)+1).
template <int N, bool TRANS>
DS_DEV void ldmatrix(uint32_t r[N], const void* row_addr DS_SITE_PARAM) {
    static_assert(N == 1 || N == 2 || N == 4, "ldmatrix loads 1, 2 or 4 matrices");
#ifdef __CUDA_ARCH__
    unsigned s = (unsigned)__cvta_generic_to_shared(row_addr);
    if constexpr (N == 4 && !TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(s));
    else if constexpr (N == 4 && TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(s));
    else if constexpr (N == 2 && !TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(s));
    else if constexpr (N == 2 && TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
                     : "=r"(r[0]), "=r"(r[1])
                     : "r"(s));
    else if constexpr (N == 1 && !TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(s));
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(s));
#else
    const unsigned char* mine = static_cast<const unsigned char*>(row_addr);
    // Each row is 16 bytes at a 16-byte aligned address.
    if ((emu::checks() & emu::kCheckAlign) && (reinterpret_cast<uintptr_t>(mine) & 15))
        emu::check_failed("align", ds_file, ds_line, "ldmatrix row address %p is not 16-byte aligned", (const void*)mine);
    const unsigned char* base = emu::warp_publish(&mine, sizeof(mine), ds_file, ds_line);
    int lane = (int)emu::g_thread->lane;
    for (int m = 0; m < N; m++) {
        uint16_t e[2];
        for (int i = 0; i < 2; i++) {
            int row = TRANS ? 2 * (lane % 4) + i : lane / 4;
            int col = TRANS ? lane / 4 : 2 * (lane % 4) + i;
            const unsigned char* addr;
            memcpy(&addr, base + (m * 8 + row) * emu::kWarpSlot, sizeof(addr));
            memcpy(&e[i], addr + 2 * col, 2);
        }
        r[m] = (uint32_t)e[0] | ((uint32_t)e[1] << 16);
    }
#endif
}

// cp.async of 16 bytes global -> shared; when !valid the 16 bytes are zero-filled
// (the source is not read). The host body copies at once.
DS_DEV void cp_async_16(void* smem, const void* gmem, bool valid = true DS_SITE_PARAM) {
#ifdef __CUDA_ARCH__
    unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    int n = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(n));
#else
    emu::async_copy(smem, gmem, 16, valid, ds_file, ds_line);
#endif
}
// 4-byte variant (cp.async.ca), for sources without 16-byte alignment.
DS_DEV void cp_async_4(void* smem, const void* gmem, bool valid = true DS_SITE_PARAM) {
#ifdef __CUDA_ARCH__
    unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    int n = valid ? 4 : 0;
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(s), "l"(gmem), "r"(n));
#else
    emu::async_copy(smem, gmem, 4, valid, ds_file, ds_line);
#endif
}
DS_DEV void cp_async_commit() {
#ifdef __CUDA_ARCH__
    asm volatile("cp.async.commit_group;\n" ::);
#else
    emu::async_commit();
#endif
}
// Waits until at most N committed groups are still in flight.
template <int N>
DS_DEV void cp_async_wait() {
#ifdef __CUDA_ARCH__
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#else
    emu::async_wait(N);
#endif
}
