// The global descriptor tables, one per CPU: flat 4 GiB code and data segments for ring 0, the
// TSSes, and the TLS slots. A CPU's table's TLS slots are its running thread's, as Linux
// switches them per thread (CPU 0, which may run two, swaps them: gdt_tls_save/load); the GDT's
// address (sgdt) also tells a CPU which one it is. Nothing here ever leaves ring 0, but glibc loads %gs with selector
// (slot << 3) | 3, so the TLS descriptors carry DPL 3: a data segment may be loaded when
// max(CPL, RPL) <= DPL.
#include "kernel.h"
#include "gdt.h"

struct tss {
    uint16_t link, _r0;
    uint32_t esp0;
    uint16_t ss0, _r1;
    uint32_t esp1;
    uint16_t ss1, _r2;
    uint32_t esp2;
    uint16_t ss2, _r3;
    uint32_t cr3, eip, eflags, eax, ecx, edx, ebx, esp, ebp, esi, edi;
    uint16_t es, _r4, cs, _r5, ss, _r6, ds, _r7, fs, _r8, gs, _r9, ldt, _r10;
    uint16_t trap, iomap_base;
} __attribute__((packed));

struct gdt_ptr {
    uint16_t limit;
    uint32_t base;
} __attribute__((packed));

#define GDT_ENTRIES (GDT_TLS_FIRST + GDT_TLS_COUNT)
#define DF_STACK_SIZE 16384

static uint64_t gdts[CPUS_MAX][GDT_ENTRIES];
static struct tss main_tss[CPUS_MAX], df_tss[CPUS_MAX];
static uint8_t df_stack[CPUS_MAX][DF_STACK_SIZE] __attribute__((aligned(16)));

// access: P DPL S type; flags: G D/B L AVL (upper nibble of byte 6).
static uint64_t descriptor(uint32_t base, uint32_t limit, uint8_t access, uint8_t flags) {
    uint64_t d = limit & 0xffff;
    d |= (uint64_t)(base & 0xffffff) << 16;
    d |= (uint64_t)access << 40;
    d |= (uint64_t)((limit >> 16) & 0xf) << 48;
    d |= (uint64_t)(flags & 0xf) << 52;
    d |= (uint64_t)(base >> 24) << 56;
    return d;
}

extern void gdt_load(struct gdt_ptr *p);
extern void double_fault_task(void);
extern uint8_t boot_stack_top[];

int cpu_id(void) {
    struct gdt_ptr p;
    __asm__ volatile ("sgdt %0" : "=m" (p));
    uint32_t cpu = (p.base - (uint32_t)gdts) / sizeof(gdts[0]);
    return cpu < CPUS_MAX ? (int)cpu : 0;  // the loader's GDT, before gdt_init: the boot CPU
}

void gdt_init(void) {
    gdt_init_cpu(0, (uint32_t)boot_stack_top);
}

void gdt_init_cpu(int cpu, uint32_t stack_top) {
    uint64_t *gdt = gdts[cpu];
    gdt[0] = 0;
    gdt[SEL_KERNEL_CODE >> 3] = descriptor(0, 0xfffff, 0x9a, 0xc);     // present, ring 0, code, read
    gdt[SEL_KERNEL_DATA >> 3] = descriptor(0, 0xfffff, 0x92, 0xc);     // present, ring 0, data, write

    // The main TSS is needed by the CPU for ltr; with no ring change its stack fields stay unused.
    struct tss *tss = &main_tss[cpu];
    tss->ss0 = SEL_KERNEL_DATA;
    tss->esp0 = stack_top;
    tss->iomap_base = sizeof(struct tss);
    gdt[SEL_TSS >> 3] = descriptor((uint32_t)tss, sizeof(struct tss) - 1, 0x89, 0);

    // The double-fault task: a hardware task switch gives it a fresh stack even when the
    // faulting one is exhausted or corrupt.
    struct tss *df = &df_tss[cpu];
    df->eip = (uint32_t)double_fault_task;
    df->esp = (uint32_t)(df_stack[cpu] + DF_STACK_SIZE);
    df->cs = SEL_KERNEL_CODE;
    df->ds = df->es = df->ss = df->fs = df->gs = SEL_KERNEL_DATA;
    df->eflags = 0x2;
    df->iomap_base = sizeof(struct tss);
    gdt[SEL_DF_TSS >> 3] = descriptor((uint32_t)df, sizeof(struct tss) - 1, 0x89, 0);

    struct gdt_ptr ptr;
    ptr.limit = sizeof(gdts[0]) - 1;
    ptr.base = (uint32_t)gdt;
    gdt_load(&ptr);
    __asm__ volatile ("ltr %w0" :: "r" (SEL_TSS));
}

// Same encoding as Linux's fill_ldt(): S=1, DPL=3, type from contents/read_exec_only. Into tls,
// the GDT_TLS_COUNT slots from GDT_TLS_FIRST of some table.
static int tls_encode(uint64_t *tls, struct user_desc *u) {
    uint32_t slot = u->entry_number;
    if (slot == 0xffffffffu) {
        for (slot = GDT_TLS_FIRST; slot < GDT_TLS_FIRST + GDT_TLS_COUNT; slot++) {
            if (tls[slot - GDT_TLS_FIRST] == 0) {
                break;
            }
        }
        if (slot == GDT_TLS_FIRST + GDT_TLS_COUNT) {
            return -3; // -ESRCH, as Linux answers when every slot is taken
        }
        u->entry_number = slot;
    }
    if (slot < GDT_TLS_FIRST || slot >= GDT_TLS_FIRST + GDT_TLS_COUNT) {
        return -22; // -EINVAL
    }
    if (u->base_addr == 0 && u->limit == 0 && u->read_exec_only && u->seg_not_present) {
        tls[slot - GDT_TLS_FIRST] = 0;
        return 0;
    }
    uint8_t type = (uint8_t)((u->contents << 2) | ((u->read_exec_only ^ 1) << 1));
    uint8_t access = (uint8_t)(((u->seg_not_present ^ 1) << 7) | (3 << 5) | (1 << 4) | type);
    uint8_t flags = (uint8_t)((u->limit_in_pages << 3) | (u->seg_32bit << 2) | (u->useable << 0));
    tls[slot - GDT_TLS_FIRST] = descriptor(u->base_addr, u->limit, access, flags);
    return 0;
}

int gdt_set_tls(struct user_desc *u) {
    return tls_encode(&gdts[cpu_id()][GDT_TLS_FIRST], u);
}

// CPU 0's two threads (thread.c) each have their own TLS slots: the one switched out keeps its
// copy, and the one switched in is loaded back (and %gs reloaded by the caller).
void gdt_tls_save(uint64_t tls[]) {
    const uint64_t *gdt = gdts[cpu_id()];
    for (int i = 0; i < GDT_TLS_COUNT; i++) {
        tls[i] = gdt[GDT_TLS_FIRST + i];
    }
}

void gdt_tls_load(const uint64_t tls[]) {
    uint64_t *gdt = gdts[cpu_id()];
    for (int i = 0; i < GDT_TLS_COUNT; i++) {
        gdt[GDT_TLS_FIRST + i] = tls[i];
    }
}

// A new thread's slots: a copy of these with u applied (0 or -errno, as gdt_set_tls).
int gdt_tls_make(uint64_t tls[], struct user_desc *u) {
    return tls_encode(tls, u);
}
