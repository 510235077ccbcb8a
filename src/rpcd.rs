//! The rpcd exec-plugin contract: `/usr/libexec/rpcd/bpfqos` runs `bpfqos rpcd list` once to learn
//! the methods, and `bpfqos rpcd call <method>` with the JSON arguments on stdin for each ubus
//! call. Every answer is exactly one JSON object on stdout; failures are reported inside it
//! (`{"error": "..."}`) because rpcd turns anything else into an opaque ubus error.

use std::io::Read;
use std::path::Path;

use serde_json::json;
use serde_json::Value;

use crate::config;
use crate::control;
use crate::control::Request;

/// The methods and their argument signatures, as rpcd wants them from `list`.
pub fn list() -> Value {
    json!({
        "status": {},
        "reload": {},
        "check_config": {},
    })
}

/// Runs one method; `stdin` carries the (possibly empty) JSON arguments.
pub fn call(method: &str, stdin: &mut dyn Read, socket: &Path, config_dir: &Path) -> Value {
    let mut input = String::new();
    if let Err(e) = stdin.take(1 << 20).read_to_string(&mut input) {
        return json!({ "error": format!("reading arguments: {e}") });
    }
    if !input.trim().is_empty() {
        if let Err(e) = serde_json::from_str::<Value>(&input) {
            return json!({ "error": format!("arguments are not JSON: {e}") });
        }
    }
    match method {
        "status" => match control::request(socket, &Request::Status) {
            Ok(v) => v,
            Err(e) => json!({ "error": e.to_string(), "running": false }),
        },
        "reload" => match control::request(socket, &Request::Reload) {
            Ok(_) => json!({ "reloaded": true }),
            Err(e) => json!({ "reloaded": false, "error": e.to_string() }),
        },
        "check_config" => match config::load(config_dir) {
            Ok(loaded) => json!({
                "valid": true,
                "errors": [],
                "warnings": loaded.warnings.iter().map(|w| w.to_string()).collect::<Vec<_>>(),
            }),
            Err(e) => json!({
                "valid": false,
                "errors": e.0.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
                "warnings": [],
            }),
        },
        other => json!({ "error": format!("unknown method '{other}'") }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_names_every_method() {
        let v = list();
        for m in ["status", "reload", "check_config"] {
            assert!(v.get(m).is_some_and(Value::is_object), "{m}");
        }
    }

    #[test]
    fn status_without_daemon_is_a_json_error() {
        let v = call(
            "status",
            &mut std::io::empty(),
            Path::new("/nonexistent/bpfqos.sock"),
            Path::new("/nonexistent"),
        );
        assert_eq!(v["running"], false);
        assert!(v["error"]
            .as_str()
            .is_some_and(|e| e.contains("not running")));
    }

    #[test]
    fn bad_arguments_and_methods_are_reported() {
        let v = call(
            "status",
            &mut "{nope".as_bytes(),
            Path::new("/x"),
            Path::new("/x"),
        );
        assert!(v["error"].as_str().is_some_and(|e| e.contains("not JSON")));
        let v = call(
            "frob",
            &mut std::io::empty(),
            Path::new("/x"),
            Path::new("/x"),
        );
        assert_eq!(v["error"], "unknown method 'frob'");
    }
}
