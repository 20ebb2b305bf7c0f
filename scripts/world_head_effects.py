"""Single-head Spearman ρ(effect, HRV) of `headlens world report` on any world UNet, without the rest of the report.

Builds the HRVs (trained and random-init control) and runs the report's single-head effects section at the report's
defaults (`ReportConfig()`), so several UNets — training stages, seeds, candidates — can be compared on the one
question whose answer changed sign between stages. Prints one line per concept and writes OUT/effects.json.

    python scripts/world_head_effects.py --model runs/world/unet6/pipeline --out /tmp/effects-unet6   # ≈ 30 min, one thread
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from headlens import world
from headlens.validation.world_report import (
    ReportConfig,
    effects_section,
    fmt,
    random_init_control,
    report_hrvs,
    report_settings,
    use_scheduler,
)


def main() -> None:
    """Build, measure, print and write."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="world", help="world, world-joint or a pipeline folder")
    ap.add_argument("--out", required=True, help="folder for effects.json, the HRVs and the effects plot")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="the report's --quick sizes (a smoke run, about a minute)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    t0 = time.time()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = ReportConfig.quick() if a.quick else ReportConfig()
    pipe = world.load_named(a.model)
    control = random_init_control(pipe, cfg.control_seed)
    for p in (pipe, control):
        use_scheduler(p, cfg.scheduler)
    settings = report_settings(cfg)
    trained, ctrl = report_hrvs(pipe, control, cfg)
    hrv, control_hrv = trained[0], ctrl[0]
    hrv.save(out / "hrv")
    res = effects_section(pipe, hrv, control_hrv, world.Scorer(), cfg, settings, print, out)
    res["model"] = a.model
    res["seconds"] = round(time.time() - t0, 1)
    (out / "effects.json").write_text(json.dumps(res, indent=1), encoding="utf-8")
    for concept, c in res["concepts"].items():
        print(f"{a.model} {concept}: ρ {fmt(c['spearman'])}, permutation p {c['spearman_p_perm']:.2f} "
              f"(control HRV: ρ {c['spearman_control_hrv']['mean']:.2f}, p {c['spearman_control_p_perm']:.2f}), "
              f"n={c['items']} items × {c['heads']} heads")
    print(f"{res['seconds']:.0f} s")


if __name__ == "__main__":
    main()
