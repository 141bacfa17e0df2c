#pragma once
#include <stdint.h>

// The boot modules as a read-only file system: one directory, "/", holding each module under
// its basename. File descriptors 0..2 are the console. Calls return -errno on failure.
long bootfs_openat(int dirfd, const char *path, int flags);
long bootfs_close(int fd);
long bootfs_read(int fd, void *buf, uint32_t n);
long bootfs_pread(int fd, void *buf, uint32_t n, uint64_t pos);
long bootfs_write(int fd, const void *buf, uint32_t n);
long bootfs_lseek(int fd, int64_t off, int whence, uint64_t *result);
long bootfs_statx(int dirfd, const char *path, int flags, void *statx_buf);
long bootfs_stat64(int dirfd, const char *path, int flags, void *stat64_buf);
long bootfs_getdents64(int fd, void *buf, uint32_t n);
long bootfs_ioctl(int fd, uint32_t cmd, void *arg);
long bootfs_fcntl(int fd, int cmd, uint32_t arg);
long bootfs_access(int dirfd, const char *path, int mode);
// poll(): which of POLLIN/POLLOUT in events fd is ready for now, or POLLNVAL.
int bootfs_ready(int fd, int events);
// The address of a file's bytes at page offset pgoff, for mmap: no copy is made.
long bootfs_mmap(int fd, uint32_t len, uint32_t pgoff, uint32_t *addr);
