// KCore's EL2 exception vectors (VBAR_EL2). Every entry saves the full general-purpose context
// plus ELR_EL2 and SPSR_EL2 into a TrapFrame on the core's EL2 stack, calls the Rust TrapHandler
// with a pointer to it, then restores the (possibly modified) frame and returns with eret.
// The layout must match kcore::machine::TrapFrame: x0..x30, elr, spsr (33 words, 272 bytes).

.equ FRAME_SIZE, 272

// x2..x29 at their TrapFrame offsets from `base` (also the world switch's guest frame).
.macro store_x2_x29 base
    stp     x2, x3, [\base, #16 * 1]
    stp     x4, x5, [\base, #16 * 2]
    stp     x6, x7, [\base, #16 * 3]
    stp     x8, x9, [\base, #16 * 4]
    stp     x10, x11, [\base, #16 * 5]
    stp     x12, x13, [\base, #16 * 6]
    stp     x14, x15, [\base, #16 * 7]
    stp     x16, x17, [\base, #16 * 8]
    stp     x18, x19, [\base, #16 * 9]
    stp     x20, x21, [\base, #16 * 10]
    stp     x22, x23, [\base, #16 * 11]
    stp     x24, x25, [\base, #16 * 12]
    stp     x26, x27, [\base, #16 * 13]
    stp     x28, x29, [\base, #16 * 14]
.endm

.macro load_x2_x29 base
    ldp     x2, x3, [\base, #16 * 1]
    ldp     x4, x5, [\base, #16 * 2]
    ldp     x6, x7, [\base, #16 * 3]
    ldp     x8, x9, [\base, #16 * 4]
    ldp     x10, x11, [\base, #16 * 5]
    ldp     x12, x13, [\base, #16 * 6]
    ldp     x14, x15, [\base, #16 * 7]
    ldp     x16, x17, [\base, #16 * 8]
    ldp     x18, x19, [\base, #16 * 9]
    ldp     x20, x21, [\base, #16 * 10]
    ldp     x22, x23, [\base, #16 * 11]
    ldp     x24, x25, [\base, #16 * 12]
    ldp     x26, x27, [\base, #16 * 13]
    ldp     x28, x29, [\base, #16 * 14]
.endm

.macro save_frame
    sub     sp, sp, #FRAME_SIZE
    stp     x0, x1, [sp, #16 * 0]
    store_x2_x29 sp
    mrs     x0, elr_el2
    mrs     x1, spsr_el2
    stp     x30, x0, [sp, #16 * 15]
    str     x1, [sp, #16 * 16]
.endm

.macro vector_entry handler, kind
    .balign 0x80
    save_frame
    mov     x0, sp
    mov     x1, #\kind
    bl      \handler
    b       restore_frame_and_eret
.endm

// Trap kinds, must match kcore::machine::TrapKind.
.equ KIND_SYNC, 0
.equ KIND_IRQ, 1
.equ KIND_FIQ, 2
.equ KIND_SERROR, 3

.section .text.vectors, "ax"
.balign 0x800
.global __kcore_vectors
__kcore_vectors:
    // Current EL with SP_EL0: KCore never runs on SP_EL0.
    vector_entry kcore_fault_handler, KIND_SYNC
    vector_entry kcore_fault_handler, KIND_IRQ
    vector_entry kcore_fault_handler, KIND_FIQ
    vector_entry kcore_fault_handler, KIND_SERROR
    // Current EL with SP_ELx: a fault inside KCore itself.
    vector_entry kcore_fault_handler, KIND_SYNC
    vector_entry kcore_fault_handler, KIND_IRQ
    vector_entry kcore_fault_handler, KIND_FIQ
    vector_entry kcore_fault_handler, KIND_SERROR
    // Lower EL, AArch64: the host or a guest.
    vector_entry lower_el_trap_handler, KIND_SYNC
    vector_entry lower_el_trap_handler, KIND_IRQ
    vector_entry lower_el_trap_handler, KIND_FIQ
    vector_entry lower_el_trap_handler, KIND_SERROR
    // Lower EL, AArch32: not supported (HCR_EL2.RW=1); treated like AArch64 traps.
    vector_entry lower_el_trap_handler, KIND_SYNC
    vector_entry lower_el_trap_handler, KIND_IRQ
    vector_entry lower_el_trap_handler, KIND_FIQ
    vector_entry lower_el_trap_handler, KIND_SERROR

.global restore_frame_and_eret
restore_frame_and_eret:
    ldp     x30, x0, [sp, #16 * 15]
    ldr     x1, [sp, #16 * 16]
    msr     elr_el2, x0
    msr     spsr_el2, x1
    ldp     x0, x1, [sp, #16 * 0]
    load_x2_x29 sp
    add     sp, sp, #FRAME_SIZE
    eret

// Enters a lower EL on this core with a fresh EL2 stack: copies the frame at x0 to the top of
// the stack whose top is x1 (highest word first, so a source frame just below it is safe), makes
// that the stack, and returns through it. Used for the hand-off to KServ and for host CPU_ON.
.global enter_lower_el
enter_lower_el:
    sub     x2, x1, #FRAME_SIZE
    mov     x3, #(33 * 8)
1:  sub     x3, x3, #8
    ldr     x4, [x0, x3]
    str     x4, [x2, x3]
    cbnz    x3, 1b
    mov     sp, x2
    b       restore_frame_and_eret
