//! Go `text/template`'s predefined functions (`and`, `or`, `not`, `len`, `index`, `print`,
//! `printf`, `println`, the comparisons, `html`, `js`, `urlquery`, `call`) and Sprig's `slice`,
//! which replaces Go's.

use super::fmt::{sprint, sprintf, sprintln};
use super::{check_size, s, to_i64, want, want_min, Ctx, Func, F};
use crate::template::value::Value;

pub const FUNCS: &[(&str, Func)] = &[
    ("and", and_or),
    ("or", and_or),
    ("not", not),
    ("len", len),
    ("index", index),
    ("slice", slice),
    ("print", print),
    ("printf", printf),
    ("println", println),
    ("eq", eq),
    ("ne", ne),
    ("lt", cmp),
    ("le", cmp),
    ("gt", cmp),
    ("ge", cmp),
    ("html", html),
    ("js", js),
    ("urlquery", urlquery),
    ("call", call),
];

/// The executor evaluates `and`/`or` lazily; this is the same rule over evaluated arguments.
fn and_or(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want_min(name, a, 1)?;
    let and = name == "and";
    for v in &a[..a.len() - 1] {
        if and != v.truth() {
            return Ok(v.clone());
        }
    }
    Ok(a[a.len() - 1].clone())
}

fn not(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 1)?;
    Ok(Value::Bool(!a[0].truth()))
}

fn len(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 1)?;
    match &a[0] {
        Value::Str(x) => Ok(Value::Int(x.len() as i64)),
        Value::List(l) => Ok(Value::Int(l.len() as i64)),
        Value::Map(m) => Ok(Value::Int(m.len() as i64)),
        Value::Nil => Err("len of nil pointer".into()),
        other => Err(format!("len of type {}", other.type_name())),
    }
}

fn index(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want_min(name, a, 1)?;
    let mut cur = a[0].clone();
    for idx in &a[1..] {
        cur = match (&cur, idx) {
            (Value::List(l), Value::Int(n)) => {
                if *n < 0 || *n as usize >= l.len() {
                    return Err(format!("index out of range: {n}"));
                }
                l[*n as usize].clone()
            }
            (Value::Str(x), Value::Int(n)) => {
                if *n < 0 || *n as usize >= x.len() {
                    return Err(format!("index out of range: {n}"));
                }
                Value::Int(i64::from(x.as_bytes()[*n as usize]))
            }
            (Value::List(_) | Value::Str(_), other) => {
                return Err(format!(
                    "cannot index slice/array with type {}",
                    other.type_name()
                ))
            }
            (Value::Map(m), Value::Str(k)) => m.get(k).unwrap_or(Value::Nil),
            (Value::Map(_), Value::Nil) => {
                return Err("value is nil; should be of type string".into())
            }
            (Value::Map(_), other) => {
                return Err(format!(
                    "value has type {}; should be string",
                    other.type_name()
                ))
            }
            (Value::Nil, _) => return Err("index of untyped nil".into()),
            (c, _) => return Err(format!("can't index item of type {}", c.type_name())),
        };
    }
    Ok(cur)
}

/// Sprig's `slice list [start [end]]` (indices through `toInt`); kiln also slices strings.
fn slice(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want_min(name, a, 1)?;
    if a.len() > 3 {
        return Err("too many slice indexes".into());
    }
    let len = match &a[0] {
        Value::List(l) if l.is_empty() => return Ok(Value::Nil),
        Value::List(l) => l.len(),
        Value::Str(x) => x.len(),
        Value::Nil => return Err("slice of untyped nil".into()),
        other => {
            return Err(format!(
                "list should be type of slice or array but {}",
                super::fmt::kind_of(other)
            ))
        }
    } as i64;
    let lo = a.get(1).map(to_i64).unwrap_or(0);
    let hi = a.get(2).map(to_i64).unwrap_or(len);
    if lo < 0 || hi < lo || hi > len {
        return Err(format!("slice bounds out of range [{lo}:{hi}]"));
    }
    match &a[0] {
        Value::List(l) => Ok(Value::List(l[lo as usize..hi as usize].to_vec())),
        Value::Str(x) => x
            .get(lo as usize..hi as usize)
            .map(|t| Value::Str(t.to_string()))
            .ok_or_else(|| "slice splits a UTF-8 character".to_string()),
        _ => Err("can't slice".into()),
    }
}

fn print(name: &str, a: &[Value], ctx: &mut Ctx) -> F {
    let t = sprint(a);
    check_size(t.len(), ctx.limit, name)?;
    Ok(Value::Str(t))
}

fn println(name: &str, a: &[Value], ctx: &mut Ctx) -> F {
    let t = sprintln(a);
    check_size(t.len(), ctx.limit, name)?;
    Ok(Value::Str(t))
}

fn printf(name: &str, a: &[Value], ctx: &mut Ctx) -> F {
    want_min(name, a, 1)?;
    Ok(Value::Str(sprintf(s(&a[0])?, &a[1..], ctx.limit)?))
}

#[derive(PartialEq, PartialOrd)]
enum Basic<'a> {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(&'a str),
}

fn basic(v: &Value) -> Option<Basic<'_>> {
    match v {
        Value::Bool(b) => Some(Basic::Bool(*b)),
        Value::Int(x) => Some(Basic::Int(*x)),
        Value::Float(f) => Some(Basic::Float(*f)),
        Value::Str(x) => Some(Basic::Str(x)),
        _ => None,
    }
}

pub(crate) fn go_eq(a: &Value, b: &Value) -> Result<bool, String> {
    match (a, b) {
        (Value::Nil, _) | (_, Value::Nil) => Ok(a == b),
        (Value::List(_), _) | (Value::Map(_), _) => Err("non-comparable type".into()),
        (Value::Time(x), Value::Time(y)) => Ok(x == y),
        (Value::Version(x), Value::Version(y)) => Ok(std::rc::Rc::ptr_eq(x, y)),
        _ => match (basic(a), basic(b)) {
            (Some(x), Some(y)) => {
                if std::mem::discriminant(&x) != std::mem::discriminant(&y) {
                    return Err("incompatible types for comparison".into());
                }
                Ok(x == y)
            }
            (None, None) => Err("non-comparable types".into()),
            _ => Err("incompatible types for comparison".into()),
        },
    }
}

fn go_lt(a: &Value, b: &Value) -> Result<bool, String> {
    match (basic(a), basic(b)) {
        (Some(Basic::Bool(_)), _) | (_, Some(Basic::Bool(_))) => {
            Err("invalid type for comparison".into())
        }
        (Some(x), Some(y)) => {
            if std::mem::discriminant(&x) != std::mem::discriminant(&y) {
                return Err("incompatible types for comparison".into());
            }
            Ok(x < y)
        }
        _ => Err("invalid type for comparison".into()),
    }
}

fn eq(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want_min(name, a, 2)?;
    for b in &a[1..] {
        if go_eq(&a[0], b)? {
            return Ok(Value::Bool(true));
        }
    }
    Ok(Value::Bool(false))
}

fn ne(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 2)?;
    Ok(Value::Bool(!go_eq(&a[0], &a[1])?))
}

fn cmp(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 2)?;
    let lt = go_lt(&a[0], &a[1])?;
    Ok(Value::Bool(match name {
        "lt" => lt,
        "le" => lt || go_eq(&a[0], &a[1])?,
        "gt" => !(lt || go_eq(&a[0], &a[1])?),
        _ => !lt,
    }))
}

/// The text `html`, `js` and `urlquery` escape: a single string as is, otherwise `Sprint`.
fn joined(a: &[Value]) -> String {
    match a {
        [Value::Str(x)] => x.clone(),
        _ => sprint(a),
    }
}

/// `template.HTMLEscapeString`.
pub(crate) fn html_escape(x: &str) -> String {
    let mut out = String::new();
    for c in x.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '\'' => out.push_str("&#39;"),
            '"' => out.push_str("&#34;"),
            '\0' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// `template.JSEscapeString`.
fn js_escape(x: &str) -> String {
    let mut out = String::new();
    for c in x.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '"' => out.push_str("\\\""),
            '<' => out.push_str("\\u003C"),
            '>' => out.push_str("\\u003E"),
            '&' => out.push_str("\\u0026"),
            '=' => out.push_str("\\u003D"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04X}", c as u32)),
            c if !c.is_ascii() && c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// `url.QueryEscape`.
pub(crate) fn url_query_escape(x: &str) -> String {
    let mut out = String::new();
    for b in x.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            b => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn html(_: &str, a: &[Value], _: &mut Ctx) -> F {
    Ok(Value::Str(html_escape(&joined(a))))
}

fn js(_: &str, a: &[Value], _: &mut Ctx) -> F {
    Ok(Value::Str(js_escape(&joined(a))))
}

fn urlquery(_: &str, a: &[Value], _: &mut Ctx) -> F {
    Ok(Value::Str(url_query_escape(&joined(a))))
}

fn call(_: &str, a: &[Value], _: &mut Ctx) -> F {
    match a.first() {
        None => Err("wrong number of args for call: want at least 1 got 0".into()),
        Some(Value::Nil) => Err("call of nil".into()),
        Some(v) => Err(format!(
            "non-function of type {}: task data has no functions",
            v.type_name()
        )),
    }
}
