#pragma once
// printf for code that must not depend on glibc: before _start, in panics, in the shim.
// Understands %s %c %d %u %x %08x %p and %%; writes to COM1.
void kprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
