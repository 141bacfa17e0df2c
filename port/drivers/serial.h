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
