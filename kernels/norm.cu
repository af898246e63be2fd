// GroupNorm over the channel concat cat(xa, xb), biased variance, affine, optional FiLM
// (the ADM res block's y * (1 + scale) + shift), optional SiLU (the CPU oracle is
// src/backend/cpu/norm.rs).
//
// group_norm_f32: grid (groups, n), block any multiple of 32 up to 1024 (the launcher
// picks by group size), dynamic smem 8 * (channels per group) bytes.
// One block owns one (sample, group): the group is at most two contiguous runs of
// memory (its xa channels, then its xb channels). Two sweeps: statistics, then
// normalise + write; 16-byte vector accesses where the runs are aligned, several
// loads in flight per thread.
//
// Accuracy: the statistics are sums of d = x - K and d^2 in f64, K the group's first
// element. In f64 the one-sweep form var = E[d^2] - E[d]^2 loses nothing that matters
// (K lies within a few standard deviations of the mean, and even a K 1000 std away
// costs only ~1e6 of f64's 1e16), while an f32 sum of values with a large mean would
// lose the digits the variance is made of (mean 10, std 0.1 needs ~1e-8 relative
// accuracy). The CPU oracle takes two f64 passes; the results agree to rounding.

namespace gn {

struct __align__(16) F4 {
    float x, y, z, w;
};

DS_DEV bool aligned16(const void* p) { return ((unsigned long long)p & 15) == 0; }

// Block-wide sum; every thread gets the result. `red` holds 32 slots. The partials are
// added in a fixed order, so the result does not depend on scheduling.
template <class T>
DS_DEV T block_sum(T v, T* red) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    if (lane == 0) red[warp] = v;
    __syncthreads();
    T s = 0;
    for (int w = 0; w < nw; w++) s += red[w];
    __syncthreads();  // `red` may be reused at once
    return s;
}

DS_DEV void acc1(float x, double k, double& s1, double& s2) {
    const double d = (double)x - k;
    s1 += d;
    s2 = fma(d, d, s2);
}

// Adds this thread's share of sum(x - k), sum((x - k)^2) over one contiguous run:
// scalar up to the first 16-byte boundary, then float4 loads, four in flight per
// thread (the grid is only groups x n blocks, so each SM must keep many bytes in flight).
DS_DEV void run_stats(const float* r, long long len, double k, double& s1, double& s2) {
    constexpr int U = 4;
    const int tid = threadIdx.x, nt = blockDim.x;
    long long head = ((16 - ((unsigned long long)r & 15)) & 15) / 4;
    if (head > len) head = len;
    if (tid < head) acc1(r[tid], k, s1, s2);
    const F4* r4 = reinterpret_cast<const F4*>(r + head);
    const long long n4 = (len - head) / 4;
    long long e = tid;
    for (; e + (U - 1) * nt < n4; e += U * nt) {
        F4 a[U];
#pragma unroll
        for (int u = 0; u < U; u++) a[u] = r4[e + u * nt];
#pragma unroll
        for (int u = 0; u < U; u++) {
            acc1(a[u].x, k, s1, s2);
            acc1(a[u].y, k, s1, s2);
            acc1(a[u].z, k, s1, s2);
            acc1(a[u].w, k, s1, s2);
        }
    }
    for (; e < n4; e += nt) {
        const F4 a = r4[e];
        acc1(a.x, k, s1, s2);
        acc1(a.y, k, s1, s2);
        acc1(a.z, k, s1, s2);
        acc1(a.w, k, s1, s2);
    }
    for (long long t = head + 4 * n4 + tid; t < len; t += nt) acc1(r[t], k, s1, s2);
}

// y = (x - mean) * scale + shift, then SiLU. The fast exp / divide are ~1e-7 relative
// (far inside the 1e-5 bound) and keep the sweep memory-bound; for y < -87 the
// quotient flushes to 0, which is SiLU's value there to f32 precision.
DS_DEV float norm1(float x, float mean, float scale, float shift, int silu) {
    const float y = (x - mean) * scale + shift;
    return silu ? __fdividef(y, 1.0f + __expf(-y)) : y;
}

// V floats moved as one access (V = 4: 16-byte vectors).
template <int V>
struct __align__(4 * V) Vf {
    float v[V];
};

// The normalise sweep over the group as (channel, position) in units of V floats, U
// units in flight per thread, stepping by U * nt without a division per unit.
template <int V>
DS_DEV void normalize_sweep(const float* ra, const float* rb, int na_ch, int cg, long long hw, float* out,
                            const float* tab, float mean, int silu) {
    constexpr int U = 4;
    const int tid = threadIdx.x, nt = blockDim.x;
    const long long units = hw / V, step = (long long)U * nt;
    const long long dch = step / units, dpos = step % units;
    long long ch[U], pos[U];
#pragma unroll
    for (int u = 0; u < U; u++) {
        const long long e = tid + (long long)u * nt;
        ch[u] = e / units;
        pos[u] = e % units;
    }
    while (ch[0] < cg) {  // unit u of an iteration comes after unit 0 in the walk
        Vf<V> v[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            if (ch[u] < cg) {
                const float* src = ch[u] < na_ch ? ra + ch[u] * hw : rb + (ch[u] - na_ch) * hw;
                v[u] = reinterpret_cast<const Vf<V>*>(src)[pos[u]];
            }
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            if (ch[u] < cg) {
                const float sc = tab[2 * ch[u]], sh = tab[2 * ch[u] + 1];
#pragma unroll
                for (int j = 0; j < V; j++) v[u].v[j] = norm1(v[u].v[j], mean, sc, sh, silu);
                reinterpret_cast<Vf<V>*>(out + ch[u] * hw)[pos[u]] = v[u];
            }
            ch[u] += dch;
            pos[u] += dpos;
            if (pos[u] >= units) {
                pos[u] -= units;
                ch[u]++;
            }
        }
    }
}

}  // namespace gn

extern "C" __global__ void __launch_bounds__(1024) group_norm_f32(const GroupNormParams p) {
    __shared__ double red[32];
    DS_DYN_SMEM(float, tab);  // [cg][2]: per-channel scale, shift

    const int g = blockIdx.x, b = blockIdx.y;
    const int tid = threadIdx.x, nt = blockDim.x;
    const int c = p.ca + p.cb, cg = c / p.groups;
    const int c0 = g * cg, c1 = c0 + cg;
    const long long hw = p.hw;
    // Run a: channels [c0, min(c1, ca)) of xa; run b: the rest, from xb.
    const int na_ch = max(0, min(c1, p.ca) - c0);
    const int nb_ch = cg - na_ch;
    const float* ra = p.xa + ((long long)(b % p.na) * p.ca + c0) * hw;
    const float* rb = nb_ch > 0 ? p.xb + ((long long)(b % p.nb) * p.cb + (c0 + na_ch - p.ca)) * hw : nullptr;
    const double count = (double)cg * (double)hw;

    const double k = na_ch > 0 ? ra[0] : rb[0];
    double s1 = 0, s2 = 0;
    if (na_ch > 0) gn::run_stats(ra, na_ch * hw, k, s1, s2);
    if (nb_ch > 0) gn::run_stats(rb, nb_ch * hw, k, s1, s2);
    const double m1 = gn::block_sum(s1, red) / count;
    const double var = fmax(gn::block_sum(s2, red) / count - m1 * m1, 0.0);
    const float mean32 = (float)(k + m1);
    const double rstd = 1.0 / sqrt(var + (double)p.eps);

    // Same rounding as the CPU: scale = f32(rstd * gamma), then (x - mean32) * scale + shift;
    // FiLM folds in as scale (1 + s), shift beta (1 + s) + t, computed in f64.
    const float* film = p.film ? p.film + (long long)(b % p.nf) * 2 * c : nullptr;
    for (int j = tid; j < cg; j += nt) {
        if (film) {
            const double s = 1.0 + (double)film[c0 + j], t = (double)film[c + c0 + j];
            tab[2 * j] = (float)(rstd * (double)p.gamma[c0 + j] * s);
            tab[2 * j + 1] = (float)((double)p.beta[c0 + j] * s + t);
        } else {
            tab[2 * j] = (float)(rstd * (double)p.gamma[c0 + j]);
            tab[2 * j + 1] = p.beta[c0 + j];
        }
    }
    __syncthreads();

    // 16-byte vectors when every channel row of the group (input and output) is aligned.
    float* out = p.out + ((long long)b * c + c0) * hw;
    const bool vec = hw % 4 == 0 && gn::aligned16(out) && (na_ch == 0 || gn::aligned16(ra)) &&
                     (nb_ch == 0 || gn::aligned16(rb));
    if (vec)
        gn::normalize_sweep<4>(ra, rb, na_ch, cg, hw, out, tab, mean32, p.silu);
    else
        gn::normalize_sweep<1>(ra, rb, na_ch, cg, hw, out, tab, mean32, p.silu);
}
DS_REGISTER(group_norm_f32, GroupNormParams)
