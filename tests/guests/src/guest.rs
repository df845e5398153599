//! The guest proper: console, hypercalls, test device, timer, exception handling and the roles.
//!
//! One vCPU, interrupts masked throughout: the only exceptions are synchronous ones (an expected
//! UNDEF, or a bug). Statics are `static mut`, reached only through raw pointers and volatile
//! accesses, never references.

use crate::text;
use core::arch::{asm, global_asm};
use corevisor_abi::{guest_call, guest_dev, guest_role, psci};

global_asm!(include_str!("boot.S"));

const PAGE: usize = 4096;
const PAGE_WORDS: usize = PAGE / 8;

/// Page-aligned, zero-initialised (so in .bss, not in the image) memory of `N` u64 words.
#[repr(C, align(4096))]
struct Pages<const N: usize>([u64; N]);

/// HELLO: 64 pages to touch.
static mut TOUCHED: Pages<{ 64 * PAGE_WORDS }> = Pages([0; 64 * PAGE_WORDS]);
/// STEADY: 64 KiB whose contents must survive.
static mut STEADY_BUF: Pages<{ 16 * PAGE_WORDS }> = Pages([0; 16 * PAGE_WORDS]);
/// SHARE and BENCH: the page shared with the host.
static mut PAGE_A: Pages<PAGE_WORDS> = Pages([0; PAGE_WORDS]);
/// SHARE: the page kept private.
static mut PAGE_B: Pages<PAGE_WORDS> = Pages([0; PAGE_WORDS]);
/// SHARE_ATOMIC: two adjacent pages, X and Y, for ranges refused part-way.
static mut ATOMIC_PAGES: Pages<{ 2 * PAGE_WORDS }> = Pages([0; 2 * PAGE_WORDS]);

/// HELLO: set by vCPU 1 once it has run.
static mut SECONDARY_SAID_HELLO: u64 = 0;
/// The context id vCPU 0 passes to vCPU 1 with CPU_ON.
const SECONDARY_CONTEXT: u64 = 0x5ec0;

/// Set while the guest expects an UNDEF; the vector then counts it in UNDEF_COUNT and skips the
/// instruction.
static mut EXPECT_UNDEF: bool = false;
static mut UNDEF_COUNT: u64 = 0;

// ---- console ----

fn putc(byte: u8) {
    // SAFETY: guest_dev::UART is the PL011 data register that the host emulates for every guest;
    // a 32-bit store there writes one character and touches no memory of this program.
    unsafe { (guest_dev::UART as *mut u32).write_volatile(u32::from(byte)) }
}

fn put(s: &str) {
    for &b in s.as_bytes() {
        putc(b);
    }
}

fn put_text(buf: &[u8]) {
    for &b in buf {
        putc(b);
    }
}

fn put_hex(value: u64) {
    let mut buf = [0; text::MAX_LEN];
    let at = text::hex(value, &mut buf);
    put_text(&buf[at..]);
}

fn put_dec(value: u64) {
    let mut buf = [0; text::MAX_LEN];
    let at = text::decimal(value, &mut buf);
    put_text(&buf[at..]);
}

fn line(s: &str) {
    put(s);
    putc(b'\n');
}

// ---- hypercalls and the test device ----

/// An SMCCC call through `hvc #0`: x0 = `id`, x1..x3 = args; returns x0.
fn hvc(id: u32, a1: u64, a2: u64, a3: u64) -> u64 {
    let result: u64;
    // SAFETY: an HVC traps to the hypervisor, which follows SMCCC: it changes at most x0..x17
    // (all declared clobbered) and the memory a call is documented to share. No `nomem`, so the
    // compiler keeps memory accesses (e.g. the text in a page about to be shared) in order.
    unsafe {
        asm!(
            "hvc #0",
            inout("x0") u64::from(id) => result,
            inout("x1") a1 => _,
            inout("x2") a2 => _,
            inout("x3") a3 => _,
            out("x4") _, out("x5") _, out("x6") _, out("x7") _,
            out("x8") _, out("x9") _, out("x10") _, out("x11") _,
            out("x12") _, out("x13") _, out("x14") _, out("x15") _,
            out("x16") _, out("x17") _,
            options(nostack),
        );
    }
    result
}

fn system_off() -> ! {
    hvc(psci::SYSTEM_OFF, 0, 0, 0);
    loop {
        // SAFETY: WFI only waits; SYSTEM_OFF does not return, this is a fallback.
        unsafe { asm!("wfi", options(nomem, nostack)) }
    }
}

fn share(gpa: u64, size: u64) -> u64 {
    hvc(guest_call::SET_DESC_PFN, gpa, size, 0)
}

fn unshare(gpa: u64, size: u64) -> u64 {
    hvc(guest_call::UNSET_DESC_PFN, gpa, size, 0)
}

fn mmio_read(addr: u64) -> u64 {
    // SAFETY: addr is one of the test device's registers, outside the guest's RAM; the host
    // emulates a 64-bit load there.
    unsafe { (addr as *const u64).read_volatile() }
}

fn config() -> u64 {
    mmio_read(guest_dev::TEST_DEV_CONFIG)
}

fn answer() -> u64 {
    mmio_read(guest_dev::TEST_DEV_ANSWER)
}

fn notify(value: u64) {
    // SAFETY: TEST_DEV_NOTIFY is the test device's NOTIFY register, emulated by the host.
    unsafe { (guest_dev::TEST_DEV_NOTIFY as *mut u64).write_volatile(value) }
}

// ---- system registers ----

macro_rules! read_sysreg {
    ($name:literal) => {{
        let value: u64;
        // SAFETY: reading this system register at EL1 has no side effect on memory.
        unsafe { asm!(concat!("mrs {}, ", $name), out(reg) value, options(nomem, nostack)) };
        value
    }};
}

macro_rules! write_sysreg {
    ($name:literal, $value:expr) => {{
        let value: u64 = $value;
        // SAFETY: the guest owns its EL1 timer and exception registers; writing them touches no
        // memory.
        unsafe { asm!(concat!("msr ", $name, ", {}"), "isb", in(reg) value, options(nomem, nostack)) };
    }};
}

/// Sleeps `ticks` of the virtual counter: arm the virtual timer, WFI until its status is set
/// (interrupts stay masked, so the pending interrupt only ends the WFI), disarm.
fn sleep_ticks(ticks: u64) {
    let now = read_sysreg!("cntvct_el0");
    write_sysreg!("cntv_cval_el0", now.wrapping_add(ticks));
    write_sysreg!("cntv_ctl_el0", 1);
    loop {
        // SAFETY: WFI only waits for an event or interrupt.
        unsafe { asm!("wfi", options(nomem, nostack)) }
        if read_sysreg!("cntv_ctl_el0") & 0b100 != 0 {
            break;
        }
    }
    write_sysreg!("cntv_ctl_el0", 0);
}

/// Counter ticks in `1 / per_second` seconds.
fn ticks(per_second: u64) -> u64 {
    (read_sysreg!("cntfrq_el0") / per_second).max(1)
}

// ---- exceptions ----

fn undef_count() -> u64 {
    // SAFETY: a plain load of a static that only this single vCPU touches, through a raw pointer.
    unsafe { (&raw const UNDEF_COUNT).read_volatile() }
}

fn expect_undef(on: bool) {
    // SAFETY: as in undef_count.
    unsafe { (&raw mut EXPECT_UNDEF).write_volatile(on) }
}

/// Called by the vectors in boot.S with the vector's index (4: synchronous, current EL, SP_EL1).
/// Returns only after an expected UNDEF, with ELR_EL1 past the instruction.
#[no_mangle]
extern "C" fn guest_exception(index: u64) {
    let esr = read_sysreg!("esr_el1");
    let elr = read_sysreg!("elr_el1");
    let far = read_sysreg!("far_el1");
    // SAFETY: as in undef_count.
    let expected = unsafe { (&raw const EXPECT_UNDEF).read_volatile() };
    if index == 4 && (esr >> 26) & 0x3f == 0 && expected {
        // SAFETY: as in undef_count.
        unsafe { (&raw mut UNDEF_COUNT).write_volatile(undef_count() + 1) };
        write_sysreg!("elr_el1", elr + 4);
        return;
    }
    if index != 4 {
        put("guest: unexpected vector ");
        put_dec(index);
        putc(b'\n');
    }
    put("guest: unexpected exception ESR=");
    put_hex(esr);
    put(" ELR=");
    put_hex(elr);
    put(" FAR=");
    put_hex(far);
    putc(b'\n');
    system_off()
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    line("guest panic");
    system_off()
}

// ---- memory helpers ----

/// Writes `s` and a NUL at the start of the page at `page`.
fn write_text(page: *mut u8, s: &str) {
    for (i, &b) in s.as_bytes().iter().chain(&[0]).enumerate() {
        // SAFETY: callers pass a 4 KiB page of their own and texts far shorter than that.
        unsafe { page.add(i).write_volatile(b) }
    }
}

fn pattern(i: usize) -> u64 {
    (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x636f_7265_7669_736f
}

// ---- the roles ----

/// Entered from _start with the stack set up.
#[no_mangle]
extern "C" fn guest_main() -> ! {
    let role = config();
    match role {
        r if r == u64::from(guest_role::HELLO) => hello(),
        r if r == u64::from(guest_role::SHARE) => share_role(),
        r if r == u64::from(guest_role::EVIL) => evil(),
        r if r == u64::from(guest_role::STEADY) => steady(),
        r if r == u64::from(guest_role::BENCH) => bench(),
        r if r == u64::from(guest_role::DEMO) => demo(),
        r if r == u64::from(guest_role::FUZZ) => fuzz(),
        r if r == u64::from(guest_role::SPIN) => spin(),
        r if r == u64::from(guest_role::PATTERN) => pattern_role(),
        r if r == u64::from(guest_role::BINDING) => binding(),
        r if r == u64::from(guest_role::SHARE_ATOMIC) => share_atomic(),
        r if r == u64::from(guest_role::SYSREGS) => sysregs(),
        r if r == u64::from(guest_role::LARGE) => large(),
        r if r == u64::from(guest_role::VGIC) => vgic(),
        r if r == u64::from(guest_role::RACE) => race(),
        r if r == u64::from(guest_role::STEADY_AT) => {
            notify((&raw mut STEADY_BUF) as u64);
            steady()
        }
        other => {
            put("unknown role ");
            put_dec(other);
            putc(b'\n');
        }
    }
    system_off()
}

fn hello() {
    line("hello from a corevisor guest");

    let base = (&raw mut TOUCHED).cast::<u64>();
    let pages = 64;
    for p in 0..pages {
        // SAFETY: TOUCHED is 64 pages of this guest's .bss; word p * PAGE_WORDS is inside it.
        unsafe { base.add(p * PAGE_WORDS).write_volatile(pattern(p)) }
    }
    // SAFETY: as above, read back.
    let intact = (0..pages).all(|p| unsafe { base.add(p * PAGE_WORDS).read_volatile() } == pattern(p));
    line(if intact { "touched 64 pages: ok" } else { "touched 64 pages: CORRUPT" });

    put("ID_AA64PFR0_EL1 = ");
    put_hex(read_sysreg!("id_aa64pfr0_el1"));
    putc(b'\n');

    // SAFETY: a set/way clean-and-invalidate of set 0, way 0, level 1 changes no architectural
    // state the guest relies on (its memory is non-cacheable with the MMU off); the hypervisor
    // traps and emulates it.
    unsafe { asm!("dc isw, {}", in(reg) 0u64, options(nostack)) };
    line("dc isw: ok");

    let before = undef_count();
    expect_undef(true);
    let _pmcr: u64;
    // SAFETY: reading PMCR_EL0 either works or takes an UNDEF, which the vector skips while
    // EXPECT_UNDEF is set. Not `nomem`: the handler writes UNDEF_COUNT.
    unsafe { asm!("mrs {}, pmcr_el0", out(reg) _pmcr, options(nostack)) };
    expect_undef(false);
    line(if undef_count() != before { "PMCR_EL0: UNDEF" } else { "PMCR_EL0: readable" });

    let before = undef_count();
    expect_undef(true);
    // SAFETY: writing 0 to ACTLR_EL1 either UNDEFs (the hypervisor traps it, skipped by the
    // vector) or clears implementation-defined controls this guest does not rely on.
    unsafe { asm!("msr actlr_el1, {}", in(reg) 0u64, options(nostack)) };
    expect_undef(false);
    line(if undef_count() != before { "ACTLR_EL1: UNDEF" } else { "ACTLR_EL1: written" });

    let before = undef_count();
    expect_undef(true);
    // SAFETY: an HVC with a non-zero immediate is not an SMCCC call: the hypervisor injects an
    // UNDEF, which the vector skips. Registers x0..x17 may change, as for any HVC.
    unsafe {
        asm!("hvc #1", out("x0") _, out("x1") _, out("x2") _, out("x3") _, out("x4") _, out("x5") _,
            out("x6") _, out("x7") _, out("x8") _, out("x9") _, out("x10") _, out("x11") _, out("x12") _,
            out("x13") _, out("x14") _, out("x15") _, out("x16") _, out("x17") _, options(nostack))
    };
    expect_undef(false);
    line(if undef_count() != before { "hvc #1: UNDEF" } else { "hvc #1: returned" });

    sleep_ticks(ticks(200));
    line("timer fired after wfi");

    second_vcpu();
    // The host answers 1 if it mapped its own UART here (PHYS_ADDR_IOREMAP): these bytes go
    // straight to the device, with no exit.
    if answer() == 1 {
        for &b in b"[hello, passthrough] written straight to the UART\r\n" {
            // SAFETY: the host mapped a PL011's registers at PASSTHROUGH_UART; DR at +0 takes
            // one character per 32-bit store.
            unsafe { (guest_dev::PASSTHROUGH_UART as *mut u32).write_volatile(u32::from(b)) }
        }
    }
    line("bye");
}

/// PSCI from the guest's side: VERSION, then CPU_ON of vCPU 1, waiting (on the timer, so that
/// the host gets to run vCPU 1) until it has said hello and turned itself off.
fn second_vcpu() {
    put("PSCI version ");
    put_hex(hvc(psci::VERSION, 0, 0, 0));
    putc(b'\n');
    extern "C" {
        fn _secondary_start();
    }
    let status = hvc(psci::CPU_ON_64, 1, _secondary_start as *const () as u64, SECONDARY_CONTEXT);
    put("CPU_ON vcpu 1: ");
    put_dec(status);
    putc(b'\n');
    if status != 0 {
        return;
    }
    for _ in 0..1000 {
        // SAFETY: a volatile load of a static that vCPU 1 sets, through a raw pointer.
        let said = unsafe { (&raw const SECONDARY_SAID_HELLO).read_volatile() };
        if said != 0 && hvc(psci::AFFINITY_INFO_64, 1, 0, 0) == psci::AFFINITY_OFF {
            line("vcpu 1 said hello and is off again");
            return;
        }
        sleep_ticks(ticks(1000));
    }
    line("vcpu 1 never said hello");
}

/// vCPU 1's entry (from `_secondary_start`), with the context id CPU_ON gave it.
#[no_mangle]
extern "C" fn guest_secondary(context: u64) -> ! {
    put("hello from vcpu 1, context ");
    put_hex(context);
    putc(b'\n');
    // SAFETY: a volatile store to a static that vCPU 0 polls, through a raw pointer.
    unsafe { (&raw mut SECONDARY_SAID_HELLO).write_volatile(1) };
    hvc(psci::CPU_OFF, 0, 0, 0);
    line("CPU_OFF returned");
    system_off()
}

fn share_role() {
    let a = (&raw mut PAGE_A).cast::<u8>();
    let b = (&raw mut PAGE_B).cast::<u8>();
    write_text(a, "corevisor shared page: hello host");
    write_text(b, "private: not for the host");
    let (a_gpa, b_gpa) = (a as u64, b as u64);

    let status = share(a_gpa, PAGE as u64);
    if status != 0 {
        put("share failed: ");
        put_hex(status);
        putc(b'\n');
        return;
    }
    put("shared page at ");
    put_hex(a_gpa);
    putc(b'\n');
    notify(a_gpa);
    notify(b_gpa);
    put("host verdict: ");
    put_dec(answer());
    putc(b'\n');

    let status = unshare(a_gpa, PAGE as u64);
    if status != 0 {
        put("unshare failed: ");
        put_hex(status);
        putc(b'\n');
        return;
    }
    line("unshared page");
    notify(a_gpa);
    put("host verdict: ");
    put_dec(answer());
    putc(b'\n');
    line("bye");
}

/// Prints `what` and the status of a share call that must be refused.
fn refused(what: &str, status: u64) {
    put(what);
    put(": status ");
    put_hex(status);
    putc(b'\n');
}

/// Tells the host which pages to check, and prints its verdict.
fn host_checks(pages: &[u64]) {
    for &gpa in pages {
        notify(gpa);
    }
    put("host verdict: ");
    put_dec(answer());
    putc(b'\n');
}

/// SHARE_ATOMIC: three share calls that fail on their last page; the host checks after each that
/// the pages before it did not change (issue 11, finding 7).
fn share_atomic() {
    // 1. A range whose last page is past the end of RAM; the two before it are mapped.
    let end = guest_dev::RAM_BASE + guest_dev::RAM_SIZE;
    let top = [end - 2 * PAGE as u64, end - PAGE as u64];
    for gpa in top {
        // SAFETY: the top pages of the guest's RAM window lie above its image, .bss and stacks
        // (the linker script keeps all of those below RAM_BASE + RAM_SIZE), so nothing else
        // uses them; writing faults them in.
        write_text(gpa as *mut u8, "share-atomic: top of RAM");
    }
    refused("share past the end of RAM", share(top[0], 3 * PAGE as u64));
    host_checks(&top);

    // 2. Y at its share limit: sharing X and Y is refused on Y, and X stays private.
    let x = (&raw mut ATOMIC_PAGES).cast::<u8>();
    let (x_gpa, y_gpa) = (x as u64, x as u64 + PAGE as u64);
    write_text(x, "share-atomic: page X");
    // SAFETY: the second page of ATOMIC_PAGES, which this role alone uses.
    write_text(unsafe { x.add(PAGE) }, "share-atomic: page Y");
    let mut shares = 0;
    while shares < 1000 && share(y_gpa, PAGE as u64) == 0 {
        shares += 1;
    }
    put("page Y shared ");
    put_dec(shares);
    line(" times, up to its limit");
    refused("share over a page at its limit", share(x_gpa, 2 * PAGE as u64));
    host_checks(&[x_gpa]);
    for _ in 0..shares {
        unshare(y_gpa, PAGE as u64);
    }

    // 3. Only X shared: unsharing X and Y is refused on Y, and X stays shared.
    if share(x_gpa, PAGE as u64) != 0 {
        line("share of X failed");
        return;
    }
    refused("unshare of a partly shared range", unshare(x_gpa, 2 * PAGE as u64));
    host_checks(&[x_gpa]);
    if unshare(x_gpa, PAGE as u64) != 0 {
        line("unshare of X failed");
        return;
    }
    line("bye");
}

fn evil() {
    line("reaching outside my RAM");
    loop {
        let addr = answer();
        if addr == 0 {
            break;
        }
        // SAFETY: this is the attack: the host names memory that is not the guest's, and the
        // hypervisor must stop the guest here. If the load returns, it only reads.
        let value = unsafe { (addr as *const u64).read_volatile() };
        put("read ");
        put_hex(value);
        put(" at ");
        put_hex(addr);
        putc(b'\n');
    }
    line("bye");
}

/// FP/SIMD state in memory: q0..q31.
#[repr(C, align(16))]
struct FpImage([u64; 64]);

/// Loads q0..q31 from `image` (FP enabled at EL1 first: CPACR_EL1.FPEN = 0b11).
fn load_fp(image: &FpImage) {
    write_sysreg!("cpacr_el1", 0b11 << 20);
    // SAFETY: reads 512 bytes of `image` into the FP/SIMD registers, which nothing else in this
    // soft-float program uses.
    unsafe {
        asm!(
            ".arch_extension fp", ".arch_extension simd",
            "ldp q0, q1, [{p}, #0]", "ldp q2, q3, [{p}, #32]", "ldp q4, q5, [{p}, #64]", "ldp q6, q7, [{p}, #96]",
            "ldp q8, q9, [{p}, #128]", "ldp q10, q11, [{p}, #160]", "ldp q12, q13, [{p}, #192]", "ldp q14, q15, [{p}, #224]",
            "ldp q16, q17, [{p}, #256]", "ldp q18, q19, [{p}, #288]", "ldp q20, q21, [{p}, #320]", "ldp q22, q23, [{p}, #352]",
            "ldp q24, q25, [{p}, #384]", "ldp q26, q27, [{p}, #416]", "ldp q28, q29, [{p}, #448]", "ldp q30, q31, [{p}, #480]",
            p = in(reg) image.0.as_ptr(), options(nostack, readonly),
        )
    }
}

/// Stores q0..q31 into `image`.
fn store_fp(image: &mut FpImage) {
    // SAFETY: writes the FP/SIMD registers into the 512 bytes of `image`.
    unsafe {
        asm!(
            ".arch_extension fp", ".arch_extension simd",
            "stp q0, q1, [{p}, #0]", "stp q2, q3, [{p}, #32]", "stp q4, q5, [{p}, #64]", "stp q6, q7, [{p}, #96]",
            "stp q8, q9, [{p}, #128]", "stp q10, q11, [{p}, #160]", "stp q12, q13, [{p}, #192]", "stp q14, q15, [{p}, #224]",
            "stp q16, q17, [{p}, #256]", "stp q18, q19, [{p}, #288]", "stp q20, q21, [{p}, #320]", "stp q22, q23, [{p}, #352]",
            "stp q24, q25, [{p}, #384]", "stp q26, q27, [{p}, #416]", "stp q28, q29, [{p}, #448]", "stp q30, q31, [{p}, #480]",
            p = in(reg) image.0.as_mut_ptr(), options(nostack),
        )
    }
}

fn steady() {
    // Its FP/SIMD registers hold a pattern from the host's seed for the whole run: another
    // guest's (or the host's) values must never show through the world switch.
    let seed = answer();
    let mut expected = FpImage([0; 64]);
    for (i, word) in expected.0.iter_mut().enumerate() {
        *word = pattern(i) ^ seed;
    }
    load_fp(&expected);
    let base = (&raw mut STEADY_BUF).cast::<u64>();
    let words = 16 * PAGE_WORDS;
    for i in 0..words {
        // SAFETY: STEADY_BUF holds `words` u64s of this guest's .bss.
        unsafe { base.add(i).write_volatile(pattern(i)) }
    }
    let tick = ticks(1000);
    for i in 0..20 {
        put("tick ");
        put_dec(i);
        putc(b'\n');
        sleep_ticks(tick);
    }
    // SAFETY: as above, read back.
    let intact = (0..words).all(|i| unsafe { base.add(i).read_volatile() } == pattern(i));
    line(if intact { "memory intact" } else { "memory CORRUPT" });
    let mut fp = FpImage([0; 64]);
    store_fp(&mut fp);
    line(if fp.0 == expected.0 { "fp registers intact" } else { "fp registers CORRUPT" });
    line("bye");
}

fn bench() -> ! {
    let a = (&raw mut PAGE_A).cast::<u64>();
    // SAFETY: PAGE_A is a page of this guest's .bss: touch it so it is mapped before the loop.
    unsafe { a.write_volatile(1) };
    let a_gpa = a as u64;
    loop {
        let cmd = answer();
        if cmd == 0 {
            system_off();
        }
        if cmd == guest_role::BENCH_SGI {
            // SAFETY: as in `sysregs`: the write traps (GICv3, HCR_EL2.IMO) and goes to the host.
            unsafe { asm!("msr icc_sgi1r_el1, {}", in(reg) guest_role::SYSREGS_SGI1R, options(nostack)) };
            continue;
        }
        if cmd & guest_role::BENCH_TOUCH != 0 {
            // SAFETY: the address is a page of this guest's RAM that nothing of it uses (KServ
            // names one past the image); the store faults it in.
            unsafe { ((cmd & !guest_role::BENCH_TOUCH) as *mut u64).write_volatile(1) };
            continue;
        }
        if cmd & guest_role::BENCH_CONSOLE != 0 {
            for _ in 0..cmd & 0xff {
                // SAFETY: a byte store to the PL011's DR, outside this guest's RAM: it traps.
                unsafe { (guest_dev::UART as *mut u8).write_volatile(b'x') };
            }
            continue;
        }
        if cmd == guest_role::BENCH_VTIMER {
            let gic = CpuInterface { v2: false };
            gic.enable();
            write_sysreg!("cntv_cval_el0", read_sysreg!("cntvct_el0"));
            write_sysreg!("cntv_ctl_el0", 1);
            let intid = gic.wait();
            gic.eoi(intid);
            write_sysreg!("cntv_ctl_el0", 0);
            continue;
        }
        for _ in 1..cmd {
            share(a_gpa, PAGE as u64);
            unshare(a_gpa, PAGE as u64);
        }
    }
}

fn demo() {
    let tick = ticks(500);
    for i in 0..5 {
        put("counting ");
        put_dec(i);
        putc(b'\n');
        sleep_ticks(tick);
    }
    line("bye");
}

// ---- FUZZ ----

/// Reads or writes a system register that may trap; no `nomem`: an UNDEF's handler writes memory.
macro_rules! poke {
    (read $name:literal) => {{
        // An UNDEF leaves the register as it was: 0 here, so that only a served read can show
        // another value.
        let mut value: u64 = 0;
        // SAFETY: reading a system register at EL1: it works, or the hypervisor emulates it, or an
        // UNDEF comes back, which the vector skips while EXPECT_UNDEF is set.
        unsafe { asm!(concat!("mrs {}, ", $name), inout(reg) value, options(nostack)) };
        value
    }};
    (write $name:literal) => {{
        // SAFETY: writing 0 to a register this guest does not rely on (PMU, physical timer, debug,
        // cache maintenance by set/way): it works, is emulated, or UNDEFs and is skipped.
        unsafe { asm!(concat!("msr ", $name, ", {}"), in(reg) 0u64, options(nostack)) };
        0u64
    }};
    (sys $op:literal) => {{
        // SAFETY: as for `write`.
        unsafe { asm!(concat!($op, ", {}"), in(reg) 0u64, options(nostack)) };
        0u64
    }};
}

/// xorshift64*, seeded by the host.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// An SMC with x0..x3; the result in x0.
fn smc(id: u64, a1: u64, a2: u64, a3: u64) -> u64 {
    let result: u64;
    // SAFETY: as for `hvc`: the hypervisor traps the SMC and follows SMCCC.
    unsafe {
        asm!("smc #0", inout("x0") id => result, inout("x1") a1 => _, inout("x2") a2 => _, inout("x3") a3 => _,
            out("x4") _, out("x5") _, out("x6") _, out("x7") _, out("x8") _, out("x9") _, out("x10") _,
            out("x11") _, out("x12") _, out("x13") _, out("x14") _, out("x15") _, out("x16") _, out("x17") _,
            options(nostack))
    };
    result
}

/// Function ids a fuzzing guest must not call: they would end it (or a vCPU) for good.
fn ends_the_guest(id: u32) -> bool {
    matches!(id, psci::SYSTEM_OFF | psci::SYSTEM_RESET | psci::CPU_OFF)
}

fn fuzz() {
    const OPERATIONS: u64 = 2000;
    let mut rng = Rng(answer() | 1);
    let a_gpa = (&raw mut PAGE_A).cast::<u64>() as u64;
    let ids = [
        guest_call::SET_DESC_PFN,
        guest_call::UNSET_DESC_PFN,
        psci::VERSION,
        psci::FEATURES,
        psci::AFFINITY_INFO_64,
        psci::CPU_ON_64,
    ];
    // What each system-register operation must do: UNDEF (the PMU, the physical timer, ACTLR),
    // or be served (ID registers, set/way, debug: zero, OSLSR_EL1 `1 << 3`).
    const UNDEF: Option<u64> = None;
    const SERVED: Option<u64> = Some(u64::MAX);
    let (mut checked, mut wrong) = (0u64, 0u64);
    let before = undef_count();
    expect_undef(true);
    for _ in 0..OPERATIONS {
        let undefs_before = undef_count();
        let r = rng.next();
        let (a1, a2, a3) = (rng.next(), rng.next() & 0x3_ffff, rng.next());
        let id = match r >> 60 {
            0..=9 => ids[(r % ids.len() as u64) as usize],
            _ => r as u32,
        };
        let id = if ends_the_guest(id) { psci::VERSION } else { id };
        // Addresses: the shared page, guest RAM, or anything.
        let gpa = match a1 % 3 {
            0 => a_gpa,
            1 => guest_dev::RAM_BASE + (a1 >> 8) % guest_dev::RAM_SIZE,
            _ => a1,
        };
        let expected = match r % 27 {
            0..=5 => {
                hvc(id, gpa, a2, a3);
                continue;
            }
            6..=7 => {
                smc(u64::from(id), gpa, a2, a3);
                continue;
            }
            8 => (poke!(read "pmcr_el0"), UNDEF),
            9 => (poke!(read "pmccntr_el0"), UNDEF),
            10 => (poke!(read "mdscr_el1"), Some(0)),
            11 => (poke!(read "dbgbvr0_el1"), Some(0)),
            12 => (poke!(read "oslsr_el1"), Some(1 << 3)),
            13 => (poke!(read "cntp_ctl_el0"), UNDEF),
            14 => (poke!(write "cntp_cval_el0"), UNDEF),
            15 => (poke!(write "pmcr_el0"), UNDEF),
            16 => (poke!(read "id_aa64isar0_el1"), SERVED),
            17 => (poke!(read "id_pfr0_el1"), SERVED),
            22 => (poke!(write "dbgbcr1_el1"), SERVED),
            23 => (poke!(write "oslar_el1"), SERVED),
            24 => (poke!(read "actlr_el1"), UNDEF),
            25 => (poke!(write "actlr_el1"), UNDEF),
            18 => (poke!(sys "dc csw"), SERVED),
            19 => (poke!(sys "dc cisw"), SERVED),
            20 => {
                // SAFETY: an HVC / SMC with a non-zero immediate: an UNDEF, skipped.
                unsafe {
                    asm!("hvc #0x42", "smc #7", out("x0") _, out("x1") _, out("x2") _, out("x3") _, options(nostack))
                };
                continue;
            }
            21 => {
                // SAFETY: WFE (trapped with TWE) only waits.
                unsafe { asm!("wfe", options(nomem, nostack)) }
                continue;
            }
            _ => {
                mmio_read(guest_dev::TEST_DEV_CONFIG);
                continue;
            }
        };
        let undef = undef_count() != undefs_before;
        checked += 1;
        wrong += u64::from(match expected {
            (_, UNDEF) => !undef,
            (_, SERVED) => undef,
            (value, Some(read)) => undef || value != read,
        });
    }
    expect_undef(false);
    put("fuzzed ");
    put_dec(OPERATIONS);
    put(" operations, ");
    put_dec(undef_count() - before);
    putc(b' ');
    line("UNDEFs taken");
    put("system registers: ");
    put_dec(checked);
    put(" checked, ");
    put_dec(wrong);
    line(" wrong (PMU, physical timer, ACTLR: UNDEF; debug: zero, OSLSR 0x8)");
    let dfr0 = read_sysreg!("id_aa64dfr0_el1");
    line(if dfr0 >> 8 & 0xf == 0 { "PMU hidden from ID_AA64DFR0_EL1" } else { "PMU visible in ID_AA64DFR0_EL1" });
    line("bye");
}

// ---- PATTERN ----

/// Fills PATTERN_PAGES pages at PATTERN_BASE with words the host can recognise wherever they end up (the guest runs
/// with its MMU off, so a pointer is a guest-physical address), then waits: the host resets the
/// machine while the pattern is in memory.
fn pattern_role() {
    // Above the image, .bss and stacks (guest.ld keeps those below the data image at RAM_BASE +
    // 8 MiB), so that no other role's .bss pays for these pages.
    let base = guest_role::PATTERN_BASE as *mut u64;
    let words = guest_role::PATTERN_PAGES as usize * PAGE_WORDS;
    for i in 0..words {
        // SAFETY: `[PATTERN_BASE, + PATTERN_PAGES pages)` lies in this guest's RAM window and no
        // other part of this role uses it; writing faults the pages in.
        unsafe { base.add(i).write_volatile(guest_role::PATTERN_MAGIC ^ base.add(i) as u64) }
    }
    put("filled ");
    put_dec(words as u64);
    line(" words with the pattern");
    // The host resets the machine here; if it answers instead, the guest is done.
    answer();
    line("bye");
}

// ---- LARGE ----

/// Writes one word into every page of its RAM above the image (from RAM + 8 MiB, clear of
/// the image, .bss and stacks), then reads every one back: KServ answers the faults with 2 MiB
/// blocks, so the host counts a few dozen faults, not one per page.
fn large() {
    let base = guest_dev::RAM_BASE + (8 << 20);
    let end = guest_dev::RAM_BASE + guest_role::LARGE_RAM_SIZE;
    let pages = (end - base) / 4096;
    for page in 0..pages {
        let at = (base + page * 4096) as *mut u64;
        // SAFETY: every page of `[base, end)` lies in this guest's RAM window above everything
        // else it uses; writing faults it in.
        unsafe { at.write_volatile(guest_role::PATTERN_MAGIC ^ at as u64) }
    }
    // SAFETY: as above, reading back what was written.
    let bad = (0..pages)
        .map(|page| (base + page * 4096) as *const u64)
        .filter(|&at| unsafe { at.read_volatile() } != guest_role::PATTERN_MAGIC ^ at as u64)
        .count();
    put("large: touched ");
    put_dec(pages);
    put(" pages, ");
    put_dec(bad as u64);
    line(" wrong");
    line("bye");
}

// ---- SPIN ----

/// Busy for 50 ms of its virtual counter without a single exit: only an interrupt can take the
/// CPU from it.
fn spin() {
    let end = read_sysreg!("cntvct_el0") + ticks(20);
    while read_sysreg!("cntvct_el0") < end {
        core::hint::spin_loop();
    }
    line("spun for 50 ms");
    line("bye");
}

// ---- BINDING ----

/// Prints the text of its second image, which KCore verified along with this one: the data is
/// where it was signed to be (`guest_dev::DATA_IMAGE`).
fn binding() {
    const MAX: u64 = 100;
    put("data image: ");
    for offset in 0..MAX {
        // SAFETY: DATA_IMAGE is inside the guest's RAM, and its page is the data image's, mapped
        // by KCore at verification; a byte load touches nothing else.
        let byte = unsafe { ((guest_dev::DATA_IMAGE + offset) as *const u8).read_volatile() };
        if byte == 0 {
            break;
        }
        putc(byte);
    }
    putc(b'\n');
    line("bye");
}

// ---- SYSREGS ----

/// Writes `value` to the debug register `$name` and reads it back (no `nomem`: an UNDEF's
/// handler writes memory).
macro_rules! write_read {
    ($name:expr, $value:expr) => {{
        let out: u64;
        // SAFETY: a debug or OS lock register at EL1: the hypervisor traps it (MDCR_EL2.TDA,
        // TDOSA, TDRA) and emulates it, or an UNDEF comes back, which the vector counts and skips
        // while EXPECT_UNDEF is set. No memory of this program changes otherwise.
        unsafe {
            asm!(concat!("msr ", $name, ", {v}"), concat!("mrs {o}, ", $name), v = in(reg) $value,
                o = lateout(reg) out, options(nostack))
        };
        out
    }};
}

/// Writes `value` to DBGBVR<n>_EL1 (`op2` 4), DBGBCR<n>_EL1 (5), DBGWVR<n>_EL1 (6) or
/// DBGWCR<n>_EL1 (7) and reads it back; `None` for an `n` above 15.
fn breakpoint_register(n: u64, op2: u64, value: u64) -> Option<u64> {
    macro_rules! each_n {
        ($($n:literal)*) => {
            match (n, op2) {
                $(
                    ($n, 4) => write_read!(concat!("s2_0_c0_c", $n, "_4"), value),
                    ($n, 5) => write_read!(concat!("s2_0_c0_c", $n, "_5"), value),
                    ($n, 6) => write_read!(concat!("s2_0_c0_c", $n, "_6"), value),
                    ($n, 7) => write_read!(concat!("s2_0_c0_c", $n, "_7"), value),
                )*
                _ => return None,
            }
        };
    }
    Some(each_n!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15))
}

/// What a Linux boot does first (issue 13): MDSCR_EL1 with no vectors, the OS lock, the
/// breakpoint and watchpoint registers; then a WFE, and on GICv3 an SGI.
fn sysregs() {
    // Linux writes MDSCR_EL1 in __cpu_setup, MMU off and VBAR_EL1 not set yet: an UNDEF there
    // would go to a vector at 0x200, outside the guest's RAM, and end it.
    let mdscr: u64;
    // SAFETY: VBAR_EL1 is cleared for the two instructions and restored; the MSR/MRS of
    // MDSCR_EL1 trap to the hypervisor. Nothing in memory changes.
    unsafe {
        asm!(
            "mrs {saved}, vbar_el1", "msr vbar_el1, xzr", "isb",
            "msr mdscr_el1, {v}", "mrs {o}, mdscr_el1",
            "msr vbar_el1, {saved}", "isb",
            saved = out(reg) _, v = in(reg) 0xa000u64, o = lateout(reg) mdscr, options(nostack),
        )
    };
    put("MDSCR_EL1 with no vectors: reads ");
    put_hex(mdscr);
    putc(b'\n');

    let before = undef_count();
    expect_undef(true);
    // The OS lock as Linux clears it: OSDLR_EL1 and OSLAR_EL1 written 0, then OSLSR_EL1.
    // SAFETY: as for `write_read`: trapped and emulated, or an UNDEF that is counted and skipped.
    unsafe { asm!("msr osdlr_el1, xzr", "msr oslar_el1, xzr", options(nostack)) };
    let oslsr = read_sysreg!("oslsr_el1");
    put("OSLSR_EL1 = ");
    put_hex(oslsr);
    putc(b'\n');

    // Every breakpoint and watchpoint the guest has (ID_AA64DFR0_EL1.BRPs and WRPs, plus 1),
    // and the other debug registers: each written with a pattern and read back. Not
    // DBGPRCR_EL1, which KCore serves but QEMU 10.0 does not implement (an UNDEF at EL1 that
    // never reaches EL2).
    let dfr0 = read_sysreg!("id_aa64dfr0_el1");
    let (breakpoints, watchpoints) = ((dfr0 >> 12 & 0xf) + 1, (dfr0 >> 20 & 0xf) + 1);
    let pattern = 0x0000_0000_8000_01e5;
    let mut nonzero = 0;
    for (count, op2s) in [(breakpoints, [4, 5]), (watchpoints, [6, 7])] {
        for n in 0..count {
            for op2 in op2s {
                nonzero += u64::from(breakpoint_register(n, op2, pattern) != Some(0));
            }
        }
    }
    let others = [
        write_read!("mdccint_el1", pattern),
        write_read!("oseccr_el1", pattern),
        write_read!("dbgclaimset_el1", pattern),
        write_read!("dbgclaimclr_el1", pattern),
        write_read!("mdscr_el1", pattern),
    ];
    nonzero += others.iter().filter(|&&v| v != 0).count() as u64;

    expect_undef(false);
    put("breakpoints ");
    put_dec(breakpoints);
    put(", watchpoints ");
    put_dec(watchpoints);
    putc(b'\n');
    if nonzero == 0 && mdscr == 0 {
        put("debug registers: all read as zero, ");
    } else {
        put_dec(nonzero);
        put(" debug registers DID NOT read as zero, ");
    }
    put_dec(undef_count() - before);
    line(" UNDEFs");

    // A WFE: KServ must resume the vCPU at once, not idle it until the timer (200 ms away).
    // SEVL sets the event register, the first WFE clears it, the second waits (and traps with
    // HCR_EL2.TWE on hardware; QEMU's TCG never traps WFE, it only yields).
    let start = read_sysreg!("cntvct_el0");
    write_sysreg!("cntv_cval_el0", start.wrapping_add(ticks(5)));
    write_sysreg!("cntv_ctl_el0", 1);
    // SAFETY: SEVL and WFE only set, clear and wait on the event register.
    unsafe { asm!("sevl", "wfe", "wfe", options(nomem, nostack)) };
    let waited = read_sysreg!("cntvct_el0").wrapping_sub(start);
    write_sysreg!("cntv_ctl_el0", 0);
    line(if waited < ticks(50) { "wfe: back before its timer" } else { "wfe: SLEPT until its timer" });

    if answer() == 1 {
        // SAFETY: on GICv3, with HCR_EL2.IMO set, the write traps to the hypervisor, which
        // passes it to the host; nothing is delivered to this guest.
        unsafe { asm!("msr icc_sgi1r_el1, {}", in(reg) guest_role::SYSREGS_SGI1R, options(nostack)) };
        line("ICC_SGI1R_EL1 written");
        let before = undef_count();
        expect_undef(true);
        let _value: u64;
        // SAFETY: ICC_SGI1R_EL1 (S3_0_C12_C11_5) is write-only: the read is an UNDEF, counted and
        // skipped.
        unsafe { asm!("mrs {}, s3_0_c12_c11_5", out(reg) _value, options(nostack)) };
        expect_undef(false);
        line(if undef_count() != before { "ICC_SGI1R_EL1 read: UNDEF" } else { "ICC_SGI1R_EL1 read: READABLE" });
    } else {
        line("ICC_SGI1R_EL1: skipped, no GICv3 system registers");
    }
    line("bye");
}

// ---- VGIC ----

/// The guest's virtual CPU interface: GICv3's ICC system registers (which reach the virtual
/// interface, HCR_EL2.IMO being set) or GICv2's GICV frame, mapped at `GUEST_GICC`.
struct CpuInterface {
    v2: bool,
}

impl CpuInterface {
    const SPURIOUS: u64 = 1023;

    fn gicc(offset: u64, value: Option<u32>) -> u64 {
        let reg = (guest_dev::GUEST_GICC + offset) as *mut u32;
        // SAFETY: the GICV frame the host mapped at GUEST_GICC (device memory, outside RAM):
        // CTLR +0, PMR +4, IAR +0xc, EOIR +0x10 are 32-bit registers.
        unsafe {
            match value {
                Some(v) => {
                    reg.write_volatile(v);
                    0
                }
                None => reg.read_volatile().into(),
            }
        }
    }

    /// Unmasks every priority and enables group 1 (GICv3) / group 0 (GICv2, as Linux uses it).
    fn enable(&self) {
        if self.v2 {
            Self::gicc(0x4, Some(0xff));
            Self::gicc(0x0, Some(1));
        } else {
            write_sysreg!("S3_0_C12_C12_5", 0b111); // ICC_SRE_EL1
            write_sysreg!("S3_0_C4_C6_0", 0xff); // ICC_PMR_EL1
            write_sysreg!("S3_0_C12_C12_7", 1); // ICC_IGRPEN1_EL1
        }
    }

    /// Acknowledges the highest-priority pending interrupt (IAR), spurious if none.
    fn ack(&self) -> u64 {
        let iar = if self.v2 { Self::gicc(0xc, None) } else { read_sysreg!("S3_0_C12_C12_0") };
        iar & 0xff_ffff
    }

    /// Ends interrupt `intid` (EOIR: priority drop and deactivation).
    fn eoi(&self, intid: u64) {
        if self.v2 {
            Self::gicc(0x10, Some(intid as u32));
        } else {
            write_sysreg!("S3_0_C12_C12_1", intid); // ICC_EOIR1_EL1
        }
    }

    /// Waits (interrupts masked: polling IAR) up to a second for an interrupt and returns it.
    fn wait(&self) -> u64 {
        let end = read_sysreg!("cntvct_el0") + ticks(1);
        loop {
            let intid = self.ack();
            if intid != Self::SPURIOUS {
                return intid;
            }
            if read_sysreg!("cntvct_el0") > end {
                line("vgic: no interrupt came");
                system_off();
            }
        }
    }
}

fn vgic() {
    let gic = CpuInterface { v2: answer() == 1 };
    gic.enable();
    line("vgic: interface on");
    // The host injects SPIs 40-44 (priority 0xa0) and SGI 3 (0x80, twice) on this exit: more
    // than the 4 list registers, so the last two come after an underflow refill.
    notify(guest_role::VGIC_READY);
    let mut got = [0; 7];
    for intid in got.iter_mut().take(6) {
        *intid = gic.wait();
        gic.eoi(*intid);
    }
    got[6] = gic.ack();
    // Among equal priorities the hardware picks the order: sort the SPIs.
    got[1..6].sort_unstable();
    if got == [3, 40, 41, 42, 43, 44, CpuInterface::SPURIOUS] {
        line("vgic: INTID 3 first (the highest priority), then 40-44, each once");
    } else {
        put("vgic: got ");
        for intid in got {
            put_dec(intid);
            putc(b' ');
        }
        putc(b'\n');
    }
    // The virtual timer: every 2 ms, five times; KCore masks it when it fires, and arming it
    // again unmasks it.
    let mut ticked = 0;
    for _ in 0..5 {
        let now = read_sysreg!("cntvct_el0");
        write_sysreg!("cntv_cval_el0", now + ticks(500));
        write_sysreg!("cntv_ctl_el0", 1);
        let intid = gic.wait();
        gic.eoi(intid);
        if intid == 27 && read_sysreg!("cntv_ctl_el0") & 0b110 == 0b110 {
            ticked += 1;
        }
    }
    write_sysreg!("cntv_ctl_el0", 0);
    put("vgic: ");
    put_dec(ticked);
    put(" virtual timer interrupts\n");
    line("bye");
}

// ---- RACE ----

/// Holds its vCPU in the Running state for as long as the host says (see `guest_role::RACE`).
fn race() {
    let words = (&raw mut PAGE_A).cast::<u64>();
    let flipped = (&raw mut PAGE_B).cast::<u64>();
    // SAFETY: PAGE_A and PAGE_B are this guest's pages; touch them so that they are mapped
    // before they are shared. PAGE_B holds the secret while it is not shared.
    unsafe {
        words.write_volatile(0);
        fill(flipped, guest_role::RACE_SECRET);
    }
    let status = share(words as u64, PAGE as u64);
    if status != 0 {
        put("share failed: ");
        put_hex(status);
        putc(b'\n');
        return;
    }
    notify(words as u64);
    notify(flipped as u64);
    loop {
        let run = answer();
        if run == 0 {
            line("bye");
            return;
        }
        if run & guest_role::RACE_TOUCH != 0 {
            let gpa = run & !guest_role::RACE_TOUCH;
            // SAFETY: the host names a page of this guest's RAM that nothing else uses; writing
            // it faults it in.
            unsafe { (gpa as *mut u64).write_volatile(run) };
            continue;
        }
        // SAFETY: the first words of PAGE_A, shared with the host, through raw pointers.
        unsafe { words.write_volatile(run) };
        // SAFETY: as above.
        let released = || unsafe { words.add(1).read_volatile() } == run;
        if run & guest_role::RACE_FLIP != 0 {
            let (mut flips, mut refused) = (0, 0);
            while !released() && flips < guest_role::RACE_FLIPS {
                // SAFETY: PAGE_B is this guest's; the host may read it only while it is shared.
                unsafe { fill(flipped, guest_role::RACE_PUBLIC) };
                refused += u64::from(share(flipped as u64, PAGE as u64) != 0);
                relax();
                refused += u64::from(unshare(flipped as u64, PAGE as u64) != 0);
                // SAFETY: as above, and no longer shared.
                unsafe { fill(flipped, guest_role::RACE_SECRET) };
                relax();
                flips += 1;
            }
            // SAFETY: as above.
            unsafe {
                words.add(2).write_volatile(flips);
                words.add(3).write_volatile(refused);
            }
            continue;
        }
        let mut spins = 0;
        while !released() && spins < guest_role::RACE_SPINS {
            relax();
            spins += 1;
        }
    }
}

/// Writes `value` to every word of the page at `page`.
///
/// # Safety
/// `page` is a page of this guest's RAM that nothing else uses as Rust memory.
unsafe fn fill(page: *mut u64, value: u64) {
    for i in 0..PAGE_WORDS {
        // SAFETY: inside the page, as the caller promises.
        unsafe { page.add(i).write_volatile(value) };
    }
}

/// `yield`: under QEMU's round-robin TCG it lets the host's cores run.
fn relax() {
    // SAFETY: yield is a hint; it changes no state.
    unsafe { asm!("yield", options(nomem, nostack)) };
}
