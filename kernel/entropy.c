// Entropy for cryptography (the TLS random generator's seed): RDSEED when CPUID has it, else
// RDRAND, else timer jitter. kernel_random() (random.c) is for hash seeds and TCP sequence
// numbers; this is what keys are made from.
//
// Timer jitter: each bit is the parity of the TSC's count across a read of the HPET (or the PIT's
// latch), an I/O round trip whose length varies with caches, interrupts, the other CPU and, under
// QEMU, the host; the RTC's wall clock and the TSC at the first call go in first. The caller
// (mbedtls' entropy pool) hashes whatever it is given with SHA-512, so bias here costs strength,
// not uniformity. It is weaker than a hardware source and cannot be measured from inside: the
// boot log names the source so an operator can tell.
#include "kernel.h"
#include "io.h"

#define CPUID1_ECX_RDRAND   (1u << 30)
#define CPUID7_EBX_RDSEED   (1u << 18)

static int rdseed32(uint32_t *v) {
    uint8_t ok;
    __asm__ volatile ("rdseed %0; setc %1" : "=r" (*v), "=qm" (ok) :: "cc");
    return ok;
}

static int rdrand32(uint32_t *v) {
    uint8_t ok;
    __asm__ volatile ("rdrand %0; setc %1" : "=r" (*v), "=qm" (ok) :: "cc");
    return ok;
}

static uint64_t rdtsc(void) {
    uint32_t lo, hi;
    __asm__ volatile ("rdtsc" : "=a" (lo), "=d" (hi));
    return ((uint64_t) hi << 32) | lo;
}

static enum entropy_source source = ENTROPY_UNKNOWN;

enum entropy_source kernel_entropy_source(void) {
    if (source == ENTROPY_UNKNOWN) {
        uint32_t a, b, c, d, max;
        cpuid(0, &max, &b, &c, &d);
        cpuid(1, &a, &b, &c, &d);
        const int rdrand = (c & CPUID1_ECX_RDRAND) != 0;
        int rdseed = 0;
        if (max >= 7) {
            cpuid(7, &a, &b, &c, &d);
            rdseed = (b & CPUID7_EBX_RDSEED) != 0;
        }
        uint32_t v;
        // a CPU may advertise an instruction that never delivers (some AMD parts' RDRAND after
        // suspend): ten tries each before trusting it
        int seed_works = 0, rand_works = 0;
        for (int i = 0; i < 10 && rdseed && !seed_works; i++) {
            seed_works = rdseed32(&v);
        }
        for (int i = 0; i < 10 && rdrand && !rand_works; i++) {
            rand_works = rdrand32(&v);
        }
        source = seed_works ? ENTROPY_RDSEED : rand_works ? ENTROPY_RDRAND : ENTROPY_JITTER;
    }
    return source;
}

const char *kernel_entropy_name(void) {
    static const char *const names[] = { "unknown", "RDSEED", "RDRAND", "timer jitter and the RTC" };
    return names[kernel_entropy_source()];
}

static uint32_t jitter_bit(void) {
    const uint64_t t0 = rdtsc();
    (void) clock_ns();                  // an HPET read (an I/O round trip), or the PIT's count
    return (uint32_t) (rdtsc() - t0) & 1;
}

// len bytes of entropy into out; returns len (every source always delivers: the hardware ones
// retry, then the jitter takes over for what is left)
size_t kernel_entropy(uint8_t *out, size_t len) {
    const enum entropy_source s = kernel_entropy_source();
    size_t i = 0;
    while (i < len && s != ENTROPY_JITTER) {
        uint32_t v;
        int ok = 0;
        for (int tries = 0; tries < 100 && !ok; tries++) {
            ok = s == ENTROPY_RDSEED ? rdseed32(&v) : rdrand32(&v);
        }
        if (!ok) {
            break;
        }
        for (int k = 0; k < 4 && i < len; k++, v >>= 8) {
            out[i++] = (uint8_t) v;
        }
    }
    static int seeded;
    if (i < len && !seeded) {           // the wall clock and the TSC, once
        seeded = 1;
        const uint64_t first[2] = { clock_epoch_ns(), rdtsc() };
        for (size_t k = 0; k < sizeof first && i < len; k++) {
            out[i++] = ((const uint8_t *) first)[k];
        }
    }
    for (; i < len; i++) {
        uint32_t byte = 0;
        for (int bit = 0; bit < 8; bit++) {
            byte = byte << 1 | jitter_bit();
        }
        out[i] = (uint8_t) byte;
    }
    return len;
}
