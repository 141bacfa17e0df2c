// The CPUs. CPU 0 boots, takes every device interrupt and runs MicroPython (and, once every
// other CPU has a thread, one more in turn: thread.c); each of the others runs at most one glibc
// thread (clone hands it over), and halts when it has none.
#pragma once
#include <stdint.h>
#include "kernel.h"
#include "gdt.h"

enum cpu_state {
    CPU_OFFLINE,        // not started (or did not answer)
    CPU_IDLE,           // halted, waiting for a thread
    CPU_CLAIMED,        // a clone is filling in its mailbox
    CPU_STARTING,       // the mailbox holds a thread: go
    CPU_RUNNING,        // running a thread (CPU 0: always)
};

// A new thread's registers: the parent's at its clone call, with the child's stack and %gs.
// smp_entry.S reads these by offset.
struct thread_regs {
    uint32_t ebx, ecx, edx, esi, edi, ebp, eip, cs, eflags, esp, gs;
};

struct cpu {
    uint8_t apic_id;
    volatile int state;             // enum cpu_state
    struct thread_regs start;       // the mailbox: the thread to run next
    struct user_desc tls;           // its TLS descriptor (CLONE_SETTLS)
    int has_tls;
    uint32_t tid;                   // the thread running here (CPU 0: 1, the main thread)
    uint32_t *clear_tid;            // CLONE_CHILD_CLEARTID: zeroed and futex-woken at exit
    volatile uint32_t *futex;       // the futex word this CPU sleeps on, or 0
    volatile int futex_woken;
    uint32_t idle_stack_top;        // where the CPU runs between threads
};

extern struct cpu cpus[CPUS_MAX];
extern int cpu_count;               // CPUs started, CPU 0 included
extern const char *cpus_source;     // where the list came from: "ACPI MADT", "MP table", "none"
