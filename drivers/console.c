// The system console: COM1 (polled output, input through its interrupt into a ring) with the
// screen showing what it writes. It is the kernel's log from the first line boot prints, and
// glibc's stdin, stdout and stderr once console_init has run.
#include "kernel/kernel.h"
#include "console.h"
#include "ns16550.h"
#include "vga.h"

static struct serial_rx rx;
static volatile unsigned interrupts;
static int interrupt_char = -1;
static void (*interrupt_fn)(void);

static void com1_irq(void) {
    unsigned n = serial_rx_drain(COM1, &rx, interrupt_fn ? interrupt_char : -1);
    if (n) {
        interrupts += n;
        interrupt_fn();
    }
}

// The kernel's log: on COM1 from the first line, and on the screen too once vga_init has run (a
// panic dump shows there, mirroring or not).
static void log_write(const char *s, size_t n) {
    serial_write(COM1, s, n);
    vga_write(s, n);
}

static void console_early_init(void) {
    serial_init(COM1, 115200);
    kprint_set_output(log_write);
}
KERNEL_EARLY_INIT(console_early_init);

static const struct tty console_tty = {
    .write = console_write_cooked,
    .read_byte = console_read_byte,
    .available = console_rx_available,
    .interrupts = console_interrupt_count,
};

// The screen shows what the console writes, from the boot banner on.
void console_init(void) {
    vga_init();
    serial_enable_rx_irq(COM1);
    irq_register(4, com1_irq);
    files_attach_tty(&console_tty);
}

void console_write(const char *s, size_t n) {
    serial_write(COM1, s, n);
    vga_console_write(s, n);
}

void console_write_cooked(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\n') {
            serial_putc(COM1, '\r');
        }
        serial_putc(COM1, s[i]);
    }
    vga_console_write(s, n);
}

int console_read_byte(void) {
    return serial_rx_get(&rx);
}

size_t console_rx_available(void) {
    return serial_rx_count(&rx);
}

void console_set_interrupt(int c, void (*fn)(void)) {
    uint32_t flags = irq_save();
    interrupt_char = c;
    interrupt_fn = fn;
    irq_restore(flags);
}

unsigned console_interrupt_count(void) {
    return interrupts;
}
