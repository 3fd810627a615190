/* Timing harness for gemm_survey.py: calls a BLAS sgemm through a function pointer in a C
 * loop (no Python per call), row-major C[M,N] = op(A) op(B) as the generated kernels do
 * (a column-major BLAS computes C^T = op(B)^T op(A)^T). kind 0: Fortran sgemm_ with 32-bit
 * ints; kind 1: Fortran sgemm with 64-bit ints (ILP64); kind 2: BLIS bli_sgemm (typed API,
 * row/column strides). split > 1 runs the product on `split` OpenMP threads, each a block of
 * the longer of C's rows and columns with the BLAS at one thread (symprop's _pgemm). */
#include <stdint.h>
#include <time.h>

typedef void (*f32_t)(const char *, const char *, const int *, const int *, const int *, const float *,
                      const float *, const int *, const float *, const int *, const float *, float *, const int *);
typedef void (*f64_t)(const char *, const char *, const int64_t *, const int64_t *, const int64_t *,
                      const float *, const float *, const int64_t *, const float *, const int64_t *,
                      const float *, float *, const int64_t *);
typedef void (*blis_t)(int, int, int64_t, int64_t, int64_t, const float *, const float *, int64_t, int64_t,
                       const float *, int64_t, int64_t, const float *, float *, int64_t, int64_t);

static void gemm(void *fn, int kind, int ta, int tb, int M, int N, int K, const float *A, int lda,
                 const float *B, int ldb, float *C, int ldc) {
    const float one = 1.0f, zero = 0.0f;
    char cta = ta ? 'T' : 'N', ctb = tb ? 'T' : 'N';
    if (kind == 0) {
        ((f32_t)fn)(&ctb, &cta, &N, &M, &K, &one, B, &ldb, A, &lda, &zero, C, &ldc);
    } else if (kind == 1) {
        int64_t m = M, n = N, k = K, la = lda, lb = ldb, lc = ldc;
        ((f64_t)fn)(&ctb, &cta, &n, &m, &k, &one, B, &lb, A, &la, &zero, C, &lc);
    } else {   /* BLIS: the stored matrices' strides, transposition by flag (BLIS_TRANSPOSE = 8) */
        ((blis_t)fn)(ta ? 8 : 0, tb ? 8 : 0, M, N, K, &one, A, lda, 1, B, ldb, 1, &zero, C, ldc, 1);
    }
}

static void product(void *fn, int kind, int ta, int tb, int M, int N, int K, const float *A, const float *B,
                    float *C, int split) {
    int lda = ta ? M : K, ldb = tb ? K : N, ldc = N;
    if (split <= 1) {
        gemm(fn, kind, ta, tb, M, N, K, A, lda, B, ldb, C, ldc);
        return;
    }
#pragma omp parallel for num_threads(split) schedule(static)
    for (int t = 0; t < split; t++) {
        if (M >= N) {
            int lo = (int)((int64_t)M * t / split), hi = (int)((int64_t)M * (t + 1) / split);
            if (hi > lo)
                gemm(fn, kind, ta, tb, hi - lo, N, K, A + (ta ? lo : (int64_t)lo * lda), lda, B, ldb,
                     C + (int64_t)lo * ldc, ldc);
        } else {
            int lo = (int)((int64_t)N * t / split), hi = (int)((int64_t)N * (t + 1) / split);
            if (hi > lo)
                gemm(fn, kind, ta, tb, M, hi - lo, K, A, lda, B + (tb ? (int64_t)lo * ldb : lo), ldb, C + lo, ldc);
        }
    }
}

/* seconds for `reps` products */
double time_gemm(void *fn, int kind, int ta, int tb, int M, int N, int K, const float *A, const float *B, float *C,
                 int reps, int split) {
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int r = 0; r < reps; r++)
        product(fn, kind, ta, tb, M, N, K, A, B, C, split);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec);
}
