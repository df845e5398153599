//! The board this image is built for, chosen by cargo feature (`qemu-virt` or `rpi4`).
//! Only the boot sequence reads it: the layers get what they need as arguments.

use corevisor_boards::Board;

#[cfg(feature = "rpi4")]
pub const BOARD: &Board = &corevisor_boards::rpi4::BOARD;
#[cfg(not(feature = "rpi4"))]
pub const BOARD: &Board = &corevisor_boards::qemu_virt::BOARD;
