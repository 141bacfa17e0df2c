// The local APIC's set-up and inter-processor interrupts (register names in lapic.h).
#include "kernel.h"
#include "lapic.h"

uint32_t lapic_base;

void lapic_enable(int bsp) {
    if (!bsp) {
        // Device interrupts stay with CPU 0: the PIC's LINT0 wire and NMIs are masked here.
        lapic_write(LAPIC_LVT_LINT0, LVT_MASKED);
        lapic_write(LAPIC_LVT_LINT1, LVT_MASKED);
    }
    lapic_write(LAPIC_TPR, 0);
    lapic_write(LAPIC_SVR, SVR_ENABLE | VECTOR_SPURIOUS);
}

void lapic_send(uint8_t apic_id, uint32_t command) {
    uint32_t flags = irq_save();
    while (lapic_read(LAPIC_ICR_LO) & ICR_PENDING) {
        __asm__ volatile ("pause");
    }
    lapic_write(LAPIC_ICR_HI, (uint32_t)apic_id << 24);
    lapic_write(LAPIC_ICR_LO, command);
    irq_restore(flags);
}
