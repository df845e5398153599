//! KServ's side of a Linux VM (issue 13): its device tree, written at run time into pages that
//! KCore takes as BOOT_DATA before the VM's first run, and the devices it sees (the PL011 every
//! VM has, and the GIC's distributor side behind [`gic_model::GicModel`]).

pub mod devices;
pub mod dt;
// Until the distributor models and INJECT_IRQ merge, nothing raises an interrupt or a device IRQ.
#[allow(dead_code)]
pub mod gic_model;
pub mod pl011;
