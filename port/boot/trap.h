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

void idt_init(void);
void idt_load(void);        // on a CPU started after idt_init
void irq_register(int irq, void (*handler)(void));
void syscall_dispatch(struct trapframe *tf);
const char *syscall_name(int nr);   // NULL for numbers the shim does not know
extern uint32_t syscall_counts[];
void panic_trap(struct trapframe *tf) __attribute__((noreturn));
