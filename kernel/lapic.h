// The local APIC (Intel SDM vol. 3A, chapter 10): each CPU's own interrupt controller, used
// here for inter-processor interrupts only. The 8259 PIC keeps delivering the devices'
// interrupts to CPU 0 through LINT0 ("virtual wire" mode).
#pragma once
#include <stdint.h>

#define LAPIC_ID            0x020   // bits 31:24: this CPU's APIC ID
#define LAPIC_TPR           0x080   // task priority: 0 accepts every vector
#define LAPIC_EOI           0x0b0
#define LAPIC_SVR           0x0f0   // spurious-interrupt vector, bit 8 enables the APIC
#define LAPIC_ICR_LO        0x300   // interrupt command: writing the low half sends
#define LAPIC_ICR_HI        0x310   // bits 31:24: destination APIC ID
#define LAPIC_LVT_LINT0     0x350
#define LAPIC_LVT_LINT1     0x360

#define SVR_ENABLE          (1u << 8)
#define ICR_FIXED           0x00000u
#define ICR_INIT            0x00500u
#define ICR_STARTUP         0x00600u
#define ICR_PENDING         (1u << 12)  // delivery status: the previous IPI is still on its way
#define ICR_ASSERT          (1u << 14)
#define LVT_EXTINT          0x00700u
#define LVT_NMI             0x00400u
#define LVT_MASKED          (1u << 16)

#define VECTOR_IPI          0xf0    // "look at your mailbox / futex": only wakes a halted CPU
#define VECTOR_YIELD        0xf1    // int $VECTOR_YIELD: CPU 0's running thread offers the CPU (thread.c)
#define VECTOR_SPURIOUS     0xff

extern uint32_t lapic_base;         // physical = linear: paging is off

static inline uint32_t lapic_read(uint32_t reg) {
    return *(volatile uint32_t *)(lapic_base + reg);
}
static inline void lapic_write(uint32_t reg, uint32_t v) {
    *(volatile uint32_t *)(lapic_base + reg) = v;
}
static inline void lapic_eoi(void) {
    lapic_write(LAPIC_EOI, 0);
}
