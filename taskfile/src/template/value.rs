//! Dynamic values of the template engine and their Go `fmt` (`%v`) text form.

use std::collections::BTreeMap;

/// The weight of one value node besides its string bytes (roughly its size in memory).
pub const NODE_WEIGHT: usize = 32;

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
    Map(BTreeMap<String, Value>),
}

impl Value {
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
                for (i, (k, v)) in m.iter().enumerate() {
                    if i > 0 {
                        out.push(' ');
                    }
                    out.push_str(k);
                    out.push(':');
                    v.write_go(out);
                }
                out.push(']');
            }
        }
    }

    /// JSON form (maps with sorted keys), as Go's `encoding/json` would produce.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Nil => serde_json::Value::Null,
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Int(i) => serde_json::Value::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
            Value::Str(s) => serde_json::Value::String(s.clone()),
            Value::List(l) => serde_json::Value::Array(l.iter().map(Value::to_json).collect()),
            Value::Map(m) => {
                serde_json::Value::Object(m.iter().map(|(k, v)| (k.clone(), v.to_json())).collect())
            }
        }
    }

    /// Converts parsed JSON into a value.
    pub fn from_json(j: &serde_json::Value) -> Value {
        match j {
            serde_json::Value::Null => Value::Nil,
            serde_json::Value::Bool(b) => Value::Bool(*b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::Float(n.as_f64().unwrap_or(0.0)),
            },
            serde_json::Value::String(s) => Value::Str(s.clone()),
            serde_json::Value::Array(a) => Value::List(a.iter().map(Value::from_json).collect()),
            serde_json::Value::Object(o) => Value::Map(
                o.iter()
                    .map(|(k, v)| (k.clone(), Value::from_json(v)))
                    .collect(),
            ),
        }
    }

    /// An approximation of the number of bytes this value occupies (for limits): string bytes
    /// plus [`NODE_WEIGHT`] per value.
    pub fn weight(&self) -> usize {
        self.measure(usize::MAX).0
    }

    /// `(weight, depth)` of this value, where depth is the nesting of lists and maps (a scalar
    /// is 0). Stops early, returning a weight above `cap`, once the weight exceeds `cap`, so
    /// the cost of a check is bounded by the cap rather than by the value.
    pub fn measure(&self, cap: usize) -> (usize, usize) {
        let mut weight = 0usize;
        let depth = self.measure_into(cap, &mut weight);
        (weight, depth)
    }

    fn measure_into(&self, cap: usize, weight: &mut usize) -> usize {
        *weight = weight.saturating_add(NODE_WEIGHT);
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
                    depth = depth.max(v.measure_into(cap, weight));
                }
                depth + 1
            }
            Value::Map(m) => {
                let mut depth = 0;
                for (k, v) in m {
                    if *weight > cap {
                        break;
                    }
                    *weight = weight.saturating_add(k.len());
                    depth = depth.max(v.measure_into(cap, weight));
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
                for (k, v) in m {
                    out.push_str(&k.len().to_string());
                    out.push(':');
                    out.push_str(k);
                    if !v.write_key(out) {
                        return false;
                    }
                }
                out.push('}');
            }
        }
        true
    }
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
    let exp = f.abs().log10().floor() as i32;
    if !(-4..6).contains(&exp) {
        let s = format!("{:e}", f);
        // Rust: 1.5e22 / 1e-7; Go: 1.5e+22 / 1e-07.
        if let Some((mant, e)) = s.split_once('e') {
            let (sign, digits) = match e.strip_prefix('-') {
                Some(d) => ('-', d),
                None => ('+', e),
            };
            let digits = if digits.len() < 2 {
                format!("0{digits}")
            } else {
                digits.to_string()
            };
            return format!("{mant}e{sign}{digits}");
        }
        s
    } else {
        format!("{}", f)
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
        assert_eq!(Value::Map(m).go_string(), "map[a:<nil> b:2]");
        assert_eq!(Value::Nil.to_output(), "<no value>");
    }
}
