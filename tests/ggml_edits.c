// cllm's edits to ggml (port/patch-llama.py) against plain arithmetic, through ggml's own graph API
// with 1, 2 and 3 threads. Built for i386 by tests/test_ggml_edits.py against the kernel's SSE2 build
// of ggml and run on the host. Prints one line per check, "ok ..." or "FAIL ...", and exits 1 on a
// failure.
#include "ggml.h"
#include "ggml-cpu.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;

// port/patch-llama.py: the keys each thread took in the last attention split by keys
extern int64_t cllm_attention_keys[16];

static void check(int ok, const char * what, double worst) {
    printf("%s %s (worst %.3g)\n", ok ? "ok" : "FAIL", what, worst);
    failures += !ok;
}

static float frand(void) {
    return (float) rand() / RAND_MAX * 2.0f - 1.0f;
}

static struct ggml_context * new_context(void) {
    struct ggml_init_params p = { 64u << 20, NULL, false };
    return ggml_init(p);
}

static void fill(struct ggml_tensor * t, float scale) {
    const int64_t n = ggml_nelements(t);
    for (int64_t i = 0; i < n; i++) {
        if (t->type == GGML_TYPE_F32) {
            ((float *) t->data)[i] = scale * frand();
        } else {
            ((ggml_fp16_t *) t->data)[i] = ggml_fp32_to_fp16(scale * frand());
        }
    }
}

// dst computed with n_threads; returns a malloc'd copy of its floats
static float * compute(struct ggml_context * ctx, struct ggml_tensor * dst, int n_threads) {
    struct ggml_cgraph * gf = ggml_new_graph(ctx);
    ggml_build_forward_expand(gf, dst);
    if (ggml_graph_compute_with_ctx(ctx, gf, n_threads) != GGML_STATUS_SUCCESS) {
        fprintf(stderr, "graph compute failed\n");
        exit(2);
    }
    float * out = malloc(ggml_nbytes(dst));
    memcpy(out, dst->data, ggml_nbytes(dst));
    return out;
}

// dst computed with 1 thread (returned, malloc'd); *same: 2 and 3 threads give the same bytes
static float * compute_alike(struct ggml_context * ctx, struct ggml_tensor * dst, int * same) {
    float * one = compute(ctx, dst, 1);
    *same = 1;
    for (int nth = 2; nth <= 3; nth++) {
        memset(dst->data, 0xff, ggml_nbytes(dst));      // NaN: a row no thread computed shows
        float * many = compute(ctx, dst, nth);
        *same &= memcmp(one, many, ggml_nbytes(dst)) == 0;
        free(many);
    }
    return one;
}

// the Q4_1, Q8_1 and Q8_0 blocks, as in ggml-common.h (sizes checked against ggml_type_size in main)
typedef struct { ggml_fp16_t d, m; uint8_t qs[16]; } q4_1_block;
typedef struct { ggml_fp16_t d, s; int8_t qs[32]; } q8_1_block;
typedef struct { ggml_fp16_t d; int8_t qs[32]; } q8_0_block;

// ggml's Q4_1 dot product as the sdist has it: a byte at a time
static float q4_1_dot_reference(int n, const void * vx, const void * vy) {
    const q4_1_block * x = vx;
    const q8_1_block * y = vy;
    float sumf = 0;
    for (int ib = 0; ib < n / 32; ++ib) {
        int sumi0 = 0, sumi1 = 0;
        for (int j = 0; j < 16; ++j) {
            sumi0 += (x[ib].qs[j] & 0x0F) * y[ib].qs[j];
            sumi1 += (x[ib].qs[j] >> 4) * y[ib].qs[j + 16];
        }
        int sumi = sumi0 + sumi1;
        sumf += (ggml_fp16_to_fp32(x[ib].d) * ggml_fp16_to_fp32(y[ib].d)) * sumi +
                ggml_fp16_to_fp32(x[ib].m) * ggml_fp16_to_fp32(y[ib].s);
    }
    return sumf;
}

// ggml's Q8_0 dot product as the sdist has it
static float q8_0_dot_reference(int n, const void * vx, const void * vy) {
    const q8_0_block * x = vx;
    const q8_0_block * y = vy;
    float sumf = 0;
    for (int ib = 0; ib < n / 32; ++ib) {
        int sumi = 0;
        for (int j = 0; j < 32; j++) {
            sumi += x[ib].qs[j] * y[ib].qs[j];
        }
        sumf += sumi * (ggml_fp16_to_fp32(x[ib].d) * ggml_fp16_to_fp32(y[ib].d));
    }
    return sumf;
}

// ggml's dot product of a row of `type` with n activations, against the reference, bit for bit
static void dot_product(enum ggml_type type, int n, float (*reference)(int, const void *, const void *)) {
    const struct ggml_type_traits_cpu * traits = ggml_get_type_traits_cpu(type);
    const enum ggml_type activations = traits->vec_dot_type;
    float * w = malloc(n * sizeof(float));
    float * a = malloc(n * sizeof(float));
    void * x = malloc(ggml_row_size(type, n));
    void * y = malloc(ggml_row_size(activations, n));
    int same = 1;
    for (int round = 0; round < 200; round++) {
        for (int i = 0; i < n; i++) {
            w[i] = frand();
            // activations at the extremes of int8 every other round
            a[i] = round % 2 ? (rand() % 2 ? 1.0f : -1.0f) * (i % 7 ? 1.0f : 0.01f) : frand();
        }
        ggml_quantize_chunk(type, w, x, 0, 1, n, NULL);
        ggml_get_type_traits_cpu(activations)->from_float(a, y, n);
        float got;
        traits->vec_dot(n, &got, 0, x, 0, y, 0, 1);
        same &= got == reference(n, x, y);
    }
    char what[160];
    snprintf(what, sizeof what, "%s dot product equals the byte-at-a-time sum, bit for bit (200 rows of %d)",
             ggml_type_name(type), n);
    check(same, what, 0);
    free(w);
    free(a);
    free(x);
    free(y);
}

// a Q4_1 matrix times one vector: each row once, the same with any thread count, and each row the
// reference dot product with the vector as ggml quantizes it (Q8_1)
static void matrix_times_vector(int rows) {
    enum { N = 576 };
    struct ggml_context * ctx = new_context();
    struct ggml_tensor * wf = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, N, rows);
    struct ggml_tensor * w  = ggml_new_tensor_2d(ctx, GGML_TYPE_Q4_1, N, rows);
    struct ggml_tensor * v  = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, N, 1);
    fill(wf, 1.0f);
    fill(v, 1.0f);
    ggml_quantize_chunk(GGML_TYPE_Q4_1, wf->data, w->data, 0, rows, N, NULL);
    struct ggml_tensor * out = ggml_mul_mat(ctx, w, v);
    int same;
    float * one = compute_alike(ctx, out, &same);
    static q8_1_block y[N / 32];
    ggml_get_type_traits_cpu(GGML_TYPE_Q8_1)->from_float(v->data, y, N);
    int rows_right = 0;
    for (int r = 0; r < rows; r++) {
        rows_right += one[r] == q4_1_dot_reference(N, (const q4_1_block *) w->data + r * (N / 32), y);
    }
    char what[160];
    snprintf(what, sizeof what, "%d-row Q4_1 matrix times a vector: 2 and 3 threads equal 1 thread, and every row "
             "the reference dot product (%d of %d)", rows, rows_right, rows);
    check(same && rows_right == rows, what, 0);
    free(one);
    ggml_free(ctx);
}

// a Q4_1 or Q8_0 matrix times several columns (port/patch-llama.py: Q4_1 up to four at a time,
// packed; Q8_0 four at a time): the same with any thread count, and every value the reference dot
// product of its row and column, bit for bit; every other column at the extremes of int8 (and of the
// 16-bit lanes the Q4_1 kernel sums in)
static void matrix_times_columns(enum ggml_type type, int rows, int n, int cols) {
    struct ggml_context * ctx = new_context();
    struct ggml_tensor * wf = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, n, rows);
    struct ggml_tensor * w  = ggml_new_tensor_2d(ctx, type, n, rows);
    struct ggml_tensor * v  = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, n, cols);
    fill(wf, 1.0f);
    for (int c = 0; c < cols; c++) {
        float * a = (float *) v->data + c * n;
        for (int i = 0; i < n; i++) {
            a[i] = c % 2 ? (rand() % 2 ? 1.0f : -1.0f) * (i % 7 ? 1.0f : 0.01f) : frand();
        }
    }
    ggml_quantize_chunk(type, wf->data, w->data, 0, rows, n, NULL);
    struct ggml_tensor * out = ggml_mul_mat(ctx, w, v);
    int same;
    float * one = compute_alike(ctx, out, &same);
    const enum ggml_type activations = ggml_get_type_traits_cpu(type)->vec_dot_type;
    float (*reference)(int, const void *, const void *) = type == GGML_TYPE_Q4_1 ? q4_1_dot_reference : q8_0_dot_reference;
    void * y = malloc(ggml_row_size(activations, n));
    int right = 0;
    for (int c = 0; c < cols; c++) {
        ggml_get_type_traits_cpu(activations)->from_float((float *) v->data + c * n, y, n);
        for (int r = 0; r < rows; r++) {
            right += one[c * rows + r] == reference(n, (const char *) w->data + r * ggml_row_size(type, n), y);
        }
    }
    char what[160];
    snprintf(what, sizeof what, "%d-row %s matrix of %d times %d columns: 2 and 3 threads equal 1 thread, and every "
             "value the reference dot product (%d of %d)", rows, ggml_type_name(type), n, cols, right, rows * cols);
    check(same && right == rows * cols, what, 0);
    free(y);
    free(one);
    ggml_free(ctx);
}

// SwiGLU of one row (split by columns between threads) and of several rows
static void swiglu(int n, int rows) {
    struct ggml_context * ctx = new_context();
    struct ggml_tensor * x = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, n, rows);
    struct ggml_tensor * g = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, n, rows);
    fill(x, 4.0f);
    fill(g, 1.0f);
    struct ggml_tensor * out = ggml_swiglu_split(ctx, x, g);
    double worst = 0;
    int same;
    float * one = compute_alike(ctx, out, &same);
    for (int i = 0; i < n * rows; i++) {
        const double xi = ((float *) x->data)[i], gi = ((float *) g->data)[i];
        worst = fmax(worst, fabs(one[i] - xi / (1 + exp(-xi)) * gi));
    }
    char what[160];
    snprintf(what, sizeof what, "SwiGLU of %d row(s) of %d: 2 and 3 threads equal 1 thread, and silu(x)*g within 1e-5",
             rows, n);
    check(same && worst < 1e-5, what, worst);
    free(one);
    ggml_free(ctx);
}

// flash attention of one query row over F16 K and V, n_kv keys of which the first `used` unmasked
static void attention(int n_kv, int used) {
    enum { D = 64, HEADS = 9, HEADS_KV = 3 };
    struct ggml_context * ctx = new_context();
    struct ggml_tensor * q = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, D, 1, HEADS);
    struct ggml_tensor * k = ggml_new_tensor_3d(ctx, GGML_TYPE_F16, D, n_kv, HEADS_KV);
    struct ggml_tensor * v = ggml_new_tensor_3d(ctx, GGML_TYPE_F16, D, n_kv, HEADS_KV);
    struct ggml_tensor * mask = ggml_new_tensor_2d(ctx, GGML_TYPE_F16, n_kv, 1);
    fill(q, 1.0f);
    fill(k, 1.0f);
    fill(v, 1.0f);
    for (int i = 0; i < n_kv; i++) {
        ((ggml_fp16_t *) mask->data)[i] = ggml_fp32_to_fp16(i < used ? 0.0f : -INFINITY);
    }
    const float scale = 1.0f / sqrtf(D);
    struct ggml_tensor * out = ggml_flash_attn_ext(ctx, q, k, v, mask, scale, 0.0f, 0.0f);
    double worst = 0, spread = 0;
    float * one = compute(ctx, out, 1);
    int even = 1;       // from 512 keys: the keys in use shared out evenly
    for (int nth = 2; nth <= 3; nth++) {
        memset(out->data, 0xff, ggml_nbytes(out));
        memset(cllm_attention_keys, 0, sizeof(cllm_attention_keys));
        float * many = compute(ctx, out, nth);
        for (int i = 0; i < D * HEADS; i++) {
            spread = fmax(spread, isnan(many[i]) ? INFINITY : fabs(many[i] - one[i]));
        }
        // each thread a chunk of ceil(used / nth) keys (the last one's may reach past the keys in
        // use by under nth masked ones); ggml's split took chunks of ceil(n_kv / nth)
        const int64_t chunk = (used + nth - 1) / nth;
        int64_t total = 0;
        for (int t = 0; t < nth; t++) {
            even &= n_kv < 512 || (cllm_attention_keys[t] <= chunk && cllm_attention_keys[t] >= chunk - nth);
            total += cllm_attention_keys[t];
        }
        even &= n_kv < 512 ? total == 0 : total >= used && total < used + nth;
        free(many);
    }
    // softmax(q.k * scale) . v in double over the keys in use, q rounded to F16 as ggml does
    for (int h = 0; h < HEADS; h++) {
        const int hk = h / (HEADS / HEADS_KV);
        const float * qh = (const float *) q->data + h * D;
        double s[1024], m = -INFINITY, sum = 0;
        for (int j = 0; j < used; j++) {
            const ggml_fp16_t * kj = (const ggml_fp16_t *) k->data + (hk * n_kv + j) * D;
            double dot = 0;
            for (int d = 0; d < D; d++) {
                dot += (double) ggml_fp16_to_fp32(ggml_fp32_to_fp16(qh[d])) * ggml_fp16_to_fp32(kj[d]);
            }
            s[j] = dot * scale;
            m = fmax(m, s[j]);
        }
        for (int j = 0; j < used; j++) {
            sum += s[j] = exp(s[j] - m);
        }
        for (int d = 0; d < D; d++) {
            double ref = 0;
            for (int j = 0; j < used; j++) {
                ref += s[j] / sum * ggml_fp16_to_fp32(((const ggml_fp16_t *) v->data)[(hk * n_kv + j) * D + d]);
            }
            // res is [D, heads, 1]
            worst = fmax(worst, fabs(one[h * D + d] - ref));
        }
    }
    char what[200];
    snprintf(what, sizeof what, "flash attention, one query, %d of %d F16 keys: within 1e-4 of softmax(qk)v in "
             "double, and 2 and 3 threads within 1e-5 of 1 (spread %.3g)%s", used, n_kv, spread,
             n_kv < 512 ? "" : ", each taking its share of the keys in use");
    check(worst < 1e-4 && spread < 1e-5 && even, what, worst);
    free(one);
    ggml_free(ctx);
}

int main(void) {
    srand(7);
    ggml_cpu_init();     // the F16 table the CPU backend converts with
    if (ggml_type_size(GGML_TYPE_Q4_1) != sizeof(q4_1_block) || ggml_type_size(GGML_TYPE_Q8_1) != sizeof(q8_1_block) ||
            ggml_type_size(GGML_TYPE_Q8_0) != sizeof(q8_0_block)) {
        fprintf(stderr, "ggml's Q4_1, Q8_1 or Q8_0 block is not the one this test knows\n");
        return 2;
    }
    dot_product(GGML_TYPE_Q4_1, 1536, q4_1_dot_reference);
    dot_product(GGML_TYPE_Q8_0, 576, q8_0_dot_reference);
    matrix_times_vector(576);       // 9 chunks of 64 rows upstream
    matrix_times_vector(1000);
    matrix_times_vector(49);
    matrix_times_columns(GGML_TYPE_Q4_1, 100, 576, 2);
    matrix_times_columns(GGML_TYPE_Q4_1, 100, 576, 3);
    matrix_times_columns(GGML_TYPE_Q4_1, 200, 1536, 4);
    matrix_times_columns(GGML_TYPE_Q4_1, 70, 2080, 5);     // 65 blocks: more than the 32 packed at a time
    matrix_times_columns(GGML_TYPE_Q4_1, 130, 576, 8);
    matrix_times_columns(GGML_TYPE_Q8_0, 300, 576, 4);
    matrix_times_columns(GGML_TYPE_Q8_0, 70, 2080, 6);     // four at a time, then two alone
    matrix_times_columns(GGML_TYPE_Q8_0, 130, 576, 8);
    swiglu(1536, 1);
    swiglu(1537, 1);
    swiglu(1536, 3);
    attention(256, 200);            // under 512 keys: split by heads
    attention(512, 300);            // split by keys in use
    attention(1024, 1000);
    return failures ? 1 : 0;
}
