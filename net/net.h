// The network: the e1000 as lwIP's one netif, brought up at boot and polled from MicroPython's
// event hook (MICROPY_INTERNAL_EVENT_HOOK) and, when that has not run for 20 ms, from its
// scheduler (between two bytecodes), so lwIP only ever runs in normal context.
#pragma once
#include <stdint.h>

struct netif;
struct e1000;

// Once at boot: find the e1000 on PCI, start lwIP, then DHCP, or the static address the kernel
// command line gives ("ip=10.0.2.15/24 gw=10.0.2.2 dns=10.0.2.3"). poll_soon is called in
// interrupt context when no poll has run for 20 ms: it must arrange for net_poll to run soon.
void net_init(void (*poll_soon)(void));
// Receive what the NIC has, run lwIP's timers. Cheap when there is nothing to do.
void net_poll(void);
// MicroPython's wait for an event (MICROPY_INTERNAL_WFE: select.poll, time.sleep, input): sleep
// until the next interrupt, unless the last poll received frames (what waits on them should look
// first) or a frame has come since. Otherwise a frame arriving just before the hlt would wait for
// the next timer tick: up to a millisecond per frame, several per request.
void net_idle(void);
// NULL when no NIC was found.
struct netif *net_netif(void);
struct e1000 *net_nic(void);
const char *net_address_source(void);    // "dhcp", "static" or "none"
extern unsigned net_assertions;         // failed lwIP assertions (reported, not fatal)
extern unsigned net_tcp_write_no_memory;  // tcp_write calls that found no memory (modlwip retries them)
extern unsigned net_time_wait_reused;   // SYNs that started a new connection over a TIME_WAIT one

// sockets.c: TCP sockets for C code in other threads (kernel/sockets.c's system calls), served at
// each net_poll. Init hands their operations to the kernel, and gets net_poll and net_idle (what a
// call from the main thread itself waits with); pending: a caller left work for the next poll
// (net_idle does not sleep then).
void net_sockets_init(void (*poll)(void), void (*idle)(void));
void net_sockets_poll(void);
int net_sockets_pending(void);
extern unsigned net_sockets_refused;    // connections a listener had no room for
