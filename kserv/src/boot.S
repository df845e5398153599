// KServ entry, at EL1 with the MMU off. The boot core enters at _start with x0 = the DTB address
// (or 0); cores the host starts with PSCI CPU_ON enter at kserv_secondary_start with x0 = the
// context value. Each core gets a 64 KiB stack by MPIDR Aff0 (the VM manager keeps its VMs on it).

.macro adr_l reg, sym
    adrp \reg, \sym
    add  \reg, \reg, :lo12:\sym
.endm

.macro stack_for_this_core
    mrs     x1, mpidr_el1
    and     x1, x1, #0xff
    add     x1, x1, #1
    lsl     x1, x1, #16
    adr_l   x2, __stacks_start
    add     sp, x2, x1
.endm

.section .text.boot, "ax"
.global _start
_start:
    mov     x19, x0
    adr_l   x1, __bss_start
    adr_l   x2, __bss_end
1:  cmp     x1, x2
    b.hs    2f
    stp     xzr, xzr, [x1], #16
    b       1b
2:  stack_for_this_core
    adr_l   x1, kserv_vectors
    msr     vbar_el1, x1
    isb
    mov     x0, x19
    bl      kserv_main
3:  wfe
    b       3b

.global kserv_secondary_start
kserv_secondary_start:
    mov     x19, x0
    stack_for_this_core
    adr_l   x1, kserv_vectors
    msr     vbar_el1, x1
    isb
    mov     x0, x19
    bl      kserv_secondary_main
4:  wfe
    b       4b

// EL1 vectors: save x0..x30, ELR_EL1, SPSR_EL1 (the layout of exceptions::Frame), call
// kserv_exception(frame, vector index), restore, eret.
.macro vector index
    .balign 0x80
    sub     sp, sp, #272
    stp     x0, x1, [sp, #16 * 0]
    stp     x2, x3, [sp, #16 * 1]
    mov     x1, #\index
    b       vector_common
.endm

.section .text.vectors, "ax"
.balign 0x800
.global kserv_vectors
kserv_vectors:
    vector 0
    vector 1
    vector 2
    vector 3
    vector 4
    vector 5
    vector 6
    vector 7
    vector 8
    vector 9
    vector 10
    vector 11
    vector 12
    vector 13
    vector 14
    vector 15

vector_common:
    stp     x4, x5, [sp, #16 * 2]
    stp     x6, x7, [sp, #16 * 3]
    stp     x8, x9, [sp, #16 * 4]
    stp     x10, x11, [sp, #16 * 5]
    stp     x12, x13, [sp, #16 * 6]
    stp     x14, x15, [sp, #16 * 7]
    stp     x16, x17, [sp, #16 * 8]
    stp     x18, x19, [sp, #16 * 9]
    stp     x20, x21, [sp, #16 * 10]
    stp     x22, x23, [sp, #16 * 11]
    stp     x24, x25, [sp, #16 * 12]
    stp     x26, x27, [sp, #16 * 13]
    stp     x28, x29, [sp, #16 * 14]
    mrs     x2, elr_el1
    mrs     x3, spsr_el1
    stp     x30, x2, [sp, #16 * 15]
    str     x3, [sp, #16 * 16]
    mov     x0, sp
    bl      kserv_exception
    ldp     x30, x2, [sp, #16 * 15]
    ldr     x3, [sp, #16 * 16]
    msr     elr_el1, x2
    msr     spsr_el1, x3
    ldp     x0, x1, [sp, #16 * 0]
    ldp     x2, x3, [sp, #16 * 1]
    ldp     x4, x5, [sp, #16 * 2]
    ldp     x6, x7, [sp, #16 * 3]
    ldp     x8, x9, [sp, #16 * 4]
    ldp     x10, x11, [sp, #16 * 5]
    ldp     x12, x13, [sp, #16 * 6]
    ldp     x14, x15, [sp, #16 * 7]
    ldp     x16, x17, [sp, #16 * 8]
    ldp     x18, x19, [sp, #16 * 9]
    ldp     x20, x21, [sp, #16 * 10]
    ldp     x22, x23, [sp, #16 * 11]
    ldp     x24, x25, [sp, #16 * 12]
    ldp     x26, x27, [sp, #16 * 13]
    ldp     x28, x29, [sp, #16 * 14]
    add     sp, sp, #272
    eret
