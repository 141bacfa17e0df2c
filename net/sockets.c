// TCP sockets for C code in threads of its own (llama.cpp's ggml-rpc server): what kernel/sockets.c
// makes of Linux's socket calls, served by lwIP's raw API. lwIP runs in the main thread only (in
// net_poll), so a caller never calls it: what needs lwIP (bind, listen, close) is a request the next
// poll carries out while the caller waits on a futex; received bytes wait in a ring per socket,
// copied there by lwIP's recv callback, and the TCP window opens again as the caller takes them;
// bytes sent wait in a ring until a poll hands them to tcp_write. Each ring has one writer and one
// reader, each side of it in its own thread: no lock, only the order of the index updates.
#include <stdlib.h>
#include <string.h>

#include "lwip/tcp.h"

#include "kernel/kernel.h"
#include "kernel/spinlock.h"
#include "net.h"
#include <linux/errno.h>
#include <asm/poll.h>

#define SOCKETS     16
#define RING_BYTES  (64 * 1024)     // >= TCP_WND: whatever lwIP may deliver fits
#define BACKLOG     8

_Static_assert(RING_BYTES >= TCP_WND, "a receive ring must hold a whole window");

enum request { REQ_NONE, REQ_BIND, REQ_LISTEN };

struct ring {
    uint8_t *buf;
    volatile uint32_t head, tail;   // bytes written and bytes read since the start (wrapping)
};

struct sock {
    volatile int used;              // from socket() until the poll has let go of it after close
    volatile int closing;           // the owner closed it: the poll finishes and frees it
    struct tcp_pcb *pcb;            // main thread only
    volatile uint32_t events;       // bumped at each change a caller may wait for (a futex word)
    volatile int request;           // enum request: set by the caller, cleared by the poll
    long result;                    // of the request
    uint32_t local_addr, peer_addr; // IPv4, network order
    uint16_t local_port, peer_port; // host order
    int backlog_max;
    volatile int listening, connected, eof, error, shut_wr, nodelay, nodelay_set;
    struct ring rx, tx;
    uint32_t rx_given;              // rx bytes handed back to the window (main thread)
    int backlog[BACKLOG];           // listening: accepted sockets not yet taken by accept()
    volatile uint32_t backlog_head, backlog_tail;
};

static struct sock socks[SOCKETS];
static struct spinlock table_lock;
static volatile uint32_t work;      // bumped by callers that leave work for the poll
unsigned net_sockets_refused;       // connections a listener had no room for

static uint32_t ring_used(const struct ring *r) {
    return __atomic_load_n(&r->head, __ATOMIC_ACQUIRE) - __atomic_load_n(&r->tail, __ATOMIC_ACQUIRE);
}

// Copy n bytes in (at head) or out (at tail); the caller has checked the room or the bytes.
static void ring_put(struct ring *r, const uint8_t *src, uint32_t n) {
    uint32_t at = r->head % RING_BYTES, first = n < RING_BYTES - at ? n : RING_BYTES - at;
    memcpy(r->buf + at, src, first);
    memcpy(r->buf, src + first, n - first);
    __atomic_store_n(&r->head, r->head + n, __ATOMIC_RELEASE);
}

static void ring_get(struct ring *r, uint8_t *dst, uint32_t n, int consume) {
    uint32_t at = r->tail % RING_BYTES, first = n < RING_BYTES - at ? n : RING_BYTES - at;
    memcpy(dst, r->buf + at, first);
    memcpy(dst + first, r->buf, n - first);
    if (consume) {
        __atomic_store_n(&r->tail, r->tail + n, __ATOMIC_RELEASE);
    }
}

static void notify(struct sock *s) {
    __atomic_add_fetch(&s->events, 1, __ATOMIC_RELEASE);
    futex_wake(&s->events, 1 << 30);
}

static void poll_wanted(void) {
    __atomic_add_fetch(&work, 1, __ATOMIC_RELEASE);
}

// Wait for the next change of s (or deadline_ns, 0: none) after seen. The main thread, which
// cannot wait for itself to poll, polls.
static void (*main_poll)(void), (*main_idle)(void);     // net_poll and net_idle (net_sockets_init)

static void wait_change(struct sock *s, uint32_t seen, uint64_t deadline_ns) {
    if (cpus_tid() == 1) {
        main_poll();
        if (__atomic_load_n(&s->events, __ATOMIC_ACQUIRE) == seen) {
            main_idle();
        }
        return;
    }
    futex_wait(&s->events, seen, deadline_ns);
}

static struct sock *get(int h) {
    return h >= 0 && h < SOCKETS && socks[h].used && !socks[h].closing ? &socks[h] : 0;
}

static int alloc_sock(void) {
    uint32_t flags = spin_lock(&table_lock);
    int h = -1;
    for (int i = 0; i < SOCKETS && h < 0; i++) {
        if (!socks[i].used) {
            h = i;
        }
    }
    if (h >= 0) {
        struct sock *s = &socks[h];
        uint8_t *rx = s->rx.buf, *tx = s->tx.buf;   // kept from an earlier use
        memset(s, 0, sizeof *s);
        s->rx.buf = rx;
        s->tx.buf = tx;
        s->used = 1;
    }
    spin_unlock(&table_lock, flags);
    if (h >= 0 && (!socks[h].rx.buf || !socks[h].tx.buf)) {
        socks[h].rx.buf = socks[h].rx.buf ? socks[h].rx.buf : malloc(RING_BYTES);
        socks[h].tx.buf = socks[h].tx.buf ? socks[h].tx.buf : malloc(RING_BYTES);
        if (!socks[h].rx.buf || !socks[h].tx.buf) {
            socks[h].used = 0;
            return -ENOMEM;
        }
    }
    return h >= 0 ? h : -ENFILE;
}

// ---- the caller's side (any thread) -------------------------------------------------------------

static long ask(struct sock *s, enum request req) {
    s->result = 0;
    __atomic_store_n(&s->request, req, __ATOMIC_RELEASE);
    poll_wanted();
    for (;;) {
        uint32_t seen = __atomic_load_n(&s->events, __ATOMIC_ACQUIRE);
        if (__atomic_load_n(&s->request, __ATOMIC_ACQUIRE) == REQ_NONE) {
            return s->result;
        }
        wait_change(s, seen, 0);
    }
}

static long sock_bind(int h, uint32_t addr, uint16_t port) {
    struct sock *s = get(h);
    if (!s) {
        return -EBADF;
    }
    if (s->pcb || s->listening || s->connected) {
        return -EINVAL;
    }
    s->local_addr = addr;
    s->local_port = port;
    return ask(s, REQ_BIND);
}

static long sock_listen(int h, int backlog) {
    struct sock *s = get(h);
    if (!s) {
        return -EBADF;
    }
    if (s->connected) {
        return -EINVAL;
    }
    if (s->listening) {
        return 0;
    }
    s->backlog_max = backlog < 1 ? 1 : backlog > BACKLOG ? BACKLOG : backlog;
    if (!s->pcb) {
        long err = ask(s, REQ_BIND);      // listen without bind: an ephemeral port, as Linux
        if (err) {
            return err;
        }
    }
    return ask(s, REQ_LISTEN);
}

static long sock_accept(int h, int nonblock, uint32_t *addr, uint16_t *port) {
    struct sock *s = get(h);
    if (!s) {
        return -EBADF;
    }
    if (!s->listening) {
        return -EINVAL;
    }
    for (;;) {
        uint32_t seen = __atomic_load_n(&s->events, __ATOMIC_ACQUIRE);
        if (__atomic_load_n(&s->closing, __ATOMIC_ACQUIRE)) {
            return -EBADF;              // closed by another thread meanwhile
        }
        uint32_t tail = s->backlog_tail;
        if (tail != __atomic_load_n(&s->backlog_head, __ATOMIC_ACQUIRE)) {
            int c = s->backlog[tail % BACKLOG];
            __atomic_store_n(&s->backlog_tail, tail + 1, __ATOMIC_RELEASE);
            *addr = socks[c].peer_addr;
            *port = socks[c].peer_port;
            return c;
        }
        if (s->error) {
            return s->error;
        }
        if (nonblock) {
            return -EAGAIN;
        }
        wait_change(s, seen, 0);
    }
}

static long sock_recv(int h, void *buf, uint32_t n, int nonblock, int peek) {
    struct sock *s = get(h);
    if (!s) {
        return -EBADF;
    }
    if (!s->connected) {
        return -ENOTCONN;
    }
    if (n == 0) {
        return 0;
    }
    for (;;) {
        uint32_t seen = __atomic_load_n(&s->events, __ATOMIC_ACQUIRE);
        if (__atomic_load_n(&s->closing, __ATOMIC_ACQUIRE)) {
            return -EBADF;
        }
        uint32_t have = ring_used(&s->rx);
        if (have) {
            uint32_t take = have < n ? have : n;
            ring_get(&s->rx, buf, take, !peek);
            if (!peek) {
                poll_wanted();          // the window opens again at the next poll
            }
            return take;
        }
        if (s->error) {
            return s->error;
        }
        if (s->eof) {
            return 0;
        }
        if (nonblock) {
            return -EAGAIN;
        }
        wait_change(s, seen, 0);
    }
}

static long sock_send(int h, const void *buf, uint32_t n, int nonblock) {
    struct sock *s = get(h);
    if (!s) {
        return -EBADF;
    }
    if (!s->connected) {
        return -ENOTCONN;
    }
    const uint8_t *p = buf;
    uint32_t sent = 0;
    while (sent < n) {
        uint32_t seen = __atomic_load_n(&s->events, __ATOMIC_ACQUIRE);
        if (__atomic_load_n(&s->closing, __ATOMIC_ACQUIRE)) {
            return sent ? (long)sent : -EBADF;
        }
        if (s->error || s->shut_wr) {
            return sent ? (long)sent : s->shut_wr ? -EPIPE : s->error;
        }
        uint32_t room = RING_BYTES - ring_used(&s->tx);
        if (room) {
            uint32_t put = n - sent < room ? n - sent : room;
            ring_put(&s->tx, p + sent, put);
            sent += put;
            poll_wanted();
            continue;
        }
        if (nonblock) {
            return sent ? (long)sent : -EAGAIN;
        }
        wait_change(s, seen, 0);
    }
    return sent;
}

static long sock_shutdown(int h, int how) {
    struct sock *s = get(h);
    if (!s) {
        return -EBADF;
    }
    if (!s->connected) {
        return -ENOTCONN;
    }
    if (how != 0) {                 // SHUT_WR or SHUT_RDWR: a FIN once what was sent has gone
        s->shut_wr = 1;
        poll_wanted();
    }
    return 0;
}

static long sock_nodelay(int h, int on) {
    struct sock *s = get(h);
    if (!s) {
        return -EBADF;
    }
    s->nodelay = on != 0;
    poll_wanted();
    return 0;
}

static long sock_error(int h) {
    struct sock *s = get(h);
    return s ? s->error : -EBADF;
}

static long sock_address(int h, int peer, uint32_t *addr, uint16_t *port) {
    struct sock *s = get(h);
    if (!s) {
        return -EBADF;
    }
    if (peer && !s->connected) {
        return -ENOTCONN;
    }
    *addr = peer ? s->peer_addr : s->local_addr;
    *port = peer ? s->peer_port : s->local_port;
    return 0;
}

static int sock_ready(int h, int events) {
    struct sock *s = get(h);
    if (!s) {
        return POLLNVAL;
    }
    int ready = 0;
    if (s->listening) {
        ready |= s->backlog_tail != s->backlog_head ? POLLIN : 0;
    } else if (s->connected) {
        ready |= ring_used(&s->rx) || s->eof ? POLLIN : 0;
        ready |= ring_used(&s->tx) < RING_BYTES ? POLLOUT : 0;
    }
    return (ready & events) | (s->error ? POLLERR | POLLHUP : 0);
}

static void sock_close(int h) {
    struct sock *s = get(h);
    if (s) {
        __atomic_store_n(&s->closing, 1, __ATOMIC_RELEASE);
        notify(s);                      // a call blocked on it in another thread returns EBADF
        poll_wanted();
    }
}

static const struct socket_ops ops = {
    .open = alloc_sock, .bind = sock_bind, .listen = sock_listen, .accept = sock_accept,
    .recv = sock_recv, .send = sock_send, .shutdown = sock_shutdown, .nodelay = sock_nodelay,
    .error = sock_error, .address = sock_address, .ready = sock_ready, .close = sock_close,
};

// ---- lwIP's side (the main thread, in net_poll) ------------------------------------------------

static void forget_pcb(struct sock *s) {
    if (s->pcb) {
        tcp_arg(s->pcb, NULL);
        if (!s->listening) {
            tcp_recv(s->pcb, NULL);
            tcp_err(s->pcb, NULL);
            tcp_sent(s->pcb, NULL);
        } else {
            tcp_accept(s->pcb, NULL);
        }
        s->pcb = NULL;
    }
}

static void release(struct sock *s) {
    __atomic_store_n(&s->used, 0, __ATOMIC_RELEASE);
}

static err_t on_recv(void *arg, struct tcp_pcb *pcb, struct pbuf *p, err_t err) {
    struct sock *s = arg;
    (void)pcb;
    (void)err;
    if (!p) {
        s->eof = 1;                 // the peer's FIN
        notify(s);
        return ERR_OK;
    }
    if (RING_BYTES - ring_used(&s->rx) < p->tot_len) {
        return ERR_MEM;             // lwIP keeps it and offers it again (cannot happen within the window)
    }
    for (struct pbuf *q = p; q; q = q->next) {
        ring_put(&s->rx, q->payload, q->len);
    }
    pbuf_free(p);
    notify(s);
    return ERR_OK;
}

static void on_err(void *arg, err_t err) {
    struct sock *s = arg;           // the pcb is gone already
    s->pcb = NULL;
    s->error = err == ERR_RST ? -ECONNRESET : err == ERR_ABRT ? -ECONNABORTED : -EIO;
    notify(s);
}

static err_t on_sent(void *arg, struct tcp_pcb *pcb, u16_t len) {
    (void)arg;
    (void)pcb;
    (void)len;
    poll_wanted();                  // room in lwIP's send buffer: the ring may go on
    return ERR_OK;
}

static err_t on_accept(void *arg, struct tcp_pcb *pcb, err_t err) {
    struct sock *l = arg;
    if (err != ERR_OK || !pcb) {
        return ERR_VAL;
    }
    uint32_t queued = l->backlog_head - __atomic_load_n(&l->backlog_tail, __ATOMIC_ACQUIRE);
    int h = queued < (uint32_t)l->backlog_max ? alloc_sock() : -ENFILE;
    if (h < 0) {
        net_sockets_refused++;
        tcp_abort(pcb);
        return ERR_ABRT;
    }
    struct sock *s = &socks[h];
    s->pcb = pcb;
    s->connected = 1;
    s->local_addr = ip_2_ip4(&pcb->local_ip)->addr;
    s->local_port = pcb->local_port;
    s->peer_addr = ip_2_ip4(&pcb->remote_ip)->addr;
    s->peer_port = pcb->remote_port;
    tcp_arg(pcb, s);
    tcp_err(pcb, on_err);
    tcp_sent(pcb, on_sent);
    tcp_recv(pcb, on_recv);
    l->backlog[l->backlog_head % BACKLOG] = h;
    __atomic_store_n(&l->backlog_head, l->backlog_head + 1, __ATOMIC_RELEASE);
    notify(l);
    return ERR_OK;
}

static void carry_out(struct sock *s) {
    long result = 0;
    if (s->request == REQ_BIND) {
        struct tcp_pcb *pcb = tcp_new_ip_type(IPADDR_TYPE_V4);
        ip_addr_t addr = IPADDR4_INIT(s->local_addr);
        if (!pcb) {
            result = -ENOMEM;
        } else if (tcp_bind(pcb, &addr, s->local_port) != ERR_OK) {
            tcp_close(pcb);
            result = -EADDRINUSE;
        } else {
            s->pcb = pcb;
            s->local_port = pcb->local_port;
        }
    } else if (s->request == REQ_LISTEN) {
        struct tcp_pcb *l = tcp_listen_with_backlog(s->pcb, (u8_t)s->backlog_max);
        if (!l) {
            result = -ENOMEM;       // s->pcb is still the bound one
        } else {
            s->pcb = l;
            s->listening = 1;
            tcp_arg(l, s);
            tcp_accept(l, on_accept);
        }
    }
    s->result = result;
    __atomic_store_n(&s->request, REQ_NONE, __ATOMIC_RELEASE);
    notify(s);
}

// Hand the send ring to lwIP as far as its send buffer goes.
static void push(struct sock *s) {
    int wrote = 0;
    uint32_t have;
    while ((have = ring_used(&s->tx)) && tcp_sndbuf(s->pcb) > 0) {
        uint32_t at = s->tx.tail % RING_BYTES, n = have;
        n = n < RING_BYTES - at ? n : RING_BYTES - at;
        n = n < tcp_sndbuf(s->pcb) ? n : tcp_sndbuf(s->pcb);
        n = n < 0xffff ? n : 0xffff;
        if (tcp_write(s->pcb, s->tx.buf + at, (u16_t)n, TCP_WRITE_FLAG_COPY | (n < have ? TCP_WRITE_FLAG_MORE : 0)) != ERR_OK) {
            break;                  // no memory now: the next poll tries again
        }
        __atomic_store_n(&s->tx.tail, s->tx.tail + n, __ATOMIC_RELEASE);
        wrote = 1;
    }
    if (wrote) {
        tcp_output(s->pcb);
        notify(s);
    }
}

// A socket its owner closed: a listener at once, with the connections it had not handed out; a
// connection once its send ring has gone to lwIP (a FIN after it), or at once if it failed.
static void finish_close(struct sock *s) {
    if (s->listening) {
        while (s->backlog_tail != s->backlog_head) {
            struct sock *c = &socks[s->backlog[s->backlog_tail++ % BACKLOG]];
            if (c->pcb) {
                struct tcp_pcb *pcb = c->pcb;
                forget_pcb(c);
                tcp_abort(pcb);
            }
            release(c);
        }
        if (s->pcb) {
            struct tcp_pcb *pcb = s->pcb;
            forget_pcb(s);
            tcp_close(pcb);
        }
        release(s);
        return;
    }
    if (s->pcb && s->connected && ring_used(&s->tx)) {
        return;
    }
    if (s->pcb) {
        struct tcp_pcb *pcb = s->pcb;
        forget_pcb(s);              // before the close, which may free the pcb at once
        if (tcp_close(pcb) != ERR_OK) {
            s->pcb = pcb;           // no memory for the FIN: the next poll tries again
            tcp_arg(pcb, s);
            tcp_err(pcb, on_err);
            tcp_sent(pcb, on_sent);
            tcp_recv(pcb, on_recv);
            return;
        }
    }
    release(s);
}

static void serve(struct sock *s) {
    if (s->request != REQ_NONE) {
        carry_out(s);
    }
    if (!s->pcb || s->listening) {
        return;
    }
    if (s->nodelay != s->nodelay_set) {
        if (s->nodelay) {
            tcp_nagle_disable(s->pcb);
        } else {
            tcp_nagle_enable(s->pcb);
        }
        s->nodelay_set = s->nodelay;
    }
    uint32_t taken = __atomic_load_n(&s->rx.tail, __ATOMIC_ACQUIRE) - s->rx_given;
    while (taken) {
        u16_t n = taken < 0xffff ? (u16_t)taken : 0xffff;
        tcp_recved(s->pcb, n);
        s->rx_given += n;
        taken -= n;
    }
    push(s);
    if (s->pcb && s->shut_wr && !ring_used(&s->tx) && s->shut_wr == 1) {
        tcp_shutdown(s->pcb, 0, 1);
        s->shut_wr = 2;
    }
}

static uint32_t work_seen;

int net_sockets_pending(void) {
    return __atomic_load_n(&work, __ATOMIC_ACQUIRE) != work_seen;
}

void net_sockets_poll(void) {
    work_seen = __atomic_load_n(&work, __ATOMIC_ACQUIRE);
    for (int h = 0; h < SOCKETS; h++) {
        struct sock *s = &socks[h];
        if (!__atomic_load_n(&s->used, __ATOMIC_ACQUIRE)) {
            continue;
        }
        serve(s);
        if (__atomic_load_n(&s->closing, __ATOMIC_ACQUIRE)) {
            finish_close(s);
        }
    }
}

void net_sockets_init(void (*poll)(void), void (*idle)(void)) {
    main_poll = poll;
    main_idle = idle;
    files_attach_sockets(&ops);
}
