// glibc's threads: clone/clone3 give each new thread a CPU of its own; futex waits halt the CPU
// and wakes send it an IPI; exit returns the CPU to idle. Once every other CPU has a thread, one
// more runs on CPU 0 in turn with the main thread (below, "CPU 0's second thread").
#include "kernel.h"
#include "trap.h"
#include "smp.h"
#include "lapic.h"
#include "gdt.h"
#include "spinlock.h"
#include <linux/errno.h>
#include <linux/sched.h>

#define TID_MAX 0x3fffffffu         // futex words keep flags in the top two bits

static struct spinlock futex_lock;
static uint32_t last_tid = 1;       // 1 is the main thread

static uint32_t new_tid(void) {
    uint32_t tid;
    do {
        tid = __atomic_add_fetch(&last_tid, 1, __ATOMIC_RELAXED) & TID_MAX;
    } while (tid < 2);
    return tid;
}

// ---- CPU 0's second thread ----------------------------------------------------------------
// A thread cloned while every other CPU has one shares CPU 0 with the main thread (MicroPython,
// which takes every device interrupt). The main thread has CPU 0 whenever it has work: where it
// would halt (cpu0_wait) or when it blocks on a futex, the other thread runs, and the next
// interrupt (the 1 ms tick, a device, an IPI) switches back to it at once. A main thread that
// computes without idling gets MAIN_SLICE_NS, then the other thread OTHER_SLICE_NS, in turn.
// Threads switch only at the end of a trap (thread_switch): the frame of the one switched out
// stays on its own stack, and its per-thread state (what struct cpu and the per-CPU tables hold,
// its TLS slots, %gs, the FPU/SSE/AVX registers) in its struct cpu0_thread.
#define MAIN_SLICE_NS   5000000ull
#define OTHER_SLICE_NS  5000000ull

struct cpu0_thread {
    struct trapframe *frame;        // where it resumes, while switched out
    volatile int waiting;           // idle or in a futex wait: not to be switched to until woken
    uint64_t wake_at;               // a futex wait's deadline (clock_ns), 0: none
    uint32_t gs;
    uint32_t tid;
    uint32_t *clear_tid;
    volatile uint32_t *futex;
    volatile int futex_woken;
    int syscall;
    const char *syscall_name;
    struct trapframe *syscall_frame;
    uint64_t tls[GDT_TLS_COUNT];
    uint8_t fpu[1024] __attribute__((aligned(64)));     // xsave (x87, SSE, AVX) or fxsave
};

static struct cpu0_thread cpu0[2];  // [0] the main thread, [1] the other; the running one's
                                    // fields in struct cpu and the tables are the live ones
static volatile int cpu0_other;     // the second thread exists
static volatile int cpu0_claimed;   // ... or is being made
static volatile int cpu0_running;   // which of the two runs (changed under futex_lock)
static uint64_t cpu0_since;         // when it got CPU 0
static int main_woken;              // an interrupt ended the main thread's wait: it goes first
static uint8_t cpu0_exit_stack[4096] __attribute__((aligned(16)));

uint32_t cpus_tid(void) {
    return cpus[cpu_id()].tid;
}

int cpu0_shared(void) {
    return __atomic_load_n(&cpu0_other, __ATOMIC_ACQUIRE);
}

static void fpu_save(uint8_t *area) {
    if (kernel.avx) {
        __asm__ volatile ("xsave %0" : "=m" (*area) : "a" (7), "d" (0) : "memory");
    } else {
        __asm__ volatile ("fxsave %0" : "=m" (*area) :: "memory");
    }
}

static void fpu_load(uint8_t *area) {
    if (kernel.avx) {
        __asm__ volatile ("xrstor %0" :: "m" (*area), "a" (7), "d" (0) : "memory");
    } else {
        __asm__ volatile ("fxrstor %0" :: "m" (*area) : "memory");
    }
}

static void load_gs(uint32_t gs) {
    __asm__ volatile ("movw %w0, %%gs" :: "r" (gs) : "memory");
}

// The live per-thread state of CPU 0 into t, or from t. Interrupts off.
static void cpu0_store(struct cpu0_thread *t) {
    struct cpu *c = &cpus[0];
    t->tid = c->tid;
    t->clear_tid = c->clear_tid;
    t->futex = c->futex;
    t->futex_woken = c->futex_woken;
    t->syscall = current_syscall[0];
    t->syscall_name = current_syscall_name[0];
    t->syscall_frame = syscall_frame[0];
    gdt_tls_save(t->tls);
    fpu_save(t->fpu);
    uint32_t gs;
    __asm__ volatile ("movl %%gs, %0" : "=r" (gs));
    t->gs = gs & 0xffff;
}

static void cpu0_load(struct cpu0_thread *t) {
    struct cpu *c = &cpus[0];
    c->tid = t->tid;
    c->clear_tid = t->clear_tid;
    c->futex = t->futex;
    c->futex_woken = t->futex_woken;
    current_syscall[0] = t->syscall;
    current_syscall_name[0] = t->syscall_name;
    syscall_frame[0] = t->syscall_frame;
    gdt_tls_load(t->tls);
    load_gs(t->gs);
    fpu_load(t->fpu);
}

static struct trapframe *cpu0_switch_to(struct trapframe *tf, int next) {
    struct cpu0_thread *from = &cpu0[cpu0_running], *to = &cpu0[next];
    spin_acquire(&futex_lock);      // futex_wake on another CPU reads these fields
    from->frame = tf;
    cpu0_store(from);
    cpu0_load(to);
    cpu0_running = next;
    spin_release(&futex_lock);
    cpu0_since = clock_ns();
    return to->frame;
}

struct trapframe *thread_switch(struct trapframe *tf, enum trap_kind kind) {
    if (!cpu0_shared() || cpu_id() != 0) {
        return tf;
    }
    // After a system call (a trap gate) interrupts are on: not here. The frame returned has the
    // interrupt flag of the thread it resumes.
    __asm__ volatile ("cli" ::: "memory");
    int cur = cpu0_running, other = 1 - cur;
    if (kind == TRAP_OTHER && !cpu0[cur].waiting) {
        return tf;                  // a system call's end: nothing new to decide
    }
    uint64_t now = clock_ns();
    if (kind == TRAP_TICK || kind == TRAP_DEVICE) {
        if (cpu0[0].waiting) {
            cpu0[0].waiting = 0;    // the main thread re-checks what it waits for
            main_woken = cur != 0;
        }
    }
    for (int i = 0; i < 2; i++) {
        if (cpu0[i].waiting && cpu0[i].wake_at && now >= cpu0[i].wake_at) {
            cpu0[i].waiting = 0;
        }
    }
    int next = cur;
    if (cpu0[cur].waiting) {
        next = cpu0[other].waiting ? cur : other;
    } else if (!cpu0[other].waiting) {
        uint64_t ran = now - cpu0_since;
        if (cur == 0 ? ran >= MAIN_SLICE_NS : (main_woken || ran >= OTHER_SLICE_NS)) {
            next = other;
        }
    }
    if (next == 0) {
        main_woken = 0;
    }
    return next == cur ? tf : cpu0_switch_to(tf, next);
}

// Where CPU 0's running thread would halt while the other shares the CPU: it waits (the other
// runs) until an interrupt, or its futex wake, chooses it again. Returns with interrupts on, as
// cpu_idle() does.
static void cpu0_block(uint64_t wake_at) {
    uint32_t flags = irq_save();
    struct cpu0_thread *me = &cpu0[cpu0_running];
    me->wake_at = wake_at;
    me->waiting = 1;
    __asm__ volatile ("int %0" :: "i" (VECTOR_YIELD) : "memory");
    me = &cpu0[cpu0_running];
    if (me->waiting) {              // nobody else could run: sleep here until an interrupt
        __asm__ volatile ("sti; hlt; cli" ::: "memory");
    }
    me->waiting = 0;
    me->wake_at = 0;
    irq_restore(flags);
}

int cpu0_wait(void) {
    if (!cpu0_shared()) {
        return 0;
    }
    // Until the next interrupt, as a hlt: any tick or device interrupt chooses the main thread
    // again; the other thread's deadline a tick ahead does the same for it (without one, a thread
    // that polls in cpu_idle, as poll() does, would sleep until a futex woke it: never).
    cpu0_block(clock_ns() + 1000000ull);
    __asm__ volatile ("sti" ::: "memory");
    return 1;
}

// A thread for CPU 0 from clone: its first frame built on its stack as trap_common would have
// saved it, its per-thread state copied from the parent's with its own TLS, tid and clear_tid.
static long cpu0_clone(const struct trapframe *tf, uint32_t flags, uint32_t stack, uint32_t *ptid,
    const struct user_desc *tls, uint32_t *ctid) {
    if (__atomic_exchange_n(&cpu0_claimed, 1, __ATOMIC_ACQUIRE)) {
        return -EAGAIN;             // CPU 0 already has its second thread (or one is being made)
    }
    struct cpu0_thread *t = &cpu0[1];
    uint32_t gs;
    __asm__ volatile ("movl %%gs, %0" : "=r" (gs));
    t->gs = gs & 0xffff;
    gdt_tls_save(t->tls);
    if (flags & CLONE_SETTLS) {
        struct user_desc u = *tls;
        if (gdt_tls_make(t->tls, &u) != 0) {
            __atomic_store_n(&cpu0_claimed, 0, __ATOMIC_RELEASE);
            return -EINVAL;
        }
        t->gs = (u.entry_number << 3) | 3;
    }
    fpu_save(t->fpu);
    uint32_t *sp = (uint32_t *)stack;
    *--sp = tf->eflags | 0x200;     // interrupts on
    *--sp = tf->cs;
    *--sp = tf->eip;
    *--sp = 0;                      // error code
    *--sp = VECTOR_YIELD;
    *--sp = 0;                      // pushal's order, from %eax: clone returns 0 in the child
    *--sp = tf->ecx;
    *--sp = tf->edx;
    *--sp = tf->ebx;
    *--sp = 0;                      // %esp: popal skips it
    *--sp = tf->ebp;
    *--sp = tf->esi;
    *--sp = tf->edi;
    t->frame = (struct trapframe *)sp;
    t->tid = new_tid();
    t->clear_tid = (flags & CLONE_CHILD_CLEARTID) ? ctid : 0;
    t->futex = 0;
    t->futex_woken = 0;
    t->syscall = -1;
    t->syscall_name = 0;
    t->syscall_frame = 0;
    t->wake_at = 0;
    t->waiting = 0;
    if (flags & CLONE_PARENT_SETTID) {
        *ptid = t->tid;
    }
    if (flags & CLONE_CHILD_SETTID) {
        *ctid = t->tid;
    }
    uint32_t tid = t->tid;
    __atomic_store_n(&cpu0_other, 1, __ATOMIC_RELEASE);
    if (cpu_id() != 0) {
        lapic_send(cpus[0].apic_id, ICR_FIXED | ICR_ASSERT | VECTOR_IPI);
    }
    return tid;
}

// The second thread's exit, on a stack of CPU 0's own (glibc may free the thread's stack as soon
// as the joiner sees the tid cleared): the main thread's state back, then its frame.
static void cpu0_exited(void) {
    __asm__ volatile ("cli" ::: "memory");
    uint32_t *ctid = cpus[0].clear_tid;
    spin_acquire(&futex_lock);
    cpu0_load(&cpu0[0]);
    cpu0_running = 0;
    cpu0[0].waiting = 0;
    __atomic_store_n(&cpu0_other, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&cpu0_claimed, 0, __ATOMIC_RELEASE);
    spin_release(&futex_lock);
    cpu0_since = clock_ns();
    main_woken = 0;
    if (ctid) {
        __atomic_store_n(ctid, 0, __ATOMIC_RELEASE);
        futex_wake(ctid, 1);
    }
    trap_resume(cpu0[0].frame);
}

void thread_enter(const struct thread_regs *r) __attribute__((noreturn));
void call_on_stack(uint32_t stack_top, void (*fn)(void)) __attribute__((noreturn));

static struct cpu *this_cpu(void) {
    return &cpus[cpu_id()];
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
        return cpu0_clone(tf, flags, stack, ptid, tls, ctid);
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
    if (cpu_id() == 0) {            // CPU 0's second thread: the main thread never comes here
        call_on_stack((uint32_t)(cpu0_exit_stack + sizeof(cpu0_exit_stack)), cpu0_exited);
    }
    call_on_stack(this_cpu()->idle_stack_top, thread_exited);
}

static int other_threads(int me) {
    if (cpu0_shared()) {
        return 1;
    }
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
        if (me == 0 && cpu0_shared()) {
            cpu0_block(deadline_ns);
            __asm__ volatile ("cli" ::: "memory");
            continue;
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
            if (i == 0 && cpu0_shared()) {
                cpu0[cpu0_running].waiting = 0;
            }
            if (i != me) {
                lapic_send(c->apic_id, ICR_FIXED | ICR_ASSERT | VECTOR_IPI);
            }
        }
    }
    if (woken < n && cpu0_shared()) {
        struct cpu0_thread *t = &cpu0[1 - cpu0_running];
        if (t->futex == addr && !t->futex_woken) {
            t->futex = 0;
            t->futex_woken = 1;
            t->waiting = 0;
            woken++;
            if (me != 0) {
                lapic_send(cpus[0].apic_id, ICR_FIXED | ICR_ASSERT | VECTOR_IPI);
            }
        }
    }
    spin_unlock(&futex_lock, flags);
    return woken;
}
