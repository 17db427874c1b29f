//! Sprig's encodings: base64 and base32 (with Go's error texts) and JSON (Go's
//! `encoding/json` output, `<`, `>` and `&` escaped).

use base64::Engine as _;

use super::fmt::strval;
use super::{s, want, Ctx, Func, F};
use crate::template::value::Value;

pub const FUNCS: &[(&str, Func)] = &[
    ("b64enc", b64enc),
    ("b64dec", b64dec),
    ("b32enc", b32enc),
    ("b32dec", b32dec),
    ("toJson", to_json),
    ("toPrettyJson", to_json),
    ("toRawJson", to_json),
    ("fromJson", from_json),
];

/// acb overrides Sprig's `b64enc`: nil (a missing value or secret) encodes to "".
fn b64enc(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 1)?;
    Ok(Value::Str(match &a[0] {
        Value::Nil => String::new(),
        v => base64::engine::general_purpose::STANDARD.encode(strval(v)),
    }))
}

fn b64_value(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

/// `base64.StdEncoding.DecodeString`: `Err(offset)` for Go's `illegal base64 data at input
/// byte <offset>`.
pub(crate) fn go_b64_decode(src: &[u8]) -> Result<Vec<u8>, usize> {
    let mut out = Vec::with_capacity(src.len() / 4 * 3);
    let mut si = 0usize;
    let skip_nl = |si: &mut usize| {
        while *si < src.len() && (src[*si] == b'\n' || src[*si] == b'\r') {
            *si += 1;
        }
    };
    loop {
        let mut dbuf = [0u8; 4];
        let mut j = 0usize;
        let mut dlen = 4usize;
        let mut done = false;
        while j < 4 {
            if si == src.len() {
                if j == 0 {
                    return Ok(out);
                }
                return Err(si - j);
            }
            let c = src[si];
            si += 1;
            if c == b'\n' || c == b'\r' {
                continue;
            }
            if let Some(v) = b64_value(c) {
                dbuf[j] = v;
                j += 1;
                continue;
            }
            if c != b'=' {
                return Err(si - 1);
            }
            match j {
                0 | 1 => return Err(si - 1),
                2 => {
                    skip_nl(&mut si);
                    if si == src.len() {
                        return Err(src.len());
                    }
                    if src[si] != b'=' {
                        return Err(si - 1);
                    }
                    si += 1;
                }
                _ => {}
            }
            skip_nl(&mut si);
            if si < src.len() {
                return Err(si);
            }
            dlen = j;
            done = true;
            break;
        }
        let v = (u32::from(dbuf[0]) << 18)
            | (u32::from(dbuf[1]) << 12)
            | (u32::from(dbuf[2]) << 6)
            | u32::from(dbuf[3]);
        let bytes = v.to_be_bytes();
        out.extend_from_slice(&bytes[1..dlen]);
        if done {
            return Ok(out);
        }
    }
}

fn b64dec(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 1)?;
    Ok(Value::Str(match go_b64_decode(s(&a[0])?.as_bytes()) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(at) => format!("illegal base64 data at input byte {at}"),
    }))
}

const B32: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

fn base32_encode(data: &[u8]) -> String {
    let mut out = String::new();
    for chunk in data.chunks(5) {
        let mut buf = [0u8; 5];
        buf[..chunk.len()].copy_from_slice(chunk);
        let bits = u64::from_be_bytes([0, 0, 0, buf[0], buf[1], buf[2], buf[3], buf[4]]);
        let chars = match chunk.len() {
            1 => 2,
            2 => 4,
            3 => 5,
            4 => 7,
            _ => 8,
        };
        for k in 0..8 {
            if k < chars {
                out.push(B32[((bits >> (35 - 5 * k)) & 31) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `base32.StdEncoding.DecodeString`: `Err(offset)` for Go's `illegal base32 data at input
/// byte <offset>`.
fn go_b32_decode(src: &[u8]) -> Result<Vec<u8>, usize> {
    // Newlines are dropped first, as Go does.
    let clean: Vec<u8> = src
        .iter()
        .copied()
        .filter(|c| *c != b'\n' && *c != b'\r')
        .collect();
    let src = &clean[..];
    let mut out = Vec::new();
    let mut si = 0usize;
    while si < src.len() {
        if src.len() - si < 8 {
            return Err(si);
        }
        let q = &src[si..si + 8];
        let mut dbuf = [0u8; 8];
        let mut dlen = 8;
        for (j, &c) in q.iter().enumerate() {
            if c == b'=' {
                // Padding: only at the end, and only after 2, 4, 5 or 7 characters.
                if si + 8 != src.len() || !matches!(j, 2 | 4 | 5 | 7) {
                    return Err(si + j);
                }
                if q[j..].iter().any(|c| *c != b'=') {
                    return Err(si + j);
                }
                dlen = j;
                break;
            }
            match B32.iter().position(|x| *x == c) {
                Some(v) => dbuf[j] = v as u8,
                None => return Err(si + j),
            }
        }
        let mut bits: u64 = 0;
        for v in dbuf {
            bits = (bits << 5) | u64::from(v);
        }
        let bytes = bits.to_be_bytes();
        let n = match dlen {
            2 => 1,
            4 => 2,
            5 => 3,
            7 => 4,
            _ => 5,
        };
        out.extend_from_slice(&bytes[3..3 + n]);
        si += 8;
    }
    Ok(out)
}

fn b32enc(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 1)?;
    Ok(Value::Str(base32_encode(strval(&a[0]).as_bytes())))
}

fn b32dec(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 1)?;
    Ok(Value::Str(match go_b32_decode(s(&a[0])?.as_bytes()) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(at) => format!("illegal base32 data at input byte {at}"),
    }))
}

/// `toJson` / `toPrettyJson` (Go's `json.Marshal` / `MarshalIndent`; "" when Go fails, e.g. on
/// NaN) and `toRawJson` (Sprig 3: no HTML escaping).
fn to_json(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 1)?;
    Ok(Value::Str(
        a[0].to_json_text(name == "toPrettyJson", name == "toRawJson")
            .unwrap_or_default(),
    ))
}

/// `fromJson` (Sprig 3, kept by kiln): numbers become float64 as in Go; invalid JSON gives
/// an empty dict.
fn from_json(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 1)?;
    match serde_json::from_str::<serde_json::Value>(s(&a[0])?) {
        Ok(j) => Ok(Value::from_json(&j)),
        Err(_) => Ok(Value::map(Default::default())),
    }
}
