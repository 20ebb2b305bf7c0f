"""Configs of the world's models and pipeline assembly."""
from __future__ import annotations

import re
from pathlib import Path

import torch

from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel, CLIPTokenizer, CLIPVisionConfig

HEADS = 8
TEXT_DIM = 64
BETAS = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


def make_vae() -> AutoencoderKL:
    """A small KL autoencoder: 3x32x32 <-> 4x16x16."""
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=32,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=16,
    )


def text_config(tok: CLIPTokenizer, layers: int = 3) -> CLIPTextConfig:
    """The world's causal, EOS-pooled CLIP text tower (hidden 64, 4 heads)."""
    return CLIPTextConfig(
        vocab_size=len(tok), hidden_size=TEXT_DIM, intermediate_size=4 * TEXT_DIM, num_hidden_layers=layers,
        num_attention_heads=4, max_position_embeddings=tok.model_max_length, projection_dim=TEXT_DIM,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )


def make_text_encoder(tok: CLIPTokenizer, layers: int = 3) -> CLIPTextModel:
    """A small causal CLIP text encoder over the world tokenizer (3 layers: the joint model's)."""
    return CLIPTextModel(text_config(tok, layers))


CLIP_TEXT_LAYERS = 4


def make_clip(tok: CLIPTokenizer) -> CLIPModel:
    """The world CLIP: the text tower above (4 layers) and a ViT on 32x32 renders (8x8 patches)."""
    vision = CLIPVisionConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=TEXT_DIM,
                              intermediate_size=4 * TEXT_DIM, num_hidden_layers=4, num_attention_heads=4,
                              projection_dim=TEXT_DIM)
    cfg = CLIPConfig(text_config=text_config(tok, CLIP_TEXT_LAYERS).to_dict(), vision_config=vision.to_dict(),
                     projection_dim=TEXT_DIM)
    return CLIPModel(cfg)


def text_encoder_from_clip(clip: CLIPModel) -> CLIPTextModel:
    """A CLIPTextModel holding exactly the CLIP's text tower weights (what the pipeline ships)."""
    te = CLIPTextModel(clip.config.text_config)
    getattr(te, "text_model", te).load_state_dict(clip.text_model.state_dict())  # transformers 5 flattens it
    return te.eval()


ARCHS = ("sd", "sd-wide", "sd-deep", "sd-tx2", "joint")


def make_unet(arch: str = "sd") -> UNet2DConditionModel:
    """The world UNet: 'sd' (default model), 'sd-wide' (the same layout and heads, 64 channels at 16²: 8-dim heads
    where the objects are drawn instead of 4), 'sd-deep' (SD1.x's depth: two resnet + attention pairs per down level
    and three per up level, so SD1.x's 16 cross-attention layers x 8 heads = 128 heads) or 'joint' (the first, jointly
    trained model). 'sd-tx2': the 'sd' layout with two transformer blocks in each attention module (SDXL's way of
    stacking them): 20 cross-attention layers x 8 heads = 160, and each resolution gets a second read of the prompt
    after the first; `grow_unet` starts it from a trained 'sd' UNet, computing exactly what that UNet computes."""
    if arch == "sd":
        return make_unet_sd()
    if arch == "sd-wide":
        return make_unet_sd(channels=(64, 64, 64, 64))
    if arch == "sd-deep":
        return make_unet_sd(layers_per_block=2)
    if arch == "sd-tx2":
        return make_unet_sd(transformer_layers=2)
    if arch == "joint":
        return make_unet_joint()
    raise ValueError(f"unknown UNet arch {arch!r}; use one of {', '.join(ARCHS)}")


def make_unet_sd(channels: tuple[int, ...] = (32, 64, 64, 64), layers_per_block: int = 1,
                 transformer_layers: int = 1) -> UNet2DConditionModel:
    """SD1.x's layout, scaled down: 4 levels (16², 8², 4², mid 2²); with one layer per block 10 cross-attention layers
    x 8 heads = 80, with two (SD1.x's) 16 x 8 = 128; transformer_layers stacks that many blocks in each."""
    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=layers_per_block,
        transformer_layers_per_block=transformer_layers,
        block_out_channels=channels,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=HEADS,  # legacy naming: with num_attention_heads unset this is the head count
        cross_attention_dim=TEXT_DIM, norm_num_groups=16,
    )


# the layers whose output a transformer block adds to its input: zeroed, the block passes its input through unchanged
_BLOCK_OUTPUTS = ("attn1.to_out.0.", "attn2.to_out.0.", "ff.net.2.")


def grow_unet(unet: UNet2DConditionModel, state: dict) -> list[str]:
    """Load a UNet's weights into one with more transformer blocks per attention module ('sd' into 'sd-tx2').

    Every weight of `state` goes to the same name; each block `state` lacks (`transformer_blocks.N`, N >= 1) keeps
    its fresh initialisation except for the layers that write into the residual stream, which are set to 0, so the
    grown UNet computes exactly what the source did and training starts from there. Returns the new blocks' names.
    """
    own = unet.state_dict()
    extra = sorted(k for k in own if k not in state)
    missing = sorted(k for k in state if k not in own or own[k].shape != state[k].shape)
    bad = [k for k in extra if ".transformer_blocks." not in k or ".transformer_blocks.0." in k]
    if missing or bad:
        raise ValueError(f"cannot grow this UNet from those weights: {len(missing)} weights do not fit "
                         f"(e.g. {(missing or bad)[0]}); grow only adds transformer blocks (--arch sd-tx2 from sd)")
    unet.load_state_dict({**own, **state})
    new = set(extra)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if name in new and any(o in name for o in _BLOCK_OUTPUTS):
                p.zero_()
    return sorted({re.match(r"(.*\.transformer_blocks\.\d+)\.", k).group(1) for k in extra})


def make_unet_joint() -> UNet2DConditionModel:
    """UNet on 4x16x16 latents, 8 heads in each of 7 cross-attention layers (16², 8², 4² mid)."""
    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=HEADS,  # legacy naming: with num_attention_heads unset this is the head count
        cross_attention_dim=TEXT_DIM, norm_num_groups=16,
    )


def train_scheduler() -> DDPMScheduler:
    """The noise schedule used in training (SD's)."""
    return DDPMScheduler(**BETAS)


def make_pipeline(vae: AutoencoderKL, text_encoder: CLIPTextModel, tok: CLIPTokenizer,
                  unet: UNet2DConditionModel) -> StableDiffusionPipeline:
    """Assemble a standard StableDiffusionPipeline with DDIM on SD's betas (docs/world.md, "Steps and guidance":
    DDIM at 25 steps draws what SD's PNDM draws at 40-50 on these models, in half the UNet calls)."""
    # as in SD1.x's config: steps_offset 1, no alpha at t=0, and no x0 clipping (latents are not images)
    sched = DDIMScheduler(**BETAS, steps_offset=1, set_alpha_to_one=False, clip_sample=False)
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tok, unet=unet, scheduler=sched,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def save_pipeline(pipe: StableDiffusionPipeline, folder: str | Path) -> None:
    """Save with safetensors, atomically replacing folder."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        _rmtree(tmp)
    pipe.save_pretrained(str(tmp), safe_serialization=True)
    if folder.exists():
        old = folder.with_name(folder.name + ".old")
        folder.rename(old)
        tmp.rename(folder)
        _rmtree(old)
    else:
        tmp.rename(folder)


def _rmtree(p: Path) -> None:
    """Remove a folder tree."""
    import shutil

    shutil.rmtree(p)
