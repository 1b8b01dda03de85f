//! Where the config file is: the one named (`--config` or `GREENLIGHT_CONFIG`),
//! else the first of `./greenlight.toml` and `/etc/greenlight/greenlight.toml`
//! that exists. A file named but missing is an error naming it; none found is an
//! error naming every place looked, never a silent default.

use std::path::{Path, PathBuf};

/// The places looked at, in order, when no config is named.
pub const SEARCH_PATH: [&str; 2] = ["./greenlight.toml", "/etc/greenlight/greenlight.toml"];

/// The environment variable that names the config file (like `--config`).
pub const CONFIG_ENV: &str = "GREENLIGHT_CONFIG";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "no config file: looked at {} (pass --config FILE, set {CONFIG_ENV}, or write one with `greenlight init`)",
    looked.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
)]
pub struct NotFound {
    pub looked: Vec<PathBuf>,
}

/// The config file to read: `named` as it is (its absence is reported when it
/// is read), else the first of [`SEARCH_PATH`] for which `exists` holds.
pub fn locate(named: Option<&Path>, exists: impl Fn(&Path) -> bool) -> Result<PathBuf, NotFound> {
    if let Some(path) = named {
        return Ok(path.to_path_buf());
    }
    let looked: Vec<PathBuf> = SEARCH_PATH.iter().map(PathBuf::from).collect();
    looked
        .iter()
        .find(|p| exists(p))
        .cloned()
        .ok_or(NotFound { looked })
}

/// `path` as written in the config file at `config`: a relative path is taken
/// from the config file's directory (not from wherever greenlight was started).
pub fn relative_to_config(config: &Path, path: &Path) -> PathBuf {
    match config.parent() {
        Some(dir) if path.is_relative() && !dir.as_os_str().is_empty() => dir.join(path),
        _ => path.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_file_wins_even_when_missing() {
        let got = locate(Some(Path::new("/srv/gl.toml")), |_| true).unwrap();
        assert_eq!(got, PathBuf::from("/srv/gl.toml"));
        let got = locate(Some(Path::new("missing.toml")), |_| false).unwrap();
        assert_eq!(got, PathBuf::from("missing.toml"));
    }

    #[test]
    fn the_working_directory_comes_before_etc() {
        let got = locate(None, |_| true).unwrap();
        assert_eq!(got, PathBuf::from("./greenlight.toml"));
        let got = locate(None, |p| p.starts_with("/etc")).unwrap();
        assert_eq!(got, PathBuf::from("/etc/greenlight/greenlight.toml"));
    }

    #[test]
    fn nothing_found_names_every_place_looked() {
        let err = locate(None, |_| false).unwrap_err();
        let text = err.to_string();
        for place in SEARCH_PATH {
            assert!(text.contains(place), "{text}");
        }
        assert!(text.contains("GREENLIGHT_CONFIG") && text.contains("greenlight init"));
    }

    #[test]
    fn relative_paths_are_taken_from_the_config_directory() {
        let config = Path::new("/etc/greenlight/greenlight.toml");
        assert_eq!(
            relative_to_config(config, Path::new("state.db")),
            PathBuf::from("/etc/greenlight/state.db")
        );
        assert_eq!(
            relative_to_config(config, Path::new("/var/lib/greenlight/state.db")),
            PathBuf::from("/var/lib/greenlight/state.db")
        );
        // A config in the working directory: the path stays as written.
        assert_eq!(
            relative_to_config(Path::new("greenlight.toml"), Path::new("state.db")),
            PathBuf::from("state.db")
        );
    }
}
