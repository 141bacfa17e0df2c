// kernel: what the boot code found, counters from the system-call shim, and deliberate
// faults, allocations and threads that exercise the kernel layer from Python.
#define _GNU_SOURCE             // pthread_tryjoin_np
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <poll.h>

#include "py/runtime.h"
#include "py/objstr.h"
#include "kernel/kernel.h"
#include "kernel/smp.h"

// cmdline() -> str: the kernel command line as the loader passed it
static mp_obj_t kernel_cmdline(void) {
    return mp_obj_new_str(kernel.cmdline, strlen(kernel.cmdline));
}
static MP_DEFINE_CONST_FUN_OBJ_0(kernel_cmdline_obj, kernel_cmdline);

// modules() -> [(path, size, address)]: the boot modules, readable as files at path
static mp_obj_t kernel_modules(void) {
    mp_obj_t list = mp_obj_new_list(0, NULL);
    for (uint32_t i = 0; i < kernel.module_count; i++) {
        const struct boot_module *m = &kernel.modules[i];
        vstr_t path;
        vstr_init(&path, strlen(m->name) + 2);
        vstr_add_char(&path, '/');
        vstr_add_str(&path, m->name);
        mp_obj_t item[3] = {
            mp_obj_new_str_from_vstr(&path),
            mp_obj_new_int_from_uint(m->size),
            mp_obj_new_int_from_uint((uint32_t)m->data),
        };
        mp_obj_list_append(list, mp_obj_new_tuple(3, item));
    }
    return list;
}
static MP_DEFINE_CONST_FUN_OBJ_0(kernel_modules_obj, kernel_modules);

static void dict_set(mp_obj_t dict, qstr key, mp_obj_t value) {
    mp_obj_dict_store(dict, MP_OBJ_NEW_QSTR(key), value);
}

// mem() -> dict: RAM found and the state of the memory behind brk/mmap, in bytes
static mp_obj_t kernel_mem(void) {
    struct ram_stats s;
    ram_get_stats(&s);
    mp_obj_t d = mp_obj_new_dict(5);
    dict_set(d, MP_QSTR_ram, mp_obj_new_int_from_uint(kernel.ram_bytes));
    dict_set(d, MP_QSTR_total, mp_obj_new_int_from_uint(s.total));
    dict_set(d, MP_QSTR_free, mp_obj_new_int_from_uint(s.free));
    dict_set(d, MP_QSTR_largest_free, mp_obj_new_int_from_uint(s.largest_free));
    dict_set(d, MP_QSTR_brk, mp_obj_new_int_from_uint(s.brk));
    return d;
}
static MP_DEFINE_CONST_FUN_OBJ_0(kernel_mem_obj, kernel_mem);

// heap_free() -> int: free bytes in MicroPython's heap, what gc.mem_free() says, but fast enough
// for a status line every second: gc.mem_free() walks the allocation table one block at a time
// (126 ms for a 128 MiB heap under TCG, during which nothing else runs). This takes a table byte
// (four blocks) at a time, four zero bytes at once, and nothing past the highest block in use.
static mp_obj_t kernel_heap_free(void) {
    static uint8_t free_in_byte[256];
    if (!free_in_byte[0]) {
        for (int b = 0; b < 256; b++) {
            for (int k = 0; k < 8; k += 2) {
                free_in_byte[b] += ((b >> k) & 3) == 0;     // AT_FREE
            }
        }
    }
    #if MICROPY_GC_SPLIT_HEAP
    #error "heap_free counts one heap area"
    #endif
    const mp_state_mem_area_t *area = &MP_STATE_MEM(area);
    size_t len = area->gc_alloc_table_byte_len;
    size_t used = MIN(area->gc_last_used_block / 4 + 1, len);
    const uint8_t *atb = area->gc_alloc_table_start;
    size_t blocks = 4 * (len - used), i = 0;
    for (; i < used && ((uintptr_t)(atb + i) & 3); i++) {
        blocks += free_in_byte[atb[i]];
    }
    for (; i + 4 <= used; i += 4) {
        uint32_t word = *(const uint32_t *)(atb + i);
        blocks += word ? free_in_byte[word & 0xff] + free_in_byte[(word >> 8) & 0xff] +
            free_in_byte[(word >> 16) & 0xff] + free_in_byte[word >> 24] : 16;
    }
    for (; i < used; i++) {
        blocks += free_in_byte[atb[i]];
    }
    return mp_obj_new_int_from_uint(blocks * MICROPY_BYTES_PER_GC_BLOCK);
}
static MP_DEFINE_CONST_FUN_OBJ_0(kernel_heap_free_obj, kernel_heap_free);

// clock() -> str: the monotonic clock's source, "hpet" or "pit"
static mp_obj_t kernel_clock(void) {
    return MP_OBJ_NEW_QSTR(qstr_from_str(clock_source()));
}
static MP_DEFINE_CONST_FUN_OBJ_0(kernel_clock_obj, kernel_clock);

// syscalls() -> {name: count}: system calls served since boot
static mp_obj_t kernel_syscalls(void) {
    mp_obj_t d = mp_obj_new_dict(0);
    for (int nr = 0; nr < 512; nr++) {
        const char *name = syscall_name(nr);
        if (name && syscall_counts[nr]) {
            mp_obj_dict_store(d, mp_obj_new_str(name, strlen(name)), mp_obj_new_int_from_uint(syscall_counts[nr]));
        }
    }
    return d;
}
static MP_DEFINE_CONST_FUN_OBJ_0(kernel_syscalls_obj, kernel_syscalls);

// malloc_check(nbytes) -> address: allocate through glibc's malloc, write and verify a
// pattern over every byte, free. Raises MemoryError when the allocation fails.
static mp_obj_t kernel_malloc_check(mp_obj_t nbytes_in) {
    mp_int_t n = mp_obj_get_int(nbytes_in);
    if (n <= 0) {
        mp_raise_ValueError(MP_ERROR_TEXT("nbytes must be positive"));
    }
    uint32_t *p = malloc((size_t)n);
    if (!p) {
        mp_raise_msg_varg(&mp_type_MemoryError, MP_ERROR_TEXT("malloc(%d) failed"), (int)n);
    }
    size_t words = (size_t)n / 4;
    for (size_t i = 0; i < words; i++) {
        p[i] = (uint32_t)i * 2654435761u;
    }
    size_t bad = 0;
    for (size_t i = 0; i < words; i++) {
        bad += p[i] != (uint32_t)i * 2654435761u;
    }
    free(p);
    if (bad) {
        mp_raise_msg_varg(&mp_type_RuntimeError, MP_ERROR_TEXT("%u words read back wrong"), (unsigned)bad);
    }
    return mp_obj_new_int_from_uint((uint32_t)p);
}
static MP_DEFINE_CONST_FUN_OBJ_1(kernel_malloc_check_obj, kernel_malloc_check);

// cpus() -> int: the CPUs running (CPU 0, which runs Python, and one per glibc thread more)
static mp_obj_t kernel_cpus(void) {
    return MP_OBJ_NEW_SMALL_INT(cpu_count);
}
static MP_DEFINE_CONST_FUN_OBJ_0(kernel_cpus_obj, kernel_cpus);

// A relay through pthread mutex + condition variable (futex waits and wakes): participant
// i waits for its turn, passes it to i + 1, rounds times over.
struct relay {
    pthread_mutex_t lock;
    pthread_cond_t turn_changed;
    int turn, participants, rounds;
    pid_t tids[CPUS_MAX];
    int bad;
};

static __thread int relay_seat;    // each thread's own TLS: checked after the relay

// Arithmetic in SSE registers long enough for a timer tick to land in it: on CPU 0, where two
// threads may take turns, a switch that lost a thread's registers would change the result.
static __attribute__((noinline)) double spin(int seat, int n) {
    double x = seat + 1.0, y = 0.5;
    for (int i = 0; i < n; i++) {
        x = x * 1.0000001 + y;
        y = y * 0.9999999 + 1e-9 * x;
    }
    return x + y;
}

static void relay_run(struct relay *r, int seat) {
    relay_seat = seat;
    double expect = spin(seat, 200000);
    r->tids[seat] = (pid_t)syscall(SYS_gettid);
    for (int k = 0; k < r->rounds; k++) {
        pthread_mutex_lock(&r->lock);
        while (r->turn != seat) {
            pthread_cond_wait(&r->turn_changed, &r->lock);
        }
        r->turn = (seat + 1) % r->participants;
        pthread_cond_broadcast(&r->turn_changed);
        pthread_mutex_unlock(&r->lock);
        if (spin(seat, 200000) != expect) {
            __atomic_fetch_add(&r->bad, 1, __ATOMIC_RELAXED);
        }
        void *p = malloc(1000 + seat * 100 + k);     // glibc's per-thread arenas, through mmap
        if (!p) {
            __atomic_fetch_add(&r->bad, 1, __ATOMIC_RELAXED);
        }
        free(p);
    }
    if (relay_seat != seat) {
        __atomic_fetch_add(&r->bad, 1, __ATOMIC_RELAXED);
    }
}

struct relay_arg {
    struct relay *relay;
    int seat;
};

static void *relay_thread(void *arg) {
    struct relay_arg *a = arg;
    relay_run(a->relay, a->seat);
    return (void *)(intptr_t)(a->seat * 7);
}

// thread_test(cycles, rounds=20, threads=<one per CPU but this one>) -> dict: cycles times, start
// that many pthreads, pass a turn round all of them (main thread included) rounds times, each doing
// some SSE arithmetic and a malloc per turn, join them. One thread more than the other CPUs shares
// CPU 0 with this one. Returns the threads joined, distinct thread ids seen in the last cycle, and
// glibc's sysconf(_SC_NPROCESSORS_ONLN). OSError(EAGAIN) when there is no thread to start.
static mp_obj_t kernel_thread_test(size_t n_args, const mp_obj_t *args) {
    int cycles = mp_obj_get_int(args[0]);
    int rounds = n_args > 1 ? mp_obj_get_int(args[1]) : 20;
    int workers = n_args > 2 ? mp_obj_get_int(args[2]) : cpu_count - 1;
    if (workers < 0 || workers >= CPUS_MAX) {
        mp_raise_ValueError(MP_ERROR_TEXT("threads out of range"));
    }
    struct relay r;
    int joined = 0, distinct = 0, err = 0;
    for (int c = 0; c < cycles && !err; c++) {
        memset(&r, 0, sizeof(r));
        pthread_mutex_init(&r.lock, NULL);
        pthread_cond_init(&r.turn_changed, NULL);
        r.participants = workers + 1;
        r.rounds = rounds;
        pthread_t threads[CPUS_MAX];
        struct relay_arg targs[CPUS_MAX];
        int started = 0;
        for (int i = 0; i < workers; i++) {
            targs[i] = (struct relay_arg){ &r, i + 1 };
            err = pthread_create(&threads[i], NULL, relay_thread, &targs[i]);
            if (err) {
                break;
            }
            started++;
        }
        if (err) {
            r.participants = started + 1;   // let the started ones finish their relay
        }
        relay_run(&r, 0);
        for (int i = 0; i < started; i++) {
            void *ret;
            pthread_join(threads[i], &ret);
            r.bad += (intptr_t)ret != (i + 1) * 7;
            joined++;
        }
        pthread_cond_destroy(&r.turn_changed);
        pthread_mutex_destroy(&r.lock);
        if (r.bad) {
            mp_raise_msg_varg(&mp_type_RuntimeError, MP_ERROR_TEXT("cycle %d: %d checks failed"), c, r.bad);
        }
        distinct = 0;
        for (int i = 0; i < started + 1; i++) {
            int seen = 0;
            for (int j = 0; j < i; j++) {
                seen |= r.tids[j] == r.tids[i];
            }
            distinct += !seen;
        }
    }
    if (err || workers == 0) {
        mp_raise_OSError(err ? err : EAGAIN);
    }
    mp_obj_t d = mp_obj_new_dict(3);
    dict_set(d, MP_QSTR_threads, MP_OBJ_NEW_SMALL_INT(joined));
    dict_set(d, MP_QSTR_tids, MP_OBJ_NEW_SMALL_INT(distinct));
    dict_set(d, MP_QSTR_nprocs_onln, MP_OBJ_NEW_SMALL_INT(sysconf(_SC_NPROCESSORS_ONLN)));
    return d;
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(kernel_thread_test_obj, 1, 3, kernel_thread_test);

// Inlined: the dump's first frame is the function Python (or the thread) called.
static inline __attribute__((always_inline)) void raise_fault(const char *kind) {
    if (strcmp(kind, "ud") == 0) {
        __asm__ volatile ("ud2");
    } else if (strcmp(kind, "de") == 0) {
        __asm__ volatile ("xorl %%ecx, %%ecx; divl %%ecx" ::: "eax", "ecx", "edx");
    } else if (strcmp(kind, "gp") == 0) {
        __asm__ volatile ("movw $0x1234, %%ax; movw %%ax, %%ds" ::: "eax");
    } else if (strcmp(kind, "bp") == 0) {
        __asm__ volatile ("int3");
    }
}

static void *fault_thread(void *kind) {
    raise_fault(kind);
    return NULL;
}

// fault(kind, thread=False): raise a CPU exception on purpose, to see the panic dump. kind is
// "ud" (invalid opcode), "de" (divide error), "gp" (general protection: a bad segment
// selector) or "bp" (breakpoint). thread=True raises it in a new pthread, i.e. on another CPU
// (OSError(EAGAIN) if there is none). Does not return.
static mp_obj_t kernel_fault(size_t n_args, const mp_obj_t *args) {
    const char *kind = mp_obj_str_get_str(args[0]);
    if (strcmp(kind, "ud") && strcmp(kind, "de") && strcmp(kind, "gp") && strcmp(kind, "bp")) {
        mp_raise_ValueError(MP_ERROR_TEXT("kind must be 'ud', 'de', 'gp' or 'bp'"));
    }
    if (n_args > 1 && mp_obj_is_true(args[1])) {
        pthread_t t;
        int err = pthread_create(&t, NULL, fault_thread, (void *)kind);
        if (err) {
            mp_raise_OSError(err);
        }
        pthread_join(t, NULL);
    } else {
        raise_fault(kind);
    }
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(kernel_fault_obj, 1, 2, kernel_fault);

// exit(status=0): power off; under QEMU with isa-debug-exit, QEMU exits with (status << 1) | 1
static mp_obj_t kernel_exit_(size_t n_args, const mp_obj_t *args) {
    kernel_exit(n_args ? mp_obj_get_int(args[0]) : 0);
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(kernel_exit_obj, 0, 1, kernel_exit_);

// version: the kernel's, as its boot banner and uname() give it
static MP_DEFINE_STR_OBJ(kernel_version_obj, KERNEL_VERSION);

// socket_test(port) -> {step: result}: the socket system calls (kernel/sockets.c, served by lwIP in
// net/sockets.c) as C code in a thread of its own makes them, against a client the host connects
// within 60 s: it sends "hello world\n", reads the answer to its end, closes. Python's thread waits
// for the thread meanwhile (its waits run the network). Each result is what the call returned, or -errno.
static struct {
    const char *name;
    long value;
} socket_steps[40];
static int socket_step_count;
static int socket_port;

#define STEP(name, expr) do { long r_ = (long)(expr); \
    socket_steps[socket_step_count++] = (typeof(socket_steps[0])){ name, r_ < 0 ? -errno : r_ }; } while (0)

static void *socket_test_thread(void *arg) {
    (void)arg;
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(socket_port) }, got;
    socklen_t alen = sizeof got, elen = sizeof(int);
    int one = 1, err = 0;
    char buf[64];
    STEP("ipv6", socket(AF_INET6, SOCK_STREAM, 0));
    STEP("udp", socket(AF_INET, SOCK_DGRAM, 0));
    int s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    STEP("socket", s >= 0 ? 0 : -1);
    STEP("reuseaddr", setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one));
    STEP("bind", bind(s, (struct sockaddr *)&a, sizeof a));
    int s2 = socket(AF_INET, SOCK_STREAM, 0);
    STEP("bind_again", bind(s2, (struct sockaddr *)&a, sizeof a));
    close(s2);
    STEP("listen", listen(s, 4));
    STEP("getsockname", getsockname(s, (struct sockaddr *)&got, &alen) ? -1 : ntohs(got.sin_port));
    STEP("accept_nonblocking", accept(s, NULL, NULL));
    struct pollfd p = { s, POLLIN, 0 };
    STEP("poll", poll(&p, 1, 60000));
    alen = sizeof got;
    int c = accept4(s, (struct sockaddr *)&got, &alen, 0);
    STEP("accept", c >= 0 ? 0 : -1);
    STEP("peer_is_ipv4", got.sin_family == AF_INET && alen == sizeof got);
    STEP("nodelay", setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one));
    STEP("fl_nonblock", fcntl(c, F_GETFL) & O_NONBLOCK);
    STEP("peek", recv(c, buf, 5, MSG_PEEK | MSG_WAITALL));
    STEP("peek_again", recv(c, buf + 5, 5, MSG_PEEK) == 5 && memcmp(buf, buf + 5, 5) == 0);
    STEP("recv_waitall", recv(c, buf, 12, MSG_WAITALL));
    STEP("recv_right", memcmp(buf, "hello world\n", 12) == 0);
    STEP("send", send(c, "HELLO WORLD\n", 12, 0));
    STEP("write", write(c, "bye\n", 4));
    STEP("shutdown", shutdown(c, SHUT_WR));
    STEP("send_after_shutdown", send(c, "x", 1, MSG_NOSIGNAL));
    STEP("recv_eof", recv(c, buf, sizeof buf, 0));
    STEP("so_error", getsockopt(c, SOL_SOCKET, SO_ERROR, &err, &elen) ? -1 : err);
    STEP("close", close(c));
    STEP("close_listener", close(s));
    STEP("closed_fd", send(c, "x", 1, 0));
    return NULL;
}

static mp_obj_t kernel_socket_test(mp_obj_t port_in) {
    socket_port = mp_obj_get_int(port_in);
    socket_step_count = 0;
    pthread_t t;
    int err = pthread_create(&t, NULL, socket_test_thread, NULL);
    if (err) {
        mp_raise_OSError(err);
    }
    while (pthread_tryjoin_np(t, NULL) == EBUSY) {
        mp_event_wait_ms(1);            // the network runs here
    }
    mp_obj_t d = mp_obj_new_dict(0);
    for (int i = 0; i < socket_step_count; i++) {
        mp_obj_dict_store(d, mp_obj_new_str(socket_steps[i].name, strlen(socket_steps[i].name)),
                          mp_obj_new_int(socket_steps[i].value));
    }
    return d;
}
static MP_DEFINE_CONST_FUN_OBJ_1(kernel_socket_test_obj, kernel_socket_test);

static const mp_rom_map_elem_t kernel_module_globals_table[] = {
    { MP_ROM_QSTR(MP_QSTR___name__), MP_ROM_QSTR(MP_QSTR_kernel) },
    { MP_ROM_QSTR(MP_QSTR_version), MP_ROM_PTR(&kernel_version_obj) },
    { MP_ROM_QSTR(MP_QSTR_cmdline), MP_ROM_PTR(&kernel_cmdline_obj) },
    { MP_ROM_QSTR(MP_QSTR_modules), MP_ROM_PTR(&kernel_modules_obj) },
    { MP_ROM_QSTR(MP_QSTR_mem), MP_ROM_PTR(&kernel_mem_obj) },
    { MP_ROM_QSTR(MP_QSTR_heap_free), MP_ROM_PTR(&kernel_heap_free_obj) },
    { MP_ROM_QSTR(MP_QSTR_clock), MP_ROM_PTR(&kernel_clock_obj) },
    { MP_ROM_QSTR(MP_QSTR_syscalls), MP_ROM_PTR(&kernel_syscalls_obj) },
    { MP_ROM_QSTR(MP_QSTR_malloc_check), MP_ROM_PTR(&kernel_malloc_check_obj) },
    { MP_ROM_QSTR(MP_QSTR_cpus), MP_ROM_PTR(&kernel_cpus_obj) },
    { MP_ROM_QSTR(MP_QSTR_thread_test), MP_ROM_PTR(&kernel_thread_test_obj) },
    { MP_ROM_QSTR(MP_QSTR_socket_test), MP_ROM_PTR(&kernel_socket_test_obj) },
    { MP_ROM_QSTR(MP_QSTR_fault), MP_ROM_PTR(&kernel_fault_obj) },
    { MP_ROM_QSTR(MP_QSTR_exit), MP_ROM_PTR(&kernel_exit_obj) },
};
static MP_DEFINE_CONST_DICT(kernel_module_globals, kernel_module_globals_table);

const mp_obj_module_t mp_module_kernel = {
    .base = { &mp_type_module },
    .globals = (mp_obj_dict_t *)&kernel_module_globals,
};

MP_REGISTER_MODULE(MP_QSTR_kernel, mp_module_kernel);
