// The interrupt descriptor table and the one C entry point all traps go through.
#include "kernel.h"
#include "trap.h"
#include "gdt.h"
#include "lapic.h"

struct idt_entry {
    uint16_t offset_lo, selector;
    uint8_t zero, type_attr;
    uint16_t offset_hi;
} __attribute__((packed));

struct idt_ptr {
    uint16_t limit;
    uint32_t base;
} __attribute__((packed));

#define GATE_INTERRUPT  0x8e    // present, DPL 0, 32-bit interrupt gate: IF cleared on entry
#define GATE_TRAP       0x8f    // present, DPL 0, 32-bit trap gate: IF left as it was
#define GATE_TASK       0x85    // present, DPL 0, task gate

static struct idt_entry idt[256];
static void (*irq_handlers[IRQ_COUNT])(void);
static void (*syscall_handler)(struct trapframe *tf);
static void (*fault_handler)(struct trapframe *tf);
static struct trapframe *(*resume_handler)(struct trapframe *tf, enum trap_kind kind);
static int (*wait_handler)(void);

extern const uint32_t trap_vectors[IRQ_BASE + IRQ_COUNT];
extern void trap128(void), trap240(void), trap241(void), trap255(void);

static void set_gate(int vec, uint32_t offset, uint16_t selector, uint8_t type) {
    idt[vec].offset_lo = offset & 0xffff;
    idt[vec].offset_hi = offset >> 16;
    idt[vec].selector = selector;
    idt[vec].zero = 0;
    idt[vec].type_attr = type;
}

void idt_init(void (*syscall)(struct trapframe *tf), void (*fault)(struct trapframe *tf),
    struct trapframe *(*resume)(struct trapframe *tf, enum trap_kind kind), int (*wait)(void)) {
    syscall_handler = syscall;
    fault_handler = fault;
    resume_handler = resume;
    wait_handler = wait;
    for (int v = 0; v < IRQ_BASE + IRQ_COUNT; v++) {
        set_gate(v, trap_vectors[v], SEL_KERNEL_CODE, GATE_INTERRUPT);
    }
    set_gate(8, 0, SEL_DF_TSS, GATE_TASK);
    // A trap gate: system calls run with interrupts as the caller had them, so a blocking
    // read on the console can wait for the serial interrupt.
    set_gate(SYSCALL_VECTOR, (uint32_t)trap128, SEL_KERNEL_CODE, GATE_TRAP);
    set_gate(VECTOR_IPI, (uint32_t)trap240, SEL_KERNEL_CODE, GATE_INTERRUPT);
    set_gate(VECTOR_YIELD, (uint32_t)trap241, SEL_KERNEL_CODE, GATE_INTERRUPT);
    set_gate(VECTOR_SPURIOUS, (uint32_t)trap255, SEL_KERNEL_CODE, GATE_INTERRUPT);
    idt_load();
}

// Every CPU shares the one table.
void idt_load(void) {
    struct idt_ptr ptr;
    ptr.limit = sizeof(idt) - 1;
    ptr.base = (uint32_t)idt;
    __asm__ volatile ("lidt %0" :: "m" (ptr));
}

void irq_register(int irq, void (*handler)(void)) {
    irq_handlers[irq] = handler;
    pic_unmask(irq);
}

int trap_wait(void) {
    return wait_handler ? wait_handler() : 0;
}

struct trapframe *trap_dispatch(struct trapframe *tf) {
    enum trap_kind kind = TRAP_OTHER;
    if (tf->vector == SYSCALL_VECTOR) {
        syscall_handler(tf);
    } else if (tf->vector == VECTOR_IPI) {
        lapic_eoi();        // its only job was to end a hlt: the woken code looks for the reason
        kind = TRAP_DEVICE;
    } else if (tf->vector == VECTOR_YIELD) {
        kind = TRAP_YIELD;
    } else if (tf->vector == VECTOR_SPURIOUS) {
        return tf;          // no EOI for a spurious interrupt
    } else if (tf->vector >= IRQ_BASE && tf->vector < IRQ_BASE + IRQ_COUNT) {
        int irq = tf->vector - IRQ_BASE;
        if (pic_is_spurious(irq)) {
            return tf;
        }
        if (irq_handlers[irq]) {
            irq_handlers[irq]();
        }
        pic_eoi(irq);
        kind = irq == 0 ? TRAP_TICK : TRAP_DEVICE;
    } else {
        fault_handler(tf);
    }
    return resume_handler ? resume_handler(tf, kind) : tf;
}
