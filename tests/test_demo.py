"""`headlens demo` (the README's main command) runs end to end with small settings."""

import json
import os
import subprocess
import sys

from headlens import HRV

ENV = dict(os.environ, OMP_NUM_THREADS="1")


def test_demo_small(tmp_path):
    out = tmp_path / "demo"
    p = subprocess.run([sys.executable, "-m", "headlens", "demo", "--out", str(out), "--max-prompts", "8", "--steps", "2",
                        "--weaken-prompts", "2", "--batch-size", "8"], capture_output=True, text=True, env=ENV, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    hrv = HRV.load(out / "hrv")
    assert set(hrv.concepts) >= {"Color", "Shape"} and hrv.metadata["num_prompts"] == 8
    assert (out / "hrv" / "plots" / "heatmap.png").stat().st_size > 5000
    summary = json.loads((out / "hrv" / "weaken-Color" / "summary.json").read_text())
    assert summary
    html = (out / "hrv" / "report.html").read_text()
    assert "<img" in html and "http://" not in html and "https://" not in html
    assert "Top 5 heads per concept" in p.stdout + p.stderr
