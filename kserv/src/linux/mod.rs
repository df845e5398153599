//! KServ's side of a Linux VM (issue 13): its device tree, written at run time into pages that
//! KCore takes as BOOT_DATA before the VM's first run, and its emulated GIC distributor side
//! (GICv3 with redistributors, GICv2), behind the [`gic_model::GicModel`] seam.

pub mod dt;
pub mod fdt;
pub mod gic_irqs;
pub mod gic_model;
pub mod gic_v2;
pub mod gic_v3;
