use super::*;

/// The function map of Sprig v2.22.0 (`genericMap` in its `functions.go`), word for word.
const SPRIG_V2_22: &[&str] = &[
    "hello",
    "date",
    "date_in_zone",
    "date_modify",
    "now",
    "htmlDate",
    "htmlDateInZone",
    "dateInZone",
    "dateModify",
    "ago",
    "toDate",
    "unixEpoch",
    "abbrev",
    "abbrevboth",
    "trunc",
    "trim",
    "upper",
    "lower",
    "title",
    "untitle",
    "substr",
    "repeat",
    "trimall",
    "trimAll",
    "trimSuffix",
    "trimPrefix",
    "nospace",
    "initials",
    "randAlphaNum",
    "randAlpha",
    "randAscii",
    "randNumeric",
    "swapcase",
    "shuffle",
    "snakecase",
    "camelcase",
    "kebabcase",
    "wrap",
    "wrapWith",
    "contains",
    "hasPrefix",
    "hasSuffix",
    "quote",
    "squote",
    "cat",
    "indent",
    "nindent",
    "replace",
    "plural",
    "sha1sum",
    "sha256sum",
    "adler32sum",
    "toString",
    "atoi",
    "int64",
    "int",
    "float64",
    "toDecimal",
    "split",
    "splitList",
    "splitn",
    "toStrings",
    "until",
    "untilStep",
    "add1",
    "add",
    "sub",
    "div",
    "mod",
    "mul",
    "biggest",
    "max",
    "min",
    "ceil",
    "floor",
    "round",
    "join",
    "sortAlpha",
    "default",
    "empty",
    "coalesce",
    "compact",
    "deepCopy",
    "toJson",
    "toPrettyJson",
    "ternary",
    "typeOf",
    "typeIs",
    "typeIsLike",
    "kindOf",
    "kindIs",
    "deepEqual",
    "env",
    "expandenv",
    "getHostByName",
    "base",
    "dir",
    "clean",
    "ext",
    "isAbs",
    "b64enc",
    "b64dec",
    "b32enc",
    "b32dec",
    "tuple",
    "list",
    "dict",
    "set",
    "unset",
    "hasKey",
    "pluck",
    "keys",
    "pick",
    "omit",
    "merge",
    "mergeOverwrite",
    "values",
    "append",
    "push",
    "prepend",
    "first",
    "rest",
    "last",
    "initial",
    "reverse",
    "uniq",
    "without",
    "has",
    "slice",
    "concat",
    "genPrivateKey",
    "derivePassword",
    "buildCustomCert",
    "genCA",
    "genSelfSignedCert",
    "genSignedCert",
    "encryptAES",
    "decryptAES",
    "uuidv4",
    "semver",
    "semverCompare",
    "fail",
    "regexMatch",
    "regexFindAll",
    "regexFind",
    "regexReplaceAll",
    "regexReplaceAllLiteral",
    "regexSplit",
    "urlParse",
    "urlJoin",
];

/// Go `text/template`'s predefined functions.
const GO_BUILTINS: &[&str] = &[
    "and", "call", "html", "index", "slice", "js", "len", "not", "or", "print", "printf",
    "println", "urlquery", "eq", "ge", "gt", "le", "lt", "ne",
];

/// Functions kiln has beyond Sprig v2.22 (all from later Sprig versions).
const KILN_EXTRAS: &[&str] = &["get", "seq", "toRawJson", "fromJson", "required"];

/// The three functions kiln refuses.
const REFUSED_NAMES: &[&str] = &["env", "expandenv", "getHostByName"];

#[test]
fn every_sprig_function_is_implemented_or_refused() {
    let implemented: std::collections::HashSet<&str> = FAMILIES
        .iter()
        .filter(|(family, _)| *family != "refused")
        .flat_map(|(_, fs)| fs.iter().map(|(n, _)| *n))
        .collect();
    let refused: Vec<&str> = REFUSED.iter().map(|(n, _)| *n).collect();
    assert_eq!(refused, REFUSED_NAMES);
    for name in SPRIG_V2_22.iter().chain(GO_BUILTINS) {
        assert!(
            implemented.contains(name) || REFUSED_NAMES.contains(name),
            "{name} is neither implemented nor refused"
        );
        assert!(is_defined(name), "{name} is not defined");
    }
    // Nothing else: every defined name is Sprig's, Go's or a listed extra, and none twice.
    let mut seen = std::collections::HashSet::new();
    for (_, fs) in FAMILIES {
        for (name, _) in *fs {
            assert!(seen.insert(*name), "{name} is registered twice");
            assert!(
                SPRIG_V2_22.contains(name)
                    || GO_BUILTINS.contains(name)
                    || KILN_EXTRAS.contains(name),
                "{name} is neither Sprig v2.22's, Go's nor a listed extra"
            );
        }
    }
    assert!(!is_defined("nosuchfunc"));
}

#[test]
fn refused_functions_name_themselves() {
    for name in REFUSED_NAMES {
        let err = call(name, vec![Value::from("X")], &mut Ctx::new(1 << 20)).unwrap_err();
        assert!(
            err.starts_with(&format!("{name} is not available")),
            "{err}"
        );
    }
}

fn c(name: &str, a: Vec<Value>) -> Value {
    call(name, a, &mut Ctx::new(1 << 20)).unwrap()
}

fn try_call(name: &str, a: Vec<Value>, limit: usize) -> F {
    call(name, a, &mut Ctx::new(limit))
}

fn render(src: &str) -> String {
    match crate::template::render_env(
        "t",
        src,
        &Value::map(Default::default()),
        crate::template::Limits::default(),
        Env {
            now_ns: 1_556_858_022_123_456_789,
            seed: 42,
        },
    ) {
        Ok(r) => r.text,
        Err(e) => format!("ERROR: {}", e.message),
    }
}

#[test]
fn printf_verbs() {
    assert_eq!(
        fmt::sprintf(
            "%s-%d-%v-%q-%05d-%-3s|%x",
            &[
                "a".into(),
                Value::Int(3),
                Value::Bool(true),
                "q".into(),
                Value::Int(42),
                "b".into(),
                Value::Int(255)
            ],
            1000
        )
        .unwrap(),
        "a-3-true-\"q\"-00042-b  |ff"
    );
    assert_eq!(
        fmt::sprintf("%d", &["x".into()], 1000).unwrap(),
        "%!d(string=x)"
    );
    assert_eq!(
        fmt::sprintf("%s %s", &["x".into()], 1000).unwrap(),
        "x %!s(MISSING)"
    );
    assert_eq!(
        fmt::sprintf("%.2f", &[Value::Float(1.234)], 1000).unwrap(),
        "1.23"
    );
}

#[test]
fn issue_examples_render_as_acb_does() {
    let cases: &[(&str, &str)] = &[
        // printf: %T and verbs over lists.
        (
            r#"{{ printf "%T %T %T %T %T" "a" 1.5 (list) (dict) 3 }}"#,
            "string float64 []interface {} map[string]interface {} int",
        ),
        (r#"{{ printf "%q" (list "a" "b") }}"#, r#"["a" "b"]"#),
        (r#"{{ printf "%x" (list "hi" "yo") }}"#, "[6869 796f]"),
        (r#"{{ printf "%05d" (list 1 22) }}"#, "[00001 00022]"),
        (r#"{{ printf "%v" (dict "a" (list 1 2)) }}"#, "map[a:[1 2]]"),
        // JSON escapes like encoding/json.
        (
            r#"{{ toJson (dict "h" "<a&b>") }}"#,
            r#"{"h":"\u003ca\u0026b\u003e"}"#,
        ),
        (r#"{{ toPrettyJson (list "<") }}"#, "[\n  \"\\u003c\"\n]"),
        (r#"{{ toRawJson (dict "h" "<a&b>") }}"#, r#"{"h":"<a&b>"}"#),
        (
            r#"{{ toJson 1.5e300 }}|{{ toJson 1e21 }}|{{ toJson 0.000001 }}|{{ toJson 1e-7 }}"#,
            "1.5e+300|1e+21|0.000001|1e-7",
        ),
        // Case conversions.
        (r#"{{ title "wide_world-x" }}"#, "Wide_world-X"),
        (r#"{{ camelcase "alreadyCamel" }}"#, "Alreadycamel"),
        (r#"{{ snakecase "HTTPServerName" }}"#, "http_server_name"),
        (r#"{{ kebabcase "HTTPServerName" }}"#, "http-server-name"),
        // Regex edge cases follow Go's regexp.
        (r#"{{ regexSplit "" "abc" -1 }}"#, "[a b c]"),
        (r#"{{ regexSplit "," ",a,,b," -1 }}"#, "[ a  b ]"),
        (r#"{{ regexReplaceAll "a*" "baaac" "-" }}"#, "-b-c-"),
        (r#"{{ regexFindAll "a*" "baaac" -1 }}"#, "[ aaa ]"),
        (r#"{{ regexSplit "x*" "axbxxc" -1 }}"#, "[a b c]"),
        (r#"{{ regexMatch "^\\d+$" "١٢" }}"#, "false"),
        // Numbers.
        (r#"{{ round 1234.567 -2 }}"#, "1200"),
        (r#"{{ until -3 }}"#, "[0 -1 -2]"),
        (r#"{{ untilStep 10 0 -3 }}"#, "[10 7 4 1]"),
        (
            r#"{{ 1e6 }} {{ 123456.0 }} {{ 0.0001 }} {{ 0.00001 }} {{ div 7 2 }}"#,
            "1e+06 123456 0.0001 1e-05 3",
        ),
        (
            r#"{{ int "0x10" }} {{ int " 5" }} {{ atoi "12" }} {{ float64 "1e3" }}"#,
            "0 0 12 1000",
        ),
        // Dicts are references.
        (
            r#"{{ $d := dict "a" 1 }}{{ $e := $d }}{{ $_ := set $e "b" 2 }}{{ $d }}"#,
            "map[a:1 b:2]",
        ),
        (
            r#"{{ $d := dict "a" 1 "b" 2 }}{{ $_ := unset $d "a" }}{{ $d }}"#,
            "map[b:2]",
        ),
        (
            r#"{{ $o := dict "in" (dict) }}{{ $i := $o.in }}{{ $_ := set $i "k" "v" }}{{ $o.in.k }}"#,
            "v",
        ),
        (
            r#"{{ $d := dict "a" "" "b" "x" }}{{ $_ := merge $d (dict "a" "A" "b" "B" "c" "C") }}{{ $d }}"#,
            "map[a:A b:x c:C]",
        ),
        (
            r#"{{ $d := dict "a" "x" }}{{ $_ := mergeOverwrite $d (dict "a" "") }}{{ $d | toJson }}"#,
            r#"{"a":""}"#,
        ),
        (
            r#"{{ $d := dict "a" (dict "b" 1) }}{{ $c := deepCopy $d }}{{ $_ := set $c.a "b" 2 }}{{ $d.a.b }}{{ $c.a.b }}"#,
            "12",
        ),
        // Missing functions now present.
        (
            r#"{{ abbrevboth 5 10 "1234 5678 9123" }}|{{ wrapWith 5 "\t" "Hello World" }}|{{ toDecimal "0755" }}"#,
            "...5678...|Hello\tWorld|493",
        ),
        (
            r#"{{ tuple 1 "a" }} {{ typeIsLike "string" "x" }} {{ adler32sum "hello world" }}"#,
            "[1 a] true 436929629",
        ),
        (
            r#"{{ (semver "1.2.3-beta.1+b5").Prerelease }} {{ semverCompare "^1.2.0" "1.4.0" }} {{ semver "v2.0" }}"#,
            "beta.1 true 2.0.0",
        ),
        (
            r#"{{ (urlParse "https://u:p@example.com:8080/a%20b?q=1#frag").hostname }} {{ urlJoin (dict "scheme" "https" "host" "h.io" "path" "/x y") }}"#,
            "example.com https://h.io/x%20y",
        ),
        (
            r#"{{ now | date "2006-01-02T15:04:05.000Z07:00" }} {{ now | unixEpoch }} {{ now.Year }}"#,
            "2019-05-03T04:33:42.123Z 1556858022 2019",
        ),
        (
            r#"{{ dateInZone "Mon Jan 2 15:04 MST 2006" 0 "Europe/Berlin" }}"#,
            "Thu Jan 1 01:00 CET 1970",
        ),
        (
            r#"{{ toDate "2006-01-02 15:04" "2020-02-29 13:45" | date "Jan _2 3:04PM" }}"#,
            "Feb 29 1:45PM",
        ),
        (
            r#"{{ now | dateModify "-1.5h" | htmlDate }} {{ ago 1556857000 }}"#,
            "2019-05-03 17m2s",
        ),
        (r#"{{ now }}"#, "2019-05-03 04:33:42.123456789 +0000 UTC"),
        (
            r#"{{ sha1sum "abc" }}"#,
            "a9993e364706816aba3e25717850c26c9cd0d89d",
        ),
        (
            r#"{{ decryptAES "secretkey" (encryptAES "secretkey" "plaintext") }}"#,
            "plaintext",
        ),
        (
            r#"{{ $d := dict "k" (list 1) }}{{ len (pluck "k" $d $d) }}"#,
            "2",
        ),
    ];
    for (tpl, want) in cases {
        assert_eq!(render(tpl), *want, "{tpl}");
    }
}

#[test]
fn randomness_comes_from_the_seed() {
    let tpl = "{{ randAlphaNum 12 }} {{ uuidv4 }} {{ shuffle \"abcdefgh\" }}";
    let a = render(tpl);
    assert_eq!(a, render(tpl), "same seed, same values");
    let other = crate::template::render_env(
        "t",
        tpl,
        &Value::Nil,
        crate::template::Limits::default(),
        Env {
            now_ns: 0,
            seed: 43,
        },
    )
    .unwrap()
    .text;
    assert_ne!(a, other);
    assert!(render("{{ randAlpha 5000000 }}").contains("exceeds"));
}

#[test]
fn dict_cycles_are_refused() {
    let msg = render(r#"{{ $d := dict }}{{ $_ := set $d "self" $d }}"#);
    assert!(msg.contains("would make a dict contain itself"), "{msg}");
    let msg = render(r#"{{ $d := dict }}{{ $l := list $d }}{{ $_ := set $d "l" $l }}"#);
    assert!(msg.contains("would make a dict contain itself"), "{msg}");
    let msg = render(
        r#"{{ $a := dict }}{{ $b := dict "x" $a }}{{ $_ := mergeOverwrite $a (dict "y" $b) }}"#,
    );
    assert!(msg.contains("would make a dict contain itself"), "{msg}");
    // Merging a dict into itself changes nothing.
    assert_eq!(
        render(r#"{{ $a := dict "k" 1 }}{{ merge $a $a }}"#),
        "map[k:1]"
    );
}

#[test]
fn deep_dict_chains_do_not_overflow() {
    // A chain far deeper than the value limit, built one `set` at a time, is refused when
    // printed and dropped without recursion.
    let src = "{{ $top := dict }}{{ $cur := $top }}{{ range until 50000 }}{{ $n := dict }}{{ $_ := set $cur \"n\" $n }}{{ $cur = $n }}{{ end }}{{ $top }}";
    let msg = render(src);
    assert!(msg.contains("nested deeper than"), "{msg}");
}

#[test]
fn sprig_strings() {
    assert_eq!(c("upper", vec!["ab".into()]), Value::Str("AB".into()));
    assert_eq!(
        c("trunc", vec![Value::Int(2), "abcd".into()]),
        Value::Str("ab".into())
    );
    assert_eq!(
        c("trunc", vec![Value::Int(-2), "abcd".into()]),
        Value::Str("cd".into())
    );
    assert_eq!(
        c("quote", vec!["a\"b".into(), Value::Nil, Value::Int(1)]),
        Value::Str("\"a\\\"b\" \"1\"".into())
    );
    assert_eq!(c("b64enc", vec![Value::Nil]), Value::Str(String::new()));
    assert_eq!(
        c("b64dec", vec!["a#".into()]),
        Value::Str("illegal base64 data at input byte 1".into())
    );
    assert_eq!(
        c("b64dec", vec!["abc".into()]),
        Value::Str("illegal base64 data at input byte 0".into())
    );
    assert!(try_call("upper", vec![Value::Int(1)], 100).is_err());
    assert!(try_call("upper", vec![Value::Nil], 100).is_err());
    assert!(try_call("repeat", vec![Value::Int(1 << 40), "ab".into()], 1 << 20).is_err());
    assert_eq!(
        c("nospace", vec!["h é".into()]),
        Value::Str("h\u{c3}\u{a9}".into()),
        "goutils reads bytes"
    );
    assert_eq!(
        c("splitn", vec!["".into(), Value::Int(2), "abc".into()]),
        c(
            "dict",
            vec!["_0".into(), "a".into(), "_1".into(), "bc".into()]
        )
    );
}

#[test]
fn comparisons() {
    assert_eq!(
        c("eq", vec![Value::Int(1), Value::Int(2), Value::Int(1)]),
        Value::Bool(true)
    );
    assert_eq!(c("eq", vec![Value::Nil, "".into()]), Value::Bool(false));
    assert_eq!(
        try_call("eq", vec!["1".into(), Value::Int(1)], 10).unwrap_err(),
        "incompatible types for comparison"
    );
    assert_eq!(c("lt", vec!["a".into(), "b".into()]), Value::Bool(true));
}

#[test]
fn integer_edges_do_not_overflow() {
    assert!(try_call("seq", vec![Value::Int(i64::MAX)], 1 << 20)
        .unwrap_err()
        .contains("(limit 100000)"));
    assert!(try_call(
        "seq",
        vec![Value::Int(i64::MIN), Value::Int(i64::MAX)],
        1 << 20
    )
    .is_err());
    assert_eq!(
        c(
            "seq",
            vec![Value::Int(i64::MIN), Value::Int(-1), Value::Int(i64::MIN)]
        ),
        Value::Str(i64::MIN.to_string())
    );
    assert_eq!(
        c(
            "untilStep",
            vec![
                Value::Int(i64::MAX - 1),
                Value::Int(i64::MAX),
                Value::Int(i64::MAX)
            ]
        ),
        Value::List(vec![Value::Int(i64::MAX - 1)])
    );
    assert!(try_call("until", vec![Value::Int(-(1 << 40))], 1 << 20).is_err());
    assert_eq!(
        c("seq", vec![Value::Int(3), Value::Int(1)]),
        Value::Str("3 2 1".into())
    );
    // Sprig v2.22 parses strings in base 10 only.
    assert_eq!(c("int", vec!["-0x10".into()]), Value::Int(0));
    assert_eq!(c("int", vec!["-16".into()]), Value::Int(-16));
    assert_eq!(
        c("int64", vec![Value::Float(f64::NAN)]),
        Value::Int(i64::MIN)
    );
    // 10^-400 is 0 in float64, so Go's round divides 0 by 0.
    assert!(matches!(
        c("round", vec![Value::Float(1.5), Value::Int(-400)]),
        Value::Float(x) if x.is_nan()
    ));
}

#[test]
fn uniq_and_without_are_hash_based_but_keep_go_equality() {
    let nan = Value::Float(f64::NAN);
    let l = Value::List(vec![
        Value::Int(1),
        Value::Int(1),
        "1".into(),
        Value::Float(1.0),
        nan.clone(),
        nan.clone(),
        Value::Float(0.0),
        Value::Float(-0.0),
        Value::List(vec![Value::Int(1)]),
        Value::List(vec![Value::Int(1)]),
    ]);
    let Value::List(u) = c("uniq", vec![l.clone()]) else {
        panic!("uniq returns a list")
    };
    assert_eq!(u.len(), 7, "{u:?}");
    let Value::List(w) = c("without", vec![l, Value::Int(1), Value::Float(-0.0)]) else {
        panic!("without returns a list")
    };
    assert_eq!(w.len(), 6, "{w:?}");
    let big = Value::List((0..100_000).map(|i| Value::Int(i % 10)).collect());
    assert_eq!(
        c("uniq", vec![big]),
        Value::List((0..10).map(Value::Int).collect())
    );
}

#[test]
fn string_builders_check_their_size_before_building() {
    let limit = 1 << 20;
    let many = Value::List((0..10_000).map(Value::Int).collect());
    assert!(try_call("printf", vec!["%999999d".into(), many], limit)
        .unwrap_err()
        .contains("printf result exceeds"));
    let wide = "%9999d".repeat(500_000);
    assert!(try_call("printf", vec![wide.into()], limit)
        .unwrap_err()
        .contains("printf result exceeds"));
    assert!(try_call(
        "join",
        vec![
            "x".repeat(100_000).into(),
            Value::List((0..1000).map(Value::Int).collect())
        ],
        limit
    )
    .unwrap_err()
    .contains("join result exceeds"));
    assert!(try_call(
        "regexReplaceAll",
        vec![
            ".*".into(),
            "a".repeat(100_000).into(),
            "$0".repeat(100_000).into()
        ],
        limit
    )
    .unwrap_err()
    .contains("regexReplaceAll result exceeds"));
    assert!(try_call(
        "splitList",
        vec!["".into(), "a".repeat(100_000).into()],
        limit
    )
    .unwrap_err()
    .contains("splitList result exceeds"));
    assert!(try_call(
        "wrapWith",
        vec![
            Value::Int(1),
            "x".repeat(1000).into(),
            "a b ".repeat(1000).into()
        ],
        limit
    )
    .unwrap_err()
    .contains("wrapWith result exceeds"));
}

#[test]
fn regexes_are_cached_and_compiling_costs_steps() {
    let mut ctx = Ctx::new(1 << 20);
    for _ in 0..3 {
        call("regexMatch", vec!["^a+$".into(), "aaa".into()], &mut ctx).unwrap();
    }
    assert_eq!(ctx.cost, REGEX_COMPILE_STEPS);
    assert!(call(
        "regexFind",
        vec!["(a{100}){100}".into(), "".into()],
        &mut ctx
    )
    .unwrap_err()
    .contains("size limit"));
}

#[test]
fn lists_and_math() {
    assert_eq!(
        c("until", vec![Value::Int(3)]),
        Value::List(vec![Value::Int(0), Value::Int(1), Value::Int(2)])
    );
    assert!(try_call("until", vec![Value::Int(1 << 40)], 100).is_err());
    assert_eq!(
        c("add", vec![Value::Int(1), "2".into(), Value::Float(3.9)]),
        Value::Int(6)
    );
    assert!(try_call("div", vec![Value::Int(1), Value::Int(0)], 10).is_err());
    assert_eq!(c("len", vec!["héllo".into()]), Value::Int(6));
    let d = c("dict", vec!["a".into(), Value::Int(1)]);
    assert_eq!(c("hasKey", vec![d.clone(), "a".into()]), Value::Bool(true));
    assert_eq!(c("get", vec![d, "zz".into()]), Value::Str(String::new()));
    assert_eq!(
        c("clean", vec!["/a/../b/./c/".into()]),
        Value::Str("/b/c".into())
    );
}

#[test]
fn hostile_arguments_fail_cleanly() {
    let cases = [
        r#"{{ date "2006" 9223372036854775807 }}"#,
        r#"{{ dateInZone "2006" -9223372036854775808 "Asia/Tokyo" }}"#,
        r#"{{ now | dateModify "9223372036854775807h" }}"#,
        r#"{{ now | dateModify "1.5.5h" }}"#,
        r#"{{ toDate "2006-01-02 15:04:05.000 -07:00:00 Z07 MST PM Monday January __2 002" "x" }}"#,
        r#"{{ toDate "" "" }}{{ toDate "_2006" "_2019" }}{{ toDate "2006 002" "2019 366" }}"#,
        r#"{{ semverCompare "> 1 - 2 || ^0.x, ~* , !=1.2.3-a+b" "1.2.3-a.b.c" }}"#,
        r#"{{ semver "99999999999999999999.1.1" }}"#,
        r#"{{ urlParse "http://[::1]:namedport" }}{{ urlParse "%zz" }}{{ urlParse ":x" }}"#,
        r#"{{ urlJoin (dict "host" 1) }}{{ urlJoin (dict "userinfo" "a b@c") }}"#,
        r#"{{ abbrevboth 9223372036854775807 9223372036854775807 "abc" }}{{ abbrevboth -5 7 "abcdefghijkl" }}"#,
        r#"{{ abbrev 9223372036854775807 "abc" }}{{ wrap -9223372036854775808 "a b c" }}"#,
        r#"{{ wrapWith 1 "" "a b c" }}{{ substr -9223372036854775808 9223372036854775807 "abc" }}"#,
        r#"{{ round 1.5 9223372036854775807 }}{{ round 1.5 -9223372036854775808 1e308 }}"#,
        r#"{{ toDecimal "-9999999999999999999999" }}{{ toDecimal 1.5 }}"#,
        r#"{{ until -9223372036854775808 }}"#,
        r#"{{ untilStep -9223372036854775808 9223372036854775807 1 }}"#,
        r#"{{ derivePassword -1 "nope" "p" "u" "s" }}"#,
        r#"{{ decryptAES "k" "AAAA" }}{{ decryptAES "k" "%%%" }}"#,
        r#"{{ decryptAES "k" (b64enc "0123456789abcdef0123456789abcdef") }}"#,
        r#"{{ regexSplit "(?:)" "ab" 9223372036854775807 }}{{ regexFindAll "" "ab" -1 }}"#,
        r#"{{ regexReplaceAll "\\b" "a b" "$$" }}{{ regexMatch "[" "" }}{{ regexFind "[" "" }}"#,
        r#"{{ printf "%[9223372036854775807]d %.[1]*d %*d" 1 -1 }}{{ printf "%-1000000.1000000f" 1e308 }}"#,
        r#"{{ printf "%U %c %q" -9223372036854775808 -9223372036854775808 9223372036854775807 }}"#,
        r#"{{ printf "%b %x %X %o %e %g %G" 1e-320 -0.0 1e308 -1.5 1e-310 5e-324 1.7976931348623157e308 }}"#,
        r#"{{ $d := dict }}{{ merge $d $d $d }}{{ mergeOverwrite (dict "a" (dict "b" $d)) (dict "a" (dict "b" $d)) }}"#,
        r#"{{ $l := list }}{{ range until 17 }}{{ $l = list $l $l }}{{ end }}{{ toJson $l }}"#,
        r#"{{ b32dec "MZXW6===" }}{{ b32dec "M=======" }}{{ b32dec "MZXW6YQ" }}{{ b64dec "====" }}"#,
        r#"{{ snakecase "\u00ff\u0301\u200b" }}{{ camelcase "___" }}{{ kebabcase "A1B2" }}"#,
        r#"{{ (semver "1.2.3").Compare 5 }}{{ (semver "1.2.3").Nope }}{{ now.Format }}{{ now.Add "x" }}"#,
        r#"{{ (now).In "Nowhere/Zone" }}{{ htmlDateInZone now "" }}{{ ago "x" }}"#,
    ];
    for src in cases {
        let start = std::time::Instant::now();
        let _ = render(src);
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "{src} took {:?}",
            start.elapsed()
        );
    }
}

#[test]
fn certificates_are_generated_from_the_seed() {
    let src = r#"{{- $ca := genCA "kiln-ca" 365 -}}
{{- $c := genSignedCert "svc" (list "10.0.0.1" "::1") (list "svc.local") 30 $ca -}}
{{- $s := genSelfSignedCert "self" nil (list "a.b") 1 -}}
{{- $b := buildCustomCert (b64enc $c.Cert) (b64enc $c.Key) -}}
{{ $ca.Key | trunc 31 }}|{{ eq $b.Cert $c.Cert }}|{{ hasPrefix "-----BEGIN CERTIFICATE-----\n" $s.Cert }}|{{ genPrivateKey "ecdsa" | trunc 30 }}|{{ genPrivateKey "nope" }}|{{ $ca.Cert }}{{ $c.Cert }}"#;
    let out = render(src);
    let (head, pems) = out
        .split_once("|-----BEGIN CERTIFICATE-----")
        .expect("certificates");
    assert_eq!(
        head,
        "-----BEGIN RSA PRIVATE KEY-----|true|true|-----BEGIN EC PRIVATE KEY-----|Unknown type nope"
    );
    let ca = format!("-----BEGIN CERTIFICATE-----{pems}");
    let (_, der) = super::certs::pem_decode_for_tests(&ca).expect("a PEM block");
    let subject = super::certs::cert_subject_for_tests(&der).expect("a subject");
    assert!(subject.windows(7).any(|w| w == b"kiln-ca"));
    let ec = "{{ genPrivateKey \"ecdsa\" }}";
    assert_eq!(render(ec), render(ec), "same seed, same key");
    assert!(render(r#"{{ genPrivateKey "dsa" }}"#).contains("dsa keys are not supported"));
    assert!(render(r#"{{ buildCustomCert "x" "y" }}"#).contains("unable to decode"));
    assert!(render(r#"{{ genSelfSignedCert "a" (list "nope") nil 1 }}"#)
        .contains("error parsing ip: nope"));
}

#[test]
fn costly_functions_are_refused_before_the_work() {
    let tight = crate::template::Limits {
        max_steps: 50_000,
        ..crate::template::Limits::default()
    };
    let start = std::time::Instant::now();
    let msg = crate::template::render(
        "t",
        r#"{{ genCA "x" 1 }}{{ derivePassword 1 "long" "p" "u" "s" }}"#,
        &Value::Nil,
        tight,
    )
    .unwrap_err()
    .message;
    assert!(
        msg.contains("would exceed the evaluation step limit"),
        "{msg}"
    );
    assert!(start.elapsed() < std::time::Duration::from_secs(1));
}
