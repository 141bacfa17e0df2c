#pragma once
#include <stdint.h>

// One PCI function, as its configuration space header (type 0) describes it.
struct pci_device {
    uint8_t bus, device, function;
    uint16_t vendor_id, device_id;
    uint8_t class_code, subclass, prog_if, revision;
    uint8_t header_type;
    uint8_t irq_line;                   // the 8259 input the BIOS routed INTx to; 0xff: none
    uint32_t bar[6];                    // raw BAR values (bit 0: I/O space)
};

#define PCI_MAX_DEVICES 32

// Scans bus 0 and the buses behind bridges; fills at most max entries, returns how many it found.
int pci_scan(struct pci_device *out, int max);
// The first function with this vendor and device id, or 0 when there is none.
int pci_find(uint16_t vendor_id, uint16_t device_id, struct pci_device *out);

uint32_t pci_read32(const struct pci_device *d, uint8_t offset);
void pci_write32(const struct pci_device *d, uint8_t offset, uint32_t value);
uint32_t pci_bar_address(const struct pci_device *d, int i);    // the BAR with its flag bits masked
void pci_enable_bus_master(const struct pci_device *d);         // memory decoding + DMA
