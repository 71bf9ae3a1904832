//! Payload masking (RFC 6455 §5.3): `transformed[i] = original[i] ^ key[i % 4]`.
//!
//! The fast path XORs 64 bytes a step with a pre-rotated key block, a shape the compiler turns
//! into SIMD without `unsafe`; [`apply_mask_scalar`] is the byte-at-a-time reference it is
//! tested against.

/// XOR `buf` with `key`, where `buf[0]` is byte `offset` of the frame payload.
///
/// Masking is its own inverse, so this both masks and unmasks. `offset` lets a payload that
/// arrives in pieces be unmasked piece by piece.
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    let key = rotate(key, offset);
    let mut block = [0u8; 64];
    for (i, b) in block.iter_mut().enumerate() {
        *b = key[i % 4];
    }
    let mut chunks = buf.chunks_exact_mut(64);
    for chunk in &mut chunks {
        for (b, k) in chunk.iter_mut().zip(block.iter()) {
            *b ^= k;
        }
    }
    for (b, k) in chunks.into_remainder().iter_mut().zip(block.iter()) {
        *b ^= k;
    }
}

/// The byte-at-a-time reference implementation of [`apply_mask`].
pub fn apply_mask_scalar(buf: &mut [u8], key: [u8; 4], offset: usize) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= key[(offset + i) % 4];
    }
}

fn rotate(key: [u8; 4], offset: usize) -> [u8; 4] {
    let mut k = key;
    k.rotate_left(offset % 4);
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc_example() {
        // RFC 6455 §5.7: a masked "Hello" with key 0x37fa213d.
        let mut data = *b"\x7f\x9f\x4d\x51\x58";
        apply_mask(&mut data, [0x37, 0xfa, 0x21, 0x3d], 0);
        assert_eq!(&data, b"Hello");
    }

    #[test]
    fn every_alignment_and_offset_matches_scalar() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        let key = [0xde, 0xad, 0xbe, 0xef];
        for start in 0..4 {
            for offset in 0..8 {
                for len in [0, 1, 3, 7, 8, 63, 64, 65, 129, 296] {
                    let mut fast = data[start..start + len].to_vec();
                    let mut slow = fast.clone();
                    apply_mask(&mut fast, key, offset);
                    apply_mask_scalar(&mut slow, key, offset);
                    assert_eq!(fast, slow, "start {start} offset {offset} len {len}");
                }
            }
        }
    }

    proptest! {
        #[test]
        fn fast_equals_scalar(data in proptest::collection::vec(any::<u8>(), 0..600),
                              key in any::<[u8; 4]>(), offset in 0usize..1000) {
            let mut fast = data.clone();
            let mut slow = data;
            apply_mask(&mut fast, key, offset);
            apply_mask_scalar(&mut slow, key, offset);
            prop_assert_eq!(fast, slow);
        }

        #[test]
        fn piecewise_equals_whole(data in proptest::collection::vec(any::<u8>(), 0..600),
                                  key in any::<[u8; 4]>(), cut in 0usize..600) {
            let cut = cut.min(data.len());
            let mut whole = data.clone();
            apply_mask(&mut whole, key, 0);
            let mut pieces = data;
            let (a, b) = pieces.split_at_mut(cut);
            apply_mask(a, key, 0);
            apply_mask(b, key, cut);
            prop_assert_eq!(whole, pieces);
        }
    }
}
