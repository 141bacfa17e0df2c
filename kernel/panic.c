// The panic dump: everything a developer needs from a crash, on serial, then power off with
// a non-zero status so a test or script sees it (never a silent hang), or with panic=reboot a
// reset, so an appliance comes back serving.
#include "kernel.h"
#include "trap.h"
#include "smp.h"

volatile int current_syscall[CPUS_MAX] = { [0 ... CPUS_MAX - 1] = -1 };
const char *volatile current_syscall_name[CPUS_MAX];
struct trapframe *syscall_frame[CPUS_MAX];
static volatile int panicking = -1;     // the CPU printing its dump

// Generated from the linked kernel by the build (ksyms.S); absent in the first link pass.
extern const uint32_t ksyms_count __attribute__((weak));
extern const uint32_t ksyms_addr[] __attribute__((weak));
extern const char *const ksyms_name[] __attribute__((weak));

static const char *const exception_names[32] = {
    "divide error", "debug", "NMI", "breakpoint", "overflow", "bound range exceeded",
    "invalid opcode", "device not available", "double fault", "coprocessor segment overrun",
    "invalid TSS", "segment not present", "stack-segment fault", "general protection fault",
    "page fault", "reserved", "x87 floating-point error", "alignment check", "machine check",
    "SIMD floating-point error", "virtualization exception", "control protection",
};

// Name of the function containing addr and the offset into it, from the symbol table the
// build links into the kernel. Returns NULL when the address is outside every function.
static const char *ksym_lookup(uint32_t addr, uint32_t *offset) {
    if (&ksyms_count == 0 || ksyms_count == 0 || addr < ksyms_addr[0]) {
        return 0;
    }
    uint32_t lo = 0, hi = ksyms_count;          // last symbol with address <= addr
    while (hi - lo > 1) {
        uint32_t mid = (lo + hi) / 2;
        if (ksyms_addr[mid] <= addr) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    *offset = addr - ksyms_addr[lo];
    return ksyms_name[lo];
}

static void print_location(uint32_t addr) {
    uint32_t off;
    const char *name = ksym_lookup(addr, &off);
    if (name) {
        kprintf("  %08x  %s+0x%x\n", addr, name, off);
    } else {
        kprintf("  %08x  ?\n", addr);
    }
}

extern uint8_t __executable_start[], _end[];

// Follow saved frame pointers while they stay inside the kernel's memory and move up the stack.
static void backtrace(uint32_t ebp) {
    kprintf("backtrace:\n");
    for (int depth = 0; depth < 32 && ebp && !(ebp & 3); depth++) {
        if (ebp < (uint32_t)__executable_start || ebp + 8 > kernel.free_end) {
            break;
        }
        uint32_t next = ((uint32_t *)ebp)[0];
        uint32_t ret = ((uint32_t *)ebp)[1];
        if (ret == 0) {
            break;
        }
        print_location(ret);
        if (next <= ebp) {
            break;
        }
        ebp = next;
    }
}

static void print_syscall(void) {
    int nr = current_syscall[cpu_id()];
    if (nr >= 0) {
        const char *name = current_syscall_name[cpu_id()];
        kprintf("in syscall: %d (%s)\n", nr, name ? name : "?");
    }
}

// One dump at a time: a CPU that faults while another prints stops where it is (the first
// dump ends the machine).
static void panic_enter(void) {
    __asm__ volatile ("cli");
    int me = cpu_id(), idle = -1;
    if (!__atomic_compare_exchange_n(&panicking, &idle, me, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED) && idle != me) {
        for (;;) {
            __asm__ volatile ("hlt");
        }
    }
}

__attribute__((noreturn)) static void panic_end(void) {
    kprintf("*** end of panic\n");
    char how[16];
    if (cmdline_get("panic", how, sizeof(how)) && kstr_eq(how, "reboot")) {
        kprintf("cllm: rebooting (panic=reboot)\n");
        kernel_reboot();
    }
    kernel_exit(PANIC_EXIT_STATUS);
}

static void print_cpu(void) {
    int me = cpu_id();
    kprintf("cpu %d (APIC id %u), thread %u\n", me, cpus[me].apic_id, cpus[me].tid);
}

void panic_trap(struct trapframe *tf) {
    panic_enter();
    uint32_t v = tf->vector;
    uint32_t cr0, cr2, cr3, cr4;
    __asm__ volatile ("mov %%cr0, %0; mov %%cr2, %1; mov %%cr3, %2; mov %%cr4, %3"
        : "=r" (cr0), "=r" (cr2), "=r" (cr3), "=r" (cr4));
    kprintf("\n*** cllm panic: %s (vector %u, error code 0x%08x)\n",
        v < 32 && exception_names[v] ? exception_names[v] : "unknown exception", v, tf->error);
    kprintf("eip=%08x cs=%04x eflags=%08x esp=%08x\n", tf->eip, tf->cs, tf->eflags, trapframe_esp(tf));
    kprintf("eax=%08x ebx=%08x ecx=%08x edx=%08x\n", tf->eax, tf->ebx, tf->ecx, tf->edx);
    kprintf("esi=%08x edi=%08x ebp=%08x\n", tf->esi, tf->edi, tf->ebp);
    kprintf("cr0=%08x cr2=%08x cr3=%08x cr4=%08x\n", cr0, cr2, cr3, cr4);
    print_cpu();
    print_syscall();
    print_location(tf->eip);
    backtrace(tf->ebp);
    panic_end();
}

void panic(const char *why) {
    panic_enter();
    kprintf("\n*** cllm panic: %s\n", why);
    print_cpu();
    print_syscall();
    backtrace((uint32_t)__builtin_frame_address(0));
    panic_end();
}

// Entered through the double-fault task gate, on a stack of its own. The faulting
// context is in the main TSS, where the CPU saved it on the task switch.
void double_fault_panic(void) {
    panic("double fault (stack overflow or a fault while delivering a fault)");
}
