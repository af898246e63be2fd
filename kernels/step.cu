// Sampler updates: the DDIM / Asyrp step with counter-based noise, and DiffStyle
// calibration. Elementwise f32 arithmetic in the CPU's order without FMA contraction
// (ds_mul / ds_add of elementwise.cu), per-sample statistics in f64.

// ---- Philox4x32-10 and Box-Muller, bit-compatible with src/rng.rs ----
struct DsU4 {
    unsigned x, y, z, w;
};

DS_DEV DsU4 ds_philox4x32_10(DsU4 c, unsigned k0, unsigned k1) {
    for (int r = 0; r < 10; r++) {
        const unsigned lo0 = 0xD2511F53u * c.x, hi0 = __umulhi(0xD2511F53u, c.x);
        const unsigned lo1 = 0xCD9E8D57u * c.z, hi1 = __umulhi(0xCD9E8D57u, c.z);
        c = DsU4{hi1 ^ c.y ^ k0, lo1, hi0 ^ c.w ^ k1, lo0};
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    return c;
}

// Gaussian pair `pair` of sample `sample`: counter [pair lo, pair hi, stream, sample],
// key [seed lo, seed hi]; Box-Muller in f64, each value rounded to f32.
DS_DEV void ds_gaussian_pair(unsigned long long seed, unsigned stream, unsigned sample, unsigned long long pair,
                             float* z0, float* z1) {
    const DsU4 r = ds_philox4x32_10(DsU4{(unsigned)pair, (unsigned)(pair >> 32), stream, sample}, (unsigned)seed,
                                    (unsigned)(seed >> 32));
    const double u1 = ((double)r.x + 1.0) / 4294967296.0;
    const double u2 = (double)r.y / 4294967296.0;
    const double rad = sqrt(-2.0 * log(u1));
    const double ang = (2.0 * 3.141592653589793) * u2;
    *z0 = (float)(rad * cos(ang));
    *z1 = (float)(rad * sin(ang));
}

// Test hook for the generator alone: out[0..4] = philox(c, k); out[4..6] = the bits of
// the Gaussian pair (seed = k lo | k hi << 32, stream = c[2], sample = c[3], pair =
// c[0] | c[1] << 32). grid (1), block (32); only thread 0 writes.
struct PhiloxTestParams {
    unsigned* out;
    unsigned c[4];
    unsigned k[2];
};
DS_KERNEL void __launch_bounds__(32) philox_test(const PhiloxTestParams p) {
    if (threadIdx.x != 0) return;
    const DsU4 r = ds_philox4x32_10(DsU4{p.c[0], p.c[1], p.c[2], p.c[3]}, p.k[0], p.k[1]);
    p.out[0] = r.x;
    p.out[1] = r.y;
    p.out[2] = r.z;
    p.out[3] = r.w;
    float z0, z1;
    ds_gaussian_pair((unsigned long long)p.k[0] | ((unsigned long long)p.k[1] << 32), p.c[2], p.c[3],
                     (unsigned long long)p.c[0] | ((unsigned long long)p.c[1] << 32), &z0, &z1);
    p.out[4] = __float_as_uint(z0);
    p.out[5] = __float_as_uint(z1);
}
DS_REGISTER(philox_test, PhiloxTestParams)

// ---- ddim_step_f32: grid (ceil(ceil(len / 2) / DS_ELEMENTWISE_THREADS), n), block
// (DS_ELEMENTWISE_THREADS) ----
// One thread per element pair (2e, 2e+1), which is one Philox call when noisy.
// x0 = (x - eps_x0 sqrt(1-a_i)) / sqrt(a_i); out = sqrt(a_j) x0 + c_dir eps_dir, then
// out += c_noise z when c_noise != 0 (the CPU's order, f32, no contraction).
DS_DEV float ds_ddim_elem(const StepParams& p, float x, float e0, float ed, float sa_i, float s1a_i, float sa_j,
                          float z) {
    const float x0 = ds_div(ds_sub(x, ds_mul(e0, s1a_i)), sa_i);
    const float v = ds_add(ds_mul(sa_j, x0), ds_mul(p.c_dir, ed));
    return p.c_noise != 0.0f ? ds_add(v, ds_mul(p.c_noise, z)) : v;
}
DS_KERNEL void __launch_bounds__(DS_ELEMENTWISE_THREADS) ddim_step_f32(const StepParams p) {
    const int b = blockIdx.y;
    const size_t pair = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    const size_t e = 2 * pair;
    if (e >= (size_t)p.len) return;
    const size_t len = (size_t)p.len;
    const float* x = p.x + (size_t)(b % p.xn) * len;
    const float* e0 = p.eps_x0 + (size_t)(b % p.e0n) * len;
    const float* ed = p.eps_dir + (size_t)(b % p.edn) * len;
    float* o = p.out + (size_t)b * len;
    const float sa_i = ds_sqrt(p.a_i), s1a_i = ds_sqrt(ds_sub(1.0f, p.a_i)), sa_j = ds_sqrt(p.a_j);
    float z0 = 0.0f, z1 = 0.0f;
    // Sample counter 0 for every b: a pair's noise does not depend on its place in a batch.
    if (p.c_noise != 0.0f) ds_gaussian_pair(p.seed, p.stream, 0u, pair, &z0, &z1);
    o[e] = ds_ddim_elem(p, x[e], e0[e], ed[e], sa_i, s1a_i, sa_j, z0);
    if (e + 1 < len) o[e + 1] = ds_ddim_elem(p, x[e + 1], e0[e + 1], ed[e + 1], sa_i, s1a_i, sa_j, z1);
}
DS_REGISTER(ddim_step_f32, StepParams)

// ---- calibrate_f32: grid (n), block (DS_CALIBRATE_THREADS; any multiple of 32 up to 1024), one
// block per sample ----
// P = (x - sqrt(1-a) eps) / sqrt(a) and P' likewise from eps_mod (f32, recomputed in
// each pass); means and biased stds in f64 (two passes); then
// P'n = mean(P') + (P' - mean(P')) std(P) / std(P') (f64, rounded) and
// out = x + sqrt(a) (P'n - P) + omega sqrt(1-a) (eps_mod - eps) in f32.
DS_KERNEL void __launch_bounds__(DS_CALIBRATE_THREADS) calibrate_f32(const CalibrateParams p) {
    const int b = blockIdx.x;
    const size_t len = (size_t)p.len;
    const float* x = p.x + (size_t)b * len;
    const float* eps = p.eps + (size_t)b * len;
    const float* em = p.eps_mod + (size_t)b * len;
    float* o = p.out + (size_t)b * len;
    const float sa = ds_sqrt(p.a), s1a = ds_sqrt(ds_sub(1.0f, p.a));

    double sums[2] = {0.0, 0.0};
    for (size_t i = threadIdx.x; i < len; i += blockDim.x) {
        sums[0] += (double)ds_div(ds_sub(x[i], ds_mul(s1a, eps[i])), sa);
        sums[1] += (double)ds_div(ds_sub(x[i], ds_mul(s1a, em[i])), sa);
    }
    ds_block_sum_f64<2>(sums);
    const double n = (double)len;
    const double mean_p = sums[0] / n, mean_pm = sums[1] / n;

    double dev[2] = {0.0, 0.0};
    for (size_t i = threadIdx.x; i < len; i += blockDim.x) {
        const double d0 = (double)ds_div(ds_sub(x[i], ds_mul(s1a, eps[i])), sa) - mean_p;
        const double d1 = (double)ds_div(ds_sub(x[i], ds_mul(s1a, em[i])), sa) - mean_pm;
        dev[0] += d0 * d0;
        dev[1] += d1 * d1;
    }
    ds_block_sum_f64<2>(dev);
    const double std_p = sqrt(dev[0] / n), std_pm = sqrt(dev[1] / n);
    const double ratio = std_pm > 0.0 ? std_p / std_pm : 1.0;

    const float w = ds_mul(p.omega, s1a);
    for (size_t i = threadIdx.x; i < len; i += blockDim.x) {
        const float pv = ds_div(ds_sub(x[i], ds_mul(s1a, eps[i])), sa);
        const float pm = ds_div(ds_sub(x[i], ds_mul(s1a, em[i])), sa);
        const float pm_new = (float)(mean_pm + ((double)pm - mean_pm) * ratio);
        o[i] = ds_add(ds_add(x[i], ds_mul(sa, ds_sub(pm_new, pv))), ds_mul(w, ds_sub(em[i], eps[i])));
    }
}
DS_REGISTER(calibrate_f32, CalibrateParams)
