"""Plots decode throughput Bamba-9B / Llama-8B shape against context length, like the Bamba paper's Figure 1:
the roofline ratio from the byte model (`bamba info`, the model `bamba bench` uses) for batches 1, 16 and 64,
and the ratios one card measured (benches/results/<card>.json from scripts/gpu_bench.sh). Writes an SVG without
plotting libraries.

Roofline: a decode step streams the weights once, each sequence's KV cache, and its recurrent state read and
written (the byte model of `bamba bench`), so tokens/s = batch / (bytes / bandwidth); the bandwidth cancels in
the ratio. Curves and filled points keep the Mamba state in f32 (`bamba bench`'s default); the dotted b64 curve
and hollow points keep it in bf16 (`--state-dtype bf16`, as vLLM and transformers keep it). The Llama shape runs at the
largest batch up to the requested one whose weights and caches fit in the card's memory (MEMORY), as in
the measurements (which shrink it further where the allocator needs room; see backends.md, "Known limits").

Usage: python3 scripts/ratio_plot.py BAMBA_BINARY benches/results/CARD.json benches/results/ratio.svg MEMORY
(the card's memory as `bamba info --memory` takes it, e.g. 80GB)
"""

import json
import math
import subprocess
import sys

CONTEXTS = [1024, 2048, 4096, 8192, 16384, 32768]
BATCHES = [1, 16, 64]
COLORS = {1: "#1f77b4", 16: "#2ca02c", 64: "#d62728"}


def info(binary, preset, context, memory, state_dtype="f32"):
    out = subprocess.run(
        [binary, "info", "--preset", preset, "--json", "--context", str(context), "--memory", memory,
         "--state-dtype", state_dtype],
        check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out)


def roofline_tok_s(shape, batch):
    """Tokens per byte-second at `batch`, shrunk to what fits (`bamba info`'s `sequences_that_fit`); 0 when not
    even one sequence fits. Step bytes as `bamba bench` counts them (`MemoryModel::decode_step_bytes`)."""
    batch = min(batch, shape["sequences_that_fit"])
    if batch < 1:
        return 0.0
    return batch / (shape["streamed_weight_bytes_per_decode_step"] + batch * shape["decode_step_bytes_per_sequence"])


def measured_points(results):
    """(context, batch, state dtype, ratio) of every context where both shapes ran at the same requested batch,
    from each shape's record per state dtype."""
    newest = {}
    for r in results["bench_records"]:
        test = r.get("test", "")
        if not test.startswith("tg") or "tokens_per_s" not in r:
            continue
        context = int(test.split("@d")[1]) if "@d" in test else 0
        key = (r["model"], context, r.get("requested_batch", r["batch"]), r.get("state_dtype", "f32"))
        newest.setdefault(key, r["tokens_per_s"])
    points = []
    for (model, context, batch, state), tok_s in newest.items():
        llama = newest.get(("llama-8b-shape", context, batch, "f32"))
        if model == "bamba-9b" and llama and context >= CONTEXTS[0]:
            points.append((context, batch, state, tok_s / llama))
    return sorted(points)


def svg(curves, points, path, card):
    width, height, left, right, top, bottom = 640, 420, 60, 150, 30, 50
    ymax = max([8.0] + [r for c in curves.values() for _, r in c] + [r for *_, r in points]) * 1.05
    span = math.log2(CONTEXTS[-1] / CONTEXTS[0])
    x = lambda c: left + (width - left - right) * math.log2(c / CONTEXTS[0]) / span
    y = lambda r: height - bottom - (height - top - bottom) * r / ymax
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{left}" y="18" font-size="14">Decode tokens/s, Bamba-9B / Llama-8B shape (bf16, {card})</text>']
    for tick in range(0, int(ymax) + 1):
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 8}" y="{y(tick) + 4:.1f}" text-anchor="end">{tick}</text>')
    for c in CONTEXTS:
        out.append(f'<text x="{x(c):.1f}" y="{height - bottom + 18}" text-anchor="middle">{c // 1024}K</text>')
    out.append(f'<text x="{(left + width - right) / 2}" y="{height - 10}" text-anchor="middle">context (tokens per sequence)</text>')
    out.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{height - bottom}" stroke="black"/>')
    out.append(f'<line x1="{left}" x2="{width - right}" y1="{height - bottom}" y2="{height - bottom}" stroke="black"/>')
    for i, ((batch, state), curve) in enumerate(curves.items()):
        pts = " ".join(f"{x(c):.1f},{y(r):.1f}" for c, r in curve)
        dash = "6,4" if state == "f32" else "2,3"
        out.append(f'<polyline points="{pts}" fill="none" stroke="{COLORS[batch]}" stroke-width="2" stroke-dasharray="{dash}"/>')
        out.append(f'<line x1="{width - right + 10}" x2="{width - right + 35}" y1="{top + 20 * i + 10}" y2="{top + 20 * i + 10}" stroke="{COLORS[batch]}" stroke-width="2" stroke-dasharray="{dash}"/>')
        label = f"roofline b{batch}" + ("" if state == "f32" else f", {state} state")
        out.append(f'<text x="{width - right + 40}" y="{top + 20 * i + 14}">{label}</text>')
    for context, batch, state, ratio in points:
        color = COLORS.get(batch, "black")
        fill = f'fill="{color}"' if state == "f32" else f'fill="white" stroke="{color}" stroke-width="2"'
        out.append(f'<circle cx="{x(context):.1f}" cy="{y(ratio):.1f}" r="5" {fill}/>')
        anchor = "start" if state == "f32" else "end"
        dx = 8 if state == "f32" else -8
        out.append(f'<text x="{x(context) + dx:.1f}" y="{y(ratio) - 6:.1f}" text-anchor="{anchor}">{ratio:.2f}</text>')
    n = len(curves)
    out.append(f'<circle cx="{width - right + 22}" cy="{top + 20 * n + 10}" r="5" fill="#555"/>')
    out.append(f'<text x="{width - right + 40}" y="{top + 20 * n + 14}">measured</text>')
    out.append(f'<circle cx="{width - right + 22}" cy="{top + 20 * n + 30}" r="5" fill="white" stroke="#555" stroke-width="2"/>')
    out.append(f'<text x="{width - right + 40}" y="{top + 20 * n + 34}">measured, bf16 state</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def main():
    binary, results_path, out, memory = sys.argv[1:5]
    shapes = {(p, c): info(binary, p, c, memory) for p in ("bamba-9b", "llama-8b-shape") for c in CONTEXTS}
    shapes.update({("bamba-9b-bf16-state", c): info(binary, "bamba-9b", c, memory, "bf16") for c in CONTEXTS})
    ratio = lambda bamba, b, c: roofline_tok_s(shapes[bamba, c], b) / roofline_tok_s(shapes["llama-8b-shape", c], b)
    curves = {(b, "f32"): [(c, ratio("bamba-9b", b, c)) for c in CONTEXTS] for b in BATCHES}
    curves[64, "bf16"] = [(c, ratio("bamba-9b-bf16-state", 64, c)) for c in CONTEXTS]
    with open(results_path) as f:
        results = json.load(f)
    points = measured_points(results)
    svg(curves, points, out, results["machine"].split(",")[0])
    for (b, state), curve in curves.items():
        print(f"roofline b{b} ({state} state): " + ", ".join(f"{c // 1024}K {r:.2f}" for c, r in curve))
    for context, batch, state, r in points:
        print(f"measured b{batch} @ {context} ({state} state): {r:.2f}")


if __name__ == "__main__":
    main()
