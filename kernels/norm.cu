// GroupNorm over the channel concat cat(xa, xb), biased variance, affine, optional FiLM
// (the ADM res block's y * (1 + scale) + shift, scale / shift per sample and channel
// from `film`), optional SiLU (the CPU oracle is src/backend/cpu/norm.rs).
//
// group_norm_f32: grid (groups, n), block any multiple of 32 up to DS_NORM_MAX_THREADS
// = 1024 (params.h; the launcher
// picks by group size), dynamic smem 8 * (channels per group) bytes.
// One block owns one (sample, group): the group is at most two contiguous runs of
// memory (its xa channels, then its xb channels). Two sweeps: statistics, then
// normalise + write; 16-byte vector accesses where the runs are aligned, several
// loads in flight per thread.
//
// group_norm_stats_f32 then group_norm_apply_f32: grid (groups * splits, n), for
// batches too small to fill the GPU with one block per group (batch 1 has 32 blocks).
// Each block owns one chunk of a group: the first writes the chunk's two sums to
// `partial`, the second adds a group's chunk sums in chunk order (deterministic) and
// normalises its chunk, with the same arithmetic as group_norm_f32.
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

// Walks units [u0, u1) of a group seen as (channel, position) in units of V floats,
// U units in flight per thread, stepping by U * nt without a division per unit; calls
// f(channel, position, value) for each unit, in no particular order.
template <int V, class F>
DS_DEV void walk(const float* ra, const float* rb, int na_ch, long long hw, long long u0, long long u1, F&& f) {
    constexpr int U = 4;
    const int tid = threadIdx.x, nt = blockDim.x;
    const long long units = hw / V, step = (long long)U * nt;
    const long long dch = step / units, dpos = step % units;
    long long ch[U], pos[U];
#pragma unroll
    for (int u = 0; u < U; u++) {
        const long long e = u0 + tid + (long long)u * nt;
        ch[u] = e / units;
        pos[u] = e % units;
    }
    for (long long e = u0 + tid; e < u1; e += step) {
        Vf<V> v[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            if (e + (long long)u * nt < u1) {
                const float* src = ch[u] < na_ch ? ra + ch[u] * hw : rb + (ch[u] - na_ch) * hw;
                v[u] = reinterpret_cast<const Vf<V>*>(src)[pos[u]];
            }
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            if (e + (long long)u * nt < u1) f(ch[u], pos[u], v[u]);
            ch[u] += dch;
            pos[u] += dpos;
            if (pos[u] >= units) {
                pos[u] -= units;
                ch[u]++;
            }
        }
    }
}

// Normalises units [u0, u1) of the group into `out` (the group's first channel).
template <int V>
DS_DEV void normalize_range(const float* ra, const float* rb, int na_ch, long long hw, long long u0, long long u1,
                            float* out, const float* tab, float mean, int silu) {
    walk<V>(ra, rb, na_ch, hw, u0, u1, [&](long long ch, long long pos, Vf<V> v) {
        const float sc = tab[2 * ch], sh = tab[2 * ch + 1];
#pragma unroll
        for (int j = 0; j < V; j++) v.v[j] = norm1(v.v[j], mean, sc, sh, silu);
        reinterpret_cast<Vf<V>*>(out + ch * hw)[pos] = v;
    });
}

// Where one (sample, group) lives.
struct Group {
    const float* ra;  // its xa channels
    const float* rb;  // its xb channels (or null)
    float* out;       // its first output channel
    int na_ch, cg, c0;
    const float* film;  // this sample's [2][ca+cb] scale, shift (or null)
    long long hw;
    double k;  // the shift of the sums: the group's first element
    bool vec;  // 16-byte vectors: every channel row (input and output) aligned
};

DS_DEV Group group_of(const GroupNormParams& p, int g, int b) {
    Group q;
    const int c = p.ca + p.cb;
    q.cg = c / p.groups;
    q.c0 = g * q.cg;
    q.hw = p.hw;
    // Run a: channels [c0, min(c0 + cg, ca)) of xa; run b: the rest, from xb.
    q.na_ch = max(0, min(q.c0 + q.cg, p.ca) - q.c0);
    const int nb_ch = q.cg - q.na_ch;
    q.ra = p.xa + ((long long)(b % p.na) * p.ca + q.c0) * q.hw;
    q.rb = nb_ch > 0 ? p.xb + ((long long)(b % p.nb) * p.cb + (q.c0 + q.na_ch - p.ca)) * q.hw : nullptr;
    q.out = p.out + ((long long)b * c + q.c0) * q.hw;
    q.film = p.film ? p.film + (long long)(b % p.nf) * 2 * c : nullptr;
    q.k = q.na_ch > 0 ? q.ra[0] : q.rb[0];
    q.vec = q.hw % 4 == 0 && aligned16(q.out) && (q.na_ch == 0 || aligned16(q.ra)) && (nb_ch == 0 || aligned16(q.rb));
    return q;
}

// From the sums of d = x - k and d^2: the f32 mean, and the per-channel scale and shift
// in `tab` (same rounding as the CPU: scale = f32(rstd * gamma); with FiLM, scale =
// f32(rstd * gamma * (1 + s)), shift = f32(beta * (1 + s) + t) in f64); ends with a
// barrier.
DS_DEV float finish_stats(const GroupNormParams& p, const Group& q, double s1, double s2, float* tab) {
    const double count = (double)q.cg * (double)q.hw;
    const double m1 = s1 / count;
    const double var = fmax(s2 / count - m1 * m1, 0.0);
    const double rstd = 1.0 / sqrt(var + (double)p.eps);
    const int c = p.ca + p.cb;
    for (int j = threadIdx.x; j < q.cg; j += blockDim.x) {
        if (q.film) {
            const double s = 1.0 + (double)q.film[q.c0 + j], t = (double)q.film[c + q.c0 + j];
            tab[2 * j] = (float)(rstd * (double)p.gamma[q.c0 + j] * s);
            tab[2 * j + 1] = (float)((double)p.beta[q.c0 + j] * s + t);
        } else {
            tab[2 * j] = (float)(rstd * (double)p.gamma[q.c0 + j]);
            tab[2 * j + 1] = p.beta[q.c0 + j];
        }
    }
    __syncthreads();
    return (float)(q.k + m1);
}

// Units [u0, u1) of chunk s of `splits` over a group of `total` units.
DS_DEV void chunk(long long total, int s, int splits, long long& u0, long long& u1) {
    u0 = total * s / splits;
    u1 = total * (s + 1) / splits;
}

}  // namespace gn

DS_KERNEL void __launch_bounds__(DS_NORM_MAX_THREADS) group_norm_f32(const GroupNormParams p) {
    __shared__ double red[32];
    DS_DYN_SMEM(float, tab);  // [cg][2]: per-channel scale, shift
    const gn::Group q = gn::group_of(p, blockIdx.x, blockIdx.y);
    double s1 = 0, s2 = 0;
    if (q.na_ch > 0) gn::run_stats(q.ra, q.na_ch * q.hw, q.k, s1, s2);
    if (q.cg > q.na_ch) gn::run_stats(q.rb, (q.cg - q.na_ch) * q.hw, q.k, s1, s2);
    s1 = gn::block_sum(s1, red);
    s2 = gn::block_sum(s2, red);
    const float mean = gn::finish_stats(p, q, s1, s2, tab);
    if (q.vec)
        gn::normalize_range<4>(q.ra, q.rb, q.na_ch, q.hw, 0, q.cg * q.hw / 4, q.out, tab, mean, p.silu);
    else
        gn::normalize_range<1>(q.ra, q.rb, q.na_ch, q.hw, 0, q.cg * q.hw, q.out, tab, mean, p.silu);
}
DS_REGISTER(group_norm_f32, GroupNormParams)

DS_KERNEL void __launch_bounds__(DS_NORM_MAX_THREADS) group_norm_stats_f32(const GroupNormParams p) {
    __shared__ double red[32];
    const int g = blockIdx.x / p.splits, s = blockIdx.x % p.splits, b = blockIdx.y;
    const gn::Group q = gn::group_of(p, g, b);
    double s1 = 0, s2 = 0;
    long long u0, u1;
    const double k = q.k;
    if (q.vec) {
        gn::chunk(q.cg * q.hw / 4, s, p.splits, u0, u1);
        gn::walk<4>(q.ra, q.rb, q.na_ch, q.hw, u0, u1, [&](long long, long long, gn::Vf<4> v) {
#pragma unroll
            for (int j = 0; j < 4; j++) gn::acc1(v.v[j], k, s1, s2);
        });
    } else {
        gn::chunk(q.cg * q.hw, s, p.splits, u0, u1);
        gn::walk<1>(q.ra, q.rb, q.na_ch, q.hw, u0, u1,
                    [&](long long, long long, gn::Vf<1> v) { gn::acc1(v.v[0], k, s1, s2); });
    }
    s1 = gn::block_sum(s1, red);
    s2 = gn::block_sum(s2, red);
    if (threadIdx.x == 0) {
        double* dst = p.partial + (((long long)b * p.groups + g) * p.splits + s) * 2;
        dst[0] = s1;
        dst[1] = s2;
    }
}
DS_REGISTER(group_norm_stats_f32, GroupNormParams)

DS_KERNEL void __launch_bounds__(DS_NORM_MAX_THREADS) group_norm_apply_f32(const GroupNormParams p) {
    DS_DYN_SMEM(float, tab);  // [cg][2]: per-channel scale, shift
    const int g = blockIdx.x / p.splits, s = blockIdx.x % p.splits, b = blockIdx.y;
    const gn::Group q = gn::group_of(p, g, b);
    const double* part = p.partial + ((long long)b * p.groups + g) * p.splits * 2;
    double s1 = 0, s2 = 0;
    for (int j = 0; j < p.splits; j++) {
        s1 += part[2 * j];
        s2 += part[2 * j + 1];
    }
    const float mean = gn::finish_stats(p, q, s1, s2, tab);
    long long u0, u1;
    if (q.vec) {
        gn::chunk(q.cg * q.hw / 4, s, p.splits, u0, u1);
        gn::normalize_range<4>(q.ra, q.rb, q.na_ch, q.hw, u0, u1, q.out, tab, mean, p.silu);
    } else {
        gn::chunk(q.cg * q.hw, s, p.splits, u0, u1);
        gn::normalize_range<1>(q.ra, q.rb, q.na_ch, q.hw, u0, u1, q.out, tab, mean, p.silu);
    }
}
DS_REGISTER(group_norm_apply_f32, GroupNormParams)
