//! What the page shows, computed from the engine's answers: plain data and arithmetic, no
//! browser types, so that it compiles and is unit-tested natively (`cargo test -p legrad-web`).

use std::sync::Arc;

use crate::protocol::{MapsReady, WordRelevance, WordsReady};

/// The maps of the latest answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Results {
    pub ready: MapsReady,
    /// The image as the model saw it, RGB, `size.0 * size.1 * 3`.
    pub rgb: Arc<Vec<u8>>,
    /// Method-major, then prompt: `size.0 * size.1` values each.
    pub maps: Arc<Vec<f32>>,
    /// Raw per-layer grid maps (see `MapsReady`).
    pub per_layer: Arc<Vec<f32>>,
}

/// The prompts' words of the latest answer: they come a moment after its maps
/// (`Response::Words`), and are kept apart from the maps so that their coming redraws no map.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Words {
    /// The answer (`MapsReady::seq`, `image_id`) these are for.
    pub seq: u64,
    pub image_id: u64,
    /// Per prompt of the answer, in its order. Until the answer's own words come, a prompt
    /// keeps the words it had in the answer before (by text), as its map is kept while a new
    /// one is computed: the shading does not blink at each keystroke or camera frame.
    pub prompts: Vec<Vec<WordRelevance>>,
    /// These are the answer's own words, not carried over.
    pub current: bool,
    /// What the engine spent on them (new prompts only).
    pub ms: f64,
}

impl Words {
    /// For a new answer `ready`: each prompt's words from the answer before (`before`, with
    /// its words `had`) where it had them.
    pub fn carried(before: Option<&Results>, had: &Words, ready: &MapsReady) -> Words {
        let old = |text: &str| -> Vec<WordRelevance> {
            before
                .and_then(|b| {
                    let i = b.ready.prompts.iter().position(|p| p.text == text)?;
                    had.prompts.get(i).cloned()
                })
                .unwrap_or_default()
        };
        Words {
            seq: ready.seq,
            image_id: ready.image_id,
            prompts: ready.prompts.iter().map(|p| old(&p.text)).collect(),
            current: false,
            ms: 0.0,
        }
    }

    /// Take `words` where they are the answer's own (same request, same image, one per prompt).
    pub fn take(&mut self, words: WordsReady) -> bool {
        if words.seq != self.seq || words.image_id != self.image_id || words.prompts.len() != self.prompts.len() {
            return false;
        }
        *self = Words { prompts: words.prompts, current: true, ms: words.words_ms, ..*self };
        true
    }

    /// A prompt's words (none yet, or none known).
    pub fn of(&self, prompt: usize) -> &[WordRelevance] {
        self.prompts.get(prompt).map(Vec::as_slice).unwrap_or_default()
    }
}

impl Results {
    pub fn map(&self, method: usize, prompt: usize) -> &[f32] {
        let n = self.ready.size.0 * self.ready.size.1;
        let p = self.ready.prompts.len();
        &self.maps[(method * p + prompt) * n..][..n]
    }

    /// The raw grid map of the `layer`-th layer of the range, where the method has layers.
    pub fn layer_grid(&self, method: usize, prompt: usize, layer: usize) -> Option<&[f32]> {
        let r = &self.ready;
        if !r.layer_methods.get(method).copied().unwrap_or(false) || layer >= r.layers.len() {
            return None;
        }
        let cells = r.grid.0 * r.grid.1;
        let per_method = r.prompts.len() * r.layers.len() * cells;
        let before = r.layer_methods[..method].iter().filter(|h| **h).count() * per_method;
        self.per_layer.get(before + (prompt * r.layers.len() + layer) * cells..).and_then(|s| s.get(..cells))
    }

    /// The map shown for a card and a layer of the strip (None: the range's sum): at the
    /// maps' size, normalised as the summed map is (the core's `finish_maps`).
    pub fn shown_map(&self, method: usize, prompt: usize, layer: Option<usize>) -> Option<Vec<f32>> {
        let Some(layer) = layer else { return Some(self.map(method, prompt).to_vec()) };
        let grid = self.ready.grid;
        let raw = self.layer_grid(method, prompt, layer)?;
        let patch = self.ready.size.0 / grid.0.max(1);
        // A layer alone is upsampled then normalised (for SigLIP too: the strip is ours, not the reference's).
        legrad::maps::finish_maps(raw, None, 1, grid, patch, legrad::maps::MapOrder::UpsampleThenNormalise)
            .pop()
            .map(|m| m.map)
    }
}

/// The image maps are drawn over on the large view: the photo at its own resolution (or scaled
/// down to `legrad::overlay::MAX_ORIGINAL_SIDE`), RGB.
#[derive(Clone, Debug, PartialEq)]
pub struct Original {
    pub id: u64,
    pub width: usize,
    pub height: usize,
    pub rgb: Arc<Vec<u8>>,
    /// The copy the large view draws: the photo, or scaled down to [`VIEW_MAX_SIDE`] (a screen
    /// shows no more, and each new map is drawn again while typing); `(height, width)`.
    pub view: Arc<Vec<u8>>,
    pub view_size: (usize, usize),
}

pub use crate::protocol::VIEW_MAX_SIDE;

impl Original {
    /// The image `rgb` of `width x height` and its large view's copy `view_rgb` of `view_size`
    /// `(width, height)` (empty: the image itself), as `ImageReady` brings them; None when a
    /// length does not match its size.
    pub fn new(
        id: u64,
        (width, height): (usize, usize),
        rgb: Vec<u8>,
        (view_w, view_h): (usize, usize),
        view_rgb: Vec<u8>,
    ) -> Option<Self> {
        if rgb.len() != width * height * 3 || width == 0 || height == 0 {
            return None;
        }
        let rgb = Arc::new(rgb);
        let (view, view_size) = if view_rgb.is_empty() {
            (rgb.clone(), (height, width))
        } else if view_rgb.len() == view_w * view_h * 3 && view_w > 0 && view_h > 0 {
            (Arc::new(view_rgb), (view_h, view_w))
        } else {
            return None;
        };
        Some(Self { id, width, height, rgb, view, view_size })
    }
}

/// A camera frame's size `(width, height)` for a video of `width` x `height`: the long side at
/// most `max_side`, the shape kept, every side at least 1 pixel.
pub fn frame_size(width: u32, height: u32, max_side: u32) -> (u32, u32) {
    let scale = (max_side as f64 / width.max(height).max(1) as f64).min(1.0);
    (((width as f64 * scale).round() as u32).max(1), ((height as f64 * scale).round() as u32).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{EngineMemory, PromptResult};

    fn prompt(p: &str) -> PromptResult {
        PromptResult { prompt: p.into(), text: p.into(), score: 0.5, truncated: false, constant: false, presence: 1.0 }
    }

    /// Two methods, the first with layers: two prompts on a 2x3 grid of 4-pixel patches.
    fn results() -> Results {
        let (grid, size) = ((2, 3), (8, 12));
        let cells = 6;
        let ready = MapsReady {
            seq: 1,
            image_id: 1,
            size,
            input: size,
            grid,
            layers: vec![9, 10, 11],
            layer_methods: vec![true, false],
            methods: vec![legrad::Method::LeGrad, legrad::Method::GradCam],
            prompts: vec![prompt("a"), prompt("b")],
            image_ms: 0.0,
            explain_ms: 0.0,
            text_ms: 0.0,
            traced: false,
            memory: EngineMemory::default(),
        };
        let n = size.0 * size.1;
        let maps: Vec<f32> = (0..2 * 2 * n).map(|i| i as f32).collect();
        // Method 0: prompt-major, then layer, then cell; its value says where it is.
        let per_layer: Vec<f32> = (0..2 * 3 * cells).map(|i| i as f32).collect();
        Results { ready, rgb: Arc::new(vec![0; n * 3]), maps: Arc::new(maps), per_layer: Arc::new(per_layer) }
    }

    fn word(w: &str, relevance: f32) -> WordRelevance {
        WordRelevance { word: w.into(), relevance }
    }

    #[test]
    fn words_come_after_the_maps_and_carry_over_by_text() {
        let r = results();
        let mut w = Words::carried(None, &Words::default(), &r.ready);
        assert!(w.of(0).is_empty() && w.of(1).is_empty() && !w.current, "none before the words come");
        let words = |seq, image_id, n| WordsReady {
            seq,
            image_id,
            prompts: (0..n).map(|i| vec![word("a", i as f32)]).collect(),
            words_ms: 3.0,
        };
        assert!(!w.take(words(0, 1, 2)), "an older request's");
        assert!(!w.take(words(1, 2, 2)), "another image's");
        assert!(!w.take(words(1, 1, 3)), "a count that is not the answer's");
        assert!(w.of(1).is_empty() && !w.current);
        assert!(w.take(words(1, 1, 2)));
        assert_eq!((w.of(1), w.current, w.ms), (&[word("a", 1.0)][..], true, 3.0));
        // The next answer: "b" kept, a new "c" has none yet; none of them current.
        let mut ready = r.ready.clone();
        ready.seq = 2;
        ready.prompts = vec![prompt("c"), prompt("b")];
        let carried = Words::carried(Some(&r), &w, &ready);
        assert_eq!(carried.prompts, vec![vec![], vec![word("a", 1.0)]]);
        assert!(!carried.current && carried.seq == 2);
        assert!(Words::carried(None, &w, &ready).prompts.iter().all(Vec::is_empty));
    }

    #[test]
    fn a_cards_map_is_its_slice() {
        let r = results();
        let n = 96;
        assert_eq!(r.map(0, 0)[0], 0.0);
        assert_eq!(r.map(0, 1)[0], n as f32);
        assert_eq!(r.map(1, 0)[0], 2.0 * n as f32);
        assert_eq!(r.map(1, 1).len(), n);
    }

    #[test]
    fn the_layer_strip_reads_its_layer_of_its_prompt() {
        let r = results();
        // Prompt 1, layer 2: (1 * 3 + 2) * 6 = 30.
        assert_eq!(r.layer_grid(0, 1, 2).unwrap(), &[30.0, 31.0, 32.0, 33.0, 34.0, 35.0]);
        assert_eq!(r.layer_grid(0, 0, 0).unwrap()[0], 0.0);
        assert!(r.layer_grid(0, 0, 3).is_none(), "three layers");
        assert!(r.layer_grid(1, 0, 0).is_none(), "the second method has no layers");
        // A layer alone is shown at the maps' size, normalised.
        let shown = r.shown_map(0, 1, Some(2)).unwrap();
        assert_eq!(shown.len(), 96);
        let (lo, hi) = shown.iter().fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
        assert_eq!((lo, hi), (0.0, 1.0));
        assert_eq!(r.shown_map(1, 1, None).unwrap(), r.map(1, 1).to_vec());
        assert!(r.shown_map(1, 1, Some(0)).is_none());
    }

    #[test]
    fn camera_frames_keep_their_shape_within_the_side() {
        assert_eq!(frame_size(1280, 720, 640), (640, 360));
        assert_eq!(frame_size(720, 1280, 640), (360, 640));
        assert_eq!(frame_size(320, 240, 640), (320, 240), "never enlarged");
        assert_eq!(frame_size(5000, 1, 640), (640, 1), "at least one pixel");
        assert_eq!(frame_size(0, 0, 640), (1, 1));
    }

    #[test]
    fn the_view_copy_is_the_image_or_the_one_sent() {
        let small = Original::new(1, (30, 20), vec![7; 30 * 20 * 3], (30, 20), vec![]).unwrap();
        assert_eq!(small.view_size, (20, 30));
        assert!(Arc::ptr_eq(&small.view, &small.rgb), "the image itself, not a copy");
        let big = Original::new(2, (3200, 100), vec![7; 3200 * 100 * 3], (1600, 50), vec![8; 1600 * 50 * 3]).unwrap();
        assert_eq!(big.view_size, (50, 1600));
        assert_eq!(big.view[0], 8);
        assert!(Original::new(3, (10, 10), vec![0; 5], (10, 10), vec![]).is_none(), "a wrong length is refused");
        assert!(Original::new(4, (10, 10), vec![0; 300], (5, 5), vec![0; 7]).is_none(), "so is a view's");
    }
}
