// Intel 8254x gigabit Ethernet controller, as QEMU emulates it (82540EM). Register names and
// bits from the "PCI/PCI-X Family of Gigabit Ethernet Controllers Software Developer's Manual"
// (8254x SDM, Intel 317453). Legacy descriptors, one 2 KiB buffer per frame, no offloads.
// The stack polls the rings; the interrupt only ends an idle wait early.
#include "e1000.h"
#include "kernel/kernel.h"
#include "kernel/io.h"

// Registers (SDM section 13.4), as offsets into BAR 0
#define CTRL    0x0000
#define STATUS  0x0008
#define EERD    0x0014  // EEPROM read
#define ICR     0x00c0  // interrupt cause, cleared by reading
#define IMS     0x00d0  // interrupt mask set
#define IMC     0x00d8  // interrupt mask clear
#define RCTL    0x0100
#define TCTL    0x0400
#define TIPG    0x0410
#define RDBAL   0x2800
#define RDBAH   0x2804
#define RDLEN   0x2808
#define RDH     0x2810
#define RDT     0x2818
#define RDTR    0x2820  // receive delay timer
#define TDBAL   0x3800
#define TDBAH   0x3804
#define TDLEN   0x3808
#define TDH     0x3810
#define TDT     0x3818
#define MTA     0x5200  // multicast table array, 128 registers
#define RAL0    0x5400
#define RAH0    0x5404
// Statistics (SDM section 13.7), each cleared when read
#define CRCERRS 0x4000
#define RLEC    0x4040  // receive length errors
#define MPC     0x4010  // missed packets: no room in the receive FIFO/ring
#define RNBC    0x40a0  // receive no buffers
#define RUC     0x40a4  // receive undersize
#define ROC     0x40ac  // receive oversize

#define CTRL_ASDE       (1u << 5)   // auto speed detection
#define CTRL_SLU        (1u << 6)   // set link up
#define CTRL_RST        (1u << 26)
#define STATUS_LU       (1u << 1)
#define STATUS_SPEED_SHIFT 6
#define EERD_START      (1u << 0)
#define EERD_DONE       (1u << 4)
#define EERD_ADDR_SHIFT 8
#define EERD_DATA_SHIFT 16
#define RAH_AV          (1u << 31)  // address valid
#define RCTL_EN         (1u << 1)
#define RCTL_BAM        (1u << 15)  // accept broadcast
#define RCTL_BSIZE_2048 (0u << 16)
#define RCTL_SECRC      (1u << 26)  // strip the Ethernet CRC
#define TCTL_EN         (1u << 1)
#define TCTL_PSP        (1u << 3)   // pad short packets
#define TCTL_CT         (0x0fu << 4)    // collision threshold (the SDM's recommended value)
#define TCTL_COLD_FD    (0x40u << 12)   // collision distance, full duplex
#define TIPG_82540      (10u | 8u << 10 | 6u << 20)  // IPGT, IPGR1, IPGR2 for copper (SDM 13.4.34)
#define ICR_LSC         (1u << 2)   // link status change
#define ICR_RXDMT0      (1u << 4)   // receive ring below its minimum threshold
#define ICR_RXO         (1u << 6)   // receiver overrun
#define ICR_RXT0        (1u << 7)   // receive timer: a frame arrived

// Legacy descriptors (SDM sections 3.2.3 and 3.3.3)
struct rx_desc {
    uint64_t addr;
    uint16_t length;
    uint16_t checksum;
    uint8_t status;
    uint8_t errors;
    uint16_t special;
};
struct tx_desc {
    uint64_t addr;
    uint16_t length;
    uint8_t cso;
    uint8_t cmd;
    uint8_t status;
    uint8_t css;
    uint16_t special;
};
#define RXD_STAT_DD     0x01    // descriptor done
#define RXD_STAT_EOP    0x02    // end of packet
#define TXD_CMD_EOP     0x01
#define TXD_CMD_IFCS    0x02    // insert the FCS
#define TXD_CMD_RS      0x08    // report status (sets DD when sent)
#define TXD_STAT_DD     0x01

// No paging: the physical address the device needs is the pointer itself.
static volatile struct rx_desc rx_ring[E1000_RX_RING] __attribute__((aligned(128)));
static volatile struct tx_desc tx_ring[E1000_TX_RING] __attribute__((aligned(128)));
static uint8_t rx_buffers[E1000_RX_RING][E1000_BUF_SIZE] __attribute__((aligned(16)));
static uint8_t tx_buffers[E1000_TX_RING][E1000_BUF_SIZE] __attribute__((aligned(16)));
static struct e1000 *irq_nic;
static int rx_discarding;       // inside a frame that spans descriptors: drop up to its EOP

static uint32_t reg_read(struct e1000 *nic, uint32_t reg) {
    return mmio_read32(nic->mmio + reg);
}

static void reg_write(struct e1000 *nic, uint32_t reg, uint32_t value) {
    mmio_write32(nic->mmio + reg, value);
}

// An EEPROM word through EERD; -1 when the read never completes (no EEPROM).
static int eeprom_read(struct e1000 *nic, uint8_t addr) {
    reg_write(nic, EERD, EERD_START | (uint32_t)addr << EERD_ADDR_SHIFT);
    for (int i = 0; i < 100000; i++) {
        uint32_t v = reg_read(nic, EERD);
        if (v & EERD_DONE) {
            return (int)(v >> EERD_DATA_SHIFT);
        }
    }
    return -1;
}

// The MAC address: EEPROM words 0-2 (SDM 5.6.1), else what the firmware left in RAL0/RAH0.
static void read_mac(struct e1000 *nic) {
    int w[3];
    for (int i = 0; i < 3; i++) {
        w[i] = eeprom_read(nic, i);
    }
    if (w[0] >= 0 && w[1] >= 0 && w[2] >= 0) {
        for (int i = 0; i < 3; i++) {
            nic->mac[2 * i] = w[i] & 0xff;
            nic->mac[2 * i + 1] = w[i] >> 8;
        }
    } else {
        uint32_t lo = reg_read(nic, RAL0), hi = reg_read(nic, RAH0);
        for (int i = 0; i < 4; i++) {
            nic->mac[i] = lo >> (8 * i);
        }
        nic->mac[4] = hi;
        nic->mac[5] = hi >> 8;
    }
}

static void rx_init(struct e1000 *nic) {
    for (int i = 0; i < E1000_RX_RING; i++) {
        rx_ring[i].addr = (uint32_t)rx_buffers[i];
        rx_ring[i].status = 0;
    }
    reg_write(nic, RDBAL, (uint32_t)rx_ring);
    reg_write(nic, RDBAH, 0);
    reg_write(nic, RDLEN, sizeof(rx_ring));
    reg_write(nic, RDH, 0);
    // The hardware owns RDH..RDT-1: all but one descriptor, so a full ring is told from an empty one.
    reg_write(nic, RDT, E1000_RX_RING - 1);
    reg_write(nic, RDTR, 0);
    nic->rx_next = 0;
    // QEMU holds received frames back for a second after RCTL is written (its flush_queue_timer):
    // the first DHCP offer arrives about a second after boot.
    reg_write(nic, RCTL, RCTL_EN | RCTL_BAM | RCTL_BSIZE_2048 | RCTL_SECRC);
}

static void tx_init(struct e1000 *nic) {
    for (int i = 0; i < E1000_TX_RING; i++) {
        tx_ring[i].addr = (uint32_t)tx_buffers[i];
        tx_ring[i].cmd = 0;
        tx_ring[i].status = TXD_STAT_DD;    // free
    }
    reg_write(nic, TDBAL, (uint32_t)tx_ring);
    reg_write(nic, TDBAH, 0);
    reg_write(nic, TDLEN, sizeof(tx_ring));
    reg_write(nic, TDH, 0);
    reg_write(nic, TDT, 0);
    nic->tx_next = 0;
    reg_write(nic, TIPG, TIPG_82540);
    reg_write(nic, TCTL, TCTL_EN | TCTL_PSP | TCTL_CT | TCTL_COLD_FD);
}

// Reading ICR acknowledges the interrupt (and lowers the level-triggered INTx line).
static void e1000_irq(void) {
    (void)reg_read(irq_nic, ICR);
    irq_nic->wakeups++;
}

int e1000_init(struct e1000 *nic, const struct pci_device *pci) {
    nic->pci = *pci;
    nic->mmio = pci_bar_address(pci, 0);
    pci_enable_bus_master(pci);

    reg_write(nic, IMC, 0xffffffff);
    reg_write(nic, CTRL, reg_read(nic, CTRL) | CTRL_RST);
    for (int i = 0; i < 100000 && (reg_read(nic, CTRL) & CTRL_RST); i++) {
    }
    if (reg_read(nic, CTRL) & CTRL_RST) {
        return -1;
    }
    reg_write(nic, IMC, 0xffffffff);    // reset re-enables nothing, but be sure
    (void)reg_read(nic, ICR);
    reg_write(nic, CTRL, reg_read(nic, CTRL) | CTRL_SLU | CTRL_ASDE);

    read_mac(nic);
    reg_write(nic, RAL0, nic->mac[0] | nic->mac[1] << 8 | nic->mac[2] << 16 | (uint32_t)nic->mac[3] << 24);
    reg_write(nic, RAH0, nic->mac[4] | nic->mac[5] << 8 | RAH_AV);
    for (int i = 0; i < 128; i++) {
        reg_write(nic, MTA + 4 * i, 0);
    }
    e1000_update_counters(nic);         // start the statistics registers from zero
    nic->count = (struct e1000_counters){0};
    rx_init(nic);
    tx_init(nic);

    if (pci->irq_line < 16) {
        irq_nic = nic;
        irq_register(pci->irq_line, e1000_irq);
        reg_write(nic, IMS, ICR_RXT0 | ICR_RXO | ICR_RXDMT0 | ICR_LSC);
    }
    return 0;
}

int e1000_link_up(struct e1000 *nic) {
    return (reg_read(nic, STATUS) & STATUS_LU) != 0;
}

uint32_t e1000_speed_mbps(struct e1000 *nic) {
    uint32_t speed = (reg_read(nic, STATUS) >> STATUS_SPEED_SHIFT) & 3;
    return speed == 0 ? 10 : speed == 1 ? 100 : 1000;
}

void e1000_update_counters(struct e1000 *nic) {
    nic->count.rx_missed += reg_read(nic, MPC);
    nic->count.rx_no_buffers += reg_read(nic, RNBC);
    nic->count.rx_errors += reg_read(nic, CRCERRS) + reg_read(nic, RLEC) + reg_read(nic, RUC) + reg_read(nic, ROC);
}

static int rx_given_back = -1;   // the last descriptor freed since the last flush

static void rx_give_back(struct e1000 *nic) {
    unsigned i = nic->rx_next;
    rx_ring[i].status = 0;
    nic->rx_next = (i + 1) % E1000_RX_RING;
    rx_given_back = (int)i;
}

void e1000_rx_flush(struct e1000 *nic) {
    if (rx_given_back >= 0) {
        __asm__ volatile ("" ::: "memory");
        reg_write(nic, RDT, (uint32_t)rx_given_back);
        rx_given_back = -1;
    }
}

const uint8_t *e1000_rx_peek(struct e1000 *nic, size_t *len) {
    for (;;) {
        volatile struct rx_desc *d = &rx_ring[nic->rx_next];
        if (!(d->status & RXD_STAT_DD)) {
            return 0;
        }
        __asm__ volatile ("" ::: "memory");
        int eop = d->status & RXD_STAT_EOP;
        if (rx_discarding || !eop || d->errors || d->length > E1000_FRAME_MAX) {
            if (!rx_discarding) {
                nic->count.rx_errors++;
            }
            rx_discarding = !eop;
            rx_give_back(nic);
            continue;
        }
        *len = d->length;
        nic->count.rx_frames++;
        nic->count.rx_bytes += d->length;
        return rx_buffers[nic->rx_next];
    }
}

int e1000_rx_ready(const struct e1000 *nic) {
    return (rx_ring[nic->rx_next].status & RXD_STAT_DD) != 0;
}

void e1000_rx_release(struct e1000 *nic) {
    rx_give_back(nic);
}

uint8_t *e1000_tx_buffer(struct e1000 *nic) {
    if (!(tx_ring[nic->tx_next].status & TXD_STAT_DD)) {
        return 0;
    }
    return tx_buffers[nic->tx_next];
}

void e1000_tx_queue(struct e1000 *nic, size_t len) {
    volatile struct tx_desc *d = &tx_ring[nic->tx_next];
    d->length = len;
    d->cmd = TXD_CMD_EOP | TXD_CMD_IFCS | TXD_CMD_RS;
    d->status = 0;
    nic->tx_next = (nic->tx_next + 1) % E1000_TX_RING;
    nic->count.tx_frames++;
    nic->count.tx_bytes += len;
    __asm__ volatile ("" ::: "memory");
    reg_write(nic, TDT, nic->tx_next);
}
