//! Sprig's string functions, with Go's `strings` semantics and the helpers Sprig v2.22 takes
//! from Masterminds/goutils 1.1.1 (`abbrev`, `wrap`, `initials`, `swapcase`, ...) and
//! huandu/xstrings 1.3.2 (`camelcase`, `snakecase`, `kebabcase`, `shuffle`).

use std::collections::BTreeMap;

use super::fmt::{go_quote, strval};
use super::{bounded_list, check_size, i, s, want, Ctx, Func, F};
use crate::template::value::Value;

pub const FUNCS: &[(&str, Func)] = &[
    ("hello", hello),
    ("abbrev", abbrev),
    ("abbrevboth", abbrevboth),
    ("trunc", trunc),
    ("trim", trim),
    ("upper", upper),
    ("lower", lower),
    ("title", title),
    ("untitle", untitle),
    ("substr", substr),
    ("repeat", repeat),
    ("trimall", trim_all),
    ("trimAll", trim_all),
    ("trimSuffix", trim_suffix),
    ("trimPrefix", trim_prefix),
    ("nospace", nospace),
    ("initials", initials),
    ("swapcase", swapcase),
    ("shuffle", shuffle),
    ("snakecase", snakecase),
    ("camelcase", camelcase),
    ("kebabcase", kebabcase),
    ("wrap", wrap),
    ("wrapWith", wrap_with),
    ("contains", contains),
    ("hasPrefix", has_prefix),
    ("hasSuffix", has_suffix),
    ("quote", quote),
    ("squote", squote),
    ("cat", cat),
    ("indent", indent),
    ("nindent", indent),
    ("replace", replace),
    ("plural", plural),
    ("toString", to_string),
    ("split", split),
    ("splitList", split),
    ("splitn", split),
    ("toStrings", to_strings),
    ("join", join),
];

fn hello(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 0)?;
    Ok(Value::Str("Hello!".into()))
}

/// Go's byte slicing: Go strings may hold broken UTF-8; kiln repairs it the way a later
/// YAML reader would (U+FFFD).
fn bytes_str(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// goutils `AbbreviateFull` (`None` for its errors, where Sprig returns "").
fn abbreviate_full(x: &[u8], offset: i64, max_width: i64) -> Option<Vec<u8>> {
    if x.is_empty() {
        return Some(Vec::new());
    }
    if max_width < 4 {
        return None;
    }
    let len = x.len() as i64;
    if len <= max_width {
        return Some(x.to_vec());
    }
    let mut offset = offset.min(len);
    if len - offset < max_width - 3 {
        offset = len - (max_width - 3);
    }
    let marker = b"...";
    if offset <= 4 {
        let mut out = x[..(max_width - 3) as usize].to_vec();
        out.extend_from_slice(marker);
        return Some(out);
    }
    if max_width < 7 {
        return None;
    }
    let mut out = marker.to_vec();
    if offset + max_width - 3 < len {
        out.extend(abbreviate_full(&x[offset as usize..], 0, max_width - 3)?);
    } else {
        out.extend_from_slice(&x[(len - (max_width - 3)) as usize..]);
    }
    Some(out)
}

fn abbrev(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 2)?;
    let (w, x) = (i(&a[0])?, s(&a[1])?);
    if w < 4 {
        return Ok(Value::Str(x.to_string()));
    }
    Ok(Value::Str(
        abbreviate_full(x.as_bytes(), 0, w)
            .map(|b| bytes_str(&b))
            .unwrap_or_default(),
    ))
}

fn abbrevboth(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 3)?;
    let (left, right, x) = (i(&a[0])?, i(&a[1])?, s(&a[2])?);
    if right < 4 || left > 0 && right < 7 {
        return Ok(Value::Str(x.to_string()));
    }
    // A negative offset would make Go panic; kiln treats it as 0.
    Ok(Value::Str(
        abbreviate_full(x.as_bytes(), left.max(0), right)
            .map(|b| bytes_str(&b))
            .unwrap_or_default(),
    ))
}

/// `trunc n s`: the first `n` bytes; a negative `n` keeps the last `-n` (Sprig 3; v2.22
/// panics).
fn trunc(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 2)?;
    let (c, x) = (i(&a[0])?, s(&a[1])?);
    let n = x.len() as i64;
    let b = x.as_bytes();
    let out = if c < 0 && n + c > 0 {
        bytes_str(&b[(n + c) as usize..])
    } else if c >= 0 && n > c {
        bytes_str(&b[..c as usize])
    } else {
        x.to_string()
    };
    Ok(Value::Str(out))
}

/// Go's `unicode.IsSpace`.
pub(crate) fn is_space(c: char) -> bool {
    matches!(
        c,
        '\t' | '\n' | '\x0b' | '\x0c' | '\r' | ' ' | '\u{85}' | '\u{a0}'
    ) || (c as u32 > 0xff && c.is_whitespace())
}

fn trim(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 1)?;
    Ok(Value::Str(s(&a[0])?.trim_matches(is_space).to_string()))
}

/// `unicode.ToUpper` (a simple, one-rune mapping).
pub(crate) fn rune_upper(c: char) -> char {
    let mut u = c.to_uppercase();
    match (u.next(), u.next()) {
        (Some(x), None) => x,
        _ => c,
    }
}

/// `unicode.ToLower`.
pub(crate) fn rune_lower(c: char) -> char {
    c.to_lowercase().next().unwrap_or(c)
}

fn upper(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 1)?;
    Ok(Value::Str(s(&a[0])?.chars().map(rune_upper).collect()))
}

fn lower(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 1)?;
    Ok(Value::Str(s(&a[0])?.chars().map(rune_lower).collect()))
}

/// `strings.Title`'s word boundary test.
fn is_separator(c: char) -> bool {
    if c.is_ascii() {
        return !(c.is_ascii_alphanumeric() || c == '_');
    }
    if c.is_alphabetic() || c.is_numeric() {
        return false;
    }
    is_space(c)
}

/// Go's `strings.Title`.
pub(crate) fn go_title(x: &str) -> String {
    let mut prev = ' ';
    x.chars()
        .map(|c| {
            let out = if is_separator(prev) { rune_upper(c) } else { c };
            prev = c;
            out
        })
        .collect()
}

fn title(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 1)?;
    Ok(Value::Str(go_title(s(&a[0])?)))
}

/// goutils `Uncapitalize` with whitespace delimiters.
fn untitle(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 1)?;
    let mut next = true;
    Ok(Value::Str(
        s(&a[0])?
            .chars()
            .map(|c| {
                if is_space(c) {
                    next = true;
                    c
                } else if next {
                    next = false;
                    rune_lower(c)
                } else {
                    c
                }
            })
            .collect(),
    ))
}

fn substr(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 3)?;
    let (start, end, x) = (i(&a[0])?, i(&a[1])?, s(&a[2])?);
    let n = x.len() as i64;
    let (lo, hi) = if start < 0 {
        (0, end)
    } else if end < 0 || end > n {
        (start, n)
    } else {
        (start, end)
    };
    if lo < 0 || hi < lo || hi > n {
        return Err(format!("slice bounds out of range [{lo}:{hi}]"));
    }
    Ok(Value::Str(bytes_str(
        &x.as_bytes()[lo as usize..hi as usize],
    )))
}

fn repeat(name: &str, a: &[Value], ctx: &mut Ctx) -> F {
    want(name, a, 2)?;
    let (n, x) = (i(&a[0])?, s(&a[1])?);
    if n < 0 {
        return Err("strings: negative Repeat count".into());
    }
    check_size((n as usize).saturating_mul(x.len()), ctx.limit, name)?;
    Ok(Value::Str(x.repeat(n as usize)))
}

fn trim_all(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 2)?;
    let cut: std::collections::HashSet<char> = s(&a[0])?.chars().collect();
    Ok(Value::Str(
        s(&a[1])?.trim_matches(|c| cut.contains(&c)).to_string(),
    ))
}

fn trim_prefix(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 2)?;
    let x = s(&a[1])?;
    Ok(Value::Str(
        x.strip_prefix(s(&a[0])?).unwrap_or(x).to_string(),
    ))
}

fn trim_suffix(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 2)?;
    let x = s(&a[1])?;
    Ok(Value::Str(
        x.strip_suffix(s(&a[0])?).unwrap_or(x).to_string(),
    ))
}

/// goutils `DeleteWhiteSpace`, which reads the text byte by byte: when it removes anything,
/// every byte of a multi-byte character becomes a character of its own (Latin-1).
fn nospace(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 1)?;
    let x = s(&a[0])?;
    let kept: Vec<char> = x
        .bytes()
        .map(char::from)
        .filter(|c| !is_space(*c))
        .collect();
    if kept.len() == x.len() {
        return Ok(Value::Str(x.to_string()));
    }
    Ok(Value::Str(kept.into_iter().collect()))
}

/// goutils `Initials`, byte by byte like the original.
fn initials(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 1)?;
    let mut out = String::new();
    let mut gap = true;
    for c in s(&a[0])?.bytes().map(char::from) {
        if is_space(c) {
            gap = true;
        } else if gap {
            out.push(c);
            gap = false;
        }
    }
    Ok(Value::Str(out))
}

/// goutils `SwapCase` (its title case after whitespace is upper case for every letter kiln
/// maps).
fn swapcase(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 1)?;
    Ok(Value::Str(
        s(&a[0])?
            .chars()
            .map(|c| {
                if c.is_uppercase() {
                    rune_lower(c)
                } else if c.is_lowercase() {
                    rune_upper(c)
                } else {
                    c
                }
            })
            .collect(),
    ))
}

/// xstrings `Shuffle` (Fisher–Yates over the runes) with the render's generator.
fn shuffle(name: &str, a: &[Value], ctx: &mut Ctx) -> F {
    want(name, a, 1)?;
    let mut runes: Vec<char> = s(&a[0])?.chars().collect();
    ctx.cost += runes.len() as u64 / 64;
    for k in (1..runes.len()).rev() {
        let j = ctx.below(k as u64 + 1) as usize;
        runes.swap(k, j);
    }
    Ok(Value::Str(runes.into_iter().collect()))
}

// ---- xstrings 1.3.2 case conversion ----

fn is_connector(c: char) -> bool {
    c == '-' || c == '_' || is_space(c)
}

/// xstrings' `isAlphabet`: a letter that is not a CJK ideograph.
fn is_alphabet(c: char) -> bool {
    if !c.is_alphabetic() {
        return false;
    }
    let r = c as u32;
    !((0x4e00..=0x9fcc).contains(&r)
        || (0x3400..=0x4d85).contains(&r)
        || (0x20000..=0x2b81d).contains(&r))
}

/// Go's `unicode.IsPunct` (approximately: ASCII punctuation other than symbols, and the
/// Unicode punctuation blocks).
fn is_punct(c: char) -> bool {
    if c.is_ascii() {
        return matches!(
            c,
            '!' | '"'
                | '#'
                | '%'
                | '&'
                | '\''
                | '('
                | ')'
                | '*'
                | ','
                | '-'
                | '.'
                | '/'
                | ':'
                | ';'
                | '?'
                | '@'
                | '['
                | '\\'
                | ']'
                | '_'
                | '{'
                | '}'
        );
    }
    c.is_ascii_punctuation()
        || matches!(c as u32, 0xa1 | 0xa7 | 0xab | 0xb6 | 0xb7 | 0xbb | 0xbf | 0x2010..=0x2027 | 0x2030..=0x205e | 0x3001..=0x3003 | 0x3008..=0x3011)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Word {
    Invalid,
    Number,
    Upper,
    Alphabet,
    Connector,
    Punct,
    Other,
}

/// xstrings `nextValidRune`: the next rune that is not U+FFFD (which xstrings takes for a
/// decoding error) and how many chars were read; `prev` when only U+FFFD remain.
fn next_valid(x: &[char], pos: usize, prev: char) -> (char, usize) {
    let mut n = 0;
    for &c in &x[pos..] {
        n += 1;
        if c != '\u{fffd}' {
            return (c, n);
        }
    }
    (prev, n)
}

/// xstrings `nextWord`: the type and length (in chars) of the word at the start of `x`.
fn next_word(x: &[char]) -> (Word, usize) {
    if x.is_empty() {
        return (Word::Invalid, 0);
    }
    let (first, size) = next_valid(x, 0, '\u{fffd}');
    let mut off = size;
    if first == '\u{fffd}' {
        return (Word::Invalid, off);
    }
    // Extends the word while `keep` holds for the next valid rune.
    let run = |off: &mut usize, mut r: char, keep: &dyn Fn(char) -> bool| {
        while *off < x.len() {
            let (c, n) = next_valid(x, *off, r);
            r = c;
            if !keep(c) {
                break;
            }
            *off += n;
        }
    };
    let wt;
    if is_connector(first) {
        wt = Word::Connector;
        run(&mut off, first, &is_connector);
    } else if is_punct(first) {
        wt = Word::Punct;
        run(&mut off, first, &is_punct);
    } else if first.is_uppercase() {
        wt = Word::Upper;
        if off < x.len() {
            let (r2, n2) = next_valid(x, off, first);
            if r2.is_uppercase() {
                let mut prev_size = n2;
                off += n2;
                let mut r = r2;
                while off < x.len() {
                    let (c, n) = next_valid(x, off, r);
                    r = c;
                    if !c.is_uppercase() {
                        break;
                    }
                    prev_size = n;
                    off += n;
                }
                // "HTTPStatus" is "HTTP" + "Status".
                if off < x.len() && is_alphabet(r) {
                    off -= prev_size;
                }
            } else if is_alphabet(r2) {
                off += n2;
                run(&mut off, r2, &|c: char| is_alphabet(c) && !c.is_uppercase());
            }
        }
    } else if is_alphabet(first) {
        wt = Word::Alphabet;
        run(&mut off, first, &|c: char| {
            is_alphabet(c) && !c.is_uppercase()
        });
    } else if first.is_numeric() {
        wt = Word::Number;
        run(&mut off, first, &|c: char| c.is_numeric());
    } else {
        wt = Word::Other;
        run(&mut off, first, &|c: char| {
            !(is_connector(c) || is_alphabet(c) || c.is_numeric() || is_punct(c))
        });
    }
    (wt, off)
}

fn to_lower_word(out: &mut String, wt: Word, w: &[char], connector: char) {
    if wt != Word::Upper && wt != Word::Connector {
        out.extend(w);
        return;
    }
    for &c in w {
        if is_connector(c) {
            out.push(connector);
        } else if c.is_uppercase() {
            out.push(rune_lower(c));
        } else {
            out.push(c);
        }
    }
}

/// xstrings `camelCaseToLowerCase` (`ToSnakeCase`, `ToKebabCase`).
pub(crate) fn camel_to_lower(x: &str, connector: char) -> String {
    let chars: Vec<char> = x.chars().collect();
    let mut out = String::new();
    if chars.is_empty() {
        return out;
    }
    let mut pos = 0usize;
    let next = |pos: &mut usize| -> (Word, &[char]) {
        let (wt, n) = next_word(&chars[*pos..]);
        let w = &chars[*pos..*pos + n];
        *pos += n;
        (wt, w)
    };
    let (mut wt, mut word) = next(&mut pos);
    while pos < chars.len() {
        if wt != Word::Connector {
            to_lower_word(&mut out, wt, word, connector);
        }
        let prev = wt;
        let last = word;
        (wt, word) = next(&mut pos);
        match prev {
            Word::Number => {
                while wt == Word::Alphabet || wt == Word::Number {
                    to_lower_word(&mut out, wt, word, connector);
                    (wt, word) = next(&mut pos);
                }
                if wt != Word::Invalid && wt != Word::Punct {
                    out.push(connector);
                }
            }
            Word::Connector => to_lower_word(&mut out, prev, last, connector),
            Word::Punct => {}
            _ => {
                if wt != Word::Number {
                    if wt != Word::Connector && wt != Word::Punct {
                        out.push(connector);
                    }
                    continue;
                }
                if pos >= chars.len() {
                    continue;
                }
                let last = word;
                (wt, word) = next(&mut pos);
                // "Bld4Floor" => "bld4_floor"
                if wt != Word::Alphabet {
                    to_lower_word(&mut out, Word::Number, last, connector);
                    if wt != Word::Connector && wt != Word::Punct {
                        out.push(connector);
                    }
                    continue;
                }
                // "HTTP2xx" => "http_2xx"
                out.push(connector);
                to_lower_word(&mut out, Word::Number, last, connector);
                while wt == Word::Alphabet || wt == Word::Number {
                    to_lower_word(&mut out, wt, word, connector);
                    (wt, word) = next(&mut pos);
                }
                if wt != Word::Invalid && wt != Word::Connector && wt != Word::Punct {
                    out.push(connector);
                }
            }
        }
    }
    to_lower_word(&mut out, wt, word, connector);
    out
}

/// xstrings `ToCamelCase`.
pub(crate) fn to_camel(x: &str) -> String {
    let mut it = x.chars();
    let mut out = String::new();
    let mut r0 = '\0';
    let mut got = false;
    for c in it.by_ref() {
        if !is_connector(c) {
            r0 = rune_upper(c);
            got = true;
            break;
        }
        out.push(c);
    }
    let rest: Vec<char> = it.collect();
    if rest.is_empty() {
        if got {
            out.push(r0);
        }
        return out;
    }
    for c in rest {
        let r1 = r0;
        r0 = c;
        if is_connector(r0) && is_connector(r1) {
            out.push(r1);
            continue;
        }
        if is_connector(r1) {
            r0 = rune_upper(r0);
        } else {
            r0 = rune_lower(r0);
            out.push(r1);
        }
    }
    out.push(r0);
    out
}

fn snakecase(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 1)?;
    Ok(Value::Str(camel_to_lower(s(&a[0])?, '_')))
}

fn kebabcase(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 1)?;
    Ok(Value::Str(camel_to_lower(s(&a[0])?, '-')))
}

fn camelcase(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 1)?;
    Ok(Value::Str(to_camel(s(&a[0])?)))
}

/// goutils `WrapCustom` (byte offsets, like the original).
pub(crate) fn wrap_custom(x: &str, width: i64, newline: &str, long_words: bool) -> String {
    let b = x.as_bytes();
    if b.is_empty() {
        return String::new();
    }
    let newline = if newline.is_empty() {
        b"\n" as &[u8]
    } else {
        newline.as_bytes()
    };
    let w = width.max(1) as usize;
    let len = b.len();
    let mut off = 0usize;
    let mut out: Vec<u8> = Vec::new();
    while len - off > w {
        if b[off] == b' ' {
            off += 1;
            continue;
        }
        let end = w + off + 1;
        let space = b[off..end].iter().rposition(|c| *c == b' ');
        if let Some(p) = space {
            out.extend_from_slice(&b[off..off + p]);
            out.extend_from_slice(newline);
            off += p + 1;
        } else if long_words {
            out.extend_from_slice(&b[off..off + w]);
            out.extend_from_slice(newline);
            off += w;
        } else {
            let end = w + off;
            match b[end..].iter().position(|c| *c == b' ') {
                None => {
                    out.extend_from_slice(&b[off..]);
                    off = len;
                }
                Some(p) => {
                    out.extend_from_slice(&b[off..end + p]);
                    out.extend_from_slice(newline);
                    off = end + p + 1;
                }
            }
        }
    }
    out.extend_from_slice(&b[off..]);
    bytes_str(&out)
}

fn wrap(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 2)?;
    Ok(Value::Str(wrap_custom(s(&a[1])?, i(&a[0])?, "", false)))
}

fn wrap_with(name: &str, a: &[Value], ctx: &mut Ctx) -> F {
    want(name, a, 3)?;
    let (w, sep, x) = (i(&a[0])?, s(&a[1])?, s(&a[2])?);
    // Every wrap inserts `sep`: at most one per `w` bytes.
    let inserts = x.len() / (w.max(1) as usize) + 1;
    check_size(
        x.len().saturating_add(inserts.saturating_mul(sep.len())),
        ctx.limit,
        name,
    )?;
    Ok(Value::Str(wrap_custom(x, w, sep, true)))
}

fn contains(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 2)?;
    Ok(Value::Bool(s(&a[1])?.contains(s(&a[0])?)))
}

fn has_prefix(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 2)?;
    Ok(Value::Bool(s(&a[1])?.starts_with(s(&a[0])?)))
}

fn has_suffix(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 2)?;
    Ok(Value::Bool(s(&a[1])?.ends_with(s(&a[0])?)))
}

fn quote(_: &str, a: &[Value], _: &mut Ctx) -> F {
    Ok(Value::Str(
        a.iter()
            .filter(|v| **v != Value::Nil)
            .map(|v| go_quote(&strval(v)))
            .collect::<Vec<_>>()
            .join(" "),
    ))
}

fn squote(_: &str, a: &[Value], _: &mut Ctx) -> F {
    Ok(Value::Str(
        a.iter()
            .filter(|v| **v != Value::Nil)
            .map(|v| format!("'{}'", v.go_string()))
            .collect::<Vec<_>>()
            .join(" "),
    ))
}

fn cat(_: &str, a: &[Value], _: &mut Ctx) -> F {
    Ok(Value::Str(
        a.iter()
            .filter(|v| **v != Value::Nil)
            .map(Value::go_string)
            .collect::<Vec<_>>()
            .join(" "),
    ))
}

fn indent(name: &str, a: &[Value], ctx: &mut Ctx) -> F {
    want(name, a, 2)?;
    let n = i(&a[0])?.max(0) as usize;
    let x = s(&a[1])?;
    check_size(
        x.len()
            .saturating_add(n.saturating_mul(x.matches('\n').count() + 2)),
        ctx.limit,
        name,
    )?;
    let padding = " ".repeat(n);
    let t = format!("{padding}{}", x.replace('\n', &format!("\n{padding}")));
    Ok(Value::Str(if name == "nindent" {
        format!("\n{t}")
    } else {
        t
    }))
}

fn replace(name: &str, a: &[Value], ctx: &mut Ctx) -> F {
    want(name, a, 3)?;
    let (old, new, src) = (s(&a[0])?, s(&a[1])?, s(&a[2])?);
    let count = if old.is_empty() {
        src.chars().count() + 1
    } else {
        src.matches(old).count()
    };
    check_size(
        src.len().saturating_add(count.saturating_mul(new.len())),
        ctx.limit,
        name,
    )?;
    Ok(Value::Str(src.replace(old, new)))
}

fn plural(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 3)?;
    s(&a[0])?;
    s(&a[1])?;
    Ok(if i(&a[2])? == 1 {
        a[0].clone()
    } else {
        a[1].clone()
    })
}

fn to_string(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 1)?;
    Ok(Value::Str(strval(&a[0])))
}

/// Go's `strings.SplitN` (`n < 0`: all parts).
fn split_n<'a>(x: &'a str, sep: &str, n: i64) -> Vec<&'a str> {
    if n == 0 {
        return Vec::new();
    }
    if sep.is_empty() {
        let mut out: Vec<&str> = Vec::new();
        for (k, (p, c)) in x.char_indices().enumerate() {
            if n > 0 && k as i64 == n - 1 {
                out.push(&x[p..]);
                return out;
            }
            out.push(&x[p..p + c.len_utf8()]);
        }
        return out;
    }
    if n < 0 {
        x.split(sep).collect()
    } else {
        x.splitn(n as usize, sep).collect()
    }
}

fn split(name: &str, a: &[Value], ctx: &mut Ctx) -> F {
    let (sep, x, n) = if name == "splitn" {
        want(name, a, 3)?;
        (s(&a[0])?, s(&a[2])?, i(&a[1])?)
    } else {
        want(name, a, 2)?;
        (s(&a[0])?, s(&a[1])?, -1)
    };
    let parts = bounded_list(split_n(x, sep, n).into_iter(), ctx.limit, name)?;
    if name == "splitList" {
        return Ok(Value::List(parts));
    }
    Ok(Value::map(
        parts
            .into_iter()
            .enumerate()
            .map(|(k, v)| (format!("_{k}"), v))
            .collect::<BTreeMap<_, _>>(),
    ))
}

/// Sprig's `strslice`: the strings of a list's non-nil elements, `[]` for nil, `[v]` else.
pub(crate) fn strslice(v: &Value) -> Vec<String> {
    match v {
        Value::List(l) => l.iter().filter(|v| **v != Value::Nil).map(strval).collect(),
        Value::Nil => Vec::new(),
        other => vec![strval(other)],
    }
}

fn to_strings(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 1)?;
    Ok(Value::List(
        strslice(&a[0]).into_iter().map(Value::Str).collect(),
    ))
}

fn join(name: &str, a: &[Value], ctx: &mut Ctx) -> F {
    want(name, a, 2)?;
    let sep = s(&a[0])?;
    let items = strslice(&a[1]);
    let total = items
        .iter()
        .map(String::len)
        .fold(0usize, usize::saturating_add)
        .saturating_add(items.len().saturating_mul(sep.len()));
    check_size(total, ctx.limit, name)?;
    Ok(Value::Str(items.join(sep)))
}
