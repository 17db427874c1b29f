//! Dynamic values of the template engine and their Go `fmt` (`%v`) and `encoding/json` text
//! forms.
//!
//! Maps are references, as in Go: copying a [`Value::Map`] shares the dict, so `set` on a
//! variable is seen through every other holder of the same dict. Only lists and maps nest, and
//! every traversal here is bounded by [`MAX_DEPTH`] levels (the executor refuses deeper values),
//! so no recursion can run away; dropping a dict is iterative.

use std::cell::{Ref, RefCell, RefMut};
use std::collections::{BTreeMap, HashSet};
use std::rc::Rc;

/// The weight of one value node besides its string bytes (roughly its size in memory).
pub const NODE_WEIGHT: usize = 32;

/// Nesting past which [`Value::measure`] stops descending (it then reports `MAX_DEPTH + 1`).
pub const MAX_DEPTH: usize = 100;

/// A shared, mutable dict: Go's `map[string]interface{}`.
#[derive(Clone, Default)]
pub struct Dict(Rc<RefCell<BTreeMap<String, Value>>>);

impl Dict {
    pub fn new(m: BTreeMap<String, Value>) -> Self {
        Dict(Rc::new(RefCell::new(m)))
    }

    pub fn borrow(&self) -> Ref<'_, BTreeMap<String, Value>> {
        self.0.borrow()
    }

    pub fn borrow_mut(&self) -> RefMut<'_, BTreeMap<String, Value>> {
        self.0.borrow_mut()
    }

    /// Whether both are the same dict (not merely equal ones).
    pub fn ptr_eq(&self, other: &Dict) -> bool {
        Rc::ptr_eq(&self.0, &other.0)
    }

    /// A copy of the entries (values shared).
    pub fn snapshot(&self) -> BTreeMap<String, Value> {
        self.0.borrow().clone()
    }

    pub fn get(&self, k: &str) -> Option<Value> {
        self.0.borrow().get(k).cloned()
    }

    pub fn len(&self) -> usize {
        self.0.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.borrow().is_empty()
    }

    fn addr(&self) -> usize {
        Rc::as_ptr(&self.0) as *const u8 as usize
    }
}

impl PartialEq for Dict {
    fn eq(&self, other: &Self) -> bool {
        self.ptr_eq(other) || *self.0.borrow() == *other.0.borrow()
    }
}

impl std::fmt::Debug for Dict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.try_borrow() {
            Ok(m) => m.fmt(f),
            Err(_) => f.write_str("{..}"),
        }
    }
}

impl Drop for Dict {
    /// Drops nested dicts and lists with an explicit stack: a dict chain built by `set` can be
    /// far deeper than the thread stack allows to recurse.
    fn drop(&mut self) {
        if Rc::strong_count(&self.0) != 1 {
            return;
        }
        let Ok(mut m) = self.0.try_borrow_mut() else {
            return;
        };
        if m.is_empty() {
            return;
        }
        let mut stack: Vec<Value> = std::mem::take(&mut *m).into_values().collect();
        drop(m);
        while let Some(v) = stack.pop() {
            match v {
                Value::List(l) => stack.extend(l),
                Value::Map(d) if Rc::strong_count(&d.0) == 1 => {
                    if let Ok(mut inner) = d.0.try_borrow_mut() {
                        stack.extend(std::mem::take(&mut *inner).into_values());
                    }
                }
                _ => {}
            }
        }
    }
}

/// A template value. Maps are ordered by key, which is also Go's `range` order over maps.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Go's nil / a missing map key (printed as `<no value>` by an action).
    Nil,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<Value>),
    Map(Dict),
    /// Go's `time.Time` (from `now`, `toDate`, `dateModify`).
    Time(Time),
    /// A `*semver.Version` (from `semver`).
    Version(Rc<Version>),
}

/// An instant with the zone it is shown in.
#[derive(Debug, Clone, PartialEq)]
pub struct Time {
    /// Nanoseconds since the Unix epoch.
    pub ns: i128,
    /// Seconds east of UTC.
    pub offset: i32,
    /// The zone's abbreviation (`UTC`, `CEST`, ...).
    pub zone: String,
}

/// A parsed semantic version (Masterminds/semver v1.5).
#[derive(Debug, Clone, PartialEq)]
pub struct Version {
    pub major: i64,
    pub minor: i64,
    pub patch: i64,
    pub pre: String,
    pub metadata: String,
    pub original: String,
}

impl Value {
    /// A new dict value holding `m`.
    pub fn map(m: BTreeMap<String, Value>) -> Value {
        Value::Map(Dict::new(m))
    }

    /// A copy sharing nothing mutable with `self` (Sprig's `deepCopy`).
    pub fn deep_copy(&self) -> Value {
        match self {
            Value::List(l) => Value::List(l.iter().map(Value::deep_copy).collect()),
            Value::Map(d) => Value::map(
                d.borrow()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.deep_copy()))
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    /// Whether `target` is reachable from `self` (so storing `self` in it would make a cycle).
    pub fn reaches(&self, target: &Dict) -> bool {
        let mut seen = HashSet::new();
        let mut stack = vec![self.clone()];
        while let Some(v) = stack.pop() {
            match v {
                Value::List(l) => stack.extend(l),
                Value::Map(d) => {
                    if d.ptr_eq(target) {
                        return true;
                    }
                    if seen.insert(d.addr()) {
                        stack.extend(d.borrow().values().cloned());
                    }
                }
                _ => {}
            }
        }
        false
    }

    /// Go template truthiness: false, 0, "", nil and empty collections are false.
    pub fn truth(&self) -> bool {
        match self {
            Value::Nil => false,
            Value::Bool(b) => *b,
            Value::Int(i) => *i != 0,
            Value::Float(f) => *f != 0.0,
            Value::Str(s) => !s.is_empty(),
            Value::List(l) => !l.is_empty(),
            Value::Map(m) => !m.is_empty(),
            // Structs and non-nil pointers are true.
            Value::Time(_) | Value::Version(_) => true,
        }
    }

    /// The Go type name used in error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Nil => "<nil>",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float64",
            Value::Str(_) => "string",
            Value::List(_) => "[]interface {}",
            Value::Map(_) => "map[string]interface {}",
            Value::Time(_) => "time.Time",
            Value::Version(_) => "*semver.Version",
        }
    }

    /// Text as printed by a template action (`{{ x }}`): nil is `<no value>`.
    pub fn to_output(&self) -> String {
        match self {
            Value::Nil => "<no value>".to_string(),
            other => other.go_string(),
        }
    }

    /// Go `fmt.Sprint` (`%v`) form.
    pub fn go_string(&self) -> String {
        let mut out = String::new();
        self.write_go(&mut out);
        out
    }

    fn write_go(&self, out: &mut String) {
        match self {
            Value::Nil => out.push_str("<nil>"),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Int(i) => out.push_str(&i.to_string()),
            Value::Float(f) => out.push_str(&format_go_float(*f)),
            Value::Str(s) => out.push_str(s),
            Value::List(l) => {
                out.push('[');
                for (i, v) in l.iter().enumerate() {
                    if i > 0 {
                        out.push(' ');
                    }
                    v.write_go(out);
                }
                out.push(']');
            }
            Value::Map(m) => {
                out.push_str("map[");
                for (i, (k, v)) in m.borrow().iter().enumerate() {
                    if i > 0 {
                        out.push(' ');
                    }
                    out.push_str(k);
                    out.push(':');
                    v.write_go(out);
                }
                out.push(']');
            }
            Value::Time(t) => out.push_str(&super::funcs::time_string(t)),
            Value::Version(v) => out.push_str(&v.to_string()),
        }
    }

    /// Go's `encoding/json` text (`json.Marshal`, or `json.MarshalIndent(v, "", "  ")` when
    /// `pretty`): sorted keys, `<`, `>` and `&` escaped unless `raw`. `None` for NaN or an
    /// infinity, which Go refuses to encode.
    pub fn to_json_text(&self, pretty: bool, raw: bool) -> Option<String> {
        let mut out = String::new();
        self.write_json(&mut out, pretty, !raw, 0).then_some(out)
    }

    fn write_json(&self, out: &mut String, pretty: bool, html: bool, level: usize) -> bool {
        let newline = |out: &mut String, level: usize| {
            if pretty {
                out.push('\n');
                for _ in 0..level {
                    out.push_str("  ");
                }
            }
        };
        match self {
            Value::Nil => out.push_str("null"),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Int(i) => out.push_str(&i.to_string()),
            Value::Float(f) => match format_json_float(*f) {
                Some(t) => out.push_str(&t),
                None => return false,
            },
            Value::Str(s) => write_json_string(out, s, html),
            Value::Time(t) => write_json_string(out, &super::funcs::time_json(t), html),
            Value::Version(v) => write_json_string(out, &v.to_string(), html),
            Value::List(l) => {
                out.push('[');
                for (i, v) in l.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    newline(out, level + 1);
                    if !v.write_json(out, pretty, html, level + 1) {
                        return false;
                    }
                }
                if !l.is_empty() {
                    newline(out, level);
                }
                out.push(']');
            }
            Value::Map(m) => {
                let m = m.borrow();
                out.push('{');
                for (i, (k, v)) in m.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    newline(out, level + 1);
                    write_json_string(out, k, html);
                    out.push(':');
                    if pretty {
                        out.push(' ');
                    }
                    if !v.write_json(out, pretty, html, level + 1) {
                        return false;
                    }
                }
                if !m.is_empty() {
                    newline(out, level);
                }
                out.push('}');
            }
        }
        true
    }

    /// Converts parsed JSON into a value.
    pub fn from_json(j: &serde_json::Value) -> Value {
        match j {
            serde_json::Value::Null => Value::Nil,
            serde_json::Value::Bool(b) => Value::Bool(*b),
            // Go decodes every JSON number into a float64.
            serde_json::Value::Number(n) => Value::Float(n.as_f64().unwrap_or(0.0)),
            serde_json::Value::String(s) => Value::Str(s.clone()),
            serde_json::Value::Array(a) => Value::List(a.iter().map(Value::from_json).collect()),
            serde_json::Value::Object(o) => Value::map(
                o.iter()
                    .map(|(k, v)| (k.clone(), Value::from_json(v)))
                    .collect(),
            ),
        }
    }

    /// An approximation of the number of bytes this value occupies (for limits): string bytes
    /// plus [`NODE_WEIGHT`] per value (a shared dict counts once per path to it).
    pub fn weight(&self) -> usize {
        self.measure(usize::MAX).0
    }

    /// `(weight, depth)` of this value, where depth is the nesting of lists and maps (a scalar
    /// is 0). Stops early, returning a weight above `cap`, once the weight exceeds `cap`, and
    /// stops descending past `MAX_DEPTH` levels (reporting `MAX_DEPTH + 1`), so the cost of a check
    /// is bounded by the cap rather than by the value.
    pub fn measure(&self, cap: usize) -> (usize, usize) {
        let mut weight = 0usize;
        let depth = self.measure_into(cap, &mut weight, 0);
        (weight, depth)
    }

    fn measure_into(&self, cap: usize, weight: &mut usize, level: usize) -> usize {
        *weight = weight.saturating_add(NODE_WEIGHT);
        if level > MAX_DEPTH && matches!(self, Value::List(_) | Value::Map(_)) {
            return 1;
        }
        match self {
            Value::Str(s) => {
                *weight = weight.saturating_add(s.len());
                0
            }
            Value::List(l) => {
                let mut depth = 0;
                for v in l {
                    if *weight > cap {
                        break;
                    }
                    depth = depth.max(v.measure_into(cap, weight, level + 1));
                }
                depth + 1
            }
            Value::Map(m) => {
                let mut depth = 0;
                for (k, v) in m.borrow().iter() {
                    if *weight > cap {
                        break;
                    }
                    *weight = weight.saturating_add(k.len());
                    depth = depth.max(v.measure_into(cap, weight, level + 1));
                }
                depth + 1
            }
            _ => 0,
        }
    }

    /// A string that is equal for two values exactly when the values are equal (`==`), for
    /// hash-based de-duplication; `None` when a NaN occurs in the value (NaN equals nothing,
    /// not even itself).
    pub fn identity_key(&self) -> Option<String> {
        let mut out = String::new();
        self.write_key(&mut out).then_some(out)
    }

    fn write_key(&self, out: &mut String) -> bool {
        match self {
            Value::Nil => out.push('n'),
            Value::Bool(b) => out.push(if *b { 't' } else { 'f' }),
            Value::Int(i) => {
                out.push('i');
                out.push_str(&i.to_string());
            }
            Value::Float(f) => {
                if f.is_nan() {
                    return false;
                }
                // 0.0 == -0.0, so both get the same key.
                let f = if *f == 0.0 { 0.0 } else { *f };
                out.push('d');
                out.push_str(&f.to_bits().to_string());
            }
            Value::Str(s) => {
                out.push('s');
                out.push_str(&s.len().to_string());
                out.push(':');
                out.push_str(s);
            }
            Value::List(l) => {
                out.push('[');
                for v in l {
                    if !v.write_key(out) {
                        return false;
                    }
                }
                out.push(']');
            }
            Value::Map(m) => {
                out.push('{');
                for (k, v) in m.borrow().iter() {
                    out.push_str(&k.len().to_string());
                    out.push(':');
                    out.push_str(k);
                    if !v.write_key(out) {
                        return false;
                    }
                }
                out.push('}');
            }
            Value::Time(t) => {
                out.push('T');
                out.push_str(&t.ns.to_string());
                out.push(':');
                out.push_str(&t.offset.to_string());
            }
            Value::Version(v) => {
                out.push('V');
                out.push_str(&v.original);
            }
        }
        true
    }
}

impl std::fmt::Display for Version {
    /// Masterminds/semver's `String()`: the canonical form without a leading `v`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)?;
        if !self.pre.is_empty() {
            write!(f, "-{}", self.pre)?;
        }
        if !self.metadata.is_empty() {
            write!(f, "+{}", self.metadata)?;
        }
        Ok(())
    }
}

/// Go's `encoding/json` string form.
pub fn write_json_string(out: &mut String, s: &str, html: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' if html => out.push_str(&format!("\\u{:04x}", c as u32)),
            '\u{2028}' | '\u{2029}' => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A float as Go's `encoding/json` writes it: `strconv` shortest form, fixed notation unless
/// the magnitude is below 1e-6 or at least 1e21; `None` for NaN and infinities.
pub fn format_json_float(f: f64) -> Option<String> {
    if !f.is_finite() {
        return None;
    }
    let abs = f.abs();
    if abs != 0.0 && !(1e-6..1e21).contains(&abs) {
        let t = format!("{f:e}");
        let (mant, exp) = t.split_once('e')?;
        let (sign, digits) = match exp.strip_prefix('-') {
            Some(d) => ('-', d),
            None => ('+', exp),
        };
        return Some(format!("{mant}e{sign}{digits}"));
    }
    Some(format!("{f}"))
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.to_string())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s)
    }
}

/// Formats a float the way Go's `%v` does (shortest representation, `%e` form when the decimal
/// exponent is below -4 or at least 6, like `strconv.FormatFloat(f, 'g', -1, 64)`).
pub fn format_go_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".to_string();
    }
    if f.is_infinite() {
        return if f > 0.0 { "+Inf" } else { "-Inf" }.to_string();
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0" } else { "0" }.to_string();
    }
    // The exponent of the shortest representation decides the form.
    let e = format!("{f:e}");
    let exp: i32 = e
        .split_once('e')
        .and_then(|(_, x)| x.parse().ok())
        .unwrap_or(0);
    if !(-4..6).contains(&exp) {
        let (mant, x) = e.split_once('e').unwrap_or((&e, "0"));
        let (sign, digits) = match x.strip_prefix('-') {
            Some(d) => ('-', d),
            None => ('+', x),
        };
        format!("{mant}e{sign}{digits:0>2}")
    } else {
        format!("{f}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_formatting() {
        assert_eq!(Value::Float(1.5).go_string(), "1.5");
        assert_eq!(Value::Float(2.0).go_string(), "2");
        assert_eq!(Value::Float(1e22).go_string(), "1e+22");
        assert_eq!(Value::Float(1e6).go_string(), "1e+06");
        assert_eq!(Value::Float(123456.0).go_string(), "123456");
        assert_eq!(Value::Float(1e-7).go_string(), "1e-07");
        let l = Value::List(vec!["a".into(), Value::Int(1), Value::Bool(true)]);
        assert_eq!(l.go_string(), "[a 1 true]");
        let mut m = BTreeMap::new();
        m.insert("b".to_string(), Value::Int(2));
        m.insert("a".to_string(), Value::Nil);
        assert_eq!(Value::map(m).go_string(), "map[a:<nil> b:2]");
        assert_eq!(Value::Nil.to_output(), "<no value>");
    }
}
