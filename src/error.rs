//! Errors a user can act on: each names the file (and line and field where there is one), or the
//! setting and its value. Nothing here names a CLI flag or a JavaScript option: the shells
//! translate `Error::Setting`'s field into their own names.

use std::fmt;

/// Where in the user's input a problem was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: String,
    pub line: Option<usize>,
    pub field: Option<String>,
}

impl Location {
    pub fn file(file: impl Into<String>) -> Self {
        Self {
            file: file.into(),
            line: None,
            field: None,
        }
    }

    pub fn line(mut self, line: usize) -> Self {
        self.line = Some(line);
        self
    }

    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(field) = &self.field {
            write!(f, " (field `{field}`)")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The user's input (data, config, weights, tokenizer) is malformed.
    #[error("{location}: {message}")]
    Input { location: Location, message: String },

    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },

    /// No usable compute device.
    #[error("device: {0}")]
    Device(String),

    /// Reading results back from the device failed.
    #[error("device readback failed: {0}")]
    Readback(String),

    /// A setting of the run (a training option, a LoRA setting, which model or data to use)
    /// that cannot work. `field` is the setting's name in the core (`max_length`, `lora_rank`,
    /// `data`); each shell maps it to its own spelling (a CLI flag, a JavaScript option).
    #[error("{field}: {message}")]
    Setting { field: String, message: String },

    /// Training stopped because losses or gradients stayed infinite or NaN.
    #[error("step {step}: {message}")]
    Numeric { step: usize, message: String },

    /// A request that cannot be satisfied with these settings.
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    pub fn input(location: Location, message: impl Into<String>) -> Self {
        Error::Input {
            location,
            message: message.into(),
        }
    }

    pub fn setting(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Setting {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn io(path: impl fmt::Display, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_string(),
            source,
        }
    }

    /// Whether what the user gave is at fault (a file's contents, a setting, a path that does
    /// not exist) rather than the run (a device, a numeric fault, a failed write).
    pub fn is_bad_input(&self) -> bool {
        use std::io::ErrorKind::*;
        match self {
            Error::Input { .. } | Error::Setting { .. } => true,
            Error::Io { source, .. } => matches!(
                source.kind(),
                NotFound | PermissionDenied | InvalidData | IsADirectory | NotADirectory
            ),
            _ => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
