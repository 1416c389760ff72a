"""Write the SigLIP reference fixtures in tests/fixtures/siglip/ with the reference implementation.

    python tools/reference/make_siglip_fixtures.py            # (re)writes tests/fixtures/siglip/
    python tools/reference/make_siglip_fixtures.py --check    # recompute and compare, write nothing

The reference: `legrad-torch==1.1` (`LeWrapper.compute_legrad_siglip`) on `open_clip_torch==2.23.0`
and `timm==0.9.16`. No network: the real `timm/ViT-B-16-SigLIP` tokenizer cannot be fetched, so
this script trains a small SentencePiece unigram model (T5's settings: pad 0, eos 1, unk 2,
`nmt_nfkc` normalisation) and converts it the way open_clip's `SigLipTokenizer` does
(`T5TokenizerFast(..., legacy=False)`), which gives a `tokenizer.json` of the same structure as
the published one (Precompiled normaliser, Metaspace, Unigram, `$A </s>`). open_clip's
`HFTokenizer` then loads it from the local directory, as it loads the published one by name.

Models: two tiny random timm SigLIP towers (`VisionTransformer`, no class token, `global_pool='map'`)
registered with timm under test names, each with open_clip's SigLIP text tower (no causal mask,
last-token pool, projection with bias, LayerNorm eps 1e-6), at two native grids:
  * `tiny-siglip-p16`: patch 16, 64 px (4x4), 3 layers, evaluated at 64, 96 (resampled) and 64x96;
  * `tiny-siglip-p8`: patch 8, 48 px (6x6), 2 layers, MLP ratio 3.7362 (So400m's), at 48 and 64.
Weights are stored in float16 and upcast before any computation, on both sides.

Where this script goes around the reference, it says so:
  * the reference sums the scores of all prompts before differentiating (one map for the batch);
    each prompt is run alone here, which is what one prompt gives and what the app shows;
  * `_init_empty_embedding` fetches `timm/ViT-B-16-SigLIP`'s tokenizer by name; the wrapper's
    `empty_embedding` is set beforehand from this model's tokenizer, which is the same code path;
  * non-square grids (the reference reshapes with w = h = sqrt(N)) and per-layer maps: the loop
    below is the reference's, with the real grid and each layer's term returned.
"""

import argparse
import copy
import json
import os
import sys
import tempfile

import torch
import torch.nn.functional as F
from safetensors.torch import save_file, load_file

import open_clip
import timm
from timm.models import register_model
from timm.models.vision_transformer import _create_vision_transformer
from legrad import LeWrapper
from einops import rearrange

sys.path.insert(0, os.path.dirname(__file__))
from make_fixtures import PROMPTS, TEMPLATE, TOKENIZER_CASES, perturb_, round_to_f16_, f16_state_dict  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "tests", "fixtures", "siglip")
CONTEXT = 64


@register_model
def legrad_test_siglip_p16(pretrained=False, **kwargs):
    args = dict(img_size=64, patch_size=16, embed_dim=64, depth=3, num_heads=2, class_token=False, global_pool="map")
    return _create_vision_transformer("legrad_test_siglip_p16", pretrained=False, **dict(args, **kwargs))


@register_model
def legrad_test_siglip_p8(pretrained=False, **kwargs):
    args = dict(img_size=48, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=3.7362, class_token=False,
                global_pool="map")
    return _create_vision_transformer("legrad_test_siglip_p8", pretrained=False, **dict(args, **kwargs))


def config(timm_name, image_size, embed_dim, vocab, layers, patch, head_width, mlp_ratio):
    """An open_clip JSON model config of the `ViT-B-16-SigLIP.json` shape. The test towers' sizes
    are written as CLIPVisionCfg fields (open_clip ignores them for timm towers; the Rust side
    reads them where timm's model name is not one it knows)."""
    return {
        "embed_dim": embed_dim,
        "init_logit_bias": -10,
        "custom_text": True,
        "vision_cfg": {"image_size": image_size, "timm_model_name": timm_name, "timm_model_pretrained": False,
                       "timm_pool": "map", "timm_proj": "none", "width": embed_dim, "layers": layers,
                       "patch_size": patch, "head_width": head_width, "mlp_ratio": mlp_ratio},
        "text_cfg": {"context_length": CONTEXT, "vocab_size": vocab, "hf_tokenizer_name": "tokenizer",
                     "tokenizer_kwargs": {"clean": "canonicalize"}, "width": 32, "heads": 2, "layers": 2,
                     "no_causal_mask": True, "proj_bias": True, "pool_type": "last", "norm_kwargs": {"eps": 1e-6}},
    }


# ---------------------------------------------------------------- tokenizer

def corpus():
    """Text to train the test vocabulary on: the tokenizer cases and the docstrings of Python's
    standard library (English prose, punctuation, numbers), seeded by nothing but the install."""
    import builtins, collections, itertools, json as json_mod, os as os_mod, re, string, textwrap
    lines = list(TOKENIZER_CASES) + [TEMPLATE.format(p) for p in PROMPTS] + ["a photo of a"]
    for mod in [builtins, collections, itertools, json_mod, os_mod, re, string, textwrap, torch.nn.functional]:
        for name in sorted(dir(mod)):
            doc = getattr(getattr(mod, name), "__doc__", None)
            if isinstance(doc, str):
                lines.extend(l.strip() for l in doc.splitlines() if l.strip())
    return lines


def make_tokenizer(dir_):
    import sentencepiece as spm
    from transformers import T5TokenizerFast
    os.makedirs(dir_, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        text = os.path.join(tmp, "corpus.txt")
        with open(text, "w") as f:
            f.write("\n".join(corpus()))
        prefix = os.path.join(tmp, "spiece")
        spm.SentencePieceTrainer.train(
            input=text, model_prefix=prefix, vocab_size=1000, model_type="unigram", character_coverage=1.0,
            pad_id=0, eos_id=1, unk_id=2, bos_id=-1, normalization_rule_name="nmt_nfkc", hard_vocab_limit=False,
            num_threads=1, seed_sentencepiece_size=100000, minloglevel=2)
        # From the directory: transformers converts the SentencePiece model (its charsmap included).
        tok = T5TokenizerFast.from_pretrained(tmp, legacy=False)
    # As open_clip's SigLipTokenizer: pad and eos are both </s>.
    tok.pad_token = "</s>"
    tok.save_pretrained(dir_)
    for extra in ["spiece.model"]:
        p = os.path.join(dir_, extra)
        if os.path.exists(p):
            os.remove(p)
    return dir_


def tokenizer_fixture(tok):
    return {"context_length": CONTEXT, "cases": [{"text": t, "tokens": tok([t])[0].tolist()} for t in TOKENIZER_CASES]}


# ---------------------------------------------------------------- LeGrad, per layer

def legrad_siglip_per_layer(wrapper, text_emb, pixels, grid):
    """The loop of LeWrapper.compute_legrad_siglip for one prompt (`text_emb` [1, E]), returning
    each layer's map and each layer's map for the empty prompt at grid resolution, reshaped to
    the real grid (G_h, G_w)."""
    blocks = list(dict(wrapper.visual.trunk.blocks.named_children()).values())
    _ = wrapper.encode_image(pixels)
    maps, empty = [], []
    for blk in blocks[wrapper.starting_depth:]:
        wrapper.zero_grad()
        pooled = F.normalize(wrapper.visual.trunk.attn_pool(blk.feat_post_mlp), dim=-1)
        for emb, out in [(text_emb, maps), (wrapper.empty_embedding.t(), empty)]:
            sim = emb @ pooled.transpose(-1, -2)
            grad = torch.autograd.grad(torch.sum(sim), [wrapper.visual.trunk.attn_pool.attn_probs],
                                       retain_graph=True, create_graph=True)[0]
            rel = torch.clamp(grad, min=0.0).mean(dim=1)[:, 0]
            out.append(rel.reshape(grid).detach())
    return torch.stack(maps), torch.stack(empty)  # [layers, G_h, G_w] each


def min_max(m):
    return (m - m.min()) / (m.max() - m.min())


def final_from_layers(maps, empty, patch):
    """compute_legrad_siglip's end: correction, min-max at grid resolution, then upsampling."""
    acc = maps.sum(0).clone()
    acc[min_max(empty.sum(0)) > 0.8] = 0
    return F.interpolate(min_max(acc)[None, None], scale_factor=patch, mode="bilinear")[0, 0]


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true", help="recompute and compare with the committed files")
    args = ap.parse_args()
    torch.set_grad_enabled(True)
    out_dir = OUT if not args.check else os.path.join("/tmp", "legrad-siglip-fixtures-check")
    os.makedirs(out_dir, exist_ok=True)

    tok_dir = os.path.join(out_dir, "tokenizer")
    if args.check:
        tok_dir = os.path.join(OUT, "tokenizer")  # the committed vocabulary (training is not bit-stable across versions)
    else:
        make_tokenizer(tok_dir)
    tok = open_clip.tokenizer.HFTokenizer(tok_dir, context_length=CONTEXT, clean="canonicalize")
    with open(os.path.join(out_dir, "tokenizer-cases.json"), "w") as f:
        json.dump(tokenizer_fixture(tok), f, ensure_ascii=False, indent=0)
    vocab = len(tok.tokenizer)

    rng = torch.Generator().manual_seed(11)
    cases = [("tiny-siglip-p16", "legrad_test_siglip_p16", 64, 64, 3, 16, 32, 4.0, [(64, 64), (96, 96), (64, 96)], -2),
             ("tiny-siglip-p8", "legrad_test_siglip_p8", 48, 32, 2, 8, 16, 3.7362, [(48, 48), (64, 64)], 0)]
    written = []
    for seed, (name, timm_name, size, embed, layers, patch_, hw, ratio, sizes, layer_index) in enumerate(cases, start=21):
        cfg = config(timm_name, size, embed, vocab, layers, patch_, hw, ratio)
        open_clip.factory._MODEL_CONFIGS[name] = cfg
        torch.manual_seed(seed)
        model = open_clip.create_model(name)
        perturb_(model, seed + 1)
        with torch.no_grad():  # logit_scale as trained SigLIP's (log 10 at init), bias -10 + noise
            model.logit_scale.fill_(float(torch.log(torch.tensor(117.3))))
            model.logit_bias.fill_(-12.9)
        round_to_f16_(model)
        model.eval()
        save_file(f16_state_dict(model), os.path.join(out_dir, f"{name}.safetensors"))
        with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
            json.dump(cfg, f, indent=2)

        expected = {}
        with torch.no_grad():
            text_emb = F.normalize(model.encode_text(tok([TEMPLATE.format(p) for p in PROMPTS])), dim=-1)
            empty = F.normalize(model.encode_text(tok(["a photo of a"])), dim=-1)
        expected["text_emb"] = text_emb
        expected["empty_emb"] = empty[0]
        patch = model.visual.trunk.patch_embed.patch_size[0]
        for (h, w) in sizes:
            pixels = torch.randn((1, 3, h, w), generator=rng)
            key = f"{h}x{w}"
            expected[f"pixels/{key}"] = pixels[0]
            wr = LeWrapper(copy.deepcopy(model), layer_index=layer_index)
            wr.empty_embedding = empty.t()
            with torch.no_grad():
                img = F.normalize(wr.encode_image(pixels), dim=-1)
                expected[f"image_emb/{key}"] = img[0]
                logits = img @ text_emb.t() * model.logit_scale.exp() + model.logit_bias
                expected[f"probs/{key}"] = torch.sigmoid(logits)[0]
            finals, per_layer, per_layer_empty = [], [], []
            for p in range(len(PROMPTS)):
                maps, emp = legrad_siglip_per_layer(wr, text_emb[p:p + 1], pixels, (h // patch, w // patch))
                per_layer.append(maps)
                per_layer_empty.append(emp)
                mine = final_from_layers(maps, emp, patch)
                if h == w:  # the reference's own function, which must agree with the loop
                    ref = wr.compute_legrad_siglip(text_embedding=text_emb[p:p + 1], image=pixels)[0, 0].detach()
                    assert torch.allclose(ref, mine, atol=1e-5, equal_nan=True), (name, key, p)
                    mine = ref
                finals.append(mine)
            expected[f"legrad/{key}/final"] = torch.stack(finals)
            expected[f"legrad/{key}/per_layer_grid"] = torch.stack(per_layer, 1)  # [L, P, G_h, G_w]
            expected[f"legrad/{key}/per_layer_empty_grid"] = per_layer_empty[0]  # [L, G_h, G_w]
            if h == w:
                nocorr = wr.compute_legrad_siglip(text_embedding=text_emb[:1], image=pixels, apply_correction=False)
                expected[f"legrad/{key}/final_no_correction/0"] = nocorr[0, 0].detach()
        fname = f"{name}.expected.safetensors"
        save_file({k: v.contiguous().float() for k, v in expected.items()}, os.path.join(out_dir, fname))
        written.append(fname)
        with open(os.path.join(out_dir, f"{name}.expected.json"), "w") as f:
            json.dump({"prompts": PROMPTS, "template": TEMPLATE, "layer_index": layer_index,
                       "sizes": [f"{h}x{w}" for h, w in sizes], "patch": patch}, f, indent=1)

    if args.check:
        bad = 0
        for fname in written:
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
