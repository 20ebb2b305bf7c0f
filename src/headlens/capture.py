"""Vote capture: the attention plugin that lets every head vote for a concept at every step (spec §3).

Vectorised over heads and over the images of a batch; queries of the conditional half only;
integer counts accumulate in a ``[timesteps, heads, concepts]`` tensor on the model's device.
No attention maps are stored and nothing is copied to the host during generation.

Where a concept-word's keys come from depends on the model family (:mod:`headlens.families`):
a cross-attention model (UNet, PixArt) projects the word's text embedding with the layer's
``to_k``; a joint-attention model (SD3, FLUX) sends the words along as probe tokens and the
processor hands this layer's probe keys to the capture (``concept_keys="probes"``, or
``"text-only"``: each word attends to itself only, not to the image).

Inside a batch each call only records its winners (one copy into a ``[timesteps, heads, images]``
buffer); they are turned into counts once per batch (:meth:`VoteCapture.finish_batch`, also run
when ``votes`` is read). That keeps the per-call work to the scores themselves and gives the
per-image counts (``image_votes``) for free.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from .attention import AttentionCall, Plugin
from .concepts import ConceptSet
from .heads import HeadIndex, Layer
from .votes import concept_scores, votes_from_scores

VARIANTS = ("reference", "all-words")
CONCEPT_KEYS = ("probes", "text-only")


def derived_seed(seed: int, index: int, purpose: str) -> int:
    """A 63-bit seed derived from (seed, prompt index, purpose): independent of batching and sharding."""
    digest = hashlib.sha256(f"{int(seed)}:{int(index)}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@dataclass
class ConceptTokens:
    """Every concept-word's token embeddings, flattened into one table."""

    table: torch.Tensor  # [T_all + 1, D]: all word tokens, then the start token
    word_tokens: torch.Tensor  # [W, S_max] indices into table, -1 padded
    word_length: torch.Tensor  # [W]
    word_concept: torch.Tensor  # [W]
    concept_first_word: torch.Tensor  # [C]
    concept_num_words: torch.Tensor  # [C]
    slot_width: torch.Tensor  # [C]: longest word of each concept, in tokens
    has_start: bool = True  # the last row is a real start token (CLIP BOS); T5-only models have none
    prompt_table: torch.Tensor | None = None  # joint attention: the rows in prompt-embedding space (probe inputs)

    @property
    def start_index(self) -> int:
        """Row of the start token in ``table``."""
        return self.table.shape[0] - 1

    def groups(self) -> torch.Tensor:
        """Per table row: its word (the start token is a group of its own)."""
        g = torch.full((self.table.shape[0],), int(self.word_tokens.shape[0]), dtype=torch.long)
        for w in range(self.word_tokens.shape[0]):
            g[self.word_tokens[w, : int(self.word_length[w])]] = w
        return g


def encode_concept_words(pipe, concepts: ConceptSet, device=None) -> ConceptTokens:
    """Encode each concept-word on its own (spec §2) and keep only its own token embeddings.

    The positions kept are the word's own tokens in the denoiser's text keys (SD3: its CLIP and its
    T5 tokens; PixArt and FLUX: its T5 tokens). The start-token row is the CLIP start token where the
    keys have one; for T5-only models it is a zero row that never takes part (``has_start`` False).
    """
    from .families import family_of

    family = family_of(pipe)
    layout = family.text_layout(pipe)
    device = device or family.denoiser(pipe).device
    rows, word_tokens, lengths, owners, firsts, counts = [], [], [], [], [], []
    start = None
    for c, words in enumerate(concepts.words):
        firsts.append(len(lengths))
        counts.append(len(words))
        for word in words:
            emb = family.encode_text(pipe, word, device)  # [L, D]
            pos = layout.token_map(word).word_positions
            if not pos:
                raise ValueError(f"concept-word {word!r} of {concepts.names[c]!r} has no tokens")
            if start is None:
                start = emb[layout.start_position] if layout.start_position is not None else torch.zeros_like(emb[0])
            word_tokens.append([sum(len(r) for r in rows) + i for i in range(len(pos))])
            rows.append(emb[pos])
            lengths.append(len(pos))
            owners.append(c)
    prompt_table = torch.cat(rows + [start[None]], dim=0)
    table = prompt_table if family.joint else family.key_inputs(pipe, prompt_table)
    s_max = max(lengths)
    padded = torch.full((len(word_tokens), s_max), -1, dtype=torch.long)
    for w, toks in enumerate(word_tokens):
        padded[w, : len(toks)] = torch.tensor(toks)
    length = torch.tensor(lengths)
    owner = torch.tensor(owners)
    slot = torch.stack([length[owner == c].max() for c in range(len(concepts))])
    return ConceptTokens(table, padded, length, owner, torch.tensor(firsts), torch.tensor(counts), slot,
                         has_start=layout.start_position is not None,
                         prompt_table=prompt_table if family.joint else None)


@torch.no_grad()
def encode_text(pipe, text: str | list[str], device=None) -> torch.Tensor:
    """Prompt embeddings exactly as the pipeline's ``encode_prompt`` makes them (SDXL: both encoders)."""
    from .families import denoiser_of

    device = device or denoiser_of(pipe).device
    out = pipe.encode_prompt(prompt=text, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False)
    return out[0]


class VoteCapture(Plugin):
    """Per-head concept votes for every cross-attention call of a generation."""

    needs_query = True

    def __init__(self, tokens: ConceptTokens, heads: HeadIndex, num_concepts: int, *, variant: str = "reference",
                 start_token: bool = True, device=None, per_image: bool = False, concept_keys: str = "probes"):
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}: use one of {', '.join(VARIANTS)}")
        if concept_keys not in CONCEPT_KEYS:
            raise ValueError(f"unknown concept_keys {concept_keys!r}: use one of {', '.join(CONCEPT_KEYS)}")
        self.tokens = tokens
        self.heads = heads
        self.num_concepts = num_concepts
        self.variant = variant
        self.start_token = start_token and (tokens is None or tokens.has_start)
        self.probes = None  # joint attention: the probe tokens the session sends along
        if tokens is not None and tokens.prompt_table is not None:
            from .families.joint import ProbeSet

            self.probes = ProbeSet(tokens.prompt_table, tokens.groups(),
                                   "image" if concept_keys == "probes" else "text-only")
        self.device = device
        self.per_image = per_image  # also count votes per image of the batch (``image_votes``)
        self.image_votes: torch.Tensor | None = None  # [B, H, C] int64: this batch's images, summed over steps
        self._votes: torch.Tensor | None = None  # [T, H, C] int64 on device
        self._keys: dict[int, torch.Tensor] = {}  # layer index -> [heads, T_all + 1, d]
        self._plan: dict | None = None
        self._all_weights: torch.Tensor | None = None
        self._winners: torch.Tensor | None = None  # [T, H, B] winning concept per (step, head, image), -1 = none
        self._filled: set[tuple[int, int]] = set()  # (step, layer) slots of _winners written in this batch
        self._padded: list[list[bool]] | None = None  # [T][L]: does any chosen word leave padding slots?

    @property
    def votes(self) -> torch.Tensor | None:
        """Vote counts ``[timesteps, heads, concepts]`` (int64, on the capture's device)."""
        self._flush()
        return self._votes

    @votes.setter
    def votes(self, value: torch.Tensor | None) -> None:
        self._flush()
        self._votes = value

    # ------------------------------------------------------------------ per-batch word draws
    def begin_batch(self, prompt_indices: list[int], seed: int, num_steps: int) -> None:
        """Draw the concept-words for every (step, layer, image) of this batch from per-prompt generators."""
        self._flush()
        self._ensure_votes(num_steps)
        self._winners = torch.full((num_steps, len(self.heads), len(prompt_indices)), -1, dtype=torch.long,
                                   device=self.device)
        self._filled = set()
        if self.per_image:
            self.image_votes = torch.zeros((len(prompt_indices), len(self.heads), self.num_concepts),
                                           dtype=torch.int64, device=self.device)
        if self.variant != "reference":
            self._plan = None
            return
        t = self.tokens
        layers, concepts = len(self.heads.layers), self.num_concepts
        draws = torch.stack([
            torch.rand(num_steps, layers, concepts, generator=torch.Generator().manual_seed(derived_seed(seed, i, "words")))
            for i in prompt_indices
        ], dim=2)  # [T, L, B, C]
        choice = (draws * t.concept_num_words).floor().long().clamp_max(t.concept_num_words - 1)
        word = t.concept_first_word + choice  # global word id, [T, L, B, C]
        parts_idx, parts_inv, slot_concept = [], [], [-1]
        for c in range(concepts):
            width = int(t.slot_width[c])
            idx = t.word_tokens[word[..., c]][..., :width]  # [T, L, B, width]
            n = t.word_length[word[..., c]].unsqueeze(-1).float()
            parts_idx.append(idx)
            parts_inv.append((idx >= 0).float() / n)
            slot_concept += [c] * width
        start = torch.full((*word.shape[:3], 1), t.start_index if self.start_token else -1, dtype=torch.long)
        idx = torch.cat([start] + parts_idx, dim=-1)  # [T, L, B, M]
        inv = torch.cat([torch.zeros(start.shape)] + parts_inv, dim=-1)  # [T, L, B, M]
        onehot = torch.zeros(len(slot_concept), concepts)
        for m, c in enumerate(slot_concept):
            if c >= 0:
                onehot[m, c] = 1.0
        device = self.device
        mask = idx >= 0
        # (step, layer) pairs where every slot holds a real token: the softmax needs no mask there
        self._padded = (~mask).flatten(2).any(-1).tolist()
        self._plan = {"index": idx.clamp_min(0).to(device), "mask": mask.to(device),
                      "inv_len": inv.to(device), "onehot": onehot.to(device)}

    def finish_batch(self) -> None:
        """Turn this batch's recorded winners into counts (``votes`` and ``image_votes``)."""
        self._flush()

    def _flush(self) -> None:
        w = self._winners
        if w is None or not self._filled:
            return
        self._filled = set()
        c = self.num_concepts
        shifted = w + 1  # -1 (no vote) lands in column 0, which is dropped
        counts = torch.zeros((*w.shape[:2], c + 1), dtype=torch.int64, device=w.device)
        counts.scatter_add_(2, shifted, torch.ones_like(shifted))
        t = w.shape[0]
        self._ensure_votes(t)
        self._votes[:t] += counts[..., 1:]
        if self.per_image and self.image_votes is not None:
            per = torch.zeros((w.shape[2], w.shape[1], c + 1), dtype=torch.int64, device=w.device)
            per.scatter_add_(2, shifted.permute(2, 1, 0), torch.ones_like(shifted).permute(2, 1, 0))
            self.image_votes += per[..., 1:]
        w.fill_(-1)

    def _ensure_votes(self, num_steps: int) -> None:
        shape = (num_steps, len(self.heads), self.num_concepts)
        if self._votes is None:
            self._votes = torch.zeros(shape, dtype=torch.int64, device=self.device)
        elif self._votes.shape[0] < num_steps:
            grown = torch.zeros(shape, dtype=torch.int64, device=self.device)
            grown[: self._votes.shape[0]] = self._votes
            self._votes = grown

    # ------------------------------------------------------------------ attention callback
    def _layer_keys(self, attn, layer: Layer) -> torch.Tensor:
        keys = self._keys.get(layer.index)
        if keys is None:
            table = self.tokens.table.to(device=attn.to_k.weight.device, dtype=attn.to_k.weight.dtype)
            with torch.no_grad():
                enc = table[None]
                if attn.norm_cross:
                    enc = attn.norm_encoder_hidden_states(enc)
                k = attn.to_k(enc)  # [1, N, inner]
                k = k.view(1, -1, attn.heads, k.shape[-1] // attn.heads).transpose(1, 2)
                if attn.norm_k is not None:
                    k = attn.norm_k(k)
            keys = k[0]  # [heads, N, d]
            self._keys[layer.index] = keys
        return keys

    def on_query(self, call: AttentionCall, attn, query: torch.Tensor) -> None:
        layer = call.layer
        scale = call.scale if call.scale is not None else attn.scale
        with torch.no_grad():
            q = query[call.cond]  # [B, h, P, d]
            if self.probes is not None:
                if call.concept_keys is None:
                    raise RuntimeError("the probe tokens did not reach this layer; run generation inside the Session")
                keys = call.concept_keys[call.cond]  # [B, h, N, d]: this call's probe keys, per image
            else:
                keys = self._layer_keys(attn, layer)  # [h, N, d]: the same for every image
            if self.variant == "reference":
                plan = self._plan
                if plan is None:
                    raise RuntimeError("VoteCapture.begin_batch() was not called before generation")
                step = min(call.step, plan["index"].shape[0] - 1)
                index = plan["index"][step, layer.index]  # [B, M]
                if keys.ndim == 4:
                    rows = torch.arange(keys.shape[0], device=keys.device)[:, None]
                    k = keys.permute(0, 2, 1, 3)[rows, index].permute(0, 2, 1, 3)  # [B, h, M, d]
                else:
                    k = keys[:, index].permute(1, 0, 2, 3)  # [B, h, M, d]
                # votes.concept_scores, op for op (bmm is what its einsum runs), with the per-step weights
                # computed once for all layers and a masked_fill only where a slot is padding
                logits = torch.matmul(q, k.transpose(-1, -2)).float() * scale  # [B, h, P, M]
                if self._padded[step][layer.index]:
                    logits = logits.masked_fill(~plan["mask"][step, layer.index][:, None, None, :], float("-inf"))
                probs = logits.softmax(dim=-1).mean(dim=2)  # [B, h, M]
                scores = torch.bmm(probs, self._step_weights(step)[layer.index].to(probs.dtype))  # [B, h, C]
            else:
                if self._all_weights is None:
                    self._all_weights = self._all_words_weights().to(q.device)
                k = keys if self.start_token else keys[..., :-1, :]
                w = self._all_weights if self.start_token else self._all_weights[:-1]
                if k.ndim == 3:
                    k = k.unsqueeze(0).expand(q.shape[0], -1, -1, -1)
                scores = concept_scores(q, k, w, scale)
            self._record(call.step, layer, scores)

    def _step_weights(self, step: int) -> torch.Tensor:
        """``[L, B, M, C]`` token weights (1/word length on a concept's slots) of one step, cached per step."""
        cache = self._plan.setdefault("weights", {})
        w = cache.get(step)
        if w is None:
            cache.clear()  # steps come in order: keep one
            w = cache[step] = self._plan["inv_len"][step].unsqueeze(-1) * self._plan["onehot"]
        return w

    def _record(self, step: int, layer: Layer, scores: torch.Tensor) -> None:
        """Store the winners of one call (counted at the end of the batch)."""
        w = self._winners
        heads = slice(layer.head_offset, layer.head_offset + layer.num_heads)
        key = (step, layer.index)
        if w is not None and step < w.shape[0] and scores.shape[0] == w.shape[2] and key not in self._filled:
            self._filled.add(key)
            w[step, heads] = scores.argmax(dim=-1).T  # [h, B]
            return
        # no batch plan, or the same (step, layer) seen twice: count right away
        self._flush()
        self._ensure_votes(step + 1)
        self._votes[step, heads] += votes_from_scores(scores)  # [h, C]
        if self.per_image and self.image_votes is not None and self.image_votes.shape[0] == scores.shape[0]:
            self.image_votes[:, heads].scatter_add_(
                2, scores.argmax(dim=-1)[..., None], torch.ones(scores.shape[:2] + (1,), dtype=torch.int64,
                                                                 device=scores.device))

    def _all_words_weights(self) -> torch.Tensor:
        """All-words variant: each token weighs 1/(tokens of its word × words of its concept)."""
        t = self.tokens
        w = torch.zeros(t.table.shape[0], self.num_concepts)
        for word in range(t.word_tokens.shape[0]):
            c = int(t.word_concept[word])
            n = int(t.word_length[word])
            for tok in t.word_tokens[word, :n]:
                w[int(tok), c] = 1.0 / (n * int(t.concept_num_words[c]))
        return w
