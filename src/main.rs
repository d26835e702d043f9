//! `tls-policyd`: parse the command line and run the command; the library
//! ([`tls_policyd::cli`]) does the rest.

use std::process::ExitCode;

use clap::Parser;

use tls_policyd::cli::{self, Cli};

fn main() -> ExitCode {
    cli::run(Cli::parse())
}
