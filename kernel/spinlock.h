// Spinlocks for the kernel state that every CPU may touch (the memory map, the console,
// futex waiters). spin_lock turns interrupts off first, so an interrupt handler on the same
// CPU can never spin on a lock its own CPU holds.
#pragma once
#include <stdint.h>
#include "kernel.h"

struct spinlock {
    volatile uint32_t locked;
};

static inline void cpu_relax(void) {
    __asm__ volatile ("pause" ::: "memory");
}

static inline void spin_acquire(struct spinlock *l) {
    while (__atomic_exchange_n(&l->locked, 1, __ATOMIC_ACQUIRE)) {
        while (l->locked) {
            cpu_relax();
        }
    }
}

static inline void spin_release(struct spinlock *l) {
    __atomic_store_n(&l->locked, 0, __ATOMIC_RELEASE);
}

static inline uint32_t spin_lock(struct spinlock *l) {
    uint32_t flags = irq_save();
    spin_acquire(l);
    return flags;
}

static inline void spin_unlock(struct spinlock *l, uint32_t flags) {
    spin_release(l);
    irq_restore(flags);
}
