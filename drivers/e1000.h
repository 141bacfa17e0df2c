#pragma once
#include <stdint.h>
#include <stddef.h>
#include "pci.h"

#define E1000_VENDOR        0x8086
#define E1000_DEV_82540EM   0x100e  // what QEMU's -device e1000 emulates

#define E1000_RX_RING       256     // descriptors; a multiple of 8 (ring length a multiple of 128 bytes)
#define E1000_TX_RING       256
#define E1000_BUF_SIZE      2048    // RCTL.BSIZE: one frame of at most 1518 bytes per descriptor
#define E1000_FRAME_MAX     1518    // Ethernet frame with its header, without the FCS

// Counters kept by the driver; the hardware's statistics registers clear when read, so the
// driver accumulates them here.
struct e1000_counters {
    uint64_t rx_frames, rx_bytes, tx_frames, tx_bytes;
    uint32_t rx_dropped;        // good frames the stack had no room for (pbuf pool, lwIP input)
    uint32_t rx_errors;         // frames the hardware marked bad, or longer than one buffer
    uint32_t rx_missed;         // MPC: frames lost because the receive ring was full
    uint32_t rx_no_buffers;     // RNBC: times the ring ran out of free descriptors
    uint32_t tx_dropped;        // frames not sent: transmit ring full, or too long
};

struct e1000 {
    struct pci_device pci;
    uintptr_t mmio;
    uint8_t mac[6];
    unsigned rx_next;           // the next descriptor the hardware will hand back
    unsigned tx_next;           // the next free transmit descriptor
    volatile uint32_t wakeups;  // interrupts taken (they only end cpu_idle early)
    struct e1000_counters count;
};

int e1000_init(struct e1000 *nic, const struct pci_device *pci);   // 0, or -1 if it does not answer
int e1000_link_up(struct e1000 *nic);
uint32_t e1000_speed_mbps(struct e1000 *nic);
void e1000_update_counters(struct e1000 *nic);   // folds the hardware statistics registers in

// Receive, without copying: a frame stays in its DMA buffer until e1000_rx_release.
// NULL when the ring holds no completed frame. Bad frames are counted and skipped here.
const uint8_t *e1000_rx_peek(struct e1000 *nic, size_t *len);
// Whether a received frame waits in the ring (a memory read, no register access).
int e1000_rx_ready(const struct e1000 *nic);
// Done with the frame e1000_rx_peek gave. The hardware learns of the freed descriptors only at
// e1000_rx_flush: one register write (a trip into the device model under emulation) per batch.
void e1000_rx_release(struct e1000 *nic);
void e1000_rx_flush(struct e1000 *nic);

// Transmit: fill the buffer e1000_tx_buffer gives (NULL: ring full), then queue len bytes.
uint8_t *e1000_tx_buffer(struct e1000 *nic);
void e1000_tx_queue(struct e1000 *nic, size_t len);
