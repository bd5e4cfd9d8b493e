/* SAM's attention for one image and a range of rows, fused: relation, folded conv_w, softmax over the
 * k*k window, aggregation. Plain C with loops over a row's pixels that compilers vectorise.
 *
 * q1:  (C, H, W)            centre embeddings (relation channels, then the position map)
 * q2p: (C, H + 2p, W + 2p)  neighbour embeddings, reflect-padded by p = k / 2
 * vp:  (M, H + 2p, W + 2p)  values, reflect-padded
 * wt:  (S, C)               conv_w's two 1x1 convolutions multiplied (its bias cancels in the softmax)
 * out: (M, H, W)            out[m, y, x] = sum_q softmax_q(logit[m % S, q]) * vp[m, y + qi, x + qj]
 * Returns 0, or -1 if scratch memory could not be allocated.
 */
#include <math.h>
#include <stdlib.h>

int jdnet_sam_rows(const float *q1, const float *q2p, const float *vp, const float *wt, float *out,
                   int C, int M, int S, int H, int W, int k, float slope, int y0, int y1)
{
    const int p = k / 2, K = k * k, Wp = W + 2 * p, Hp = H + 2 * p;
    float *logit = (float *)malloc(sizeof(float) * (size_t)(K + 2) * W);
    if (!logit) return -1;
    float *mx = logit + (size_t)K * W, *inv = mx + W;
    for (int y = y0; y < y1; ++y) {
        for (int j = 0; j < S; ++j) {
            for (int q = 0; q < K; ++q) {
                const int qi = q / k, qj = q % k;
                float *L = logit + (size_t)q * W;
                for (int x = 0; x < W; ++x) L[x] = 0.f;
                for (int c = 0; c < C; ++c) {
                    const float wc = wt[j * C + c];
                    const float *a = q1 + ((size_t)c * H + y) * W;
                    const float *b = q2p + ((size_t)c * Hp + y + qi) * Wp + qj;
                    for (int x = 0; x < W; ++x) {
                        float d = a[x] - b[x];
                        d = d > 0.f ? d : slope * d;
                        L[x] += wc * d;
                    }
                }
            }
            for (int x = 0; x < W; ++x) mx[x] = logit[x];
            for (int q = 1; q < K; ++q) {
                const float *L = logit + (size_t)q * W;
                for (int x = 0; x < W; ++x) mx[x] = L[x] > mx[x] ? L[x] : mx[x];
            }
            for (int x = 0; x < W; ++x) inv[x] = 0.f;
            for (int q = 0; q < K; ++q) {
                float *L = logit + (size_t)q * W;
                for (int x = 0; x < W; ++x) {
                    L[x] = expf(L[x] - mx[x]);
                    inv[x] += L[x];
                }
            }
            for (int x = 0; x < W; ++x) inv[x] = 1.f / inv[x];
            for (int m = j; m < M; m += S) {
                float *o = out + ((size_t)m * H + y) * W;
                for (int x = 0; x < W; ++x) o[x] = 0.f;
                for (int q = 0; q < K; ++q) {
                    const float *L = logit + (size_t)q * W;
                    const float *v = vp + ((size_t)m * Hp + y + q / k) * Wp + q % k;
                    for (int x = 0; x < W; ++x) o[x] += L[x] * v[x];
                }
                for (int x = 0; x < W; ++x) o[x] *= inv[x];
            }
        }
    }
    free(logit);
    return 0;
}
