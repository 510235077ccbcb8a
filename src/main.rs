//! bpfqos: XDP/TC flow offload, shaping, passive latency monitoring and autorate for routers.
//!
//! One binary: the daemon (`bpfqos daemon`, started by procd) and its clients (`status`, `reload`,
//! `check-config`, and the rpcd exec plugin behind `ubus call bpfqos ...`).

mod cli;
mod config;
mod conntrack;
mod control;
mod daemon;
mod dataplane;
mod logger;
mod offload;
mod rpcd;
mod status;
mod topology;

use std::io::Write;
use std::process::ExitCode;

use log::error;
use log::LevelFilter;

use crate::cli::Command;
use crate::control::ClientError;
use crate::control::Request;
use crate::status::Status;

fn main() -> ExitCode {
    logger::init(LevelFilter::Info);
    let command = match cli::parse(std::env::args().skip(1)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bpfqos: {e}\n\n{}", cli::USAGE);
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Version => {
            println!("bpfqos {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Help => {
            print!("{}", cli::USAGE);
            ExitCode::SUCCESS
        }
        Command::Daemon(args) => match daemon::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                error!("{e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Status { json, socket } => match control::request(&socket, &Request::Status) {
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
        },
        Command::Reload { socket } => match control::request(&socket, &Request::Reload) {
            Ok(_) => print_line("configuration reloaded"),
            Err(e) => client_failure(false, &e),
        },
        Command::CheckConfig { config_dir } => match config::load(&config_dir) {
            Ok(loaded) => {
                for w in &loaded.warnings {
                    eprintln!("warning: {w}");
                }
                // Logical networks are resolved when the daemon applies the config; say now
                // what they resolve to (the network may be configured later: not an error).
                for i in loaded
                    .config
                    .interfaces
                    .iter()
                    .filter(|i| i.device.is_none())
                {
                    let net = i.network.as_deref().unwrap_or_default();
                    match config::network::interface_device(i, &config_dir) {
                        Ok(dev) => {
                            println!("interface '{}': network '{net}' is device '{dev}'", i.name)
                        }
                        Err(e) => eprintln!("warning: interface '{}': {e}", i.name),
                    }
                }
                print_line(&format!(
                    "{}: configuration is valid",
                    config_dir.join("bpfqos").display()
                ))
            }
            Err(errors) => {
                for d in &errors.0 {
                    eprintln!("{d}");
                }
                ExitCode::FAILURE
            }
        },
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
