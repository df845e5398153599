//! A small flattened-device-tree writer into fixed buffers, for the device tree KServ gives a
//! Linux VM. KServ has no heap, and the `vm-fdt` crate needs `alloc`, so KServ writes the blob
//! itself (DTSpec v0.4, version 17): a header, an empty memory reservation block, the structure
//! block and the strings block (property names, each stored once).

const MAGIC: u32 = 0xd00d_feed;
const BEGIN_NODE: u32 = 1;
const END_NODE: u32 = 2;
const PROP: u32 = 3;
const END: u32 = 9;
const HEADER_LEN: usize = 40;
/// One empty reservation entry (address 0, size 0) ends the block.
const RESERVE_LEN: usize = 16;

/// The blob did not fit in the buffer it was written to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Full;

/// A device tree being written: structure block and strings block, `S` and `T` bytes at most.
pub struct FdtWriter<const S: usize, const T: usize> {
    structs: [u8; S],
    structs_len: usize,
    strings: [u8; T],
    strings_len: usize,
    depth: usize,
    full: bool,
}

impl<const S: usize, const T: usize> FdtWriter<S, T> {
    pub const fn new() -> Self {
        FdtWriter { structs: [0; S], structs_len: 0, strings: [0; T], strings_len: 0, depth: 0, full: false }
    }

    /// Appends `parts` back to back, then pads to the next 4-byte boundary (the padding bytes
    /// are the buffer's zeros).
    fn put_all(&mut self, parts: &[&[u8]]) {
        for part in parts {
            let end = self.structs_len + part.len();
            match self.structs.get_mut(self.structs_len..end) {
                Some(slot) => slot.copy_from_slice(part),
                None => self.full = true,
            }
            self.structs_len = end;
        }
        self.structs_len = self.structs_len.next_multiple_of(4);
        self.full |= self.structs_len > S;
    }

    fn put(&mut self, bytes: &[u8]) {
        self.put_all(&[bytes]);
    }

    fn token(&mut self, token: u32) {
        self.put(&token.to_be_bytes());
    }

    /// The offset of `name` in the strings block, added if it is not there yet.
    fn string(&mut self, name: &str) -> u32 {
        let mut at = 0;
        while at < self.strings_len {
            let len = self.strings[at..self.strings_len].iter().position(|&b| b == 0).unwrap_or(0);
            if &self.strings[at..at + len] == name.as_bytes() {
                return at as u32;
            }
            at += len + 1;
        }
        let end = self.strings_len + name.len() + 1;
        match self.strings.get_mut(self.strings_len..end) {
            Some(slot) => {
                slot[..name.len()].copy_from_slice(name.as_bytes());
                slot[name.len()] = 0;
                self.strings_len = end;
            }
            None => self.full = true,
        }
        at as u32
    }

    pub fn begin_node(&mut self, name: &str) {
        self.token(BEGIN_NODE);
        self.put_all(&[name.as_bytes(), &[0]]);
        self.depth += 1;
    }

    pub fn end_node(&mut self) {
        self.token(END_NODE);
        self.depth = self.depth.saturating_sub(1);
    }

    /// A property of raw bytes.
    pub fn property(&mut self, name: &str, value: &[u8]) {
        let name_offset = self.string(name);
        self.token(PROP);
        self.put(&(value.len() as u32).to_be_bytes());
        self.put(&name_offset.to_be_bytes());
        if !value.is_empty() {
            self.put(value);
        }
    }

    pub fn property_null(&mut self, name: &str) {
        self.property(name, &[]);
    }

    /// A string list: each string NUL-terminated, one after the other.
    pub fn property_strings(&mut self, name: &str, values: &[&str]) {
        let name_offset = self.string(name);
        let len: usize = values.iter().map(|v| v.len() + 1).sum();
        self.token(PROP);
        self.put(&(len as u32).to_be_bytes());
        self.put(&name_offset.to_be_bytes());
        for value in values {
            self.put_all(&[value.as_bytes(), &[0]]);
            // Strings follow each other unpadded: step back over the padding.
            self.structs_len -= (value.len() + 1).next_multiple_of(4) - (value.len() + 1);
        }
        self.structs_len = self.structs_len.next_multiple_of(4);
    }

    pub fn property_string(&mut self, name: &str, value: &str) {
        self.property_strings(name, &[value]);
    }

    /// Cells (big-endian u32s).
    pub fn property_cells(&mut self, name: &str, cells: &[u32]) {
        let mut bytes = [0u8; 64];
        let Some(slot) = bytes.get_mut(..cells.len() * 4) else {
            self.full = true;
            return;
        };
        for (chunk, cell) in slot.chunks_exact_mut(4).zip(cells) {
            chunk.copy_from_slice(&cell.to_be_bytes());
        }
        self.property(name, slot);
    }

    pub fn property_u32(&mut self, name: &str, value: u32) {
        self.property_cells(name, &[value]);
    }

    pub fn property_u64(&mut self, name: &str, value: u64) {
        self.property(name, &value.to_be_bytes());
    }

    /// Writes the blob into `out`; returns its length. Every node must have been ended.
    pub fn finish(mut self, out: &mut [u8]) -> Result<usize, Full> {
        self.token(END);
        let off_struct = HEADER_LEN + RESERVE_LEN;
        let off_strings = off_struct + self.structs_len;
        let total = off_strings + self.strings_len;
        if self.full || self.depth != 0 || total > out.len() {
            return Err(Full);
        }
        let header = [
            MAGIC,
            total as u32,
            off_struct as u32,
            off_strings as u32,
            HEADER_LEN as u32,
            17,
            16,
            0,
            self.strings_len as u32,
            self.structs_len as u32,
        ];
        for (chunk, word) in out[..HEADER_LEN].chunks_exact_mut(4).zip(header) {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
        out[HEADER_LEN..off_struct].fill(0);
        out[off_struct..off_strings].copy_from_slice(&self.structs[..self.structs_len]);
        out[off_strings..total].copy_from_slice(&self.strings[..self.strings_len]);
        Ok(total)
    }
}
