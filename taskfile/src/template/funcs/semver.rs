//! Sprig's `semver` and `semverCompare` with Masterminds/semver v1.5.0's parsing, ordering
//! and constraint rules (`~`, `^`, `x` ranges, `a - b`, `,` and `||`).

use std::rc::Rc;
use std::sync::OnceLock;

use regex::Regex;

use super::{s, want, Ctx, Func, F};
use crate::template::value::{Value, Version};

pub const FUNCS: &[(&str, Func)] = &[("semver", semver), ("semverCompare", semver_compare)];

const SEMVER: &str = r"v?([0-9]+)(\.[0-9]+)?(\.[0-9]+)?(-([0-9A-Za-z\-]+(\.[0-9A-Za-z\-]+)*))?(\+([0-9A-Za-z\-]+(\.[0-9A-Za-z\-]+)*))?";
const CV: &str = r"v?([0-9|x|X|\*]+)(\.[0-9|x|X|\*]+)?(\.[0-9|x|X|\*]+)?(-([0-9A-Za-z\-]+(\.[0-9A-Za-z\-]+)*))?(\+([0-9A-Za-z\-]+(\.[0-9A-Za-z\-]+)*))?";

fn version_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(&format!("^{SEMVER}$")).expect("semver regex"))
}

fn constraint_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(&format!(
            r"^\s*(!=|>=|=>|<=|=<|~>|>|<|=|~|\^|)\s*({CV})\s*$"
        ))
        .expect("constraint regex")
    })
}

fn range_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(&format!(r"\s*({CV})\s+-\s+({CV})\s*")).expect("range regex"))
}

/// `semver.NewVersion`.
pub fn parse_version(v: &str) -> Result<Version, String> {
    let m = version_re()
        .captures(v)
        .ok_or_else(|| "Invalid Semantic Version".to_string())?;
    let seg = |k: usize| -> Result<i64, String> {
        match m.get(k) {
            None => Ok(0),
            Some(x) => x
                .as_str()
                .trim_start_matches('.')
                .parse::<i64>()
                .map_err(|_| {
                    format!(
                        "Error parsing version segment: strconv.ParseInt: parsing {:?}: value out of range",
                        x.as_str().trim_start_matches('.')
                    )
                }),
        }
    };
    Ok(Version {
        major: seg(1)?,
        minor: seg(2)?,
        patch: seg(3)?,
        pre: m.get(5).map(|x| x.as_str().to_string()).unwrap_or_default(),
        metadata: m.get(8).map(|x| x.as_str().to_string()).unwrap_or_default(),
        original: v.to_string(),
    })
}

fn compare_pre_part(s: &str, o: &str) -> i32 {
    if s == o {
        return 0;
    }
    if s.is_empty() {
        return -1;
    }
    if o.is_empty() {
        return 1;
    }
    match (s.parse::<u64>(), o.parse::<u64>()) {
        (Err(_), Err(_)) => {
            if s > o {
                1
            } else {
                -1
            }
        }
        (Ok(_), Err(_)) => -1,
        (Err(_), Ok(_)) => 1,
        (Ok(a), Ok(b)) => {
            if a > b {
                1
            } else {
                -1
            }
        }
    }
}

/// `(*Version).Compare`.
pub fn compare(v: &Version, o: &Version) -> i32 {
    for (a, b) in [(v.major, o.major), (v.minor, o.minor), (v.patch, o.patch)] {
        if a != b {
            return if a < b { -1 } else { 1 };
        }
    }
    match (v.pre.is_empty(), o.pre.is_empty()) {
        (true, true) => return 0,
        (true, false) => return 1,
        (false, true) => return -1,
        _ => {}
    }
    let sp: Vec<&str> = v.pre.split('.').collect();
    let op: Vec<&str> = o.pre.split('.').collect();
    for k in 0..sp.len().max(op.len()) {
        let d = compare_pre_part(sp.get(k).unwrap_or(&""), op.get(k).unwrap_or(&""));
        if d != 0 {
            return d;
        }
    }
    0
}

#[derive(Clone, Copy, PartialEq)]
enum Op {
    TildeOrEqual,
    NotEqual,
    Gt,
    Lt,
    Ge,
    Le,
    Tilde,
    Caret,
}

struct Constraint {
    op: Op,
    con: Version,
    minor_dirty: bool,
    patch_dirty: bool,
    dirty: bool,
}

fn is_x(x: &str) -> bool {
    matches!(x, "x" | "*" | "X")
}

fn parse_constraint(c: &str) -> Result<Constraint, String> {
    let m = constraint_re()
        .captures(c)
        .ok_or_else(|| format!("improper constraint: {c}"))?;
    let g = |k: usize| m.get(k).map(|x| x.as_str()).unwrap_or("");
    let op = match g(1) {
        "" | "=" => Op::TildeOrEqual,
        "!=" => Op::NotEqual,
        ">" => Op::Gt,
        "<" => Op::Lt,
        ">=" | "=>" => Op::Ge,
        "<=" | "=<" => Op::Le,
        "~" | "~>" => Op::Tilde,
        _ => Op::Caret,
    };
    // Groups inside the version: 3 major, 4 .minor, 5 .patch, 6 -prerelease.
    let mut ver = g(2).to_string();
    let (mut minor_dirty, mut patch_dirty, mut dirty) = (false, false, false);
    if is_x(g(3)) {
        ver = "0.0.0".into();
        dirty = true;
    } else if is_x(g(4).trim_start_matches('.')) || g(4).is_empty() {
        minor_dirty = true;
        dirty = true;
        ver = format!("{}.0.0{}", g(3), g(6));
    } else if is_x(g(5).trim_start_matches('.')) {
        dirty = true;
        patch_dirty = true;
        ver = format!("{}{}.0{}", g(3), g(4), g(6));
    }
    let con = parse_version(&ver).map_err(|_| "constraint Parser Error".to_string())?;
    Ok(Constraint {
        op,
        con,
        minor_dirty,
        patch_dirty,
        dirty,
    })
}

fn check(v: &Version, c: &Constraint) -> bool {
    let con = &c.con;
    if c.op != Op::NotEqual && !v.pre.is_empty() && con.pre.is_empty() {
        return false;
    }
    let tilde = |v: &Version| {
        if compare(v, con) < 0 {
            return false;
        }
        if con.major == 0 && con.minor == 0 && con.patch == 0 && !c.minor_dirty && !c.patch_dirty {
            return true;
        }
        if v.major != con.major {
            return false;
        }
        v.minor == con.minor || c.minor_dirty
    };
    match c.op {
        Op::NotEqual => {
            if c.dirty {
                if !v.pre.is_empty() && con.pre.is_empty() {
                    return false;
                }
                if con.major != v.major {
                    return true;
                }
                return con.minor != v.minor && !c.minor_dirty;
            }
            compare(v, con) != 0
        }
        Op::Gt => compare(v, con) == 1,
        Op::Ge => compare(v, con) >= 0,
        Op::Lt | Op::Le => {
            if !c.dirty {
                let d = compare(v, con);
                return if c.op == Op::Lt { d < 0 } else { d <= 0 };
            }
            !(v.major > con.major || (v.minor > con.minor && !c.minor_dirty))
        }
        Op::Tilde => tilde(v),
        Op::TildeOrEqual => {
            if c.dirty {
                tilde(v)
            } else {
                compare(v, con) == 0
            }
        }
        Op::Caret => compare(v, con) >= 0 && v.major == con.major,
    }
}

fn rewrite_range(c: &str) -> String {
    let mut out = c.to_string();
    for m in range_re().captures_iter(c) {
        let (Some(all), Some(a), Some(b)) = (m.get(0), m.get(1), m.get(11)) else {
            continue;
        };
        out = out.replacen(
            all.as_str(),
            &format!(">= {}, <= {}", a.as_str(), b.as_str()),
            1,
        );
    }
    out
}

/// `semver.NewConstraint(c).Check(v)`.
pub fn constraint_check(c: &str, v: &Version) -> Result<bool, String> {
    let c = rewrite_range(c);
    let mut groups = Vec::new();
    for or in c.split("||") {
        let all: Result<Vec<Constraint>, String> = or.split(',').map(parse_constraint).collect();
        groups.push(all?);
    }
    Ok(groups.iter().any(|g| g.iter().all(|k| check(v, k))))
}

fn semver(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 1)?;
    Ok(Value::Version(Rc::new(parse_version(s(&a[0])?)?)))
}

fn semver_compare(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 2)?;
    let v = parse_version(s(&a[1])?)?;
    Ok(Value::Bool(constraint_check(s(&a[0])?, &v)?))
}

fn version_arg(v: &Value) -> Result<Rc<Version>, String> {
    match v {
        Value::Version(x) => Ok(x.clone()),
        other => Err(format!(
            "wrong type for value; expected *semver.Version; got {}",
            other.type_name()
        )),
    }
}

/// A method of `*semver.Version` called from a template (`(semver "1.2.3").Major`).
pub fn method(v: &Version, name: &str, args: &[Value]) -> Option<F> {
    let no_args = |x: Value| -> F {
        if args.is_empty() {
            Ok(x)
        } else {
            Err(format!(
                "wrong number of args for {name}: want 0 got {}",
                args.len()
            ))
        }
    };
    let one = || -> Result<Rc<Version>, String> {
        match args {
            [o] => version_arg(o),
            _ => Err(format!(
                "wrong number of args for {name}: want 1 got {}",
                args.len()
            )),
        }
    };
    Some(match name {
        "Major" => no_args(Value::Int(v.major)),
        "Minor" => no_args(Value::Int(v.minor)),
        "Patch" => no_args(Value::Int(v.patch)),
        "Prerelease" => no_args(Value::Str(v.pre.clone())),
        "Metadata" => no_args(Value::Str(v.metadata.clone())),
        "Original" => no_args(Value::Str(v.original.clone())),
        "String" => no_args(Value::Str(v.to_string())),
        "Compare" => one().map(|o| Value::Int(i64::from(compare(v, &o)))),
        "LessThan" => one().map(|o| Value::Bool(compare(v, &o) < 0)),
        "GreaterThan" => one().map(|o| Value::Bool(compare(v, &o) > 0)),
        "Equal" => one().map(|o| Value::Bool(compare(v, &o) == 0)),
        _ => return None,
    })
}
