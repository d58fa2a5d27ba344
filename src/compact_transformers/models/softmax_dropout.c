/* Softmax over the last axis fused with dropout, for attention on a CPU (see native.py, which compiles and
 * loads this file).
 *
 * forward:  prob = softmax(scale * scores);  out = prob * keep / (1 - p)
 * backward: grad_scores = scale * prob * (g - sum(g * prob)),  g = grad * keep / (1 - p)
 *
 * keep is never stored: entry i of a call keeps iff hash(seed, i) >= p * 2^32, a counter-based draw that
 * the backward recomputes, so a call reads its scores once and writes two tensors, and its result does not
 * depend on the number of threads. Values are bf16 (stored as uint16) or fp32; arithmetic is fp32.
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_THREADS 64

static inline float bf16_to_float(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline uint16_t float_to_bf16(float f) { /* round to nearest even; NaN stays NaN */
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
    uint32_t quiet_nan = (bits >> 16) | 0x40u;
    return (uint16_t)(((bits & 0x7fffffffu) > 0x7f800000u) ? quiet_nan : rounded);
}

static inline uint32_t mix32(uint32_t x) { /* a 32-bit integer hash with low bias (lowbias32) */
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    x ^= x >> 16;
    return x;
}

static inline uint32_t draw(uint64_t counter, uint32_t key0, uint32_t key1) {
    return mix32(mix32((uint32_t)counter ^ key0) ^ (uint32_t)(counter >> 32) ^ key1);
}

static inline float exp_nonpositive(float x) { /* e^x for x <= 0 (x - max of the row); 0 below -87 */
    float t = x * 1.44269504f;
    float n = floorf(t + 0.5f);
    float f = t - n; /* 2^t = 2^n * 2^f, |f| <= 1/2 */
    float poly = 1.54035304e-4f;
    poly = poly * f + 1.33335581e-3f;
    poly = poly * f + 9.61812911e-3f;
    poly = poly * f + 5.55041087e-2f;
    poly = poly * f + 2.40226507e-1f;
    poly = poly * f + 6.93147181e-1f;
    poly = poly * f + 1.0f;
    n = n >= -126.0f ? n : -126.0f; /* also when n is NaN: converting NaN to an integer is undefined */
    union { uint32_t bits; float value; } scale;
    scale.bits = (uint32_t)((int32_t)n + 127) << 23;
    return x < -87.0f ? 0.0f : poly * scale.value;
}

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512BF16__)
/* The bf16 rows with AVX-512 (every CPU with AMX, AMD Zen 4 and later): 16 entries per instruction, the CPU's
 * own fp32 -> bf16 rounding (which flushes denormals to zero, where float_to_bf16 keeps them), and the same
 * draws as draw() above. */
#include <immintrin.h>
#define HAVE_AVX512_BF16 1

static inline __mmask16 lanes(int64_t j, int64_t n) {
    return n - j >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - j)) - 1u);
}

static inline __m512 load_bf16x16(const uint16_t *values, __mmask16 valid) {
    __m512i wide = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(valid, values));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}

static inline __m256i to_bf16x16(__m512 values) { return (__m256i)_mm512_cvtneps_pbh(values); }

static inline __m512 exp_nonpositive16(__m512 x) {
    __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.44269504f));
    __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(t, n);
    __m512 poly = _mm512_set1_ps(1.54035304e-4f);
    poly = _mm512_fmadd_ps(poly, f, _mm512_set1_ps(1.33335581e-3f));
    poly = _mm512_fmadd_ps(poly, f, _mm512_set1_ps(9.61812911e-3f));
    poly = _mm512_fmadd_ps(poly, f, _mm512_set1_ps(5.55041087e-2f));
    poly = _mm512_fmadd_ps(poly, f, _mm512_set1_ps(2.40226507e-1f));
    poly = _mm512_fmadd_ps(poly, f, _mm512_set1_ps(6.93147181e-1f));
    poly = _mm512_fmadd_ps(poly, f, _mm512_set1_ps(1.0f));
    __m512i exponent = _mm512_cvtps_epi32(_mm512_max_ps(n, _mm512_set1_ps(-126.0f)));
    exponent = _mm512_slli_epi32(_mm512_add_epi32(exponent, _mm512_set1_epi32(127)), 23);
    __mmask16 tiny = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.0f), _CMP_LT_OQ);
    return _mm512_maskz_mul_ps((__mmask16)~tiny, poly, _mm512_castsi512_ps(exponent));
}

static inline __m512i mix32x16(__m512i x) {
    x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 16));
    x = _mm512_mullo_epi32(x, _mm512_set1_epi32(0x7feb352d));
    x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 15));
    x = _mm512_mullo_epi32(x, _mm512_set1_epi32((int)0x846ca68bu));
    x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 16));
    return x;
}

static inline __mmask16 keep16(uint64_t first, uint32_t key0, uint32_t key1, uint32_t threshold) {
    const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    __m512i start = _mm512_set1_epi32((int)(uint32_t)first);
    __m512i low = _mm512_add_epi32(start, iota);
    __m512i high = _mm512_set1_epi32((int)(uint32_t)(first >> 32));
    high = _mm512_mask_add_epi32(high, _mm512_cmplt_epu32_mask(low, start), high, _mm512_set1_epi32(1));
    __m512i hashed = mix32x16(_mm512_xor_si512(low, _mm512_set1_epi32((int)key0)));
    hashed = mix32x16(_mm512_xor_si512(_mm512_xor_si512(hashed, high), _mm512_set1_epi32((int)key1)));
    return _mm512_cmpge_epu32_mask(hashed, _mm512_set1_epi32((int)threshold));
}

#endif

typedef struct {
    const void *a; /* forward: scores; backward: grad */
    const void *b; /* backward: prob */
    void *c;       /* forward: prob; backward: grad_scores */
    void *d;       /* forward: out */
    int64_t row_begin, row_end, cols;
    uint64_t seed;
    uint32_t threshold;
    float score_scale, out_scale; /* the scale of the scores, and 1 / (1 - p) */
    int bf16;
} Job;

#ifdef HAVE_AVX512_BF16
static inline __mmask16 keep_of(const Job *job, int64_t index) {
    return keep16((uint64_t)index, (uint32_t)job->seed, (uint32_t)(job->seed >> 32), job->threshold);
}

static void forward_row_bf16(const Job *job, int64_t base, float *row) {
    const int64_t n = job->cols;
    const uint16_t *scores = (const uint16_t *)job->a + base;
    uint16_t *prob = (uint16_t *)job->c + base, *out = (uint16_t *)job->d + base;
    const __m512 score_scale = _mm512_set1_ps(job->score_scale);
    __m512 top = _mm512_set1_ps(-INFINITY);
    for (int64_t j = 0; j < n; j += 16) {
        __mmask16 valid = lanes(j, n);
        __m512 value = _mm512_mul_ps(load_bf16x16(scores + j, valid), score_scale);
        _mm512_storeu_ps(row + j, value);
        top = _mm512_mask_max_ps(top, valid, top, value);
    }
    const __m512 row_max = _mm512_set1_ps(_mm512_reduce_max_ps(top));
    __m512 total = _mm512_setzero_ps();
    for (int64_t j = 0; j < n; j += 16) {
        __m512 shifted = _mm512_sub_ps(_mm512_loadu_ps(row + j), row_max);
        __m512 e = _mm512_maskz_mov_ps(lanes(j, n), exp_nonpositive16(shifted));
        _mm512_storeu_ps(row + j, e);
        total = _mm512_add_ps(total, e);
    }
    const __m512 inverse = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(total));
    const __m512 out_scale = _mm512_set1_ps(job->out_scale);
    for (int64_t j = 0; j < n; j += 16) {
        __mmask16 valid = lanes(j, n);
        __m512 value = _mm512_mul_ps(_mm512_loadu_ps(row + j), inverse);
        _mm256_mask_storeu_epi16(prob + j, valid, to_bf16x16(value));
        __m256i dropped = _mm256_maskz_mov_epi16(keep_of(job, base + j), to_bf16x16(_mm512_mul_ps(value, out_scale)));
        _mm256_mask_storeu_epi16(out + j, valid, dropped);
    }
}

static void backward_row_bf16(const Job *job, int64_t base, float *row) {
    const int64_t n = job->cols;
    const uint16_t *grad = (const uint16_t *)job->a + base, *prob = (const uint16_t *)job->b + base;
    uint16_t *grad_scores = (uint16_t *)job->c + base;
    float *probs = row + ((n + 15) & ~(int64_t)15);
    const __m512 out_scale = _mm512_set1_ps(job->out_scale);
    __m512 dot = _mm512_setzero_ps();
    for (int64_t j = 0; j < n; j += 16) {
        __mmask16 valid = lanes(j, n);
        __m512 g = _mm512_mul_ps(load_bf16x16(grad + j, keep_of(job, base + j) & valid), out_scale);
        __m512 p = load_bf16x16(prob + j, valid);
        _mm512_storeu_ps(row + j, g);
        _mm512_storeu_ps(probs + j, p);
        dot = _mm512_fmadd_ps(g, p, dot);
    }
    const __m512 total = _mm512_set1_ps(_mm512_reduce_add_ps(dot));
    const __m512 score_scale = _mm512_set1_ps(job->score_scale);
    for (int64_t j = 0; j < n; j += 16) {
        __m512 p = _mm512_mul_ps(_mm512_loadu_ps(probs + j), score_scale);
        __m512 result = _mm512_mul_ps(p, _mm512_sub_ps(_mm512_loadu_ps(row + j), total));
        _mm256_mask_storeu_epi16(grad_scores + j, lanes(j, n), to_bf16x16(result));
    }
}
#endif

static void load_row(const void *values, int bf16, int64_t base, int64_t n, float *row) {
    if (bf16) {
        const uint16_t *source = (const uint16_t *)values + base;
        for (int64_t j = 0; j < n; j++) row[j] = bf16_to_float(source[j]);
    } else {
        memcpy(row, (const float *)values + base, sizeof(float) * (size_t)n);
    }
}

static void forward_rows(const Job *job, float *row) {
    const int64_t n = job->cols;
    const uint32_t key0 = (uint32_t)job->seed, key1 = (uint32_t)(job->seed >> 32), threshold = job->threshold;
    const float score_scale = job->score_scale, out_scale = job->out_scale;
    for (int64_t r = job->row_begin; r < job->row_end; r++) {
        const int64_t base = r * n;
#ifdef HAVE_AVX512_BF16
        if (job->bf16) {
            forward_row_bf16(job, base, row);
            continue;
        }
#endif
        load_row(job->a, job->bf16, base, n, row);
        float top = -INFINITY;
        for (int64_t j = 0; j < n; j++) {
            row[j] *= score_scale;
            top = row[j] > top ? row[j] : top;
        }
        float total = 0.0f;
        for (int64_t j = 0; j < n; j++) {
            row[j] = exp_nonpositive(row[j] - top);
            total += row[j];
        }
        const float inverse = 1.0f / total;
        if (job->bf16) {
            uint16_t *prob = (uint16_t *)job->c + base, *out = (uint16_t *)job->d + base;
            for (int64_t j = 0; j < n; j++) {
                float value = row[j] * inverse;
                prob[j] = float_to_bf16(value);
                out[j] = draw((uint64_t)(base + j), key0, key1) >= threshold ? float_to_bf16(value * out_scale) : 0;
            }
        } else {
            float *prob = (float *)job->c + base, *out = (float *)job->d + base;
            for (int64_t j = 0; j < n; j++) {
                float value = row[j] * inverse;
                prob[j] = value;
                out[j] = draw((uint64_t)(base + j), key0, key1) >= threshold ? value * out_scale : 0.0f;
            }
        }
    }
}

static void backward_rows(const Job *job, float *row) {
    const int64_t n = job->cols;
    const uint32_t key0 = (uint32_t)job->seed, key1 = (uint32_t)(job->seed >> 32), threshold = job->threshold;
    const float score_scale = job->score_scale, out_scale = job->out_scale;
    float *prob = row + ((n + 15) & ~(int64_t)15);
    for (int64_t r = job->row_begin; r < job->row_end; r++) {
        const int64_t base = r * n;
#ifdef HAVE_AVX512_BF16
        if (job->bf16) {
            backward_row_bf16(job, base, row);
            continue;
        }
#endif
        load_row(job->a, job->bf16, base, n, row);
        load_row(job->b, job->bf16, base, n, prob);
        float dot = 0.0f;
        for (int64_t j = 0; j < n; j++) {
            row[j] = draw((uint64_t)(base + j), key0, key1) >= threshold ? row[j] * out_scale : 0.0f;
            dot += row[j] * prob[j];
        }
        if (job->bf16) {
            uint16_t *grad_scores = (uint16_t *)job->c + base;
            for (int64_t j = 0; j < n; j++) grad_scores[j] = float_to_bf16(score_scale * prob[j] * (row[j] - dot));
        } else {
            float *grad_scores = (float *)job->c + base;
            for (int64_t j = 0; j < n; j++) grad_scores[j] = score_scale * prob[j] * (row[j] - dot);
        }
    }
}

typedef struct {
    const Job *job;
    int backward;
    int status;
} Task;

static void *run_task(void *arg) {
    Task *task = (Task *)arg;
    /* two rows of fp32, each rounded up to whole 16-float vectors */
    size_t padded = (size_t)((task->job->cols + 15) & ~(int64_t)15);
    float *row = (float *)malloc(sizeof(float) * 2 * (padded > 0 ? padded : 16));
    if (row == NULL) {
        task->status = 1;
        return NULL;
    }
    if (task->backward) backward_rows(task->job, row);
    else forward_rows(task->job, row);
    free(row);
    task->status = 0;
    return NULL;
}

/* Splits the rows over `threads` threads (the caller's included); returns 0 on success. */
static int run(const Job *whole, int backward, int threads) {
    if (threads < 1) threads = 1;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (whole->row_end < threads) threads = whole->row_end > 0 ? (int)whole->row_end : 1;
    Job jobs[MAX_THREADS];
    Task tasks[MAX_THREADS];
    pthread_t handles[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    for (int t = 0; t < threads; t++) {
        jobs[t] = *whole;
        jobs[t].row_begin = whole->row_end * t / threads;
        jobs[t].row_end = whole->row_end * (t + 1) / threads;
        tasks[t] = (Task){&jobs[t], backward, 1};
    }
    for (int t = 1; t < threads; t++) started[t] = pthread_create(&handles[t], NULL, run_task, &tasks[t]) == 0;
    run_task(&tasks[0]);
    int status = tasks[0].status;
    for (int t = 1; t < threads; t++) {
        if (started[t]) pthread_join(handles[t], NULL);
        else run_task(&tasks[t]); /* no thread to be had: do its share here */
        status |= tasks[t].status;
    }
    return status;
}

int cct_softmax_dropout_forward(const void *scores, void *prob, void *out, int64_t rows, int64_t cols,
                                uint64_t seed, uint32_t threshold, float score_scale, float out_scale, int bf16,
                                int threads) {
    Job job = {scores, NULL, prob, out, 0, rows, cols, seed, threshold, score_scale, out_scale, bf16};
    return run(&job, 0, threads);
}

int cct_softmax_dropout_backward(const void *grad, const void *prob, void *grad_scores, int64_t rows,
                                 int64_t cols, uint64_t seed, uint32_t threshold, float score_scale, float out_scale,
                                 int bf16, int threads) {
    Job job = {grad, prob, grad_scores, NULL, 0, rows, cols, seed, threshold, score_scale, out_scale, bf16};
    return run(&job, 1, threads);
}

/* The keep mask of a call (1 keep, 0 drop), for tests and for checking the draw. */
void cct_softmax_dropout_keep(uint8_t *keep, int64_t count, uint64_t seed, uint32_t threshold) {
    const uint32_t key0 = (uint32_t)seed, key1 = (uint32_t)(seed >> 32);
    for (int64_t i = 0; i < count; i++) keep[i] = draw((uint64_t)i, key0, key1) >= threshold;
}

/* 1 where bf16 rows run the AVX-512 BF16 code, 0 where they run the portable code (for tests). */
int cct_softmax_dropout_vector_rows(void) {
#ifdef HAVE_AVX512_BF16
    return 1;
#else
    return 0;
#endif
}
