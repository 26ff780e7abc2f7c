//! The answers written as JSON directly: the same bytes serde_json writes
//! for the answers' `Serialize` derives (the tests hold them to it), in
//! a fraction of the instructions.
//!
//! Why not serde_json: its writer escapes a string a byte at a time
//! through a table, keys included, and grows its buffer from 128 bytes.
//! Encoding an answer was 3,500 user-space instructions per ImageReview
//! and 5,650 per AdmissionReview, 8% and 6% of the whole review
//! (callgrind). Here a string is checked 16 bytes at a time (the skim's
//! scan) and copied whole when nothing in it needs an escape (every
//! string of a usual answer), and the buffer is sized once.

use std::collections::BTreeMap;

/// A JSON document being written.
pub(super) struct Writer {
    out: Vec<u8>,
}

impl Writer {
    /// A writer with room for `capacity` bytes.
    pub(super) fn with_capacity(capacity: usize) -> Self {
        Self {
            out: Vec::with_capacity(capacity),
        }
    }

    pub(super) fn finish(self) -> Vec<u8> {
        self.out
    }

    /// Bytes that are JSON already (punctuation, keys that need no
    /// escape).
    pub(super) fn raw(&mut self, json: &str) -> &mut Self {
        self.out.extend_from_slice(json.as_bytes());
        self
    }

    pub(super) fn bool(&mut self, value: bool) -> &mut Self {
        self.raw(if value { "true" } else { "false" })
    }

    pub(super) fn u16(&mut self, value: u16) -> &mut Self {
        self.out
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
        self
    }

    /// `value` as a JSON string, escaped as serde_json escapes it: `"` and
    /// `\` with a backslash, the control characters that have a short
    /// escape with it, the others as `\u00xx`; everything else, DEL and
    /// non-ASCII included, as it is.
    pub(super) fn string(&mut self, value: &str) -> &mut Self {
        let bytes = value.as_bytes();
        self.out.reserve(bytes.len() + 2);
        self.out.push(b'"');
        let mut done = 0;
        while let Some(at) = next_escape(bytes, done) {
            self.out.extend_from_slice(&bytes[done..at]);
            escape(&mut self.out, bytes[at]);
            done = at + 1;
        }
        self.out.extend_from_slice(&bytes[done..]);
        self.out.push(b'"');
        self
    }

    /// `values` as a JSON array of strings.
    pub(super) fn strings(&mut self, values: &[String]) -> &mut Self {
        self.raw("[");
        for (i, value) in values.iter().enumerate() {
            if i > 0 {
                self.raw(",");
            }
            self.string(value);
        }
        self.raw("]")
    }

    /// `map` as a JSON object, in its order.
    pub(super) fn map(&mut self, map: &BTreeMap<String, String>) -> &mut Self {
        self.raw("{");
        for (i, (key, value)) in map.iter().enumerate() {
            if i > 0 {
                self.raw(",");
            }
            self.string(key).raw(":").string(value);
        }
        self.raw("}")
    }
}

/// The bytes of a map's strings and their quotes, colons and commas.
pub(super) fn map_len(map: &BTreeMap<String, String>) -> usize {
    map.iter()
        .map(|(k, v)| k.len() + v.len() + 6)
        .sum::<usize>()
        + 2
}

/// The first byte at or after `from` that a JSON string cannot hold as it
/// is: a control character, `"` or `\`. The skim's scan looks for the
/// same bytes.
fn next_escape(bytes: &[u8], from: usize) -> Option<usize> {
    let at = super::skim::next_string_stop(bytes, from);
    (at < bytes.len()).then_some(at)
}

fn escape(out: &mut Vec<u8>, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    match byte {
        b'"' => out.extend_from_slice(b"\\\""),
        b'\\' => out.extend_from_slice(b"\\\\"),
        b'\x08' => out.extend_from_slice(b"\\b"),
        b'\x0c' => out.extend_from_slice(b"\\f"),
        b'\n' => out.extend_from_slice(b"\\n"),
        b'\r' => out.extend_from_slice(b"\\r"),
        b'\t' => out.extend_from_slice(b"\\t"),
        _ => out.extend_from_slice(&[
            b'\\',
            b'u',
            b'0',
            b'0',
            HEX[usize::from(byte >> 4)],
            HEX[usize::from(byte & 0xf)],
        ]),
    }
}

/// Strings for the answers' proptests: any text, printable ASCII, and
/// ASCII with the control characters that need escapes.
#[cfg(test)]
pub(super) fn any_text() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    prop_oneof![any::<String>(), "[ -~]{0,24}", "[\\x00-\\x7f]{0,24}"]
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn written(value: &str) -> String {
        let mut w = Writer::with_capacity(0);
        w.string(value);
        String::from_utf8(w.finish()).unwrap()
    }

    #[test]
    fn every_byte_that_needs_an_escape_is_found_wherever_it_is() {
        // Each escape at every position of strings up to 40 bytes, so the
        // 16- and 8-byte steps and the tail all meet it.
        let specials: Vec<char> = (0u8..0x20)
            .map(char::from)
            .chain(['"', '\\', '\u{7f}', 'é', '\u{2028}'])
            .collect();
        for len in 0..40 {
            for at in 0..len.max(1) {
                for &c in &specials {
                    let mut s: String = "a".repeat(len);
                    if len > 0 {
                        s.replace_range(at..at + 1, &c.to_string());
                    }
                    assert_eq!(
                        written(&s),
                        serde_json::to_string(&s).unwrap(),
                        "{s:?} ({c:?} at {at})"
                    );
                }
            }
        }
    }

    #[test]
    fn numbers_are_written_as_serde_json_writes_them() {
        for n in [
            0u16, 7, 10, 99, 100, 200, 403, 999, 1000, 9999, 10000, 65535,
        ] {
            let mut w = Writer::with_capacity(0);
            w.u16(n);
            assert_eq!(w.finish(), serde_json::to_vec(&n).unwrap());
        }
    }

    proptest! {
        #[test]
        fn any_string_is_written_as_serde_json_writes_it(s in any::<String>()) {
            prop_assert_eq!(written(&s), serde_json::to_string(&s).unwrap());
        }

        #[test]
        fn any_ascii_string_is_written_as_serde_json_writes_it(s in "[\\x00-\\x7f]{0,64}") {
            prop_assert_eq!(written(&s), serde_json::to_string(&s).unwrap());
        }
    }
}
