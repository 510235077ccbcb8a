//! The `bpfqos` binary: the daemon (`bpfqos daemon`, started by procd) and its clients (`status`,
//! `reload`, `check-config`, and the rpcd exec plugin behind `ubus call bpfqos ...`). Everything
//! lives in the library; this only reads the command line.

use std::process::ExitCode;

use bpfqos::cli;
use bpfqos::commands;
use bpfqos::logger;
use log::LevelFilter;

fn main() -> ExitCode {
    logger::init(LevelFilter::Info);
    match cli::parse(std::env::args().skip(1)) {
        Ok(command) => commands::run(command),
        Err(e) => {
            eprintln!("bpfqos: {e}\n\n{}", cli::USAGE);
            ExitCode::from(2)
        }
    }
}
