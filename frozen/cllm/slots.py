"""Saving a slot's KV cache and restoring it (llama-server's POST /slots/{id}?action=save|restore|erase,
its --slot-save-path) into a RAM file system mounted at /slots, bounded by slot_save= bytes: the files
are llama.cpp's own sequence-state files (llama_state_seq_save_file's layout: magic, version, the
tokens, then llm.Model.state_get's bytes), visible from the console (os.listdir('/slots'), open())."""
import asyncio
import errno
import io
import struct
import time

from cllm.fields import body_of
from cllm.http import ApiError, bad_request

MAGIC, VERSION = 0x67677371, 3          # LLAMA_STATE_SEQ_MAGIC ("ggsq"), LLAMA_STATE_SEQ_VERSION
MOUNT = "/slots"
ENOSPC = 28                             # (MicroPython's errno module has no ENOSPC)


class RamFS:
    """A flat directory of files in RAM that vfs.mount takes (the VFS protocol in Python, as
    mpremote's remote file system is), holding at most `limit` bytes."""

    def __init__(self, limit):
        self.limit = limit
        self.files = {}

    def used(self):
        return sum(len(d) for d in self.files.values())

    def put(self, name, data):
        if self.used() - len(self.files.get(name, b"")) + len(data) > self.limit:
            raise OSError(ENOSPC)
        self.files[name] = data

    @staticmethod
    def name(path):
        return path.strip("/")

    # the VFS protocol
    def mount(self, readonly, mkfs):
        pass

    def umount(self):
        pass

    def chdir(self, path):
        pass

    def getcwd(self):
        return ""

    def ilistdir(self, path):
        for name, data in self.files.items():
            yield (name, 0x8000, 0, len(data))

    def stat(self, path):
        name = self.name(path)
        if not name:
            return (0x4000, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        if name not in self.files:
            raise OSError(errno.ENOENT)
        return (0x8000, 0, 0, 0, 0, 0, len(self.files[name]), 0, 0, 0)

    def statvfs(self, path):
        return (1, 1, self.limit, max(0, self.limit - self.used()), max(0, self.limit - self.used()), 0, 0, 0, 0, 255)

    def remove(self, path):
        if self.files.pop(self.name(path), None) is None:
            raise OSError(errno.ENOENT)

    def rename(self, old, new):
        self.files[self.name(new)] = self.files.pop(self.name(old))

    def open(self, path, mode):
        name = self.name(path)
        if "w" in mode or "a" in mode:
            return Writer(self, name, self.files.get(name, b"") if "a" in mode else b"", "b" in mode)
        if name not in self.files:
            raise OSError(errno.ENOENT)
        return io.BytesIO(self.files[name]) if "b" in mode else io.StringIO(self.files[name].decode())


class Writer:
    """A file open for writing: its bytes reach the RamFS when it is closed."""

    def __init__(self, fs, name, data, binary):
        self.fs, self.name, self.buf, self.binary = fs, name, io.BytesIO(), binary
        self.buf.write(data)

    def write(self, data):
        return self.buf.write(data if self.binary else data.encode())

    def close(self):
        if self.buf is not None:
            self.fs.put(self.name, self.buf.getvalue())
            self.buf = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def valid_filename(name):
    """As llama-server's fs_validate_filename: a plain file name, no directories."""
    return (isinstance(name, str) and 0 < len(name) <= 255 and name not in (".", "..") and
            not any(c in name for c in "/\\:") and all(ord(c) >= 32 for c in name))


files = None           # the RamFS at /slots, one for the life of the kernel (a server started again keeps it)


def mounted(limit):
    global files
    if files is None:
        files = RamFS(limit)
        import vfs
        vfs.mount(files, MOUNT)
    files.limit = limit
    return files


class SlotFiles:
    """The slot actions over one engine and the RamFS."""

    def __init__(self, engine, limit):
        self.engine = engine
        self.fs = mounted(limit)

    async def idle(self, slot):
        """Wait until the slot has no task and no decode runs (the KV cache is the decoder's then)."""
        engine = self.engine
        while slot.task is not None or engine.decoding:
            await asyncio.sleep_ms(engine.POLL_MS)

    async def action(self, api, req, id_slot):
        if not self.fs.limit:
            raise ApiError(501, "This server does not support slots action. Start it with slot_save= on the "
                           "command line", "not_supported_error")
        action = req.args.get("action")
        if action not in ("save", "restore", "erase"):
            raise bad_request("Invalid action")
        body = body_of(req) if action != "erase" or req.body else {}
        slot = self.engine.slots[id_slot]
        filename = body.get("filename")
        if action != "erase" and not valid_filename(filename):
            raise bad_request("Invalid filename")
        await self.idle(slot)
        t0 = time.ticks_us()
        model = self.engine.model
        if action == "erase":
            n = len(slot.cache)
            model.kv_remove(slot.id)
            slot.cache = []
            return {"id_slot": id_slot, "n_erased": n}
        if action == "save":
            tokens = slot.cache
            data = struct.pack("<III", MAGIC, VERSION, len(tokens)) + struct.pack("<%di" % len(tokens), *tokens) + \
                model.state_get(slot.id)
            try:
                self.fs.put(filename, data)
            except OSError:
                raise bad_request("Unable to save slot: {} bytes would pass slot_save={} ({} in use)".format(
                    len(data), self.fs.limit, self.fs.used()))
            return {"id_slot": id_slot, "filename": filename, "n_saved": len(tokens), "n_written": len(data),
                    "timings": {"save_ms": time.ticks_diff(time.ticks_us(), t0) / 1000}}
        data = self.fs.files.get(filename)
        if data is None:
            raise bad_request("Unable to restore slot: no such file: " + filename)
        tokens = self.parse(data)
        model.kv_remove(slot.id)
        slot.cache = []
        try:
            model.state_set(slot.id, memoryview(data)[12 + 4 * len(tokens):])
        except ValueError as e:
            raise bad_request("Unable to restore slot: {}".format(e))
        slot.cache = tokens
        return {"id_slot": id_slot, "filename": filename, "n_restored": len(tokens), "n_read": len(data),
                "timings": {"restore_ms": time.ticks_diff(time.ticks_us(), t0) / 1000}}

    def parse(self, data):
        """The tokens of a sequence-state file, its header checked as llama.cpp checks it."""
        if len(data) < 12:
            raise bad_request("Unable to restore slot: not a sequence state file")
        magic, version, n = struct.unpack("<III", data[:12])
        if magic != MAGIC or version != VERSION:
            raise bad_request("Unable to restore slot: unknown (magic, version) {:08x}, {:08x}".format(magic, version))
        if 12 + 4 * n > len(data):
            raise bad_request("Unable to restore slot: token count in sequence state file exceeds the file size")
        if n >= self.engine.n_ctx_slot:
            raise bad_request("Unable to restore slot: Restored prompt does not fit in the slot context")
        tokens = list(struct.unpack("<%di" % n, data[12:12 + 4 * n]))
        n_vocab = self.engine.meta["n_vocab"]
        if any(not 0 <= t < n_vocab for t in tokens):
            raise bad_request("Unable to restore slot: Invalid tokens in slot save file")
        return tokens
