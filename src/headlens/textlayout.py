"""How a prompt becomes the denoiser's text keys: one or more tokenizer segments side by side.

A UNet or PixArt sees one tokenised prompt (CLIP 77 tokens; T5 120/300 tokens with a padding
mask). SD3 sees 77 CLIP positions (CLIP-L and CLIP-G joined feature-wise, so one position each)
followed by 256 T5 positions; FLUX sees its T5 positions only (CLIP is pooled). A
:class:`TextLayout` lists those segments; :meth:`TextLayout.token_map` tokenises a prompt into a
map with the familiar :class:`~headlens.tokens.TokenMap` interface whose positions index the
denoiser's text keys — for several segments a :class:`JointTokenMap`, where a word's positions are
its positions in every segment (SD3: its CLIP and its T5 tokens).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

from .tokens import TokenMap, WordNotFoundError


@dataclass(frozen=True)
class Segment:
    """One tokenizer's block of the denoiser's text keys."""

    encoder: str  # pipeline attribute of the text encoder that reads these ids (for prompt capture)
    tokenizer: object
    offset: int  # first key position of the block
    length: int  # padded length of the block
    masked: bool = False  # padding positions are masked out of attention


@dataclass(frozen=True)
class TextLayout:
    """The tokenizer segments of a pipeline's text keys, in key order."""

    segments: tuple[Segment, ...]
    start_position: int | None = None  # key position of a start token (CLIP BOS), if the keys have one

    @property
    def length(self) -> int:
        """Total number of text keys."""
        return sum(s.length for s in self.segments)

    @property
    def tokenizer(self):
        """The first segment's tokenizer (the one a single-segment map uses)."""
        return self.segments[0].tokenizer

    def token_map(self, prompt: str):
        """The prompt tokenised as the denoiser sees it (a TokenMap, or a JointTokenMap for several segments)."""
        maps = [TokenMap.from_tokenizer(s.tokenizer, prompt, s.length, masked_padding=s.masked) for s in self.segments]
        return maps[0] if len(maps) == 1 else JointTokenMap(tuple(maps), tuple(s.offset for s in self.segments))

    def from_ids(self, rows: Sequence[Sequence[int]]):
        """A map from already tokenised (padded) id rows, one per segment."""
        maps = [token_map_from_ids(s.tokenizer, r, s.masked) for s, r in zip(self.segments, rows)]
        return maps[0] if len(maps) == 1 else JointTokenMap(tuple(maps), tuple(s.offset for s in self.segments))


def token_map_from_ids(tokenizer, ids: Sequence[int], masked_padding: bool = False) -> TokenMap:
    """A :class:`TokenMap` for an already tokenised (padded) prompt, as the text encoder saw it."""
    ids = tuple(int(i) for i in ids)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    start = 1 if ids and bos is not None and ids[0] == bos else 0
    length = len(ids)
    if eos is not None:
        for p in range(start, len(ids)):
            if ids[p] == eos:
                length = p + 1
                break
    end = length - 1 if eos is not None and length and ids[length - 1] == eos else length
    prompt = tokenizer.decode(list(ids[start:end]), skip_special_tokens=True).strip()
    return TokenMap(prompt=prompt, ids=ids, tokens=tuple(tokenizer.convert_ids_to_tokens(list(ids))),
                    bos_id=bos, eos_id=eos, length=length, masked_padding=masked_padding, tokenizer=tokenizer)


@dataclass(frozen=True)
class JointTokenMap:
    """Several segments' token maps side by side; positions are key positions in the joint text sequence."""

    parts: tuple[TokenMap, ...]
    offsets: tuple[int, ...]

    @property
    def prompt(self) -> str:
        """The prompt (as the first segment read it)."""
        return self.parts[0].prompt

    @cached_property
    def ids(self) -> tuple[int, ...]:
        """All segments' padded ids in key order."""
        return tuple(i for p in self.parts for i in p.ids)

    @cached_property
    def tokens(self) -> tuple[str, ...]:
        """All segments' tokens in key order."""
        return tuple(t for p in self.parts for t in p.tokens)

    @property
    def length(self) -> int:
        """Number of text keys (all segments, padding included)."""
        return self.offsets[-1] + len(self.parts[-1].ids)

    @property
    def masked_padding(self) -> bool:
        """False: the joint models (SD3) mask no text position."""
        return any(p.masked_padding for p in self.parts)

    @property
    def bos_id(self) -> int | None:
        """The first segment's start-token id."""
        return self.parts[0].bos_id

    def _shift(self, per_part: Sequence[Sequence[int]]) -> list[int]:
        return [o + p for o, ps in zip(self.offsets, per_part) for p in ps]

    @cached_property
    def word_positions(self) -> list[int]:
        """Key positions of all prompt word tokens in every segment."""
        return self._shift([p.word_positions for p in self.parts])

    @cached_property
    def end_positions(self) -> list[int]:
        """Key positions of every segment's end and (unmasked) padding tokens."""
        return self._shift([p.end_positions for p in self.parts])

    @cached_property
    def valid(self) -> list[bool]:
        """Per key position: True unless masked padding."""
        return [v for p in self.parts for v in p.valid]

    def positions(self, which: str = "words") -> list[int]:
        """Token set by name, as :meth:`TokenMap.positions`."""
        if which == "words":
            return self.word_positions
        if which in ("words+end", "words+padding", "all"):
            return sorted(self.word_positions + self.end_positions)
        if which in ("end", "padding"):
            return self.end_positions
        raise ValueError(f"unknown token set {which!r} (use 'words', 'words+end' or 'end')")

    def find_all(self, word: str, tokenizer=None) -> list[list[int]]:
        """Every occurrence of ``word``: the n-th run of each segment joined (SD3: CLIP and T5 tokens)."""
        runs = [p.find_all(word) for p in self.parts]
        n = max(len(r) for r in runs)
        return [sorted(o + q for o, r in zip(self.offsets, runs) if k < len(r) for q in r[k]) for k in range(n)]

    def find(self, word: str, tokenizer=None, occurrence: int | None = None) -> list[int]:
        """Key positions of ``word`` in every segment (all occurrences, or the n-th, 0-based)."""
        matches = self.find_all(word)
        if not matches:
            self.parts[0].find(word)  # raises the usual one-line error
            raise WordNotFoundError(f"word {word!r} is not in the prompt {self.prompt!r}")
        if occurrence is None:
            return sorted({p for m in matches for p in m})
        if not -len(matches) <= occurrence < len(matches):
            raise WordNotFoundError(
                f"word {word!r} occurs {len(matches)} time(s) in {self.prompt!r}; occurrence {occurrence} does not exist"
            )
        return list(matches[occurrence])
