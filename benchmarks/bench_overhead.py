"""Capture overhead: `headlens.build` vs the same pipeline generating the same prompts without headlens.

    .venv/bin/python benchmarks/bench_overhead.py                 # bundled (or stand-in) + SD1.5-shaped
    .venv/bin/python benchmarks/bench_overhead.py --models small --repeats 7

Both sides generate the same prompts with the same steps, guidance, batch size, per-prompt
generators and ``output_type="latent"``; runs are interleaved (plain, headlens, plain, ...) and the
median of each side is compared. Two headlens numbers:

* *steady state* — ``HRVBuilder.run()`` with the concept words already encoded: the per-image cost
  that dominates a real build (2,100 prompts);
* *end to end* — ``headlens.build()`` including its one-off setup (encoding every concept-word on
  its own, model fingerprint), for this benchmark's small number of prompts.

Wall-clock and CPU-time (process time, robust on a shared machine) ratios are both printed.
The table goes into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import interleaved, machine, sd15_pipeline, setup_threads, small_model, write_section

from headlens.building import BuildSettings, HRVBuilder, build
from headlens.capture import derived_seed, encode_concept_words
from headlens.concepts import ConceptSet


def plain_run(pipe, prompts, steps, guidance, batch_size, seed, size):
    """The pipeline alone, same prompts/seeds/batches as a headlens build."""
    kw = {"height": size, "width": size} if size else {}
    for s in range(0, len(prompts), batch_size):
        idx = list(range(s, min(s + batch_size, len(prompts))))
        gens = [torch.Generator().manual_seed(derived_seed(seed, i, "latents")) for i in idx]
        with torch.no_grad():
            pipe([prompts[i] for i in idx], num_inference_steps=steps, guidance_scale=guidance, generator=gens,
                 output_type="latent", **kw)


def measure(pipe, concepts, prompts, *, steps, batch_size, repeats, size=None, guidance=7.5, seed=22,
            end_to_end=True) -> dict:
    """Interleaved medians of plain / headlens steady-state / headlens end-to-end; wall and CPU seconds."""
    concepts = ConceptSet.coerce(concepts)
    t0 = time.perf_counter()
    tokens = encode_concept_words(pipe, concepts)
    setup_s = time.perf_counter() - t0
    settings = BuildSettings(steps, guidance, batch_size, seed, height=size, width=size)

    def steady():
        b = HRVBuilder(pipe, concepts, prompts, settings)
        b._tokens = tokens
        b.run()

    def full():
        build(pipe, concepts, prompts, num_inference_steps=steps, guidance_scale=guidance, batch_size=batch_size,
              seed=seed, height=size, width=size)

    fns = {"plain": lambda: plain_run(pipe, prompts, steps, guidance, batch_size, seed, size), "headlens": steady}
    if end_to_end:
        fns["build()"] = full
    for fn in fns.values():  # warm-up
        fn()
    return {"setup_s": setup_s, **interleaved(fns, repeats)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="small,sd15", help="comma list: small (bundled or stand-in), sd15")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10, help="steps of the small-model runs")
    ap.add_argument("--sd15-size", type=int, default=128, help="SD1.5-shaped run: image size in pixels")
    ap.add_argument("--sd15-steps", type=int, default=3)
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = ap.parse_args()
    setup_threads()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if "small" in models:
        rows, notes = [], []
        pipe, label, note, concepts, prompts = small_model()
        if note:
            notes.append(note)
        for bs in (1, 8):
            n = 8 if bs == 1 else 16
            r = measure(pipe, concepts, prompts[:n], steps=args.steps, batch_size=bs, repeats=args.repeats)
            rows.append((label, f"{n} prompts × {args.steps} steps, batch {bs}", r))
            _print(rows[-1])
        if not args.no_write:
            write_section("Capture overhead: bundled model", _table(rows, notes))
    if "sd15" in models:
        rows, notes = [], []
        t = time.perf_counter()
        pipe = sd15_pipeline()
        print(f"SD1.5-shaped pipeline created in {time.perf_counter() - t:.0f} s")
        # the per-image cost depends on the number of concepts, not of words: 2 words each keeps setup short
        concepts = {k: list(v[:2]) for k, v in ConceptSet.default().to_dict().items()}
        from headlens.concepts import load_prompts

        prompts = load_prompts("default")[:1]
        r = measure(pipe, concepts, prompts, steps=args.sd15_steps, batch_size=1, repeats=max(2, args.repeats // 2),
                    size=args.sd15_size, end_to_end=False)
        evals = len(pipe.scheduler.timesteps)
        rows.append(("SD1.5-shaped UNet (860 M, random weights)",
                     (f"1 prompt × {args.sd15_steps} steps ({evals} UNet evaluations), {args.sd15_size} px, "
                     f"{len(concepts)} concepts"), r))
        notes.append(f"SD1.5 one-off setup (encoding {sum(map(len, concepts.values()))} concept-words with CLIP-L on "
                     f"CPU) took {r['setup_s']:.0f} s; it is paid once per build (2 words per concept here: the "
                     "per-image cost depends on the number of concepts, not of words)")
        _print(rows[-1])
        if not args.no_write:
            write_section("Capture overhead: SD1.5-shaped UNet", _table(rows, notes))
    if not args.no_write:
        print("written to benchmarks/RESULTS.md")


def _print(row) -> None:
    label, what, r = row
    w, c = r["wall"], r["cpu"]
    e2e = f", build() end-to-end {c['build()'] / c['plain']:.3f}× cpu" if "build()" in c else ""
    print(f"{label} — {what}: headlens/plain {w['headlens'] / w['plain']:.3f}× wall, "
          f"{c['headlens'] / c['plain']:.3f}× cpu{e2e} (plain {w['plain']:.2f} s; setup {r['setup_s']:.2f} s)")


def _table(rows, notes) -> str:
    lines = [f"Machine: {machine()}.", "",
             ("Command: `.venv/bin/python benchmarks/bench_overhead.py [--models small|sd15]` (interleaved repeats, medians; "
             "latents only, no VAE decode)."), "",
             ("| model | run | plain (s, wall) | headlens / plain (wall) | headlens / plain (CPU time) "
             "| `build()` end-to-end / plain (CPU time) |"),
             "|---|---|---|---|---|---|"]
    for label, what, r in rows:
        w, c = r["wall"], r["cpu"]
        e2e = f"{c['build()'] / c['plain']:.3f}×" if "build()" in c else "— (setup below)"
        lines.append(f"| {label} | {what} | {w['plain']:.2f} | {w['headlens'] / w['plain']:.3f}× "
                     f"| {c['headlens'] / c['plain']:.3f}× | {e2e} |")
    lines += ["", ("*headlens / plain*: steady state (`HRVBuilder.run()`, concept words already encoded). "
              "*end-to-end* adds the one-off setup for this small prompt count."), ""]
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
