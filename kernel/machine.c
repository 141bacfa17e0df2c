// What boot learned about the machine (filled in by boot.c), read by every layer; the kernel
// command line; power off and reset.
#include "kernel.h"
#include "io.h"

struct kernel_info kernel;

#define RESET_MARK 0x52534554u      // "TESR"

// The last word of the free region: neither the loader nor the firmware writes there.
static volatile uint32_t *reset_mark(void) {
    return (volatile uint32_t *)(kernel.free_end - 4);
}

int kernel_after_reset(void) {
    return kernel.free_end && *reset_mark() == RESET_MARK;
}

void kernel_exit(int status) {
    __asm__ volatile ("cli");
    // QEMU's isa-debug-exit device (iobase 0xf4) ends the emulator with (status << 1) | 1.
    __asm__ volatile ("outl %0, %1" :: "a" ((uint32_t)status), "Nd" ((uint16_t)0xf4));
    for (;;) {
        __asm__ volatile ("hlt");
    }
}

// Reset the machine: the 8042 keyboard controller's reset line (every PC has it, QEMU too), then,
// should that not take, a triple fault (no IDT left to deliver a fault through). A reset leaves RAM
// as it was: the mark tells the next boot not to take it for the zeroes of a machine just powered on.
void kernel_reboot(void) {
    __asm__ volatile ("cli");
    *reset_mark() = RESET_MARK;
    for (int i = 0; i < 100000 && (inb(0x64) & 0x02); i++) {   // the controller's input buffer: empty
        io_wait();
    }
    outb(0x64, 0xfe);
    struct { uint16_t limit; uint32_t base; } __attribute__((packed)) none = { 0, 0 };
    __asm__ volatile ("lidt %0; int3" :: "m" (none));
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
