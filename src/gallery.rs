//! The gallery's data (issue 30): many images, one prompt, LeGrad. What the page keeps per image
//! is the engine's answer (`GalleryItem`): a thumbnail and the map at grid resolution, never
//! the photo; the map at the model's input size is made again from the grid when it is needed
//! (`legrad::maps::finish_maps`, as the engine makes it). Sorting, filtering, progress and the
//! ZIP export are plain arithmetic here, unit-tested natively.

use std::io::Write;
use std::sync::Arc;

use legrad::overlay::{Colormap, blend_region, resize_onto};

use crate::protocol::{GalleryItem, LIKELY_ABSENT};

/// One image's answer for a prompt, as the engine sent it.
#[derive(Clone, Debug, PartialEq)]
pub struct Explained {
    pub ready: GalleryItem,
    /// RGB of `ready.thumb` (width, height).
    pub thumb: Arc<Vec<u8>>,
    /// Min-max normalised, `ready.grid` cells.
    pub grid_map: Arc<Vec<f32>>,
}

impl Explained {
    /// None when a buffer does not fit the sizes it came with.
    pub fn new(ready: GalleryItem, thumb: Vec<u8>, grid_map: Vec<f32>) -> Option<Self> {
        let (w, h) = ready.thumb;
        let fits = thumb.len() == (w * h * 3) as usize
            && w > 0
            && h > 0
            && grid_map.len() == ready.grid.0 * ready.grid.1
            && !grid_map.is_empty()
            && ready.patch > 0;
        fits.then(|| Self { ready, thumb: Arc::new(thumb), grid_map: Arc::new(grid_map) })
    }

    /// `(height, width)` of the map: the grid times the patch.
    pub fn map_size(&self) -> (usize, usize) {
        (self.ready.grid.0 * self.ready.patch, self.ready.grid.1 * self.ready.patch)
    }

    /// The map at the model's input size, as the engine makes it from the grid.
    pub fn map(&self) -> Vec<f32> {
        let r = &self.ready;
        legrad::maps::finish_maps(&self.grid_map, None, 1, r.grid, r.patch, r.order)
            .pop()
            .map(|m| m.map)
            .unwrap_or_default()
    }

    /// The thumbnail with the map over the part of it the map covers; `(height, width)`.
    pub fn overlay(&self, alpha: f32, colormap: Colormap) -> (Vec<u8>, (usize, usize)) {
        let to = (self.ready.thumb.1 as usize, self.ready.thumb.0 as usize);
        match resize_onto(&self.map(), self.map_size(), self.ready.input, to) {
            Ok((region, values)) => (blend_region(&self.thumb, to, &values, region, alpha, colormap), to),
            Err(_) => (self.thumb.to_vec(), to),
        }
    }

    pub fn likely_absent(&self) -> bool {
        self.ready.presence < LIKELY_ABSENT
    }
}

/// What became of an image in the current run.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Not answered in this run yet (the last run's answer, if any, is still shown).
    Waiting,
    Done,
    Failed(String),
}

/// One image of the gallery.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// Its number (the engine keeps its trace by it).
    pub item: u64,
    pub name: String,
    pub outcome: Outcome,
    /// The latest answer (kept while a new run has not reached this image).
    pub explained: Option<Explained>,
}

/// The grid's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Sort {
    /// As added.
    #[default]
    Added,
    ScoreHigh,
    ScoreLow,
    Name,
}

impl Sort {
    pub const ALL: [Sort; 4] = [Sort::Added, Sort::ScoreHigh, Sort::ScoreLow, Sort::Name];

    pub fn label(self) -> &'static str {
        match self {
            Sort::Added => "as added",
            Sort::ScoreHigh => "score, highest first",
            Sort::ScoreLow => "score, lowest first",
            Sort::Name => "name",
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Sort::Added => "added",
            Sort::ScoreHigh => "score-high",
            Sort::ScoreLow => "score-low",
            Sort::Name => "name",
        }
    }

    pub fn from_key(key: &str) -> Self {
        Self::ALL.into_iter().find(|s| s.key() == key).unwrap_or_default()
    }
}

/// Which images the grid shows.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Filter {
    /// Part of the name, any case (empty: every name).
    pub name: String,
    /// Only images where the prompt is likely present.
    pub present_only: bool,
}

impl Filter {
    fn keeps(&self, e: &Entry) -> bool {
        let name = self.name.trim().to_lowercase();
        (name.is_empty() || e.name.to_lowercase().contains(&name))
            && (!self.present_only || e.explained.as_ref().is_some_and(|x| !x.likely_absent()))
    }
}

/// The indices of `entries` the grid shows, in order. Images without a score (waiting, failed)
/// come after the scored ones whatever the score order, in the order added.
pub fn arrange(entries: &[Entry], sort: Sort, filter: &Filter) -> Vec<usize> {
    let mut shown: Vec<usize> = (0..entries.len()).filter(|&i| filter.keeps(&entries[i])).collect();
    let score =
        |i: usize| entries[i].explained.as_ref().filter(|_| entries[i].outcome == Outcome::Done).map(|x| x.ready.score);
    match sort {
        Sort::Added => {}
        Sort::Name => shown.sort_by(|&a, &b| entries[a].name.cmp(&entries[b].name)),
        Sort::ScoreHigh | Sort::ScoreLow => shown.sort_by(|&a, &b| match (score(a), score(b)) {
            (Some(x), Some(y)) if sort == Sort::ScoreHigh => y.total_cmp(&x),
            (Some(x), Some(y)) => x.total_cmp(&y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        }),
    }
    shown
}

/// A run's progress: images answered of all, images per second, seconds left.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Progress {
    pub done: usize,
    pub total: usize,
    pub per_s: f64,
    pub left_s: Option<f64>,
}

/// `done` of `total` answered in this run, `answered` of them in `elapsed_ms` since it started
/// (images answered from a kept trace count as well: the rate is what the user sees).
pub fn progress(done: usize, total: usize, answered: usize, elapsed_ms: f64) -> Progress {
    let per_s = if elapsed_ms > 0.0 { answered as f64 * 1000.0 / elapsed_ms } else { 0.0 };
    let left = total.saturating_sub(done);
    let left_s = (per_s > 0.0).then(|| left as f64 / per_s);
    Progress { done, total, per_s, left_s }
}

/// A file name made safe and unique by the image's place in the gallery: `0007-cat.png` for
/// the 8th image `cat.jpg`.
pub fn file_stem(index: usize, name: &str) -> String {
    let stem = name.rsplit_once('.').map(|(s, _)| s).filter(|s| !s.is_empty()).unwrap_or(name);
    let stem = stem.rsplit(['/', '\\']).next().unwrap_or(stem);
    let safe: String =
        stem.chars().map(|c| if c.is_alphanumeric() || c == '-' || c == '_' { c } else { '-' }).take(60).collect();
    format!("{index:04}-{}", safe.trim_matches('-'))
}

/// A CSV field, quoted when it must be (RFC 4180). Four columns of names and numbers: a CSV
/// crate in the page's module would be more code than this.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}

/// The gallery as one ZIP: per answered image its overlay (at the thumbnail's size, the map
/// over it) and its map as a 16-bit PNG at the model's input size (the numbers the native
/// engine writes to its `.npy`), and `index.csv` (image, prompt, score, presence, the files, or
/// the error). Stored, not deflated: PNGs are compressed already.
pub fn zip(entries: &[Entry], prompt: &str, alpha: f32, colormap: Colormap) -> Result<Vec<u8>, String> {
    let e = |e: zip::result::ZipError| format!("the ZIP could not be written: {e}");
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut index = String::from("image,prompt,score,presence,likely_absent,overlay,map,error\n");
    for (i, entry) in entries.iter().enumerate() {
        let name = csv_field(&entry.name);
        let prompt = csv_field(prompt);
        match (&entry.outcome, &entry.explained) {
            (Outcome::Done, Some(x)) => {
                let stem = file_stem(i, &entry.name);
                let (overlay, size) = x.overlay(alpha, colormap);
                let overlay = crate::png::rgb_png(&overlay, size).ok_or("an overlay could not be encoded")?;
                let map = crate::png::map_png(&x.map(), x.map_size()).ok_or("a map could not be encoded")?;
                let (o, m) = (format!("overlays/{stem}.png"), format!("maps/{stem}.png"));
                zip.start_file(o.as_str(), options).map_err(e)?;
                zip.write_all(&overlay).map_err(|err| err.to_string())?;
                zip.start_file(m.as_str(), options).map_err(e)?;
                zip.write_all(&map).map_err(|err| err.to_string())?;
                let r = &x.ready;
                index.push_str(&format!("{name},{prompt},{},{},{},{o},{m},\n", r.score, r.presence, x.likely_absent()));
            }
            (Outcome::Failed(why), _) => index.push_str(&format!("{name},{prompt},,,,,,{}\n", csv_field(why))),
            _ => index.push_str(&format!("{name},{prompt},,,,,,not explained yet\n")),
        }
    }
    zip.start_file("index.csv", options).map_err(e)?;
    zip.write_all(index.as_bytes()).map_err(|err| err.to_string())?;
    Ok(zip.finish().map_err(e)?.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::GalleryItem;
    use legrad::maps::MapOrder;

    fn item(item: u64, score: f32, presence: f32) -> GalleryItem {
        GalleryItem {
            run: 1,
            item,
            photo: (40, 20),
            thumb: (8, 4),
            input: (8, 8),
            grid: (2, 2),
            patch: 4,
            order: MapOrder::UpsampleThenNormalise,
            score,
            presence,
            constant: false,
            traced: true,
            image_ms: 1.0,
            explain_ms: 1.0,
            memory: Default::default(),
        }
    }

    fn entry(i: u64, name: &str, score: Option<f32>) -> Entry {
        // Presence: likely absent below a score of 0.1.
        let presence = |s: f32| if s < 0.1 { 0.1 } else { 0.9 };
        let explained = score
            .map(|s| Explained::new(item(i, s, presence(s)), vec![100; 8 * 4 * 3], vec![0.0, 0.5, 0.25, 1.0]).unwrap());
        let outcome = if score.is_some() { Outcome::Done } else { Outcome::Failed("broken.png: not an image".into()) };
        Entry { item: i, name: name.into(), outcome, explained }
    }

    #[test]
    fn sorting_puts_unscored_images_last_and_filters_by_name_and_presence() {
        let es = vec![
            entry(0, "b.png", Some(0.2)),
            entry(1, "broken.png", None),
            entry(2, "a.png", Some(0.9)),
            entry(3, "c.PNG", Some(0.01)),
        ];
        assert_eq!(arrange(&es, Sort::Added, &Filter::default()), vec![0, 1, 2, 3]);
        assert_eq!(arrange(&es, Sort::ScoreHigh, &Filter::default()), vec![2, 0, 3, 1]);
        assert_eq!(arrange(&es, Sort::ScoreLow, &Filter::default()), vec![3, 0, 2, 1]);
        assert_eq!(arrange(&es, Sort::Name, &Filter::default()), vec![2, 0, 1, 3]);
        let png = Filter { name: "C.p".into(), present_only: false };
        assert_eq!(arrange(&es, Sort::Added, &png), vec![3]);
        const { assert!(LIKELY_ABSENT > 0.1 && LIKELY_ABSENT < 0.9) };
        let present = Filter { name: String::new(), present_only: true };
        assert_eq!(arrange(&es, Sort::ScoreHigh, &present), vec![2, 0]);
        // NaN scores cannot break the order (total_cmp).
        let mut nan = es.clone();
        nan[0].explained.as_mut().unwrap().ready.score = f32::NAN;
        assert_eq!(arrange(&nan, Sort::ScoreHigh, &Filter::default()).len(), 4);
    }

    #[test]
    fn the_map_is_the_engines_from_its_grid_and_the_overlay_covers_the_thumbnail() {
        let x = entry(0, "a.png", Some(0.5)).explained.unwrap();
        let map = x.map();
        assert_eq!(map.len(), 64);
        let (lo, hi) = map.iter().fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
        assert_eq!((lo, hi), (0.0, 1.0));
        let (rgb, size) = x.overlay(0.5, Colormap::Jet);
        assert_eq!(size, (4, 8));
        assert_eq!(rgb.len(), 4 * 8 * 3);
        assert_ne!(rgb, *x.thumb, "the map is drawn over it");
        assert!(Explained::new(item(0, 0.0, 0.0), vec![0; 5], vec![0.0; 4]).is_none(), "a wrong thumbnail length");
        assert!(Explained::new(item(0, 0.0, 0.0), vec![0; 96], vec![0.0; 3]).is_none(), "a wrong grid length");
    }

    #[test]
    fn progress_says_the_rate_and_the_time_left() {
        let p = progress(10, 40, 10, 5000.0);
        assert_eq!((p.done, p.total), (10, 40));
        assert!((p.per_s - 2.0).abs() < 1e-9);
        assert_eq!(p.left_s, Some(15.0));
        assert_eq!(progress(0, 5, 0, 0.0).left_s, None, "no rate yet");
    }

    #[test]
    fn file_stems_are_safe_and_unique_by_place() {
        assert_eq!(file_stem(7, "cat.jpg"), "0007-cat");
        assert_eq!(file_stem(0, "holiday/a b,c.png"), "0000-a-b-c");
        assert_eq!(file_stem(12, ".hidden"), "0012-hidden");
        assert_eq!(csv_field("a,\"b\""), "\"a,\"\"b\"\"\"");
        assert_eq!(csv_field("plain"), "plain");
    }

    #[test]
    fn the_zip_holds_overlays_maps_and_an_index_with_the_failures() {
        let es = vec![entry(0, "b.png", Some(0.2)), entry(1, "broken, really.png", None)];
        let bytes = zip(&es, "a \"red\" circle", 0.6, Colormap::Jet).unwrap();
        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
        let mut names: Vec<String> = archive.file_names().map(|n| n.unwrap().into_owned()).collect();
        names.sort();
        assert_eq!(names, vec!["index.csv", "maps/0000-b.png", "overlays/0000-b.png"]);
        let mut index = String::new();
        std::io::Read::read_to_string(&mut archive.by_name("index.csv").unwrap(), &mut index).unwrap();
        let lines: Vec<&str> = index.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[1].starts_with("b.png,\"a \"\"red\"\" circle\",0.2,0.9,false,overlays/0000-b.png,maps/0000-b.png,"),
            "{}",
            lines[1]
        );
        assert!(lines[2].starts_with("\"broken, really.png\","), "{}", lines[2]);
        assert!(lines[2].ends_with("broken.png: not an image"), "{}", lines[2]);
        // The map PNG: 16-bit, the model's input size, the map's values.
        let mut png = Vec::new();
        std::io::Read::read_to_end(&mut archive.by_name("maps/0000-b.png").unwrap(), &mut png).unwrap();
        let img = image::load_from_memory(&png).unwrap();
        assert_eq!((img.width(), img.height()), (8, 8));
        let values = img.to_luma16().into_raw();
        let map = es[0].explained.as_ref().unwrap().map();
        for (v, m) in values.iter().zip(&map) {
            assert!((*v as f32 / 65535.0 - m).abs() <= 1.0 / 65535.0, "{v} vs {m}");
        }
    }
}
