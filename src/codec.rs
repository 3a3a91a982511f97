//! Every byte format's building blocks, in one place: FNV-1a, the fixed-width framing, and
//! variable-length integers (unsigned LEB128: 7 bits per byte, low first, the high bit set on
//! every byte but the last): the one encoding of lengths in driftsync's packed formats — the
//! legacy record (`profile`), the packed baselines (`baseline`) and the baseline chunks of the
//! state file (`state::chunks`). Bytes written by one reader's version are read by every other,
//! so the encoding never changes; the tests pin it.

/// Appends `value` as LEB128.
#[inline]
pub fn write_varint(out: &mut Vec<u8>, mut value: usize) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reads a LEB128 value from the start of `bytes`: the value and the bytes after it; `None`
/// when the bytes end first or the value does not fit in ten bytes.
#[inline]
pub fn read_varint(bytes: &[u8]) -> Option<(usize, &[u8])> {
    let mut value = 0usize;
    for (i, &byte) in bytes.iter().enumerate().take(10) {
        value |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, &bytes[i + 1..]));
        }
    }
    None
}

/// Bytes of a [`put_framed`] length.
pub const FRAME_BYTES: usize = 4;

/// Appends `bytes` after its length as a fixed-width little-endian `u32`: the framing of the
/// in-memory layouts whose items are stepped over by offset (the legacy table's stored sets,
/// a pass's collected baseline sets). Callers keep items below 4 GiB.
#[inline]
pub fn put_framed(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Reads a [`put_framed`] item from the start of `bytes`: the item and the bytes after it;
/// `None` when the bytes end first.
#[inline]
pub fn take_framed(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (length, rest) = bytes.split_first_chunk::<FRAME_BYTES>()?;
    let length = u32::from_le_bytes(*length) as usize;
    (rest.len() >= length).then(|| rest.split_at(length))
}

/// FNV-1a's 64-bit offset basis: the state [`fnv1a`] starts from.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

/// 64-bit FNV-1a of `bytes`, continuing from `state` ([`FNV_OFFSET`] to start): stable across
/// builds and platforms, unlike std's hashers. The hashes it makes are stored (baselines) and
/// shared between processes (the run lock's key), so it never changes; the tests pin it.
pub const fn fnv1a(state: u64, bytes: &[u8]) -> u64 {
    let mut hash = state;
    let mut index = 0;
    while index < bytes.len() {
        hash = (hash ^ bytes[index] as u64).wrapping_mul(FNV_PRIME);
        index += 1;
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_encoding_is_leb128_and_never_changes() {
        for (value, bytes) in [
            (0usize, &[0x00u8][..]),
            (1, &[0x01]),
            (127, &[0x7F]),
            (128, &[0x80, 0x01]),
            (300, &[0xAC, 0x02]),
            (16_384, &[0x80, 0x80, 0x01]),
        ] {
            let mut out = Vec::new();
            write_varint(&mut out, value);
            assert_eq!(out, bytes, "{value}");
            out.push(0xEE);
            assert_eq!(read_varint(&out), Some((value, &[0xEE][..])), "{value}");
        }
    }

    #[test]
    fn cut_short_or_endless_values_are_refused() {
        assert_eq!(read_varint(&[]), None);
        assert_eq!(read_varint(&[0x80]), None);
        assert_eq!(read_varint(&[0xFF; 11]), None);
        let mut out = Vec::new();
        write_varint(&mut out, usize::MAX);
        assert_eq!(read_varint(&out), Some((usize::MAX, &[][..])));
    }

    #[test]
    fn framed_items_are_a_u32_length_then_the_bytes() {
        let mut out = Vec::new();
        put_framed(&mut out, b"ab");
        put_framed(&mut out, b"");
        assert_eq!(out, [2, 0, 0, 0, b'a', b'b', 0, 0, 0, 0]);
        let (first, rest) = take_framed(&out).unwrap();
        assert_eq!((first, rest.len()), (&b"ab"[..], FRAME_BYTES));
        assert_eq!(take_framed(rest), Some((&[][..], &[][..])));
        assert_eq!(take_framed(&out[..5]), None, "cut short");
        assert_eq!(take_framed(&out[..3]), None, "no whole length");
    }

    #[test]
    fn fnv1a_is_the_published_function() {
        // The reference values of the FNV test suite (draft-eastlake-fnv): "" and "a".
        assert_eq!(fnv1a(FNV_OFFSET, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(FNV_OFFSET, b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(
            fnv1a(fnv1a(FNV_OFFSET, b"foo"), b"bar"),
            fnv1a(FNV_OFFSET, b"foobar")
        );
    }
}
