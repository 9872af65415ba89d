//! Everything the command line prints goes through here, so that the password of the
//! database URL it was given never reaches stdout or stderr: not in an error (the server's
//! own text may quote it), not in progress, JSON, trace logs or a panic message.

use std::borrow::Cow;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use crate::Redactor;

static REDACTOR: OnceLock<Redactor> = OnceLock::new();

/// Scrubs the password of `url` from everything printed from now on, panics included.
pub(crate) fn install(url: Option<&str>) {
    let _ = REDACTOR.set(url.map(Redactor::for_url).unwrap_or_default());
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let mut text = format!("thread '{}' {info}\n", thread.name().unwrap_or("<unnamed>"));
        // Like the standard hook: a backtrace when RUST_BACKTRACE asks for one.
        let backtrace = std::backtrace::Backtrace::capture();
        match backtrace.status() {
            std::backtrace::BacktraceStatus::Captured => {
                text.push_str(&format!("stack backtrace:\n{backtrace}\n"));
            }
            _ => text.push_str(
                "note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n",
            ),
        }
        let mut stderr = std::io::stderr().lock();
        let _ = stderr.write_all(clean(&text).as_bytes());
    }));
}

/// `text` without the password.
pub(crate) fn clean(text: &str) -> Cow<'_, str> {
    match REDACTOR.get() {
        Some(redactor) => redactor.redact(text),
        None => Cow::Borrowed(text),
    }
}

/// Set by `--format json`: stdout carries the JSON events alone, and what [`out`] and
/// [`out_raw`] print for people goes to stderr.
static HUMAN_TO_STDERR: AtomicBool = AtomicBool::new(false);

/// Sends the human output to stderr from now on, keeping stdout for [`event`].
pub(crate) fn human_to_stderr() {
    HUMAN_TO_STDERR.store(true, Ordering::Relaxed);
}

/// Writes `text` to stdout, or to stderr after [`human_to_stderr`].
fn write_human(text: &[u8], newline: bool) {
    if HUMAN_TO_STDERR.load(Ordering::Relaxed) {
        let mut stderr = std::io::stderr().lock();
        let _ = stderr.write_all(text);
        if newline {
            let _ = stderr.write_all(b"\n");
        }
    } else {
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(text);
        if newline {
            let _ = stdout.write_all(b"\n");
        }
        let _ = stdout.flush();
    }
}

/// Prints `text` and a newline on stdout.
pub(crate) fn out(text: &str) {
    write_human(clean(text).as_bytes(), true);
}

/// Prints `text` as it is (it ends with its own newline, or is a partial line) on stdout.
pub(crate) fn out_raw(text: &str) {
    write_human(clean(text).as_bytes(), false);
}

/// Prints one line of machine-readable output (a JSON event) on stdout, whatever
/// [`human_to_stderr`] says, flushed at once so that a reader sees each event as it
/// happens.
pub(crate) fn event(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(clean(line).as_bytes());
    let _ = stdout.write_all(b"\n");
    let _ = stdout.flush();
}

/// Prints `text` and a newline on stderr.
pub(crate) fn err(text: &str) {
    let mut stderr = std::io::stderr().lock();
    let _ = stderr.write_all(clean(text).as_bytes());
    let _ = stderr.write_all(b"\n");
}

/// `println!` through [`out`].
macro_rules! outln {
    ($($arg:tt)*) => { $crate::cli::say::out(&format!($($arg)*)) };
}

/// `eprintln!` through [`err`].
macro_rules! errln {
    ($($arg:tt)*) => { $crate::cli::say::err(&format!($($arg)*)) };
}

pub(crate) use {errln, outln};

/// A log event's writer: collects the event, then writes it scrubbed to stderr.
pub(crate) struct LogWriter(Vec<u8>);

impl LogWriter {
    pub(crate) fn new() -> Self {
        LogWriter(Vec::new())
    }
}

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            let text = String::from_utf8_lossy(&self.0);
            let mut stderr = std::io::stderr().lock();
            let _ = stderr.write_all(clean(&text).as_bytes());
        }
    }
}
