#pragma once
#include <stdint.h>

#define PANIC_EXIT_STATUS 0x10  // QEMU exits with (status << 1) | 1 = 33

#include "kernel.h"

// The system call each CPU is serving, or -1: a fault inside the shim names it in the dump.
extern volatile int current_syscall[CPUS_MAX];

// Name of the function containing addr and the offset into it, from the symbol table the
// build links into the kernel. Returns NULL when the address is outside every function.
const char *ksym_lookup(uint32_t addr, uint32_t *offset);

void panic(const char *why) __attribute__((noreturn));
