// modules/llm/cpu_variant.c's choice of ggml CPU kernels, run as an i386 Linux program: natively on
// the host, where AVX2 runs at the CPU's speed, and under qemu-i386, which emulates it as the
// kernel's QEMU does. Built by tests/test_cpu_choice.py against the kernel's two prefixed CPU
// backends; this file stands in for the three things the kernel gives cpu_variant.c. Prints the
// choice as "name reason sse2_us avx2_us avx2_finished".
#include <cpuid.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernel/kernel.h"
#include "modules/llm/cpu_variant.h"

struct kernel_info kernel;

// The kernel command line's "key=value" from the environment: CMDLINE_key
const char *cmdline_get(const char *key, char *buf, size_t buflen) {
    char name[64];
    snprintf(name, sizeof(name), "CMDLINE_%s", key);
    const char *value = getenv(name);
    if (!value) {
        return NULL;
    }
    snprintf(buf, buflen, "%s", value);
    return buf;
}

uint64_t clock_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + t.tv_nsec;
}

const char *clock_stamp(void) {
    return "[host]";
}

int main(void) {
    unsigned a, b, c, d;
    __cpuid(1, a, b, c, d);
    kernel.cpuid_ecx = c;
    kernel.cpuid_edx = d;
    if ((c >> 27) & 1) {                        // OSXSAVE: the OS says which state it saves
        unsigned lo, hi;
        __asm__ volatile ("xgetbv" : "=a" (lo), "=d" (hi) : "c" (0));
        kernel.avx = (lo & 6) == 6;             // SSE and AVX state
    }
    const struct llm_cpu_choice *choice = llm_cpu_choice();
    printf("%s %s %u %u %d\n", choice->name, choice->reason, (unsigned)choice->sse2_us,
        (unsigned)choice->avx2_us, choice->avx2_finished);
    return 0;
}
