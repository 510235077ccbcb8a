//! The UCI file format, parsed the way libuci parses it.
//!
//! libuci's parser (`file.c`) works on a line buffer in place: it copies unescaped bytes down
//! over the text it has already read, writes NUL terminators into the buffer (for `#`, `;` and
//! the end of each word) and appends continuation lines at the current position. Several of its
//! observable quirks follow from that, e.g. `config a b;option c d` silently drops the `option`
//! (the `;` right after an unquoted word is overwritten by the word's terminator) while
//! `config a 'b';option c d` keeps it. Re-deriving those rules from a grammar would drift, so
//! [`Lexer`] mirrors the C functions one for one (`uci_getln`, `parse_backslash`,
//! `parse_double_quote`, `parse_single_quote`, `parse_str`, `next_arg`, `assert_eol`,
//! `uci_parse_line`) on the same kind of buffer, and [`Package`] applies statements with the
//! semantics of `uci_set`/`uci_add_list`/`uci_add_section` (option order, list conversion, empty
//! values, anonymous section names). `tests/config_oracle.rs` checks the result against the real
//! `uci` binary.
//!
//! Differences from libuci, all on inputs libuci rejects too (`uci` runs in strict mode by
//! default, where any parse error aborts the load): after a syntax error this parser goes on
//! with the next line so that all errors of a file are reported at once, and it names lines by
//! where a statement starts.

use std::fmt::Write as _;

/// One parsed UCI file (a "package").
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Package {
    /// Sections in file order, as libuci keeps them.
    pub sections: Vec<Section>,
    /// Sections ever allocated (libuci's `n_section`, part of anonymous section names).
    allocated: u32,
}

/// A `config TYPE ['NAME']` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// The section type (`interface`, `circuit`, ...).
    pub section_type: String,
    /// The name: as written, or libuci's generated `cfgNNHHHH` for anonymous sections.
    pub name: String,
    /// Whether the section was written without a name.
    pub anonymous: bool,
    /// Line of the (first) `config` statement.
    pub line: u32,
    /// Options in libuci's order (a re-set option moves to the end).
    pub options: Vec<UciOption>,
    /// libuci replaced the type once (a second `config` with this name): a third loses the
    /// section (see [`Package::apply_config`]).
    retyped: bool,
}

/// An `option` or `list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UciOption {
    /// Option name.
    pub name: String,
    /// Its value.
    pub value: Value,
    /// Line of the statement that last changed it.
    pub line: u32,
}

/// The value of an option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `option NAME 'VALUE'`
    Single(String),
    /// `list NAME 'VALUE'` statements: each value with its line.
    List(Vec<(String, u32)>),
}

/// A syntax error, with the line of the statement it is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    /// 1-based line.
    pub line: u32,
    /// What is wrong, for a user.
    pub message: String,
}

/// Parses a whole file. Returns the package as far as it could be built, and all syntax
/// errors (empty when libuci would accept the file).
pub fn parse(text: &str) -> (Package, Vec<SyntaxError>) {
    let mut lexer = Lexer::new(text.as_bytes());
    let mut package = Package::default();
    let mut current = Current::NoSection;
    let mut errors = Vec::new();
    while !lexer.eof {
        lexer.pos = 0;
        lexer.getln(0);
        if lexer.at(0) == 0 {
            continue;
        }
        if let Err(e) = parse_line(&mut lexer, &mut package, &mut current) {
            // A `config` statement that failed leaves no section to add options to; skip its
            // options quietly instead of reporting each of them as outside a section.
            if e.config_failed {
                current = Current::Broken;
            }
            errors.push(SyntaxError {
                line: e.line,
                message: e.message,
            });
        }
    }
    (package, errors)
}

impl Package {
    /// How `uci show` refers to each section: its name, or `@type[n]` for anonymous sections,
    /// where n counts all earlier sections of that type, named ones included.
    pub fn show_refs(&self) -> Vec<String> {
        let mut seen: Vec<(&str, u32)> = Vec::new();
        self.sections
            .iter()
            .map(|s| {
                let idx = match seen.iter_mut().find(|(t, _)| *t == s.section_type) {
                    Some((_, n)) => {
                        *n += 1;
                        *n - 1
                    }
                    None => {
                        seen.push((&s.section_type, 1));
                        0
                    }
                };
                if s.anonymous {
                    format!("@{}[{idx}]", s.section_type)
                } else {
                    s.name.clone()
                }
            })
            .collect()
    }

    /// `uci export PACKAGE`, byte for byte.
    pub fn export(&self, package: &str) -> String {
        let mut out = format!("package {}\n", escape(package));
        for s in &self.sections {
            let _ = write!(out, "\nconfig {}", escape(&s.section_type));
            if !s.anonymous {
                let _ = write!(out, " '{}'", escape(&s.name));
            }
            out.push('\n');
            for o in &s.options {
                match &o.value {
                    Value::Single(v) => {
                        let _ = writeln!(out, "\toption {} '{}'", escape(&o.name), escape(v));
                    }
                    Value::List(items) => {
                        for (v, _) in items {
                            let _ = writeln!(out, "\tlist {} '{}'", escape(&o.name), escape(v));
                        }
                    }
                }
            }
        }
        out.push('\n');
        out
    }

    /// `uci show PACKAGE` (`extended`: `@type[n]` for anonymous sections, as by default) or
    /// `uci -X show PACKAGE` (generated `cfgNNHHHH` names), byte for byte.
    pub fn show(&self, package: &str, extended: bool) -> String {
        let refs = self.show_refs();
        let mut out = String::new();
        for (s, r) in self.sections.iter().zip(&refs) {
            let r = if extended { r } else { &s.name };
            let _ = writeln!(out, "{package}.{r}={}", s.section_type);
            for o in &s.options {
                let _ = write!(out, "{package}.{r}.{}=", o.name);
                match &o.value {
                    Value::Single(v) => out.push_str(&quote(v)),
                    Value::List(items) => {
                        let quoted: Vec<String> = items.iter().map(|(v, _)| quote(v)).collect();
                        out.push_str(&quoted.join(" "));
                    }
                }
                out.push('\n');
            }
        }
        out
    }

    /// `config TYPE [NAME]`, like `uci_parse_config` + `uci_set`/`uci_add_section`.
    fn apply_config(
        &mut self,
        section_type: &str,
        name: &str,
        line: u32,
    ) -> Result<Current, String> {
        if name.is_empty() {
            self.push_section(section_type, None, line);
            return Ok(Current::Section(self.sections.len() - 1));
        }
        let Some(idx) = self.sections.iter().position(|s| s.name == name) else {
            self.push_section(section_type, Some(name), line);
            return Ok(Current::Section(self.sections.len() - 1));
        };
        let s = &mut self.sections[idx];
        if s.section_type != section_type {
            return Err(format!(
                "section '{name}' was declared as '{}' on line {}; it cannot be redeclared as '{section_type}'",
                s.section_type, s.line
            ));
        }
        // uci_set's "update section" path returns the section only the first time it replaces
        // the type (when it moves the type out of the section's own allocation); later
        // redefinitions leave libuci without a current section.
        if s.retyped {
            Ok(Current::Lost(idx))
        } else {
            s.retyped = true;
            Ok(Current::Section(idx))
        }
    }

    fn push_section(&mut self, section_type: &str, name: Option<&str>, line: u32) {
        self.allocated += 1;
        let anonymous = name.is_none();
        let name = match name {
            Some(n) => n.to_owned(),
            // uci_fixup_section, run when the section has no options yet: a djb hash of the
            // type, prefixed by the section counter.
            None => format!(
                "cfg{:02x}{:04x}",
                self.allocated,
                djbhash(section_type.as_bytes()) % (1 << 16)
            ),
        };
        self.sections.push(Section {
            section_type: section_type.to_owned(),
            name,
            anonymous,
            line,
            options: Vec::new(),
            retyped: false,
        });
    }
}

impl Section {
    /// `option NAME VALUE`, like `uci_set` on an option.
    fn set_option(&mut self, name: &str, value: &str, line: u32) {
        // An empty value would delete the option, but the parser's pointer is never marked
        // complete, so uci_set returns before doing anything.
        if value.is_empty() {
            return;
        }
        if let Some(i) = self.options.iter().position(|o| o.name == name) {
            if self.options[i].value == Value::Single(value.to_owned()) {
                return;
            }
            self.options.remove(i);
        }
        self.options.push(UciOption {
            name: name.to_owned(),
            value: Value::Single(value.to_owned()),
            line,
        });
    }

    /// `list NAME VALUE`, like `uci_add_list`.
    fn add_list(&mut self, name: &str, value: &str, line: u32) {
        let mut items = Vec::new();
        if let Some(i) = self.options.iter().position(|o| o.name == name) {
            if let Value::List(existing) = &mut self.options[i].value {
                existing.push((value.to_owned(), line));
                self.options[i].line = line;
                return;
            }
            // A string option turns into a list that starts with the old value, at the end.
            let old = self.options.remove(i);
            if let Value::Single(v) = old.value {
                items.push((v, old.line));
            }
        }
        items.push((value.to_owned(), line));
        self.options.push(UciOption {
            name: name.to_owned(),
            value: Value::List(items),
            line,
        });
    }
}

/// libuci's `djbhash` over a string, as `char` is signed on the platforms OpenWrt targets
/// that matter here; types are printable ASCII, so the sign never comes into play.
fn djbhash(s: &[u8]) -> u32 {
    let mut hash: u32 = 5381;
    for &c in s {
        hash = (hash << 5).wrapping_add(hash).wrapping_add(c as i8 as u32);
    }
    hash & 0x7FFF_FFFF
}

/// `uci_escape`: single quotes become `'\''`.
fn escape(s: &str) -> String {
    s.replace('\'', "'\\''")
}

/// `uci_print_value`.
fn quote(s: &str) -> String {
    format!("'{}'", escape(s))
}

/// Where options go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Current {
    /// Before the first `config`.
    NoSection,
    /// Into this section.
    Section(usize),
    /// Nowhere: the section was defined a third time (libuci loses track of it).
    Lost(usize),
    /// Nowhere: the last `config` statement was invalid (already reported).
    Broken,
}

/// A parse error inside a statement.
struct LineError {
    line: u32,
    message: String,
    config_failed: bool,
}

/// libuci's `uci_parse_line`: one or more `;`-separated statements.
fn parse_line(lx: &mut Lexer, pkg: &mut Package, current: &mut Current) -> Result<(), LineError> {
    lx.skip_whitespace();
    loop {
        // strtok(cur, " \t"): skip delimiters, NUL-terminate the word at the next one.
        let mut start = lx.pos;
        while matches!(lx.at(start), b' ' | b'\t') {
            start += 1;
        }
        if lx.at(start) == 0 {
            return Ok(());
        }
        let mut end = start;
        while !matches!(lx.at(end), 0 | b' ' | b'\t') {
            end += 1;
        }
        lx.put(end, 0);
        let word = lx.buf[start..end].to_vec();
        let line = lx.phys_line;
        lx.stmt_line = line;
        let is = |short: u8, long: &[u8]| word == [short] || word == long;
        let result = if word[0] == b'#' {
            return Ok(());
        } else if is(b'p', b"package") {
            parse_package(lx)
        } else if is(b'c', b"config") {
            match parse_config(lx, pkg, line) {
                Ok(c) => {
                    *current = c;
                    Ok(())
                }
                Err(message) => {
                    return Err(LineError {
                        line,
                        message,
                        config_failed: true,
                    })
                }
            }
        } else if is(b'o', b"option") {
            parse_option(lx, pkg, *current, false, line)
        } else if is(b'l', b"list") {
            parse_option(lx, pkg, *current, true, line)
        } else {
            // strtok splits at blanks only, so a keyword alone on its line keeps its newline.
            let shown = String::from_utf8_lossy(&word).trim_end().to_owned();
            Err(match shown.as_str() {
                "c" | "config" => "'config' needs a section type".to_owned(),
                "o" | "option" => "'option' needs a name".to_owned(),
                "l" | "list" => "'list' needs a name".to_owned(),
                "p" | "package" => "'package' needs a name".to_owned(),
                _ => format!(
                    "unknown statement '{shown}' (expected config, option, list or package)"
                ),
            })
        };
        result.map_err(|message| LineError {
            line,
            config_failed: message.starts_with("'config'"),
            message,
        })?;
    }
}

fn parse_package(lx: &mut Lexer) -> Result<(), String> {
    lx.skip_command_word("'package' needs a name")?;
    let name = lx.next_arg(Some(Validate::Package))?;
    if name.is_empty() {
        return Err("'package' needs a name".into());
    }
    lx.assert_eol("package name")?;
    // Loading a file by name ignores `package` lines (uci_parse_package with single=true).
    Ok(())
}

fn parse_config(lx: &mut Lexer, pkg: &mut Package, line: u32) -> Result<Current, String> {
    lx.skip_command_word("'config' needs a section type")?;
    let section_type = lx.next_arg(None)?;
    if section_type.is_empty() {
        return Err("'config' needs a section type".into());
    }
    if !validate(section_type.as_bytes(), Validate::Type) {
        return Err(format!(
            "invalid section type '{section_type}' (printable characters without spaces or quotes only)"
        ));
    }
    let name = lx.next_arg(Some(Validate::Name))?;
    lx.assert_eol("section name")?;
    pkg.apply_config(&section_type, &name, line)
}

fn parse_option(
    lx: &mut Lexer,
    pkg: &mut Package,
    current: Current,
    list: bool,
    line: u32,
) -> Result<(), String> {
    let what = if list { "list" } else { "option" };
    match current {
        Current::NoSection => {
            return Err(format!(
                "'{what}' before the first 'config' line (options belong to a section)"
            ))
        }
        Current::Lost(idx) => {
            let name = pkg.sections.get(idx).map(|s| s.name.as_str()).unwrap_or("");
            return Err(format!(
                "'{what}' after the third 'config' line of section '{name}': uci cannot add options there, merge the definitions into one"
            ));
        }
        Current::Section(_) | Current::Broken => {}
    }
    lx.skip_command_word(&format!("'{what}' needs a name"))?;
    let name = lx.next_arg(Some(Validate::Name))?;
    if name.is_empty() {
        return Err(format!("'{what}' needs a name"));
    }
    let value = lx.next_arg(None)?;
    lx.assert_eol(&format!("{what} value"))?;
    if let Current::Section(idx) = current {
        if let Some(s) = pkg.sections.get_mut(idx) {
            if list {
                s.add_list(&name, &value, line);
            } else {
                s.set_option(&name, &value, line);
            }
        }
    }
    Ok(())
}

/// What a word must look like (`uci_validate_str`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Validate {
    /// Section and option names: letters, digits, `_`.
    Name,
    /// Section types: printable ASCII without space.
    Type,
    /// Package names: letters, digits, `_` and `-`.
    Package,
}

fn validate(s: &[u8], kind: Validate) -> bool {
    !s.is_empty()
        && s.iter().all(|&c| {
            c.is_ascii_alphanumeric()
                || c == b'_'
                || (kind == Validate::Package && c == b'-')
                || (kind == Validate::Type && (33..=126).contains(&c))
        })
}

/// C's `isspace` in the C locale.
fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// libuci's parse context: a line buffer read from the file, a position in it, and the C
/// string conventions (a 0 byte ends a string) the parser relies on.
struct Lexer<'a> {
    input: &'a [u8],
    /// Next unread byte of `input`.
    next: usize,
    /// The buffer; 0 bytes written into it end strings, as in C.
    buf: Vec<u8>,
    /// `buf_filled`: how far the last successful read filled the buffer.
    filled: usize,
    pos: usize,
    /// `feof()` of the stream.
    eof: bool,
    /// Physical lines read so far (the 1-based number of the latest one).
    phys_line: u32,
    /// Line of the last opening quote.
    quote_line: u32,
    /// Line of the statement being parsed.
    stmt_line: u32,
}

impl<'a> Lexer<'a> {
    fn new(input: &'a [u8]) -> Self {
        Lexer {
            input,
            next: 0,
            buf: Vec::new(),
            filled: 0,
            pos: 0,
            eof: false,
            phys_line: 0,
            quote_line: 0,
            stmt_line: 0,
        }
    }

    fn at(&self, i: usize) -> u8 {
        self.buf.get(i).copied().unwrap_or(0)
    }

    fn cur(&self) -> u8 {
        self.at(self.pos)
    }

    /// Writes a byte; writing the terminator at or past the end is a no-op, as the string
    /// already ends there.
    fn put(&mut self, i: usize, c: u8) {
        if let Some(b) = self.buf.get_mut(i) {
            *b = c;
        }
    }

    /// The C string starting at `i`.
    fn str_at(&self, i: usize) -> &[u8] {
        let rest = self.buf.get(i..).unwrap_or(&[]);
        let len = rest.iter().position(|&c| c == 0).unwrap_or(rest.len());
        &rest[..len]
    }

    /// `uci_getln`: reads the next line (with its newline) into the buffer at `offset`.
    fn getln(&mut self, offset: usize) {
        self.buf.truncate(offset);
        let rest = &self.input[self.next..];
        if rest.is_empty() {
            self.eof = true;
            return;
        }
        let len = rest
            .iter()
            .position(|&c| c == b'\n')
            .map_or(rest.len(), |i| i + 1);
        self.buf.extend_from_slice(&rest[..len]);
        self.next += len;
        self.filled = self.buf.len();
        self.phys_line += 1;
        if rest[len - 1] != b'\n' {
            self.eof = true;
        }
    }

    /// An unterminated quote swallowed the rest of the file: say where it started.
    fn unterminated(&self, quote: char) -> String {
        if self.quote_line == self.stmt_line {
            format!("unterminated {quote} quote (still open at the end of the file)")
        } else {
            format!(
                "unterminated {quote} quote: the quotes from line {} on do not pair up, the one on line {} stays open to the end of the file",
                self.stmt_line, self.quote_line
            )
        }
    }

    fn skip_whitespace(&mut self) {
        while self.cur() != 0 && is_space(self.cur()) {
            self.pos += 1;
        }
    }

    fn addc(&mut self, target: &mut usize) {
        let c = self.cur();
        self.put(*target, c);
        *target += 1;
        self.pos += 1;
    }

    /// Steps over the statement keyword that `parse_line` NUL-terminated
    /// (`uci_increase_pos(strlen(cur) + 1)`); fails when nothing follows it.
    fn skip_command_word(&mut self, message: &str) -> Result<(), String> {
        let add = self.str_at(self.pos).len() + 1;
        if self.pos + add > self.filled {
            return Err(message.to_owned());
        }
        self.pos += add;
        Ok(())
    }

    /// `parse_backslash`: true if the escaped character is to be taken literally, false
    /// when the backslash ended the line and the next line was appended in its place.
    fn parse_backslash(&mut self) -> bool {
        self.pos += 1;
        let c = self.cur();
        if c == 0
            || c == b'\n'
            || (c == b'\r' && self.at(self.pos + 1) == b'\n' && self.at(self.pos + 2) == 0)
        {
            self.getln(self.pos);
            return false;
        }
        true
    }

    fn parse_double_quote(&mut self, target: &mut usize) -> Result<(), String> {
        self.quote_line = self.phys_line;
        self.pos += 1;
        loop {
            match self.cur() {
                b'"' => {
                    self.pos += 1;
                    return Ok(());
                }
                0 => {
                    self.getln(self.pos);
                    if self.cur() == 0 {
                        return Err(self.unterminated('"'));
                    }
                }
                b'\\' => {
                    if self.parse_backslash() {
                        self.addc(target);
                    }
                }
                _ => self.addc(target),
            }
        }
    }

    fn parse_single_quote(&mut self, target: &mut usize) -> Result<(), String> {
        self.quote_line = self.phys_line;
        self.pos += 1;
        loop {
            match self.cur() {
                b'\'' => {
                    self.pos += 1;
                    return Ok(());
                }
                0 => {
                    self.getln(self.pos);
                    if self.cur() == 0 {
                        return Err(self.unterminated('\''));
                    }
                }
                _ => self.addc(target),
            }
        }
    }

    /// `parse_str`: one word made of quoted and unquoted pieces, unescaped into `target`.
    fn parse_str(&mut self, target: &mut usize) -> Result<(), String> {
        let mut next = true;
        loop {
            match self.cur() {
                b'\'' => self.parse_single_quote(target)?,
                b'"' => self.parse_double_quote(target)?,
                b'#' => {
                    self.put(self.pos, 0);
                    break;
                }
                0 => break,
                b';' => {
                    next = false;
                    break;
                }
                b'\\' => {
                    // A `continue` in C's do-while goes to the loop condition, as here.
                    if self.parse_backslash() {
                        self.addc(target);
                    }
                }
                _ => self.addc(target),
            }
            let c = self.cur();
            if c == 0 || is_space(c) {
                break;
            }
        }
        // An unquoted word that stopped at whitespace: skip it, the terminator goes there.
        if self.cur() != 0 && next {
            self.pos += 1;
        }
        self.put(*target, 0);
        Ok(())
    }

    /// `next_arg`: the next word, unescaped. An empty string means there was none.
    fn next_arg(&mut self, validate_as: Option<Validate>) -> Result<String, String> {
        self.skip_whitespace();
        let val = self.pos;
        if self.cur() == b';' {
            self.put(self.pos, 0);
            self.pos += 1;
        } else {
            let mut target = self.pos;
            self.parse_str(&mut target)?;
        }
        let word = self.str_at(val).to_vec();
        if word.is_empty() {
            // Callers of a required argument say what was missing.
            return Ok(String::new());
        }
        let text = String::from_utf8_lossy(&word).into_owned();
        if let Some(kind) = validate_as {
            if !validate(&word, kind) {
                return Err(match kind {
                    Validate::Package => format!("invalid package name '{text}'"),
                    _ => format!("invalid name '{text}' (letters, digits and _ only)"),
                });
            }
        }
        Ok(text)
    }

    /// `assert_eol` in strict mode: nothing may follow the last argument.
    fn assert_eol(&mut self, after: &str) -> Result<(), String> {
        self.skip_whitespace();
        let extra = self.next_arg(None)?;
        if extra.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "unexpected '{extra}' after the {after} (quote values that contain spaces)"
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Package {
        let (pkg, errors) = parse(text);
        assert!(errors.is_empty(), "{text:?}: {errors:?}");
        pkg
    }

    fn first_error(text: &str) -> (u32, String) {
        let (_, errors) = parse(text);
        let e = errors.first().cloned();
        let e = e.unwrap_or_else(|| panic!("{text:?} parsed without errors"));
        (e.line, e.message)
    }

    #[test]
    fn quoting_and_escapes() {
        let pkg = ok("config t 's'\n\toption a 'it'\\''s'\n\toption b \"x \\\"y\\\" \\\\\"\n\toption c un\\ quoted\n\toption d 'a'\"b\"c # comment\n");
        assert_eq!(
            pkg.show("p", true),
            "p.s=t\np.s.a='it'\\''s'\np.s.b='x \"y\" \\'\np.s.c='un quoted'\np.s.d='abc'\n"
        );
    }

    #[test]
    fn export_format() {
        let pkg = ok(
            "config interface 'wan'\n option device eth0\n list ip a\n list ip b\nconfig circuit\n",
        );
        assert_eq!(
            pkg.export("bpfqos"),
            "package bpfqos\n\nconfig interface 'wan'\n\toption device 'eth0'\n\tlist ip 'a'\n\tlist ip 'b'\n\nconfig circuit\n\n"
        );
    }

    #[test]
    fn show_refs_count_named_sections_of_the_type() {
        let pkg =
            ok("config interface 'wan'\nconfig interface\nconfig circuit\nconfig interface\n");
        assert_eq!(
            pkg.show_refs(),
            ["wan", "@interface[1]", "@circuit[0]", "@interface[2]"]
        );
    }

    #[test]
    fn anonymous_names_like_libuci() {
        // Values taken from `uci -X show` of the same input.
        let pkg = ok("config interface 'wan'\nconfig circuit\nconfig interface\n");
        assert_eq!(pkg.sections[1].name, "cfg02f8b8");
        assert_eq!(pkg.sections[2].name, "cfg036d96");
        // A later `config` naming it adds to the anonymous section.
        let pkg =
            ok("config interface 'wan'\nconfig circuit\nconfig circuit 'cfg02f8b8'\noption x y\n");
        assert_eq!(pkg.sections.len(), 2);
        assert!(pkg.sections[1].anonymous);
        assert_eq!(pkg.sections[1].options[0].name, "x");
    }

    #[test]
    fn option_semantics() {
        let pkg = ok("config t 's'\noption a 1\noption b 2\noption a 3\noption b 2\noption c ''\nlist d x\noption e 1\nlist e 2\nlist f 1\noption f 2\n");
        let s = &pkg.sections[0];
        let names: Vec<&str> = s.options.iter().map(|o| o.name.as_str()).collect();
        // Re-setting a changed value moves it to the end; an unchanged one stays; an empty
        // value is ignored; list after option converts (at the end), option after list replaces.
        assert_eq!(names, ["b", "a", "d", "e", "f"]);
        assert_eq!(
            s.options[3].value,
            Value::List(vec![("1".into(), 8), ("2".into(), 9)])
        );
        assert_eq!(s.options[4].value, Value::Single("2".into()));
        assert_eq!(s.options[4].line, 11);
    }

    #[test]
    fn semicolons_like_libuci() {
        // After a quoted word `;` starts a new statement; right after an unquoted word the
        // rest of the line is lost (the word's terminator overwrites the `;`).
        let pkg = ok("config t 'a';option x 1\nconfig t b;option y 2\n");
        assert_eq!(pkg.sections[0].options.len(), 1);
        assert!(pkg.sections[1].options.is_empty());
    }

    #[test]
    fn continuation_and_multiline_values() {
        let pkg = ok("config t 's'\noption a \"x\\\ny\"\noption b 'l1\nl2'\noption c p\\\nq\n");
        let v: Vec<&Value> = pkg.sections[0].options.iter().map(|o| &o.value).collect();
        assert_eq!(
            v,
            [
                &Value::Single("xy".into()),
                &Value::Single("l1\nl2".into()),
                &Value::Single("pq".into())
            ]
        );
    }

    #[test]
    fn syntax_errors_name_the_statement_line() {
        assert_eq!(first_error("\n\noption a b\n").0, 3);
        assert_eq!(
            first_error("config t 's'\noption a b c\n"),
            (
                2,
                "unexpected 'c' after the option value (quote values that contain spaces)".into()
            )
        );
        assert_eq!(
            first_error("config t 's'\noption a 'b\n\n"),
            (
                2,
                "unterminated ' quote (still open at the end of the file)".into()
            )
        );
        assert_eq!(
            first_error("config t s-1\n").1,
            "invalid name 's-1' (letters, digits and _ only)"
        );
        assert_eq!(first_error("config\n").1, "'config' needs a section type");
        assert_eq!(
            first_error("config t 's'\noption\n").1,
            "'option' needs a name"
        );
        assert_eq!(first_error("package\n").1, "'package' needs a name");
        assert_eq!(first_error("config t 's'\nconfig u 's'\n").0, 2);
        // All errors, each once: options of a broken section are not reported again.
        let (_, errors) = parse("config 'a b'\noption x y\nconfig t\nfoo\n");
        let lines: Vec<u32> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, [1, 4]);
    }

    #[test]
    fn third_definition_loses_the_section_like_libuci() {
        let text = "config t 's'\nconfig t 's'\noption a 1\nconfig t 's'\n";
        assert!(parse(text).1.is_empty());
        assert_eq!(first_error(&format!("{text}option b 2\n")).0, 5);
    }
}
