//! KServ's EL1 stage-1: an identity map, RAM Normal write-back and the rest Device, so that its
//! locks and atomics run on Normal memory (exclusives on Device memory hang on real Cortex-A72s).

use core::arch::asm;
use core::ptr::addr_of_mut;
use corevisor_boards::Board;

const ENTRIES: usize = 512;
/// The first 4 GiB use 2 MiB blocks (devices and RAM meet there on the Pi); above, 1 GiB blocks.
const FINE_GIB: usize = 4;

#[repr(C, align(4096))]
struct Tables([[u64; ENTRIES]; 1 + FINE_GIB]);

static mut TABLES: Tables = Tables([[0; ENTRIES]; 1 + FINE_GIB]);

const ATTR_DEVICE: u64 = 0;
const ATTR_NORMAL: u64 = 1;

/// The block descriptor for `pa`: Normal memory in the board's RAM window, else Device
/// (never executable).
pub fn block(board: &Board, pa: u64) -> u64 {
    const AF: u64 = 1 << 10;
    const INNER_SHAREABLE: u64 = 0b11 << 8;
    const PXN_UXN: u64 = 0b11 << 53;
    if board.in_ram_window(pa) {
        pa | AF | INNER_SHAREABLE | ATTR_NORMAL << 2 | 0b01
    } else {
        pa | AF | PXN_UXN | ATTR_DEVICE << 2 | 0b01
    }
}

/// Builds the table (boot core only, before any other core runs KServ code).
pub fn build(board: &Board) {
    let tables = addr_of_mut!(TABLES);
    for l1 in 0..ENTRIES {
        let base = (l1 as u64) << 30;
        let entry = if l1 < FINE_GIB {
            for l2 in 0..ENTRIES {
                let descriptor = block(board, base + ((l2 as u64) << 21));
                // SAFETY: only the boot core runs here, before the MMU (and any other core) uses
                // the tables.
                unsafe { (*tables).0[1 + l1][l2] = descriptor };
            }
            // SAFETY: taking the address of a static.
            (unsafe { addr_of_mut!((*tables).0[1 + l1]) }) as u64 | 0b11
        } else {
            block(board, base)
        };
        // SAFETY: as above.
        unsafe { (*tables).0[0][l1] = entry };
    }
}

/// Turns this core's EL1 MMU on with the tables from [`build`].
pub fn enable() {
    let root = addr_of_mut!(TABLES) as u64;
    let mair: u64 = 0x04 << (8 * ATTR_DEVICE) | 0xFF << (8 * ATTR_NORMAL);
    // T0SZ = 25 (39-bit VA), 4 KiB granule, inner shareable write-back walks, 40-bit IPA, no TTBR1
    // walks (EPD1).
    let tcr: u64 = 25 | 0b01 << 8 | 0b01 << 10 | 0b11 << 12 | 1 << 23 | 0b010 << 32;
    // SAFETY: the identity map covers KServ's code, data and stack with the attributes they had,
    // so execution continues at the same addresses once translation is on.
    unsafe {
        asm!(
            "msr mair_el1, {mair}",
            "msr tcr_el1, {tcr}",
            "msr ttbr0_el1, {root}",
            "dsb ish",
            "isb",
            "tlbi vmalle1",
            "dsb ish",
            "ic iallu",
            "dsb ish",
            "isb",
            "mrs {tmp}, sctlr_el1",
            "orr {tmp}, {tmp}, #1",        // M
            "orr {tmp}, {tmp}, #(1 << 2)", // C
            "orr {tmp}, {tmp}, #(1 << 12)", // I
            "msr sctlr_el1, {tmp}",
            "isb",
            mair = in(reg) mair, tcr = in(reg) tcr, root = in(reg) root, tmp = out(reg) _,
            options(nostack)
        );
    }
}
