// The kernel: what boot learned about the machine, and every function one kernel file offers
// the others (and the layers above), grouped by the file that defines it, as xv6's defs.h.
// Types that assembly shares or that only a few files need have headers of their own:
// gdt.h, trap.h, smp.h, lapic.h, multiboot.h, spinlock.h, io.h.
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

struct trapframe;
// What a trap was, for CPU 0's choice of thread after it: the timer tick, a device or another
// CPU (IPI), a thread's yield, or else (a system call, a fault).
enum trap_kind { TRAP_OTHER, TRAP_TICK, TRAP_DEVICE, TRAP_YIELD };
struct user_desc;

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

// machine.c
extern struct kernel_info kernel;   // filled in by boot.c
// Kernel command line: value of "key=value" (copied into buf), or NULL if absent.
const char *cmdline_get(const char *key, char *buf, size_t buflen);
// Power off: through QEMU's isa-debug-exit if present, else halt this CPU forever.
void kernel_exit(int status) __attribute__((noreturn));
void kernel_reboot(void) __attribute__((noreturn));     // reset, as the reset button
int kernel_after_reset(void);       // whether this boot follows kernel_reboot (RAM is not all zero)

// boot.c: from the Multiboot loader's hand-off to glibc's _start.
// Drivers whose output the kernel's log needs from its first line (the console) name their
// set-up here; boot runs each before anything else, as Linux's console_initcall.
#define KERNEL_EARLY_INIT(fn) \
    static void (*const fn##_early)(void) __attribute__((used, section("kernel_early_init"))) = fn

// clock.c: the HPET (or the PIT), the 1 kHz timer tick, the RTC's date.
void clock_init(void);
uint64_t clock_ns(void);            // monotonic, since boot
uint64_t clock_epoch_ns(void);      // wall clock: the RTC at boot plus the monotonic clock
const char *clock_source(void);     // "hpet" or "pit"
const char *clock_stamp(void);      // "[   1.234]": seconds since boot, for the boot log
void clock_sleep_ns(uint64_t ns);   // idles the CPU between timer ticks
// No tick on CPU 0 while paused (nonzero), for a long computation in C that waits for nothing;
// only with the HPET as the clock (otherwise the ticks are the clock, and this does nothing).
void clock_pause_tick(int paused);
// fn(ticks) in interrupt context at every timer tick (1 ms); one hook, NULL removes it.
void clock_on_tick(void (*fn)(uint32_t ticks));
// Set while CPU 0's timer tick is paused: no tick would end a hlt in time.
extern volatile int tick_paused;

// cpu_setup.c: what each CPU turns on before any compiled C touches a float.
int cpu_init(void);                     // returns whether AVX state is on
void cpu_grow_tlb(uint32_t ram_end);    // QEMU's software TLB grown to cover RAM up to ram_end

// cpu_tables.c: the processors the firmware lists, from ACPI's MADT or else the MP table.
struct cpu_list {
    int count;
    uint8_t apic_id[CPUS_MAX];
    uint32_t lapic_base;
    const char *source;     // "ACPI MADT", "MP table" or "none"
};
void cpus_find(struct cpu_list *out);

// files.c: the boot modules as a read-only file system: one directory, "/", holding each module
// under its basename; file descriptors 0..2 are the console's tty. Calls return -errno on failure.
struct tty {
    void (*write)(const char *s, size_t n);     // "\n" goes out as "\r\n"
    int (*read_byte)(void);                     // -1 when nothing waits
    size_t (*available)(void);                  // bytes waiting
    unsigned (*interrupts)(void);               // moves at each Ctrl-C: a blocked read ends with EINTR
};
// Until a driver attaches the console, reads find nothing and writes go to the kernel log.
void files_attach_tty(const struct tty *tty);
long files_openat(int dirfd, const char *path, int flags);
long files_close(int fd);
long files_read(int fd, void *buf, uint32_t n);
long files_pread(int fd, void *buf, uint32_t n, uint64_t pos);
long files_write(int fd, const void *buf, uint32_t n);
long files_lseek(int fd, int64_t off, int whence, uint64_t *result);
long files_statx(int dirfd, const char *path, int flags, void *statx_buf);
long files_stat64(int dirfd, const char *path, int flags, void *stat64_buf);
long files_getdents64(int fd, void *buf, uint32_t n);
long files_ioctl(int fd, uint32_t cmd, void *arg);
long files_fcntl(int fd, int cmd, uint32_t arg);
long files_access(int dirfd, const char *path, int mode);
// poll(): which of POLLIN/POLLOUT in events fd is ready for now, or POLLNVAL.
int files_ready(int fd, int events);
// The address of a file's bytes at page offset pgoff, for mmap: no copy is made.
long files_mmap(int fd, uint32_t len, uint32_t pgoff, uint32_t *addr);

// Sockets: IPv4 TCP for C code (kernel/sockets.c has Linux's calls). The network layer, above this
// one, hands its operations down at boot (net/sockets.c); until then socket() is EAFNOSUPPORT.
// A socket is the network layer's handle; addresses are in network order, ports in host order;
// results are >= 0 or -errno, and a blocking call waits in the calling thread.
struct socket_ops {
    int (*open)(void);                                                  // a new handle
    long (*bind)(int h, uint32_t addr, uint16_t port);
    long (*listen)(int h, int backlog);
    long (*accept)(int h, int nonblock, uint32_t *addr, uint16_t *port);   // the connection's handle
    long (*recv)(int h, void *buf, uint32_t n, int nonblock, int peek);
    long (*send)(int h, const void *buf, uint32_t n, int nonblock);
    long (*shutdown)(int h, int how);
    long (*nodelay)(int h, int on);                                     // TCP_NODELAY
    long (*error)(int h);                                               // SO_ERROR
    long (*address)(int h, int peer, uint32_t *addr, uint16_t *port);
    int (*ready)(int h, int events);                                    // as files_ready
    void (*close)(int h);
};
void files_attach_sockets(const struct socket_ops *ops);
const struct socket_ops *files_sockets(void);       // NULL until attached
long files_open_socket(int handle, int nonblock);   // a descriptor for it (closes it on failure)
int files_socket(int fd, int *nonblock);            // its handle, or -EBADF, -ENOTSOCK
// sockets.c: the system calls (syscall.c's table), socketcall and the direct ones
#define SOCKET_SYSCALLS(X) X(socketcall) X(socket) X(bind) X(connect) X(listen) X(accept4) X(getsockopt) \
    X(setsockopt) X(getsockname) X(getpeername) X(sendto) X(recvfrom) X(shutdown)
#define SOCKET_SYSCALL_DECLARE(name) long sys_##name(uint32_t, uint32_t, uint32_t, uint32_t, uint32_t, uint32_t);
SOCKET_SYSCALLS(SOCKET_SYSCALL_DECLARE)

// gdt.c (the types are in gdt.h)
int cpu_id(void);       // this CPU: 0 is the one that booted, the others count up in start-up order
void gdt_init(void);                                // the boot CPU's
void gdt_init_cpu(int cpu, uint32_t stack_top);     // and loads it on the calling CPU
// Install a TLS descriptor in the calling CPU's table; picks a free slot when entry_number is -1.
int gdt_set_tls(struct user_desc *u);               // 0 or -errno
void gdt_tls_save(uint64_t tls[]);                  // this CPU's TLS slots (GDT_TLS_COUNT) into tls
void gdt_tls_load(const uint64_t tls[]);            // and back
int gdt_tls_make(uint64_t tls[], struct user_desc *u); // u applied to a copy of slots: 0 or -errno

// kprint.c: printf for code that must not depend on glibc (before _start, in panics, in the
// system calls). Understands %s %c %d %u %x %08x %p and %%; writes to the one output the
// console driver gives (nothing is printed before it does).
void kprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void kprint_set_output(void (*write)(const char *s, size_t n));
void kprint_write(const char *s, size_t n);     // bytes as they are, to the same output
// The console lock kprintf takes, for other writers to the console (interrupts off meanwhile).
#define KPRINT_NESTED (1u << 31)    // not an EFLAGS bit: marks a nested take
uint32_t kprint_lock(void);
void kprint_unlock(uint32_t flags);

// lapic.c (register names in lapic.h)
void lapic_enable(int bsp);
void lapic_send(uint8_t apic_id, uint32_t command);    // waits until the previous IPI left

// ram.c: physical memory behind brk and anonymous mmap. Paging is off: addresses are physical.
void ram_init(uint32_t start, uint32_t end, int ram_starts_zeroed);
uint32_t ram_brk(uint32_t want);            // Linux brk(): the new break, or the old on failure
uint32_t ram_alloc(uint32_t len);           // zeroed, page-aligned; 0 when out of memory
int ram_free(uint32_t addr, uint32_t len);  // 0, or -EINVAL for memory not handed out
struct ram_stats {
    uint32_t total;         // bytes managed
    uint32_t free;          // bytes not handed out
    uint32_t brk;           // bytes under the program break
    uint32_t largest_free;  // the biggest single allocation that can succeed
};
void ram_get_stats(struct ram_stats *s);

// panic.c: the dump, then power off with status PANIC_EXIT_STATUS, or with panic=reboot on the
// command line reset the machine (an appliance boots back to serving).
#define PANIC_EXIT_STATUS 0x10  // QEMU exits with (status << 1) | 1 = 33
void panic(const char *why) __attribute__((noreturn));
void panic_trap(struct trapframe *tf) __attribute__((noreturn));
// The system call each CPU is serving (number and name, or -1): the dump names it.
extern volatile int current_syscall[CPUS_MAX];
extern const char *volatile current_syscall_name[CPUS_MAX];
extern struct trapframe *syscall_frame[CPUS_MAX];   // its registers (clone copies them)

// pic.c: the two 8259s, devices' interrupts on vectors 32..47 of CPU 0.
void pic_init(void);
void pic_unmask(int irq);
void pic_mask(int irq);
void pic_eoi(int irq);
int pic_is_spurious(int irq);

// random.c: one generator for glibc's AT_RANDOM, getrandom(), lwIP and MicroPython's seed;
// seeded from the TSC and the clock, not for cryptography.
uint64_t kernel_random(void);

// entropy.c: bytes for cryptographic seeds (the TLS random generator): RDSEED, else RDRAND, else
// timer jitter and the RTC; the source is chosen by CPUID (and a test read) on the first call.
enum entropy_source { ENTROPY_UNKNOWN, ENTROPY_RDSEED, ENTROPY_RDRAND, ENTROPY_JITTER };
enum entropy_source kernel_entropy_source(void);
const char *kernel_entropy_name(void);
size_t kernel_entropy(uint8_t *out, size_t len);

// smp.c (struct cpu in smp.h): find and start the other CPUs; needs a running clock. Each
// started CPU sets itself up and then runs idle (which never returns).
void smp_init(void (*idle)(void));

// syscall.c: the Linux i386 system calls static glibc makes.
void syscall_dispatch(struct trapframe *tf);
const char *syscall_name(int nr);   // NULL for numbers the kernel does not know
extern uint32_t syscall_counts[];

// thread.c: glibc's threads, one CPU each, and one more on CPU 0 beside the main thread.
// Results are Linux's: >= 0 or -errno.
long thread_clone(const struct trapframe *tf, uint32_t flags, uint32_t stack, uint32_t *ptid,
    const struct user_desc *tls, uint32_t *ctid);
void thread_exit(void) __attribute__((noreturn));     // any thread but the main one
long futex_wait(volatile uint32_t *addr, uint32_t val, uint64_t deadline_ns);  // 0: no deadline
long futex_wake(volatile uint32_t *addr, int n);
// CPU 0 runs the main thread and, once every other CPU has one, one more thread in turn with it:
// thread_switch (the trap handler's resume) picks which runs after each trap; cpu0_wait is
// what the running one calls instead of hlt while a second thread shares CPU 0.
struct trapframe *thread_switch(struct trapframe *tf, enum trap_kind kind);
int cpu0_shared(void);              // a second thread shares CPU 0 now
uint32_t cpus_tid(void);            // the calling thread's id (the main thread's is 1)
int cpu0_wait(void);                // CPU 0's idle while shared: the other thread runs until an
                                    // interrupt (1); 0 when not shared
// What a CPU other than 0 runs: the thread in its mailbox, or sleep until one arrives.
void cpu_idle_loop(void) __attribute__((noreturn));

// trap.c (struct trapframe in trap.h)
// System calls (int 0x80) go to syscall, CPU exceptions to fault (which does not return).
// After each trap, resume says which frame to return to (CPU 0's thread switch, thread.c),
// knowing what the trap was (enum trap_kind, above); wait is how CPU 0 waits for an interrupt
// (trap_wait, for cpu_idle below).
void idt_init(void (*syscall)(struct trapframe *tf), void (*fault)(struct trapframe *tf),
    struct trapframe *(*resume)(struct trapframe *tf, enum trap_kind kind), int (*wait)(void));
int trap_wait(void);        // 1 if CPU 0 waited for an interrupt the handed way, 0: halt as usual
void idt_load(void);        // on a CPU started after idt_init
void irq_register(int irq, void (*handler)(void));

// String equality for code that must not call glibc (before _start, in the system calls).
static inline int kstr_eq(const char *a, const char *b) {
    while (*a && *a == *b) {
        a++;
        b++;
    }
    return *a == *b;
}

static inline void cpuid(uint32_t leaf, uint32_t *a, uint32_t *b, uint32_t *c, uint32_t *d) {
    __asm__ volatile ("cpuid" : "=a" (*a), "=b" (*b), "=c" (*c), "=d" (*d) : "a" (leaf), "c" (0));
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

// Sleep until the next interrupt. "sti; hlt" cannot lose a wakeup: sti takes effect after hlt
// starts. Only CPU 0 gets timer and device interrupts: the others just pause a moment (and so
// does CPU 0 while its tick is paused).
static inline void cpu_idle(void) {
    if (cpu_id() == 0 && trap_wait()) {
        return;             // the thread that shares CPU 0 ran meanwhile
    }
    if (cpu_id() != 0 || tick_paused) {
        __asm__ volatile ("sti; pause" ::: "memory");
        return;
    }
    __asm__ volatile ("sti; hlt" ::: "memory");
}
