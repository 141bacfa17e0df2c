#include "console.h"
#include "ns16550.h"
#include "vga.h"
#include "../boot/kernel.h"
#include "../boot/trap.h"

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

// The screen shows what the console writes, from the boot banner on.
void console_init(void) {
    vga_init();
    serial_enable_rx_irq(COM1);
    irq_register(4, com1_irq);
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
