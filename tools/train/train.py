"""Train the default model: a small OpenCLIP ViT on synthetic scenes, exported as an OpenCLIP
checkpoint (safetensors + JSON model config) with the real CLIP tokenizer.

    python tools/train/train.py --out /tmp/synthetic-clip      # about 52 minutes on 2 CPU cores

The scenes come from the project's one generator, streamed by `legrad scenes --stream` (Rust):
each record is a 224x224 RGB image, a caption naming one of its objects, the names of all its
objects and a label map (which object each pixel belongs to). Training is open_clip's own
model (`CLIP`) with the CLIP contrastive loss in a multi-positive form. The captions are few (84: "a photo of a {color} {shape}.", "a {color}
{shape}", "a {shape}", "something {color}"), so every step embeds all of them: each picture is
contrasted with the whole caption set, each caption with the batch's pictures. A pair counts as
positive when the caption describes any object of the picture ("something red" fits every
picture with a red object), and the targets are spread evenly over the positives. The plain
loss (`open_clip.ClipLoss`, one caption per picture) would push a caption away from every
other picture of the same object, and from pictures where that object sits beside the
captioned one.

A dense loss is added (weight `--dense`): what each patch writes into the pooled embedding
through the last blocks' attention (its value, through out_proj, ln_post's linear part and
the projection; the direct-contribution decomposition of Gandelsman et al., "Interpreting
CLIP's image representation via text-based decomposition", 2023) is contrasted with the 36
full captions, the target being the object that covers at least half the patch. The
contrastive loss alone gives a model that names objects (zero-shot 100%) but whose patches'
contributions say little about which object they show: gradient methods then point at the
wrong object of the same colour. The dense loss computes no explainer's map; it makes the
model's own per-patch contributions meaningful, and every gradient method gains from it
(BENCHMARKS.md section 2 gives the ablation). The same loss on the blocks' patch outputs
(`--dense-path token`) does not help.

The dense loss also runs the other way (weight `--spatial`), as CLIP's loss does: each object's
caption is contrasted with the picture's patches, the logits being the patches' contributions
along the caption (not normalised, so their sizes count: a map peaks where a patch
contributes most), the targets each patch's share of its central half that the object
covers. Trained one way only, a patch's contribution names its object but its size is free,
and a map's maximum often lands on a patch at the object's rim whose centre misses it (a
ring's hole, a star's gap). Seeded: the same command gives the same weights on the same machine.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

import open_clip
from open_clip.model import CLIP, CLIPVisionCfg, CLIPTextCfg

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
COLORS = ["red", "green", "blue", "yellow", "purple", "orange"]
SHAPES = ["circle", "square", "triangle", "star", "cross", "ring"]

# The model: B/32-like patching at 224 (a 7x7 grid; 14x14 at the app's default 448), small.
CONFIG = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 224, "layers": 6, "width": 128, "head_width": 64, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 4},
}


def scene_stream(legrad, seed, start, count, size=224, objects=None):
    cmd = [legrad, "scenes", "--stream", "--seed", str(seed), "--start", str(start), "--count", str(count), "--size", str(size)]
    if objects:
        cmd += ["--objects", str(objects)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, bufsize=1 << 20)
    n = size * size * 3
    rec = n + 192 + size * size
    try:
        while True:
            buf = proc.stdout.read(rec)
            if len(buf) < rec:
                break
            img = np.frombuffer(buf[:n], dtype=np.uint8).reshape(size, size, 3)
            cap = buf[n:n + 96].rstrip(b"\0").decode("utf-8")
            names = buf[n + 96:n + 192].rstrip(b"\0").decode("utf-8").split(",")
            labels = np.frombuffer(buf[n + 192:], dtype=np.uint8).reshape(size, size)
            yield img, cap, names, labels
    finally:
        proc.kill()


def batches(stream, batch):
    imgs, caps, names, labels = [], [], [], []
    for img, cap, objs, lab in stream:
        imgs.append(img)
        caps.append(cap)
        names.append(objs)
        labels.append(lab)
        if len(imgs) == batch:
            yield imgs, caps, names, labels
            imgs, caps, names, labels = [], [], [], []


def to_pixels(imgs):
    # Normalised channels-last, then one copy to NCHW: half the time of the obvious order.
    x = torch.from_numpy(np.stack(imgs)).float()
    return x.sub_(MEAN.view(1, 1, 1, 3) * 255).div_(STD.view(1, 1, 1, 3) * 255).permute(0, 3, 1, 2).contiguous()


def describes(caption, truth):
    """Does `caption` fit the object named `truth` ("red circle")?"""
    color, shape = truth.split(" ")
    c = caption.rstrip(".")
    if c.startswith("a photo of a "):
        c = "a " + c[len("a photo of a "):]
    if c.startswith("something "):
        return c[len("something "):] == color
    words = c[2:].split(" ")
    return words == [color, shape] or words == [shape]


# Every caption the generator writes; the full names first.
FULL = [f"a photo of a {c} {s}." for c in COLORS for s in SHAPES]
CAPTIONS = FULL + [f"a {c} {s}" for c in COLORS for s in SHAPES] + [f"a {s}" for s in SHAPES] + [f"something {c}" for c in COLORS]


def multi_positive_loss(img_f, txt_f, scale, names):
    """img_f: the batch's pictures, txt_f: all CAPTIONS, names: each picture's object names."""
    logits = scale * img_f @ txt_f.T
    pos = torch.tensor([[any(describes(c, n) for n in objs) for c in CAPTIONS] for objs in names], dtype=torch.float32)
    i2t = -(pos / pos.sum(1, keepdim=True) * F.log_softmax(logits, 1)).sum(1).mean()
    seen = pos.sum(0) > 0  # captions with a picture in this batch
    p, l = pos.T[seen], logits.T[seen]
    t2i = -(p / p.sum(1, keepdim=True) * F.log_softmax(l, 1)).sum(1).mean()
    return 0.5 * (i2t + t2i)


def object_indices(names):
    """Each picture's objects as indices in FULL: [B, 4], -1 where a picture has fewer."""
    full = np.full((len(names), 4), -1)
    for i, objs in enumerate(names):
        for j, n in enumerate(objs):
            full[i, j] = FULL.index(f"a photo of a {n}.")
    return torch.from_numpy(full)


def object_shares(labels, patch, inset=0):
    """How much of each patch each object covers, the patch shrunk by `inset` pixels on every
    side: [B, 4, P] (labels: 0 background, k the k-th name's object)."""
    lab = np.stack(labels)
    b, h, _ = lab.shape
    g = h // patch
    lab = lab[:, :g * patch, :g * patch].reshape(b, g, patch, g, patch)[:, :, inset:patch - inset, :, inset:patch - inset]
    return torch.from_numpy(np.stack([(lab == k).mean((2, 4)) for k in range(1, 5)], 1).reshape(b, 4, g * g))


def patch_targets(shares, full, cover):
    """Per patch, the index in FULL of the object covering at least `cover` of it, else -1."""
    best, k = shares.max(1)  # the biggest object per patch, and its share
    t = torch.gather(full, 1, k)
    t[best < cover] = -1
    return t


def dense_loss(feats, txt_f, scale, targets):
    """Per-patch image features [T, B, P, E], each contrasted with the 36 full captions; target:
    the caption of the object covering the patch. Patches of background or of several objects
    are left out."""
    logits = scale * F.normalize(feats, dim=-1) @ txt_f[:len(FULL)].T  # T, B, P, 36
    t = targets.unsqueeze(0).expand(logits.shape[0], -1, -1)
    return F.cross_entropy(logits.flatten(0, 2), t.flatten(), ignore_index=-1)


def spatial_loss(feats, txt_f, scale, share, full):
    """The dense loss's other direction, as in CLIP's symmetric loss: each object's caption
    picks, among the picture's patches, those whose centres show the object. Logits: the
    patches' contributions (not normalised: their sizes decide where a map peaks) along the
    caption, over their root-mean-square norm; targets: each patch's share of the central half
    covered by the object (`share`, [B, 4, P])."""
    t = txt_f[full.clamp(min=0)]  # B, 4, E
    rms = feats.norm(dim=-1).pow(2).mean(-1, keepdim=True).sqrt()  # T, B, 1
    z = scale * torch.einsum("tbpe,bje->tbjp", feats, t) / rms.unsqueeze(-1)  # T, B, 4, P
    w = share.unsqueeze(0).expand(z.shape[0], -1, -1, -1)
    keep = (full >= 0) & (share.sum(-1) > 0)  # B, 4
    q = w / w.sum(-1, keepdim=True).clamp(min=1e-9)
    ce = -(q * F.log_softmax(z, -1)).sum(-1)  # T, B, 4
    return ce[:, keep].mean()


def value_features(visual, ln1_outs):
    """What each patch writes into the image embedding through a block's attention: its value
    through out_proj (all heads), then ln_post's linear part and the image projection. Read
    directly from the model's weights (Gandelsman et al.'s decomposition of CLIP's image
    representation), this is what a patch contributes when the pooled token attends to it."""
    feats = []
    for i, h in ln1_outs:  # h: block i's ln_1 output, LND
        attn = visual.transformer.resblocks[i].attn
        d = h.shape[-1]
        v = F.linear(h.permute(1, 0, 2)[:, 1:], attn.in_proj_weight[2 * d:], attn.in_proj_bias[2 * d:])
        u = v @ attn.out_proj.weight.T
        y = (u - u.mean(-1, keepdim=True)) * visual.ln_post.weight
        feats.append(y @ visual.proj)
    return torch.stack(feats, 0)


def zero_shot(model, tok, legrad, n=300):
    """Top-1 over all colour x shape names on held-out single-object scenes (seed 999)."""
    names = [f"{c} {s}" for c in COLORS for s in SHAPES]  # in FULL's order
    with torch.no_grad():
        t = F.normalize(model.encode_text(tok(FULL)), dim=-1)
        right = 0
        for imgs, _, objs, _ in batches(scene_stream(legrad, 999, 0, n, objects=1), 100):
            i = F.normalize(model.encode_image(to_pixels(imgs)), dim=-1)
            pred = (i @ t.T).argmax(-1)
            right += sum(names[p] == o[0] for p, o in zip(pred.tolist(), objs))
    return right / n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--legrad", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "legrad"))
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--single-first", type=float, default=0.2,
                    help="share of the steps trained on single-object scenes before mixing in 1-4 objects")
    ap.add_argument("--dense", type=float, default=1.0,
                    help="weight of the dense loss: each patch's contribution contrasted with the caption of the object under it")
    ap.add_argument("--dense-layers", type=int, default=3,
                    help="the dense loss reads this many last blocks")
    ap.add_argument("--dense-path", choices=["value", "token"], default="value",
                    help="value: what each patch writes through the blocks' attention; token: the blocks' patch outputs")
    ap.add_argument("--spatial", type=float, default=1.0,
                    help="weight of the dense loss's other direction: each object's caption against the picture's patches")
    ap.add_argument("--cover", type=float, default=0.5, help="an object must cover this share of a patch to be its target")
    ap.add_argument("--init", help="start from this checkpoint (a pilot fine-tune) instead of random weights")
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--eval-every", type=int, default=300, help="zero-shot check on 100 held-out scenes every N steps")
    args = ap.parse_args()
    if not os.path.exists(args.legrad):
        sys.exit(f"{args.legrad} not found: build it with `cargo build --release -p legrad-cli` or pass --legrad")
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)

    model = CLIP(
        embed_dim=CONFIG["embed_dim"],
        vision_cfg=CLIPVisionCfg(**CONFIG["vision_cfg"]),
        text_cfg=CLIPTextCfg(**CONFIG["text_cfg"]),
    )
    if args.init:
        from safetensors.torch import load_file
        model.load_state_dict(load_file(args.init))
    tok = open_clip.get_tokenizer("ViT-B-32")
    # The dense loss reads the last blocks' ln_1 outputs (value path) or outputs (token path);
    # both LND in open_clip 2.23.
    blocks = model.visual.transformer.resblocks
    outs = {}
    for i in range(len(blocks) - args.dense_layers, len(blocks)):
        hooked = blocks[i].ln_1 if args.dense_path == "value" else blocks[i]
        hooked.register_forward_hook(lambda m, inp, out, i=i: outs.__setitem__(i, out))
    patch = CONFIG["vision_cfg"]["patch_size"]
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    warmup = max(1, args.steps // 20)

    def lr_at(step):
        if step < warmup:
            return args.lr * (step + 1) / warmup
        return 0.5 * args.lr * (1 + math.cos(math.pi * (step - warmup) / max(1, args.steps - warmup)))

    t0 = time.time()
    # A curriculum: single objects first (the caption describes the whole picture), then scenes
    # of 1 to 4 objects (the caption describes one of them). Disjoint scene indices.
    first = int(args.steps * args.single_first)
    def curriculum():
        yield from batches(scene_stream(args.legrad, args.seed, 0, first * args.batch, objects=1), args.batch)
        yield from batches(scene_stream(args.legrad, args.seed, 10_000_000, (args.steps - first) * args.batch), args.batch)
    captions = tok(CAPTIONS)
    for step, (imgs, _, names, labels) in enumerate(curriculum()):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        outs.clear()
        img_f, txt_f, scale = model(to_pixels(imgs), captions)
        loss = contrastive = multi_positive_loss(img_f, txt_f, scale, names)
        terms = {"contrastive": contrastive}
        if args.dense > 0 or args.spatial > 0:
            if args.dense_path == "value":
                feats = value_features(model.visual, sorted(outs.items()))
            else:
                feats = torch.stack([model.visual.ln_post(outs[i].permute(1, 0, 2)[:, 1:]) for i in sorted(outs)]) @ model.visual.proj
            full = object_indices(names)
        if args.dense > 0:
            terms["dense"] = dense_loss(feats, txt_f, scale, patch_targets(object_shares(labels, patch), full, args.cover))
            loss = loss + args.dense * terms["dense"]
        if args.spatial > 0:
            terms["spatial"] = spatial_loss(feats, txt_f, scale, object_shares(labels, patch, patch // 4).float(), full)
            loss = loss + args.spatial * terms["spatial"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % args.log_every == 0 or step == args.steps - 1:
            extra = " (" + ", ".join(f"{k} {v.item():.3f}" for k, v in terms.items()) + ")" if len(terms) > 1 else ""
            print(f"step {step:5d}  loss {loss.item():.3f}{extra}  scale {model.logit_scale.exp().item():.1f}  {time.time() - t0:.0f}s", flush=True)
        if args.eval_every and step > 0 and step % args.eval_every == 0:
            model.eval()
            print(f"step {step:5d}  zero-shot top-1 on 100 held-out scenes: {zero_shot(model, tok, args.legrad, 100):.2f}", flush=True)
            model.train()
    model.eval()
    acc = zero_shot(model, tok, args.legrad)
    print(f"zero-shot top-1 on 300 held-out single-object scenes: {acc:.3f}  ({time.time() - t0:.0f}s)", flush=True)

    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(args.out, "synthetic-clip.safetensors"))
    with open(os.path.join(args.out, "synthetic-clip.json"), "w") as f:
        json.dump(CONFIG, f, indent=2)
    with open(os.path.join(args.out, "train-log.json"), "w") as f:
        json.dump({"steps": args.steps, "batch": args.batch, "lr": args.lr, "seed": args.seed,
                   "threads": args.threads, "seconds": time.time() - t0, "zero_shot_top1": acc}, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
