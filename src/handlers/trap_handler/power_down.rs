//! Before the machine resets or powers off: every other core stops, and every page that is not
//! the host's is scrubbed, since the next boot hands all of RAM to the host.

use super::principal;
use super::state;
use crate::machine::{layout, Aarch64};
use crate::vm::Kcore;
use corevisor_boards::PhysRange;
use log::{info, warn};

/// How long a power-down waits for the other cores to let go of the vCPU contexts, in polls (a
/// count, not a clock: load on the machine cannot make it run out early). A core holding one is
/// either running a guest, whose stage-2 was just revoked so that its next access exits, or
/// about to take KCore's locks; either takes a few thousand instructions.
const CONTEXT_RELEASE_POLLS: u64 = 100_000_000;

/// Stops every other core and scrubs (`Kcore::scrub_for_power_down`). Keeps KCore's locks
/// for good: nothing of KCore runs after this but the power call.
pub fn power_down(core: usize, what: &str) {
    // Every other core parks at its next entry to KCore, a running guest at its next exit.
    principal::halt_all_cores();
    let kcore = state::kcore();
    // Every lock of KCore's state, in order, for good: no call runs on another core any more.
    let (vms, mem) = kcore.lock_all();
    // A guest still running elsewhere loses its memory now: its next access exits, and it parks.
    Kcore::revoke_vm_stage2s(&Aarch64, &vms);
    principal::holds_context(core, false);
    super::invariants::report();
    let released = (0..CONTEXT_RELEASE_POLLS).any(|_| {
        core::hint::spin_loop();
        principal::no_context_held()
    });
    if !released {
        warn!("a core still holds a vCPU context; scrubbing anyway");
    }
    let heap = layout::heap();
    let scrubbed = kcore.scrub_for_power_down(&Aarch64, &vms, &mem, PhysRange::new(heap.start, heap.end - heap.start));
    // KCore's heap is gone: `kcore` must not be touched again (the guards are never dropped).
    core::mem::forget((vms, mem));
    info!(
        "scrubbed {} VM pages, {} pages of VM page tables and KCore's heap ({} KiB) before {what}",
        scrubbed.vm_pages,
        scrubbed.table_pages,
        scrubbed.heap_bytes / 1024
    );
}
