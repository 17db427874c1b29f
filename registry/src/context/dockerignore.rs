//! `.dockerignore` matching with the semantics of moby's `patternmatcher` and `ignorefile` packages.
//!
//! Hand-written because no maintained crate implements Docker's rules faithfully (gitignore crates
//! differ: there a pattern without `/` matches at any depth, here it is anchored at the context root).
//! The rules, as moby implements them:
//! - lines starting with `#` are comments; lines are trimmed; `!` starts an exception; patterns are
//!   cleaned like Go's `filepath.Clean` and a leading `/` is dropped, so `/foo`, `./foo` and `foo/` are `foo`;
//! - the glob is Go's `filepath.Match` plus `**`: `*` and `?` never match `/`, `[...]` is a class
//!   (negated with `^`), `\` escapes, `**/` matches any number of directories (including none) and a
//!   trailing `**` matches anything;
//! - a pattern matches a path when it matches the path or any of its parent directories, and the last
//!   matching line decides.
//!
//! Two deliberate differences from moby, where moby hands raw pattern text to Go's regexp engine:
//! an escaped character (`\b`) and a `^` outside a class always mean the literal character.
//! The tests are moby's `patternmatcher` and `ignorefile` test cases.

use regex::Regex;

use crate::Error;

/// A parsed `.dockerignore`.
#[derive(Debug, Clone, Default)]
pub struct DockerIgnore {
    patterns: Vec<Pattern>,
    exceptions: bool,
}

#[derive(Debug, Clone)]
struct Pattern {
    /// The cleaned pattern, without the leading `!`.
    cleaned: String,
    exception: bool,
    kind: MatchKind,
}

#[derive(Debug, Clone)]
enum MatchKind {
    Exact,
    /// Pattern ends in `**` and has no other wildcard: a string prefix test.
    Prefix,
    /// Pattern starts with `**` and has no other wildcard: a string suffix test.
    Suffix,
    Regex(Regex),
}

/// Which patterns matched a directory, so its children need not test its parents again.
#[derive(Debug, Clone, Default)]
pub struct MatchInfo {
    parent_matched: Vec<bool>,
}

impl DockerIgnore {
    /// Parses the text of a `.dockerignore` file (moby's `ignorefile.ReadAll` followed by `patternmatcher.New`).
    pub fn parse(text: &str) -> Result<Self, Error> {
        Self::from_patterns(&read_ignore_lines(text))
    }

    /// Builds a matcher from already-read patterns (moby's `patternmatcher.New`).
    pub fn from_patterns<S: AsRef<str>>(patterns: &[S]) -> Result<Self, Error> {
        let mut matcher = DockerIgnore::default();
        for raw in patterns {
            let trimmed = raw.as_ref().trim();
            if trimmed.is_empty() {
                continue;
            }
            let cleaned = go_clean(trimmed);
            let (exception, body) = match cleaned.strip_prefix('!') {
                Some(rest) => (true, rest.to_string()),
                None => (false, cleaned.clone()),
            };
            let invalid = |reason: String| Error::DockerIgnore {
                pattern: raw.as_ref().to_string(),
                reason,
            };
            if exception && body.is_empty() {
                return Err(invalid("illegal exclusion pattern \"!\"".to_string()));
            }
            let kind = compile(&body).map_err(invalid)?;
            matcher.exceptions |= exception;
            matcher.patterns.push(Pattern {
                cleaned: body,
                exception,
                kind,
            });
        }
        Ok(matcher)
    }

    /// Appends an exception (`!path`) for a path that must stay in the context.
    pub(crate) fn keep(&mut self, path: &str) -> Result<(), Error> {
        let extra = DockerIgnore::from_patterns(&[format!("!{path}")])?;
        self.patterns.extend(extra.patterns);
        self.exceptions = true;
        Ok(())
    }

    /// Whether any line is an exception (`!`).
    pub fn has_exceptions(&self) -> bool {
        self.exceptions
    }

    /// Whether `path` (relative to the context root, `/`-separated) or one of its parents is excluded
    /// (moby's `MatchesOrParentMatches`).
    pub fn matches(&self, path: &str) -> bool {
        let parent = go_dir(path);
        let parent_dirs: Vec<&str> = parent.split('/').collect();
        let mut matched = false;
        for pattern in &self.patterns {
            if pattern.exception != matched {
                continue;
            }
            let mut hit = pattern.matches(path);
            if !hit && parent != "." {
                hit = (1..=parent_dirs.len()).any(|n| pattern.matches(&parent_dirs[..n].join("/")));
            }
            if hit {
                matched = !pattern.exception;
            }
        }
        matched
    }

    /// Like [`matches`](Self::matches), reusing the result of the path's parent directory
    /// (moby's `MatchesUsingParentResults`). Pass `MatchInfo::default()` for a top-level path.
    pub fn matches_using_parent(&self, path: &str, parent: &MatchInfo) -> (bool, MatchInfo) {
        let parent_matched = &parent.parent_matched;
        let have_parent = parent_matched.len() == self.patterns.len() && !parent_matched.is_empty();
        let mut matched = false;
        let mut info = MatchInfo {
            parent_matched: vec![false; self.patterns.len()],
        };
        for (i, pattern) in self.patterns.iter().enumerate() {
            let mut hit = have_parent && parent_matched[i];
            if !hit {
                if pattern.exception != matched {
                    continue;
                }
                hit = pattern.matches(path);
                if !hit && !have_parent {
                    let parent_path = go_dir(path);
                    if parent_path != "." {
                        let dirs: Vec<&str> = parent_path.split('/').collect();
                        hit = (1..=dirs.len()).any(|n| pattern.matches(&dirs[..n].join("/")));
                    }
                }
            }
            info.parent_matched[i] = hit;
            if hit {
                matched = !pattern.exception;
            }
        }
        (matched, info)
    }

    /// Whether an excluded directory must still be walked because an exception may re-include
    /// something below it (moby's `TarWithOptions`: an exception pattern that starts with `dir/`).
    pub fn may_reinclude_below(&self, dir: &str) -> bool {
        let dir_slash = format!("{dir}/");
        self.patterns
            .iter()
            .any(|p| p.exception && format!("{}/", p.cleaned).starts_with(&dir_slash))
    }

    #[cfg(test)]
    fn matches_exact(&self, path: &str) -> bool {
        let mut matched = false;
        for pattern in &self.patterns {
            if pattern.exception != matched {
                continue;
            }
            if pattern.matches(path) {
                matched = !pattern.exception;
            }
        }
        matched
    }
}

impl Pattern {
    fn matches(&self, path: &str) -> bool {
        match &self.kind {
            MatchKind::Exact => path == self.cleaned,
            MatchKind::Prefix => path.starts_with(&self.cleaned[..self.cleaned.len() - 2]),
            MatchKind::Suffix => {
                let suffix = &self.cleaned[2..];
                path.ends_with(suffix) || suffix.strip_prefix('/').is_some_and(|rest| path == rest)
            }
            MatchKind::Regex(regex) => regex.is_match(path),
        }
    }
}

/// Reads `.dockerignore` text into patterns like moby's `ignorefile.ReadAll`.
pub(crate) fn read_ignore_lines(text: &str) -> Vec<String> {
    let mut patterns = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = if n == 0 {
            line.trim_start_matches('\u{feff}')
        } else {
            line
        };
        if line.starts_with('#') {
            continue;
        }
        let mut pattern = line.trim();
        if pattern.is_empty() {
            continue;
        }
        let invert = pattern.starts_with('!');
        if invert {
            pattern = pattern[1..].trim();
        }
        let mut cleaned = String::new();
        if !pattern.is_empty() {
            cleaned = go_clean(pattern);
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
        }
        patterns.push(if invert {
            format!("!{cleaned}")
        } else {
            cleaned
        });
    }
    patterns
}

/// Translates a cleaned pattern the way moby's `Pattern.compile` does, validating it like Go's `filepath.Match`.
fn compile(pattern: &str) -> Result<MatchKind, String> {
    #[derive(PartialEq)]
    enum Detected {
        Exact,
        Prefix,
        Suffix,
        Regex,
    }
    let chars: Vec<char> = pattern.chars().collect();
    let mut regex = String::from("^");
    let mut detected = Detected::Exact;
    let mut pos = 0;
    let mut token = 0;
    while pos < chars.len() {
        let ch = chars[pos];
        pos += 1;
        match ch {
            '*' if chars.get(pos) == Some(&'*') => {
                pos += 1;
                // `**/` is treated as `**`.
                if chars.get(pos) == Some(&'/') {
                    pos += 1;
                }
                if pos == chars.len() {
                    if detected == Detected::Exact {
                        detected = Detected::Prefix;
                    } else {
                        regex.push_str(".*");
                        detected = Detected::Regex;
                    }
                } else {
                    regex.push_str("(.*/)?");
                    detected = Detected::Regex;
                }
                if token == 0 {
                    detected = Detected::Suffix;
                }
            }
            '*' => {
                regex.push_str("[^/]*");
                detected = Detected::Regex;
            }
            '?' => {
                regex.push_str("[^/]");
                detected = Detected::Regex;
            }
            '\\' => {
                let Some(&escaped) = chars.get(pos) else {
                    return Err("syntax error in pattern: trailing backslash".to_string());
                };
                pos += 1;
                regex.push_str(&regex::escape(&escaped.to_string()));
                detected = Detected::Regex;
            }
            '[' => {
                let (class, next) = parse_class(&chars, pos)?;
                regex.push_str(&class);
                pos = next;
                detected = Detected::Regex;
            }
            ']' => {
                regex.push_str(r"\]");
                detected = Detected::Regex;
            }
            other => regex.push_str(&regex::escape(&other.to_string())),
        }
        token += 1;
    }
    Ok(match detected {
        Detected::Exact => MatchKind::Exact,
        Detected::Prefix => MatchKind::Prefix,
        Detected::Suffix => MatchKind::Suffix,
        Detected::Regex => {
            regex.push('$');
            MatchKind::Regex(
                Regex::new(&regex).map_err(|err| format!("syntax error in pattern: {err}"))?,
            )
        }
    })
}

/// Parses a character class that starts after `[` at `pos`, with the syntax of Go's `filepath.Match`:
/// `[` [`^`] { char | `\`char | lo`-`hi } `]`, at least one range. Returns the regex class and the next position.
fn parse_class(chars: &[char], mut pos: usize) -> Result<(String, usize), String> {
    let bad = |what: &str| format!("syntax error in pattern: {what}");
    let mut class = String::from("[");
    if chars.get(pos) == Some(&'^') {
        class.push('^');
        pos += 1;
    }
    let mut ranges = 0;
    loop {
        if chars.get(pos) == Some(&']') && ranges > 0 {
            pos += 1;
            break;
        }
        let (lo, next) = class_char(chars, pos).map_err(bad)?;
        pos = next;
        let mut hi = lo;
        if chars.get(pos) == Some(&'-') {
            let (high, next) = class_char(chars, pos + 1).map_err(bad)?;
            hi = high;
            pos = next;
        }
        if hi < lo {
            return Err(bad("character class range runs backwards"));
        }
        class.push_str(&regex::escape(&lo.to_string()));
        if hi != lo {
            class.push('-');
            class.push_str(&regex::escape(&hi.to_string()));
        }
        ranges += 1;
    }
    class.push(']');
    Ok((class, pos))
}

/// One (possibly escaped) character of a class, like Go's `getEsc`.
fn class_char(chars: &[char], mut pos: usize) -> Result<(char, usize), &'static str> {
    match chars.get(pos) {
        None => return Err("unterminated character class"),
        Some('-') | Some(']') => return Err("misplaced '-' or ']' in character class"),
        Some('\\') => pos += 1,
        Some(_) => {}
    }
    let Some(&ch) = chars.get(pos) else {
        return Err("unterminated character class");
    };
    pos += 1;
    if pos >= chars.len() {
        return Err("unterminated character class");
    }
    Ok((ch, pos))
}

/// Go's `path.Clean`: the shortest equivalent path by purely lexical processing.
pub(crate) fn go_clean(path: &str) -> String {
    if path.is_empty() {
        return ".".to_string();
    }
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|last| *last != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            other => parts.push(other),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

/// Go's `path.Dir`: everything before the last `/`, cleaned.
fn go_dir(path: &str) -> String {
    match path.rfind('/') {
        Some(slash) => go_clean(&path[..=slash]),
        None => ".".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// moby's package-level `Matches`/`MatchesOrParentMatches` helper: clean the path, never exclude ".".
    fn matches(file: &str, patterns: &[&str]) -> Result<bool, Error> {
        let matcher = DockerIgnore::from_patterns(patterns)?;
        let file = go_clean(file);
        if file == "." {
            return Ok(false);
        }
        Ok(matcher.matches(&file))
    }

    fn must(file: &str, patterns: &[&str]) -> bool {
        match matches(file, patterns) {
            Ok(result) => result,
            Err(err) => panic!("patterns {patterns:?} should compile: {err}"),
        }
    }

    #[test]
    fn simple_cases() {
        assert!(must("fileutils.go", &["*"]));
        assert!(must("fileutils.go", &["*.go"]));
        assert!(must("fileutils.go", &["!fileutils.go", "*.go"]));
        assert!(!must("docs/README.md", &["docs", "!docs/README.md"]));
        assert!(!must("docs/README.md", &["docs/", "!docs/README.md"]));
        assert!(!must("docs/README.md", &["docs/*", "!docs/README.md"]));
        assert!(!must("fileutils.go", &["*.go", "!fileutils.go"]));
        assert!(!must(".", &["*.go"]));
        assert!(matches("fileutils.go", &["!"]).is_err());
        assert!(!must("/any/path/there", &[]));
        assert!(matches("/any/path/there", &["["]).is_err());
    }

    #[derive(Clone, Copy, PartialEq, Debug)]
    enum Pass {
        Fail,
        Exact,
        Inexact,
    }

    const MATCH_CASES: &[(&str, &str, Pass)] = {
        use Pass::*;
        &[
            ("**", "file", Exact),
            ("**", "file/", Exact),
            ("**/", "file", Exact),
            ("**/", "file/", Exact),
            ("**", "/", Exact),
            ("**/", "/", Exact),
            ("**", "dir/file", Exact),
            ("**/", "dir/file", Exact),
            ("**", "dir/file/", Exact),
            ("**/", "dir/file/", Exact),
            ("**/**", "dir/file", Exact),
            ("**/**", "dir/file/", Exact),
            ("dir/**", "dir/file", Exact),
            ("dir/**", "dir/file/", Exact),
            ("dir/**", "dir/dir2/file", Exact),
            ("dir/**", "dir/dir2/file/", Exact),
            ("**/dir", "dir", Exact),
            ("**/dir", "dir/file", Inexact),
            ("**/dir2/*", "dir/dir2/file", Exact),
            ("**/dir2/*", "dir/dir2/file/", Inexact),
            ("**/dir2/**", "dir/dir2/dir3/file", Exact),
            ("**/dir2/**", "dir/dir2/dir3/file/", Exact),
            ("**file", "file", Exact),
            ("**file", "dir/file", Exact),
            ("**/file", "dir/file", Exact),
            ("**file", "dir/dir/file", Exact),
            ("**/file", "dir/dir/file", Exact),
            ("**/file*", "dir/dir/file", Exact),
            ("**/file*", "dir/dir/file.txt", Exact),
            ("**/file*txt", "dir/dir/file.txt", Exact),
            ("**/file*.txt", "dir/dir/file.txt", Exact),
            ("**/file*.txt*", "dir/dir/file.txt", Exact),
            ("**/**/*.txt", "dir/dir/file.txt", Exact),
            ("**/**/*.txt2", "dir/dir/file.txt", Fail),
            ("**/*.txt", "file.txt", Exact),
            ("**/**/*.txt", "file.txt", Exact),
            ("a**/*.txt", "a/file.txt", Exact),
            ("a**/*.txt", "a/dir/file.txt", Exact),
            ("a**/*.txt", "a/dir/dir/file.txt", Exact),
            ("a/*.txt", "a/dir/file.txt", Fail),
            ("a/*.txt", "a/file.txt", Exact),
            ("a/*.txt**", "a/file.txt", Exact),
            ("a[b-d]e", "ae", Fail),
            ("a[b-d]e", "ace", Exact),
            ("a[b-d]e", "aae", Fail),
            ("a[^b-d]e", "aze", Exact),
            (".*", ".foo", Exact),
            (".*", "foo", Fail),
            ("abc.def", "abcdef", Fail),
            ("abc.def", "abc.def", Exact),
            ("abc.def", "abcZdef", Fail),
            ("abc?def", "abcZdef", Exact),
            ("abc?def", "abcdef", Fail),
            ("**/foo/bar", "foo/bar", Exact),
            ("**/foo/bar", "dir/foo/bar", Exact),
            ("**/foo/bar", "dir/dir2/foo/bar", Exact),
            ("abc/**", "abc", Fail),
            ("abc/**", "abc/def", Exact),
            ("abc/**", "abc/def/ghi", Exact),
            ("**/.foo", ".foo", Exact),
            ("**/.foo", "bar.foo", Fail),
            ("a(b)c/def", "a(b)c/def", Exact),
            ("a(b)c/def", "a(b)c/xyz", Fail),
            ("a.|)$(}+{bc", "a.|)$(}+{bc", Exact),
            (
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                Exact,
            ),
            (
                "dist/*.whl",
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                Exact,
            ),
            ("a\\\\", "a\\", Exact),
            ("a\\*b", "a*b", Exact),
        ]
    };

    const MULTI_CASES: &[(&[&str], &str, Pass)] = {
        use Pass::*;
        &[
            (&["**", "!util/docker/web"], "util/docker/web/foo", Fail),
            (
                &["**", "!util/docker/web", "util/docker/web/foo"],
                "util/docker/web/foo",
                Exact,
            ),
            (
                &[
                    "**",
                    "!dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                ],
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                Fail,
            ),
            (
                &["**", "!dist/*.whl"],
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                Fail,
            ),
        ]
    };

    fn matcher(patterns: &[&str]) -> DockerIgnore {
        match DockerIgnore::from_patterns(patterns) {
            Ok(m) => m,
            Err(err) => panic!("{patterns:?} should compile: {err}"),
        }
    }

    /// Walks the parents of `text` the way moby's tests do, then matches `text` with their results.
    fn using_parent_results(m: &DockerIgnore, text: &str) -> bool {
        let parent = go_dir(text);
        let mut info = MatchInfo::default();
        if parent != "." {
            let dirs: Vec<&str> = parent.split('/').collect();
            for n in 1..=dirs.len() {
                info = m.matches_using_parent(&dirs[..n].join("/"), &info).1;
            }
        }
        m.matches_using_parent(text, &info).0
    }

    #[test]
    fn moby_matches_exact() {
        for &(pattern, text, pass) in MATCH_CASES {
            assert_eq!(
                matcher(&[pattern]).matches_exact(text),
                pass == Pass::Exact,
                "pattern={pattern:?} text={text:?}"
            );
        }
    }

    #[test]
    fn moby_matches_or_parent_matches() {
        for &(pattern, text, pass) in MATCH_CASES {
            assert_eq!(
                matcher(&[pattern]).matches(text),
                pass != Pass::Fail,
                "pattern={pattern:?} text={text:?}"
            );
        }
        for &(patterns, text, pass) in MULTI_CASES {
            assert_eq!(
                matcher(patterns).matches(text),
                pass != Pass::Fail,
                "patterns={patterns:?} text={text:?}"
            );
        }
    }

    #[test]
    fn moby_matches_using_parent_results() {
        for &(pattern, text, pass) in MATCH_CASES {
            let m = matcher(&[pattern]);
            assert_eq!(
                using_parent_results(&m, text),
                pass != Pass::Fail,
                "pattern={pattern:?} text={text:?}"
            );
            assert_eq!(
                m.matches_using_parent(text, &MatchInfo::default()).0,
                pass != Pass::Fail,
                "no context: pattern={pattern:?} text={text:?}"
            );
        }
        for &(patterns, text, pass) in MULTI_CASES {
            let m = matcher(patterns);
            assert_eq!(
                using_parent_results(&m, text),
                pass != Pass::Fail,
                "patterns={patterns:?} text={text:?}"
            );
        }
    }

    #[test]
    fn clean_patterns() {
        assert_eq!(matcher(&["docs", "config"]).patterns.len(), 2);
        assert_eq!(matcher(&["docs", "config", ""]).patterns.len(), 2);
        assert!(matcher(&["docs", "!docs/README.md"]).has_exceptions());
        assert!(matcher(&["docs", "  !docs/README.md"]).has_exceptions());
        assert!(matcher(&["docs", "!docs/README.md  "]).has_exceptions());
        assert!(!matcher(&["docs"]).has_exceptions());
        assert!(DockerIgnore::from_patterns(&["!"]).is_err());
    }

    /// Go's `filepath.Match` cases that moby runs through its own matcher: (pattern, path, match, is_error).
    const GO_MATCH_CASES: &[(&str, &str, bool, bool)] = &[
        ("abc", "abc", true, false),
        ("*", "abc", true, false),
        ("*c", "abc", true, false),
        ("a*", "a", true, false),
        ("a*", "abc", true, false),
        ("a*", "ab/c", true, false),
        ("a*/b", "abc/b", true, false),
        ("a*/b", "a/c/b", false, false),
        ("a*b*c*d*e*/f", "axbxcxdxe/f", true, false),
        ("a*b*c*d*e*/f", "axbxcxdxexxx/f", true, false),
        ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", false, false),
        ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", false, false),
        ("a*b?c*x", "abxbbxdbxebxczzx", true, false),
        ("a*b?c*x", "abxbbxdbxebxczzy", false, false),
        ("ab[c]", "abc", true, false),
        ("ab[b-d]", "abc", true, false),
        ("ab[e-g]", "abc", false, false),
        ("ab[^c]", "abc", false, false),
        ("ab[^b-d]", "abc", false, false),
        ("ab[^e-g]", "abc", true, false),
        ("a\\*b", "a*b", true, false),
        ("a\\*b", "ab", false, false),
        ("a?b", "a☺b", true, false),
        ("a[^a]b", "a☺b", true, false),
        ("a???b", "a☺b", false, false),
        ("a[^a][^a][^a]b", "a☺b", false, false),
        ("[a-ζ]*", "α", true, false),
        ("*[a-ζ]", "A", false, false),
        ("a?b", "a/b", false, false),
        ("a*b", "a/b", false, false),
        ("[\\]a]", "]", true, false),
        ("[\\-]", "-", true, false),
        ("[x\\-]", "x", true, false),
        ("[x\\-]", "-", true, false),
        ("[x\\-]", "z", false, false),
        ("[\\-x]", "x", true, false),
        ("[\\-x]", "-", true, false),
        ("[\\-x]", "a", false, false),
        ("[]a]", "]", false, true),
        ("[-]", "-", false, true),
        ("[x-]", "x", false, true),
        ("[x-]", "-", false, true),
        ("[x-]", "z", false, true),
        ("[-x]", "x", false, true),
        ("[-x]", "-", false, true),
        ("[-x]", "a", false, true),
        ("\\", "a", false, true),
        ("[a-b-c]", "a", false, true),
        ("[", "a", false, true),
        ("[^", "a", false, true),
        ("[^bc", "a", false, true),
        ("a[", "a", false, true),
        ("a[", "ab", false, true),
        ("*x", "xxx", true, false),
    ];

    #[test]
    fn go_filepath_match_cases() {
        for &(pattern, path, want, want_err) in GO_MATCH_CASES {
            match matches(path, &[pattern]) {
                Ok(got) => {
                    assert!(!want_err, "pattern {pattern:?} should be refused");
                    assert_eq!(got, want, "pattern={pattern:?} path={path:?}");
                }
                Err(err) => assert!(want_err, "pattern {pattern:?} was refused: {err}"),
            }
        }
    }

    #[test]
    fn backwards_class_range_is_refused() {
        // moby: passes Go's Match validation, then fails to compile ("[Local-Only]/").
        assert!(DockerIgnore::from_patterns(&["[Local-Only]/"]).is_err());
    }

    #[test]
    fn compile_kinds() {
        let kind = |p: &str| match compile(&go_clean(p)) {
            Ok(MatchKind::Exact) => "exact".to_string(),
            Ok(MatchKind::Prefix) => "prefix".to_string(),
            Ok(MatchKind::Suffix) => "suffix".to_string(),
            Ok(MatchKind::Regex(re)) => re.as_str().to_string(),
            Err(err) => panic!("{p:?}: {err}"),
        };
        assert_eq!(kind("*"), "^[^/]*$");
        assert_eq!(kind("file*"), "^file[^/]*$");
        assert_eq!(kind("*file"), "^[^/]*file$");
        assert_eq!(kind("a*/b"), "^a[^/]*/b$");
        assert_eq!(kind("**"), "suffix");
        assert_eq!(kind("**/**"), "^(.*/)?.*$");
        assert_eq!(kind("dir/**"), "prefix");
        assert_eq!(kind("**/dir"), "suffix");
        assert_eq!(kind("**/dir2/*"), "^(.*/)?dir2/[^/]*$");
        assert_eq!(kind("**/dir2/**"), "^(.*/)?dir2/.*$");
        assert_eq!(kind("**file"), "suffix");
        assert_eq!(kind("**/file*txt"), "^(.*/)?file[^/]*txt$");
        assert_eq!(kind("**/**/*.txt"), r"^(.*/)?(.*/)?[^/]*\.txt$");
        assert_eq!(kind("a[b-d]e"), "^a[b-d]e$");
        assert_eq!(kind(".*"), r"^\.[^/]*$");
        assert_eq!(kind("abc.def"), "exact");
        assert_eq!(kind("abc?def"), "^abc[^/]def$");
        assert_eq!(kind("**/foo/bar"), "suffix");
        assert_eq!(kind("a(b)c/def"), "exact");
        assert_eq!(kind("a.|)$(}+{bc"), "exact");
    }

    #[test]
    fn read_ignore_file() {
        let content = "test1\n/test2\n/a/file/here\n\nlastfile\n# this is a comment\n! /inverted/abs/path\n!\n! ";
        assert_eq!(
            read_ignore_lines(content),
            vec![
                "test1",
                "test2",
                "a/file/here",
                "lastfile",
                "!inverted/abs/path",
                "!",
                "!"
            ]
        );
        assert!(
            DockerIgnore::parse(content).is_err(),
            "a bare '!' line is refused"
        );
        assert_eq!(
            read_ignore_lines("\u{feff}# comment\r\nfoo/\r\n./bar/../baz"),
            vec!["foo", "baz"]
        );
    }

    #[test]
    fn go_clean_cases() {
        for (input, want) in [
            ("", "."),
            ("a/b/", "a/b"),
            ("./a", "a"),
            ("a//b", "a/b"),
            ("a/../b", "b"),
            ("../a", "../a"),
            ("/../a", "/a"),
            ("/", "/"),
            ("a/..", "."),
            ("!a/b/", "!a/b"),
        ] {
            assert_eq!(go_clean(input), want, "clean({input:?})");
        }
    }
}
