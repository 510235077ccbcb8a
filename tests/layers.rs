//! The module graph has no upward arrow: every top-level module of `src/` imports (`crate::x`)
//! only modules of a lower layer, in the order docs/ARCHITECTURE.md gives. A new module must
//! be placed in [`LAYERS`], which is how the document and the code stay in step.

use std::collections::BTreeSet;
use std::path::Path;
use std::path::PathBuf;

/// Lowest first; a module may use any module before it.
const LAYERS: &[&str] = &[
    "logger",
    "cli",
    "nl",
    "config",
    "topology",
    "conntrack",
    "dataplane",
    "interfaces",
    "steering",
    "rtt",
    "qos",
    "autorate",
    "offload",
    "status",
    "control",
    "rpcd",
    "daemon",
    "commands",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The `crate::<module>` names `text` mentions.
fn crate_refs(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("crate::") {
        // `bpfqos::crate::` cannot occur; skip identifiers that merely end in "crate".
        if text[..i]
            .chars()
            .last()
            .is_some_and(|c| c.is_alphanumeric() || c == '_')
        {
            continue;
        }
        let name: String = text[i + "crate::".len()..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        out.insert(name);
    }
    out
}

#[test]
fn no_module_imports_one_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for (rank, module) in LAYERS.iter().enumerate() {
        let mut files = Vec::new();
        let file = src.join(format!("{module}.rs"));
        if file.is_file() {
            files.push(file);
        }
        rust_files(&src.join(module), &mut files);
        assert!(!files.is_empty(), "module {module} of LAYERS not found");
        for f in &files {
            let text = std::fs::read_to_string(f).unwrap_or_default();
            for used in crate_refs(&text) {
                match LAYERS.iter().position(|m| *m == used) {
                    Some(r) if r > rank => problems.push(format!(
                        "{}: {module} uses crate::{used}, a higher layer",
                        f.display()
                    )),
                    Some(_) => {}
                    None => {
                        problems.push(format!("{}: crate::{used} is not in LAYERS", f.display()))
                    }
                }
            }
        }
        seen.insert(module.to_string());
    }
    // Every top-level module is placed.
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap_or_default();
    for line in lib.lines() {
        if let Some(m) = line.strip_prefix("pub mod ") {
            let m = m.trim_end_matches(';');
            if !seen.contains(m) {
                problems.push(format!("src/lib.rs: module {m} is not in LAYERS"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_check_sees_an_upward_arrow() {
    let refs = crate_refs("use crate::daemon::Daemon;\nlet x = my_crate::foo; crate::status::X");
    assert_eq!(
        refs.into_iter().collect::<Vec<_>>(),
        vec!["daemon".to_string(), "status".to_string()]
    );
}
