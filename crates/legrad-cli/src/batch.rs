//! `legrad explain --images`: many images, the model loaded once (issue 30).
//!
//! * The images: a folder's image files, a glob pattern, or a list file (`@list.txt`), in a
//!   fixed order (sorted paths; a list's own order), then `--shard K/N`'s share of them: every
//!   Nth from the K-th, so that N machines split a data set with no coordinator and the union
//!   of the shards is the whole, each image once.
//! * Each image's files go to `DIR/<name>-<8 hex digits of its path>/` (the same files as a
//!   single `explain`); `DIR/index.jsonl` gets a line per image and prompt (image, prompt,
//!   score, presence, the files written) or one line for an image that failed (the error: the
//!   run goes on). A line is written once its image is done, so a run stopped at any point
//!   leaves an index that says what is done; a run again skips those images (for the same
//!   prompts: a new prompt explains the image again, and its newest line is the one that
//!   counts); an image that failed is tried again.
//! * Images are read and decoded on another thread while the engine works on the one before.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use legrad::LegradError;
use legrad::engine::Engine;

use crate::CliResult;
use crate::explain::{Loaded, Settings, explain_one};

/// `--shard K/N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Shard {
    pub k: usize,
    pub n: usize,
}

impl Default for Shard {
    fn default() -> Self {
        Self { k: 0, n: 1 }
    }
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("--shard takes K/N with 0 <= K < N (e.g. 0/4), not '{s}'");
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let (k, n): (usize, usize) = (k.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
        if n == 0 || k >= n {
            return Err(bad());
        }
        Ok(Self { k, n })
    }
}

impl Shard {
    /// This shard's items: every `n`th from the `k`-th.
    pub fn pick<T>(self, items: Vec<T>) -> Vec<T> {
        items.into_iter().enumerate().filter(|(i, _)| i % self.n == self.k).map(|(_, t)| t).collect()
    }
}

/// File name extensions read as images in a folder (other files there are left alone).
const IMAGE_EXTENSIONS: [&str; 16] = [
    "png", "jpg", "jpeg", "webp", "gif", "bmp", "tif", "tiff", "ico", "pnm", "pbm", "pgm", "ppm", "tga", "qoi", "avif",
];

/// The images `spec` names, in a fixed order.
pub(crate) fn list_images(spec: &str) -> CliResult<Vec<PathBuf>> {
    if let Some(list) = spec.strip_prefix('@') {
        let text = std::fs::read_to_string(list).map_err(|e| LegradError::io_path(Path::new(list), e))?;
        let base = Path::new(list).parent().unwrap_or(Path::new(""));
        // Relative paths in a list are relative to the list's folder.
        return Ok(text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| if Path::new(l).is_absolute() { PathBuf::from(l) } else { base.join(l) })
            .collect());
    }
    let path = Path::new(spec);
    if path.is_dir() {
        let mut out: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| LegradError::io_path(path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && p.extension()
                        .and_then(|e| e.to_str())
                        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
            })
            .collect();
        out.sort();
        return Ok(out);
    }
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let entries = glob::glob(spec).map_err(|e| LegradError::Input(format!("--images '{spec}': {e}")))?;
    let mut out: Vec<PathBuf> = entries.filter_map(|e| e.ok()).filter(|p| p.is_file()).collect();
    out.sort();
    if out.is_empty() {
        return Err(LegradError::Input(format!(
            "--images '{spec}' is no folder, file or @list, and as a pattern it matches no file"
        )));
    }
    Ok(out)
}

/// The folder an image's files go to: its file name's stem (tamed) and 8 hex digits of its
/// path (two photos of one name in two folders stay apart; the same path, the same folder).
pub(crate) fn folder_name(path: &Path) -> String {
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("image");
    let tame: String =
        stem.chars().map(|c| if c.is_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).take(48).collect();
    // FNV-1a: stable across runs and machines (the shards of one data set agree on names).
    let hash = path
        .to_string_lossy()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3));
    format!("{tame}-{:08x}", hash as u32)
}

/// What an existing index says: per image, the prompts done.
fn read_index(path: &Path) -> CliResult<HashMap<String, HashSet<String>>> {
    let mut done = HashMap::<String, HashSet<String>>::new();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(done),
        Err(e) => return Err(LegradError::io_path(path, e)),
    };
    // A line cut short by a stopped run is not JSON: its image is done again.
    for v in text.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()) {
        if let (Some(image), Some(p)) = (v["image"].as_str(), v["prompt"].as_str()) {
            done.entry(image.to_string()).or_default().insert(p.to_string());
        }
    }
    Ok(done)
}

pub(crate) fn run(engine: &Engine, s: &Settings, spec: &str, shard: Shard, out: &Path) -> CliResult<()> {
    let all = list_images(spec)?;
    let total = all.len();
    let mine = shard.pick(all);
    std::fs::create_dir_all(out).map_err(|e| LegradError::io_path(out, e))?;
    let index_path = out.join("index.jsonl");
    let done = read_index(&index_path)?;
    let prompts: Vec<&str> = s.prompts.iter().map(|p| p.prompt.as_str()).collect();
    let key = |p: &Path| p.to_string_lossy().into_owned();
    let todo: Vec<PathBuf> = mine
        .iter()
        .filter(|p| !done.get(&key(p)).is_some_and(|d| prompts.iter().all(|q| d.contains(*q))))
        .cloned()
        .collect();
    let skipped = mine.len() - todo.len();
    eprintln!(
        "{} images{}; {} to explain ({} done before, in {})",
        mine.len(),
        if shard.n > 1 { format!(" in shard {}/{} of {total}", shard.k, shard.n) } else { String::new() },
        todo.len(),
        skipped,
        index_path.display()
    );
    let mut index = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&index_path)
        .map_err(|e| LegradError::io_path(&index_path, e))?;
    // A line a stopped run left half written ends here, so that the next one starts afresh.
    let ends_cut = std::fs::read(&index_path).is_ok_and(|b| b.last().is_some_and(|&c| c != b'\n'));
    if ends_cut {
        index.write_all(b"\n").map_err(|e| LegradError::io_path(&index_path, e))?;
    }
    let bar = indicatif::ProgressBar::new(todo.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:32} {pos}/{len} images  {per_sec}  {eta} left  {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let patch = engine.model.config.vision.patch_size;
    let (mut explained, mut errors) = (0usize, 0usize);
    let start = Instant::now();
    std::thread::scope(|scope| -> CliResult<()> {
        // Two images ahead: decoding overlaps the engine's work, memory stays bounded.
        let (tx, rx) = mpsc::sync_channel::<(PathBuf, CliResult<Loaded>)>(2);
        let todo = &todo;
        scope.spawn(move || {
            for p in todo {
                let loaded = std::fs::read(p).map_err(|e| LegradError::io_path(p, e)).and_then(|b| s.load(&b, patch));
                if tx.send((p.clone(), loaded)).is_err() {
                    return;
                }
            }
        });
        for (path, loaded) in rx {
            let t = Instant::now();
            let name = folder_name(&path);
            let result = loaded.and_then(|img| explain_one(engine, s, img, &out.join(&name)));
            let mut lines = String::new();
            match result {
                Ok((results, files)) => {
                    explained += 1;
                    for (r, f) in results.iter().zip(files) {
                        let line = serde_json::json!({
                            "image": key(&path), "prompt": r.prompt, "score": r.score, "presence": r.presence,
                            "likely_absent": r.presence < legrad::presence::LIKELY_ABSENT,
                            "dir": name, "files": f.iter().map(|f| format!("{name}/{f}")).collect::<Vec<_>>(),
                            "ms": t.elapsed().as_secs_f64() * 1e3,
                        });
                        lines.push_str(&format!("{line}\n"));
                    }
                }
                Err(e) => {
                    errors += 1;
                    bar.suspend(|| eprintln!("skipped {}: {e}", path.display()));
                    lines
                        .push_str(&format!("{}\n", serde_json::json!({ "image": key(&path), "error": e.to_string() })));
                }
            }
            index
                .write_all(lines.as_bytes())
                .and_then(|_| index.flush())
                .map_err(|e| LegradError::io_path(&index_path, e))?;
            bar.inc(1);
        }
        Ok(())
    })?;
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    let rss = crate::bench::peak_rss().map(|b| format!("; peak RSS {:.0} MiB", b as f64 / (1 << 20) as f64));
    println!(
        "{explained} images explained, {errors} failed, {skipped} done before, in {seconds:.1} s: {:.2} images/s{}",
        explained as f64 / seconds.max(1e-9),
        rss.unwrap_or_default()
    );
    println!("index: {}", index_path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_split_the_whole_once() {
        assert_eq!("1/3".parse::<Shard>(), Ok(Shard { k: 1, n: 3 }));
        for bad in ["3/3", "0/0", "a/2", "1", "-1/2"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
        let items: Vec<usize> = (0..10).collect();
        let mut union: Vec<usize> = (0..3).flat_map(|k| Shard { k, n: 3 }.pick(items.clone())).collect();
        union.sort();
        assert_eq!(union, items);
        assert_eq!(Shard::default().pick(items.clone()), items);
    }

    #[test]
    fn folder_names_are_stable_and_apart() {
        let a = folder_name(Path::new("x/cat photo.jpg"));
        assert!(a.starts_with("cat_photo-") && a.len() == "cat_photo-".len() + 8, "{a}");
        assert_eq!(a, folder_name(Path::new("x/cat photo.jpg")));
        assert_ne!(a, folder_name(Path::new("y/cat photo.jpg")));
    }
}
