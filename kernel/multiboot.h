// Multiboot (version 1) structures, as the spec and QEMU's -kernel loader define them.
#pragma once

#define MULTIBOOT_HEADER_MAGIC      0x1BADB002
#define MULTIBOOT_BOOTLOADER_MAGIC  0x2BADB002

// Header flags: ask for page-aligned modules (so mmap can hand them out as they lie)
// and for the memory map.
#define MULTIBOOT_PAGE_ALIGN        (1 << 0)
#define MULTIBOOT_MEMORY_INFO       (1 << 1)

// multiboot_info.flags bits
#define MULTIBOOT_INFO_MEMORY       (1 << 0)
#define MULTIBOOT_INFO_CMDLINE      (1 << 2)
#define MULTIBOOT_INFO_MODS         (1 << 3)
#define MULTIBOOT_INFO_MEM_MAP      (1 << 6)

#define MULTIBOOT_MEMORY_AVAILABLE  1

#ifndef __ASSEMBLER__
#include <stdint.h>

struct multiboot_info {
    uint32_t flags;
    uint32_t mem_lower, mem_upper;      // KiB below 1 MiB and above 1 MiB
    uint32_t boot_device;
    uint32_t cmdline;
    uint32_t mods_count, mods_addr;
    uint32_t syms[4];
    uint32_t mmap_length, mmap_addr;
    uint32_t drives_length, drives_addr;
    uint32_t config_table;
    uint32_t boot_loader_name;
} __attribute__((packed));

struct multiboot_module {
    uint32_t mod_start, mod_end;
    uint32_t string;
    uint32_t reserved;
} __attribute__((packed));

// Each entry is preceded by its own size field, which does not count itself.
struct multiboot_mmap_entry {
    uint32_t size;
    uint64_t addr, len;
    uint32_t type;
} __attribute__((packed));
#endif
