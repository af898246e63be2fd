// GroupNorm over the channel concat cat(xa, xb), biased variance, affine, optional SiLU
// (the CPU oracle is src/backend/cpu/norm.rs).
//
// group_norm_f32: grid (groups, n), block any multiple of 32 up to 1024 (the launcher
// picks by group size), dynamic smem 8 * (channels per group) bytes.
// One block owns one (sample, group): the group is at most two contiguous runs of
// memory (its xa channels, then its xb channels), read three times (sum, squared
// deviations, normalise); the second and third reads mostly hit L2.
//
// Accuracy: the mean is accumulated in f64, as on the CPU, because an f32 sum of values
// with a large mean loses the digits that the variance is made of (mean 10, std 0.1
// needs ~1e-8 relative accuracy of the sum). The deviations are then small, formed in
// f32 against the f32-rounded mean and squared in f32, and summed in f64.

namespace gn {

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
    const long long len_a = na_ch * hw, len_b = nb_ch * hw;
    const double count = (double)cg * (double)hw;

    double s = 0;
    for (long long e = tid; e < len_a; e += nt) s += (double)ra[e];
    for (long long e = tid; e < len_b; e += nt) s += (double)rb[e];
    const double mean = gn::block_sum(s, red) / count;
    const float mean32 = (float)mean;

    double s2 = 0;
    for (long long e = tid; e < len_a; e += nt) {
        const float d = ra[e] - mean32;
        s2 += (double)(d * d);
    }
    for (long long e = tid; e < len_b; e += nt) {
        const float d = rb[e] - mean32;
        s2 += (double)(d * d);
    }
    const double var = gn::block_sum(s2, red) / count;
    const double rstd = 1.0 / sqrt(var + (double)p.eps);

    // Same rounding as the CPU: scale = f32(rstd * gamma), then (x - mean32) * scale + shift.
    for (int j = tid; j < cg; j += nt) {
        tab[2 * j] = (float)(rstd * (double)p.gamma[c0 + j]);
        tab[2 * j + 1] = p.beta[c0 + j];
    }
    __syncthreads();

    // Walk the group as (channel, position), stepping by nt without a division.
    float* out = p.out + ((long long)b * c + c0) * hw;
    long long ch = tid / hw, pos = tid % hw;
    for (; ch < cg;) {
        const float* src = ch < na_ch ? ra + ch * hw : rb + (ch - na_ch) * hw;
        float y = (src[pos] - mean32) * tab[2 * ch] + tab[2 * ch + 1];
        if (p.silu) y = y / (1.0f + expf(-y));
        out[ch * hw + pos] = y;
        pos += nt;
        while (pos >= hw) {
            pos -= hw;
            ch++;
        }
    }
}
DS_REGISTER(group_norm_f32, GroupNormParams)
