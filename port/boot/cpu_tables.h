#pragma once
#include <stdint.h>
#include "kernel.h"

// The processors the firmware lists, from ACPI's MADT or else the MP specification's table.
struct cpu_list {
    int count;
    uint8_t apic_id[CPUS_MAX];
    uint32_t lapic_base;
    const char *source;     // "ACPI MADT", "MP table" or "none"
};
void cpus_find(struct cpu_list *out);
