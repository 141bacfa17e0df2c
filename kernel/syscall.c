// The Linux i386 system-call shim: static glibc and libstdc++ run unchanged on top of it.
// Arguments arrive in %ebx, %ecx, %edx, %esi, %edi, %ebp; the result goes back in %eax,
// negative errno on failure. Unknown calls are logged once each and answered -ENOSYS.
#include "kernel.h"
#include "trap.h"
#include "gdt.h"
#include "smp.h"
#include <linux/errno.h>
#include <linux/fcntl.h>
#include <linux/mman.h>
#include <linux/time.h>
#include <linux/resource.h>

typedef uint32_t u32;
typedef long (*syscall_fn)(u32, u32, u32, u32, u32, u32);

#define ARGS u32 a1, u32 a2, u32 a3, u32 a4, u32 a5, u32 a6
#define UNUSED_ARGS (void)a1, (void)a2, (void)a3, (void)a4, (void)a5, (void)a6

static long sys_exit_group(ARGS) {
    UNUSED_ARGS;
    kprintf("cllm: exit(%d)\n", (int)a1);
    kernel_exit((int)a1);
}

// exit() ends the calling thread; in the main thread (tid 1, on CPU 0) that is the whole program.
static long sys_exit(ARGS) {
    if (cpus_tid() == 1) {
        return sys_exit_group(a1, a2, a3, a4, a5, a6);
    }
    thread_exit();
}

static long sys_read(ARGS) { UNUSED_ARGS; return files_read((int)a1, (void *)a2, a3); }
static long sys_write(ARGS) { UNUSED_ARGS; return files_write((int)a1, (const void *)a2, a3); }
static long sys_open(ARGS) { UNUSED_ARGS; return files_openat(AT_FDCWD, (const char *)a1, (int)a2); }
static long sys_openat(ARGS) { UNUSED_ARGS; return files_openat((int)a1, (const char *)a2, (int)a3); }
static long sys_close(ARGS) { UNUSED_ARGS; return files_close((int)a1); }
static long sys_ioctl(ARGS) { UNUSED_ARGS; return files_ioctl((int)a1, a2, (void *)a3); }
static long sys_fcntl64(ARGS) { UNUSED_ARGS; return files_fcntl((int)a1, (int)a2, a3); }
static long sys_getdents64(ARGS) { UNUSED_ARGS; return files_getdents64((int)a1, (void *)a2, a3); }
static long sys_access(ARGS) { UNUSED_ARGS; return files_access(AT_FDCWD, (const char *)a1, (int)a2); }
static long sys_faccessat(ARGS) { UNUSED_ARGS; return files_access((int)a1, (const char *)a2, (int)a3); }
static long sys_statx(ARGS) { UNUSED_ARGS; return files_statx((int)a1, (const char *)a2, (int)a3, (void *)a5); }
static long sys_stat64(ARGS) { UNUSED_ARGS; return files_stat64(AT_FDCWD, (const char *)a1, 0, (void *)a2); }
static long sys_fstat64(ARGS) { UNUSED_ARGS; return files_stat64((int)a1, "", AT_EMPTY_PATH, (void *)a2); }
static long sys_fstatat64(ARGS) { UNUSED_ARGS; return files_stat64((int)a1, (const char *)a2, (int)a4, (void *)a3); }
static long sys_pread64(ARGS) { UNUSED_ARGS; return files_pread((int)a1, (void *)a2, a3, ((uint64_t)a5 << 32) | a4); }

// poll(fds, n, timeout_ms) over struct pollfd { int fd; short events, revents; }
static long poll_until(u32 fds_addr, u32 n, int64_t timeout_ns) {
    int16_t *fds = (int16_t *)fds_addr;
    uint64_t deadline = clock_ns() + (uint64_t)timeout_ns;
    for (;;) {
        long ready = 0;
        for (u32 i = 0; i < n; i++) {
            int fd = *(int32_t *)&fds[4 * i];
            fds[4 * i + 3] = fd < 0 ? 0 : (int16_t)files_ready(fd, fds[4 * i + 2]);
            ready += fds[4 * i + 3] != 0;
        }
        if (ready || (timeout_ns >= 0 && clock_ns() >= deadline)) {
            return ready;
        }
        cpu_idle();
    }
}

static long sys_poll(ARGS) {
    UNUSED_ARGS;
    int timeout_ms = (int)a3;
    return poll_until(a1, a2, timeout_ms < 0 ? -1 : (int64_t)timeout_ms * 1000000);
}

static long sys_ppoll_time64(ARGS) {
    UNUSED_ARGS;
    const int64_t *ts = (const int64_t *)a3;
    return poll_until(a1, a2, ts ? ts[0] * 1000000000 + ts[1] : -1);
}

static long sys_writev(ARGS) {
    UNUSED_ARGS;
    const u32 *iov = (const u32 *)a2;   // struct iovec { void *base; size_t len; }
    long total = 0;
    for (u32 i = 0; i < a3; i++) {
        long n = files_write((int)a1, (const void *)iov[2 * i], iov[2 * i + 1]);
        if (n < 0) {
            return total ? total : n;
        }
        total += n;
    }
    return total;
}

static long sys_lseek(ARGS) {
    UNUSED_ARGS;
    uint64_t result;
    long err = files_lseek((int)a1, (int32_t)a2, (int)a3, &result);
    if (err) {
        return err;
    }
    return result > 0x7fffffff ? -EOVERFLOW : (long)result;
}

static long sys_llseek(ARGS) {
    UNUSED_ARGS;
    uint64_t result;
    long err = files_lseek((int)a1, (int64_t)(((uint64_t)a2 << 32) | a3), (int)a5, &result);
    if (err == 0) {
        *(uint64_t *)a4 = result;
    }
    return err;
}

static long sys_getcwd(ARGS) {
    UNUSED_ARGS;
    if (a2 < 2) {
        return -ERANGE;
    }
    char *buf = (char *)a1;
    buf[0] = '/';
    buf[1] = 0;
    return 2;
}

static long sys_brk(ARGS) { UNUSED_ARGS; return (long)ram_brk(a1); }

static long sys_mmap2(ARGS) {
    UNUSED_ARGS;
    u32 len = a2, flags = a4;
    int fd = (int)a5;
    if (len == 0 || (flags & MAP_FIXED)) {
        return -EINVAL;     // nothing here asks for a fixed address; refuse rather than clobber
    }
    if (!(flags & MAP_ANONYMOUS)) {
        u32 addr;
        long err = files_mmap(fd, len, a6, &addr);
        return err ? err : (long)addr;
    }
    u32 addr = ram_alloc(len);
    return addr ? (long)addr : -ENOMEM;
}

static int in_boot_module(u32 addr) {
    for (u32 i = 0; i < kernel.module_count; i++) {
        u32 start = (u32)kernel.modules[i].data;
        if (addr >= start && addr < start + PAGE_ALIGN_UP(kernel.modules[i].size)) {
            return 1;
        }
    }
    return 0;
}

static long sys_munmap(ARGS) {
    UNUSED_ARGS;
    if (in_boot_module(a1)) {
        return 0;           // a file mapping: the module itself stays
    }
    return ram_free(a1, a2);
}

static long sys_mremap(ARGS) {
    UNUSED_ARGS;
    u32 old_addr = a1, old_len = PAGE_ALIGN_UP(a2), new_len = PAGE_ALIGN_UP(a3), flags = a4;
    if (in_boot_module(old_addr) || new_len == 0) {
        return -EINVAL;
    }
    if (new_len <= old_len) {
        if (new_len < old_len) {
            ram_free(old_addr + new_len, old_len - new_len);
        }
        return (long)old_addr;
    }
    if (!(flags & MREMAP_MAYMOVE)) {
        return -ENOMEM;
    }
    u32 addr = ram_alloc(new_len);
    if (!addr) {
        return -ENOMEM;
    }
    u32 count = old_len / 4;
    const void *src = (const void *)old_addr;
    void *dst = (void *)addr;
    __asm__ volatile ("rep movsl" : "+S" (src), "+D" (dst), "+c" (count) :: "memory");
    ram_free(old_addr, old_len);
    return (long)addr;
}

static long sys_zero(ARGS) { UNUSED_ARGS; return 0; }           // succeeds, nothing to do
static long sys_nosys_quiet(ARGS) { UNUSED_ARGS; return -ENOSYS; } // known, deliberately absent
static long sys_enoent(ARGS) { UNUSED_ARGS; return -ENOENT; }
static long sys_erofs(ARGS) { UNUSED_ARGS; return -EROFS; }
static long sys_one(ARGS) { UNUSED_ARGS; return 1; }            // pid: there is one process
static long sys_gettid(ARGS) { UNUSED_ARGS; return cpus_tid(); }


// clone(flags, stack, parent_tid, tls, child_tid): i386's argument order
static long sys_clone(ARGS) {
    UNUSED_ARGS;
    return thread_clone(syscall_frame[cpu_id()], a1, a2, (uint32_t *)a3, (const struct user_desc *)a4, (uint32_t *)a5);
}

// clone3(struct clone_args *, size): 64-bit fields; the stack is given as its lowest address and size.
static long sys_clone3(ARGS) {
    UNUSED_ARGS;
    const uint64_t *args = (const uint64_t *)a1;
    if (a2 < 64) {
        return -EINVAL;
    }
    uint64_t flags = args[0], child_tid = args[2], parent_tid = args[3], stack = args[5], stack_size = args[6], tls = args[7];
    if (flags >> 32) {
        return -EINVAL;
    }
    return thread_clone(syscall_frame[cpu_id()], (u32)flags, (u32)(stack + stack_size), (uint32_t *)(u32)parent_tid,
        (const struct user_desc *)(u32)tls, (uint32_t *)(u32)child_tid);
}

static long sys_set_thread_area(ARGS) { UNUSED_ARGS; return gdt_set_tls((struct user_desc *)a1); }

#define FUTEX_CLOCK_REALTIME 256

// futex(addr, op, val, timeout, addr2, val3) with the timeout already in nanoseconds (or -1):
// relative for FUTEX_WAIT, absolute for FUTEX_WAIT_BITSET. Every waiter is woken whatever
// the bitset: a spurious wake-up is allowed, a lost one is not.
static long futex(u32 addr, u32 op, u32 val, int64_t timeout_ns) {
    int cmd = (int)op & 0x7f;   // without FUTEX_PRIVATE_FLAG and FUTEX_CLOCK_REALTIME
    switch (cmd) {
        case 0:  // FUTEX_WAIT
        case 9:  // FUTEX_WAIT_BITSET
            uint64_t deadline = 0;
            if (timeout_ns >= 0) {
                uint64_t now = clock_ns();
                if (cmd == 0) {
                    deadline = now + (uint64_t)timeout_ns;
                } else if (op & FUTEX_CLOCK_REALTIME) {
                    uint64_t epoch_now = clock_epoch_ns();
                    deadline = (uint64_t)timeout_ns > epoch_now ? now + ((uint64_t)timeout_ns - epoch_now) : now;
                } else {
                    deadline = (uint64_t)timeout_ns;
                }
                deadline += deadline == 0;      // 0 means "none" to futex_wait
            }
            return futex_wait((volatile uint32_t *)addr, val, deadline);
        case 1:  // FUTEX_WAKE
        case 10: // FUTEX_WAKE_BITSET
            return futex_wake((volatile uint32_t *)addr, (int)val);
        default:
            return -ENOSYS;
    }
}

static long sys_getrlimit(ARGS) {
    UNUSED_ARGS;
    u32 *rlim = (u32 *)a2;          // struct rlimit { cur, max } of 32-bit words
    rlim[0] = rlim[1] = a1 == RLIMIT_STACK ? BOOT_STACK_SIZE : RLIM_INFINITY;
    return 0;
}

static long sys_prlimit64(ARGS) {
    UNUSED_ARGS;
    if (a4) {
        uint64_t *rlim = (uint64_t *)a4;
        rlim[0] = rlim[1] = a2 == RLIMIT_STACK ? BOOT_STACK_SIZE : ~0ull;
    }
    return 0;
}

static long sys_uname(ARGS) {
    UNUSED_ARGS;
    static const char fields[6][65] = { "cllm", "cllm", "6.1.0-cllm", KERNEL_VERSION, "i686", "" };
    char *out = (char *)a1;         // struct new_utsname: six 65-byte strings
    for (int i = 0; i < 6 * 65; i++) {
        out[i] = fields[i / 65][i % 65];
    }
    return 0;
}

static long sys_getrandom(ARGS) {
    UNUSED_ARGS;
    uint8_t *buf = (uint8_t *)a1;
    uint64_t r = 0;
    for (u32 i = 0; i < a2; i++) {
        r = i % 8 ? r >> 8 : kernel_random();
        buf[i] = (uint8_t)r;
    }
    return a2;
}

static uint64_t clock_read(u32 clk) {
    return clk == CLOCK_REALTIME || clk == CLOCK_REALTIME_COARSE ? clock_epoch_ns() : clock_ns();
}

// Each time call comes twice: with struct old_timespec32 { s32 sec, nsec } and, with the
// time64 calls, struct __kernel_timespec { s64 sec, nsec }.
enum { TS32, TS64 };

static uint64_t timespec_ns(u32 addr, int kind) {
    if (kind == TS64) {
        const int64_t *ts = (const int64_t *)addr;
        return (uint64_t)ts[0] * 1000000000u + (uint64_t)ts[1];
    }
    const int32_t *ts = (const int32_t *)addr;
    return (uint64_t)ts[0] * 1000000000u + (uint64_t)ts[1];
}

static void timespec_put(u32 addr, uint64_t ns, int kind) {
    if (kind == TS64) {
        int64_t *ts = (int64_t *)addr;
        ts[0] = (int64_t)(ns / 1000000000u);
        ts[1] = (int64_t)(ns % 1000000000u);
    } else {
        int32_t *ts = (int32_t *)addr;
        ts[0] = (int32_t)(ns / 1000000000u);
        ts[1] = (int32_t)(ns % 1000000000u);
    }
}

static long read_clock(u32 clk, u32 ts, int kind) {
    timespec_put(ts, clock_read(clk), kind);
    return 0;
}

static long resolution(u32 ts, int kind) {
    if (ts) {
        timespec_put(ts, 1, kind);
    }
    return 0;
}

static long sleep_on_clock(u32 clk, u32 flags, u32 ts, int kind) {
    uint64_t ns = timespec_ns(ts, kind), now = clock_read(clk);
    uint64_t deadline = (flags & TIMER_ABSTIME) ? ns : now + ns;
    if (deadline > now) {
        clock_sleep_ns(deadline - now);
    }
    return 0;
}

static long sys_clock_gettime32(ARGS) { UNUSED_ARGS; return read_clock(a1, a2, TS32); }
static long sys_clock_gettime64(ARGS) { UNUSED_ARGS; return read_clock(a1, a2, TS64); }
static long sys_clock_getres(ARGS) { UNUSED_ARGS; return resolution(a2, TS32); }
static long sys_clock_getres64(ARGS) { UNUSED_ARGS; return resolution(a2, TS64); }
static long sys_clock_nanosleep32(ARGS) { UNUSED_ARGS; return sleep_on_clock(a1, a2, a3, TS32); }
static long sys_clock_nanosleep64(ARGS) { UNUSED_ARGS; return sleep_on_clock(a1, a2, a3, TS64); }
static long sys_nanosleep32(ARGS) { UNUSED_ARGS; clock_sleep_ns(timespec_ns(a1, TS32)); return 0; }
static long sys_futex(ARGS) { UNUSED_ARGS; return futex(a1, a2, a3, a4 ? (int64_t)timespec_ns(a4, TS32) : -1); }
static long sys_futex_time64(ARGS) { UNUSED_ARGS; return futex(a1, a2, a3, a4 ? (int64_t)timespec_ns(a4, TS64) : -1); }

static long sys_gettimeofday(ARGS) {
    UNUSED_ARGS;
    if (a1) {
        uint64_t ns = clock_epoch_ns();
        int32_t *tv = (int32_t *)a1;
        tv[0] = (int32_t)(ns / 1000000000u);
        tv[1] = (int32_t)(ns % 1000000000u / 1000u);
    }
    return 0;
}

static long sys_time(ARGS) {
    UNUSED_ARGS;
    long t = (long)(clock_epoch_ns() / 1000000000u);
    if (a1) {
        *(int32_t *)a1 = (int32_t)t;
    }
    return t;
}

static long sys_sysinfo(ARGS) {
    UNUSED_ARGS;
    struct ram_stats st;
    ram_get_stats(&st);
    u32 *info = (u32 *)a1;              // struct sysinfo (i386): 64 bytes
    for (int i = 0; i < 16; i++) {
        info[i] = 0;
    }
    info[0] = (u32)(clock_ns() / 1000000000u);     // uptime
    info[4] = kernel.ram_bytes;                     // totalram
    info[5] = st.free;                              // freeram
    info[13] = 1;                                   // mem_unit
    return 0;
}

static long sys_sched_getaffinity(ARGS) {
    UNUSED_ARGS;
    if (a2 < 4) {
        return -EINVAL;
    }
    uint8_t *mask = (uint8_t *)a3;
    for (u32 i = 0; i < a2; i++) {
        mask[i] = 0;
    }
    for (int cpu = 0; cpu < cpu_count; cpu++) {
        mask[cpu / 8] |= 1u << (cpu % 8);   // every thread may run on any CPU
    }
    return 4;
}

static long sys_tgkill(ARGS) {
    UNUSED_ARGS;
    kprintf("cllm: signal %u raised (abort?)\n", a3);
    panic("the C runtime aborted");
}

// number, name, handler. Names appear in the unknown-call log and in panic dumps.
#define SYSCALLS(X) \
    X(1, exit, sys_exit) \
    X(3, read, sys_read) \
    X(4, write, sys_write) \
    X(5, open, sys_open) \
    X(6, close, sys_close) \
    X(10, unlink, sys_erofs) \
    X(13, time, sys_time) \
    X(19, lseek, sys_lseek) \
    X(20, getpid, sys_one) \
    X(33, access, sys_access) \
    X(37, kill, sys_tgkill) \
    X(38, rename, sys_erofs) \
    X(39, mkdir, sys_erofs) \
    X(40, rmdir, sys_erofs) \
    X(45, brk, sys_brk) \
    X(54, ioctl, sys_ioctl) \
    X(78, gettimeofday, sys_gettimeofday) \
    X(85, readlink, sys_enoent) \
    X(102, socketcall, sys_socketcall) \
    X(91, munmap, sys_munmap) \
    X(116, sysinfo, sys_sysinfo) \
    X(118, fsync, sys_zero) \
    X(120, clone, sys_clone) \
    X(122, uname, sys_uname) \
    X(125, mprotect, sys_zero) \
    X(140, _llseek, sys_llseek) \
    X(146, writev, sys_writev) \
    X(162, nanosleep, sys_nanosleep32) \
    X(163, mremap, sys_mremap) \
    X(168, poll, sys_poll) \
    X(174, rt_sigaction, sys_zero) \
    X(175, rt_sigprocmask, sys_zero) \
    X(180, pread64, sys_pread64) \
    X(183, getcwd, sys_getcwd) \
    X(186, sigaltstack, sys_zero) \
    X(191, ugetrlimit, sys_getrlimit) \
    X(192, mmap2, sys_mmap2) \
    X(195, stat64, sys_stat64) \
    X(196, lstat64, sys_stat64) \
    X(197, fstat64, sys_fstat64) \
    X(199, getuid32, sys_zero) \
    X(200, getgid32, sys_zero) \
    X(201, geteuid32, sys_zero) \
    X(202, getegid32, sys_zero) \
    X(219, madvise, sys_zero) \
    X(220, getdents64, sys_getdents64) \
    X(221, fcntl64, sys_fcntl64) \
    X(158, sched_yield, sys_zero) \
    X(224, gettid, sys_gettid) \
    X(238, tkill, sys_tgkill) \
    X(240, futex, sys_futex) \
    X(242, sched_getaffinity, sys_sched_getaffinity) \
    X(243, set_thread_area, sys_set_thread_area) \
    X(250, fadvise64, sys_zero) \
    X(252, exit_group, sys_exit_group) \
    X(258, set_tid_address, sys_gettid) \
    X(265, clock_gettime, sys_clock_gettime32) \
    X(266, clock_getres, sys_clock_getres) \
    X(267, clock_nanosleep, sys_clock_nanosleep32) \
    X(270, tgkill, sys_tgkill) \
    X(272, fadvise64_64, sys_zero) \
    X(295, openat, sys_openat) \
    X(296, mkdirat, sys_erofs) \
    X(300, fstatat64, sys_fstatat64) \
    X(301, unlinkat, sys_erofs) \
    X(302, renameat, sys_erofs) \
    X(305, readlinkat, sys_enoent) \
    X(307, faccessat, sys_faccessat) \
    X(311, set_robust_list, sys_zero) \
    X(340, prlimit64, sys_prlimit64) \
    X(355, getrandom, sys_getrandom) \
    X(359, socket, sys_socket) \
    X(361, bind, sys_bind) \
    X(362, connect, sys_connect) \
    X(363, listen, sys_listen) \
    X(364, accept4, sys_accept4) \
    X(365, getsockopt, sys_getsockopt) \
    X(366, setsockopt, sys_setsockopt) \
    X(367, getsockname, sys_getsockname) \
    X(368, getpeername, sys_getpeername) \
    X(369, sendto, sys_sendto) \
    X(371, recvfrom, sys_recvfrom) \
    X(373, shutdown, sys_shutdown) \
    X(383, statx, sys_statx) \
    X(386, rseq, sys_nosys_quiet) \
    X(403, clock_gettime64, sys_clock_gettime64) \
    X(406, clock_getres_time64, sys_clock_getres64) \
    X(407, clock_nanosleep_time64, sys_clock_nanosleep64) \
    X(414, ppoll_time64, sys_ppoll_time64) \
    X(422, futex_time64, sys_futex_time64) \
    X(435, clone3, sys_clone3) \
    X(439, faccessat2, sys_faccessat)

#define NR_MAX 512

#define HANDLER_ENTRY(nr, name, fn) [nr] = fn,
#define NAME_ENTRY(nr, name, fn) [nr] = #name,
static const syscall_fn handlers[NR_MAX] = { SYSCALLS(HANDLER_ENTRY) };
static const char *const names[NR_MAX] = { SYSCALLS(NAME_ENTRY) };

static uint32_t reported[NR_MAX / 32];
uint32_t syscall_counts[NR_MAX];

const char *syscall_name(int nr) {
    return nr >= 0 && nr < NR_MAX ? names[nr] : 0;
}

void syscall_dispatch(struct trapframe *tf) {
    uint32_t nr = tf->eax;
    if (nr >= NR_MAX || !handlers[nr]) {
        if (nr < NR_MAX && !(reported[nr / 32] & (1u << (nr % 32)))) {
            reported[nr / 32] |= 1u << (nr % 32);
            kprintf("cllm: unknown syscall %u (ebx=%08x ecx=%08x edx=%08x) -> ENOSYS\n", nr, tf->ebx, tf->ecx, tf->edx);
        }
        tf->eax = (uint32_t)-ENOSYS;
        return;
    }
    int cpu = cpu_id();
    int outer = current_syscall[cpu];
    const char *outer_name = current_syscall_name[cpu];
    struct trapframe *outer_frame = syscall_frame[cpu];
    current_syscall[cpu] = (int)nr;
    current_syscall_name[cpu] = names[nr];
    syscall_frame[cpu] = tf;
    __atomic_fetch_add(&syscall_counts[nr], 1, __ATOMIC_RELAXED);
    tf->eax = (uint32_t)handlers[nr](tf->ebx, tf->ecx, tf->edx, tf->esi, tf->edi, tf->ebp);
    current_syscall[cpu] = outer;
    current_syscall_name[cpu] = outer_name;
    syscall_frame[cpu] = outer_frame;
}
