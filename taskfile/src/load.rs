//! The text phases of acb's pipeline (spec §0, P1–P5): comment stripping, version sniff, the
//! alias phase, the template data model (run variables, values, secrets) and rendering with
//! `<no value>` removal — keeping a source map from the rendered text back to the original file.

use std::collections::BTreeMap;

use crate::template::{self, Env, Limits, Segment, Value};
use crate::yaml::{self, Kind, Scalar};
use crate::{Diagnostic, Inputs, RunVars};

/// Built-in image aliases (Linux), spec §4.7.
const IMAGE_ALIASES: &[(&str, &str)] = &[
    ("acr", "mcr.microsoft.com/acr/acr-cli:0.19"),
    ("az", "mcr.microsoft.com/acr/azure-cli:2ff604c"),
    ("bash", "mcr.microsoft.com/acr/bash:2ff604c"),
    ("curl", "mcr.microsoft.com/acr/curl:2ff604c"),
    ("cssc", "mcr.microsoft.com/acr/cssc:2ff604c"),
];

/// Built-in run-variable aliases.
const RUN_ALIASES: &[(&str, &str)] = &[
    ("ID", "{{.Run.ID}}"),
    ("SharedVolume", "{{.Run.SharedVolume}}"),
    ("Registry", "{{.Run.Registry}}"),
    ("RegistryName", "{{.Run.RegistryName}}"),
    ("Date", "{{.Run.Date}}"),
    ("OS", "{{.Run.OS}}"),
    ("Architecture", "{{.Run.Architecture}}"),
    ("Commit", "{{.Run.Commit}}"),
    ("Branch", "{{.Run.Branch}}"),
];

/// Largest text the alias phase may produce (an alias can be long and used many times).
pub const MAX_ALIAS_OUTPUT: usize = 16 << 20;

/// Characters between two checkpoints of a [`TextIndex`].
const CHECKPOINT_CHARS: usize = 64;

/// Line starts and character checkpoints of a text, so a position is found in logarithmic
/// time: a task with many steps asks for one per step, and rescanning a large rendered text
/// each time would be quadratic.
#[derive(Debug, Clone, Default)]
pub struct TextIndex {
    /// Byte offset of each line's first character (the first is 0).
    line_starts: Vec<usize>,
    /// Byte offset of every [`CHECKPOINT_CHARS`]-th character (the first is 0).
    checkpoints: Vec<usize>,
}

impl TextIndex {
    pub fn new(text: &str) -> Self {
        let mut idx = TextIndex {
            line_starts: vec![0],
            checkpoints: Vec::with_capacity(text.len() / CHECKPOINT_CHARS + 1),
        };
        for (n, (b, c)) in text.char_indices().enumerate() {
            if n % CHECKPOINT_CHARS == 0 {
                idx.checkpoints.push(b);
            }
            if c == '\n' {
                idx.line_starts.push(b + 1);
            }
        }
        if idx.checkpoints.is_empty() {
            idx.checkpoints.push(0);
        }
        idx
    }

    /// `off` clamped to the text and moved back to a character boundary.
    fn floor(text: &str, off: usize) -> usize {
        let mut off = off.min(text.len());
        while !text.is_char_boundary(off) {
            off -= 1;
        }
        off
    }

    /// 0-based line of a byte offset.
    fn line_of(&self, off: usize) -> usize {
        self.line_starts
            .partition_point(|s| *s <= off)
            .saturating_sub(1)
    }

    /// Byte offset where 0-based `line` starts (`None` past the last line).
    fn line_start(&self, line: usize) -> Option<usize> {
        self.line_starts.get(line).copied()
    }

    /// Number of characters before byte offset `off`.
    fn char_index(&self, text: &str, off: usize) -> usize {
        let off = Self::floor(text, off);
        let k = self
            .checkpoints
            .partition_point(|c| *c <= off)
            .saturating_sub(1);
        let base = self.checkpoints.get(k).copied().unwrap_or(0).min(off);
        k * CHECKPOINT_CHARS + text[base..off].chars().count()
    }

    /// Byte offset of character number `ci` (the text's length past the end).
    fn byte_of_char(&self, text: &str, ci: usize) -> usize {
        let Some(&base) = self.checkpoints.get(ci / CHECKPOINT_CHARS) else {
            return text.len();
        };
        text[base..]
            .char_indices()
            .nth(ci % CHECKPOINT_CHARS)
            .map(|(i, _)| base + i)
            .unwrap_or(text.len())
    }
}

/// Maps positions in intermediate texts back to the original file.
#[derive(Debug, Clone, Default)]
pub struct SourceMap {
    /// Text after comment stripping and alias-block removal.
    pre_alias: String,
    pre_alias_index: TextIndex,
    /// Index of the rendered text (set by [`render_with_map`]).
    rendered_index: TextIndex,
    /// Line `i` (0-based) of `pre_alias` is line `line_map[i]` (0-based) of the original.
    line_map: Vec<usize>,
    /// Alias output offset → `pre_alias` offset (None: no alias phase).
    alias_segments: Option<Vec<Segment>>,
    /// Template output offset → template source (alias output) offset.
    template_segments: Vec<Segment>,
    /// `(final offset, bytes removed before it)` for each `<no value>` removal.
    removals: Vec<(usize, usize)>,
}

impl SourceMap {
    /// Original 1-based (line, column) of a byte offset in `pre_alias`.
    fn pos_pre_alias(&self, off: usize) -> (u32, u32) {
        let text = &self.pre_alias;
        let idx = &self.pre_alias_index;
        let off = TextIndex::floor(text, off);
        let line_idx = idx.line_of(off);
        let line_start = idx.line_start(line_idx).unwrap_or(0);
        let col = idx.char_index(text, off) - idx.char_index(text, line_start) + 1;
        let orig_line = self
            .line_map
            .get(line_idx)
            .copied()
            .unwrap_or_else(|| self.line_map.last().map(|l| l + 1).unwrap_or(line_idx));
        (orig_line as u32 + 1, col as u32)
    }

    /// Original position of an offset in the template source (the alias-phase output).
    pub fn pos_template_src(&self, off: usize) -> (u32, u32) {
        match &self.alias_segments {
            Some(segs) => self.pos_pre_alias(template::map_offset(segs, off)),
            None => self.pos_pre_alias(off),
        }
    }

    /// Original position of a byte offset in the rendered text.
    pub fn pos_rendered(&self, off: usize) -> (u32, u32) {
        let idx = self.removals.partition_point(|(o, _)| *o <= off);
        let removed = if idx == 0 {
            0
        } else {
            self.removals[idx - 1].1
        };
        let pre = off + removed;
        self.pos_template_src(template::map_offset(&self.template_segments, pre))
    }

    /// Original position of a YAML mark in the rendered text.
    /// `rendered` is the text [`render_with_map`] returned for this map.
    pub fn pos_mark(&self, rendered: &str, mark: yaml::Mark) -> (u32, u32) {
        let idx = &self.rendered_index;
        // Line `mark.line` (1-based), or the end of the text past its last line; the column
        // counts characters from there (it may run past the end of the line).
        let off = if mark.line > 1 {
            idx.line_start(mark.line - 1).unwrap_or(rendered.len())
        } else {
            0
        };
        let ci = idx.char_index(rendered, off).saturating_add(mark.col);
        self.pos_rendered(idx.byte_of_char(rendered, ci))
    }
}

/// Result of the text phases.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub rendered: String,
    pub aliases_enabled: bool,
    /// All aliases in effect (for cmd image-alias expansion, P8).
    pub aliases: BTreeMap<String, String>,
    pub map: SourceMap,
}

pub fn diag(file: &str, (line, column): (u32, u32), message: impl Into<String>) -> Diagnostic {
    Diagnostic {
        file: file.to_string(),
        line,
        column,
        message: message.into(),
    }
}

/// P1: deletes every line whose first non-blank character is `#`. Returns the text and, per
/// remaining line, its 0-based line number in the original.
pub fn strip_comments(src: &str) -> (String, Vec<usize>) {
    let mut kept = Vec::new();
    let mut map = Vec::new();
    for (i, line) in src.split('\n').enumerate() {
        if line.trim_start().starts_with('#') {
            continue;
        }
        kept.push(line);
        map.push(i);
    }
    (kept.join("\n"), map)
}

/// P2: the version sniff.
pub fn sniff_version(text: &str) -> String {
    for line in text.split('\n') {
        let t = line.trim_start_matches(['\'', '"']);
        if !t.starts_with("version") {
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        if key.trim_matches(|c: char| c == ' ' || c == '\t' || c == '\'' || c == '"') != "version" {
            continue;
        }
        return value
            .trim_matches(|c: char| c == ' ' || c == '\t' || c == '\r')
            .trim_matches(['\'', '"'])
            .to_string();
    }
    String::new()
}

/// Splits out the `alias:` block. Returns (block text, rest text, rest line map).
fn split_alias_block(text: &str, line_map: &[usize]) -> (String, String, Vec<usize>) {
    let top_key = regex::Regex::new(r"^[^\s:]+[^:]*:.*").ok();
    let alias_key = regex::Regex::new(r"^alias\s*:").ok();
    let mut block = Vec::new();
    let mut rest = Vec::new();
    let mut rest_map = Vec::new();
    let mut in_block = false;
    for (i, line) in text.split('\n').enumerate() {
        if alias_key.as_ref().is_some_and(|r| r.is_match(line)) {
            in_block = true;
            block.push(line);
            continue;
        }
        if in_block && top_key.as_ref().is_some_and(|r| r.is_match(line)) {
            in_block = false;
        }
        if in_block {
            block.push(line);
        } else {
            rest.push(line);
            rest_map.push(line_map.get(i).copied().unwrap_or(i));
        }
    }
    (block.join("\n"), rest.join("\n"), rest_map)
}

/// The `$`-substitution state machine (spec §4.7). Returns the output and its source map, or
/// `None` when the output would exceed [`MAX_ALIAS_OUTPUT`] bytes.
pub fn substitute_aliases(
    text: &str,
    directive: char,
    aliases: &BTreeMap<String, String>,
) -> Option<(String, Vec<Segment>)> {
    let mut out = String::new();
    let mut segs: Vec<Segment> = Vec::new();
    let push = |out: &mut String, segs: &mut Vec<Segment>, s: &str, src: usize, literal: bool| {
        if s.is_empty() {
            return;
        }
        let contiguous = segs.last().is_some_and(|l: &Segment| {
            l.literal && literal && {
                let last_len = out.len() - l.out;
                l.src + last_len == src
            }
        });
        if !contiguous {
            segs.push(Segment {
                out: out.len(),
                src,
                literal,
            });
        }
        out.push_str(s);
    };
    let mut in_alias = false;
    let mut name = String::new();
    let mut start = 0usize;
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut idx = 0;
    while idx <= chars.len() {
        let (pos, c) = match chars.get(idx) {
            Some(&(p, c)) => (p, Some(c)),
            None => (text.len(), None),
        };
        idx += 1;
        if !in_alias {
            match c {
                Some(ch) if ch == directive => {
                    in_alias = true;
                    name.clear();
                    start = pos;
                }
                Some(ch) => {
                    let mut buf = [0u8; 4];
                    push(&mut out, &mut segs, ch.encode_utf8(&mut buf), pos, true);
                }
                None => {}
            }
            continue;
        }
        if let Some(ch) = c {
            if ch.is_ascii_alphanumeric() {
                name.push(ch);
                continue;
            }
        }
        // The alias name ended at `c` (or at end of input).
        let mut buf = [0u8; 4];
        let c_text = c.map(|ch| &*ch.encode_utf8(&mut buf)).unwrap_or("");
        if name.is_empty() && c == Some(directive) {
            let d = directive.to_string();
            push(&mut out, &mut segs, &d, start, true);
            in_alias = false;
            continue;
        }
        match aliases.get(&name) {
            Some(rep) => {
                if out.len().saturating_add(rep.len()) > MAX_ALIAS_OUTPUT {
                    return None;
                }
                push(&mut out, &mut segs, rep, start, false);
                if c == Some(directive) {
                    name.clear();
                    start = pos;
                    continue;
                }
                push(&mut out, &mut segs, c_text, pos, true);
            }
            None => {
                let raw = &text[start..pos];
                push(&mut out, &mut segs, raw, start, true);
                push(&mut out, &mut segs, c_text, pos, true);
            }
        }
        in_alias = false;
    }
    Some((out, segs))
}

/// `Run.Date` layout `20060102-150405z` (UTC) from milliseconds since the epoch.
pub fn format_run_date(date_ms: u64) -> String {
    let secs = (date_ms / 1000) as i64;
    match chrono::DateTime::from_timestamp(secs, 0) {
        Some(t) => t.format("%Y%m%d-%H%M%Sz").to_string(),
        None => String::new(),
    }
}

/// Parses an RFC 3339 timestamp into milliseconds since the epoch.
pub fn parse_rfc3339_ms(text: &str) -> Result<u64, String> {
    let t = chrono::DateTime::parse_from_rfc3339(text.trim())
        .map_err(|e| format!("invalid RFC 3339 date {text:?}: {e}"))?;
    u64::try_from(t.timestamp_millis()).map_err(|_| format!("date {text:?} is before 1970"))
}

/// acb's shell quoting for `.ValuesJSON` / `.RunJSON`.
fn shell_quote(s: &str) -> String {
    if s.is_empty() {
        return "''".into();
    }
    let safe = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_^@=+%,:./-".contains(c));
    if safe {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\"'\"'"))
    }
}

fn run_map(run: &RunVars) -> BTreeMap<String, Value> {
    let registry_name = if run.registry_name.is_empty() {
        run.registry
            .split('.')
            .next()
            .unwrap_or_default()
            .to_string()
    } else {
        run.registry_name.clone()
    };
    let date = if run.date_ms == 0 {
        String::new()
    } else {
        format_run_date(run.date_ms)
    };
    let pairs = [
        ("ID", run.id.clone()),
        ("SharedVolume", run.shared_volume.clone()),
        ("Registry", run.registry.clone()),
        ("RegistryName", registry_name),
        ("Date", date),
        ("OS", run.os.clone()),
        ("Architecture", run.architecture.clone()),
        ("OSVersion", run.os_version.clone()),
        ("Commit", run.commit.clone()),
        ("Branch", run.branch.clone()),
        ("TaskName", run.task_name.clone()),
        ("Repository", run.repository.clone()),
        ("GitTag", run.git_tag.clone()),
        ("TriggeredBy", run.triggered_by.clone()),
    ];
    pairs
        .into_iter()
        .map(|(k, v)| (k.to_string(), Value::Str(v)))
        .collect()
}

/// Converts a YAML node (values file) into a template value with yaml.v2 typing.
pub fn yaml_to_value(node: &yaml::Node) -> Value {
    match &node.kind {
        Kind::Scalar { .. } => match node.resolve() {
            Scalar::Null => Value::Nil,
            Scalar::Bool(b) => Value::Bool(b),
            Scalar::Int(i) => Value::Int(i),
            Scalar::Float(f) => Value::Float(f),
            Scalar::Str(s) => Value::Str(s),
        },
        Kind::Seq(items) => Value::List(items.iter().map(yaml_to_value).collect()),
        Kind::Map(pairs) => Value::map(
            pairs
                .iter()
                .map(|(k, v)| {
                    // Keys are taken literally (yaml.v2 would turn a key `n` or `on` into a bool).
                    let key = match k.text() {
                        Some(t) => t.to_string(),
                        None => yaml_to_value(k).go_string(),
                    };
                    (key, yaml_to_value(v))
                })
                .collect(),
        ),
    }
}

/// The clock and random seed of a render: `render_time_ns` (else the run's start) and
/// `random_seed` (else one derived from the run id), so the secrets pre-pass and the real
/// render, given the same inputs, see the same `now` and the same random values.
pub fn render_env(run: &RunVars) -> Env {
    let now_ns = if run.render_time_ns != 0 {
        run.render_time_ns
    } else {
        i64::try_from(run.date_ms)
            .unwrap_or(i64::MAX)
            .saturating_mul(1_000_000)
    };
    let seed = if run.random_seed != 0 {
        run.random_seed
    } else {
        // FNV-1a of the run id and registry.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in run.id.bytes().chain([0]).chain(run.registry.bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h
    };
    Env { now_ns, seed }
}

/// Builds `.Values` from the values file and `--set` pairs.
pub fn values(inputs: &Inputs, diags: &mut Vec<Diagnostic>) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    if let Some(text) = &inputs.values_yaml {
        match yaml::parse(text) {
            Ok(Some(node)) => match yaml_to_value(&node) {
                Value::Map(m) => out = m.snapshot(),
                Value::Nil => {}
                _ => diags.push(diag(
                    "values",
                    (node.mark.line as u32, node.mark.col as u32 + 1),
                    "the values file must be a YAML mapping of names to values",
                )),
            },
            Ok(None) => {}
            Err(e) => diags.push(diag(
                "values",
                (e.mark.line as u32, e.mark.col as u32 + 1),
                format!("invalid YAML in the values file: {}", e.message),
            )),
        }
    }
    for (k, v) in &inputs.set {
        if k.is_empty() {
            diags.push(diag(
                "--set",
                (0, 0),
                "failed to parse --set data; expected a key=val format (the key is empty)",
            ));
            continue;
        }
        out.insert(k.clone(), Value::Str(v.clone()));
    }
    out
}

/// The root template data.
pub fn template_data(
    run: &RunVars,
    values: &BTreeMap<String, Value>,
    secrets: &BTreeMap<String, String>,
) -> Value {
    let run_m = run_map(run);
    // Go's encoding/json: sorted keys, `<`, `>` and `&` escaped.
    let run_json = Value::map(run_m.clone())
        .to_json_text(false, false)
        .unwrap_or_default();
    let values_json = Value::map(values.clone())
        .to_json_text(false, false)
        .unwrap_or_default();
    let mut build = BTreeMap::new();
    build.insert("ID".to_string(), Value::Str(run.id.clone()));
    let mut root = BTreeMap::new();
    root.insert("Build".into(), Value::map(build));
    root.insert("Run".into(), Value::map(run_m));
    root.insert("Values".into(), Value::map(values.clone()));
    root.insert("ValuesJSON".into(), Value::Str(shell_quote(&values_json)));
    root.insert("RunJSON".into(), Value::Str(shell_quote(&run_json)));
    root.insert(
        "Secrets".into(),
        Value::map(
            secrets
                .iter()
                .map(|(k, v)| (k.clone(), Value::Str(v.clone())))
                .collect(),
        ),
    );
    Value::map(root)
}

/// Renders the template and removes `<no value>`; fills `map.template_segments`/`removals`.
pub fn render_with_map(
    file: &str,
    template_src: &str,
    data: &Value,
    map: &mut SourceMap,
    env: Env,
) -> Result<String, Diagnostic> {
    let out =
        template::render_env(file, template_src, data, Limits::default(), env).map_err(|e| {
            // Drop Go's "template: name:line:col: " prefix; the diagnostic carries the position.
            let msg = strip_template_prefix(&e.message, file);
            diag(
                file,
                map.pos_template_src(e.pos),
                format!("unable to render task: {msg}"),
            )
        })?;
    map.template_segments = out.segments;
    let mut text = String::with_capacity(out.text.len());
    let mut removals = Vec::new();
    let mut removed = 0usize;
    let mut rest = out.text.as_str();
    while let Some(p) = rest.find("<no value>") {
        text.push_str(&rest[..p]);
        removed += "<no value>".len();
        removals.push((text.len(), removed));
        rest = &rest[p + "<no value>".len()..];
    }
    text.push_str(rest);
    map.removals = removals;
    map.rendered_index = TextIndex::new(&text);
    Ok(text)
}

fn strip_template_prefix(msg: &str, file: &str) -> String {
    let prefix = format!("template: {file}:");
    match msg.strip_prefix(&prefix) {
        Some(rest) => {
            // Skip "line:" or "line:col: ".
            let mut r = rest;
            for _ in 0..2 {
                let digits = r.bytes().take_while(u8::is_ascii_digit).count();
                if digits > 0 && r[digits..].starts_with(':') {
                    r = &r[digits + 1..];
                }
            }
            r.trim_start().to_string()
        }
        None => msg.to_string(),
    }
}

/// Parsed `alias:` block.
struct AliasBlock {
    values: Vec<(String, String)>,
    directive: Option<String>,
    src: Vec<String>,
}

fn parse_alias_block(
    file: &str,
    block: &str,
    data: &Value,
    map: &SourceMap,
    block_line: usize,
    env: Env,
    diags: &mut Vec<Diagnostic>,
) -> Option<AliasBlock> {
    let pos = (block_line as u32 + 1, 1);
    let rendered = match template::render_env("aliasData", block, data, Limits::default(), env) {
        Ok(r) => r.text.replace("<no value>", ""),
        Err(e) => {
            diags.push(diag(
                file,
                pos,
                format!(
                    "unable to render alias data: {}",
                    strip_template_prefix(&e.message, "aliasData")
                ),
            ));
            return None;
        }
    };
    let _ = map;
    let node = match yaml::parse(&rendered) {
        Ok(Some(n)) => n,
        Ok(None) => {
            return Some(AliasBlock {
                values: vec![],
                directive: None,
                src: vec![],
            })
        }
        Err(e) => {
            diags.push(diag(
                file,
                (
                    block_line as u32 + e.mark.line as u32,
                    e.mark.col as u32 + 1,
                ),
                format!(
                    "unable to render alias data: invalid YAML in the alias block: {}",
                    e.message
                ),
            ));
            return None;
        }
    };
    let alias = node.get("alias");
    let mut out = AliasBlock {
        values: vec![],
        directive: None,
        src: vec![],
    };
    let Some(alias) = alias else { return Some(out) };
    if let Some(values) = alias.get("values") {
        if let Kind::Map(pairs) = &values.kind {
            for (k, v) in pairs {
                let key = k.text().unwrap_or_default().to_string();
                let val = v.text().unwrap_or_default().to_string();
                out.values.push((key, val));
            }
        } else if !values.is_null() {
            diags.push(diag(
                file,
                pos,
                "alias `values` must be a mapping of alias names to replacement text",
            ));
        }
    }
    if let Some(d) = alias.get("directive") {
        out.directive = d.text().map(str::to_string);
    }
    if let Some(src) = alias.get("src") {
        if let Kind::Seq(items) = &src.kind {
            out.src = items
                .iter()
                .filter_map(|i| i.text().map(str::to_string))
                .collect();
        }
    }
    Some(out)
}

/// Runs P1–P5 for `source` with the given secrets visible to the template.
/// `secrets` = None means the secrets pre-pass rendering (empty `.Secrets`).
pub fn load(
    file: &str,
    source: &str,
    inputs: &Inputs,
    secrets: &BTreeMap<String, String>,
    diags: &mut Vec<Diagnostic>,
) -> Option<Loaded> {
    let (stripped, line_map) = strip_comments(source);
    let sniffed = sniff_version(&stripped);
    let aliases_enabled = sniffed.as_str() >= "v1.1.0";
    let values = values(inputs, diags);
    if !diags.is_empty() {
        return None;
    }
    let data = template_data(&inputs.run, &values, secrets);
    let env = render_env(&inputs.run);
    let mut map = SourceMap::default();
    let mut aliases = BTreeMap::new();
    let template_src = if aliases_enabled {
        let (block, rest, rest_map) = split_alias_block(&stripped, &line_map);
        map.pre_alias_index = TextIndex::new(&rest);
        map.pre_alias = rest.clone();
        map.line_map = rest_map;
        let block_line = stripped
            .split('\n')
            .position(|l| l.starts_with("alias"))
            .and_then(|i| line_map.get(i).copied())
            .unwrap_or(0);
        let mut directive = '$';
        if !block.is_empty() {
            let parsed = parse_alias_block(file, &block, &data, &map, block_line, env, diags)?;
            let pos = (block_line as u32 + 1, 1);
            if let Some(d) = parsed.directive {
                let mut it = d.chars();
                match (it.next(), it.next()) {
                    (Some(c), None) if c.is_alphanumeric() => {
                        diags.push(diag(file, pos, "unable to search/replace aliases in task: overwritten directives may not be alphanumeric characters"));
                        return None;
                    }
                    (Some(c), None) => directive = c,
                    _ => {
                        diags.push(diag(file, pos, "unable to search/replace aliases in task: $ directive can only be overwritten by a single character"));
                        return None;
                    }
                }
            }
            if !parsed.src.is_empty() {
                diags.push(diag(
                    file,
                    pos,
                    "alias `src` files are not supported: put the aliases in the `alias: values:` block instead",
                ));
                return None;
            }
            for (k, v) in parsed.values {
                if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric()) {
                    diags.push(diag(file, pos, format!("unable to render alias data: alias key names only support alphanumeric characters (got {k:?})")));
                    continue;
                }
                aliases.entry(k).or_insert(v);
            }
            if !diags.is_empty() {
                return None;
            }
        }
        for (k, v) in RUN_ALIASES.iter().chain(IMAGE_ALIASES) {
            aliases.entry(k.to_string()).or_insert(v.to_string());
        }
        let Some((out, segs)) = substitute_aliases(&rest, directive, &aliases) else {
            diags.push(diag(
                file,
                (1, 1),
                format!("unable to search/replace aliases in task: the result exceeds {MAX_ALIAS_OUTPUT} bytes"),
            ));
            return None;
        };
        map.alias_segments = Some(segs);
        out
    } else {
        map.pre_alias_index = TextIndex::new(&stripped);
        map.pre_alias = stripped.clone();
        map.line_map = line_map;
        stripped.clone()
    };
    let rendered = match render_with_map(file, &template_src, &data, &mut map, env) {
        Ok(r) => r,
        Err(d) => {
            diags.push(d);
            return None;
        }
    };
    if !template_src.is_empty() && rendered.is_empty() {
        diags.push(diag(
            file,
            (1, 1),
            "rendered template was empty: the templates produced no text",
        ));
        return None;
    }
    Some(Loaded {
        rendered,
        aliases_enabled,
        aliases,
        map,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_and_version() {
        let (t, m) = strip_comments("# a\nversion: v1.1.0\n  # b\nsteps: # c\n#end");
        assert_eq!(t, "version: v1.1.0\nsteps: # c");
        assert_eq!(m, vec![1, 3]);
        assert_eq!(sniff_version("steps:\n'version': \"v1.1.0\"\n"), "v1.1.0");
        assert_eq!(sniff_version("versions: x\n"), "");
        assert_eq!(sniff_version("version: {{.Values.v}}"), "{{.Values.v}}");
    }

    #[test]
    fn alias_state_machine() {
        let mut a = BTreeMap::new();
        a.insert("ID".to_string(), "{{.Run.ID}}".to_string());
        a.insert("reg".to_string(), "R".to_string());
        let s = |t: &str| substitute_aliases(t, '$', &a).unwrap_or_default().0;
        assert_eq!(s("-t $reg/$repo:$ID ."), "-t R/$repo:{{.Run.ID}} .");
        assert_eq!(s("$$x"), "$x");
        assert_eq!(s("$$$ID"), "${{.Run.ID}}");
        assert_eq!(s("$unknown$ID"), "$unknown$ID");
        assert_eq!(s("$ID$ID"), "{{.Run.ID}}{{.Run.ID}}");
        assert_eq!(s("$ID2 x$ $"), "$ID2 x$ $");
        assert_eq!(s("{{ $x := 1 }}"), "{{ $x := 1 }}");
        let mut e = BTreeMap::new();
        e.insert("i".to_string(), "I".to_string());
        assert_eq!(
            substitute_aliases("🐳i🐳i $i", '🐳', &e)
                .unwrap_or_default()
                .0,
            "II $i"
        );
    }

    /// The straightforward scans `TextIndex` replaces.
    fn naive_line_col(text: &str, off: usize) -> (usize, usize) {
        let before = &text[..off];
        let line = before.matches('\n').count();
        let start = before.rfind('\n').map(|p| p + 1).unwrap_or(0);
        (line, text[start..off].chars().count())
    }

    fn naive_mark_offset(text: &str, line: usize, col: usize) -> usize {
        let mut off = 0;
        if line > 1 {
            match text.match_indices('\n').nth(line - 2) {
                Some((i, _)) => off = i + 1,
                None => off = text.len(),
            }
        }
        off + text[off..]
            .chars()
            .take(col)
            .map(char::len_utf8)
            .sum::<usize>()
    }

    #[test]
    fn text_index_matches_a_plain_scan() {
        let text = "ab\nçd€\n\n🐳x\ny".repeat(40);
        let idx = TextIndex::new(&text);
        for (off, _) in text.char_indices().chain([(text.len(), ' ')]) {
            let line = idx.line_of(off);
            let start = idx.line_start(line).unwrap();
            let col = idx.char_index(&text, off) - idx.char_index(&text, start);
            assert_eq!((line, col), naive_line_col(&text, off), "offset {off}");
        }
        for line in 0..170 {
            for col in [0, 1, 3, 7, 70, 500] {
                let off = if line > 1 {
                    idx.line_start(line - 1).unwrap_or(text.len())
                } else {
                    0
                };
                let got = idx.byte_of_char(&text, idx.char_index(&text, off) + col);
                assert_eq!(
                    got,
                    naive_mark_offset(&text, line, col),
                    "line {line} col {col}"
                );
            }
        }
        // Offsets inside a character are moved back to its start.
        assert_eq!(idx.char_index(&text, 4), idx.char_index(&text, 3));
        let empty = TextIndex::new("");
        assert_eq!(empty.byte_of_char("", 5), 0);
        assert_eq!(empty.char_index("", 3), 0);
    }

    #[test]
    fn alias_output_is_bounded() {
        let mut a = BTreeMap::new();
        a.insert("big".to_string(), "x".repeat(1 << 20));
        assert!(substitute_aliases(&"$big ".repeat(10), '$', &a).is_some());
        assert!(substitute_aliases(&"$big ".repeat(100), '$', &a).is_none());
    }

    #[test]
    fn dates() {
        assert_eq!(format_run_date(1_556_858_022_000), "20190503-043342z");
        assert_eq!(
            parse_rfc3339_ms("2019-05-03T04:33:42Z").unwrap(),
            1_556_858_022_000
        );
        assert!(parse_rfc3339_ms("yesterday").is_err());
    }
}
