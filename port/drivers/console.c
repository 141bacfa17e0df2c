#include "console.h"
#include "serial.h"
#include "vga.h"
#include "../boot/kernel.h"
#include "../boot/trap.h"

#define RX_SIZE 4096    // a power of two: indices wrap with a mask

static volatile char rx_buf[RX_SIZE];
static volatile unsigned rx_head, rx_tail;  // written by the IRQ handler / by readers
static volatile unsigned rx_dropped;
static volatile unsigned interrupts;
static int interrupt_char = -1;
static void (*interrupt_fn)(void);

static void com1_irq(void) {
    int c;
    while ((c = serial_getc(COM1)) >= 0) {
        if (c == interrupt_char && interrupt_fn) {
            interrupts++;
            interrupt_fn();
            continue;
        }
        if (rx_head - rx_tail == RX_SIZE) {
            rx_dropped++;
            continue;
        }
        rx_buf[rx_head & (RX_SIZE - 1)] = (char)c;
        rx_head++;
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
    if (rx_head == rx_tail) {
        return -1;
    }
    char c = rx_buf[rx_tail & (RX_SIZE - 1)];
    rx_tail++;
    return (unsigned char)c;
}

size_t console_rx_available(void) {
    return rx_head - rx_tail;
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
