// lwIP glue: the e1000 netif (frames copied between lwIP's pbufs and the driver's DMA buffers),
// address set-up, lwIP's clock and random numbers.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lwip/init.h"
#include "lwip/netif.h"
#include "lwip/dhcp.h"
#include "lwip/dns.h"
#include "lwip/etharp.h"
#include "lwip/tcp.h"
#include "lwip/priv/tcp_priv.h"
#include "lwip/timeouts.h"
#include "lwip/prot/ip.h"
#include "lwip/prot/tcp.h"
#include "netif/ethernet.h"

#include "kernel/kernel.h"
#include "drivers/e1000.h"
#include "net.h"

#define RX_BUDGET           64      // frames per poll: the caller gets the CPU back soon
#define LINK_CHECK_MS       100     // how often the link state and the statistics registers are read
#define ASSERTIONS_REPORTED 8

static struct e1000 nic;
static struct netif netif;
static int nic_ready;
static int polling;
static volatile int polled;         // a poll has run since the timer last looked (below)
static uint32_t last_link_check;
static const char *address_source = "none";
static void (*request_poll)(void);

u32_t sys_now(void) {
    return (u32_t)(clock_ns() / 1000000u);
}

unsigned net_assertions;

void net_assert_failed(const char *message, const char *file, int line) {
    if (net_assertions++ < ASSERTIONS_REPORTED) {
        printf("lwIP: assertion failed: %s (%s:%d)\n", message, file, line);
    }
}

// A listening pcb (struct tcp_pcb_listen) has no err or recv callback fields: setting them, as
// extmod/modlwip.c does when it closes a listening socket, would write past its end.
void __real_tcp_err(struct tcp_pcb *pcb, tcp_err_fn err);
void __real_tcp_recv(struct tcp_pcb *pcb, tcp_recv_fn recv);

void __wrap_tcp_err(struct tcp_pcb *pcb, tcp_err_fn err) {
    if (!pcb || pcb->state != LISTEN) {
        __real_tcp_err(pcb, err);
    }
}

// modlwip retries a tcp_write that finds no memory every 50 ms for up to 10 s, the socket
// non-blocking or not, and nothing else in Python runs meanwhile: counted, for the operator.
unsigned net_tcp_write_no_memory;
err_t __real_tcp_write(struct tcp_pcb *pcb, const void *data, u16_t len, u8_t flags);

err_t __wrap_tcp_write(struct tcp_pcb *pcb, const void *data, u16_t len, u8_t flags) {
    err_t err = __real_tcp_write(pcb, data, len, flags);
    if (err == ERR_MEM) {
        net_tcp_write_no_memory++;
    }
    return err;
}

// Data that arrives before Python accepts a connection is refused by modlwip's "unaccepted"
// callback and kept by lwIP, which offers it again only from its 250 ms timer: a request sent
// right after connecting would wait that long. modlwip sets the recv callback last when it accepts
// (the socket is ready for data by then): the data is handed over there and then. Its callback
// keeps every pbuf and never aborts, so the pcb outlives the call.
void __wrap_tcp_recv(struct tcp_pcb *pcb, tcp_recv_fn recv) {
    if (!pcb || pcb->state != LISTEN) {
        __real_tcp_recv(pcb, recv);
        if (pcb && recv && pcb->refused_data) {
            tcp_process_refused_data(pcb);
        }
    }
}

// A SYN for a connection lwIP still keeps in TIME_WAIT starts a new connection, as BSD and Linux
// take it (RFC 1122 4.2.2.13, RFC 6191), instead of lwIP's answer: an ACK for the old connection,
// which the client's stack answers with a RST, which TIME_WAIT ignores (RFC 1337) — every retry of
// the client meets the same answer for the two minutes the state lasts, and its request hangs. It
// happens whenever a client's port comes round again within that time: an HTTP/1.0 server closes
// first, so each connection leaves a TIME_WAIT behind, and QEMU's user network passes the host's
// ports through (seen in the test suite: Linux gave a client a port the guest had closed a minute before).
// Unlike Linux, every such SYN is taken, whatever its sequence number: lwIP keeps no timestamps to
// tell an old duplicate SYN, and a client whose new first sequence number is below the end of the
// old connection (after a large upload) would hang. An ancient duplicate SYN costs a half-open
// connection that times out.
unsigned net_time_wait_reused;

static void reuse_time_wait(const uint8_t *frame, size_t len) {
    if (!tcp_tw_pcbs || len < 14 + 20 + 20 || frame[12] != 0x08 || frame[13] != 0x00) {
        return;                             // nothing in TIME_WAIT, or not IPv4
    }
    const uint8_t *ip = frame + 14;
    size_t ihl = (size_t)(ip[0] & 0x0f) * 4;
    if ((ip[0] >> 4) != 4 || ip[9] != IP_PROTO_TCP || ihl < 20 || len < 14 + ihl + 20 ||
        (ip[6] & 0x3f) || ip[7]) {
        return;                             // not TCP, or a fragment
    }
    const uint8_t *tcp = ip + ihl;
    if ((tcp[13] & (TCP_SYN | TCP_ACK | TCP_RST)) != TCP_SYN) {
        return;
    }
    u16_t sport = (u16_t)(tcp[0] << 8 | tcp[1]), dport = (u16_t)(tcp[2] << 8 | tcp[3]);
    ip4_addr_t src, dst;
    memcpy(&src.addr, ip + 12, 4);
    memcpy(&dst.addr, ip + 16, 4);
    for (struct tcp_pcb *pcb = tcp_tw_pcbs; pcb; pcb = pcb->next) {
        if (pcb->local_port == dport && pcb->remote_port == sport &&
            ip4_addr_eq(ip_2_ip4(&pcb->remote_ip), &src) && ip4_addr_eq(ip_2_ip4(&pcb->local_ip), &dst)) {
            tcp_abort(pcb);                 // TIME_WAIT: removed and freed, nothing sent
            net_time_wait_reused++;
            return;
        }
    }
}

static err_t linkoutput(struct netif *nif, struct pbuf *p) {
    (void)nif;
    uint8_t *buf = e1000_tx_buffer(&nic);
    if (!buf || p->tot_len > E1000_FRAME_MAX) {
        nic.count.tx_dropped++;
        return buf ? ERR_BUF : ERR_MEM;
    }
    pbuf_copy_partial(p, buf, p->tot_len, 0);
    e1000_tx_queue(&nic, p->tot_len);
    return ERR_OK;
}

static err_t netif_init_e1000(struct netif *nif) {
    nif->name[0] = 'e';
    nif->name[1] = 'n';
    nif->hostname = "cllm";
    nif->mtu = 1500;
    nif->hwaddr_len = ETH_HWADDR_LEN;
    memcpy(nif->hwaddr, nic.mac, ETH_HWADDR_LEN);
    nif->flags = NETIF_FLAG_BROADCAST | NETIF_FLAG_ETHARP | NETIF_FLAG_ETHERNET | NETIF_FLAG_IGMP;
    nif->output = etharp_output;
    nif->linkoutput = linkoutput;
    return ERR_OK;
}

static int received;     // frames the last poll took

static void receive(void) {
    const uint8_t *frame;
    size_t len;
    received = 0;
    for (int n = 0; n < RX_BUDGET && (frame = e1000_rx_peek(&nic, &len)); n++, received++) {
        reuse_time_wait(frame, len);
        struct pbuf *p = pbuf_alloc(PBUF_RAW, len, PBUF_POOL);
        if (!p) {
            nic.count.rx_dropped++;         // the pool is full of data sockets have not read
        } else {
            pbuf_take(p, frame, len);
            if (netif.input(p, &netif) != ERR_OK) {
                pbuf_free(p);
                nic.count.rx_dropped++;
            }
        }
        e1000_rx_release(&nic);
    }
    e1000_rx_flush(&nic);
}

static void check_link(void) {
    uint32_t now = sys_now();
    if (now - last_link_check < LINK_CHECK_MS) {
        return;
    }
    last_link_check = now;
    e1000_update_counters(&nic);
    int up = e1000_link_up(&nic);
    if (up && !netif_is_link_up(&netif)) {
        netif_set_link_up(&netif);
    } else if (!up && netif_is_link_up(&netif)) {
        netif_set_link_down(&netif);
    }
}

void net_poll(void) {
    if (!nic_ready || polling) {
        return;
    }
    polling = 1;
    polled = 1;
    receive();
    check_link();
    sys_check_timeouts();
    net_sockets_poll();
    polling = 0;
}

// MicroPython handles events (the hook above) only when it waits: when select.poll finds a socket
// ready at once, or is asked not to wait, it returns without. An asyncio loop that always has a
// task ready therefore starved lwIP: no frame was received and no timer ran until every task
// waited at once, and a task that spins on a socket poll calls ready (modlwip: a socket whose
// peer has closed is "writable", while its writes fail with EAGAIN until the peer acknowledges)
// held the whole network still. So when no poll has run for STARVED_MS, the timer asks for one
// (net_init's poll_soon: the port schedules it, and MicroPython runs it at the next branch of bytecode). Only then, not at every interrupt: that
// takes connections in while Python is busy, and data that comes before Python accepts is
// refused (lwIP drops the segments that follow refused data until the sender retransmits).
#define STARVED_MS 20

static void timer_tick(uint32_t ticks) {           // interrupt context
    if (ticks % STARVED_MS == 0) {
        if (!polled) {
            request_poll();
        }
        polled = 0;
    }
}

void net_idle(void) {
    if (!nic_ready) {
        cpu_idle();
        return;
    }
    uint32_t flags = irq_save();
    if (received || e1000_rx_ready(&nic) || net_sockets_pending()) {
        received = 0;       // once: a caller that finds nothing new sleeps next time
        irq_restore(flags);
        return;
    }
    cpu_idle();             // "sti; hlt": an interrupt from here on ends the hlt
    irq_restore(flags);
}

// "a.b.c.d" or "a.b.c.d/nn" from the command line into addr (and mask, if given).
static int parse_address(const char *key, ip4_addr_t *addr, ip4_addr_t *mask) {
    char buf[32];
    if (!cmdline_get(key, buf, sizeof(buf))) {
        return 0;
    }
    char *slash = strchr(buf, '/');
    if (slash) {
        *slash = 0;
        int bits = atoi(slash + 1);
        if (mask && bits >= 0 && bits <= 32) {
            ip4_addr_set_u32(mask, lwip_htonl(bits ? 0xffffffffu << (32 - bits) : 0));
        }
    }
    if (!ip4addr_aton(buf, addr)) {
        printf("net: ignoring %s=%s (not an IPv4 address)\n", key, buf);
        return 0;
    }
    return 1;
}

static void configure_address(void) {
    ip4_addr_t ip, mask, gw, dns;
    IP4_ADDR(&mask, 255, 255, 255, 0);
    if (parse_address("ip", &ip, &mask)) {
        ip4_addr_set_zero(&gw);
        parse_address("gw", &gw, NULL);
        netif_set_addr(&netif, &ip, &mask, &gw);
        if (parse_address("dns", &dns, NULL)) {
            ip_addr_t d;
            ip_addr_copy_from_ip4(d, dns);
            dns_setserver(0, &d);
        }
        address_source = "static";
    } else {
        dhcp_start(&netif);
        address_source = "dhcp";
    }
}

void net_init(void (*poll_soon)(void)) {
    request_poll = poll_soon;
    struct pci_device pci;
    if (!pci_find(E1000_VENDOR, E1000_DEV_82540EM, &pci)) {
        return;
    }
    if (e1000_init(&nic, &pci) != 0) {
        printf("net: the e1000 at %02x:%02x.%u did not come out of reset\n", pci.bus, pci.device, pci.function);
        return;
    }
    lwip_init();
    net_sockets_init(net_poll, net_idle);
    netif_add(&netif, NULL, NULL, NULL, NULL, netif_init_e1000, ethernet_input);
    netif_set_default(&netif);
    netif_set_up(&netif);
    if (e1000_link_up(&nic)) {
        netif_set_link_up(&netif);
    }
    nic_ready = 1;
    clock_on_tick(timer_tick);
    configure_address();
    const uint8_t *m = nic.mac;
    printf("%s net: e1000 %02x:%02x:%02x:%02x:%02x:%02x irq %u, link %s, address by %s\n", clock_stamp(),
        m[0], m[1], m[2], m[3], m[4], m[5], pci.irq_line, e1000_link_up(&nic) ? "up" : "down", address_source);
}

struct netif *net_netif(void) {
    return nic_ready ? &netif : NULL;
}

struct e1000 *net_nic(void) {
    return nic_ready ? &nic : NULL;
}

const char *net_address_source(void) {
    return address_source;
}
