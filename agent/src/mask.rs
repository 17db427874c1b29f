//! Masking secret values: every occurrence of a value becomes `***`.
//!
//! [`Masker::mask`] masks a complete text (reasons, ids, image names). Logs arrive in pieces
//! whose boundaries fall anywhere, so [`StreamMasker`] keeps back the shortest tail that could
//! still grow into a secret — never more than the longest value minus one byte — and releases
//! it when the next piece shows it is not one, or at the end of the stream.
//!
//! At each position the longest value that matches wins; a value that could still match once
//! more data arrives is waited for, so the result does not depend on how the stream was cut.
//!
//! Hand-written rather than with a multi-pattern crate: the streaming case needs "could this
//! tail still become a match", which those crates do not expose; the value lists are short.

use std::sync::Arc;

/// What a masked value is replaced by.
pub const MASK: &[u8] = b"***";

/// A set of values to mask (cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct Masker {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Distinct non-empty values, longest first.
    values: Vec<Vec<u8>>,
    /// Whether any value starts with this byte.
    first: [bool; 256],
}

impl Default for Inner {
    fn default() -> Self {
        Inner {
            values: Vec::new(),
            first: [false; 256],
        }
    }
}

impl Masker {
    /// A masker for `values` (empty ones are ignored).
    pub fn new<I, V>(values: I) -> Masker
    where
        I: IntoIterator<Item = V>,
        V: AsRef<[u8]>,
    {
        let mut list: Vec<Vec<u8>> = values
            .into_iter()
            .map(|v| v.as_ref().to_vec())
            .filter(|v| !v.is_empty())
            .collect();
        list.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        list.dedup();
        let mut first = [false; 256];
        for value in &list {
            first[usize::from(value[0])] = true;
        }
        Masker {
            inner: Arc::new(Inner {
                values: list,
                first,
            }),
        }
    }

    /// Whether there is nothing to mask.
    pub fn is_empty(&self) -> bool {
        self.inner.values.is_empty()
    }

    /// The length of the longest value (0 when empty).
    pub fn longest(&self) -> usize {
        self.inner.values.first().map_or(0, Vec::len)
    }

    /// `text` with every value replaced by `***`.
    pub fn mask(&self, text: &str) -> String {
        if self.is_empty() {
            return text.to_string();
        }
        let mut out = Vec::with_capacity(text.len());
        self.scan(text.as_bytes(), true, &mut out);
        // Values are whole UTF-8 strings, so replacements never split a character; lossy
        // conversion only matters for byte values from secret files.
        String::from_utf8_lossy(&out).into_owned()
    }

    /// `data` with every value replaced by `***`.
    pub fn mask_bytes(&self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len());
        self.scan(data, true, &mut out);
        out
    }

    /// A masker for one stream of pieces.
    pub fn stream(&self) -> StreamMasker {
        StreamMasker {
            masker: self.clone(),
            held: Vec::new(),
        }
    }

    /// Appends the masked form of `buf` to `out` and returns how many bytes of `buf` were
    /// consumed; unless `last`, it stops at the first position where a value could still match
    /// if more data followed.
    fn scan(&self, buf: &[u8], last: bool, out: &mut Vec<u8>) -> usize {
        let inner = &*self.inner;
        let mut i = 0;
        while i < buf.len() {
            if !inner.first[usize::from(buf[i])] {
                // Copy the run of bytes that cannot start a value.
                let run = buf[i..]
                    .iter()
                    .position(|b| inner.first[usize::from(*b)])
                    .unwrap_or(buf.len() - i);
                out.extend_from_slice(&buf[i..i + run]);
                i += run;
                continue;
            }
            let rest = &buf[i..];
            if !last
                && inner
                    .values
                    .iter()
                    .any(|v| v.len() > rest.len() && v.starts_with(rest))
            {
                return i;
            }
            match inner.values.iter().find(|v| rest.starts_with(v)) {
                Some(value) => {
                    out.extend_from_slice(MASK);
                    i += value.len();
                }
                None => {
                    out.push(buf[i]);
                    i += 1;
                }
            }
        }
        i
    }
}

/// Masks a stream that arrives in pieces.
#[derive(Debug)]
pub struct StreamMasker {
    masker: Masker,
    /// Bytes received but not released: a possible start of a value (shorter than the
    /// longest value).
    held: Vec<u8>,
}

impl StreamMasker {
    /// Takes the next piece and returns what can be released now.
    pub fn push(&mut self, data: &[u8]) -> Vec<u8> {
        if self.masker.is_empty() {
            return data.to_vec();
        }
        let mut buf = std::mem::take(&mut self.held);
        buf.extend_from_slice(data);
        let mut out = Vec::with_capacity(buf.len());
        let consumed = self.masker.scan(&buf, false, &mut out);
        self.held = buf.split_off(consumed);
        out
    }

    /// The end of the stream: releases what was held back, masked.
    pub fn finish(&mut self) -> Vec<u8> {
        let held = std::mem::take(&mut self.held);
        self.masker.mask_bytes(&held)
    }

    /// How many bytes are held back.
    pub fn held(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn streamed(masker: &Masker, pieces: &[&[u8]]) -> Vec<u8> {
        let mut stream = masker.stream();
        let mut out = Vec::new();
        for piece in pieces {
            out.extend(stream.push(piece));
            assert!(
                stream.held() < masker.longest().max(1),
                "held {} bytes",
                stream.held()
            );
        }
        out.extend(stream.finish());
        out
    }

    #[test]
    fn masks_whole_texts() {
        let masker = Masker::new(["hunter2", "", "pw"]);
        assert_eq!(masker.mask("a hunter2 b pwpw c"), "a *** b ****** c");
        assert_eq!(masker.mask("nothing"), "nothing");
        assert_eq!(Masker::default().mask("hunter2"), "hunter2");
    }

    #[test]
    fn the_longest_value_wins_and_overlaps_are_masked_once() {
        let masker = Masker::new(["abc", "abcdef"]);
        assert_eq!(masker.mask("xabcdefy abcx"), "x***y ***x");
        let overlapping = Masker::new(["aba"]);
        assert_eq!(overlapping.mask("ababa"), "***ba");
    }

    #[test]
    fn values_split_across_pieces_are_masked() {
        let masker = Masker::new(["s3cr3t-value"]);
        let text = b"before s3cr3t-value after s3cr3t-value";
        let expected = masker.mask_bytes(text);
        assert_eq!(expected, b"before *** after ***".to_vec());
        // Every way of cutting the text in two and in three.
        for a in 0..=text.len() {
            assert_eq!(
                streamed(&masker, &[&text[..a], &text[a..]]),
                expected,
                "cut {a}"
            );
            for b in a..=text.len() {
                assert_eq!(
                    streamed(&masker, &[&text[..a], &text[a..b], &text[b..]]),
                    expected,
                    "cuts {a} {b}"
                );
            }
        }
        // Byte by byte.
        let pieces: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(streamed(&masker, &pieces), expected);
    }

    #[test]
    fn a_prefix_at_the_end_is_released_when_the_stream_ends() {
        let masker = Masker::new(["password"]);
        let mut stream = masker.stream();
        assert_eq!(stream.push(b"the pass"), b"the ".to_vec());
        assert_eq!(stream.held(), 4);
        assert_eq!(stream.push(b"port"), b"passport".to_vec());
        assert_eq!(stream.held(), 0);
        assert_eq!(stream.push(b"pass"), Vec::<u8>::new());
        assert_eq!(stream.finish(), b"pass".to_vec());
    }

    #[test]
    fn a_shorter_value_waits_while_a_longer_one_may_still_match() {
        let masker = Masker::new(["ab", "abcd"]);
        for text in [&b"xabcdy"[..], b"xabcy", b"xaby", b"abab", b"abcabcd"] {
            let expected = masker.mask_bytes(text);
            for cut in 0..=text.len() {
                assert_eq!(
                    streamed(&masker, &[&text[..cut], &text[cut..]]),
                    expected,
                    "{:?} cut {cut}",
                    String::from_utf8_lossy(text)
                );
            }
        }
        assert_eq!(masker.mask("xabcdy xabcy"), "x***y x***cy");
    }

    #[test]
    fn repeated_prefixes_do_not_grow_the_tail() {
        // "aaa…" is a prefix of the value at every position; the tail stays bounded.
        let masker = Masker::new(["aaaab"]);
        let mut stream = masker.stream();
        let mut out = Vec::new();
        for _ in 0..1000 {
            out.extend(stream.push(b"a"));
            assert!(stream.held() <= 4);
        }
        out.extend(stream.push(b"b"));
        out.extend(stream.finish());
        assert_eq!(out.len(), 996 + 3);
        assert!(out.ends_with(b"a***"));
    }

    #[test]
    fn multibyte_and_multiline_values() {
        let masker = Masker::new(["пароль", "line1\nline2"]);
        let text = "x пароль y line1\nline2 z".as_bytes();
        for cut in 0..=text.len() {
            assert_eq!(
                streamed(&masker, &[&text[..cut], &text[cut..]]),
                b"x *** y *** z".to_vec()
            );
        }
    }
}
