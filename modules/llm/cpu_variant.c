// ggml's CPU backend, twice: port/build-llama.sh links an SSE2 build (every symbol prefixed
// sse2_) and an AVX2+FMA+F16C build (prefixed avx2_). Which is faster depends on the machine —
// on real hardware AVX2 wins by about 4x, under QEMU's TCG plain SSE2 wins by about 3x, and
// TCG's "-cpu max" advertises AVX2 all the same — so CPUID alone would choose wrong. At boot
// both time the dot product that dominates inference (Q4_1 weights x Q8_1 activations) and
// the faster one becomes the CPU backend; "ggml=sse2" or "ggml=avx2" on the command line decides
// instead.
#include <stdio.h>
#include <string.h>

#include "ggml.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "port/boot/kernel.h"
#include "port/drivers/clock.h"
#include "llm.h"

#define VARIANT(p) \
    ggml_backend_reg_t p##ggml_backend_cpu_reg(void); \
    const struct ggml_type_traits_cpu *p##ggml_get_type_traits_cpu(enum ggml_type type);
VARIANT(sse2_)
VARIANT(avx2_)

struct cpu_variant {
    const char *name;
    ggml_backend_reg_t (*reg)(void);
    const struct ggml_type_traits_cpu *(*traits)(enum ggml_type type);
};

static const struct cpu_variant variants[] = {
    { "sse2", sse2_ggml_backend_cpu_reg, sse2_ggml_get_type_traits_cpu },
    { "avx2", avx2_ggml_backend_cpu_reg, avx2_ggml_get_type_traits_cpu },
};
static const struct cpu_variant *chosen = &variants[0];

// What libggml's backend registry calls: the one CPU backend of this image.
ggml_backend_reg_t ggml_backend_cpu_reg(void) {
    return chosen->reg();
}

static int cpu_has_avx2(void) {
    uint32_t a, b, c, d;
    __asm__ volatile ("cpuid" : "=a" (a), "=b" (b), "=c" (c), "=d" (d) : "a" (7), "c" (0));
    int avx2 = (b >> 5) & 1;
    int fma = (kernel.cpuid_ecx >> 12) & 1, f16c = (kernel.cpuid_ecx >> 29) & 1;
    return kernel.avx && avx2 && fma && f16c;
}

#define BENCH_N 2048        // elements per dot product: one row of a small model
#define BENCH_ROUNDS 32

// Nanoseconds for BENCH_ROUNDS Q4_1 x Q8_1 dot products of BENCH_N elements, or the first
// time past limit_ns: a loser need not finish. Only the speed counts, so the variants skip
// ggml_cpu_init(): it fills lookup tables for all 65536 half floats, a quarter of a second
// under TCG, which the chosen backend does anyway when a model is first loaded.
static uint64_t time_dot(const struct cpu_variant *v, uint64_t limit_ns) {
    static float x[BENCH_N], y[BENCH_N];
    static uint8_t qx[BENCH_N * 2], qy[BENCH_N * 2];
    for (int i = 0; i < BENCH_N; i++) {
        x[i] = (float)((i * 7919) % 97) / 97.0f - 0.5f;
        y[i] = (float)((i * 104729) % 89) / 89.0f - 0.5f;
    }
    const struct ggml_type_traits_cpu *w = v->traits(GGML_TYPE_Q4_1);
    const struct ggml_type_traits_cpu *a = v->traits(w->vec_dot_type);
    w->from_float(x, qx, BENCH_N);
    a->from_float(y, qy, BENCH_N);
    float s = 0;
    w->vec_dot(BENCH_N, &s, 0, qx, 0, qy, 0, 1);   // once untimed: TCG translates the code here
    uint64_t t0 = clock_ns(), elapsed = 0;
    for (int r = 0; r < BENCH_ROUNDS && elapsed <= limit_ns; r++) {
        w->vec_dot(BENCH_N, &s, 0, qx, 0, qy, 0, 1);
        elapsed = clock_ns() - t0;
    }
    return elapsed;
}

void llm_cpu_variant_select(void) {
    char want[16];
    int avx2 = cpu_has_avx2();
    if (cmdline_get("ggml", want, sizeof(want))) {
        if (strcmp(want, "avx2") == 0 && avx2) {
            chosen = &variants[1];
        } else if (strcmp(want, "sse2") == 0) {
            chosen = &variants[0];
        } else {
            printf("%s ggml: cannot use ggml=%s here (sse2%s); measuring instead\n", clock_stamp(), want, avx2 ? ", avx2" : "");
            want[0] = 0;
        }
        if (want[0]) {
            printf("%s ggml: CPU kernels %s, as the command line asks\n", clock_stamp(), chosen->name);
            return;
        }
    }
    if (!avx2) {
        printf("%s ggml: CPU kernels sse2 (this CPU has no AVX2+FMA+F16C)\n", clock_stamp());
        return;
    }
    uint64_t t_sse2 = time_dot(&variants[0], UINT64_MAX);
    uint64_t t_avx2 = time_dot(&variants[1], t_sse2);
    chosen = t_avx2 < t_sse2 ? &variants[1] : &variants[0];
    printf("%s ggml: CPU kernels %s (%d Q4_1 dot products of %d: sse2 %u us, avx2 %s%u us; override with ggml=sse2|avx2)\n",
        clock_stamp(), chosen->name, BENCH_ROUNDS, BENCH_N, (unsigned)(t_sse2 / 1000), t_avx2 > t_sse2 ? "over " : "",
        (unsigned)(t_avx2 / 1000));
}

const char *llm_cpu_variant(void) {
    return chosen->name;
}
