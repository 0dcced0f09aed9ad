//! Reading TOML files with errors that name the file, line and problem.

use std::path::Path;

use serde::de::DeserializeOwned;

use crate::error::{ConfigError, ConfigResult};

pub fn read_toml<T: DeserializeOwned>(path: &Path) -> ConfigResult<T> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::io(path, e))?;
    parse_toml(&text, &path.display().to_string())
}

pub fn parse_toml<T: DeserializeOwned>(text: &str, origin: &str) -> ConfigResult<T> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: origin.to_string(),
        message: e.to_string().trim_end().to_string(),
    })
}

/// What tells an edited file from the one read before (modification time, length): every
/// file that is reloaded on change (views, static tables, tokens, alerts) is polled with it.
pub type FileStamp = (std::time::SystemTime, u64);

/// The stamp of `path` now; None if it cannot be read.
pub fn file_stamp(path: &Path) -> Option<FileStamp> {
    std::fs::metadata(path).ok().map(|m| {
        (
            m.modified().unwrap_or(std::time::SystemTime::UNIX_EPOCH),
            m.len(),
        )
    })
}
