"""Build overhead on diffusion transformers: tiny PixArt, SD3 and FLUX side by side, and what probe tokens cost.

    .venv/bin/python benchmarks/bench_transformers.py                  # 6 concepts × 3 words, 8 prompts
    .venv/bin/python benchmarks/bench_transformers.py --concepts default --repeats 3

For each tiny pipeline (``headlens.testing``: random weights, seeded) the same prompts are generated
with the same steps, guidance, batches and per-prompt generators, ``output_type="latent"``: plain,
and with the vote capture installed (``HRVBuilder.run`` with the concept-words already encoded,
the steady state of a real build). SD3 and FLUX run twice: with probe tokens that see the image
(``concept_keys="probes"``, the default) and with ``"text-only"`` probes. Runs are interleaved and
the medians compared (CPU time of this process; wall time alongside). It also prints how many
probe tokens ride along per image, and how the two kinds of concept keys rank heads
(Spearman per concept between the two HRVs). The table goes into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import interleaved, machine, setup_threads, write_section

from headlens.building import BuildSettings, HRVBuilder, build
from headlens.capture import derived_seed, encode_concept_words
from headlens.concepts import ConceptSet, load_prompts
from headlens.families import family_of
from headlens.heads import HeadIndex
from headlens.votes import spearman

SMALL_CONCEPTS = {
    "Color": ["red", "blue", "green"], "Shape": ["circle", "square", "triangle"],
    "Animals": ["cat", "dog", "horse"], "Material": ["wood", "glass", "metal"],
    "Weather": ["rain", "snow", "fog"], "Image style": ["watercolor", "sketch", "photograph"],
}


def plain_run(pipe, prompts, steps, guidance, batch_size, seed):
    """The pipeline alone, same prompts/seeds/batches as a headlens build."""
    for s in range(0, len(prompts), batch_size):
        idx = list(range(s, min(s + batch_size, len(prompts))))
        gens = [torch.Generator().manual_seed(derived_seed(seed, i, "latents")) for i in idx]
        with torch.no_grad():
            pipe([prompts[i] for i in idx], num_inference_steps=steps, guidance_scale=guidance, generator=gens,
                 output_type="latent")


def measure(pipe, concepts, prompts, keys, *, steps, batch_size, repeats, guidance, seed=22) -> dict:
    """Interleaved medians: plain vs headlens steady state, one entry per kind of concept keys."""
    tokens = encode_concept_words(pipe, concepts)
    fns = {"plain": lambda: plain_run(pipe, prompts, steps, guidance, batch_size, seed)}
    for k in keys:
        settings = BuildSettings(steps, guidance, batch_size, seed, concept_keys=k)

        def steady(settings=settings):
            b = HRVBuilder(pipe, concepts, prompts, settings)
            b._tokens = tokens
            b.run()

        fns[k] = steady
    for fn in fns.values():  # warm-up
        fn()
    out = interleaved(fns, repeats)
    out["probe_tokens"] = int(tokens.table.shape[0]) if tokens.prompt_table is not None else 0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--concepts", default="small", help="'small' (6 × 3 words) or 'default' (44 × 10)")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = ap.parse_args()
    setup_threads()
    from headlens.testing import tiny_flux_pipeline, tiny_pixart_pipeline, tiny_sd3_pipeline

    concepts = ConceptSet.coerce(SMALL_CONCEPTS if args.concepts == "small" else "default")
    prompts = load_prompts("default")[1000: 1000 + args.prompts]
    start = time.time()
    rows, spear = [], []
    for name, make, guidance, keys in (("PixArt-α", tiny_pixart_pipeline, 4.5, ["probes"]),
                                       ("SD3", tiny_sd3_pipeline, 5.0, ["probes", "text-only"]),
                                       ("FLUX", tiny_flux_pipeline, 3.5, ["probes", "text-only"])):
        pipe = make()
        r = measure(pipe, concepts, prompts, keys, steps=args.steps, batch_size=args.batch_size,
                    repeats=args.repeats, guidance=guidance)
        family = family_of(pipe)
        text = family.text_layout(pipe).length
        gh, gw = HeadIndex.from_model(pipe).layers[0].resolution(
            family.latent_size(pipe, *family.generation_size(pipe, None, None)))
        n_img = gh * gw
        for k in keys:
            label = "capture" if name == "PixArt-α" else f"capture, {k}"
            rows.append((name, label, r["cpu"][k] / r["cpu"]["plain"], r["wall"][k] / r["wall"]["plain"],
                         r["cpu"]["plain"], r["probe_tokens"] if name != "PixArt-α" else 0, text, n_img))
        if len(keys) == 2:
            a = build(pipe, concepts, prompts, num_inference_steps=args.steps, guidance_scale=guidance,
                      batch_size=args.batch_size, concept_keys="probes")
            b = build(pipe, concepts, prompts, num_inference_steps=args.steps, guidance_scale=guidance,
                      batch_size=args.batch_size, concept_keys="text-only")
            spear.append((name, [spearman(a[c], b[c]) for c in a.concepts], a.concepts))
    lines = [
        f"Machine: {machine()}.",
        "",
        f"Tiny pipelines of `headlens.testing` (random weights), {len(prompts)} prompts × {args.steps} steps, "
        f"batch {args.batch_size}, {len(concepts)} concepts × {len(concepts.words[0])} words, median of "
        f"{args.repeats} interleaved runs (`benchmarks/bench_transformers.py`):",
        "",
        "| model | headlens | CPU time vs plain | wall time vs plain | plain CPU s | probe tokens | text tokens | "
        "image tokens |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, label, cpu, wall, base, probes, text, n_img in rows:
        lines.append(f"| tiny {name} | {label} | **{cpu:.2f}×** | {wall:.2f}× | {base:.2f} | {probes} | {text} | "
                     f"{n_img} |")
    lines += ["", "Spearman correlation of each concept's HRV from probe keys vs text-only keys (random weights):", ""]
    for name, rho, names in spear:
        lines.append(f"- {name}: " + ", ".join(f"{c} {r:+.2f}" for c, r in zip(names, rho)))
    lines += ["", f"Total {time.time() - start:.0f} s."]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        which = "6 concepts × 3 words" if args.concepts == "small" else "44 default concepts × 10 words"
        write_section(f"Diffusion transformers: build overhead and probe cost ({which})", body)


if __name__ == "__main__":
    main()
