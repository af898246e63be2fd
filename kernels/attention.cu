// Spatial self-attention core on channel-major qkv (CPU oracle:
// src/backend/cpu/attention.rs): out[b][ch][i] = sum_s softmax_s(scale q_i . k_s) v[ch][s]
// per head, flash-attention style: one block per (query tile, head, sample) walks the
// keys in tiles with an online softmax, so no score matrix goes to global memory.
//
// Kernels (all: grid (ceil(p / 32), heads, n), block 256, d = c / heads <= 512; the
// launch constants are DS_ATTN_* in params.h):
//   attention_f32            SIMT f32; dynamic smem 4 * attn::smem_floats(d) (97 KiB at
//                            d = 512: the launch needs the max-dynamic-smem attribute)
//   attention_bf16 / _f16    tensor cores (mma.m16n8k16, f32 accumulation); dynamic
//                            smem attn::tc_smem_bytes(d) (84 KiB at d = 512)
//   ..._d128                 the same for d <= 128 with a quarter of the output
//                            registers, so two blocks fit on an SM
// Both fit the 99 KiB of sm_86 / sm_89 at d = 512.
//
// Common structure. A block owns 32 queries (their q stays in shared memory) and walks
// a fixed sequence of stages, per tile of 64 keys: K in chunks of 32 channels, then V
// in chunks of 32 channels. Every stage is one f32 tile [32 ch][64 keys] (the layout of
// qkv itself), brought in by cp.async into a ring of buffers, several stages ahead, so
// global latency hides behind the work of the stages before it (the d = 512 shapes
// with few tokens have few blocks and are otherwise latency-bound). One barrier per
// stage publishes the landed stage and frees the buffer refilled next. After the last
// K stage of a tile: scores to shared memory, online softmax (warp w owns rows
// 4w..4w+3, running max and sum in registers of all its lanes), probabilities and the
// per-row rescale factor published for the V stages, which rescale and accumulate the
// output tile (BQ x d) held in registers.

namespace attn {

constexpr int NT = DS_ATTN_THREADS;  // threads per block (params.h: the launcher's too)
constexpr int BQ = DS_ATTN_BQ;       // queries per block
constexpr int BK = 64;               // keys per tile
constexpr int DC = 32;               // channels per stage
constexpr int MAXD = DS_ATTN_MAX_D;  // largest head dim
constexpr int SEGS = DC * (BK / 4);  // 16-byte segments per stage

// Issues the copies of one stage: channels [c * DC, c * DC + DC) of `src` ([d][P] rows
// of the head) over keys [s0, s0 + BK), into `buf` with row pitch `pitch` floats (a
// multiple of 4); zero beyond d and beyond the last key. `vec`: rows are 16-byte
// aligned (p % 4 == 0 and qkv aligned), else 4-byte copies.
DS_DEV void issue_stage(float* buf, int pitch, const float* src, int c, int s0, int d, int P, bool vec) {
    const long long PL = P;
    for (int e = threadIdx.x; e < SEGS; e += NT) {
        const int r = e / (BK / 4), seg = e % (BK / 4), dd = c * DC + r, s = s0 + 4 * seg;
        float* dst = buf + r * pitch + 4 * seg;
        const float* g = src + (dd < d ? dd * PL : 0);
        if (vec) {
            const bool ok = dd < d && s < P;  // p % 4 == 0: the whole segment is in
            cp_async_16(dst, ok ? g + s : src, ok);
        } else {
            for (int i = 0; i < 4; i++) {
                const bool ok = dd < d && s + i < P;
                cp_async_4(dst + i, ok ? g + s + i : src, ok);
            }
        }
    }
}

// One step of the online softmax for rows 4w..4w+3 of the score tile `s_s` (pitch
// `sp`, masked keys -inf): lane owns keys 2 lane, 2 lane + 1. `put(row, lane, p0, p1)`
// stores the probabilities; alpha_s[row] gets the rescale factor of the old state.
template <class Put>
DS_DEV void softmax_rows(const float* s_s, int sp, float sl2, float m_run[4], float l_run[4], float* alpha_s,
                         Put put) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int r = 0; r < 4; r++) {
        const int row = warp * 4 + r;
        const float v0 = s_s[row * sp + 2 * lane], v1 = s_s[row * sp + 2 * lane + 1];
        float mx = fmaxf(v0, v1);
#pragma unroll
        for (int o2 = 16; o2 > 0; o2 >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o2));
        const float m_new = fmaxf(m_run[r], mx);  // finite: every tile has a real key
        // exp(scale (x - m)) = exp2(sl2 (x - m)); the max is taken over unscaled scores.
        const float p0 = exp2f((v0 - m_new) * sl2), p1 = exp2f((v1 - m_new) * sl2);
        put(row, lane, p0, p1);
        float sum = p0 + p1;
#pragma unroll
        for (int o2 = 16; o2 > 0; o2 >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o2);
        const float alpha = exp2f((m_run[r] - m_new) * sl2);  // 0 on the first tile
        l_run[r] = l_run[r] * alpha + sum;
        m_run[r] = m_new;
        if (lane == 0) alpha_s[row] = alpha;
    }
}

// ---------------------------------------------------------------------------------
// attention_f32: SIMT. Shared memory: q [d][BQ] f32; a ring of NST_F32 stages
// [DC][BK] (pitch BK: every read below is consecutive or a broadcast); scores /
// probabilities [BQ][BK + 1]; alpha, l.
// - K stage: thread (tq, tk) accumulates the 2 x 4 scores of queries {tq, tq + 16} and
//   keys {tk + 16j} over the stage's 32 channels;
// - V stage: lane = query (so the final store is coalesced along tokens), warp w
//   accumulates channels {w + 8r} of the chunk: 4 registers per thread per chunk, 64 at
//   d = 512.

constexpr int NST_F32 = 3;  // ring depth (3 keeps d = 512 under 99 KiB)
constexpr int SP = BK + 1;  // score row pitch: column-wise reads conflict-free

constexpr int smem_floats(int d) {
    const int dp = (d + DC - 1) / DC * DC;
    return dp * BQ + NST_F32 * DC * BK + BQ * SP + 2 * BQ;
}

// MAXC: 32-channel chunks the output registers cover (head dim <= MAXC * DC).
template <int MAXC>
DS_DEV void attention_simt(const AttentionParams& p) {
    constexpr int NST = NST_F32;
    DS_DYN_SMEM(float, sm);
    const int P = p.p, C = p.c, d = C / p.heads;
    const int nck = (d + DC - 1) / DC, dp = nck * DC;
    if (nck > MAXC) __trap();  // the launcher picked a variant too small for d
    float* q_s = sm;                          // [dp][BQ], zero beyond d and the last token
    float* ring = q_s + dp * BQ;              // NST x [DC][BK]
    float* s_s = ring + NST * DC * BK;        // [BQ][SP]: scores, then probabilities
    float* alpha_s = s_s + BQ * SP;           // [BQ]: per-row rescale of this tile
    float* l_s = alpha_s + BQ;                // [BQ]: final row sums

    const int q0 = blockIdx.x * BQ, hd = blockIdx.y, b = blockIdx.z;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const long long PL = P;
    const float* qg = p.qkv + ((long long)b * 3 * C + (long long)hd * d) * PL;
    const float* kg = qg + (long long)C * PL;
    const float* vg = kg + (long long)C * PL;
    const bool vec = P % 4 == 0 && ((unsigned long long)p.qkv & 15) == 0;

    const int ntile = (P + BK - 1) / BK, per_tile = 2 * nck, total = ntile * per_tile;
    // Stage st: tile st / per_tile; K chunk k < nck, else V chunk k - nck.
    auto issue = [&](int st) {
        if (st < total) {
            const int k = st % per_tile, s0 = st / per_tile * BK;
            float* buf = ring + (st % NST) * DC * BK;
            issue_stage(buf, BK, k < nck ? kg : vg, k < nck ? k : k - nck, s0, d, P, vec);
        }
        cp_async_commit();  // also when empty: one group per stage keeps the count simple
    };
    for (int st = 0; st < NST - 1; st++) issue(st);

    for (int e = tid; e < dp * BQ; e += NT) {
        const int r = e / BQ, i = e % BQ;
        q_s[e] = (r < d && q0 + i < P) ? qg[r * PL + q0 + i] : 0.f;
    }

    const float sl2 = p.scale * 1.4426950408889634f;
    float m_run[4], l_run[4];
#pragma unroll
    for (int r = 0; r < 4; r++) {
        m_run[r] = -INFINITY;
        l_run[r] = 0.f;
    }
    float o[MAXC][4];
#pragma unroll
    for (int c = 0; c < MAXC; c++)
#pragma unroll
        for (int r = 0; r < 4; r++) o[c][r] = 0.f;
    float acc[2][4] = {};

    const int tk = tid & 15, tq = tid >> 4;
    for (int st = 0; st < total; st++) {
        cp_async_wait<NST - 2>();  // this thread's copies of stage st have landed
        __syncthreads();           // everyone's have; stage st - 1 is done with its buffer
        issue(st + NST - 1);       // refills that buffer
        const float* buf = ring + (st % NST) * DC * BK;
        const int k = st % per_tile, s0 = st / per_tile * BK;
        if (k < nck) {
            // ---- scores over channels [32k, 32k + 32) ----
            if (k == 0) {
#pragma unroll
                for (int a = 0; a < 2; a++)
#pragma unroll
                    for (int j = 0; j < 4; j++) acc[a][j] = 0.f;
            }
            const float* qc = q_s + k * DC * BQ;
#pragma unroll 8
            for (int r = 0; r < DC; r++) {
                const float qa = qc[r * BQ + tq], qb = qc[r * BQ + tq + 16];
                const float* kr = buf + r * BK + tk;
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    const float kv = kr[16 * j];
                    acc[0][j] = fmaf(qa, kv, acc[0][j]);
                    acc[1][j] = fmaf(qb, kv, acc[1][j]);
                }
            }
            if (k == nck - 1) {
#pragma unroll
                for (int a = 0; a < 2; a++)
#pragma unroll
                    for (int j = 0; j < 4; j++) {
                        const int col = tk + 16 * j;
                        s_s[(tq + 16 * a) * SP + col] = s0 + col < P ? acc[a][j] : -INFINITY;
                    }
                __syncthreads();
                float* s_w = s_s;
                softmax_rows(s_s, SP, sl2, m_run, l_run, alpha_s, [&](int row, int ln, float p0, float p1) {
                    s_w[row * SP + 2 * ln] = p0;  // in place: each lane rewrites what it read
                    s_w[row * SP + 2 * ln + 1] = p1;
                });
                __syncthreads();
            }
        } else {
            // ---- O[:, chunk] = alpha O + P V, lane = query ----
            const int c = k - nck;
            const float al = alpha_s[lane];
            const float* prow = s_s + lane * SP;
#pragma unroll
            for (int cc = 0; cc < MAXC; cc++) {
                if (cc != c) continue;  // register arrays need constant indices
#pragma unroll
                for (int r = 0; r < 4; r++) o[cc][r] *= al;
#pragma unroll 4
                for (int s = 0; s < BK; s++) {
                    const float pv = prow[s];
#pragma unroll
                    for (int r = 0; r < 4; r++) o[cc][r] = fmaf(pv, buf[(warp + 8 * r) * BK + s], o[cc][r]);
                }
            }
        }
    }
    cp_async_wait<0>();

    if (lane == 0) {
#pragma unroll
        for (int r = 0; r < 4; r++) l_s[warp * 4 + r] = l_run[r];
    }
    __syncthreads();
    if (q0 + lane < P) {
        const float inv = 1.f / l_s[lane];
        float* og = p.out + ((long long)b * C + (long long)hd * d) * PL + q0 + lane;
#pragma unroll
        for (int c = 0; c < MAXC; c++) {
            if (c < nck) {
#pragma unroll
                for (int r = 0; r < 4; r++) {
                    const int dd = c * DC + warp + 8 * r;
                    if (dd < d) og[dd * PL] = o[c][r] * inv;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// attention_bf16 / attention_f16: tensor cores. q is rounded to T once, k and v when
// their fragments are built, the probabilities when stored as the A operand of P V^T.
// Shared memory:
//   Q  [32 queries][d] T pairs    A operand of S (ldmatrix; rows padded by 16 bytes)
//   ring NST x [32 ch][KP or VP]  f32 K / V stages (pitches chosen conflict-free for
//                                 the fragment reads: K by channel pairs, V by key pairs)
//   S  [32][64 + 8] f32, P [32][64 + 8 halves] T pairs, alpha, l.
// Warp w: m-tile (w & 1) of 16 queries; in S the keys (w >> 1) * 16 + [0, 16) (2
// n-tiles); in O the channels (w >> 1) * 8 + [0, 8) of every 32-channel chunk.

constexpr int TQ = BQ;
constexpr int TK = BK;
constexpr int TCH = DC;
constexpr int NST = 4;           // ring depth (NST - 1 stages in flight)
constexpr int KP = TK + 4;       // floats per K stage row: channel pairs 2t, 2t+1 in distinct banks
constexpr int VP = TK + 8;       // floats per V stage row: 64-bit key pairs conflict-free per half-warp
constexpr int STAGE = TCH * VP;  // floats per ring buffer
constexpr int TW = TK / 2 + 4;   // words per P row (64 halves + 16 bytes pad)
constexpr int TSP = TK + 8;      // floats per score row (conflict-free float2 stores)

constexpr int tc_smem_bytes(int d) {
    const int qw = (d + TCH - 1) / TCH * TCH / 2 + 4;  // words per Q row
    return 4 * (TQ * qw + NST * STAGE + TQ * TW + TQ * TSP + 2 * TQ);
}

struct __align__(8) F2 {
    float x, y;
};

// MAXC: 32-channel chunks the output registers cover (head dim <= MAXC * TCH).
template <class T, int MAXC>
DS_DEV void attention_tc(const AttentionParams& p) {
    DS_DYN_SMEM(uint32_t, sm);
    const int P = p.p, C = p.c, d = C / p.heads;
    const int nck = (d + TCH - 1) / TCH, qw = nck * TCH / 2 + 4;
    if (nck > MAXC) __trap();  // the launcher picked a variant too small for d
    uint32_t* q_w = sm;                                         // [TQ][qw]
    float* ring = reinterpret_cast<float*>(q_w + TQ * qw);      // NST x STAGE
    uint32_t* p_w = reinterpret_cast<uint32_t*>(ring + NST * STAGE);  // [TQ][TW]
    float* s_s = reinterpret_cast<float*>(p_w + TQ * TW);       // [TQ][TSP]
    float* alpha_s = s_s + TQ * TSP;
    float* l_s = alpha_s + TQ;

    const int q0 = blockIdx.x * TQ, hd = blockIdx.y, b = blockIdx.z;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const long long PL = P;
    const float* qg = p.qkv + ((long long)b * 3 * C + (long long)hd * d) * PL;
    const float* kg = qg + (long long)C * PL;
    const float* vg = kg + (long long)C * PL;
    const bool vec = P % 4 == 0 && ((unsigned long long)p.qkv & 15) == 0;

    const int ntile = (P + TK - 1) / TK, per_tile = 2 * nck, total = ntile * per_tile;
    // Stage st: tile st / per_tile; K chunk k < nck, else V chunk k - nck.
    auto issue = [&](int st) {
        if (st < total) {
            const int k = st % per_tile, s0 = st / per_tile * TK;
            float* buf = ring + (st % NST) * STAGE;
            if (k < nck)
                issue_stage(buf, KP, kg, k, s0, d, P, vec);
            else
                issue_stage(buf, VP, vg, k - nck, s0, d, P, vec);
        }
        cp_async_commit();  // also when empty: one group per stage keeps the count simple
    };
    for (int st = 0; st < NST - 1; st++) issue(st);

    // Q^T, channel pairs packed; zero beyond d and beyond the last token.
    for (int e = tid; e < nck * TCH / 2 * TQ; e += NT) {
        const int w2 = e / TQ, i = e % TQ, dd = 2 * w2;
        const bool ok = q0 + i < P;
        const float lo = ok && dd < d ? qg[dd * PL + q0 + i] : 0.f;
        const float hi = ok && dd + 1 < d ? qg[(dd + 1) * PL + q0 + i] : 0.f;
        q_w[i * qw + w2] = ds_pack2<T>(lo, hi);
    }

    const int g = lane >> 2, t = lane & 3;
    const int mt = warp & 1, nb = (warp >> 1) * 16, n0 = (warp >> 1) * 8;
    // ldmatrix x4 row address of the A operand (rows m, k halves), in (row, half) units.
    const int a_row = mt * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, a_col = (lane >> 4) * 8;

    const float sl2 = p.scale * 1.4426950408889634f;
    float m_run[4], l_run[4];
#pragma unroll
    for (int r = 0; r < 4; r++) {
        m_run[r] = -INFINITY;
        l_run[r] = 0.f;
    }
    float o[MAXC][4];
#pragma unroll
    for (int c = 0; c < MAXC; c++)
#pragma unroll
        for (int r = 0; r < 4; r++) o[c][r] = 0.f;
    float acc[2][4] = {};

    for (int st = 0; st < total; st++) {
        cp_async_wait<NST - 2>();  // this thread's copies of stage st have landed
        __syncthreads();           // everyone's have; stage st - 1 is done with its buffer
        issue(st + NST - 1);       // refills that buffer
        const float* buf = ring + (st % NST) * STAGE;
        const int k = st % per_tile, s0 = st / per_tile * TK;
        if (k < nck) {
            // ---- S += Q^T K over channels [32k, 32k + 32) ----
            if (k == 0) {
#pragma unroll
                for (int j = 0; j < 2; j++)
#pragma unroll
                    for (int r = 0; r < 4; r++) acc[j][r] = 0.f;
            }
#pragma unroll
            for (int ks = 0; ks < TCH / 16; ks++) {
                uint32_t a[4];
                ldmatrix<4, false>(a, q_w + a_row * qw + (k * TCH + ks * 16 + a_col) / 2);
                const float* kr = buf + (ks * 16 + 2 * t) * KP + nb + g;
#pragma unroll
                for (int j = 0; j < 2; j++) {
                    // B[k][n] = K[channel k][key n]: b0 = channels 2t, 2t+1; b1 = +8.
                    const uint32_t bf[2] = {ds_pack2<T>(kr[8 * j], kr[KP + 8 * j]),
                                            ds_pack2<T>(kr[8 * KP + 8 * j], kr[9 * KP + 8 * j])};
                    mma_16816<T>(acc[j], a, bf);
                }
            }
            if (k == nck - 1) {
#pragma unroll
                for (int j = 0; j < 2; j++) {
                    const int col = nb + 8 * j + 2 * t;
                    const bool v0 = s0 + col < P, v1 = s0 + col + 1 < P;
                    float* r0 = s_s + (mt * 16 + g) * TSP + col;
                    float* r1 = r0 + 8 * TSP;
                    r0[0] = v0 ? acc[j][0] : -INFINITY;
                    r0[1] = v1 ? acc[j][1] : -INFINITY;
                    r1[0] = v0 ? acc[j][2] : -INFINITY;
                    r1[1] = v1 ? acc[j][3] : -INFINITY;
                }
                __syncthreads();
                softmax_rows(s_s, TSP, sl2, m_run, l_run, alpha_s, [&](int row, int ln, float p0, float p1) {
                    p_w[row * TW + ln] = ds_pack2<T>(p0, p1);
                });
                __syncthreads();
            }
        } else {
            // ---- O[:, chunk] = alpha O + P V^T over channels [32c, 32c + 32) ----
            const int c = k - nck;
            const float al0 = alpha_s[mt * 16 + g], al1 = alpha_s[mt * 16 + g + 8];
            // B[k][n] = V[channel n][key k]: b0 = keys 2t, 2t+1 of channel n0 + g; b1 = +8.
            const float* vr = buf + (n0 + g) * VP + 2 * t;
#pragma unroll
            for (int cc = 0; cc < MAXC; cc++) {
                if (cc != c) continue;  // register arrays need constant indices
                o[cc][0] *= al0;
                o[cc][1] *= al0;
                o[cc][2] *= al1;
                o[cc][3] *= al1;
#pragma unroll
                for (int ks = 0; ks < TK / 16; ks++) {
                    uint32_t a[4];
                    ldmatrix<4, false>(a, p_w + a_row * TW + (ks * 16 + a_col) / 2);
                    const F2 lo = *reinterpret_cast<const F2*>(vr + ks * 16);
                    const F2 hi = *reinterpret_cast<const F2*>(vr + ks * 16 + 8);
                    const uint32_t bf[2] = {ds_pack2<T>(lo.x, lo.y), ds_pack2<T>(hi.x, hi.y)};
                    mma_16816<T>(o[cc], a, bf);
                }
            }
        }
    }
    cp_async_wait<0>();

    if (lane == 0) {
#pragma unroll
        for (int r = 0; r < 4; r++) l_s[warp * 4 + r] = l_run[r];
    }
    __syncthreads();
    const int i0 = mt * 16 + g, i1 = i0 + 8;
    const float inv0 = 1.f / l_s[i0], inv1 = 1.f / l_s[i1];
    float* og = p.out + ((long long)b * C + (long long)hd * d) * PL + q0;
#pragma unroll
    for (int c = 0; c < MAXC; c++) {
        if (c < nck) {
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int dd = c * TCH + n0 + 2 * t + h;
                if (dd >= d) continue;
                if (q0 + i0 < P) og[dd * PL + i0] = o[c][h] * inv0;
                if (q0 + i1 < P) og[dd * PL + i1] = o[c][2 + h] * inv1;
            }
        }
    }
}

}  // namespace attn

// Entry points: the general kernels (head dim <= 512) and, for head dim <= 128, variants
// with a quarter of the output registers, so that several blocks fit on an SM.
#define DS_ATTN_KERNEL(name, min_blocks, ...)                                                      \
    DS_KERNEL void __launch_bounds__(attn::NT, min_blocks) name(const AttentionParams p) { \
        __VA_ARGS__(p);                                                                            \
    }                                                                                              \
    DS_REGISTER(name, AttentionParams)

DS_ATTN_KERNEL(attention_f32, 1, attn::attention_simt<attn::MAXD / attn::DC>)
DS_ATTN_KERNEL(attention_f32_d128, 2, attn::attention_simt<DS_ATTN_SMALL_D / attn::DC>)
DS_ATTN_KERNEL(attention_bf16, 1, attn::attention_tc<__nv_bfloat16, attn::MAXD / attn::TCH>)
DS_ATTN_KERNEL(attention_bf16_d128, 2, attn::attention_tc<__nv_bfloat16, DS_ATTN_SMALL_D / attn::TCH>)
DS_ATTN_KERNEL(attention_f16, 1, attn::attention_tc<__half, attn::MAXD / attn::TCH>)
DS_ATTN_KERNEL(attention_f16_d128, 2, attn::attention_tc<__half, DS_ATTN_SMALL_D / attn::TCH>)
