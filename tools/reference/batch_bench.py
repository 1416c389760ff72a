"""The reference over many images, as a user would write it: the model loaded once, then
compute_legrad_clip in a Python loop (legrad-torch 1.1 on open_clip 2.23, a seeded random
ViT-B/16), each image read, preprocessed (open_clip's own transform) and its map saved as .npy.
The counterpart of `legrad explain --images @LIST` (issue 30's throughput bar).

    python tools/reference/batch_bench.py --list images.txt --size 224 --threads 2 --out /tmp/ref

Prints images/s over the loop (model loading and the text embedding not counted, as the CLI's
figure counts from its first image) and the peak resident memory.
"""

import argparse
import os
import resource
import time

import numpy as np
import torch
import torch.nn.functional as F
import open_clip
from PIL import Image
from legrad import LeWrapper


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--list", required=True, help="one image path per line")
    ap.add_argument("--prompt", default="a photo of a thing.")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16", pretrained=None).eval()
    tok = open_clip.get_tokenizer("ViT-B-16")
    wrapper = LeWrapper(model, layer_index=-2)
    preprocess = open_clip.image_transform(args.size, is_train=False)
    with torch.no_grad():
        text = F.normalize(wrapper.encode_text(tok([args.prompt])), dim=-1)
    base = os.path.dirname(args.list)
    paths = [l.strip() for l in open(args.list) if l.strip() and not l.startswith("#")]
    paths = [p if os.path.isabs(p) else os.path.join(base, p) for p in paths]
    os.makedirs(args.out, exist_ok=True)
    t = time.perf_counter()
    for i, p in enumerate(paths):
        image = preprocess(Image.open(p).convert("RGB")).unsqueeze(0)
        heatmap = wrapper.compute_legrad_clip(text_embedding=text, image=image)
        np.save(os.path.join(args.out, f"{i}.npy"), heatmap[0, 0].detach().numpy())
    seconds = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"reference: {len(paths)} images in {seconds:.1f} s: {len(paths) / seconds:.2f} images/s; peak RSS {rss / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
