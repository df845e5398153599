//! SHA-256 (FIPS 180-4) over memory KCore owns: the per-image prehash of boot verification.
//!
//! The compression function is a machine primitive ([`Machine::sha256_blocks`]): the ARMv8
//! SHA-256 instructions where the CPU has them (`aarch64::sha256_instructions`, chosen once at boot after a
//! known-answer test), [`compress_portable`] otherwise (the Raspberry Pi 4's Cortex-A72 has no
//! crypto extensions) and in the host tests' machine model. This module adds what is the same on
//! every path: the message padding and the length, so each path is checked against the same
//! digests.

use super::Machine;

/// SHA-256's block: 64 bytes.
pub const BLOCK: u64 = 64;
/// SHA-256's initial hash value H(0) (FIPS 180-4, 5.3.3).
pub const INITIAL: [u32; 8] =
    [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];

/// The compression function in portable code (RustCrypto `sha2`): the fallback, and the model's.
pub fn compress_portable(state: &mut [u32; 8], blocks: &[[u8; 64]]) {
    for block in blocks {
        sha2::compress256(state, core::slice::from_ref(block.into()));
    }
}

/// The known-answer test each compression path must pass before KCore hashes an image with it:
/// the two-block message of FIPS 180-2, Appendix B.2, fully padded.
pub fn known_answer_holds(compress: impl Fn(&mut [u32; 8], &[[u8; 64]])) -> bool {
    const MESSAGE: &[u8; 56] = b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    const DIGEST: [u32; 8] =
        [0x248d6a61, 0xd20638b8, 0xe5c02693, 0x0c3e6039, 0xa33ce459, 0x64ff2167, 0xf6ecedd4, 0x19db06c1];
    let mut blocks = [[0u8; 64]; 2];
    blocks[0][..56].copy_from_slice(MESSAGE);
    blocks[0][56] = 0x80;
    blocks[1][56..].copy_from_slice(&(56u64 * 8).to_be_bytes());
    let mut state = INITIAL;
    compress(&mut state, &blocks);
    state == DIGEST
}

/// A SHA-256 in progress over bytes read from memory through a [`Machine`].
#[derive(Clone, Debug)]
pub struct Sha256 {
    state: [u32; 8],
    /// Bytes hashed so far (compressed or buffered).
    len: u64,
    /// The bytes of an incomplete block.
    buffer: [u8; 64],
}

impl Default for Sha256 {
    fn default() -> Self {
        Sha256 { state: INITIAL, len: 0, buffer: [0; 64] }
    }
}

impl Sha256 {
    /// Hashes the `len` bytes of memory at `pa` (which the caller owns): whole blocks straight
    /// from memory while no partial block is buffered, the rest through the buffer.
    pub fn update_memory(&mut self, m: &impl Machine, pa: u64, len: u64) {
        let mut pos = 0;
        while pos < len {
            let buffered = self.len % BLOCK;
            if buffered == 0 && len - pos >= BLOCK && (pa + pos).is_multiple_of(8) {
                let blocks = (len - pos) / BLOCK;
                m.sha256_memory(&mut self.state, pa + pos, blocks);
                pos += blocks * BLOCK;
                self.len += blocks * BLOCK;
                continue;
            }
            let at = pa + pos;
            let byte = m.read_u64(at & !7).to_le_bytes()[(at % 8) as usize];
            self.buffer[buffered as usize] = byte;
            pos += 1;
            self.len += 1;
            if self.len.is_multiple_of(BLOCK) {
                m.sha256_blocks(&mut self.state, core::slice::from_ref(&self.buffer));
            }
        }
    }

    /// The digest: the buffered bytes, the `1` bit, zeros, and the length in bits (FIPS 180-4,
    /// 5.1.1).
    pub fn finalize(mut self, m: &impl Machine) -> [u8; 32] {
        let buffered = (self.len % BLOCK) as usize;
        let mut tail = [[0u8; 64]; 2];
        tail[0][..buffered].copy_from_slice(&self.buffer[..buffered]);
        tail[0][buffered] = 0x80;
        let blocks = if buffered < 56 { 1 } else { 2 };
        let bits = if crate::mutation::planted(crate::mutation::Mutation::Sha256LengthInBytes) {
            self.len
        } else {
            self.len * 8
        };
        tail[blocks - 1][56..].copy_from_slice(&bits.to_be_bytes());
        m.sha256_blocks(&mut self.state, &tail[..blocks]);
        let mut digest = [0u8; 32];
        for (out, word) in digest.chunks_exact_mut(4).zip(self.state) {
            out.copy_from_slice(&word.to_be_bytes());
        }
        digest
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::model::ModelMachine;
    use proptest::prelude::*;
    use sha2::Digest;

    /// Writes `bytes` into the model's memory from `pa` (8-byte aligned) on.
    fn place(m: &ModelMachine, pa: u64, bytes: &[u8]) {
        for (i, chunk) in bytes.chunks(8).enumerate() {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            m.write_u64(pa + 8 * i as u64, u64::from_le_bytes(word));
        }
    }

    /// SHA-256 of `bytes` as KCore computes it, fed in pieces of the given lengths.
    fn kcore_digest(bytes: &[u8], pieces: &[usize]) -> [u8; 32] {
        let m = ModelMachine::new();
        let base = 0x4000_0000;
        place(&m, base, bytes);
        let mut hash = Sha256::default();
        let mut at = 0;
        for &piece in pieces.iter().chain([&bytes.len()]) {
            let piece = piece.min(bytes.len() - at);
            hash.update_memory(&m, base + at as u64, piece as u64);
            at += piece;
        }
        hash.finalize(&m)
    }

    #[test]
    fn the_portable_compression_passes_the_known_answer_test() {
        assert!(known_answer_holds(compress_portable));
        assert!(!known_answer_holds(|state, blocks| compress_portable(state, &blocks[..1])));
    }

    #[test]
    fn known_vectors() {
        let hex = |d: [u8; 32]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
        // FIPS 180-2, Appendix B.1 and B.2, and the empty message.
        assert_eq!(hex(kcore_digest(b"abc", &[])), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(hex(kcore_digest(b"", &[])), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        let two = b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
        assert_eq!(hex(kcore_digest(two, &[3])), "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    }

    proptest! {
        /// KCore's SHA-256 (padding and length here, the compression on the model's path) is
        /// RustCrypto's, for any bytes fed in any pieces, around every block boundary.
        #[test]
        fn agrees_with_rustcrypto(bytes in proptest::collection::vec(any::<u8>(), 0..300),
                                  pieces in proptest::collection::vec(0usize..130, 0..4)) {
            prop_assert_eq!(kcore_digest(&bytes, &pieces), <[u8; 32]>::from(sha2::Sha256::digest(&bytes)));
        }
    }

    #[test]
    fn agreement_catches_a_length_in_bytes() {
        use crate::mutation::{catches, Mutation};
        let inputs = (proptest::collection::vec(any::<u8>(), 0..300), proptest::collection::vec(0usize..130, 0..4));
        catches(Mutation::Sha256LengthInBytes, 64, inputs, |(bytes, pieces)| {
            prop_assert_eq!(kcore_digest(&bytes, &pieces), <[u8; 32]>::from(sha2::Sha256::digest(&bytes)));
            Ok(())
        });
    }
}
