// ggml's CPU backend, twice: port/build-llama.sh links an SSE2 build (every symbol prefixed
// sse2_) and an AVX2+FMA+F16C build (prefixed avx2_). Which is faster depends on the machine:
// on real hardware AVX2 runs SmolLM2's matrix products about 6x as fast, under QEMU's TCG about
// 7x as slow (every AVX float lane is a softfloat call there), and TCG's "-cpu max" advertises
// AVX2 all the same, so CPUID alone would choose wrong. The first time llama.cpp asks for the CPU
// backend, both time the operation that dominates inference; "ggml=sse2" or "ggml=avx2" on the
// command line decides instead.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ggml.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "kernel/kernel.h"
#include "cpu_variant.h"

#define VARIANT(p) \
    ggml_backend_reg_t p##ggml_backend_cpu_reg(void); \
    const struct ggml_type_traits_cpu *p##ggml_get_type_traits_cpu(enum ggml_type type); \
    void p##ggml_cpu_init(void); \
    extern float p##ggml_table_f32_f16[1 << 16];
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
enum { SSE2, AVX2 };

static struct llm_cpu_choice choice;
static const struct cpu_variant *chosen;

static int cpu_has_avx2(void) {
    uint32_t a, b, c, d;
    __asm__ volatile ("cpuid" : "=a" (a), "=b" (b), "=c" (c), "=d" (d) : "a" (7), "c" (0));
    int avx2 = (b >> 5) & 1;
    int fma = (kernel.cpuid_ecx >> 12) & 1, f16c = (kernel.cpuid_ecx >> 29) & 1;
    return kernel.avx && avx2 && fma && f16c;
}

// The measurement: a Q4_1 matrix of ROWS rows of COLS times one Q8_1 vector, row
// by row through the variant's dot product (every weight matrix of SmolLM2 is Q4_1, and the
// products are most of a token), on pseudo-random values like a model's. Real values matter:
// under TCG a float operation on zeros takes softfloat's short cut, and the dot products read
// their fp16 scales through a table that is all zeros until ggml_cpu_init() fills it. Timed
// with the code translated (one untimed row), best of ROUNDS rounds.
#define ROWS 64
#define COLS 2048
#define ROUNDS 3

// The matrix repeats DISTINCT rows of values: making and quantizing values is float work that
// costs more under TCG than the timing itself.
#define DISTINCT 4

struct operands {
    uint8_t *weights;           // Q4_1, ROWS rows of row_bytes
    size_t row_bytes;
    uint8_t *activations;       // Q8_1, one row
};

static bool make_operands(struct operands *op) {
    float *values = malloc(DISTINCT * COLS * sizeof(float));
    op->row_bytes = ggml_row_size(GGML_TYPE_Q4_1, COLS);
    op->weights = malloc(ROWS * op->row_bytes + ggml_row_size(GGML_TYPE_Q8_1, COLS));
    if (!values || !op->weights) {
        free(values);
        free(op->weights);
        return false;
    }
    op->activations = op->weights + ROWS * op->row_bytes;
    uint32_t seed = 12345;
    for (size_t i = 0; i < DISTINCT * COLS; i++) {
        seed = seed * 1664525u + 1013904223u;
        values[i] = (float)(seed >> 8) / (1 << 24) * 2.0f - 1.0f;
    }
    ggml_quantize_chunk(GGML_TYPE_Q4_1, values, op->weights, 0, DISTINCT, COLS, NULL);
    for (int row = DISTINCT; row < ROWS; row++) {
        memcpy(op->weights + row * op->row_bytes, op->weights + (row % DISTINCT) * op->row_bytes, op->row_bytes);
    }
    variants[SSE2].traits(GGML_TYPE_Q8_1)->from_float(values + COLS, op->activations, COLS);
    free(values);
    return true;
}

// Nanoseconds for the whole matrix, best of the rounds. A round stops once past limit_ns (a loser
// need not finish) and its time is then projected from the rows it did; *finished says whether
// any round did them all within the limit.
static uint64_t time_matrix(const struct cpu_variant *v, const struct operands *op, uint64_t limit_ns,
    bool *finished) {
    ggml_vec_dot_t dot = v->traits(GGML_TYPE_Q4_1)->vec_dot;
    float s;
    dot(COLS, &s, 0, op->weights, 0, op->activations, 0, 1);
    uint64_t best = UINT64_MAX;
    *finished = false;
    for (int r = 0; r < ROUNDS; r++) {
        uint64_t t0 = clock_ns(), elapsed = 0;
        int rows = 0;
        while (rows < ROWS && elapsed <= limit_ns) {
            dot(COLS, &s, 0, op->weights + rows * op->row_bytes, 0, op->activations, 0, 1);
            rows++;
            elapsed = clock_ns() - t0;
        }
        *finished |= rows == ROWS && elapsed <= limit_ns;
        uint64_t whole = elapsed * ROWS / rows;
        best = whole < best ? whole : best;
    }
    return best;
}

// AVX2 is chosen only if it takes under 2/3 of SSE2's time. A host that stalls QEMU can only make
// a round slower and the best of three rounds sees through that, while the two are 5-12x apart
// wherever measured (natively AVX2 faster, under TCG slower), so noise cannot flip the choice.
// Where they come close, SSE2 is the choice, as the kernels that ran whole decodes faster
// where both were measured (TCG).
static void measure(void) {
    // Fills the fp16 table, as the model's load would, and gives the AVX2 build the same values
    // (its own ggml_cpu_init() runs if it is chosen; under TCG it costs ~90 ms more).
    sse2_ggml_cpu_init();
    memcpy(avx2_ggml_table_f32_f16, sse2_ggml_table_f32_f16, sizeof(avx2_ggml_table_f32_f16));
    struct operands operands, *op = &operands;
    if (!make_operands(op)) {
        chosen = &variants[SSE2];
        return;
    }
    bool finished;
    uint64_t sse2 = time_matrix(&variants[SSE2], op, UINT64_MAX, &finished);
    uint64_t avx2 = time_matrix(&variants[AVX2], op, sse2 * 2 / 3, &choice.avx2_finished);
    free(op->weights);
    choice.sse2_us = (sse2 + 500) / 1000;
    choice.avx2_us = (avx2 + 500) / 1000;
    chosen = &variants[choice.avx2_finished ? AVX2 : SSE2];
}

static void choose(void) {
    char want[16];
    int avx2 = cpu_has_avx2();
    if (cmdline_get("ggml", want, sizeof(want))) {
        if ((strcmp(want, "avx2") == 0 && avx2) || strcmp(want, "sse2") == 0) {
            chosen = &variants[strcmp(want, "avx2") == 0 ? AVX2 : SSE2];
            choice.reason = "command line";
            printf("%s ggml: CPU kernels %s, as the command line asks\n", clock_stamp(), chosen->name);
            return;
        }
        printf("%s ggml: cannot use ggml=%s here (sse2%s); measuring instead\n", clock_stamp(), want,
            avx2 ? ", avx2" : "");
    }
    if (!avx2) {
        chosen = &variants[SSE2];
        choice.reason = "no AVX2+FMA+F16C";
        printf("%s ggml: CPU kernels sse2 (this CPU has no AVX2+FMA+F16C)\n", clock_stamp());
        return;
    }
    measure();
    choice.reason = "measured";
    printf("%s ggml: CPU kernels %s (a Q4_1 matrix of %dx%d, best of %d: sse2 %u us, avx2 %s%u us; "
        "avx2 must take under 2/3 of sse2's time; override with ggml=sse2|avx2)\n", clock_stamp(), chosen->name,
        ROWS, COLS, ROUNDS, (unsigned)choice.sse2_us, choice.avx2_finished ? "" : "~", (unsigned)choice.avx2_us);
}

const struct llm_cpu_choice *llm_cpu_choice(void) {
    if (!chosen) {
        choose();
        choice.name = chosen->name;
    }
    return &choice;
}

// What libggml's backend registry calls: the one CPU backend of this image.
ggml_backend_reg_t ggml_backend_cpu_reg(void) {
    llm_cpu_choice();
    return chosen->reg();
}
