//! `mvrun`: the command-line front end. Parses arguments and hands each subcommand to `cli::<cmd>`.

mod cli;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    // Die quietly on a closed pipe (`mvrun check | head`), as command-line tools do, instead of panicking.
    // SAFETY: resetting a signal's disposition to its default before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let args = cli::Cli::parse();
    cli::init_logging(args.log_level.as_deref());
    match cli::dispatch(args.command) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("mvrun: error: {err:#}");
            // 125: mvrun's own failure, as docker and podman report it.
            ExitCode::from(125)
        }
    }
}
