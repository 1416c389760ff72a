#!/usr/bin/env bash
# Ours on native wgpu (Vulkan), f32 and f16 image products, next to the reference
# (tools/reference/bench.py) on CUDA: one machine, one run (issue 28, deliverable 5). Prepared
# on a machine with Rust, run on a lent GPU machine, which has no Rust, no network, PyTorch.
#
# Prepare (in the repository's root; `.gpu`, `.gl` and `.whl` ignored by .git/info/exclude):
#   cargo build --release -p legrad-cli && mkdir -p .gpu
#   strip -o .gpu/legrad "$CARGO_TARGET_DIR/release/legrad" && gzip -f .gpu/legrad   (the tool
#   carries 64 MiB at most: 99 MB built, 75 stripped, 23 gzipped)
#   the Vulkan loader's packages into .gl, as the device tool's README says
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --platform manylinux2014_x86_64 -d .whl open_clip_torch==2.23.0 legrad-torch==1.1 ftfy wcwidth
# Run there: the device tool's run with carry [".gpu", ".gl", ".whl"] and the command
#   bash tools/gpu/bench.sh
# It writes ours.jsonl, reference.jsonl, table.md and gpu.txt under $OUT and prints the table.
# Here (lavapipe, the reference on the CPU) it checks itself:
#   OUT=/tmp/gpu-bench LEGRAD=$CARGO_TARGET_DIR/release/legrad PY=<reference venv>/bin/python \
#     REF_DEVICE=cpu SIZES=224 PROMPTS=1 RUNS=1 bash tools/gpu/bench.sh
set -uo pipefail
OUT=${OUT:-/tmp/legrad-gpu-bench}
if [ -z "${LEGRAD:-}" ] && [ -f .gpu/legrad.gz ]; then
  gunzip -c .gpu/legrad.gz >/tmp/legrad && chmod +x /tmp/legrad && LEGRAD=/tmp/legrad
fi
LEGRAD=${LEGRAD:-.gpu/legrad}
PY=${PY:-python3}
REF_DEVICE=${REF_DEVICE:-cuda}
SIZES=${SIZES:-224 448}
PROMPTS=${PROMPTS:-1 8}
RUNS=${RUNS:-5}
mkdir -p "$OUT"

if [ -d .gl ]; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
fi
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [ -z "${VK_DRIVER_FILES:-}" ] && [ -f "$icd" ]; then export VK_DRIVER_FILES=$icd; fi
if [ -d .whl ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
{ nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"; uname -a; } >"$OUT/gpu.txt"

# The app's model: a random ViT-B/16 (seed 0) in q8, as the reference's (same seed, f32).
model=/tmp/legrad-vit-b16-q8.legrad
"$LEGRAD" convert --model random:ViT-B-16:0 --quant q8 --out "$model" || exit 1
: >"$OUT/ours.jsonl"
: >"$OUT/reference.jsonl"
for size in $SIZES; do
  for prompts in $PROMPTS; do
    common=(--size "$size" --prompts "$prompts" --runs "$RUNS" --json)
    # Steady runs compile nothing either way; the warm-up would spend device time compiling
    # every prompt count.
    ours=(--backend wgpu --model "$model" --no-warm-up)
    for float in f32 f16; do
      "$LEGRAD" bench "${ours[@]}" --gpu-float "$float" "${common[@]}" 2>>"$OUT/stderr.txt" \
        | tail -n 1 >>"$OUT/ours.jsonl" || echo "legrad bench $float $size $prompts failed" | tee -a "$OUT/stderr.txt"
    done
    "$PY" -W ignore tools/reference/bench.py --device "$REF_DEVICE" "${common[@]}" 2>>"$OUT/stderr.txt" \
      | tail -n 1 >>"$OUT/reference.jsonl" || echo "reference $size $prompts failed" | tee -a "$OUT/stderr.txt"
  done
done

"$PY" - "$OUT" <<'PY' | tee "$OUT/table.md"
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
def rows(name):
    return [json.loads(l) for l in (out / name).read_text().splitlines() if l.strip().startswith("{")]
ours, ref = rows("ours.jsonl"), rows("reference.jsonl")
ms = lambda v: "-" if v is None else f"{v * 1e3:.1f} ms"
print(f"GPU: {(out / 'gpu.txt').read_text().splitlines()[0]}")
print("| size | prompts | step | ours, f32 products | ours, f16 products | reference |")
print("|---|---|---|---|---|---|")
for r in ref:
    mine = {o.get("image_products"): o for o in ours if str(o["size"]) == str(r["size"]) and o["prompts"] == r["prompts"]}
    f32, f16 = mine.get("f32", {}), mine.get("f16", {})
    for step, key, rkey in [("image forward (ours: with trace)", "image_forward_with_trace_s", "image_forward_s"),
                            ("explain on the cached image", "explain_cached_text_s", "legrad_cached_s"),
                            ("a new prompt (text + explain)", "explain_new_prompts_s", None)]:
        print(f"| {r['size']} | {r['prompts']} | {step} | {ms(f32.get(key))} | {ms(f16.get(key))} | {ms(r.get(rkey)) if rkey else '-'} |")
    print(f"| {r['size']} | {r['prompts']} | launches per image forward | {f32.get('steps', {}).get('image_trace', {}).get('steady_launches', '-')} | {f16.get('steps', {}).get('image_trace', {}).get('steady_launches', '-')} | - |")
PY
