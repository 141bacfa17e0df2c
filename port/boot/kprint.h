#pragma once
#include <stdint.h>
// printf for code that must not depend on glibc: before _start, in panics, in the shim.
// Understands %s %c %d %u %x %08x %p and %%; writes to COM1.
void kprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

// The console lock kprintf takes, for other writers to the console (interrupts off meanwhile).
#define KPRINT_NESTED (1u << 31)    // not an EFLAGS bit: marks a nested take
uint32_t kprint_lock(void);
void kprint_unlock(uint32_t flags);
