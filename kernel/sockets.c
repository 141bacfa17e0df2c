// Linux's socket system calls on i386, for glibc: socketcall (102), which static glibc uses for
// all of them, and the direct calls (359..373). IPv4 TCP only; the network layer's operations
// (struct socket_ops, handed down at boot) do the work, descriptors are files.c's.
#include "kernel.h"
#include <linux/errno.h>
#include <linux/fcntl.h>
#include <linux/net.h>

#define AF_INET         2
#define SOCK_STREAM     1
#define SOCK_TYPE_MASK  0xf
#define SOCK_NONBLOCK   O_NONBLOCK
#define SOCK_CLOEXEC    O_CLOEXEC
#define SOL_SOCKET      1
#define SO_REUSEADDR    2
#define SO_ERROR        4
#define SO_KEEPALIVE    9
#define IPPROTO_TCP     6
#define TCP_NODELAY     1
#define MSG_PEEK        0x2
#define MSG_DONTWAIT    0x40
#define MSG_WAITALL     0x100
#define MSG_NOSIGNAL    0x4000

struct sockaddr_in4 {       // struct sockaddr_in
    uint16_t family;
    uint16_t port;          // network order
    uint32_t addr;          // network order
    uint8_t zero[8];
};

static uint16_t swap16(uint16_t v) {
    return (uint16_t)(v << 8 | v >> 8);
}

static long sock_socket(int domain, int type, int protocol) {
    const struct socket_ops *ops = files_sockets();
    if (!ops || domain != AF_INET) {
        return -EAFNOSUPPORT;
    }
    if ((type & SOCK_TYPE_MASK) != SOCK_STREAM || type & ~(SOCK_TYPE_MASK | SOCK_NONBLOCK | SOCK_CLOEXEC)) {
        return -EPROTONOSUPPORT;
    }
    if (protocol != 0 && protocol != IPPROTO_TCP) {
        return -EPROTONOSUPPORT;
    }
    int h = ops->open();
    return h < 0 ? h : files_open_socket(h, (type & SOCK_NONBLOCK) != 0);
}

static long sock_bind(int h, const struct sockaddr_in4 *sa, uint32_t len) {
    if (len < 8 || !sa) {
        return -EINVAL;
    }
    if (sa->family != AF_INET) {
        return -EAFNOSUPPORT;
    }
    return files_sockets()->bind(h, sa->addr, swap16(sa->port));
}

static long sock_listen(int h, int backlog) {
    return files_sockets()->listen(h, backlog);
}

// Fill a sockaddr_in at sa, as far as *len allows; *len becomes its full size.
static void put_address(struct sockaddr_in4 *sa, uint32_t *len, uint32_t addr, uint16_t port) {
    if (!sa || !len) {
        return;
    }
    struct sockaddr_in4 out = { AF_INET, swap16(port), addr, { 0 } };
    const uint8_t *src = (const uint8_t *)&out;
    uint8_t *dst = (uint8_t *)sa;
    for (uint32_t i = 0; i < *len && i < sizeof out; i++) {
        dst[i] = src[i];
    }
    *len = sizeof out;
}

static long sock_accept(int h, int nb, struct sockaddr_in4 *sa, uint32_t *len, int flags) {
    if (flags & ~(SOCK_NONBLOCK | SOCK_CLOEXEC)) {
        return -EINVAL;
    }
    uint32_t addr;
    uint16_t port;
    long c = files_sockets()->accept(h, nb, &addr, &port);
    if (c < 0) {
        return c;
    }
    put_address(sa, len, addr, port);
    return files_open_socket((int)c, (flags & SOCK_NONBLOCK) != 0);
}

static long sock_name(int h, struct sockaddr_in4 *sa, uint32_t *len, int peer) {
    uint32_t addr;
    uint16_t port;
    long err = files_sockets()->address(h, peer, &addr, &port);
    if (!err) {
        put_address(sa, len, addr, port);
    }
    return err;
}

static long sock_send(int h, int nb, const void *buf, uint32_t n, int flags) {
    return files_sockets()->send(h, buf, n, nb || (flags & MSG_DONTWAIT));
}

// MSG_WAITALL: until n bytes, the end of the stream or an error (what came before it is returned).
static long sock_recv(int h, int nb, void *buf, uint32_t n, int flags) {
    nb = nb || (flags & MSG_DONTWAIT);
    long got = files_sockets()->recv(h, buf, n, nb, (flags & MSG_PEEK) != 0);
    if (!(flags & MSG_WAITALL) || (flags & MSG_PEEK) || got <= 0) {
        return got;
    }
    uint32_t total = (uint32_t)got;
    while (total < n) {
        long more = files_sockets()->recv(h, (uint8_t *)buf + total, n - total, nb, 0);
        if (more <= 0) {
            break;
        }
        total += (uint32_t)more;
    }
    return total;
}

static long sock_shutdown(int h, int how) {
    return how < 0 || how > 2 ? -EINVAL : files_sockets()->shutdown(h, how);
}

// SO_REUSEADDR and SO_KEEPALIVE are taken and change nothing (lwIP rebinds a port in TIME_WAIT
// anyway, and the connections here are short); TCP_NODELAY turns Nagle's algorithm off.
static long sock_setsockopt(int h, int level, int name, const int *value, uint32_t len) {
    if (!value || len < sizeof(int)) {
        return -EINVAL;
    }
    if (level == SOL_SOCKET && (name == SO_REUSEADDR || name == SO_KEEPALIVE)) {
        return 0;
    }
    if (level == IPPROTO_TCP && name == TCP_NODELAY) {
        return files_sockets()->nodelay(h, *value);
    }
    return -ENOPROTOOPT;
}

static long sock_getsockopt(int h, int level, int name, int *value, uint32_t *len) {
    if (!value || !len || *len < sizeof(int)) {
        return -EINVAL;
    }
    if (level == SOL_SOCKET && name == SO_ERROR) {
        *value = (int)-files_sockets()->error(h);
        *len = sizeof(int);
        return 0;
    }
    return -ENOPROTOOPT;
}

// One call, its arguments as the registers (or socketcall's array) hold them; every call but socket
// names a socket descriptor first, looked up here once.
#define A(i) args[i]
static long call(int op, const uint32_t *args) {
    switch (op) {
        case SYS_SOCKET:
            return sock_socket((int)A(0), (int)A(1), (int)A(2));
        case SYS_SOCKETPAIR: case SYS_SENDMSG: case SYS_RECVMSG: case SYS_RECVMMSG: case SYS_SENDMMSG:
            return -ENOSYS;
    }
    int nb, h = files_socket((int)A(0), &nb);
    if (h < 0) {
        return h;
    }
    switch (op) {
        case SYS_BIND:        return sock_bind(h, (const void *)A(1), A(2));
        case SYS_CONNECT:     return -EOPNOTSUPP;
        case SYS_LISTEN:      return sock_listen(h, (int)A(1));
        case SYS_ACCEPT:      return sock_accept(h, nb, (void *)A(1), (uint32_t *)A(2), 0);
        case SYS_ACCEPT4:     return sock_accept(h, nb, (void *)A(1), (uint32_t *)A(2), (int)A(3));
        case SYS_GETSOCKNAME: return sock_name(h, (void *)A(1), (uint32_t *)A(2), 0);
        case SYS_GETPEERNAME: return sock_name(h, (void *)A(1), (uint32_t *)A(2), 1);
        case SYS_SEND:        return sock_send(h, nb, (const void *)A(1), A(2), (int)A(3));
        case SYS_SENDTO:      return sock_send(h, nb, (const void *)A(1), A(2), (int)A(3));   // connected: no address
        case SYS_RECV:        return sock_recv(h, nb, (void *)A(1), A(2), (int)A(3));
        case SYS_RECVFROM:    return sock_recv(h, nb, (void *)A(1), A(2), (int)A(3));
        case SYS_SHUTDOWN:    return sock_shutdown(h, (int)A(1));
        case SYS_SETSOCKOPT:  return sock_setsockopt(h, (int)A(1), (int)A(2), (const int *)A(3), A(4));
        case SYS_GETSOCKOPT:  return sock_getsockopt(h, (int)A(1), (int)A(2), (int *)A(3), (uint32_t *)A(4));
        default:              return -ENOSYS;
    }
}
#undef A

// socketcall(op, args): the arguments in memory, as unsigned longs.
long sys_socketcall(uint32_t op, uint32_t args, uint32_t a3, uint32_t a4, uint32_t a5, uint32_t a6) {
    (void)a3, (void)a4, (void)a5, (void)a6;
    return args ? call((int)op, (const uint32_t *)args) : -EFAULT;
}

#define DIRECT(name, op) \
    long sys_##name(uint32_t a1, uint32_t a2, uint32_t a3, uint32_t a4, uint32_t a5, uint32_t a6) { \
        const uint32_t args[6] = { a1, a2, a3, a4, a5, a6 }; \
        return call(op, args); \
    }
DIRECT(socket, SYS_SOCKET)
DIRECT(bind, SYS_BIND)
DIRECT(connect, SYS_CONNECT)
DIRECT(listen, SYS_LISTEN)
DIRECT(accept4, SYS_ACCEPT4)
DIRECT(getsockopt, SYS_GETSOCKOPT)
DIRECT(setsockopt, SYS_SETSOCKOPT)
DIRECT(getsockname, SYS_GETSOCKNAME)
DIRECT(getpeername, SYS_GETPEERNAME)
DIRECT(sendto, SYS_SENDTO)
DIRECT(recvfrom, SYS_RECVFROM)
DIRECT(shutdown, SYS_SHUTDOWN)
