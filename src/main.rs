//! Process concerns only: parse the command line, set up logging, dispatch.

use clap::Parser;

fn main() {
    let cli = greenlight::cli::Cli::parse();
    let code = greenlight::cli::main(cli);
    std::process::exit(code);
}
