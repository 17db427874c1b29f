//! Lexer and parser for Go `text/template` syntax: text, `{{ }}` actions with `-` trim markers,
//! comments, pipelines, variables, `if`/`else`/`range`/`with`/`define`/`template`/`block`,
//! `break`/`continue`. Produces the tree that `exec` walks.

use std::collections::BTreeMap;

/// Deepest nesting of control structures and parentheses accepted (keeps the parser's recursion
/// bounded on hostile input).
const MAX_NESTING: usize = 100;

/// A parse error at a byte offset of the template source.
#[derive(Debug, Clone, PartialEq)]
pub struct ParseError {
    pub pos: usize,
    pub message: String,
}

/// A parsed template: the main body and the `define`d templates.
#[derive(Debug, Clone, Default)]
pub struct Tree {
    pub root: Vec<Node>,
    pub defines: BTreeMap<String, Vec<Node>>,
}

#[derive(Debug, Clone)]
pub enum Node {
    /// Literal text; `pos` is the byte offset of its first character in the source.
    Text {
        pos: usize,
        text: String,
    },
    Action {
        pos: usize,
        pipe: Pipe,
    },
    If {
        pos: usize,
        pipe: Pipe,
        list: Vec<Node>,
        else_list: Option<Vec<Node>>,
    },
    Range {
        pos: usize,
        pipe: Pipe,
        list: Vec<Node>,
        else_list: Option<Vec<Node>>,
    },
    With {
        pos: usize,
        pipe: Pipe,
        list: Vec<Node>,
        else_list: Option<Vec<Node>>,
    },
    Template {
        pos: usize,
        name: String,
        pipe: Option<Pipe>,
    },
    Break,
    Continue,
}

#[derive(Debug, Clone)]
pub struct Pipe {
    pub pos: usize,
    /// Declared or assigned variables (without `$`... names include the `$`).
    pub decl: Vec<String>,
    /// `=` instead of `:=`.
    pub assign: bool,
    pub cmds: Vec<Cmd>,
}

#[derive(Debug, Clone)]
pub struct Cmd {
    pub pos: usize,
    pub args: Vec<Arg>,
}

#[derive(Debug, Clone)]
pub struct Arg {
    pub pos: usize,
    /// Source text of the operand (for error messages).
    pub text: String,
    pub kind: ArgKind,
}

#[derive(Debug, Clone)]
pub enum ArgKind {
    Dot,
    Nil,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    /// A function name.
    Ident(String),
    /// `.A.B`
    Field(Vec<String>),
    /// `$x.A.B` (name includes `$`).
    Var(String, Vec<String>),
    /// `(pipeline).A.B`
    Chain(Box<Arg>, Vec<String>),
    Pipe(Box<Pipe>),
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Text(String),
    Open,
    Close,
    Ident(String),
    Field(String),
    Dot,
    Var(String),
    Str(String),
    Char(i64),
    Number(String),
    LParen,
    RParen,
    Pipe,
    Declare,
    Assign,
    Comma,
}

#[derive(Debug, Clone)]
struct Item {
    tok: Tok,
    pos: usize,
    end: usize,
    /// Whitespace precedes this token inside the action.
    space_before: bool,
}

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\r' | b'\n')
}

fn is_alnum(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

fn lex(src: &str) -> Result<Vec<Item>, ParseError> {
    let bytes = src.as_bytes();
    let mut items = Vec::new();
    let mut pos = 0usize;
    let mut trim_next = false;
    while pos <= src.len() {
        let rest = &src[pos..];
        let open = rest.find("{{");
        let text_end = open.map(|o| pos + o).unwrap_or(src.len());
        let mut text_start = pos;
        if trim_next {
            while text_start < text_end && is_space(bytes[text_start]) {
                text_start += 1;
            }
            trim_next = false;
        }
        let mut text_stop = text_end;
        let Some(_) = open else {
            if text_start < text_stop {
                items.push(Item {
                    tok: Tok::Text(src[text_start..text_stop].to_string()),
                    pos: text_start,
                    end: text_stop,
                    space_before: false,
                });
            }
            break;
        };
        let mut p = text_end + 2;
        // Left trim marker: "{{- " (the dash must be followed by whitespace).
        if bytes.get(p) == Some(&b'-') && bytes.get(p + 1).is_some_and(|c| is_space(*c)) {
            while text_stop > text_start && is_space(bytes[text_stop - 1]) {
                text_stop -= 1;
            }
            p += 1;
        }
        if text_start < text_stop {
            items.push(Item {
                tok: Tok::Text(src[text_start..text_stop].to_string()),
                pos: text_start,
                end: text_stop,
                space_before: false,
            });
        }
        let action_pos = text_end;
        // Comments: "{{/* ... */}}" with optional trim markers and spaces.
        let mut q = p;
        while q < bytes.len() && is_space(bytes[q]) {
            q += 1;
        }
        if src[q..].starts_with("/*") {
            let Some(close) = src[q + 2..].find("*/") else {
                return Err(ParseError {
                    pos: action_pos,
                    message: "unclosed comment".into(),
                });
            };
            let mut r = q + 2 + close + 2;
            let mut saw_space = false;
            while r < bytes.len() && is_space(bytes[r]) {
                r += 1;
                saw_space = true;
            }
            if saw_space && src[r..].starts_with("-}}") {
                trim_next = true;
                r += 3;
            } else if src[r..].starts_with("}}") {
                r += 2;
            } else {
                return Err(ParseError {
                    pos: action_pos,
                    message: "comment ends before closing delimiter".into(),
                });
            }
            pos = r;
            continue;
        }
        items.push(Item {
            tok: Tok::Open,
            pos: action_pos,
            end: p,
            space_before: false,
        });
        // Tokens inside the action.
        let mut space_before = false;
        loop {
            let Some(&c) = bytes.get(p) else {
                return Err(ParseError {
                    pos: action_pos,
                    message: "unclosed action".into(),
                });
            };
            if is_space(c) {
                let ws_start = p;
                while p < bytes.len() && is_space(bytes[p]) {
                    p += 1;
                }
                if src[p..].starts_with("-}}") {
                    trim_next = true;
                    items.push(Item {
                        tok: Tok::Close,
                        pos: ws_start,
                        end: p + 3,
                        space_before: true,
                    });
                    p += 3;
                    break;
                }
                space_before = true;
                continue;
            }
            if src[p..].starts_with("}}") {
                items.push(Item {
                    tok: Tok::Close,
                    pos: p,
                    end: p + 2,
                    space_before,
                });
                p += 2;
                break;
            }
            let start = p;
            let tok = match c {
                b'(' => {
                    p += 1;
                    Tok::LParen
                }
                b')' => {
                    p += 1;
                    Tok::RParen
                }
                b'|' => {
                    p += 1;
                    Tok::Pipe
                }
                b',' => {
                    p += 1;
                    Tok::Comma
                }
                b':' => {
                    if bytes.get(p + 1) == Some(&b'=') {
                        p += 2;
                        Tok::Declare
                    } else {
                        return Err(ParseError {
                            pos: p,
                            message: "expected :=".into(),
                        });
                    }
                }
                b'=' => {
                    p += 1;
                    Tok::Assign
                }
                b'"' => {
                    let (s, np) = lex_quoted(src, p)?;
                    p = np;
                    Tok::Str(s)
                }
                b'`' => {
                    let Some(close) = src[p + 1..].find('`') else {
                        return Err(ParseError {
                            pos: p,
                            message: "unterminated raw quoted string".into(),
                        });
                    };
                    let s = src[p + 1..p + 1 + close].to_string();
                    p = p + 1 + close + 1;
                    Tok::Str(s)
                }
                b'\'' => {
                    let (v, np) = lex_char(src, p)?;
                    p = np;
                    Tok::Char(v)
                }
                b'$' => {
                    p += 1;
                    let name_len: usize = src[p..]
                        .chars()
                        .take_while(|c| is_alnum(*c))
                        .map(char::len_utf8)
                        .sum();
                    p += name_len;
                    Tok::Var(src[start..p].to_string())
                }
                b'.' => {
                    let next = src[p + 1..].chars().next();
                    if next.is_some_and(|c| c.is_ascii_digit()) {
                        let np = lex_number(src, p);
                        let t = src[p..np].to_string();
                        p = np;
                        Tok::Number(t)
                    } else if next.is_some_and(is_alnum) {
                        p += 1;
                        let name_len: usize = src[p..]
                            .chars()
                            .take_while(|c| is_alnum(*c))
                            .map(char::len_utf8)
                            .sum();
                        p += name_len;
                        Tok::Field(src[start + 1..p].to_string())
                    } else {
                        p += 1;
                        Tok::Dot
                    }
                }
                b'0'..=b'9' | b'+' | b'-' => {
                    let np = lex_number(src, p);
                    if np == p + 1 && !c.is_ascii_digit() {
                        return Err(ParseError {
                            pos: p,
                            message: format!("bad character {:?}", c as char),
                        });
                    }
                    let t = src[p..np].to_string();
                    p = np;
                    Tok::Number(t)
                }
                _ => {
                    let ch = src[p..].chars().next().unwrap_or(' ');
                    if is_alnum(ch) {
                        let name_len: usize = src[p..]
                            .chars()
                            .take_while(|c| is_alnum(*c))
                            .map(char::len_utf8)
                            .sum();
                        p += name_len;
                        Tok::Ident(src[start..p].to_string())
                    } else {
                        return Err(ParseError {
                            pos: p,
                            message: format!("unexpected bad character {:?} in command", ch),
                        });
                    }
                }
            };
            items.push(Item {
                tok,
                pos: start,
                end: p,
                space_before,
            });
            space_before = false;
        }
        pos = p;
    }
    Ok(items)
}

fn lex_number(src: &str, start: usize) -> usize {
    let b = src.as_bytes();
    let mut p = start;
    if matches!(b.get(p), Some(b'+') | Some(b'-')) {
        p += 1;
    }
    while let Some(&c) = b.get(p) {
        let prev = if p > start { b[p - 1] } else { 0 };
        let sign_ok = (c == b'+' || c == b'-')
            && matches!(prev, b'e' | b'E' | b'p' | b'P')
            && !src[start..p].starts_with("0x")
            && !src[start..p].starts_with("0X");
        if c.is_ascii_alphanumeric() || c == b'.' || c == b'_' || sign_ok {
            p += 1;
        } else {
            break;
        }
    }
    p
}

fn lex_quoted(src: &str, start: usize) -> Result<(String, usize), ParseError> {
    let mut out = String::new();
    let mut chars = src[start + 1..].char_indices();
    let err = |m: &str| ParseError {
        pos: start,
        message: m.to_string(),
    };
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, start + 1 + i + 1)),
            '\n' => return Err(err("unterminated quoted string")),
            '\\' => {
                let Some((_, e)) = chars.next() else {
                    return Err(err("unterminated quoted string"));
                };
                match e {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    '\\' => out.push('\\'),
                    '"' => out.push('"'),
                    '\'' => out.push('\''),
                    'a' => out.push('\x07'),
                    'b' => out.push('\x08'),
                    'f' => out.push('\x0c'),
                    'v' => out.push('\x0b'),
                    'x' | 'u' | 'U' => {
                        let n = match e {
                            'x' => 2,
                            'u' => 4,
                            _ => 8,
                        };
                        let mut hex = String::new();
                        for _ in 0..n {
                            match chars.next() {
                                Some((_, h)) => hex.push(h),
                                None => return Err(err("unterminated quoted string")),
                            }
                        }
                        let v = u32::from_str_radix(&hex, 16)
                            .map_err(|_| err("invalid escape in quoted string"))?;
                        out.push(char::from_u32(v).ok_or_else(|| err("invalid escape"))?);
                    }
                    _ => return Err(err("invalid syntax in quoted string")),
                }
            }
            c => out.push(c),
        }
    }
    Err(err("unterminated quoted string"))
}

fn lex_char(src: &str, start: usize) -> Result<(i64, usize), ParseError> {
    let rest = &src[start + 1..];
    let err = ParseError {
        pos: start,
        message: "unterminated character constant".into(),
    };
    let mut it = rest.char_indices();
    let (_, c) = it.next().ok_or(err.clone())?;
    let (value, after) = if c == '\\' {
        let (_, e) = it.next().ok_or(err.clone())?;
        let v = match e {
            'n' => '\n',
            't' => '\t',
            'r' => '\r',
            '\\' => '\\',
            '\'' => '\'',
            '0' => '\0',
            _ => return Err(err),
        };
        (v, it.next())
    } else {
        (c, it.next())
    };
    match after {
        Some((i, '\'')) => Ok((value as i64, start + 1 + i + 1)),
        _ => Err(err),
    }
}

fn parse_number(text: &str) -> Option<ArgKind> {
    let clean: String = text.chars().filter(|c| *c != '_').collect();
    let (neg, body) = match clean.strip_prefix('-') {
        Some(b) => (true, b.to_string()),
        None => (false, clean.trim_start_matches('+').to_string()),
    };
    let lower = body.to_ascii_lowercase();
    let int = if let Some(h) = lower.strip_prefix("0x") {
        i64::from_str_radix(h, 16).ok()
    } else if let Some(o) = lower.strip_prefix("0o") {
        i64::from_str_radix(o, 8).ok()
    } else if let Some(b) = lower.strip_prefix("0b") {
        i64::from_str_radix(b, 2).ok()
    } else if lower.len() > 1 && lower.starts_with('0') && lower.chars().all(|c| c.is_ascii_digit())
    {
        i64::from_str_radix(&lower[1..], 8).ok()
    } else {
        lower.parse::<i64>().ok()
    };
    if let Some(i) = int {
        return Some(ArgKind::Int(if neg { -i } else { i }));
    }
    if lower.starts_with("0x") {
        return None;
    }
    let f: f64 = lower.parse().ok()?;
    if !f.is_finite() {
        return None;
    }
    Some(ArgKind::Float(if neg { -f } else { f }))
}

/// Parses a whole template.
pub fn parse(src: &str) -> Result<Tree, ParseError> {
    let items = lex(src)?;
    let mut p = Parser {
        src,
        items,
        i: 0,
        depth: 0,
        defines: BTreeMap::new(),
    };
    let (root, stop) = p.parse_list(true)?;
    if let Some((pos, word)) = stop {
        return Err(ParseError {
            pos,
            message: format!("unexpected {{{{{word}}}}}"),
        });
    }
    Ok(Tree {
        root,
        defines: p.defines,
    })
}

struct Parser<'a> {
    src: &'a str,
    items: Vec<Item>,
    i: usize,
    depth: usize,
    defines: BTreeMap<String, Vec<Node>>,
}

/// What ended a list: `end` or `else` (with the position of the action).
type Stop = Option<(usize, &'static str)>;

impl Parser<'_> {
    fn peek(&self) -> Option<&Item> {
        self.items.get(self.i)
    }

    fn next(&mut self) -> Option<Item> {
        let it = self.items.get(self.i).cloned();
        if it.is_some() {
            self.i += 1;
        }
        it
    }

    fn err<T>(&self, pos: usize, message: impl Into<String>) -> Result<T, ParseError> {
        Err(ParseError {
            pos,
            message: message.into(),
        })
    }

    fn enter(&mut self, pos: usize) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return self.err(
                pos,
                format!("template nesting deeper than {MAX_NESTING} levels"),
            );
        }
        Ok(())
    }

    /// Parses nodes until `{{end}}`/`{{else}}` (returned as the stop) or end of input.
    /// The `{{else ...}}` stop leaves the tokens after `else` unconsumed.
    fn parse_list(&mut self, top: bool) -> Result<(Vec<Node>, Stop), ParseError> {
        let mut list = Vec::new();
        while let Some(item) = self.next() {
            match item.tok {
                Tok::Text(t) => list.push(Node::Text {
                    pos: item.pos,
                    text: t,
                }),
                Tok::Open => {
                    let action_pos = item.pos;
                    let kw = match self.peek() {
                        Some(Item {
                            tok: Tok::Ident(w), ..
                        }) => Some(w.clone()),
                        _ => None,
                    };
                    match kw.as_deref() {
                        Some("end") => {
                            self.i += 1;
                            self.expect_close()?;
                            if top {
                                return self.err(action_pos, "unexpected {{end}}");
                            }
                            return Ok((list, Some((action_pos, "end"))));
                        }
                        Some("else") => {
                            self.i += 1;
                            if top {
                                return self.err(action_pos, "unexpected {{else}}");
                            }
                            return Ok((list, Some((action_pos, "else"))));
                        }
                        Some("if") | Some("range") | Some("with") => {
                            self.i += 1;
                            let w = kw.unwrap_or_default();
                            list.push(self.parse_control(&w, action_pos)?);
                        }
                        Some("define") => {
                            self.i += 1;
                            self.parse_define(action_pos)?;
                        }
                        Some("block") => {
                            self.i += 1;
                            let name = self.expect_string("block")?;
                            let pipe = self.parse_pipeline(action_pos, false)?;
                            self.enter(action_pos)?;
                            let (body, stop) = self.parse_list(false)?;
                            self.depth -= 1;
                            if stop.map(|s| s.1) != Some("end") {
                                return self.err(action_pos, "missing {{end}} for block");
                            }
                            self.defines.insert(name.clone(), body);
                            list.push(Node::Template {
                                pos: action_pos,
                                name,
                                pipe: Some(pipe),
                            });
                        }
                        Some("template") => {
                            self.i += 1;
                            let name = self.expect_string("template")?;
                            let pipe = if matches!(self.peek().map(|i| &i.tok), Some(Tok::Close)) {
                                self.i += 1;
                                None
                            } else {
                                Some(self.parse_pipeline(action_pos, false)?)
                            };
                            list.push(Node::Template {
                                pos: action_pos,
                                name,
                                pipe,
                            });
                        }
                        Some("break") | Some("continue") => {
                            self.i += 1;
                            self.expect_close()?;
                            list.push(if kw.as_deref() == Some("break") {
                                Node::Break
                            } else {
                                Node::Continue
                            });
                        }
                        _ => {
                            let pipe = self.parse_pipeline(action_pos, true)?;
                            list.push(Node::Action {
                                pos: action_pos,
                                pipe,
                            });
                        }
                    }
                }
                _ => return self.err(item.pos, "unexpected token outside action"),
            }
        }
        Ok((list, None))
    }

    fn expect_close(&mut self) -> Result<(), ParseError> {
        match self.next() {
            Some(Item {
                tok: Tok::Close, ..
            }) => Ok(()),
            Some(it) => self.err(
                it.pos,
                format!("unexpected {} in action", self.describe(&it)),
            ),
            None => self.err(self.src.len(), "unclosed action"),
        }
    }

    fn describe(&self, it: &Item) -> String {
        format!("{:?}", &self.src[it.pos..it.end.min(self.src.len())])
    }

    fn expect_string(&mut self, ctx: &str) -> Result<String, ParseError> {
        match self.next() {
            Some(Item {
                tok: Tok::Str(s), ..
            }) => Ok(s),
            Some(it) => self.err(
                it.pos,
                format!("unexpected {} in {ctx} clause", self.describe(&it)),
            ),
            None => self.err(self.src.len(), format!("unexpected EOF in {ctx} clause")),
        }
    }

    fn parse_define(&mut self, pos: usize) -> Result<(), ParseError> {
        let name = self.expect_string("define")?;
        self.expect_close()?;
        self.enter(pos)?;
        let (body, stop) = self.parse_list(false)?;
        self.depth -= 1;
        if stop.map(|s| s.1) != Some("end") {
            return self.err(pos, "unexpected EOF: missing {{end}} for define");
        }
        self.defines.insert(name, body);
        Ok(())
    }

    fn parse_control(&mut self, word: &str, pos: usize) -> Result<Node, ParseError> {
        self.enter(pos)?;
        let pipe = self.parse_pipeline(pos, word != "range")?;
        let (list, stop) = self.parse_list(false)?;
        let else_list = match stop {
            Some((_, "end")) => None,
            Some((else_pos, "else")) => {
                // "else if"/"else with" chain: the nested control shares our {{end}}.
                let chained = match self.peek() {
                    Some(Item {
                        tok: Tok::Ident(w), ..
                    }) if (w == "if" && word == "if") || (w == "with" && word == "with") => {
                        Some(w.clone())
                    }
                    _ => None,
                };
                if let Some(w) = chained {
                    self.i += 1;
                    let nested = self.parse_control(&w, else_pos)?;
                    Some(vec![nested])
                } else {
                    self.expect_close()?;
                    let (else_list, stop2) = self.parse_list(false)?;
                    if stop2.map(|s| s.1) != Some("end") {
                        return self.err(
                            pos,
                            format!("unexpected EOF: missing {{{{end}}}} for {word}"),
                        );
                    }
                    Some(else_list)
                }
            }
            _ => {
                return self.err(
                    pos,
                    format!("unexpected EOF: missing {{{{end}}}} for {word}"),
                )
            }
        };
        self.depth -= 1;
        Ok(match word {
            "if" => Node::If {
                pos,
                pipe,
                list,
                else_list,
            },
            "range" => Node::Range {
                pos,
                pipe,
                list,
                else_list,
            },
            _ => Node::With {
                pos,
                pipe,
                list,
                else_list,
            },
        })
    }

    /// Parses `[decl :=] cmd | cmd ...` up to the closing delimiter (consumed).
    fn parse_pipeline(
        &mut self,
        pos: usize,
        allow_single_decl_only: bool,
    ) -> Result<Pipe, ParseError> {
        let _ = allow_single_decl_only;
        let mut decl = Vec::new();
        let mut assign = false;
        // Variable declarations: "$x :=", "$x =", "$i, $v :=".
        let save = self.i;
        if let Some(Item {
            tok: Tok::Var(v), ..
        }) = self.peek().cloned()
        {
            self.i += 1;
            match self.peek().map(|i| i.tok.clone()) {
                Some(Tok::Declare) | Some(Tok::Assign) => {
                    assign = matches!(self.peek().map(|i| &i.tok), Some(Tok::Assign));
                    self.i += 1;
                    decl.push(v);
                }
                Some(Tok::Comma) => {
                    self.i += 1;
                    match (self.next(), self.next()) {
                        (
                            Some(Item {
                                tok: Tok::Var(v2), ..
                            }),
                            Some(Item {
                                tok: t @ (Tok::Declare | Tok::Assign),
                                ..
                            }),
                        ) => {
                            assign = t == Tok::Assign;
                            decl.push(v);
                            decl.push(v2);
                        }
                        _ => return self.err(pos, "too many declarations in command"),
                    }
                }
                _ => self.i = save,
            }
        }
        let mut cmds = Vec::new();
        loop {
            let cmd = self.parse_command(pos)?;
            cmds.push(cmd);
            match self.next() {
                Some(Item { tok: Tok::Pipe, .. }) => continue,
                Some(Item {
                    tok: Tok::Close, ..
                }) => break,
                Some(it) => {
                    return self.err(
                        it.pos,
                        format!("unexpected {} in operand", self.describe(&it)),
                    )
                }
                None => return self.err(self.src.len(), "unclosed action"),
            }
        }
        Ok(Pipe {
            pos,
            decl,
            assign,
            cmds,
        })
    }

    /// Parses one command: operands until `|`, `)` or the closing delimiter (not consumed).
    fn parse_command(&mut self, pos: usize) -> Result<Cmd, ParseError> {
        let mut args = Vec::new();
        let cmd_pos = self.peek().map(|i| i.pos).unwrap_or(pos);
        loop {
            match self.peek().map(|i| &i.tok) {
                None => return self.err(self.src.len(), "unclosed action"),
                Some(Tok::Pipe) | Some(Tok::Close) | Some(Tok::RParen) => break,
                _ => {}
            }
            if !args.is_empty() && !self.peek().is_some_and(|i| i.space_before) {
                let it = self.peek().cloned();
                if let Some(it) = it {
                    return self.err(
                        it.pos,
                        format!("unexpected {} in operand", self.describe(&it)),
                    );
                }
            }
            args.push(self.parse_operand()?);
        }
        if args.is_empty() {
            return self.err(cmd_pos, "missing value for command");
        }
        Ok(Cmd { pos: cmd_pos, args })
    }

    fn parse_operand(&mut self) -> Result<Arg, ParseError> {
        let Some(item) = self.next() else {
            return self.err(self.src.len(), "unclosed action");
        };
        let start = item.pos;
        let kind = match item.tok {
            Tok::Dot => ArgKind::Dot,
            Tok::Field(f) => {
                let mut fields = vec![f];
                self.collect_fields(&mut fields);
                ArgKind::Field(fields)
            }
            Tok::Var(v) => {
                let mut fields = Vec::new();
                self.collect_fields(&mut fields);
                ArgKind::Var(v, fields)
            }
            Tok::Str(s) => ArgKind::Str(s),
            Tok::Char(c) => ArgKind::Int(c),
            Tok::Number(n) => match parse_number(&n) {
                Some(k) => k,
                None => return self.err(start, format!("illegal number syntax: {n:?}")),
            },
            Tok::Ident(w) => match w.as_str() {
                "true" => ArgKind::Bool(true),
                "false" => ArgKind::Bool(false),
                "nil" => ArgKind::Nil,
                "if" | "else" | "end" | "range" | "with" | "define" | "template" | "block"
                | "break" | "continue" => {
                    return self.err(start, format!("unexpected keyword {w:?} in operand"))
                }
                _ => {
                    // `now.Year`: a field chain on a function's result.
                    let mut fields = Vec::new();
                    self.collect_fields(&mut fields);
                    if fields.is_empty() {
                        ArgKind::Ident(w)
                    } else {
                        let inner = Arg {
                            pos: start,
                            text: w.clone(),
                            kind: ArgKind::Ident(w),
                        };
                        ArgKind::Chain(Box::new(inner), fields)
                    }
                }
            },
            Tok::LParen => {
                self.enter(start)?;
                let mut decl_pipe_cmds = Vec::new();
                loop {
                    decl_pipe_cmds.push(self.parse_command(start)?);
                    match self.next() {
                        Some(Item { tok: Tok::Pipe, .. }) => continue,
                        Some(Item {
                            tok: Tok::RParen, ..
                        }) => break,
                        Some(it) => {
                            return self.err(
                                it.pos,
                                format!(
                                    "unexpected {} in parenthesized pipeline",
                                    self.describe(&it)
                                ),
                            )
                        }
                        None => return self.err(start, "unclosed left paren"),
                    }
                }
                self.depth -= 1;
                let inner = Arg {
                    pos: start,
                    text: self.src[start..self.items[self.i - 1].end].to_string(),
                    kind: ArgKind::Pipe(Box::new(Pipe {
                        pos: start,
                        decl: Vec::new(),
                        assign: false,
                        cmds: decl_pipe_cmds,
                    })),
                };
                let mut fields = Vec::new();
                self.collect_fields(&mut fields);
                if fields.is_empty() {
                    return Ok(inner);
                }
                ArgKind::Chain(Box::new(inner), fields)
            }
            _ => {
                return self.err(
                    start,
                    format!("unexpected {} in operand", self.describe(&item)),
                )
            }
        };
        let end = if self.i > 0 {
            self.items[self.i - 1].end
        } else {
            start
        };
        Ok(Arg {
            pos: start,
            text: self.src[start..end.max(start).min(self.src.len())].to_string(),
            kind,
        })
    }

    fn collect_fields(&mut self, fields: &mut Vec<String>) {
        while let Some(Item {
            tok: Tok::Field(f),
            space_before: false,
            ..
        }) = self.peek().cloned()
        {
            self.i += 1;
            fields.push(f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_shapes() {
        let t =
            parse("a {{ .Run.ID }} b {{- if eq .x 1 }}y{{ else if .z }}z{{ else }}w{{ end -}} c")
                .unwrap();
        assert_eq!(t.root.len(), 5);
        assert!(matches!(t.root[4], Node::Text { ref text, .. } if text == "c"));
        assert!(matches!(t.root[2], Node::Text { ref text, .. } if text == " b"));
        assert!(matches!(
            t.root[3],
            Node::If {
                else_list: Some(_),
                ..
            }
        ));
    }

    #[test]
    fn reports_errors() {
        assert!(parse("{{ if .x }}").is_err());
        assert!(parse("{{ end }}").is_err());
        assert!(parse("{{ .x").is_err());
        assert!(parse("{{ \"abc }}").is_err());
        assert!(parse("{{ (((( }}").is_err());
        let deep = "{{ if 1 }}".repeat(500);
        assert!(parse(&deep).is_err());
    }

    #[test]
    fn numbers_and_vars() {
        let t = parse("{{ $x := -3 }}{{ $i, $v := .L }}{{ 1.5 }}{{ 0x1F }}{{ 'a' }}").unwrap();
        assert_eq!(t.root.len(), 5);
    }
}
