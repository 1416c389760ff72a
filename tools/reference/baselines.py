"""Reference maps of the baseline methods on the fixture model (tests/fixtures/tiny-vit-b16.*).

    python tools/reference/baselines.py          # writes tests/fixtures/tiny-vit-b16.baselines.safetensors

* GradCAM: pytorch-grad-cam (PyPI `grad-cam`) itself, target layer = the last block's `ln_1`,
  the model's output = cosine similarity of the image with each prompt.
* Attention Rollout, raw attention, CheferCAM: short references written from the papers
  (Abnar and Zuidema 2020; Chefer et al. 2021, as in its CLIP demo with start_layer = -1), on the
  attention maps that legrad's hooked forward exposes.
All maps: [prompts, H, W], as the method's own code normalises them.
"""

import copy
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import open_clip
from legrad import LeWrapper
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from make_fixtures import OUT, PROMPTS, TEMPLATE, TINY_B16, make_openclip


class Scorer(nn.Module):
    """Image → cosine similarity with each prompt: the 'logits' GradCAM explains."""

    def __init__(self, wrapper, text):
        super().__init__()
        self.wrapper = wrapper
        self.text = text

    def forward(self, x):
        return F.normalize(self.wrapper.encode_image(x), dim=-1) @ self.text.T


def gradcam(model, text, pixels):
    gh, gw = pixels.shape[-2] // 16, pixels.shape[-1] // 16
    wrapper = LeWrapper(copy.deepcopy(model), layer_index=0)
    for p in wrapper.parameters():
        p.requires_grad_(True)

    def reshape_transform(t):  # open_clip 2.23 blocks are sequence-first: [N, B, W]
        t = t[1:].permute(1, 0, 2)
        return t.reshape(t.shape[0], gh, gw, t.shape[2]).permute(0, 3, 1, 2)

    cam = GradCAM(model=Scorer(wrapper, text), target_layers=[wrapper.visual.transformer.resblocks[-1].ln_1],
                  reshape_transform=reshape_transform)
    maps = [torch.from_numpy(cam(input_tensor=pixels, targets=[ClassifierOutputTarget(p)])[0]) for p in range(text.shape[0])]
    return torch.stack(maps)


def attention_maps(model, pixels):
    wrapper = LeWrapper(copy.deepcopy(model), layer_index=0)
    with torch.no_grad():
        wrapper.encode_image(pixels)
    blocks = wrapper.visual.transformer.resblocks
    return [b.attn.attention_maps.detach() for b in blocks]  # each [H, N, N] (batch 1)


def upsample_minmax(rel, pixels, patch=16):
    gh, gw = pixels.shape[-2] // patch, pixels.shape[-1] // patch
    m = F.interpolate(rel.reshape(1, -1, gh, gw), scale_factor=patch, mode="bilinear")[0]
    lo = m.flatten(1).min(1)[0][:, None, None]
    hi = m.flatten(1).max(1)[0][:, None, None]
    return (m - lo) / (hi - lo)


def rollout(model, pixels, prompts):
    joint = None
    for a in attention_maps(model, pixels):
        a = a.mean(0)
        a = a + torch.eye(a.shape[-1])
        a = a / a.sum(-1, keepdim=True)
        joint = a if joint is None else a @ joint
    rel = joint[0, 1:].repeat(prompts, 1)
    return upsample_minmax(rel, pixels)


def raw_attention(model, pixels, prompts):
    a = attention_maps(model, pixels)[-1].mean(0)
    return upsample_minmax(a[0, 1:].repeat(prompts, 1), pixels)


def chefer(model, text, pixels):
    rows = []
    for p in range(text.shape[0]):
        wrapper = LeWrapper(copy.deepcopy(model), layer_index=0)
        img = F.normalize(wrapper.encode_image(pixels), dim=-1)
        score = (img @ text[p:p + 1].T).sum()
        blk = wrapper.visual.transformer.resblocks[-1]
        attn = blk.attn.attention_maps  # [H, N, N]
        grad = torch.autograd.grad(score, [attn], retain_graph=True)[0]
        cam = (grad * attn).clamp(min=0).mean(0)
        r = torch.eye(cam.shape[-1]) + cam
        rows.append(r[0, 1:].detach())
    return upsample_minmax(torch.stack(rows), pixels)


def main():
    torch.set_grad_enabled(True)
    model = make_openclip(TINY_B16, seed=1)
    expected = load_file(os.path.join(OUT, "tiny-vit-b16.expected.safetensors"))
    text = expected["text_emb"]
    out = {}
    for key in ["64x64", "96x96"]:
        pixels = expected[f"pixels/{key}"][None]
        out[f"gradcam/{key}"] = gradcam(model, text, pixels)
        out[f"rollout/{key}"] = rollout(model, pixels, len(PROMPTS))
        out[f"raw-attention/{key}"] = raw_attention(model, pixels, len(PROMPTS))
        out[f"chefercam/{key}"] = chefer(model, text, pixels)
    save_file({k: v.contiguous().float() for k, v in out.items()}, os.path.join(OUT, "tiny-vit-b16.baselines.safetensors"))
    print("wrote", os.path.join(OUT, "tiny-vit-b16.baselines.safetensors"))


if __name__ == "__main__":
    main()
