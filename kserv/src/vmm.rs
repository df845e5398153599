//! KServ's VM manager: turns the boot bundle's entries into VMs through KCore's hypercalls,
//! schedules their vCPUs round-robin with VCPU_RUN, emulates their devices (a PL011 and the test
//! device), answers their PSCI calls, idles a vCPU on WFI until its timer fires (a WFE only
//! yields), and tears a VM down when it powers off or misbehaves.
//!
//! KServ is untrusted: it never sees a guest's registers or private memory. It gives each VM a
//! 16 MiB region of its own RAM, page by page as the guest faults: guest page `gpa` is host page
//! `region + (gpa - ram_base)`, so KServ keeps no page lists, and teardown returns the region.

use crate::arch::{exceptions, hvc};
use crate::dtb::GicInfo;
use crate::exit_meter::{Counts, ExitMeter};
use crate::kprintln;
use crate::linux::devices::LinuxDevices;
use crate::linux::{self, dt, pl011};
use crate::vm_plan::{region_page, Given, LineBuffer, BLOCK};
use core::sync::atomic::{AtomicBool, Ordering};
use corevisor_abi::bundle::{Bundle, VmEntry, MAX_IMAGES};
use corevisor_abi::{exit, guest_dev, host_call, psci, Status};

pub const MAX_VMS: usize = 8;
pub const MAX_VCPUS: usize = 4;
const PAGE: u64 = 4096;

/// What a vCPU is doing, as KServ schedules it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuRun {
    Off,
    Runnable,
    /// In WFI until the physical counter reaches this value.
    WaitingUntil(u64),
}

/// One VM, as KServ knows it.
pub struct Vm {
    pub vmid: u64,
    pub entry: VmEntry,
    /// The host RAM that backs the guest's RAM, page for page.
    pub region: u64,
    pub vcpus: [VcpuRun; MAX_VCPUS],
    /// The answer each vCPU's next VCPU_RUN carries.
    answers: [u64; MAX_VCPUS],
    /// A page (or, `true`, the 2 MiB block holding it) offered for a vCPU's stage-2 fault: KCore
    /// takes it on that vCPU's next run.
    offered: [Option<(u64, bool)>; MAX_VCPUS],
    /// Stage-2 faults KServ answered with a page, and with a 2 MiB block.
    pub faults: u64,
    pub block_faults: u64,
    /// One line buffer per vCPU: the UART is shared, but lines from different vCPUs are printed
    /// whole (a Linux VM uses the first for all).
    console: [LineBuffer; MAX_VCPUS],
    pub given: Given,
    pub alive: bool,
    /// VCPU_RUN calls so far.
    pub runs: u64,
    /// Why the VM stopped, if it did not power itself off.
    pub stopped_because: Option<&'static str>,
    /// A Linux VM's devices (its GIC's distributor side); `None` for a test guest.
    pub linux: Option<LinuxDevices>,
}

impl Vm {
    pub fn name(&self) -> &str {
        self.entry.name()
    }

    /// Whether an interrupt waits to be injected into `vcpu` (it runs even if it idles in WFI).
    fn interrupt_waits(&self, vcpu: usize) -> bool {
        self.linux.as_ref().is_some_and(|devices| devices.sink.any_for(vcpu))
    }

    /// Whether `vcpu` may run now: not while it is off, nor while it idles in WFI until the
    /// counter reaches `t` with no interrupt waiting for it (then `earliest` takes `t`).
    pub fn ready(&self, vcpu: usize, earliest: &mut u64) -> bool {
        match self.vcpus[vcpu] {
            VcpuRun::Off => false,
            VcpuRun::WaitingUntil(t) if hvc::counter() < t && !self.interrupt_waits(vcpu) => {
                *earliest = (*earliest).min(t);
                false
            }
            _ => true,
        }
    }

    /// The host page KServ offered for `vcpu`'s last stage-2 fault, which KCore takes on its next
    /// run (the faulting page itself, when a whole block is offered).
    pub fn offered_page(&self, vcpu: usize) -> Option<u64> {
        self.offered[vcpu].map(|(page, _)| self.region + page * PAGE)
    }

    /// The host page behind guest page `gpa`, if `gpa` is guest RAM.
    pub fn host_page(&self, gpa: u64) -> Option<u64> {
        region_page(self.region, self.entry.ram_base, self.entry.ram_size, gpa)
    }
}

/// What a scenario adds to the manager: the test device's answers, what to do with a guest's
/// notifications, and what to try between runs.
pub trait Hooks {
    /// The value the guest reads from the test device's ANSWER register.
    fn answer(&mut self, _vm: &Vm) -> u64 {
        0
    }
    /// The guest wrote `value` to NOTIFY.
    fn notify(&mut self, _vm: &Vm, _value: u64) {}
    /// Runs after each exit of a VM that is still alive.
    fn after_exit(&mut self, _vm: &Vm) {}
    /// The guest printed `line` on its UART.
    fn console_line(&mut self, _vm: &Vm, _line: &str) {}
    /// A physical interrupt took the CPU from the guest: the host's device needs attention.
    fn interrupt(&mut self, _vm: &Vm) {}
    /// vCPU `vcpu` executed WFE; it stays runnable (the manager yields to the others).
    fn wfe(&mut self, _vm: &Vm, _vcpu: usize) {}
    /// vCPU `vcpu` wrote `value` to ICC_SGI1R_EL1 (GICv3). Nothing delivers SGIs yet: logged.
    fn sgi(&mut self, vm: &Vm, vcpu: usize, value: u64) {
        kprintln!("vm {}: vcpu {vcpu} SGI exit, ICC_SGI1R_EL1 = {value:#x} (not delivered)", vm.name());
    }
}

/// No hooks: VMs just run.
pub struct Plain;
impl Hooks for Plain {}

/// One image as KServ hands it to KCore: the image followed by its signature, its length
/// without the signature, and where it goes in the guest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Load<'a> {
    pub signed: &'a [u8],
    pub size: u64,
    pub gpa: u64,
}

/// A VM's images in index order (image 0 is the entry), as KServ lays them out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout<'a> {
    pub loads: [Load<'a>; MAX_IMAGES],
    pub count: usize,
}

impl<'a> Layout<'a> {
    /// The layout the bundle's entry was signed for.
    pub fn of(bundle: &Bundle<'a>, entry: &VmEntry) -> Layout<'a> {
        let mut layout = Layout { loads: [Load::default(); MAX_IMAGES], count: entry.images().len() };
        for (load, image) in layout.loads.iter_mut().zip(entry.images()) {
            *load = Load { signed: bundle.signed_image(image), size: image.size, gpa: image.gpa };
        }
        layout
    }

    pub fn loads(&self) -> &[Load<'a>] {
        &self.loads[..self.count]
    }
}

/// A deliberate change to an image before it is handed to KCore (for `vm-bad-image`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tamper {
    None,
    /// Flip a byte of image 0 at this offset.
    ImageByte(u64),
    /// Flip a byte of image 0's signature at this offset (0..64).
    SignatureByte(u64),
}

/// A hypercall failed: which step, and what KCore answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallFailed {
    pub step: &'static str,
    pub status: u64,
}

impl CallFailed {
    pub fn status(&self) -> Option<Status> {
        Status::from_reg(self.status)
    }
}

fn call(step: &'static str, function: u32, args: [u64; 4]) -> Result<u64, CallFailed> {
    let r = hvc::hyp_call(function, [args[0], args[1], args[2], args[3], 0, 0]);
    if r.status == Status::Success.as_reg() {
        Ok(r.values[0])
    } else {
        Err(CallFailed { step, status: r.status })
    }
}

/// The VMs' records: a few KiB each, so they live in a static rather than on KServ's stack.
static mut VM_SLOTS: [Option<Vm>; MAX_VMS] = [const { None }; MAX_VMS];
/// Set once [`VM_SLOTS`] is handed out: one VM manager per boot.
static SLOTS_TAKEN: AtomicBool = AtomicBool::new(false);

pub struct Manager {
    /// Host RAM regions for VMs: `(base, size)`, 2 MiB-aligned.
    regions: [Option<(u64, u64)>; MAX_VMS],
    pub vms: &'static mut [Option<Vm>; MAX_VMS],
    /// VMs torn down after powering themselves off, and after being stopped.
    pub powered_off: u32,
    pub stopped: u32,
    /// Teardowns that failed (pages not returned, or not scrubbed).
    pub teardown_failed: u32,
    /// `cargo xtask bench`: a counter of EL2 instructions; with it, [`Manager::create`] records
    /// what its VERIFY_VM_IMAGE calls cost in [`Manager::verify_cost`].
    pub verify_counter: Option<fn() -> u64>,
    pub verify_cost: VerifyCost,
    /// `cargo xtask bench`'s Linux run: the PMU read around every VCPU_RUN.
    pub meter: Option<ExitMeter>,
    /// The host's physical timer interrupt is enabled at the GIC, so waiting for the vCPUs'
    /// timers can be a WFI instead of a spin.
    pub timer_wakes: bool,
}

/// The EL2 instructions of the last created VM's VERIFY_VM_IMAGE calls (from
/// [`Manager::verify_counter`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct VerifyCost {
    /// All the calls together.
    pub total: u64,
    /// The first call: a whole chunk of pages taken and hashed, when the images fill one.
    pub first_call: u64,
    pub calls: u64,
}

impl Manager {
    /// `regions` are the host RAM regions (`(base, size)`, 2 MiB-aligned) KServ may give to VMs.
    pub fn new(regions: [Option<(u64, u64)>; MAX_VMS]) -> Manager {
        assert!(!SLOTS_TAKEN.swap(true, Ordering::SeqCst), "KServ runs one VM manager per boot");
        let slots = &raw mut VM_SLOTS;
        // SAFETY: the flag above hands the static out once, and the VM manager runs on one core.
        let vms = unsafe { &mut *slots };
        Manager {
            regions,
            vms,
            powered_off: 0,
            stopped: 0,
            teardown_failed: 0,
            verify_counter: None,
            verify_cost: VerifyCost::default(),
            meter: None,
            timer_wakes: false,
        }
    }

    /// Fails if any teardown failed.
    pub fn result(&self) -> Result<(), &'static str> {
        match self.teardown_failed {
            0 => Ok(()),
            _ => Err("a VM's teardown failed"),
        }
    }

    /// Creates a VM from a bundle entry with its images laid out as `layout` says (normally
    /// [`Layout::of`] the entry): copies each signed image into a free region where the guest
    /// page it goes to is backed, registers the VM and its vCPUs, lists the images' pages and has
    /// KCore verify them. Returns the VM's slot. A VM that KCore created but refused stays in its
    /// slot, not alive, so that [`Manager::teardown`] can take its pages back.
    pub fn create(
        &mut self,
        entry: &VmEntry,
        layout: &Layout,
        tamper: Tamper,
    ) -> Result<usize, (Option<usize>, CallFailed)> {
        let no_room = CallFailed { step: "room for the VM", status: Status::NotPresent.as_reg() };
        let slot = self.vms.iter().position(Option::is_none).ok_or((None, no_room))?;
        // A region is free while no VM record holds it.
        let in_use = |region: u64| self.vms.iter().flatten().any(|vm| vm.region == region);
        let region = self.regions.iter().flatten().find(|&&(r, size)| !in_use(r) && size >= entry.ram_size);
        let region = region.map(|&(r, _)| r).ok_or((None, no_room))?;
        let backed = |load: &Load| {
            region_page(region, entry.ram_base, entry.ram_size, load.gpa).is_some()
                && region_page(
                    region,
                    entry.ram_base,
                    entry.ram_size,
                    load.gpa + (load.signed.len() as u64).saturating_sub(1),
                )
                .is_some()
        };
        if entry.ram_size > crate::vm_plan::MAX_GUEST_RAM
            || entry.vcpus as usize > MAX_VCPUS
            || layout.loads().is_empty()
            || !layout.loads().iter().all(backed)
        {
            return Err((None, CallFailed { step: "bundle entry", status: Status::InvalidParameters.as_reg() }));
        }
        for load in layout.loads() {
            hvc::copy_phys(region + (load.gpa - entry.ram_base), load.signed.as_ptr() as u64, load.signed.len());
        }
        let entry_image = region + (layout.loads[0].gpa - entry.ram_base);
        match tamper {
            Tamper::None => {}
            Tamper::ImageByte(at) => hvc::flip_byte(entry_image + at),
            Tamper::SignatureByte(at) => hvc::flip_byte(entry_image + layout.loads[0].size + at),
        }
        let vmid = call("REGISTER_VM", host_call::REGISTER_VM, [entry.ram_base, entry.ram_size, 0, 0])
            .map_err(|e| (None, e))?;
        // A VM record is some 35 KiB (its page bitmap): built in its slot, never on the stack
        // (64 KiB per core) beside a copy of it.
        let vm = self.vms[slot].insert(Vm {
            vmid,
            entry: *entry,
            region,
            vcpus: [VcpuRun::Off; MAX_VCPUS],
            answers: [0; MAX_VCPUS],
            offered: [None; MAX_VCPUS],
            faults: 0,
            block_faults: 0,
            console: [const { LineBuffer::new() }; MAX_VCPUS],
            given: Given::new(),
            alive: false,
            runs: 0,
            stopped_because: None,
            linux: None,
        });
        vm.vcpus[0] = VcpuRun::Runnable;
        let result = boot(vm, layout, self.verify_counter).map(|cost| self.verify_cost = cost);
        vm.alive = result.is_ok();
        if result.is_err() {
            vm.stopped_because = Some("not created");
        }
        result.map(|()| slot).map_err(|e| (Some(slot), e))
    }

    /// Creates Linux VM `entry` of `bundle` ([`Manager::create`] with the images where the
    /// bundle's signatures place them), then gives it its device tree as BOOT_DATA, maps the
    /// GICv2 virtual CPU interface at its GICC address, and attaches its devices. vCPU 0 starts
    /// at the kernel with x0 = the device tree; the others wait for the guest's PSCI CPU_ON.
    pub fn create_linux(
        &mut self,
        bundle: &Bundle,
        entry: &VmEntry,
        gic: &GicInfo,
    ) -> Result<usize, (Option<usize>, CallFailed)> {
        let slot = self.create(entry, &Layout::of(bundle, entry), Tamper::None)?;
        let Some(vm) = self.vms[slot].as_mut() else { return Err((None, LINUX_REFUSED)) };
        match linux_boot_data(vm, bundle, gic) {
            Ok(()) => Ok(slot),
            Err(e) => {
                vm.alive = false;
                vm.stopped_because = Some("not created");
                Err((Some(slot), e))
            }
        }
    }

    /// Runs every live VM until none is left: round-robin over runnable vCPUs, idling when all
    /// wait on their timers.
    pub fn run_all(&mut self, hooks: &mut dyn Hooks) {
        loop {
            let mut ran = false;
            let mut earliest = u64::MAX;
            for slot in 0..MAX_VMS {
                for vcpu in 0..MAX_VCPUS {
                    let Some(vm) = self.vms[slot].as_mut().filter(|vm| vm.alive) else { break };
                    if !vm.ready(vcpu, &mut earliest) {
                        continue;
                    }
                    ran = true;
                    run_once(vm, vcpu, hooks, self.meter.as_mut());
                    if vm.alive {
                        hooks.after_exit(vm);
                    }
                    if !vm.alive {
                        self.retire(slot);
                        break;
                    }
                }
            }
            if !ran {
                if earliest == u64::MAX {
                    return;
                }
                if self.timer_wakes {
                    let before = self.meter.as_ref().map(|_| pmu_counts());
                    crate::arch::gic::idle_until(earliest);
                    if let (Some(meter), Some(before)) = (self.meter.as_mut(), before) {
                        meter.idle(before, pmu_counts());
                    }
                }
                while hvc::counter() < earliest {
                    core::hint::spin_loop();
                }
            }
        }
    }

    /// Tears down the VM in `slot`, which stopped or powered off, saying why it stopped; a
    /// failed teardown is counted in [`Manager::teardown_failed`].
    pub fn retire(&mut self, slot: usize) {
        if let Some(why) = self.vms[slot].as_ref().and_then(|vm| vm.stopped_because.map(|why| (vm.name(), why))) {
            kprintln!("vm {}: stopped: {}", why.0, why.1);
        }
        if self.teardown(slot).is_err() {
            self.teardown_failed += 1;
        }
    }

    /// Takes a VM apart: powers it off, has KCore scrub and return every page of its region,
    /// destroys it, and checks that each page it had reads back as zeros. Returns the pages
    /// KCore returned, or why teardown failed.
    pub fn teardown(&mut self, slot: usize) -> Result<u64, &'static str> {
        // A VM record is some 35 KiB (its page bitmap): looked at in its slot, never moved onto
        // the stack (64 KiB per core).
        let Some(vm) = self.vms[slot].as_ref() else { return Err("no such VM") };
        match vm.stopped_because {
            Some(_) => self.stopped += 1,
            None => self.powered_off += 1,
        }
        let result = take_apart(vm);
        self.vms[slot] = None;
        result
    }

    /// Forgets the VM in `slot`, which a DESTROY_VM of the host's own already took apart,
    /// returning `returned` pages: checks them as [`Manager::teardown`] does.
    pub fn forget_destroyed(&mut self, slot: usize, returned: u64) -> Result<u64, &'static str> {
        let vm = self.vms[slot].as_ref().ok_or("no such VM")?;
        self.powered_off += 1;
        let checked = check_returned(vm, returned);
        self.vms[slot] = None;
        if checked.is_err() {
            self.teardown_failed += 1;
        }
        checked
    }
}

/// Powers `vm` off, has KCore scrub and return every page of its region, destroys it, and checks
/// that each page it had reads back as zeros.
fn take_apart(vm: &Vm) -> Result<u64, &'static str> {
    // A VM that never verified, or already off, cannot be powered off: that is fine.
    let _ = call("VM_POWER_OFF", host_call::VM_POWER_OFF, [vm.vmid, 0, 0, 0]);
    let cleared = call("CLEAR_VM_S2_RANGE", host_call::CLEAR_VM_S2_RANGE, [vm.vmid, vm.region, vm.entry.ram_size, 0]);
    let destroyed = call("DESTROY_VM", host_call::DESTROY_VM, [vm.vmid, 0, 0, 0]);
    let (Ok(cleared), Ok(left)) = (cleared, destroyed) else {
        kprintln!("vm {}: teardown refused ({cleared:?}, {destroyed:?})", vm.name());
        return Err("KCore refused the teardown");
    };
    check_returned(vm, cleared + left)
}

/// After a VM's teardown, which returned `returned` pages: every page it was given is back, and
/// reads as zeros. Prints the teardown line.
fn check_returned(vm: &Vm, returned: u64) -> Result<u64, &'static str> {
    if let Some(devices) = &vm.linux {
        let (raised, unknown) = (devices.sink.raised, devices.gic.unknown_accesses());
        kprintln!(
            "vm {}: its GIC model raised {raised} interrupts; {unknown} accesses to registers it does not emulate",
            vm.name()
        );
    }
    let dirty = vm.given.pages().filter(|&i| !page_is_zero(vm.region + i * PAGE)).count();
    let scrubbed = if dirty == 0 { "all scrubbed" } else { "NOT SCRUBBED" };
    kprintln!("vm {}: torn down, {returned} pages back ({} given), {scrubbed}", vm.name(), vm.given.count());
    if dirty != 0 || returned != vm.given.count() {
        return Err("a VM's pages did not come back scrubbed");
    }
    Ok(returned)
}

const LINUX_REFUSED: CallFailed = CallFailed { step: "Linux VM entry", status: Status::InvalidParameters.as_reg() };

/// A verified Linux VM's device tree, written into the pages of its region behind the guest
/// address `bundle::linux_layout` gives it and handed to KCore page by page with BOOT_DATA; on
/// GICv2 the board's GICV frame mapped at the guest's GICC; then its devices.
fn linux_boot_data(vm: &mut Vm, bundle: &Bundle, gic: &GicInfo) -> Result<(), CallFailed> {
    let entry = vm.entry;
    let (dt_gpa, spec) = linux::boot_plan(bundle, &entry, gic.v3).ok_or(LINUX_REFUSED)?;
    let blob = dt::write(&spec).map_err(|e| {
        kprintln!("vm {}: no device tree: {e:?}", vm.name());
        LINUX_REFUSED
    })?;
    let first = (dt_gpa - entry.ram_base) / PAGE;
    for (i, chunk) in blob.chunks(PAGE as usize).enumerate() {
        let mut page = [0u8; PAGE as usize];
        page[..chunk.len()].copy_from_slice(chunk);
        let index = first + i as u64;
        hvc::copy_phys(vm.region + index * PAGE, page.as_ptr() as u64, page.len());
        let gpa = entry.ram_base + index * PAGE;
        call("BOOT_DATA", host_call::BOOT_DATA, [vm.vmid, gpa, (vm.region >> 12) + index, 0])?;
        vm.given.set(index);
    }
    // KCore decides whether a VM may have the GICV frame (it is KCore's while the vGIC is not
    // there): refused, the guest's GICC accesses exit to KServ and read as zero.
    if let Some(gicv) = gic.gicv.filter(|_| !gic.v3) {
        let mapped =
            call("PHYS_ADDR_IOREMAP", host_call::PHYS_ADDR_IOREMAP, [vm.vmid, guest_dev::GICC, gicv, GICC_SIZE]);
        if let Err(e) = mapped {
            kprintln!("vm {}: GICV not mapped at the guest's GICC ({:?})", vm.name(), e.status());
        }
    }
    // KCore serves the PL011's transmit side (VM_CONSOLE): the guest's console output comes in
    // batches with its exits, not as two MMIO exits a character.
    call("VM_CONSOLE", host_call::VM_CONSOLE, [vm.vmid, guest_dev::UART, 0, 0])?;
    vm.linux = Some(LinuxDevices::new(gic.v3, entry.vcpus).ok_or(LINUX_REFUSED)?);
    kprintln!("vm {}: device tree ({} bytes) at {:#x} given as boot data", vm.name(), blob.len(), dt_gpa);
    Ok(())
}

/// The GICv2 CPU interface's size: its registers span two 4 KiB pages (GICC_DIR is at 0x1000).
const GICC_SIZE: u64 = 0x2000;

/// REGISTER_VCPU, TIMER_SET_CNTVOFF, then SET_BOOT_INFO and REMAP_VM_IMAGE for each page of
/// each image, then VERIFY_VM_IMAGE until KCore says no page is left to check.
fn boot(vm: &mut Vm, layout: &Layout, counter: Option<fn() -> u64>) -> Result<VerifyCost, CallFailed> {
    for vcpu in 0..vm.entry.vcpus as u64 {
        call("REGISTER_VCPU", host_call::REGISTER_VCPU, [vm.vmid, vcpu, 0, 0])?;
    }
    // The guest's virtual counter starts from zero now.
    call("TIMER_SET_CNTVOFF", host_call::TIMER_SET_CNTVOFF, [vm.vmid, hvc::counter(), 0, 0])?;
    for load in layout.loads() {
        let index = call("SET_BOOT_INFO", host_call::SET_BOOT_INFO, [vm.vmid, load.gpa, load.size, 0])?;
        let first = (load.gpa - vm.entry.ram_base) / PAGE;
        for page in first..first + (load.signed.len() as u64).div_ceil(PAGE) {
            call("REMAP_VM_IMAGE", host_call::REMAP_VM_IMAGE, [vm.vmid, index, (vm.region >> 12) + page, 0])?;
            vm.given.set(page);
        }
    }
    // Each call checks a bounded number of pages and answers how many are left.
    let count = counter.unwrap_or(|| 0);
    let mut cost = VerifyCost::default();
    loop {
        let before = count();
        let left = call("VERIFY_VM_IMAGE", host_call::VERIFY_VM_IMAGE, [vm.vmid, 0, 0, 0])?;
        let spent = count() - before;
        if cost.calls == 0 {
            cost.first_call = spent;
        }
        (cost.total, cost.calls) = (cost.total + spent, cost.calls + 1);
        if left == 0 {
            return Ok(cost);
        }
    }
}

fn page_is_zero(pa: u64) -> bool {
    (0..PAGE).step_by(8).all(|offset| crate::arch::cpu::read_phys_u64(pa + offset) == 0)
}

/// One VCPU_RUN of `vcpu`, and the handling of its exit.
fn run_once(vm: &mut Vm, vcpu: usize, hooks: &mut dyn Hooks, mut meter: Option<&mut ExitMeter>) {
    let answer = begin_run(vm, vcpu, true);
    if let Some(meter) = meter.as_deref_mut() {
        meter.before_run(pmu_counts());
    }
    let record = hvc::vcpu_run(vm.vmid, vcpu as u64, answer);
    if let Some(meter) = meter {
        meter.after_run(pmu_counts(), record[1], record[2]);
    }
    end_run(vm, vcpu, record, hooks);
}

/// What comes before `vcpu`'s VCPU_RUN, on the core that makes it: interrupts waiting for it
/// handed to KCore, a Linux vCPU's time slice armed if it `shares_core` with its siblings.
/// Returns the answer the run carries.
pub fn begin_run(vm: &mut Vm, vcpu: usize, shares_core: bool) -> u64 {
    inject_waiting(vm, vcpu);
    let answer = core::mem::take(&mut vm.answers[vcpu]);
    vm.vcpus[vcpu] = VcpuRun::Runnable;
    // A Linux vCPU that shares a core runs for a time slice at most (the host's physical timer
    // ends its run), so one that spins waiting for a sibling cannot starve it. One with a core
    // of its own runs until it exits, or another core kicks it (`smp`).
    if vm.linux.is_some() && shares_core {
        crate::arch::gic::arm_physical_timer(hvc::counter_frequency() / SLICES_PER_SECOND);
    }
    answer
}

/// What comes after `vcpu`'s VCPU_RUN, on the core that made it: `record` is KCore's answer
/// (x0..x17); the console output that came with it is printed, then the exit is handled.
pub fn end_run(vm: &mut Vm, vcpu: usize, record: [u64; 18], hooks: &mut dyn Hooks) {
    let (exit_record, console) = record.split_at(6);
    let [status, reason, a, b, c, d] = exit_record.try_into().unwrap_or([0; 6]);
    if vm.linux.is_some() {
        crate::arch::gic::disarm_physical_timer();
    }
    vm.runs += 1;
    let offered = vm.offered[vcpu].take();
    if status != Status::Success.as_reg() && matches!(offered, Some((_, true))) {
        // KCore refused the block (all or nothing): offer the faulting page alone instead.
        if let Some((page, _)) = offered {
            vm.offered[vcpu] = Some((page, false));
            vm.answers[vcpu] = (vm.region >> 12) + page;
        }
        return;
    }
    if status != Status::Success.as_reg() {
        kprintln!("vm {}: VCPU_RUN of vcpu {vcpu} refused ({:?})", vm.name(), Status::from_reg(status));
        stop(vm, "VCPU_RUN refused");
        return;
    }
    // The guest wrote these bytes before the exit: they come out first.
    if let Ok(console) = console.try_into() {
        for byte in pl011::console_bytes(console) {
            uart_write(vm, vcpu, 0, u64::from(byte), hooks);
        }
    }
    // The run started, so KCore took the page (or block) offered for the last fault.
    match offered {
        Some((page, true)) => vm.given.set_block(page),
        Some((page, false)) => vm.given.set(page),
        None => {}
    }
    match reason {
        exit::MMIO => mmio(vm, vcpu, a, b, c, hooks),
        exit::PAGE_FAULT => match vm.host_page(a) {
            Some(pa) => {
                let page = (pa - vm.region) / PAGE;
                // The whole 2 MiB block around the fault, if none of it was given and all of it
                // is the guest's RAM (the region is 2 MiB-aligned, so the host run is too).
                let block = a & !(BLOCK - 1);
                let in_ram = block >= vm.entry.ram_base && block + BLOCK <= vm.entry.ram_base + vm.entry.ram_size;
                if in_ram && vm.given.block_free(page) {
                    vm.block_faults += 1;
                    vm.offered[vcpu] = Some((page, true));
                    vm.answers[vcpu] = (pa & !(BLOCK - 1)) >> 12 | exit::PAGE_ANSWER_BLOCK;
                } else {
                    vm.faults += 1;
                    vm.offered[vcpu] = Some((page, false));
                    vm.answers[vcpu] = pa >> 12;
                }
            }
            None => stop(vm, "page fault outside its RAM"),
        },
        exit::WFI => {
            if a != u64::MAX && a > hvc::counter() {
                vm.vcpus[vcpu] = VcpuRun::WaitingUntil(a);
            }
        }
        // A WFE waits for an event from another vCPU (a lock's release), not for the timer:
        // the vCPU stays runnable, and the round robin runs the others before it again.
        exit::WFE => hooks.wfe(vm, vcpu),
        exit::SGI => match vm.linux.as_mut() {
            Some(devices) => devices.sgi1r(vcpu, a),
            None => hooks.sgi(vm, vcpu, a),
        },
        exit::HVC => guest_psci(vm, vcpu, [a, b, c, d]),
        exit::IRQ => hooks.interrupt(vm),
        // The bytes were printed above.
        exit::CONSOLE => {}
        exit::BAD_ACCESS => {
            kprintln!("vm {}: access KCore could not decode at {a:#x} (ESR {b:#x})", vm.name());
            stop(vm, "undecodable access");
        }
        other => {
            kprintln!("vm {}: unknown exit reason {other}", vm.name());
            stop(vm, "unknown exit");
        }
    }
}

/// The bench's three PMU counters (see [`crate::arch::pmu`]).
pub fn pmu_counts() -> Counts {
    use crate::arch::pmu;
    Counts { el2: pmu::read_counter(), el1_el2: pmu::read_all_el_counter(), every_el: pmu::read_every_el_counter() }
}

/// A Linux vCPU's time slice: 100 µs. A vCPU that spins on its sibling (a lock the sibling holds,
/// `stop_machine`, an IPI's answer; QEMU never traps WFE) burns the rest of its slice, since both
/// share this core: with 1 ms slices a Linux boot ran 1.35 G guest instructions against 0.89 G
/// bare, with 100 µs 0.92 G (`cargo xtask bench`; 50 µs gains nothing more).
const SLICES_PER_SECOND: u64 = 10000;

/// The priority KServ injects with: the GIC's reset default that Linux keeps for every
/// interrupt it uses.
const INJECT_PRIORITY: u64 = 0xa0;

/// Hands the interrupts a Linux VM's GIC model made pending for `vcpu` to KCore (INJECT_IRQ),
/// before the vCPU runs; what KCore's queue cannot take yet waits for the next run.
fn inject_waiting(vm: &mut Vm, vcpu: usize) {
    let Some(devices) = vm.linux.as_mut() else { return };
    let vmid = vm.vmid;
    devices.sink.drain(vcpu, |intid| {
        let args = [vmid, vcpu as u64, u64::from(intid), INJECT_PRIORITY, 0, 0];
        hvc::hyp_call(host_call::INJECT_IRQ, args).status == Status::Success.as_reg()
    });
}

fn stop(vm: &mut Vm, why: &'static str) {
    vm.alive = false;
    vm.stopped_because.get_or_insert(why);
}

/// The guest's store of `value` at `offset` in its PL011 (an MMIO exit, or a console byte KCore
/// took for DR).
fn uart_write(vm: &mut Vm, vcpu: usize, offset: u64, value: u64, hooks: &mut dyn Hooks) {
    // Linux serialises its console itself and a task may move to another vCPU in the middle of a
    // line: one buffer for the VM. Test guests print from every vCPU at once.
    let buffer = if vm.linux.is_some() { 0 } else { vcpu };
    let mut console = core::mem::take(&mut vm.console[buffer]);
    if let Some(line) = pl011::write(&mut console, offset, value) {
        kprintln!("[{}] {}", vm.name(), line);
        hooks.console_line(vm, line);
    }
    vm.console[buffer] = console;
}

/// Emulates the guest's access to `addr`.
fn mmio(vm: &mut Vm, vcpu: usize, addr: u64, flags: u64, value: u64, hooks: &mut dyn Hooks) {
    let write = flags & exit::mmio_flags::WRITE != 0;
    if let Some(offset) = addr.checked_sub(guest_dev::UART).filter(|&o| o < PAGE) {
        if write {
            uart_write(vm, vcpu, offset, value, hooks);
        } else {
            vm.answers[vcpu] = pl011::read(offset);
        }
        return;
    }
    if let Some(devices) = vm.linux.as_mut() {
        let size = 1 << (flags >> exit::mmio_flags::SIZE_SHIFT & exit::mmio_flags::SIZE_MASK);
        // Outside every device: reads as zero and ignores writes, logged once per address.
        vm.answers[vcpu] = devices.mmio(vcpu, addr, size, write.then_some(value)).unwrap_or_else(|| {
            if devices.first_stray_access(addr) {
                kprintln!("vm {}: {} at {addr:#x}, no device there: ignored", vm.entry.name(), rw(write));
            }
            0
        });
        return;
    }
    match (addr, write) {
        (guest_dev::TEST_DEV_CONFIG, false) => vm.answers[vcpu] = vm.entry.role as u64,
        (guest_dev::TEST_DEV_NOTIFY, true) => hooks.notify(vm, value),
        (guest_dev::TEST_DEV_ANSWER, false) => vm.answers[vcpu] = hooks.answer(vm),
        _ => {
            kprintln!("vm {}: {} at {addr:#x}, outside its RAM and devices: stopping it", vm.name(), rw(write));
            stop(vm, "access outside its memory");
        }
    }
}

fn rw(write: bool) -> &'static str {
    if write {
        "write"
    } else {
        "read"
    }
}

/// The guest's PSCI calls (and any other call KCore passed on).
fn guest_psci(vm: &mut Vm, vcpu: usize, x: [u64; 4]) {
    const SUCCESS: u64 = 0;
    let not_supported = Status::NotSupported.as_reg();
    let invalid = Status::InvalidParameters.as_reg();
    let target = usize::try_from(x[1] & 0xff).ok().filter(|&t| t < vm.entry.vcpus as usize);
    let result = match x[0] as u32 {
        psci::VERSION => psci::PSCI_VERSION_1_1,
        psci::MIGRATE_INFO_TYPE => psci::MIGRATE_INFO_NO_TRUSTED_OS,
        psci::FEATURES => match x[1] as u32 {
            psci::VERSION
            | psci::CPU_ON_64
            | psci::CPU_OFF
            | psci::AFFINITY_INFO_64
            | psci::SYSTEM_OFF
            | psci::SYSTEM_RESET => SUCCESS,
            _ => not_supported,
        },
        psci::CPU_ON_64 | psci::CPU_ON_32 => match target {
            Some(t) if vm.vcpus[t] == VcpuRun::Off => {
                kprintln!("vm {}: vcpu {vcpu} powers on vcpu {t} (PSCI CPU_ON)", vm.name());
                vm.vcpus[t] = VcpuRun::Runnable;
                SUCCESS
            }
            Some(_) => Status::AlreadyOn.as_reg(),
            None => invalid,
        },
        psci::AFFINITY_INFO_64 | psci::AFFINITY_INFO_32 => match target {
            Some(t) if vm.vcpus[t] == VcpuRun::Off => psci::AFFINITY_OFF,
            Some(_) => psci::AFFINITY_ON,
            None => invalid,
        },
        psci::CPU_OFF => {
            vm.vcpus[vcpu] = VcpuRun::Off;
            if vm.vcpus.iter().all(|&v| v == VcpuRun::Off) {
                stop(vm, "every vCPU is off");
            }
            return;
        }
        psci::SYSTEM_OFF => {
            kprintln!("vm {}: powered off", vm.name());
            vm.alive = false;
            return;
        }
        // Linux resets on a panic (`panic=-1`): the VM did not finish well.
        psci::SYSTEM_RESET => {
            kprintln!("vm {}: asked for a reset; corevisor does not restart VMs, so it is off", vm.name());
            stop(vm, "it asked for a reset");
            return;
        }
        _ => not_supported,
    };
    vm.answers[vcpu] = result;
}

/// The host reads and writes a VM's page at `pa`: each access must abort. Returns how many
/// accesses were tried and how many aborted.
pub fn attack_page(pa: u64) -> (u64, u64) {
    attack(pa, &[Access::Read, Access::Write])
}

/// [`attack_page`], then a second read: a write that reached the page would show there.
pub fn attack_page_and_read_back(pa: u64) -> (u64, u64) {
    attack(pa, &[Access::Read, Access::Write, Access::Read])
}

/// One access of the host to a VM's page.
#[derive(Clone, Copy)]
enum Access {
    Read,
    Write,
}

/// What the host writes into a VM's page: it must never reach it.
const ATTACK_PATTERN: u64 = 0x6a6a_6a6a_6a6a_6a6a;

/// Makes `accesses` to the VM page at `pa`. Returns how many were tried, and how many aborted
/// as KCore must make them: one external abort each, at `pa`, a read returning nothing.
fn attack(pa: u64, accesses: &[Access]) -> (u64, u64) {
    exceptions::expect_abort(true);
    let aborted = accesses
        .iter()
        .filter(|access| {
            let (before, _, _) = exceptions::aborts();
            let read = match access {
                Access::Read => hvc::probe_read(pa).0,
                Access::Write => {
                    hvc::probe_write(pa, ATTACK_PATTERN);
                    0
                }
            };
            let (after, _, far) = exceptions::aborts();
            after == before + 1 && far == pa && read == 0
        })
        .count();
    exceptions::expect_abort(false);
    (accesses.len() as u64, aborted as u64)
}
