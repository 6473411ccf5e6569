/* Paged attention for short queries (decode, speculative verification) read straight from the paged KV cache.
 *
 * Why: gathering every sequence's blocks into a dense tensor before SDPA copies all of K and V once per layer
 * and step (a quarter of a decode step on CPU). This kernel walks each sequence's block table instead, so K and
 * V are read once from memory. float32 throughout, same softmax as SDPA (max-subtracted), causal within the
 * query: query t of a sequence with context length c and query length ql sees keys 0 .. c - ql + t.
 *
 * Work item w in [w0, w1) is sequence w, all heads at once: a block's K (or V) rows for every KV head are one
 * contiguous run of block_size * kvh * d values, so each block is streamed from memory exactly once. The
 * grp = heads / kvh query heads g*grp .. g*grp+grp-1 share KV head g (the Llama / transformers GQA mapping).
 * Sequences are spread over OpenMP threads (dynamic schedule); the function keeps no global state.
 */
#include <float.h>
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Ask for the same token row of the next block while this block is being read: blocks are scattered, so the
 * hardware prefetcher would otherwise restart cold at every block boundary. */
static inline void prefetch_row(const void *p, int64_t bytes)
{
    for (int64_t i = 0; i < bytes; i += 64) __builtin_prefetch((const char *)p + i, 0, 3);
}

/* One token's K or V row (all KV heads) as float32: the row itself for a float32 cache, else widened into tmp
 * (16 lanes per instruction with AVX-512; half is a constant at every inlined call site). */
static inline __attribute__((always_inline)) const float *row_f32(const void *row, const int half, float *tmp,
                                                                  int64_t n)
{
    if (!half) return (const float *)row;
    const uint16_t *h = (const uint16_t *)row;
    int64_t i = 0;
#ifdef __AVX512F__
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(tmp + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(h + i))));
#endif
    for (; i < n; i += 1) tmp[i] = (float)((const _Float16 *)row)[i];
    return tmp;
}

#define KV_PTR(base, half, off) ((half) ? (const void *)((const _Float16 *)(base) + (off)) \
                                        : (const void *)((const float *)(base) + (off)))

/* One sequence. Always inlined so the d == 64 call site gets constant trip counts. */
static inline __attribute__((always_inline)) void attend_seq(
    const float *q, int64_t q_row_stride, const void *k_cache, const void *v_cache, const int half, const int64_t *bt,
    int64_t q_start, int64_t ql, int64_t c, float *out, int64_t out_row_stride, int64_t heads, int64_t grp,
    const int64_t d, int64_t kvh, int64_t block_size, float scale, float *scores, int64_t max_ctx, float *acc,
    float *qv, float *wide)
{
    const int64_t nr = heads * ql, tok_stride = kvh * d, blk_stride = block_size * tok_stride;
    const int64_t nblocks = (c + block_size - 1) / block_size;
    /* row r = t*heads + h: query token t, head h (KV head h / grp); a pre-scaled copy so the dots are plain FMAs */
    for (int64_t t = 0; t < ql; t += 1)
        for (int64_t h = 0; h < heads; h += 1) {
            const float *src = q + (q_start + t) * q_row_stride + h * d;
            float *dst = qv + (t * heads + h) * d;
            for (int64_t i = 0; i < d; i += 1) dst[i] = src[i] * scale;
        }
    const int64_t esz = half ? 2 : 4;
    for (int64_t b = 0; b < nblocks; b += 1) {
        const void *kb = KV_PTR(k_cache, half, bt[b] * blk_stride);
        const void *kn = KV_PTR(k_cache, half, bt[b + 1 < nblocks ? b + 1 : b] * blk_stride);
        const int64_t n = (b + 1) * block_size <= c ? block_size : c - b * block_size;
        for (int64_t o = 0; o < n; o += 1) {
            const float *kt = row_f32(KV_PTR(kb, half, o * tok_stride), half, wide, tok_stride);
            prefetch_row(KV_PTR(kn, half, o * tok_stride), tok_stride * esz);
            for (int64_t r = 0; r < nr; r += 1) {
                const float *qr = qv + r * d, *kp = kt + ((r % heads) / grp) * d;
                float dot = 0.0f;
#pragma omp simd reduction(+:dot)
                for (int64_t i = 0; i < d; i += 1) dot += qr[i] * kp[i];
                scores[r * max_ctx + b * block_size + o] = dot;
            }
        }
    }
    for (int64_t r = 0; r < nr; r += 1) {
        const int64_t limit = c - ql + r / heads + 1;  /* keys this row may see (causal within the query) */
        float *sc = scores + r * max_ctx;
        float m = -FLT_MAX;
        for (int64_t key = 0; key < limit; key += 1) m = sc[key] > m ? sc[key] : m;
        float sum = 0.0f;
#pragma omp simd reduction(+:sum)
        for (int64_t key = 0; key < limit; key += 1) { sc[key] = expf(sc[key] - m); sum += sc[key]; }
        const float inv = 1.0f / sum;
        for (int64_t key = 0; key < limit; key += 1) sc[key] *= inv;
        for (int64_t key = limit; key < c; key += 1) sc[key] = 0.0f;
    }
    memset(acc, 0, sizeof(float) * (size_t)(nr * d));
    for (int64_t b = 0; b < nblocks; b += 1) {
        const void *vb = KV_PTR(v_cache, half, bt[b] * blk_stride);
        const void *vn = KV_PTR(v_cache, half, bt[b + 1 < nblocks ? b + 1 : b] * blk_stride);
        const int64_t n = (b + 1) * block_size <= c ? block_size : c - b * block_size;
        for (int64_t o = 0; o < n; o += 1) {
            const float *vt = row_f32(KV_PTR(vb, half, o * tok_stride), half, wide, tok_stride);
            prefetch_row(KV_PTR(vn, half, o * tok_stride), tok_stride * esz);
            for (int64_t r = 0; r < nr; r += 1) {
                const float p = scores[r * max_ctx + b * block_size + o], *vp = vt + ((r % heads) / grp) * d;
                float *a = acc + r * d;
#pragma omp simd
                for (int64_t i = 0; i < d; i += 1) a[i] += p * vp[i];
            }
        }
    }
    for (int64_t r = 0; r < nr; r += 1)
        memcpy(out + (q_start + r / heads) * out_row_stride + (r % heads) * d, acc + r * d, sizeof(float) * (size_t)d);
}

static inline __attribute__((always_inline)) int paged_attention(const int half,
    const float *q, int64_t q_row_stride,      /* query token rows; head h at q + row*q_row_stride + h*d */
    const void *k_cache, const void *v_cache, /* one layer: [num_blocks, block_size, kvh, d] */
    const int64_t *block_tables, int64_t bt_stride, /* [S, bt_stride] block ids */
    const int64_t *q_starts, const int64_t *q_lens, const int64_t *ctx_lens, /* [S] */
    float *out, int64_t out_row_stride,        /* head h of row r at out + r*out_row_stride + h*d */
    int64_t heads, int64_t kvh, int64_t d, int64_t block_size, float scale,
    int64_t num_seqs, int64_t num_threads)
{
    if (num_seqs <= 0) return 0;
    const int64_t grp = heads / kvh;
    int64_t max_ctx = 0, max_ql = 0;
    for (int64_t s = 0; s < num_seqs; s += 1) {
        if (ctx_lens[s] > max_ctx) max_ctx = ctx_lens[s];
        if (q_lens[s] > max_ql) max_ql = q_lens[s];
    }
    const int64_t rows = heads * max_ql, padded = (max_ctx + 15) & ~(int64_t)15;
    int failed = 0;
    /* libgomp is the OpenMP runtime torch already loaded, so these are torch's own worker threads */
#pragma omp parallel num_threads(num_threads > 0 ? num_threads : 1) reduction(|:failed)
    {
        float *scores = (float *)malloc(sizeof(float) * (size_t)(rows * padded));
        float *acc = (float *)malloc(sizeof(float) * (size_t)(rows * d));
        float *qv = (float *)malloc(sizeof(float) * (size_t)(rows * d));
        float *wide = (float *)malloc(sizeof(float) * (size_t)(kvh * d));
        if (!scores || !acc || !qv || !wide) {
            failed = 1;
        } else {
#pragma omp for schedule(dynamic, 1)
            for (int64_t s = 0; s < num_seqs; s += 1) {
                const int64_t *bt = block_tables + s * bt_stride;
                /* literal half and d at each call so the inlined copy is specialised (d == 64: SmolLM2, Llama) */
#define ATTEND(HALF, D) attend_seq(q, q_row_stride, k_cache, v_cache, HALF, bt, q_starts[s], q_lens[s], ctx_lens[s], \
                                   out, out_row_stride, heads, grp, D, kvh, block_size, scale, scores, padded, acc, \
                                   qv, wide)
                if (d == 64)
                    half ? ATTEND(1, 64) : ATTEND(0, 64);
                else
                    half ? ATTEND(1, d) : ATTEND(0, d);
#undef ATTEND
            }
        }
        free(scores); free(acc); free(qv); free(wide);
    }
    return failed ? -1 : 0;
}

/* float32 K/V cache */
int loopstack_paged_attention_f32(
    const float *q, int64_t q_row_stride, const void *k_cache, const void *v_cache, const int64_t *block_tables,
    int64_t bt_stride, const int64_t *q_starts, const int64_t *q_lens, const int64_t *ctx_lens, float *out,
    int64_t out_row_stride, int64_t heads, int64_t kvh, int64_t d, int64_t block_size, float scale, int64_t num_seqs,
    int64_t num_threads)
{
    return paged_attention(0, q, q_row_stride, k_cache, v_cache, block_tables, bt_stride, q_starts, q_lens, ctx_lens, out,
                           out_row_stride, heads, kvh, d, block_size, scale, num_seqs, num_threads);
}

/* float16 K/V cache (widened to float32 as it is read; all arithmetic in float32) */
int loopstack_paged_attention_f16(
    const float *q, int64_t q_row_stride, const void *k_cache, const void *v_cache, const int64_t *block_tables,
    int64_t bt_stride, const int64_t *q_starts, const int64_t *q_lens, const int64_t *ctx_lens, float *out,
    int64_t out_row_stride, int64_t heads, int64_t kvh, int64_t d, int64_t block_size, float scale, int64_t num_seqs,
    int64_t num_threads)
{
    return paged_attention(1, q, q_row_stride, k_cache, v_cache, block_tables, bt_stride, q_starts, q_lens, ctx_lens, out,
                           out_row_stride, heads, kvh, d, block_size, scale, num_seqs, num_threads);
}
