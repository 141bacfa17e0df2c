// The trap frame and the interrupt vectors (prototypes for trap.c are in kernel.h).
#pragma once
#include <stdint.h>

// What traps.S leaves on the stack: pushal's registers, then the stub's vector and error
// code, then what the CPU pushed. In ring 0 the CPU pushes no %ss:%esp, so the stack
// pointer at the time of the trap is just past eflags.
struct trapframe {
    uint32_t edi, esi, ebp, esp_pushal, ebx, edx, ecx, eax;
    uint32_t vector, error;
    uint32_t eip, cs, eflags;
};

static inline uint32_t trapframe_esp(const struct trapframe *tf) {
    return (uint32_t)(&tf->eflags + 1);
}

#define IRQ_BASE        32
#define IRQ_COUNT       16
#define SYSCALL_VECTOR  0x80

void trap_resume(struct trapframe *tf) __attribute__((noreturn));
