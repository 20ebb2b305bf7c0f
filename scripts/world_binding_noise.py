"""At which noise level does the world UNet lose two-object binding? Denoise ground-truth renders from partial noise.

For the 200 two-object prompts of `scripts/world_quality.py` ('a c1 s1 [pos] and a c2 s2 [pos]', different colours
and shapes), the ground-truth render of each prompt is noised to a fraction of the schedule (img2img `strength`:
0.2 keeps most of the render, 1.0 starts from almost pure noise) and denoised with the prompt by the shipped
pipeline (DDIM 25 steps, guidance 5, the same seed per prompt). The ground-truth scorer then reads whether both
objects are right (colour + shape), and whether both asked colours / shapes are present at all. If the binding
holds from mid noise but not from high noise, the denoiser loses it where the layout and colours are decided (the
first, noisiest steps), not later. Writes the `world-binding-noise` block of docs/world.md.

    python scripts/world_binding_noise.py [--model world|FOLDER] [--n 200]   # about 4 min, one thread
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from diffusers import StableDiffusionImg2ImgPipeline

from headlens import world
from headlens.world.quality import generate, load_measured, two_metrics, two_prompts
from headlens.world.report import fmt_ci, write_section

STRENGTHS = (0.2, 0.4, 0.6, 0.8, 1.0)
COLUMNS = ("an object missing (colour+shape)", "both colours present", "both shapes present")


def main() -> None:
    """Print and write one row per noise level, beside the renders themselves and plain sampling."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="world", help="world, world-joint or a pipeline folder")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--doc", default="docs/world.md")
    a = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    pipe = load_measured(a.model)
    img2img = StableDiffusionImg2ImgPipeline(**pipe.components, requires_safety_checker=False)
    scorer = world.Scorer()
    prompts = two_prompts(a.n)
    renders = [world.render(p.text, seed=p.seed)[0] for p in prompts]
    rows = {"the ground-truth renders (no denoising)": [np.asarray(r) for r in renders]}
    for strength in STRENGTHS:
        images: list[np.ndarray] = []
        for i in range(0, len(prompts), 50):
            part = slice(i, i + 50)
            out = img2img([p.text for p in prompts[part]], image=renders[part], strength=strength,
                          num_inference_steps=25, guidance_scale=5.0, output_type="np",
                          generator=[torch.Generator().manual_seed(p.seed) for p in prompts[part]]).images
            images += list((out * 255).round().astype(np.uint8))
        rows[f"noised to strength {strength:g}, denoised"] = images
        print(f"[{time.time() - t0:4.0f}s] strength {strength:g} done", flush=True)
    rows["plain sampling from noise (txt2img)"] = generate(pipe, prompts, 25, 5.0)
    md = [f"`scripts/world_binding_noise.py`, model `{a.model}`: the {len(prompts)} two-object prompts of "
          f"`two_prompts({a.n})`; each prompt's ground-truth render noised to img2img `strength` (the fraction of the "
          "noise schedule) and denoised with the prompt (DDIM 25 steps, guidance 5, the prompt's seed); read by "
          "`headlens.world.Scorer`; 95 % bootstrap intervals.", "",
          "| start | " + " | ".join(COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
    for name, images in rows.items():
        m = two_metrics(scorer, prompts, images)
        md.append(f"| {name} | " + " | ".join(fmt_ci(m[k]) for k in COLUMNS) + " |")
    md.append(f"\n_{time.time() - t0:.0f} s on CPU._")
    print("\n".join(md))
    write_section(a.doc, "world-binding-noise", "\n".join(md))


if __name__ == "__main__":
    main()
