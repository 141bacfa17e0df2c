// cllm's MicroPython: init, the frozen main.py, the REPL (port/repl.c), soft reboot — and nothing else.
#include <stdio.h>
#include <stdlib.h>

#include "py/compile.h"
#include "py/runtime.h"
#include "py/stackctrl.h"
#include "py/gc.h"
#include "py/mphal.h"
#include "py/mperrno.h"
#include "extmod/vfs.h"
#include "extmod/vfs_posix.h"
#include "shared/runtime/gchelper.h"
#include "shared/runtime/pyexec.h"
#include "kernel/kernel.h"
#include "kernel/smp.h"
#include "drivers/console.h"
#include "net/net.h"
#include "port/qstrindex.h"
#include "port/repl.h"
#include "extmod/modnetwork.h"

#define MIB (1024u * 1024u)
#define HEAP_MIN (2 * MIB)
#define HEAP_MAX (256 * MIB)

// "heap=64M" on the command line, else an eighth of the free memory within [2, 256] MiB:
// the rest stays for C (llama.cpp's weights are mapped, but its buffers are malloc'd).
static size_t gc_heap_size(void) {
    char buf[32];
    if (cmdline_get("heap", buf, sizeof(buf))) {
        char *end;
        unsigned long v = strtoul(buf, &end, 0);
        switch (*end) {
            case 'k': case 'K': v *= 1024; break;
            case 'm': case 'M': v *= MIB; break;
            case 'g': case 'G': v *= 1024 * MIB; break;
        }
        if (v >= 64 * 1024) {
            return v;
        }
        printf("cllm: ignoring heap=%s (need at least 64K)\n", buf);
    }
    struct ram_stats s;
    ram_get_stats(&s);
    size_t size = s.free / 8;
    return size < HEAP_MIN ? HEAP_MIN : size > HEAP_MAX ? HEAP_MAX : size;
}

static void print_banner(size_t heap) {
    struct ram_stats s;
    ram_get_stats(&s);
    printf("%s cllm %s (MicroPython %s) on i386\n", clock_stamp(), KERNEL_VERSION, MICROPY_VERSION_STRING);
    printf("%s RAM: %u MiB found, %u MiB free at 0x%08x-0x%08x\n", clock_stamp(), (unsigned)(kernel.ram_bytes / MIB),
        (unsigned)(s.free / MIB), (unsigned)kernel.free_start, (unsigned)kernel.free_end);
    printf("%s cmdline: \"%s\"\n", clock_stamp(), kernel.cmdline);
    for (uint32_t i = 0; i < kernel.module_count; i++) {
        const struct boot_module *m = &kernel.modules[i];
        printf("%s module: /%s %u bytes at 0x%08x\n", clock_stamp(), m->name, (unsigned)m->size, (unsigned)m->data);
    }
    printf("%s clock: %s, cpu: sse2%s, gc heap: %u KiB\n", clock_stamp(), clock_source(), kernel.avx ? " avx" : "",
        (unsigned)(heap / 1024));
    printf("%s cpus: %d (%s):", clock_stamp(), cpu_count, cpus_source);
    for (int i = 0; i < cpu_count; i++) {
        printf(" cpu%d=apic%u", i, cpus[i].apic_id);
    }
    printf("\n");
    fflush(stdout);
}

// lwIP's starvation timer (net.c) asks for a poll from interrupt context: MicroPython runs it
// at the next branch of bytecode. The node stays queued across a soft reboot (mp_init keeps
// the scheduler's list of nodes).
static mp_sched_node_t net_poll_node;

static void net_poll_scheduled(mp_sched_node_t *node) {
    (void)node;
    net_poll();
}

static void net_poll_soon(void) {
    mp_sched_schedule_node(&net_poll_node, net_poll_scheduled);
}

static void mount_boot_modules(void) {
    mp_obj_t args[2] = {
        MP_OBJ_TYPE_GET_SLOT(&mp_type_vfs_posix, make_new)(&mp_type_vfs_posix, 0, 0, NULL),
        MP_OBJ_NEW_QSTR(MP_QSTR__slash_),
    };
    mp_vfs_mount(2, args, (mp_map_t *)&mp_const_empty_map);
    MP_STATE_VM(vfs_cur) = MP_STATE_VM(vfs_mount_table);
}

int main(int argc, char **argv) {
    (void)argc;
    (void)argv;
    console_init();
    __asm__ volatile ("sti");
    smp_init(cpu_idle_loop);    // the other CPUs wait for the threads glibc's clone hands them

    size_t heap_size = gc_heap_size();
    void *heap = malloc(heap_size);
    if (!heap) {
        printf("cllm: cannot allocate a %u KiB Python heap; try a smaller heap= on the command line\n", (unsigned)(heap_size / 1024));
        kernel_exit(1);
    }
    print_banner(heap_size);
    net_init(net_poll_soon);

    qstr_index_init();
    mp_stack_ctrl_init();
    mp_stack_set_limit(BOOT_STACK_SIZE - 256 * 1024);

    for (;;) {
        gc_init(heap, (char *)heap + heap_size);
        mp_init();
        mod_network_init();
        mount_boot_modules();

        // As on MicroPython's boards, main.py runs after a soft reboot from the friendly REPL, not
        // from the raw REPL (a tool asked for a fresh interpreter, not for the appliance's program).
        if (pyexec_mode_kind == PYEXEC_MODE_FRIENDLY_REPL
            && (pyexec_frozen_module("main.py", false) & PYEXEC_FORCED_EXIT)) {
            goto soft_reset;
        }
        // The REPL here once main.py has returned (no server, or it was stopped: greeted again
        // below the server's last log lines); while the server serves, its asyncio task feeds
        // the same REPL (frozen/cllm/server.py).
        repl_greet();
        while (repl_byte(mp_hal_stdin_rx_chr()) == REPL_MORE) {
        }
    soft_reset:
        repl_end();
        mp_printf(&mp_plat_print, "MPY: soft reboot\n");
        gc_sweep_all();
        mp_deinit();
    }
}

void gc_collect(void) {
    gc_collect_start();
    gc_helper_collect_regs_and_stack();
    gc_collect_end();
}

void nlr_jump_fail(void *val) {
    (void)val;
    panic("uncaught exception outside any NLR handler");
}

