// kernel: what the boot code found, counters from the system-call shim, and deliberate
// faults and allocations that exercise the kernel layer from Python.
#include <stdlib.h>
#include <string.h>

#include "py/runtime.h"
#include "py/objstr.h"
#include "port/boot/kernel.h"
#include "port/boot/mem.h"
#include "port/boot/trap.h"
#include "port/drivers/clock.h"

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
    struct mem_stats s;
    mem_get_stats(&s);
    mp_obj_t d = mp_obj_new_dict(5);
    dict_set(d, MP_QSTR_ram, mp_obj_new_int_from_uint(kernel.ram_bytes));
    dict_set(d, MP_QSTR_total, mp_obj_new_int_from_uint(s.total));
    dict_set(d, MP_QSTR_free, mp_obj_new_int_from_uint(s.free));
    dict_set(d, MP_QSTR_largest_free, mp_obj_new_int_from_uint(s.largest_free));
    dict_set(d, MP_QSTR_brk, mp_obj_new_int_from_uint(s.brk));
    return d;
}
static MP_DEFINE_CONST_FUN_OBJ_0(kernel_mem_obj, kernel_mem);

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

// fault(kind): raise a CPU exception on purpose, to see the panic dump. kind is "ud"
// (invalid opcode), "de" (divide error), "gp" (general protection: a bad segment selector)
// or "bp" (breakpoint). Does not return.
static mp_obj_t kernel_fault(mp_obj_t kind_in) {
    const char *kind = mp_obj_str_get_str(kind_in);
    if (strcmp(kind, "ud") == 0) {
        __asm__ volatile ("ud2");
    } else if (strcmp(kind, "de") == 0) {
        __asm__ volatile ("xorl %%ecx, %%ecx; divl %%ecx" ::: "eax", "ecx", "edx");
    } else if (strcmp(kind, "gp") == 0) {
        __asm__ volatile ("movw $0x1234, %%ax; movw %%ax, %%ds" ::: "eax");
    } else if (strcmp(kind, "bp") == 0) {
        __asm__ volatile ("int3");
    } else {
        mp_raise_ValueError(MP_ERROR_TEXT("kind must be 'ud', 'de', 'gp' or 'bp'"));
    }
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_1(kernel_fault_obj, kernel_fault);

// exit(status=0): power off; under QEMU with isa-debug-exit, QEMU exits with (status << 1) | 1
static mp_obj_t kernel_exit_(size_t n_args, const mp_obj_t *args) {
    kernel_exit(n_args ? mp_obj_get_int(args[0]) : 0);
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(kernel_exit_obj, 0, 1, kernel_exit_);

static const mp_rom_map_elem_t kernel_module_globals_table[] = {
    { MP_ROM_QSTR(MP_QSTR___name__), MP_ROM_QSTR(MP_QSTR_kernel) },
    { MP_ROM_QSTR(MP_QSTR_version), MP_ROM_QSTR(MP_QSTR_0_dot_1_dot_0) },
    { MP_ROM_QSTR(MP_QSTR_cmdline), MP_ROM_PTR(&kernel_cmdline_obj) },
    { MP_ROM_QSTR(MP_QSTR_modules), MP_ROM_PTR(&kernel_modules_obj) },
    { MP_ROM_QSTR(MP_QSTR_mem), MP_ROM_PTR(&kernel_mem_obj) },
    { MP_ROM_QSTR(MP_QSTR_clock), MP_ROM_PTR(&kernel_clock_obj) },
    { MP_ROM_QSTR(MP_QSTR_syscalls), MP_ROM_PTR(&kernel_syscalls_obj) },
    { MP_ROM_QSTR(MP_QSTR_malloc_check), MP_ROM_PTR(&kernel_malloc_check_obj) },
    { MP_ROM_QSTR(MP_QSTR_fault), MP_ROM_PTR(&kernel_fault_obj) },
    { MP_ROM_QSTR(MP_QSTR_exit), MP_ROM_PTR(&kernel_exit_obj) },
};
static MP_DEFINE_CONST_DICT(kernel_module_globals, kernel_module_globals_table);

const mp_obj_module_t mp_module_kernel = {
    .base = { &mp_type_module },
    .globals = (mp_obj_dict_t *)&kernel_module_globals,
};

MP_REGISTER_MODULE(MP_QSTR_kernel, mp_module_kernel);
