//! `legrad explain --images` (issue 30): the index, a resumed run, shards. Runs the built binary
//! on synthetic scenes with a broken file among them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn legrad(args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_legrad")).args(args).output().expect("run legrad");
    assert!(out.status.success(), "legrad {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("legrad-batch-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Seven scenes and a broken "photo" in a folder.
fn images() -> PathBuf {
    let scenes = temp("scenes");
    legrad(&["scenes", "--count", "7", "--size", "128", "--out", scenes.to_str().unwrap()]);
    let dir = temp("images");
    for i in 0..7 {
        let name = format!("scene-0-{i}.png");
        std::fs::copy(scenes.join(&name), dir.join(&name)).unwrap();
    }
    std::fs::write(dir.join("broken.jpg"), b"not a jpeg").unwrap();
    std::fs::write(dir.join("notes.txt"), b"not an image file: left alone").unwrap();
    dir
}

/// The index's lines as JSON (a line a stopped run cut short is not).
fn index(out: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(out.join("index.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert!(text.lines().count() - lines.len() <= 1, "more than one line is not JSON:\n{text}");
    lines
}

/// Per image explained: its prompts' scores (by prompt), from the index.
fn explained(lines: &[serde_json::Value]) -> BTreeMap<String, BTreeMap<String, f64>> {
    let mut out: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    for l in lines.iter().filter(|l| l["prompt"].is_string()) {
        let image = Path::new(l["image"].as_str().unwrap()).file_name().unwrap().to_string_lossy().into_owned();
        out.entry(image).or_default().insert(l["prompt"].as_str().unwrap().into(), l["score"].as_f64().unwrap());
    }
    out
}

#[test]
fn a_folder_explained_resumed_and_sharded() {
    let dir = images();
    let d = dir.to_str().unwrap();
    let prompts = ["--prompt", "a red ring", "--prompt", "a blue circle"];
    let run = |out: &Path, extra: &[&str]| {
        let mut args = vec!["explain", "--images", d, "--size", "128", "--out", out.to_str().unwrap()];
        args.extend_from_slice(&prompts);
        args.extend_from_slice(extra);
        legrad(&args)
    };

    // One run: every image, each prompt once, the broken file reported and skipped.
    let full = temp("full");
    let printed = String::from_utf8(run(&full, &[]).stdout).unwrap();
    assert!(printed.contains("7 images explained, 1 failed"), "{printed}");
    let lines = index(&full);
    let all = explained(&lines);
    assert_eq!(all.len(), 7);
    assert!(all.values().all(|p| p.len() == 2));
    let errors: Vec<&serde_json::Value> = lines.iter().filter(|l| l["error"].is_string()).collect();
    assert_eq!(errors.len(), 1);
    assert!(errors[0]["image"].as_str().unwrap().ends_with("broken.jpg"));
    assert!(!lines.iter().any(|l| l["image"].as_str().unwrap().ends_with("notes.txt")));
    for l in lines.iter().filter(|l| l["prompt"].is_string()) {
        let p = l["presence"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&p), "{l}");
        for f in l["files"].as_array().unwrap() {
            assert!(full.join(f.as_str().unwrap()).is_file(), "{f} listed, not written");
        }
    }

    // Run again: nothing left but the broken file (tried again).
    let again = String::from_utf8(run(&full, &[]).stdout).unwrap();
    assert!(again.contains("0 images explained, 1 failed, 7 done before"), "{again}");

    // A run stopped after three images (its index cut there, the fourth line half written):
    // the run again explains the other four, each once.
    let stopped = temp("stopped");
    let text = std::fs::read_to_string(full.join("index.jsonl")).unwrap();
    let kept: Vec<&str> = text.lines().filter(|l| l.contains("\"prompt\"")).take(6).collect();
    std::fs::write(stopped.join("index.jsonl"), format!("{}\n{{\"image\":\"cut", kept.join("\n"))).unwrap();
    let resumed = String::from_utf8(run(&stopped, &[]).stdout).unwrap();
    assert!(resumed.contains("4 images explained, 1 failed, 3 done before"), "{resumed}");
    assert_eq!(explained(&index(&stopped)), all, "resumed run against one run");

    // Three shards: the union is the whole, each image once, with the same scores.
    let mut seen = BTreeSet::new();
    let mut union = BTreeMap::new();
    for k in 0..3 {
        let out = temp(&format!("shard{k}"));
        run(&out, &["--shard", &format!("{k}/3")]);
        for (image, scores) in explained(&index(&out)) {
            assert!(seen.insert(image.clone()), "{image} in two shards");
            union.insert(image, scores);
        }
    }
    assert_eq!(union.keys().collect::<Vec<_>>(), all.keys().collect::<Vec<_>>());
    for (image, scores) in &union {
        for (p, s) in scores {
            assert!((s - all[image][p]).abs() < 1e-6, "{image} / {p}: {s} vs {}", all[image][p]);
        }
    }

    // A list file and a glob name the same images.
    let list = dir.join("list.txt");
    std::fs::write(&list, "# two of them\nscene-0-1.png\n\nscene-0-4.png\n").unwrap();
    let by_list = temp("list");
    let arg = format!("@{}", list.display());
    legrad(&[
        "explain",
        "--images",
        &arg,
        "--prompt",
        "a red ring",
        "--size",
        "128",
        "--out",
        by_list.to_str().unwrap(),
    ]);
    assert_eq!(explained(&index(&by_list)).keys().cloned().collect::<Vec<_>>(), ["scene-0-1.png", "scene-0-4.png"]);
    let pattern = format!("{d}/scene-0-[26].png");
    let by_glob = temp("glob");
    legrad(&[
        "explain",
        "--images",
        &pattern,
        "--prompt",
        "a red ring",
        "--size",
        "128",
        "--out",
        by_glob.to_str().unwrap(),
    ]);
    assert_eq!(explained(&index(&by_glob)).keys().cloned().collect::<Vec<_>>(), ["scene-0-2.png", "scene-0-6.png"]);

    // What cannot work is said, not attempted.
    let bad = Command::new(env!("CARGO_BIN_EXE_legrad"))
        .args(["explain", "--images", &format!("{d}/nothing-*.png"), "--prompt", "x", "--out", full.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("matches no file"));
}
