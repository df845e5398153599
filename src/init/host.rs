//! Handing the boot core to the host: KServ's image, embedded in KCore by the build, is copied
//! to its load address in host memory and entered at EL1 with the DTB address in x0.

use crate::board::BOARD;
use crate::cpus::CoreTable;
use crate::machine::{cpu, layout, phys, regs, TrapFrame};
use crate::platform::Platform;
use corevisor_boards::{Gic, PhysRange};
use log::{error, info};

/// KServ's raw image (empty when the image was built without one).
static KSERV_IMAGE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kserv.bin"));

/// HCR_EL2 while the host runs: EL1 is AArch64 (RW), SMCs trap to KCore (TSC) so PSCI is
/// mediated, pointer authentication is not trapped (API, APK). Interrupts go straight to EL1.
const HCR_RW: u64 = 1 << 31;
const HCR_TSC: u64 = 1 << 19;
const HCR_APK: u64 = 1 << 40;
const HCR_API: u64 = 1 << 41;
pub const HCR_HOST: u64 = HCR_RW | HCR_TSC | HCR_APK | HCR_API;

/// Sets this core's EL2 controls for running the host.
pub fn configure_core(platform: &Platform) {
    regs::configure_host_traps(HCR_HOST, matches!(platform.gic, Gic::V3 { .. }));
}

/// Whether the host may run code at `pa`: RAM that is not KCore's.
pub fn host_may_run_at(pa: u64) -> bool {
    let kcore = layout::kcore();
    super::platform().is_ram(pa) && !(kcore.start..kcore.end).contains(&pa)
}

/// Loads KServ and enters it on this core. Never returns.
pub fn enter_kserv(platform: &Platform, cores: &CoreTable) -> ! {
    if KSERV_IMAGE.is_empty() {
        error!("this image embeds no KServ: build it with `cargo xtask build`");
        super::power::system_off(1);
    }
    let image = PhysRange::new(BOARD.kserv_base, KSERV_IMAGE.len() as u64);
    if let Err(problem) = check_kserv_placement(platform, image) {
        error!("cannot load KServ at {:#x}..{:#x}: {problem}", image.base, image.end());
        super::power::system_off(1);
    }
    phys::copy_to(image.base, KSERV_IMAGE);
    // KServ starts with its caches off: its image must be in memory, not only in KCore's cache.
    phys::clean_invalidate_dcache(image.base, image.size);
    phys::sync_icache();
    crate::handlers::trap_handler::install(host_may_run_at);
    configure_core(platform);
    cores.mark_host(cpu::index());
    let dtb = platform.dtb.map_or(0, |d| d.base);
    info!("entering KServ at {:#x} at EL1 ({} KiB, x0 = {dtb:#x})", image.base, image.size / 1024);
    cpu::enter_lower(&TrapFrame::el1_entry(image.base, dtb))
}

/// KServ must fit its board slot, lie in RAM, and overlap neither KCore nor the firmware's data.
fn check_kserv_placement(platform: &Platform, image: PhysRange) -> Result<(), &'static str> {
    let kcore = layout::kcore();
    let overlaps = |r: PhysRange| r.base < image.end() && image.base < r.end();
    if image.size > BOARD.kserv_size {
        return Err("the image is larger than the board's KServ slot");
    }
    if !platform.is_ram(image.base) || !platform.is_ram(image.end() - 1) {
        return Err("the slot is not in RAM");
    }
    if overlaps(PhysRange::new(kcore.start, kcore.end - kcore.start)) {
        return Err("the slot overlaps KCore");
    }
    if platform.dtb.is_some_and(overlaps) || platform.initrd.is_some_and(overlaps) {
        return Err("the slot overlaps the DTB or the initrd");
    }
    Ok(())
}
