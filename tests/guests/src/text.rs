//! Number formatting without `core::fmt` (which would pull in far more code than the guest needs).

/// Room for `0x` and 16 hex digits, or 20 decimal digits.
pub const MAX_LEN: usize = 20;

/// `value` as `0x` and lowercase hex digits without leading zeros (as `{:#x}` prints it), at the
/// end of `buf`; returns the start of the text.
pub fn hex(value: u64, buf: &mut [u8; MAX_LEN]) -> usize {
    let mut at = MAX_LEN;
    let mut v = value;
    loop {
        at -= 1;
        buf[at] = b"0123456789abcdef"[(v & 0xf) as usize];
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    buf[at - 1] = b'x';
    buf[at - 2] = b'0';
    at - 2
}

/// `value` in decimal at the end of `buf`; returns the start of the text.
pub fn decimal(value: u64, buf: &mut [u8; MAX_LEN]) -> usize {
    let mut at = MAX_LEN;
    let mut v = value;
    loop {
        at -= 1;
        buf[at] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(f: fn(u64, &mut [u8; MAX_LEN]) -> usize, value: u64) -> String {
        let mut buf = [0; MAX_LEN];
        let at = f(value, &mut buf);
        String::from_utf8(buf[at..].to_vec()).unwrap()
    }

    #[test]
    fn formats_like_core_fmt() {
        for v in [0, 1, 9, 10, 0xabc, 0x8000_1000, u64::MAX] {
            assert_eq!(show(hex, v), format!("{v:#x}"));
            assert_eq!(show(decimal, v), format!("{v}"));
        }
    }
}
