//! Property-based fuzzing (proptest, stable Rust) of every parser that reads a user's bytes: the
//! safetensors header and tensor table (open_clip and transformers names), the app's model
//! format, model configs, PyTorch pickles, `.npy` pixels, the tokenizer (any Unicode) and image
//! decoding behind its limits.
//!
//! Each target generates inputs three ways: arbitrary bytes, byte-level mutations of a valid file
//! (biased towards its header: lengths, dimensions, offsets) and, where the format has a JSON
//! header, mutations of that JSON's values (shapes, offsets, dtypes, config numbers). An input
//! passes when the parser returns a value or a typed error whose message is one non-empty line;
//! a panic, an error of the wrong kind or an invariant broken on success fails it. A model that
//! loads is also run (a text embedding), so a header that lies about its config is caught there.
//!
//! Bounded here (1,000 to 5,000 inputs per target, a few seconds in all, fixed seeds: the same
//! inputs every run);
//! `cargo xtask fuzz --minutes N` sets `LEGRAD_FUZZ_SECONDS` and fresh seeds for longer runs.
//! An input that fails is shrunk and written to `tests/fuzz-corpus/<target>/`; every file there is
//! replayed first on every run (a regression case; commit it with the fix).

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use burn::tensor::Device;
use legrad::config::ClipConfig;
use legrad::engine::Engine;
use legrad::load::{ConfigSource, load_bytes, prepare};
use legrad::preprocess::{DecodeLimits, decode};
use legrad::weights::TensorMap;
use legrad::{LegradError, Tokenizer};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};

/// The tiny CLIP every model seed is written from (open_clip config; real vocabulary so that the
/// tokenizer's ids fit).
const TINY: &str = r#"{"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16,
 "patch_size": 16}, "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 1, "layers": 1}}"#;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-corpus").join(target)
}

fn tiny_config() -> ClipConfig {
    ConfigSource::from_json(TINY.into()).parse().expect("the tiny config")
}

fn tiny_map() -> TensorMap {
    legrad::weights::random::random_openclip(&tiny_config(), 7)
}

thread_local! {
    /// Inputs of the current target a parser accepted (so that a run shows it went past the
    /// first check of each format, not only refusals).
    static ACCEPTED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

fn accepted() {
    ACCEPTED.with(|a| a.set(a.get() + 1));
}

/// A result is acceptable when it is a value or a typed error with a one-line message.
fn one_line<T>(r: legrad::Result<T>) -> Result<Option<T>, String> {
    match r {
        Ok(v) => {
            accepted();
            Ok(Some(v))
        }
        Err(e) => {
            let m = e.to_string();
            if m.trim().is_empty() {
                Err(format!("an empty error message ({e:?})"))
            } else if m.contains('\n') {
                Err(format!("an error message of several lines: {m:?}"))
            } else {
                Ok(None)
            }
        }
    }
}

/// A model that loaded must also run: tokenise, embed a prompt, give finite numbers.
fn run_model(loaded: Option<(legrad::Clip, legrad::load::ModelInfo)>) -> Result<(), String> {
    let Some((clip, info)) = loaded else { return Ok(()) };
    let Some(engine) = one_line(Engine::new(clip, info))? else { return Ok(()) };
    let Some(prompts) = one_line(engine.prepare(&["a red circle".to_string()], None))? else { return Ok(()) };
    if let Some(e) = one_line(pollster::block_on(engine.embed_texts(&prompts)))?
        && e.iter().any(|v| !v.is_finite())
    {
        return Err("a loaded model embeds a prompt as NaN or infinity".into());
    }
    Ok(())
}

// ---- inputs ----

/// Values that break arithmetic and allocation: zero, one, small sizes, powers of two, the
/// edges of u32/i64/u64.
fn interesting_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => prop::sample::select(vec![
            0u64, 1, 2, 3, 4, 7, 8, 15, 16, 17, 31, 32, 33, 64, 77, 255, 256, 4096, 49408, 65535, 65536,
            1 << 31, (1 << 32) - 1, 1 << 32, 1 << 40, 1 << 53, i64::MAX as u64, u64::MAX,
        ]),
        1 => any::<u64>(),
        1 => 0u64..100_000,
    ]
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::{Value, json};
    prop_oneof![
        4 => interesting_u64().prop_map(|v| json!(v)),
        1 => any::<i64>().prop_map(|v| json!(v)),
        1 => prop::sample::select(vec![-1.0f64, 0.5, 1e300, -0.0, 3.0]).prop_map(|v| json!(v)),
        1 => prop::sample::select(vec![
            "F32", "F16", "BF16", "F64", "I8", "U8", "I16", "I32", "I64", "BOOL", "F8_E4M3", "", "gelu",
            "quick_gelu", "q8", "Q4", "legrad-web", "🙂",
        ]).prop_map(|s| json!(s)),
        1 => Just(Value::Null),
        1 => Just(json!([])),
        1 => Just(json!({})),
        1 => prop::collection::vec(interesting_u64(), 0..5).prop_map(|v| json!(v)),
        1 => any::<bool>().prop_map(|b| json!(b)),
    ]
}

/// One edit of a JSON document: replace its `pick`-th value (arrays, objects and leaves, in
/// document order), or delete it.
#[derive(Clone, Debug)]
enum JsonEdit {
    Replace(usize, serde_json::Value),
    Delete(usize),
}

fn json_edits() -> impl Strategy<Value = Vec<JsonEdit>> {
    let edit = prop_oneof![
        5 => (any::<usize>(), json_value()).prop_map(|(i, v)| JsonEdit::Replace(i, v)),
        1 => any::<usize>().prop_map(JsonEdit::Delete),
    ];
    prop::collection::vec(edit, 1..5)
}

fn count_nodes(v: &serde_json::Value) -> usize {
    1 + match v {
        serde_json::Value::Array(a) => a.iter().map(count_nodes).sum(),
        serde_json::Value::Object(o) => o.values().map(count_nodes).sum(),
        _ => 0,
    }
}

/// Apply `edit` to the node numbered `target` (0 is the root, which is never deleted). Returns
/// true when done.
fn edit_node(v: &mut serde_json::Value, target: &mut usize, edit: &JsonEdit) -> bool {
    let children: Vec<&mut serde_json::Value> = match v {
        serde_json::Value::Array(a) => a.iter_mut().collect(),
        serde_json::Value::Object(o) => o.values_mut().collect(),
        _ => return false,
    };
    let mut delete = None;
    for (k, child) in children.into_iter().enumerate() {
        *target -= 1;
        if *target == 0 {
            match edit {
                JsonEdit::Replace(_, new) => *child = new.clone(),
                JsonEdit::Delete(_) => delete = Some(k),
            }
            break;
        }
        if edit_node(child, target, edit) {
            return true;
        }
    }
    if let Some(k) = delete {
        match v {
            serde_json::Value::Array(a) => {
                a.remove(k);
            }
            serde_json::Value::Object(o) => {
                let key = o.keys().nth(k).cloned().expect("the key just visited");
                o.remove(&key);
            }
            _ => {}
        }
        return true;
    }
    *target == 0
}

fn apply_json_edits(doc: &mut serde_json::Value, edits: &[JsonEdit]) {
    for e in edits {
        let n = count_nodes(doc);
        if n < 2 {
            return;
        }
        let (JsonEdit::Replace(i, _) | JsonEdit::Delete(i)) = e;
        let mut target = 1 + i % (n - 1);
        edit_node(doc, &mut target, e);
    }
}

/// A safetensors file's header, edited, in front of its original data.
fn edit_safetensors_header(seed: &[u8], edits: &[JsonEdit], inner: bool) -> Vec<u8> {
    let n = u64::from_le_bytes(seed[..8].try_into().expect("8 bytes")) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&seed[8..8 + n]).expect("the seed's header");
    // The app's format keeps its own header (config, quantization) as a JSON string in the
    // metadata: edit that document instead when asked.
    let nested = header.get_mut("__metadata__").and_then(|m| m.get_mut("header"));
    match nested {
        Some(serde_json::Value::String(s)) if inner => {
            let mut doc: serde_json::Value = serde_json::from_str(s).expect("the app header");
            apply_json_edits(&mut doc, edits);
            *s = doc.to_string();
        }
        _ => apply_json_edits(&mut header, edits),
    }
    let text = header.to_string();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&seed[8 + n..]);
    out
}

#[derive(Clone, Debug)]
enum ByteEdit {
    Set(usize, u8),
    /// A little-endian u32 or u64 overwritten (lengths, dimensions, offsets).
    Word(usize, u64, bool),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
}

fn byte_edit() -> impl Strategy<Value = ByteEdit> {
    prop_oneof![
        4 => (any::<usize>(), any::<u8>()).prop_map(|(p, b)| ByteEdit::Set(p, b)),
        2 => (any::<usize>(), interesting_u64(), any::<bool>()).prop_map(|(p, v, w)| ByteEdit::Word(p, v, w)),
        1 => any::<usize>().prop_map(ByteEdit::Truncate),
        1 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..64)).prop_map(|(p, b)| ByteEdit::Insert(p, b)),
        1 => (any::<usize>(), 1usize..256).prop_map(|(p, n)| ByteEdit::Remove(p, n)),
    ]
}

/// Positions land in the first `head` bytes three times out of four (where headers are), the
/// last `head` bytes (zip's central directory) or anywhere.
fn apply_byte_edits(seed: &[u8], edits: &[(u8, ByteEdit)], head: usize) -> Vec<u8> {
    let mut b = seed.to_vec();
    for (zone, e) in edits {
        if b.is_empty() {
            break;
        }
        let pos = |p: usize, len: usize| {
            let h = head.min(len).max(1);
            match zone % 5 {
                0..=2 => p % h,
                3 => len - 1 - p % h,
                _ => p % len,
            }
        };
        match e {
            ByteEdit::Set(p, v) => {
                let i = pos(*p, b.len());
                b[i] = *v;
            }
            ByteEdit::Word(p, v, wide) => {
                let bytes = if *wide { v.to_le_bytes().to_vec() } else { (*v as u32).to_le_bytes().to_vec() };
                let i = pos(*p, b.len());
                for (k, x) in bytes.into_iter().enumerate() {
                    if let Some(t) = b.get_mut(i + k) {
                        *t = x;
                    }
                }
            }
            ByteEdit::Truncate(p) => {
                let i = pos(*p, b.len());
                b.truncate(i);
            }
            ByteEdit::Insert(p, chunk) => {
                let i = pos(*p, b.len());
                b.splice(i..i, chunk.iter().copied());
            }
            ByteEdit::Remove(p, n) => {
                let i = pos(*p, b.len());
                let end = (i + n).min(b.len());
                b.drain(i..end);
            }
        }
    }
    b
}

/// Arbitrary bytes, byte edits of a seed, and (for JSON-headed formats) header edits.
fn inputs(seeds: Vec<Vec<u8>>, head: usize, json_header: bool) -> BoxedStrategy<Vec<u8>> {
    let n = seeds.len();
    let seeds = std::sync::Arc::new(seeds);
    let s1 = seeds.clone();
    let bytes_edit = (0..n, prop::collection::vec((any::<u8>(), byte_edit()), 1..8))
        .prop_map(move |(k, edits)| apply_byte_edits(&s1[k], &edits, head));
    let arbitrary = prop::collection::vec(any::<u8>(), 0..1024);
    if json_header {
        let s2 = seeds.clone();
        let json = (0..n, json_edits(), any::<bool>())
            .prop_map(move |(k, edits, inner)| edit_safetensors_header(&s2[k], &edits, inner));
        let s3 = seeds;
        let both = (0..n, json_edits(), any::<bool>(), prop::collection::vec((any::<u8>(), byte_edit()), 1..3))
            .prop_map(move |(k, edits, inner, b)| {
                apply_byte_edits(&edit_safetensors_header(&s3[k], &edits, inner), &b, 4096)
            });
        prop_oneof![1 => arbitrary, 3 => bytes_edit, 4 => json, 1 => both].boxed()
    } else {
        prop_oneof![1 => arbitrary, 4 => bytes_edit].boxed()
    }
}

// ---- the harness ----

/// Replays the corpus, then runs `check` on `cases` generated inputs (or for
/// `LEGRAD_FUZZ_SECONDS` / number of targets, with fresh seeds). A failing input is shrunk,
/// saved to the corpus and reported.
fn fuzz(target: &str, cases: u32, strategy: BoxedStrategy<Vec<u8>>, check: impl Fn(&[u8]) -> Result<(), String>) {
    let start = Instant::now();
    ACCEPTED.with(|a| a.set(0));
    let dir = corpus_dir(target);
    let mut replayed = 0;
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.flatten() {
            let bytes = std::fs::read(entry.path()).expect("corpus file");
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&bytes)));
            match r {
                Ok(Ok(())) => replayed += 1,
                Ok(Err(m)) => panic!("{target}: regression case {} fails: {m}", entry.path().display()),
                Err(_) => panic!("{target}: regression case {} panics", entry.path().display()),
            }
        }
    }
    let budget = std::env::var("LEGRAD_FUZZ_SECONDS").ok().and_then(|s| s.parse::<f64>().ok());
    let mut generated = 0u64;
    let mut round = 0u64;
    loop {
        let seed: [u8; 32] = match budget {
            None => {
                let mut s = [0u8; 32];
                s[..target.len().min(32)].copy_from_slice(&target.as_bytes()[..target.len().min(32)]);
                s
            }
            Some(_) => {
                let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                let mut s = [0u8; 32];
                s[..16].copy_from_slice(&t.as_nanos().to_le_bytes());
                s[16..24].copy_from_slice(&round.to_le_bytes());
                s
            }
        };
        let batch = if budget.is_some() { 64 } else { cases };
        let config = Config { cases: batch, failure_persistence: None, max_shrink_iters: 2000, ..Config::default() };
        let mut runner = TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed));
        let result = runner.run(&strategy, |input| check(&input).map_err(TestCaseError::fail));
        generated += u64::from(batch);
        if let Err(e) = result {
            let (why, input) = match e {
                TestError::Fail(why, input) => (why.to_string(), input),
                TestError::Abort(why) => panic!("{target}: {why}"),
            };
            std::fs::create_dir_all(&dir).expect("corpus dir");
            let path = dir.join(format!("{:08x}.bin", crc32(&input)));
            std::fs::File::create(&path).and_then(|mut f| f.write_all(&input)).expect("write the failing input");
            panic!("{target}: an input of {} bytes fails ({why}); kept as {}", input.len(), path.display());
        }
        round += 1;
        let Some(total) = budget else { break };
        if start.elapsed() >= Duration::from_secs_f64(total / TARGETS as f64) {
            break;
        }
    }
    println!(
        "fuzz {target}: {generated} generated inputs and {replayed} corpus cases passed in {:.1} s ({} parses accepted)",
        start.elapsed().as_secs_f64(),
        ACCEPTED.with(|a| a.get())
    );
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(bytes);
    h.finalize()
}

const TARGETS: usize = 8;

// ---- the targets ----

#[test]
fn fuzz_safetensors_checkpoints() {
    // open_clip names (from the tiny model) and transformers names (with their config).
    let open_clip = legrad::format::write_plain(&tiny_map()).expect("the seed file");
    let transformers = std::fs::read(fixtures().join("tiny-hf-clip/model.safetensors")).expect("fixture");
    let hf_config =
        ConfigSource::from_json(std::fs::read_to_string(fixtures().join("tiny-hf-clip/config.json")).expect("fixture"));
    let device = Device::flex();
    fuzz("safetensors", 1000, inputs(vec![open_clip, transformers], 2048, true), |b| {
        let config = b.windows(13).any(|w| w == b"text_model.en").then_some(&hf_config);
        run_model(one_line(load_bytes(b, config, &device))?)
    });
}

#[test]
fn fuzz_app_model_files() {
    let cfg = tiny_config();
    let map = tiny_map();
    let q8 = legrad::format::write(&map, &cfg, legrad::format::Quant::Q8, "fuzz").expect("q8 seed");
    let f16 = legrad::format::write(&map, &cfg, legrad::format::Quant::F16, "fuzz").expect("f16 seed");
    let device = Device::flex();
    fuzz("app-model", 2000, inputs(vec![q8, f16], 4096, true), |b| {
        if let Some(h) = one_line(legrad::format::read_header(b))?
            && h.config.validate().is_err()
            && load_bytes(b, None, &device).is_ok()
        {
            return Err("a model loads whose header's config is invalid".into());
        }
        run_model(one_line(load_bytes(b, None, &device))?)
    });
}

#[test]
fn fuzz_model_configs() {
    let open_clip = TINY.as_bytes().to_vec();
    let transformers = std::fs::read(fixtures().join("tiny-hf-clip/config.json")).expect("fixture");
    let map = tiny_map();
    fuzz("config", 3000, config_inputs(vec![open_clip, transformers]), |b| {
        let Ok(text) = String::from_utf8(b.to_vec()) else { return Ok(()) };
        let source = ConfigSource::from_json(text);
        if one_line(source.parse())?.is_some() {
            // A config that parses meets the tiny model's weights: agree or refuse in words.
            one_line(prepare(map.clone(), Some(&source)))?;
        }
        Ok(())
    });
}

/// JSON documents with edited values, and bytes.
fn config_inputs(seeds: Vec<Vec<u8>>) -> BoxedStrategy<Vec<u8>> {
    let n = seeds.len();
    let docs: Vec<serde_json::Value> = seeds.iter().map(|s| serde_json::from_slice(s).expect("json seed")).collect();
    let json = (0..n, json_edits()).prop_map(move |(k, e)| {
        let mut d = docs[k].clone();
        apply_json_edits(&mut d, &e);
        d.to_string().into_bytes()
    });
    prop_oneof![4 => json, 1 => inputs(seeds, 256, false)].boxed()
}

#[test]
fn fuzz_pytorch_checkpoints() {
    let seed = std::fs::read(fixtures().join("tiny-vit-b32-quickgelu.pt")).expect("fixture");
    let dir = std::env::temp_dir().join(format!("legrad-fuzz-pt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("model.pt");
    // The container (zip) edited as bytes, and the pickle inside edited with its CRC fixed (the
    // reader checks the CRC, which would refuse nearly every edited pickle before parsing it).
    let s = seed.clone();
    let pickle = prop::collection::vec((any::<usize>(), any::<u8>()), 1..8).prop_map(move |e| edit_pickle(&s, &e));
    let strategy = prop_oneof![1 => inputs(vec![seed], 4096, false), 3 => pickle].boxed();
    fuzz("pytorch", 1000, strategy, |b| {
        std::fs::write(&path, b).map_err(|e| e.to_string())?;
        if let Some(map) = one_line(TensorMap::from_pytorch_file(&path))? {
            one_line(prepare(map, None))?;
        }
        Ok(())
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// Set bytes of the first zip entry (PyTorch's `data.pkl`, stored) and fix its CRC-32 where
/// the archive keeps it: the central directory, and the local header or (torch writes these) the
/// data descriptor after the entry.
fn edit_pickle(zip: &[u8], edits: &[(usize, u8)]) -> Vec<u8> {
    let u16_at = |b: &[u8], i: usize| u16::from_le_bytes([b[i], b[i + 1]]) as usize;
    let u32_at = |b: &[u8], i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes")) as usize;
    assert_eq!(&zip[..4], b"PK\x03\x04", "the seed starts with a local file header");
    let start = 30 + u16_at(zip, 26) + u16_at(zip, 28);
    let eocd = zip.windows(4).rposition(|w| w == b"PK\x05\x06").expect("end of central directory");
    let central = u32_at(zip, eocd + 16);
    assert_eq!(u32_at(zip, central + 42), 0, "the central directory's first entry is the first file");
    let size = u32_at(zip, central + 20);
    let mut out = zip.to_vec();
    for &(p, v) in edits {
        out[start + p % size] = v;
    }
    let crc = crc32(&out[start..start + size]).to_le_bytes();
    out[central + 16..central + 20].copy_from_slice(&crc);
    if u16_at(zip, 6) & 8 != 0 {
        let d = start + size + if &zip[start + size..start + size + 4] == b"PK\x07\x08" { 4 } else { 0 };
        out[d..d + 4].copy_from_slice(&crc);
    } else {
        out[14..18].copy_from_slice(&crc);
    }
    out
}

#[test]
fn fuzz_npy_pixels() {
    let dir = std::env::temp_dir().join(format!("legrad-fuzz-npy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut seeds = Vec::new();
    for (k, shape) in [vec![3usize, 8, 8], vec![1, 3, 4, 6]].into_iter().enumerate() {
        let path = dir.join(format!("{k}.npy"));
        let n: usize = shape.iter().product();
        legrad::npy::write_f32(&path, &vec![0.25; n], &shape).expect("seed");
        seeds.push(std::fs::read(&path).expect("seed"));
    }
    let _ = std::fs::remove_dir_all(&dir);
    fuzz("npy", 5000, inputs(seeds, 128, false), |b| {
        if let Some((px, size)) = one_line(legrad::npy::read_pixels(b))?
            && (px.len() != 3 * size.width * size.height || px.iter().any(|v| !v.is_finite()))
        {
            return Err(format!("pixels of the wrong length or not finite for {size:?}"));
        }
        Ok(())
    });
}

#[test]
fn fuzz_tokenizer() {
    let tokenizer = Tokenizer::new().expect("tokenizer");
    let vocab = tokenizer.vocab_size() as u32;
    let chars = prop_oneof![
        4 => any::<char>(),
        2 => prop::char::range(' ', '~'),
        1 => prop::sample::select(vec![
            'é', 'ü', 'ß', 'ñ', '\u{301}', '\u{200b}', '\u{200d}', '\u{fe0f}', '\u{202e}', '\u{0}', '\t', '\n',
            '\r', '猫', '犬', 'の', '한', 'Ж', 'ع', '🙂', '👍', '🏳', '\u{1f3fd}', '\u{fffd}', '\u{feff}', '\u{7f}',
        ]),
    ];
    let text = prop_oneof![
        4 => prop::collection::vec(chars.clone(), 0..120).prop_map(|c| c.into_iter().collect::<String>()),
        1 => (prop::collection::vec(chars, 1..8), 100usize..3000)
            .prop_map(|(c, n)| c.into_iter().collect::<String>().repeat(n)),
    ];
    let strategy = text.prop_map(String::into_bytes).boxed();
    fuzz("tokenizer", 1000, strategy, |b| {
        let text = String::from_utf8_lossy(b);
        let t = tokenizer.tokenize(&text, 77);
        if t.ids.len() > 77 || t.ids.len() < 2 {
            return Err(format!("{} ids for a context of 77", t.ids.len()));
        }
        if t.ids.iter().any(|&i| i >= vocab) {
            return Err("an id outside the vocabulary".into());
        }
        let ids = tokenizer.encode(&text);
        if ids.iter().any(|&i| i >= vocab) {
            return Err("an id outside the vocabulary".into());
        }
        Ok(())
    });
}

#[test]
fn fuzz_image_decoding() {
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(fixtures().join("images"))
        .expect("fixtures")
        .flatten()
        .map(|e| std::fs::read(e.path()).expect("fixture"))
        .collect();
    // Every format the decoder reads that the fixtures lack, written small.
    let img = image::DynamicImage::ImageRgba8(image::RgbaImage::from_fn(9, 7, |x, y| {
        image::Rgba([(x * 28) as u8, (y * 36) as u8, 128, 200])
    }));
    for f in [
        image::ImageFormat::Gif,
        image::ImageFormat::WebP,
        image::ImageFormat::Bmp,
        image::ImageFormat::Tiff,
        image::ImageFormat::Ico,
        image::ImageFormat::Pnm,
        image::ImageFormat::Tga,
        image::ImageFormat::Qoi,
        image::ImageFormat::Farbfeld,
    ] {
        let mut out = std::io::Cursor::new(Vec::new());
        let img = match f {
            image::ImageFormat::Pnm => image::DynamicImage::ImageRgb8(img.to_rgb8()),
            image::ImageFormat::Farbfeld => image::DynamicImage::ImageRgba16(img.to_rgba16()),
            _ => img.clone(),
        };
        img.write_to(&mut out, f).unwrap_or_else(|e| panic!("{f:?}: {e}"));
        seeds.push(out.into_inner());
    }
    // Small limits, so that a header claiming a large image is refused before anything is
    // allocated (the default limits allow 100 megapixels: slow, not wrong).
    let limits = DecodeLimits { max_pixels: 1 << 20, max_side: 4096, max_alloc_bytes: 64 << 20 };
    fuzz("image", 5000, inputs(seeds, 96, false), |b| match decode(b, &limits) {
        Ok(img) => {
            if img.width == 0 || img.height == 0 || img.rgba.len() != img.width as usize * img.height as usize * 4 {
                return Err(format!("a {}x{} image with {} bytes", img.width, img.height, img.rgba.len()));
            }
            let px = one_line(img.to_pixels(16, 16))?;
            if px.is_some_and(|p| p.len() != 3 * 16 * 16 || p.iter().any(|v| !v.is_finite())) {
                return Err("preprocessing gave the wrong length or non-finite pixels".into());
            }
            Ok(())
        }
        Err(e @ (LegradError::ImageDecode(_) | LegradError::ImageTooLarge { .. })) => {
            one_line::<()>(Err(e)).map(|_| ())
        }
        Err(e) => Err(format!("an error of another kind: {e:?}")),
    });
}

#[test]
fn fuzz_sniffing_any_bytes() {
    // Whatever a user drops goes through the same front door first (the app's and the CLI's).
    let device = Device::flex();
    let seeds = vec![b"\x89PNG\r\n\x1a\n".to_vec(), b"PK\x03\x04".to_vec(), vec![8, 0, 0, 0, 0, 0, 0, 0, b'{', b'}']];
    fuzz("any-bytes", 5000, inputs(seeds, 16, false), |b| {
        run_model(one_line(load_bytes(b, None, &device))?)?;
        one_line(legrad::format::verify(b))?;
        // The browser's engine reads a cached model through a source (a buffer outside it).
        one_line(legrad::format::verify_source(&b.to_vec()))?;
        if let Some(p) = one_line(legrad::load::read_source(std::rc::Rc::new(b.to_vec())))? {
            run_model(one_line(p.build(&device))?)?;
        }
        Ok(())
    });
}
