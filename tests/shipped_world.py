"""Facts of the bundled world models as shipped now (README: the default has 20 cross-attention layers × 8
heads = 160 heads, the `sd-tx2` layout; the joint model 7 × 8 = 56).

One place to update when a new world model ships.
"""

WORLD_LAYERS = 20  # cross-attention (attn2) modules of the shipped default UNet
WORLD_HEADS_PER_LAYER = 8
WORLD_HEADS = WORLD_LAYERS * WORLD_HEADS_PER_LAYER  # 160: `headlens build --model world` HRVs have this many heads
JOINT_LAYERS = 7  # `--model world-joint`
JOINT_HEADS = JOINT_LAYERS * WORLD_HEADS_PER_LAYER  # 56

# every file a shipped world pipeline folder (`--model world`, `--model world-joint`) must hold; the ground-truth
# scorer ships separately (headlens.world.scorer.scorer_path()). A missing one is a test failure, never a skip.
WORLD_FILES = (
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "tokenizer/tokenizer.json",
    "tokenizer/tokenizer_config.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
)
