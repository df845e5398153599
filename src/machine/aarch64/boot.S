// KCore boot code: the first instructions run on every core, at EL2, MMU off.
// The primary core enters at _start (x0 = DTB physical address, or anything else when there is
// none). Secondary cores enter at _secondary_start (PSCI CPU_ON on virt, spin-table release on
// the Pi). Both give the core its own stack and vectors, then call Rust, which turns the MMU on
// before anything takes a lock.

.equ STACK_SHIFT, 16            // 64 KiB per core, see linker.ld
.equ MAX_CPUS, 8
.equ CURRENT_EL_EL2, (2 << 2)

.macro adr_l reg, sym
    adrp \reg, \sym
    add  \reg, \reg, :lo12:\sym
.endm

.section .text.boot, "ax"
.global _start
_start:
    mov     x19, x0                     // keep the DTB pointer
    mrs     x1, CurrentEL
    cmp     x1, #CURRENT_EL_EL2
    b.ne    boot_park                   // KCore must start at EL2
    mrs     x1, mpidr_el1
    and     x1, x1, #0xff
    cbnz    x1, boot_park               // only core 0 boots the machine

    // Zero BSS and the stacks (MMU off: plain aligned stores).
    adr_l   x1, __bss_start
    adr_l   x2, __stacks_end
1:  cmp     x1, x2
    b.hs    2f
    stp     xzr, xzr, [x1], #16
    b       1b
2:
    adr_l   x1, __stacks_start
    add     sp, x1, #(1 << STACK_SHIFT)
    adr_l   x1, __kcore_vectors
    msr     vbar_el2, x1
    isb
    mov     x0, x19
    bl      kcore_primary_main          // never returns
    b       boot_park

.global _secondary_start
_secondary_start:
    mrs     x1, CurrentEL
    cmp     x1, #CURRENT_EL_EL2
    b.ne    boot_park
    mrs     x19, mpidr_el1
    and     x19, x19, #0xff             // core index = Aff0
    cmp     x19, #MAX_CPUS
    b.hs    boot_park
    adr_l   x1, __stacks_start
    add     x2, x19, #1
    lsl     x2, x2, #STACK_SHIFT
    add     sp, x1, x2
    adr_l   x1, __kcore_vectors
    msr     vbar_el2, x1
    isb
    mov     x0, x19
    bl      kcore_secondary_main        // never returns
    b       boot_park

.global boot_park
boot_park:
    wfe
    b       boot_park
