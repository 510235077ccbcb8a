//! What each command does: the daemon, or a client of its control socket (`status`, `reload`,
//! the rpcd plugin), or an offline check of the configuration.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use log::error;

use crate::cli::Command;
use crate::config;
use crate::control;
use crate::control::ClientError;
use crate::control::Request;
use crate::daemon;
use crate::rpcd;
use crate::status::Status;

/// Runs `command` to completion and says how it went.
pub fn run(command: Command) -> ExitCode {
    match command {
        Command::Version => print_line(&format!("bpfqos {}", env!("CARGO_PKG_VERSION"))),
        Command::Help => {
            print!("{}", crate::cli::USAGE);
            ExitCode::SUCCESS
        }
        Command::Daemon(args) => match daemon::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                error!("{e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Status { json, socket } => status(json, &socket),
        Command::Reload { socket } => match control::request(&socket, &Request::Reload) {
            Ok(_) => print_line("configuration reloaded"),
            Err(e) => client_failure(false, &e),
        },
        Command::CheckConfig { config_dir } => check_config(&config_dir),
        Command::RpcdList => print_line(&rpcd::list().to_string()),
        Command::RpcdCall {
            method,
            socket,
            config_dir,
        } => print_line(
            &rpcd::call(&method, &mut std::io::stdin().lock(), &socket, &config_dir).to_string(),
        ),
    }
}

/// `bpfqos status [--json]`: the daemon's document as it is, or rendered for people.
fn status(json: bool, socket: &Path) -> ExitCode {
    match control::request(socket, &Request::Status) {
        Ok(v) if json => print_line(&v.to_string()),
        Ok(v) => match serde_json::from_value::<Status>(v) {
            Ok(st) => {
                print!("{}", st.render());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("bpfqos: unexpected status document: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => client_failure(json, &e),
    }
}

/// `bpfqos check-config`: every error and warning, and what logical networks resolve to now.
fn check_config(config_dir: &Path) -> ExitCode {
    let loaded = match config::load(config_dir) {
        Ok(loaded) => loaded,
        Err(errors) => {
            for d in &errors.0 {
                eprintln!("{d}");
            }
            return ExitCode::FAILURE;
        }
    };
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    // Logical networks are resolved when the daemon applies the config; say now what they
    // resolve to (the network may be configured later: not an error).
    for i in loaded
        .config
        .interfaces
        .iter()
        .filter(|i| i.device.is_none())
    {
        let net = i.network.as_deref().unwrap_or_default();
        match config::network::interface_device(i, config_dir) {
            Ok(dev) => println!("interface '{}': network '{net}' is device '{dev}'", i.name),
            Err(e) => eprintln!("warning: interface '{}': {e}", i.name),
        }
    }
    print_line(&format!(
        "{}: configuration is valid",
        config_dir.join(config::PACKAGE).display()
    ))
}

fn print_line(s: &str) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{s}") {
        Ok(()) => ExitCode::SUCCESS,
        // Stdout closed (e.g. `| head`): nothing more to say.
        Err(_) => ExitCode::FAILURE,
    }
}

fn client_failure(json: bool, e: &ClientError) -> ExitCode {
    if json {
        let running = !matches!(e, ClientError::NotRunning { .. });
        print_line(&serde_json::json!({"error": e.to_string(), "running": running}).to_string());
    } else {
        eprintln!("bpfqos: {e}");
    }
    ExitCode::FAILURE
}
