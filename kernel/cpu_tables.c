// Finding the processors. ACPI's MADT ("APIC" table, ACPI 6.5 section 5.2.12) lists one
// Processor Local APIC entry per CPU; older firmware has only the Intel MultiProcessor
// Specification 1.4 table. Both hang off a signature the BIOS leaves in the first KiB of the
// EBDA or in the ROM area 0xe0000-0xfffff, on a 16-byte boundary.
#include "kernel.h"

#define EBDA_SEGMENT_PTR    0x40e
#define BIOS_ROM_START      0xe0000u
#define BIOS_ROM_END        0x100000u
#define LAPIC_DEFAULT_BASE  0xfee00000u

#define MADT_LOCAL_APIC     0       // entry: ACPI processor id, APIC id, flags
#define MADT_LAPIC_OVERRIDE 5       // entry: a 64-bit local APIC address
#define MADT_ENABLED        1u      // the CPU is usable
#define MADT_ONLINE_CAPABLE 2u      // it may be enabled later: not at boot, so skip it

#define MP_PROCESSOR        0       // MP table entry types; a processor entry is 20 bytes,
#define MP_CPU_ENABLED      1u      // every other kind 8

static int sig_eq(const void *p, const char *sig, int n) {
    const char *s = p;
    for (int i = 0; i < n; i++) {
        if (s[i] != sig[i]) {
            return 0;
        }
    }
    return 1;
}

static uint8_t checksum(const void *p, uint32_t n) {
    const uint8_t *b = p;
    uint8_t sum = 0;
    for (uint32_t i = 0; i < n; i++) {
        sum += b[i];
    }
    return sum;
}

static const uint8_t *scan(uint32_t start, uint32_t end, const char *sig, uint32_t len) {
    for (uint32_t p = start & ~15u; p + len <= end; p += 16) {
        if (sig_eq((const void *)p, sig, 4) && checksum((const void *)p, len) == 0) {
            return (const uint8_t *)p;
        }
    }
    return 0;
}

static uint32_t ebda(void) {
    const volatile uint16_t *segment = (const volatile uint16_t *)EBDA_SEGMENT_PTR;
    __asm__ ("" : "+r" (segment));  // gcc takes a pointer this low for a null dereference
    return (uint32_t)*segment << 4;
}

static const uint8_t *find_rsdp(void) {
    uint32_t e = ebda();
    const uint8_t *r = 0;
    for (uint32_t p = e & ~15u; e && p + 20 <= e + 1024 && !r; p += 16) {
        if (sig_eq((const void *)p, "RSD PTR ", 8) && checksum((const void *)p, 20) == 0) {
            r = (const uint8_t *)p;
        }
    }
    for (uint32_t p = BIOS_ROM_START; p < BIOS_ROM_END && !r; p += 16) {
        if (sig_eq((const void *)p, "RSD PTR ", 8) && checksum((const void *)p, 20) == 0) {
            r = (const uint8_t *)p;
        }
    }
    return r;
}

static void add_cpu(struct cpu_list *out, uint8_t apic_id) {
    if (out->count < CPUS_MAX) {
        out->apic_id[out->count++] = apic_id;
    }
}

// The MADT through the RSDT (32-bit pointers) or the XSDT (64-bit, read below 4 GiB only).
static int from_madt(struct cpu_list *out) {
    const uint8_t *rsdp = find_rsdp();
    if (!rsdp) {
        return 0;
    }
    uint32_t revision = rsdp[15];
    uint32_t sdt = *(const uint32_t *)(rsdp + 16);
    uint32_t entry_size = 4;
    if (revision >= 2 && *(const uint32_t *)(rsdp + 28) == 0 && *(const uint32_t *)(rsdp + 24)) {
        sdt = *(const uint32_t *)(rsdp + 24);
        entry_size = 8;
    }
    const uint8_t *madt = 0;
    uint32_t len = *(const uint32_t *)(sdt + 4);
    for (uint32_t p = sdt + 36; p + entry_size <= sdt + len && !madt; p += entry_size) {
        if (entry_size == 8 && *(const uint32_t *)(p + 4)) {
            continue;   // above 4 GiB: out of reach without PAE
        }
        const uint8_t *t = (const uint8_t *)*(const uint32_t *)p;
        if (sig_eq(t, "APIC", 4) && checksum(t, *(const uint32_t *)(t + 4)) == 0) {
            madt = t;
        }
    }
    if (!madt) {
        return 0;
    }
    out->lapic_base = *(const uint32_t *)(madt + 36);
    uint32_t madt_len = *(const uint32_t *)(madt + 4);
    for (const uint8_t *e = madt + 44; e + 2 <= madt + madt_len && e[1] >= 2; e += e[1]) {
        if (e[0] == MADT_LOCAL_APIC && (*(const uint32_t *)(e + 4) & MADT_ENABLED)) {
            add_cpu(out, e[3]);
        } else if (e[0] == MADT_LAPIC_OVERRIDE && *(const uint32_t *)(e + 8) == 0) {
            out->lapic_base = *(const uint32_t *)(e + 4);
        }
    }
    out->source = "ACPI MADT";
    return out->count > 0;
}

static int from_mp_table(struct cpu_list *out) {
    uint32_t e = ebda();
    const uint8_t *fp = e ? scan(e, e + 1024, "_MP_", 16) : 0;
    if (!fp) {
        fp = scan(0x9fc00, 0xa0000, "_MP_", 16);
    }
    if (!fp) {
        fp = scan(0xf0000, BIOS_ROM_END, "_MP_", 16);
    }
    if (!fp) {
        return 0;
    }
    const uint8_t *cfg = (const uint8_t *)*(const uint32_t *)(fp + 4);
    out->lapic_base = LAPIC_DEFAULT_BASE;
    out->source = "MP table";
    if (fp[11] != 0 || !cfg) {
        add_cpu(out, 0);    // one of the spec's default configurations: two CPUs, APIC ids 0 and 1
        add_cpu(out, 1);
        return 1;
    }
    if (!sig_eq(cfg, "PCMP", 4) || checksum(cfg, *(const uint16_t *)(cfg + 4)) != 0) {
        return 0;
    }
    out->lapic_base = *(const uint32_t *)(cfg + 36);
    const uint8_t *p = cfg + 44;
    for (uint32_t i = 0; i < *(const uint16_t *)(cfg + 34); i++) {
        if (p[0] == MP_PROCESSOR) {
            if (p[3] & MP_CPU_ENABLED) {
                add_cpu(out, p[1]);
            }
            p += 20;
        } else {
            p += 8;
        }
    }
    return out->count > 0;
}

void cpus_find(struct cpu_list *out) {
    out->count = 0;
    out->lapic_base = LAPIC_DEFAULT_BASE;
    out->source = "none";
    if (from_madt(out)) {
        return;
    }
    out->count = 0;
    if (from_mp_table(out)) {
        return;
    }
    out->count = 0;
    out->source = "none";
}
