//! LeGrad for OpenCLIP vision transformers, in burn.
//!
//! The flow (see the README's architecture section):
//! bytes → [`preprocess`] → [`model::VisionTower::forward_with_trace`] → [`ImageTrace`] (cached
//! per image and size) → [`explain::Explainer`] with text embeddings from
//! [`model::TextTower::encode`] → grid maps → [`explain::finish_maps`] → [`PromptMap`]s.
//! [`engine::Engine`] ties these together with the caches; the CLI and the web app use it.

pub mod calibrate;
pub mod compute;
pub mod config;
pub mod device_stats;
pub mod engine;
pub mod error;
pub mod eval;
pub mod explain;
pub mod format;
pub mod load;
pub mod model;
#[cfg(not(target_family = "wasm"))]
pub mod npy;
pub mod overlay;
pub mod preprocess;
pub mod readback;
pub mod rng;
pub mod scenes;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;
pub mod tokenizer;
pub mod weights;

pub use compute::ComputePolicy;
pub use config::{Activation, ClipConfig, Family};
pub use engine::Engine;
pub use error::{LegradError, Result};
pub use explain::{ImageTrace, Method, PromptMap, TraceRequest};
pub use model::Clip;
pub use preprocess::InputSize;
pub use tokenizer::{SentencePieceTokenizer, TextTokenizer, Tokenizer};
