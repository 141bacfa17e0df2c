// Bringing up the other CPUs (Intel SDM vol. 3A, 9.4 "Multiple-processor initialization"):
// each waits for an INIT and then a startup IPI, which starts it in real mode at a page below
// 1 MiB. CPUs start one at a time, each on its own small stack, load their own GDT (and so
// their own TSS and TLS slots) and the shared IDT, and then halt until a thread arrives.
#include "kernel.h"
#include "smp.h"
#include "lapic.h"

#define AP_STACK_SIZE   16384

struct cpu cpus[CPUS_MAX];
int cpu_count = 1;
const char *cpus_source = "none";

static uint8_t ap_stacks[CPUS_MAX][AP_STACK_SIZE] __attribute__((aligned(16)));
volatile uint32_t ap_boot_esp;      // read by ap_entry32 in smp_entry.S
static volatile int ap_boot_cpu;
static void (*ap_idle)(void);

extern const uint8_t ap_trampoline[], ap_trampoline_gdtr[], ap_trampoline_end[];

static void delay_us(uint32_t us) {
    uint64_t end = clock_ns() + (uint64_t)us * 1000;
    while (clock_ns() < end) {
        __asm__ volatile ("pause");
    }
}

// Where the AP starts: a started CPU arrives here on its idle stack, in protected mode.
void ap_main(void) {
    int i = ap_boot_cpu;
    cpu_init();
    gdt_init_cpu(i, cpus[i].idle_stack_top);
    idt_load();
    lapic_enable(0);
    __atomic_store_n(&cpus[i].state, CPU_IDLE, __ATOMIC_RELEASE);
    cpu_grow_tlb(kernel.free_end);  // once reported in: the BSP gives a starting CPU 200 ms for that
    ap_idle();
}

static int start_cpu(int i, uint8_t apic_id, uint32_t trampoline) {
    struct cpu *c = &cpus[i];
    c->apic_id = apic_id;
    c->state = CPU_OFFLINE;
    c->idle_stack_top = (uint32_t)(ap_stacks[i] + AP_STACK_SIZE);
    ap_boot_cpu = i;
    ap_boot_esp = c->idle_stack_top;
    lapic_send(apic_id, ICR_INIT | ICR_ASSERT);
    delay_us(10000);
    // The second startup IPI is for CPUs that missed the first; a started one ignores it.
    for (int k = 0; k < 2 && c->state == CPU_OFFLINE; k++) {
        lapic_send(apic_id, ICR_STARTUP | (trampoline >> 12));
        delay_us(200);
    }
    uint64_t deadline = clock_ns() + 200000000ull;
    while (c->state == CPU_OFFLINE && clock_ns() < deadline) {
        __asm__ volatile ("pause");
    }
    return c->state != CPU_OFFLINE;
}

static void copy_trampoline(uint32_t page) {
    uint8_t *dst = (uint8_t *)page;
    for (const uint8_t *p = ap_trampoline; p < ap_trampoline_end; p++) {
        *dst++ = *p;
    }
    // the GDT the trampoline loads: CPU 0's, whose selectors 0x08/0x10 every GDT shares
    struct __attribute__((packed)) { uint16_t limit; uint32_t base; } gdtr;
    __asm__ volatile ("sgdt %0" : "=m" (gdtr));
    uint8_t *slot = (uint8_t *)page + (ap_trampoline_gdtr - ap_trampoline);
    const uint8_t *src = (const uint8_t *)&gdtr;
    for (unsigned k = 0; k < sizeof(gdtr); k++) {
        slot[k] = src[k];
    }
}

void smp_init(void (*idle)(void)) {
    ap_idle = idle;
    struct cpu_list list;
    cpus_find(&list);
    cpus_source = list.source;
    cpus[0].state = CPU_RUNNING;
    cpus[0].tid = 1;
    cpus[0].apic_id = list.count ? list.apic_id[0] : 0;
    if (list.count <= 1) {
        return;     // one CPU: the local APIC stays as the firmware left it
    }
    if (!kernel.trampoline_page) {
        kprintf("cllm: no free page below 1 MiB to start the other CPUs from; using one\n");
        return;
    }
    lapic_base = list.lapic_base;
    uint8_t bsp = lapic_read(LAPIC_ID) >> 24;
    cpus[0].apic_id = bsp;
    lapic_enable(1);
    copy_trampoline(kernel.trampoline_page);
    for (int k = 0; k < list.count && cpu_count < CPUS_MAX; k++) {
        if (list.apic_id[k] == bsp) {
            continue;
        }
        if (start_cpu(cpu_count, list.apic_id[k], kernel.trampoline_page)) {
            cpu_count++;
        } else {
            kprintf("cllm: the CPU with APIC id %u did not start\n", list.apic_id[k]);
        }
    }
}
