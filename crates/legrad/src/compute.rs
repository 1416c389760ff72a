//! The compute policy: which path each step takes on this engine's device, decided once.
//!
//! [`ComputePolicy::for_device`] makes it from the device (a GPU runtime or burn's CPU backend,
//! the adapter's name) and the platform (wasm or native); the engine holds it and passes it to
//! the explainers. The caller may change it at the edge: the page, which knows from WebGPU's
//! `GPUAdapterInfo` that its adapter is a software renderer ([`ComputePolicy::with_software_adapter`]);
//! the CLI's flags and the tests ([`ComputePolicy::with_int16`], [`ComputePolicy::with_tiling`]).
//! Nothing below reads an environment variable or a global flag.

use burn::tensor::Device;

/// Where the tensors live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Processor {
    /// burn's CPU backend (Flex): nothing compiles, quantized weights are dequantized once at load.
    Cpu,
    /// A GPU runtime (CubeCL: WebGPU, Vulkan, Metal): kernels compile per shape, quantized
    /// weights stay packed on the device. `software`: a CPU running the shaders (SwiftShader,
    /// lavapipe), where every storage load costs and big tiles pay.
    Gpu { software: bool },
}

/// When LeGrad's per-prompt products on the CPU run in 16-bit integers (`explain::int16`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Int16Products {
    /// Always in f32.
    Never,
    /// For layers of at least [`INT16_MIN_WORK`] multiply-adds (a ViT-B/16 at any size; the
    /// small default model stays exact): the browser's choice, where f32 products have no FMA.
    LargeLayers,
    /// At every size (the tests of the integer path on the small fixture models).
    Always,
}

/// The least work (`N · 4W · W` multiply-adds per layer) for which [`Int16Products::LargeLayers`]
/// takes the integer products: a ViT-B/16 at 224 is 465 M, the default model at 448 far less.
pub const INT16_MIN_WORK: usize = 200_000_000;

/// Which form runs the CPU's integer products (`model::int_linear::kernels`, and `main` of
/// `explain::int16`): the CPU's best, found once where the policy is made
/// ([`IntKernel::best`]), or a named one (the tests compare them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntKernel {
    Portable,
    /// wasm's 128-bit SIMD (every browser with wasm SIMD).
    Simd128,
    /// x86-64 with AVX2.
    Avx2,
    /// x86-64 with AVX-512 (F, BW) and VNNI.
    Avx512Vnni,
}

impl IntKernel {
    /// The fastest form this CPU runs.
    pub fn best() -> Self {
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        return IntKernel::Simd128;
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vnni")
            {
                return IntKernel::Avx512Vnni;
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                return IntKernel::Avx2;
            }
        }
        #[allow(unreachable_code)]
        IntKernel::Portable
    }

    /// Every form this CPU can run (the portable one first).
    pub fn available() -> Vec<Self> {
        let mut all = vec![IntKernel::Portable];
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        all.push(IntKernel::Simd128);
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                all.push(IntKernel::Avx2);
            }
            if IntKernel::best() == IntKernel::Avx512Vnni {
                all.push(IntKernel::Avx512Vnni);
            }
        }
        all
    }
}

/// The least `width · mlp width` of a tower whose linear layers the CPU path multiplies in
/// integers under [`Int16Products::LargeLayers`] (`model::int_linear`): a ViT-B/16's 2.4 M; the
/// default model's 65 K stays exact.
pub const INT_LINEAR_MIN: usize = 1_000_000;

/// The float type of a GPU's image products (the vision tower's linear layers and attention
/// products; `model::Dense::Half`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GpuFloat {
    F32,
    /// f16 inputs and products, accumulated in f32 (burn's matmul does for f16 outputs); the
    /// residual stream, the layer norms, the softmax and LeGrad's backward stay f32: a real
    /// CLIP's massive channels (hundreds) squared overflow f16 in a layer norm's variance.
    /// Where the adapter has `shader-f16` and is no software renderer (which has no f16
    /// arithmetic to gain from); docs/benchmarks-history.md §13 has its fidelity.
    F16,
}

/// How a tower's linear layers multiply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinearProducts {
    /// burn's own: f32 on the CPU, packed quantized weights on a GPU.
    Burn,
    /// On a GPU, f16 products against the packed quantized weights ([`GpuFloat::F16`]; a layer
    /// whose weight is not quantized keeps [`LinearProducts::Burn`]).
    Half,
    /// 16-bit integer products on the CPU by this form of the kernel (`model::int_linear`).
    Integer(IntKernel),
}

/// The tile shapes of LeGrad's GPU kernels for one adapter (`explain::kernel`'s module
/// documentation says why they differ).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tiling {
    /// Units per cube.
    pub units: u32,
    /// Relevance: query rows by key tokens per unit.
    pub query_rows: usize,
    pub keys: usize,
    /// Split the query rows into chunks (summed afterwards) until a launch has about this many
    /// units (a GPU needs tens of thousands; a CPU's few cores do not).
    pub target_units: usize,
    /// Head gradient: rows by columns of `dc` per unit; `None`: `dc` by burn's matmul and
    /// elementwise operations.
    pub head_gradient: Option<(usize, usize)>,
}

impl Tiling {
    /// A GPU: small tiles, many units, burn's matmul for `dc`.
    pub const GPU: Tiling = Tiling { units: 64, query_rows: 4, keys: 4, target_units: 65_536, head_gradient: None };
    /// A software adapter (a CPU running the shaders): the tiles measured fastest on lavapipe
    /// (`examples/kernel_times.rs`; docs/benchmarks-history.md §5).
    pub const SOFTWARE: Tiling =
        Tiling { units: 8, query_rows: 32, keys: 16, target_units: 1, head_gradient: Some((32, 16)) };

    pub fn for_adapter(software: bool) -> Tiling {
        if software { Tiling::SOFTWARE } else { Tiling::GPU }
    }
}

/// One value that says which path every step takes: see the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ComputePolicy {
    pub processor: Processor,
    /// LeGrad on a GPU: its fused kernels with these tiles, or `None` for plain tensor
    /// operations (the kernels' twins). Always `None` on the CPU.
    pub kernels: Option<Tiling>,
    /// LeGrad's per-prompt products on the CPU.
    pub int16: Int16Products,
    /// The vision tower's linear layers on the CPU (decided when a model is built).
    pub linear: Int16Products,
    /// The form of the integer kernels this CPU runs best (found once, here).
    pub int_kernel: IntKernel,
    /// The float type of a GPU's image products (decided when a model is built); F32 on the CPU.
    pub gpu_float: GpuFloat,
    /// Where helper threads hold shares of the vision tower (the browser's CPU path), the image
    /// step is shared from this many tokens per image: below it a stage's products are too short
    /// to outweigh a message between workers ([`SHARED_STEP_MIN_TOKENS`]).
    pub shared_step_tokens: usize,
    /// On the CPU, the prompts of one request are explained in chunks whose attention-shaped
    /// intermediates (`tokens² · heads` values a prompt, per layer) stay within this many bytes
    /// ([`CPU_PROMPT_CHUNK_BYTES`]).
    pub prompt_chunk_bytes: usize,
}

/// The CPU's bound on a chunk of prompts' attention-shaped intermediates: all of a request's
/// prompts at once while they are small (a ViT-B/16 at 224: 1.9 MB a prompt), a few at a time
/// where each is large (at 448: 30 MB a prompt). Measured natively on 2 cores (history §9):
/// eight prompts at 448 took 10-14% less in chunks of two than all at once, and at 224 one
/// chunk of eight beat one prompt at a time by a third.
pub const CPU_PROMPT_CHUNK_BYTES: usize = 64 << 20;

/// The fewest tokens per image whose image step is shared with helper workers: measured in
/// Chromium on 2 cores (history §11), a ViT-B/16 at 224 px (197 tokens) took about 450-510 ms
/// shared against 650-700 alone, and its camera's 4:3 frames (141 tokens) ran at 2.2-2.3
/// frames/s against 1.7-1.9 (before the engine's static constructors ran once, history §10,
/// 197 tokens ran no faster shared). Fewer tokens are not measured: they stay on one thread.
pub const SHARED_STEP_MIN_TOKENS: usize = 128;

impl ComputePolicy {
    /// The policy for `device`: a GPU runtime gets the fused kernels with the tiles for its
    /// adapter (software by its name); the CPU gets the integer products for large layers in
    /// the browser (no FMA for f32 there) and on x86 with AVX2 or AVX-512 VNNI, exact f32
    /// elsewhere.
    pub fn for_device(device: &Device) -> Self {
        match gpu_adapter(device) {
            Some(adapter) => Self::gpu(is_software_adapter(&adapter.name), adapter.f16),
            None => Self::cpu(),
        }
    }

    /// The CPU's policy on this platform.
    pub fn cpu() -> Self {
        // Integer products for large layers in the browser (f32 has no FMA there) and on x86
        // with AVX2 or AVX-512 VNNI, where `main` takes `K` on the linear layers' grid and the
        // relevance has its own forms: half the time of `gemm`'s f32 (history §10). Elsewhere
        // natively (the portable form) the f32 products stay.
        let int_kernel = IntKernel::best();
        let int16 = match int_kernel {
            _ if cfg!(target_family = "wasm") => Int16Products::LargeLayers,
            IntKernel::Avx2 | IntKernel::Avx512Vnni => Int16Products::LargeLayers,
            IntKernel::Portable | IntKernel::Simd128 => Int16Products::Never,
        };
        Self {
            processor: Processor::Cpu,
            kernels: None,
            int16,
            linear: Int16Products::LargeLayers,
            int_kernel,
            gpu_float: GpuFloat::F32,
            shared_step_tokens: SHARED_STEP_MIN_TOKENS,
            prompt_chunk_bytes: CPU_PROMPT_CHUNK_BYTES,
        }
    }

    fn gpu(software: bool, f16: bool) -> Self {
        Self {
            processor: Processor::Gpu { software },
            kernels: Some(Tiling::for_adapter(software)),
            int16: Int16Products::Never,
            linear: Int16Products::Never,
            int_kernel: IntKernel::Portable,
            gpu_float: if f16 && !software { GpuFloat::F16 } else { GpuFloat::F32 },
            shared_step_tokens: usize::MAX,
            // Unused: a GPU's chunks are the padded prompt counts its kernels were compiled for.
            prompt_chunk_bytes: usize::MAX,
        }
    }

    /// The caller knows the GPU adapter is a software renderer (or not) where the runtime does
    /// not name it (a browser's WebGPU: the page reads `GPUAdapterInfo`, wgpu does not). No
    /// effect on the CPU.
    pub fn with_software_adapter(self, software: bool) -> Self {
        match self.processor {
            Processor::Gpu { .. } => Self {
                processor: Processor::Gpu { software },
                kernels: self.kernels.map(|_| Tiling::for_adapter(software)),
                gpu_float: if software { GpuFloat::F32 } else { self.gpu_float },
                ..self
            },
            Processor::Cpu => self,
        }
    }

    /// LeGrad's GPU kernels with `tiling`, or `None` for the plain tensor form (comparisons). No
    /// effect on the CPU.
    pub fn with_tiling(self, tiling: Option<Tiling>) -> Self {
        match self.processor {
            Processor::Gpu { .. } => Self { kernels: tiling, ..self },
            Processor::Cpu => self,
        }
    }

    pub fn with_int16(self, int16: Int16Products) -> Self {
        Self { int16, ..self }
    }

    /// The vision tower's linear layers in integers: never, for large towers, always (no effect
    /// on a GPU).
    pub fn with_int_linear(self, linear: Int16Products) -> Self {
        Self { linear, ..self }
    }

    /// A GPU's image products in `float` where the adapter can ([`GpuFloat::F16`] needs
    /// `shader-f16`, which [`for_device`](Self::for_device) read; the tests and the CLI choose it
    /// on a software adapter, which has it but gains nothing). No effect on the CPU.
    pub fn with_gpu_float(self, float: GpuFloat, device: &Device) -> Self {
        match (self.processor, float) {
            (Processor::Cpu, _) => self,
            (Processor::Gpu { .. }, GpuFloat::F16) if !gpu_adapter(device).is_some_and(|a| a.f16) => self,
            (Processor::Gpu { .. }, _) => Self { gpu_float: float, ..self },
        }
    }

    /// How the vision tower (`width`, `mlp_width`) multiplies its linear layers: as
    /// [`linear_products`](Self::linear_products), in f16 on a GPU where [`GpuFloat::F16`].
    /// (The text tower's few rows a prompt stay f32: a cast each way per product would cost more
    /// launches than its products take.)
    pub fn image_products(&self, width: usize, mlp_width: usize) -> LinearProducts {
        match (self.processor, self.gpu_float) {
            (Processor::Gpu { .. }, GpuFloat::F16) => LinearProducts::Half,
            _ => self.linear_products(width, mlp_width),
        }
    }

    /// How a tower of `width` and `mlp_width` multiplies its linear layers.
    pub fn linear_products(&self, width: usize, mlp_width: usize) -> LinearProducts {
        let integer = match (self.processor, self.linear) {
            (Processor::Gpu { .. }, _) | (_, Int16Products::Never) => false,
            (Processor::Cpu, Int16Products::Always) => true,
            (Processor::Cpu, Int16Products::LargeLayers) => width.saturating_mul(mlp_width) >= INT_LINEAR_MIN,
        };
        if integer { LinearProducts::Integer(self.int_kernel) } else { LinearProducts::Burn }
    }

    /// A GPU runtime: kernels compile on first use of a shape (so shapes are padded to buckets
    /// and warmed up), quantized weights stay packed.
    pub fn is_gpu(&self) -> bool {
        matches!(self.processor, Processor::Gpu { .. })
    }

    pub fn is_software_adapter(&self) -> bool {
        matches!(self.processor, Processor::Gpu { software: true })
    }

    /// Do a layer's per-prompt products of `tokens · hidden · width` multiply-adds run in 16-bit
    /// integers? (Decided on the whole layer, so every row share of it takes the same path.)
    pub fn int16_for(&self, tokens: usize, hidden: usize, width: usize) -> bool {
        match (self.processor, self.int16) {
            (Processor::Gpu { .. }, _) | (_, Int16Products::Never) => false,
            (Processor::Cpu, Int16Products::Always) => true,
            (Processor::Cpu, Int16Products::LargeLayers) => {
                tokens.saturating_mul(hidden).saturating_mul(width) >= INT16_MIN_WORK
            }
        }
    }
}

/// What the policy reads of a GPU runtime's adapter.
struct Adapter {
    name: String,
    /// `shader-f16`: f16 storage and arithmetic in shaders.
    f16: bool,
}

/// The adapter where `device` is a GPU runtime; `None` for burn's CPU backend.
fn gpu_adapter(device: &Device) -> Option<Adapter> {
    #[cfg(feature = "wgpu")]
    {
        match device.as_dispatch() {
            burn::backend::DispatchDevice::Cube(d) => {
                let client = d.client();
                let properties = client.properties();
                let f16 = cubecl::ir::ElemType::Float(cubecl::ir::FloatKind::F16);
                Some(Adapter { name: properties.identity.name.clone(), f16: properties.supports_type(f16) })
            }
            _ => None,
        }
    }
    #[cfg(not(feature = "wgpu"))]
    {
        let _ = device;
        None
    }
}

/// Adapters that are software renderers (a CPU running the shaders), by name: SwiftShader,
/// llvmpipe/lavapipe, softpipe, WARP.
pub fn is_software_adapter(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["swiftshader", "llvmpipe", "lavapipe", "softpipe", "microsoft basic render", "warp"]
        .iter()
        .any(|s| name.contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn software_adapters_are_told_from_gpus_by_name() {
        for name in [
            "llvmpipe (LLVM 15.0.6, 256 bits)",
            "SwiftShader Device (Subzero)",
            "google / swiftshader",
            "Microsoft Basic Render Driver",
        ] {
            assert!(is_software_adapter(name), "{name}");
        }
        for name in ["NVIDIA H200", "AMD Radeon 8060S Graphics", "Apple M2", "Intel(R) UHD Graphics 620", ""] {
            assert!(!is_software_adapter(name), "{name}");
        }
    }

    #[test]
    fn the_cpu_policy_takes_integer_products_by_its_setting() {
        let cpu = ComputePolicy::for_device(&Device::flex());
        assert_eq!(cpu.processor, Processor::Cpu);
        assert_eq!(cpu.kernels, None);
        let x86 = matches!(cpu.int_kernel, IntKernel::Avx2 | IntKernel::Avx512Vnni);
        let expected =
            if cfg!(target_family = "wasm") || x86 { Int16Products::LargeLayers } else { Int16Products::Never };
        assert_eq!(cpu.int16, expected, "integer products where they are faster than f32");
        let big = (785, 3072, 768);
        assert!(!cpu.with_int16(Int16Products::Never).int16_for(big.0, big.1, big.2));
        let large = cpu.with_int16(Int16Products::LargeLayers);
        assert!(large.int16_for(big.0, big.1, big.2));
        assert!(!large.int16_for(50, 512, 128));
        assert!(cpu.with_int16(Int16Products::Always).int16_for(1, 1, 1));
        // GPU settings do not apply to the CPU.
        assert_eq!(cpu.with_software_adapter(true), cpu);
        assert_eq!(cpu.with_tiling(Some(Tiling::GPU)), cpu);
    }

    #[test]
    fn a_gpu_policy_follows_its_adapter() {
        let gpu = ComputePolicy::gpu(false, false);
        assert!(gpu.is_gpu() && !gpu.is_software_adapter());
        assert_eq!(gpu.kernels, Some(Tiling::GPU));
        let soft = gpu.with_software_adapter(true);
        assert_eq!(soft.kernels, Some(Tiling::SOFTWARE));
        assert!(soft.is_software_adapter());
        assert_eq!(soft.with_tiling(None).kernels, None);
        assert_eq!(soft.with_tiling(None).with_software_adapter(false).kernels, None, "plain stays plain");
        assert!(!soft.with_int16(Int16Products::Always).int16_for(1, 1, 1), "no integer products on a GPU");
        // f16 image products where the adapter has shader-f16 and is no software renderer.
        assert_eq!(gpu.image_products(768, 3072), LinearProducts::Burn);
        let half = ComputePolicy::gpu(false, true);
        assert_eq!(half.gpu_float, GpuFloat::F16);
        assert_eq!(half.image_products(768, 3072), LinearProducts::Half);
        assert_eq!(half.linear_products(512, 2048), LinearProducts::Burn, "the text tower stays f32");
        assert_eq!(ComputePolicy::gpu(true, true).gpu_float, GpuFloat::F32);
        assert_eq!(half.with_software_adapter(true).gpu_float, GpuFloat::F32);
        let cpu = ComputePolicy::cpu();
        assert_eq!(cpu.with_gpu_float(GpuFloat::F16, &Device::flex()), cpu, "no effect on the CPU");
        assert_eq!(cpu.image_products(768, 3072), cpu.linear_products(768, 3072));
    }
}
