/* Softmax over the last axis fused with dropout, for attention on a CPU (see native.py, which compiles and
 * loads this file).
 *
 * forward:  prob = softmax(scale * scores);  out = prob * keep / (1 - p)
 * backward: grad_scores = scale * prob * (g - sum(g * prob)),  g = grad * keep / (1 - p)
 *
 * keep is never stored: entry i of a call keeps iff hash(seed, i) >= p * 2^32, a counter-based draw that
 * the backward recomputes, so a call reads its scores once and writes two tensors, and its result does not
 * depend on the number of threads. Values are bf16 (stored as uint16) or fp32; arithmetic is fp32.
 *
 * On CPUs with AMX, a second entry point runs attention's whole core (q k^T, this softmax and dropout, times v)
 * with the matmuls on AMX tiles, one (image, head) at a time in cache: see cct_attention_forward below.
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

/* Runs task on each of `count` jobs (job_size bytes apart): the first on the caller's thread where first_here,
 * the others on threads of their own (a share whose thread cannot be had runs here, as a last resort). */
static void run_on_threads(void *(*task)(void *), void *jobs, size_t job_size, int count, int first_here) {
    pthread_t handles[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    char *job = (char *)jobs;
    for (int t = first_here; t < count; t++)
        started[t] = pthread_create(&handles[t], NULL, task, job + (size_t)t * job_size) == 0;
    if (first_here) task(job);
    for (int t = first_here; t < count; t++) {
        if (started[t]) pthread_join(handles[t], NULL);
        else task(job + (size_t)t * job_size);
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
    for (int t = 0; t < threads; t++) {
        jobs[t] = *whole;
        jobs[t].row_begin = whole->row_end * t / threads;
        jobs[t].row_end = whole->row_end * (t + 1) / threads;
        tasks[t] = (Task){&jobs[t], backward, 1};
    }
    run_on_threads(run_task, tasks, sizeof tasks[0], threads, 1);
    int status = 0;
    for (int t = 0; t < threads; t++) status |= tasks[t].status;
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

/* LayerNorm over the last axis of fp32 rows, fused with the residual add before it and the bf16 cast after it,
 * for a bf16 (autocast) step on a CPU: s = x + scale[sample] * branch (branch bf16, optional; scale optional, one
 * per sample of `tokens` rows: stochastic depth), y = (s - mean) / sqrt(var + eps) * weight + bias, written as
 * fp32 and/or bf16. One pass over each row where torch makes three (a type-promoting add, the norm, a cast).
 * The backward takes the gradient of either output or of both (fp32, bf16) and writes the input's gradient
 * (fp32, and the branch's in bf16) and each thread's partial sums for weight and bias. */
typedef struct {
    const float *x, *branch_scale, *weight, *bias, *saved, *mean, *rstd, *grad;
    const uint16_t *branch, *grad_bf16;
    float *sum, *out, *mean_out, *rstd_out, *grad_input, *grad_weight, *grad_bias;
    uint16_t *out_bf16, *grad_branch;
    int64_t row_begin, row_end, dim, tokens;
    float eps;
    int status;
} NormJob;

static void norm_forward_rows(NormJob *job) {
    const int64_t dim = job->dim;
    for (int64_t i = job->row_begin; i < job->row_end; i++) {
        const float *x = job->x + i * dim, *s = x;
        if (job->branch != NULL) { /* the sum: kept, or in out until y replaces it */
            float *sum = job->sum != NULL ? job->sum + i * dim : job->out + i * dim;
            const uint16_t *branch = job->branch + i * dim;
            const float scale = job->branch_scale != NULL ? job->branch_scale[i / job->tokens] : 1.0f;
            for (int64_t j = 0; j < dim; j++) sum[j] = x[j] + scale * bf16_to_float(branch[j]);
            s = sum;
        }
        float total = 0.0f;
        for (int64_t j = 0; j < dim; j++) total += s[j];
        const float mean = total / (float)dim;
        float squares = 0.0f;
        for (int64_t j = 0; j < dim; j++) squares += (s[j] - mean) * (s[j] - mean);
        const float rstd = 1.0f / sqrtf(squares / (float)dim + job->eps);
        job->mean_out[i] = mean;
        job->rstd_out[i] = rstd;
        float *out = job->out != NULL ? job->out + i * dim : NULL;
        uint16_t *out_bf16 = job->out_bf16 != NULL ? job->out_bf16 + i * dim : NULL;
        for (int64_t j = 0; j < dim; j++) {
            const float y = (s[j] - mean) * rstd * job->weight[j] + job->bias[j];
            if (out_bf16 != NULL) out_bf16[j] = float_to_bf16(y);
            if (out != NULL) out[j] = y;
        }
    }
}

static void norm_backward_rows(NormJob *job) {
    const int64_t dim = job->dim;
    for (int64_t i = job->row_begin; i < job->row_end; i++) {
        const float *s = job->saved + i * dim, mean = job->mean[i], rstd = job->rstd[i];
        const float *grad = job->grad != NULL ? job->grad + i * dim : NULL;
        const uint16_t *grad_bf16 = job->grad_bf16 != NULL ? job->grad_bf16 + i * dim : NULL;
        float *grad_input = job->grad_input + i * dim; /* first the incoming gradient, then the input's */
        /* the sum of the two gradients first, each case its own loop: a load under a condition does not vectorise */
        if (grad != NULL && grad_bf16 != NULL) {
            for (int64_t j = 0; j < dim; j++) grad_input[j] = grad[j] + bf16_to_float(grad_bf16[j]);
        } else if (grad != NULL) {
            memcpy(grad_input, grad, sizeof(float) * (size_t)dim);
        } else {
            for (int64_t j = 0; j < dim; j++) grad_input[j] = bf16_to_float(grad_bf16[j]);
        }
        float a = 0.0f, c = 0.0f;
        for (int64_t j = 0; j < dim; j++) {
            const float g = grad_input[j];
            const float normed = (s[j] - mean) * rstd;
            job->grad_weight[j] += g * normed;
            job->grad_bias[j] += g;
            const float weighted = g * job->weight[j];
            grad_input[j] = weighted;
            a += weighted;
            c += weighted * normed;
        }
        a /= (float)dim;
        c /= (float)dim;
        for (int64_t j = 0; j < dim; j++) grad_input[j] = rstd * (grad_input[j] - a - (s[j] - mean) * rstd * c);
        if (job->grad_branch != NULL) {
            const float scale = job->branch_scale != NULL ? job->branch_scale[i / job->tokens] : 1.0f;
            uint16_t *grad_branch = job->grad_branch + i * dim;
            for (int64_t j = 0; j < dim; j++) grad_branch[j] = float_to_bf16(scale * grad_input[j]);
        }
    }
}

static void *norm_task(void *arg) {
    NormJob *job = (NormJob *)arg;
    if (job->grad_input != NULL && job->saved != NULL) norm_backward_rows(job);
    else norm_forward_rows(job);
    job->status = 0;
    return NULL;
}

/* Rows split over `threads` threads (the caller's included). The backward's partial sums: grad_weight and
 * grad_bias are (threads x dim), zeroed by the caller, one row per thread (threads as passed, at most
 * MAX_THREADS). */
static int run_norm(const NormJob *whole, int threads) {
    if (threads < 1) threads = 1;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    NormJob jobs[MAX_THREADS];
    for (int t = 0; t < threads; t++) {
        jobs[t] = *whole;
        jobs[t].row_begin = whole->row_end * t / threads;
        jobs[t].row_end = whole->row_end * (t + 1) / threads;
        if (whole->grad_weight != NULL) {
            jobs[t].grad_weight = whole->grad_weight + t * whole->dim;
            jobs[t].grad_bias = whole->grad_bias + t * whole->dim;
        }
        jobs[t].status = 1;
    }
    run_on_threads(norm_task, jobs, sizeof jobs[0], threads, 1);
    int status = 0;
    for (int t = 0; t < threads; t++) status |= jobs[t].status;
    return status;
}

/* y = LayerNorm(x + branch_scale[row / tokens] * branch) for rows x dim: branch (bf16), branch_scale and sum
 * may be NULL (no branch; no scale; the sum not kept: with a branch, out must then be given, and holds the sum
 * until it holds y); out (fp32) and out_bf16 may each be NULL, not both. Writes each row's mean and 1/std.
 * 0 on success, 2 for a refused input. */
int cct_add_norm_forward(const float *x, const void *branch, const float *branch_scale, int64_t tokens,
                         const float *weight, const float *bias, float eps, int64_t rows, int64_t dim, float *sum,
                         float *out, void *out_bf16, float *mean, float *rstd, int threads) {
    if (rows < 0 || dim < 1 || tokens < 1 || (out == NULL && out_bf16 == NULL) ||
        (branch != NULL && sum == NULL && out == NULL))
        return 2;
    NormJob job;
    memset(&job, 0, sizeof job);
    job.x = x; job.branch = (const uint16_t *)branch; job.branch_scale = branch_scale; job.tokens = tokens;
    job.weight = weight; job.bias = bias; job.eps = eps; job.row_end = rows; job.dim = dim;
    job.sum = sum; job.out = out; job.out_bf16 = (uint16_t *)out_bf16; job.mean_out = mean; job.rstd_out = rstd;
    return run_norm(&job, threads);
}

/* The backward of cct_add_norm_forward: saved is the normalised input (the sum, or x without a branch), grad
 * and grad_bf16 the gradients of the fp32 and bf16 outputs (either may be NULL); writes grad_input (fp32),
 * grad_branch (bf16, scaled as the branch was; may be NULL) and the partial sums grad_weight, grad_bias
 * (threads x dim, zeroed by the caller). */
int cct_add_norm_backward(const float *saved, const float *mean, const float *rstd, const float *weight,
                          const float *grad, const void *grad_bf16, const float *branch_scale, int64_t tokens,
                          int64_t rows, int64_t dim, float *grad_input, void *grad_branch, float *grad_weight,
                          float *grad_bias, int threads) {
    if (rows < 0 || dim < 1 || tokens < 1 || (grad == NULL && grad_bf16 == NULL)) return 2;
    NormJob job;
    memset(&job, 0, sizeof job);
    job.saved = saved; job.mean = mean; job.rstd = rstd; job.weight = weight; job.grad = grad;
    job.grad_bf16 = (const uint16_t *)grad_bf16; job.branch_scale = branch_scale; job.tokens = tokens;
    job.row_end = rows; job.dim = dim; job.grad_input = grad_input; job.grad_branch = (uint16_t *)grad_branch;
    job.grad_weight = grad_weight; job.grad_bias = grad_bias;
    return run_norm(&job, threads);
}

#ifdef HAVE_AVX512_BF16
/* The whole attention core of a training step, forward and backward, on CPUs with AVX-512 BF16 (AMD Zen 4 and
 * later, Intel Xeon 4th gen and later): one (image, head) at a time, its Q K^T, softmax, dropout and product
 * with V stay in the thread's cache, so the N x N matrices never travel to memory, and nothing N x N is saved
 * for the backward: it recomputes the scores (one small matmul) from Q and K and the softmax from each row's max
 * and 1/sum. Its matmuls run on one of two engines: AVX-512 BF16 dot products (every such CPU) or AMX tiles
 * (where the compiler and the CPU have them).
 *
 * qkv is the (batch, tokens, 3, heads, head_dim) output of the qkv projection (bf16), out and grad_out are
 * (batch, tokens, heads * head_dim). The dropout mask is the one the row kernel above draws for scores laid
 * out as (batch, heads, tokens, tokens), so both paths drop the same entries for the same seed. */
#define HAVE_FUSED_ATTENTION 1
#define MAX_TOKENS 1024
#define ENGINE_VECTOR 1 /* AVX-512 BF16 dot products */
#define ENGINE_AMX 2

static inline int64_t round32(int64_t n) { return (n + 31) & ~(int64_t)31; }

/* c (m x n, fp32, row stride ldc) = a (m x k, bf16, row stride lda) @ b, with b (k x n) stored in pairs of
 * rows ("VNNI": element (r, j) at b[(r / 2) * 2n + 2j + r % 2]). m, n and k are multiples of 32.
 * With vdpbf16ps, lane j of a product adds a[i][r] b[r][j] + a[i][r + 1] b[r + 1][j]: a's pair, one 32-bit
 * word, broadcast against one row of b's pairs. Blocks of 8 rows x 32 columns (16 accumulators); the loop over
 * rows runs inside the loop over columns, so the strip of b stays in the first-level cache. */
static void matmul_vector(const uint16_t *a, int64_t lda, const uint16_t *b, float *c, int64_t ldc, int64_t m,
                          int64_t n, int64_t k) {
    for (int64_t j = 0; j < n; j += 32) {
        for (int64_t i = 0; i < m; i += 8) {
            __m512 acc[8][2];
            for (int x = 0; x < 8; x++) acc[x][0] = acc[x][1] = _mm512_setzero_ps();
            const uint16_t *strip = b + 2 * j;
            for (int64_t r = 0; r < k; r += 2, strip += 2 * n) {
                const __m512bh b0 = (__m512bh)_mm512_loadu_si512(strip), b1 = (__m512bh)_mm512_loadu_si512(strip + 32);
                for (int x = 0; x < 8; x++) {
                    const __m512bh broadcast = (__m512bh)_mm512_set1_epi32(*(const int *)(a + (i + x) * lda + r));
                    acc[x][0] = _mm512_dpbf16_ps(acc[x][0], broadcast, b0);
                    acc[x][1] = _mm512_dpbf16_ps(acc[x][1], broadcast, b1);
                }
            }
            for (int x = 0; x < 8; x++) {
                _mm512_storeu_ps(c + (i + x) * ldc + j, acc[x][0]);
                _mm512_storeu_ps(c + (i + x) * ldc + j + 16, acc[x][1]);
            }
        }
    }
}

#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
#define HAVE_AMX 1
#include <sys/syscall.h>
#include <unistd.h>

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t bytes_per_row[16];
    uint8_t rows[16];
} TileConfig;

static void configure_tiles(void) { /* eight 16 x 64-byte tiles: 4 accumulators, 2 of A, 2 of B */
    TileConfig config;
    memset(&config, 0, sizeof config);
    config.palette = 1;
    for (int t = 0; t < 8; t++) {
        config.bytes_per_row[t] = 64;
        config.rows[t] = 16;
    }
    _tile_loadconfig(&config);
}

static int amx_permitted(void) { /* Linux hands out AMX's 8 KB of tile state only on request */
    static int state = -1;
    if (state < 0) state = syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
    return state;
}

/* matmul_vector's product on AMX tiles (same layouts and sizes). */
static void matmul_amx(const uint16_t *a, int64_t lda, const uint16_t *b, float *c, int64_t ldc, int64_t m,
                       int64_t n, int64_t k) {
    for (int64_t i = 0; i < m; i += 32) {
        for (int64_t j = 0; j < n; j += 32) {
            _tile_zero(0);
            _tile_zero(1);
            _tile_zero(2);
            _tile_zero(3);
            for (int64_t r = 0; r < k; r += 32) {
                _tile_loadd(4, a + i * lda + r, lda * 2);
                _tile_loadd(5, a + (i + 16) * lda + r, lda * 2);
                _tile_loadd(6, b + r * n + 2 * j, n * 4);
                _tile_loadd(7, b + r * n + 2 * (j + 16), n * 4);
                _tile_dpbf16ps(0, 4, 6);
                _tile_dpbf16ps(1, 4, 7);
                _tile_dpbf16ps(2, 5, 6);
                _tile_dpbf16ps(3, 5, 7);
            }
            _tile_stored(0, c + i * ldc + j, ldc * 4);
            _tile_stored(1, c + i * ldc + j + 16, ldc * 4);
            _tile_stored(2, c + (i + 16) * ldc + j, ldc * 4);
            _tile_stored(3, c + (i + 16) * ldc + j + 16, ldc * 4);
        }
    }
}
#endif

/* The engines this build and this CPU have: a bit mask of ENGINE_VECTOR and ENGINE_AMX. */
static int engines(void) {
#ifdef HAVE_AMX
    return ENGINE_VECTOR | (amx_permitted() ? ENGINE_AMX : 0);
#else
    return ENGINE_VECTOR;
#endif
}

static void matmul(int engine, const uint16_t *a, int64_t lda, const uint16_t *b, float *c, int64_t ldc, int64_t m,
                   int64_t n, int64_t k) {
#ifdef HAVE_AMX
    if (engine == ENGINE_AMX) {
        matmul_amx(a, lda, b, c, ldc, m, n, k);
        return;
    }
#endif
    (void)engine;
    matmul_vector(a, lda, b, c, ldc, m, n, k);
}

/* dst (rows_pad x cols_pad, row-major) = src (rows x cols, row stride ld), zero-padded. */
static void pack_rows(const uint16_t *src, int64_t ld, int64_t rows, int64_t cols, uint16_t *dst, int64_t rows_pad,
                      int64_t cols_pad) {
    for (int64_t i = 0; i < rows_pad; i++) {
        uint16_t *row = dst + i * cols_pad;
        if (i < rows) {
            memcpy(row, src + i * ld, sizeof(uint16_t) * (size_t)cols);
            memset(row + cols, 0, sizeof(uint16_t) * (size_t)(cols_pad - cols));
        } else {
            memset(row, 0, sizeof(uint16_t) * (size_t)cols_pad);
        }
    }
}

static inline __mmask16 lanes_from(int64_t j, int64_t n) { return j < n ? lanes(j, n) : 0; }

/* 16 rows of 16 32-bit words, transposed in registers. */
static inline void transpose16(__m512i r[16]) {
    __m512i t[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) {
        r[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
        r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
        r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
    for (int i = 0; i < 2; i++) {
        for (int k = 0; k < 4; k++) {
            t[8 * i + k] = _mm512_shuffle_i32x4(r[8 * i + k], r[8 * i + 4 + k], 0x88);
            t[8 * i + 4 + k] = _mm512_shuffle_i32x4(r[8 * i + k], r[8 * i + 4 + k], 0xdd);
        }
    }
    for (int k = 0; k < 8; k++) {
        r[k] = _mm512_shuffle_i32x4(t[k], t[8 + k], 0x88);
        r[8 + k] = _mm512_shuffle_i32x4(t[k], t[8 + k], 0xdd);
    }
}

/* Loads words [col, col + 16) of rows [row, row + 16) of a (rows x cols) matrix of 32-bit words (row stride
 * ld), zeros outside it, and transposes them: r[x] = column col + x of those rows. */
static inline void load_transposed16(const uint32_t *words, int64_t ld, int64_t rows, int64_t cols, int64_t row,
                                     int64_t col, __m512i r[16]) {
    const __mmask16 valid = lanes_from(col, cols);
    for (int y = 0; y < 16; y++)
        r[y] = row + y < rows ? _mm512_maskz_loadu_epi32(valid, words + (row + y) * ld + col) : _mm512_setzero_si512();
    transpose16(r);
}

/* dst (cols_pad x rows_pad, row-major) = the transpose of src (rows x cols bf16, row stride ld; cols and ld
 * even), zero-padded: pairs of columns transposed as 32-bit words, 32 rows at a time, split by a permute. */
static void pack_transposed(const uint16_t *src, int64_t ld, int64_t rows, int64_t cols, uint16_t *dst,
                            int64_t rows_pad, int64_t cols_pad) {
    uint16_t even_index[32], odd_index[32];
    for (int t = 0; t < 32; t++) {
        even_index[t] = (uint16_t)(t < 16 ? 2 * t : 32 + 2 * (t - 16));
        odd_index[t] = (uint16_t)(even_index[t] + 1);
    }
    const __m512i even = _mm512_loadu_si512(even_index), odd = _mm512_loadu_si512(odd_index);
    const uint32_t *words = (const uint32_t *)src;
    __m512i top[16], bottom[16];
    for (int64_t i = 0; i < rows_pad; i += 32) {
        for (int64_t w = 0; w < cols_pad / 2; w += 16) {
            load_transposed16(words, ld / 2, rows, cols / 2, i, w, top);
            load_transposed16(words, ld / 2, rows, cols / 2, i + 16, w, bottom);
            for (int x = 0; x < 16 && 2 * (w + x) < cols_pad; x++) {
                int64_t c = 2 * (w + x);
                _mm512_storeu_si512(dst + c * rows_pad + i, _mm512_permutex2var_epi16(top[x], even, bottom[x]));
                _mm512_storeu_si512(dst + (c + 1) * rows_pad + i, _mm512_permutex2var_epi16(top[x], odd, bottom[x]));
            }
        }
    }
}

/* The pairs layout of a row-major matrix (rows_pad x cols_pad, both even): rows 2r and 2r + 1 interleaved. */
static void interleave_rows(const uint16_t *src, int64_t rows_pad, int64_t cols_pad, uint16_t *dst) {
    uint16_t lo_index[32], hi_index[32];
    for (int t = 0; t < 16; t++) {
        lo_index[2 * t] = (uint16_t)t;
        lo_index[2 * t + 1] = (uint16_t)(32 + t);
        hi_index[2 * t] = (uint16_t)(16 + t);
        hi_index[2 * t + 1] = (uint16_t)(48 + t);
    }
    const __m512i low = _mm512_loadu_si512(lo_index), high = _mm512_loadu_si512(hi_index);
    for (int64_t r = 0; r < rows_pad; r += 2) {
        const uint16_t *even = src + r * cols_pad, *odd = even + cols_pad;
        uint16_t *out = dst + r * cols_pad;
        for (int64_t j = 0; j < cols_pad; j += 32) {
            __m512i a = _mm512_loadu_si512(even + j), b = _mm512_loadu_si512(odd + j);
            _mm512_storeu_si512(out + 2 * j, _mm512_permutex2var_epi16(a, low, b));
            _mm512_storeu_si512(out + 2 * j + 32, _mm512_permutex2var_epi16(a, high, b));
        }
    }
}

/* The pairs layout of the transpose of src (rows x cols, row stride ld; cols and ld even): element (c, i) =
 * src[i][c] at dst[(c / 2) * 2 rows_pad + 2i + c % 2], a transpose of 32-bit pairs, zero-padded. */
static void pack_transposed_pairs(const uint16_t *src, int64_t ld, int64_t rows, int64_t cols, uint16_t *dst,
                                  int64_t rows_pad, int64_t cols_pad) {
    const uint32_t *words = (const uint32_t *)src;
    uint32_t *out = (uint32_t *)dst;
    __m512i r[16];
    for (int64_t i = 0; i < rows_pad; i += 16) {
        for (int64_t w = 0; w < cols_pad / 2; w += 16) {
            load_transposed16(words, ld / 2, rows, cols / 2, i, w, r);
            for (int x = 0; x < 16 && w + x < cols_pad / 2; x++) _mm512_storeu_si512(out + (w + x) * rows_pad + i, r[x]);
        }
    }
}

typedef struct {
    const uint16_t *qkv, *grad_out;
    uint16_t *out, *grad_qkv;
    float *row_max, *row_inverse;
    uint16_t *keep_bits; /* (batch, heads, tokens, ceil(tokens / 16)): the forward's mask, read by the backward */
    int staged; /* the thread has whole images: it writes each image's result in its cache, then streams it out */
    int64_t batch, tokens, heads, head_dim, first, last; /* this thread's (image, head) pairs: [first, last) */
    uint64_t seed; /* seed and threshold: the forward's draw of the mask */
    uint32_t threshold;
    float score_scale, out_scale;
    int engine; /* ENGINE_VECTOR or ENGINE_AMX */
    int status;
} AttentionJob;

/* Softmax and dropout of row i of scores (fp32, unscaled, n valid of n_pad), into dropped (bf16, zero-padded);
 * keeps the row's max and 1/sum for the backward. */
static void attention_row_forward(const AttentionJob *job, const float *scores, int64_t n, int64_t n_pad,
                                  uint64_t index, uint16_t *keep_bits, float *row, uint16_t *dropped, float *row_max,
                                  float *row_inverse) {
    const __m512 score_scale = _mm512_set1_ps(job->score_scale);
    const uint32_t key0 = (uint32_t)job->seed, key1 = (uint32_t)(job->seed >> 32);
    __m512 top = _mm512_set1_ps(-INFINITY);
    for (int64_t j = 0; j < n; j += 16) {
        __mmask16 valid = lanes(j, n);
        __m512 value = _mm512_mul_ps(_mm512_maskz_loadu_ps(valid, scores + j), score_scale);
        _mm512_storeu_ps(row + j, value);
        top = _mm512_mask_max_ps(top, valid, top, value);
    }
    const float maximum = _mm512_reduce_max_ps(top);
    const __m512 row_top = _mm512_set1_ps(maximum);
    __m512 total = _mm512_setzero_ps();
    for (int64_t j = 0; j < n; j += 16) {
        __m512 e = _mm512_maskz_mov_ps(lanes(j, n), exp_nonpositive16(_mm512_sub_ps(_mm512_loadu_ps(row + j), row_top)));
        _mm512_storeu_ps(row + j, e);
        total = _mm512_add_ps(total, e);
    }
    const float inverse = 1.0f / _mm512_reduce_add_ps(total);
    const __m512 row_inverse16 = _mm512_set1_ps(inverse), out_scale = _mm512_set1_ps(job->out_scale);
    for (int64_t j = 0; j < n_pad; j += 16) { /* as the row kernel: (e * 1/sum) * 1/(1-p), then to bf16 */
        __mmask16 keep = j < n ? lanes(j, n) & keep16(index + (uint64_t)j, key0, key1, job->threshold) : 0;
        if (j < n) keep_bits[j / 16] = keep;
        __m512 value = _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(row + j), row_inverse16), out_scale);
        _mm256_storeu_si256((__m256i *)(dropped + j), _mm256_maskz_mov_epi16(keep, to_bf16x16(value)));
    }
    *row_max = maximum;
    *row_inverse = inverse;
}

/* The backward of row i: recomputes prob from the scores and the row's max and 1/sum, writes the dropped
 * weights (for grad V) and grad_scores (bf16, zero-padded), given grad_dropped (fp32) for the row. */
static void attention_row_backward(const AttentionJob *job, const float *scores, const float *grad_dropped,
                                   int64_t n, int64_t n_pad, const uint16_t *keep_bits, float maximum, float inverse,
                                   float *prob, float *grad, uint16_t *dropped, uint16_t *grad_scores) {
    const __m512 score_scale = _mm512_set1_ps(job->score_scale), out_scale = _mm512_set1_ps(job->out_scale);
    const __m512 row_top = _mm512_set1_ps(maximum), row_inverse = _mm512_set1_ps(inverse);
    __m512 dot = _mm512_setzero_ps();
    for (int64_t j = 0; j < n_pad; j += 16) {
        __mmask16 valid = j < n ? lanes(j, n) : 0;
        __mmask16 keep = j < n ? keep_bits[j / 16] : 0;
        __m512 shifted = _mm512_sub_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(valid, scores + j), score_scale), row_top);
        __m512 p = _mm512_maskz_mul_ps(valid, exp_nonpositive16(shifted), row_inverse);
        __m512 g = _mm512_maskz_mul_ps(keep, _mm512_maskz_loadu_ps(valid, grad_dropped + j), out_scale);
        _mm256_storeu_si256((__m256i *)(dropped + j), _mm256_maskz_mov_epi16(keep, to_bf16x16(_mm512_mul_ps(p, out_scale))));
        _mm512_storeu_ps(prob + j, p);
        _mm512_storeu_ps(grad + j, g);
        dot = _mm512_fmadd_ps(g, p, dot);
    }
    const __m512 total = _mm512_set1_ps(_mm512_reduce_add_ps(dot));
    for (int64_t j = 0; j < n_pad; j += 16) {
        __m512 p = _mm512_mul_ps(_mm512_loadu_ps(prob + j), score_scale);
        __m512 result = _mm512_mul_ps(p, _mm512_sub_ps(_mm512_loadu_ps(grad + j), total));
        _mm256_storeu_si256((__m256i *)(grad_scores + j), to_bf16x16(result));
    }
}

typedef struct { /* a thread's buffers, for tokens and head_dim rounded up to 32 */
    float *scores, *grad_dropped, *result, *row_a, *row_b;
    uint16_t *q, *keys_t, *values, *keys, *values_t, *grad_out, *grad_out_t, *q_t, *dropped, *dropped_pairs,
        *grad_scores, *grad_scores_pairs, *image;
    void *memory;
} Scratch;

static int scratch_alloc(Scratch *s, int64_t n, int64_t d, int64_t image_size) {
    size_t floats = (size_t)(2 * n * n + n * d + 2 * n + 32), halves = (size_t)(8 * n * d + 4 * n * n + image_size + 96);
    char *memory = (char *)aligned_alloc(64, ((floats * 4 + halves * 2) / 64 + 2) * 64);
    if (memory == NULL) return 1;
    s->memory = memory;
    float *f = (float *)memory;
    s->scores = f; f += n * n;
    s->grad_dropped = f; f += n * n;
    s->result = f; f += n * d;
    s->row_a = f; f += n + 16;
    s->row_b = f; f += n + 16;
    uint16_t *h = (uint16_t *)(((uintptr_t)f + 63) & ~(uintptr_t)63);
    uint16_t **parts[] = {&s->q, &s->keys_t, &s->values, &s->keys, &s->values_t, &s->grad_out, &s->grad_out_t, &s->q_t};
    for (int t = 0; t < 8; t++) { *parts[t] = h; h += n * d; }
    s->dropped = h; h += n * n;
    s->dropped_pairs = h; h += n * n;
    s->grad_scores = h; h += n * n;
    s->grad_scores_pairs = h; h += n * n;
    s->image = (uint16_t *)(((uintptr_t)h + 63) & ~(uintptr_t)63);
    return 0;
}

/* dst = src, count bf16 values, with stores that skip the cache (no read of the lines they fill) where dst is
 * aligned to a cache line. */
static void stream_out(uint16_t *dst, const uint16_t *src, int64_t count) {
    int64_t done = 0;
    if (((uintptr_t)dst & 63) == 0) {
        for (; done + 32 <= count; done += 32) _mm512_stream_si512((void *)(dst + done), _mm512_loadu_si512(src + done));
    }
    memcpy(dst + done, src + done, sizeof(uint16_t) * (size_t)(count - done));
}

/* rows x cols of fp32 result (row stride ld), or of its transpose (result is then cols x rows), into bf16 dst
 * (row stride dst_ld). */
static void store_bf16(const float *result, int64_t ld, int64_t rows, int64_t cols, int transposed, uint16_t *dst,
                       int64_t dst_ld) {
    if (!transposed) {
        for (int64_t i = 0; i < rows; i++)
            for (int64_t c = 0; c < cols; c += 16) {
                __mmask16 valid = lanes(c, cols);
                _mm256_mask_storeu_epi16(dst + i * dst_ld + c, valid, to_bf16x16(_mm512_maskz_loadu_ps(valid, result + i * ld + c)));
            }
        return;
    }
    __m512i r[16];
    for (int64_t c = 0; c < cols; c += 16) {
        for (int64_t i = 0; i < rows; i += 16) {
            load_transposed16((const uint32_t *)result, ld, cols, ld, c, i, r); /* r[x]: row i + x, columns c.. */
            for (int x = 0; x < 16 && i + x < rows; x++)
                _mm256_mask_storeu_epi16(dst + (i + x) * dst_ld + c, lanes(c, cols), to_bf16x16(_mm512_castsi512_ps(r[x])));
        }
    }
}

static void attention_pair_forward(const AttentionJob *job, int64_t pair, Scratch *s) {
    const int64_t tokens = job->tokens, heads = job->heads, d = job->head_dim, width = heads * d;
    const int64_t n = round32(tokens), dp = round32(d), image = pair / heads, head = pair % heads;
    const uint16_t *q = job->qkv + image * tokens * 3 * width + head * d, *k = q + width, *v = q + 2 * width;
    pack_rows(q, 3 * width, tokens, d, s->q, n, dp);
    pack_transposed_pairs(k, 3 * width, tokens, d, s->keys_t, n, dp);
    pack_rows(v, 3 * width, tokens, d, s->values_t, n, dp); /* row-major V, then its pairs layout */
    interleave_rows(s->values_t, n, dp, s->values);
    matmul(job->engine, s->q, dp, s->keys_t, s->scores, n, n, n, dp);
    for (int64_t i = 0; i < n; i++) {
        uint16_t *dropped = s->dropped + i * n;
        if (i < tokens) {
            const int64_t row = pair * tokens + i; /* of the (batch, heads, tokens) rows */
            attention_row_forward(job, s->scores + i * n, tokens, n, (uint64_t)(row * tokens),
                                  job->keep_bits + row * ((tokens + 15) / 16), s->row_a, dropped,
                                  job->row_max + row, job->row_inverse + row);
        } else {
            memset(dropped, 0, sizeof(uint16_t) * (size_t)n);
        }
    }
    matmul(job->engine, s->dropped, n, s->values, s->result, dp, n, dp, n);
    uint16_t *image_out = job->out + image * tokens * width;
    store_bf16(s->result, dp, tokens, d, 0, (job->staged ? s->image : image_out) + head * d, width);
    if (job->staged && head == heads - 1) stream_out(image_out, s->image, tokens * width);
}

static void attention_pair_backward(const AttentionJob *job, int64_t pair, Scratch *s) {
    const int64_t tokens = job->tokens, heads = job->heads, d = job->head_dim, width = heads * d;
    const int64_t n = round32(tokens), dp = round32(d), image = pair / heads, head = pair % heads;
    const int64_t offset = image * tokens * 3 * width + head * d;
    const uint16_t *q = job->qkv + offset, *k = q + width, *v = q + 2 * width;
    const uint16_t *grad_out = job->grad_out + image * tokens * width + head * d;
    pack_rows(q, 3 * width, tokens, d, s->q, n, dp);
    pack_transposed_pairs(k, 3 * width, tokens, d, s->keys_t, n, dp);
    matmul(job->engine, s->q, dp, s->keys_t, s->scores, n, n, n, dp); /* the forward's scores, bit for bit */
    pack_rows(grad_out, width, tokens, d, s->grad_out, n, dp);
    pack_transposed_pairs(v, 3 * width, tokens, d, s->values_t, n, dp);
    matmul(job->engine, s->grad_out, dp, s->values_t, s->grad_dropped, n, n, n, dp); /* grad of the dropped weights */
    for (int64_t i = 0; i < n; i++) {
        uint16_t *dropped = s->dropped + i * n, *grad_scores = s->grad_scores + i * n;
        if (i < tokens) {
            const int64_t row = pair * tokens + i;
            attention_row_backward(job, s->scores + i * n, s->grad_dropped + i * n, tokens, n,
                                   job->keep_bits + row * ((tokens + 15) / 16), job->row_max[row],
                                   job->row_inverse[row], s->row_a, s->row_b, dropped, grad_scores);
        } else {
            memset(dropped, 0, sizeof(uint16_t) * (size_t)n);
            memset(grad_scores, 0, sizeof(uint16_t) * (size_t)n);
        }
    }
    interleave_rows(s->dropped, n, n, s->dropped_pairs);
    interleave_rows(s->grad_scores, n, n, s->grad_scores_pairs);
    uint16_t *image_grad = job->grad_qkv + image * tokens * 3 * width;
    uint16_t *grad_q = (job->staged ? s->image : image_grad) + head * d, *grad_k = grad_q + width, *grad_v = grad_q + 2 * width;
    /* grad V^T = grad_out^T dropped */
    pack_transposed(grad_out, width, tokens, d, s->grad_out_t, n, dp);
    matmul(job->engine, s->grad_out_t, n, s->dropped_pairs, s->result, n, dp, n, n);
    store_bf16(s->result, n, tokens, d, 1, grad_v, 3 * width);
    /* grad Q = grad_scores K */
    pack_rows(k, 3 * width, tokens, d, s->values_t, n, dp); /* row-major K (values_t is free again) */
    interleave_rows(s->values_t, n, dp, s->keys);
    matmul(job->engine, s->grad_scores, n, s->keys, s->result, dp, n, dp, n);
    store_bf16(s->result, dp, tokens, d, 0, grad_q, 3 * width);
    /* grad K^T = Q^T grad_scores */
    pack_transposed(q, 3 * width, tokens, d, s->q_t, n, dp);
    matmul(job->engine, s->q_t, n, s->grad_scores_pairs, s->result, n, dp, n, n);
    store_bf16(s->result, n, tokens, d, 1, grad_k, 3 * width);
    if (job->staged && head == heads - 1) stream_out(image_grad, s->image, tokens * 3 * width);
}

static void *attention_task(void *arg) {
    AttentionJob *job = (AttentionJob *)arg;
    Scratch scratch;
    if (scratch_alloc(&scratch, round32(job->tokens), round32(job->head_dim),
                      job->staged ? job->tokens * 3 * job->heads * job->head_dim : 0) != 0) {
        job->status = 1;
        return NULL;
    }
#ifdef HAVE_AMX
    if (job->engine == ENGINE_AMX) configure_tiles();
#endif
    for (int64_t pair = job->first; pair < job->last; pair++) {
        if (job->grad_out != NULL) attention_pair_backward(job, pair, &scratch);
        else attention_pair_forward(job, pair, &scratch);
    }
#ifdef HAVE_AMX
    if (job->engine == ENGINE_AMX) _tile_release();
#endif
    _mm_sfence(); /* the streamed stores are visible before the caller reads them */
    free(scratch.memory);
    job->status = 0;
    return NULL;
}

static int run_attention(const AttentionJob *whole, int threads) {
    /* pairs of head_dim values are moved as 32-bit words: head_dim must be even */
    if ((whole->engine != ENGINE_VECTOR && whole->engine != ENGINE_AMX) || !(engines() & whole->engine) ||
        whole->tokens < 1 || whole->tokens > MAX_TOKENS || whole->head_dim < 2 ||
        whole->head_dim % 2 != 0)
        return 2;
    const int64_t pairs = whole->batch * whole->heads;
    if (threads < 1) threads = 1;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (pairs < threads) threads = pairs > 0 ? (int)pairs : 1;
    AttentionJob jobs[MAX_THREADS];
    /* whole images per thread where there are enough of them (and an image's result fits a cache) */
    const int staged = whole->batch >= threads && whole->tokens * 3 * whole->heads * whole->head_dim <= (1 << 20);
    for (int t = 0; t < threads; t++) {
        jobs[t] = *whole;
        jobs[t].staged = staged;
        jobs[t].first = staged ? whole->batch * t / threads * whole->heads : pairs * t / threads;
        jobs[t].last = staged ? whole->batch * (t + 1) / threads * whole->heads : pairs * (t + 1) / threads;
        jobs[t].status = 1;
    }
    /* every share on a thread of its own, the caller's included: the caller also runs oneDNN's AMX kernels,
     * whose tile configuration this one must not touch */
    run_on_threads(attention_task, jobs, sizeof jobs[0], threads, 0);
    int status = 0;
    for (int t = 0; t < threads; t++) status |= jobs[t].status;
    return status;
}
#endif

/* The engines of the fused attention in this build on this CPU, a bit mask: 1 AVX-512 BF16 dot products,
 * 2 AMX tiles (built for them, and the kernel grants their state); 0 where there is no fused attention. */
int cct_attention_available(void) {
#ifdef HAVE_FUSED_ATTENTION
    return engines();
#else
    return 0;
#endif
}

/* out = dropout(softmax(scale * q k^T)) v for every (image, head), its matmuls on `engine` (1 or 2, as
 * cct_attention_available); 0 on success, 1 out of memory, 2 not available here (no such engine, more than
 * MAX_TOKENS tokens, an odd head_dim). Also writes, for the backward, row_max and row_inverse (batch, heads,
 * tokens; the scaled scores' max and 1/sum of each row) and keep_bits (batch, heads, tokens, ceil(tokens / 16)
 * 16-bit words: bit j % 16 of word j / 16 says whether entry j was kept). */
int cct_attention_forward(const void *qkv, void *out, float *row_max, float *row_inverse, void *keep_bits, int64_t batch,
                          int64_t tokens, int64_t heads, int64_t head_dim, uint64_t seed, uint32_t threshold,
                          float score_scale, float out_scale, int engine, int threads) {
#ifdef HAVE_FUSED_ATTENTION
    AttentionJob job = {(const uint16_t *)qkv, NULL, (uint16_t *)out, NULL, row_max, row_inverse,
                        (uint16_t *)keep_bits, 0, batch, tokens, heads, head_dim, 0, 0, seed, threshold,
                        score_scale, out_scale, engine, 1};
    return run_attention(&job, threads);
#else
    (void)qkv; (void)out; (void)row_max; (void)row_inverse; (void)keep_bits; (void)batch; (void)tokens; (void)heads;
    (void)head_dim; (void)seed; (void)threshold; (void)score_scale; (void)out_scale; (void)engine; (void)threads;
    return 2;
#endif
}

/* grad_qkv (batch, tokens, 3, heads, head_dim) of the forward above, given grad_out and what the forward kept
 * (row_max, row_inverse, keep_bits); same engines and return codes. */
int cct_attention_backward(const void *qkv, const void *grad_out, const float *row_max, const float *row_inverse,
                           const void *keep_bits, void *grad_qkv, int64_t batch, int64_t tokens, int64_t heads,
                           int64_t head_dim, float score_scale, float out_scale, int engine, int threads) {
#ifdef HAVE_FUSED_ATTENTION
    AttentionJob job = {(const uint16_t *)qkv, (const uint16_t *)grad_out, NULL, (uint16_t *)grad_qkv,
                        (float *)row_max, (float *)row_inverse, (uint16_t *)keep_bits, 0, batch, tokens, heads,
                        head_dim, 0, 0, 0, 0, score_scale, out_scale, engine, 1}; /* no seed: the mask is in keep_bits */
    return run_attention(&job, threads);
#else
    (void)qkv; (void)grad_out; (void)row_max; (void)row_inverse; (void)keep_bits; (void)grad_qkv; (void)batch;
    (void)tokens; (void)heads; (void)head_dim; (void)score_scale; (void)out_scale; (void)engine; (void)threads;
    return 2;
#endif
}
