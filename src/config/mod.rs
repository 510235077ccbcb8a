//! UCI configuration (`/etc/config/bpfqos`): parsing and validation into typed settings.
//!
//! Two layers:
//! - [`uci`] reads the UCI file format exactly as libuci does: `config TYPE ['NAME']`,
//!   `option NAME 'VALUE'`, `list NAME 'VALUE'`, `package NAME`, single and double quotes,
//!   backslash escapes and line continuations, unquoted words, `#` comments, `;` between
//!   statements, and libuci's rules for redefined sections and options. It is checked against
//!   the real `uci` CLI (built by `tests/tools/build-uci.sh`) by `tests/config_oracle.rs`.
//! - [`model`] turns the parsed file into a typed [`Config`] and validates it: every error is
//!   collected (with file, line, section and option), unknown section types and options are
//!   warnings.
//!
//! Why a parser of our own rather than a crate: `libuci-sys`/`rust-uci` bind the C library
//! (one more C dependency to cross-compile for every OpenWrt target, and libuci stops at the
//! first error and cannot say which option of which section is wrong). `uci_rs` 0.1.2, the pure
//! Rust parser, reads a different language than libuci (from its lexer source): a newline inside
//! quotes is an error (libuci allows multi-line values), `;` is not a separator, `'a'"b"`
//! concatenation and the short keywords `c`/`o`/`l`/`p` are unknown, a last line without newline
//! ends in an "unterminated unquoted string" error, and it `unwrap()`s on input. The file format
//! is small; an exact emulation proven against the real tool is less code than working around
//! either.
//!
//! Decisions worth knowing (see docs/config.md for the user-facing reference):
//! - A syntax error fails the whole file, as `uci` does in its default strict mode.
//! - Circuit prefixes with host bits set (`192.168.1.5/24`) are errors, like in `ip route`.
//! - Prefixes of different circuits must not overlap; inside one circuit, overlap is a warning.

mod diagnostic;
mod model;
pub mod network;
mod prefix;
pub mod uci;

use std::path::Path;

pub use diagnostic::ConfigErrors;
pub use diagnostic::Diagnostic;
pub use diagnostic::SectionRef;
pub use model::parse_cpu_list;
pub use model::Circuit;
pub use model::Config;
pub use model::Diffserv;
pub use model::Globals;
pub use model::Interface;
pub use model::LinkLayer;
pub use model::Qdisc;
pub use model::Steering;
pub use model::OPTIONS;
pub use model::STEERING_MAX_CPU;
pub use model::STEERING_QUEUE;
pub use prefix::IpPrefix;

/// The name of our config file (UCI package) inside the config directory.
pub const PACKAGE: &str = "bpfqos";

/// A valid configuration and the warnings found on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// The configuration.
    pub config: Config,
    /// Non-fatal findings (unknown options, unknown sections, ...).
    pub warnings: Vec<Diagnostic>,
}

/// Reads and validates `<config_dir>/bpfqos`.
pub fn load(config_dir: &Path) -> Result<Loaded, ConfigErrors> {
    let path = config_dir.join(PACKAGE);
    let file_error = |message: String| {
        ConfigErrors(vec![Diagnostic {
            file: path.clone(),
            line: None,
            section: None,
            option: None,
            message,
        }])
    };
    let bytes = std::fs::read(&path).map_err(|e| {
        file_error(match e.kind() {
            std::io::ErrorKind::NotFound => "file not found".to_owned(),
            _ => format!("cannot read: {e}"),
        })
    })?;
    match String::from_utf8(bytes) {
        Ok(text) => parse_str(&path, &text),
        Err(e) => {
            let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            let line = valid.iter().filter(|&&c| c == b'\n').count() + 1;
            Err(ConfigErrors(vec![Diagnostic {
                file: path.clone(),
                line: u32::try_from(line).ok(),
                section: None,
                option: None,
                message: "not valid UTF-8 text".to_owned(),
            }]))
        }
    }
}

/// Parses and validates config text; `path_for_messages` is the file name diagnostics show.
pub fn parse_str(path_for_messages: &Path, text: &str) -> Result<Loaded, ConfigErrors> {
    let diag = |line: u32, message: String| Diagnostic {
        file: path_for_messages.to_path_buf(),
        line: Some(line),
        section: None,
        option: None,
        message,
    };
    // libuci reads C strings: a NUL byte would silently cut a line short.
    if let Some(at) = text.find('\0') {
        let line = text[..at].matches('\n').count() + 1;
        return Err(ConfigErrors(vec![diag(
            u32::try_from(line).unwrap_or(u32::MAX),
            "contains a NUL byte".to_owned(),
        )]));
    }
    let (package, syntax) = uci::parse(text);
    if !syntax.is_empty() {
        return Err(ConfigErrors(
            syntax
                .into_iter()
                .map(|e| diag(e.line, e.message))
                .collect(),
        ));
    }
    let (config, errors, warnings) = model::build(path_for_messages, &package);
    if errors.is_empty() {
        Ok(Loaded { config, warnings })
    } else {
        Err(ConfigErrors(errors))
    }
}
