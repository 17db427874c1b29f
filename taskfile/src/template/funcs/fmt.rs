//! Go's `fmt`: `Sprint`, `Sprintln` and `Sprintf` with its verbs, flags, widths, precisions
//! and argument indexes, over template values (lists and maps are formatted element by element,
//! as `fmt` does for `[]interface{}` and `map[string]interface{}`).

use super::super::value::{format_go_float, Value, NODE_WEIGHT};
use super::check_size;

/// Sprig's `strval`: strings as is, everything else in `%v` form.
pub fn strval(v: &Value) -> String {
    match v {
        Value::Str(x) => x.clone(),
        other => other.go_string(),
    }
}

/// `reflect.Kind` name of a value.
pub fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Nil => "invalid",
        Value::Bool(_) => "bool",
        Value::Int(_) => "int",
        Value::Float(_) => "float64",
        Value::Str(_) => "string",
        Value::List(_) => "slice",
        Value::Map(_) => "map",
        Value::Time(_) => "struct",
        Value::Version(_) => "ptr",
    }
}

/// `fmt.Sprint`: a space between operands when neither is a string.
pub fn sprint(args: &[Value]) -> String {
    let mut out = String::new();
    for (n, a) in args.iter().enumerate() {
        if n > 0 && !matches!(a, Value::Str(_)) && !matches!(args[n - 1], Value::Str(_)) {
            out.push(' ');
        }
        out.push_str(&a.go_string());
    }
    out
}

/// `fmt.Sprintln`: spaces between all operands and a newline.
pub fn sprintln(args: &[Value]) -> String {
    let parts: Vec<String> = args.iter().map(Value::go_string).collect();
    format!("{}\n", parts.join(" "))
}

/// Whether Go's `strconv.IsPrint` holds (approximately: not a control or unassigned-looking
/// format character).
fn is_print(c: char) -> bool {
    let r = c as u32;
    // Noncharacters are never assigned.
    if (0xfdd0..=0xfdef).contains(&r) || r & 0xfffe == 0xfffe {
        return false;
    }
    !(c.is_control()
        || matches!(r, 0xad | 0x200b..=0x200f | 0x2028..=0x202e | 0x2060..=0x2064 | 0xfeff | 0xfff9..=0xfffb)
        || (c != ' ' && c.is_whitespace()))
}

fn quote_with(x: &str, q: char, ascii_only: bool) -> String {
    let mut out = String::with_capacity(x.len() + 2);
    out.push(q);
    for c in x.chars() {
        match c {
            c if c == q => {
                out.push('\\');
                out.push(c);
            }
            '\\' => out.push_str("\\\\"),
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x0b' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if (ascii_only && !c.is_ascii()) || !is_print(c) => {
                if (c as u32) < 0x10000 {
                    out.push_str(&format!("\\u{:04x}", c as u32))
                } else {
                    out.push_str(&format!("\\U{:08x}", c as u32))
                }
            }
            c => out.push(c),
        }
    }
    out.push(q);
    out
}

/// `strconv.Quote`.
pub fn go_quote(x: &str) -> String {
    quote_with(x, '"', false)
}

/// `strconv.QuoteRune`.
fn quote_rune(c: char, ascii_only: bool) -> String {
    if c == '"' {
        return "'\"'".into();
    }
    quote_with(c.encode_utf8(&mut [0; 4]), '\'', ascii_only)
}

fn can_backquote(x: &str) -> bool {
    x.chars()
        .all(|c| c != '`' && c != '\u{feff}' && (c == '\t' || !c.is_control()))
}

/// Formatting state of one verb.
#[derive(Default, Clone, Copy)]
struct Spec {
    minus: bool,
    plus: bool,
    sharp: bool,
    space: bool,
    zero: bool,
    width: Option<usize>,
    prec: Option<usize>,
    /// `%#v`.
    sharp_v: bool,
}

impl Spec {
    fn pad(&self, out: &mut String, text: &str) {
        self.pad_with(out, text, self.zero);
    }

    fn pad_with(&self, out: &mut String, text: &str, zero: bool) {
        let n = text.chars().count();
        let fill = self.width.unwrap_or(0).saturating_sub(n);
        if fill == 0 {
            out.push_str(text);
        } else if self.minus {
            out.push_str(text);
            out.extend(std::iter::repeat_n(' ', fill));
        } else {
            out.extend(std::iter::repeat_n(if zero { '0' } else { ' ' }, fill));
            out.push_str(text);
        }
    }
}

fn bad_verb(out: &mut String, verb: char, v: &Value) {
    match v {
        Value::Nil => out.push_str(&format!("%!{verb}(<nil>)")),
        v => out.push_str(&format!("%!{verb}({}={})", v.type_name(), v.go_string())),
    }
}

fn fmt_integer(out: &mut String, spec: &Spec, n: i64, verb: char) {
    let neg = n < 0;
    let u = n.unsigned_abs();
    let mut digits = match verb {
        'b' => format!("{u:b}"),
        'o' | 'O' => format!("{u:o}"),
        'x' => format!("{u:x}"),
        'X' => format!("{u:X}"),
        _ => u.to_string(),
    };
    // Precision: minimum digits; an explicit zero precision prints nothing for 0.
    let mut zero_pad = false;
    if let Some(p) = spec.prec {
        if p == 0 && u == 0 {
            digits.clear();
        } else if digits.len() < p {
            digits = format!("{}{digits}", "0".repeat(p - digits.len()));
        }
    } else if spec.zero && !spec.minus && spec.width.is_some() {
        zero_pad = true;
    }
    let mut prefix = String::new();
    if neg {
        prefix.push('-');
    } else if spec.plus {
        prefix.push('+');
    } else if spec.space {
        prefix.push(' ');
    }
    if spec.sharp {
        match verb {
            'b' => prefix.push_str("0b"),
            'o' if !digits.starts_with('0') => prefix.push('0'),
            'x' => prefix.push_str("0x"),
            'X' => prefix.push_str("0X"),
            _ => {}
        }
    }
    if verb == 'O' {
        prefix.push_str("0o");
    }
    if zero_pad {
        let w = spec.width.unwrap_or(0);
        let have = prefix.chars().count() + digits.len();
        if have < w {
            digits = format!("{}{digits}", "0".repeat(w - have));
        }
    }
    spec.pad_with(out, &format!("{prefix}{digits}"), false);
}

/// Go's `%e` exponent form: at least two exponent digits with a sign.
fn go_exp(t: &str, upper: bool) -> String {
    match t.split_once('e') {
        Some((m, e)) => {
            let (sg, d) = match e.strip_prefix('-') {
                Some(d) => ('-', d),
                None => ('+', e),
            };
            format!("{m}{}{sg}{d:0>2}", if upper { 'E' } else { 'e' })
        }
        None => t.to_string(),
    }
}

fn trim_frac_zeros(m: &str) -> String {
    if m.contains('.') {
        m.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        m.to_string()
    }
}

/// Digits past which a float64's exact decimal expansion is all zeros (its longest has 1074
/// fraction digits); Rust's formatter takes at most 65535.
const MAX_FLOAT_DIGITS: usize = 1100;

/// `f` with `prec` digits after the point (`%f`), for any precision.
fn fixed(f: f64, prec: usize) -> String {
    let p = prec.min(MAX_FLOAT_DIGITS);
    let mut t = format!("{f:.p$}");
    t.extend(std::iter::repeat_n('0', prec - p));
    t
}

/// `f` in Rust's exponent form with `prec` mantissa digits after the point, for any precision.
fn sci(f: f64, prec: usize) -> String {
    let p = prec.min(MAX_FLOAT_DIGITS);
    let t = format!("{f:.p$e}");
    if p == prec {
        return t;
    }
    match t.split_once('e') {
        Some((m, e)) => format!("{m}{}e{e}", "0".repeat(prec - p)),
        None => t,
    }
}

/// `strconv.FormatFloat(f, 'g', prec, 64)` of a non-negative finite `f` (prec `None` =
/// shortest).
fn format_g(f: f64, prec: Option<usize>) -> String {
    let Some(p) = prec else {
        return format_go_float(f);
    };
    let p = p.max(1);
    let e = sci(f, p - 1);
    let (mant, exp) = e.split_once('e').unwrap_or((&e, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits = mant.replace('.', "");
    let nd = digits.trim_end_matches('0').len().max(1) as i32;
    let mut eprec = p as i32;
    if eprec > nd && nd > exp {
        eprec = nd;
    }
    if exp < -4 || exp >= eprec {
        go_exp(&format!("{}e{exp}", trim_frac_zeros(mant)), false)
    } else {
        let decimals = (p as i32 - 1 - exp).max(0) as usize;
        trim_frac_zeros(&fixed(f, decimals))
    }
}

/// `strconv.FormatFloat(f, 'b', -1, 64)` of a non-negative finite `f`.
fn format_b(f: f64) -> String {
    let bits = f.to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i64;
    let mut mant = bits & ((1u64 << 52) - 1);
    let e = if exp == 0 {
        -1074
    } else {
        mant |= 1 << 52;
        exp - 1075
    };
    format!("{mant}p{}{e}", if e >= 0 { "+" } else { "" })
}

/// Go's `%#` for floats: keep a decimal point and (for `%g`) trailing zeros up to the
/// precision.
fn sharp_float(num: &str, verb: char, prec: Option<usize>) -> String {
    let mut digits: i64 = match verb {
        'g' | 'G' => prec.map(|p| p as i64).unwrap_or(6),
        _ => 0,
    };
    let (body, tail) = match num.find(['e', 'E']) {
        Some(k) => (&num[..k], &num[k..]),
        None => (num, ""),
    };
    let mut saw_nonzero = false;
    let mut has_point = false;
    for c in body.chars() {
        if c == '.' {
            has_point = true;
            continue;
        }
        if c != '0' {
            saw_nonzero = true;
        }
        if saw_nonzero {
            digits -= 1;
        }
    }
    let mut out = body.to_string();
    if !has_point {
        if body == "0" {
            digits -= 1;
        }
        out.push('.');
    }
    while digits > 0 {
        out.push('0');
        digits -= 1;
    }
    out.push_str(tail);
    out
}

fn fmt_float(out: &mut String, spec: &Spec, f: f64, verb: char) {
    let mut body = if f.is_nan() {
        "NaN".to_string()
    } else if f.is_infinite() {
        "Inf".to_string()
    } else {
        let a = f.abs();
        let num = match verb {
            'v' | 'g' | 'G' => format_g(a, spec.prec),
            'e' | 'E' => go_exp(&sci(a, spec.prec.unwrap_or(6)), false),
            'b' => format_b(a),
            _ => fixed(a, spec.prec.unwrap_or(6)),
        };
        if spec.sharp && verb != 'b' && verb != 'v' {
            sharp_float(&num, verb, spec.prec)
        } else {
            num
        }
    };
    if (verb == 'G' || verb == 'E') && f.is_finite() {
        body = body.to_uppercase();
    }
    let neg = f.is_sign_negative() && !f.is_nan();
    let sign = if neg {
        "-"
    } else if spec.plus {
        "+"
    } else if spec.space {
        " "
    } else if f.is_infinite() {
        "+"
    } else {
        ""
    };
    // Infinities and NaN pad with spaces; numbers with zeros after the sign.
    if spec.zero && !spec.minus && f.is_finite() {
        if let Some(w) = spec.width {
            let have = sign.len() + body.len();
            if have < w {
                body = format!("{}{body}", "0".repeat(w - have));
            }
        }
    }
    spec.pad_with(out, &format!("{sign}{body}"), false);
}

fn fmt_hex_str(out: &mut String, spec: &Spec, x: &str, upper: bool) {
    let bytes = x.as_bytes();
    let bytes = match spec.prec {
        Some(p) if p < bytes.len() => &bytes[..p],
        _ => bytes,
    };
    let mut t = String::new();
    for (k, byte) in bytes.iter().enumerate() {
        if spec.space && k > 0 {
            t.push(' ');
        }
        if spec.sharp && (spec.space || k == 0) {
            t.push_str(if upper { "0X" } else { "0x" });
        }
        if upper {
            t.push_str(&format!("{byte:02X}"));
        } else {
            t.push_str(&format!("{byte:02x}"));
        }
    }
    spec.pad(out, &t);
}

fn fmt_str(out: &mut String, spec: &Spec, x: &str, verb: char) {
    let truncated: String;
    let x = match spec.prec {
        Some(p) if verb != 'x' && verb != 'X' => {
            truncated = x.chars().take(p).collect();
            &truncated
        }
        _ => x,
    };
    match verb {
        'v' | 's' => spec.pad(out, x),
        'q' => {
            if spec.sharp && can_backquote(x) {
                spec.pad(out, &format!("`{x}`"));
            } else {
                spec.pad(out, &quote_with(x, '"', spec.plus));
            }
        }
        'x' | 'X' => fmt_hex_str(out, spec, x, verb == 'X'),
        _ => bad_verb(out, verb, &Value::Str(x.to_string())),
    }
}

/// `%#v` (Go syntax) of a value.
fn go_syntax(v: &Value, top: bool) -> String {
    match v {
        Value::Nil if top => "<nil>".into(),
        Value::Nil => "interface {}(nil)".into(),
        Value::Str(x) => go_quote(x),
        Value::List(l) => {
            let items: Vec<String> = l.iter().map(|x| go_syntax(x, false)).collect();
            format!("[]interface {{}}{{{}}}", items.join(", "))
        }
        Value::Map(m) => {
            let items: Vec<String> = m
                .borrow()
                .iter()
                .map(|(k, x)| format!("{}:{}", go_quote(k), go_syntax(x, false)))
                .collect();
            format!("map[string]interface {{}}{{{}}}", items.join(", "))
        }
        other => other.go_string(),
    }
}

/// Formats one operand with `verb` (`depth` > 0 inside a list or map).
fn print_value(out: &mut String, spec: &Spec, v: &Value, verb: char, depth: usize) {
    if verb == 'T' {
        spec.pad(out, v.type_name());
        return;
    }
    if verb == 'v' && spec.sharp_v {
        spec.pad(out, &go_syntax(v, depth == 0));
        return;
    }
    match v {
        Value::Nil => {
            if depth > 0 || verb == 'v' {
                spec.pad(out, "<nil>");
            } else {
                bad_verb(out, verb, v);
            }
        }
        Value::Bool(b) => match verb {
            't' | 'v' => spec.pad(out, if *b { "true" } else { "false" }),
            _ => bad_verb(out, verb, v),
        },
        Value::Int(n) => match verb {
            'v' | 'd' | 'b' | 'o' | 'O' | 'x' | 'X' => fmt_integer(out, spec, *n, verb),
            'c' => spec.pad(
                out,
                &u32::try_from(*n)
                    .ok()
                    .and_then(char::from_u32)
                    .unwrap_or('\u{fffd}')
                    .to_string(),
            ),
            'q' if (0..=0x10ffff).contains(n) => spec.pad(
                out,
                &quote_rune(char::from_u32(*n as u32).unwrap_or('\u{fffd}'), spec.plus),
            ),
            'U' => {
                let digits = spec.prec.unwrap_or(4).max(4);
                let hex = format!("{:X}", *n as u64);
                let mut t = format!("U+{}{hex}", "0".repeat(digits.saturating_sub(hex.len())));
                if spec.sharp {
                    if let Some(c) = u32::try_from(*n)
                        .ok()
                        .and_then(char::from_u32)
                        .filter(|c| is_print(*c))
                    {
                        t.push_str(&format!(" '{c}'"));
                    }
                }
                spec.pad_with(out, &t, false);
            }
            _ => bad_verb(out, verb, v),
        },
        Value::Float(f) => match verb {
            'v' | 'b' | 'e' | 'E' | 'f' | 'F' | 'g' | 'G' => fmt_float(out, spec, *f, verb),
            _ => bad_verb(out, verb, v),
        },
        Value::Str(x) => fmt_str(out, spec, x, verb),
        // Types with a String method print it for the string verbs.
        Value::Time(_) | Value::Version(_) => match verb {
            'v' | 's' | 'q' | 'x' | 'X' => fmt_str(out, spec, &v.go_string(), verb),
            _ => bad_verb(out, verb, v),
        },
        Value::List(l) => {
            out.push('[');
            for (k, x) in l.iter().enumerate() {
                if k > 0 {
                    out.push(' ');
                }
                print_value(out, spec, x, verb, depth + 1);
            }
            out.push(']');
        }
        Value::Map(m) => {
            out.push_str("map[");
            for (k, (key, x)) in m.borrow().iter().enumerate() {
                if k > 0 {
                    out.push(' ');
                }
                print_value(out, spec, &Value::Str(key.clone()), verb, depth + 1);
                out.push(':');
                print_value(out, spec, x, verb, depth + 1);
            }
            out.push(']');
        }
    }
}

/// Go's `parsenum`: a decimal number in `f[start..end]`; `None` for none, and the end of the
/// format (so the verb is missing) for one above a million.
fn parsenum(f: &[u8], start: usize, end: usize) -> (Option<usize>, usize) {
    if start >= end {
        return (None, end);
    }
    let mut num = 0usize;
    let mut is_num = false;
    let mut k = start;
    while k < end && f[k].is_ascii_digit() {
        if num > 1_000_000 {
            return (None, end);
        }
        num = num * 10 + usize::from(f[k] - b'0');
        is_num = true;
        k += 1;
    }
    (is_num.then_some(num), k)
}

/// Go's `parseArgNumber` at `f[0] == '['`: (zero-based index, bytes consumed, ok).
fn parse_arg_number(f: &[u8]) -> (i64, usize, bool) {
    if f.len() < 3 {
        return (0, 1, false);
    }
    for k in 1..f.len() {
        if f[k] == b']' {
            let (n, newi) = parsenum(f, 1, k);
            return match n {
                Some(n) if newi == k => (n as i64 - 1, k + 1, true),
                _ => (0, k + 1, false),
            };
        }
    }
    (0, 1, false)
}

struct Printer<'a> {
    args: &'a [Value],
    out: String,
    reordered: bool,
    good_arg_num: bool,
}

impl Printer<'_> {
    /// Go's `argNumber`: the argument an explicit `[n]` at `f[k..]` selects.
    fn arg_number(&mut self, arg_num: usize, f: &[u8], k: usize) -> (usize, usize, bool) {
        if k >= f.len() || f[k] != b'[' {
            return (arg_num, k, false);
        }
        self.reordered = true;
        let (index, wid, ok) = parse_arg_number(&f[k..]);
        if ok && 0 <= index && (index as usize) < self.args.len() {
            return (index as usize, k + wid, true);
        }
        self.good_arg_num = false;
        (arg_num, k + wid, ok)
    }

    /// Go's `intFromArg`.
    fn int_from_arg(&self, arg_num: usize) -> (i64, bool, usize) {
        match self.args.get(arg_num) {
            Some(Value::Int(n)) if n.unsigned_abs() <= 1_000_000 => (*n, true, arg_num + 1),
            Some(_) => (0, false, arg_num + 1),
            None => (0, false, arg_num),
        }
    }
}

/// Go's `fmt.Sprintf`; `Err` once the text would exceed `limit` bytes (checked as it is
/// built, so a format of many wide verbs cannot exhaust memory).
pub fn sprintf(format: &str, args: &[Value], limit: usize) -> Result<String, String> {
    let f = format.as_bytes();
    let end = f.len();
    let mut p = Printer {
        args,
        out: String::new(),
        reordered: false,
        good_arg_num: true,
    };
    let mut arg_num = 0usize;
    let mut after_index;
    let mut k = 0usize;
    'format: while k < end {
        p.good_arg_num = true;
        let last = k;
        while k < end && f[k] != b'%' {
            k += 1;
        }
        if k > last {
            p.out.push_str(&format[last..k]);
        }
        if k >= end {
            break;
        }
        k += 1;
        let mut spec = Spec::default();
        let mut simple_verb = None;
        while k < end {
            match f[k] {
                b'#' => spec.sharp = true,
                b'0' => spec.zero = !spec.minus,
                b'+' => spec.plus = true,
                b'-' => {
                    spec.minus = true;
                    spec.zero = false;
                }
                b' ' => spec.space = true,
                c => {
                    if c.is_ascii_lowercase() && arg_num < args.len() {
                        simple_verb = Some(c as char);
                    }
                    break;
                }
            }
            k += 1;
        }
        if let Some(verb) = simple_verb {
            k += 1;
            p.print_arg(&spec, arg_num, verb, limit)?;
            arg_num += 1;
            continue 'format;
        }
        (arg_num, k, after_index) = p.arg_number(arg_num, f, k);
        if k < end && f[k] == b'*' {
            k += 1;
            let (w, ok, next) = p.int_from_arg(arg_num);
            arg_num = next;
            if ok {
                spec.width = Some(w.unsigned_abs() as usize);
                if w < 0 {
                    spec.minus = true;
                    spec.zero = false;
                }
            } else {
                p.out.push_str("%!(BADWIDTH)");
            }
            after_index = false;
        } else {
            let (w, next) = parsenum(f, k, end);
            spec.width = w;
            k = next;
            if after_index && w.is_some() {
                p.good_arg_num = false;
            }
        }
        if k + 1 < end && f[k] == b'.' {
            k += 1;
            if after_index {
                p.good_arg_num = false;
            }
            (arg_num, k, after_index) = p.arg_number(arg_num, f, k);
            if k < end && f[k] == b'*' {
                k += 1;
                let (n, ok, next) = p.int_from_arg(arg_num);
                arg_num = next;
                if ok && n >= 0 {
                    spec.prec = Some(n as usize);
                } else {
                    p.out.push_str("%!(BADPREC)");
                }
                after_index = false;
            } else {
                let (n, next) = parsenum(f, k, end);
                spec.prec = Some(n.unwrap_or(0));
                k = next;
            }
        }
        if !after_index {
            (arg_num, k, _) = p.arg_number(arg_num, f, k);
        }
        if k >= end {
            p.out.push_str("%!(NOVERB)");
            break;
        }
        let Some(verb) = format[k..].chars().next() else {
            break;
        };
        k += verb.len_utf8();
        if verb == '%' {
            p.out.push('%');
        } else if !p.good_arg_num {
            p.out.push_str(&format!("%!{verb}(BADINDEX)"));
        } else if arg_num >= args.len() {
            p.out.push_str(&format!("%!{verb}(MISSING)"));
        } else {
            p.print_arg(&spec, arg_num, verb, limit)?;
            arg_num += 1;
        }
    }
    if !p.reordered && arg_num < args.len() {
        p.out.push_str("%!(");
        let extra: Vec<String> = args[arg_num..]
            .iter()
            .map(|a| match a {
                Value::Nil => "<nil>".to_string(),
                a => format!("{}={}", a.type_name(), a.go_string()),
            })
            .collect();
        p.out.push_str("EXTRA ");
        p.out.push_str(&extra.join(", "));
        p.out.push(')');
    }
    check_size(p.out.len(), limit, "printf")?;
    Ok(p.out)
}

impl Printer<'_> {
    fn print_arg(
        &mut self,
        spec: &Spec,
        arg_num: usize,
        verb: char,
        limit: usize,
    ) -> Result<(), String> {
        // Width and precision apply to every element of a list or map.
        let arg = &self.args[arg_num];
        let elements = match arg {
            Value::List(_) | Value::Map(_) => arg.measure(limit).0 / NODE_WEIGHT + 1,
            _ => 1,
        };
        let bound = self.out.len().saturating_add(
            spec.width
                .unwrap_or(0)
                .saturating_add(spec.prec.unwrap_or(0))
                .saturating_mul(elements),
        );
        check_size(bound, limit, "printf")?;
        let mut spec = *spec;
        if verb == 'v' {
            // `%#v` is Go syntax and `%+v` field names: neither is a flag of the value.
            spec.sharp_v = spec.sharp;
            spec.sharp = false;
            spec.plus = false;
        }
        let mut piece = String::new();
        print_value(&mut piece, &spec, &self.args[arg_num], verb, 0);
        check_size(self.out.len().saturating_add(piece.len()), limit, "printf")?;
        self.out.push_str(&piece);
        Ok(())
    }
}
