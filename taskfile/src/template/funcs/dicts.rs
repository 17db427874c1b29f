//! Sprig's dict functions. Dicts are shared references, as in Go: `set`, `unset`, `merge` and
//! `mergeOverwrite` change the dict they are given, and every holder of it sees the change.
//! `merge`/`mergeOverwrite` follow imdario/mergo 0.3's rules for `map[string]interface{}`.

use std::collections::BTreeMap;

use super::fmt::strval;
use super::{dict_arg, s, want, want_min, Ctx, Func, F};
use crate::template::value::{Dict, Value, MAX_DEPTH};

pub const FUNCS: &[(&str, Func)] = &[
    ("dict", dict),
    ("get", get),
    ("set", set),
    ("unset", unset),
    ("hasKey", has_key),
    ("pluck", pluck),
    ("keys", keys),
    ("pick", pick),
    ("omit", omit),
    ("merge", merge),
    ("mergeOverwrite", merge),
    ("values", values),
    ("deepCopy", deep_copy),
];

fn dict(_: &str, a: &[Value], _: &mut Ctx) -> F {
    let mut m = BTreeMap::new();
    for pair in a.chunks(2) {
        let v = pair.get(1).cloned().unwrap_or(Value::Str(String::new()));
        m.insert(strval(&pair[0]), v);
    }
    Ok(Value::map(m))
}

/// `get` (Sprig 3, kept by kiln): the value or "".
fn get(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 2)?;
    Ok(dict_arg(&a[0])?
        .get(s(&a[1])?)
        .unwrap_or(Value::Str(String::new())))
}

fn no_cycle(name: &str, d: &Dict, v: &Value) -> Result<(), String> {
    if v.reaches(d) {
        return Err(format!(
            "{name} would make a dict contain itself, which cannot be printed"
        ));
    }
    Ok(())
}

fn set(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 3)?;
    let d = dict_arg(&a[0])?;
    let k = s(&a[1])?.to_string();
    no_cycle(name, &d, &a[2])?;
    d.borrow_mut().insert(k, a[2].clone());
    Ok(Value::Map(d))
}

fn unset(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 2)?;
    let d = dict_arg(&a[0])?;
    let k = s(&a[1])?.to_string();
    d.borrow_mut().remove(&k);
    Ok(Value::Map(d))
}

fn has_key(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 2)?;
    Ok(Value::Bool(
        dict_arg(&a[0])?.borrow().contains_key(s(&a[1])?),
    ))
}

fn pluck(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want_min(name, a, 1)?;
    let k = s(&a[0])?;
    let mut out = Vec::new();
    for d in &a[1..] {
        if let Some(v) = dict_arg(d)?.get(k) {
            out.push(v);
        }
    }
    Ok(Value::List(out))
}

/// `keys`: Go's map order is random; kiln lists each dict's keys sorted.
fn keys(_: &str, a: &[Value], _: &mut Ctx) -> F {
    let mut out = Vec::new();
    for d in a {
        out.extend(dict_arg(d)?.borrow().keys().cloned().map(Value::Str));
    }
    Ok(Value::List(out))
}

fn pick(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want_min(name, a, 1)?;
    let d = dict_arg(&a[0])?;
    let src = d.borrow();
    let mut m = BTreeMap::new();
    for k in &a[1..] {
        let k = s(k)?;
        if let Some(v) = src.get(k) {
            m.insert(k.to_string(), v.clone());
        }
    }
    Ok(Value::map(m))
}

fn omit(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want_min(name, a, 1)?;
    let d = dict_arg(&a[0])?;
    let drop: Result<Vec<&str>, String> = a[1..].iter().map(s).collect();
    let drop = drop?;
    let m: BTreeMap<String, Value> = d
        .borrow()
        .iter()
        .filter(|(k, _)| !drop.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok(Value::map(m))
}

/// `values`: in key order (Go's is random).
fn values(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 1)?;
    Ok(Value::List(
        dict_arg(&a[0])?.borrow().values().cloned().collect(),
    ))
}

fn deep_copy(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 1)?;
    Ok(a[0].deep_copy())
}

/// mergo's `isEmptyValue` for a template value.
fn is_empty(v: &Value) -> bool {
    !v.truth()
}

/// mergo's `deepMerge` of two `map[string]interface{}` (`overwrite` for
/// `MergeWithOverwrite`).
fn merge_into(
    name: &str,
    dst: &Dict,
    src: &Dict,
    overwrite: bool,
    depth: usize,
) -> Result<(), String> {
    if dst.ptr_eq(src) || depth > MAX_DEPTH {
        return Ok(());
    }
    let entries = src.snapshot();
    for (k, sv) in entries {
        let dv = dst.get(&k);
        match &sv {
            Value::Nil => {
                if overwrite {
                    dst.borrow_mut().insert(k, Value::Nil);
                }
                continue;
            }
            Value::Map(sm) => {
                if let Some(Value::Map(dm)) = &dv {
                    merge_into(name, dm, sm, overwrite, depth + 1)?;
                }
                // A non-empty destination is kept, even when overwriting.
                if dv.as_ref().is_some_and(|d| !is_empty(d)) {
                    continue;
                }
            }
            Value::List(_) if dv.as_ref().is_some_and(|d| !is_empty(d)) => {
                if overwrite {
                    no_cycle(name, dst, &sv)?;
                    dst.borrow_mut().insert(k, sv);
                }
                continue;
            }
            _ => {}
        }
        if overwrite || dv.as_ref().is_none_or(is_empty) {
            no_cycle(name, dst, &sv)?;
            dst.borrow_mut().insert(k, sv);
        }
    }
    Ok(())
}

fn merge(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want_min(name, a, 1)?;
    let dst = dict_arg(&a[0])?;
    let overwrite = name == "mergeOverwrite";
    for src in &a[1..] {
        merge_into(name, &dst, &dict_arg(src)?, overwrite, 0)?;
    }
    Ok(Value::Map(dst))
}
