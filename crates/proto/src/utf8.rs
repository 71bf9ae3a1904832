//! Incremental UTF-8 validation that fails fast (RFC 6455 §8.1).
//!
//! A text message may be split across frames and a frame may arrive in pieces, so a code point
//! can straddle any boundary. The validator keeps at most three bytes of an unfinished code
//! point and rejects a sequence as soon as its first invalid byte is seen, not at the end of
//! the message.

use crate::error::ProtocolError;

/// Validates a stream of bytes as UTF-8, one piece at a time.
#[derive(Debug, Clone, Default)]
pub struct Utf8Validator {
    partial: [u8; 4],
    partial_len: u8,
}

impl Utf8Validator {
    /// A validator at the start of a message.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            partial: [0; 4],
            partial_len: 0,
        }
    }

    /// Validate the next piece of the message.
    ///
    /// # Errors
    /// [`ProtocolError::InvalidUtf8`] as soon as the bytes seen so far cannot be the start of
    /// valid UTF-8.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), ProtocolError> {
        if self.partial_len > 0 {
            let have = usize::from(self.partial_len);
            let need = sequence_len(self.partial[0]) - have;
            let take = need.min(data.len());
            self.partial[have..have + take].copy_from_slice(&data[..take]);
            self.partial_len += take as u8;
            data = &data[take..];
            match std::str::from_utf8(&self.partial[..usize::from(self.partial_len)]) {
                Ok(_) => self.partial_len = 0,
                // Still a valid prefix: `data` ran out before the code point ended.
                Err(e) if e.error_len().is_none() => return Ok(()),
                Err(_) => return Err(ProtocolError::InvalidUtf8),
            }
        }
        match simdutf8::compat::from_utf8(data) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() => {
                let tail = &data[e.valid_up_to()..];
                self.partial[..tail.len()].copy_from_slice(tail);
                self.partial_len = tail.len() as u8;
                Ok(())
            }
            Err(_) => Err(ProtocolError::InvalidUtf8),
        }
    }

    /// The message ended: no code point may be left unfinished.
    ///
    /// # Errors
    /// [`ProtocolError::InvalidUtf8`] if the message stopped inside a code point.
    pub fn finish(&mut self) -> Result<(), ProtocolError> {
        let ok = self.partial_len == 0;
        self.partial_len = 0;
        if ok {
            Ok(())
        } else {
            Err(ProtocolError::InvalidUtf8)
        }
    }

    /// Whether a code point is unfinished.
    #[must_use]
    pub const fn is_partial(&self) -> bool {
        self.partial_len != 0
    }
}

/// Validate a complete message in one step.
///
/// # Errors
/// [`ProtocolError::InvalidUtf8`] if `data` is not UTF-8.
pub fn validate(data: &[u8]) -> Result<(), ProtocolError> {
    simdutf8::basic::from_utf8(data)
        .map(|_| ())
        .map_err(|_| ProtocolError::InvalidUtf8)
}

/// The length of the sequence a (valid) lead byte starts.
const fn sequence_len(lead: u8) -> usize {
    match lead {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn feed_split(data: &[u8], cuts: &[usize]) -> Result<(), ProtocolError> {
        let mut v = Utf8Validator::new();
        let mut start = 0;
        for &cut in cuts {
            v.feed(&data[start..cut])?;
            start = cut;
        }
        v.feed(&data[start..])?;
        v.finish()
    }

    #[test]
    fn valid_text_split_at_every_byte() {
        let text = "κόσμε — hello 𝄞 € \u{10FFFF}".as_bytes();
        for cut in 0..=text.len() {
            assert_eq!(feed_split(text, &[cut]), Ok(()), "cut {cut}");
        }
        let all: Vec<usize> = (0..=text.len()).collect();
        assert_eq!(feed_split(text, &all), Ok(()));
    }

    #[test]
    fn fails_at_the_first_invalid_byte() {
        // U+110000 (F4 90 ...) is out of range: the second byte alone is enough to know.
        let mut v = Utf8Validator::new();
        v.feed(b"ok\xF4").unwrap();
        assert_eq!(v.feed(b"\x90"), Err(ProtocolError::InvalidUtf8));
        // A surrogate (ED A0 80) is rejected at its second byte.
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(b"\xED\xA0"), Err(ProtocolError::InvalidUtf8));
        // Overlong encodings.
        assert_eq!(
            Utf8Validator::new().feed(b"\xC0\xAF"),
            Err(ProtocolError::InvalidUtf8)
        );
        assert_eq!(
            Utf8Validator::new().feed(b"\xE0\x80"),
            Err(ProtocolError::InvalidUtf8)
        );
    }

    #[test]
    fn unfinished_code_point_fails_at_finish() {
        let mut v = Utf8Validator::new();
        v.feed(b"abc\xE2\x82").unwrap();
        assert!(v.is_partial());
        assert_eq!(v.finish(), Err(ProtocolError::InvalidUtf8));
    }

    proptest! {
        #[test]
        fn agrees_with_std(data in proptest::collection::vec(any::<u8>(), 0..64),
                           cuts in proptest::collection::vec(0usize..64, 0..6)) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
            cuts.sort_unstable();
            let expect = std::str::from_utf8(&data).is_ok();
            prop_assert_eq!(feed_split(&data, &cuts).is_ok(), expect);
            prop_assert_eq!(validate(&data).is_ok(), expect);
        }

        #[test]
        fn valid_strings_pass_any_split(s in "\\PC{0,40}", cuts in proptest::collection::vec(0usize..200, 0..6)) {
            let data = s.as_bytes();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
            cuts.sort_unstable();
            prop_assert_eq!(feed_split(data, &cuts), Ok(()));
        }

        /// An invalid byte is reported while feeding the piece that contains it, never later.
        #[test]
        fn rejects_in_the_piece_with_the_error(prefix in "\\PC{0,20}", cut in 0usize..40) {
            let mut data = prefix.into_bytes();
            let bad_at = data.len();
            data.extend_from_slice(b"\xFFtail");
            let cut = cut.min(data.len());
            let mut v = Utf8Validator::new();
            let first = v.feed(&data[..cut]);
            if cut > bad_at {
                prop_assert!(first.is_err());
            } else {
                prop_assert!(first.is_ok());
                prop_assert!(v.feed(&data[cut..]).is_err());
            }
        }
    }
}
