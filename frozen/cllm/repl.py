"""A line REPL on the serial console as an asyncio task, so the console stays live while the
server serves. Lines ending in ':' open a block that an empty line closes. Ctrl-C interrupts the
whole loop (the server too) into MicroPython's own REPL."""
import asyncio
import sys

import serial

PROMPT = b">>> "
MORE = b"... "


def execute(source, namespace):
    try:
        exec(compile(source + "\n", "<stdin>", "single"), namespace)
    except Exception as e:          # KeyboardInterrupt is no Exception: it ends the loop
        sys.print_exception(e)


async def run(namespace):
    console = serial.UART(1, timeout=0)
    reader = asyncio.StreamReader(console)
    line = b""
    block = []
    previous = 0
    console.write(b"cllm: the REPL stays live while serving; Ctrl-C stops the server\r\n" + PROMPT)
    while True:
        for c in await reader.read(256):
            if c == 10 and previous == 13:          # \r\n is one line end
                previous = c
                continue
            previous = c
            if c == 13 or c == 10:
                console.write(b"\r\n")
                try:
                    text = line.decode()
                except UnicodeError:
                    text = ""
                line = b""
                if block and text.strip():
                    block.append(text)
                elif not block and text.rstrip().endswith(":"):
                    block = [text]
                else:
                    source = "\n".join(block + [text]) if block else text
                    block = []
                    if source.strip():
                        execute(source, namespace)
                console.write(MORE if block else PROMPT)
            elif c == 3:                            # Ctrl-C: out of asyncio.run, the server with it
                console.write(b"^C\r\n")
                raise KeyboardInterrupt
            elif c == 8 or c == 127:
                if line:
                    line = line[:-1]
                    console.write(b"\b \b")
            elif c == 9 or c >= 32:
                line += bytes((c,))
                console.write(bytes((c,)))
