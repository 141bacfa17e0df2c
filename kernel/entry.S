// Multiboot entry: the loader jumps here in 32-bit protected mode, paging off, interrupts off,
// %eax = 0x2BADB002 and %ebx = the physical address of the multiboot_info.
#include "multiboot.h"

#define BOOT_STACK_SIZE     (4 * 1024 * 1024)
#define MB_FLAGS            (MULTIBOOT_PAGE_ALIGN | MULTIBOOT_MEMORY_INFO)

// The linker script puts .multiboot right after the ELF program headers: the loader looks
// for the header in the first 8 KiB of the file.
    .section .multiboot, "a"
    .align 4
    .long MULTIBOOT_HEADER_MAGIC
    .long MB_FLAGS
    .long -(MULTIBOOT_HEADER_MAGIC + MB_FLAGS)

    .section .bss
    .align 16
    .globl boot_stack, boot_stack_top
boot_stack:
    .skip BOOT_STACK_SIZE
boot_stack_top:

    .text
    .globl mb_entry
    .type mb_entry, @function
mb_entry:
    cli
    cld
    movl %eax, %esi                 // keep magic and info pointer across the .bss clear
    movl %ebx, %edx
    // Multiboot does not promise a zeroed .bss for ELF kernels; clear it before any C runs.
    movl $__bss_start, %edi
    movl $_end, %ecx
    subl %edi, %ecx
    xorl %eax, %eax
    rep stosb
    // boot_main() builds glibc's initial process stack in the top page of the boot stack,
    // so it runs just below that page.
    movl $(boot_stack_top - 4096), %esp
    xorl %ebp, %ebp                 // ends frame-pointer backtraces
    pushl %edx
    pushl %esi
    call boot_main                  // returns the %esp that glibc's _start expects: &argc
    movl %eax, %esp
    xorl %edx, %edx                 // no rtld_fini: this is a static program
    xorl %ebp, %ebp
    jmp _start
    .size mb_entry, . - mb_entry

// Load a new GDT and reload every segment register from it (%cs through a far return).
    .globl gdt_load
    .type gdt_load, @function
gdt_load:
    movl 4(%esp), %eax
    lgdt (%eax)
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    popl %eax                       // return address
    pushl $0x08
    pushl %eax
    lret
    .size gdt_load, . - gdt_load

    .section .note.GNU-stack, "", @progbits
