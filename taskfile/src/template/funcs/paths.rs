//! Sprig's path functions (Go's `path`: slash-separated, lexical) and URL functions
//! (`urlParse`, `urlJoin` over Go's `net/url` parsing and escaping rules).

use std::collections::BTreeMap;

use super::{dict_arg, s, str_dict, want, Ctx, Func, F};
use crate::decode::clean_path;
use crate::template::value::Value;

pub const FUNCS: &[(&str, Func)] = &[
    ("base", base),
    ("dir", dir),
    ("clean", clean),
    ("ext", ext),
    ("isAbs", is_abs),
    ("urlParse", url_parse),
    ("urlJoin", url_join),
];

fn base(name: &str, a: &[Value], _: &mut Ctx) -> F {
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

fn dir(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 1)?;
    let x = s(&a[0])?;
    let d = match x.rfind('/') {
        Some(p) => &x[..p + 1],
        None => "",
    };
    Ok(Value::Str(clean_path(d)))
}

fn clean(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 1)?;
    Ok(Value::Str(clean_path(s(&a[0])?)))
}

fn ext(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 1)?;
    let x = s(&a[0])?;
    let last = x.rsplit('/').next().unwrap_or(x);
    Ok(Value::Str(match last.rfind('.') {
        Some(p) => last[p..].to_string(),
        None => String::new(),
    }))
}

fn is_abs(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 1)?;
    Ok(Value::Bool(s(&a[0])?.starts_with('/')))
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Path,
    Host,
    UserPassword,
    Fragment,
}

/// `net/url`'s `shouldEscape`.
fn should_escape(c: u8, mode: Mode) -> bool {
    if c.is_ascii_alphanumeric() {
        return false;
    }
    if mode == Mode::Host
        && matches!(
            c,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'['
                | b']'
                | b'<'
                | b'>'
                | b'"'
        )
    {
        return false;
    }
    match c {
        b'-' | b'_' | b'.' | b'~' => return false,
        b'$' | b'&' | b'+' | b',' | b'/' | b':' | b';' | b'=' | b'?' | b'@' => {
            return match mode {
                Mode::Path => c == b'?',
                Mode::UserPassword => matches!(c, b'@' | b'/' | b'?' | b':'),
                Mode::Fragment => false,
                Mode::Host => true,
            }
        }
        _ => {}
    }
    if mode == Mode::Fragment && matches!(c, b'!' | b'(' | b')' | b'*') {
        return false;
    }
    true
}

fn escape(x: &str, mode: Mode) -> String {
    let mut out = String::with_capacity(x.len());
    for &c in x.as_bytes() {
        if should_escape(c, mode) {
            out.push_str(&format!("%{c:02X}"));
        } else {
            out.push(c as char);
        }
    }
    out
}

fn unescape(x: &str) -> Result<String, String> {
    let b = x.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut k = 0;
    while k < b.len() {
        if b[k] == b'%' {
            let hexpair = b.get(k + 1..k + 3).and_then(|h| {
                std::str::from_utf8(h)
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            });
            match hexpair {
                Some(v) if b[k + 1].is_ascii_hexdigit() && b[k + 2].is_ascii_hexdigit() => {
                    out.push(v);
                    k += 3;
                }
                _ => {
                    let end = (k + 3).min(b.len());
                    return Err(format!(
                        "invalid URL escape {}",
                        super::fmt::go_quote(&String::from_utf8_lossy(&b[k..end]))
                    ));
                }
            }
        } else {
            out.push(b[k]);
            k += 1;
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[derive(Default)]
struct Url {
    scheme: String,
    opaque: String,
    user: Option<User>,
    host: String,
    path: String,
    raw_query: String,
    fragment: String,
}

fn user_string(u: &User) -> String {
    let mut t = escape(&u.0, Mode::UserPassword);
    if let Some(p) = &u.1 {
        t.push(':');
        t.push_str(&escape(p, Mode::UserPassword));
    }
    t
}

fn get_scheme(raw: &str) -> Result<(&str, &str), String> {
    for (k, c) in raw.bytes().enumerate() {
        match c {
            b'a'..=b'z' | b'A'..=b'Z' => {}
            b'0'..=b'9' | b'+' | b'-' | b'.' => {
                if k == 0 {
                    return Ok(("", raw));
                }
            }
            b':' => {
                if k == 0 {
                    return Err("missing protocol scheme".into());
                }
                return Ok((&raw[..k], &raw[k + 1..]));
            }
            _ => return Ok(("", raw)),
        }
    }
    Ok(("", raw))
}

/// A URL's user name and optional password.
type User = (String, Option<String>);

fn parse_authority(auth: &str) -> Result<(Option<User>, String), String> {
    let (userinfo, host) = match auth.rfind('@') {
        Some(k) => (Some(&auth[..k]), &auth[k + 1..]),
        None => (None, auth),
    };
    // The port, when present, must be digits.
    let port_part = if host.starts_with('[') {
        host.find(']').map(|k| &host[k + 1..]).unwrap_or("")
    } else {
        host.rfind(':').map(|k| &host[k..]).unwrap_or("")
    };
    let port_ok = port_part.is_empty()
        || (port_part.starts_with(':') && port_part[1..].bytes().all(|c| c.is_ascii_digit()));
    if !port_ok {
        return Err(format!(
            "invalid port {} after host",
            super::fmt::go_quote(port_part)
        ));
    }
    let Some(ui) = userinfo else {
        return Ok((None, host.to_string()));
    };
    let valid = ui.bytes().all(|c| {
        c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b':'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b'%'
                    | b'@'
            )
    });
    if !valid {
        return Err("net/url: invalid userinfo".into());
    }
    let user = match ui.split_once(':') {
        None => (unescape(ui)?, None),
        Some((u, p)) => (unescape(u)?, Some(unescape(p)?)),
    };
    Ok((Some(user), host.to_string()))
}

/// `url.Parse`.
fn parse_url(raw: &str) -> Result<Url, String> {
    let wrap = |e: String| format!("parse {}: {e}", super::fmt::go_quote(raw));
    if raw.bytes().any(|c| c < 0x20 || c == 0x7f) {
        return Err(wrap("net/url: invalid control character in URL".into()));
    }
    let (u, frag) = raw.split_once('#').unwrap_or((raw, ""));
    let mut url = Url::default();
    if u == "*" {
        url.path = "*".into();
    } else {
        let (scheme, rest) = get_scheme(u).map_err(wrap)?;
        url.scheme = scheme.to_ascii_lowercase();
        let mut rest = rest.to_string();
        if rest.ends_with('?') && rest.matches('?').count() == 1 {
            rest.pop();
        } else if let Some((r, q)) = rest.clone().split_once('?') {
            rest = r.to_string();
            url.raw_query = q.to_string();
        }
        if !rest.starts_with('/') {
            if !url.scheme.is_empty() {
                url.opaque = rest;
                url.fragment = unescape(frag).map_err(wrap)?;
                return Ok(url);
            }
            if rest.split('/').next().unwrap_or("").contains(':') {
                return Err(wrap(
                    "first path segment in URL cannot contain colon".into(),
                ));
            }
        }
        if (!url.scheme.is_empty() || !rest.starts_with("///")) && rest.starts_with("//") {
            let auth_rest = rest[2..].to_string();
            let (auth, path) = match auth_rest.find('/') {
                Some(k) => (&auth_rest[..k], &auth_rest[k..]),
                None => (&auth_rest[..], ""),
            };
            let (user, host) = parse_authority(auth).map_err(wrap)?;
            url.user = user;
            url.host = host;
            rest = path.to_string();
        }
        url.path = unescape(&rest).map_err(wrap)?;
    }
    url.fragment = unescape(frag).map_err(wrap)?;
    Ok(url)
}

/// `(*url.URL).Hostname()`.
fn hostname(host: &str) -> String {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("").to_string();
    }
    match host.rfind(':') {
        Some(k) => host[..k].to_string(),
        None => host.to_string(),
    }
}

/// `(*url.URL).String()`.
fn url_string(u: &Url) -> String {
    let mut out = String::new();
    if !u.scheme.is_empty() {
        out.push_str(&u.scheme);
        out.push(':');
    }
    if !u.opaque.is_empty() {
        out.push_str(&u.opaque);
    } else {
        if !u.scheme.is_empty() || !u.host.is_empty() || u.user.is_some() {
            if !u.host.is_empty() || !u.path.is_empty() || u.user.is_some() {
                out.push_str("//");
            }
            if let Some(user) = &u.user {
                out.push_str(&user_string(user));
                out.push('@');
            }
            out.push_str(&escape(&u.host, Mode::Host));
        }
        let path = escape(&u.path, Mode::Path);
        if !path.is_empty() && !path.starts_with('/') && !u.host.is_empty() {
            out.push('/');
        }
        if out.is_empty() && path.split('/').next().unwrap_or("").contains(':') {
            out.push_str("./");
        }
        out.push_str(&path);
    }
    if !u.raw_query.is_empty() {
        out.push('?');
        out.push_str(&u.raw_query);
    }
    if !u.fragment.is_empty() {
        out.push('#');
        out.push_str(&escape(&u.fragment, Mode::Fragment));
    }
    out
}

fn url_parse(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 1)?;
    let u = parse_url(s(&a[0])?).map_err(|e| format!("unable to parse url: {e}"))?;
    Ok(str_dict([
        ("scheme", u.scheme.clone()),
        ("host", u.host.clone()),
        ("hostname", hostname(&u.host)),
        ("path", u.path.clone()),
        ("query", u.raw_query.clone()),
        ("opaque", u.opaque.clone()),
        ("fragment", u.fragment.clone()),
        (
            "userinfo",
            u.user.as_ref().map(user_string).unwrap_or_default(),
        ),
    ]))
}

fn url_join(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 1)?;
    let d = dict_arg(&a[0])?;
    let m: BTreeMap<String, Value> = d.snapshot();
    let get = |k: &str| -> Result<String, String> {
        match m.get(k) {
            None => Ok(String::new()),
            Some(Value::Str(x)) => Ok(x.clone()),
            Some(other) => Err(format!(
                "unable to parse {k} key, must be of type string, but {} found",
                super::fmt::kind_of(other)
            )),
        }
    };
    let userinfo = get("userinfo")?;
    let user = if userinfo.is_empty() {
        None
    } else {
        parse_url(&format!("proto://{userinfo}@host"))
            .map_err(|e| format!("unable to parse userinfo in dict: {e}"))?
            .user
    };
    let u = Url {
        scheme: get("scheme")?,
        host: get("host")?,
        path: get("path")?,
        raw_query: get("query")?,
        opaque: get("opaque")?,
        fragment: get("fragment")?,
        user,
    };
    Ok(Value::Str(url_string(&u)))
}
