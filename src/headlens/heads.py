"""HeadIndex: every text-conditioned attention head of a denoiser, in one fixed order.

UNet order (the spec's): down blocks, then the mid block, then up blocks; inside each place the
cross-attention modules (``attn2``) in module order; inside a module heads 0..n-1. Diffusion
transformers (PixArt, SD3, FLUX) list their blocks in forward order (FLUX: double-stream blocks,
then single-stream blocks); :mod:`headlens.families` knows each layout.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

PLACES = ("down", "mid", "up", "block", "single")  # UNet places; transformer blocks; FLUX single-stream blocks
UNET_PLACES = PLACES[:3]
_PLACE_PREFIX = {"down": "down_blocks", "mid": "mid_block", "up": "up_blocks"}
_REF_LABEL = re.compile(r"^\s*(down|mid|up|block|single)\s*,\s*layer\s*:\s*(\d+)\s*,\s*head\s*:\s*(\d+)\s*$")


@dataclass(frozen=True)
class Layer:
    """One cross-attention module and where its heads sit in the flat head order."""

    index: int  # flat layer index in canonical order
    name: str  # module path, e.g. "down_blocks.0.attentions.0.transformer_blocks.0.attn2"
    place: str  # "down" | "mid" | "up" (UNet) | "block" | "single" (transformers)
    place_layer: int  # layer number inside its place (reference "layer: L"; a transformer's block number)
    num_heads: int
    head_dim: int
    head_offset: int  # flat index of this layer's head 0
    downsample: int  # spatial downsampling of this layer relative to the latent (a transformer's patch size)

    @property
    def heads(self) -> range:
        """Flat indices of this layer's heads."""
        return range(self.head_offset, self.head_offset + self.num_heads)

    def resolution(self, latent_size: int | tuple[int, int]) -> tuple[int, int]:
        """(height, width) of this layer's query grid for a latent of the given size."""
        h, w = (latent_size, latent_size) if isinstance(latent_size, int) else latent_size
        d = self.downsample
        return (-(-h // d), -(-w // d))


@dataclass(frozen=True)
class Head:
    """One attention head: flat index, readable name and its layer."""

    index: int
    layer: Layer
    head: int  # head number inside its layer

    @property
    def name(self) -> str:
        """Stable readable name: module path + head number."""
        return f"{self.layer.name}.head{self.head}"

    @property
    def short_name(self) -> str:
        """Compact name for plots: place, layer inside place, head (e.g. ``down2.h3``)."""
        return f"{self.layer.place}{self.layer.place_layer}.h{self.head}"

    @property
    def reference_label(self) -> str:
        """The research code's label, e.g. ``down, layer: 4, head: 3``."""
        return f"{self.layer.place}, layer: {self.layer.place_layer}, head: {self.head}"


def _is_cross_attention(module: torch.nn.Module) -> bool:
    return getattr(module, "is_cross_attention", False) and hasattr(module, "to_k")


class HeadIndex:
    """Every cross-attention head of a model in canonical order, with names and layers."""

    def __init__(self, layers: Sequence[Layer]):
        self.layers: tuple[Layer, ...] = tuple(layers)
        self._heads = tuple(Head(l.head_offset + h, l, h) for l in self.layers for h in range(l.num_heads))
        self._by_name = {h.name: h.index for h in self._heads}
        self._by_short = {h.short_name: h.index for h in self._heads}
        self._by_label = {h.reference_label: h.index for h in self._heads}
        self._layer_by_name = {l.name: l for l in self.layers}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_unet(cls, unet: torch.nn.Module) -> "HeadIndex":
        """List the text-conditioned ``attn2`` heads of a diffusers ``UNet2DConditionModel``."""
        down = _downsample_factors(unet)
        found: dict[str, list[tuple[str, torch.nn.Module]]] = {p: [] for p in UNET_PLACES}
        for name, module in unet.named_modules():
            if not name.endswith("attn2") or not _is_cross_attention(module):
                continue
            place = next((p for p in UNET_PLACES if name.startswith(_PLACE_PREFIX[p] + ".")), None)
            if place is None:
                raise ValueError(f"cross-attention module {name!r} is outside down/mid/up blocks")
            found[place].append((name, module))
        layers, offset = [], 0
        for place in UNET_PLACES:
            for place_layer, (name, module) in enumerate(found[place]):
                heads = int(module.heads)
                inner = module.to_q.out_features
                block = ".".join(name.split(".")[:2]) if place != "mid" else "mid_block"
                layers.append(
                    Layer(len(layers), name, place, place_layer, heads, inner // heads, offset, down[block])
                )
                offset += heads
        if not layers:
            raise ValueError("this model has no text cross-attention (attn2) heads; is it a text-to-image UNet?")
        return cls(layers)

    @classmethod
    def from_model(cls, model) -> "HeadIndex":
        """Heads of a denoiser (UNet, PixArt, SD3 or FLUX transformer) or of a pipeline holding one."""
        from .families import family_of

        family = family_of(model)
        return cls(family.layers(family.denoiser(model)))

    @classmethod
    def from_pipeline(cls, pipe) -> "HeadIndex":
        """HeadIndex of a pipeline's denoiser."""
        return cls.from_model(pipe)

    # ------------------------------------------------------------------ container protocol
    def __len__(self) -> int:
        return len(self._heads)

    def __iter__(self) -> Iterator[Head]:
        return iter(self._heads)

    def __getitem__(self, i: int) -> Head:
        return self._heads[i]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HeadIndex) and self.fingerprint == other.fingerprint

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def __repr__(self) -> str:
        per_place = {p: sum(l.num_heads for l in self.layers if l.place == p) for p in PLACES
                     if any(l.place == p for l in self.layers)}
        return f"HeadIndex({len(self)} heads in {len(self.layers)} layers; {per_place})"

    # ------------------------------------------------------------------ names
    @property
    def names(self) -> list[str]:
        """Readable names in canonical order."""
        return [h.name for h in self._heads]

    @property
    def short_names(self) -> list[str]:
        """Compact names (``down2.h3``) in canonical order."""
        return [h.short_name for h in self._heads]

    def to_reference_labels(self) -> list[str]:
        """Labels as the research code writes them: ``down, layer: L, head: h``."""
        return [h.reference_label for h in self._heads]

    def from_reference_label(self, label: str) -> int:
        """Flat index of a reference label such as ``down, layer: 4, head: 3``."""
        m = _REF_LABEL.match(str(label))
        if not m:
            raise ValueError(f"not a reference head label: {label!r} (expected e.g. 'down, layer: 4, head: 3')")
        key = f"{m.group(1)}, layer: {int(m.group(2))}, head: {int(m.group(3))}"
        if key not in self._by_label:
            raise ValueError(f"head label {label!r} does not exist in this model ({self!r})")
        return self._by_label[key]

    def resolve(self, head: int | str) -> int:
        """Flat index of a head given as index, readable name, short name or reference label."""
        if isinstance(head, (int,)) or (hasattr(head, "__index__") and not isinstance(head, str)):
            i = int(head)
            if not 0 <= i < len(self):
                raise ValueError(f"head index {i} out of range: this model has {len(self)} heads (0..{len(self) - 1})")
            return i
        s = str(head).strip()
        if s.isdigit():
            return self.resolve(int(s))
        for table in (self._by_name, self._by_short):
            if s in table:
                return table[s]
        if _REF_LABEL.match(s):
            return self.from_reference_label(s)
        raise ValueError(
            f"unknown head {head!r}: give a flat index, a name like {self._heads[0].name!r}, "
            f"a short name like {self._heads[0].short_name!r} or a reference label"
        )

    def layer_of(self, head: int) -> Layer:
        """The layer that holds flat head ``head``."""
        return self._heads[head].layer

    def layer(self, name: str) -> Layer:
        """Layer by module path."""
        return self._layer_by_name[name]

    def resolutions(self, latent_size: int | tuple[int, int]) -> list[tuple[int, int]]:
        """Per-head query grid size for a latent of the given size."""
        return [h.layer.resolution(latent_size) for h in self._heads]

    # ------------------------------------------------------------------ identity
    def describe(self) -> list[dict]:
        """Plain-data description of the layout (stored in HRV metadata)."""
        return [
            {"name": l.name, "place": l.place, "place_layer": l.place_layer, "heads": l.num_heads,
             "head_dim": l.head_dim, "downsample": l.downsample}
            for l in self.layers
        ]

    @classmethod
    def from_description(cls, layers: list[dict]) -> "HeadIndex":
        """Rebuild a HeadIndex from :meth:`describe` output."""
        out, offset = [], 0
        for i, d in enumerate(layers):
            out.append(Layer(i, d["name"], d["place"], int(d["place_layer"]), int(d["heads"]),
                             int(d.get("head_dim", 0)), offset, int(d.get("downsample", 1))))
            offset += int(d["heads"])
        return cls(out)

    @property
    def fingerprint(self) -> str:
        """Short hash of the layout (layer names and head counts)."""
        payload = json.dumps([(l.name, l.num_heads) for l in self.layers]).encode()
        return hashlib.sha256(payload).hexdigest()[:16]


def _downsample_factors(unet: torch.nn.Module) -> dict[str, int]:
    """Spatial downsampling (relative to the latent) of every down/mid/up block."""
    factors: dict[str, int] = {}
    f = 1
    for i, block in enumerate(getattr(unet, "down_blocks", [])):
        factors[f"down_blocks.{i}"] = f
        if getattr(block, "downsamplers", None):
            f *= 2
    factors["mid_block"] = f
    for i, block in enumerate(getattr(unet, "up_blocks", [])):
        factors[f"up_blocks.{i}"] = f
        if getattr(block, "upsamplers", None):
            f = max(1, f // 2)
    return factors
