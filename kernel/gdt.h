#pragma once

// Selectors. Slots 6..8 are the thread-local-storage slots glibc asks for with
// set_thread_area, numbered as on Linux.
#define SEL_KERNEL_CODE     0x08
#define SEL_KERNEL_DATA     0x10
#define SEL_TSS             0x18
#define SEL_DF_TSS          0x20
#define GDT_TLS_FIRST       6
#define GDT_TLS_COUNT       3

#ifndef __ASSEMBLER__
#include <stdint.h>

// Linux's struct user_desc: what set_thread_area() passes in.
struct user_desc {
    uint32_t entry_number;
    uint32_t base_addr;
    uint32_t limit;
    uint32_t seg_32bit:1;
    uint32_t contents:2;
    uint32_t read_exec_only:1;
    uint32_t limit_in_pages:1;
    uint32_t seg_not_present:1;
    uint32_t useable:1;
};

#endif
