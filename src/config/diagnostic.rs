//! Errors and warnings about a config file, each pointing at a file, line, section and option.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

/// One problem found in the config: where it is and what is wrong.
///
/// Displays as one line, e.g.
/// `/etc/config/bpfqos:12: interface 'wan': option upload: expected kbit/s integer, got '40M'`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// The config file.
    pub file: PathBuf,
    /// 1-based line of the statement at fault; `None` for problems with the whole file.
    pub line: Option<u32>,
    /// The section at fault, if any.
    pub section: Option<SectionRef>,
    /// The option at fault, if any.
    pub option: Option<String>,
    /// What is wrong (and, where it helps, what to do).
    pub message: String,
}

/// How a section is named to a user: `interface 'wan'`, or `circuit @circuit[2]` for an
/// anonymous one (the index `uci show` prints).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SectionRef {
    /// Section type.
    pub section_type: String,
    /// Section name; `None` for anonymous sections.
    pub name: Option<String>,
    /// The `uci show` reference: the name, or `@type[n]`.
    pub reference: String,
}

impl fmt::Display for SectionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(name) => write!(f, "{} '{name}'", self.section_type),
            None => write!(f, "{} {}", self.section_type, self.reference),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        f.write_str(": ")?;
        if let Some(section) = &self.section {
            write!(f, "{section}: ")?;
        }
        if let Some(option) = &self.option {
            write!(f, "option {option}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// All errors found in a config file (never empty). Displays one error per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<Diagnostic>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diag(section: Option<SectionRef>, option: Option<&str>) -> Diagnostic {
        Diagnostic {
            file: PathBuf::from("/etc/config/bpfqos"),
            line: Some(12),
            section,
            option: option.map(str::to_owned),
            message: "expected kbit/s integer, got '40M'".into(),
        }
    }

    #[test]
    fn display_named_section_option() {
        let s = SectionRef {
            section_type: "interface".into(),
            name: Some("wan".into()),
            reference: "wan".into(),
        };
        assert_eq!(
            diag(Some(s), Some("upload")).to_string(),
            "/etc/config/bpfqos:12: interface 'wan': option upload: expected kbit/s integer, got '40M'"
        );
    }

    #[test]
    fn display_anonymous_section_and_file_level() {
        let s = SectionRef {
            section_type: "circuit".into(),
            name: None,
            reference: "@circuit[2]".into(),
        };
        assert_eq!(
            diag(Some(s), None).to_string(),
            "/etc/config/bpfqos:12: circuit @circuit[2]: expected kbit/s integer, got '40M'"
        );
        let mut d = diag(None, None);
        d.line = None;
        d.message = "file not found".into();
        assert_eq!(d.to_string(), "/etc/config/bpfqos: file not found");
        let two = ConfigErrors(vec![d.clone(), d]);
        assert_eq!(two.to_string().lines().count(), 2);
    }
}
