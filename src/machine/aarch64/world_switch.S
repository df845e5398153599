// The world switch (SeKVM CtxtSwitch, the machine half). `__guest_enter` saves KCore's
// callee-saved registers, stack pointer and in-place hook in the vCPU's GuestGprs, points
// VBAR_EL2 at the guest table of the core's vector set (vectors.S), points SP_EL2 (and
// TPIDR_EL2) at the GuestGprs and erets into the guest. A trap from the guest lands in that
// table, which stores the guest's x0..x3 in the GuestGprs, runs the entry mitigation and comes
// here.
//
// A synchronous exit of a class KCore may serve in place (HVC64, a trapped MSR/MRS/SYS) takes
// the fast path, `__guest_exit_sync`: only what a Rust call may
// clobber (x0..x18, x30) and ELR/SPSR go to the GuestGprs, and the hook (`world_switch.rs`, `fast_exit`) decides with the
// syndrome in hand. Served: those registers come back and the guest resumes with `eret`, its
// x19..x29 never having left the CPU (the Rust callee preserves them, AAPCS64), VBAR_EL2,
// KCore's callee-saved registers and the EL1 state untouched. Declined (the hook changed
// nothing): x19..x29 are saved too and the full exit below runs as for any other exit. Data
// aborts, the console's PL011 included, take the full exit; its loop (`vcpu::world_switch::
// run_vcpu`) serves the console's in place. (Served here with x19..x29 saved too, a console
// store measured 263 EL2 instructions against the full exit's 234: the hook decodes it twice.)
//
// The full exit, `__guest_exit`, saves every guest register, takes any SError the guest left
// pending, restores KCore's table and registers, and returns from `__guest_enter` with the
// trap kind.
//
// A guest IRQ exit takes the same pattern, `__guest_exit_irq`: the same partial save, and the IRQ
// hook (`world_switch.rs`, `fast_irq`) serves in place what the guest's own interrupt state
// explains (its virtual timer firing, the underflow maintenance interrupt), or declines having
// changed nothing and the full exit runs with KIND_IRQ.
//
// Layout: kcore::machine::GuestGprs: x0..x30 (0..248), elr (248), spsr (256), x19..x30 (264..360),
// sp (360), the hook's function (368) and data (376), the IRQ hook's function (384).

.equ GPRS_ELR, 248
.equ GPRS_CALLEE, 264
.equ GPRS_SP, 360
.equ GPRS_HOOK, 368
.equ GPRS_IRQ_HOOK, 384
// ESR_EL2.EC of the classes the fast path asks about.
.equ EC_HVC64, 0x16
.equ EC_SYS64, 0x18

// The fast exits' partial save: x4..x18, x30, ELR and SPSR into the GuestGprs at sp (x0..x3
// are there already), then x0 = gprs. Clobbers x3, x4.
.macro fast_exit_save
    mov     x0, sp
    store_x4_x17 x0
    str     x18, [x0, #8 * 18]
    str     x30, [x0, #8 * 30]
    mrs     x3, elr_el2
    mrs     x4, spsr_el2
    stp     x3, x4, [x0, #GPRS_ELR]
.endm

// hook(data, x1) on KCore's stack (x3 = KCore's sp, x4 = the hook's function, x0 = gprs); then
// x2 = gprs and w0 = served.
.macro fast_exit_call
    ldr     x0, [x0, #GPRS_HOOK + 8]
    mov     sp, x3
    blr     x4
    mrs     x2, tpidr_el2
.endm

// Served: the saved registers back (x2 = gprs), and into the guest.
.macro fast_exit_resume
    ldp     x0, x1, [x2, #GPRS_ELR]
    msr     elr_el2, x0
    msr     spsr_el2, x1
    mov     sp, x2
    load_x4_x17 sp
    ldr     x18, [sp, #8 * 18]
    ldr     x30, [sp, #8 * 30]
    ldp     x2, x3, [sp, #16 * 1]
    ldp     x0, x1, [sp, #16 * 0]
    eret
.endm

.section .text.world_switch, "ax"

// u64 __guest_enter(GuestGprs *gprs, hook function, hook data, IRQ hook function)
.global __guest_enter
__guest_enter:
    stp     x19, x20, [x0, #GPRS_CALLEE + 16 * 0]
    stp     x21, x22, [x0, #GPRS_CALLEE + 16 * 1]
    stp     x23, x24, [x0, #GPRS_CALLEE + 16 * 2]
    stp     x25, x26, [x0, #GPRS_CALLEE + 16 * 3]
    stp     x27, x28, [x0, #GPRS_CALLEE + 16 * 4]
    stp     x29, x30, [x0, #GPRS_CALLEE + 16 * 5]
    mov     x4, sp
    stp     x4, x1, [x0, #GPRS_SP]
    stp     x2, x3, [x0, #GPRS_HOOK + 8]
    msr     tpidr_el2, x0
    // KCore's table of this core's set is loaded; the guest's is 0x800 after it.
    mrs     x1, vbar_el2
    add     x1, x1, #0x800
    msr     vbar_el2, x1
    isb
    ldp     x1, x2, [x0, #GPRS_ELR]
    msr     elr_el2, x1
    msr     spsr_el2, x2
    // From here until the guest's next exit SP_EL2 is the GuestGprs (16-byte aligned): only
    // loads follow, and the guest table's entries store x0..x3 there.
    mov     sp, x0
    load_x2_x29 x0
    ldr     x30, [x0, #16 * 15]
    ldp     x0, x1, [x0, #16 * 0]
    eret

// An IRQ exit (x0..x3 saved, sp = gprs, the mitigation done): the IRQ hook serves it in place or
// declines. The SError window is skipped when served for the reason given above for the
// synchronous fast path (the guest never leaves its world; AMO takes a pending SError to the
// full exit at the `eret`). IRQs stay masked here (exception entry set PSTATE.I); the hook
// acknowledges no physical interrupt, so one it does not explain stays pending and brings the
// guest straight back out after the `eret`, to the full exit this time. The halt flag: a halted
// machine's core parks at its next full exit, as when the full exit served these in place.
.global __guest_exit_irq
__guest_exit_irq:
    fast_exit_save
    ldr     x3, [x0, #GPRS_SP]
    ldr     x4, [x0, #GPRS_IRQ_HOOK]
    fast_exit_call
    cbz     w0, 3f
    fast_exit_resume
3:  mov     x1, #KIND_IRQ

// A declined fast exit (x1 = kind, x2 = gprs, sp KCore's): the guest's x19..x29 are still live;
// save them and take the full exit.
guest_exit_declined:
    mov     x0, x2
    stp     x19, x20, [x0, #8 * 19]
    stp     x21, x22, [x0, #8 * 21]
    stp     x23, x24, [x0, #8 * 23]
    stp     x25, x26, [x0, #8 * 25]
    stp     x27, x28, [x0, #8 * 27]
    str     x29, [x0, #8 * 29]
    b       4f

// A synchronous exit (x0..x3 saved, sp = gprs, the mitigation done): the fast path for the
// classes it serves, the full exit for every other. Direct branches only until the hook's call.
// Aborts (EC 0x20..0x3f, ESR bit 31) leave at the first test.
__guest_exit_sync:
    mrs     x2, esr_el2
    tbnz    x2, #31, 9f
    ubfx    x3, x2, #26, #6
    cmp     x3, #EC_HVC64
    b.eq    1f
    cmp     x3, #EC_SYS64
    b.ne    9f
1:
    // Why skipping the exit's SError window is safe here: the guest does not leave its world.
    // KCore runs with PSTATE.A set (exception entry), so a physical SError the guest caused
    // stays pending meanwhile, and HCR_EL2.AMO (the guest's controls, still loaded) routes it to
    // EL2 whatever PSTATE.A the guest runs with: it is taken as soon as the `eret` below lands
    // in the guest, through the guest table's SError entry, which takes the full exit and its
    // window. Declined exits take the window too. The halt flag stops the core as before: the
    // hook declines when it is raised, and the full exit's Rust parks.
    fast_exit_save
    ldp     x3, x4, [x0, #GPRS_SP]
    mov     x1, x2
    fast_exit_call
    cbz     w0, 3f
    fast_exit_resume
3:  mov     x1, #KIND_SYNC
    b       guest_exit_declined
9:  mov     x1, #KIND_SYNC

// Entered from a guest entry (vectors.S) with the guest's x0..x3 in the GuestGprs at sp, and
// the kind in x1; the entry mitigation has run.

__guest_exit:
    mov     x0, sp
    store_x4_x29 x0
    mrs     x2, elr_el2
    mrs     x3, spsr_el2
    stp     x30, x2, [x0, #16 * 15]
    str     x3, [x0, #16 * 16]
    // KCore's stack again (the abort window's SError entry uses it).
    ldr     x2, [x0, #GPRS_SP]
    mov     sp, x2
4:
    // Finding 8 of issue 11: an asynchronous abort that the guest caused must not outlive its
    // world. Every guest register, ELR and SPSR are saved, x0 = gprs and x1 = kind; x2..x7 are
    // scratch. HCR_EL2.AMO is still the guest's (1), so a physical SError is taken to EL2, and
    // exception entry masked it (PSTATE.A = 1).
    //
    // With FEAT_RAS (ENTRY_SERROR_ESB = 1): ESB synchronises the guest's errors; with
    // PSTATE.A set, a pending SError is deferred into DISR_EL1 (Arm ARM, ESB and
    // AArch64.ESBOperation) instead of staying pending: consume it there.
    adrp    x2, ENTRY_SERROR_ESB
    ldrb    w2, [x2, :lo12:ENTRY_SERROR_ESB]
    cbz     w2, 1f
    hint    #16                         // esb
    mrs     x2, S3_0_C12_C1_1           // DISR_EL1
    tbz     x2, #31, 1f                 // DISR_EL1.A: an SError was deferred
    msr     S3_0_C12_C1_1, xzr
    orr     x1, x1, #KIND_SERROR_AT_EXIT
1:
    // Every CPU: complete the guest's loads and stores (dsb sy), so that an abort they raise is
    // pending by now, and synchronise so that ISR_EL1 is not read early (isb). At EL2,
    // ISR_EL1.A (bit 8) shows a pending physical SError.
    dsb     sy
    isb
    mrs     x2, isr_el1
    tbz     x2, #8, 2f
    // One is pending: take it here, in the abort window. ESR/FAR/HPFAR_EL2 still describe the
    // guest's exit and the SError overwrites them, so keep them in x3..x5. Unmasking A makes
    // the pending SError taken at the latest once the isb completes (the interrupt is
    // recognised at a context synchronisation event), so ELR_EL2 is the isb or the instruction
    // after it; the guest table's SError entry recognises exactly those two addresses.
    mrs     x3, esr_el2
    mrs     x4, far_el2
    mrs     x5, hpfar_el2
    msr     daifclr, #4
.global __serror_window_start
__serror_window_start:
    isb
.global __serror_window_end
__serror_window_end:
    msr     daifset, #4
    msr     esr_el2, x3
    msr     far_el2, x4
    msr     hpfar_el2, x5
    orr     x1, x1, #KIND_SERROR_AT_EXIT
2:
    // Back to KCore's table of the same set.
    mrs     x2, vbar_el2
    sub     x2, x2, #0x800
    msr     vbar_el2, x2
    isb
    ldp     x19, x20, [x0, #GPRS_CALLEE + 16 * 0]
    ldp     x21, x22, [x0, #GPRS_CALLEE + 16 * 1]
    ldp     x23, x24, [x0, #GPRS_CALLEE + 16 * 2]
    ldp     x25, x26, [x0, #GPRS_CALLEE + 16 * 3]
    ldp     x27, x28, [x0, #GPRS_CALLEE + 16 * 4]
    ldp     x29, x30, [x0, #GPRS_CALLEE + 16 * 5]
    mov     x0, x1
    ret

// void __save_el1(El1Regs *out) / __restore_el1(const El1Regs *in): order of El1Regs.
.global __save_el1
__save_el1:
    mrs     x1, sctlr_el1
    mrs     x2, cpacr_el1
    stp     x1, x2, [x0, #16 * 0]
    mrs     x1, ttbr0_el1
    mrs     x2, ttbr1_el1
    stp     x1, x2, [x0, #16 * 1]
    mrs     x1, tcr_el1
    mrs     x2, esr_el1
    stp     x1, x2, [x0, #16 * 2]
    mrs     x1, afsr0_el1
    mrs     x2, afsr1_el1
    stp     x1, x2, [x0, #16 * 3]
    mrs     x1, far_el1
    mrs     x2, mair_el1
    stp     x1, x2, [x0, #16 * 4]
    mrs     x1, vbar_el1
    mrs     x2, contextidr_el1
    stp     x1, x2, [x0, #16 * 5]
    mrs     x1, amair_el1
    mrs     x2, cntkctl_el1
    stp     x1, x2, [x0, #16 * 6]
    mrs     x1, par_el1
    mrs     x2, tpidr_el1
    stp     x1, x2, [x0, #16 * 7]
    mrs     x1, sp_el1
    mrs     x2, elr_el1
    stp     x1, x2, [x0, #16 * 8]
    mrs     x1, spsr_el1
    mrs     x2, sp_el0
    stp     x1, x2, [x0, #16 * 9]
    mrs     x1, tpidr_el0
    mrs     x2, tpidrro_el0
    stp     x1, x2, [x0, #16 * 10]
    mrs     x1, csselr_el1
    mrs     x2, mdscr_el1
    stp     x1, x2, [x0, #16 * 11]
    mrs     x1, cntv_ctl_el0
    mrs     x2, cntv_cval_el0
    stp     x1, x2, [x0, #16 * 12]
    ret

.global __restore_el1
__restore_el1:
    ldp     x1, x2, [x0, #16 * 0]
    msr     sctlr_el1, x1
    msr     cpacr_el1, x2
    ldp     x1, x2, [x0, #16 * 1]
    msr     ttbr0_el1, x1
    msr     ttbr1_el1, x2
    ldp     x1, x2, [x0, #16 * 2]
    msr     tcr_el1, x1
    msr     esr_el1, x2
    ldp     x1, x2, [x0, #16 * 3]
    msr     afsr0_el1, x1
    msr     afsr1_el1, x2
    ldp     x1, x2, [x0, #16 * 4]
    msr     far_el1, x1
    msr     mair_el1, x2
    ldp     x1, x2, [x0, #16 * 5]
    msr     vbar_el1, x1
    msr     contextidr_el1, x2
    ldp     x1, x2, [x0, #16 * 6]
    msr     amair_el1, x1
    msr     cntkctl_el1, x2
    ldp     x1, x2, [x0, #16 * 7]
    msr     par_el1, x1
    msr     tpidr_el1, x2
    ldp     x1, x2, [x0, #16 * 8]
    msr     sp_el1, x1
    msr     elr_el1, x2
    ldp     x1, x2, [x0, #16 * 9]
    msr     spsr_el1, x1
    msr     sp_el0, x2
    ldp     x1, x2, [x0, #16 * 10]
    msr     tpidr_el0, x1
    msr     tpidrro_el0, x2
    ldp     x1, x2, [x0, #16 * 11]
    msr     csselr_el1, x1
    msr     mdscr_el1, x2
    ldp     x1, x2, [x0, #16 * 12]
    msr     cntv_cval_el0, x2
    msr     cntv_ctl_el0, x1
    isb
    ret

// void __save_fp(FpRegs *out) / __restore_fp(const FpRegs *in). KCore itself never uses FP/SIMD
// (soft-float build), so these are the only instructions that touch the registers at EL2.
.arch_extension fp
.arch_extension simd
.global __save_fp
__save_fp:
    stp     q0, q1, [x0, #32 * 0]
    stp     q2, q3, [x0, #32 * 1]
    stp     q4, q5, [x0, #32 * 2]
    stp     q6, q7, [x0, #32 * 3]
    stp     q8, q9, [x0, #32 * 4]
    stp     q10, q11, [x0, #32 * 5]
    stp     q12, q13, [x0, #32 * 6]
    stp     q14, q15, [x0, #32 * 7]
    stp     q16, q17, [x0, #32 * 8]
    stp     q18, q19, [x0, #32 * 9]
    stp     q20, q21, [x0, #32 * 10]
    stp     q22, q23, [x0, #32 * 11]
    stp     q24, q25, [x0, #32 * 12]
    stp     q26, q27, [x0, #32 * 13]
    stp     q28, q29, [x0, #32 * 14]
    stp     q30, q31, [x0, #32 * 15]
    mrs     x1, fpsr
    mrs     x2, fpcr
    add     x0, x0, #512
    stp     x1, x2, [x0]
    ret

.global __restore_fp
__restore_fp:
    ldp     q0, q1, [x0, #32 * 0]
    ldp     q2, q3, [x0, #32 * 1]
    ldp     q4, q5, [x0, #32 * 2]
    ldp     q6, q7, [x0, #32 * 3]
    ldp     q8, q9, [x0, #32 * 4]
    ldp     q10, q11, [x0, #32 * 5]
    ldp     q12, q13, [x0, #32 * 6]
    ldp     q14, q15, [x0, #32 * 7]
    ldp     q16, q17, [x0, #32 * 8]
    ldp     q18, q19, [x0, #32 * 9]
    ldp     q20, q21, [x0, #32 * 10]
    ldp     q22, q23, [x0, #32 * 11]
    ldp     q24, q25, [x0, #32 * 12]
    ldp     q26, q27, [x0, #32 * 13]
    ldp     q28, q29, [x0, #32 * 14]
    ldp     q30, q31, [x0, #32 * 15]
    add     x0, x0, #512
    ldp     x1, x2, [x0]
    msr     fpsr, x1
    msr     fpcr, x2
    ret
