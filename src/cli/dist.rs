//! `greenlight dist DIR` (hidden): what the Debian package ships beside the
//! binary, generated from the same definitions the binary uses, so they never
//! drift: the man page and shell completions from the clap command line, and
//! /etc/greenlight/greenlight.toml from `greenlight init`'s template.

use std::path::Path;

use clap::CommandFactory;
use clap_complete::Shell;

use super::Cli;

/// Writes `greenlight.1`, `completions/{greenlight.bash,_greenlight,greenlight.fish}`,
/// `greenlight.toml` and `greenlight-nginx.conf` into `dir` (created if missing).
pub fn write(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir.join("completions"))?;
    let mut page = Vec::new();
    clap_mangen::Man::new(Cli::command()).render(&mut page)?;
    std::fs::write(dir.join("greenlight.1"), page)?;
    for (shell, file) in [
        (Shell::Bash, "greenlight.bash"),
        (Shell::Zsh, "_greenlight"),
        (Shell::Fish, "greenlight.fish"),
    ] {
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "greenlight", &mut script);
        std::fs::write(dir.join("completions").join(file), script)?;
    }
    std::fs::write(dir.join("greenlight.toml"), crate::init::package_config())?;
    std::fs::write(
        dir.join("greenlight-nginx.conf"),
        crate::init::package_snippet(),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_man_page_completions_and_config_are_written() {
        let dir = tempfile::tempdir().unwrap();
        super::write(dir.path()).unwrap();
        let page = std::fs::read_to_string(dir.path().join("greenlight.1")).unwrap();
        assert!(
            page.contains(".TH greenlight") && page.contains("deploy"),
            "{page}"
        );
        let bash = std::fs::read_to_string(dir.path().join("completions/greenlight.bash")).unwrap();
        assert!(bash.contains("greenlight"));
        let config = std::fs::read_to_string(dir.path().join("greenlight.toml")).unwrap();
        assert!(config.contains("${GREENLIGHT_TOKEN}"), "{config}");
    }
}
