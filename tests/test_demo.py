"""`headlens demo` (the README's main command) runs end to end with small settings."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from shipped_world import WORLD_HEADS

from headlens import HRV
from headlens.cli.demo_cmd import DEMO_CONCEPT

ENV = dict(os.environ, OMP_NUM_THREADS="1")


def test_demo_small(tmp_path):
    out = tmp_path / "demo"
    p = subprocess.run([sys.executable, "-m", "headlens", "demo", "--out", str(out), "--build-prompts", "8", "--steps", "4",
                        "--weaken-prompts", "2", "--batch-size", "8", "--threads", "1"], capture_output=True, text=True,
                       env=dict(ENV, OMP_NUM_THREADS="2"), timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "8 prompts × 4 steps (1 torch thread)" in " ".join(p.stderr.split())  # --threads wins over the env
    hrv = HRV.load(out / "hrv")
    assert hrv.concepts == ["Color", "Shape", "Size", "Position", "Pattern", "Background"]
    assert hrv.metadata["num_prompts"] == 8 and hrv.num_heads == WORLD_HEADS  # the bundled model, not the tiny one
    assert "TINY RANDOM MODEL" not in p.stdout + p.stderr
    assert (out / "hrv" / "plots" / "heatmap.png").stat().st_size > 5000
    # the weakening curve: every order at every k, and its area (with a CI around it) as printed
    d = out / "hrv" / f"weaken-{DEMO_CONCEPT}"
    summary = json.loads((d / "summary.json").read_text())
    H = WORLD_HEADS
    ks = [0, H // 4, H // 2, H]  # none, a quarter, half, all
    assert summary["concept"] == DEMO_CONCEPT and summary["num_heads"] == H and summary["ks"] == ks
    assert summary["items"] == 2 * 2  # --weaken-prompts 2 × seeds 10, 20
    curves = {(c["order"], c["tokens"]): c for c in summary["curves"]}
    assert set(curves) == {("morhf", "words"), ("lerhf", "words"), ("random", "words")}
    for c in curves.values():
        assert len(c["mean"]) == len(ks)
        assert all(0.0 <= m <= 1.0 for m in c["mean"])  # ground-truth accuracies
        assert all(lo - 1e-9 <= m <= hi + 1e-9 for lo, m, hi in zip(c["ci_low"], c["mean"], c["ci_high"]))
    mor, ler = (np.asarray(curves[(o, "words")]["mean"]) for o in ("morhf", "lerhf"))
    assert len(set(np.concatenate([mor, ler]))) > 1, "flat curves: the area checks below need more --steps"
    assert mor[0] == ler[0] and mor[-1] == ler[-1]  # k = 0 and k = H weaken the same heads
    area = summary["area"]["words"]
    assert area["value"] == pytest.approx(np.trapezoid(ler - mor, ks) / H, abs=1e-9)
    assert area["low"] <= area["value"] <= area["high"]
    vs_random = summary["area_vs_random"]["words"]
    assert vs_random["low"] <= vs_random["value"] <= vs_random["high"]
    rnd = np.asarray(curves[("random", "words")]["mean"])
    assert vs_random["value"] == pytest.approx(np.trapezoid(rnd - mor, ks) / H, abs=1e-9)
    printed = " ".join((p.stdout + p.stderr).split())  # rich wraps long lines
    assert (f"words: LeRHF − MoRHF {area['value']:+.2f} [{area['low']:.2f}, {area['high']:.2f}]; "
            f"random − MoRHF {vs_random['value']:+.2f} [{vs_random['low']:.2f}, {vs_random['high']:.2f}]") in printed
    assert p.stdout.strip().splitlines()[-1] == f"verdict: {summary['verdict']}"  # the verdict uses both areas
    with open(d / "curves.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * len(ks) and {int(r["k"]) for r in rows} == set(ks)
    assert (d / "curves.png").stat().st_size > 5000
    html = (out / "hrv" / "report.html").read_text()
    assert "<img" in html and "http://" not in html and "https://" not in html
    assert "Top 5 heads per concept" in p.stdout + p.stderr
