"""The MicroPython modules cllm promises, and the x86 native emitters."""


def test_stdlib_modules(guest):
    code = r"""
import gc, sys, time, os, micropython, asyncio, json, re, struct, hashlib, binascii
print(sys.platform, sys.implementation.name, sys.maxsize > 2**30)
print(os.uname().sysname, os.uname().machine)
print(json.dumps({"a": [1, 2.5, None]}), json.loads('{"x": [true]}')["x"])
print(re.match(r"(\w+)-(\d+)", "ctx-2048").group(2))
print(struct.pack("<IH", 1, 2), struct.unpack(">d", struct.pack(">d", 1.5))[0])
print(binascii.hexlify(hashlib.sha256(b"cllm").digest()).decode())
print(time.ticks_diff(time.ticks_ms(), time.ticks_ms()) <= 0)
gc.collect(); print(gc.mem_free() > 0)
async def job(n):
    await asyncio.sleep_ms(10)
    return n * 2
async def main():
    return await asyncio.gather(job(1), job(2), job(3))
print(asyncio.run(main()))
"""
    out, err = guest.raw_exec(code)
    assert err == b"", err
    lines = out.decode().splitlines()
    assert lines[0] == "cllm micropython True"
    assert lines[1] == "cllm cllm with i386"
    assert lines[2] == '{"a": [1, 2.5, null]} [True]'
    assert lines[3] == "2048"
    assert lines[4] == "b'\\x01\\x00\\x00\\x00\\x02\\x00' 1.5"
    import hashlib
    assert lines[5] == hashlib.sha256(b"cllm").hexdigest()
    assert lines[6:] == ["True", "True", "[2, 4, 6]"]


def test_native_and_viper(guest):
    code = """
import micropython
@micropython.native
def tri(n):
    s = 0
    for i in range(n):
        s += i
    return s
@micropython.viper
def xor_bytes(buf, k: int) -> int:
    p = ptr8(buf)
    acc = 0
    for i in range(int(len(buf))):
        p[i] = p[i] ^ k
        acc += p[i]
    return acc
b = bytearray(b"abc")
print(tri(1000), xor_bytes(b, 1), bytes(b))
"""
    out, err = guest.raw_exec(code)
    assert err == b"", err
    assert out.decode().split() == ["499500", str(sum(c ^ 1 for c in b"abc")), "b'`cb'"]
