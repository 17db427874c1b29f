//! How values reach templates, as acb has them: values files decode like gopkg.in/yaml.v2,
//! `--set` values are always strings and their keys are flat, and the render's clock and
//! random seed come from the inputs (so the secrets pre-pass and the real render agree).

use kiln_taskfile::{Inputs, RunVars};

fn render(src: &str, values: Option<&str>, set: &[(&str, &str)]) -> String {
    let inputs = Inputs {
        run: RunVars {
            id: "cf19".into(),
            date_ms: 1_556_858_022_000,
            ..RunVars::default()
        },
        values_yaml: values.map(str::to_string),
        set: set
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Inputs::default()
    };
    match kiln_taskfile::render("acb.yaml", src, &inputs) {
        Ok(t) => t,
        Err(d) => format!("ERROR: {d}"),
    }
}

#[test]
fn values_files_decode_like_yaml_v2() {
    let values = "a: 1.10\nb: yes\nc: 0755\nd: 0x1F\ne: ~\nf: \"1.10\"\ng: 1e3\nh: off\n";
    let out = render(
        "x: {{ .Values.a }} {{ .Values.b }} {{ .Values.c }} {{ .Values.d }} {{ .Values.e }}| {{ .Values.f }} {{ .Values.g }} {{ .Values.h }} {{ typeOf .Values.a }} {{ typeOf .Values.c }} {{ typeOf .Values.g }}",
        Some(values),
        &[],
    );
    assert_eq!(
        out,
        "x: 1.1 true 493 31 | 1.10 1000 false float64 int float64"
    );
}

#[test]
fn set_values_are_flat_strings() {
    let out = render(
        "x: {{ if .Values.debug }}on{{ end }} {{ typeOf .Values.n }} {{ index .Values \"a.b\" }} {{ .Values.a }}",
        None,
        &[("debug", "false"), ("n", "5"), ("a.b", "c")],
    );
    assert_eq!(out, "x: on string c ");
    let out = render("x: {{ eq .Values.n 5 }}", None, &[("n", "5")]);
    assert!(
        out.contains("error calling eq: incompatible types for comparison"),
        "{out}"
    );
}

#[test]
fn values_json_escapes_like_encoding_json() {
    let out = render("x: {{ .ValuesJSON }}", Some("h: \"<a&b>\"\n"), &[]);
    assert_eq!(out, r#"x: '{"h":"\u003ca\u0026b\u003e"}'"#);
}

#[test]
fn clock_and_seed_come_from_the_inputs() {
    let src = "x: {{ now | date \"20060102-150405\" }} {{ randAlphaNum 8 }}";
    let a = render(src, None, &[]);
    assert!(a.starts_with("x: 20190503-043342 "), "{a}");
    assert_eq!(
        a,
        render(src, None, &[]),
        "deterministic for the same inputs"
    );
    // The secrets pre-pass and the real render see the same random values.
    let src = "secrets:\n  - id: s\n    keyvault: https://v/s\nsteps:\n  - cmd: echo {{ randAlpha 6 }} {{ randAlpha 6 }}\n";
    let out = render(src, None, &[]);
    assert!(out.contains("cmd: echo "), "{out}");
}
