//! CLIP's byte-level BPE, as open_clip 2.23's `SimpleTokenizer` (`open_clip/tokenizer.py`).
//!
//! Why not a crate: `tokenizers` needs a `tokenizer.json` that is not available offline and
//! pulls onig/fancy-regex into the wasm build; `instant-clip-tokenizer` skips open_clip's text
//! cleaning. The BPE itself is 40 lines; the cleaning (a subset of `ftfy.fix_text`) is what
//! makes the ids equal, and it is tested against open_clip on `tests/fixtures/tokenizer.json`.
//! The vocabulary file is open_clip's `bpe_simple_vocab_16e6.txt.gz` (MIT, from OpenAI CLIP).

use std::collections::HashMap;
use std::io::Read;

use regex::Regex;
use unicode_normalization::UnicodeNormalization;

use crate::error::{LegradError, Result};

const VOCAB_GZ: &[u8] = include_bytes!("../assets/bpe_simple_vocab_16e6.txt.gz");

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
    let text = text.trim_matches(is_py_space);
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
    out.trim_matches(' ').to_lowercase()
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
    let text = text.to_lowercase();
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

/// SigLIP's SentencePiece tokenizer, as open_clip 2.23 runs it for `ViT-B-16-SigLIP`
/// (`HFTokenizer` with `clean='canonicalize'`): the text cleaned ([`clean`], then
/// [`canonicalize`]), then the model's `tokenizer.json` through the `tokenizers` library (the
/// one transformers runs): its normaliser, pre-tokeniser, unigram model and `</s>` suffix,
/// truncated and padded to the context with `</s>` (SigLIP pads with its end token).
pub struct SentencePieceTokenizer {
    inner: tokenizers::Tokenizer,
    pub pad_id: u32,
    context_length: usize,
}

impl std::fmt::Debug for SentencePieceTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SentencePieceTokenizer {{ vocab: {} }}", self.inner.get_vocab_size(true))
    }
}

impl SentencePieceTokenizer {
    /// From a `tokenizer.json` text, for sequences of `context_length` tokens.
    pub fn from_json(json: &str, context_length: usize) -> Result<Self> {
        use std::str::FromStr;
        let bad = |e: String| LegradError::Config(format!("the tokenizer file is not a usable tokenizer.json: {e}"));
        let mut inner =
            tokenizers::Tokenizer::from_str(json).map_err(|e| bad(crate::error::one_line(e.to_string())))?;
        let pad_token = "</s>";
        let pad_id = inner
            .token_to_id(pad_token)
            .ok_or_else(|| bad("it has no '</s>' token (SigLIP's end and padding token)".into()))?;
        inner
            .with_truncation(Some(tokenizers::TruncationParams { max_length: context_length, ..Default::default() }))
            .map_err(|e| bad(e.to_string()))?;
        inner.with_padding(Some(tokenizers::PaddingParams {
            strategy: tokenizers::PaddingStrategy::Fixed(context_length),
            pad_id,
            pad_token: pad_token.into(),
            ..Default::default()
        }));
        Ok(Self { inner, pad_id, context_length })
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Exactly `context_length` ids: the text's, `</s>`, then `</s>` as padding.
    pub fn tokenize(&self, text: &str) -> Result<Tokens> {
        let text = canonicalize(&clean(text));
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| LegradError::Input(format!("the tokenizer failed on this prompt: {e}")))?;
        let ids = enc.get_ids().to_vec();
        if ids.len() != self.context_length {
            return Err(LegradError::Input(format!(
                "the tokenizer gave {} ids for a {}-token context",
                ids.len(),
                self.context_length
            )));
        }
        Ok(Tokens { ids, truncated: !enc.get_overflowing().is_empty() })
    }
}

/// The tokenizer a model comes with: CLIP's built-in BPE, or a SentencePiece vocabulary.
#[derive(Debug)]
pub enum TextTokenizer {
    Clip(Tokenizer),
    SentencePiece(SentencePieceTokenizer),
}

impl TextTokenizer {
    /// The tokenizer for a model of `config`'s family; a SigLIP model needs its `tokenizer.json`.
    pub fn for_model(config: &crate::config::ClipConfig, json: Option<&str>) -> Result<Self> {
        match config.family {
            crate::config::Family::Clip => Ok(Self::Clip(Tokenizer::new()?)),
            crate::config::Family::Siglip => {
                let json = json.ok_or_else(|| {
                    LegradError::Config(
                        "a SigLIP model needs its tokenizer: give its tokenizer.json (next to the weights, --tokenizer, or the app's tokenizer field)".into(),
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
    fn truncation_keeps_end_token() {
        let t = Tokenizer::new().unwrap();
        let toks = t.tokenize(&"word ".repeat(200), 77);
        assert!(toks.truncated);
        assert_eq!(toks.ids.len(), 77);
        assert_eq!(*toks.ids.last().unwrap(), t.end_id);
    }
}
