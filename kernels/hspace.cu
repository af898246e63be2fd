// The DiffStyle h-space mix (method.md section 2, "mix"), mirroring
// src/backend/cpu/hspace.rs: per-sample moments in f64, the slerp coefficients in f64
// with the CPU's fallbacks, then one f64 combination per element.

// Coefficients (s0, s1) of s0 v0 + s1 v1 for slerp with ratio gamma, given |v0|, |v1|
// and <v0, v1>; linear interpolation when a norm is zero / not finite or sin(theta)
// is tiny (nearly parallel or anti-parallel), so the result is never NaN.
DS_DEV void ds_slerp_coeffs(double g, double n0, double n1, double dot, double* s0, double* s1) {
    *s0 = 1.0 - g;
    *s1 = g;
    const double prod = n0 * n1;
    if (n0 == 0.0 || n1 == 0.0 || !(prod <= 1.7976931348623157e308)) return;
    double c = dot / prod;
    c = c < -1.0 ? -1.0 : (c > 1.0 ? 1.0 : c);
    const double theta = acos(c);
    const double st = sin(theta);
    if (st < 1e-6) return;
    *s0 = sin(theta - g * theta) / st;
    *s1 = sin(g * theta) / st;
}

// ---- hspace_mix_f32: grid (n), block (DS_HSPACE_THREADS; any multiple of 32 up to 1024), one block
// per sample ----
// Without a mask: hc is rescaled to |h| and out = slerp(gamma, h, hc_n). With a mask
// M [hw] (shared by every channel and sample): out = slerp(gamma, h M, hc M) + (1-M) h.
DS_KERNEL void __launch_bounds__(DS_HSPACE_THREADS) hspace_mix_f32(const HspaceParams p) {
    __shared__ double coef[2];
    const int b = blockIdx.x;
    const size_t len = (size_t)p.c * p.hw;
    const float* h = p.h + (size_t)(b % p.hn) * len;
    const float* hc = p.hc + (size_t)(b % p.hcn) * len;
    const float* m = p.mask;
    float* o = p.out + (size_t)b * len;

    double acc[3] = {0.0, 0.0, 0.0};  // |h M|^2, |hc M|^2, <h M, hc M>
    for (size_t i = threadIdx.x; i < len; i += blockDim.x) {
        const double mm = m ? (double)m[i % p.hw] : 1.0;
        const double x = (double)h[i] * mm, y = (double)hc[i] * mm;
        acc[0] += x * x;
        acc[1] += y * y;
        acc[2] += x * y;
    }
    ds_block_sum_f64<3>(acc);
    if (threadIdx.x == 0) {
        const double g = (double)p.gamma;
        double s0, s1;
        if (!m) {
            const double nh = sqrt(acc[0]), nc = sqrt(acc[1]);
            // hc_n = hc |h| / |hc| (zero if hc is zero), so |hc_n| = |h|.
            const double ratio = nc > 0.0 ? nh / nc : 0.0;
            ds_slerp_coeffs(g, nh, nc * ratio, acc[2] * ratio, &s0, &s1);
            s1 *= ratio;
        } else {
            ds_slerp_coeffs(g, sqrt(acc[0]), sqrt(acc[1]), acc[2], &s0, &s1);
        }
        coef[0] = s0;
        coef[1] = s1;
    }
    __syncthreads();
    const double s0 = coef[0], s1 = coef[1];
    if (!m) {
        for (size_t i = threadIdx.x; i < len; i += blockDim.x) o[i] = (float)(s0 * (double)h[i] + s1 * (double)hc[i]);
    } else {
        for (size_t i = threadIdx.x; i < len; i += blockDim.x) {
            const double mm = (double)m[i % p.hw], x = (double)h[i], y = (double)hc[i];
            o[i] = (float)(s0 * x * mm + s1 * y * mm + (1.0 - mm) * x);
        }
    }
}
DS_REGISTER(hspace_mix_f32, HspaceParams)
