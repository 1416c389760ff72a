"""Write the reference fixtures in tests/fixtures/ with the reference implementation.

    python tools/reference/make_fixtures.py            # (re)writes tests/fixtures/
    python tools/reference/make_fixtures.py --check    # recompute and compare, write nothing

Everything here is seeded. The models are small random-weight OpenCLIP and transformers CLIP
checkpoints: same architecture and key names as real ones, small enough to commit. Their
weights are stored in float16 and upcast to float32 before any computation, on both sides, so
the reference and the Rust code start from bit-identical float32 weights.

The reference is `legrad-torch==1.1` (`LeWrapper.compute_legrad_clip`, `LePreprocess`) on
`open_clip_torch==2.23.0`. Where this script has to go around it, it says so:
  * non-square grids: the reference reshapes with w = h = sqrt(N) and cannot run them; the
    per-layer loop below is the reference loop with the reshape using the real grid (G_h, G_w);
  * per-layer maps: the reference only returns their sum; the loop below returns each term;
  * 16-bit greyscale images: PIL's convert('RGB') clips values above 255 (a white image); we
    keep the high byte as PIL does for 16-bit RGB, and the reference is given that 8-bit image;
  * EXIF orientation: the reference ignores it; we apply it, and so does the reference input here.
"""

import argparse
import copy
import json
import math
import os
import struct
import sys
import zlib

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageOps
from safetensors.torch import save_file, load_file

import open_clip
from open_clip.model import CLIP, CLIPVisionCfg, CLIPTextCfg
from legrad import LeWrapper, LePreprocess
from einops import rearrange

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "tests", "fixtures")

PROMPTS = ["cat", "the remote control", "something red"]
TEMPLATE = "a photo of a {}."

# ---------------------------------------------------------------- models

TINY_B16 = {  # open_clip JSON model config, as in open_clip/model_configs/*.json
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 3, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
TINY_B32_QUICKGELU = {
    "embed_dim": 16,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 32, "head_width": 32, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 1, "layers": 1},
}


def perturb_(model, seed):
    """open_clip's init leaves LayerNorms at (1, 0) and attention biases at 0: a key mapped to
    the wrong place would go unnoticed. Give every parameter a random value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("logit_scale"):
                continue
            if p.ndim == 1 and ("ln" in name or "norm" in name) and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * noise)
            elif p.ndim == 1:
                p.copy_(0.1 * noise)
            else:
                p.add_(0.5 * p.std() * noise)


def round_to_f16_(model):
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())


def make_openclip(cfg, seed):
    torch.manual_seed(seed)
    model = CLIP(
        embed_dim=cfg["embed_dim"],
        vision_cfg=CLIPVisionCfg(**cfg["vision_cfg"]),
        text_cfg=CLIPTextCfg(**cfg["text_cfg"]),
        quick_gelu=cfg.get("quick_gelu", False),
    )
    perturb_(model, seed + 1)
    round_to_f16_(model)
    return model.eval()


def f16_state_dict(model):
    return {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------- LeGrad, per layer

def legrad_per_layer(wrapper, text_emb, pixels):
    """The loop of LeWrapper.compute_legrad_clip, returning each layer's map at grid resolution
    (before upsampling, sum and min-max), with the grid reshaped as (G_h, G_w) instead of
    sqrt(N) x sqrt(N)."""
    num_prompts = text_emb.shape[0]
    image = pixels.repeat(num_prompts, 1, 1, 1)
    _ = wrapper.encode_image(image)
    gh, gw = pixels.shape[-2] // wrapper.patch_size, pixels.shape[-1] // wrapper.patch_size
    blocks = list(dict(wrapper.visual.transformer.resblocks.named_children()).values())
    maps = []
    for layer in range(wrapper.starting_depth, len(blocks)):
        feat = blocks[layer].feat_post_mlp
        feat = wrapper.visual.ln_post(feat.mean(dim=0)) @ wrapper.visual.proj
        feat = F.normalize(feat, dim=-1)
        sim = text_emb @ feat.transpose(-1, -2)
        one_hot = torch.sum(F.one_hot(torch.arange(0, num_prompts)).float() * sim)
        attn_map = blocks[layer].attn.attention_maps
        grad = torch.autograd.grad(one_hot, [attn_map], retain_graph=True, create_graph=True)[0]
        grad = rearrange(grad, "(b h) n m -> b h n m", b=num_prompts)
        grad = torch.clamp(grad, min=0.0)
        rel = grad.mean(dim=1).mean(dim=1)[:, 1:]
        maps.append(rel.reshape(num_prompts, gh, gw).detach())
    return torch.stack(maps)  # [layers, prompts, G_h, G_w], before upsampling


def min_max(m):
    lo = m.flatten(-2).min(-1)[0][..., None, None]
    hi = m.flatten(-2).max(-1)[0][..., None, None]
    return (m - lo) / (hi - lo)


# ---------------------------------------------------------------- images

def scene(w, h, seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx / w * 255, yy / h * 255, (xx + yy) / (w + h) * 255], -1)
    base += rng.normal(0, 12, base.shape)
    im = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(im)
    d.ellipse([w * 0.1, h * 0.15, w * 0.45, h * 0.6], fill=(220, 30, 40))
    d.rectangle([w * 0.55, h * 0.4, w * 0.9, h * 0.85], fill=(30, 60, 210))
    d.polygon([(w * 0.2, h * 0.95), (w * 0.35, h * 0.65), (w * 0.5, h * 0.95)], fill=(250, 220, 30))
    return im


def write_png(path, arr, color_type, bit_depth):
    """A minimal PNG writer for what PIL cannot write (16-bit greyscale with exact values)."""
    h, w = arr.shape[:2]
    dt = ">u2" if bit_depth == 16 else "u1"
    raw = b"".join(b"\x00" + arr[y].astype(dt).tobytes() for y in range(h))

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def make_images(dir_):
    """Returns {name: PIL image as the reference should see it}."""
    os.makedirs(dir_, exist_ok=True)
    out = {}
    im = scene(150, 100, 1)
    im.save(os.path.join(dir_, "scene.png"))
    out["scene.png"] = Image.open(os.path.join(dir_, "scene.png"))

    scene(120, 160, 2).save(os.path.join(dir_, "photo.jpg"), quality=92)
    out["photo.jpg"] = Image.open(os.path.join(dir_, "photo.jpg"))

    rgba = scene(96, 80, 3).convert("RGBA")
    a = np.array(rgba)
    yy, xx = np.mgrid[0:80, 0:96]
    a[..., 3] = np.clip((xx * 3 + yy) % 256, 0, 255).astype(np.uint8)
    a[:10, :10, 3] = 0
    Image.fromarray(a, "RGBA").save(os.path.join(dir_, "alpha.png"))
    out["alpha.png"] = Image.open(os.path.join(dir_, "alpha.png"))

    scene(90, 70, 4).quantize(colors=16).save(os.path.join(dir_, "palette.png"))
    out["palette.png"] = Image.open(os.path.join(dir_, "palette.png"))

    scene(100, 100, 5).convert("L").save(os.path.join(dir_, "grey.png"))
    out["grey.png"] = Image.open(os.path.join(dir_, "grey.png"))

    g16 = (np.array(scene(64, 48, 6).convert("L"), dtype=np.uint16) * 257 + 100).astype(np.uint16)
    write_png(os.path.join(dir_, "grey16.png"), g16, 0, 16)
    out["grey16.png"] = Image.fromarray((g16 >> 8).astype(np.uint8), "L")  # see the docstring

    rot = scene(80, 60, 7)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    rot.save(os.path.join(dir_, "exif_rotated.jpg"), quality=92, exif=exif)
    out["exif_rotated.jpg"] = ImageOps.exif_transpose(Image.open(os.path.join(dir_, "exif_rotated.jpg")))
    return out


def preprocess(size_hw):
    """LePreprocess for a square size; for (h, w) the same transform with Resize((h, w))."""
    base = open_clip.image_transform(224, is_train=False)
    if size_hw[0] == size_hw[1]:
        return LePreprocess(preprocess=base, image_size=size_hw[0])
    from torchvision.transforms import Compose, Resize, InterpolationMode
    return Compose([Resize(size_hw, interpolation=InterpolationMode.BICUBIC)] + list(base.transforms[-3:]))


# ---------------------------------------------------------------- tokenizer cases

TOKENIZER_CASES = [
    "a photo of a cat.",
    "",
    "   ",
    "A Photo Of A CAT!!!",
    "the remote control, on the left; (maybe) -- or not?",
    "don't stop: it's what we've done, they'll say I'm sure he'd re-do",
    "café crème brûlée, naïve façade, Ærøskøbing, ŁÓDŹ",
    "cafe\u0301 (decomposed accent)",
    "東京の猫と犬",
    "一只在沙发上的猫，还有遥控器。",
    "고양이 사진",
    "🐱 a cat 🐶🐶 and a flag 🇯🇵 👩‍👩‍👧",
    "tabs\tand\nnew lines\r\n  and   runs of    spaces",
    "numbers 12345 and 3.14159, 1st 2nd",
    "html &amp; entities &lt;b&gt; &quot;quoted&quot; &#39;s",
    "“curly quotes” and ‘single’ ones",
    "ﬁne ligatures and ＦＵＬＬＷＩＤＴＨ ｔｅｘｔ",
    "<start_of_text> special <end_of_text> tokens",
    "mixed: Ünïcödé + ASCII + Ελληνικά + русский",
    " ".join(["word"] * 100),
    "a very long prompt " * 30,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
]


def tokenizer_fixture():
    tok = open_clip.get_tokenizer("ViT-B-16")
    cases = []
    for text in TOKENIZER_CASES:
        ids = tok([text])[0].tolist()
        cases.append({"text": text, "tokens": ids})
    return {"context_length": 77, "cases": cases}


# ---------------------------------------------------------------- transformers fixture

def make_transformers(seed, dir_):
    from transformers import CLIPConfig, CLIPModel
    torch.manual_seed(seed)
    cfg = CLIPConfig(
        text_config=dict(hidden_size=16, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         max_position_embeddings=77, vocab_size=49408, hidden_act="quick_gelu",
                         bos_token_id=49406, eos_token_id=2, pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=16, hidden_act="quick_gelu"),
        projection_dim=16,
    )
    model = CLIPModel(cfg)
    perturb_(model, seed + 1)
    round_to_f16_(model)
    model.eval()
    os.makedirs(dir_, exist_ok=True)
    model.half().save_pretrained(dir_, safe_serialization=True)
    model.float()
    return model


# ---------------------------------------------------------------- main

def legrad_case(model, layer_index, text_emb, pixels):
    w = LeWrapper(copy.deepcopy(model), layer_index=layer_index)
    per_layer = legrad_per_layer(w, text_emb, pixels)
    final = None
    gh, gw = pixels.shape[-2:]
    if gh == gw:
        w2 = LeWrapper(copy.deepcopy(model), layer_index=layer_index)
        final = w2.compute_legrad_clip(text_embedding=text_emb, image=pixels)[0].detach()
    else:
        up = F.interpolate(per_layer.sum(0)[None], scale_factor=model.visual.patch_size[0], mode="bilinear")[0]
        final = min_max(up)
    return per_layer, final


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true", help="recompute and compare with the committed files")
    args = ap.parse_args()
    torch.set_grad_enabled(True)
    out_dir = OUT if not args.check else os.path.join("/tmp", "legrad-fixtures-check")
    os.makedirs(out_dir, exist_ok=True)

    with open(os.path.join(out_dir, "tokenizer.json"), "w") as f:
        json.dump(tokenizer_fixture(), f, ensure_ascii=False, indent=0)

    images = make_images(os.path.join(out_dir, "images"))
    tok = open_clip.get_tokenizer("ViT-B-16")

    # --- model 1: OpenCLIP safetensors + JSON config, GELU, patch 16
    model = make_openclip(TINY_B16, seed=1)
    save_file(f16_state_dict(model), os.path.join(out_dir, "tiny-vit-b16.safetensors"))
    with open(os.path.join(out_dir, "tiny-vit-b16.json"), "w") as f:
        json.dump(TINY_B16, f, indent=2)

    expected = {}
    meta = {"prompts": PROMPTS, "template": TEMPLATE, "cases": []}
    with torch.no_grad():
        texts = [TEMPLATE.format(p) for p in PROMPTS]
        text_emb = F.normalize(model.encode_text(tok(texts)), dim=-1)
        raw_text_emb = F.normalize(model.encode_text(tok(PROMPTS)), dim=-1)
    expected["text_emb"] = text_emb
    expected["text_emb_no_template"] = raw_text_emb

    rng = torch.Generator().manual_seed(7)
    for (h, w) in [(64, 64), (96, 96), (64, 96)]:
        pixels = torch.randn((1, 3, h, w), generator=rng)
        key = f"{h}x{w}"
        expected[f"pixels/{key}"] = pixels[0]
        w_ = LeWrapper(copy.deepcopy(model), layer_index=-2)
        with torch.no_grad():
            expected[f"image_emb/{key}"] = F.normalize(w_.encode_image(pixels), dim=-1)[0]
        for li in [-2, 0]:
            per_layer, final = legrad_case(model, li, text_emb, pixels)
            expected[f"legrad/{key}/layer{li}/final"] = final
            expected[f"legrad/{key}/layer{li}/per_layer_grid"] = per_layer
            meta["cases"].append({"pixels": f"pixels/{key}", "layer_index": li, "key": f"legrad/{key}/layer{li}"})

    # through decoding: each committed image, square 64 and one non-square size
    for name, im in images.items():
        for (h, w) in [(64, 64)] + ([(48, 80)] if name in ("scene.png", "photo.jpg") else []):
            pixels = preprocess((h, w))(im).unsqueeze(0)
            key = f"image/{name}/{h}x{w}"
            expected[f"{key}/pixels"] = pixels[0]
            per_layer, final = legrad_case(model, -2, text_emb, pixels)
            expected[f"{key}/final"] = final

    save_file({k: v.contiguous().float() for k, v in expected.items()},
              os.path.join(out_dir, "tiny-vit-b16.expected.safetensors"))
    with open(os.path.join(out_dir, "tiny-vit-b16.expected.json"), "w") as f:
        json.dump(meta, f, indent=1)

    # --- model 2: OpenCLIP state dict through torch.save (.pt), QuickGELU, patch 32
    model2 = make_openclip(TINY_B32_QUICKGELU, seed=2)
    torch.save(f16_state_dict(model2), os.path.join(out_dir, "tiny-vit-b32-quickgelu.pt"))
    with open(os.path.join(out_dir, "tiny-vit-b32-quickgelu.json"), "w") as f:
        json.dump(TINY_B32_QUICKGELU, f, indent=2)
    exp2 = {}
    with torch.no_grad():
        exp2["text_emb"] = F.normalize(model2.encode_text(tok([TEMPLATE.format(p) for p in PROMPTS])), dim=-1)
    for (h, w) in [(64, 64), (96, 96)]:
        pixels = torch.randn((1, 3, h, w), generator=rng)
        key = f"{h}x{w}"
        exp2[f"pixels/{key}"] = pixels[0]
        w_ = LeWrapper(copy.deepcopy(model2), layer_index=-2)
        with torch.no_grad():
            exp2[f"image_emb/{key}"] = F.normalize(w_.encode_image(pixels), dim=-1)[0]
        per_layer, final = legrad_case(model2, -2, exp2["text_emb"], pixels)
        exp2[f"legrad/{key}/layer-2/final"] = final
        exp2[f"legrad/{key}/layer-2/per_layer_grid"] = per_layer
    save_file({k: v.contiguous().float() for k, v in exp2.items()},
              os.path.join(out_dir, "tiny-vit-b32-quickgelu.expected.safetensors"))

    # --- model 3: transformers CLIPModel (model.safetensors + config.json)
    hf_dir = os.path.join(out_dir, "tiny-hf-clip")
    hf = make_transformers(seed=3, dir_=hf_dir)
    exp3 = {}
    with torch.no_grad():
        ids = tok([TEMPLATE.format(p) for p in PROMPTS])
        t = hf.get_text_features(input_ids=ids)
        t = t.pooler_output if hasattr(t, "pooler_output") else t
        exp3["text_emb"] = F.normalize(t, dim=-1)
        pixels = torch.randn((1, 3, 32, 32), generator=rng)
        exp3["pixels/32x32"] = pixels[0]
        i = hf.get_image_features(pixel_values=pixels)
        i = i.pooler_output if hasattr(i, "pooler_output") else i
        exp3["image_emb/32x32"] = F.normalize(i, dim=-1)[0]
    save_file({k: v.contiguous().float() for k, v in exp3.items()},
              os.path.join(hf_dir, "..", "tiny-hf-clip.expected.safetensors"))

    if args.check:
        bad = 0
        for fname in ["tiny-vit-b16.expected.safetensors", "tiny-vit-b32-quickgelu.expected.safetensors",
                      "tiny-hf-clip.expected.safetensors"]:
            a, b = load_file(os.path.join(OUT, fname)), load_file(os.path.join(out_dir, fname))
            for k in a:
                d = (a[k] - b[k]).abs().max().item()
                if d > 1e-6:
                    print(f"{fname}:{k} differs by {d}")
                    bad += 1
        print("fixtures reproduce" if bad == 0 else f"{bad} arrays differ")
        sys.exit(1 if bad else 0)
    print(f"wrote {out_dir}")


if __name__ == "__main__":
    main()
