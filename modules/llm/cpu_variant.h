#pragma once
#include <stdbool.h>
#include <stdint.h>

// Which of the two ggml CPU backends this machine runs, chosen the first time
// llama.cpp asks for its CPU backend (or this is called), and why
struct llm_cpu_choice {
    const char *name;           // "sse2" or "avx2"
    const char *reason;         // "measured", "command line" or "no AVX2+FMA+F16C"
    uint32_t sse2_us, avx2_us;  // measured: each one's time for the test matrix, best of its rounds
    bool avx2_finished;         // measured: avx2 did a whole round within 2/3 of sse2's time (else
                                // its time is projected from the rows it did by then)
};
const struct llm_cpu_choice *llm_cpu_choice(void);
