// What boot learned about the machine (filled in by boot.c), read by every layer; the kernel
// command line; power off.
#include "kernel.h"

struct kernel_info kernel;

void kernel_exit(int status) {
    __asm__ volatile ("cli");
    // QEMU's isa-debug-exit device (iobase 0xf4) ends the emulator with (status << 1) | 1.
    __asm__ volatile ("outl %0, %1" :: "a" ((uint32_t)status), "Nd" ((uint16_t)0xf4));
    for (;;) {
        __asm__ volatile ("hlt");
    }
}

const char *cmdline_get(const char *key, char *buf, size_t buflen) {
    const char *p = kernel.cmdline;
    while (*p) {
        while (*p == ' ') {
            p++;
        }
        const char *k = key;
        while (*k && *p == *k) {
            p++;
            k++;
        }
        if (*k == 0 && *p == '=') {
            p++;
            size_t n = 0;
            while (p[n] && p[n] != ' ' && n + 1 < buflen) {
                buf[n] = p[n];
                n++;
            }
            buf[n] = 0;
            return buf;
        }
        while (*p && *p != ' ') {
            p++;
        }
    }
    return 0;
}
