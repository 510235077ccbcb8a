//! Minimal stderr logger: one line per record, level first, so procd's syslog shows severity.
//!
//! `env_logger` would pull in more than we need on a 16 MB-flash router; this is all the daemon uses.

use std::io::Write;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;

use log::LevelFilter;
use log::Log;
use log::Metadata;
use log::Record;

static LEVEL: AtomicUsize = AtomicUsize::new(LevelFilter::Info as usize);

struct StderrLogger;

static LOGGER: StderrLogger = StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        (metadata.level() as usize) <= LEVEL.load(Ordering::Relaxed)
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        // One write per line: stderr is unbuffered, and writing the formatted pieces as they
        // come took 25 write() calls for one admission's debug line (strace in the VM), each a
        // wake-up of whoever reads the pipe (procd's log on a router).
        let line = format!(
            "{}: {}\n",
            record.level().as_str().to_ascii_lowercase(),
            record.args()
        );
        // A failed write to stderr has nowhere else to be reported.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// Installs the logger; safe to call more than once.
pub fn init(level: LevelFilter) {
    // Only the first call can install; later calls just change the level.
    let _ = log::set_logger(&LOGGER);
    set_level(level);
}

/// Changes the level at run time (config reload).
pub fn set_level(level: LevelFilter) {
    LEVEL.store(level as usize, Ordering::Relaxed);
    log::set_max_level(level);
}
