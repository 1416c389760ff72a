"""Time the reference (legrad-torch 1.1 on open_clip 2.23) on a seeded random ViT-B/16.

    python tools/reference/bench.py --size 448 --prompts 1 --threads 2 --json
    python tools/reference/bench.py --model ViT-B-16-SigLIP --tokenizer tests/fixtures/siglip/tokenizer
    python tools/reference/bench.py --device cuda --size 224     (a GPU machine: tools/gpu/bench.sh)

SigLIP models (`compute_legrad_siglip`, with its correction) need a tokenizer directory
(`--tokenizer`; the published one is fetched by name, which needs a network).

Steps timed (median of --runs after one warm-up), as `legrad bench` times ours:
  image_forward_s           encode_image without gradients
  legrad_full_s             compute_legrad_clip(text_embedding, image): forward + LeGrad
  legrad_cached_s           compute_legrad_clip(text_embedding, image=None): a new prompt on
                            the image encoded by the previous call (same prompt count)
  text_encode_s             encode_text for the prompts
  peak_rss_bytes            the process's peak resident memory
"""

import argparse
import json
import resource
import statistics
import time

import torch
import torch.nn.functional as F
import open_clip
from legrad import LeWrapper


def median_time(fn, runs, sync=lambda: None):
    fn()
    sync()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        sync()  # a GPU's work is asynchronous: each run waits for its kernels
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="ViT-B-16")
    ap.add_argument("--size", type=int, default=448)
    ap.add_argument("--prompts", type=int, default=1)
    ap.add_argument("--layer-index", type=int, default=-2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--tokenizer", help="a tokenizer directory for SigLIP models (HFTokenizer)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    args = ap.parse_args()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = open_clip.create_model(args.model, pretrained=None).eval().to(device)
    if args.tokenizer:
        cfg = open_clip.get_model_config(args.model)["text_cfg"]
        tok = open_clip.tokenizer.HFTokenizer(args.tokenizer, context_length=cfg["context_length"],
                                              **cfg.get("tokenizer_kwargs", {}))
    else:
        tok = open_clip.get_tokenizer(args.model)
    wrapper = LeWrapper(model, layer_index=args.layer_index)
    if wrapper.model_type == "timm_siglip":  # its correction's prompt, without fetching the tokenizer
        with torch.no_grad():
            wrapper.empty_embedding = F.normalize(wrapper.encode_text(tok(["a photo of a"]).to(device)), dim=-1).t()
    image = torch.randn(1, 3, args.size, args.size).to(device)
    prompts = [f"a photo of a thing number {i}." for i in range(args.prompts)]
    tokens = tok(prompts).to(device)
    with torch.no_grad():
        text = F.normalize(wrapper.encode_text(tokens), dim=-1)

    def forward():
        with torch.no_grad():
            wrapper.encode_image(image)

    def full():
        wrapper.compute_legrad(text_embedding=text, image=image)

    def cached():
        wrapper.compute_legrad(text_embedding=text, image=None)

    def encode_text():
        with torch.no_grad():
            wrapper.encode_text(tokens)

    result = {
        "implementation": "legrad-torch 1.1 / open_clip 2.23.0 / torch " + torch.__version__,
        "model": args.model,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "size": args.size,
        "prompts": args.prompts,
        "layer_index": args.layer_index,
        "runs": args.runs,
        "image_forward_s": median_time(forward, args.runs, sync),
        "legrad_full_s": median_time(full, args.runs, sync),
    }
    full()  # the cached call needs an image encoded with this prompt count
    result["legrad_cached_s"] = median_time(cached, args.runs, sync)
    result["text_encode_s"] = median_time(encode_text, args.runs, sync)
    result["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if device.type == "cuda":
        result["peak_gpu_bytes"] = torch.cuda.max_memory_allocated(device)
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:20s} {v}")


if __name__ == "__main__":
    main()
