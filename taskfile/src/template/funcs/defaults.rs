//! Sprig's defaults, flow control and reflection: `default`, `empty`, `coalesce`, `ternary`,
//! `fail`, `required` (Sprig 3, kept by kiln), `typeOf`, `typeIs`, `typeIsLike`, `kindOf`,
//! `kindIs`, `deepEqual`.

use super::fmt::kind_of;
use super::{b, empty, s, want, want_min, Ctx, Func, F};
use crate::template::value::Value;

pub const FUNCS: &[(&str, Func)] = &[
    ("default", default),
    ("empty", is_empty),
    ("coalesce", coalesce),
    ("ternary", ternary),
    ("fail", fail),
    ("required", required),
    ("typeOf", type_of),
    ("typeIs", type_is),
    ("typeIsLike", type_is),
    ("kindOf", kind_of_fn),
    ("kindIs", kind_is),
    ("deepEqual", deep_equal),
];

fn default(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want_min(name, a, 1)?;
    if a.len() == 1 || empty(&a[1]) {
        Ok(a[0].clone())
    } else {
        Ok(a[1].clone())
    }
}

fn is_empty(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 1)?;
    Ok(Value::Bool(empty(&a[0])))
}

fn coalesce(_: &str, a: &[Value], _: &mut Ctx) -> F {
    Ok(a.iter().find(|v| !empty(v)).cloned().unwrap_or(Value::Nil))
}

fn ternary(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 3)?;
    Ok(if b(&a[2])? {
        a[0].clone()
    } else {
        a[1].clone()
    })
}

fn fail(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 1)?;
    Err(s(&a[0])?.to_string())
}

fn required(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 2)?;
    if a[1] == Value::Nil || a[1] == Value::Str(String::new()) {
        return Err(s(&a[0])?.to_string());
    }
    Ok(a[1].clone())
}

fn type_of(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 1)?;
    Ok(Value::Str(a[0].type_name().to_string()))
}

/// `typeIs` and `typeIsLike` (which also accepts a pointer to the type).
fn type_is(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 2)?;
    let (target, t) = (s(&a[0])?, a[1].type_name());
    Ok(Value::Bool(
        target == t || (name == "typeIsLike" && format!("*{target}") == t),
    ))
}

fn kind_of_fn(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 1)?;
    Ok(Value::Str(kind_of(&a[0]).into()))
}

fn kind_is(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 2)?;
    Ok(Value::Bool(s(&a[0])? == kind_of(&a[1])))
}

fn deep_equal(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 2)?;
    Ok(Value::Bool(a[0] == a[1]))
}
