//! Sprig's list functions. Lists are values: every function returns a new list.

use std::collections::HashSet;

use super::strings::strslice;
use super::{check_len, empty, i, list_of, to_i64, want, want_min, Ctx, Func, F, MAX_LIST};
use crate::template::value::Value;

pub const FUNCS: &[(&str, Func)] = &[
    ("list", list),
    ("tuple", list),
    ("append", push),
    ("push", push),
    ("prepend", prepend),
    ("first", first),
    ("last", last),
    ("rest", rest),
    ("initial", initial),
    ("reverse", reverse),
    ("uniq", uniq),
    ("without", without),
    ("has", has),
    ("concat", concat),
    ("compact", compact),
    ("sortAlpha", sort_alpha),
    ("until", until),
    ("untilStep", until_step),
    ("seq", seq),
];

fn list(_: &str, a: &[Value], _: &mut Ctx) -> F {
    Ok(Value::List(a.to_vec()))
}

fn push(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 2)?;
    let mut l = list_of(name, &a[0])?;
    l.push(a[1].clone());
    Ok(Value::List(l))
}

fn prepend(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 2)?;
    let mut l = list_of(name, &a[0])?;
    l.insert(0, a[1].clone());
    Ok(Value::List(l))
}

fn first(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 1)?;
    Ok(list_of(name, &a[0])?.first().cloned().unwrap_or(Value::Nil))
}

fn last(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 1)?;
    Ok(list_of(name, &a[0])?.last().cloned().unwrap_or(Value::Nil))
}

fn rest(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 1)?;
    let l = list_of(name, &a[0])?;
    Ok(Value::List(
        l.get(1..).map(<[Value]>::to_vec).unwrap_or_default(),
    ))
}

fn initial(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 1)?;
    let l = list_of(name, &a[0])?;
    let n = l.len().saturating_sub(1);
    Ok(Value::List(l[..n].to_vec()))
}

/// `reverse` of a list; kiln also reverses a string's characters.
fn reverse(name: &str, a: &[Value], _: &mut Ctx) -> F {
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

/// Keys for hash-based membership; `None` when some value has no key (contains NaN).
fn keys_of(values: &[Value]) -> Option<HashSet<String>> {
    values.iter().map(Value::identity_key).collect()
}

fn uniq(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 1)?;
    let mut out: Vec<Value> = Vec::new();
    let mut seen = HashSet::new();
    for v in list_of(name, &a[0])? {
        match v.identity_key() {
            Some(k) => {
                if seen.insert(k) {
                    out.push(v);
                }
            }
            // NaN is unequal to everything (reflect.DeepEqual), so such a value is always new.
            None => out.push(v),
        }
    }
    Ok(Value::List(out))
}

fn without(name: &str, a: &[Value], ctx: &mut Ctx) -> F {
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

fn has(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 2)?;
    if a[1] == Value::Nil {
        return Ok(Value::Bool(false));
    }
    Ok(Value::Bool(list_of(name, &a[1])?.contains(&a[0])))
}

fn concat(name: &str, a: &[Value], _: &mut Ctx) -> F {
    let mut out = Vec::new();
    for v in a {
        out.extend(list_of(name, v)?);
    }
    Ok(Value::List(out))
}

fn compact(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 1)?;
    Ok(Value::List(
        list_of(name, &a[0])?
            .into_iter()
            .filter(|v| !empty(v))
            .collect(),
    ))
}

fn sort_alpha(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 1)?;
    let mut l = match &a[0] {
        Value::List(_) => strslice(&a[0]),
        other => vec![super::strval(other)],
    };
    l.sort();
    Ok(Value::List(l.into_iter().map(Value::Str).collect()))
}

/// Sprig's `untilStep` over wide integers (the bounds are i64 values plus or minus one).
fn steps(name: &str, start: i128, stop: i128, step: i128) -> F {
    if (stop < start && step >= 0) || (stop >= start && step <= 0) {
        return Ok(Value::List(Vec::new()));
    }
    let count = (stop - start).abs().saturating_add(step.abs() - 1) / step.abs();
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
    Ok(Value::List(out))
}

fn until(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 1)?;
    let n = i(&a[0])?;
    check_len(n, name)?;
    steps(name, 0, i128::from(n), if n < 0 { -1 } else { 1 })
}

fn until_step(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 3)?;
    steps(
        name,
        i128::from(i(&a[0])?),
        i128::from(i(&a[1])?),
        i128::from(i(&a[2])?),
    )
}

/// `seq` (Sprig 3, kept by kiln): like the shell's, as a space-separated string.
fn seq(name: &str, a: &[Value], _: &mut Ctx) -> F {
    let wide = |v: &Value| i128::from(to_i64(v));
    let (start, stop, step): (i128, i128, i128) = match a.len() {
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
    };
    if step == 0 {
        return Ok(Value::Str(String::new()));
    }
    let Value::List(out) = steps(name, start, stop, step)? else {
        return Ok(Value::Str(String::new()));
    };
    let t: Vec<String> = out.iter().map(Value::go_string).collect();
    Ok(Value::Str(t.join(" ")))
}
