"""Train the default model: a small OpenCLIP ViT on synthetic scenes, exported as an OpenCLIP
checkpoint (safetensors + JSON model config) with the real CLIP tokenizer.

    python tools/train/train.py --out /tmp/synthetic-clip      # about 56 minutes on 2 CPU cores

The scenes come from the project's one generator, streamed by `legrad scenes --stream` (Rust):
each record is a 224x224 RGB image, a caption naming one of its objects and the names of all
its objects. Training is open_clip's own model (`CLIP`) with the CLIP contrastive loss in a
multi-positive form. The captions are few (84: "a photo of a {color} {shape}.", "a {color}
{shape}", "a {shape}", "something {color}"), so every step embeds all of them: each picture is
contrasted with the whole caption set, each caption with the batch's pictures. A pair counts as
positive when the caption describes any object of the picture ("something red" fits every
picture with a red object), and the targets are spread evenly over the positives. The plain
loss (`open_clip.ClipLoss`, one caption per picture) would push a caption away from every
other picture of the same object, and from pictures where that object sits beside the
captioned one. Seeded: the same command gives the same weights on the same machine.
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
    rec = n + 192
    try:
        while True:
            buf = proc.stdout.read(rec)
            if len(buf) < rec:
                break
            img = np.frombuffer(buf[:n], dtype=np.uint8).reshape(size, size, 3)
            cap = buf[n:n + 96].rstrip(b"\0").decode("utf-8")
            names = buf[n + 96:].rstrip(b"\0").decode("utf-8").split(",")
            yield img, cap, names
    finally:
        proc.kill()


def batches(stream, batch):
    imgs, caps, names = [], [], []
    for img, cap, objs in stream:
        imgs.append(img)
        caps.append(cap)
        names.append(objs)
        if len(imgs) == batch:
            yield imgs, caps, names
            imgs, caps, names = [], [], []


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


# Every caption the generator writes.
CAPTIONS = ([f"a photo of a {c} {s}." for c in COLORS for s in SHAPES] + [f"a {c} {s}" for c in COLORS for s in SHAPES]
            + [f"a {s}" for s in SHAPES] + [f"something {c}" for c in COLORS])


def multi_positive_loss(img_f, txt_f, scale, names):
    """img_f: the batch's pictures, txt_f: all CAPTIONS, names: each picture's object names."""
    logits = scale * img_f @ txt_f.T
    pos = torch.tensor([[any(describes(c, n) for n in objs) for c in CAPTIONS] for objs in names], dtype=torch.float32)
    i2t = -(pos / pos.sum(1, keepdim=True) * F.log_softmax(logits, 1)).sum(1).mean()
    seen = pos.sum(0) > 0  # captions with a picture in this batch
    p, l = pos.T[seen], logits.T[seen]
    t2i = -(p / p.sum(1, keepdim=True) * F.log_softmax(l, 1)).sum(1).mean()
    return 0.5 * (i2t + t2i)


def zero_shot(model, tok, legrad, n=300):
    """Top-1 over all colour x shape names on held-out single-object scenes (seed 999)."""
    names = [f"{c} {s}" for c in COLORS for s in SHAPES]
    with torch.no_grad():
        t = F.normalize(model.encode_text(tok([f"a photo of a {n}." for n in names])), dim=-1)
        right = 0
        for imgs, _, objs in batches(scene_stream(legrad, 999, 0, n, objects=1), 100):
            i = F.normalize(model.encode_image(to_pixels(imgs)), dim=-1)
            pred = (i @ t.T).argmax(-1)
            right += sum(names[p] == o[0] for p, o in zip(pred.tolist(), objs))
    return right / n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--legrad", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "legrad"))
    ap.add_argument("--steps", type=int, default=2400)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--single-first", type=float, default=0.2,
                    help="share of the steps trained on single-object scenes before mixing in 1-4 objects")
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
    tok = open_clip.get_tokenizer("ViT-B-32")
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
    for step, (imgs, _, names) in enumerate(curriculum()):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        img_f, txt_f, scale = model(to_pixels(imgs), captions)
        loss = multi_positive_loss(img_f, txt_f, scale, names)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % args.log_every == 0 or step == args.steps - 1:
            print(f"step {step:5d}  loss {loss.item():.3f}  scale {model.logit_scale.exp().item():.1f}  {time.time() - t0:.0f}s", flush=True)
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
