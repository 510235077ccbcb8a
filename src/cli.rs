//! Command-line parsing.
//!
//! Hand-written rather than clap: the grammar is small and clap would add several hundred KiB to a
//! binary that has to fit next to the rest of an OpenWrt image.

use std::path::PathBuf;

use thiserror::Error;

/// Default directory holding the UCI file `bpfqos`.
pub const DEFAULT_CONFIG_DIR: &str = "/etc/config";
/// Default path of the daemon's control socket.
pub const DEFAULT_SOCKET: &str = "/var/run/bpfqos.sock";
/// Default bpffs directory for pinned maps.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/bpfqos";

/// What the user asked for.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// Run the daemon in the foreground.
    Daemon(DaemonArgs),
    /// Print the daemon's status.
    Status {
        /// Print JSON instead of a table.
        json: bool,
        /// Control socket to ask.
        socket: PathBuf,
    },
    /// Ask the running daemon to reload its configuration.
    Reload {
        /// Control socket to ask.
        socket: PathBuf,
    },
    /// Validate the configuration and print every problem.
    CheckConfig {
        /// Directory holding the `bpfqos` UCI file.
        config_dir: PathBuf,
    },
    /// rpcd exec plugin: `list`.
    RpcdList,
    /// rpcd exec plugin: `call <method>`.
    RpcdCall {
        /// The ubus method name.
        method: String,
        /// Control socket to ask.
        socket: PathBuf,
        /// Directory holding the `bpfqos` UCI file (for `check_config`).
        config_dir: PathBuf,
    },
    /// Print the version.
    Version,
    /// Print usage.
    Help,
}

/// Arguments of `bpfqos daemon`.
#[derive(Debug, PartialEq, Eq)]
pub struct DaemonArgs {
    /// Directory holding the `bpfqos` UCI file.
    pub config_dir: PathBuf,
    /// Control socket path.
    pub socket: PathBuf,
    /// bpffs pin directory.
    pub pin_dir: PathBuf,
    /// Leave programs attached and maps pinned on exit (for restarts without a gap).
    pub keep: bool,
}

/// A command line that does not parse.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum UsageError {
    /// No subcommand given.
    #[error("missing command")]
    MissingCommand,
    /// Subcommand not known.
    #[error("unknown command '{0}'")]
    UnknownCommand(String),
    /// Option not valid for the subcommand.
    #[error("{command}: unknown option '{option}'")]
    UnknownOption {
        /// The subcommand.
        command: String,
        /// The offending option.
        option: String,
    },
    /// Option that needs a value had none.
    #[error("{command}: option '{option}' needs a value")]
    MissingValue {
        /// The subcommand.
        command: String,
        /// The option.
        option: String,
    },
    /// Positional argument missing or extra.
    #[error("{0}")]
    Positional(String),
}

/// The usage text printed by `--help` and on errors.
pub const USAGE: &str = "\
usage: bpfqos <command> [options]

commands:
  daemon        [--config-dir DIR] [--socket PATH] [--pin-dir DIR] [--keep]
                run in the foreground (procd starts it); --keep leaves programs attached
                and maps pinned on exit so a restart does not interrupt offload
  status        [--json] [--socket PATH]     show attach points, flows, counters
  reload        [--socket PATH]              reload /etc/config/bpfqos in the daemon
  check-config  [--config-dir DIR]           validate the configuration, print every error
  rpcd list | rpcd call <method>             rpcd exec plugin (ubus object 'bpfqos')
  --version, --help
";

/// Splits `--opt=value` and `--opt value` forms.
struct Args {
    command: String,
    rest: std::vec::IntoIter<String>,
}

impl Args {
    fn next_option(&mut self) -> Option<(String, Option<String>)> {
        let arg = self.rest.next()?;
        match arg.split_once('=') {
            Some((k, v)) if k.starts_with("--") => Some((k.to_string(), Some(v.to_string()))),
            _ => Some((arg, None)),
        }
    }

    fn value(&mut self, option: &str, inline: Option<String>) -> Result<PathBuf, UsageError> {
        inline
            .or_else(|| self.rest.next())
            .map(PathBuf::from)
            .ok_or_else(|| UsageError::MissingValue {
                command: self.command.clone(),
                option: option.to_string(),
            })
    }

    fn unknown(&self, option: String) -> UsageError {
        UsageError::UnknownOption {
            command: self.command.clone(),
            option,
        }
    }
}

/// Parses `argv[1..]`.
pub fn parse(argv: impl IntoIterator<Item = String>) -> Result<Command, UsageError> {
    let mut it = argv.into_iter();
    let command = it.next().ok_or(UsageError::MissingCommand)?;
    let mut args = Args {
        command: command.clone(),
        rest: it.collect::<Vec<_>>().into_iter(),
    };
    match command.as_str() {
        "--version" | "-V" | "version" => Ok(Command::Version),
        "--help" | "-h" | "help" => Ok(Command::Help),
        "daemon" => parse_daemon(&mut args),
        "status" => parse_status(&mut args),
        "reload" => parse_reload(&mut args),
        "check-config" => parse_check_config(&mut args),
        "rpcd" => parse_rpcd(&mut args),
        other => Err(UsageError::UnknownCommand(other.to_string())),
    }
}

fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_SOCKET)
}

fn default_config_dir() -> PathBuf {
    PathBuf::from(DEFAULT_CONFIG_DIR)
}

fn parse_daemon(args: &mut Args) -> Result<Command, UsageError> {
    let mut d = DaemonArgs {
        config_dir: default_config_dir(),
        socket: default_socket(),
        pin_dir: PathBuf::from(DEFAULT_PIN_DIR),
        keep: false,
    };
    while let Some((opt, inline)) = args.next_option() {
        match opt.as_str() {
            "--config-dir" => d.config_dir = args.value(&opt, inline)?,
            "--socket" => d.socket = args.value(&opt, inline)?,
            "--pin-dir" => d.pin_dir = args.value(&opt, inline)?,
            "--keep" => d.keep = true,
            _ => return Err(args.unknown(opt)),
        }
    }
    Ok(Command::Daemon(d))
}

fn parse_status(args: &mut Args) -> Result<Command, UsageError> {
    let (mut json, mut socket) = (false, default_socket());
    while let Some((opt, inline)) = args.next_option() {
        match opt.as_str() {
            "--json" | "-j" => json = true,
            "--socket" => socket = args.value(&opt, inline)?,
            _ => return Err(args.unknown(opt)),
        }
    }
    Ok(Command::Status { json, socket })
}

fn parse_reload(args: &mut Args) -> Result<Command, UsageError> {
    let mut socket = default_socket();
    while let Some((opt, inline)) = args.next_option() {
        match opt.as_str() {
            "--socket" => socket = args.value(&opt, inline)?,
            _ => return Err(args.unknown(opt)),
        }
    }
    Ok(Command::Reload { socket })
}

fn parse_check_config(args: &mut Args) -> Result<Command, UsageError> {
    let mut config_dir = default_config_dir();
    while let Some((opt, inline)) = args.next_option() {
        match opt.as_str() {
            "--config-dir" => config_dir = args.value(&opt, inline)?,
            _ => return Err(args.unknown(opt)),
        }
    }
    Ok(Command::CheckConfig { config_dir })
}

/// `rpcd list` or `rpcd call <method>`, as rpcd runs exec plugins.
fn parse_rpcd(args: &mut Args) -> Result<Command, UsageError> {
    let method = match args.rest.next().as_deref() {
        Some("list") => None,
        Some("call") => Some(
            args.rest
                .next()
                .ok_or_else(|| UsageError::Positional("rpcd call: missing method".to_string()))?,
        ),
        _ => {
            return Err(UsageError::Positional(
                "rpcd: expected 'list' or 'call <method>'".to_string(),
            ))
        }
    };
    let (mut socket, mut config_dir) = (default_socket(), default_config_dir());
    while let Some((opt, inline)) = args.next_option() {
        match opt.as_str() {
            "--socket" => socket = args.value(&opt, inline)?,
            "--config-dir" => config_dir = args.value(&opt, inline)?,
            _ => return Err(args.unknown(opt)),
        }
    }
    Ok(match method {
        None => Command::RpcdList,
        Some(method) => Command::RpcdCall {
            method,
            socket,
            config_dir,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Command, UsageError> {
        parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn daemon_defaults_and_overrides() {
        assert_eq!(
            p(&["daemon"]),
            Ok(Command::Daemon(DaemonArgs {
                config_dir: DEFAULT_CONFIG_DIR.into(),
                socket: DEFAULT_SOCKET.into(),
                pin_dir: DEFAULT_PIN_DIR.into(),
                keep: false,
            }))
        );
        assert_eq!(
            p(&[
                "daemon",
                "--config-dir",
                "/tmp/c",
                "--socket=/tmp/s",
                "--pin-dir",
                "/p",
                "--keep"
            ]),
            Ok(Command::Daemon(DaemonArgs {
                config_dir: "/tmp/c".into(),
                socket: "/tmp/s".into(),
                pin_dir: "/p".into(),
                keep: true,
            }))
        );
    }

    #[test]
    fn errors_name_command_and_option() {
        assert_eq!(
            p(&["status", "--bogus"]).map_err(|e| e.to_string()),
            Err("status: unknown option '--bogus'".to_string())
        );
        assert_eq!(
            p(&["daemon", "--socket"]).map_err(|e| e.to_string()),
            Err("daemon: option '--socket' needs a value".to_string())
        );
        assert_eq!(p(&[]), Err(UsageError::MissingCommand));
        assert!(matches!(
            p(&["frobnicate"]),
            Err(UsageError::UnknownCommand(_))
        ));
        assert!(matches!(
            p(&["rpcd", "call"]),
            Err(UsageError::Positional(_))
        ));
    }

    #[test]
    fn rpcd_forms() {
        assert_eq!(p(&["rpcd", "list"]), Ok(Command::RpcdList));
        assert_eq!(
            p(&["rpcd", "call", "status"]),
            Ok(Command::RpcdCall {
                method: "status".into(),
                socket: DEFAULT_SOCKET.into(),
                config_dir: DEFAULT_CONFIG_DIR.into(),
            })
        );
        assert_eq!(
            p(&["status", "--json"]),
            Ok(Command::Status {
                json: true,
                socket: DEFAULT_SOCKET.into()
            })
        );
    }
}
