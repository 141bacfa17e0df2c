#pragma once
#include <stddef.h>

// The system console: COM1, interrupt-driven input into a ring buffer, polled output.
void console_init(void);
void console_write(const char *s, size_t n);        // bytes as they are
void console_write_cooked(const char *s, size_t n); // "\n" becomes "\r\n", as a tty would
int console_read_byte(void);                        // -1 when nothing is waiting
size_t console_rx_available(void);
// How many interrupt characters have arrived since boot: a blocked read stops when it moves.
unsigned console_interrupt_count(void);
// A byte equal to c is not queued: fn runs in interrupt context instead (Ctrl-C). c < 0: off.
void console_set_interrupt(int c, void (*fn)(void));
