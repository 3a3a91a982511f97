//! Variable-length integers (unsigned LEB128: 7 bits per byte, low first, the high bit set on
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
}
