//! Template functions: Go `text/template`'s built-ins and the function map of Sprig v2.22
//! (the one acb renders with), by family. [`FAMILIES`] is the one registry: a name is defined
//! exactly when some family lists it, with its implementation beside it.
//!
//! Functions that read the clock or randomness take them from [`Ctx`] (the render's
//! [`Env`]), so a render stays a pure function of its inputs. `env`, `expandenv` and
//! `getHostByName` are defined but refuse to run: they would expose the agent's environment or
//! network.

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

use super::exec::Env;
use super::value::{Value, NODE_WEIGHT};

mod builtins;
mod certs;
mod crypto;
mod dates;
mod defaults;
mod dicts;
mod encoding;
pub(crate) mod fmt;
mod lists;
mod math;
mod paths;
mod regex;
mod semver;
mod strings;

#[cfg(test)]
mod tests;

pub use fmt::strval;

/// A function: its name as called (aliases share an implementation), the arguments and the
/// call context.
pub type Func = fn(&str, &[Value], &mut Ctx) -> F;

/// A function's result; the error is the text after `error calling <name>: `.
pub type F = Result<Value, String>;

/// Every function, by family.
pub const FAMILIES: &[(&str, &[(&str, Func)])] = &[
    ("builtins", builtins::FUNCS),
    ("defaults", defaults::FUNCS),
    ("strings", strings::FUNCS),
    ("lists", lists::FUNCS),
    ("dicts", dicts::FUNCS),
    ("math", math::FUNCS),
    ("encoding", encoding::FUNCS),
    ("crypto", crypto::FUNCS),
    ("certs", certs::FUNCS),
    ("dates", dates::FUNCS),
    ("semver", semver::FUNCS),
    ("regex", regex::FUNCS),
    ("paths", paths::FUNCS),
    ("refused", REFUSED),
];

/// Sprig functions kiln defines but will not run.
pub const REFUSED: &[(&str, Func)] = &[
    ("env", refused),
    ("expandenv", refused),
    ("getHostByName", refused),
];

fn refused(name: &str, _: &[Value], _: &mut Ctx) -> F {
    let why = match name {
        "getHostByName" => "it would resolve names on the agent's network",
        _ => "it would expose the agent's environment variables",
    };
    Err(format!("{name} is not available in kiln task files: {why}"))
}

fn table() -> &'static HashMap<&'static str, Func> {
    static TABLE: OnceLock<HashMap<&'static str, Func>> = OnceLock::new();
    TABLE.get_or_init(|| {
        FAMILIES
            .iter()
            .flat_map(|(_, fs)| fs.iter().copied())
            .collect()
    })
}

/// Whether `name` is a function of the engine (checked when a template is parsed).
pub fn is_defined(name: &str) -> bool {
    table().contains_key(name)
}

/// Largest list `until`/`untilStep`/`seq` may build, and longest random string.
pub(crate) const MAX_LIST: i64 = 100_000;

/// Compiled-size limit of one regular expression.
const REGEX_SIZE_LIMIT: usize = 1 << 18;
/// Evaluation steps charged for compiling a regular expression (compiling is far more costly
/// than one step; repeated patterns come from the cache and are not charged again).
pub(crate) const REGEX_COMPILE_STEPS: u64 = 1_000;
/// Compiled regular expressions kept per execution.
const REGEX_CACHE: usize = 16;

/// What a function call may use and what it cost beyond its arguments.
pub struct Ctx {
    /// Largest string or value (in [`Value::weight`] units) a function may build.
    pub limit: usize,
    /// Extra evaluation steps the calls so far cost (taken and reset by the executor).
    pub cost: u64,
    /// Evaluation steps left in this execution (set by the executor before each call).
    pub budget: u64,
    /// The render time, nanoseconds since the Unix epoch.
    pub now_ns: i64,
    /// Recently compiled regular expressions.
    regexes: Vec<(String, ::regex::Regex)>,
    rng: Rng,
}

impl Ctx {
    #[cfg(test)]
    pub fn new(limit: usize) -> Self {
        Self::with_env(limit, Env::default())
    }

    pub fn with_env(limit: usize, env: Env) -> Self {
        Ctx {
            limit,
            cost: 0,
            budget: u64::MAX,
            now_ns: env.now_ns,
            regexes: Vec::new(),
            rng: Rng::new(env.seed),
        }
    }

    fn regex(&mut self, p: &str) -> Result<::regex::Regex, String> {
        if let Some((_, re)) = self.regexes.iter().find(|(q, _)| q == p) {
            return Ok(re.clone());
        }
        self.cost += REGEX_COMPILE_STEPS;
        let re = ::regex::RegexBuilder::new(p)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map_err(|e| format!("regexp: Compile({}): {e}", fmt::go_quote(p)))?;
        if self.regexes.len() >= REGEX_CACHE {
            self.regexes.remove(0);
        }
        self.regexes.push((p.to_string(), re.clone()));
        Ok(re)
    }

    /// Charges `steps` for costly work about to be done, refusing it up front when the
    /// execution cannot afford it.
    pub fn spend(&mut self, name: &str, steps: u64) -> Result<(), String> {
        if self.cost.saturating_add(steps) > self.budget {
            return Err(format!(
                "{name} would exceed the evaluation step limit ({steps} steps needed)"
            ));
        }
        self.cost += steps;
        Ok(())
    }

    /// A uniform random number below `n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        // Rejection sampling keeps it uniform.
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let x = self.rng.next();
            if x < zone {
                return x % n;
            }
        }
    }

    /// Random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let x = self.rng.next().to_le_bytes();
            chunk.copy_from_slice(&x[..chunk.len()]);
        }
    }
}

/// xoshiro256** seeded through splitmix64: a small, fast, seedable generator.
struct Rng([u64; 4]);

impl Rng {
    fn new(seed: u64) -> Self {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            x ^ (x >> 31)
        };
        Rng([next(), next(), next(), next()])
    }

    fn next(&mut self) -> u64 {
        let s = &mut self.0;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }
}

/// Calls function `name`. `ctx.limit` bounds the size of strings and lists a function may
/// build; work beyond the arguments' size is added to `ctx.cost`.
pub fn call(name: &str, a: Vec<Value>, ctx: &mut Ctx) -> F {
    match table().get(name) {
        Some(f) => f(name, &a, ctx),
        None => Err(format!("function {name:?} not defined")),
    }
}

// ---- argument helpers shared by the families ----

pub(crate) fn want(name: &str, args: &[Value], n: usize) -> Result<(), String> {
    if args.len() != n {
        return Err(format!(
            "wrong number of args for {name}: want {n} got {}",
            args.len()
        ));
    }
    Ok(())
}

pub(crate) fn want_min(name: &str, args: &[Value], n: usize) -> Result<(), String> {
    if args.len() < n {
        return Err(format!(
            "wrong number of args for {name}: want at least {n} got {}",
            args.len()
        ));
    }
    Ok(())
}

/// A `string` parameter: Go rejects other types and nil.
pub(crate) fn s(v: &Value) -> Result<&str, String> {
    match v {
        Value::Str(x) => Ok(x),
        Value::Nil => Err("invalid value; expected string".into()),
        other => Err(format!(
            "wrong type for value; expected string; got {}",
            other.type_name()
        )),
    }
}

/// An `int` parameter (Go also takes an integral number constant such as `2.0`).
pub(crate) fn i(v: &Value) -> Result<i64, String> {
    match v {
        Value::Int(x) => Ok(*x),
        Value::Float(x) if x.fract() == 0.0 && x.abs() < 9.0e18 => Ok(*x as i64),
        Value::Nil => Err("invalid value; expected int".into()),
        other => Err(format!(
            "wrong type for value; expected int; got {}",
            other.type_name()
        )),
    }
}

/// A `float64` parameter (Go also takes an integer constant).
pub(crate) fn f(v: &Value) -> Result<f64, String> {
    match v {
        Value::Float(x) => Ok(*x),
        Value::Int(x) => Ok(*x as f64),
        Value::Nil => Err("invalid value; expected float64".into()),
        other => Err(format!(
            "wrong type for value; expected float64; got {}",
            other.type_name()
        )),
    }
}

/// A `bool` parameter.
pub(crate) fn b(v: &Value) -> Result<bool, String> {
    match v {
        Value::Bool(x) => Ok(*x),
        Value::Nil => Err("invalid value; expected bool".into()),
        other => Err(format!(
            "wrong type for value; expected bool; got {}",
            other.type_name()
        )),
    }
}

/// A `map[string]interface{}` parameter (nil is an empty map, which Go would refuse).
pub(crate) fn dict_arg(v: &Value) -> Result<super::value::Dict, String> {
    match v {
        Value::Map(m) => Ok(m.clone()),
        Value::Nil => Ok(super::value::Dict::default()),
        other => Err(format!(
            "wrong type for value; expected map[string]interface {{}}; got {}",
            other.type_name()
        )),
    }
}

/// Sprig's `toInt64`: strings in base 10, floats truncated, bools 0/1, anything else 0.
pub(crate) fn to_i64(v: &Value) -> i64 {
    match v {
        Value::Int(x) => *x,
        Value::Float(f) => float_to_i64(*f),
        Value::Bool(b) => i64::from(*b),
        Value::Str(x) => parse_int10(x).unwrap_or(0),
        _ => 0,
    }
}

/// Go's `int64(f)` on amd64: out-of-range values and NaN become `math.MinInt64`.
pub(crate) fn float_to_i64(f: f64) -> i64 {
    // 2^63: the first float64 past the int64 range.
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    if f.is_nan() || !(-LIMIT..LIMIT).contains(&f) {
        i64::MIN
    } else {
        f as i64
    }
}

/// `strconv.ParseInt(x, 10, 64)`: an optional sign and decimal digits, nothing else.
pub(crate) fn parse_int10(x: &str) -> Option<i64> {
    let digits = x.strip_prefix(['+', '-']).unwrap_or(x);
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    x.parse().ok()
}

/// `strconv.ParseFloat(x, 64)` (decimal forms, `inf`/`nan`; not hexadecimal floats).
pub(crate) fn parse_float(x: &str) -> Option<f64> {
    let body = x.strip_prefix(['+', '-']).unwrap_or(x);
    let lower = body.to_ascii_lowercase();
    if matches!(lower.as_str(), "inf" | "infinity" | "nan") {
        return x.parse().ok();
    }
    if body.is_empty()
        || !body
            .bytes()
            .all(|c| c.is_ascii_digit() || matches!(c, b'.' | b'e' | b'E' | b'+' | b'-'))
    {
        return None;
    }
    x.parse().ok()
}

/// Sprig's `toFloat64`.
pub(crate) fn to_f64(v: &Value) -> f64 {
    match v {
        Value::Int(x) => *x as f64,
        Value::Float(f) => *f,
        Value::Bool(b) => f64::from(u8::from(*b)),
        Value::Str(x) => parse_float(x).unwrap_or(0.0),
        _ => 0.0,
    }
}

/// A list argument of a Sprig list function (nil counts as empty).
pub(crate) fn list_of(name: &str, v: &Value) -> Result<Vec<Value>, String> {
    match v {
        Value::List(l) => Ok(l.clone()),
        Value::Nil => Ok(Vec::new()),
        other => Err(format!("cannot {name} on type {}", fmt::kind_of(other))),
    }
}

/// Sprig's `empty`.
pub(crate) fn empty(v: &Value) -> bool {
    !v.truth()
}

pub(crate) fn check_len(n: i64, name: &str) -> Result<(), String> {
    if !(-MAX_LIST..=MAX_LIST).contains(&n) {
        return Err(format!(
            "{name} would produce {} items (limit {MAX_LIST})",
            n.unsigned_abs()
        ));
    }
    Ok(())
}

pub(crate) fn check_size(n: usize, limit: usize, name: &str) -> Result<(), String> {
    if n > limit {
        return Err(format!("{name} result exceeds {limit} bytes"));
    }
    Ok(())
}

/// Collects the strings of `parts` as a list value, failing once its weight exceeds `limit`
/// (a split of a large text into many small pieces is much larger than the text).
pub(crate) fn bounded_list<'s>(
    parts: impl Iterator<Item = &'s str>,
    limit: usize,
    name: &str,
) -> Result<Vec<Value>, String> {
    let mut weight = 0usize;
    let mut out = Vec::new();
    for p in parts {
        weight = weight.saturating_add(p.len()).saturating_add(NODE_WEIGHT);
        check_size(weight, limit, name)?;
        out.push(Value::Str(p.to_string()));
    }
    Ok(out)
}

/// A dict value from string pairs.
pub(crate) fn str_dict<'a>(pairs: impl IntoIterator<Item = (&'a str, String)>) -> Value {
    Value::map(
        pairs
            .into_iter()
            .map(|(k, v)| (k.to_string(), Value::Str(v)))
            .collect::<BTreeMap<_, _>>(),
    )
}

pub use dates::{time_json, time_string};

/// Calls method `name` of a value with methods (`time.Time`, `*semver.Version`); `None` when
/// the value has no such method.
pub fn method(recv: &Value, name: &str, args: &[Value]) -> Option<F> {
    match recv {
        Value::Time(t) => dates::method(t, name, args),
        Value::Version(v) => semver::method(v, name, args),
        _ => None,
    }
}
