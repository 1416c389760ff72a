use leptos::html::Canvas;
use leptos::prelude::*;
use wasm_bindgen::JsCast;

use crate::app::AppState;
use crate::gallery::{Entry, Filter, Outcome, Sort, arrange, progress};
use crate::gallery_run::SHOWN_STEP;

fn file_list(list: Option<web_sys::FileList>) -> Vec<web_sys::File> {
    let Some(list) = list else { return vec![] };
    (0..list.length()).filter_map(|i| list.get(i)).collect()
}

/// What a card shows changes with this: its image, the run of its answer, its outcome.
fn card_key(e: &Entry) -> String {
    let outcome = match e.outcome {
        Outcome::Waiting => "w",
        Outcome::Done => "d",
        Outcome::Failed(_) => "f",
    };
    format!("{}:{outcome}:{}", e.item, e.explained.as_ref().map_or(0, |x| x.ready.run))
}

/// A thumbnail with the map over it, drawn when its answer, the opacity or the colormap change.
#[component]
fn Thumb(entry: Entry) -> impl IntoView {
    let state = expect_context::<AppState>();
    let canvas = NodeRef::<Canvas>::new();
    let explained = entry.explained.clone();
    Effect::new(move |_| {
        let (alpha, colormap) = (state.opacity.get(), state.colormap.get());
        let (Some(c), Some(x)) = (canvas.get(), explained.as_ref()) else { return };
        let (rgb, (h, w)) = x.overlay(alpha, colormap);
        crate::render::draw_rgb(&c, &rgb, (h, w));
    });
    view! { <canvas node_ref=canvas class="gallery-thumb" aria-hidden="true"></canvas> }
}

#[component]
fn Card(entry: Entry, at: usize) -> impl IntoView {
    let state = expect_context::<AppState>();
    let g = state.gallery;
    let stale = entry.outcome == Outcome::Waiting;
    let (score, presence, absent) = match &entry.explained {
        Some(x) => (Some(x.ready.score), Some(x.ready.presence), x.likely_absent()),
        None => (None, None, false),
    };
    let status = match (&entry.outcome, score) {
        (Outcome::Failed(why), _) => why.clone(),
        (_, Some(s)) => {
            let p = presence.unwrap_or(1.0);
            let there = if absent { " · likely absent" } else { "" };
            format!("score {s:.3} · presence {:.0}%{there}", 100.0 * p)
        }
        _ => "waiting".to_string(),
    };
    let class = match (&entry.outcome, absent, stale) {
        (Outcome::Failed(_), ..) => "gallery-card failed",
        (_, true, _) => "gallery-card absent",
        (_, _, true) => "gallery-card stale",
        _ => "gallery-card",
    };
    let state_key = match &entry.outcome {
        Outcome::Waiting => "waiting",
        Outcome::Done => "done",
        Outcome::Failed(_) => "failed",
    };
    let label = format!("{}: {status}. Open in the large view", entry.name);
    let name = entry.name.clone();
    let data_name = entry.name.clone();
    view! {
        <li class=class data-testid="gallery-card" data-name=data_name data-state=state_key
            data-score=score.map(|s| s.to_string()).unwrap_or_default()
            data-presence=presence.map(|p| p.to_string()).unwrap_or_default()>
            <button class="gallery-open" aria-label=label on:click=move |_| g.open(state, at)>
                <Thumb entry=entry />
                <span class="gallery-name">{name}</span>
                <span class="gallery-status small">{status}</span>
            </button>
        </li>
    }
}

#[component]
pub fn Gallery() -> impl IntoView {
    let state = expect_context::<AppState>();
    let g = state.gallery;
    let export_error = RwSignal::new(None::<String>);
    let on_folder = move |ev: leptos::ev::Event| {
        let input: web_sys::HtmlInputElement = ev.target().unwrap().unchecked_into();
        g.add(state, file_list(input.files()));
        input.set_value("");
    };
    let progress_line = move || {
        let run = g.run.get();
        let (done, total, running) = g.counts();
        let p = progress(
            done,
            total,
            run.answered,
            (if running { crate::clock::now_ms() } else { run.last_ms }) - run.started_ms,
        );
        let text = if total == 0 {
            String::new()
        } else if run.key.prompt.is_empty() {
            "Type a prompt to explain the gallery.".to_string()
        } else if run.cancelled && done < total {
            format!("Stopped at {done} of {total} images for “{}”.", run.key.prompt)
        } else if running {
            let left = p.left_s.map(|s| format!(", about {:.0} s left", s.ceil())).unwrap_or_default();
            format!("{done} of {total} images for “{}”, {:.1} images/s{left}", run.key.prompt, p.per_s)
        } else {
            format!("{total} images for “{}”, {:.1} images/s.", run.key.prompt, p.per_s)
        };
        view! {
            <p role="status" aria-live="polite" data-testid="gallery-progress" data-done=done data-total=total
                data-running=running.to_string() data-per-s=format!("{:.3}", p.per_s)
                data-engine-wasm=g.memory.get().map(|m| m.wasm_bytes).unwrap_or(0)>{text}</p>
        }
    };
    let controls = move || {
        let run = g.run.get();
        let (done, total, running) = g.counts();
        view! {
            <Show when=move || running>
                <button data-testid="gallery-cancel" on:click=move |_| g.cancel()>"Cancel"</button>
            </Show>
            <Show when=move || run.cancelled && done < total>
                <button data-testid="gallery-resume" on:click=move |_| g.resume(state)>"Continue"</button>
            </Show>
        }
    };
    let prompts = move || state.prompts();
    let chosen = move || g.prompt(&state).unwrap_or_default();
    // The cards shown, each keyed by its image and its answer: a new answer redraws its own
    // card only (a thumbnail's overlay is the page's largest cost per image).
    let order = Memo::new(move |_| g.entries.with(|es| arrange(es, g.sort.get(), &g.filter.get())));
    let visible = move || {
        let shown = g.shown.get();
        order.with(|o| {
            g.entries.with(|es| o.iter().take(shown).map(|&i| (card_key(&es[i]), i, es[i].clone())).collect::<Vec<_>>())
        })
    };
    let more = move || order.with(|o| o.len()).saturating_sub(g.shown.get());
    let skipped = move || {
        let n = g.skipped.get();
        (n > 0).then(|| view! { <p class="hint small" data-testid="gallery-skipped">{format!("{n} file(s) that are not images were left out.")}</p> })
    };
    view! {
        <section class="panel gallery" aria-label="Gallery" data-testid="gallery">
            <h2>"Gallery"</h2>
            <p class="hint small">"Drop, paste or pick several images (or a folder) to see one prompt's map on each of them."</p>
            <label class="file">
                "Choose a folder "
                <input type="file" data-testid="gallery-folder" prop:webkitdirectory=true multiple=true on:change=on_folder />
            </label>
            <Show when=move || g.entries.with(|es| !es.is_empty())>
                <div class="gallery-bar">
                    <label>"Prompt "
                        <select data-testid="gallery-prompt" prop:value=chosen
                            on:change=move |ev| { g.chosen.set(Some(event_target_value(&ev))); g.follow(state); }>
                            {move || prompts().into_iter().map(|p| view! { <option value=p.clone()>{p.clone()}</option> }).collect_view()}
                        </select>
                    </label>
                    <label>"Sort by "
                        <select data-testid="gallery-sort" prop:value=move || g.sort.get().key()
                            on:change=move |ev| g.sort.set(Sort::from_key(&event_target_value(&ev)))>
                            {Sort::ALL.into_iter().map(|s| view! { <option value=s.key()>{s.label()}</option> }).collect_view()}
                        </select>
                    </label>
                    <label>"Name contains "
                        <input type="search" data-testid="gallery-filter" prop:value=move || g.filter.get().name
                            on:input=move |ev| g.filter.update(|f: &mut Filter| f.name = event_target_value(&ev)) />
                    </label>
                    <label>
                        <input type="checkbox" data-testid="gallery-present" prop:checked=move || g.filter.get().present_only
                            on:change=move |ev| g.filter.update(|f: &mut Filter| f.present_only = event_target_checked(&ev)) />
                        " Likely present only"
                    </label>
                    {controls}
                    <button data-testid="gallery-export" on:click=move |_| export_error.set(g.export(state).err())>"Export ZIP"</button>
                    <button data-testid="gallery-clear" on:click=move |_| g.clear()>"Clear"</button>
                </div>
                {progress_line}
                {move || export_error.get().map(|e| view! { <p class="error" role="alert">{e}</p> })}
                <ul class="gallery-grid" data-testid="gallery-grid">
                    <For each=visible key=|(k, _, _)| k.clone() children=move |(_, at, entry)| view! { <Card entry at /> } />
                </ul>
                <Show when=move || { more() > 0 }>
                    <button data-testid="gallery-more" on:click=move |_| g.shown.update(|n| *n += SHOWN_STEP)>
                        {move || format!("Show {} more", more().min(SHOWN_STEP))}
                    </button>
                </Show>
            </Show>
            {skipped}
        </section>
    }
}
