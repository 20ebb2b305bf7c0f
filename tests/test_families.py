"""Model families: head counts of the real transformer configs (meta device), names, order, refusals."""

import pytest
import torch

import headlens
from headlens.families import UnsupportedModelError, family_of
from headlens.heads import HeadIndex

# transformer configs of the released models (from their transformer/config.json), weights not needed
PIXART_ALPHA_1024 = dict(
    activation_fn="gelu-approximate", attention_bias=True, attention_head_dim=72, attention_type="default",
    caption_channels=4096, cross_attention_dim=1152, dropout=0.0, in_channels=4, norm_elementwise_affine=False,
    norm_eps=1e-6, norm_num_groups=32, norm_type="ada_norm_single", num_attention_heads=16, num_embeds_ada_norm=1000,
    num_layers=28, out_channels=8, patch_size=2, sample_size=128, upcast_attention=False,
)
PIXART_SIGMA_1024 = dict(PIXART_ALPHA_1024, interpolation_scale=2, use_additional_conditions=False)
SD3_MEDIUM = dict(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                  num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                  pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192)
SD35_LARGE = dict(sample_size=128, patch_size=2, in_channels=16, num_layers=38, attention_head_dim=64,
                  num_attention_heads=38, joint_attention_dim=4096, caption_projection_dim=2432,
                  pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192, qk_norm="rms_norm")
SD35_MEDIUM = dict(SD3_MEDIUM, pos_embed_max_size=384, qk_norm="rms_norm", dual_attention_layers=tuple(range(13)))
FLUX1_DEV = dict(attention_head_dim=128, guidance_embeds=True, in_channels=64, joint_attention_dim=4096,
                 num_attention_heads=24, num_layers=19, num_single_layers=38, patch_size=1,
                 pooled_projection_dim=768, axes_dims_rope=(16, 56, 56))
FLUX1_SCHNELL = dict(FLUX1_DEV, guidance_embeds=False)


def _meta(cls_name: str, config: dict):
    import diffusers

    with torch.device("meta"):
        return getattr(diffusers, cls_name)(**config)


@pytest.mark.parametrize("cls_name,config,heads,layers,first,last", [
    ("PixArtTransformer2DModel", PIXART_ALPHA_1024, 448, 28, "block0.h0", "block27.h15"),
    ("PixArtTransformer2DModel", PIXART_SIGMA_1024, 448, 28, "block0.h0", "block27.h15"),
    ("SD3Transformer2DModel", SD3_MEDIUM, 576, 24, "block0.h0", "block23.h23"),
    ("SD3Transformer2DModel", SD35_LARGE, 1444, 38, "block0.h0", "block37.h37"),
    ("SD3Transformer2DModel", SD35_MEDIUM, 576, 24, "block0.h0", "block23.h23"),  # its image-only attn2 is no text head
    ("FluxTransformer2DModel", FLUX1_DEV, 1368, 57, "block0.h0", "single37.h23"),
    ("FluxTransformer2DModel", FLUX1_SCHNELL, 1368, 57, "block0.h0", "single37.h23"),
])
def test_head_counts_of_real_configs(cls_name, config, heads, layers, first, last):
    model = _meta(cls_name, config)
    index = headlens.HeadIndex.from_model(model)
    assert len(index) == heads and len(index.layers) == layers
    assert index.short_names[0] == first and index.short_names[-1] == last
    # one name per head, every form resolves back to its index
    assert len(set(index.names)) == heads
    for i in (0, heads // 2, heads - 1):
        assert index.resolve(index.short_names[i]) == i
        assert index.resolve(index.names[i]) == i
        assert index.from_reference_label(index.to_reference_labels()[i]) == i
    # the layout survives the HRV file's description
    assert HeadIndex.from_description(index.describe()) == index


def test_flux_order_is_forward_order_double_then_single():
    model = _meta("FluxTransformer2DModel", FLUX1_DEV)
    index = HeadIndex.from_model(model)
    names = [layer.name for layer in index.layers]
    assert names[:2] == ["transformer_blocks.0.attn", "transformer_blocks.1.attn"]
    assert names[18:20] == ["transformer_blocks.18.attn", "single_transformer_blocks.0.attn"]
    assert index.resolve("single5.h7") == 19 * 24 + 5 * 24 + 7
    assert index.names[index.resolve("single5.h7")] == "single_transformer_blocks.5.attn.head7"
    assert index.layers[0].resolution((128, 128)) == (64, 64)  # 2×2 latent patches per token


def test_pixart_names_and_grid():
    model = _meta("PixArtTransformer2DModel", PIXART_ALPHA_1024)
    index = HeadIndex.from_model(model)
    assert index.resolve("block12.h3") == 12 * 16 + 3
    assert index.names[12 * 16 + 3] == "transformer_blocks.12.attn2.head3"
    assert index.layers[5].resolution(128) == (64, 64)
    assert "block" in repr(index)


def test_from_unet_and_from_model_agree(sd_pipe, sdxl_pipe):
    for pipe in (sd_pipe, sdxl_pipe):
        assert HeadIndex.from_model(pipe.unet) == HeadIndex.from_unet(pipe.unet) == HeadIndex.from_model(pipe)


def test_unsupported_model_one_line():
    with pytest.raises(UnsupportedModelError, match="does not support Linear models"):
        family_of(torch.nn.Linear(2, 2))


def test_flux_refuses_parallelism(tiny_flux):
    from headlens.attention import Session

    tiny_flux.transformer._parallel_config = object()  # what enable_parallelism records
    try:
        with pytest.raises(ValueError, match="context/tensor parallelism"):
            Session(tiny_flux, []).install()
        assert all(type(p).__name__ == "FluxAttnProcessor" for p in tiny_flux.transformer.attn_processors.values())
    finally:
        tiny_flux.transformer._parallel_config = None


def test_joint_models_refuse_p2p_in_one_line(tiny_sd3, tiny_flux):
    from headlens.edit import p2p

    for pipe in (tiny_sd3, tiny_flux):
        with pytest.raises(ValueError, match="Prompt-to-Prompt is not available for (SD3|FLUX) models: .*one joint "
                                             "softmax.*; use a UNet or PixArt model"):
            p2p(pipe, "a red circle", "a blue circle", num_inference_steps=2)


def test_hrv_files_refuse_another_layout(tiny_pixart, tiny_sd3, tmp_path):
    from headlens import HRV, LayoutMismatchError

    heads = HeadIndex.from_model(tiny_pixart)
    HRV.from_matrix(torch.ones(1, len(heads)), heads, ["Color"]).save(tmp_path / "h")
    assert HRV.load(tmp_path / "h", tiny_pixart).heads == heads
    with pytest.raises(LayoutMismatchError, match="8 heads in 2 layers"):
        HRV.load(tmp_path / "h", tiny_sd3)  # same head count, other layout
    with pytest.raises(LayoutMismatchError):
        headlens.steer(tiny_sd3, HRV.load(tmp_path / "h"))
