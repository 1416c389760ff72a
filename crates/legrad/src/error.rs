//! The library's one error type. Every variant's message is a sentence a user can act on.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum LegradError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid model config: {0}")]
    Config(String),
    #[error("not supported: {0}")]
    Unsupported(String),
    #[error("{0}")]
    Checkpoint(String),
    #[error(
        "the checkpoint has no tensor '{key}' (expected shape {expected:?}); is this an OpenCLIP ViT or transformers CLIPModel checkpoint?"
    )]
    MissingTensor { key: String, expected: Vec<usize> },
    #[error("tensor '{key}' has shape {found:?} but the model config expects {expected:?}")]
    ShapeMismatch { key: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("the image could not be decoded: {0}")]
    ImageDecode(String),
    #[error("the image is too large ({width}x{height} pixels; the limit is {limit} megapixels)")]
    ImageTooLarge { width: u64, height: u64, limit: u64 },
    #[error("invalid input: {0}")]
    Input(String),
    #[error("the prompt is empty: type what to look for, e.g. \"a cat\"")]
    EmptyPrompt,
    /// The user stopped it (a download, a conversion): `{0}` says when.
    #[error("cancelled {0}; nothing was kept")]
    Cancelled(String),
    #[error("the compute backend failed: {0}")]
    Backend(String),
    #[error("invalid model file: {0}")]
    ModelFile(String),
}

pub type Result<T, E = LegradError> = std::result::Result<T, E>;

/// A library's error message on one line (decoders and parsers sometimes end theirs with a
/// newline or draw a caret under a column; backends chain "Caused by:" blocks and a backtrace):
/// its lines, trimmed, without the "Caused by:" markers, repeats and the backtrace section,
/// joined by "; ".
pub fn one_line(e: impl std::fmt::Display) -> String {
    let text = e.to_string();
    let mut parts: Vec<&str> = Vec::new();
    for line in text.lines().map(str::trim).take_while(|l| *l != "Backtrace:") {
        if !line.is_empty() && line != "Caused by:" && !parts.contains(&line) {
            parts.push(line);
        }
    }
    parts.join("; ")
}

impl LegradError {
    pub fn io_path(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Self::Io { path: path.as_ref().display().to_string(), source }
    }
}
