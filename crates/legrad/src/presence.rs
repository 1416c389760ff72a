//! "Is it there at all?": a presence value per prompt, beside its min-max normalised map (which
//! runs from 0 to 1 for any prompt, present or not). docs/ARCHITECTURE.md "Presence".
//!
//! * SigLIP: its own sigmoid probability (the model is trained to answer exactly this).
//! * CLIP: the cosine itself, through a logistic fixed for the family
//!   ([`clip_cosine_to_presence`]). Measured against the alternative the issue proposed, the
//!   cosine's standing among a reference vocabulary's cosines on the same image ([`standing`],
//!   [`VOCABULARY`]), the plain cosine ranks present above absent prompts better
//!   (BENCHMARKS.md, "Masks, presence, words"); `legrad eval` reports both.

/// A reference vocabulary for [`standing`]: COCO's 80 object categories (a generic list of
/// things photos hold, not chosen for any model; the default model has never seen one).
pub const VOCABULARY: [&str; 80] = [
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
];

/// A CLIP cosine that reads as an even chance of being there. CLIP's cosines between an image
/// and a caption that fits it are typically 0.25 to 0.35, and between unrelated ones about 0.1
/// to 0.2 (the CLIPScore paper's rescaling, Hessel et al. 2021, rests on the same range); 0.2
/// sits between. Fixed for the family, not fitted to a model: there is no set of real photos
/// here to fit it on. The AUROC `legrad eval` reports does not depend on it.
pub const CLIP_EVEN_COSINE: f32 = 0.2;

/// Cosine from an even chance to "likely there" (presence 0.82).
pub const CLIP_COSINE_SPREAD: f32 = 0.04;

/// Below this presence the app says a prompt is likely absent (and dims its map).
pub const LIKELY_ABSENT: f32 = 0.5;

/// A CLIP cosine as a presence in 0..1: a logistic around [`CLIP_EVEN_COSINE`].
pub fn clip_cosine_to_presence(cosine: f32) -> f32 {
    if cosine.is_nan() {
        return f32::NAN;
    }
    1.0 / (1.0 + (-(cosine - CLIP_EVEN_COSINE) * 1.5 / CLIP_COSINE_SPREAD).exp())
}

/// The standing of `cosine` among `vocabulary` (the vocabulary's cosines on the same image):
/// `(cosine - mean) / sd`; NaN without a spread.
pub fn standing(cosine: f32, vocabulary: &[f32]) -> f32 {
    let n = vocabulary.len() as f64;
    if n < 2.0 {
        return f32::NAN;
    }
    let mean = vocabulary.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = vocabulary.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / (n - 1.0);
    if var.is_nan() || var <= 0.0 {
        return f32::NAN;
    }
    ((cosine as f64 - mean) / var.sqrt()) as f32
}

/// How a model family's presence is made.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PresenceRule {
    /// CLIP: [`clip_cosine_to_presence`].
    Cosine,
    /// SigLIP: the score is already a probability.
    Probability,
}

#[cfg(feature = "engine")]
impl PresenceRule {
    pub fn for_scoring(scoring: crate::model::Scoring) -> Self {
        match scoring {
            crate::model::Scoring::Cosine => PresenceRule::Cosine,
            crate::model::Scoring::Sigmoid { .. } => PresenceRule::Probability,
        }
    }
}

/// A prompt's presence from its cosine and its shown score.
pub fn presence(rule: PresenceRule, cosine: f32, score: f32) -> f32 {
    match rule {
        PresenceRule::Cosine => clip_cosine_to_presence(cosine),
        PresenceRule::Probability => score,
    }
}

/// Area under the ROC curve of `present` against `absent` values (ties count half); NaN when
/// either is empty or a value is NaN.
pub fn auroc(present: &[f32], absent: &[f32]) -> f64 {
    if present.is_empty() || absent.is_empty() || present.iter().chain(absent).any(|v| v.is_nan()) {
        return f64::NAN;
    }
    let mut all: Vec<(f32, bool)> =
        present.iter().map(|&v| (v, true)).chain(absent.iter().map(|&v| (v, false))).collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Mann-Whitney U with mid-ranks for ties.
    let mut rank_sum = 0f64;
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j < all.len() && all[j].0 == all[i].0 {
            j += 1;
        }
        let mid = (i + j + 1) as f64 / 2.0; // ranks i+1..=j
        rank_sum += all[i..j].iter().filter(|e| e.1).count() as f64 * mid;
        i = j;
    }
    let (np, na) = (present.len() as f64, absent.len() as f64);
    (rank_sum - np * (np + 1.0) / 2.0) / (np * na)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auroc_counts_pairs() {
        assert_eq!(auroc(&[0.9, 0.8], &[0.1, 0.2]), 1.0);
        assert_eq!(auroc(&[0.1], &[0.9]), 0.0);
        assert_eq!(auroc(&[0.5], &[0.5]), 0.5);
        assert!((auroc(&[0.3, 0.9], &[0.5]) - 0.5).abs() < 1e-12);
        assert!(auroc(&[f32::NAN], &[0.5]).is_nan());
        assert!(auroc(&[], &[0.5]).is_nan());
    }

    #[test]
    fn standing_and_presence() {
        let v = [0.1, 0.2, 0.3];
        assert!((standing(0.4, &v) - 2.0).abs() < 1e-5);
        assert!(standing(0.4, &[0.2, 0.2]).is_nan());
        assert!((clip_cosine_to_presence(CLIP_EVEN_COSINE) - 0.5).abs() < 1e-6);
        assert!(clip_cosine_to_presence(0.32) > 0.95);
        assert!(clip_cosine_to_presence(0.1) < 0.05);
        assert!(clip_cosine_to_presence(f32::NAN).is_nan());
        assert_eq!(presence(PresenceRule::Probability, 0.1, 0.7), 0.7);
        assert_eq!(presence(PresenceRule::Cosine, 0.2, 0.7), 0.5);
    }
}
