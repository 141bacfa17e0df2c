// The kernel's one random generator: a xorshift seeded from the TSC and the clock at its first
// use. For stack canaries, hash seeds, TCP sequence numbers and getrandom(); not for
// cryptography (there is no entropy source behind it).
#include "kernel.h"
#include "spinlock.h"

static uint64_t state;
static struct spinlock lock;        // every CPU's threads may call getrandom()

uint64_t kernel_random(void) {
    uint32_t flags = spin_lock(&lock);
    if (!state) {
        uint32_t lo, hi;
        __asm__ volatile ("rdtsc" : "=a" (lo), "=d" (hi));
        state = (((uint64_t)hi << 32) | lo) ^ clock_epoch_ns() ^ 0x9e3779b97f4a7c15ull;
    }
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    uint64_t x = state;
    spin_unlock(&lock, flags);
    return x;
}
