//! A small YAML document model with source positions, built from `yaml-rust2` parser events,
//! plus yaml.v2-style (YAML 1.1) scalar resolution. The task decoder needs positions and scalar
//! styles (a quoted `"3"` is not an int), which the crate's own `Yaml` tree does not keep.

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// Most nodes one document may expand to (guards against alias "billion laughs").
const MAX_NODES: usize = 200_000;
/// Most scalar bytes that anchors and aliases may copy in one document (a large scalar
/// repeated through an alias costs memory without adding many nodes).
const MAX_ALIAS_BYTES: usize = 16 << 20;
/// Deepest nesting accepted (aliases included: an alias counts as deep as the node it names).
const MAX_DEPTH: usize = 200;

/// A position in the parsed text: 1-based line, 0-based character column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mark {
    pub line: usize,
    pub col: usize,
}

impl From<Marker> for Mark {
    fn from(m: Marker) -> Self {
        Mark {
            line: m.line(),
            col: m.col(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Scalar {
        value: String,
        /// Plain (unquoted, not a block scalar): subject to type resolution.
        plain: bool,
        tag: Option<String>,
    },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub kind: Kind,
    pub mark: Mark,
}

/// A resolved scalar (yaml.v2 rules).
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

impl Node {
    /// yaml.v2 tag name for error messages (`!!str`, `!!seq`, ...).
    pub fn tag_name(&self) -> &'static str {
        match &self.kind {
            Kind::Seq(_) => "!!seq",
            Kind::Map(_) => "!!map",
            Kind::Scalar { .. } => match self.resolve() {
                Scalar::Null => "!!null",
                Scalar::Bool(_) => "!!bool",
                Scalar::Int(_) => "!!int",
                Scalar::Float(_) => "!!float",
                Scalar::Str(_) => "!!str",
            },
        }
    }

    /// Resolves a scalar like yaml.v2 does (YAML 1.1 booleans, ints with 0x/0o/0b, floats).
    pub fn resolve(&self) -> Scalar {
        match &self.kind {
            Kind::Scalar { value, plain, tag } => {
                if let Some(t) = tag {
                    if t.ends_with("str") {
                        return Scalar::Str(value.clone());
                    }
                }
                if !plain {
                    return Scalar::Str(value.clone());
                }
                resolve_plain(value)
            }
            _ => Scalar::Null,
        }
    }

    /// The literal text of a scalar (`None` for collections).
    pub fn text(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar { value, .. } => Some(value),
            _ => None,
        }
    }

    /// For a mapping: the last value of `key` (yaml.v2 keeps the last duplicate) with the key's mark.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.kind {
            Kind::Map(pairs) => pairs
                .iter()
                .rev()
                .find(|(k, _)| k.text() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.kind, Kind::Scalar { .. }) && self.resolve() == Scalar::Null
    }
}

/// yaml.v2 plain-scalar resolution.
pub fn resolve_plain(v: &str) -> Scalar {
    match v {
        "" | "~" | "null" | "Null" | "NULL" => return Scalar::Null,
        "y" | "Y" | "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => {
            return Scalar::Bool(true)
        }
        "n" | "N" | "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => {
            return Scalar::Bool(false)
        }
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Scalar::Float(f64::INFINITY)
        }
        "-.inf" | "-.Inf" | "-.INF" => return Scalar::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Scalar::Float(f64::NAN),
        _ => {}
    }
    let first = v.as_bytes()[0];
    if first.is_ascii_digit() || matches!(first, b'-' | b'+' | b'.') {
        let clean: String = v.chars().filter(|c| *c != '_').collect();
        let (neg, body) = match clean.strip_prefix('-') {
            Some(b) => (true, b),
            None => (false, clean.strip_prefix('+').unwrap_or(&clean)),
        };
        let parsed = if let Some(h) = body.strip_prefix("0x") {
            i64::from_str_radix(h, 16).ok()
        } else if let Some(b) = body.strip_prefix("0b") {
            i64::from_str_radix(b, 2).ok()
        } else if let Some(o) = body.strip_prefix("0o") {
            i64::from_str_radix(o, 8).ok()
        } else if body.len() > 1
            && body.starts_with('0')
            && body.bytes().all(|c| c.is_ascii_digit())
        {
            i64::from_str_radix(body, 8).ok()
        } else if !body.is_empty() && body.bytes().all(|c| c.is_ascii_digit()) {
            body.parse::<i64>().ok()
        } else {
            None
        };
        if let Some(i) = parsed {
            return Scalar::Int(if neg { -i } else { i });
        }
        let looks_float = !body.is_empty()
            && body
                .bytes()
                .all(|c| c.is_ascii_digit() || matches!(c, b'.' | b'e' | b'E' | b'-' | b'+'))
            && body.bytes().any(|c| c.is_ascii_digit());
        if looks_float {
            if let Ok(f) = clean.parse::<f64>() {
                return Scalar::Float(f);
            }
        }
    }
    Scalar::Str(v.to_string())
}

/// A YAML syntax error.
#[derive(Debug, Clone, PartialEq)]
pub struct YamlError {
    pub mark: Mark,
    pub message: String,
}

enum Frame {
    Seq(Vec<Node>, Mark, usize),
    Map(Vec<(Node, Node)>, Option<Node>, Mark, usize),
}

/// Parses the first document of `text`. `Ok(None)` for an empty stream.
pub fn parse(text: &str) -> Result<Option<Node>, YamlError> {
    let mut parser = Parser::new_from_str(text);
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors = Anchors::new();
    let mut count = 0usize;
    let mut alias_bytes = 0usize;

    let mut done: Option<Node> = None;
    loop {
        let (ev, marker) = parser.next_token().map_err(|e| YamlError {
            mark: (*e.marker()).into(),
            message: e.info().to_string(),
        })?;
        let mark: Mark = marker.into();
        let node = match ev {
            Event::StreamEnd => return Ok(done),
            Event::DocumentEnd => {
                if done.is_some() {
                    return Ok(done);
                }
                continue;
            }
            Event::Nothing | Event::StreamStart | Event::DocumentStart => continue,
            Event::SequenceStart(anchor, _) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(too_deep(mark));
                }
                stack.push(Frame::Seq(Vec::new(), mark, anchor));
                continue;
            }
            Event::MappingStart(anchor, _) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(too_deep(mark));
                }
                stack.push(Frame::Map(Vec::new(), None, mark, anchor));
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match stack.pop() {
                    Some(Frame::Seq(items, m, a)) => (
                        Node {
                            kind: Kind::Seq(items),
                            mark: m,
                        },
                        a,
                    ),
                    Some(Frame::Map(pairs, _, m, a)) => {
                        // Block mappings start where their first key is.
                        let mark = pairs.first().map(|(k, _)| k.mark).unwrap_or(m);
                        (
                            Node {
                                kind: Kind::Map(pairs),
                                mark,
                            },
                            a,
                        )
                    }
                    None => continue,
                };
                if anchor > 0 {
                    anchor_node(&mut anchors, anchor, &node, mark, &mut alias_bytes)?;
                }
                node
            }
            Event::Scalar(value, style, anchor, tag) => {
                let node = Node {
                    kind: Kind::Scalar {
                        value,
                        plain: style == TScalarStyle::Plain,
                        tag: tag.map(|t| format!("{}{}", t.handle, t.suffix)),
                    },
                    mark,
                };
                if anchor > 0 {
                    anchor_node(&mut anchors, anchor, &node, mark, &mut alias_bytes)?;
                }
                node
            }
            Event::Alias(id) => match anchors.get(&id) {
                Some((n, st)) => {
                    // Checked before copying anything.
                    count = count.saturating_add(st.nodes);
                    if count > MAX_NODES {
                        return Err(too_many_nodes(mark));
                    }
                    alias_bytes = alias_bytes.saturating_add(st.bytes);
                    if alias_bytes > MAX_ALIAS_BYTES {
                        return Err(too_many_bytes(mark));
                    }
                    if stack.len() + st.depth > MAX_DEPTH {
                        return Err(too_deep(mark));
                    }
                    n.clone()
                }
                None => {
                    return Err(YamlError {
                        mark,
                        message: "unknown anchor".into(),
                    })
                }
            },
        };
        count += 1;
        if count > MAX_NODES {
            return Err(too_many_nodes(mark));
        }
        match stack.last_mut() {
            Some(Frame::Seq(items, _, _)) => items.push(node),
            Some(Frame::Map(pairs, key, _, _)) => match key.take() {
                Some(k) => pairs.push((k, node)),
                None => *key = Some(node),
            },
            None => done = Some(node),
        }
    }
}

type Anchors = std::collections::HashMap<usize, (Node, Stats)>;

/// Records an anchored node; the copy is charged like an alias expansion.
fn anchor_node(
    anchors: &mut Anchors,
    anchor: usize,
    node: &Node,
    mark: Mark,
    alias_bytes: &mut usize,
) -> Result<(), YamlError> {
    let st = stats(node);
    *alias_bytes = alias_bytes.saturating_add(st.bytes);
    if *alias_bytes > MAX_ALIAS_BYTES {
        return Err(too_many_bytes(mark));
    }
    anchors.insert(anchor, (node.clone(), st));
    Ok(())
}

fn too_deep(mark: Mark) -> YamlError {
    YamlError {
        mark,
        message: format!("nesting deeper than {MAX_DEPTH} levels"),
    }
}

fn too_many_nodes(mark: Mark) -> YamlError {
    YamlError {
        mark,
        message: format!("document expands to more than {MAX_NODES} nodes"),
    }
}

fn too_many_bytes(mark: Mark) -> YamlError {
    YamlError {
        mark,
        message: format!("anchors and aliases copy more than {MAX_ALIAS_BYTES} bytes"),
    }
}

/// Size of an anchored node: nodes, scalar bytes and collection nesting (a scalar is 0).
#[derive(Debug, Clone, Copy, Default)]
struct Stats {
    nodes: usize,
    bytes: usize,
    depth: usize,
}

fn stats(n: &Node) -> Stats {
    let mut st = Stats {
        nodes: 1,
        ..Stats::default()
    };
    let add = |c: Stats, st: &mut Stats| {
        st.nodes = st.nodes.saturating_add(c.nodes);
        st.bytes = st.bytes.saturating_add(c.bytes);
        st.depth = st.depth.max(c.depth + 1);
    };
    match &n.kind {
        Kind::Scalar { value, .. } => st.bytes = value.len(),
        Kind::Seq(items) => {
            st.depth = 1;
            for it in items {
                add(stats(it), &mut st);
            }
        }
        Kind::Map(pairs) => {
            st.depth = 1;
            for (k, v) in pairs {
                add(stats(k), &mut st);
                add(stats(v), &mut st);
            }
        }
    }
    st
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_and_resolution() {
        let doc = parse("a: 1\nb:\n  - x\n  - 'y'\nc: yes\n")
            .unwrap()
            .unwrap();
        let b = doc.get("b").unwrap();
        assert_eq!(b.mark.line, 3);
        let Kind::Seq(items) = &b.kind else {
            panic!("not a seq")
        };
        assert_eq!(items[1].mark, Mark { line: 4, col: 4 });
        assert_eq!(items[1].resolve(), Scalar::Str("y".into()));
        assert_eq!(doc.get("a").unwrap().resolve(), Scalar::Int(1));
        assert_eq!(doc.get("c").unwrap().resolve(), Scalar::Bool(true));
        assert_eq!(resolve_plain("2.5"), Scalar::Float(2.5));
        assert_eq!(resolve_plain("0x1f"), Scalar::Int(31));
        assert_eq!(resolve_plain("1.2.3"), Scalar::Str("1.2.3".into()));
        assert_eq!(resolve_plain("-"), Scalar::Str("-".into()));
    }

    #[test]
    fn errors_and_bombs() {
        assert!(parse("a: [1, 2").is_err());
        assert_eq!(parse("").unwrap(), None);
        let bomb = "a: &a [x,x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]\n";
        assert!(parse(bomb).is_err());
    }

    #[test]
    fn aliases_of_large_scalars_are_bounded() {
        // 2000 copies of a 1 MB scalar: few nodes, but 2 GB of text.
        let doc = format!(
            "x: &x '{}'\ny: [{}]\n",
            "a".repeat(1 << 20),
            vec!["*x"; 2000].join(",")
        );
        let err = parse(&doc).unwrap_err();
        assert!(err.message.contains("copy more than"), "{}", err.message);
        assert_eq!(err.mark.line, 2);
        // Nested anchors copy their subtree each time.
        let mut doc = format!("a0: &a0 ['{}']\n", "x".repeat(1 << 20));
        for i in 1..100 {
            doc.push_str(&format!("a{i}: &a{i} [*a{}]\n", i - 1));
        }
        assert!(parse(&doc).unwrap_err().message.contains("copy more than"));
    }

    #[test]
    fn aliases_count_towards_the_depth_limit() {
        let mut doc = String::from("a0: &a0 [x]\n");
        for i in 1..300 {
            doc.push_str(&format!("a{i}: &a{i} [*a{}]\n", i - 1));
        }
        let err = parse(&doc).unwrap_err();
        assert!(
            err.message.contains("nesting deeper than 200"),
            "{}",
            err.message
        );
        // Within the limit aliases still expand.
        let doc = parse("a: &a {x: [1, 2]}\nb: [*a, *a]\n").unwrap().unwrap();
        let Some(Kind::Seq(items)) = doc.get("b").map(|b| &b.kind) else {
            panic!("b is a sequence")
        };
        assert_eq!(items.len(), 2);
        assert_eq!(Some(&items[0]), doc.get("a"));
    }
}
