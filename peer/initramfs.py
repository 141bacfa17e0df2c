"""Write the Linux-guest peer's initramfs: an uncompressed cpio (newc) archive, which the kernel
unpacks fastest under TCG, holding busybox, the e1000 module, llama-server, the model and /init.

    python peer/initramfs.py OUT BUSYBOX E1000_KO LLAMA_SERVER MODEL INIT
"""
import os
import stat
import sys


def header(name, mode, size, ino, rdev=(0, 0)):
    fields = (ino, mode, 0, 0, 1, 0, size, 0, 0, rdev[0], rdev[1], len(name) + 1, 0)
    head = b"070701" + b"".join(b"%08x" % f for f in fields) + name.encode() + b"\0"
    return head + b"\0" * (-len(head) % 4)


def write(out, entries):
    """entries: (name, mode, data bytes or a file path, rdev) in archive order."""
    with open(out, "wb") as f:
        for ino, (name, mode, data, rdev) in enumerate(entries, 1):
            if isinstance(data, str):
                size = os.path.getsize(data)
                f.write(header(name, mode, size, ino, rdev))
                with open(data, "rb") as src:
                    while chunk := src.read(1 << 20):
                        f.write(chunk)
            else:
                size = len(data)
                f.write(header(name, mode, size, ino, rdev) + data)
            f.write(b"\0" * (-size % 4))
        f.write(header("TRAILER!!!", 0, 0, 0))


def main():
    out, busybox, e1000, server, model, init = sys.argv[1:]
    d, x, r = stat.S_IFDIR | 0o755, stat.S_IFREG | 0o755, stat.S_IFREG | 0o644
    entries = [(name, d, b"", (0, 0)) for name in ("bin", "dev", "lib", "lib/modules", "proc", "sys")]
    entries += [
        ("dev/console", stat.S_IFCHR | 0o600, b"", (5, 1)),     # the kernel opens it before /init runs
        ("init", x, init, (0, 0)),
        ("bin/busybox", x, busybox, (0, 0)),
        ("bin/llama-server", x, server, (0, 0)),
        ("lib/modules/e1000.ko", r, e1000, (0, 0)),
        ("model.gguf", r, model, (0, 0)),
    ]
    write(out + ".tmp", entries)
    os.replace(out + ".tmp", out)


if __name__ == "__main__":
    main()
