// A Q4_1 matrix (SmolLM2's feed-forward shape: 1536 rows of 576) and a Q8_0 one (a slice of its
// output matrix: 6144 rows of 576) times 1, 2, 3, 4 and 8 columns through ggml's graph API, one
// thread: ms per column for each count. Built by bench/matmul.py
// against the kernel's SSE2 build of ggml and run in a Linux guest under qemu-system-i386 (TCG).
#include "ggml.h"
#include "ggml-cpu.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static float frand(void) {
    return (float) rand() / RAND_MAX - 0.5f;
}

static void run(enum ggml_type type, int rows, int reps) {
    enum { K = 576 };
    const int counts[] = { 1, 2, 3, 4, 8 };
    struct ggml_init_params p = { 64u << 20, NULL, false };
    struct ggml_context * ctx = ggml_init(p);
    struct ggml_tensor * wf = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, K, rows);
    struct ggml_tensor * w = ggml_new_tensor_2d(ctx, type, K, rows);
    for (int i = 0; i < K * rows; i++) {
        ((float *) wf->data)[i] = frand();
    }
    ggml_quantize_chunk(type, wf->data, w->data, 0, rows, K, NULL);
    for (size_t n = 0; n < sizeof counts / sizeof counts[0]; n++) {
        struct ggml_tensor * x = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, K, counts[n]);
        for (int i = 0; i < K * counts[n]; i++) {
            ((float *) x->data)[i] = frand();
        }
        struct ggml_cgraph * gf = ggml_new_graph(ctx);
        ggml_build_forward_expand(gf, ggml_mul_mat(ctx, w, x));
        ggml_graph_compute_with_ctx(ctx, gf, 1);       // warm-up: translation, page faults
        double best = 1e9;
        for (int r = 0; r < reps; r++) {
            const double t0 = now();
            ggml_graph_compute_with_ctx(ctx, gf, 1);
            const double t = now() - t0;
            best = t < best ? t : best;
        }
        printf("matmul: %s %d x %d, %d column(s) %.3f ms per column\n", ggml_type_name(type), rows, K, counts[n],
               best * 1e3 / counts[n]);
        fflush(stdout);
    }
    ggml_free(ctx);
}

int main(int argc, char ** argv) {
    const int reps = argc > 1 ? atoi(argv[1]) : 10;
    run(GGML_TYPE_Q4_1, 1536, reps);
    run(GGML_TYPE_Q8_0, 6144, reps);
    return 0;
}
