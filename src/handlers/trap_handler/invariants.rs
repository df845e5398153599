//! Debug builds (and `check-invariants` builds) check SeKVM's invariants after every host trap
//! and every share call; a violation is a KCore bug and halts.

use super::state::STATE;
use crate::machine::{layout, Aarch64};
use crate::vm::Kcore;

/// Whether this build checks invariants.
const ON: bool = cfg!(any(debug_assertions, feature = "check-invariants"));

/// Checks the invariants, taking the state lock.
pub fn check() {
    if ON {
        if let Some(kcore) = STATE.lock().as_ref() {
            check_of(kcore);
        }
    }
}

/// [`check`] for a caller that holds the state lock.
pub fn check_of(kcore: &Kcore) {
    if ON {
        if let Err(violation) = crate::memory::invariants::check(&Aarch64, &kcore.mem, &kcore.vm_tables()) {
            panic!("invariant broken after a trap: {violation:?}");
        }
        if let Err(violation) = crate::memory::invariants::check_canary(&Aarch64, layout::canary()) {
            panic!("invariant broken after a trap: KCore's canary changed: {violation:x?}");
        }
    }
}
