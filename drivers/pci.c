// PCI configuration space through configuration mechanism #1 (PCI Local Bus Specification 3.0,
// section 3.2.2.3.2): write bus/device/function/register to CONFIG_ADDRESS, then read or write
// the 32-bit register at CONFIG_DATA.
#include "pci.h"
#include "kernel/io.h"

#define CONFIG_ADDRESS  0xcf8
#define CONFIG_DATA     0xcfc
#define CONFIG_ENABLE   0x80000000u

// Type 0 header registers
#define PCI_ID              0x00    // device id << 16 | vendor id
#define PCI_COMMAND         0x04
#define PCI_CLASS           0x08    // class << 24 | subclass << 16 | prog-if << 8 | revision
#define PCI_HEADER          0x0c    // bits 23:16 header type; bit 23: multi-function
#define PCI_BAR0            0x10
#define PCI_BRIDGE_BUSES    0x18    // type 1: secondary bus in bits 15:8
#define PCI_INTERRUPT       0x3c    // bits 7:0 interrupt line

#define COMMAND_MEMORY      0x0002
#define COMMAND_BUS_MASTER  0x0004
#define HEADER_MULTIFUNCTION 0x80
#define HEADER_TYPE_MASK    0x7f
#define HEADER_TYPE_BRIDGE  0x01
#define VENDOR_NONE         0xffff
#define BAR_IO              0x1

static uint32_t config_read(uint8_t bus, uint8_t dev, uint8_t fn, uint8_t offset) {
    outl(CONFIG_ADDRESS, CONFIG_ENABLE | (uint32_t)bus << 16 | (uint32_t)dev << 11 | (uint32_t)fn << 8 | (offset & 0xfc));
    return inl(CONFIG_DATA);
}

uint32_t pci_read32(const struct pci_device *d, uint8_t offset) {
    return config_read(d->bus, d->device, d->function, offset);
}

void pci_write32(const struct pci_device *d, uint8_t offset, uint32_t value) {
    outl(CONFIG_ADDRESS, CONFIG_ENABLE | (uint32_t)d->bus << 16 | (uint32_t)d->device << 11 | (uint32_t)d->function << 8 | (offset & 0xfc));
    outl(CONFIG_DATA, value);
}

uint32_t pci_bar_address(const struct pci_device *d, int i) {
    uint32_t bar = d->bar[i];
    return bar & BAR_IO ? bar & ~0x3u : bar & ~0xfu;
}

void pci_enable_bus_master(const struct pci_device *d) {
    pci_write32(d, PCI_COMMAND, pci_read32(d, PCI_COMMAND) | COMMAND_MEMORY | COMMAND_BUS_MASTER);
}

static void read_function(uint8_t bus, uint8_t dev, uint8_t fn, uint32_t id, struct pci_device *d) {
    d->bus = bus;
    d->device = dev;
    d->function = fn;
    d->vendor_id = id & 0xffff;
    d->device_id = id >> 16;
    uint32_t class = config_read(bus, dev, fn, PCI_CLASS);
    d->class_code = class >> 24;
    d->subclass = class >> 16;
    d->prog_if = class >> 8;
    d->revision = class;
    d->header_type = config_read(bus, dev, fn, PCI_HEADER) >> 16;
    int bars = (d->header_type & HEADER_TYPE_MASK) == HEADER_TYPE_BRIDGE ? 2 : 6;
    for (int i = 0; i < 6; i++) {
        d->bar[i] = i < bars ? config_read(bus, dev, fn, PCI_BAR0 + 4 * i) : 0;
    }
    d->irq_line = config_read(bus, dev, fn, PCI_INTERRUPT) & 0xff;
}

// Depth-first over bus 0 and every bus a PCI-to-PCI bridge leads to.
static int scan_bus(uint8_t bus, struct pci_device *out, int n, int max) {
    for (uint8_t dev = 0; dev < 32; dev++) {
        for (uint8_t fn = 0; fn < 8; fn++) {
            uint32_t id = config_read(bus, dev, fn, PCI_ID);
            if ((id & 0xffff) == VENDOR_NONE) {
                if (fn == 0) {
                    break;
                }
                continue;
            }
            struct pci_device d;
            read_function(bus, dev, fn, id, &d);
            if (n < max) {
                out[n] = d;
            }
            n++;
            if ((d.header_type & HEADER_TYPE_MASK) == HEADER_TYPE_BRIDGE) {
                uint8_t secondary = config_read(bus, dev, fn, PCI_BRIDGE_BUSES) >> 8;
                if (secondary > bus) {
                    n = scan_bus(secondary, out, n, max);
                }
            }
            if (fn == 0 && !(d.header_type & HEADER_MULTIFUNCTION)) {
                break;
            }
        }
    }
    return n;
}

int pci_scan(struct pci_device *out, int max) {
    int n = scan_bus(0, out, 0, max);
    return n < max ? n : max;
}

int pci_find(uint16_t vendor_id, uint16_t device_id, struct pci_device *out) {
    struct pci_device all[PCI_MAX_DEVICES];
    int n = pci_scan(all, PCI_MAX_DEVICES);
    for (int i = 0; i < n; i++) {
        if (all[i].vendor_id == vendor_id && all[i].device_id == device_id) {
            *out = all[i];
            return 1;
        }
    }
    return 0;
}
