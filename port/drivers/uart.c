// COM2: the second 16550 of the PC, at 0x2f8 on IRQ 3. Received bytes go into a ring from the
// interrupt handler, which must not touch SSE registers or call glibc: plain byte moves only.
#include "uart.h"
#include "serial.h"
#include "../boot/kernel.h"
#include "../boot/trap.h"

#define COM2_IRQ 3

static volatile uint8_t rx_buf[UART_RX_SIZE];
static volatile unsigned rx_head, rx_tail;  // written by the IRQ handler / by readers
static volatile unsigned rx_dropped;
static int opened;

static void com2_irq(void) {
    int c;
    while ((c = serial_getc(COM2)) >= 0) {
        if (rx_head - rx_tail == UART_RX_SIZE) {
            rx_dropped++;
            continue;
        }
        rx_buf[rx_head & (UART_RX_SIZE - 1)] = (uint8_t)c;
        rx_head++;
    }
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
    while (i < n && rx_tail != rx_head) {
        buf[i++] = rx_buf[rx_tail & (UART_RX_SIZE - 1)];
        rx_tail++;
    }
    return i;
}

size_t uart_rx_available(int port) {
    (void)port;
    return rx_head - rx_tail;
}

unsigned uart_rx_dropped(int port) {
    (void)port;
    return rx_dropped;
}
