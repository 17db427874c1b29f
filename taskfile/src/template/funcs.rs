//! Template functions: Go `text/template` built-ins (comparison, logic, `printf`, `index`,
//! `len`, ...) and the Sprig v2 functions task files use (strings, defaults, math, encoding,
//! lists, dicts, regex, paths). `env`/`expandenv` and anything random or clock-based are left out
//! on purpose: evaluation must be pure and must not read the agent's environment.

use std::collections::BTreeMap;

use base64::Engine as _;
use sha2::Digest as _;

use super::value::Value;
use crate::decode::clean_path;

/// Largest list `until`/`untilStep`/`seq` may build.
const MAX_LIST: i64 = 100_000;

/// Compiled-size limit of one regular expression.
const REGEX_SIZE_LIMIT: usize = 1 << 18;
/// Evaluation steps charged for compiling a regular expression (compiling is far more costly
/// than one step; repeated patterns come from the cache and are not charged again).
const REGEX_COMPILE_STEPS: u64 = 1_000;
/// Compiled regular expressions kept per execution.
const REGEX_CACHE: usize = 16;

/// What a function call may use and what it cost beyond its arguments.
pub struct Ctx {
    /// Largest string or value (in [`Value::weight`] units) a function may build.
    pub limit: usize,
    /// Extra evaluation steps the calls so far cost (taken and reset by the executor).
    pub cost: u64,
    /// Recently compiled regular expressions.
    regexes: Vec<(String, regex::Regex)>,
}

impl Ctx {
    pub fn new(limit: usize) -> Self {
        Ctx {
            limit,
            cost: 0,
            regexes: Vec::new(),
        }
    }

    fn regex(&mut self, p: &str) -> Result<regex::Regex, String> {
        if let Some((_, re)) = self.regexes.iter().find(|(q, _)| q == p) {
            return Ok(re.clone());
        }
        self.cost += REGEX_COMPILE_STEPS;
        let re = regex::RegexBuilder::new(p)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map_err(|e| e.to_string())?;
        if self.regexes.len() >= REGEX_CACHE {
            self.regexes.remove(0);
        }
        self.regexes.push((p.to_string(), re.clone()));
        Ok(re)
    }
}

/// Names of every function the engine knows (used for parse-time checking).
pub const NAMES: &[&str] = &[
    // Go built-ins.
    "and",
    "or",
    "not",
    "len",
    "index",
    "slice",
    "print",
    "printf",
    "println",
    "eq",
    "ne",
    "lt",
    "le",
    "gt",
    "ge",
    "html",
    "js",
    "urlquery",
    "call",
    // Sprig: defaults and flow.
    "default",
    "empty",
    "coalesce",
    "ternary",
    "fail",
    "required",
    "typeOf",
    "kindOf",
    "kindIs",
    "typeIs",
    "deepEqual",
    // Sprig: strings.
    "quote",
    "squote",
    "upper",
    "lower",
    "title",
    "untitle",
    "trim",
    "trimAll",
    "trimall",
    "trimPrefix",
    "trimSuffix",
    "trunc",
    "abbrev",
    "replace",
    "contains",
    "hasPrefix",
    "hasSuffix",
    "repeat",
    "substr",
    "nospace",
    "split",
    "splitList",
    "splitn",
    "join",
    "toString",
    "toStrings",
    "cat",
    "indent",
    "nindent",
    "snakecase",
    "camelcase",
    "kebabcase",
    "plural",
    "wrap",
    "initials",
    "swapcase",
    // Sprig: conversion and math.
    "atoi",
    "int",
    "int64",
    "float64",
    "add",
    "add1",
    "sub",
    "mul",
    "div",
    "mod",
    "max",
    "min",
    "biggest",
    "floor",
    "ceil",
    "round",
    // Sprig: encoding and hashing.
    "b64enc",
    "b64dec",
    "b32enc",
    "b32dec",
    "toJson",
    "toPrettyJson",
    "toRawJson",
    "fromJson",
    "sha1sum",
    "sha256sum",
    // Sprig: lists.
    "list",
    "first",
    "last",
    "rest",
    "initial",
    "append",
    "push",
    "prepend",
    "concat",
    "has",
    "without",
    "uniq",
    "reverse",
    "sortAlpha",
    "compact",
    "until",
    "untilStep",
    "seq",
    // Sprig: dicts.
    "dict",
    "get",
    "set",
    "unset",
    "keys",
    "values",
    "hasKey",
    "pluck",
    "merge",
    "pick",
    "omit",
    // Sprig: regex.
    "regexMatch",
    "regexFind",
    "regexFindAll",
    "regexReplaceAll",
    "regexReplaceAllLiteral",
    "regexSplit",
    // Sprig: paths.
    "base",
    "dir",
    "ext",
    "clean",
    "isAbs",
];

type F = Result<Value, String>;

fn want(name: &str, args: &[Value], n: usize) -> Result<(), String> {
    if args.len() != n {
        return Err(format!(
            "wrong number of args for {name}: want {n} got {}",
            args.len()
        ));
    }
    Ok(())
}

fn want_min(name: &str, args: &[Value], n: usize) -> Result<(), String> {
    if args.len() < n {
        return Err(format!(
            "wrong number of args for {name}: want at least {n} got {}",
            args.len()
        ));
    }
    Ok(())
}

/// A `string` parameter: Go rejects other types and nil.
fn s(v: &Value) -> Result<&str, String> {
    match v {
        Value::Str(x) => Ok(x),
        Value::Nil => Err("invalid value; expected string".into()),
        other => Err(format!(
            "wrong type for value; expected string; got {}",
            other.type_name()
        )),
    }
}

/// An `int` parameter.
fn i(v: &Value) -> Result<i64, String> {
    match v {
        Value::Int(x) => Ok(*x),
        Value::Nil => Err("invalid value; expected int".into()),
        other => Err(format!(
            "wrong type for value; expected int; got {}",
            other.type_name()
        )),
    }
}

/// Sprig's `strval`: strings as is, everything else in `%v` form.
pub fn strval(v: &Value) -> String {
    match v {
        Value::Str(x) => x.clone(),
        other => other.go_string(),
    }
}

/// `cast.ToInt64`: lenient conversion (unparseable ⇒ 0).
fn to_i64(v: &Value) -> i64 {
    match v {
        Value::Int(x) => *x,
        Value::Float(f) => *f as i64,
        Value::Bool(b) => i64::from(*b),
        Value::Str(x) => parse_go_int(x).unwrap_or(0),
        _ => 0,
    }
}

fn parse_go_int(x: &str) -> Option<i64> {
    let t = x.trim();
    let (neg, body) = match t.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let lower = body.to_ascii_lowercase();
    let v = if let Some(h) = lower.strip_prefix("0x") {
        i64::from_str_radix(h, 16).ok()?
    } else if lower.len() > 1 && lower.starts_with('0') {
        i64::from_str_radix(lower.trim_start_matches("0o").trim_start_matches('0'), 8)
            .ok()
            .or(if lower.chars().all(|c| c == '0') {
                Some(0)
            } else {
                None
            })?
    } else {
        lower.parse::<i64>().ok()?
    };
    Some(if neg { v.wrapping_neg() } else { v })
}

fn to_f64(v: &Value) -> f64 {
    match v {
        Value::Int(x) => *x as f64,
        Value::Float(f) => *f,
        Value::Bool(b) => f64::from(u8::from(*b)),
        Value::Str(x) => x.trim().parse().unwrap_or(0.0),
        _ => 0.0,
    }
}

fn list_of(name: &str, v: &Value) -> Result<Vec<Value>, String> {
    match v {
        Value::List(l) => Ok(l.clone()),
        Value::Nil => Ok(Vec::new()),
        other => Err(format!("cannot {name} on type {}", other.type_name())),
    }
}

fn map_of(v: &Value) -> Result<BTreeMap<String, Value>, String> {
    match v {
        Value::Map(m) => Ok(m.clone()),
        Value::Nil => Ok(BTreeMap::new()),
        other => Err(format!(
            "wrong type for value; expected map[string]interface {{}}; got {}",
            other.type_name()
        )),
    }
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

fn go_eq(a: &Value, b: &Value) -> Result<bool, String> {
    match (a, b) {
        (Value::Nil, _) | (_, Value::Nil) => Ok(a == b),
        (Value::List(_), _) | (Value::Map(_), _) => Err("non-comparable type".into()),
        _ => match (basic(a), basic(b)) {
            (Some(x), Some(y)) => {
                if std::mem::discriminant(&x) != std::mem::discriminant(&y) {
                    return Err("incompatible types for comparison".into());
                }
                Ok(x == y)
            }
            _ => Err("non-comparable types".into()),
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

/// Go's `fmt.Sprint`: a space between operands when neither is a string.
fn sprint(args: &[Value]) -> String {
    let mut out = String::new();
    for (n, a) in args.iter().enumerate() {
        if n > 0 && !matches!(a, Value::Str(_)) && !matches!(args[n - 1], Value::Str(_)) {
            out.push(' ');
        }
        out.push_str(&a.go_string());
    }
    out
}

fn go_quote(x: &str) -> String {
    let mut out = String::from("\"");
    for c in x.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn pad(text: String, width: Option<usize>, left: bool, zero: bool) -> String {
    let Some(w) = width else { return text };
    let len = text.chars().count();
    if len >= w {
        return text;
    }
    let fill = w - len;
    if left {
        format!("{text}{}", " ".repeat(fill))
    } else if zero {
        let (sign, digits) = match text.strip_prefix('-') {
            Some(d) => ("-", d.to_string()),
            None => ("", text.clone()),
        };
        format!("{sign}{}{digits}", "0".repeat(fill))
    } else {
        format!("{}{text}", " ".repeat(fill))
    }
}

/// Go's `fmt.Sprintf` for the verbs templates use; `Err` once the text would exceed `limit`
/// bytes (checked as it is built, so a format of many wide verbs cannot exhaust memory).
pub fn sprintf(format: &str, args: &[Value], limit: usize) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = format.chars().peekable();
    let mut next_arg = 0usize;
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let (mut left, mut zero, mut plus, mut sharp, mut space) =
            (false, false, false, false, false);
        while let Some(&f) = chars.peek() {
            match f {
                '-' => left = true,
                '0' => zero = true,
                '+' => plus = true,
                '#' => sharp = true,
                ' ' => space = true,
                _ => break,
            }
            chars.next();
        }
        let mut width = None;
        while let Some(&d) = chars.peek() {
            if let Some(v) = d.to_digit(10) {
                width = Some(
                    width
                        .unwrap_or(0usize)
                        .saturating_mul(10)
                        .saturating_add(v as usize)
                        .min(10_000),
                );
                chars.next();
            } else {
                break;
            }
        }
        let mut prec = None;
        if chars.peek() == Some(&'.') {
            chars.next();
            let mut p = 0usize;
            while let Some(&d) = chars.peek() {
                if let Some(v) = d.to_digit(10) {
                    p = p.saturating_mul(10).saturating_add(v as usize).min(10_000);
                    chars.next();
                } else {
                    break;
                }
            }
            prec = Some(p);
        }
        let Some(verb) = chars.next() else {
            out.push_str("%!(NOVERB)");
            break;
        };
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(arg) = args.get(next_arg) else {
            out.push_str(&format!("%!{verb}(MISSING)"));
            continue;
        };
        next_arg += 1;
        let bad = |a: &Value| format!("%!{verb}({}={})", a.type_name(), a.go_string());
        let text = match (verb, arg) {
            ('v', Value::Str(x)) if sharp => go_quote(x),
            ('v', a) => {
                if let (Value::Float(f), Some(p)) = (a, prec) {
                    format!("{:.*}", p, f)
                } else {
                    a.go_string()
                }
            }
            ('s', Value::Str(x)) => match prec {
                Some(p) => x.chars().take(p).collect(),
                None => x.clone(),
            },
            ('s', Value::Nil) => "%!s(<nil>)".to_string(),
            ('s', a @ (Value::List(_) | Value::Map(_) | Value::Bool(_))) => a.go_string(),
            ('q', Value::Str(x)) => go_quote(x),
            ('q', Value::Int(n)) => {
                format!("'{}'", char::from_u32(*n as u32).unwrap_or('\u{fffd}'))
            }
            ('d', Value::Int(n)) => {
                let mut t = n.to_string();
                if plus && *n >= 0 {
                    t = format!("+{t}");
                } else if space && *n >= 0 {
                    t = format!(" {t}");
                }
                t
            }
            ('t', Value::Bool(b)) => b.to_string(),
            ('x', Value::Int(n)) => {
                if sharp {
                    format!("0x{n:x}")
                } else {
                    format!("{n:x}")
                }
            }
            ('X', Value::Int(n)) => {
                if sharp {
                    format!("0X{n:X}")
                } else {
                    format!("{n:X}")
                }
            }
            ('o', Value::Int(n)) => format!("{n:o}"),
            ('b', Value::Int(n)) => format!("{n:b}"),
            ('c', Value::Int(n)) => char::from_u32(*n as u32).unwrap_or('\u{fffd}').to_string(),
            ('x', Value::Str(x)) => hex::encode(x.as_bytes()),
            ('X', Value::Str(x)) => hex::encode_upper(x.as_bytes()),
            ('f' | 'F', Value::Float(f)) => format!("{:.*}", prec.unwrap_or(6), f),
            ('e', Value::Float(f)) => {
                let t = format!("{:.*e}", prec.unwrap_or(6), f);
                match t.split_once('e') {
                    Some((m, e)) => {
                        let (sg, d) = match e.strip_prefix('-') {
                            Some(d) => ('-', d),
                            None => ('+', e),
                        };
                        format!("{m}e{sg}{d:0>2}")
                    }
                    None => t,
                }
            }
            ('g', Value::Float(f)) => Value::Float(*f).go_string(),
            (_, a) => bad(a),
        };
        if out
            .len()
            .saturating_add(text.len())
            .saturating_add(width.unwrap_or(0))
            > limit
        {
            return Err(format!("printf result exceeds {limit} bytes"));
        }
        out.push_str(&pad(text, width, left, zero && !left));
    }
    if next_arg < args.len() {
        out.push_str("%!(EXTRA ");
        let extra: Vec<String> = args[next_arg..]
            .iter()
            .map(|a| format!("{}={}", a.type_name(), a.go_string()))
            .collect();
        out.push_str(&extra.join(", "));
        out.push(')');
    }
    check_size(out.len(), limit, "printf")?;
    Ok(out)
}

fn html_escape(x: &str) -> String {
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
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

fn url_query_escape(x: &str) -> String {
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

fn empty(v: &Value) -> bool {
    !v.truth()
}

fn words_case(x: &str, sep: char) -> String {
    let mut out = String::new();
    let mut prev_lower = false;
    for c in x.chars() {
        if c.is_alphanumeric() {
            if c.is_uppercase() && prev_lower && !out.is_empty() {
                out.push(sep);
            }
            prev_lower = c.is_lowercase() || c.is_ascii_digit();
            out.extend(c.to_lowercase());
        } else {
            if !out.is_empty() && !out.ends_with(sep) {
                out.push(sep);
            }
            prev_lower = false;
        }
    }
    out.trim_end_matches(sep).to_string()
}

fn title(x: &str) -> String {
    let mut out = String::new();
    let mut at_start = true;
    for c in x.chars() {
        if at_start && c.is_alphabetic() {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        at_start = !c.is_alphanumeric() && c != '\'';
    }
    out
}

/// Collects the strings of `parts` as a list value, failing once its weight exceeds `limit`
/// (a split of a large text into many small pieces is much larger than the text).
fn bounded_list<'s>(
    parts: impl Iterator<Item = &'s str>,
    limit: usize,
    name: &str,
) -> Result<Vec<Value>, String> {
    let mut weight = 0usize;
    let mut out = Vec::new();
    for p in parts {
        weight = weight
            .saturating_add(p.len())
            .saturating_add(super::value::NODE_WEIGHT);
        check_size(weight, limit, name)?;
        out.push(Value::Str(p.to_string()));
    }
    Ok(out)
}

/// Keys for hash-based membership; `None` when some value has no key (contains NaN).
fn keys_of(values: &[Value]) -> Option<std::collections::HashSet<String>> {
    values.iter().map(Value::identity_key).collect()
}

fn check_len(n: i64, name: &str) -> Result<(), String> {
    if n > MAX_LIST {
        return Err(format!("{name} would produce {n} items (limit {MAX_LIST})"));
    }
    Ok(())
}

fn check_size(n: usize, limit: usize, name: &str) -> Result<(), String> {
    if n > limit {
        return Err(format!("{name} result exceeds {limit} bytes"));
    }
    Ok(())
}

/// Calls function `name`. `ctx.limit` bounds the size of strings and lists a function may
/// build; work beyond the arguments' size is added to `ctx.cost`.
pub fn call(name: &str, a: Vec<Value>, ctx: &mut Ctx) -> F {
    let limit = ctx.limit;
    let a = &a[..];
    match name {
        "not" => {
            want(name, a, 1)?;
            Ok(Value::Bool(!a[0].truth()))
        }
        "len" => {
            want(name, a, 1)?;
            match &a[0] {
                Value::Str(x) => Ok(Value::Int(x.len() as i64)),
                Value::List(l) => Ok(Value::Int(l.len() as i64)),
                Value::Map(m) => Ok(Value::Int(m.len() as i64)),
                Value::Nil => Err("len of nil pointer".into()),
                other => Err(format!("len of type {}", other.type_name())),
            }
        }
        "index" => {
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
                    (Value::Map(m), Value::Str(k)) => m.get(k).cloned().unwrap_or(Value::Nil),
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
        "slice" => {
            want_min(name, a, 1)?;
            let idx: Result<Vec<i64>, String> = a[1..].iter().map(i).collect();
            let idx = idx?;
            if idx.len() > 2 {
                return Err("too many slice indexes".into());
            }
            let len = match &a[0] {
                Value::List(l) => l.len(),
                Value::Str(x) => x.len(),
                Value::Nil => return Err("slice of untyped nil".into()),
                other => return Err(format!("can't slice item of type {}", other.type_name())),
            } as i64;
            let lo = idx.first().copied().unwrap_or(0);
            let hi = idx.get(1).copied().unwrap_or(len);
            if lo < 0 || hi < lo || hi > len {
                return Err(format!("index out of range: {lo}:{hi}"));
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
        "print" => {
            let t = sprint(a);
            check_size(t.len(), limit, name)?;
            Ok(Value::Str(t))
        }
        "println" => {
            let parts: Vec<String> = a.iter().map(Value::go_string).collect();
            Ok(Value::Str(format!("{}\n", parts.join(" "))))
        }
        "printf" => {
            want_min(name, a, 1)?;
            Ok(Value::Str(sprintf(s(&a[0])?, &a[1..], limit)?))
        }
        "eq" => {
            want_min(name, a, 2)?;
            for b in &a[1..] {
                if go_eq(&a[0], b)? {
                    return Ok(Value::Bool(true));
                }
            }
            Ok(Value::Bool(false))
        }
        "ne" => {
            want(name, a, 2)?;
            Ok(Value::Bool(!go_eq(&a[0], &a[1])?))
        }
        "lt" => {
            want(name, a, 2)?;
            Ok(Value::Bool(go_lt(&a[0], &a[1])?))
        }
        "le" => {
            want(name, a, 2)?;
            Ok(Value::Bool(go_lt(&a[0], &a[1])? || go_eq(&a[0], &a[1])?))
        }
        "gt" => {
            want(name, a, 2)?;
            Ok(Value::Bool(!(go_lt(&a[0], &a[1])? || go_eq(&a[0], &a[1])?)))
        }
        "ge" => {
            want(name, a, 2)?;
            Ok(Value::Bool(!go_lt(&a[0], &a[1])?))
        }
        "html" => Ok(Value::Str(html_escape(&sprint(a)))),
        "js" => Ok(Value::Str(js_escape(&sprint(a)))),
        "urlquery" => Ok(Value::Str(url_query_escape(&sprint(a)))),
        "call" => Err("call is not supported: task data has no functions".into()),

        "default" => {
            want_min(name, a, 1)?;
            if a.len() == 1 || empty(&a[1]) {
                Ok(a[0].clone())
            } else {
                Ok(a[1].clone())
            }
        }
        "empty" => {
            want(name, a, 1)?;
            Ok(Value::Bool(empty(&a[0])))
        }
        "coalesce" => Ok(a.iter().find(|v| !empty(v)).cloned().unwrap_or(Value::Nil)),
        "ternary" => {
            want(name, a, 3)?;
            match &a[2] {
                Value::Bool(b) => Ok(if *b { a[0].clone() } else { a[1].clone() }),
                other => Err(format!(
                    "wrong type for value; expected bool; got {}",
                    other.type_name()
                )),
            }
        }
        "fail" => {
            want(name, a, 1)?;
            Err(s(&a[0])?.to_string())
        }
        "required" => {
            want(name, a, 2)?;
            if a[1] == Value::Nil || a[1] == Value::Str(String::new()) {
                return Err(s(&a[0])?.to_string());
            }
            Ok(a[1].clone())
        }
        "typeOf" => {
            want(name, a, 1)?;
            Ok(Value::Str(a[0].type_name().to_string()))
        }
        "kindOf" => {
            want(name, a, 1)?;
            Ok(Value::Str(kind_of(&a[0]).into()))
        }
        "kindIs" => {
            want(name, a, 2)?;
            Ok(Value::Bool(s(&a[0])? == kind_of(&a[1])))
        }
        "typeIs" => {
            want(name, a, 2)?;
            Ok(Value::Bool(s(&a[0])? == a[1].type_name()))
        }
        "deepEqual" => {
            want(name, a, 2)?;
            Ok(Value::Bool(a[0] == a[1]))
        }

        "quote" => Ok(Value::Str(
            a.iter()
                .filter(|v| **v != Value::Nil)
                .map(|v| go_quote(&strval(v)))
                .collect::<Vec<_>>()
                .join(" "),
        )),
        "squote" => Ok(Value::Str(
            a.iter()
                .filter(|v| **v != Value::Nil)
                .map(|v| format!("'{}'", strval(v)))
                .collect::<Vec<_>>()
                .join(" "),
        )),
        "cat" => Ok(Value::Str(
            a.iter()
                .filter(|v| **v != Value::Nil)
                .map(strval)
                .collect::<Vec<_>>()
                .join(" "),
        )),
        "upper" => {
            want(name, a, 1)?;
            Ok(Value::Str(s(&a[0])?.to_uppercase()))
        }
        "lower" => {
            want(name, a, 1)?;
            Ok(Value::Str(s(&a[0])?.to_lowercase()))
        }
        "title" => {
            want(name, a, 1)?;
            Ok(Value::Str(title(s(&a[0])?)))
        }
        "untitle" => {
            want(name, a, 1)?;
            let x = s(&a[0])?;
            let mut out = String::new();
            let mut at_start = true;
            for c in x.chars() {
                if at_start {
                    out.extend(c.to_lowercase());
                } else {
                    out.push(c);
                }
                at_start = c.is_whitespace();
            }
            Ok(Value::Str(out))
        }
        "swapcase" => {
            want(name, a, 1)?;
            Ok(Value::Str(
                s(&a[0])?
                    .chars()
                    .flat_map(|c| {
                        if c.is_uppercase() {
                            c.to_lowercase().collect::<Vec<_>>()
                        } else {
                            c.to_uppercase().collect::<Vec<_>>()
                        }
                    })
                    .collect(),
            ))
        }
        "trim" => {
            want(name, a, 1)?;
            Ok(Value::Str(s(&a[0])?.trim().to_string()))
        }
        "trimAll" | "trimall" => {
            want(name, a, 2)?;
            let cut: std::collections::HashSet<char> = s(&a[0])?.chars().collect();
            Ok(Value::Str(
                s(&a[1])?.trim_matches(|c| cut.contains(&c)).to_string(),
            ))
        }
        "trimPrefix" => {
            want(name, a, 2)?;
            let x = s(&a[1])?;
            Ok(Value::Str(
                x.strip_prefix(s(&a[0])?).unwrap_or(x).to_string(),
            ))
        }
        "trimSuffix" => {
            want(name, a, 2)?;
            let x = s(&a[1])?;
            Ok(Value::Str(
                x.strip_suffix(s(&a[0])?).unwrap_or(x).to_string(),
            ))
        }
        "trunc" => {
            want(name, a, 2)?;
            let c = i(&a[0])?;
            let x = s(&a[1])?;
            let n = x.len() as i64;
            let out = if c < 0 && n + c > 0 {
                x.get((n + c) as usize..).unwrap_or(x)
            } else if c >= 0 && n > c {
                x.get(..c as usize).unwrap_or(x)
            } else {
                x
            };
            Ok(Value::Str(out.to_string()))
        }
        "abbrev" => {
            want(name, a, 2)?;
            let w = i(&a[0])?;
            let x = s(&a[1])?;
            if w < 4 || x.chars().count() as i64 <= w {
                return Ok(Value::Str(x.to_string()));
            }
            let t: String = x.chars().take((w - 3) as usize).collect();
            Ok(Value::Str(format!("{t}...")))
        }
        "replace" => {
            want(name, a, 3)?;
            let (old, new, src) = (s(&a[0])?, s(&a[1])?, s(&a[2])?);
            let count = if old.is_empty() {
                src.chars().count() + 1
            } else {
                src.matches(old).count()
            };
            check_size(
                src.len().saturating_add(count.saturating_mul(new.len())),
                limit,
                name,
            )?;
            Ok(Value::Str(src.replace(old, new)))
        }
        "contains" => {
            want(name, a, 2)?;
            Ok(Value::Bool(s(&a[1])?.contains(s(&a[0])?)))
        }
        "hasPrefix" => {
            want(name, a, 2)?;
            Ok(Value::Bool(s(&a[1])?.starts_with(s(&a[0])?)))
        }
        "hasSuffix" => {
            want(name, a, 2)?;
            Ok(Value::Bool(s(&a[1])?.ends_with(s(&a[0])?)))
        }
        "repeat" => {
            want(name, a, 2)?;
            let n = i(&a[0])?;
            let x = s(&a[1])?;
            if n < 0 {
                return Err("strings: negative Repeat count".into());
            }
            check_size((n as usize).saturating_mul(x.len()), limit, name)?;
            Ok(Value::Str(x.repeat(n as usize)))
        }
        "substr" => {
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
            x.get(lo as usize..hi as usize)
                .map(|t| Value::Str(t.to_string()))
                .ok_or_else(|| "substr splits a UTF-8 character".to_string())
        }
        "nospace" => {
            want(name, a, 1)?;
            Ok(Value::Str(
                s(&a[0])?.chars().filter(|c| !c.is_whitespace()).collect(),
            ))
        }
        "split" | "splitList" | "splitn" => {
            let (sep, x, n) = if name == "splitn" {
                want(name, a, 3)?;
                (s(&a[0])?, s(&a[2])?, Some(i(&a[1])?))
            } else {
                want(name, a, 2)?;
                (s(&a[0])?, s(&a[1])?, None)
            };
            let parts: Vec<Value> = match (sep.is_empty(), n) {
                (true, _) => bounded_list(
                    x.char_indices().map(|(i, c)| &x[i..i + c.len_utf8()]),
                    limit,
                    name,
                )?,
                (false, Some(n)) if n > 0 => bounded_list(x.splitn(n as usize, sep), limit, name)?,
                (false, Some(_)) => Vec::new(),
                (false, None) => bounded_list(x.split(sep), limit, name)?,
            };
            if name == "splitList" {
                Ok(Value::List(parts))
            } else {
                Ok(Value::Map(
                    parts
                        .into_iter()
                        .enumerate()
                        .map(|(k, v)| (format!("_{k}"), v))
                        .collect(),
                ))
            }
        }
        "join" => {
            want(name, a, 2)?;
            let sep = s(&a[0])?;
            let items: Vec<String> = match &a[1] {
                Value::List(l) => l.iter().filter(|v| **v != Value::Nil).map(strval).collect(),
                Value::Nil => Vec::new(),
                other => vec![strval(other)],
            };
            let total = items
                .iter()
                .map(String::len)
                .fold(0usize, usize::saturating_add)
                .saturating_add(items.len().saturating_mul(sep.len()));
            check_size(total, limit, name)?;
            let t = items.join(sep);
            check_size(t.len(), limit, name)?;
            Ok(Value::Str(t))
        }
        "toString" => {
            want(name, a, 1)?;
            Ok(Value::Str(strval(&a[0])))
        }
        "toStrings" => {
            want(name, a, 1)?;
            let l = match &a[0] {
                Value::List(l) => l.clone(),
                Value::Nil => Vec::new(),
                other => vec![other.clone()],
            };
            Ok(Value::List(
                l.iter().map(|v| Value::Str(strval(v))).collect(),
            ))
        }
        "indent" | "nindent" => {
            want(name, a, 2)?;
            let n = i(&a[0])?.max(0) as usize;
            let x = s(&a[1])?;
            check_size(
                x.len()
                    .saturating_add(n.saturating_mul(x.lines().count() + 1)),
                limit,
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
        "snakecase" => {
            want(name, a, 1)?;
            Ok(Value::Str(words_case(s(&a[0])?, '_')))
        }
        "kebabcase" => {
            want(name, a, 1)?;
            Ok(Value::Str(words_case(s(&a[0])?, '-')))
        }
        "camelcase" => {
            want(name, a, 1)?;
            Ok(Value::Str(
                s(&a[0])?
                    .split(['_', '-', ' '])
                    .map(title)
                    .collect::<String>(),
            ))
        }
        "initials" => {
            want(name, a, 1)?;
            Ok(Value::Str(
                s(&a[0])?
                    .split_whitespace()
                    .filter_map(|w| w.chars().next())
                    .collect(),
            ))
        }
        "wrap" => {
            want(name, a, 2)?;
            let w = i(&a[0])?.max(1) as usize;
            let mut out = String::new();
            let mut line = 0usize;
            for word in s(&a[1])?.split_whitespace() {
                if line > 0 && line + 1 + word.len() > w {
                    out.push('\n');
                    line = 0;
                } else if line > 0 {
                    out.push(' ');
                    line += 1;
                }
                out.push_str(word);
                line += word.len();
            }
            Ok(Value::Str(out))
        }
        "plural" => {
            want(name, a, 3)?;
            Ok(if i(&a[2])? == 1 {
                a[0].clone()
            } else {
                a[1].clone()
            })
        }

        "atoi" => {
            want(name, a, 1)?;
            Ok(Value::Int(s(&a[0])?.trim().parse().unwrap_or(0)))
        }
        "int" | "int64" => {
            want(name, a, 1)?;
            Ok(Value::Int(to_i64(&a[0])))
        }
        "float64" => {
            want(name, a, 1)?;
            Ok(Value::Float(to_f64(&a[0])))
        }
        "add" => Ok(Value::Int(
            a.iter().fold(0i64, |acc, v| acc.wrapping_add(to_i64(v))),
        )),
        "mul" => {
            want_min(name, a, 1)?;
            Ok(Value::Int(
                a.iter().fold(1i64, |acc, v| acc.wrapping_mul(to_i64(v))),
            ))
        }
        "add1" => {
            want(name, a, 1)?;
            Ok(Value::Int(to_i64(&a[0]).wrapping_add(1)))
        }
        "sub" => {
            want(name, a, 2)?;
            Ok(Value::Int(to_i64(&a[0]).wrapping_sub(to_i64(&a[1]))))
        }
        "div" | "mod" => {
            want(name, a, 2)?;
            let d = to_i64(&a[1]);
            if d == 0 {
                return Err("runtime error: integer divide by zero".into());
            }
            let n = to_i64(&a[0]);
            Ok(Value::Int(if name == "div" {
                n.wrapping_div(d)
            } else {
                n.wrapping_rem(d)
            }))
        }
        "max" | "biggest" => {
            want_min(name, a, 1)?;
            Ok(Value::Int(a.iter().map(to_i64).max().unwrap_or(0)))
        }
        "min" => {
            want_min(name, a, 1)?;
            Ok(Value::Int(a.iter().map(to_i64).min().unwrap_or(0)))
        }
        "floor" => {
            want(name, a, 1)?;
            Ok(Value::Float(to_f64(&a[0]).floor()))
        }
        "ceil" => {
            want(name, a, 1)?;
            Ok(Value::Float(to_f64(&a[0]).ceil()))
        }
        "round" => {
            want_min(name, a, 2)?;
            let p = to_i64(&a[1]).clamp(0, 15) as i32;
            let m = 10f64.powi(p);
            Ok(Value::Float((to_f64(&a[0]) * m).round() / m))
        }

        "b64enc" => {
            want(name, a, 1)?;
            // acb overrides Sprig's b64enc: nil (a missing value or secret) encodes to "".
            Ok(Value::Str(match &a[0] {
                Value::Nil => String::new(),
                v => base64::engine::general_purpose::STANDARD.encode(strval(v)),
            }))
        }
        "b64dec" => {
            want(name, a, 1)?;
            Ok(Value::Str(
                match base64::engine::general_purpose::STANDARD.decode(s(&a[0])?) {
                    Ok(b) => String::from_utf8_lossy(&b).into_owned(),
                    Err(e) => e.to_string(),
                },
            ))
        }
        "b32enc" => {
            want(name, a, 1)?;
            Ok(Value::Str(base32_encode(strval(&a[0]).as_bytes())))
        }
        "b32dec" => {
            want(name, a, 1)?;
            Ok(Value::Str(match base32_decode(s(&a[0])?) {
                Some(b) => String::from_utf8_lossy(&b).into_owned(),
                None => "illegal base32 data".into(),
            }))
        }
        "toJson" | "toRawJson" => {
            want(name, a, 1)?;
            Ok(Value::Str(a[0].to_json().to_string()))
        }
        "toPrettyJson" => {
            want(name, a, 1)?;
            Ok(Value::Str(
                serde_json::to_string_pretty(&a[0].to_json()).unwrap_or_default(),
            ))
        }
        "fromJson" => {
            want(name, a, 1)?;
            match serde_json::from_str::<serde_json::Value>(s(&a[0])?) {
                Ok(j) => Ok(Value::from_json(&j)),
                Err(_) => Ok(Value::Map(BTreeMap::new())),
            }
        }
        "sha256sum" => {
            want(name, a, 1)?;
            Ok(Value::Str(hex::encode(sha2::Sha256::digest(
                s(&a[0])?.as_bytes(),
            ))))
        }
        "sha1sum" => Err("sha1sum is not available; use sha256sum".into()),

        "list" => Ok(Value::List(a.to_vec())),
        "first" => {
            want(name, a, 1)?;
            Ok(list_of(name, &a[0])?.first().cloned().unwrap_or(Value::Nil))
        }
        "last" => {
            want(name, a, 1)?;
            Ok(list_of(name, &a[0])?.last().cloned().unwrap_or(Value::Nil))
        }
        "rest" => {
            want(name, a, 1)?;
            let l = list_of(name, &a[0])?;
            Ok(Value::List(
                l.get(1..).map(<[Value]>::to_vec).unwrap_or_default(),
            ))
        }
        "initial" => {
            want(name, a, 1)?;
            let l = list_of(name, &a[0])?;
            let n = l.len().saturating_sub(1);
            Ok(Value::List(l[..n].to_vec()))
        }
        "append" | "push" => {
            want(name, a, 2)?;
            let mut l = list_of(name, &a[0])?;
            l.push(a[1].clone());
            Ok(Value::List(l))
        }
        "prepend" => {
            want(name, a, 2)?;
            let mut l = list_of(name, &a[0])?;
            l.insert(0, a[1].clone());
            Ok(Value::List(l))
        }
        "concat" => {
            let mut out = Vec::new();
            for v in a {
                out.extend(list_of(name, v)?);
            }
            Ok(Value::List(out))
        }
        "has" => {
            want(name, a, 2)?;
            Ok(Value::Bool(list_of(name, &a[1])?.contains(&a[0])))
        }
        "without" => {
            want_min(name, a, 1)?;
            let l = list_of(name, &a[0])?;
            // A hash set keeps this linear; values with NaN (equal to nothing) are kept as is.
            let Some(drop) = keys_of(&a[1..]) else {
                ctx.cost += (l.len() as u64).saturating_mul(a.len() as u64) / 64;
                return Ok(Value::List(
                    l.into_iter().filter(|v| !a[1..].contains(v)).collect(),
                ));
            };
            Ok(Value::List(
                l.into_iter()
                    .filter(|v| v.identity_key().is_none_or(|k| !drop.contains(&k)))
                    .collect(),
            ))
        }
        "uniq" => {
            want(name, a, 1)?;
            let mut out: Vec<Value> = Vec::new();
            let mut seen = std::collections::HashSet::new();
            for v in list_of(name, &a[0])? {
                match v.identity_key() {
                    Some(k) => {
                        if seen.insert(k) {
                            out.push(v);
                        }
                    }
                    // NaN is unequal to everything, so such a value is always new.
                    None => out.push(v),
                }
            }
            Ok(Value::List(out))
        }
        "reverse" => {
            want(name, a, 1)?;
            match &a[0] {
                Value::Str(x) => Ok(Value::Str(x.chars().rev().collect())),
                v => {
                    let mut l = list_of(name, v)?;
                    l.reverse();
                    Ok(Value::List(l))
                }
            }
        }
        "sortAlpha" => {
            want(name, a, 1)?;
            let mut l: Vec<String> = match &a[0] {
                Value::List(l) => l.iter().map(strval).collect(),
                other => vec![strval(other)],
            };
            l.sort();
            Ok(Value::List(l.into_iter().map(Value::Str).collect()))
        }
        "compact" => {
            want(name, a, 1)?;
            Ok(Value::List(
                list_of(name, &a[0])?
                    .into_iter()
                    .filter(|v| !empty(v))
                    .collect(),
            ))
        }
        "until" => {
            want(name, a, 1)?;
            let n = i(&a[0])?;
            check_len(n, name)?;
            Ok(Value::List((0..n.max(0)).map(Value::Int).collect()))
        }
        "untilStep" | "seq" => {
            // i128: the bounds are i64 values plus or minus one.
            let wide = |v: &Value| i128::from(to_i64(v));
            let (start, stop, step): (i128, i128, i128) = if name == "seq" {
                match a.len() {
                    1 => (1, wide(&a[0]) + 1, 1),
                    2 => {
                        let (x, y) = (wide(&a[0]), wide(&a[1]));
                        if x <= y {
                            (x, y + 1, 1)
                        } else {
                            (x, y - 1, -1)
                        }
                    }
                    3 => {
                        let (x, st, y) = (wide(&a[0]), wide(&a[1]), wide(&a[2]));
                        (x, if st >= 0 { y + 1 } else { y - 1 }, st)
                    }
                    _ => return Err("wrong number of args for seq".into()),
                }
            } else {
                want(name, a, 3)?;
                (
                    i128::from(i(&a[0])?),
                    i128::from(i(&a[1])?),
                    i128::from(i(&a[2])?),
                )
            };
            if step == 0 {
                return Ok(Value::List(Vec::new()));
            }
            let count = ((stop - start) / step).max(0);
            if count > i128::from(MAX_LIST) {
                return Err(format!(
                    "{name} would produce {count} items (limit {MAX_LIST})"
                ));
            }
            let mut out = Vec::new();
            let mut x = start;
            while (step > 0 && x < stop) || (step < 0 && x > stop) {
                // Within [start, stop), so within i64.
                out.push(Value::Int(i64::try_from(x).unwrap_or_default()));
                x += step;
            }
            if name == "seq" {
                let t: Vec<String> = out.iter().map(Value::go_string).collect();
                return Ok(Value::Str(t.join(" ")));
            }
            Ok(Value::List(out))
        }

        "dict" => {
            let mut m = BTreeMap::new();
            for pair in a.chunks(2) {
                let v = pair.get(1).cloned().unwrap_or(Value::Str(String::new()));
                m.insert(strval(&pair[0]), v);
            }
            Ok(Value::Map(m))
        }
        "get" => {
            want(name, a, 2)?;
            Ok(map_of(&a[0])?
                .remove(s(&a[1])?)
                .unwrap_or(Value::Str(String::new())))
        }
        "set" => {
            want(name, a, 3)?;
            let mut m = map_of(&a[0])?;
            m.insert(s(&a[1])?.to_string(), a[2].clone());
            Ok(Value::Map(m))
        }
        "unset" => {
            want(name, a, 2)?;
            let mut m = map_of(&a[0])?;
            m.remove(s(&a[1])?);
            Ok(Value::Map(m))
        }
        "keys" => {
            let mut out = Vec::new();
            for v in a {
                out.extend(map_of(v)?.into_keys().map(Value::Str));
            }
            Ok(Value::List(out))
        }
        "values" => {
            want(name, a, 1)?;
            Ok(Value::List(map_of(&a[0])?.into_values().collect()))
        }
        "hasKey" => {
            want(name, a, 2)?;
            Ok(Value::Bool(map_of(&a[0])?.contains_key(s(&a[1])?)))
        }
        "pluck" => {
            want_min(name, a, 1)?;
            let key = s(&a[0])?;
            let mut out = Vec::new();
            for v in &a[1..] {
                if let Some(x) = map_of(v)?.remove(key) {
                    out.push(x);
                }
            }
            Ok(Value::List(out))
        }
        "merge" => {
            want_min(name, a, 1)?;
            let mut m = map_of(&a[0])?;
            for v in &a[1..] {
                for (k, x) in map_of(v)? {
                    m.entry(k).or_insert(x);
                }
            }
            Ok(Value::Map(m))
        }
        "pick" | "omit" => {
            want_min(name, a, 1)?;
            let m = map_of(&a[0])?;
            let names: std::collections::HashSet<String> = a[1..].iter().map(strval).collect();
            Ok(Value::Map(
                m.into_iter()
                    .filter(|(k, _)| names.contains(k) == (name == "pick"))
                    .collect(),
            ))
        }

        "regexMatch" => {
            want(name, a, 2)?;
            Ok(Value::Bool(ctx.regex(s(&a[0])?)?.is_match(s(&a[1])?)))
        }
        "regexFind" => {
            want(name, a, 2)?;
            Ok(Value::Str(
                ctx.regex(s(&a[0])?)?
                    .find(s(&a[1])?)
                    .map(|m| m.as_str().to_string())
                    .unwrap_or_default(),
            ))
        }
        "regexFindAll" => {
            want(name, a, 3)?;
            let n = i(&a[2])?;
            let re = ctx.regex(s(&a[0])?)?;
            let it = re.find_iter(s(&a[1])?).map(|m| m.as_str());
            Ok(Value::List(if n < 0 {
                bounded_list(it, limit, name)?
            } else {
                bounded_list(it.take(n as usize), limit, name)?
            }))
        }
        "regexReplaceAll" | "regexReplaceAllLiteral" => {
            want(name, a, 3)?;
            let re = ctx.regex(s(&a[0])?)?;
            let (src, repl) = (s(&a[1])?, s(&a[2])?);
            // Replaces match by match, checking the size before each expansion: every `$`
            // reference expands to at most the whole match.
            let expand = name == "regexReplaceAll";
            let refs = if expand { repl.matches('$').count() } else { 0 };
            let mut t = String::new();
            let mut last = 0;
            for caps in re.captures_iter(src) {
                let Some(m) = caps.get(0) else { continue };
                let bound = t
                    .len()
                    .saturating_add(m.start() - last)
                    .saturating_add(repl.len())
                    .saturating_add(refs.saturating_mul(m.len()));
                check_size(bound, limit, name)?;
                t.push_str(&src[last..m.start()]);
                if expand {
                    caps.expand(repl, &mut t);
                } else {
                    t.push_str(repl);
                }
                last = m.end();
            }
            t.push_str(&src[last..]);
            check_size(t.len(), limit, name)?;
            Ok(Value::Str(t))
        }
        "regexSplit" => {
            want(name, a, 3)?;
            let re = ctx.regex(s(&a[0])?)?;
            let n = i(&a[2])?;
            let x = s(&a[1])?;
            let parts: Vec<Value> = if n < 0 {
                bounded_list(re.split(x), limit, name)?
            } else {
                bounded_list(re.splitn(x, n as usize), limit, name)?
            };
            Ok(Value::List(parts))
        }

        "base" => {
            want(name, a, 1)?;
            let x = s(&a[0])?;
            let t = x.trim_end_matches('/');
            Ok(Value::Str(if x.is_empty() {
                ".".into()
            } else if t.is_empty() {
                "/".into()
            } else {
                t.rsplit('/').next().unwrap_or(t).to_string()
            }))
        }
        "dir" => {
            want(name, a, 1)?;
            let x = s(&a[0])?;
            let d = match x.rfind('/') {
                Some(p) => &x[..p + 1],
                None => "",
            };
            Ok(Value::Str(clean_path(d)))
        }
        "ext" => {
            want(name, a, 1)?;
            let x = s(&a[0])?;
            let last = x.rsplit('/').next().unwrap_or(x);
            Ok(Value::Str(match last.rfind('.') {
                Some(p) => last[p..].to_string(),
                None => String::new(),
            }))
        }
        "clean" => {
            want(name, a, 1)?;
            Ok(Value::Str(clean_path(s(&a[0])?)))
        }
        "isAbs" => {
            want(name, a, 1)?;
            Ok(Value::Bool(s(&a[0])?.starts_with('/')))
        }
        other => Err(format!("function {other:?} not defined")),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Nil => "invalid",
        Value::Bool(_) => "bool",
        Value::Int(_) => "int",
        Value::Float(_) => "float64",
        Value::Str(_) => "string",
        Value::List(_) => "slice",
        Value::Map(_) => "map",
    }
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

fn base32_decode(text: &str) -> Option<Vec<u8>> {
    let clean = text.trim_end_matches('=');
    let mut bits: u64 = 0;
    let mut n = 0;
    let mut out = Vec::new();
    for c in clean.bytes() {
        let v = B32.iter().position(|x| *x == c)? as u64;
        bits = (bits << 5) | v;
        n += 5;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(name: &str, a: Vec<Value>) -> Value {
        call(name, a, &mut Ctx::new(1 << 20)).unwrap()
    }

    fn try_call(name: &str, a: Vec<Value>, limit: usize) -> F {
        call(name, a, &mut Ctx::new(limit))
    }

    #[test]
    fn printf_verbs() {
        assert_eq!(
            sprintf(
                "%s-%d-%v-%q-%05d-%-3s|%x",
                &[
                    "a".into(),
                    Value::Int(3),
                    Value::Bool(true),
                    "q".into(),
                    Value::Int(42),
                    "b".into(),
                    Value::Int(255)
                ],
                1000
            )
            .unwrap(),
            "a-3-true-\"q\"-00042-b  |ff"
        );
        assert_eq!(sprintf("%d", &["x".into()], 1000).unwrap(), "%!d(string=x)");
        assert_eq!(
            sprintf("%s %s", &["x".into()], 1000).unwrap(),
            "x %!s(MISSING)"
        );
        assert_eq!(
            sprintf("%.2f", &[Value::Float(1.234)], 1000).unwrap(),
            "1.23"
        );
    }

    #[test]
    fn sprig_strings() {
        assert_eq!(c("upper", vec!["ab".into()]), Value::Str("AB".into()));
        assert_eq!(
            c("trunc", vec![Value::Int(2), "abcd".into()]),
            Value::Str("ab".into())
        );
        assert_eq!(
            c("trunc", vec![Value::Int(-2), "abcd".into()]),
            Value::Str("cd".into())
        );
        assert_eq!(
            c("replace", vec!["a".into(), "b".into(), "aXa".into()]),
            Value::Str("bXb".into())
        );
        assert_eq!(
            c("quote", vec!["a\"b".into(), Value::Nil, Value::Int(1)]),
            Value::Str("\"a\\\"b\" \"1\"".into())
        );
        assert_eq!(
            c("default", vec!["d".into(), Value::Nil]),
            Value::Str("d".into())
        );
        assert_eq!(
            c("default", vec!["d".into(), "x".into()]),
            Value::Str("x".into())
        );
        assert_eq!(c("b64enc", vec![Value::Nil]), Value::Str(String::new()));
        assert_eq!(c("b64enc", vec!["hi".into()]), Value::Str("aGk=".into()));
        assert_eq!(c("b64dec", vec!["aGk=".into()]), Value::Str("hi".into()));
        assert_eq!(
            c("b32enc", vec!["hi".into()]),
            Value::Str("NBUQ====".into())
        );
        assert_eq!(
            c("b32dec", vec!["NBUQ====".into()]),
            Value::Str("hi".into())
        );
        assert_eq!(
            c("snakecase", vec!["FooBar baz".into()]),
            Value::Str("foo_bar_baz".into())
        );
        assert_eq!(
            c("title", vec!["hello world".into()]),
            Value::Str("Hello World".into())
        );
        assert!(try_call("upper", vec![Value::Int(1)], 100).is_err());
        assert!(try_call("upper", vec![Value::Nil], 100).is_err());
        assert!(try_call("repeat", vec![Value::Int(1 << 40), "ab".into()], 1 << 20).is_err());
    }

    #[test]
    fn comparisons() {
        assert_eq!(
            c("eq", vec![Value::Int(1), Value::Int(2), Value::Int(1)]),
            Value::Bool(true)
        );
        assert_eq!(c("eq", vec![Value::Nil, "".into()]), Value::Bool(false));
        assert!(try_call("eq", vec![Value::Int(1), "1".into()], 10).is_err());
        assert_eq!(c("lt", vec!["a".into(), "b".into()]), Value::Bool(true));
        assert_eq!(
            c("ge", vec![Value::Int(2), Value::Int(2)]),
            Value::Bool(true)
        );
        assert_eq!(
            c("gt", vec![Value::Float(1.5), Value::Float(2.5)]),
            Value::Bool(false)
        );
    }

    #[test]
    fn integer_edges_do_not_overflow() {
        assert!(try_call("seq", vec![Value::Int(i64::MAX)], 1 << 20)
            .unwrap_err()
            .contains("(limit 100000)"));
        assert!(try_call(
            "seq",
            vec![Value::Int(i64::MIN), Value::Int(i64::MAX)],
            1 << 20
        )
        .is_err());
        assert_eq!(
            c(
                "seq",
                vec![Value::Int(i64::MIN), Value::Int(-1), Value::Int(i64::MIN)]
            ),
            Value::Str(i64::MIN.to_string())
        );
        assert_eq!(
            c(
                "untilStep",
                vec![
                    Value::Int(i64::MAX - 1),
                    Value::Int(i64::MAX),
                    Value::Int(i64::MAX)
                ]
            ),
            Value::List(vec![Value::Int(i64::MAX - 1)])
        );
        assert_eq!(
            c("seq", vec![Value::Int(3), Value::Int(1)]),
            Value::Str("3 2 1".into())
        );
        // `from_str_radix` accepts a sign of its own: "-0x-8000000000000000" is i64::MIN negated.
        assert_eq!(
            c("int", vec!["-0x-8000000000000000".into()]),
            Value::Int(i64::MIN)
        );
        assert_eq!(c("int", vec!["-0x10".into()]), Value::Int(-16));
    }

    #[test]
    fn uniq_and_without_are_hash_based_but_keep_go_equality() {
        let nan = Value::Float(f64::NAN);
        let l = Value::List(vec![
            Value::Int(1),
            Value::Int(1),
            "1".into(),
            Value::Float(1.0),
            nan.clone(),
            nan.clone(),
            Value::Float(0.0),
            Value::Float(-0.0),
            Value::List(vec![Value::Int(1)]),
            Value::List(vec![Value::Int(1)]),
        ]);
        let Value::List(u) = c("uniq", vec![l.clone()]) else {
            panic!("uniq returns a list")
        };
        assert_eq!(u.len(), 7, "{u:?}");
        assert_eq!(u[0], Value::Int(1));
        assert_eq!(u[1], Value::Str("1".into()));
        assert!(matches!(u[3], Value::Float(f) if f.is_nan()));
        assert!(matches!(u[4], Value::Float(f) if f.is_nan()));
        let Value::List(w) = c("without", vec![l, Value::Int(1), Value::Float(-0.0)]) else {
            panic!("without returns a list")
        };
        assert_eq!(w.len(), 6, "{w:?}");
        // A big list is handled in linear time.
        let big = Value::List((0..100_000).map(|i| Value::Int(i % 10)).collect());
        assert_eq!(
            c("uniq", vec![big]),
            Value::List((0..10).map(Value::Int).collect())
        );
        let cut = "a".repeat(1 << 20);
        let x = format!("{}b{}", cut, cut);
        assert_eq!(
            try_call("trimAll", vec![cut.into(), x.into()], 1 << 22),
            Ok(Value::Str("b".into()))
        );
    }

    #[test]
    fn string_builders_check_their_size_before_building() {
        let limit = 1 << 20;
        let wide = "%9999d".repeat(500_000);
        assert!(try_call("printf", vec![wide.into()], limit)
            .unwrap_err()
            .contains("printf result exceeds"));
        assert!(try_call(
            "join",
            vec![
                "x".repeat(100_000).into(),
                Value::List((0..1000).map(Value::Int).collect())
            ],
            limit
        )
        .unwrap_err()
        .contains("join result exceeds"));
        assert!(try_call(
            "regexReplaceAll",
            vec![
                ".*".into(),
                "a".repeat(100_000).into(),
                "$0".repeat(100_000).into()
            ],
            limit
        )
        .unwrap_err()
        .contains("regexReplaceAll result exceeds"));
        assert!(try_call(
            "splitList",
            vec!["".into(), "a".repeat(100_000).into()],
            limit
        )
        .unwrap_err()
        .contains("splitList result exceeds"));
        assert_eq!(
            c(
                "regexReplaceAll",
                vec!["a(x*)b".into(), "-ab-axxb-".into(), "${1}W".into()]
            ),
            Value::Str("-W-xxW-".into())
        );
        assert_eq!(
            c(
                "regexReplaceAllLiteral",
                vec!["a(x*)b".into(), "-ab-axxb-".into(), "${1}".into()]
            ),
            Value::Str("-${1}-${1}-".into())
        );
    }

    #[test]
    fn regexes_are_cached_and_compiling_costs_steps() {
        let mut ctx = Ctx::new(1 << 20);
        for _ in 0..3 {
            call("regexMatch", vec!["^a+$".into(), "aaa".into()], &mut ctx).unwrap();
        }
        assert_eq!(ctx.cost, REGEX_COMPILE_STEPS);
        assert!(call(
            "regexMatch",
            vec!["(a{100}){100}".into(), "".into()],
            &mut ctx
        )
        .unwrap_err()
        .contains("size limit"));
    }

    #[test]
    fn lists_and_math() {
        assert_eq!(
            c("until", vec![Value::Int(3)]),
            Value::List(vec![Value::Int(0), Value::Int(1), Value::Int(2)])
        );
        assert!(try_call("until", vec![Value::Int(1 << 40)], 100).is_err());
        assert_eq!(
            c("add", vec![Value::Int(1), "2".into(), Value::Float(3.9)]),
            Value::Int(6)
        );
        assert!(try_call("div", vec![Value::Int(1), Value::Int(0)], 10).is_err());
        assert_eq!(
            c(
                "join",
                vec![",".into(), Value::List(vec!["a".into(), Value::Int(1)])]
            ),
            Value::Str("a,1".into())
        );
        assert_eq!(
            c("index", vec![Value::List(vec!["a".into()]), Value::Int(0)]),
            Value::Str("a".into())
        );
        assert!(try_call("index", vec![Value::List(vec![]), Value::Int(3)], 10).is_err());
        assert_eq!(c("len", vec!["héllo".into()]), Value::Int(6));
        assert_eq!(c("seq", vec![Value::Int(3)]), Value::Str("1 2 3".into()));
        let d = c("dict", vec!["a".into(), Value::Int(1)]);
        assert_eq!(c("hasKey", vec![d.clone(), "a".into()]), Value::Bool(true));
        assert_eq!(c("get", vec![d, "zz".into()]), Value::Str(String::new()));
        assert_eq!(
            c("clean", vec!["/a/../b/./c/".into()]),
            Value::Str("/b/c".into())
        );
    }
}
