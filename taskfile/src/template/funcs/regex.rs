//! Sprig's regular-expression functions with Go `regexp`'s semantics: RE2 syntax with ASCII
//! `\d`, `\w`, `\s`, `\b`, and Go's rules for successive and empty matches in `FindAll`,
//! `ReplaceAll` and `Split`.

use super::{bounded_list, check_size, i, s, want, Ctx, Func, F};
use crate::template::value::Value;

pub const FUNCS: &[(&str, Func)] = &[
    ("regexMatch", regex_match),
    ("regexFind", regex_find),
    ("regexFindAll", regex_find_all),
    ("regexReplaceAll", regex_replace_all),
    ("regexReplaceAllLiteral", regex_replace_all),
    ("regexSplit", regex_split),
];

/// Rewrites Go's ASCII-only Perl classes into the Unicode-aware syntax of the `regex` crate.
pub(crate) fn go_pattern(p: &str) -> String {
    let mut out = String::with_capacity(p.len() + 8);
    let mut chars = p.chars().peekable();
    let mut in_class = false;
    while let Some(c) = chars.next() {
        if c == '\\' {
            let Some(n) = chars.next() else {
                out.push('\\');
                break;
            };
            let class = match (n, in_class) {
                ('d', false) => Some("[0-9]"),
                ('D', false) => Some("[^0-9]"),
                ('w', false) => Some("[0-9A-Za-z_]"),
                ('W', false) => Some("[^0-9A-Za-z_]"),
                ('s', false) => Some("[\\t\\n\\f\\r ]"),
                ('S', false) => Some("[^\\t\\n\\f\\r ]"),
                ('b', false) => Some("(?-u:\\b)"),
                ('B', false) => Some("(?-u:\\B)"),
                ('d', true) => Some("0-9"),
                ('w', true) => Some("0-9A-Za-z_"),
                ('s', true) => Some("\\t\\n\\f\\r "),
                _ => None,
            };
            match class {
                Some(t) => out.push_str(t),
                None => {
                    out.push('\\');
                    out.push(n);
                }
            }
            continue;
        }
        if in_class {
            if c == ']' {
                in_class = false;
            }
            out.push(c);
            continue;
        }
        if c == '[' {
            in_class = true;
            out.push(c);
            // A leading `]` or `^]` is a literal.
            if chars.peek() == Some(&'^') {
                out.push('^');
                chars.next();
            }
            if chars.peek() == Some(&']') {
                out.push(']');
                chars.next();
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// The width of the character at `pos` (1 at the end, so a search moves past it).
fn width_at(x: &str, pos: usize) -> usize {
    x[pos..].chars().next().map(char::len_utf8).unwrap_or(1)
}

/// Go's `allMatches`: successive matches; an empty match right after a match is dropped.
fn all_matches(re: &regex::Regex, x: &str, n: i64) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let (mut pos, mut prev_end) = (0usize, None);
    while (n < 0 || (out.len() as i64) < n) && pos <= x.len() {
        let Some(m) = re.find_at(x, pos) else { break };
        let mut accept = true;
        if m.end() == pos {
            if Some(m.start()) == prev_end {
                accept = false;
            }
            pos += width_at(x, pos);
        } else {
            pos = m.end();
        }
        prev_end = Some(m.end());
        if accept {
            out.push((m.start(), m.end()));
        }
    }
    out
}

fn regex_match(name: &str, a: &[Value], ctx: &mut Ctx) -> F {
    want(name, a, 2)?;
    let (p, x) = (s(&a[0])?, s(&a[1])?);
    // `regexp.MatchString`'s error is ignored by Sprig: an invalid pattern matches nothing.
    Ok(Value::Bool(match ctx.regex(&go_pattern(p)) {
        Ok(re) => re.is_match(x),
        Err(_) => false,
    }))
}

fn regex_find(name: &str, a: &[Value], ctx: &mut Ctx) -> F {
    want(name, a, 2)?;
    let re = ctx.regex(&go_pattern(s(&a[0])?))?;
    Ok(Value::Str(
        re.find(s(&a[1])?)
            .map(|m| m.as_str().to_string())
            .unwrap_or_default(),
    ))
}

fn regex_find_all(name: &str, a: &[Value], ctx: &mut Ctx) -> F {
    want(name, a, 3)?;
    let n = i(&a[2])?;
    let re = ctx.regex(&go_pattern(s(&a[0])?))?;
    let x = s(&a[1])?;
    if n == 0 {
        return Ok(Value::List(Vec::new()));
    }
    let ms = all_matches(&re, x, n);
    Ok(Value::List(bounded_list(
        ms.iter().map(|(a, b)| &x[*a..*b]),
        ctx.limit,
        name,
    )?))
}

fn regex_replace_all(name: &str, a: &[Value], ctx: &mut Ctx) -> F {
    want(name, a, 3)?;
    let re = ctx.regex(&go_pattern(s(&a[0])?))?;
    let (src, repl) = (s(&a[1])?, s(&a[2])?);
    let expand = name == "regexReplaceAll";
    // Every `$` reference expands to at most the whole match.
    let refs = if expand { repl.matches('$').count() } else { 0 };
    let limit = ctx.limit;
    let mut out = String::new();
    let (mut last_end, mut search) = (0usize, 0usize);
    while search <= src.len() {
        let Some(caps) = re.captures_at(src, search) else {
            break;
        };
        let Some(m) = caps.get(0) else { break };
        out.push_str(&src[last_end..m.start()]);
        if m.end() > last_end || m.start() == 0 {
            let bound = out
                .len()
                .saturating_add(repl.len())
                .saturating_add(refs.saturating_mul(m.len()));
            check_size(bound, limit, name)?;
            if expand {
                caps.expand(repl, &mut out);
            } else {
                out.push_str(repl);
            }
        }
        last_end = m.end();
        let w = width_at(src, search.min(src.len()));
        if search + w > m.end() {
            search += w;
        } else if search + 1 > m.end() {
            search += 1;
        } else {
            search = m.end();
        }
    }
    if last_end <= src.len() {
        out.push_str(&src[last_end..]);
    }
    check_size(out.len(), limit, name)?;
    Ok(Value::Str(out))
}

/// Go's `(*Regexp).Split`.
fn regex_split(name: &str, a: &[Value], ctx: &mut Ctx) -> F {
    want(name, a, 3)?;
    let pattern = s(&a[0])?;
    let re = ctx.regex(&go_pattern(pattern))?;
    let x = s(&a[1])?;
    let n = i(&a[2])?;
    if n == 0 {
        return Ok(Value::List(Vec::new()));
    }
    if !pattern.is_empty() && x.is_empty() {
        return Ok(Value::List(vec![Value::Str(String::new())]));
    }
    let mut parts: Vec<&str> = Vec::new();
    let (mut beg, mut end) = (0usize, 0usize);
    for (ms, me) in all_matches(&re, x, n) {
        if n > 0 && parts.len() as i64 == n - 1 {
            break;
        }
        end = ms;
        if me != 0 {
            parts.push(&x[beg..end]);
        }
        beg = me;
    }
    if end != x.len() {
        parts.push(&x[beg..]);
    }
    Ok(Value::List(bounded_list(
        parts.into_iter(),
        ctx.limit,
        name,
    )?))
}
