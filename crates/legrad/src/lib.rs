//! LeGrad for OpenCLIP vision transformers, in burn.
//!
//! The flow (see the README's architecture section):
//! bytes → [`preprocess`] → [`model::VisionTower::forward_with_trace`] → [`ImageTrace`] (cached
//! per image and size) → [`explain::Explainer`] with text embeddings from
//! [`model::TextTower::encode`] → grid maps → [`explain::finish_maps`] → [`PromptMap`]s.
//! [`engine::Engine`] ties these together with the caches; the CLI and the web app use it.

// Without the `engine` feature the crate is what the web page draws with: the methods' names,
// finishing and colouring maps, resampling, the model configs and errors; no burn (the page's
// own module stays small, docs/ARCHITECTURE.md "Two modules").
pub mod config;
pub mod error;
pub mod maps;
pub mod masks;
pub mod overlay;
pub mod preprocess;
pub mod presence;
pub mod resample;
pub mod rng;

#[cfg(feature = "engine")]
pub mod calibrate;
#[cfg(feature = "engine")]
pub mod compute;
#[cfg(feature = "engine")]
pub mod device_stats;
#[cfg(feature = "engine")]
pub mod engine;
#[cfg(feature = "engine")]
pub mod eval;
#[cfg(feature = "engine")]
pub mod explain;
#[cfg(feature = "engine")]
pub mod format;
#[cfg(feature = "engine")]
pub mod load;
#[cfg(feature = "engine")]
pub mod model;
#[cfg(all(feature = "engine", not(target_family = "wasm")))]
pub mod npy;
#[cfg(feature = "engine")]
pub mod readback;
#[cfg(feature = "engine")]
pub mod scenes;
#[cfg(all(feature = "engine", any(test, feature = "test-support")))]
pub mod testing;
#[cfg(feature = "engine")]
pub mod tokenizer;
#[cfg(feature = "engine")]
pub mod weights;

pub use config::{Activation, ClipConfig, Family};
pub use error::{LegradError, Result};
pub use maps::{Method, PromptMap};
pub use preprocess::InputSize;

#[cfg(feature = "engine")]
pub use compute::ComputePolicy;
#[cfg(feature = "engine")]
pub use engine::Engine;
#[cfg(feature = "engine")]
pub use explain::{ImageTrace, TraceRequest};
#[cfg(feature = "engine")]
pub use model::Clip;
#[cfg(feature = "engine")]
pub use tokenizer::{SentencePieceTokenizer, TextTokenizer, Tokenizer};
