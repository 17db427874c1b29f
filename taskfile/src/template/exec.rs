//! Executes a parsed template tree against a `Value`, like Go's `text/template` with
//! `missingkey=zero`, bounded in output size, work and recursion. Records which source offset
//! produced each piece of output so later errors can point at the original file.

use super::funcs;
use super::parse::{Arg, ArgKind, Cmd, Node, Pipe, Tree};
use super::value::Value;

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

struct State<'a> {
    tree: &'a Tree,
    limits: Limits,
    out: String,
    segments: Vec<Segment>,
    vars: Vec<(String, Value)>,
    steps: u64,
    depth: usize,
}

/// Executes `tree` with `data` as dot and `$`.
pub fn execute(
    tree: &Tree,
    name: &str,
    data: &Value,
    limits: Limits,
) -> Result<(String, Vec<Segment>), ExecError> {
    let mut st = State {
        tree,
        limits,
        out: String::new(),
        segments: Vec::new(),
        vars: vec![("$".to_string(), data.clone())],
        steps: 0,
        depth: 0,
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

impl State<'_> {
    fn tick(&mut self, pos: usize) -> R<()> {
        self.steps += 1;
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
                        self.walk_list(list, &v)?
                    } else {
                        self.walk_list(list, dot)?
                    }
                } else if let Some(el) = else_list {
                    self.walk_list(el, dot)?
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
                let mut value_pipe = pipe.clone();
                let decl = std::mem::take(&mut value_pipe.decl);
                let v = self.eval_pipeline(dot, &value_pipe)?;
                let items: Vec<(Value, Value)> = match &v {
                    Value::List(l) => l
                        .iter()
                        .enumerate()
                        .map(|(i, x)| (Value::Int(i as i64), x.clone()))
                        .collect(),
                    Value::Map(m) => m
                        .iter()
                        .map(|(k, x)| (Value::Str(k.clone()), x.clone()))
                        .collect(),
                    Value::Int(n) => {
                        if *n < 0 {
                            return fail(*pos, "", format!("range can't iterate over {n}"));
                        }
                        let n = (*n).min(self.limits.max_steps as i64 + 1);
                        (0..n).map(|i| (Value::Int(i), Value::Int(i))).collect()
                    }
                    Value::Nil => Vec::new(),
                    other => {
                        return fail(
                            *pos,
                            "",
                            format!("range can't iterate over {}", other.go_string()),
                        )
                    }
                };
                if items.is_empty() {
                    if let Some(el) = else_list {
                        let flow = self.walk_list(el, dot)?;
                        self.vars.truncate(mark);
                        return Ok(match flow {
                            Flow::Normal => Flow::Normal,
                            other => other,
                        });
                    }
                    return Ok(Flow::Normal);
                }
                for (k, elem) in items {
                    self.tick(*pos)?;
                    let inner = self.vars.len();
                    match decl.len() {
                        1 => self.vars.push((decl[0].clone(), elem.clone())),
                        2 => {
                            self.vars.push((decl[0].clone(), k));
                            self.vars.push((decl[1].clone(), elem.clone()));
                        }
                        _ => {}
                    }
                    let flow = self.walk_list(list, &elem)?;
                    self.vars.truncate(inner);
                    if matches!(flow, Flow::Break) {
                        break;
                    }
                }
                self.vars.truncate(mark);
            }
            Node::Template { pos, name, pipe } => {
                self.tick(*pos)?;
                let Some(body) = self.tree.defines.get(name) else {
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
                let saved = std::mem::replace(&mut self.vars, vec![("$".into(), new_dot.clone())]);
                let body = body.clone();
                let result = self.walk_list(&body, &new_dot);
                self.vars = saved;
                self.depth -= 1;
                result?;
            }
            Node::Break => return Ok(Flow::Break),
            Node::Continue => return Ok(Flow::Continue),
        }
        Ok(Flow::Normal)
    }

    fn eval_pipeline(&mut self, dot: &Value, pipe: &Pipe) -> R<Value> {
        let mut value: Option<Value> = None;
        for cmd in &pipe.cmds {
            self.tick(cmd.pos)?;
            value = Some(self.eval_command(dot, cmd, value)?);
        }
        let v = value.unwrap_or(Value::Nil);
        if pipe.assign {
            for name in &pipe.decl {
                match self.vars.iter_mut().rev().find(|(n, _)| n == name) {
                    Some(slot) => slot.1 = v.clone(),
                    None => return fail(pipe.pos, "", format!("undefined variable: {name}")),
                }
            }
        } else {
            for name in &pipe.decl {
                self.vars.push((name.clone(), v.clone()));
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
                    let f = fields.last().map(String::as_str).unwrap_or("");
                    return fail(
                        first.pos,
                        &first.text,
                        format!("{f} is not a method but has arguments"),
                    );
                }
                self.walk_fields(dot.clone(), fields, first)
            }
            ArgKind::Var(name, fields) => {
                if has_args {
                    return fail(
                        first.pos,
                        &first.text,
                        format!("can't give argument to non-function {}", first.text),
                    );
                }
                let base = self.lookup_var(name, first)?;
                self.walk_fields(base, fields, first)
            }
            ArgKind::Chain(inner, fields) => {
                if has_args {
                    return fail(
                        first.pos,
                        &first.text,
                        format!("can't give argument to non-function {}", first.text),
                    );
                }
                let base = self.eval_arg(dot, inner)?;
                self.walk_fields(base, fields, first)
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

    fn lookup_var(&self, name: &str, arg: &Arg) -> R<Value> {
        match self.vars.iter().rev().find(|(n, _)| n == name) {
            Some((_, v)) => Ok(v.clone()),
            None => fail(arg.pos, &arg.text, format!("undefined variable: {name}")),
        }
    }

    fn walk_fields(&self, base: Value, fields: &[String], arg: &Arg) -> R<Value> {
        let mut cur = base;
        for f in fields {
            cur = match cur {
                Value::Map(mut m) => m.remove(f).unwrap_or(Value::Nil),
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
            };
        }
        Ok(cur)
    }

    fn eval_arg(&mut self, dot: &Value, arg: &Arg) -> R<Value> {
        match &arg.kind {
            ArgKind::Dot => Ok(dot.clone()),
            ArgKind::Nil => Ok(Value::Nil),
            ArgKind::Bool(b) => Ok(Value::Bool(*b)),
            ArgKind::Int(i) => Ok(Value::Int(*i)),
            ArgKind::Float(f) => Ok(Value::Float(*f)),
            ArgKind::Str(s) => Ok(Value::Str(s.clone())),
            ArgKind::Ident(name) => self.eval_function(dot, name, arg, &[], None),
            ArgKind::Field(fields) => self.walk_fields(dot.clone(), fields, arg),
            ArgKind::Var(name, fields) => {
                let base = self.lookup_var(name, arg)?;
                self.walk_fields(base, fields, arg)
            }
            ArgKind::Chain(inner, fields) => {
                let base = self.eval_arg(dot, inner)?;
                self.walk_fields(base, fields, arg)
            }
            ArgKind::Pipe(p) => {
                let mark = self.vars.len();
                let v = self.eval_pipeline(dot, p);
                self.vars.truncate(mark);
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
        last: Option<Value>,
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
        let mut vals = Vec::with_capacity(args.len() + 1);
        for a in args {
            vals.push(self.eval_arg(dot, a)?);
        }
        if let Some(l) = last {
            vals.push(l);
        }
        let weight: usize = vals.iter().map(Value::weight).sum();
        self.steps += (weight / 1024) as u64;
        match funcs::call(name, vals, self.limits.max_output) {
            Ok(v) => Ok(v),
            Err(e) => fail(at.pos, &at.text, format!("error calling {name}: {e}")),
        }
    }
}
