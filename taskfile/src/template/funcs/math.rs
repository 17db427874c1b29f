//! Sprig's conversions and integer/float arithmetic (`add`, `round`, `toDecimal`, ...), with
//! Sprig v2.22's `toInt64`/`toFloat64` coercions (strings parse in base 10; anything
//! unparseable is 0).

use super::{f, parse_int10, s, to_f64, to_i64, want, want_min, Ctx, Func, F};
use crate::template::value::Value;

pub const FUNCS: &[(&str, Func)] = &[
    ("atoi", atoi),
    ("int", int),
    ("int64", int),
    ("float64", float64),
    ("toDecimal", to_decimal),
    ("add1", add1),
    ("add", add),
    ("sub", sub),
    ("div", div),
    ("mod", div),
    ("mul", mul),
    ("biggest", max),
    ("max", max),
    ("min", min),
    ("ceil", ceil),
    ("floor", floor),
    ("round", round),
];

fn atoi(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 1)?;
    Ok(Value::Int(parse_int10(s(&a[0])?).unwrap_or(0)))
}

fn int(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 1)?;
    Ok(Value::Int(to_i64(&a[0])))
}

fn float64(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 1)?;
    Ok(Value::Float(to_f64(&a[0])))
}

/// `strconv.ParseInt(fmt.Sprint(v), 8, 64)`, 0 on error.
fn to_decimal(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 1)?;
    let t = a[0].go_string();
    let digits = t.strip_prefix(['+', '-']).unwrap_or(&t);
    if digits.is_empty() || !digits.bytes().all(|c| (b'0'..=b'7').contains(&c)) {
        return Ok(Value::Int(0));
    }
    Ok(Value::Int(i64::from_str_radix(&t, 8).unwrap_or(0)))
}

fn add1(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 1)?;
    Ok(Value::Int(to_i64(&a[0]).wrapping_add(1)))
}

fn add(_: &str, a: &[Value], _: &mut Ctx) -> F {
    Ok(Value::Int(
        a.iter().fold(0i64, |acc, v| acc.wrapping_add(to_i64(v))),
    ))
}

fn sub(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 2)?;
    Ok(Value::Int(to_i64(&a[0]).wrapping_sub(to_i64(&a[1]))))
}

fn div(name: &str, a: &[Value], _: &mut Ctx) -> F {
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

fn mul(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want_min(name, a, 1)?;
    Ok(Value::Int(
        a.iter().fold(1i64, |acc, v| acc.wrapping_mul(to_i64(v))),
    ))
}

fn max(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want_min(name, a, 1)?;
    Ok(Value::Int(a.iter().map(to_i64).max().unwrap_or(0)))
}

fn min(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want_min(name, a, 1)?;
    Ok(Value::Int(a.iter().map(to_i64).min().unwrap_or(0)))
}

fn ceil(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 1)?;
    Ok(Value::Float(to_f64(&a[0]).ceil()))
}

fn floor(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 1)?;
    Ok(Value::Float(to_f64(&a[0]).floor()))
}

/// Go's `math.Pow(10, p)` for an integer `p`.
fn pow10(p: i64) -> f64 {
    if (0..=308).contains(&p) {
        10f64.powi(p as i32)
    } else if (-308..0).contains(&p) {
        1.0 / 10f64.powi((-p) as i32)
    } else if p > 0 {
        f64::INFINITY
    } else {
        0.0
    }
}

/// Sprig's `round value places [roundOn]`: round half up (at `roundOn`, default .5) away from
/// nothing in particular — the fraction of `value * 10^places` decides, as in v2.22.
fn round(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want_min(name, a, 2)?;
    if a.len() > 3 {
        return Err(format!(
            "wrong number of args for {name}: want at most 3 got {}",
            a.len()
        ));
    }
    let places = super::i(&a[1])?;
    let round_on = match a.get(2) {
        Some(v) => f(v)?,
        None => 0.5,
    };
    let val = to_f64(&a[0]);
    let pow = pow10(places);
    let digit = pow * val;
    let frac = digit.fract();
    let r = if frac >= round_on {
        digit.ceil()
    } else {
        digit.floor()
    };
    Ok(Value::Float(r / pow))
}
