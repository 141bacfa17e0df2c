// The kernel's log: printf into the output the console driver names at boot (KERNEL_EARLY_INIT).
#include <stdarg.h>
#include <stdint.h>
#include "kernel.h"
#include "spinlock.h"

static void (*output)(const char *s, size_t n);

void kprint_set_output(void (*write)(const char *s, size_t n)) {
    output = write;
}

void kprint_write(const char *s, size_t n) {
    if (output) {
        output(s, n);
    }
}

static void put(char c) {
    if (c == '\n') {
        kprint_write("\r\n", 2);
    } else {
        kprint_write(&c, 1);
    }
}

static void put_uint(uint32_t v, unsigned base, int width, char pad) {
    char buf[12];
    int n = 0;
    do {
        buf[n++] = "0123456789abcdef"[v % base];
        v /= base;
    } while (v);
    while (n < width) {
        buf[n++] = pad;
    }
    while (n) {
        put(buf[--n]);
    }
}

// One CPU at a time on the console. The same CPU may take it again: a fault in the middle
// of a message still gets its panic dump out.
static struct spinlock console_lock;
static volatile int console_owner = -1;

uint32_t kprint_lock(void) {
    uint32_t flags = irq_save();
    int me = cpu_id();
    if (console_owner == me) {
        return flags | KPRINT_NESTED;
    }
    spin_acquire(&console_lock);
    console_owner = me;
    return flags;
}

void kprint_unlock(uint32_t flags) {
    if (!(flags & KPRINT_NESTED)) {
        console_owner = -1;
        spin_release(&console_lock);
    }
    irq_restore(flags & ~KPRINT_NESTED);
}

void kprintf(const char *fmt, ...) {
    uint32_t lock = kprint_lock();
    va_list ap;
    va_start(ap, fmt);
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            put(*fmt);
            continue;
        }
        fmt++;
        char pad = ' ';
        int width = 0;
        if (*fmt == '0') {
            pad = '0';
            fmt++;
        }
        while (*fmt >= '0' && *fmt <= '9') {
            width = width * 10 + (*fmt++ - '0');
        }
        switch (*fmt) {
            case 's': {
                const char *s = va_arg(ap, const char *);
                for (s = s ? s : "(null)"; *s; s++) {
                    put(*s);
                }
                break;
            }
            case 'c':
                put((char)va_arg(ap, int));
                break;
            case 'd': {
                int v = va_arg(ap, int);
                if (v < 0) {
                    put('-');
                    v = -v;
                }
                put_uint((uint32_t)v, 10, width, pad);
                break;
            }
            case 'u':
                put_uint(va_arg(ap, uint32_t), 10, width, pad);
                break;
            case 'x':
                put_uint(va_arg(ap, uint32_t), 16, width, pad);
                break;
            case 'p':
                put('0');
                put('x');
                put_uint((uint32_t)va_arg(ap, void *), 16, 8, '0');
                break;
            case '%':
                put('%');
                break;
            default:
                put('%');
                put(*fmt);
                break;
        }
    }
    va_end(ap);
    kprint_unlock(lock);
}
