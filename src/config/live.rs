//! The running config and where it came from: the file, when it was loaded and
//! the SHA-256 of its bytes then, so `check` and the status page can tell
//! whether the file on disk still says the same. Replaced whole by a reload;
//! a reader takes a snapshot (`get`) and keeps it for as long as it needs one
//! config (a deployment keeps the one it started with).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use sha2::{Digest, Sha256};

use super::{Config, ConfigError};

/// A config with its origin.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Arc<Config>,
    pub path: PathBuf,
    /// Unix milliseconds.
    pub loaded_at: i64,
    /// `sha256:<hex>` of the file's bytes as loaded.
    pub file_digest: String,
}

impl Loaded {
    /// Reads, expands and validates the file at `path`.
    pub fn read(path: &Path) -> Result<Loaded, ConfigError> {
        let raw = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let text = String::from_utf8_lossy(&raw);
        let config = Config::parse(path, &text, |v| std::env::var(v).ok())?;
        Ok(Loaded {
            config: Arc::new(config),
            path: path.to_path_buf(),
            loaded_at: now_ms(),
            file_digest: file_digest(&raw),
        })
    }

    /// A config that came from nowhere on disk (tests, embedders).
    pub fn in_memory(config: Config) -> Loaded {
        Loaded {
            config: Arc::new(config),
            path: PathBuf::new(),
            loaded_at: now_ms(),
            file_digest: String::new(),
        }
    }

    /// Whether the file now holds other bytes than were loaded (`None`: it
    /// cannot be read, or there is no file).
    pub fn file_differs(&self) -> Option<bool> {
        if self.path.as_os_str().is_empty() {
            return None;
        }
        let raw = std::fs::read(&self.path).ok()?;
        Some(file_digest(&raw) != self.file_digest)
    }
}

pub fn file_digest(raw: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(raw)))
}

/// The running config, shared; cheap to clone.
#[derive(Clone)]
pub struct Live(Arc<RwLock<Arc<Loaded>>>);

impl Live {
    pub fn new(loaded: Loaded) -> Live {
        Live(Arc::new(RwLock::new(Arc::new(loaded))))
    }

    /// The config as it is now.
    pub fn get(&self) -> Arc<Config> {
        self.loaded().config.clone()
    }

    /// The config as it is now, with its origin.
    pub fn loaded(&self) -> Arc<Loaded> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set(&self, loaded: Loaded) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(loaded);
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
