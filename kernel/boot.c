// From the Multiboot loader's hand-off to glibc's _start: learn the machine, set the CPU up,
// and build the initial process stack a Linux kernel would have built for a static program.
// Runs before glibc has relocated its IFUNCs, so nothing here may call memcpy, memset or
// strlen (the build compiles this file freestanding, with -fno-builtin).
#include <elf.h>
#include "kernel.h"
#include "multiboot.h"

extern void _start(void);
extern const Elf32_Ehdr __ehdr_start;
extern uint8_t _end[], boot_stack[BOOT_STACK_SIZE];

#define LOW_MEMORY_END  0x100000u
#define REAL_MODE_END   0xa0000u    // VGA memory and ROMs above
#define BIOS_DATA_END   0x1000u     // the real-mode interrupt table and BIOS data area below

static uint32_t copy_str(char *dst, const char *src, uint32_t max) {
    uint32_t n = 0;
    while (src[n] && n + 1 < max) {
        dst[n] = src[n];
        n++;
    }
    dst[n] = 0;
    return n;
}

// A module's name is the basename of the first word of its loader string ("path args").
static void module_name(char *dst, const char *src) {
    const char *start = src;
    for (const char *p = src; *p && *p != ' '; p++) {
        if (*p == '/') {
            start = p + 1;
        }
    }
    uint32_t n = 0;
    while (start[n] && start[n] != ' ' && n + 1 < MODULE_NAME_MAX) {
        dst[n] = start[n];
        n++;
    }
    dst[n] = 0;
}

static uint32_t max_u32(uint32_t a, uint32_t b) {
    return a > b ? a : b;
}

// Copy what we keep of the boot information; returns the end of everything the loader
// placed in memory (kernel image, modules, strings), where free memory may begin.
static uint32_t read_multiboot(const struct multiboot_info *mbi) {
    uint32_t used_end = (uint32_t)_end;
    if (mbi->flags & MULTIBOOT_INFO_CMDLINE) {
        const char *cmd = (const char *)mbi->cmdline;
        uint32_t n = copy_str(kernel.cmdline, cmd, CMDLINE_MAX);
        used_end = max_u32(used_end, mbi->cmdline + n + 1);
    }
    if (mbi->flags & MULTIBOOT_INFO_MODS) {
        const struct multiboot_module *mods = (const struct multiboot_module *)mbi->mods_addr;
        for (uint32_t i = 0; i < mbi->mods_count; i++) {
            if (kernel.module_count == MODULES_MAX) {
                kprintf("cllm: more than %u boot modules; ignoring the rest\n", MODULES_MAX);
                break;
            }
            struct boot_module *m = &kernel.modules[kernel.module_count++];
            module_name(m->name, mods[i].string ? (const char *)mods[i].string : "module");
            m->data = (const uint8_t *)mods[i].mod_start;
            m->size = mods[i].mod_end - mods[i].mod_start;
            used_end = max_u32(used_end, mods[i].mod_end);
            if (mods[i].string) {
                const char *s = (const char *)mods[i].string;
                uint32_t n = 0;
                while (s[n]) {
                    n++;
                }
                used_end = max_u32(used_end, mods[i].string + n + 1);
            }
        }
        used_end = max_u32(used_end, mbi->mods_addr + mbi->mods_count * sizeof(struct multiboot_module));
    }
    return used_end;
}

// The usable RAM region that holds the kernel (it starts at 1 MiB), and the total RAM.
static void find_memory(const struct multiboot_info *mbi, uint32_t *region_end) {
    *region_end = 0;
    if (mbi->flags & MULTIBOOT_INFO_MEM_MAP) {
        uint32_t p = mbi->mmap_addr;
        while (p < mbi->mmap_addr + mbi->mmap_length) {
            const struct multiboot_mmap_entry *e = (const struct multiboot_mmap_entry *)p;
            if (e->type == MULTIBOOT_MEMORY_AVAILABLE && e->addr < 0x100000000ull) {
                uint64_t end = e->addr + e->len;
                if (end > 0xfffff000ull) {
                    end = 0xfffff000ull;    // no PAE: the 32-bit address space is all there is
                }
                kernel.ram_bytes += (uint32_t)(end - e->addr);
                if (e->addr <= LOW_MEMORY_END && end > LOW_MEMORY_END) {
                    *region_end = (uint32_t)end;
                }
                // A startup IPI starts a CPU at a page below 1 MiB: pick the first free one.
                uint32_t page = PAGE_ALIGN_UP(max_u32((uint32_t)e->addr, BIOS_DATA_END));
                if (!kernel.trampoline_page && e->addr < REAL_MODE_END && page + PAGE_SIZE <= end && page + PAGE_SIZE <= REAL_MODE_END) {
                    kernel.trampoline_page = page;
                }
            }
            p += e->size + sizeof(e->size);
        }
    } else if (mbi->flags & MULTIBOOT_INFO_MEMORY) {
        *region_end = LOW_MEMORY_END + mbi->mem_upper * 1024;
        kernel.ram_bytes = mbi->mem_lower * 1024 + mbi->mem_upper * 1024;
    }
}

// argc, argv (from the command line), an empty envp and the auxiliary vector glibc's static
// startup reads, laid out in the top page of the boot stack; returns the address of argc.
static uint32_t build_initial_stack(void) {
    uint32_t *sp = (uint32_t *)(boot_stack + BOOT_STACK_SIZE - PAGE_SIZE);
    char *strings = (char *)(boot_stack + BOOT_STACK_SIZE - PAGE_SIZE / 2);
    uint32_t n = 0;

    char *execfn = strings;
    strings += copy_str(strings, "/cllm", 16) + 1;
    char *platform = strings;
    strings += copy_str(strings, "i686", 16) + 1;
    uint32_t *random = (uint32_t *)(((uint32_t)strings + 3) & ~3u);
    for (int i = 0; i < 4; i++) {
        random[i] = (uint32_t)(kernel_random() >> 32);
    }
    char *args = (char *)(random + 4);
    copy_str(args, kernel.cmdline, CMDLINE_MAX);

    uint32_t *argc = &sp[n++];
    sp[n++] = (uint32_t)execfn;
    *argc = 1;
    for (char *p = args; *p && *argc < 64;) {
        while (*p == ' ') {
            *p++ = 0;
        }
        if (*p) {
            sp[n++] = (uint32_t)p;
            (*argc)++;
        }
        while (*p && *p != ' ') {
            p++;
        }
    }
    sp[n++] = 0;                        // end of argv
    sp[n++] = 0;                        // envp: empty
#define AUX(type, value) (sp[n++] = (type), sp[n++] = (uint32_t)(value))
    AUX(AT_PHDR, (uint32_t)&__ehdr_start + __ehdr_start.e_phoff);
    AUX(AT_PHENT, __ehdr_start.e_phentsize);
    AUX(AT_PHNUM, __ehdr_start.e_phnum);
    AUX(AT_PAGESZ, PAGE_SIZE);
    AUX(AT_ENTRY, _start);
    AUX(AT_UID, 0);
    AUX(AT_EUID, 0);
    AUX(AT_GID, 0);
    AUX(AT_EGID, 0);
    AUX(AT_SECURE, 0);
    AUX(AT_HWCAP, kernel.cpuid_edx);
    AUX(AT_CLKTCK, 100);
    AUX(AT_PLATFORM, platform);
    AUX(AT_RANDOM, random);         // glibc's stack canary and pointer guard
    AUX(AT_EXECFN, execfn);
    AUX(AT_NULL, 0);
#undef AUX
    return (uint32_t)sp;
}

extern void (*const __start_kernel_early_init[])(void), (*const __stop_kernel_early_init[])(void);

uint32_t boot_main(uint32_t magic, const struct multiboot_info *mbi) {
    for (void (*const *init)(void) = __start_kernel_early_init; init < __stop_kernel_early_init; init++) {
        (*init)();
    }
    if (magic != MULTIBOOT_BOOTLOADER_MAGIC) {
        kprintf("cllm: not started by a Multiboot loader (eax=%08x); stopping\n", magic);
        kernel_exit(1);
    }
    uint32_t eax, ebx;
    cpuid(1, &eax, &ebx, &kernel.cpuid_ecx, &kernel.cpuid_edx);
    kernel.avx = cpu_init();
    gdt_init();
    idt_init(syscall_dispatch, panic_trap, thread_switch, cpu0_wait);
    pic_init();

    uint32_t used_end = read_multiboot(mbi);
    uint32_t region_end;
    find_memory(mbi, &region_end);
    kernel.free_start = PAGE_ALIGN_UP(used_end);
    kernel.free_end = region_end & ~(PAGE_SIZE - 1);
    if (kernel.free_end <= kernel.free_start + 16 * 1024 * 1024) {
        kprintf("cllm: only %u KiB of RAM above the kernel and modules; need at least 16 MiB\n",
            (kernel.free_end > kernel.free_start ? kernel.free_end - kernel.free_start : 0) / 1024);
        kernel_exit(1);
    }
    // QEMU's own Multiboot loader hands over RAM as the machine powered on: all zero, unless
    // this boot follows a reset. After GRUB or on real hardware, free memory may hold anything.
    int fresh = (mbi->flags & (1u << 9)) && mbi->boot_loader_name && kstr_eq((const char *)mbi->boot_loader_name, "qemu")
        && !kernel_after_reset();
    ram_init(kernel.free_start, kernel.free_end, fresh);
    cpu_grow_tlb(kernel.free_end);

    clock_init();
    return build_initial_stack();
}
