// Starting the other CPUs, and the two register-level moves of their threads.
//
// A started CPU (the "startup IPI") begins in 16-bit real mode at CS = page << 8, IP = 0, with
// page the vector the IPI carried: smp.c copies ap_trampoline to a free page below 1 MiB and
// fills in ap_trampoline_gdtr. The trampoline only switches to protected mode and jumps into
// the kernel proper, where ap_entry32 takes the stack smp.c left in ap_boot_esp.
#include "gdt.h"

    .text
    .code16
    .globl ap_trampoline, ap_trampoline_gdtr, ap_trampoline_end
ap_trampoline:
    cli
    cld
    movw %cs, %ax
    movw %ax, %ds
    lgdtl ap_trampoline_gdtr - ap_trampoline    // %ds-relative: the page's own copy
    movl %cr0, %eax
    orl $1, %eax                                // PE
    movl %eax, %cr0
    ljmpl $SEL_KERNEL_CODE, $ap_entry32
    .align 4
ap_trampoline_gdtr:
    .word 0
    .long 0
ap_trampoline_end:

    .code32
ap_entry32:
    movw $SEL_KERNEL_DATA, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    movl ap_boot_esp, %esp
    xorl %ebp, %ebp                 // ends backtraces
    call ap_main                    // never returns
1:  hlt
    jmp 1b

// thread_enter(const struct thread_regs *r): become the new thread, as if its clone call
// returned 0 on its own stack. Ring 0 to ring 0: iret pops only %eip, %cs, %eflags.
    .globl thread_enter
    .type thread_enter, @function
thread_enter:
    movl 4(%esp), %eax
    movl 36(%eax), %esp             // r->esp
    pushl 32(%eax)                  // r->eflags
    pushl 28(%eax)                  // r->cs
    pushl 24(%eax)                  // r->eip
    movl 40(%eax), %ecx             // r->gs: the TLS selector
    movw %cx, %gs
    movl 0(%eax), %ebx
    movl 4(%eax), %ecx
    movl 8(%eax), %edx
    movl 12(%eax), %esi
    movl 16(%eax), %edi
    movl 20(%eax), %ebp
    xorl %eax, %eax                 // the child's clone() result
    iret
    .size thread_enter, . - thread_enter

// call_on_stack(uint32_t stack_top, void (*fn)(void)): leave the current stack for good.
    .globl call_on_stack
    .type call_on_stack, @function
call_on_stack:
    movl 8(%esp), %eax
    movl 4(%esp), %esp
    xorl %ebp, %ebp
    call *%eax
1:  hlt
    jmp 1b
    .size call_on_stack, . - call_on_stack

    .section .note.GNU-stack, "", @progbits
