// void __sha256_blocks(u32 state[8], const u8 (*blocks)[64], usize count): SHA-256's compression
// function (FIPS 180-4, 6.2.2) over `count` (at least 1) blocks, with the ARMv8 SHA-256
// instructions. KCore is built soft-float: the FP/SIMD registers hold the host's (or a guest's)
// values, so the ones used here (v0-v7, v16, v17) are saved on the stack first and restored
// last, and CPTR_EL2.TFP is cleared meanwhile (it may still be the firmware's at boot).
// Nothing here touches FPSR or FPCR. Caller: machine::aarch64::sha256_instructions.
.section .text.sha256, "ax"
.balign 4
.arch_extension fp
.arch_extension simd
.arch_extension sha2
// Four rounds with the message words in \w (K from x4, which moves on): abcd in v0, efgh in v1.
.macro rounds4 w
    ld1     {v16.4s}, [x4], #16
    add     v16.4s, v16.4s, \w\().4s
    mov     v17.16b, v0.16b
    sha256h q0, q1, v16.4s
    sha256h2 q1, q17, v16.4s
.endm

// rounds4, and \w becomes the words 16 rounds on, from \w, \x, \y and \z (the next three).
.macro rounds4_schedule w, x, y, z
    ld1     {v16.4s}, [x4], #16
    add     v16.4s, v16.4s, \w\().4s
    sha256su0 \w\().4s, \x\().4s
    mov     v17.16b, v0.16b
    sha256h q0, q1, v16.4s
    sha256h2 q1, q17, v16.4s
    sha256su1 \w\().4s, \y\().4s, \z\().4s
.endm

.global __sha256_blocks
__sha256_blocks:
    mrs     x5, cptr_el2
    bic     x6, x5, #(1 << 10)          // TFP: FP/SIMD not trapped
    msr     cptr_el2, x6
    isb
    stp     q0, q1, [sp, #-160]!
    stp     q2, q3, [sp, #32]
    stp     q4, q5, [sp, #64]
    stp     q6, q7, [sp, #96]
    stp     q16, q17, [sp, #128]
    ld1     {v0.4s, v1.4s}, [x0]        // abcd, efgh
1:  ld1     {v4.16b, v5.16b, v6.16b, v7.16b}, [x1], #64
    rev32   v4.16b, v4.16b              // the message words are big-endian
    rev32   v5.16b, v5.16b
    rev32   v6.16b, v6.16b
    rev32   v7.16b, v7.16b
    mov     v2.16b, v0.16b
    mov     v3.16b, v1.16b
    adr     x4, 2f
    .rept 3                             // rounds 0-47, scheduling the words of 16-63
    rounds4_schedule v4, v5, v6, v7
    rounds4_schedule v5, v6, v7, v4
    rounds4_schedule v6, v7, v4, v5
    rounds4_schedule v7, v4, v5, v6
    .endr
    rounds4 v4                          // rounds 48-63
    rounds4 v5
    rounds4 v6
    rounds4 v7
    add     v0.4s, v0.4s, v2.4s
    add     v1.4s, v1.4s, v3.4s
    subs    x2, x2, #1
    b.ne    1b
    st1     {v0.4s, v1.4s}, [x0]
    ldp     q2, q3, [sp, #32]
    ldp     q4, q5, [sp, #64]
    ldp     q6, q7, [sp, #96]
    ldp     q16, q17, [sp, #128]
    ldp     q0, q1, [sp], #160
    msr     cptr_el2, x5
    isb
    ret
    .balign 16
2:  // the round constants K (FIPS 180-4, 4.2.2)
    .word   0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5
    .word   0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5
    .word   0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3
    .word   0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174
    .word   0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc
    .word   0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da
    .word   0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7
    .word   0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967
    .word   0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13
    .word   0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85
    .word   0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3
    .word   0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070
    .word   0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5
    .word   0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3
    .word   0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208
    .word   0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2
