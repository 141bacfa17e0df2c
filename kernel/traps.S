// Interrupt entry stubs. Everything runs in ring 0, so the CPU pushes only %eflags, %cs, %eip
// (and an error code for some exceptions) on the current stack; each stub makes the frame
// uniform (vector + error code) and trap_common saves the general registers as struct trapframe.

.macro TRAP_NOERR vec
    .globl trap\vec
trap\vec:
    pushl $0
    pushl $\vec
    jmp trap_common
.endm

.macro TRAP_ERR vec
    .globl trap\vec
trap\vec:
    pushl $\vec
    jmp trap_common
.endm

    .text
TRAP_NOERR 0
TRAP_NOERR 1
TRAP_NOERR 2
TRAP_NOERR 3
TRAP_NOERR 4
TRAP_NOERR 5
TRAP_NOERR 6
TRAP_NOERR 7
TRAP_ERR   8
TRAP_NOERR 9
TRAP_ERR   10
TRAP_ERR   11
TRAP_ERR   12
TRAP_ERR   13
TRAP_ERR   14
TRAP_NOERR 15
TRAP_NOERR 16
TRAP_ERR   17
TRAP_NOERR 18
TRAP_NOERR 19
TRAP_NOERR 20
TRAP_ERR   21
TRAP_NOERR 22
TRAP_NOERR 23
TRAP_NOERR 24
TRAP_NOERR 25
TRAP_NOERR 26
TRAP_NOERR 27
TRAP_NOERR 28
TRAP_ERR   29
TRAP_ERR   30
TRAP_NOERR 31
// Hardware interrupts from the two 8259s, remapped to 32..47.
TRAP_NOERR 32
TRAP_NOERR 33
TRAP_NOERR 34
TRAP_NOERR 35
TRAP_NOERR 36
TRAP_NOERR 37
TRAP_NOERR 38
TRAP_NOERR 39
TRAP_NOERR 40
TRAP_NOERR 41
TRAP_NOERR 42
TRAP_NOERR 43
TRAP_NOERR 44
TRAP_NOERR 45
TRAP_NOERR 46
TRAP_NOERR 47
// The Linux i386 system call gate: int $0x80.
TRAP_NOERR 128
// Local APIC: the inter-processor interrupt and the spurious-interrupt vector.
TRAP_NOERR 240
TRAP_NOERR 241
TRAP_NOERR 255

// trap_dispatch returns the frame to resume: this one, or (on CPU 0, which may run two threads)
// the other thread's, saved on its own stack when it was switched out.
trap_common:
    pushal
    movl %esp, %eax
    pushl %eax
    call trap_dispatch
    movl %eax, %esp
    popal
    addl $8, %esp                   // vector and error code
    iret

// trap_resume(struct trapframe *tf): resume a frame trap_common saved, leaving this stack for good.
    .globl trap_resume
trap_resume:
    movl 4(%esp), %esp
    popal
    addl $8, %esp
    iret

// The table idt.c installs, in vector order 0..47.
    .section .rodata
    .globl trap_vectors
trap_vectors:
    .irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .long trap\v
    .endr
    .irp v, 32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47
    .long trap\v
    .endr

// A double fault usually means the stack is gone, so it arrives through a task gate on a
// TSS of its own (with its own stack); this entry runs there and never returns.
    .text
    .globl double_fault_task
double_fault_task:
    cli
    call double_fault_panic
1:  hlt
    jmp 1b

    .section .note.GNU-stack, "", @progbits
