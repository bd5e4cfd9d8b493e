/* JDNet's SAN bottleneck on CPU, fused:
 *     out = conv1x1(lrelu(bn2(sam(lrelu(bn1(x)))))) + x
 * for one image, reading and writing channels-last features. No Python or PyTorch headers; vectors
 * are GCC/Clang vector extensions of 8 floats (AVX where the build targets it, pairs of SSE otherwise).
 *
 * jdnet_san takes rows [y0, y1) and splits them into ranges of `chunk` rows, run on `threads` threads
 * where this file is built with OpenMP. Loaded into a process that runs PyTorch, the OpenMP runtime is
 * PyTorch's own (the same libgomp.so.1), so the ranges run on its thread team instead of on threads
 * that compete with it for the cores. Each range recomputes the k/2 rows of projections it shares
 * with its neighbours. Returns 0, or -1 if scratch memory could not be allocated; jdnet_openmp says
 * whether this build runs in parallel.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef float v8 __attribute__((vector_size(32)));
typedef float v8u __attribute__((vector_size(32), aligned(4)));
typedef int v8i __attribute__((vector_size(32)));

static inline v8 ld(const float *p) { return *(const v8u *)p; }
static inline void st(float *p, v8 v) { *(v8u *)p = v; }
/* A store that bypasses the caches (no read of the line first) where the target is aligned. */
static inline void st_stream(float *p, v8 v)
{
#ifdef __AVX__
    if (((size_t)p & 31) == 0) {
        __builtin_ia32_movntps256(p, v);
        return;
    }
#endif
    st(p, v);
}
static inline v8 bc(float s) { return (v8){s, s, s, s, s, s, s, s}; }
static inline v8 vsel(v8i m, v8 a, v8 b) { return (v8)((m & (v8i)a) | (~m & (v8i)b)); }
#ifdef __AVX__
static inline v8 vmax(v8 a, v8 b) { return __builtin_ia32_maxps256(a, b); }
#else
static inline v8 vmax(v8 a, v8 b) { return vsel(a > b, a, b); }
#endif
/* LeakyReLU for slopes in [0, 1]. */
static inline v8 vlrelu(v8 v, float slope) { return vmax(v, v * bc(slope)); }
static inline float lrelu(float v, float slope) { return v > 0.f ? v : slope * v; }

/* exp(x) for x <= 0 (softmax logits minus their maximum): 2^n * p(r), x = n ln2 + r, |r| < ln2;
 * relative error about 2e-7 (a degree-7 Taylor polynomial); below -87, 0. */
static inline v8 vexp_neg(v8 x)
{
    const v8 lo = bc(-87.f);
    v8i under = x < lo;
    x = vsel(under, lo, x);
    v8i n = __builtin_convertvector(x * bc(1.44269504088896341f), v8i);  /* truncates: |r| < ln2 */
    v8 nf = __builtin_convertvector(n, v8);
    v8 r = x - nf * bc(0.693359375f) + nf * bc(2.12194440e-4f);
    v8 p = bc(1.f / 5040.f);
    p = p * r + bc(1.f / 720.f);
    p = p * r + bc(1.f / 120.f);
    p = p * r + bc(1.f / 24.f);
    p = p * r + bc(1.f / 6.f);
    p = p * r + bc(0.5f);
    p = p * r + bc(1.f);
    p = p * r + bc(1.f);
    v8 scaled = (v8)((v8i)p + (n << 23));
    return vsel(under, bc(0.f), scaled);
}

static inline int reflect(int i, int n) { return i < 0 ? -i : (i >= n ? 2 * (n - 1) - i : i); }

static inline int round_up(int v, int m) { return (v + m - 1) / m * m; }

/* The input of pixel px at channel c: x, or lrelu(x + in_bias). */
static inline float input_at(const float *px, const float *in_bias, int c, float slope)
{
    return in_bias ? lrelu(px[c] + in_bias[c], slope) : px[c];
}

#define JB 6 /* projection outputs per register block */
#define MB 4 /* aggregated channels per register block */

/* dst[j][i] = bp[j] + sum_c wp[j][c] * ob[c][i] for i < Wv (a multiple of 16); wp padded to a
 * multiple of JB rows with zeros. */
static void project_row(const float *ob, int Wv, const float *wp, const float *bp, int C, int J, float *const *dst)
{
    for (int jb = 0; jb < J; jb += JB) {
        for (int i = 0; i < Wv; i += 16) {
            v8 acc[JB][2];
            for (int jj = 0; jj < JB; ++jj)
                acc[jj][0] = acc[jj][1] = bc(jb + jj < J ? bp[jb + jj] : 0.f);
            for (int c = 0; c < C; ++c) {
                const v8 a = ld(ob + (size_t)c * Wv + i), b = ld(ob + (size_t)c * Wv + i + 8);
                for (int jj = 0; jj < JB; ++jj) {
                    const v8 w = bc(wp[(size_t)(jb + jj) * C + c]);
                    acc[jj][0] += w * a;
                    acc[jj][1] += w * b;
                }
            }
            for (int jj = 0; jj < JB && jb + jj < J; ++jj) {
                st(dst[jb + jj] + i, acc[jj][0]);
                st(dst[jb + jj] + i + 8, acc[jj][1]);
            }
        }
    }
}

#define INLINE static inline __attribute__((always_inline))

/* Attention for one output row, 8 pixels at a time. q1: the centre row (channel stride q1s); q2, v:
 * the padded row at the top of the window (channel stride q2s, row stride Wps); att: (M, Wv) out.
 * CQF, MGF: Cq and the values aggregated per pass as compile-time constants (0: Cq at run time, MB). */
INLINE void attend_impl(const int CQF, const int MGF, const float *q1, size_t q1s, const float *q2, const float *v,
                        size_t q2s, int Wps, const float *wt, float *att, int Wv, int Cq_rt, int M, int S, int k,
                        float slope, v8 *L)
{
    const int K = k * k, Cq = CQF ? CQF : Cq_rt, MG = MGF ? MGF : MB;
    for (int x = 0; x < Wv; x += 8) {
        for (int j = 0; j < S; ++j) {
            v8 mx = bc(-INFINITY);
            for (int qi = 0, q = 0; qi < k; ++qi)
                for (int qj = 0; qj < k; ++qj, ++q) {
                    const size_t off = (size_t)qi * Wps + qj + x;
                    v8 acc = bc(0.f);
                    for (int c = 0; c < Cq; ++c)
                        acc += bc(wt[j * Cq + c]) * vlrelu(ld(q1 + c * q1s + x) - ld(q2 + c * q2s + off), slope);
                    L[q] = acc;
                    mx = vmax(mx, acc);
                }
            v8 sum = bc(0.f);
            for (int q = 0; q < K; ++q) {
                L[q] = vexp_neg(L[q] - mx);
                sum += L[q];
            }
            const v8 inv = bc(1.f) / sum;
            for (int m0 = j; m0 < M; m0 += MG * S) {
                v8 acc[8] = {0};
                for (int qi = 0, q = 0; qi < k; ++qi)
                    for (int qj = 0; qj < k; ++qj, ++q) {
                        const size_t off = (size_t)qi * Wps + qj + x;
                        for (int mm = 0; mm < MG; ++mm)
                            if (MGF || m0 + mm * S < M) acc[mm] += L[q] * ld(v + (size_t)(m0 + mm * S) * q2s + off);
                    }
                for (int mm = 0; mm < MG && m0 + mm * S < M; ++mm)
                    st(att + (size_t)(m0 + mm * S) * Wv + x, acc[mm] * inv);
            }
        }
    }
}

/* attend_impl, specialised for the presets' widths (paper: Cq 4, 8 values per weight map; jdnet-lite:
 * 3 and 4), which keeps the window loops' operands in registers. */
static void attend_row(const float *q1, size_t q1s, const float *q2, const float *v, size_t q2s, int Wps,
                       const float *wt, float *att, int Wv, int Cq, int M, int S, int k, float slope, v8 *L)
{
    if (Cq == 4 && M == 8 * S)
        attend_impl(4, 8, q1, q1s, q2, v, q2s, Wps, wt, att, Wv, Cq, M, S, k, slope, L);
    else if (Cq == 3 && M == 4 * S)
        attend_impl(3, 4, q1, q1s, q2, v, q2s, Wps, wt, att, Wv, Cq, M, S, k, slope, L);
    else
        attend_impl(0, 0, q1, q1s, q2, v, q2s, Wps, wt, att, Wv, Cq, M, S, k, slope, L);
}

/* out[i][c] = xrow[i][c] + bo[c] + sum_m wo[m][c] * att[m][i] for one row of W pixels; xrow: (W, C), the
 * row's (activated) input kept from its projection. */
static void output_row(const float *xrow, const float *att, int Wv, const float *wo, const float *bo, float *orow,
                       int C, int M, int W)
{
    int cb = 0;
    for (; cb + 8 <= C; cb += 8) {
        const v8 b = ld(bo + cb);
        for (int m0 = 0; m0 < M; m0 += 8) {
            v8 w[8];
            for (int m = 0; m < 8; ++m) w[m] = m0 + m < M ? ld(wo + (size_t)(m0 + m) * C + cb) : bc(0.f);
            for (int i = 0; i < W; ++i) {
                float *o = orow + (size_t)i * C + cb;
                v8 acc = m0 > 0 ? ld(o) : ld(xrow + (size_t)i * C + cb) + b;
                for (int m = 0; m < 8 && m0 + m < M; ++m) acc += w[m] * bc(att[(size_t)(m0 + m) * Wv + i]);
                st(o, acc);
            }
        }
    }
    for (; cb < C; ++cb)
        for (int i = 0; i < W; ++i) {
            float s = xrow[(size_t)i * C + cb] + bo[cb];
            for (int m = 0; m < M; ++m) s += wo[(size_t)m * C + cb] * att[(size_t)m * Wv + i];
            orow[(size_t)i * C + cb] = s;
        }
}

#if defined(__clang__) || __GNUC__ >= 12
#define HAVE_SHUFFLE 1
/* r[j][c] -> r[c][j] for an 8x8 block. */
static inline void transpose8(v8 *r)
{
    v8 t[8], u[8];
    for (int j = 0; j < 8; j += 2) {
        t[j] = __builtin_shufflevector(r[j], r[j + 1], 0, 8, 1, 9, 4, 12, 5, 13);
        t[j + 1] = __builtin_shufflevector(r[j], r[j + 1], 2, 10, 3, 11, 6, 14, 7, 15);
    }
    for (int j = 0; j < 8; j += 4) {
        u[j] = __builtin_shufflevector(t[j], t[j + 2], 0, 1, 8, 9, 4, 5, 12, 13);
        u[j + 1] = __builtin_shufflevector(t[j], t[j + 2], 2, 3, 10, 11, 6, 7, 14, 15);
        u[j + 2] = __builtin_shufflevector(t[j + 1], t[j + 3], 0, 1, 8, 9, 4, 5, 12, 13);
        u[j + 3] = __builtin_shufflevector(t[j + 1], t[j + 3], 2, 3, 10, 11, 6, 7, 14, 15);
    }
    for (int j = 0; j < 4; ++j) {
        r[j] = __builtin_shufflevector(u[j], u[j + 4], 0, 1, 2, 3, 8, 9, 10, 11);
        r[j + 4] = __builtin_shufflevector(u[j], u[j + 4], 4, 5, 6, 7, 12, 13, 14, 15);
    }
}
#else
#define HAVE_SHUFFLE 0
#endif

/* One input row: its pixels (lrelu(x + in_bias) with in_bias) into xr, pixel-major (W, C), if xr is
 * given; lrelu(bn1(.)) of them into ob, channel-major (C, Wv). 8x8 blocks are transposed in registers. */
static void load_row(const float *row, int64_t ldx, const float *in_bias, const float *s1, const float *t1,
                     int C, int W, int Wv, float slope, float *ob, float *xr)
{
    int i = 0;
    const int C8 = C & ~7;
#if HAVE_SHUFFLE
    for (; i + 8 <= W; i += 8)
        for (int c0 = 0; c0 < C8; c0 += 8) {
            const v8 b = in_bias ? ld(in_bias + c0) : bc(0.f), sc = ld(s1 + c0), sh = ld(t1 + c0);
            v8 r[8];
            for (int j = 0; j < 8; ++j) {
                v8 v = ld(row + (size_t)(i + j) * ldx + c0);
                if (in_bias) v = vlrelu(v + b, slope);
                if (xr) st(xr + (size_t)(i + j) * C + c0, v);
                r[j] = vlrelu(v * sc + sh, slope);
            }
            transpose8(r);
            for (int j = 0; j < 8; ++j) st(ob + (size_t)(c0 + j) * Wv + i, r[j]);
        }
#endif
    for (int ii = 0; ii < W; ++ii)  /* what the blocks left: all channels of the last pixels, the last channels */
        for (int c = ii < i ? C8 : 0; c < C; ++c) {
            const float v = input_at(row + (size_t)ii * ldx, in_bias, c, slope);
            if (xr) xr[(size_t)ii * C + c] = v;
            ob[(size_t)c * Wv + ii] = lrelu(v * s1[c] + t1[c], slope);
        }
}

/* The bottleneck for one image, rows [y0, y1):
 *   x:       (H * W) pixels of C channels, pixel i at x + i * ldx (a channels-last tensor or a column
 *            block of a wider matrix); with in_bias, the input is lrelu(x + in_bias) (a dense fusion's
 *            bias and activation, applied here instead of in a pass of their own)
 *   s1, t1:  (C) eval BatchNorm bn1 as scale and shift
 *   wp, bp:  (2R + M, C), (2R + M) conv1, conv2, conv3 stacked
 *   pos:     (2, H, W) the position map after conv_p
 *   wt:      (S, R + 2) conv_w's two 1x1 convolutions multiplied (its bias cancels in the softmax)
 *   s2, t2:  (M) bn2 as scale and shift
 *   wo, bo:  (M, C) the final 1x1 convolution's weight transposed, (C) its bias
 *   out:     (H * W, C) channels-last
 * The attention: out_att[m, y, x] = sum_q softmax_q(logit[m % S, q]) * v[m, y + qi - p, x + qj - p]
 * with logit[s, q] = sum_c wt[s, c] lrelu(q1[c, y, x] - q2[c, y + qi - p, x + qj - p]), q1 = (conv1, pos),
 * q2 = (conv2, pos), v = conv3, neighbours outside the image reflected. */
static int san_rows(const float *x, int64_t ldx, const float *in_bias, const float *s1, const float *t1,
                    const float *wp, const float *bp, const float *pos, const float *wt, const float *s2,
                    const float *t2, const float *wo, const float *bo, float *out,
                    int C, int R, int M, int S, int H, int W, int k, float slope, int y0, int y1)
{
    const int p = k / 2, K = k * k, n = y1 - y0, np = n + 2 * p, Cq = R + 2, J = 2 * R + M;
    const int Wv = round_up(W, 16), Wps = Wv + 2 * p, Jp = round_up(J, JB);
    const size_t q1s = (size_t)n * Wv, q2s = (size_t)np * Wps;
    const size_t floats = (size_t)Cq * q1s + (size_t)(Cq + M) * q2s  /* Q1, Q2, V */
                        + (size_t)(C + M + 1) * Wv                   /* ob, att, junk */
                        + (size_t)(p + 1) * W * C                    /* inputs of the last centre rows */
                        + (size_t)Jp * C + 8 * (size_t)(K + 1);      /* padded wp, logits */
    float *buf = (float *)calloc(floats, sizeof(float));
    if (!buf) return -1;
    float *Q1 = buf, *Q2 = Q1 + (size_t)Cq * q1s, *V = Q2 + (size_t)Cq * q2s, *ob = V + (size_t)M * q2s;
    float *att = ob + (size_t)C * Wv, *junk = att + (size_t)M * Wv, *xring = junk + Wv;
    float *wpad = xring + (size_t)(p + 1) * W * C;
    v8 *L = (v8 *)(((size_t)(wpad + (size_t)Jp * C) + 31) & ~(size_t)31);
    memcpy(wpad, wp, sizeof(float) * (size_t)J * C);
    float *dst[Jp];

    /* Row by row: project row lr (reflected), then attend and output the row whose window it completes,
     * while that row's input is still in cache. */
    for (int lr = 0; lr < np; ++lr) {
        const int sy = reflect(y0 - p + lr, H), centre = lr >= p && lr < p + n;
        /* A centre row's input is kept (a ring of p + 1 rows) for its residual, p rows later. */
        load_row(x + (size_t)sy * W * ldx, ldx, in_bias, s1, t1, C, W, Wv, slope, ob,
                 centre ? xring + (size_t)((lr - p) % (p + 1)) * W * C : NULL);
        for (int j = 0; j < J; ++j)  /* rows outside [y0, y1) need no centre embeddings */
            dst[j] = j < R ? (centre ? Q1 + (size_t)j * q1s + (size_t)(lr - p) * Wv : junk)
                   : j < 2 * R ? Q2 + (size_t)(j - R) * q2s + (size_t)lr * Wps + p
                   : V + (size_t)(j - 2 * R) * q2s + (size_t)lr * Wps + p;
        project_row(ob, Wv, wpad, bp, C, J, dst);
        for (int j = 0; j < 2; ++j) {
            const float *pr = pos + ((size_t)j * H + sy) * W;
            memcpy(Q2 + (size_t)(R + j) * q2s + (size_t)lr * Wps + p, pr, sizeof(float) * W);
            if (centre) memcpy(Q1 + (size_t)(R + j) * q1s + (size_t)(lr - p) * Wv, pr, sizeof(float) * W);
        }
        for (int j = 0; j < Cq + M; ++j) {  /* the columns' reflection */
            float *r = (j < Cq ? Q2 + (size_t)j * q2s : V + (size_t)(j - Cq) * q2s) + (size_t)lr * Wps;
            for (int i = 1; i <= p; ++i) {
                r[p - i] = r[p + i];
                r[p + W - 1 + i] = r[p + W - 1 - i];
            }
            for (int i = W + 2 * p; i < Wps; ++i) r[i] = 0.f;
        }
        if (centre)
            for (int j = 0; j < Cq; ++j) {
                float *r = Q1 + (size_t)j * q1s + (size_t)(lr - p) * Wv;
                for (int i = W; i < Wv; ++i) r[i] = 0.f;
            }
        if (lr < 2 * p) continue;
        const int ar = lr - 2 * p, y = y0 + ar;
        attend_row(Q1 + (size_t)ar * Wv, q1s, Q2 + (size_t)ar * Wps, V + (size_t)ar * Wps, q2s, Wps, wt, att, Wv,
                   Cq, M, S, k, slope, L);
        for (int m = 0; m < M; ++m) {
            float *a = att + (size_t)m * Wv;
            for (int i = 0; i < W; ++i) a[i] = lrelu(a[i] * s2[m] + t2[m], slope);
        }
        output_row(xring + (size_t)(ar % (p + 1)) * W * C, att, Wv, wo, bo, out + (size_t)y * W * C, C, M, W);
    }
    free(buf);
    return 0;
}

int jdnet_san(const float *x, int64_t ldx, const float *in_bias, const float *s1, const float *t1,
              const float *wp, const float *bp, const float *pos, const float *wt, const float *s2,
              const float *t2, const float *wo, const float *bo, float *out,
              int C, int R, int M, int S, int H, int W, int k, float slope, int y0, int y1, int chunk, int threads)
{
    int err = 0;
    const int chunks = (y1 - y0 + chunk - 1) / chunk;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1) reduction(| : err)
    for (int t = 0; t < chunks; ++t) {
        const int a = y0 + t * chunk, b = a + chunk < y1 ? a + chunk : y1;
        err |= san_rows(x, ldx, in_bias, s1, t1, wp, bp, pos, wt, s2, t2, wo, bo, out, C, R, M, S, H, W, k,
                        slope, a, b);
    }
    return err;
}

/* The interface version the Python side checks on load (bump it with any change of a signature or of
 * pw_args), and the size of pw_args as this compiler lays it out. */
#define JDNET_ABI_VERSION 4
int jdnet_abi_version(void) { return JDNET_ABI_VERSION; }

int jdnet_openmp(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

/* A 1x1 convolution with what follows it, over (H, W) pixels of channels-last features:
 *     out = post + act(bias + sum_k in_k @ wt[rows of k] + pre[iy[y], ix[x]])
 * in_k: n_in inputs (pixel i of input k at in[k] + i * in_ld[k], in_c[k] channels), their channels
 *   stacked in that order are wt's rows;
 * wt: (sum in_c, cp) the weight transposed and its columns padded with zeros to cp, a multiple of 8;
 * bias: (cp); pre: NULL, or features of an image pre_w wide read at (iy[y], ix[x]) (nearest upsampling,
 *   or the identity), pixel stride pre_ld; lrelu_on: whether act is LeakyReLU (else none);
 * post: NULL, or (H * W) pixels at stride post_ld; out: pixel stride out_ld (may be a column block);
 * stream: write out around the caches (for outputs not read again soon; out must not be pre or post).
 * Rows run in parallel on `threads` OpenMP threads where built with OpenMP. (A second 1x1 convolution
 * chained on each row, for the self-calibrated bottleneck's entry, measured slower than oneDNN's.) */
typedef struct {
    int n_in;
    const float *const *in;
    const int64_t *in_ld;
    const int *in_c;
    const float *wt, *bias;
    int cout, cp;
    const float *pre;
    int64_t pre_ld;
    int pre_w;
    const int64_t *iy, *ix;
    int lrelu_on;
    float slope;
    const float *post;
    int64_t post_ld;
    float *out;
    int64_t out_ld;
    int stream;
} pw_args;

/* The epilogue of one pixel: channels [cb, cb + 8 * NV) of acc, then pre, act, post; out. */
INLINE void pw_store(const int NV, const v8 *acc, int cb, int cout, const float *pr, int lrelu_on, float slope,
                     const float *po, float *o, int stream)
{
    for (int v = 0; v < NV; ++v) {
        if (cb + 8 * v + 8 <= cout) {
            v8 r = acc[v];
            if (pr) r += ld(pr + 8 * v);
            if (lrelu_on) r = vlrelu(r, slope);
            if (po) r += ld(po + 8 * v);
            if (stream) st_stream(o + 8 * v, r);
            else st(o + 8 * v, r);
        } else {  /* the last channels, fewer than 8 */
            float r[8];
            st(r, acc[v]);
            for (int c = 0; cb + 8 * v + c < cout; ++c) {
                float s = r[c] + (pr ? pr[8 * v + c] : 0.f);
                if (lrelu_on) s = lrelu(s, slope);
                o[8 * v + c] = s + (po ? po[8 * v + c] : 0.f);
            }
        }
    }
}

/* Output channels [cb, cb + 8 * NV) of NP = 12 / NV pixels from x on in row y (12 accumulators; pixels past
 * the row's end repeat its last pixel and are not stored). */
INLINE void pw_block(const int NV, int y, int x, int W, int n_in, const float *const *in, const int64_t *in_ld,
                     const int *in_c, const float *wt, const float *bias, int cb, int cout, int cp,
                     const float *pre, int64_t pre_ld, int pre_w, const int64_t *iy, const int64_t *ix, int lrelu_on,
                     float slope, const float *post, int64_t post_ld, float *out, int64_t out_ld, int stream)
{
    const int NP = 12 / NV;
    size_t px[12];
    for (int j = 0; j < NP; ++j) px[j] = (size_t)y * W + (x + j < W ? x + j : W - 1);
    v8 acc[12][4];
    for (int j = 0; j < NP; ++j)
        for (int v = 0; v < NV; ++v) acc[j][v] = ld(bias + cb + 8 * v);
    int row = 0;
    for (int k = 0; k < n_in; ++k) {
        const float *base = in[k];
        const size_t ldk = (size_t)in_ld[k];
        for (int c = 0; c < in_c[k]; ++c, ++row) {
            const float *wr = wt + (size_t)row * cp + cb;
            v8 wv[4];
            for (int v = 0; v < NV; ++v) wv[v] = ld(wr + 8 * v);
            for (int j = 0; j < NP; ++j) {
                const v8 a = bc(base[px[j] * ldk + c]);
                for (int v = 0; v < NV; ++v) acc[j][v] += a * wv[v];
            }
        }
    }
    const size_t row_pre = (size_t)(pre ? iy[y] : 0) * pre_w;
    for (int j = 0; j < NP && x + j < W; ++j)
        pw_store(NV, acc[j], cb, cout, pre ? pre + (row_pre + ix[x + j]) * (size_t)pre_ld + cb : NULL, lrelu_on,
                 slope, post ? post + px[j] * post_ld + cb : NULL, out + px[j] * out_ld + cb, stream);
}

int jdnet_pointwise(int H, int W, const pw_args *g, int threads)
{
#pragma omp parallel num_threads(threads)
    {
#pragma omp for schedule(static)
        for (int y = 0; y < H; ++y)
            for (int cb = 0; cb < g->cp; cb += 32) {
#define PW_BLOCK(NV) for (int x = 0; x < W; x += 12 / NV)                                                       \
                         pw_block(NV, y, x, W, g->n_in, g->in, g->in_ld, g->in_c, g->wt, g->bias, cb, g->cout,  \
                                  g->cp, g->pre, g->pre_ld, g->pre_w, g->iy, g->ix, g->lrelu_on, g->slope,      \
                                  g->post, g->post_ld, g->out, g->out_ld, g->stream)
                switch ((g->cp - cb) / 8) {
                    case 1: PW_BLOCK(1); break;
                    case 2: PW_BLOCK(2); break;
                    case 3: PW_BLOCK(3); break;
                    default: PW_BLOCK(4);
                }
#undef PW_BLOCK
            }
#ifdef __AVX__
        __builtin_ia32_sfence(); /* this thread's streamed stores are visible before the team's end */
#endif
    }
    return 0;
}

int jdnet_pw_args_size(void) { return (int)sizeof(pw_args); }

/* jdnet::shift_aggregate (ops/window.py) and its backward, for training: contiguous float32
 *     xp (B, G, S, H + k - 1, W + k - 1), w (B, S, k*k, H, W), out and go (B, G, S, H, W),
 *     out[b,g,s,y,x] = sum_q xp[b,g,s,y+i,x+j] * w[b,s,q,y,x]   (q = i*k + j).
 * The x loops are contiguous and left to the compiler's vectoriser. */
int jdnet_shift_aggregate(const float *xp, const float *w, float *out, int B, int G, int S, int H, int W, int k,
                          int threads)
{
    const int Hp = H + k - 1, Wp = W + k - 1, K = k * k;
    const size_t plane = (size_t)Hp * Wp, oplane = (size_t)H * W;
#pragma omp parallel for collapse(2) num_threads(threads) schedule(static)
    for (int bs = 0; bs < B * S; ++bs)
        for (int y = 0; y < H; ++y) {
            const int b = bs / S, s = bs % S;
            const float *wb = w + (size_t)bs * K * oplane + (size_t)y * W;
            for (int g = 0; g < G; ++g) {
                const size_t p = ((size_t)b * G + g) * S + s;
                const float *xb = xp + p * plane;
                float *restrict o = out + p * oplane + (size_t)y * W;
                for (int x = 0; x < W; ++x)
                    o[x] = 0.f;
                for (int i = 0; i < k; ++i) {
                    const float *xr = xb + (size_t)(y + i) * Wp;
                    for (int j = 0; j < k; ++j) {
                        const float *restrict wr = wb + (size_t)(i * k + j) * oplane;
                        const float *restrict xs = xr + j;
                        for (int x = 0; x < W; ++x)
                            o[x] += xs[x] * wr[x];
                    }
                }
            }
        }
    return 0;
}

/* gxp (zeroed here) and gw from go; either may be NULL (not wanted). */
int jdnet_shift_aggregate_backward(const float *xp, const float *w, const float *go, float *gxp, float *gw, int B,
                                   int G, int S, int H, int W, int k, int threads)
{
    const int Hp = H + k - 1, Wp = W + k - 1, K = k * k;
    const size_t plane = (size_t)Hp * Wp, oplane = (size_t)H * W;
    if (gxp) {
        /* Each (b, g, s) plane of gxp is written by one thread; its rows are scattered to from k rows of go. */
#pragma omp parallel for num_threads(threads) schedule(static)
        for (int p = 0; p < B * G * S; ++p) {
            const int s = p % S, b = p / (G * S);
            const float *wb = w + ((size_t)b * S + s) * K * oplane;
            float *gp = gxp + (size_t)p * plane;
            memset(gp, 0, plane * sizeof(float));
            for (int y = 0; y < H; ++y) {
                const float *restrict gr = go + (size_t)p * oplane + (size_t)y * W;
                for (int i = 0; i < k; ++i) {
                    float *xr = gp + (size_t)(y + i) * Wp;
                    for (int j = 0; j < k; ++j) {
                        const float *restrict wr = wb + (size_t)(i * k + j) * oplane + (size_t)y * W;
                        float *restrict xs = xr + j;
                        for (int x = 0; x < W; ++x)
                            xs[x] += gr[x] * wr[x];
                    }
                }
            }
        }
    }
    if (gw) {
#pragma omp parallel for collapse(2) num_threads(threads) schedule(static)
        for (int bs = 0; bs < B * S; ++bs)
            for (int y = 0; y < H; ++y) {
                const int b = bs / S, s = bs % S;
                for (int q = 0; q < K; ++q) {
                    const int i = q / k, j = q % k;
                    float *restrict wr = gw + ((size_t)bs * K + q) * oplane + (size_t)y * W;
                    for (int x = 0; x < W; ++x)
                        wr[x] = 0.f;
                    for (int g = 0; g < G; ++g) {
                        const size_t p = ((size_t)b * G + g) * S + s;
                        const float *restrict gr = go + p * oplane + (size_t)y * W;
                        const float *restrict xs = xp + p * plane + (size_t)(y + i) * Wp + j;
                        for (int x = 0; x < W; ++x)
                            wr[x] += gr[x] * xs[x];
                    }
                }
            }
    }
    return 0;
}

/* jdnet::window_softmax (ops/window.py) and its backward, for training: contiguous float32
 *     x1 (B, R, H, W), x2p (B, R, H + k - 1, W + k - 1), a (S, R), pos (S, K, H, W), w (B, S, K, H, W),
 *     w[b,s,q,y,x] = softmax over q of pos[s,q,y,x] + sum_c a[s,c] lrelu(x1[b,c,y,x] - x2p[b,c,y+i,x+j]).
 * SAM's relation, its folded weight convolution and the softmax over the window in one pass: the logits are
 * written where the weights go and normalised there. Returns 0, or -1 if a row buffer could not be allocated. */
static void softmax_rows(float *wr, size_t stride, int K, int W, float *mx, float *sum)
{
    for (int x = 0; x < W; ++x)
        mx[x] = wr[x];
    for (int q = 1; q < K; ++q) {
        const float *restrict l = wr + q * stride;
        for (int x = 0; x < W; ++x)
            mx[x] = l[x] > mx[x] ? l[x] : mx[x];
    }
    for (int x = 0; x < W; ++x)
        sum[x] = 0.f;
    for (int q = 0; q < K; ++q) {
        float *restrict l = wr + q * stride;
        int x = 0;
        for (; x + 8 <= W; x += 8) {
            v8 e = vexp_neg(ld(l + x) - ld(mx + x));
            st(l + x, e);
            st(sum + x, ld(sum + x) + e);
        }
        for (; x < W; ++x) {
            l[x] = expf(l[x] - mx[x]);
            sum[x] += l[x];
        }
    }
    for (int x = 0; x < W; ++x)
        sum[x] = 1.f / sum[x];
    for (int q = 0; q < K; ++q) {
        float *restrict l = wr + q * stride;
        for (int x = 0; x < W; ++x)
            l[x] *= sum[x];
    }
}

int jdnet_window_softmax(const float *x1, const float *x2p, const float *a, const float *pos, float *w, int B, int R,
                         int S, int H, int W, int k, float slope, int threads)
{
    const int Hp = H + k - 1, Wp = W + k - 1, K = k * k;
    const size_t plane = (size_t)H * W, pplane = (size_t)Hp * Wp;
    int failed = 0;
#pragma omp parallel num_threads(threads)
    {
        float *buf = malloc(2 * (size_t)W * sizeof(float));
        if (!buf) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for collapse(2) schedule(static)
        for (int b = 0; b < B; ++b)
            for (int y = 0; y < H; ++y) {
                if (!buf)
                    continue;
                for (int s = 0; s < S; ++s) {
                    float *wr = w + ((size_t)(b * S + s) * K) * plane + (size_t)y * W;
                    for (int q = 0; q < K; ++q) {
                        const int i = q / k, j = q % k;
                        float *restrict l = wr + q * plane;
                        const float *restrict p = pos + ((size_t)s * K + q) * plane + (size_t)y * W;
                        for (int x = 0; x < W; ++x)
                            l[x] = p[x];
                        for (int c = 0; c < R; ++c) {
                            const float ac = a[s * R + c];
                            const float *restrict c1 = x1 + ((size_t)b * R + c) * plane + (size_t)y * W;
                            const float *restrict c2 = x2p + ((size_t)b * R + c) * pplane + (size_t)(y + i) * Wp + j;
                            for (int x = 0; x < W; ++x) {
                                const float d = c1[x] - c2[x];
                                l[x] += ac * (d > 0.f ? d : slope * d);
                            }
                        }
                    }
                    softmax_rows(wr, plane, K, W, buf, buf + W);
                }
            }
        free(buf);
    }
    return failed ? -1 : 0;
}

/* From w and its gradient gw: gl (B, S, K, H, W) the logits' gradient (the caller sums it over b for pos),
 * gx1 (B, R, H, W), gx2p (B, R, Hp, Wp) and ga (B, S, R) per image (the caller sums it), all written here.
 * One image per thread: its rows scatter into k rows of gx2p. */
int jdnet_window_softmax_backward(const float *x1, const float *x2p, const float *a, const float *w, const float *gw,
                                  float *gl, float *gx1, float *gx2p, float *ga, int B, int R, int S, int H, int W,
                                  int k, float slope, int threads)
{
    const int Hp = H + k - 1, Wp = W + k - 1, K = k * k;
    const size_t plane = (size_t)H * W, pplane = (size_t)Hp * Wp;
    int failed = 0;
#pragma omp parallel num_threads(threads)
    {
        /* rows: the dot product, the relation's gradient, its value, and S * R accumulators of ga (double) */
        float *buf = malloc(3 * (size_t)W * sizeof(float));
        double *acc = malloc((size_t)S * R * W * sizeof(double));
        if (!buf || !acc) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int b = 0; b < B; ++b) {
            if (!buf || !acc)
                continue;
            float *dot = buf, *g = buf + W, *lr = buf + 2 * W;
            memset(gx1 + (size_t)b * R * plane, 0, (size_t)R * plane * sizeof(float));
            memset(gx2p + (size_t)b * R * pplane, 0, (size_t)R * pplane * sizeof(float));
            memset(acc, 0, (size_t)S * R * W * sizeof(double));
            for (int y = 0; y < H; ++y) {
                for (int s = 0; s < S; ++s) {
                    const size_t row = ((size_t)(b * S + s) * K) * plane + (size_t)y * W;
                    for (int x = 0; x < W; ++x)
                        dot[x] = 0.f;
                    for (int q = 0; q < K; ++q) {
                        const float *restrict wq = w + row + q * plane, *restrict gq = gw + row + q * plane;
                        for (int x = 0; x < W; ++x)
                            dot[x] += wq[x] * gq[x];
                    }
                    for (int q = 0; q < K; ++q) {
                        const float *restrict wq = w + row + q * plane, *restrict gq = gw + row + q * plane;
                        float *restrict lq = gl + row + q * plane;
                        for (int x = 0; x < W; ++x)
                            lq[x] = wq[x] * (gq[x] - dot[x]);
                    }
                }
                for (int c = 0; c < R; ++c) {
                    const float *restrict c1 = x1 + ((size_t)b * R + c) * plane + (size_t)y * W;
                    float *restrict g1 = gx1 + ((size_t)b * R + c) * plane + (size_t)y * W;
                    for (int q = 0; q < K; ++q) {
                        const int i = q / k, j = q % k;
                        const size_t off = ((size_t)b * R + c) * pplane + (size_t)(y + i) * Wp + j;
                        const float *restrict c2 = x2p + off;
                        float *restrict g2 = gx2p + off;
                        for (int x = 0; x < W; ++x)
                            g[x] = 0.f;
                        for (int s = 0; s < S; ++s) {
                            const float as = a[s * R + c];
                            const float *restrict lq = gl + ((size_t)(b * S + s) * K + q) * plane + (size_t)y * W;
                            for (int x = 0; x < W; ++x)
                                g[x] += as * lq[x];
                        }
                        for (int x = 0; x < W; ++x) {
                            const float d = c1[x] - c2[x];
                            const float gd = d > 0.f ? g[x] : slope * g[x];
                            lr[x] = d > 0.f ? d : slope * d;
                            g1[x] += gd;
                            g2[x] -= gd;
                        }
                        for (int s = 0; s < S; ++s) {
                            const float *restrict lq = gl + ((size_t)(b * S + s) * K + q) * plane + (size_t)y * W;
                            double *restrict as = acc + ((size_t)s * R + c) * W;
                            for (int x = 0; x < W; ++x)
                                as[x] += (double)(lq[x] * lr[x]);
                        }
                    }
                }
            }
            for (int sc = 0; sc < S * R; ++sc) {
                double t = 0.0;
                for (int x = 0; x < W; ++x)
                    t += acc[(size_t)sc * W + x];
                ga[(size_t)b * S * R + sc] = (float)t;
            }
        }
        free(buf);
        free(acc);
    }
    return failed ? -1 : 0;
}
