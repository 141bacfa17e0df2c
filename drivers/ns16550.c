// The 16550 UART, as on every PC since the AT (register names from the National
// Semiconductor PC16550D datasheet).
#include "ns16550.h"
#include "kernel/io.h"

#define RBR 0   // receive buffer (read)
#define THR 0   // transmit holding (write)
#define IER 1   // interrupt enable
#define DLL 0   // divisor latch, low byte (when LCR.DLAB)
#define DLM 1   // divisor latch, high byte
#define FCR 2   // FIFO control (write)
#define LCR 3   // line control
#define MCR 4   // modem control
#define LSR 5   // line status
#define SCR 7   // scratch

#define IER_RDA     0x01    // interrupt on received data available
#define FCR_ENABLE  0x01
#define FCR_CLEAR   0x06    // clear both FIFOs
#define FCR_TRIG_1  0x00    // interrupt after 1 byte: the console wants every keystroke now
#define LCR_8N1     0x03
#define LCR_DLAB    0x80
#define MCR_DTR     0x01
#define MCR_RTS     0x02
#define MCR_OUT2    0x08    // on a PC, gates the UART's interrupt line to the PIC
#define LSR_DR      0x01    // data ready
#define LSR_THRE    0x20    // transmit holding register empty

#define UART_CLOCK  115200  // the divisor is relative to 1.8432 MHz / 16

int serial_init(uint16_t base, uint32_t baud) {
    // A UART that is present keeps what is written to its scratch register.
    outb(base + SCR, 0x5a);
    if (inb(base + SCR) != 0x5a) {
        return -1;
    }
    uint16_t divisor = (uint16_t)(UART_CLOCK / (baud ? baud : UART_CLOCK));
    outb(base + IER, 0);
    outb(base + LCR, LCR_DLAB);
    outb(base + DLL, divisor & 0xff);
    outb(base + DLM, divisor >> 8);
    outb(base + LCR, LCR_8N1);
    outb(base + FCR, FCR_ENABLE | FCR_CLEAR | FCR_TRIG_1);
    outb(base + MCR, MCR_DTR | MCR_RTS | MCR_OUT2);
    return 0;
}

void serial_putc(uint16_t base, char c) {
    while (!(inb(base + LSR) & LSR_THRE)) {
    }
    outb(base + THR, (uint8_t)c);
}

void serial_write(uint16_t base, const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        serial_putc(base, s[i]);
    }
}

int serial_getc(uint16_t base) {
    if (inb(base + LSR) & LSR_DR) {
        return inb(base + RBR);
    }
    return -1;
}

void serial_enable_rx_irq(uint16_t base) {
    outb(base + IER, IER_RDA);
}
