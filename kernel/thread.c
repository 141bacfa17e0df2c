// glibc's threads: clone/clone3 give each new thread a CPU of its own (no scheduler, no time
// slicing); futex waits halt the CPU and wakes send it an IPI; exit returns the CPU to idle.
#include "kernel.h"
#include "trap.h"
#include "smp.h"
#include "lapic.h"
#include "spinlock.h"
#include <linux/errno.h>
#include <linux/sched.h>

#define TID_MAX 0x3fffffffu         // futex words keep flags in the top two bits

static struct spinlock futex_lock;
static uint32_t last_tid = 1;       // 1 is the main thread

void thread_enter(const struct thread_regs *r) __attribute__((noreturn));
void call_on_stack(uint32_t stack_top, void (*fn)(void)) __attribute__((noreturn));

static struct cpu *this_cpu(void) {
    return &cpus[cpu_id()];
}

static uint32_t new_tid(void) {
    uint32_t tid;
    do {
        tid = __atomic_add_fetch(&last_tid, 1, __ATOMIC_RELAXED) & TID_MAX;
    } while (tid < 2);
    return tid;
}

long thread_clone(const struct trapframe *tf, uint32_t flags, uint32_t stack, uint32_t *ptid,
    const struct user_desc *tls, uint32_t *ctid) {
    if (!(flags & CLONE_VM) || !(flags & CLONE_THREAD) || !stack) {
        return -EAGAIN;     // no processes, only threads
    }
    struct cpu *c = 0;
    for (int i = 1; i < cpu_count && !c; i++) {
        int idle = CPU_IDLE;
        if (__atomic_compare_exchange_n(&cpus[i].state, &idle, CPU_CLAIMED, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
            c = &cpus[i];
        }
    }
    if (!c) {
        return -EAGAIN;     // every CPU has its thread: glibc reports EAGAIN from pthread_create
    }
    uint32_t tid = new_tid();
    uint32_t gs;
    __asm__ volatile ("movl %%gs, %0" : "=r" (gs));
    c->start = (struct thread_regs){
        .ebx = tf->ebx, .ecx = tf->ecx, .edx = tf->edx, .esi = tf->esi, .edi = tf->edi, .ebp = tf->ebp,
        .eip = tf->eip, .cs = tf->cs, .eflags = tf->eflags, .esp = stack, .gs = gs & 0xffff,
    };
    c->has_tls = (flags & CLONE_SETTLS) != 0;
    if (c->has_tls) {
        c->tls = *tls;
        c->start.gs = (tls->entry_number << 3) | 3;
    }
    c->tid = tid;
    c->clear_tid = (flags & CLONE_CHILD_CLEARTID) ? ctid : 0;
    if (flags & CLONE_PARENT_SETTID) {
        *ptid = tid;
    }
    if (flags & CLONE_CHILD_SETTID) {
        *ctid = tid;
    }
    __atomic_store_n(&c->state, CPU_STARTING, __ATOMIC_RELEASE);
    lapic_send(c->apic_id, ICR_FIXED | ICR_ASSERT | VECTOR_IPI);
    return tid;
}

static void start_thread(struct cpu *c) __attribute__((noreturn));
static void start_thread(struct cpu *c) {
    c->state = CPU_RUNNING;
    if (c->has_tls && gdt_set_tls(&c->tls) != 0) {
        panic("clone: a TLS descriptor this kernel cannot install");
    }
    thread_enter(&c->start);
}

void cpu_idle_loop(void) {
    struct cpu *c = this_cpu();
    for (;;) {
        __asm__ volatile ("cli" ::: "memory");
        if (__atomic_load_n(&c->state, __ATOMIC_ACQUIRE) == CPU_STARTING) {
            start_thread(c);
        }
        __asm__ volatile ("sti; hlt" ::: "memory");
    }
}

// On the idle stack, the thread's own stack given up: glibc may free it as soon as the
// joiner sees the tid cleared.
static void thread_exited(void) {
    struct cpu *c = this_cpu();
    __asm__ volatile ("cli" ::: "memory");
    uint32_t *ctid = c->clear_tid;
    c->clear_tid = 0;
    c->tid = 0;
    current_syscall[cpu_id()] = -1;
    // Idle before the joiner can run: a pthread_create right after pthread_join finds a CPU.
    __atomic_store_n(&c->state, CPU_IDLE, __ATOMIC_RELEASE);
    if (ctid) {
        __atomic_store_n(ctid, 0, __ATOMIC_RELEASE);
        futex_wake(ctid, 1);
    }
    cpu_idle_loop();
}

void thread_exit(void) {
    call_on_stack(this_cpu()->idle_stack_top, thread_exited);
}

static int other_threads(int me) {
    for (int i = 0; i < cpu_count; i++) {
        if (i != me && cpus[i].state >= CPU_CLAIMED) {
            return 1;
        }
    }
    return 0;
}

// With interrupts off throughout: a wake between the check of *addr and the hlt is an IPI
// pending until "sti; hlt", which it then ends at once. The main thread alone (one CPU, or no
// thread started) has nobody to wake it, so the value cannot be about to change: -EAGAIN.
long futex_wait(volatile uint32_t *addr, uint32_t val, uint64_t deadline_ns) {
    int me = cpu_id();
    struct cpu *c = &cpus[me];
    uint32_t flags = spin_lock(&futex_lock);
    if (*addr != val || !other_threads(me)) {
        spin_unlock(&futex_lock, flags);
        return -EAGAIN;
    }
    c->futex_woken = 0;
    c->futex = addr;
    spin_release(&futex_lock);
    long result = 0;
    while (!c->futex_woken) {
        if (deadline_ns && clock_ns() >= deadline_ns) {
            spin_acquire(&futex_lock);
            if (!c->futex_woken) {
                c->futex = 0;
                result = -ETIMEDOUT;
            }
            spin_release(&futex_lock);
            break;
        }
        // Only CPU 0 has a timer interrupt to end a hlt at a deadline (unless it is paused).
        if ((me == 0 && !tick_paused) || !deadline_ns) {
            __asm__ volatile ("sti; hlt; cli" ::: "memory");
        } else {
            __asm__ volatile ("sti; pause; cli" ::: "memory");
        }
    }
    irq_restore(flags);
    return result;
}

long futex_wake(volatile uint32_t *addr, int n) {
    int me = cpu_id(), woken = 0;
    uint32_t flags = spin_lock(&futex_lock);
    for (int i = 0; i < cpu_count && woken < n; i++) {
        struct cpu *c = &cpus[i];
        if (c->futex == addr && !c->futex_woken) {
            c->futex = 0;
            c->futex_woken = 1;
            woken++;
            if (i != me) {
                lapic_send(c->apic_id, ICR_FIXED | ICR_ASSERT | VECTOR_IPI);
            }
        }
    }
    spin_unlock(&futex_lock, flags);
    return woken;
}
