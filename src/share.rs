//! Shareable links: the prompts, the template switch, the method (or the comparison), the size
//! and its shape, the layers and a model URL live in the page's URL fragment (`#prompts=…&size=448…`), kept
//! up to date as they change; opening such a link restores them. The fragment never leaves the
//! browser (HTTP requests carry no fragment), and it never holds the image.

use legrad::Method;

/// What the large view shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViewMode {
    Heatmap,
    /// The selected prompt's map binarised at the threshold.
    Mask,
    /// Every prompt's mask at once, one colour each (a pixel claimed by several goes to the
    /// highest map).
    Segments,
}

impl ViewMode {
    pub const ALL: [ViewMode; 3] = [ViewMode::Heatmap, ViewMode::Mask, ViewMode::Segments];

    pub fn key(self) -> &'static str {
        match self {
            ViewMode::Heatmap => "heatmap",
            ViewMode::Mask => "mask",
            ViewMode::Segments => "segments",
        }
    }

    pub fn from_key(key: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.key() == key)
    }

    pub fn label(self) -> &'static str {
        match self {
            ViewMode::Heatmap => "Heatmap",
            ViewMode::Mask => "Mask",
            ViewMode::Segments => "Segmentation",
        }
    }
}

/// What a link carries. `None`: not in the link (the page's own default applies).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Shared {
    pub prompts: Option<String>,
    pub template: Option<bool>,
    pub method: Option<Method>,
    pub compare: Option<bool>,
    pub size: Option<u32>,
    /// Square input, as the reference (off: the photo's shape).
    pub square: Option<bool>,
    pub layers: Option<i64>,
    /// The large view's mode (heatmap, mask, segmentation).
    pub view: Option<ViewMode>,
    /// The masks' threshold, 0..1.
    pub threshold: Option<f32>,
    pub model_url: Option<String>,
}

/// Sizes a link may ask for (the engine takes up to 4096 a side; the page offers these and the
/// model's own).
const MAX_SIZE: u32 = 1024;

impl Shared {
    /// Read a fragment (with or without its `#`). Unknown keys and values out of range are
    /// ignored, so that an old or hand-edited link still opens.
    pub fn parse(fragment: &str) -> Self {
        let mut out = Self::default();
        let fragment = fragment.strip_prefix('#').unwrap_or(fragment);
        for (k, v) in form_urlencoded::parse(fragment.as_bytes()) {
            let flag = || match v.as_ref() {
                "1" => Some(true),
                "0" => Some(false),
                _ => None,
            };
            match k.as_ref() {
                "prompts" => out.prompts = Some(v.chars().filter(|c| *c == '\n' || !c.is_control()).collect()),
                "template" => out.template = flag(),
                "method" => out.method = v.parse().ok(),
                "compare" => out.compare = flag(),
                "size" => out.size = v.parse().ok().filter(|s| (32..=MAX_SIZE).contains(s)),
                "square" => out.square = flag(),
                "layers" => out.layers = v.parse().ok().filter(|k: &i64| (-64..=0).contains(k)),
                "view" => out.view = ViewMode::from_key(&v),
                "threshold" => out.threshold = v.parse().ok().filter(|t: &f32| (0.0..=1.0).contains(t)),
                "model" => {
                    out.model_url =
                        Some(v.to_string()).filter(|u| u.starts_with("https://") || u.starts_with("http://"))
                }
                _ => {}
            }
        }
        out
    }

    /// The fragment for this state, without the `#`.
    pub fn to_fragment(&self) -> String {
        let mut s = form_urlencoded::Serializer::new(String::new());
        if let Some(p) = &self.prompts {
            s.append_pair("prompts", p);
        }
        let flag = |b: bool| if b { "1" } else { "0" };
        if let Some(t) = self.template {
            s.append_pair("template", flag(t));
        }
        if let Some(m) = self.method {
            s.append_pair("method", m.name());
        }
        if let Some(c) = self.compare {
            s.append_pair("compare", flag(c));
        }
        if let Some(size) = self.size {
            s.append_pair("size", &size.to_string());
        }
        if let Some(q) = self.square {
            s.append_pair("square", flag(q));
        }
        if let Some(k) = self.layers {
            s.append_pair("layers", &k.to_string());
        }
        if let Some(v) = self.view {
            s.append_pair("view", v.key());
        }
        if let Some(t) = self.threshold {
            s.append_pair("threshold", &format!("{t:.2}"));
        }
        if let Some(u) = &self.model_url {
            s.append_pair("model", u);
        }
        s.finish()
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_links_round_trip_and_ignore_what_they_cannot_use() {
        let s = Shared {
            prompts: Some("a red ring\nsomething blue & more = 100%".into()),
            template: Some(false),
            method: Some(Method::GradCam),
            compare: Some(true),
            size: Some(336),
            square: Some(true),
            layers: Some(-3),
            view: Some(ViewMode::Segments),
            threshold: Some(0.35),
            model_url: Some("https://example.org/m.safetensors?x=1#y".into()),
        };
        let fragment = s.to_fragment();
        assert!(!fragment.contains('#') && !fragment.contains('\n'), "{fragment}");
        assert_eq!(Shared::parse(&format!("#{fragment}")), s);
        // Out of range, unknown or unsafe values are dropped, the rest kept.
        let odd = Shared::parse(
            "#size=99999&layers=5&method=nope&model=javascript:alert(1)&template=maybe&x=1&prompts=a%07b&view=x&threshold=2",
        );
        assert_eq!(odd, Shared { prompts: Some("ab".into()), ..Shared::default() });
        assert!(Shared::parse("").is_empty());
    }
}
