//! The top of the stack (SeKVM layers 30-34): MemHandler, FaultHandler, TrapDispatcher and
//! TrapHandler. Every trap is decoded once at the edge (`decode`: the syndrome, the fault
//! registers and the caller's registers become one typed value); the dispatchers are pure
//! functions of that value, the saved registers and the state below them, so their specs and
//! refinement tests run on the host; `trap_handler` is the glue that the vectors call and that
//! performs the machine effects.

pub mod decode;
pub mod esr;
pub mod fault_handler;
pub mod inject;
pub mod psci;
pub mod smmu_calls;
pub mod trap_dispatcher;
#[cfg(target_os = "none")]
pub mod trap_handler;
pub mod vm_calls;
// TEMPORARY (issue 12): the VM layer's contract API until the VM-record branch lands.
