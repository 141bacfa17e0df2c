// File descriptors as glibc sees them: 0..2 the console's tty, the others the boot modules,
// read-only, in one flat directory "/" (what the kernel's files are: no file system on a disk),
// and TCP sockets (kernel/sockets.c: their calls; the network layer's operations do the work).
#include "kernel.h"
#include "spinlock.h"
#include <linux/errno.h>
#include <linux/fcntl.h>
#include <linux/stat.h>
#include <asm/stat.h>
#include <asm/ioctls.h>
#include <asm/poll.h>

#define FD_MAX      64
#define ROOT        (-1)        // lookup result for the directory "/"
#define TTY_MAJOR   136         // a pseudo-terminal: glibc line-buffers stdout on it
#define DEV_BOOTFS  0x42        // st_dev of the boot-module file system

enum fd_kind { FD_FREE, FD_CONSOLE, FD_FILE, FD_DIR, FD_SOCKET };

struct open_file {
    enum fd_kind kind;
    int module;         // FD_FILE: index into kernel.modules; FD_SOCKET: the network layer's handle
    uint64_t pos;       // FD_FILE: byte offset; FD_DIR: next directory entry; FD_SOCKET: O_NONBLOCK
};

static struct spinlock fds_lock;    // threads open and close descriptors too
static const struct socket_ops *sockets;

static struct open_file fds[FD_MAX] = {
    [0] = { FD_CONSOLE, 0, 0 }, [1] = { FD_CONSOLE, 0, 0 }, [2] = { FD_CONSOLE, 0, 0 },
};

// "/name", "name", "./name", "/" and "." — the namespace is flat, so anything else is absent.
static int lookup(const char *path) {
    while (*path == '/' || (path[0] == '.' && path[1] == '/')) {
        path += *path == '/' ? 1 : 2;
    }
    if (*path == 0 || kstr_eq(path, ".")) {
        return ROOT;
    }
    for (uint32_t i = 0; i < kernel.module_count; i++) {
        if (kstr_eq(path, kernel.modules[i].name)) {
            return (int)i;
        }
    }
    return -ENOENT;
}

static struct open_file *get(int fd) {
    if (fd < 0 || fd >= FD_MAX || fds[fd].kind == FD_FREE) {
        return 0;
    }
    return &fds[fd];
}

// Resolve (dirfd, path) as the *at() calls do; AT_EMPTY_PATH names dirfd itself.
static long resolve(int dirfd, const char *path, int flags, struct open_file *out) {
    if ((flags & AT_EMPTY_PATH) && path[0] == 0) {
        struct open_file *f = get(dirfd);
        if (!f) {
            return -EBADF;
        }
        *out = *f;
        return 0;
    }
    if (path[0] != '/' && dirfd != AT_FDCWD) {
        struct open_file *dir = get(dirfd);
        if (!dir) {
            return -EBADF;
        }
        if (dir->kind != FD_DIR) {
            return -ENOTDIR;
        }
    }
    int m = lookup(path);
    if (m < ROOT) {
        return m;
    }
    out->kind = m == ROOT ? FD_DIR : FD_FILE;
    out->module = m;
    out->pos = 0;
    return 0;
}

// The lowest free descriptor for f, or -EMFILE.
static long install(const struct open_file *f) {
    uint32_t flags = spin_lock(&fds_lock);
    for (int fd = 0; fd < FD_MAX; fd++) {
        if (fds[fd].kind == FD_FREE) {
            fds[fd] = *f;
            spin_unlock(&fds_lock, flags);
            return fd;
        }
    }
    spin_unlock(&fds_lock, flags);
    return -EMFILE;
}

long files_openat(int dirfd, const char *path, int flags) {
    struct open_file f;
    long err = resolve(dirfd, path, 0, &f);
    if (err == -ENOENT && (flags & O_CREAT)) {
        return -EROFS;
    }
    if (err) {
        return err;
    }
    if ((flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC)) {
        return f.kind == FD_DIR ? -EISDIR : -EROFS;
    }
    if ((flags & O_DIRECTORY) && f.kind != FD_DIR) {
        return -ENOTDIR;
    }
    return install(&f);
}

long files_close(int fd) {
    struct open_file *f = get(fd);
    if (!f) {
        return -EBADF;
    }
    if (f->kind == FD_SOCKET) {
        sockets->close(f->module);
    }
    f->kind = FD_FREE;
    return 0;
}

void files_attach_sockets(const struct socket_ops *ops) {
    sockets = ops;
}

const struct socket_ops *files_sockets(void) {
    return sockets;
}

long files_open_socket(int handle, int nonblock) {
    struct open_file f = { FD_SOCKET, handle, (uint64_t)nonblock };
    long fd = install(&f);
    if (fd < 0) {
        sockets->close(handle);
    }
    return fd;
}

int files_socket(int fd, int *nonblock) {
    struct open_file *f = get(fd);
    if (!f) {
        return -EBADF;
    }
    if (f->kind != FD_SOCKET) {
        return -ENOTSOCK;
    }
    *nonblock = (int)f->pos;
    return f->module;
}

static const struct tty *tty;

void files_attach_tty(const struct tty *t) {
    tty = t;
}

static long tty_read(void *buf, uint32_t n) {
    if (!tty) {
        return 0;
    }
    unsigned interrupts = tty->interrupts();
    int c;
    while ((c = tty->read_byte()) < 0) {
        if (tty->interrupts() != interrupts) {
            return -EINTR;
        }
        cpu_idle();
    }
    uint32_t got = 0;
    char *p = buf;
    do {
        p[got++] = (char)c;
    } while (got < n && (c = tty->read_byte()) >= 0);
    return got;
}

long files_pread(int fd, void *buf, uint32_t n, uint64_t pos) {
    struct open_file *f = get(fd);
    if (!f) {
        return -EBADF;
    }
    if (f->kind != FD_FILE) {
        return f->kind == FD_DIR ? -EISDIR : -ESPIPE;
    }
    const struct boot_module *m = &kernel.modules[f->module];
    if (pos >= m->size) {
        return 0;
    }
    if (n > m->size - pos) {
        n = (uint32_t)(m->size - pos);
    }
    // Whole words first: under TCG a string move costs per iteration, not per byte.
    const uint8_t *src = m->data + pos;
    void *dst = buf;
    uint32_t words = n / 4, bytes = n % 4;
    __asm__ volatile ("rep movsl; movl %3, %%ecx; rep movsb"
        : "+S" (src), "+D" (dst), "+c" (words) : "r" (bytes) : "memory");
    return n;
}

long files_read(int fd, void *buf, uint32_t n) {
    struct open_file *f = get(fd);
    if (!f) {
        return -EBADF;
    }
    if (f->kind == FD_CONSOLE) {
        return n ? tty_read(buf, n) : 0;
    }
    if (f->kind == FD_SOCKET) {
        return sockets->recv(f->module, buf, n, (int)f->pos, 0);
    }
    long got = files_pread(fd, buf, n, f->pos);
    if (got > 0) {
        f->pos += got;
    }
    return got;
}

long files_write(int fd, const void *buf, uint32_t n) {
    struct open_file *f = get(fd);
    if (!f) {
        return -EBADF;
    }
    if (f->kind == FD_SOCKET) {
        return sockets->send(f->module, buf, n, (int)f->pos);
    }
    if (f->kind != FD_CONSOLE) {
        return -EBADF;  // opened read-only
    }
    uint32_t lock = kprint_lock();
    if (tty) {
        tty->write(buf, n);
    } else {
        kprint_write(buf, n);
    }
    kprint_unlock(lock);
    return n;
}

long files_lseek(int fd, int64_t off, int whence, uint64_t *result) {
    struct open_file *f = get(fd);
    if (!f) {
        return -EBADF;
    }
    if (f->kind == FD_CONSOLE || f->kind == FD_SOCKET) {
        return -ESPIPE;
    }
    int64_t base;
    switch (whence) {
        case 0: base = 0; break;                                        // SEEK_SET
        case 1: base = (int64_t)f->pos; break;                          // SEEK_CUR
        case 2: base = f->kind == FD_FILE ? kernel.modules[f->module].size : 0; break; // SEEK_END
        default: return -EINVAL;
    }
    if (base + off < 0) {
        return -EINVAL;
    }
    f->pos = (uint64_t)(base + off);
    *result = f->pos;
    return 0;
}

struct file_info {
    uint32_t mode, size, ino, rdev_major;
};

static void describe(const struct open_file *f, struct file_info *fi) {
    fi->rdev_major = 0;
    if (f->kind == FD_CONSOLE) {
        fi->mode = S_IFCHR | 0620;
        fi->size = 0;
        fi->ino = 3;
        fi->rdev_major = TTY_MAJOR;
    } else if (f->kind == FD_SOCKET) {
        fi->mode = S_IFSOCK | 0777;
        fi->size = 0;
        fi->ino = 0x10000 + (uint32_t)f->module;
    } else if (f->kind == FD_DIR) {
        fi->mode = S_IFDIR | 0555;
        fi->size = 0;
        fi->ino = 2;
    } else {
        fi->mode = S_IFREG | 0444;
        fi->size = kernel.modules[f->module].size;
        fi->ino = 16 + (uint32_t)f->module;
    }
}

static void clear(void *p, uint32_t n) {
    uint8_t *b = p;
    for (uint32_t i = 0; i < n; i++) {
        b[i] = 0;
    }
}

// What stat and statx say of (dirfd, path): the file's description, or -errno.
static long stat_info(int dirfd, const char *path, int flags, struct file_info *fi) {
    struct open_file f;
    long err = resolve(dirfd, path, flags, &f);
    if (!err) {
        describe(&f, fi);
    }
    return err;
}

long files_statx(int dirfd, const char *path, int flags, void *buf) {
    struct file_info fi;
    long err = stat_info(dirfd, path, flags, &fi);
    if (err) {
        return err;
    }
    struct statx *st = buf;
    clear(st, sizeof(*st));
    st->stx_mask = STATX_BASIC_STATS;
    st->stx_blksize = PAGE_SIZE;
    st->stx_nlink = 1;
    st->stx_mode = (uint16_t)fi.mode;
    st->stx_ino = fi.ino;
    st->stx_size = fi.size;
    st->stx_blocks = (fi.size + 511) / 512;
    st->stx_rdev_major = fi.rdev_major;
    st->stx_dev_major = DEV_BOOTFS;
    return 0;
}

long files_stat64(int dirfd, const char *path, int flags, void *buf) {
    struct file_info fi;
    long err = stat_info(dirfd, path, flags, &fi);
    if (err) {
        return err;
    }
    struct stat64 *st = buf;
    clear(st, sizeof(*st));
    st->st_dev = DEV_BOOTFS;
    st->__st_ino = fi.ino;
    st->st_ino = fi.ino;
    st->st_mode = fi.mode;
    st->st_nlink = 1;
    st->st_rdev = (uint64_t)fi.rdev_major << 8;
    st->st_size = fi.size;
    st->st_blksize = PAGE_SIZE;
    st->st_blocks = (fi.size + 511) / 512;
    return 0;
}

struct linux_dirent64 {
    uint64_t d_ino;
    int64_t d_off;
    uint16_t d_reclen;
    uint8_t d_type;
    char d_name[];
};

#define DT_DIR 4
#define DT_REG 8

// Entries are ".", "..", then the modules; the directory position counts entries.
long files_getdents64(int fd, void *buf, uint32_t n) {
    struct open_file *f = get(fd);
    if (!f) {
        return -EBADF;
    }
    if (f->kind != FD_DIR) {
        return -ENOTDIR;
    }
    uint32_t used = 0;
    for (; f->pos < 2 + kernel.module_count; f->pos++) {
        const char *name = f->pos == 0 ? "." : f->pos == 1 ? ".." : kernel.modules[f->pos - 2].name;
        uint32_t len = 0;
        while (name[len]) {
            len++;
        }
        uint32_t reclen = (uint32_t)(sizeof(struct linux_dirent64) + len + 1 + 7) & ~7u;
        if (used + reclen > n) {
            if (used == 0) {
                return -EINVAL;     // the buffer cannot hold even one entry
            }
            break;
        }
        struct linux_dirent64 *d = (struct linux_dirent64 *)((char *)buf + used);
        d->d_ino = f->pos < 2 ? 2 : 16 + f->pos - 2;
        d->d_off = (int64_t)f->pos + 1;
        d->d_reclen = (uint16_t)reclen;
        d->d_type = f->pos < 2 ? DT_DIR : DT_REG;
        for (uint32_t i = 0; i <= len; i++) {
            d->d_name[i] = name[i];
        }
        used += reclen;
    }
    return used;
}

long files_ioctl(int fd, uint32_t cmd, void *arg) {
    struct open_file *f = get(fd);
    if (!f) {
        return -EBADF;
    }
    if (f->kind != FD_CONSOLE) {
        return -ENOTTY;
    }
    switch (cmd) {
        case TCGETS:
            clear(arg, 36);     // the kernel's i386 struct termios: raw, as the serial line is
            return 0;
        case TCSETS:
        case TCSETSW:
        case TCSETSF:
            return 0;
        case TIOCGWINSZ: {
            uint16_t *ws = arg; // rows, cols, xpixel, ypixel
            ws[0] = 25;
            ws[1] = 80;
            ws[2] = ws[3] = 0;
            return 0;
        }
        default:
            return -EINVAL;
    }
}

long files_fcntl(int fd, int cmd, uint32_t arg) {
    struct open_file *f = get(fd);
    if (!f) {
        return -EBADF;
    }
    switch (cmd) {
        case F_GETFD:
        case F_SETFD:
            return 0;
        case F_SETFL:
            if (f->kind == FD_SOCKET) {
                f->pos = (arg & O_NONBLOCK) != 0;
            }
            return 0;
        case F_GETFL:
            return f->kind == FD_SOCKET ? O_RDWR | (f->pos ? O_NONBLOCK : 0) : f->kind == FD_CONSOLE ? O_RDWR : O_RDONLY;
        default:
            return -EINVAL;
    }
}

long files_access(int dirfd, const char *path, int mode) {
    struct open_file f;
    long err = resolve(dirfd, path, 0, &f);
    if (err) {
        return err;
    }
    return (mode & 2) ? -EROFS : 0;     // W_OK
}

int files_ready(int fd, int events) {
    struct open_file *f = get(fd);
    if (!f) {
        return POLLNVAL;
    }
    if (f->kind == FD_SOCKET) {
        return sockets->ready(f->module, events);
    }
    int ready = events & POLLOUT;
    if (f->kind != FD_CONSOLE || (tty && tty->available())) {
        ready |= events & POLLIN;
    }
    return ready;
}

long files_mmap(int fd, uint32_t len, uint32_t pgoff, uint32_t *addr) {
    struct open_file *f = get(fd);
    if (!f) {
        return -EBADF;
    }
    if (f->kind != FD_FILE) {
        return -ENODEV;
    }
    const struct boot_module *m = &kernel.modules[f->module];
    uint64_t off = (uint64_t)pgoff * PAGE_SIZE;
    if (off >= m->size || len == 0) {
        return -EINVAL;
    }
    *addr = (uint32_t)(m->data + off);
    return 0;
}
