"""The kernel's symbol table for panic backtraces.

generate ELF OUT.S   function symbols of ELF (address-sorted, demangled) as assembly
check ELF1 ELF2      fail if any function moved between the two links
"""
import subprocess
import sys


def functions(elf):
    out = subprocess.run(["nm", "-n", "-C", "--defined-only", elf], check=True, capture_output=True, text=True).stdout
    syms = {}
    for line in out.splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[1] in "tTwW" and not parts[2].startswith("ksyms_"):
            syms.setdefault(int(parts[0], 16), parts[2])
    return syms


def generate(elf, out):
    syms = sorted(functions(elf).items())
    lines = ['    .section .rodata', '    .align 4', '    .globl ksyms_count, ksyms_addr, ksyms_name',
             f'ksyms_count: .long {len(syms)}', 'ksyms_addr:']
    lines += [f'    .long 0x{addr:x}' for addr, _ in syms]
    lines.append('ksyms_name:')
    lines += [f'    .long .Lname{i}' for i in range(len(syms))]
    for i, (_, name) in enumerate(syms):
        escaped = name.replace('\\', '\\\\').replace('"', '\\"')
        lines.append(f'.Lname{i}: .asciz "{escaped}"')
    lines.append('    .section .note.GNU-stack, "", @progbits')
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")


def check(before, after):
    a, b = functions(before), functions(after)
    if a != b:
        moved = sorted(set(a.items()) ^ set(b.items()))[:5]
        sys.exit(f"ksyms: function addresses changed between the two links: {moved}")


if __name__ == "__main__":
    {"generate": generate, "check": check}[sys.argv[1]](*sys.argv[2:])
