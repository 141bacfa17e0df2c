// COM2: the second 16550 of the PC, at 0x2f8 on IRQ 3. Received bytes go into a ring from the
// interrupt handler.
#include "uart.h"
#include "ns16550.h"
#include "kernel/kernel.h"

#define COM2_IRQ 3

static struct serial_rx rx;
static int opened;

static void com2_irq(void) {
    serial_rx_drain(COM2, &rx, -1);
}

int uart_open(int port, uint32_t baud) {
    if (port != UART_COM2) {
        return -1;
    }
    if (opened) {
        return uart_set_baud(port, baud);
    }
    if (serial_init(COM2, baud) != 0) {
        return -1;
    }
    serial_enable_rx_irq(COM2);
    irq_register(COM2_IRQ, com2_irq);
    opened = 1;
    return 0;
}

int uart_set_baud(int port, uint32_t baud) {
    if (port != UART_COM2 || !opened) {
        return -1;
    }
    // serial_init reprograms the divisor and clears the FIFOs; the interrupt stays on.
    uint32_t flags = irq_save();
    int r = serial_init(COM2, baud);
    serial_enable_rx_irq(COM2);
    irq_restore(flags);
    return r;
}

void uart_write(int port, const uint8_t *buf, size_t n) {
    (void)port;
    serial_write(COM2, (const char *)buf, n);
}

size_t uart_read(int port, uint8_t *buf, size_t n) {
    (void)port;
    size_t i = 0;
    int c;
    while (i < n && (c = serial_rx_get(&rx)) >= 0) {
        buf[i++] = (uint8_t)c;
    }
    return i;
}

size_t uart_rx_available(int port) {
    (void)port;
    return serial_rx_count(&rx);
}

unsigned uart_rx_dropped(int port) {
    (void)port;
    return rx.dropped;
}
