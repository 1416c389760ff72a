//! The gallery's state in the page and its runs: one image at a time to the engine (the next
//! goes when the answer comes, so nothing queues and Cancel is not sending the next), the
//! files kept as the browser's `File`s (on disk, not in memory) and read again when a new
//! prompt needs them; what is kept per image is [`crate::gallery::Explained`].

use leptos::prelude::*;
use leptos::task::spawn_local;

use legrad::overlay::Colormap;

use crate::bridge;
use crate::clock::now_ms;
use crate::files::file_bytes;
use crate::gallery::{Entry, Explained, Filter, Outcome, Sort};
use crate::protocol::*;

/// What the gallery needs of the page's state (the app's `AppState`): it reads what is asked
/// and opens an image in the large view, and never holds the state's type.
pub trait GalleryHost: Copy + 'static {
    /// The prompts typed, one per line, blanks skipped.
    fn prompts(&self) -> Vec<String>;
    /// The template (None: prompts as typed), the size, whether the shape is kept, the layers.
    fn asked(&self) -> (Option<String>, u32, bool, i64);
    /// The engine and its model are ready.
    fn ready(&self) -> bool;
    /// Make `bytes` the large view's image, the `prompt`-th prompt's card selected.
    fn open_image(&self, name: String, bytes: js_sys::ArrayBuffer, prompt: Option<usize>);
    /// The maps' opacity and colormap.
    fn look(&self) -> (f32, Colormap);
}

/// What a run asks: a change of any part starts a new run.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct RunKey {
    pub prompt: String,
    pub template: Option<String>,
    pub size: u32,
    pub keep_aspect: bool,
    pub layer_index: i64,
}

/// The current run.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Run {
    pub id: u64,
    pub key: RunKey,
    /// When it started (or went on after a cancel), and the images answered since.
    pub started_ms: f64,
    pub answered: usize,
    /// When the last image was answered (the run's time once it is over).
    pub last_ms: f64,
    pub cancelled: bool,
}

#[derive(Clone, Copy)]
pub struct GalleryState {
    pub entries: RwSignal<Vec<Entry>>,
    pub run: RwSignal<Run>,
    pub sort: RwSignal<Sort>,
    pub filter: RwSignal<Filter>,
    /// The prompt chosen among those typed (None: the first).
    pub chosen: RwSignal<Option<String>>,
    /// Files that were not images, left out of the last addition.
    pub skipped: RwSignal<usize>,
    /// How many cards the grid shows (more on demand: a thousand canvases at once is slow).
    pub shown: RwSignal<usize>,
    pub memory: RwSignal<Option<EngineMemory>>,
    files: StoredValue<Vec<web_sys::File>, LocalStorage>,
    in_flight: StoredValue<bool>,
    next_item: StoredValue<u64>,
}

/// Cards shown at first, and added by "Show more".
pub const SHOWN_STEP: usize = 60;

/// Is this file an image the engine may read (by its type, or its extension when the browser
/// gives none)?
pub fn is_image(file: &web_sys::File) -> bool {
    let kind = file.type_();
    if !kind.is_empty() {
        return kind.starts_with("image/");
    }
    let n = file.name().to_ascii_lowercase();
    [".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".ico"].iter().any(|e| n.ends_with(e))
}

impl GalleryState {
    pub fn new() -> Self {
        Self {
            entries: RwSignal::new(Vec::new()),
            run: RwSignal::new(Run::default()),
            sort: RwSignal::new(Sort::default()),
            filter: RwSignal::new(Filter::default()),
            chosen: RwSignal::new(None),
            skipped: RwSignal::new(0),
            shown: RwSignal::new(SHOWN_STEP),
            memory: RwSignal::new(None),
            files: StoredValue::new_local(Vec::new()),
            in_flight: StoredValue::new(false),
            next_item: StoredValue::new(0),
        }
    }

    /// Images answered in this run, of all, and whether the run is going (tracked: the grid's
    /// progress line and its buttons follow it).
    pub fn counts(&self) -> (usize, usize, bool) {
        let run = self.run.get();
        let (done, total) =
            self.entries.with(|es| (es.iter().filter(|e| e.outcome != Outcome::Waiting).count(), es.len()));
        (done, total, done < total && !run.cancelled && !run.key.prompt.is_empty())
    }

    /// The prompt the gallery explains: the one chosen if it is still typed, else the first.
    pub fn prompt(&self, app: &impl GalleryHost) -> Option<String> {
        let typed = app.prompts();
        let chosen = self.chosen.get();
        chosen.filter(|c| typed.contains(c)).or_else(|| typed.first().cloned())
    }

    fn key(&self, app: &impl GalleryHost) -> Option<RunKey> {
        let (template, size, keep_aspect, layer_index) = app.asked();
        Some(RunKey { prompt: self.prompt(app)?, template, size, keep_aspect, layer_index })
    }

    /// Add files (those that are not images are counted and left out) and explain them.
    pub fn add(&self, app: impl GalleryHost, files: Vec<web_sys::File>) {
        let (images, other): (Vec<_>, Vec<_>) = files.into_iter().partition(is_image);
        self.skipped.set(other.len());
        if images.is_empty() {
            return;
        }
        let mut next = self.next_item.get_value();
        let added: Vec<Entry> = images
            .iter()
            .map(|f| {
                next += 1;
                Entry { item: next, name: f.name(), outcome: Outcome::Waiting, explained: None }
            })
            .collect();
        self.next_item.set_value(next);
        // Images added to a run that was over (or stopped): the rate counts from now.
        let idle = self.entries.with_untracked(|es| es.iter().all(|e| e.outcome != Outcome::Waiting));
        self.files.update_value(|fs| fs.extend(images));
        self.entries.update(|es| es.extend(added));
        self.run.update(|r| {
            if r.cancelled || idle {
                r.started_ms = now_ms();
                r.answered = 0;
            }
            r.cancelled = false;
        });
        self.follow(app);
    }

    /// A new run when what is asked changed (prompt, template, size, layers, model); else go on.
    pub fn follow(&self, app: impl GalleryHost) {
        let Some(key) = self.key(&app) else { return };
        if self.run.with_untracked(|r| r.key != key) {
            self.restart(app, key);
        } else {
            self.pump(app);
        }
    }

    /// A new model: every image again.
    pub fn model_changed(&self, app: impl GalleryHost) {
        if let Some(key) = self.key(&app)
            && self.entries.with_untracked(|es| !es.is_empty())
        {
            self.restart(app, key);
        }
    }

    /// Every image again (the model changed, or what is asked).
    pub fn restart(&self, app: impl GalleryHost, key: RunKey) {
        self.entries.update(|es| es.iter_mut().for_each(|e| e.outcome = Outcome::Waiting));
        self.run.update(|r| {
            *r = Run { id: r.id + 1, key, started_ms: now_ms(), answered: 0, last_ms: now_ms(), cancelled: false }
        });
        self.pump(app);
    }

    /// Send the next waiting image, if none is on its way.
    fn pump(&self, app: impl GalleryHost) {
        if self.in_flight.get_value() || self.run.with_untracked(|r| r.cancelled) {
            return;
        }
        if !app.ready() {
            return; // ModelReady calls `model_changed`
        }
        let Some(at) = self.entries.with_untracked(|es| es.iter().position(|e| e.outcome == Outcome::Waiting)) else {
            return;
        };
        let Some(file) = self.files.with_value(|fs| fs.get(at).cloned()) else { return };
        let (item, name) = self.entries.with_untracked(|es| (es[at].item, es[at].name.clone()));
        let run = self.run.get_untracked();
        self.in_flight.set_value(true);
        let me = *self;
        spawn_local(async move {
            let request = GalleryRequest {
                run: run.id,
                item,
                name: name.clone(),
                prompt: run.key.prompt.clone(),
                template: run.key.template.clone(),
                size: run.key.size,
                keep_aspect: run.key.keep_aspect,
                layer_index: run.key.layer_index,
            };
            match file_bytes(&file).await {
                Some(bytes) => bridge::send(&Request::Gallery(request), vec![bytes]),
                None => me.on_failed(app, run.id, item, format!("{name}: the file could not be read")),
            }
        });
    }

    fn answered(&self, app: impl GalleryHost, run: u64, item: u64, update: impl FnOnce(&mut Entry)) {
        self.in_flight.set_value(false);
        if self.run.with_untracked(|r| r.id) == run {
            self.entries.update(|es| {
                if let Some(e) = es.iter_mut().find(|e| e.item == item) {
                    update(e);
                }
            });
            self.run.update(|r| {
                r.answered += 1;
                r.last_ms = now_ms();
            });
        }
        self.pump(app);
    }

    pub fn on_item(&self, app: impl GalleryHost, ready: GalleryItem, buffers: Vec<js_sys::ArrayBuffer>) {
        self.memory.set(Some(ready.memory));
        let (run, item) = (ready.run, ready.item);
        let thumb = buffers.first().map(buffer_to_bytes).unwrap_or_default();
        let grid = buffers.get(1).map(buffer_to_f32).unwrap_or_default();
        let explained = Explained::new(ready, thumb, grid);
        self.answered(app, run, item, |e| match explained {
            Some(x) => {
                e.explained = Some(x);
                e.outcome = Outcome::Done;
            }
            None => e.outcome = Outcome::Failed(format!("{}: the engine's answer did not fit its sizes", e.name)),
        });
    }

    pub fn on_failed(&self, app: impl GalleryHost, run: u64, item: u64, message: String) {
        self.answered(app, run, item, |e| {
            e.explained = None;
            e.outcome = Outcome::Failed(message);
        });
    }

    pub fn cancel(&self) {
        self.run.update(|r| r.cancelled = true);
    }

    /// Go on after a cancel (the rate counts from now).
    pub fn resume(&self, app: impl GalleryHost) {
        self.run.update(|r| {
            r.cancelled = false;
            r.started_ms = now_ms();
            r.answered = 0;
        });
        self.pump(app);
    }

    /// Empty the gallery; the engine lets go of its traces.
    pub fn clear(&self) {
        self.files.set_value(Vec::new());
        self.entries.set(Vec::new());
        self.skipped.set(0);
        self.shown.set(SHOWN_STEP);
        self.run.update(|r| *r = Run { id: r.id + 1, ..Run::default() });
        bridge::send(&Request::GalleryClear, vec![]);
    }

    /// Open image `at` in the large view, its prompt's card selected.
    pub fn open(&self, app: impl GalleryHost, at: usize) {
        let Some(file) = self.files.with_value(|fs| fs.get(at).cloned()) else { return };
        let prompt = self.prompt(&app).and_then(|p| app.prompts().iter().position(|x| *x == p));
        spawn_local(async move {
            if let Some(bytes) = file_bytes(&file).await {
                app.open_image(file.name(), bytes, prompt);
                if let Some(w) = web_sys::window() {
                    w.scroll_to_with_x_and_y(0.0, 0.0);
                }
            }
        });
    }

    /// Everything answered in this run, as one ZIP offered for download.
    pub fn export(&self, app: impl GalleryHost) -> Result<(), String> {
        let prompt = self.run.with_untracked(|r| r.key.prompt.clone());
        let (alpha, colormap) = app.look();
        let bytes = self.entries.with_untracked(|es| crate::gallery::zip(es, &prompt, alpha, colormap))?;
        let name = format!("legrad-gallery-{}.zip", crate::render::slug(&prompt));
        crate::render::download(&bytes, &name, "application/zip");
        Ok(())
    }
}

impl Default for GalleryState {
    fn default() -> Self {
        Self::new()
    }
}
