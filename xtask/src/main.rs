//! Dev tasks: `cargo xtask <task>`. Plain argument matching, one function per task, std only.
//!
//! | task | does |
//! |---|---|
//! | `setup` | installs what a fresh machine lacks: the wasm32 target, trunk and wasm-bindgen-cli (pinned, from crates.io), npm packages for the browser tests |
//! | `serve` | `setup`, then serves the app on http://127.0.0.1:8080 |
//! | `dist` | `setup`, then `trunk build --release` into `dist/` (works from any sub-path) |
//! | `test` | every test: the house rules, native (CPU and wgpu), the wasm32 build, the browser suites |
//! | `e2e` | the browser end-to-end suite alone (`tests/e2e/`, `@playwright/test`); `-g TEXT` picks tests by name |
//! | `lint` | the house rules alone: `cargo fmt --check`, `cargo clippy -D warnings` (native and wasm32) |
//! | `fuzz` | the parsers' fuzz targets for `--minutes N` (default 5), fresh seeds; failing inputs kept in `crates/legrad/tests/fuzz-corpus/` |
//! | `bench` | `legrad bench` next to the reference's `tools/reference/bench.py`, same machine and threads |
//! | `bench-web` | the browser benchmark (`tests/e2e/bench.mjs`) and the sizes of `dist/` |
//! | `reference` | regenerates `tests/fixtures/` with the Python reference (`--check` compares) |
//! | `fetch-model` | downloads OpenCLIP ViT-B/16 LAION-2B for users with a network |

mod tasks;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (task, rest) = match args.split_first() {
        Some((t, r)) => (t.as_str(), r.to_vec()),
        None => ("help", vec![]),
    };
    let result = match task {
        "setup" => tasks::setup(&rest),
        "serve" => tasks::serve(&rest),
        "dist" => tasks::dist(&rest),
        "test" => tasks::test(&rest),
        "e2e" => tasks::e2e(&rest),
        "lint" => tasks::house_rules(),
        "fuzz" => tasks::fuzz(&rest),
        "bench" => tasks::bench(&rest),
        "bench-web" => tasks::bench_web(&rest),
        "reference" => tasks::reference(&rest),
        "fetch-model" => tasks::fetch_model(&rest),
        _ => {
            eprintln!(
                "usage: cargo xtask <task>\n\n  setup        install the wasm target, trunk, wasm-bindgen-cli, npm packages\n  serve        run the app on http://127.0.0.1:8080\n  dist         build the static site into dist/\n  test         run every test (house rules, native, wasm32 build, browser)\n  e2e          the browser end-to-end suite alone [-g NAME]\n  lint         cargo fmt --check and cargo clippy -D warnings, native and wasm32\n  fuzz         fuzz the parsers for --minutes N (default 5) [--only TARGET]\n  bench        native benchmark next to the Python reference\n  bench-web    browser benchmark (headless Chromium) and dist/ sizes\n  reference    regenerate tests/fixtures (needs the Python reference venv)\n  fetch-model  download OpenCLIP ViT-B/16 (needs a network)"
            );
            return if task == "help" { ExitCode::SUCCESS } else { ExitCode::FAILURE };
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask {task}: {e}");
            ExitCode::FAILURE
        }
    }
}
