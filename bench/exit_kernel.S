// The emulator's floor for bench/boot.py: a Multiboot kernel that powers QEMU off through
// isa-debug-exit as its first instruction.
    .section .multiboot, "a"
    .align 4
    .long 0x1BADB002, 0, -0x1BADB002

    .text
    .globl _start
_start:
    xorl %eax, %eax
    outl %eax, $0xf4
1:  hlt
    jmp 1b
