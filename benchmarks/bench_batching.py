"""Batching: images per second of an HRV build at batch 1, 4, 8 and 16 (and of the plain pipeline).

    .venv/bin/python benchmarks/bench_batching.py [--prompts 32] [--steps 20] [--repeats 3]

Runs on the bundled world model (or its stand-in, see _common.small_model). The same prompts are
generated at each batch size, headlens and plain interleaved; medians of CPU-time and wall-clock.
"""

from __future__ import annotations

import argparse

from _common import interleaved, machine, setup_threads, small_model, write_section
from bench_overhead import plain_run

from headlens.building import BuildSettings, HRVBuilder
from headlens.capture import encode_concept_words
from headlens.concepts import ConceptSet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batches", default="1,4,8,16")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    setup_threads()
    pipe, label, note, concepts, prompts = small_model()
    concepts = ConceptSet.coerce(concepts)
    prompts = prompts[: args.prompts]
    tokens = encode_concept_words(pipe, concepts)
    rows = []
    for bs in (int(x) for x in args.batches.split(",")):
        settings = BuildSettings(args.steps, 7.5, bs, 22)

        def steady(settings=settings):
            b = HRVBuilder(pipe, concepts, prompts, settings)
            b._tokens = tokens
            b.run()

        fns = {"plain": lambda bs=bs: plain_run(pipe, prompts, args.steps, 7.5, bs, 22, None), "headlens": steady}
        for fn in fns.values():
            fn()
        t = interleaved(fns, args.repeats)
        wall, cpu = t["wall"], t["cpu"]
        rows.append((bs, wall, cpu))
        print(f"batch {bs:2d}: headlens {len(prompts) / wall['headlens']:.1f} img/s wall "
              f"({len(prompts) / cpu['headlens']:.1f} per CPU-second), plain {len(prompts) / wall['plain']:.1f} img/s; "
              f"ratio {cpu['headlens'] / cpu['plain']:.3f}× CPU")
    base = len(prompts) / rows[0][2]["headlens"]
    lines = [f"Machine: {machine()}.", "",
             (f"Command: `.venv/bin/python benchmarks/bench_batching.py` — {label}, {len(prompts)} prompts × "
             f"{args.steps} steps, guidance 7.5, latents only; medians of {args.repeats} interleaved repeats."), "",
             ("| batch | headlens img/s (wall) | headlens img/CPU-s | speed-up vs batch 1 (CPU) | plain img/CPU-s "
             "| headlens / plain (CPU) |"), "|---|---|---|---|---|---|"]
    for bs, wall, cpu in rows:
        n = len(prompts)
        lines.append(f"| {bs} | {n / wall['headlens']:.1f} | {n / cpu['headlens']:.1f} | "
                     f"{n / cpu['headlens'] / base:.2f}× | {n / cpu['plain']:.1f} | {cpu['headlens'] / cpu['plain']:.3f}× |")
    if note:
        lines += ["", f"- {note}"]
    if not args.no_write:
        write_section("Batching", "\n".join(lines))
        print("written to benchmarks/RESULTS.md")


if __name__ == "__main__":
    main()
