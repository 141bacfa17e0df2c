// What the boot code learned about the machine, shared by the shim, the drivers and Python.
#pragma once
#include <stdint.h>
#include <stddef.h>

#define KERNEL_VERSION      "0.1.0"
#define BOOT_STACK_SIZE     (4 * 1024 * 1024)
#define PAGE_SIZE           4096u
#define PAGE_ALIGN_UP(x)    (((x) + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1))

#define CMDLINE_MAX         1024
#define MODULES_MAX         16
#define MODULE_NAME_MAX     128
#define CPUS_MAX            16

struct boot_module {
    char name[MODULE_NAME_MAX];         // basename of the loader's module string
    const uint8_t *data;                // the module's own memory: never copied
    uint32_t size;
};

struct kernel_info {
    char cmdline[CMDLINE_MAX];
    uint32_t ram_bytes;                 // usable RAM found in the Multiboot map
    uint32_t free_start, free_end;      // the region handed to brk/mmap
    uint32_t module_count;
    struct boot_module modules[MODULES_MAX];
    uint32_t cpuid_edx, cpuid_ecx;      // leaf 1 feature bits
    int avx;                            // AVX state enabled in XCR0
    uint32_t trampoline_page;           // a free page below 1 MiB the other CPUs start from (0: none)
};

extern struct kernel_info kernel;

// Kernel command line: value of "key=value" (copied into buf), or NULL if absent.
const char *cmdline_get(const char *key, char *buf, size_t buflen);

// Power off: through QEMU's isa-debug-exit if present, else halt this CPU forever.
void kernel_exit(int status) __attribute__((noreturn));

// String equality for code that must not call glibc (before _start, inside the shim).
static inline int kstr_eq(const char *a, const char *b) {
    while (*a && *a == *b) {
        a++;
        b++;
    }
    return *a == *b;
}

// Interrupt-flag helpers.
static inline uint32_t irq_save(void) {
    uint32_t flags;
    __asm__ volatile ("pushfl; popl %0; cli" : "=r" (flags) :: "memory");
    return flags;
}
static inline void irq_restore(uint32_t flags) {
    __asm__ volatile ("pushl %0; popfl" :: "r" (flags) : "memory", "cc");
}
// This CPU's number: 0 is the one that booted, the others count up in start-up order.
int cpu_id(void);
// Per CPU, in cpu_setup.c: FPU/SSE/AVX on (first thing); QEMU's software TLB grown to cover RAM.
void cpu_init(void);
void cpu_grow_tlb(void);

// Set while CPU 0's timer tick is paused (clock_pause_tick): no tick would end a hlt in time.
extern volatile int tick_paused;

// Sleep until the next interrupt. "sti; hlt" cannot lose a wakeup: sti takes effect after hlt
// starts. Only CPU 0 gets timer and device interrupts: the others just pause a moment (and so
// does CPU 0 while its tick is paused).
static inline void cpu_idle(void) {
    if (cpu_id() != 0 || tick_paused) {
        __asm__ volatile ("sti; pause" ::: "memory");
        return;
    }
    __asm__ volatile ("sti; hlt" ::: "memory");
}
