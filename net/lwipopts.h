// lwIP configuration for cllm: NO_SYS (polled from MicroPython's event hook), one Ethernet
// netif (the e1000), IPv4 only. Memory is sized for a machine with hundreds of MiB, not a
// microcontroller: full-size segments and windows, and room for a few dozen connections.
#ifndef CLLM_LWIPOPTS_H
#define CLLM_LWIPOPTS_H

#include <stdint.h>

#define LWIP_IPV4                   1
#define LWIP_IPV6                   0

// TCP: a full 64 KiB window without window scaling, large send buffers. Defining MEM_SIZE
// here keeps lwipopts_common.h's microcontroller-sized TCP settings out.
#define MEM_SIZE                    (2 * 1024 * 1024)   // heap for outgoing segments
#define TCP_MSS                     1460
#define TCP_WND                     (44 * TCP_MSS)
#define TCP_SND_BUF                 (32 * TCP_MSS)
#define MEMP_NUM_TCP_SEG            1024
#define MEMP_NUM_TCP_PCB            48
#define MEMP_NUM_TCP_PCB_LISTEN     8
#define MEMP_NUM_PBUF               64
#define PBUF_POOL_SIZE              1024    // received frames waiting in sockets
#define MEMP_NUM_REASSDATA          16
#define IP_REASS_MAX_PBUFS          64
#define TCP_OVERSIZE                TCP_MSS
#define LWIP_TCP_KEEPALIVE          1

// Every packet waiting for an address to resolve is kept, not only the latest (lwIP's default): just
// after boot the gateway's MAC is unknown, and of the SYN-ACKs for a burst of first connections all
// but one were dropped, to be retransmitted three seconds later.
#define ARP_QUEUEING                1

#define LWIP_NETIF_STATUS_CALLBACK  1
#define LWIP_NETIF_LINK_CALLBACK    1

// TCP sequence numbers, ports and DHCP ids: the kernel's generator (kernel.h, through mpconfigport.h)
#define LWIP_RAND()                 ((u32_t)kernel_random())

#include "extmod/lwip-include/lwipopts_common.h"

// A few more UDP endpoints than a microcontroller port wants.
#undef MEMP_NUM_UDP_PCB
#define MEMP_NUM_UDP_PCB            16

#endif
