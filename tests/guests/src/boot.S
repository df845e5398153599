// Guest entry, at EL1h with the MMU off, DAIF masked and every register zero. _start is the
// image's first byte: zero .bss (which holds the stack), take the stack, install the vectors, run
// guest_main (which never returns).

.macro adr_l reg, sym
    adrp \reg, \sym
    add  \reg, \reg, :lo12:\sym
.endm

.section .text.boot, "ax"
.global _start
_start:
    adr_l   x1, __bss_start
    adr_l   x2, __bss_end
1:  cmp     x1, x2
    b.hs    2f
    stp     xzr, xzr, [x1], #16
    b       1b
2:  adr_l   x1, __guest_stack_top
    mov     sp, x1
    adr_l   x1, guest_vectors
    msr     vbar_el1, x1
    isb
    bl      guest_main
3:  wfi
    b       3b

// A second vCPU, started by PSCI CPU_ON with x0 = its context id: its own stack, the same
// vectors, guest_secondary(context).
.global _secondary_start
_secondary_start:
    adr_l   x1, __guest_stack2_top
    mov     sp, x1
    adr_l   x1, guest_vectors
    msr     vbar_el1, x1
    isb
    bl      guest_secondary
4:  wfi
    b       4b

// The 16 KiB stack, in .bss.
.section .bss.guest_stack, "aw", %nobits
.balign 16
__guest_stack_bottom:
    .space  16384
__guest_stack_top:
// vCPU 1's 8 KiB stack.
.balign 16
    .space  8192
__guest_stack2_top:

// EL1 vectors: save the caller-saved registers, call guest_exception(vector index), restore,
// eret. The handler either skips an expected UNDEF (ELR_EL1 += 4) or powers the guest off.
.macro ventry index
    .balign 0x80
    sub     sp, sp, #160
    stp     x0, x1, [sp, #0]
    mov     x0, #\index
    b       guest_vector_common
.endm

.section .text.vectors, "ax"
.balign 0x800
.global guest_vectors
guest_vectors:
    ventry 0
    ventry 1
    ventry 2
    ventry 3
    ventry 4
    ventry 5
    ventry 6
    ventry 7
    ventry 8
    ventry 9
    ventry 10
    ventry 11
    ventry 12
    ventry 13
    ventry 14
    ventry 15

guest_vector_common:
    stp     x2, x3, [sp, #16]
    stp     x4, x5, [sp, #32]
    stp     x6, x7, [sp, #48]
    stp     x8, x9, [sp, #64]
    stp     x10, x11, [sp, #80]
    stp     x12, x13, [sp, #96]
    stp     x14, x15, [sp, #112]
    stp     x16, x17, [sp, #128]
    stp     x18, x30, [sp, #144]
    bl      guest_exception
    ldp     x2, x3, [sp, #16]
    ldp     x4, x5, [sp, #32]
    ldp     x6, x7, [sp, #48]
    ldp     x8, x9, [sp, #64]
    ldp     x10, x11, [sp, #80]
    ldp     x12, x13, [sp, #96]
    ldp     x14, x15, [sp, #112]
    ldp     x16, x17, [sp, #128]
    ldp     x18, x30, [sp, #144]
    ldp     x0, x1, [sp, #0]
    add     sp, sp, #160
    eret
