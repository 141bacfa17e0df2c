#pragma once
#include <stddef.h>
#include <stdint.h>

// Serial ports other than the console (COM1 belongs to console.c): COM2, with an
// interrupt-fed receive ring and polled output.
#define UART_COM2           2

int uart_open(int port, uint32_t baud);     // 0, or -1 when no UART answers there
int uart_set_baud(int port, uint32_t baud);
void uart_write(int port, const uint8_t *buf, size_t n);
size_t uart_read(int port, uint8_t *buf, size_t n);     // what has arrived, at most n bytes
size_t uart_rx_available(int port);
unsigned uart_rx_dropped(int port);         // bytes lost because the ring was full
