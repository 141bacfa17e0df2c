// The two cascaded Intel 8259A interrupt controllers of the PC. The BIOS leaves IRQ 0..7 on
// vectors 8..15, which collide with CPU exceptions, so they are moved to 32..47.
#include "kernel.h"
#include "io.h"

#define PIC1_CMD    0x20
#define PIC1_DATA   0x21
#define PIC2_CMD    0xa0
#define PIC2_DATA   0xa1

#define ICW1_INIT   0x10
#define ICW1_ICW4   0x01
#define ICW4_8086   0x01
#define OCW2_EOI    0x20
#define OCW3_READ_ISR 0x0b
#define IRQ_CASCADE 2

void pic_init(void) {
    outb(PIC1_CMD, ICW1_INIT | ICW1_ICW4); io_wait();
    outb(PIC2_CMD, ICW1_INIT | ICW1_ICW4); io_wait();
    outb(PIC1_DATA, 32); io_wait();             // ICW2: vector base
    outb(PIC2_DATA, 40); io_wait();
    outb(PIC1_DATA, 1 << IRQ_CASCADE); io_wait(); // ICW3: slave on IRQ 2
    outb(PIC2_DATA, IRQ_CASCADE); io_wait();
    outb(PIC1_DATA, ICW4_8086); io_wait();
    outb(PIC2_DATA, ICW4_8086); io_wait();
    outb(PIC1_DATA, 0xff & ~(1 << IRQ_CASCADE)); // everything masked until a driver asks
    outb(PIC2_DATA, 0xff);
}

void pic_unmask(int irq) {
    uint16_t port = irq < 8 ? PIC1_DATA : PIC2_DATA;
    outb(port, inb(port) & ~(1 << (irq & 7)));
}

void pic_mask(int irq) {
    uint16_t port = irq < 8 ? PIC1_DATA : PIC2_DATA;
    outb(port, inb(port) | (1 << (irq & 7)));
}

void pic_eoi(int irq) {
    if (irq >= 8) {
        outb(PIC2_CMD, OCW2_EOI);
    }
    outb(PIC1_CMD, OCW2_EOI);
}

// IRQ 7 and 15 also arrive when a request went away before the CPU acknowledged it; the
// in-service register tells a real one from a spurious one, which must not get an EOI
// (except the master's, for a spurious IRQ 15 that came through the cascade).
int pic_is_spurious(int irq) {
    if (irq != 7 && irq != 15) {
        return 0;
    }
    uint16_t cmd = irq == 7 ? PIC1_CMD : PIC2_CMD;
    outb(cmd, OCW3_READ_ISR);
    if (inb(cmd) & 0x80) {
        return 0;
    }
    if (irq == 15) {
        outb(PIC1_CMD, OCW2_EOI);
    }
    return 1;
}
