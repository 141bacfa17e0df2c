#pragma once
#include <stdint.h>
#include <stddef.h>

#define COM1 0x3f8
#define COM2 0x2f8

int serial_init(uint16_t base, uint32_t baud);   // 0 when a UART answers at base
void serial_putc(uint16_t base, char c);
void serial_write(uint16_t base, const char *s, size_t n);
int serial_getc(uint16_t base);                  // a received byte, or -1 if none
void serial_enable_rx_irq(uint16_t base);

// What a port's receive interrupt moves its bytes into, for one reader to take out. The handler
// must not touch SSE registers or call glibc: plain byte moves only.
#define SERIAL_RX_SIZE 4096     // a power of two: indices wrap with a mask

struct serial_rx {
    volatile uint8_t buf[SERIAL_RX_SIZE];
    volatile unsigned head, tail;       // written by the interrupt handler / by the reader
    volatile unsigned dropped;          // bytes lost because the ring was full
};

// In the interrupt handler: every byte the UART at base holds, into rx; each byte equal to
// interrupt_char (>= 0) is not queued but counted as a return value instead.
static inline unsigned serial_rx_drain(uint16_t base, struct serial_rx *rx, int interrupt_char) {
    unsigned interrupts = 0;
    int c;
    while ((c = serial_getc(base)) >= 0) {
        if (c == interrupt_char) {
            interrupts++;
        } else if (rx->head - rx->tail == SERIAL_RX_SIZE) {
            rx->dropped++;
        } else {
            rx->buf[rx->head & (SERIAL_RX_SIZE - 1)] = (uint8_t)c;
            rx->head++;
        }
    }
    return interrupts;
}

static inline int serial_rx_get(struct serial_rx *rx) {     // -1 when empty
    if (rx->head == rx->tail) {
        return -1;
    }
    uint8_t c = rx->buf[rx->tail & (SERIAL_RX_SIZE - 1)];
    rx->tail++;
    return c;
}

static inline size_t serial_rx_count(const struct serial_rx *rx) {
    return rx->head - rx->tail;
}
