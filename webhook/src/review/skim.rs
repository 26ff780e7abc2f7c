//! A fast first pass over a review body: a serde `Deserializer` for JSON
//! that reads the few fields a review keeps and skims over the rest, or
//! gives up. When it gives up, serde_json decodes the body and decides
//! what it means, errors included; so this module never has to be right
//! about a body it is unsure of, only never to accept one serde_json would
//! refuse, nor read one differently.
//!
//! Why: an AdmissionReview's Pod is mostly what the webhook skips
//! (`managedFields`, `status`, every field of a container but its name and
//! image), and serde_json skips a value token by token through its
//! generic reader. That was 44,000 of the 62,000 instructions of decoding
//! the bench's 3.4 KB Pod (callgrind). simd-json (stage 1 on AVX2) and
//! sonic-rs (SSE2, as this project builds) were measured on the same body
//! and were no faster (45,000 to 68,000), because they too build or visit
//! every token.
//!
//! Where it gives up, always (serde_json then decides):
//! - anything that is not JSON (RFC 8259), or more than [`MAX_DEPTH`] deep;
//! - a number anywhere but in a skipped value (no review field is one);
//! - a key with an escape sequence;
//! - any error of the types being built (a missing or duplicate field, a
//!   wrong type).
//!
//! Kept strings with escape sequences are unescaped by serde_json itself.
//! <https://www.rfc-editor.org/rfc/rfc8259>

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

/// Nesting deeper than this is left to serde_json (whose own limit is 128).
pub const MAX_DEPTH: usize = 64;

/// Decodes `text` into `T`, or `None` where serde_json must decide.
pub fn from_str<'de, T: de::Deserialize<'de>>(text: &'de str) -> Option<T> {
    let mut reader = Reader {
        text,
        bytes: text.as_bytes(),
        pos: 0,
        depth: 0,
    };
    let value = T::deserialize(&mut reader).ok()?;
    reader.skip_whitespace();
    (reader.pos == reader.bytes.len()).then_some(value)
}

/// Why the first pass gave up; never shown: serde_json's error is.
#[derive(Debug)]
pub struct GiveUp;

impl std::fmt::Display for GiveUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("left to serde_json")
    }
}

impl std::error::Error for GiveUp {}

impl de::Error for GiveUp {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        GiveUp
    }
}

type Result<T> = std::result::Result<T, GiveUp>;

struct Reader<'de> {
    text: &'de str,
    bytes: &'de [u8],
    pos: usize,
    depth: usize,
}

/// Bytes that end a run of plain string bytes: `"`, `\` and the control
/// characters JSON forbids raw in a string.
const fn string_stops() -> [bool; 256] {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
}
const STRING_STOPS: [bool; 256] = string_stops();

/// The string stops among the 8 bytes of `chunk` (little-endian): the high
/// bit of the first stop's byte is the mask's lowest set bit. The bit trick
/// serde_json's reader also uses; bits above the first stop may be wrong,
/// so only the lowest is read.
#[inline(always)]
fn string_stops_in(chunk: u64) -> u64 {
    const ONES: u64 = u64::MAX / 255;
    const HIGHS: u64 = ONES << 7;
    let below_space = chunk.wrapping_sub(ONES * 0x20) & !chunk;
    let quote = chunk ^ (ONES * b'"' as u64);
    let quote = quote.wrapping_sub(ONES) & !quote;
    let backslash = chunk ^ (ONES * b'\\' as u64);
    let backslash = backslash.wrapping_sub(ONES) & !backslash;
    (below_space | quote | backslash) & HIGHS
}

/// The first string stop in `bytes` from `i` on, or `bytes.len()`: 16
/// bytes at a time where SSE2 is (every x86_64), then 8, then one. The
/// stops are also what a JSON writer must escape (`answer_json`).
#[inline(always)]
pub(super) fn next_string_stop(bytes: &[u8], mut i: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{
            _mm_cmpeq_epi8, _mm_loadu_si128, _mm_max_epu8, _mm_movemask_epi8, _mm_or_si128,
            _mm_set1_epi8,
        };
        while let Some(chunk) = bytes.get(i..i + 16) {
            // SAFETY: SSE2 is in every x86_64 CPU, and the load reads the 16
            // bytes of `chunk`, with no alignment required.
            let stops = unsafe {
                let v = _mm_loadu_si128(chunk.as_ptr().cast());
                let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
                let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
                // Below 0x20 where the larger of it and 0x1f is 0x1f.
                let low = _mm_set1_epi8(0x1f);
                let control = _mm_cmpeq_epi8(_mm_max_epu8(v, low), low);
                _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, backslash), control))
            };
            if stops != 0 {
                return i + stops.trailing_zeros() as usize;
            }
            i += 16;
        }
    }
    while let Some(chunk) = bytes
        .get(i..i + 8)
        .and_then(|c| <[u8; 8]>::try_from(c).ok())
    {
        let stops = string_stops_in(u64::from_le_bytes(chunk));
        if stops != 0 {
            return i + stops.trailing_zeros() as usize / 8;
        }
        i += 8;
    }
    while i < bytes.len() && !STRING_STOPS[bytes[i] as usize] {
        i += 1;
    }
    i
}

impl<'de> Reader<'de> {
    #[inline(always)]
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    /// JSON's four whitespace bytes. The apiserver writes none, so the
    /// first test nearly always ends it.
    #[inline(always)]
    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    /// The next byte after whitespace, not consumed.
    #[inline(always)]
    fn next_token(&mut self) -> Result<u8> {
        self.skip_whitespace();
        self.peek().ok_or(GiveUp)
    }

    fn expect(&mut self, byte: u8) -> Result<()> {
        if self.next_token()? != byte {
            return Err(GiveUp);
        }
        self.pos += 1;
        Ok(())
    }

    fn literal(&mut self, word: &[u8]) -> Result<()> {
        if self.bytes[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(GiveUp)
        }
    }

    fn enter(&mut self) -> Result<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(GiveUp);
        }
        Ok(())
    }

    /// From just after an opening `"` to just after its closing one,
    /// checking every escape. Returns where the contents end and whether
    /// they hold an escape.
    #[inline(always)]
    fn scan_string(&mut self) -> Result<(usize, bool)> {
        let bytes = self.bytes;
        let mut i = self.pos;
        let mut escaped = false;
        loop {
            i = next_string_stop(bytes, i);
            match bytes.get(i) {
                Some(b'"') => {
                    self.pos = i + 1;
                    return Ok((i, escaped));
                }
                Some(b'\\') => {
                    escaped = true;
                    i += match bytes.get(i + 1) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => 2,
                        Some(b'u')
                            if bytes
                                .get(i + 2..i + 6)
                                .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit)) =>
                        {
                            6
                        }
                        _ => return Err(GiveUp),
                    };
                }
                // A raw control character, or the end of the body.
                _ => return Err(GiveUp),
            }
        }
    }

    /// A number, by RFC 8259's grammar: `-? (0 | [1-9][0-9]*) (. [0-9]+)?
    /// ([eE] [+-]? [0-9]+)?`.
    fn skip_number(&mut self) -> Result<()> {
        let bytes = self.bytes;
        let digits = |mut i: usize| {
            let start = i;
            while bytes.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            (i > start).then_some(i)
        };
        let mut i = self.pos;
        if bytes.get(i) == Some(&b'-') {
            i += 1;
        }
        i = match bytes.get(i) {
            Some(b'0') => i + 1,
            Some(b'1'..=b'9') => digits(i).ok_or(GiveUp)?,
            _ => return Err(GiveUp),
        };
        if bytes.get(i) == Some(&b'.') {
            i = digits(i + 1).ok_or(GiveUp)?;
        }
        if let Some(b'e' | b'E') = bytes.get(i) {
            i += 1;
            if let Some(b'+' | b'-') = bytes.get(i) {
                i += 1;
            }
            i = digits(i).ok_or(GiveUp)?;
        }
        self.pos = i;
        Ok(())
    }

    /// Skips one value, checking it is JSON.
    fn skip_value(&mut self) -> Result<()> {
        match self.next_token()? {
            b'"' => {
                self.pos += 1;
                self.scan_string().map(|_| ())
            }
            b'{' => self.skip_items(b'}', |reader| {
                reader.expect(b'"')?;
                reader.scan_string()?;
                reader.expect(b':')?;
                reader.skip_value()
            }),
            b'[' => self.skip_items(b']', Self::skip_value),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.skip_number(),
            _ => Err(GiveUp),
        }
    }

    /// From an opening bracket to its `close`: the items, each skipped by
    /// `item`, separated by commas.
    fn skip_items(
        &mut self,
        close: u8,
        mut item: impl FnMut(&mut Self) -> Result<()>,
    ) -> Result<()> {
        self.pos += 1;
        self.enter()?;
        if self.next_token()? == close {
            self.pos += 1;
        } else {
            loop {
                item(self)?;
                match self.next_token()? {
                    b',' => self.pos += 1,
                    c if c == close => {
                        self.pos += 1;
                        break;
                    }
                    _ => return Err(GiveUp),
                }
            }
        }
        self.depth -= 1;
        Ok(())
    }

    /// A string value handed to `visitor`: borrowed when it has no
    /// escapes, else unescaped by serde_json.
    fn string<V: Visitor<'de>>(&mut self, visitor: V) -> Result<V::Value> {
        self.expect(b'"')?;
        let start = self.pos;
        let (end, escaped) = self.scan_string()?;
        if !escaped {
            return visitor.visit_borrowed_str(&self.text[start..end]);
        }
        let quoted = &self.text[start - 1..=end];
        let unescaped: String = serde_json::from_str(quoted).map_err(|_| GiveUp)?;
        visitor.visit_string(unescaped)
    }
}

impl<'de> de::Deserializer<'de> for &mut Reader<'de> {
    type Error = GiveUp;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.next_token()? {
            b'"' => self.string(visitor),
            b'{' => self.deserialize_map(visitor),
            b'[' => self.deserialize_seq(visitor),
            b't' | b'f' => self.deserialize_bool(visitor),
            b'n' => {
                self.literal(b"null")?;
                visitor.visit_unit()
            }
            // No field a review keeps is a number.
            _ => Err(GiveUp),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.next_token()? {
            b't' => {
                self.literal(b"true")?;
                visitor.visit_bool(true)
            }
            b'f' => {
                self.literal(b"false")?;
                visitor.visit_bool(false)
            }
            _ => Err(GiveUp),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.string(visitor)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.string(visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.string(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        if self.next_token()? == b'n' {
            self.literal(b"null")?;
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.expect(b'[')?;
        self.enter()?;
        let value = visitor.visit_seq(Items {
            reader: &mut *self,
            first: true,
        })?;
        self.expect(b']')?;
        self.depth -= 1;
        Ok(value)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.expect(b'{')?;
        self.enter()?;
        let value = visitor.visit_map(Entries {
            reader: &mut *self,
            first: true,
        })?;
        self.expect(b'}')?;
        self.depth -= 1;
        Ok(value)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        self.deserialize_map(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.skip_value()?;
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char bytes byte_buf
        unit unit_struct newtype_struct tuple tuple_struct enum
    }
}

/// The entries of an object, for a map or a struct.
struct Entries<'a, 'de> {
    reader: &'a mut Reader<'de>,
    first: bool,
}

impl<'de> MapAccess<'de> for Entries<'_, 'de> {
    type Error = GiveUp;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        match self.reader.next_token()? {
            b'}' => return Ok(None),
            b',' if !self.first => self.reader.pos += 1,
            b'"' if self.first => {}
            _ => return Err(GiveUp),
        }
        self.first = false;
        self.reader.expect(b'"')?;
        let start = self.reader.pos;
        let (end, escaped) = self.reader.scan_string()?;
        if escaped {
            return Err(GiveUp);
        }
        let key = &self.reader.text[start..end];
        self.reader.expect(b':')?;
        seed.deserialize(Key(key)).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value> {
        seed.deserialize(&mut *self.reader)
    }
}

/// The items of an array.
struct Items<'a, 'de> {
    reader: &'a mut Reader<'de>,
    first: bool,
}

impl<'de> SeqAccess<'de> for Items<'_, 'de> {
    type Error = GiveUp;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>> {
        match self.reader.next_token()? {
            b']' => return Ok(None),
            b',' if !self.first => self.reader.pos += 1,
            _ if self.first => {}
            _ => return Err(GiveUp),
        }
        self.first = false;
        seed.deserialize(&mut *self.reader).map(Some)
    }
}

/// An object's key, already read: as serde_json hands a key to a map or
/// a struct's field names.
struct Key<'de>(&'de str);

impl<'de> de::Deserializer<'de> for Key<'de> {
    type Error = GiveUp;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_borrowed_str(self.0)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests;
