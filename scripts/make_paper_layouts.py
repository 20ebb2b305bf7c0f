"""Write src/headlens/data/paper-hrv/layouts.json: the head layouts of the UNets the paper's HRVs refer to.

The UNets are built from their real configs on the meta device (no weights, no download), and
headlens' HeadIndex lists their cross-attention heads. tests/test_paper.py rebuilds them the same
way and checks the shipped file against them.

    python scripts/make_paper_layouts.py
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

from headlens import HeadIndex

# UNet configs of CompVis/stable-diffusion-v1-4 and stabilityai/stable-diffusion-xl-base-1.0 (the
# layout-relevant keys; the rest are defaults).
SD_V1_4 = dict(
    attention_head_dim=8, block_out_channels=[320, 640, 1280, 1280], cross_attention_dim=768,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    layers_per_block=2, sample_size=64, in_channels=4, out_channels=4,
)
SDXL_BASE_1_0 = dict(
    attention_head_dim=[5, 10, 20], block_out_channels=[320, 640, 1280], cross_attention_dim=2048,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], layers_per_block=2,
    transformer_layers_per_block=[1, 2, 10], use_linear_projection=True, addition_embed_type="text_time",
    addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816, sample_size=128,
    in_channels=4, out_channels=4,
)
CONFIGS = {"sd-v1-4": SD_V1_4, "sdxl-base-1.0": SDXL_BASE_1_0}


def layout(config: dict) -> dict:
    """HeadIndex description and fingerprint of a UNet config, built on the meta device."""
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
    heads = HeadIndex.from_unet(unet)
    return {"fingerprint": heads.fingerprint, "num_heads": len(heads), "layers": heads.describe()}


def main() -> None:
    out = Path(__file__).resolve().parents[1] / "src" / "headlens" / "data" / "paper-hrv" / "layouts.json"
    data = {name: layout(cfg) for name, cfg in CONFIGS.items()}
    out.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out}: " + ", ".join(f"{k} {v['num_heads']} heads" for k, v in data.items()))


if __name__ == "__main__":
    main()
