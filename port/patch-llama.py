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

EDITS = [KEYS_IN_USE, F32_VALUES, F32_KEYS, GLU_COLUMNS, EVEN_CHUNKS, Q4_1_WORDS, Q8_0_WORDS]


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
