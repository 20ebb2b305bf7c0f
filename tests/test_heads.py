"""HeadIndex: canonical order, names, labels, resolutions, real-config head counts."""

import pytest
import torch
from diffusers import UNet2DConditionModel

from headlens import HeadIndex

SD15 = dict(
    attention_head_dim=8, block_out_channels=[320, 640, 1280, 1280], cross_attention_dim=768,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    layers_per_block=2, sample_size=64, in_channels=4, out_channels=4,
)
SD21 = dict(SD15, attention_head_dim=[5, 10, 20, 20], cross_attention_dim=1024, use_linear_projection=True, sample_size=96)
SDXL = dict(
    attention_head_dim=[5, 10, 20], block_out_channels=[320, 640, 1280], cross_attention_dim=2048,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], layers_per_block=2,
    transformer_layers_per_block=[1, 2, 10], use_linear_projection=True, addition_embed_type="text_time",
    addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816, sample_size=128,
    in_channels=4, out_channels=4,
)


def expected_heads(cfg) -> int:
    """Head count computed from config values alone (legacy: attention_head_dim = number of heads)."""
    n_blocks = len(cfg["block_out_channels"])
    heads = cfg["attention_head_dim"]
    heads = heads if isinstance(heads, list) else [heads] * n_blocks
    tl = cfg.get("transformer_layers_per_block", 1)
    tl = tl if isinstance(tl, list) else [tl] * n_blocks
    lpb = cfg["layers_per_block"]
    down = sum(lpb * tl[i] * heads[i] for i, t in enumerate(cfg["down_block_types"]) if t.startswith("CrossAttn"))
    mid = tl[-1] * heads[-1]
    rev_h, rev_t = heads[::-1], tl[::-1]
    up = sum((lpb + 1) * rev_t[i] * rev_h[i] for i, t in enumerate(cfg["up_block_types"]) if t.startswith("CrossAttn"))
    return down + mid + up


@pytest.mark.parametrize("cfg,count,layers", [(SD15, 128, 16), (SD21, 195, 16), (SDXL, 1300, 70)])
def test_real_configs_on_meta_device(cfg, count, layers):
    assert expected_heads(cfg) == count
    with torch.device("meta"):
        unet = UNet2DConditionModel(**cfg)
    heads = HeadIndex.from_unet(unet)
    assert len(heads) == count
    assert len(heads.layers) == layers
    assert len(set(heads.names)) == count


def test_sd15_layout_details():
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15)
    heads = HeadIndex.from_unet(unet)
    places = [l.place for l in heads.layers]
    assert places == ["down"] * 6 + ["mid"] + ["up"] * 9  # execution order down → mid → up
    # attn_processors lists mid last; our order must not follow it
    proc_order = [k.rsplit(".processor", 1)[0] for k in unet.attn_processors if k.endswith("attn2.processor")]
    assert proc_order[-1].startswith("mid_block") and heads.layers[6].name.startswith("mid_block")
    # resolutions at 512 px (latent 64): 64,64,32,32,16,16 | 8 | 16×3, 32×3, 64×3
    res = [l.resolution(64)[0] for l in heads.layers]
    assert res == [64, 64, 32, 32, 16, 16, 8, 16, 16, 16, 32, 32, 32, 64, 64, 64]
    assert heads[0].name == "down_blocks.0.attentions.0.transformer_blocks.0.attn2.head0"
    assert heads[127].reference_label == "up, layer: 8, head: 7"
    assert heads[48].reference_label == "mid, layer: 0, head: 0"


def test_flat_order_and_offsets(sd_pipe):
    heads = HeadIndex.from_unet(sd_pipe.unet)
    flat = [h.index for h in heads]
    assert flat == list(range(len(heads)))
    for layer in heads.layers:
        module = sd_pipe.unet.get_submodule(layer.name)
        assert layer.num_heads == module.heads
        assert [heads[i].head for i in layer.heads] == list(range(layer.num_heads))
    assert sum(l.num_heads for l in heads.layers) == len(heads) == 22


def test_reference_labels_round_trip(sd_pipe):
    heads = HeadIndex.from_unet(sd_pipe.unet)
    labels = heads.to_reference_labels()
    assert [heads.from_reference_label(l) for l in labels] == list(range(len(heads)))
    assert heads.from_reference_label(" down ,layer:1, head: 2") == heads.layers[1].head_offset + 2
    with pytest.raises(ValueError, match="does not exist"):
        heads.from_reference_label("down, layer: 9, head: 0")
    with pytest.raises(ValueError, match="not a reference head label"):
        heads.from_reference_label("nonsense")


def test_resolve_names(sd_pipe):
    heads = HeadIndex.from_unet(sd_pipe.unet)
    h = heads[5]
    assert heads.resolve(5) == heads.resolve("5") == heads.resolve(h.name) == heads.resolve(h.short_name) == 5
    assert heads.resolve(h.reference_label) == 5
    with pytest.raises(ValueError, match="out of range"):
        heads.resolve(99)
    with pytest.raises(ValueError, match="unknown head"):
        heads.resolve("up9.h9")


def test_description_round_trip_and_fingerprint(sd_pipe, sdxl_pipe):
    a = HeadIndex.from_unet(sd_pipe.unet)
    b = HeadIndex.from_description(a.describe())
    assert a == b and a.names == b.names and a.fingerprint == b.fingerprint
    assert a.to_reference_labels() == b.to_reference_labels()
    c = HeadIndex.from_unet(sdxl_pipe.unet)
    assert c != a and len(c) == 32
    # SDXL-style: two transformer layers per attention block are separate layers
    assert sum(1 for l in c.layers if l.place == "mid") == 2


def test_no_cross_attention_is_clear_error():
    from diffusers import UNet2DModel

    with pytest.raises(ValueError, match="no text cross-attention"):
        HeadIndex.from_unet(UNet2DModel(block_out_channels=(8, 8), norm_num_groups=4, sample_size=8,
                                         down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                         up_block_types=("AttnUpBlock2D", "UpBlock2D")))
