//! CLIP's byte-level BPE, as open_clip 2.23's `SimpleTokenizer` (`open_clip/tokenizer.py`).
//!
//! Why not a crate: `tokenizers` needs a `tokenizer.json` that is not available offline and
//! pulls onig/fancy-regex into the wasm build; `instant-clip-tokenizer` skips open_clip's text
//! cleaning. The BPE itself is 40 lines; the cleaning (a subset of `ftfy.fix_text`) is what
//! makes the ids equal, and it is tested against open_clip on `tests/fixtures/tokenizer.json`.
//! The vocabulary file is open_clip's `bpe_simple_vocab_16e6.txt.gz` (MIT, from OpenAI CLIP),
//! cut to what open_clip reads of it: the header line and the first 48,894 merges (the other
//! 213,251 lines are never used; 1,356,917 -> 208,528 bytes, which the wasm carries).

use std::collections::HashMap;
use std::io::Read;
use std::ops::Range;

use regex::Regex;
use unicode_normalization::UnicodeNormalization;

use crate::error::{LegradError, Result};

const VOCAB_GZ: &[u8] = include_bytes!("../assets/bpe_simple_vocab_16e6.first-48894-merges.txt.gz");

/// A prompt after tokenization: `[start, ..., end]`, at most the context length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tokens {
    pub ids: Vec<u32>,
    /// The prompt was longer than the context and was cut (the last id is still end-of-text).
    pub truncated: bool,
}

pub struct Tokenizer {
    encoder: HashMap<String, u32>,
    ranks: HashMap<(String, String), usize>,
    byte_encoder: [char; 256],
    pattern: Regex,
    pub start_id: u32,
    pub end_id: u32,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokenizer {{ vocab: {} }}", self.encoder.len())
    }
}

/// GPT-2's reversible byte → printable character table, in open_clip's order (printable bytes
/// first): the vocabulary lists the characters in this order.
fn bytes_to_unicode() -> Vec<(u8, char)> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    bs.into_iter().zip(cs).map(|(b, c)| (b as u8, char::from_u32(c).unwrap_or('\0'))).collect()
}

impl Tokenizer {
    pub fn new() -> Result<Self> {
        let mut text = String::new();
        flate2::read::GzDecoder::new(VOCAB_GZ)
            .read_to_string(&mut text)
            .map_err(|e| LegradError::Checkpoint(format!("the BPE vocabulary is corrupt: {e}")))?;
        // As open_clip: merges = lines[1 : 49152 - 256 - 2 + 1].
        let merges: Vec<(String, String)> = text
            .split('\n')
            .skip(1)
            .take(49152 - 256 - 2)
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                Some((it.next()?.to_string(), it.next()?.to_string()))
            })
            .collect();
        let ordered = bytes_to_unicode();
        let mut byte_encoder = ['\0'; 256];
        for &(b, c) in &ordered {
            byte_encoder[b as usize] = c;
        }
        let mut vocab: Vec<String> = ordered.iter().map(|(_, c)| c.to_string()).collect();
        vocab.extend(ordered.iter().map(|(_, c)| format!("{c}</w>")));
        vocab.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
        vocab.push("<start_of_text>".into());
        vocab.push("<end_of_text>".into());
        let encoder: HashMap<String, u32> = vocab.into_iter().enumerate().map(|(i, s)| (s, i as u32)).collect();
        let ranks = merges.into_iter().enumerate().map(|(i, m)| (m, i)).collect();
        let pattern =
            Regex::new(r"(?i)<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+")
                .map_err(|e| LegradError::Checkpoint(format!("tokenizer pattern: {e}")))?;
        Ok(Self {
            start_id: encoder["<start_of_text>"],
            end_id: encoder["<end_of_text>"],
            encoder,
            ranks,
            byte_encoder,
            pattern,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.encoder.len()
    }

    /// BPE ids of a text, without start and end tokens.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let text = clean(text);
        let mut ids = Vec::new();
        for m in self.pattern.find_iter(&text) {
            let token = m.as_str();
            if token == "<start_of_text>" || token == "<end_of_text>" {
                ids.push(self.encoder[token]);
                continue;
            }
            let mapped: Vec<String> = token.bytes().map(|b| self.byte_encoder[b as usize].to_string()).collect();
            for piece in self.bpe(mapped) {
                if let Some(&id) = self.encoder.get(&piece) {
                    ids.push(id);
                }
            }
        }
        ids
    }

    /// `[start] + encode(text) + [end]`, cut to `context_length` as open_clip does (the last id
    /// becomes end-of-text).
    pub fn tokenize(&self, text: &str, context_length: usize) -> Tokens {
        let mut ids = vec![self.start_id];
        ids.extend(self.encode(text));
        ids.push(self.end_id);
        let truncated = ids.len() > context_length;
        if truncated {
            ids.truncate(context_length);
            if let Some(last) = ids.last_mut() {
                *last = self.end_id;
            }
        }
        Tokens { ids, truncated }
    }

    fn bpe(&self, chars: Vec<String>) -> Vec<String> {
        let mut word = chars;
        if let Some(last) = word.last_mut() {
            last.push_str("</w>");
        }
        loop {
            if word.len() < 2 {
                break;
            }
            let best = word
                .windows(2)
                .filter_map(|p| self.ranks.get(&(p[0].clone(), p[1].clone())).map(|&r| (r, p)))
                .min_by_key(|(r, _)| *r);
            let Some((_, pair)) = best else { break };
            let (first, second) = (pair[0].clone(), pair[1].clone());
            let mut merged = Vec::with_capacity(word.len());
            let mut i = 0;
            while i < word.len() {
                if i + 1 < word.len() && word[i] == first && word[i + 1] == second {
                    merged.push(format!("{first}{second}"));
                    i += 2;
                } else {
                    merged.push(word[i].clone());
                    i += 1;
                }
            }
            word = merged;
        }
        word
    }
}

/// open_clip's `_clean_lower`: `ftfy.fix_text`, `html.unescape` twice, whitespace runs to one
/// space, strip, lower case.
///
/// Of `ftfy.fix_text` (6.x) this does every step except mojibake repair (`fix_encoding`), which
/// only changes text that was decoded with the wrong codec: HTML entities (when the text has no
/// `<`), C1 controls as Windows-1252, Latin ligatures, full/half-width forms, curly quotes,
/// line breaks, terminal escapes, control characters, NFC.
pub fn clean(text: &str) -> String {
    let mut text = text.to_string();
    // ftfy decides once whether to decode entities, then repeats its fixes until nothing changes.
    let unescape = !text.contains('<');
    loop {
        let before = text.clone();
        if unescape {
            text = html_escape::decode_html_entities(&text).into_owned();
        }
        text = text.chars().map(fix_c1).collect();
        text = text.chars().flat_map(fix_width_and_ligatures).collect();
        text = text.replace("\r\n", "\n").replace(['\r', '\u{2028}', '\u{2029}', '\u{85}'], "\n");
        text = remove_terminal_escapes(&text);
        text = text.chars().filter(|&c| !is_ftfy_control(c)).collect();
        text = text.nfc().collect();
        if text == before {
            break;
        }
    }
    let text = html_escape::decode_html_entities(&html_escape::decode_html_entities(&text).into_owned()).into_owned();
    collapse_whitespace(&text).to_lowercase()
}

/// Python's `" ".join(text.split()).strip()`: every run of whitespace ([`is_py_space`]) to one
/// space, none at either end.
fn collapse_whitespace(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_space = false;
    for c in text.chars() {
        if is_py_space(c) {
            if !in_space {
                out.push(' ');
            }
            in_space = true;
        } else {
            out.push(c);
            in_space = false;
        }
    }
    out.trim_matches(' ').to_string()
}

/// Python's `str.isspace` (and the `regex` module's `\s`): Unicode White_Space plus the
/// information separators U+001C..U+001F.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

fn fix_c1(c: char) -> char {
    // Windows-1252 bytes 0x80..0x9F; the five undefined ones stay.
    const CP1252: [u32; 32] = [
        0x20AC, 0x81, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160, 0x2039, 0x0152, 0x8D,
        0x017D, 0x8F, 0x90, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013, 0x2014, 0x02DC, 0x2122, 0x0161, 0x203A,
        0x0153, 0x9D, 0x017E, 0x0178,
    ];
    match c as u32 {
        v @ 0x80..=0x9F => char::from_u32(CP1252[(v - 0x80) as usize]).unwrap_or(c),
        _ => c,
    }
}

fn fix_width_and_ligatures(c: char) -> Vec<char> {
    let s: &str = match c {
        'Ĳ' => "IJ",
        'ĳ' => "ij",
        'ŉ' => "ʼn",
        'Ǳ' => "DZ",
        'ǲ' => "Dz",
        'ǳ' => "dz",
        'Ǆ' => "DŽ",
        'ǅ' => "Dž",
        'ǆ' => "dž",
        'Ǉ' => "LJ",
        'ǈ' => "Lj",
        'ǉ' => "lj",
        'Ǌ' => "NJ",
        'ǋ' => "Nj",
        'ǌ' => "nj",
        'ﬀ' => "ff",
        'ﬁ' => "fi",
        'ﬂ' => "fl",
        'ﬃ' => "ffi",
        'ﬄ' => "ffl",
        'ﬅ' => "ſt",
        'ﬆ' => "st",
        '\u{3000}' => " ",
        // uncurl_quotes
        '\u{02bc}' | '\u{2018}'..='\u{201b}' => "'",
        '\u{201c}'..='\u{201f}' => "\"",
        '\u{ff01}'..='\u{ffef}' => return std::iter::once(c).nfkc().collect(),
        _ => return vec![c],
    };
    s.chars().collect()
}

fn remove_terminal_escapes(text: &str) -> String {
    // ANSI_RE = "\033\[((?:\d|;)*)([a-zA-Z])"
    if !text.contains('\u{1b}') {
        return text.to_string();
    }
    let re = Regex::new(r"\x1b\[[0-9;]*[a-zA-Z]").expect("static pattern");
    re.replace_all(text, "").into_owned()
}

fn is_ftfy_control(c: char) -> bool {
    matches!(c as u32,
        0x00..=0x08 | 0x0B | 0x0E..=0x1F | 0x7F | 0x206A..=0x206F | 0xFEFF | 0xFFF9..=0xFFFC)
}

/// open_clip's `canonicalize_text` (big_vision's prompt canonicalisation), after [`clean`]:
/// `_` to a space, ASCII punctuation (Python's `string.punctuation`) removed, lower case,
/// whitespace runs to one space, stripped.
pub fn canonicalize(text: &str) -> String {
    let text: String = text.replace('_', " ").chars().filter(|c| !c.is_ascii_punctuation()).collect();
    collapse_whitespace(&text.to_lowercase())
}

/// SigLIP's SentencePiece tokenizer, as open_clip 2.23 runs it for `ViT-B-16-SigLIP`
/// (`HFTokenizer` with `clean='canonicalize'`, padding and truncation to the context): the text
/// cleaned ([`clean`], then [`canonicalize`]), then the steps of the model's `tokenizer.json`
/// that SentencePiece vocabularies use, in the order the `tokenizers` library runs them:
/// normaliser (`Precompiled` charsmap through HF's `spm_precompiled`, `Replace`, `Strip`,
/// `Lowercase`, `Prepend`, Unicode forms, `Sequence`), pre-tokeniser (`WhitespaceSplit`,
/// `Metaspace` with its prepend scheme, `Sequence`), the unigram model ([`Unigram`]: the
/// `tokenizers` library's `encode_optimized` Viterbi, its unknown-token score and fusing), the
/// post-processor's special tokens (`TemplateProcessing`: `$A </s>`), truncated (end token kept)
/// and padded to the context with `</s>` (SigLIP pads with its end token).
///
/// Why not the `tokenizers` crate: `Tokenizer::from_str` deserialises every model, normaliser
/// and pre-tokeniser the library has (BPE, WordPiece, byte-level regexes, Unicode script
/// tables...), which LTO cannot drop: +348 KB gzipped in the web module (5.32 MB against the
/// 5 MB budget of docs/benchmarks-history.md §5); with only its `Unigram` model taken, still +100 KB (its trie,
/// hashing and error types). What SigLIP's file needs is this much code; any other step in a file
/// is refused by name, and the ids are checked against open_clip's on the committed cases
/// (`crates/legrad/tests/siglip.rs`).
pub struct SentencePieceTokenizer {
    normalizers: Vec<Normalize>,
    pre: Vec<PreTokenize>,
    model: Unigram,
    /// Special tokens the post-processor puts before and after the text's ids.
    prefix: Vec<u32>,
    suffix: Vec<u32>,
    pub pad_id: u32,
    context_length: usize,
}

enum Normalize {
    Precompiled(spm_precompiled::Precompiled),
    Replace(regex::Regex, String),
    Strip { left: bool, right: bool },
    Lowercase,
    Prepend(String),
    Nfc,
    Nfd,
    Nfkc,
    Nfkd,
}

enum PreTokenize {
    WhitespaceSplit,
    /// Replacement character, prepend scheme (`always`, `first`, `never`), split on it.
    Metaspace {
        replacement: char,
        prepend: Prepend,
        split: bool,
    },
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Prepend {
    Always,
    First,
    Never,
}

impl std::fmt::Debug for SentencePieceTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SentencePieceTokenizer {{ vocab: {} }}", self.vocab_size())
    }
}

fn bad_tokenizer(e: impl std::fmt::Display) -> LegradError {
    LegradError::Config(format!("the tokenizer file is not a usable tokenizer.json: {}", crate::error::one_line(e)))
}

fn parse_normalizer(v: &serde_json::Value, out: &mut Vec<Normalize>) -> Result<()> {
    if v.is_null() {
        return Ok(());
    }
    let kind = v["type"].as_str().unwrap_or("");
    let flag = |k: &str| v[k].as_bool().unwrap_or(false);
    match kind {
        "Sequence" => {
            for n in v["normalizers"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                parse_normalizer(n, out)?;
            }
        }
        "Precompiled" if v["precompiled_charsmap"].is_null() => {}
        "Precompiled" => out.push(Normalize::Precompiled(
            serde_json::from_str(&v.to_string())
                .map_err(|e| bad_tokenizer(format!("its Precompiled charsmap: {e}")))?,
        )),
        "Replace" => {
            let content = v["content"].as_str().unwrap_or("").to_string();
            let pattern = match (v["pattern"]["String"].as_str(), v["pattern"]["Regex"].as_str()) {
                (Some(s), _) => regex::escape(s),
                (None, Some(r)) => r.to_string(),
                _ => return Err(bad_tokenizer("a Replace normaliser without a pattern")),
            };
            let re = regex::Regex::new(&pattern).map_err(|e| bad_tokenizer(format!("its Replace pattern: {e}")))?;
            out.push(Normalize::Replace(re, content));
        }
        "Strip" => out.push(Normalize::Strip { left: flag("strip_left"), right: flag("strip_right") }),
        "Lowercase" => out.push(Normalize::Lowercase),
        "Prepend" => out.push(Normalize::Prepend(v["prepend"].as_str().unwrap_or("").to_string())),
        "NFC" => out.push(Normalize::Nfc),
        "NFD" => out.push(Normalize::Nfd),
        "NFKC" => out.push(Normalize::Nfkc),
        "NFKD" => out.push(Normalize::Nfkd),
        other => {
            return Err(LegradError::Unsupported(format!(
                "the tokenizer's normaliser '{other}': a SentencePiece tokenizer.json uses Precompiled, Replace, Strip, Lowercase, Prepend or a Unicode form"
            )));
        }
    }
    Ok(())
}

fn parse_pre_tokenizer(v: &serde_json::Value, out: &mut Vec<PreTokenize>) -> Result<()> {
    if v.is_null() {
        return Ok(());
    }
    match v["type"].as_str().unwrap_or("") {
        "Sequence" => {
            for p in v["pretokenizers"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                parse_pre_tokenizer(p, out)?;
            }
        }
        "WhitespaceSplit" => out.push(PreTokenize::WhitespaceSplit),
        "Metaspace" => {
            let replacement = v["replacement"].as_str().and_then(|r| r.chars().next()).unwrap_or('▁');
            // `add_prefix_space: false` (older files) means never; `prepend_scheme` defaults to always.
            let prepend = match (v["prepend_scheme"].as_str(), v["add_prefix_space"].as_bool()) {
                (_, Some(false)) => Prepend::Never,
                (Some("first"), _) => Prepend::First,
                (Some("never"), _) => Prepend::Never,
                _ => Prepend::Always,
            };
            out.push(PreTokenize::Metaspace { replacement, prepend, split: v["split"].as_bool().unwrap_or(true) });
        }
        other => {
            return Err(LegradError::Unsupported(format!(
                "the tokenizer's pre-tokeniser '{other}': a SentencePiece tokenizer.json uses Metaspace or WhitespaceSplit"
            )));
        }
    }
    Ok(())
}

impl SentencePieceTokenizer {
    /// From a `tokenizer.json` text, for sequences of `context_length` tokens.
    pub fn from_json(json: &str, context_length: usize) -> Result<Self> {
        let v: serde_json::Value = serde_json::from_str(json).map_err(bad_tokenizer)?;
        if v["model"]["type"].as_str() != Some("Unigram") {
            return Err(LegradError::Unsupported(format!(
                "a tokenizer.json with a {} model: SigLIP's is a SentencePiece unigram",
                v["model"]["type"].as_str().unwrap_or("missing")
            )));
        }
        let model = Unigram::from_json(&v["model"])?;
        let mut normalizers = Vec::new();
        parse_normalizer(&v["normalizer"], &mut normalizers)?;
        let mut pre = Vec::new();
        parse_pre_tokenizer(&v["pre_tokenizer"], &mut pre)?;
        let id_of = |token: &str| -> Option<u32> {
            model.pieces.get(token).map(|p| p.0).or_else(|| {
                v["added_tokens"].as_array()?.iter().find(|t| t["content"] == token)?["id"].as_u64().map(|i| i as u32)
            })
        };
        let (mut prefix, mut suffix) = (Vec::new(), Vec::new());
        let post = &v["post_processor"];
        match post["type"].as_str() {
            None => {}
            Some("TemplateProcessing") => {
                let mut seen_text = false;
                for item in post["single"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                    if item.get("Sequence").is_some() {
                        seen_text = true;
                    } else if let Some(id) = item["SpecialToken"]["id"].as_str() {
                        let ids: Vec<u32> = match post["special_tokens"][id]["ids"].as_array() {
                            Some(a) => a.iter().filter_map(|i| i.as_u64()).map(|i| i as u32).collect(),
                            None => vec![id_of(id).ok_or_else(|| bad_tokenizer(format!("no id for '{id}'")))?],
                        };
                        if seen_text { suffix.extend(ids) } else { prefix.extend(ids) }
                    }
                }
            }
            Some(other) => {
                return Err(LegradError::Unsupported(format!(
                    "the tokenizer's post-processor '{other}': SigLIP's is a TemplateProcessing"
                )));
            }
        }
        let pad_id =
            id_of("</s>").ok_or_else(|| bad_tokenizer("it has no '</s>' token (SigLIP's end and padding token)"))?;
        if prefix.len() + suffix.len() >= context_length {
            return Err(bad_tokenizer("its special tokens fill the whole context"));
        }
        Ok(Self { normalizers, pre, model, prefix, suffix, pad_id, context_length })
    }

    pub fn vocab_size(&self) -> usize {
        self.model.vocab_size
    }

    fn normalize(&self, text: &str) -> String {
        let mut s = text.to_string();
        for n in &self.normalizers {
            s = match n {
                Normalize::Precompiled(p) => p.normalize_string(&s),
                Normalize::Replace(re, to) => re.replace_all(&s, to.as_str()).into_owned(),
                Normalize::Strip { left, right } => {
                    let t = if *left { s.trim_start() } else { &s };
                    (if *right { t.trim_end() } else { t }).to_string()
                }
                Normalize::Lowercase => s.to_lowercase(),
                Normalize::Prepend(p) if !s.is_empty() => format!("{p}{s}"),
                Normalize::Prepend(_) => s,
                Normalize::Nfc => s.nfc().collect(),
                Normalize::Nfd => s.nfd().collect(),
                Normalize::Nfkc => s.nfkc().collect(),
                Normalize::Nfkd => s.nfkd().collect(),
            };
        }
        s
    }

    fn pre_tokenize(&self, text: String) -> Vec<String> {
        let mut pieces = if text.is_empty() { vec![] } else { vec![text] };
        for step in &self.pre {
            pieces = match step {
                PreTokenize::WhitespaceSplit => {
                    pieces.iter().flat_map(|p| p.split_whitespace().map(str::to_string).collect::<Vec<_>>()).collect()
                }
                PreTokenize::Metaspace { replacement, prepend, split } => {
                    let mut out = Vec::new();
                    for (i, p) in pieces.iter().enumerate() {
                        let mut p = p.replace(' ', &replacement.to_string());
                        let first = i == 0;
                        if !p.starts_with(*replacement)
                            && (*prepend == Prepend::Always || (*prepend == Prepend::First && first))
                        {
                            p.insert(0, *replacement);
                        }
                        if !split {
                            out.push(p);
                            continue;
                        }
                        // Split before each replacement character (merged with what follows).
                        let mut current = String::new();
                        for c in p.chars() {
                            if c == *replacement && !current.is_empty() {
                                out.push(std::mem::take(&mut current));
                            }
                            current.push(c);
                        }
                        if !current.is_empty() {
                            out.push(current);
                        }
                    }
                    out
                }
            };
        }
        pieces
    }

    /// The text's ids, without special tokens or padding.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let text = self.normalize(&canonicalize(&clean(text)));
        let mut ids = Vec::new();
        for piece in self.pre_tokenize(text) {
            self.model.encode(&piece, &mut ids);
        }
        ids
    }

    /// Exactly `context_length` ids: the text's, `</s>`, then `</s>` as padding.
    pub fn tokenize(&self, text: &str) -> Result<Tokens> {
        let mut ids = self.encode(text);
        let room = self.context_length - self.prefix.len() - self.suffix.len();
        let truncated = ids.len() > room;
        ids.truncate(room);
        let mut out = self.prefix.clone();
        out.extend(ids);
        out.extend(&self.suffix);
        out.resize(self.context_length, self.pad_id);
        Ok(Tokens { ids: out, truncated })
    }
}

/// A SentencePiece unigram model: the best segmentation of a piece of text into vocabulary
/// pieces by total score (Viterbi), as `tokenizers`' `Unigram::encode_optimized` (itself
/// SentencePiece's): positions in UTF-8, pieces tried shortest first, a later candidate replaces
/// the best only when strictly better, a character no piece starts with is unknown at
/// `min score - 10`, and a run of unknowns is one unknown token (`fuse_unk`), or its bytes'
/// `<0xXX>` pieces with `byte_fallback`.
struct Unigram {
    /// Piece → (id, score); for a repeated piece, its last id.
    pieces: std::collections::HashMap<String, (u32, f64)>,
    max_len: usize,
    unk_id: u32,
    unk_score: f64,
    byte_fallback: bool,
    vocab_size: usize,
}

impl Unigram {
    fn from_json(v: &serde_json::Value) -> Result<Self> {
        let vocab = v["vocab"].as_array().ok_or_else(|| bad_tokenizer("its unigram model has no vocabulary"))?;
        let mut pieces = std::collections::HashMap::with_capacity(vocab.len());
        let (mut min_score, mut max_len) = (f64::INFINITY, 0);
        for (id, entry) in vocab.iter().enumerate() {
            let (Some(piece), Some(score)) = (entry[0].as_str(), entry[1].as_f64()) else {
                return Err(bad_tokenizer(format!("vocabulary entry {id} is not [piece, score]")));
            };
            min_score = min_score.min(score);
            max_len = max_len.max(piece.len());
            pieces.insert(piece.to_string(), (id as u32, score));
        }
        let unk_id = v["unk_id"]
            .as_u64()
            .filter(|&u| (u as usize) < vocab.len())
            .ok_or_else(|| bad_tokenizer("its unigram model has no unknown token (unk_id)"))?
            as u32;
        Ok(Self {
            pieces,
            max_len,
            unk_id,
            unk_score: min_score - 10.0,
            byte_fallback: v["byte_fallback"].as_bool().unwrap_or(false),
            vocab_size: vocab.len(),
        })
    }

    fn encode(&self, text: &str, ids: &mut Vec<u32>) {
        let n = text.len();
        // Best path ending at each byte position: (score, start, id).
        let mut best: Vec<Option<(f64, usize, u32)>> = vec![None; n + 1];
        let mut start = 0;
        while start < n {
            let base = best[start].map_or(0.0, |b| b.0);
            let char_len = text[start..].chars().next().map_or(1, char::len_utf8);
            let mut single = false;
            let offer = |end: usize, score: f64, id: u32, best: &mut Vec<Option<(f64, usize, u32)>>| {
                let candidate = base + score;
                if best[end].is_none_or(|b| candidate > b.0) {
                    best[end] = Some((candidate, start, id));
                }
            };
            for end in start + 1..=(start + self.max_len).min(n) {
                if !text.is_char_boundary(end) {
                    continue;
                }
                if let Some(&(id, score)) = self.pieces.get(&text[start..end]) {
                    offer(end, score, id, &mut best);
                    single |= end - start == char_len;
                }
            }
            if !single {
                offer(start + char_len, self.unk_score, self.unk_id, &mut best);
            }
            start += char_len;
        }
        let mut path = Vec::new();
        let mut end = n;
        while end > 0 {
            let Some((_, s, id)) = best[end] else { break };
            path.push((s, end, id));
            end = s;
        }
        path.reverse();
        let mut i = 0;
        while i < path.len() {
            let (s, mut e, id) = path[i];
            i += 1;
            if id != self.unk_id {
                ids.push(id);
                continue;
            }
            while i < path.len() && path[i].2 == self.unk_id {
                e = path[i].1;
                i += 1;
            }
            let bytes: Option<Vec<u32>> = self
                .byte_fallback
                .then(|| text[s..e].bytes().map(|b| self.pieces.get(&format!("<0x{b:02X}>")).map(|p| p.0)).collect())
                .flatten();
            match bytes {
                Some(b) => ids.extend(b),
                None => ids.push(self.unk_id),
            }
        }
    }
}

/// The tokenizer a model comes with: CLIP's built-in BPE, or a SentencePiece vocabulary.
#[derive(Debug)]
pub enum TextTokenizer {
    /// Boxed: the BPE tables are large beside the other variant, and there is one per engine.
    Clip(Box<Tokenizer>),
    SentencePiece(SentencePieceTokenizer),
}

impl TextTokenizer {
    /// The tokenizer for a model of `config`'s family; a SigLIP model needs its `tokenizer.json`.
    pub fn for_model(config: &crate::config::ClipConfig, json: Option<&str>) -> Result<Self> {
        match config.family.anatomy().tokenizer {
            crate::config::TokenizerKind::ClipBpe => Ok(Self::Clip(Box::new(Tokenizer::new()?))),
            crate::config::TokenizerKind::SentencePiece => {
                let json = json.ok_or_else(|| {
                    LegradError::Config(
                        "a SigLIP model needs its tokenizer: give its tokenizer.json (next to the weights, or --tokenizer; in the app, by URL beside the weights or dropped with them)".into(),
                    )
                })?;
                let t = SentencePieceTokenizer::from_json(json, config.text.context_length)?;
                if t.vocab_size() > config.text.vocab_size {
                    return Err(LegradError::Config(format!(
                        "the tokenizer has {} tokens but the model's vocabulary holds {}: is it this model's tokenizer.json?",
                        t.vocab_size(),
                        config.text.vocab_size
                    )));
                }
                Ok(Self::SentencePiece(t))
            }
        }
    }

    /// Token ids for the text tower, at most `context_length` (SigLIP: exactly, padded).
    pub fn tokenize(&self, text: &str, context_length: usize) -> Result<Tokens> {
        match self {
            Self::Clip(t) => Ok(t.tokenize(text, context_length)),
            Self::SentencePiece(t) => t.tokenize(text),
        }
    }

    /// The ids of a text without special tokens.
    fn encode(&self, text: &str) -> Vec<u32> {
        match self {
            Self::Clip(t) => t.encode(text),
            Self::SentencePiece(t) => t.encode(text),
        }
    }

    /// Ids before a text's own: the start token (CLIP) or the post-processor's prefix.
    fn lead(&self) -> usize {
        match self {
            Self::Clip(_) => 1,
            Self::SentencePiece(t) => t.prefix.len(),
        }
    }

    /// Where each word of `prompt` (split at white space, as typed) lies in `ids`, the
    /// tokenization of `template` applied to it (`None`: the prompt alone): its token
    /// positions. Both tokenizers split at white space before their own pieces, so a word's
    /// tokens are its tokens alone; where `ids` say otherwise (a template that glues its text to
    /// the prompt's), the whole prompt is one span. Spans stop at the end of `ids` (a cut prompt).
    pub fn word_spans(&self, template: Option<&str>, prompt: &str, ids: &[u32]) -> Vec<(String, Range<usize>)> {
        let before = template.and_then(|t| t.split_once("{}")).map_or("", |(b, _)| b);
        let start = self.lead() + if before.trim().is_empty() { 0 } else { self.encode(before).len() };
        let mut at = start;
        let mut spans = Vec::new();
        let mut fits = true;
        for word in prompt.split_whitespace() {
            let own = self.encode(word);
            let end = at + own.len();
            let seen = &ids[at.min(ids.len())..end.min(ids.len())];
            fits &= own.starts_with(seen);
            spans.push((word.to_string(), at.min(ids.len())..end.min(ids.len())));
            at = end;
        }
        if fits { spans } else { vec![(prompt.trim().to_string(), start.min(ids.len())..at.min(ids.len()))] }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_ids() {
        let t = Tokenizer::new().unwrap();
        // open_clip.tokenize("a photo of a cat.")
        let ids = t.tokenize("a photo of a cat.", 77).ids;
        assert_eq!(ids, vec![49406, 320, 1125, 539, 320, 2368, 269, 49407]);
    }

    #[test]
    fn unigram_takes_the_best_path_and_fuses_unknowns() {
        let v = serde_json::json!({"type": "Unigram", "unk_id": 0, "vocab": [
            ["<unk>", 0.0], ["▁ab", -1.0], ["▁a", -1.0], ["b", -1.5], ["c", -0.5], ["▁", -3.0]
        ]});
        let u = Unigram::from_json(&v).unwrap();
        let mut ids = Vec::new();
        u.encode("▁abc", &mut ids);
        assert_eq!(ids, vec![1, 4]); // -1.5 beats ▁a + b + c = -3.0
        ids.clear();
        u.encode("▁xyc", &mut ids); // x and y are unknown: one token for both
        assert_eq!(ids, vec![5, 0, 4]);
    }

    #[test]
    fn truncation_keeps_end_token() {
        let t = Tokenizer::new().unwrap();
        let toks = t.tokenize(&"word ".repeat(200), 77);
        assert!(toks.truncated);
        assert_eq!(toks.ids.len(), 77);
        assert_eq!(*toks.ids.last().unwrap(), t.end_id);
    }
}
