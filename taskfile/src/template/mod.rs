//! A Go `text/template` compatible engine with the function map of Sprig v2.22 (what acb
//! renders task files with), meant to render byte for byte as acb does. Values follow Go's
//! semantics (dicts are shared references; see [`Value`]); the clock and the seed of the random
//! functions are inputs ([`Env`]), so a render is a pure function of its arguments.
//!
//! Hand-written on purpose: the existing Rust ports (e.g. `gtmpl`) lack Go's `missingkey=zero`
//! behaviour, `break`/`continue`, lazy `and`/`or`, and — most importantly for a service that
//! evaluates user input — any bound on output size, loop work or template recursion. This engine
//! is bounded by [`Limits`] and records a source map so errors found later (in the YAML) can point
//! back at the template text.

mod exec;
mod funcs;
mod parse;
mod value;

pub use exec::{Env, Limits, Segment};
pub use funcs::fmt::sprintf;
pub use funcs::strval;
pub use value::{Dict, Value};

use parse::{Arg, ArgKind, Node, Pipe};

/// Template output plus where each piece came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub text: String,
    pub segments: Vec<Segment>,
}

/// A parse or execution error at a byte offset of the template source. `message` is in Go's
/// form (`template: <name>:<line>:<col>: ...`).
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateError {
    pub pos: usize,
    pub message: String,
}

fn line_col(src: &str, pos: usize) -> (usize, usize) {
    let pos = pos.min(src.len());
    let before = &src[..pos];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map(|p| pos - p - 1).unwrap_or(pos);
    (line, col)
}

/// Parses and executes `src` with `data` as dot, at the epoch with random seed 0.
pub fn render(
    name: &str,
    src: &str,
    data: &Value,
    limits: Limits,
) -> Result<Rendered, TemplateError> {
    render_env(name, src, data, limits, Env::default())
}

/// Parses and executes `src` with `data` as dot, with the clock and random seed of `env`.
pub fn render_env(
    name: &str,
    src: &str,
    data: &Value,
    limits: Limits,
    env: Env,
) -> Result<Rendered, TemplateError> {
    let tree = parse::parse(src).map_err(|e| {
        let (line, _) = line_col(src, e.pos);
        TemplateError {
            pos: e.pos,
            message: format!("template: {name}:{line}: {}", e.message),
        }
    })?;
    let mut undefined = None;
    check_functions(&tree.root, &mut undefined);
    for body in tree.defines.values() {
        check_functions(body, &mut undefined);
    }
    if let Some((pos, f)) = undefined {
        let (line, _) = line_col(src, pos);
        return Err(TemplateError {
            pos,
            message: format!("template: {name}:{line}: function {f:?} not defined"),
        });
    }
    let (text, segments) = exec::execute(&tree, name, data, limits, env).map_err(|e| {
        let (line, col) = line_col(src, e.pos);
        TemplateError {
            pos: e.pos,
            message: format!("template: {name}:{line}:{col}: {}", e.message),
        }
    })?;
    Ok(Rendered { text, segments })
}

/// Functions whose kiln behaviour knowingly differs from acb's (Go `text/template` with
/// Sprig v2.22), and how. `kiln task validate` warns where a task file uses one.
pub const DIFFERS_FROM_ACR: &[(&str, &str)] = &[
    ("env", "kiln refuses it: it would expose the agent's environment variables"),
    ("expandenv", "kiln refuses it: it would expose the agent's environment variables"),
    ("getHostByName", "kiln refuses it: it would resolve names on the agent's network"),
    ("keys", "Go lists a dict's keys in random order; kiln sorts them"),
    ("values", "Go lists a dict's values in random order; kiln sorts them by key"),
    ("b64enc", "acb encodes a non-string as Go's reflect text (an int as `<int Value>`); kiln encodes its printed form"),
    ("typeOf", "Sprig's math functions return int64 in Go; kiln reports every integer as int"),
    ("typeIs", "Sprig's math functions return int64 in Go; kiln reports every integer as int"),
    ("typeIsLike", "Sprig's math functions return int64 in Go; kiln reports every integer as int"),
    ("now", "printed as is, Go adds the monotonic clock reading (`m=+0.001`); kiln does not"),
    ("genPrivateKey", "kiln refuses \"dsa\" keys (rsa and ecdsa work)"),
    ("genCA", "a certificate is a dict of Cert and Key in kiln (a struct in Go): printed whole, it reads map[...]"),
    ("genSelfSignedCert", "a certificate is a dict of Cert and Key in kiln (a struct in Go): printed whole, it reads map[...]"),
    ("genSignedCert", "a certificate is a dict of Cert and Key in kiln (a struct in Go): printed whole, it reads map[...]"),
];

/// Uses of [`DIFFERS_FROM_ACR`] functions in `src`: `(byte offset, function, note)` in source
/// order. Empty when `src` does not parse (the render reports that).
pub fn compatibility_notes(src: &str) -> Vec<(usize, &'static str, &'static str)> {
    let Ok(tree) = parse::parse(src) else {
        return Vec::new();
    };
    let mut uses = Vec::new();
    collect_idents(&tree.root, &mut uses);
    for body in tree.defines.values() {
        collect_idents(body, &mut uses);
    }
    let mut out: Vec<(usize, &'static str, &'static str)> = uses
        .into_iter()
        .filter_map(|(pos, name)| {
            DIFFERS_FROM_ACR
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(n, note)| (pos, *n, *note))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

fn collect_idents(list: &[Node], out: &mut Vec<(usize, String)>) {
    fn pipe(p: &Pipe, out: &mut Vec<(usize, String)>) {
        for cmd in &p.cmds {
            for a in &cmd.args {
                arg(a, out);
            }
        }
    }
    fn arg(a: &Arg, out: &mut Vec<(usize, String)>) {
        match &a.kind {
            ArgKind::Ident(f) => out.push((a.pos, f.clone())),
            ArgKind::Pipe(p) => pipe(p, out),
            ArgKind::Chain(inner, _) => arg(inner, out),
            _ => {}
        }
    }
    for node in list {
        match node {
            Node::Action { pipe: p, .. } => pipe(p, out),
            Node::If {
                pipe: p,
                list,
                else_list,
                ..
            }
            | Node::Range {
                pipe: p,
                list,
                else_list,
                ..
            }
            | Node::With {
                pipe: p,
                list,
                else_list,
                ..
            } => {
                pipe(p, out);
                collect_idents(list, out);
                if let Some(e) = else_list {
                    collect_idents(e, out);
                }
            }
            Node::Template { pipe: Some(p), .. } => pipe(p, out),
            _ => {}
        }
    }
}

/// Maps a byte offset of the output back to a byte offset of the template source.
pub fn map_offset(segments: &[Segment], out: usize) -> usize {
    let idx = segments.partition_point(|s| s.out <= out);
    if idx == 0 {
        return segments.first().map(|s| s.src).unwrap_or(out);
    }
    let seg = segments[idx - 1];
    if seg.literal {
        seg.src + (out - seg.out)
    } else {
        seg.src
    }
}

fn check_functions(list: &[Node], found: &mut Option<(usize, String)>) {
    for node in list {
        match node {
            Node::Action { pipe, .. } => check_pipe(pipe, found),
            Node::If {
                pipe,
                list,
                else_list,
                ..
            }
            | Node::Range {
                pipe,
                list,
                else_list,
                ..
            }
            | Node::With {
                pipe,
                list,
                else_list,
                ..
            } => {
                check_pipe(pipe, found);
                check_functions(list, found);
                if let Some(e) = else_list {
                    check_functions(e, found);
                }
            }
            Node::Template { pipe: Some(p), .. } => check_pipe(p, found),
            _ => {}
        }
    }
}

fn check_pipe(pipe: &Pipe, found: &mut Option<(usize, String)>) {
    for cmd in &pipe.cmds {
        for arg in &cmd.args {
            check_arg(arg, found);
        }
    }
}

fn check_arg(arg: &Arg, found: &mut Option<(usize, String)>) {
    match &arg.kind {
        ArgKind::Ident(f) if found.is_none() && !funcs::is_defined(f) => {
            *found = Some((arg.pos, f.clone()));
        }
        ArgKind::Pipe(p) => check_pipe(p, found),
        ArgKind::Chain(inner, _) => check_arg(inner, found),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn data() -> Value {
        let mut run = BTreeMap::new();
        run.insert("ID".to_string(), Value::from("cf19"));
        run.insert("Registry".to_string(), Value::from("r.io"));
        let mut values = BTreeMap::new();
        values.insert("n".to_string(), Value::Int(3));
        values.insert(
            "l".to_string(),
            Value::List(vec!["a".into(), "b".into(), "c".into()]),
        );
        let mut nested = BTreeMap::new();
        nested.insert("x".to_string(), Value::from("deep"));
        values.insert("m".to_string(), Value::map(nested));
        let mut root = BTreeMap::new();
        root.insert("Run".to_string(), Value::map(run));
        root.insert("Values".to_string(), Value::map(values));
        Value::map(root)
    }

    fn r(src: &str) -> String {
        render("t", src, &data(), Limits::default()).unwrap().text
    }

    fn e(src: &str) -> String {
        render("t", src, &data(), Limits::default())
            .unwrap_err()
            .message
    }

    #[test]
    fn fields_and_missing_keys() {
        assert_eq!(r("{{.Run.Registry}}/x:{{.Run.ID}}"), "r.io/x:cf19");
        assert_eq!(r("[{{.Values.missing}}]"), "[<no value>]");
        assert_eq!(r("{{.Values.m.x}}"), "deep");
        assert_eq!(
            e("{{.Values.a.b}}"),
            "template: t:1:2: executing \"t\" at <.Values.a.b>: nil pointer evaluating interface {}.b"
        );
        assert!(e("{{.Run.ID.x}}").contains("can't evaluate field x in type string"));
    }

    #[test]
    fn control_flow() {
        assert_eq!(r("{{if eq .Values.n 3}}yes{{else}}no{{end}}"), "yes");
        assert_eq!(
            r("{{if .Values.zz}}a{{else if .Values.n}}b{{else}}c{{end}}"),
            "b"
        );
        assert_eq!(
            r("{{range $i, $v := .Values.l}}{{$i}}={{$v}};{{end}}"),
            "0=a;1=b;2=c;"
        );
        assert_eq!(r("{{range .Values.l}}{{.}}{{end}}"), "abc");
        assert_eq!(r("{{range .Values.none}}x{{else}}empty{{end}}"), "empty");
        assert_eq!(r("{{with .Values.m}}{{.x}}{{end}}"), "deep");
        assert_eq!(r("{{with .Values.zz}}x{{else}}none{{end}}"), "none");
        assert_eq!(
            r("{{range .Values.l}}{{if eq . \"b\"}}{{break}}{{end}}{{.}}{{end}}"),
            "a"
        );
        assert_eq!(
            r("{{range .Values.l}}{{if eq . \"b\"}}{{continue}}{{end}}{{.}}{{end}}"),
            "ac"
        );
        assert_eq!(r("{{range 3}}{{.}}{{end}}"), "012");
    }

    #[test]
    fn variables_pipelines_and_trim() {
        assert_eq!(
            r("{{ $x := .Run.ID }}{{ $x }}-{{ $.Run.Registry }}"),
            "cf19-r.io"
        );
        assert_eq!(
            r("{{ $x := 1 }}{{ if true }}{{ $x = 2 }}{{ end }}{{ $x }}"),
            "2"
        );
        assert_eq!(r("{{ .Run.ID | upper | printf \"%s!\" }}"), "CF19!");
        assert_eq!(r("a  {{- \"b\" -}}  c"), "abc");
        assert_eq!(r("{{/* comment */}}x{{- /* c */ -}} y"), "xy");
        assert_eq!(r("{{ (index .Values.l 1) }}{{ len .Values.l }}"), "b3");
        assert_eq!(r("{{ and 1 0 }}{{ or 0 \"x\" }}{{ not true }}"), "0xfalse");
        assert_eq!(r("{{ .Values.missing | default \"d\" }}"), "d");
        assert_eq!(r("{{ print 1 2 \"a\" 3 }}"), "1 2a3");
    }

    #[test]
    fn define_and_template() {
        assert_eq!(
            r("{{define \"x\"}}[{{.}}]{{end}}{{template \"x\" .Run.ID}}"),
            "[cf19]"
        );
        assert_eq!(r("{{block \"b\" .Run.ID}}<{{.}}>{{end}}"), "<cf19>");
    }

    #[test]
    fn errors() {
        assert!(e("{{ nosuchfunc 1 }}").contains("function \"nosuchfunc\" not defined"));
        assert!(e("{{ if }}").starts_with("template: t:1:"));
        assert!(e("line1\n{{ .Run.ID 1 }}").starts_with("template: t:2:"));
        assert!(e("{{ $nope }}").contains("undefined variable"));
    }

    #[test]
    fn limits_hold() {
        let tight = Limits {
            max_output: 1000,
            max_steps: 10_000,
            max_depth: 10,
        };
        let msg = render(
            "t",
            "{{range until 100000}}xxxxxxxxxx{{end}}",
            &data(),
            tight,
        )
        .unwrap_err()
        .message;
        assert!(msg.contains("exceed"), "{msg}");
        let msg = render(
            "t",
            "{{define \"a\"}}{{template \"a\" .}}{{end}}{{template \"a\" .}}",
            &data(),
            tight,
        )
        .unwrap_err()
        .message;
        assert!(msg.contains("depth"), "{msg}");
        let msg = render(
            "t",
            "{{range 5000}}{{range 5000}}{{end}}{{end}}",
            &data(),
            tight,
        )
        .unwrap_err()
        .message;
        assert!(msg.contains("steps"), "{msg}");
    }

    fn err_with(src: &str, limits: Limits) -> String {
        render("t", src, &data(), limits).unwrap_err().message
    }

    #[test]
    fn doubling_a_value_hits_the_value_limit() {
        // Each `list $x $x` doubles the value: 2^64 nodes without a bound.
        let msg = e("{{$x := list 1}}{{range until 64}}{{$x = list $x $x}}{{end}}");
        assert!(msg.contains("exceed the limit"), "{msg}");
        let msg =
            e("{{$x := dict \"a\" 1}}{{range until 64}}{{$x = dict \"a\" $x \"b\" $x}}{{end}}");
        assert!(msg.contains("exceed the limit"), "{msg}");
    }

    #[test]
    fn deeply_nested_values_are_refused() {
        // A 100000-deep list would overflow the stack when dropped or printed.
        let msg = e("{{$x := list}}{{range until 100000}}{{$x = list $x}}{{end}}{{$x}}");
        assert!(msg.contains("nested deeper than 100 levels"), "{msg}");
        assert_eq!(
            r("{{$x := list}}{{range until 5}}{{$x = list $x}}{{end}}{{$x}}"),
            "[[[[[[]]]]]]"
        );
    }

    #[test]
    fn copying_large_values_costs_steps() {
        // One 1 MB copy per iteration: a million iterations would copy a terabyte.
        let msg = e("{{$x := repeat 1000000 \"a\"}}{{range 1000000}}{{$y := $x}}{{end}}");
        assert!(msg.contains("exceeded 1000000 steps"), "{msg}");
        let big = "a".repeat(60_000);
        let msg = e(&format!(
            "{{{{range 1000000}}}}{{{{$y := \"{big}\"}}}}{{{{end}}}}"
        ));
        assert!(msg.contains("exceeded 1000000 steps"), "{msg}");
        let msg = e("{{range 1000000}}{{$y := repeat 1000000 \"a\"}}{{end}}");
        assert!(msg.contains("exceeded 1000000 steps"), "{msg}");
    }

    #[test]
    fn integer_ranges_are_counted_lazily() {
        let msg = e("{{range 9223372036854775807}}{{end}}");
        assert!(msg.contains("exceeded 1000000 steps"), "{msg}");
        assert_eq!(r("{{range $i, $v := 3}}{{$i}}{{$v}}{{end}}"), "001122");
        assert_eq!(r("{{range 0}}x{{else}}none{{end}}"), "none");
        assert!(e("{{range -1}}{{end}}").contains("range can't iterate over -1"));
    }

    #[test]
    fn evaluation_nesting_is_bounded() {
        // 49 nested ifs and 50 parentheses per recursive call: parses, but must stop before
        // the stack runs out.
        let src = format!(
            "{{{{define \"a\"}}}}{}{{{{template \"a\" {}.{}}}}}{}{{{{end}}}}{{{{template \"a\" .}}}}",
            "{{if 1}}".repeat(49),
            "(".repeat(50),
            ")".repeat(50),
            "{{end}}".repeat(49)
        );
        let msg = err_with(&src, Limits::default());
        assert!(msg.contains("nested deeper than 100 levels"), "{msg}");
        let src = format!(
            "{{{{define \"a\"}}}}{{{{if 1}}}}{{{{{}1{}}}}}{{{{template \"a\" .}}}}{{{{end}}}}{{{{end}}}}{{{{template \"a\" .}}}}",
            "(print ".repeat(95),
            ")".repeat(95)
        );
        let msg = err_with(&src, Limits::default());
        assert!(msg.contains("nested deeper than 100 levels"), "{msg}");
    }

    #[test]
    fn variables_scope_like_go() {
        assert_eq!(
            r("{{$x := 1}}{{range until 2}}{{$x := 2}}{{$x}}{{end}}{{$x}}"),
            "221"
        );
        assert_eq!(r("{{$x := 1}}{{with 5}}{{$x = .}}{{end}}{{$x}}"), "5");
        assert_eq!(r("{{$x := 1}}{{$x := 2}}{{$x}}"), "2");
        assert!(
            e("{{define \"t\"}}{{$x}}{{end}}{{$x := 1}}{{template \"t\"}}")
                .contains("undefined variable: $x")
        );
        assert!(e("{{if 1}}{{$y := 1}}{{end}}{{$y}}").contains("undefined variable: $y"));
        assert!(e("{{$z = 1}}").contains("undefined variable: $z"));
        // Many declarations do not make each lookup scan them all.
        let src = format!(
            "{}{{{{range 300000}}}}{{{{$}}}}{{{{end}}}}",
            "{{$a := 1}}".repeat(20_000)
        );
        let msg = err_with(
            &src,
            Limits {
                max_output: 1 << 30,
                ..Limits::default()
            },
        );
        assert!(msg.contains("exceeded 1000000 steps"), "{msg}");
    }

    #[test]
    fn function_results_are_bounded() {
        let tight = Limits {
            max_output: 1000,
            ..Limits::default()
        };
        assert!(
            err_with("{{ $l := until 1000 }}", tight).contains("result exceeds the limit of 1000")
        );
        assert!(
            err_with("{{ $a := repeat 600 \"a\" }}{{ $b := list $a $a }}", tight)
                .contains("arguments exceed the limit of 1000")
        );
    }

    #[test]
    fn source_map() {
        let out = render("t", "ab{{.Run.ID}}\ncd", &data(), Limits::default()).unwrap();
        assert_eq!(out.text, "abcf19\ncd");
        assert_eq!(map_offset(&out.segments, 1), 1);
        assert_eq!(map_offset(&out.segments, 3), 2);
        assert_eq!(map_offset(&out.segments, 7), 14);
    }
}
