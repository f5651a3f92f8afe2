//! What the example servers share: their logger and their first stdout line.
//! (A module of the examples, not an example itself.)

#![allow(dead_code, reason = "each example uses what it needs")]

use std::io::{self, IsTerminal, Write};

use simplelog::{ColorChoice, ConfigBuilder, LevelFilter, TermLogger, TerminalMode};

/// simplelog to stderr, in colour only when stderr is a terminal
/// (termcolor's `Auto` looks only at `TERM`, so a log redirected to a file
/// would fill with escape codes).
pub(crate) fn init_logging(level: LevelFilter) {
    let config = ConfigBuilder::new()
        .set_thread_level(LevelFilter::Off)
        .build();
    let color = if io::stderr().is_terminal() {
        ColorChoice::Auto
    } else {
        ColorChoice::Never
    };
    let _ = TermLogger::init(level, config, TerminalMode::Stderr, color);
}

/// Prints the first stdout line, `listening on URL`, and flushes it at once:
/// scripts and tests start a server on port 0 and read where it listens.
pub(crate) fn announce(url: &str) -> io::Result<()> {
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "listening on {url}")?;
    stdout.flush()
}
