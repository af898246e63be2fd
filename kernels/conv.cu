// conv2d_{f32,f16,bf16}: fused 2-D convolution as an implicit GEMM.
//
//   out[co][pix] = sum_kk W[co][kk] * col[kk][pix] + bias[co] + temb[b][co] + res[b][co][pix]
//
// M = cout, N = n*ho*wo (pixel index pix = (b*ho + oy)*wo + ox), K = cin*k*k in the
// weight's (ci, ky, kx) order. The im2col matrix `col` is never materialised: each
// block gathers its BK x BN slice straight from the input, resolving on the fly the
// concat of two sources (channel ci < ca from xa, else xb), batch broadcast, nearest
// 2x up-sampling and zero padding.
//
// Launch contract (src/backend/gpu/conv.rs): block (DS_CONV_THREADS = 256, 1, 1), grid
// (ceil(N / DS_CONV_BN), ceil(cout / BM), 1) with BM = DS_CONV_BM (64) for conv2d_f32
// and DS_CONV_BM_MMA (128) for conv2d_f16 / conv2d_bf16, no dynamic shared memory.
// Each block computes a BM (cout) x 64 (pixels) output tile; edges are zero-padded in
// shared memory and masked at the store.
//
// f32 weights: SIMT GEMM, 4x4 outputs per thread. f16/bf16 weights: tensor cores
// (mma m16n8k16, f32 accumulation), 8 warps as 4 (m) x 2 (n), each a 32x32 tile;
// activations are rounded to the weight type when staged into shared memory.
// Both paths prefetch the next K slice into registers while computing the current one.

// Tile sizes and threads per block: DS_CONV_* in params.h (the launcher uses them too).

// The part of one output pixel's receptive field that does not depend on kk.
struct ConvPix {
    const float* a;  // sample plane 0 of xa (broadcast applied)
    const float* b;  // sample plane 0 of xb, or null
    int iy0, ix0;    // top-left input coordinate (up-sampled grid, may be negative)
    bool valid;      // pix < N
};

DS_DEV ConvPix conv_pix(const ConvParams& p, int pix, int npix) {
    ConvPix c;
    c.valid = pix < npix;
    int q = c.valid ? pix : 0;
    int hw_o = p.ho * p.wo;
    int b = q / hw_o;
    int r = q - b * hw_o;
    int oy = r / p.wo, ox = r - (r / p.wo) * p.wo;
    size_t plane = (size_t)p.h * p.w_;
    c.a = p.xa + (size_t)(b % p.na) * p.ca * plane;
    c.b = p.xb ? p.xb + (size_t)(b % p.nb) * p.cb * plane : nullptr;
    c.iy0 = oy * p.stride - p.pad_t;
    c.ix0 = ox * p.stride - p.pad_l;
    return c;
}

// im2col element (kk, pix); zero outside the input, past K or past N.
template <int KS>
DS_DEV float conv_gather(const ConvParams& p, const ConvPix& c, int kk, int K) {
    if (!c.valid || kk >= K) return 0.f;
    int ci = kk / (KS * KS);
    int r = kk - ci * (KS * KS);
    int ky = r / KS, kx = r - (r / KS) * KS;
    int iy = c.iy0 + ky, ix = c.ix0 + kx;
    int hu = p.h << p.upsample, wu = p.w_ << p.upsample;
    if ((unsigned)iy >= (unsigned)hu || (unsigned)ix >= (unsigned)wu) return 0.f;
    iy >>= p.upsample;
    ix >>= p.upsample;
    size_t plane = (size_t)p.h * p.w_;
    const float* src = ci < p.ca ? c.a + (size_t)ci * plane : c.b + (size_t)(ci - p.ca) * plane;
    return __ldg(src + iy * p.w_ + ix);
}

// Tap-major K order (p.tap: weights [cout][ky][kx][cin], cin % 32 == 0): a 32-wide K
// slice starting at k0 is channels [ci0, ci0 + 32) of one tap, so a thread resolves the
// tap, the bounds and its pixel's input offset once per slice (conv_tap), and each
// element is then one channel-plane step from there (conv_tap_load).
struct ConvTap {
    size_t off;  // input offset of the pixel's tap position within a channel plane
    int ci0;     // first channel of the slice
    bool in;     // inside the (up-sampled) input; else zero padding
};

template <int KS>
DS_DEV ConvTap conv_tap(const ConvParams& p, const ConvPix& c, int k0) {
    const int cin = p.ca + p.cb, t9 = k0 / cin;
    const int iy = c.iy0 + t9 / KS, ix = c.ix0 + t9 % KS;
    ConvTap t;
    t.ci0 = k0 - t9 * cin;
    t.in = c.valid && (unsigned)iy < (unsigned)(p.h << p.upsample) && (unsigned)ix < (unsigned)(p.w_ << p.upsample);
    t.off = t.in ? (size_t)(iy >> p.upsample) * p.w_ + (ix >> p.upsample) : 0;
    return t;
}

DS_DEV float conv_tap_load(const ConvParams& p, const ConvPix& c, const ConvTap& t, int ci) {
    if (!t.in) return 0.f;
    const size_t plane = (size_t)p.h * p.w_;
    const float* src = ci < p.ca ? c.a + (size_t)ci * plane : c.b + (size_t)(ci - p.ca) * plane;
    return __ldg(src + t.off);
}

// Output element (co, pix) = acc + bias + temb + residual; skipped outside M x N.
DS_DEV void conv_store(const ConvParams& p, int co, int pix, int npix, float acc) {
    if (co >= p.cout || pix >= npix) return;
    int hw_o = p.ho * p.wo;
    int b = pix / hw_o;
    int q = pix - b * hw_o;
    float v = acc + __ldg(p.bias + co);
    if (p.temb) v += __ldg(p.temb + (size_t)(b % p.temb_n) * p.cout + co);
    if (p.residual) v += __ldg(p.residual + ((size_t)(b % p.res_n) * p.cout + co) * hw_o + q);
    p.out[((size_t)b * p.cout + co) * hw_o + q] = v;
}

// ---------------------------------------------------------------- f32: SIMT
// Shared tiles are k-major so that the inner product reads a row of each; the A
// tile is padded by one column because it is written transposed (k varies fastest
// across a warp).
template <int KS>
DS_DEV void conv_simt_f32(const ConvParams& p) {
    __shared__ float As[DS_CONV_BK][DS_CONV_BM + 1];
    __shared__ float Bs[DS_CONV_BK][DS_CONV_BN];
    const int tid = threadIdx.x;
    const int M = p.cout, K = (p.ca + p.cb) * KS * KS, npix = p.n * p.ho * p.wo;
    const int m0 = blockIdx.y * DS_CONV_BM, n0 = blockIdx.x * DS_CONV_BN;
    const float* w = static_cast<const float*>(p.w);

    // Loader roles. B: one pixel column, k rows kb, kb+4, ...; A: one k column,
    // cout rows ma, ma+8, ...
    const int bn = tid % DS_CONV_BN, kb = tid / DS_CONV_BN;  // kb in 0..3
    const int ka = tid % DS_CONV_BK, ma = tid / DS_CONV_BK;  // ma in 0..7
    const ConvPix pc = conv_pix(p, n0 + bn, npix);
    float ra[DS_CONV_BK * DS_CONV_BM / DS_CONV_THREADS], rb[DS_CONV_BK * DS_CONV_BN / DS_CONV_THREADS];
    const bool tap = p.tap != 0;
    auto load = [&](int k0) {
        if (tap) {
            const ConvTap t = conv_tap<KS>(p, pc, k0);
#pragma unroll
            for (int i = 0; i < DS_CONV_BK * DS_CONV_BN / DS_CONV_THREADS; i++) rb[i] = conv_tap_load(p, pc, t, t.ci0 + kb + 4 * i);
        } else {
#pragma unroll
            for (int i = 0; i < DS_CONV_BK * DS_CONV_BN / DS_CONV_THREADS; i++)
                rb[i] = conv_gather<KS>(p, pc, k0 + kb + 4 * i, K);
        }
#pragma unroll
        for (int i = 0; i < DS_CONV_BK * DS_CONV_BM / DS_CONV_THREADS; i++) {
            int m = m0 + ma + 8 * i, k = k0 + ka;
            ra[i] = (m < M && k < K) ? __ldg(w + (size_t)m * K + k) : 0.f;
        }
    };

    // Compute roles: rows ty + 16 i, columns tx + 16 j (strided: conflict-free reads).
    const int tx = tid % 16, ty = tid / 16;
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] = 0.f;

    load(0);
    for (int k0 = 0; k0 < K; k0 += DS_CONV_BK) {
#pragma unroll
        for (int i = 0; i < DS_CONV_BK * DS_CONV_BN / DS_CONV_THREADS; i++) Bs[kb + 4 * i][bn] = rb[i];
#pragma unroll
        for (int i = 0; i < DS_CONV_BK * DS_CONV_BM / DS_CONV_THREADS; i++) As[ka][ma + 8 * i] = ra[i];
        __syncthreads();
        if (k0 + DS_CONV_BK < K) load(k0 + DS_CONV_BK);  // overlaps the math below
#pragma unroll 8
        for (int k = 0; k < DS_CONV_BK; k++) {
            float av[4], bv[4];
#pragma unroll
            for (int i = 0; i < 4; i++) av[i] = As[k][ty + 16 * i];
#pragma unroll
            for (int j = 0; j < 4; j++) bv[j] = Bs[k][tx + 16 * j];
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) conv_store(p, m0 + ty + 16 * i, n0 + tx + 16 * j, npix, acc[i][j]);
}

// ---------------------------------------------------------------- f16 / bf16: mma
// Shared tiles hold raw 16-bit values, k contiguous: A as [m][k] (row operand), B as
// [n][k] (col operand), so each fragment register is one aligned 32-bit read. Rows
// are padded by 8 halves (80 bytes) so the 8 rows g = lane/4 of a fragment load fall
// in distinct banks.
#define CONV_LDK (DS_CONV_BK + 8)

// 16 bytes moved as one access (the emulator has no CUDA vector types).
struct __align__(16) U4 {
    uint32_t x, y, z, w;
};

template <class T, int KS>
DS_DEV void conv_mma(const ConvParams& p) {
    __align__(16) __shared__ uint16_t As[DS_CONV_BM_MMA][CONV_LDK];
    __align__(16) __shared__ uint16_t Bs[DS_CONV_BN][CONV_LDK];
    const int tid = threadIdx.x;
    const int M = p.cout, K = (p.ca + p.cb) * KS * KS, npix = p.n * p.ho * p.wo;
    const int m0 = blockIdx.y * DS_CONV_BM_MMA, n0 = blockIdx.x * DS_CONV_BN;
    const uint16_t* w = static_cast<const uint16_t*>(p.w);  // raw T bits

    // Loader roles. B: one pixel column, k pairs 2(kq + 4i); A: k pair 2 kp, cout rows
    // ma + 16i (weights copied as stored). Pairs are packed into one 32-bit register
    // and store (global loads stay 16-bit: a weight row need not be 4-byte aligned).
    const int bn = tid % DS_CONV_BN, kq = tid / DS_CONV_BN;  // kq in 0..3
    const int kp = tid % (DS_CONV_BK / 2), ma = tid / (DS_CONV_BK / 2);  // ma in 0..15
    const ConvPix pc = conv_pix(p, n0 + bn, npix);
    constexpr int NB = DS_CONV_BK * DS_CONV_BN / DS_CONV_THREADS / 2;  // k pairs per thread
    constexpr int NA = DS_CONV_BK * DS_CONV_BM_MMA / DS_CONV_THREADS / 2;  // k pairs per thread
    uint32_t rb[NB];
    uint32_t ra[NA];
    // Tap-major weights (p.tap): the B gather of conv_tap, and a weight row slice is 64
    // contiguous bytes, moved as 16-byte vectors (A loader: row tid / 4 + 64 i, 8 halves
    // at (tid % 4) * 8).
    const bool tap = p.tap != 0;
    auto load = [&](int k0) {
        if (tap) {
            const ConvTap tp = conv_tap<KS>(p, pc, k0);
#pragma unroll
            for (int i = 0; i < NB; i++) {
                const int ci = tp.ci0 + 2 * (kq + 4 * i);
                rb[i] = ds_pack2<T>(conv_tap_load(p, pc, tp, ci), conv_tap_load(p, pc, tp, ci + 1));
            }
#pragma unroll
            for (int i = 0; i < NA / 4; i++) {
                const int m = m0 + tid / 4 + 64 * i;
                const U4 v = m < M ? *reinterpret_cast<const U4*>(w + (size_t)m * K + k0 + (tid % 4) * 8)
                                      : U4{0u, 0u, 0u, 0u};
                ra[4 * i] = v.x;
                ra[4 * i + 1] = v.y;
                ra[4 * i + 2] = v.z;
                ra[4 * i + 3] = v.w;
            }
            return;
        }
#pragma unroll
        for (int i = 0; i < NB; i++) {
            int k = k0 + 2 * (kq + 4 * i);
            rb[i] = ds_pack2<T>(conv_gather<KS>(p, pc, k, K), conv_gather<KS>(p, pc, k + 1, K));
        }
#pragma unroll
        for (int i = 0; i < NA; i++) {
            int m = m0 + ma + 16 * i, k = k0 + 2 * kp;
            const uint16_t* src = w + (size_t)m * K + k;
            uint32_t lo = (m < M && k < K) ? src[0] : 0u, hi = (m < M && k + 1 < K) ? src[1] : 0u;
            ra[i] = lo | (hi << 16);
        }
    };

    const int warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
    const int wm = (warp / 2) * 32, wn = (warp % 2) * 32;  // warp tile origin
    float acc[2][4][4];
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int r = 0; r < 4; r++) acc[i][j][r] = 0.f;

    load(0);
    for (int k0 = 0; k0 < K; k0 += DS_CONV_BK) {
#pragma unroll
        for (int i = 0; i < NB; i++) *reinterpret_cast<uint32_t*>(&Bs[bn][2 * (kq + 4 * i)]) = rb[i];
        if (tap) {
#pragma unroll
            for (int i = 0; i < NA / 4; i++)
                *reinterpret_cast<U4*>(&As[tid / 4 + 64 * i][(tid % 4) * 8]) =
                    U4{ra[4 * i], ra[4 * i + 1], ra[4 * i + 2], ra[4 * i + 3]};
        } else {
#pragma unroll
            for (int i = 0; i < NA; i++) *reinterpret_cast<uint32_t*>(&As[ma + 16 * i][2 * kp]) = ra[i];
        }
        __syncthreads();
        if (k0 + DS_CONV_BK < K) load(k0 + DS_CONV_BK);  // overlaps the math below
#pragma unroll
        for (int ks = 0; ks < DS_CONV_BK; ks += 16) {
            uint32_t af[2][4], bf[4][2];
#pragma unroll
            for (int i = 0; i < 2; i++) {
                const uint16_t* r0 = &As[wm + 16 * i + g][ks + 2 * t];
                const uint16_t* r1 = &As[wm + 16 * i + g + 8][ks + 2 * t];
                af[i][0] = *reinterpret_cast<const uint32_t*>(r0);
                af[i][1] = *reinterpret_cast<const uint32_t*>(r1);
                af[i][2] = *reinterpret_cast<const uint32_t*>(r0 + 8);
                af[i][3] = *reinterpret_cast<const uint32_t*>(r1 + 8);
            }
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const uint16_t* c0 = &Bs[wn + 8 * j + g][ks + 2 * t];
                bf[j][0] = *reinterpret_cast<const uint32_t*>(c0);
                bf[j][1] = *reinterpret_cast<const uint32_t*>(c0 + 8);
            }
#pragma unroll
            for (int i = 0; i < 2; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) mma_16816<T>(acc[i][j], af[i], bf[j]);
        }
        __syncthreads();
    }
    // Accumulator layout: d0, d1 = D[g][2t, 2t+1]; d2, d3 = D[g+8][2t, 2t+1].
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int r = 0; r < 4; r++) {
                int co = m0 + wm + 16 * i + g + (r >= 2 ? 8 : 0);
                int pix = n0 + wn + 8 * j + 2 * t + (r & 1);
                conv_store(p, co, pix, npix, acc[i][j][r]);
            }
}

// One implementation for every storage type: f32 takes the SIMT path, 16-bit types
// the tensor-core path; k (1 or 3) is a template parameter so the (ci, ky, kx)
// decomposition divides by constants.
template <class T, int KS>
DS_DEV void conv2d_body(const ConvParams& p) {
    if constexpr (std::is_same<T, float>::value)
        conv_simt_f32<KS>(p);
    else
        conv_mma<T, KS>(p);
}

template <class T>
DS_DEV void conv2d_impl(const ConvParams& p) {
    if (p.k == 1)
        conv2d_body<T, 1>(p);
    else
        conv2d_body<T, 3>(p);
}

#define DS_CONV2D(NAME, T)                                                                       \
    DS_KERNEL void __launch_bounds__(DS_CONV_THREADS, 2) NAME(const ConvParams p) {        \
        conv2d_impl<T>(p);                                                                       \
    }                                                                                            \
    DS_REGISTER(NAME, ConvParams)

DS_CONV2D(conv2d_f32, float)
DS_CONV2D(conv2d_f16, __half)
DS_CONV2D(conv2d_bf16, __nv_bfloat16)
