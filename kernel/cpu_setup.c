// CPU features that must be on before any compiled C touches a float or an SSE register:
// glibc picks SSE2 string functions from CPUID whatever CR4 says, and gcc's -mfpmath=sse
// code uses XMM registers for every double.
#include "kernel.h"

#define CR0_MP          (1u << 1)       // monitor coprocessor: wait/fwait honour TS
#define CR0_EM          (1u << 2)       // emulate x87: must be clear
#define CR0_TS          (1u << 3)       // task switched: must be clear or every FPU op faults
#define CR0_NE          (1u << 5)       // native x87 error reporting (#MF, not IRQ13)
#define CR0_WP          (1u << 16)      // write protect (no effect without paging)
#define CR4_OSFXSR      (1u << 9)       // fxsave/fxrstor and SSE instructions
#define CR4_OSXMMEXCPT  (1u << 10)      // unmasked SSE exceptions raise #XM
#define CR4_OSXSAVE     (1u << 18)      // xgetbv/xsetbv, needed for AVX
#define CPUID1_ECX_XSAVE (1u << 26)
#define CPUID1_ECX_AVX  (1u << 28)
#define XCR0_X87        (1u << 0)
#define XCR0_SSE        (1u << 1)
#define XCR0_AVX        (1u << 2)

int cpu_init(void) {
    uint32_t a, b, c, d;
    cpuid(1, &a, &b, &c, &d);

    uint32_t cr0, cr4;
    __asm__ volatile ("mov %%cr0, %0" : "=r" (cr0));
    cr0 = (cr0 & ~(CR0_EM | CR0_TS)) | CR0_MP | CR0_NE;
    __asm__ volatile ("mov %0, %%cr0" :: "r" (cr0));
    __asm__ volatile ("mov %%cr4, %0" : "=r" (cr4));
    cr4 |= CR4_OSFXSR | CR4_OSXMMEXCPT;
    if (c & CPUID1_ECX_XSAVE) {
        cr4 |= CR4_OSXSAVE;
    }
    __asm__ volatile ("mov %0, %%cr4" :: "r" (cr4));

    if ((c & CPUID1_ECX_XSAVE) && (c & CPUID1_ECX_AVX)) {
        uint32_t lo, hi;
        __asm__ volatile ("xgetbv" : "=a" (lo), "=d" (hi) : "c" (0));
        lo |= XCR0_X87 | XCR0_SSE | XCR0_AVX;
        __asm__ volatile ("xsetbv" :: "a" (lo), "d" (hi), "c" (0));
    }

    uint32_t mxcsr = 0x1f80;            // all SSE exceptions masked, round to nearest
    __asm__ volatile ("fninit; ldmxcsr %0" :: "m" (mxcsr));
    return (c & CPUID1_ECX_XSAVE) && (c & CPUID1_ECX_AVX);
}

// QEMU's TCG gives each CPU a software TLB that starts at 256 entries (1 MiB of pages) and is
// resized only when the guest flushes it: doubled when more than 70 % of it was filled since the
// last flush. This kernel runs without paging and never flushes, so the TLB stayed at 256 entries
// and walking the model's weights (~100 MB) missed in it page after page. Touching n pages and
// then flushing (QEMU flushes on a change of CR0's PG, WP or PE bits; WP means nothing without
// paging) doubles it; rounds up to the RAM there is to touch. On real hardware or KVM this is a
// few milliseconds of reads. Every CPU runs it for its own TLB.
#define TLB_FIRST_ENTRIES   256u
#define TLB_MOST_ENTRIES    (1u << 18)      // 1 GiB of pages: QEMU's table is ~60 bytes an entry

void cpu_grow_tlb(uint32_t ram_end) {
    uint32_t start = 1024 * 1024, pages = (ram_end - start) / PAGE_SIZE;
    for (uint32_t n = TLB_FIRST_ENTRIES; n <= pages && n < TLB_MOST_ENTRIES; n <<= 1) {
        for (uint32_t i = 0; i < n; i++) {
            (void)*(volatile uint8_t *)(start + i * PAGE_SIZE);
        }
        uint32_t cr0;
        __asm__ volatile ("mov %%cr0, %0" : "=r" (cr0));
        __asm__ volatile ("mov %0, %%cr0; mov %1, %%cr0" :: "r" (cr0 ^ CR0_WP), "r" (cr0) : "memory");
    }
}
