//! `legrad`: LeGrad explanations from the command line.

mod batch;
mod bench;
mod convert;
mod eval;
mod explain;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use burn::tensor::Device;
use clap::{Args, Parser, Subcommand, ValueEnum};
use legrad::compute::{ComputePolicy, GpuFloat, Int16Products, Tiling};
use legrad::engine::{DEFAULT_TEMPLATE, Engine};
use legrad::explain::{ExplainOptions, Method};
use legrad::load::ConfigSource;
use legrad::npy;
use legrad::overlay::Colormap;
use legrad::preprocess::{DecodeLimits, DecodedImage, InputSize, decode};
use legrad::{LegradError, TraceRequest};

#[derive(Parser)]
#[command(name = "legrad", version, about = "LeGrad heatmaps for OpenCLIP vision transformers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum BackendChoice {
    /// burn's Flex CPU backend.
    Cpu,
    /// wgpu (Vulkan, Metal, DX12; lavapipe on a machine without a GPU).
    Wgpu,
}

#[derive(Args, Clone)]
pub(crate) struct ModelArgs {
    /// Checkpoint: open_clip (.safetensors, .bin, .pt), a transformers CLIPModel directory or
    /// model.safetensors, or a model file written by `legrad convert`. Default: the app's
    /// default model (the synthetic-scenes CLIP, 8-bit), built into this binary.
    #[arg(long)]
    pub(crate) model: Option<PathBuf>,
    /// Model config: open_clip JSON, transformers config.json, or a preset name
    /// (ViT-B-32, ViT-B-16, ViT-L-14, with -quickgelu for OpenAI weights).
    #[arg(long)]
    pub(crate) config: Option<String>,
    /// The model's tokenizer.json (SigLIP's SentencePiece vocabulary; found next to the weights
    /// when it is there; CLIP's is built in).
    #[arg(long)]
    pub(crate) tokenizer: Option<PathBuf>,
    /// Compute backend.
    #[arg(long, value_enum, default_value_t = BackendChoice::Cpu)]
    pub(crate) backend: BackendChoice,
    /// On the CPU: LeGrad's per-prompt products in 16-bit integers. `large`: for layers of at
    /// least 200 M multiply-adds (a ViT-B/16, not the default model), as the browser does;
    /// `always`: every size; `never`: exact f32. Default: `large` on x86 with AVX2 or AVX-512
    /// VNNI (faster than f32 there), else `never`.
    #[arg(long, value_enum)]
    pub(crate) int16: Option<Int16Choice>,
    /// On the CPU: the vision tower's linear layers in 16-bit integer products. `large`
    /// (default): towers of at least 1 M `width · mlp width` (a ViT-B/16, not the default
    /// model); `never`: f32 products by burn.
    #[arg(long, value_enum)]
    pub(crate) int_linear: Option<Int16Choice>,
    /// On a GPU: the tiles of LeGrad's fused kernels (`auto`: by the adapter), or `plain` for
    /// their plain tensor twins.
    #[arg(long, value_enum, default_value_t = TilingChoice::Auto)]
    pub(crate) tiling: TilingChoice,
    /// On a GPU: the float type of the image's products (the vision tower's linear layers and
    /// attention products, q8 or q4 models). `auto`: f16 where the adapter has `shader-f16` and
    /// is no software renderer, else f32; `f16` on an adapter without `shader-f16` is an error.
    #[arg(long, value_enum, default_value_t = FloatChoice::Auto)]
    pub(crate) gpu_float: FloatChoice,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum FloatChoice {
    Auto,
    F32,
    F16,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum Int16Choice {
    Never,
    Large,
    Always,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum TilingChoice {
    Auto,
    Gpu,
    Software,
    Plain,
}

impl Int16Choice {
    fn products(self) -> Int16Products {
        match self {
            Int16Choice::Never => Int16Products::Never,
            Int16Choice::Large => Int16Products::LargeLayers,
            Int16Choice::Always => Int16Products::Always,
        }
    }
}

impl ModelArgs {
    /// The policy a model is built with on `device` (`--int-linear`, `--gpu-float`).
    fn build_policy(&self, device: &Device) -> CliResult<ComputePolicy> {
        let mut policy = ComputePolicy::for_device(device);
        if let Some(c) = self.int_linear {
            policy = policy.with_int_linear(c.products());
        }
        let float = match self.gpu_float {
            FloatChoice::Auto => return Ok(policy),
            FloatChoice::F32 => GpuFloat::F32,
            FloatChoice::F16 => GpuFloat::F16,
        };
        let policy = policy.with_gpu_float(float, device);
        if policy.is_gpu() && policy.gpu_float != float {
            return Err(LegradError::Input("--gpu-float f16: this adapter has no shader-f16".into()));
        }
        Ok(policy)
    }

    /// The engine's compute policy from its device, with these flags applied.
    fn policy(&self, engine: &Engine) -> ComputePolicy {
        let mut policy = *engine.policy();
        if let Some(c) = self.int_linear {
            policy = policy.with_int_linear(c.products());
        }
        if let Some(int16) = self.int16 {
            policy = policy.with_int16(match int16 {
                Int16Choice::Never => Int16Products::Never,
                Int16Choice::Large => Int16Products::LargeLayers,
                Int16Choice::Always => Int16Products::Always,
            });
        }
        match self.tiling {
            TilingChoice::Auto => policy,
            TilingChoice::Gpu => policy.with_tiling(Some(Tiling::GPU)),
            TilingChoice::Software => policy.with_tiling(Some(Tiling::SOFTWARE)),
            TilingChoice::Plain => policy.with_tiling(None),
        }
    }
}

#[derive(Args, Clone)]
#[group(required = true, multiple = false)]
struct ImageInput {
    /// An image file (any format the `image` crate reads).
    #[arg(long)]
    image: Option<PathBuf>,
    /// Many images, the model loaded once: a folder (its image files), a glob pattern
    /// ('photos/**/*.jpg', quoted), or @list.txt (one path per line). Each image's files go to
    /// DIR/<its name>-<8 hex digits>/, DIR/index.jsonl lists them; a run again skips the images
    /// the index has.
    #[arg(long)]
    images: Option<String>,
    /// Preprocessed pixels: an f32 .npy of shape [3, H, W] (or [1, 3, H, W]).
    #[arg(long)]
    pixels: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Explain prompts on an image: writes DIR/n.npy, DIR/n.png, DIR/scores.json (score and
    /// presence) and DIR/words.json (each prompt's words and their relevance).
    Explain {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        input: ImageInput,
        /// A text prompt; repeat for several.
        #[arg(long, required = true)]
        prompt: Vec<String>,
        /// Template with {} for the prompt; "none" uses prompts as typed.
        #[arg(long, default_value = DEFAULT_TEMPLATE)]
        template: String,
        /// Input size: N or WxH (ignored with --pixels, whose shape decides).
        #[arg(long, default_value = "448")]
        size: InputSize,
        /// First layer used (negative counts from the end).
        #[arg(long, default_value_t = -2, allow_hyphen_values = true)]
        layer_index: i64,
        /// Explanation method.
        #[arg(long, default_value = "legrad")]
        method: Method,
        /// Overlay colormap (jet as the reference, or viridis).
        #[arg(long, default_value = "jet")]
        colormap: Colormap,
        /// Also write each layer's raw grid map (DIR/n.layerL.npy).
        #[arg(long)]
        per_layer: bool,
        /// Keep the image's shape (the web app's default): --size N is the long side, the
        /// short side follows the image, rounded to whole patches.
        #[arg(long)]
        keep_aspect: bool,
        /// Also draw each map over the original image at its own resolution (DIR/n.original.png,
        /// as the web app's large view and export; at most 4096 px on the long side) and write
        /// the map resized onto it (DIR/n.original.npy, the part of the image it covers).
        #[arg(long)]
        on_original: bool,
        /// Also write masks at the photo's size (the model's input with --pixels): each
        /// prompt's map binarised (DIR/n.mask.png), and every prompt's at once, a pixel claimed
        /// by several going to the highest map (DIR/labels.png: 0 background, k for prompt k-1;
        /// DIR/labels.json its legend; DIR/segmentation.png drawn over the photo).
        #[arg(long)]
        masks: bool,
        /// The masks' threshold on the normalised map (default: the LeGrad paper's 0.5).
        #[arg(long, default_value_t = legrad::masks::DEFAULT_THRESHOLD)]
        mask_threshold: f32,
        /// With --images: this machine's share, K/N (0 <= K < N): every Nth image from the
        /// K-th, so that N machines share a data set with no coordinator.
        #[arg(long)]
        shard: Option<batch::Shard>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a normalised embedding as .npy.
    Embed {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long, conflicts_with_all = ["pixels", "text"])]
        image: Option<PathBuf>,
        #[arg(long, conflicts_with = "text")]
        pixels: Option<PathBuf>,
        /// Text, used as typed (no template).
        #[arg(long)]
        text: Option<String>,
        #[arg(long, default_value = "224")]
        size: InputSize,
        #[arg(long)]
        out: PathBuf,
    },
    /// Decode and preprocess an image as `explain` does; write the f32 [3, H, W] array.
    Preprocess {
        #[arg(long)]
        image: PathBuf,
        #[arg(long, default_value = "448")]
        size: InputSize,
        #[arg(long)]
        out: PathBuf,
    },
    /// Synthetic scenes: write images, masks and captions to a folder, or stream training
    /// records to stdout (RGB bytes, a 96-byte caption, 96 bytes naming every object of the
    /// scene, comma-separated, the captioned one first, zero-padded UTF-8; then one byte per
    /// pixel: 0 for background, k for the k-th named object).
    Scenes {
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// First scene index.
        #[arg(long, default_value_t = 0)]
        start: u64,
        #[arg(long, default_value_t = 16)]
        count: u64,
        #[arg(long, default_value_t = 224)]
        size: usize,
        /// Objects per scene (1 to 4); random when omitted.
        #[arg(long)]
        objects: Option<usize>,
        /// Write PNGs and JSON here.
        #[arg(long, required_unless_present = "stream")]
        out: Option<PathBuf>,
        /// Write training records to stdout instead.
        #[arg(long)]
        stream: bool,
    },
    /// Time the image forward, explanations on a cached trace and text encoding.
    Bench(bench::BenchArgs),
    /// Localisation (pointing game, mIoU) and zero-shot accuracy on held-out synthetic scenes.
    Eval(eval::EvalArgs),
    /// Convert a checkpoint to the app's model file (f32, f16, q8, q4).
    Convert(convert::ConvertArgs),
    /// Compare a converted model with its f32 reference: maps, embeddings, accuracy.
    Fidelity(convert::FidelityArgs),
}

/// The app's default model, the same file the web app serves: the CLI works offline and from
/// anywhere without a path.
const DEFAULT_MODEL: &[u8] = include_bytes!("../../../www/models/default.safetensors");

impl ModelArgs {
    /// A model on the CPU with the default compute policy.
    pub(crate) fn cpu(model: PathBuf, config: Option<String>) -> Self {
        Self {
            model: Some(model),
            config,
            tokenizer: None,
            backend: BackendChoice::Cpu,
            int16: None,
            int_linear: None,
            tiling: TilingChoice::Auto,
            gpu_float: FloatChoice::Auto,
        }
    }

    /// What `--model` names, for messages and reports.
    pub(crate) fn label(&self) -> String {
        match &self.model {
            Some(p) => p.display().to_string(),
            None => "default (synthetic-scenes CLIP, q8)".into(),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

type CliResult<T> = Result<T, LegradError>;

pub(crate) fn device(choice: BackendChoice) -> Device {
    match choice {
        BackendChoice::Cpu => Device::flex(),
        BackendChoice::Wgpu => Device::wgpu(Default::default()),
    }
}

/// `--config`: a JSON file (open_clip or transformers) or a preset name.
pub(crate) fn config_source(config: &Option<String>) -> CliResult<Option<ConfigSource>> {
    Ok(match config {
        None => None,
        Some(c) if Path::new(c).exists() => {
            let text = std::fs::read_to_string(c).map_err(|e| LegradError::Io { path: c.clone(), source: e })?;
            Some(ConfigSource::from_json(text))
        }
        Some(c) if c.ends_with(".json") => {
            return Err(LegradError::Io {
                path: c.clone(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            });
        }
        Some(c) => Some(ConfigSource::Preset(c.clone())),
    })
}

/// `--tokenizer`: the text of a tokenizer.json.
pub(crate) fn tokenizer_file(path: &Option<PathBuf>) -> CliResult<Option<String>> {
    path.as_ref().map(|p| std::fs::read_to_string(p).map_err(|e| LegradError::io_path(p, e))).transpose()
}

pub(crate) fn load_engine(args: &ModelArgs) -> CliResult<Engine> {
    let engine = load_engine_on_device(args)?;
    let policy = args.policy(&engine);
    engine.with_policy(policy)
}

fn load_engine_on_device(args: &ModelArgs) -> CliResult<Engine> {
    let config = config_source(&args.config)?;
    let Some(model) = &args.model else {
        if args.config.is_some() {
            return Err(LegradError::Input("--config needs --model (the default model carries its own config)".into()));
        }
        let d = device(args.backend);
        let (clip, info) = legrad::load::read_bytes(DEFAULT_MODEL, None)?.build_with(&d, &args.build_policy(&d)?)?;
        return Engine::new(clip, info);
    };
    if let Some(spec) = model.to_str().and_then(|s| s.strip_prefix("random:")) {
        // random:<preset or config.json>[:seed], e.g. random:ViT-B-16:0, for benchmarks.
        let mut p = convert::random_model(spec, config.as_ref())?;
        p.tokenizer = tokenizer_file(&args.tokenizer)?;
        let d = device(args.backend);
        let (clip, info) = p.build_with(&d, &args.build_policy(&d)?)?;
        return Engine::new(clip, info);
    }
    let mut p = legrad::load::prepare_path(model, config)?;
    if let Some(t) = tokenizer_file(&args.tokenizer)? {
        p.tokenizer = Some(t);
    }
    let d = device(args.backend);
    let (clip, info) = p.build_with(&d, &args.build_policy(&d)?)?;
    for note in &info.notes {
        eprintln!("note: {note}");
    }
    Engine::new(clip, info)
}

/// Pixels and their size from --image (decoded and preprocessed) or --pixels (as given).
fn read_input(input: &ImageInput, size: InputSize) -> CliResult<(Vec<f32>, InputSize)> {
    let (pixels, size, _) = read_image(input, |_| Ok(size))?;
    Ok((pixels, size))
}

/// As [`read_input`], the size chosen from the decoded image's; the image too (None for
/// --pixels).
fn read_image(
    input: &ImageInput,
    size_for: impl Fn(&DecodedImage) -> CliResult<InputSize>,
) -> CliResult<(Vec<f32>, InputSize, Option<DecodedImage>)> {
    if let Some(path) = &input.pixels {
        let (pixels, size) = npy::read_pixels_file(path)?;
        return Ok((pixels, size, None));
    }
    let path = input.image.as_ref().ok_or_else(|| LegradError::Input("give --image or --pixels".into()))?;
    let bytes = std::fs::read(path).map_err(|e| LegradError::Io { path: path.display().to_string(), source: e })?;
    let img = decode(&bytes, &DecodeLimits::default())?;
    let size = size_for(&img)?;
    Ok((img.to_pixels(size.height, size.width)?, size, Some(img)))
}

fn run(cli: Cli) -> CliResult<()> {
    match cli.command {
        Command::Explain {
            model,
            input,
            prompt,
            template,
            size,
            layer_index,
            method,
            colormap,
            per_layer,
            keep_aspect,
            on_original,
            masks,
            mask_threshold,
            shard,
            out,
        } => {
            if !(0.0..=1.0).contains(&mask_threshold) {
                return Err(LegradError::Input(format!(
                    "--mask-threshold {mask_threshold} is outside 0..1 (maps are normalised to 0..1)"
                )));
            }
            if shard.is_some() && input.images.is_none() {
                return Err(LegradError::Input("--shard goes with --images".into()));
            }
            let engine = load_engine(&model)?;
            let template = (template != "none").then_some(template.as_str());
            let prompts = engine.prepare(&prompt, template)?;
            for p in prompts.iter().filter(|p| p.tokens.truncated) {
                eprintln!(
                    "note: prompt '{}' is longer than the model's {} tokens and was cut",
                    p.prompt, engine.model.config.text.context_length
                );
            }
            let options = ExplainOptions { layer_index };
            let request: TraceRequest = engine.request_for(&[method], &options)?;
            let settings = explain::Settings {
                prompts,
                method,
                options,
                request,
                colormap,
                per_layer,
                size,
                keep_aspect,
                on_original,
                masks,
                mask_threshold,
            };
            if let Some(images) = &input.images {
                return batch::run(&engine, &settings, images, shard.unwrap_or_default(), &out);
            }
            let patch = engine.model.config.vision.patch_size;
            let image = explain::load_single(&settings, input.image.as_ref(), input.pixels.as_ref(), patch)?;
            let (results, _) = explain::explain_one(&engine, &settings, image, &out)?;
            for (n, r) in results.iter().enumerate() {
                let absent = if r.presence < legrad::presence::LIKELY_ABSENT { "  (likely absent)" } else { "" };
                println!("{n}: {:.4}  presence {:.2}  {}{absent}", r.score, r.presence, r.text);
            }
            Ok(())
        }
        Command::Embed { model, image, pixels, text, size, out } => {
            let engine = load_engine(&model)?;
            let values = if let Some(text) = text {
                let p = engine.prepare(&[text], None)?;
                pollster::block_on(engine.embed_texts(&p))?
            } else {
                let (pixels, size) = read_input(&ImageInput { image, pixels, images: None }, size)?;
                pollster::block_on(engine.embed_image(pixels, size))?
            };
            npy::write_f32(&out, &values, &[values.len()])
        }
        Command::Preprocess { image, size, out } => {
            let (pixels, size) = read_input(&ImageInput { image: Some(image), pixels: None, images: None }, size)?;
            npy::write_f32(&out, &pixels, &[3, size.height, size.width])
        }
        Command::Scenes { seed, start, count, size, objects, out, stream } => {
            scenes(seed, start, count, size, objects, out, stream)
        }
        Command::Bench(args) => bench::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Convert(args) => convert::convert(args),
        Command::Fidelity(args) => convert::fidelity(args),
    }
}

/// The map covers the grid times the patch; a size not divisible by the patch loses a margin.
pub(crate) fn crop_rgb(rgb: &[u8], width: usize, h: usize, w: usize) -> Vec<u8> {
    (0..h).flat_map(|y| rgb[(y * width) * 3..(y * width + w) * 3].iter().copied()).collect()
}

/// What follows a streamed scene's pixels: 192 bytes of text, a caption of one object (its full
/// name half of the time, else any caption that singles it out), then every object's name,
/// comma-separated, the captioned one first (at most 4 names of at most 15 bytes); then the
/// label map, one byte per pixel, 0 for background and k for the k-th name's object.
fn stream_record(seed: u64, i: u64, scene: &legrad::scenes::Scene) -> ([u8; 192], Vec<u8>) {
    let mut rng = legrad::rng::Rng::for_item(seed ^ 0x5EED, i);
    let target = rng.below(scene.objects.len());
    let captions = scene.captions(target);
    let caption = if rng.uniform() < 0.5 { &captions[0] } else { &captions[rng.below(captions.len())] };
    let order: Vec<usize> = std::iter::once(target).chain((0..scene.objects.len()).filter(|&j| j != target)).collect();
    let names: Vec<String> =
        order.iter().map(|&j| legrad::scenes::object_name(scene.objects[j].color, scene.objects[j].shape)).collect();
    let names = names.join(",");
    let mut field = [0u8; 192];
    field[..caption.len().min(96)].copy_from_slice(&caption.as_bytes()[..caption.len().min(96)]);
    field[96..96 + names.len().min(96)].copy_from_slice(&names.as_bytes()[..names.len().min(96)]);
    let mut labels = vec![0u8; scene.width * scene.height];
    for (k, &j) in order.iter().enumerate() {
        for (l, &m) in labels.iter_mut().zip(&scene.objects[j].mask) {
            if m {
                *l = k as u8 + 1;
            }
        }
    }
    (field, labels)
}

fn scenes(
    seed: u64,
    start: u64,
    count: u64,
    size: usize,
    objects: Option<usize>,
    out: Option<PathBuf>,
    stream: bool,
) -> CliResult<()> {
    use std::io::Write;
    if stream {
        let stdout = std::io::stdout();
        let mut w = std::io::BufWriter::new(stdout.lock());
        for i in start..start + count {
            let scene = legrad::scenes::generate(seed, i, size, objects);
            let (field, labels) = stream_record(seed, i, &scene);
            if w.write_all(&scene.rgb).and_then(|_| w.write_all(&field)).and_then(|_| w.write_all(&labels)).is_err() {
                return Ok(()); // the reader closed the pipe
            }
        }
        return w.flush().map_err(|e| LegradError::Input(format!("stdout: {e}")));
    }
    let out = out.ok_or_else(|| LegradError::Input("give --out or --stream".into()))?;
    std::fs::create_dir_all(&out).map_err(|e| LegradError::io_path(&out, e))?;
    let mut index = Vec::new();
    for i in start..start + count {
        let scene = legrad::scenes::generate(seed, i, size, objects);
        let name = format!("scene-{seed}-{i}");
        image::save_buffer(
            out.join(format!("{name}.png")),
            &scene.rgb,
            size as u32,
            size as u32,
            image::ExtendedColorType::Rgb8,
        )
        .map_err(|e| LegradError::Input(format!("cannot write {name}.png: {e}")))?;
        let mut objs = Vec::new();
        for (k, o) in scene.objects.iter().enumerate() {
            let mask: Vec<u8> = o.mask.iter().map(|&m| if m { 255 } else { 0 }).collect();
            image::save_buffer(
                out.join(format!("{name}.mask{k}.png")),
                &mask,
                size as u32,
                size as u32,
                image::ExtendedColorType::L8,
            )
            .map_err(|e| LegradError::Input(format!("cannot write a mask: {e}")))?;
            objs.push(
                serde_json::json!({"object": o, "captions": scene.captions(k), "mask": format!("{name}.mask{k}.png")}),
            );
        }
        index
            .push(serde_json::json!({"image": format!("{name}.png"), "background": scene.background, "objects": objs}));
    }
    std::fs::write(out.join("scenes.json"), serde_json::to_string_pretty(&index).unwrap_or_default())
        .map_err(|e| LegradError::io_path(&out, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_records_name_and_label_every_object_captioned_first() {
        let text = |b: &[u8]| String::from_utf8(b.iter().copied().take_while(|&c| c != 0).collect()).unwrap();
        for i in 0..40 {
            let scene = legrad::scenes::generate(5, i, 64, None);
            let (field, labels) = stream_record(5, i, &scene);
            let (caption, names) = (text(&field[..96]), text(&field[96..]));
            let names: Vec<&str> = names.split(',').collect();
            let mut expected: Vec<String> =
                scene.objects.iter().map(|o| legrad::scenes::object_name(o.color, o.shape)).collect();
            let target = expected.iter().position(|n| n == names[0]).unwrap();
            assert!(
                scene.captions(target).contains(&caption),
                "scene {i}: {caption:?} does not single out {}",
                names[0]
            );
            let mut got: Vec<String> = names.iter().map(|s| s.to_string()).collect();
            expected.sort();
            got.sort();
            assert_eq!(got, expected, "scene {i}");
            // The label map marks each named object's mask with its place in the names.
            for (k, name) in names.iter().enumerate() {
                let o = scene.objects.iter().find(|o| legrad::scenes::object_name(o.color, o.shape) == *name).unwrap();
                let marked: Vec<bool> = labels.iter().map(|&l| l as usize == k + 1).collect();
                assert_eq!(marked, o.mask, "scene {i}, object {name}");
            }
            let covered = scene.objects.iter().map(|o| o.mask.iter().filter(|&&m| m).count()).sum::<usize>();
            assert_eq!(labels.iter().filter(|&&l| l > 0).count(), covered, "scene {i}: masks overlap or labels stray");
        }
    }
}
