// KCore's EL2 exception vectors (VBAR_EL2). Every entry saves the full general-purpose context
// plus ELR_EL2 and SPSR_EL2 into a TrapFrame on the core's EL2 stack, calls the Rust TrapHandler
// with a pointer to it, then restores the (possibly modified) frame and returns with eret.
// The layout must match kcore::machine::TrapFrame: x0..x30, elr, spsr (33 words, 272 bytes).

.equ FRAME_SIZE, 272

// x4..x17 at their TrapFrame offsets from `base`: what a call (the host's SMCCC call, a guest's
// exit served in place) saves besides x0..x3, x18 and x30 (also the world switch's guest frame).
.macro store_x4_x17 base
    stp     x4, x5, [\base, #16 * 2]
    stp     x6, x7, [\base, #16 * 3]
    stp     x8, x9, [\base, #16 * 4]
    stp     x10, x11, [\base, #16 * 5]
    stp     x12, x13, [\base, #16 * 6]
    stp     x14, x15, [\base, #16 * 7]
    stp     x16, x17, [\base, #16 * 8]
.endm

.macro load_x4_x17 base
    ldp     x4, x5, [\base, #16 * 2]
    ldp     x6, x7, [\base, #16 * 3]
    ldp     x8, x9, [\base, #16 * 4]
    ldp     x10, x11, [\base, #16 * 5]
    ldp     x12, x13, [\base, #16 * 6]
    ldp     x14, x15, [\base, #16 * 7]
    ldp     x16, x17, [\base, #16 * 8]
.endm

// x4..x29 at their TrapFrame offsets from `base`.
.macro store_x4_x29 base
    store_x4_x17 \base
    stp     x18, x19, [\base, #16 * 9]
    stp     x20, x21, [\base, #16 * 10]
    stp     x22, x23, [\base, #16 * 11]
    stp     x24, x25, [\base, #16 * 12]
    stp     x26, x27, [\base, #16 * 13]
    stp     x28, x29, [\base, #16 * 14]
.endm

// x2..x29 at their TrapFrame offsets from `base`.
.macro store_x2_x29 base
    stp     x2, x3, [\base, #16 * 1]
    store_x4_x29 \base
.endm

.macro load_x2_x29 base
    ldp     x2, x3, [\base, #16 * 1]
    load_x4_x17 \base
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
// Added to a guest exit's kind: an SError was pending when the guest left, and was taken in
// the exit's abort window (world_switch.S). Must match kcore::machine::SERROR_AT_EXIT.
.equ KIND_SERROR_AT_EXIT, 0x10

// SMCCC_ARCH_WORKAROUND_1 / _3 (SMC Calling Convention, DEN0028).
.equ SMCCC_WORKAROUND_1, 0x80008000
.equ SMCCC_WORKAROUND_3, 0x80003fff
// Entry mitigation variants (finding 11 of issue 11), chosen per core at boot by
// kcore::machine::aarch64::mitigation from MIDR, the ID registers and the firmware.
.equ FW_NONE, 0
.equ FW_WA1, 1
.equ FW_WA3, 3
.equ BHB_NONE, 0
.equ BHB_LOOP, 1
.equ BHB_CLRBHB, 2

// What every entry from a lower EL runs before its first indirect branch, against Spectre-v2
// (the firmware's workaround call) and Spectre-BHB (Arm's "Spectre-BHB" whitepaper: the
// branch-history loop of k taken branches then `dsb nsh; isb`, k from ENTRY_BHB_LOOP_K, or
// `clearbhb; isb` with FEAT_CLRBHB). Clobbers x0..x3 (an SMCCC 1.1 call may change only those);
// the caller has saved them. Direct branches only: the `b.ne` of the loop is conditional on
// the count, never on data an attacker controls.
.macro entry_mitigation fw, bhb
.if \fw == FW_WA1
    movz    w0, #(SMCCC_WORKAROUND_1 & 0xffff)
    movk    w0, #(SMCCC_WORKAROUND_1 >> 16), lsl #16
    smc     #0
.elseif \fw == FW_WA3
    movz    w0, #(SMCCC_WORKAROUND_3 & 0xffff)
    movk    w0, #(SMCCC_WORKAROUND_3 >> 16), lsl #16
    smc     #0
.endif
.if \bhb == BHB_LOOP
    adrp    x0, ENTRY_BHB_LOOP_K
    ldr     x0, [x0, :lo12:ENTRY_BHB_LOOP_K]
1:  b       . + 4
    subs    x0, x0, #1
    b.ne    1b
    dsb     nsh
    isb
.elseif \bhb == BHB_CLRBHB
    hint    #22                     // clearbhb
    isb
.endif
.endm

// An entry of KCore's table from a lower EL (the host): the frame first, then the mitigation,
// then Rust. `.org` fails the build if the entry outgrows its 0x80 bytes.
.macro lower_entry kind, fw, bhb
    .balign 0x80
.Lentry\@:
    save_frame
    entry_mitigation \fw, \bhb
    mov     x1, #\kind
    b       lower_el_entry
    .org    .Lentry\@ + 0x80
.endm

// The host's synchronous entry: x0..x3 first (the mitigation clobbers them), the mitigation,
// then `host_sync_entry` sorts SMCCC calls from every other trap.
.macro host_sync_entry fw, bhb
    .balign 0x80
.Lentry\@:
    sub     sp, sp, #FRAME_SIZE
    stp     x0, x1, [sp, #16 * 0]
    stp     x2, x3, [sp, #16 * 1]
    entry_mitigation \fw, \bhb
    b       host_sync_entry
    .org    .Lentry\@ + 0x80
.endm

// An entry of the guest's table from a lower EL (the running guest). While a guest runs, SP_EL2
// points at its GuestGprs (`__guest_enter`), so x0..x3 go straight to their places there; then
// the mitigation, then the world switch's exit path (world_switch.S): a synchronous exit first
// sees whether KCore serves it in place (`__guest_exit_sync`), an IRQ too (`__guest_exit_irq`),
// every other one leaves with its kind in x1.
.macro guest_entry kind, fw, bhb
    .balign 0x80
.Lentry\@:
    stp     x0, x1, [sp, #16 * 0]
    stp     x2, x3, [sp, #16 * 1]
    entry_mitigation \fw, \bhb
.if \kind == KIND_SYNC
    b       __guest_exit_sync
.elseif \kind == KIND_IRQ
    b       __guest_exit_irq
.else
    mov     x1, #\kind
    b       __guest_exit
.endif
    .org    .Lentry\@ + 0x80
.endm

// The current-EL SError entry of the guest's table. An SError at EL2 is a KCore fault, except
// inside the guest exit's abort window (world_switch.S), where KCore unmasks a pending SError
// on purpose to take it: then it returns into the window with PSTATE.A set again (SPSR_EL2.A)
// and nothing else changed but ESR/FAR/HPFAR_EL2, which the window restores. x6 and x7 are
// preserved.
.macro guest_serror_entry
    .balign 0x80
.Lentry\@:
    stp     x6, x7, [sp, #-16]!
    mrs     x6, elr_el2
    adr     x7, __serror_window_start
    cmp     x6, x7
    b.lo    1f
    adr     x7, __serror_window_end
    cmp     x6, x7
    b.hi    1f
    mrs     x6, spsr_el2
    orr     x6, x6, #(1 << 8)
    msr     spsr_el2, x6
    ldp     x6, x7, [sp], #16
    eret
1:  ldp     x6, x7, [sp], #16
    b       el2_serror_fault
    .org    .Lentry\@ + 0x80
.endm

// One vector set: KCore's table (VBAR_EL2 while the host runs or KCore works) and, 0x800
// after it, the guest's (VBAR_EL2 while a guest runs; `__guest_enter` adds 0x800 to VBAR_EL2
// and `__guest_exit` takes it off again, so both stay in the set the core chose).
.macro vector_set fw, bhb
    .balign 0x800
    // KCore's table. Current EL with SP_EL0: KCore never runs on SP_EL0.
    vector_entry kcore_fault_handler, KIND_SYNC
    vector_entry kcore_fault_handler, KIND_IRQ
    vector_entry kcore_fault_handler, KIND_FIQ
    vector_entry kcore_fault_handler, KIND_SERROR
    // Current EL with SP_ELx: a fault inside KCore itself.
    vector_entry kcore_fault_handler, KIND_SYNC
    vector_entry kcore_fault_handler, KIND_IRQ
    vector_entry kcore_fault_handler, KIND_FIQ
    vector_entry kcore_fault_handler, KIND_SERROR
    // Lower EL, AArch64: the host.
    host_sync_entry \fw, \bhb
    lower_entry KIND_IRQ, \fw, \bhb
    lower_entry KIND_FIQ, \fw, \bhb
    lower_entry KIND_SERROR, \fw, \bhb
    // Lower EL, AArch32: not supported (HCR_EL2.RW=1); treated like AArch64 traps.
    lower_entry KIND_SYNC, \fw, \bhb
    lower_entry KIND_IRQ, \fw, \bhb
    lower_entry KIND_FIQ, \fw, \bhb
    lower_entry KIND_SERROR, \fw, \bhb

    // The guest's table. Faults at EL2 are still KCore bugs, but for the abort window.
    vector_entry kcore_fault_handler, KIND_SYNC
    vector_entry kcore_fault_handler, KIND_IRQ
    vector_entry kcore_fault_handler, KIND_FIQ
    vector_entry kcore_fault_handler, KIND_SERROR
    vector_entry kcore_fault_handler, KIND_SYNC
    vector_entry kcore_fault_handler, KIND_IRQ
    vector_entry kcore_fault_handler, KIND_FIQ
    guest_serror_entry
    // Every trap from EL1 or EL0 is a guest exit.
    guest_entry KIND_SYNC, \fw, \bhb
    guest_entry KIND_IRQ, \fw, \bhb
    guest_entry KIND_FIQ, \fw, \bhb
    guest_entry KIND_SERROR, \fw, \bhb
    guest_entry KIND_SYNC, \fw, \bhb
    guest_entry KIND_IRQ, \fw, \bhb
    guest_entry KIND_FIQ, \fw, \bhb
    guest_entry KIND_SERROR, \fw, \bhb
.endm

.section .text.vectors, "ax"
// The vector sets, 0x1000 bytes each, in the order of kcore::machine::aarch64::mitigation::
// VectorSet. `__kcore_vectors` (no mitigation) is what boot.S installs until the core has
// chosen; no lower EL runs before that.
.balign 0x1000
.global __entry_vector_sets
.global __kcore_vectors
__entry_vector_sets:
__kcore_vectors:
    vector_set FW_NONE, BHB_NONE
    vector_set FW_NONE, BHB_LOOP
    vector_set FW_NONE, BHB_CLRBHB
    vector_set FW_WA1, BHB_NONE
    vector_set FW_WA1, BHB_LOOP
    vector_set FW_WA1, BHB_CLRBHB
    vector_set FW_WA3, BHB_NONE
.global __entry_vector_sets_end
__entry_vector_sets_end:

// A synchronous trap from the host, x0..x3 saved, the mitigation done. An SMCCC call (`hvc #0`
// from AArch64: ESR_EL2 is exactly EC 0x16 with IL, imm16 0) saves only what a call uses and
// Rust does not preserve: x4..x18, x30, ELR and SPSR (kcore::machine::CallFrame: x0..x18, x30,
// elr, spsr). Its arguments and results live in x0..x17 (SMCCC), and `host_call_trap_handler`
// keeps x19..x29 in place (AAPCS64), so they never reach memory: they are the host's own on
// return. Everything else gets the full TrapFrame.
.equ CALL_X18, 8 * 18
.equ CALL_ELR, 8 * 20
host_sync_entry:
    mrs     x2, esr_el2
    mov     w1, #(0x5a00 << 16)
    cmp     w2, w1
    b.ne    1f
    store_x4_x17 sp
    mrs     x0, elr_el2
    mrs     x1, spsr_el2
    stp     x18, x30, [sp, #CALL_X18]
    stp     x0, x1, [sp, #CALL_ELR]
    mov     x0, sp
    bl      host_call_trap_handler
    ldp     x0, x1, [sp, #CALL_ELR]
    msr     elr_el2, x0
    msr     spsr_el2, x1
    ldp     x18, x30, [sp, #CALL_X18]
    ldp     x0, x1, [sp, #16 * 0]
    ldp     x2, x3, [sp, #16 * 1]
    load_x4_x17 sp
    add     sp, sp, #FRAME_SIZE
    eret
1:  store_x4_x29 sp
    mrs     x0, elr_el2
    mrs     x1, spsr_el2
    stp     x30, x0, [sp, #16 * 15]
    str     x1, [sp, #16 * 16]
    // The syndrome, read once here, goes to Rust with the frame.
    mov     x0, sp
    mov     x1, x2
    bl      host_sync_trap_handler
    b       restore_frame_and_eret

lower_el_entry:
    mov     x0, sp
    bl      lower_el_trap_handler
    b       restore_frame_and_eret

el2_serror_fault:
    save_frame
    mov     x0, sp
    mov     x1, #KIND_SERROR
    bl      kcore_fault_handler
    b       restore_frame_and_eret

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
