//! Executes a parsed template tree against a `Value`, like Go's `text/template` with
//! `missingkey=zero`, bounded in output size, work and recursion. Records which source offset
//! produced each piece of output so later errors can point at the original file.
//!
//! Bounds on hostile input: every value the executor copies or a function builds is charged
//! to the step budget by its size ([`UNITS_PER_STEP`]), which bounds both the time and the
//! memory one execution can use; function results are capped at `max_output` weight and
//! [`MAX_VALUE_DEPTH`] nesting; recursion (control structures, parenthesised pipelines and
//! template calls together) is capped at [`MAX_EVAL_NESTING`] so the stack stays small.

use std::collections::HashMap;

use super::funcs;
use super::parse::{Arg, ArgKind, Cmd, Node, Pipe, Tree};
use super::value::Value;

/// Weight units (about a byte each, see [`Value::weight`]) of copied or built values that
/// cost one evaluation step.
pub const UNITS_PER_STEP: usize = 64;
/// Deepest nesting of lists and maps a template function may build.
pub const MAX_VALUE_DEPTH: usize = 100;
/// Deepest nesting of evaluation: `if`/`range`/`with` bodies, parenthesised pipelines and
/// `template` calls, counted together. Each level uses a few stack frames, so this keeps the
/// executor well inside a 2 MiB thread stack even in debug builds.
pub const MAX_EVAL_NESTING: usize = 100;

/// Resource bounds of one execution.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Maximum bytes of output.
    pub max_output: usize,
    /// Maximum number of evaluation steps (nodes, commands and loop iterations).
    pub max_steps: u64,
    /// Maximum nesting of `{{template}}` calls.
    pub max_depth: usize,
}

/// What a render may observe of the world: the clock (`now`, `ago`, `date` without a time)
/// and the seed of the random functions (`randAlpha`, `uuidv4`, `shuffle`, ...). Passing the
/// same `Env` renders the same text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Env {
    /// The render time in nanoseconds since the Unix epoch (UTC).
    pub now_ns: i64,
    /// Seed of the random functions.
    pub seed: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_output: 4 << 20,
            max_steps: 1_000_000,
            max_depth: 64,
        }
    }
}

/// A stretch of output that starts at `out` and came from source offset `src`. Literal text
/// maps byte for byte; action output maps to the action's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub out: usize,
    pub src: usize,
    pub literal: bool,
}

/// An execution error at a source byte offset; `message` follows Go's
/// `executing "<name>" at <operand>: <cause>` shape.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecError {
    pub pos: usize,
    pub message: String,
}

enum Flow {
    Normal,
    Break,
    Continue,
}

struct Failure {
    pos: usize,
    at: String,
    msg: String,
}

type R<T> = Result<T, Failure>;

fn fail<T>(pos: usize, at: &str, msg: impl Into<String>) -> R<T> {
    Err(Failure {
        pos,
        at: at.to_string(),
        msg: msg.into(),
    })
}

/// The variables in scope: a stack (popped when a scope ends) with an index by name so a
/// lookup does not scan every variable declared so far.
#[derive(Default)]
struct Vars {
    stack: Vec<(String, Value)>,
    by_name: HashMap<String, Vec<usize>>,
}

impl Vars {
    fn with_root(data: Value) -> Self {
        let mut v = Vars::default();
        v.push("$".to_string(), data);
        v
    }

    fn len(&self) -> usize {
        self.stack.len()
    }

    fn push(&mut self, name: String, value: Value) {
        self.by_name
            .entry(name.clone())
            .or_default()
            .push(self.stack.len());
        self.stack.push((name, value));
    }

    fn truncate(&mut self, mark: usize) {
        while self.stack.len() > mark {
            if let Some((name, _)) = self.stack.pop() {
                if let Some(slots) = self.by_name.get_mut(&name) {
                    slots.pop();
                    if slots.is_empty() {
                        self.by_name.remove(&name);
                    }
                }
            }
        }
    }

    fn get(&self, name: &str) -> Option<&Value> {
        let slot = *self.by_name.get(name)?.last()?;
        self.stack.get(slot).map(|(_, v)| v)
    }

    fn get_mut(&mut self, name: &str) -> Option<&mut Value> {
        let slot = *self.by_name.get(name)?.last()?;
        self.stack.get_mut(slot).map(|(_, v)| v)
    }
}

struct State<'a> {
    tree: &'a Tree,
    limits: Limits,
    out: String,
    segments: Vec<Segment>,
    vars: Vars,
    steps: u64,
    /// Nesting of `template` calls.
    depth: usize,
    /// Nesting of evaluation (see [`MAX_EVAL_NESTING`]).
    nest: usize,
    funcs: funcs::Ctx,
}

/// Executes `tree` with `data` as dot and `$`.
pub fn execute(
    tree: &Tree,
    name: &str,
    data: &Value,
    limits: Limits,
    env: Env,
) -> Result<(String, Vec<Segment>), ExecError> {
    // The template may change dicts (`set`); the caller's data stays as it was.
    let data = &data.deep_copy();
    let mut st = State {
        tree,
        limits,
        out: String::new(),
        segments: Vec::new(),
        vars: Vars::with_root(data.clone()),
        steps: 0,
        depth: 0,
        nest: 0,
        funcs: funcs::Ctx::with_env(limits.max_output, env),
    };
    match st.walk_list(&tree.root, data) {
        Ok(_) => Ok((st.out, st.segments)),
        Err(f) => Err(ExecError {
            pos: f.pos,
            message: if f.at.is_empty() {
                format!("executing \"{name}\": {}", f.msg)
            } else {
                format!("executing \"{name}\" at <{}>: {}", f.at, f.msg)
            },
        }),
    }
}

impl<'a> State<'a> {
    fn tick(&mut self, pos: usize) -> R<()> {
        self.add_steps(pos, 1)
    }

    fn add_steps(&mut self, pos: usize, n: u64) -> R<()> {
        self.steps = self.steps.saturating_add(n);
        if self.steps > self.limits.max_steps {
            return fail(
                pos,
                "",
                format!(
                    "template execution exceeded {} steps (runaway range or recursion?)",
                    self.limits.max_steps
                ),
            );
        }
        Ok(())
    }

    /// Charges a value the executor copied or built by its weight.
    fn charge(&mut self, pos: usize, v: &Value) -> R<()> {
        let cost = match v {
            // The common cases, without walking anything.
            Value::Str(s) => s.len() / UNITS_PER_STEP,
            // Capped: a dict shared along many paths weighs more than it occupies.
            Value::List(_) | Value::Map(_) => {
                v.measure(self.limits.max_output.saturating_mul(2)).0 / UNITS_PER_STEP
            }
            _ => 0,
        };
        self.add_steps(pos, cost as u64)
    }

    /// Enters one level of evaluation nesting.
    fn enter(&mut self, pos: usize) -> R<()> {
        if self.nest >= MAX_EVAL_NESTING {
            return fail(
                pos,
                "",
                format!(
                    "template evaluation nested deeper than {MAX_EVAL_NESTING} levels (runaway recursion?)"
                ),
            );
        }
        self.nest += 1;
        Ok(())
    }

    fn write(&mut self, src: usize, text: &str, literal: bool) -> R<()> {
        if text.is_empty() {
            return Ok(());
        }
        if self.out.len() + text.len() > self.limits.max_output {
            return fail(
                src,
                "",
                format!(
                    "template output exceeds the limit of {} bytes",
                    self.limits.max_output
                ),
            );
        }
        self.segments.push(Segment {
            out: self.out.len(),
            src,
            literal,
        });
        self.out.push_str(text);
        Ok(())
    }

    fn walk_list(&mut self, list: &[Node], dot: &Value) -> R<Flow> {
        for node in list {
            match self.walk(node, dot)? {
                Flow::Normal => {}
                other => return Ok(other),
            }
        }
        Ok(Flow::Normal)
    }

    /// Walks a nested body (one level of [`MAX_EVAL_NESTING`]).
    fn walk_nested(&mut self, pos: usize, list: &[Node], dot: &Value) -> R<Flow> {
        self.enter(pos)?;
        let flow = self.walk_list(list, dot);
        self.nest -= 1;
        flow
    }

    fn walk(&mut self, node: &Node, dot: &Value) -> R<Flow> {
        match node {
            Node::Text { pos, text } => {
                self.tick(*pos)?;
                self.write(*pos, text, true)?;
            }
            Node::Action { pos, pipe } => {
                self.tick(*pos)?;
                let v = self.eval_pipeline(dot, pipe)?;
                if pipe.decl.is_empty() {
                    self.check_value(*pos, "", &v)?;
                    let text = v.to_output();
                    self.write(*pos, &text, false)?;
                }
            }
            Node::If {
                pos,
                pipe,
                list,
                else_list,
            }
            | Node::With {
                pos,
                pipe,
                list,
                else_list,
            } => {
                self.tick(*pos)?;
                let mark = self.vars.len();
                let v = self.eval_pipeline(dot, pipe)?;
                let is_with = matches!(node, Node::With { .. });
                let flow = if v.truth() {
                    if is_with {
                        self.walk_nested(*pos, list, &v)?
                    } else {
                        self.walk_nested(*pos, list, dot)?
                    }
                } else if let Some(el) = else_list {
                    self.walk_nested(*pos, el, dot)?
                } else {
                    Flow::Normal
                };
                self.vars.truncate(mark);
                return Ok(flow);
            }
            Node::Range {
                pos,
                pipe,
                list,
                else_list,
            } => {
                self.tick(*pos)?;
                let mark = self.vars.len();
                // The declared variables are bound per iteration, not to the pipeline value.
                let v = self.eval_pipeline_value(dot, pipe)?;
                let flow = self.range(*pos, &v, &pipe.decl, list, else_list.as_deref(), dot);
                self.vars.truncate(mark);
                flow?;
            }
            Node::Template { pos, name, pipe } => {
                self.tick(*pos)?;
                let tree: &'a Tree = self.tree;
                let Some(body) = tree.defines.get(name) else {
                    return fail(
                        *pos,
                        "",
                        format!("template: no template {name:?} associated"),
                    );
                };
                let new_dot = match pipe {
                    Some(p) => self.eval_pipeline(dot, p)?,
                    None => Value::Nil,
                };
                if self.depth >= self.limits.max_depth {
                    return fail(
                        *pos,
                        "",
                        format!(
                            "exceeded maximum template depth ({})",
                            self.limits.max_depth
                        ),
                    );
                }
                self.depth += 1;
                // A called template sees only `$` = its dot.
                self.charge(*pos, &new_dot)?;
                let saved = std::mem::replace(&mut self.vars, Vars::with_root(new_dot.clone()));
                let result = self.walk_nested(*pos, body, &new_dot);
                self.vars = saved;
                self.depth -= 1;
                result?;
            }
            Node::Break => return Ok(Flow::Break),
            Node::Continue => return Ok(Flow::Continue),
        }
        Ok(Flow::Normal)
    }

    /// Runs a `range` over `v` (variables are restored by the caller).
    fn range(
        &mut self,
        pos: usize,
        v: &Value,
        decl: &[String],
        list: &[Node],
        else_list: Option<&[Node]>,
        dot: &Value,
    ) -> R<()> {
        let empty = match v {
            Value::List(l) => l.is_empty(),
            Value::Map(m) => m.is_empty(),
            Value::Int(n) if *n < 0 => {
                return fail(pos, "", format!("range can't iterate over {n}"));
            }
            Value::Int(n) => *n == 0,
            Value::Nil => true,
            other => {
                return fail(
                    pos,
                    "",
                    format!("range can't iterate over {}", other.go_string()),
                )
            }
        };
        if empty {
            if let Some(el) = else_list {
                self.walk_nested(pos, el, dot)?;
            }
            return Ok(());
        }
        self.enter(pos)?;
        let result = match v {
            Value::List(l) => self.range_items(
                pos,
                l.iter()
                    .enumerate()
                    .map(|(i, x)| (Value::Int(i as i64), x.clone())),
                decl,
                list,
            ),
            // A snapshot: the body may change the dict it ranges over.
            Value::Map(m) => self.range_items(
                pos,
                m.snapshot().into_iter().map(|(k, x)| (Value::Str(k), x)),
                decl,
                list,
            ),
            // Counted lazily: the step budget ends a huge count long before it is reached.
            Value::Int(n) => self.range_items(
                pos,
                (0..*n).map(|i| (Value::Int(i), Value::Int(i))),
                decl,
                list,
            ),
            _ => Ok(()),
        };
        self.nest -= 1;
        result
    }

    fn range_items(
        &mut self,
        pos: usize,
        items: impl Iterator<Item = (Value, Value)>,
        decl: &[String],
        list: &[Node],
    ) -> R<()> {
        for (k, elem) in items {
            self.tick(pos)?;
            self.charge(pos, &elem)?;
            let inner = self.vars.len();
            match decl {
                [v] => self.vars.push(v.clone(), elem.clone()),
                [i, v] => {
                    self.vars.push(i.clone(), k);
                    self.vars.push(v.clone(), elem.clone());
                }
                _ => {}
            }
            let flow = self.walk_list(list, &elem)?;
            self.vars.truncate(inner);
            if matches!(flow, Flow::Break) {
                break;
            }
        }
        Ok(())
    }

    /// The value of a pipeline's commands, ignoring its declarations.
    fn eval_pipeline_value(&mut self, dot: &Value, pipe: &Pipe) -> R<Value> {
        let mut value: Option<Value> = None;
        for cmd in &pipe.cmds {
            self.tick(cmd.pos)?;
            value = Some(self.eval_command(dot, cmd, value)?);
        }
        Ok(value.unwrap_or(Value::Nil))
    }

    fn eval_pipeline(&mut self, dot: &Value, pipe: &Pipe) -> R<Value> {
        let v = self.eval_pipeline_value(dot, pipe)?;
        for name in &pipe.decl {
            self.charge(pipe.pos, &v)?;
            if pipe.assign {
                match self.vars.get_mut(name) {
                    Some(slot) => *slot = v.clone(),
                    None => return fail(pipe.pos, "", format!("undefined variable: {name}")),
                }
            } else {
                self.vars.push(name.clone(), v.clone());
            }
        }
        Ok(v)
    }

    fn eval_command(&mut self, dot: &Value, cmd: &Cmd, last: Option<Value>) -> R<Value> {
        let first = &cmd.args[0];
        let has_args = cmd.args.len() > 1 || last.is_some();
        match &first.kind {
            ArgKind::Ident(name) => self.eval_function(dot, name, first, &cmd.args[1..], last),
            ArgKind::Field(fields) => {
                if has_args {
                    let (f, recv_fields) = fields
                        .split_last()
                        .map(|(f, r)| (f.as_str(), r))
                        .unwrap_or(("", &[]));
                    let recv = Self::field_of(dot, recv_fields, first)?;
                    if let Some(v) = self.method_call(dot, &recv, f, cmd, last.clone())? {
                        return Ok(v);
                    }
                    return fail(
                        first.pos,
                        &first.text,
                        format!("{f} is not a method but has arguments"),
                    );
                }
                self.walk_fields(dot, fields, first)
            }
            ArgKind::Var(name, fields) => {
                if has_args && !fields.is_empty() {
                    let (f, recv_fields) = fields
                        .split_last()
                        .map(|(f, r)| (f.as_str(), r))
                        .unwrap_or(("", &[]));
                    let recv = match self.vars.get(name) {
                        Some(base) => Self::field_of(base, recv_fields, first)?,
                        None => {
                            return fail(
                                first.pos,
                                &first.text,
                                format!("undefined variable: {name}"),
                            )
                        }
                    };
                    if let Some(v) = self.method_call(dot, &recv, f, cmd, last.clone())? {
                        return Ok(v);
                    }
                }
                if has_args {
                    return fail(
                        first.pos,
                        &first.text,
                        format!("can't give argument to non-function {}", first.text),
                    );
                }
                self.var_fields(name, fields, first)
            }
            ArgKind::Chain(inner, fields) => {
                if has_args {
                    let (f, recv_fields) = fields
                        .split_last()
                        .map(|(f, r)| (f.as_str(), r))
                        .unwrap_or(("", &[]));
                    let base = self.eval_arg(dot, inner)?;
                    let recv = Self::field_of(&base, recv_fields, first)?;
                    if let Some(v) = self.method_call(dot, &recv, f, cmd, last.clone())? {
                        return Ok(v);
                    }
                    return fail(
                        first.pos,
                        &first.text,
                        format!("can't give argument to non-function {}", first.text),
                    );
                }
                let base = self.eval_arg(dot, inner)?;
                self.walk_fields(&base, fields, first)
            }
            ArgKind::Nil => fail(first.pos, &first.text, "nil is not a command"),
            _ => {
                if has_args {
                    return fail(
                        first.pos,
                        &first.text,
                        format!("can't give argument to non-function {}", first.text),
                    );
                }
                self.eval_arg(dot, first)
            }
        }
    }

    /// Calls method `f` of `recv` (a time or a version) with the command's arguments; `None`
    /// when `recv` has no such method.
    fn method_call(
        &mut self,
        dot: &Value,
        recv: &Value,
        f: &str,
        cmd: &Cmd,
        last: Option<Value>,
    ) -> R<Option<Value>> {
        if !matches!(recv, Value::Time(_) | Value::Version(_)) {
            return Ok(None);
        }
        let first = &cmd.args[0];
        let mut args = Vec::new();
        for a in &cmd.args[1..] {
            args.push(self.eval_arg(dot, a)?);
        }
        args.extend(last);
        match funcs::method(recv, f, &args) {
            None => Ok(None),
            Some(Ok(v)) => Ok(Some(v)),
            Some(Err(e)) => fail(first.pos, &first.text, format!("error calling {f}: {e}")),
        }
    }

    /// `$name.A.B`: the variable's field, copied (and charged).
    fn var_fields(&mut self, name: &str, fields: &[String], arg: &Arg) -> R<Value> {
        let v = match self.vars.get(name) {
            Some(base) => Self::field_of(base, fields, arg)?,
            None => return fail(arg.pos, &arg.text, format!("undefined variable: {name}")),
        };
        self.charge(arg.pos, &v)?;
        Ok(v)
    }

    /// `base.A.B`, copied (and charged).
    fn walk_fields(&mut self, base: &Value, fields: &[String], arg: &Arg) -> R<Value> {
        let v = Self::field_of(base, fields, arg)?;
        self.charge(arg.pos, &v)?;
        Ok(v)
    }

    /// Follows `fields` from `base` (copying only the value found: dicts are shared).
    fn field_of(base: &Value, fields: &[String], arg: &Arg) -> R<Value> {
        let Some((first, rest)) = fields.split_first() else {
            return Ok(base.clone());
        };
        let mut cur = Self::field_step(base, first, arg)?;
        for f in rest {
            cur = Self::field_step(&cur, f, arg)?;
        }
        Ok(cur)
    }

    fn field_step(cur: &Value, f: &str, arg: &Arg) -> R<Value> {
        Ok(match cur {
            Value::Time(_) | Value::Version(_) => match funcs::method(cur, f, &[]) {
                Some(Ok(v)) => v,
                Some(Err(e)) => return fail(arg.pos, &arg.text, format!("error calling {f}: {e}")),
                None => {
                    return fail(
                        arg.pos,
                        &arg.text,
                        format!("can't evaluate field {f} in type {}", cur.type_name()),
                    )
                }
            },
            Value::Map(m) => m.get(f).unwrap_or(Value::Nil),
            Value::Nil => {
                return fail(
                    arg.pos,
                    &arg.text,
                    format!("nil pointer evaluating interface {{}}.{f}"),
                )
            }
            other => {
                return fail(
                    arg.pos,
                    &arg.text,
                    format!("can't evaluate field {f} in type {}", other.type_name()),
                )
            }
        })
    }

    /// Refuses a value too large or too deeply nested to print.
    fn check_value(&self, pos: usize, at: &str, v: &Value) -> R<()> {
        let cap = self.limits.max_output;
        let (w, depth) = v.measure(cap);
        if w > cap {
            return fail(pos, at, format!("value exceeds the limit of {cap} bytes"));
        }
        if depth > MAX_VALUE_DEPTH {
            return fail(
                pos,
                at,
                format!("value nested deeper than {MAX_VALUE_DEPTH} levels"),
            );
        }
        Ok(())
    }

    fn eval_arg(&mut self, dot: &Value, arg: &Arg) -> R<Value> {
        match &arg.kind {
            ArgKind::Dot => {
                self.charge(arg.pos, dot)?;
                Ok(dot.clone())
            }
            ArgKind::Nil => Ok(Value::Nil),
            ArgKind::Bool(b) => Ok(Value::Bool(*b)),
            ArgKind::Int(i) => Ok(Value::Int(*i)),
            ArgKind::Float(f) => Ok(Value::Float(*f)),
            ArgKind::Str(s) => {
                let v = Value::Str(s.clone());
                self.charge(arg.pos, &v)?;
                Ok(v)
            }
            ArgKind::Ident(name) => self.eval_function(dot, name, arg, &[], None),
            ArgKind::Field(fields) => self.walk_fields(dot, fields, arg),
            ArgKind::Var(name, fields) => self.var_fields(name, fields, arg),
            ArgKind::Chain(inner, fields) => {
                let base = self.eval_arg(dot, inner)?;
                self.walk_fields(&base, fields, arg)
            }
            ArgKind::Pipe(p) => {
                self.enter(arg.pos)?;
                let mark = self.vars.len();
                let v = self.eval_pipeline(dot, p);
                self.vars.truncate(mark);
                self.nest -= 1;
                v
            }
        }
    }

    fn eval_function(
        &mut self,
        dot: &Value,
        name: &str,
        at: &Arg,
        args: &[Arg],
        mut last: Option<Value>,
    ) -> R<Value> {
        // `and` / `or` evaluate lazily and return the deciding operand.
        if name == "and" || name == "or" {
            let n = args.len() + usize::from(last.is_some());
            if n == 0 {
                return fail(
                    at.pos,
                    &at.text,
                    format!("wrong number of args for {name}: want at least 1 got 0"),
                );
            }
            let mut v = Value::Nil;
            for a in args {
                v = self.eval_arg(dot, a)?;
                if (name == "and") != v.truth() {
                    return Ok(v);
                }
            }
            if let Some(l) = last {
                v = l;
            }
            return Ok(v);
        }
        // The arguments together may not exceed the value limit: a function's result is at
        // most a small multiple of them, so this bounds what one call can build.
        let cap = self.limits.max_output;
        let mut vals = Vec::with_capacity(args.len() + 1);
        let mut weight = 0usize;
        let too_big = || {
            fail(
                at.pos,
                &at.text,
                format!("error calling {name}: arguments exceed the limit of {cap} bytes"),
            )
        };
        let too_deep = || {
            fail(
                at.pos,
                &at.text,
                format!(
                    "error calling {name}: argument nested deeper than {MAX_VALUE_DEPTH} levels"
                ),
            )
        };
        for a in args.iter().map(Some).chain(std::iter::once(None)) {
            let v = match a {
                Some(a) => self.eval_arg(dot, a)?,
                None => match last.take() {
                    Some(l) => l,
                    None => break,
                },
            };
            let (w, depth) = v.measure(cap);
            weight = weight.saturating_add(w);
            if weight > cap {
                return too_big();
            }
            if depth > MAX_VALUE_DEPTH {
                return too_deep();
            }
            vals.push(v);
        }
        self.funcs.budget = self.limits.max_steps.saturating_sub(self.steps);
        let result = funcs::call(name, vals, &mut self.funcs);
        let cost = std::mem::take(&mut self.funcs.cost);
        self.add_steps(at.pos, cost)?;
        let v = match result {
            Ok(v) => v,
            Err(e) => return fail(at.pos, &at.text, format!("error calling {name}: {e}")),
        };
        let (w, depth) = v.measure(cap);
        if w > cap {
            return fail(
                at.pos,
                &at.text,
                format!("error calling {name}: result exceeds the limit of {cap} bytes"),
            );
        }
        if depth > MAX_VALUE_DEPTH {
            return fail(
                at.pos,
                &at.text,
                format!("error calling {name}: result nested deeper than {MAX_VALUE_DEPTH} levels"),
            );
        }
        self.add_steps(at.pos, (w / UNITS_PER_STEP) as u64)?;
        Ok(v)
    }
}
