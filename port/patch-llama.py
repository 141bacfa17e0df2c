#!/usr/bin/env python3
"""The edits cllm makes to the pinned llama.cpp before building it: port/build-llama.sh runs this on
the unpacked vendor/llama.cpp for every build from it (the kernel's, its host tools', both peers'),
so cllm and the peers it is measured against run the same ggml.

    port/patch-llama.py SRC

Each edit replaces one exact piece of text, which must be there once: a different llama.cpp stops
the build here rather than building without the edit. The first run keeps each file it edits as
FILE.orig, and every run edits from that, so changing an edit here takes effect on the next build."""
import os
import sys

# Flash attention for one query row (each generated token) splits the keys between the threads
# when the view of the KV cache is >= 512 keys long. llama.cpp pads that view to a multiple of 256
# and masks the keys past the last one in use, and ggml split the whole view evenly: with 300 keys
# in use, one thread got 256 of them and the other 44, and attention took almost as long on two
# CPUs as on one. Split the keys in use instead. Masked keys add nothing either way, so one thread
# computes the same values as before, without stepping over the masked tail. Each thread notes how
# many keys it took in cllm_attention_keys, which tests/ggml_edits.c reads to check the split.
KEYS_IN_USE = (
    "ggml/src/ggml-cpu/ops.cpp",
    [("static void ggml_compute_forward_flash_attn_ext_f16(\n",
      """// cllm (port/patch-llama.py): the keys each of the first 16 threads took in the last attention
// split by keys (for tests/ggml_edits.c)
extern "C" { int64_t cllm_attention_keys[16]; }

// cllm (port/patch-llama.py): one past the last key the one query row of dst may attend to;
// the mask is -inf past it (llama.cpp pads the KV view to a multiple of 256 keys).
static int64_t cllm_keys_in_use(const ggml_tensor * dst) {
    const ggml_tensor * k    = dst->src[1];
    const ggml_tensor * mask = dst->src[3];
    if (mask == nullptr || mask->type != GGML_TYPE_F16 || mask->ne[0] < k->ne[1]) {
        return k->ne[1];
    }
    int64_t used = 1;
    for (int64_t i2 = 0; i2 < mask->ne[2]; i2++) {
        const ggml_fp16_t * mp = (const ggml_fp16_t *) ((const char *) mask->data + i2*mask->nb[2]);
        for (int64_t j = k->ne[1]; j > used; j--) {
            if (GGML_CPU_FP16_TO_FP32(mp[j - 1]) != -INFINITY) {
                used = j;
                break;
            }
        }
    }
    return used;
}

static void ggml_compute_forward_flash_attn_ext_f16(
"""),
     ("""    if (use_split_kv_path) {
        const int64_t chunk_size = (nek1 + nth - 1) / nth;
""",
      """    if (use_split_kv_path) {
        const int64_t chunk_size = (cllm_keys_in_use(dst) + nth - 1) / nth;    // cllm: not nek1
"""),
     ("""        const int64_t ic_end   = std::min(ic_start + chunk_size, nek1);
""", """        const int64_t ic_end   = std::min(ic_start + chunk_size, nek1);
        if (ith < 16) {
            cllm_attention_keys[ith] = std::max<int64_t>(ic_end - ic_start, 0);     // cllm
        }
""")])

# Flash attention accumulated the values of F16 V in F16: for each key, each of the head's 64
# values went F16 -> F32, multiply-add, F32 -> F16 (three float operations of its own without F16C).
# Under TCG every scalar float operation is a call into softfloat, and one token's attention took
# 28 % of its decode (two CPUs, ~200 keys). Accumulate in F32, as ggml does for every other V type:
# the same sums, rounded once at the end instead of after every key.
F32_VALUES = (
    "ggml/src/ggml-cpu/ops.cpp",
    [("""        ggml_fp16_t * VKQ16 = (ggml_fp16_t *) (VKQ32 + 1*DV); // (temporary) FP16 VKQ accumulator
""", ""),
     ("""        if (v->type == GGML_TYPE_F16) {
            memset(VKQ16, 0, DV*sizeof(ggml_fp16_t));
        } else {
            memset(VKQ32, 0, DV*sizeof(float));
        }
""", """        memset(VKQ32, 0, DV*sizeof(float));     // cllm: F16 V accumulates in F32 too
"""),
     ("""                // V += v*expf(s - M)
                ggml_vec_mad_f16(DV, VKQ16, (const ggml_fp16_t *) v_data, vs);
""", """                // V += v*expf(s - M), in F32 (cllm)
                const ggml_fp16_t * vp = (const ggml_fp16_t *) v_data;
                for (int64_t d = 0; d < DV; ++d) {
                    VKQ32[d] += GGML_CPU_FP16_TO_FP32(vp[d])*vs;
                }
"""),
     ("""                    // V = V*expf(Mold - M)
                    ggml_vec_scale_f16(DV, VKQ16, ms);
""", """                    // V = V*expf(Mold - M)
                    ggml_vec_scale_f32(DV, VKQ32, ms);
"""),
     ("""        if (v->type == GGML_TYPE_F16) {
            for (int64_t d = 0; d < DV; ++d) {
                VKQ32[d] = GGML_CPU_FP16_TO_FP32(VKQ16[d]);
            }
        }

""", "")])

# The keys' dot products with the query, for F16 K, went through ggml_vec_dot_f16, which without
# SIMD sums in double: three float operations for each of a head's 64 dimensions and each key.
# Sum in F32 as ggml's SIMD builds do: two.
F32_KEYS = (
    "ggml/src/ggml-cpu/ops.cpp",
    [("""            const char * k_data = (const char *) k->data + ( ic*nbk1 + ik2*nbk2 + ik3*nbk3);
            kq_vec_dot(DK, &s, 0, k_data, 0, Q_q, 0, 1);
""", """            const char * k_data = (const char *) k->data + ( ic*nbk1 + ik2*nbk2 + ik3*nbk3);
            if (k->type == GGML_TYPE_F16) {     // cllm: summed in F32
                const ggml_fp16_t * kp = (const ggml_fp16_t *) k_data;
                s = 0.0f;
                for (int64_t d = 0; d < DK; ++d) {
                    s += GGML_CPU_FP16_TO_FP32(kp[d])*GGML_CPU_FP16_TO_FP32(Q_q[d]);
                }
            } else {
                kq_vec_dot(DK, &s, 0, k_data, 0, Q_q, 0, 1);
            }
""")])

# ggml's generic Q4_1 dot product (most of a token's time: every weight matrix of SmolLM2 is Q4_1)
# loaded a byte at a time: 48 loads for 32 weights, and under TCG every load is a software TLB lookup.
# Load 32 bits at a time, 12 loads, and take the bytes apart in registers. Integer sums: the same
# result in any order.
Q4_1_WORDS = (
    "ggml/src/ggml-cpu/quants.c",
    [("""    for (; ib < nb; ++ib) {
        int sumi0 = 0;
        int sumi1 = 0;

        for (int j = 0; j < qk/2; ++j) {
            const int v0 = (x[ib].qs[j] & 0x0F);
            const int v1 = (x[ib].qs[j] >>   4);

            sumi0 += (v0 * y[ib].qs[j]);
            sumi1 += (v1 * y[ib].qs[j + qk/2]);
        }

        int sumi = sumi0 + sumi1;
        sumf += (GGML_CPU_FP16_TO_FP32(x[ib].d)*GGML_CPU_FP16_TO_FP32(y[ib].d))*sumi + GGML_CPU_FP16_TO_FP32(x[ib].m)*GGML_CPU_FP16_TO_FP32(y[ib].s);
""", """    for (; ib < nb; ++ib) {
        int sumi = 0;

        // cllm: four weights' bytes and four activations a load
        for (int j = 0; j < qk/2; j += 4) {
            uint32_t q, a;
            memcpy(&q, x[ib].qs + j, 4);
            memcpy(&a, y[ib].qs + j, 4);
            sumi += (int) (q & 0x0F)*(int8_t) a + (int) ((q >> 8) & 0x0F)*(int8_t) (a >> 8) +
                    (int) ((q >> 16) & 0x0F)*(int8_t) (a >> 16) + (int) ((q >> 24) & 0x0F)*(int8_t) (a >> 24);
            memcpy(&a, y[ib].qs + j + qk/2, 4);
            q >>= 4;
            sumi += (int) (q & 0x0F)*(int8_t) a + (int) ((q >> 8) & 0x0F)*(int8_t) (a >> 8) +
                    (int) ((q >> 16) & 0x0F)*(int8_t) (a >> 16) + (int) ((q >> 24) & 0x0F)*(int8_t) (a >> 24);
        }

        sumf += (GGML_CPU_FP16_TO_FP32(x[ib].d)*GGML_CPU_FP16_TO_FP32(y[ib].d))*sumi + GGML_CPU_FP16_TO_FP32(x[ib].m)*GGML_CPU_FP16_TO_FP32(y[ib].s);
""")])

# The same for Q8_0 by Q8_0 (SmolLM2's output matrix, a fifth of its weights), in ggml's x86 file, whose
# scalar loop is all an SSE2 build has: 16 loads for 32 weights instead of 64.
Q8_0_WORDS = (
    "ggml/src/ggml-cpu/arch/x86/quants.c",
    [("""    for (; ib < nb; ++ib) {
        int sumi = 0;

        for (int j = 0; j < qk; j++) {
            sumi += x[ib].qs[j]*y[ib].qs[j];
        }
""", """    for (; ib < nb; ++ib) {
        int sumi = 0;

        // cllm: four weights and four activations a load
        for (int j = 0; j < qk; j += 4) {
            uint32_t w, a;
            memcpy(&w, x[ib].qs + j, 4);
            memcpy(&a, y[ib].qs + j, 4);
            sumi += (int8_t) w*(int8_t) a + (int8_t) (w >> 8)*(int8_t) (a >> 8) +
                    (int8_t) (w >> 16)*(int8_t) (a >> 16) + (int8_t) (w >> 24)*(int8_t) (a >> 24);
        }
""")])

# Two columns or more (a batch's tokens: every stream's next token, or a prompt's) went through the
# Q4_1 dot product one at a time, each block's weights loaded and taken apart again for every column.
# Under TCG what costs is guest memory accesses (each a software TLB lookup, with the registers
# written since the last one stored back first) and float operations (softfloat, per lane); register
# arithmetic is cheap. Here one pass takes four columns: their activations of one position sit in one
# word (a byte each, plus 128; packed once per chunk of rows, which for Q4_1 are 64 rows, not 16), one
# 32-bit multiply by a weight (0..15) takes two columns in its 16-bit halves (16 products of at most
# 15*255 fit in one), and the 128s come off as 128 times the block's weight sum. The inner loop is
# i386 assembly: in C, GCC kept a block's nibbles in stack slots (a store and a load each) for want
# of registers; in seven it needs none. The four float expressions run as SSE packed operations;
# two columns use two byte lanes, half the multiplies and scalar floats. Integer sums are exact and
# packed float operations round each lane as the scalar ones do, in the same order, so every value is
# bit for bit what ggml_vec_dot_q4_1_q8_1 gives the column alone: a stream's tokens do not depend on
# what it is batched with. `make bench-matmul`: per column 1.2x cheaper at two columns, 1.3x at three,
# 1.7x at four or more. Only in the SSE2 builds (i386); builds with AVX keep ggml's own kernels.
# Q8_0 (SmolLM2's output matrix) times four columns goes the same way in C: the columns' activation
# words side by side, each weight word loaded and its block's scale looked up once for the four.
# A signed 8-bit weight does not fit 16-bit lanes, and four sums, the weight word and two pointers
# want more than seven registers, so only the loads and the float side are shared: 1.2x cheaper
# per column. Bit for bit ggml_vec_dot_q8_0_q8_0 of each column, as above.
Q4_1_COLUMNS = [(
    "ggml/src/ggml-cpu/quants.c",
    [("""void ggml_vec_dot_mxfp4_q8_0_generic(""",
      """#if defined(__i386__) && defined(__SSE2__) && !defined(__AVX__)
#include <emmintrin.h>

// cllm (port/patch-llama.py): four columns of Q8_1 activations of one block, packed
struct cllm_q8_1x4 {
    uint32_t u[QK8_1];                  // byte c of u[j]: column c's activation j plus 128
    float d[4] __attribute__((aligned(16)));    // each column's d and s
    float s[4];
};

// one weight (the low nibble of qw, which moves on to the next byte) times u[k]: its columns 0 and 2
// into a02's 16-bit halves; with four columns, 1 and 3 into a13's
#define CLLM_X2_WEIGHT(k) \\
    "movl %[qw], %[w]\\n\\tandl $15, %[w]\\n\\tshrl $8, %[qw]\\n\\t" \\
    "movl (" #k ")*4(%[u]), %[t]\\n\\tandl $0x00FF00FF, %[t]\\n\\timull %[w], %[t]\\n\\taddl %[t], %[a02]\\n\\t"
#define CLLM_X4_WEIGHT(k) \\
    "movl %[qw], %[w]\\n\\tandl $15, %[w]\\n\\tshrl $8, %[qw]\\n\\t" \\
    "movl (" #k ")*4(%[u]), %[t]\\n\\tmovl %[t], %[t2]\\n\\tandl $0x00FF00FF, %[t]\\n\\tshrl $8, %[t2]\\n\\t" \\
    "andl $0x00FF00FF, %[t2]\\n\\timull %[w], %[t]\\n\\timull %[w], %[t2]\\n\\taddl %[t], %[a02]\\n\\taddl %[t2], %[a13]\\n\\t"
// the 16 weights of one half of a block: the low nibbles of words q0..q3 (u[0..15]), or with
// shift "shrl $4, %[qw]" their high ones (u[16..31])
#define CLLM_WORD(X, i, shift) \\
    "movl %[q" #i "], %[qw]\\n\\t" shift X(4*i) X(4*i + 1) X(4*i + 2) X(4*i + 3)
#define CLLM_HALF(X, shift) \\
    CLLM_WORD(X, 0, shift) CLLM_WORD(X, 1, shift) CLLM_WORD(X, 2, shift) CLLM_WORD(X, 3, shift)

// 128 times the sum of a block's 32 weights: in byte lanes, then 16-bit ones
static inline int cllm_q4_1_offset(const uint32_t q[4]) {
    uint32_t ws = 0;
    for (int i = 0; i < 4; ++i) {
        ws += (q[i] & 0x0F0F0F0F) + ((q[i] >> 4) & 0x0F0F0F0F);
    }
    ws = (ws & 0x00FF00FF) + ((ws >> 8) & 0x00FF00FF);
    return 128*(int) ((ws & 0xFFFF) + (ws >> 16));
}

// rows [r0, r1) of a Q4_1 matrix (rows bx bytes apart) times ncols (2..4) Q8_1 columns (by bytes
// apart), into dst[c*dst_stride + r]. Two columns take bytes 0 and 2 of the packed words and only
// a02.
void cllm_mul_mat_q4_1_x4(int n, const void * GGML_RESTRICT vx, size_t bx, int64_t r0, int64_t r1,
                          const void * GGML_RESTRICT vy, size_t by, int ncols, float * GGML_RESTRICT dst, size_t dst_stride);
void cllm_mul_mat_q4_1_x4(int n, const void * GGML_RESTRICT vx, size_t bx, int64_t r0, int64_t r1,
                          const void * GGML_RESTRICT vy, size_t by, int ncols, float * GGML_RESTRICT dst, size_t dst_stride) {
    enum { PACKED = 32 };   // blocks of the columns packed at a time: 5 KiB of stack
    struct cllm_q8_1x4 y4[PACKED];
    const int nb = n / QK8_1;
    const int two = ncols == 2;

    for (int b0 = 0; b0 < nb; b0 += PACKED) {
        const int bn = nb - b0 < PACKED ? nb - b0 : PACKED;
        for (int ib = 0; ib < bn; ++ib) {
            const block_q8_1 * y[4];    // past ncols, column 0 again: zeros would take TCG's slow float path
            for (int c = 0; c < 4; ++c) {
                y[c] = (const block_q8_1 *) ((const char *) vy + (c < ncols ? c : 0)*by) + b0 + ib;
                y4[ib].d[c] = GGML_CPU_FP16_TO_FP32(y[c]->d);
                y4[ib].s[c] = GGML_CPU_FP16_TO_FP32(y[c]->s);
            }
            const int8_t * a[4];    // the columns of bytes 0..3 (two columns: bytes 0 and 2)
            for (int c = 0; c < 4; ++c) {
                a[c] = y[two ? (c & 1 ? 0 : c/2) : c]->qs;
            }
            for (int j = 0; j < QK8_1; ++j) {   // x ^ 0x80 == x + 128
                y4[ib].u[j] = ((uint32_t) (uint8_t) a[0][j] | (uint32_t) (uint8_t) a[1][j] << 8 |
                               (uint32_t) (uint8_t) a[2][j] << 16 | (uint32_t) (uint8_t) a[3][j] << 24) ^ 0x80808080;
            }
        }
        for (int64_t r = r0; r < r1; ++r) {
            const block_q4_1 * x = (const block_q4_1 *) ((const char *) vx + r*bx) + b0;
            float acc[4] __attribute__((aligned(16))) = { 0.0f, 0.0f, 0.0f, 0.0f };
            for (int c = 0; c < ncols && b0 > 0; ++c) {
                acc[c] = dst[c*dst_stride + r];
            }
            if (two) {
                float sumf0 = acc[0], sumf1 = acc[1];
                for (int ib = 0; ib < bn; ++ib) {
                    uint32_t q[4];
                    memcpy(q, x[ib].qs, sizeof q);
                    uint32_t lo = 0, hi = 0, qw, w, t;
                    __asm__ (CLLM_HALF(CLLM_X2_WEIGHT, "")
                        : [a02] "+r" (lo), [qw] "=&r" (qw), [w] "=&r" (w), [t] "=&r" (t)
                        : [u] "r" (y4[ib].u), [q0] "m" (q[0]), [q1] "m" (q[1]), [q2] "m" (q[2]), [q3] "m" (q[3])
                        : "cc");
                    __asm__ (CLLM_HALF(CLLM_X2_WEIGHT, "shrl $4, %[qw]\\n\\t")
                        : [a02] "+r" (hi), [qw] "=&r" (qw), [w] "=&r" (w), [t] "=&r" (t)
                        : [u] "r" (y4[ib].u + 16), [q0] "m" (q[0]), [q1] "m" (q[1]), [q2] "m" (q[2]), [q3] "m" (q[3])
                        : "cc");
                    const int offset = cllm_q4_1_offset(q);
                    const int sumi0 = (int) ((lo & 0xFFFF) + (hi & 0xFFFF)) - offset;
                    const int sumi1 = (int) ((lo >> 16) + (hi >> 16)) - offset;
                    // scalar: packed SSE float operations cost every lane's work, used or not
                    const float xd = GGML_CPU_FP16_TO_FP32(x[ib].d), xm = GGML_CPU_FP16_TO_FP32(x[ib].m);
                    sumf0 += (xd*y4[ib].d[0])*sumi0 + xm*y4[ib].s[0];
                    sumf1 += (xd*y4[ib].d[1])*sumi1 + xm*y4[ib].s[1];
                }
                acc[0] = sumf0;
                acc[1] = sumf1;
            } else {
                __m128 sumf = _mm_load_ps(acc);
                for (int ib = 0; ib < bn; ++ib) {
                    uint32_t q[4];
                    memcpy(q, x[ib].qs, sizeof q);
                    uint32_t lo02 = 0, lo13 = 0, hi02 = 0, hi13 = 0, qw, w, t, t2;
                    __asm__ (CLLM_HALF(CLLM_X4_WEIGHT, "")
                        : [a02] "+r" (lo02), [a13] "+r" (lo13), [qw] "=&r" (qw), [w] "=&r" (w), [t] "=&r" (t), [t2] "=&r" (t2)
                        : [u] "r" (y4[ib].u), [q0] "m" (q[0]), [q1] "m" (q[1]), [q2] "m" (q[2]), [q3] "m" (q[3])
                        : "cc");
                    __asm__ (CLLM_HALF(CLLM_X4_WEIGHT, "shrl $4, %[qw]\\n\\t")
                        : [a02] "+r" (hi02), [a13] "+r" (hi13), [qw] "=&r" (qw), [w] "=&r" (w), [t] "=&r" (t), [t2] "=&r" (t2)
                        : [u] "r" (y4[ib].u + 16), [q0] "m" (q[0]), [q1] "m" (q[1]), [q2] "m" (q[2]), [q3] "m" (q[3])
                        : "cc");
                    const int offset = cllm_q4_1_offset(q);
                    int32_t sumi[4] __attribute__((aligned(16))) = {
                        (int) ((lo02 & 0xFFFF) + (hi02 & 0xFFFF)) - offset, (int) ((lo13 & 0xFFFF) + (hi13 & 0xFFFF)) - offset,
                        (int) ((lo02 >> 16) + (hi02 >> 16)) - offset, (int) ((lo13 >> 16) + (hi13 >> 16)) - offset,
                    };
                    // sumf += (x.d*y.d)*sumi + x.m*y.s, for each column
                    const __m128 xd = _mm_set1_ps(GGML_CPU_FP16_TO_FP32(x[ib].d));
                    const __m128 xm = _mm_set1_ps(GGML_CPU_FP16_TO_FP32(x[ib].m));
                    const __m128 si = _mm_cvtepi32_ps(_mm_load_si128((const __m128i *) sumi));
                    sumf = _mm_add_ps(sumf, _mm_add_ps(_mm_mul_ps(_mm_mul_ps(xd, _mm_load_ps(y4[ib].d)), si),
                                                       _mm_mul_ps(xm, _mm_load_ps(y4[ib].s))));
                }
                _mm_store_ps(acc, sumf);
            }
            for (int c = 0; c < ncols; ++c) {
                dst[c*dst_stride + r] = acc[c];
            }
        }
    }
}

// cllm (port/patch-llama.py): four columns of Q8_0 activations of one block, word k of each column
// side by side, so that one pointer reaches all four
struct cllm_q8_0x4 {
    uint32_t u[QK8_0/4][4];
    float d[4];
};

// the four signed bytes of w times those of a, summed (the Q8_0 dot product's words)
static inline int cllm_dot4(uint32_t w, uint32_t a) {
    return (int8_t) w*(int8_t) a + (int8_t) (w >> 8)*(int8_t) (a >> 8) +
           (int8_t) (w >> 16)*(int8_t) (a >> 16) + (int8_t) (w >> 24)*(int8_t) (a >> 24);
}

// rows [r0, r1) of a Q8_0 matrix (rows bx bytes apart) times four Q8_0 columns (by bytes apart),
// into dst[c*dst_stride + r]: each weight word loaded once for the four
void cllm_mul_mat_q8_0_x4(int n, const void * GGML_RESTRICT vx, size_t bx, int64_t r0, int64_t r1,
                          const void * GGML_RESTRICT vy, size_t by, float * GGML_RESTRICT dst, size_t dst_stride);
void cllm_mul_mat_q8_0_x4(int n, const void * GGML_RESTRICT vx, size_t bx, int64_t r0, int64_t r1,
                          const void * GGML_RESTRICT vy, size_t by, float * GGML_RESTRICT dst, size_t dst_stride) {
    enum { PACKED = 32 };   // blocks of the columns packed at a time: 4.5 KiB of stack
    struct cllm_q8_0x4 y4[PACKED];
    const int nb = n / QK8_0;

    for (int b0 = 0; b0 < nb; b0 += PACKED) {
        const int bn = nb - b0 < PACKED ? nb - b0 : PACKED;
        for (int ib = 0; ib < bn; ++ib) {
            for (int c = 0; c < 4; ++c) {
                const block_q8_0 * y = (const block_q8_0 *) ((const char *) vy + c*by) + b0 + ib;
                y4[ib].d[c] = GGML_CPU_FP16_TO_FP32(y->d);
                for (int k = 0; k < QK8_0/4; ++k) {
                    memcpy(&y4[ib].u[k][c], y->qs + 4*k, 4);
                }
            }
        }
        for (int64_t r = r0; r < r1; ++r) {
            const block_q8_0 * x = (const block_q8_0 *) ((const char *) vx + r*bx) + b0;
            float f0 = 0.0f, f1 = 0.0f, f2 = 0.0f, f3 = 0.0f;
            if (b0 > 0) {
                f0 = dst[r], f1 = dst[dst_stride + r], f2 = dst[2*dst_stride + r], f3 = dst[3*dst_stride + r];
            }
            for (int ib = 0; ib < bn; ++ib) {
                int i0 = 0, i1 = 0, i2 = 0, i3 = 0;
                for (int k = 0; k < QK8_0/4; ++k) {
                    uint32_t w;
                    memcpy(&w, x[ib].qs + 4*k, 4);
                    i0 += cllm_dot4(w, y4[ib].u[k][0]);
                    i1 += cllm_dot4(w, y4[ib].u[k][1]);
                    i2 += cllm_dot4(w, y4[ib].u[k][2]);
                    i3 += cllm_dot4(w, y4[ib].u[k][3]);
                }
                const float xd = GGML_CPU_FP16_TO_FP32(x[ib].d);   // sumf += sumi*(x.d*y.d), for each column
                f0 += i0*(xd*y4[ib].d[0]);
                f1 += i1*(xd*y4[ib].d[1]);
                f2 += i2*(xd*y4[ib].d[2]);
                f3 += i3*(xd*y4[ib].d[3]);
            }
            dst[r] = f0, dst[dst_stride + r] = f1, dst[2*dst_stride + r] = f2, dst[3*dst_stride + r] = f3;
        }
    }
}
#endif

void ggml_vec_dot_mxfp4_q8_0_generic(""")]),
    ("ggml/src/ggml-cpu/ggml-cpu.c",
     [("""static void ggml_compute_forward_mul_mat_one_chunk(
""", """// cllm (port/patch-llama.py): quants.c
void cllm_mul_mat_q4_1_x4(int n, const void * GGML_RESTRICT vx, size_t bx, int64_t r0, int64_t r1,
                          const void * GGML_RESTRICT vy, size_t by, int ncols, float * GGML_RESTRICT dst, size_t dst_stride);
void cllm_mul_mat_q8_0_x4(int n, const void * GGML_RESTRICT vx, size_t bx, int64_t r0, int64_t r1,
                          const void * GGML_RESTRICT vy, size_t by, float * GGML_RESTRICT dst, size_t dst_stride);

static void ggml_compute_forward_mul_mat_one_chunk(
"""),
      ("""    const void * wdata = (src1->type == vec_dot_type) ? src1->data : params->wdata;
    const size_t row_size = ggml_row_size(vec_dot_type, ne10);

    assert(ne12 % ne02 == 0);
""", """    const void * wdata = (src1->type == vec_dot_type) ? src1->data : params->wdata;
    const size_t row_size = ggml_row_size(vec_dot_type, ne10);

#if defined(__i386__) && defined(__SSE2__) && !defined(__AVX__)
    // cllm: Q4_1 times two columns or more, up to four at a time
    if (type == GGML_TYPE_Q4_1 && vec_dot_type == GGML_TYPE_Q8_1 && src1->type != vec_dot_type &&
        ir1_end - ir1_start >= 2 && ne02 == 1 && ne03 == 1 && ne12 == 1 && ne13 == 1) {
        for (int64_t ir1 = ir1_start; ir1 < ir1_end; ir1 += 4) {
            const int ncols = (int) MIN(4, ir1_end - ir1);
            float * dst_col = (float *) ((char *) dst->data + ir1*nb1);
            if (ncols == 1) {
                for (int64_t ir0 = ir0_start; ir0 < ir0_end; ++ir0) {
                    vec_dot(ne00, &dst_col[ir0], 0, (const char *) src0->data + ir0*nb01, 0,
                            (const char *) wdata + ir1*row_size, 0, 1);
                }
            } else {
                cllm_mul_mat_q4_1_x4(ne00, src0->data, nb01, ir0_start, ir0_end, (const char *) wdata + ir1*row_size,
                                     row_size, ncols, dst_col, nb1/sizeof(float));
            }
        }
        return;
    }
    // cllm: Q8_0 (SmolLM2's output matrix) times four columns or more, four at a time
    if (type == GGML_TYPE_Q8_0 && vec_dot_type == GGML_TYPE_Q8_0 && src1->type != vec_dot_type &&
        ir1_end - ir1_start >= 4 && ne02 == 1 && ne03 == 1 && ne12 == 1 && ne13 == 1) {
        int64_t ir1 = ir1_start;
        for (; ir1 + 4 <= ir1_end; ir1 += 4) {
            cllm_mul_mat_q8_0_x4(ne00, src0->data, nb01, ir0_start, ir0_end, (const char *) wdata + ir1*row_size,
                                 row_size, (float *) ((char *) dst->data + ir1*nb1), nb1/sizeof(float));
        }
        for (; ir1 < ir1_end; ++ir1) {
            for (int64_t ir0 = ir0_start; ir0 < ir0_end; ++ir0) {
                vec_dot(ne00, (float *) ((char *) dst->data + ir1*nb1) + ir0, 0, (const char *) src0->data + ir0*nb01, 0,
                        (const char *) wdata + ir1*row_size, 0, 1);
            }
        }
        return;
    }
#endif

    assert(ne12 % ne02 == 0);
"""),
      ("""    // We need to step up the size if it's small
    if (nr0 == 1 || nr1 == 1) {
        chunk_size = 64;
    }
""", """    // We need to step up the size if it's small
    if (nr0 == 1 || nr1 == 1) {
        chunk_size = 64;
    }
#if defined(__i386__) && defined(__SSE2__) && !defined(__AVX__)
    if (src0->type == GGML_TYPE_Q4_1 || src0->type == GGML_TYPE_Q8_0) {
        chunk_size = 64;    // cllm: cllm_mul_mat_q4_1_x4 and _q8_0_x4 pack their columns once a chunk
    }
#endif
""")])]

# SwiGLU (the feed-forward's gate) split its rows between the threads: for one token, one row, so
# thread 0 computed all of it while the others waited. With fewer rows than threads, split each row's
# columns instead (each value is computed alone either way).
GLU_COLUMNS = (
    "ggml/src/ggml-cpu/ops.cpp",
    [("""    // rows per thread
    const int dr = (nr + nth - 1)/nth;

    // row range for this thread
    const int ir0 = dr*ith;
    const int ir1 = MIN(ir0 + dr, nr);

    for (int i1 = ir0; i1 < ir1; i1++) {
        float * src0_p = (float *) (src0_d + i1*src0_o);
        float * src1_p = (float *) (src1_d + i1*src1_o);

        if (!src1) {
            src0_p += swapped ? nc : 0;
            src1_p += swapped ? 0 : nc;
        }

        ggml_vec_swiglu_f32(nc, (float *) ((char *) dst->data + i1*(dst->nb[1])), src0_p, src1_p);

#ifndef NDEBUG
        for (int k = 0; k < nc; k++) {
""", """    // rows per thread; cllm: with fewer rows than threads, every row and a share of its columns
    const bool by_columns = nr < nth;
    const int dr = by_columns ? nr : (nr + nth - 1)/nth;

    // row range for this thread
    const int ir0 = by_columns ? 0 : dr*ith;
    const int ir1 = MIN(ir0 + dr, nr);

    // column range for this thread: starting at a multiple of 16, so that each value goes through
    // the same (SIMD or scalar) code as when one thread computes the row
    const int dc  = by_columns ? ((nc + nth - 1)/nth + 15) & ~15 : nc;
    const int ic0 = MIN(by_columns ? dc*ith : 0, nc);
    const int ic1 = MIN(ic0 + dc, nc);

    for (int i1 = ir0; i1 < ir1; i1++) {
        float * src0_p = (float *) (src0_d + i1*src0_o);
        float * src1_p = (float *) (src1_d + i1*src1_o);

        if (!src1) {
            src0_p += swapped ? nc : 0;
            src1_p += swapped ? 0 : nc;
        }

        ggml_vec_swiglu_f32(ic1 - ic0, (float *) ((char *) dst->data + i1*(dst->nb[1])) + ic0, src0_p + ic0, src1_p + ic0);

#ifndef NDEBUG
        for (int k = ic0; k < ic1; k++) {
""")])

# A matrix times one vector (each generated token) went to the threads in chunks of 64 rows: a
# 576-row matrix (SmolLM2's attention and feed-forward outputs) made 9 chunks, 5 for one thread and 4
# for the other, which waited. Round the count of chunks up to a multiple of the threads'.
EVEN_CHUNKS = (
    "ggml/src/ggml-cpu/ggml-cpu.c",
    [("""        nchunk0 = nr0 > nr1 ? nth : 1; // parallelize by src0 rows
        nchunk1 = nr0 > nr1 ? 1 : nth; // parallelize by src1 rows
    }
""", """        nchunk0 = nr0 > nr1 ? nth : 1; // parallelize by src0 rows
        nchunk1 = nr0 > nr1 ? 1 : nth; // parallelize by src1 rows
    }
    if (nchunk1 == 1 && nchunk0 % nth != 0) {      // cllm: as many chunks for each thread
        nchunk0 += nth - nchunk0 % nth;
    }
""")])

# ggml's RPC server (the kernel's rpc=, modules/llm/rpc.cpp) and client (peer-same's llama-server
# --rpc): the protocol's sizes are 8 bytes, but both ends sent a size_t, 4 bytes on i386. And what a
# client sends must never abort the server (a kernel panic here): sizes that do not fit a size_t,
# tensors outside their buffer, reads and writes past a tensor, graphs with missing or repeated
# nodes are refused, and the connection is closed, as upstream does for the checks it has.
RPC = (
    "ggml/src/ggml-rpc/ggml-rpc.cpp",
    [("""static bool send_msg(socket_ptr sock, const void * msg, size_t msg_size) {
    if (!sock->send_data(&msg_size, sizeof(msg_size))) {""",
      """static bool send_msg(socket_ptr sock, const void * msg, size_t msg_size) {
    uint64_t size64 = msg_size;     // cllm: 8 bytes on the wire, whatever size_t is
    if (!sock->send_data(&size64, sizeof(size64))) {"""),
     ("""    if (!sock->send_data(&input_size, sizeof(input_size))) {""",
      """    uint64_t size64 = input_size;   // cllm: 8 bytes on the wire, whatever size_t is
    if (!sock->send_data(&size64, sizeof(size64))) {"""),
     ("""    try {
        input.resize(size);
    } catch (const std::bad_alloc & e) {""",
      """    try {
        if (size > (uint64_t) SIZE_MAX / 2) {   // cllm: i386's vector cannot hold it
            throw std::bad_alloc();
        }
        input.resize(size);
    } catch (const std::exception & e) {"""),
     ("""    ggml_backend_buffer_t buffer = ggml_backend_buft_alloc_buffer(buft, request.size);""",
      """    // cllm: a size past size_t is refused, not cut to its low bits
    ggml_backend_buffer_t buffer = request.size <= SIZE_MAX ? ggml_backend_buft_alloc_buffer(buft, (size_t) request.size) : nullptr;"""),
     ("""ggml_tensor * rpc_server::deserialize_tensor(struct ggml_context * ctx, const rpc_tensor * tensor) {
    // Validate tensor type before using it
    if (tensor->type >= GGML_TYPE_COUNT) {
        GGML_LOG_ERROR("[%s] invalid tensor type received: %u\\n", __func__, tensor->type);
        return nullptr;
    }
""", """// cllm: the bytes a tensor spans, as ggml_nbytes counts them but in 64 bits, or UINT64_MAX when its
// shape is one ggml asserts against or its size does not fit a size_t (i386's wraps)
static uint64_t cllm_tensor_span(const rpc_tensor * t) {
    const uint64_t blck = ggml_blck_size((ggml_type) t->type), size = ggml_type_size((ggml_type) t->type);
    uint64_t n = 1, span = 0, step;
    for (int i = 0; i < GGML_MAX_DIMS; i++) {
        if (__builtin_mul_overflow(n, (uint64_t) t->ne[i], &n) || n > (uint64_t) INT64_MAX) {
            return UINT64_MAX;
        }
    }
    if (t->ne[0] % blck != 0) {
        return UINT64_MAX;
    }
    if (n == 0) {
        return 0;
    }
    span = blck == 1 ? size : 0;
    for (int i = 0; i < GGML_MAX_DIMS; i++) {
        uint64_t count = blck != 1 && i == 0 ? t->ne[0] / blck : t->ne[i] - 1;
        if (__builtin_mul_overflow(count, (uint64_t) t->nb[i], &step) || __builtin_add_overflow(span, step, &span)) {
            return UINT64_MAX;
        }
    }
    return span <= SIZE_MAX / 2 ? span : UINT64_MAX;
}

ggml_tensor * rpc_server::deserialize_tensor(struct ggml_context * ctx, const rpc_tensor * tensor) {
    // Validate tensor type before using it
    if (tensor->type >= GGML_TYPE_COUNT || tensor->op >= GGML_OP_COUNT) {
        GGML_LOG_ERROR("[%s] invalid tensor type received: %u\\n", __func__, tensor->type);
        return nullptr;
    }
"""),
     ("""    ggml_tensor * result = ggml_new_tensor_4d(ctx, (ggml_type) tensor->type,""",
      """    if (cllm_tensor_span(tensor) == UINT64_MAX) {
        GGML_LOG_ERROR("[%s] tensor shape out of range\\n", __func__);
        return nullptr;
    }
    ggml_tensor * result = ggml_new_tensor_4d(ctx, (ggml_type) tensor->type,"""),
     ("""        GGML_ASSERT(tensor->data + tensor_size >= tensor->data); // check for overflow
        GGML_ASSERT(tensor->data >= buffer_start && tensor->data + tensor_size <= buffer_start + buffer_size);""",
      """        if (tensor->data + tensor_size < tensor->data ||    // cllm: refused, not asserted
            tensor->data < buffer_start || tensor->data + tensor_size > buffer_start + buffer_size) {
            GGML_LOG_ERROR("[%s] tensor data out of its buffer\\n", __func__);
            return nullptr;
        }"""),
     ("""        if (in_tensor->data + offset < p0 || in_tensor->data + offset >= p1 || size > (p1 - in_tensor->data - offset)) {""",
      """        if (in_tensor->data + offset < p0 || in_tensor->data + offset >= p1 || size > (p1 - in_tensor->data - offset) ||
            offset + size > ggml_nbytes(tensor)) {      // cllm: ggml_backend_tensor_set asserts it"""),
     ("""            request.size > (p1 - request.tensor.data - request.offset)) {
                GGML_LOG_ERROR("[%s] requested tensor region (data=0x%" PRIx64 ", offset=%" PRIu64 ", size=%" PRIu64 ") out of buffer bounds [0x%zx, 0x%zx)\\n",
                               __func__, request.tensor.data, request.offset, request.size, p0, p1);
                return false;
        }
    }

    response.resize(request.size, 0);""",
      """            request.size > (p1 - request.tensor.data - request.offset) ||
            request.offset + request.size > ggml_nbytes(tensor)) {  // cllm: ggml_backend_tensor_get asserts it
                GGML_LOG_ERROR("[%s] requested tensor region (data=0x%" PRIx64 ", offset=%" PRIu64 ", size=%" PRIu64 ") out of buffer bounds [0x%zx, 0x%zx)\\n",
                               __func__, request.tensor.data, request.offset, request.size, p0, p1);
                return false;
        }
    }

    response.resize(request.size, 0);"""),
     ("""    for (uint32_t i = 0; i < n_nodes; i++) {
        memcpy(dest + i * sizeof(uint64_t), &cgraph->nodes[i], sizeof(uint64_t));
    }""",
      """    for (uint32_t i = 0; i < n_nodes; i++) {
        uint64_t id = reinterpret_cast<uint64_t>(cgraph->nodes[i]);    // cllm: 8 bytes of one pointer, not two
        memcpy(dest + i * sizeof(uint64_t), &id, sizeof(uint64_t));
    }"""),
     ("""    if (input.size() < 2*sizeof(uint32_t) + n_nodes*sizeof(uint64_t) + sizeof(uint32_t)) {""",
      """    if (input.size() < 2*sizeof(uint32_t) + (uint64_t) n_nodes*sizeof(uint64_t) + sizeof(uint32_t)) {  // cllm: 64 bits"""),
     ("""    if (input.size() < 2*sizeof(uint32_t) + n_nodes*sizeof(uint64_t) + sizeof(uint32_t) + n_tensors*sizeof(rpc_tensor)) {""",
      """    if (input.size() < 2*sizeof(uint32_t) + n_nodes*sizeof(uint64_t) + sizeof(uint32_t) + (uint64_t) n_tensors*sizeof(rpc_tensor)) {"""),
     ("""    size_t buf_size = ggml_tensor_overhead()*(n_nodes + n_tensors) + ggml_graph_overhead_custom(n_nodes, false);""",
      """    if ((uint64_t) ggml_tensor_overhead()*((uint64_t) n_nodes + n_tensors) > SIZE_MAX / 4) {   // cllm: i386
        return false;
    }
    size_t buf_size = ggml_tensor_overhead()*(n_nodes + n_tensors) + ggml_graph_overhead_custom(n_nodes, false);"""),
     ("""        if (graph->nodes[i] == nullptr && id != 0) {""",
      """        if (graph->nodes[i] == nullptr) {   // cllm: a null node (id 0) too: computing it would crash"""),
     ("""            const size_t hash_pos = ggml_hash_insert(&graph->visited_hash_set, graph->nodes[i]);
""", """            const size_t hash_pos = ggml_hash_insert(&graph->visited_hash_set, graph->nodes[i]);
            if (hash_pos >= graph->visited_hash_set.size) {     // cllm: a node given twice
                return false;
            }
"""),
     ("""    ggml_status status = ggml_backend_graph_compute(backends[device], graph);
    GGML_ASSERT(status == GGML_STATUS_SUCCESS && "Unsuccessful graph computations are not supported with RPC");
    stored_graphs[device].graph = graph;""",
      """    for (uint32_t i = 0; i < n_nodes; i++) {   // cllm: a node computed without memory, or from none, would crash
        const ggml_tensor * node = graph->nodes[i];
        if (node->op == GGML_OP_NONE || node->op == GGML_OP_RESHAPE || node->op == GGML_OP_VIEW ||
            node->op == GGML_OP_PERMUTE || node->op == GGML_OP_TRANSPOSE) {
            continue;
        }
        if (node->data == nullptr) {
            return false;
        }
        for (int j = 0; j < GGML_MAX_SRC; j++) {
            if (node->src[j] != nullptr && node->src[j]->data == nullptr) {
                return false;
            }
        }
    }
    ggml_status status = ggml_backend_graph_compute(backends[device], graph);
    GGML_ASSERT(status == GGML_STATUS_SUCCESS && "Unsuccessful graph computations are not supported with RPC");
    stored_graphs[device].graph = graph;""")])

EDITS = [KEYS_IN_USE, F32_VALUES, F32_KEYS, GLU_COLUMNS, EVEN_CHUNKS, Q4_1_WORDS, Q8_0_WORDS, *Q4_1_COLUMNS, RPC]


def main(src):
    by_file = {}
    for path, replacements in EDITS:
        by_file.setdefault(path, []).extend(replacements)
    for path, replacements in by_file.items():
        path = os.path.join(src, path)
        if not os.path.exists(path + ".orig"):
            os.replace(path, path + ".orig")
        with open(path + ".orig") as f:
            text = f.read()
        for old, new in replacements:
            if text.count(old) != 1:
                sys.exit(f"patch-llama: {path}.orig has {text.count(old)} of the text to replace, not 1:\n{old}")
            text = text.replace(old, new)
        try:
            with open(path) as f:
                unchanged = f.read() == text
        except FileNotFoundError:
            unchanged = False
        if not unchanged:       # an unchanged file keeps its time: nothing is rebuilt for it
            with open(path, "w") as f:
                f.write(text)
            print(f"patch-llama: {path} edited")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
