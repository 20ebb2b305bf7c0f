"""Words ↔ token positions in a tokenised prompt, shared by every headlens feature.

A *word* (one or more whitespace-separated words, e.g. ``"oak tree"``) is found in a prompt by
matching its own token ids as a contiguous run that starts at a word boundary, so multi-token
words, case, punctuation ("apple," / "rose-colored") and repeats are handled, and "fish" does not
match inside "goldfish". Two tokenizer kinds are understood: CLIP's BPE (a word's last piece ends
in ``</w>``) and sentencepiece (T5: a word's first piece starts with ``▁``; no start token, an end
token ``</s>``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

SP_SPACE = "\u2581"  # sentencepiece's word-start marker "▁"


class WordNotFoundError(ValueError):
    """A word was asked for that the prompt does not contain."""


def _is_special(token: str | None) -> bool:
    return token is not None and ((token.startswith("<|") and token.endswith("|>")) or token in ("</s>", "<pad>", "<s>"))


def _word_start(token: str, previous: str | None) -> bool:
    """True if ``token`` begins a new word (CLIP BPE marks word ends with ``</w>``; sentencepiece starts with ▁)."""
    if token.startswith(SP_SPACE):
        return True
    return previous is None or previous.endswith("</w>") or _is_special(previous)


def _word_end(last: str, following: str | None) -> bool:
    """True if a run ending with ``last`` ends a word (next token starts a word, is special, or none follows)."""
    if last.endswith("</w>") or following is None or _is_special(following):
        return True
    return following.startswith(SP_SPACE) or not following[:1].isalnum()


@dataclass(frozen=True)
class TokenMap:
    """A prompt tokenised as the pipeline's text encoder sees it (padded to max length)."""

    prompt: str
    ids: tuple[int, ...]  # full padded sequence, start token first
    tokens: tuple[str, ...]
    bos_id: int | None
    eos_id: int | None
    length: int  # number of tokens before padding, start and end token included
    masked_padding: bool = False  # padding positions are masked out of attention (PixArt's T5 mask)
    tokenizer: object = field(default=None, compare=False, repr=False)  # the tokenizer that made the map

    @classmethod
    def from_tokenizer(cls, tokenizer, prompt: str, max_length: int | None = None,
                       masked_padding: bool = False) -> "TokenMap":
        """Tokenise ``prompt`` exactly as a diffusers pipeline does (padding to max length, truncation)."""
        max_length = max_length or tokenizer.model_max_length
        enc = tokenizer(prompt, padding="max_length", max_length=max_length, truncation=True)
        ids = tuple(int(i) for i in enc["input_ids"])
        unpadded = tokenizer(prompt, truncation=True, max_length=max_length)["input_ids"]
        return cls(
            prompt=prompt, ids=ids, tokens=tuple(tokenizer.convert_ids_to_tokens(list(ids))),
            bos_id=tokenizer.bos_token_id, eos_id=tokenizer.eos_token_id, length=len(unpadded),
            masked_padding=masked_padding, tokenizer=tokenizer,
        )

    @cached_property
    def word_positions(self) -> list[int]:
        """Positions of all prompt word tokens (no start, end or padding token)."""
        start = 1 if self.bos_id is not None and self.ids and self.ids[0] == self.bos_id else 0
        end = self.length - 1 if self.eos_id is not None and self.ids[self.length - 1] == self.eos_id else self.length
        return list(range(start, end))

    @cached_property
    def end_positions(self) -> list[int]:
        """Positions of the end token and every padding token after the prompt (masked padding left out)."""
        first = self.word_positions[-1] + 1 if self.word_positions else (1 if self.bos_id is not None else 0)
        return list(range(first, self.length if self.masked_padding else len(self.ids)))

    @cached_property
    def valid(self) -> list[bool]:
        """Per position: True unless it is padding that the attention mask removes."""
        return [not self.masked_padding or p < self.length for p in range(len(self.ids))]

    def positions(self, which: str = "words") -> list[int]:
        """Token set by name: ``words`` (reference), ``words+end`` (also end/padding), ``end``."""
        if which == "words":
            return self.word_positions
        if which in ("words+end", "words+padding", "all"):
            return self.word_positions + self.end_positions
        if which in ("end", "padding"):
            return self.end_positions
        raise ValueError(f"unknown token set {which!r} (use 'words', 'words+end' or 'end')")

    def find(self, word: str, tokenizer=None, occurrence: int | None = None) -> list[int]:
        """Token positions of ``word`` in the prompt (all occurrences, or only the n-th, 0-based)."""
        matches = self.find_all(word, tokenizer)
        if not matches:
            shown = " ".join(self.tokens[p].replace("</w>", "").replace(SP_SPACE, "") for p in self.word_positions)
            raise WordNotFoundError(
                f"word {word!r} is not in the prompt {self.prompt!r} (its tokens: {shown}); "
                "give a word exactly as it appears in the prompt"
            )
        if occurrence is None:
            return [p for m in matches for p in m]
        if not -len(matches) <= occurrence < len(matches):
            raise WordNotFoundError(
                f"word {word!r} occurs {len(matches)} time(s) in {self.prompt!r}; occurrence {occurrence} does not exist"
            )
        return list(matches[occurrence])

    def find_all(self, word: str, tokenizer=None) -> list[list[int]]:
        """Every occurrence of ``word`` as a list of token-position runs (the map's own tokenizer wins)."""
        tokenizer = self.tokenizer if self.tokenizer is not None else tokenizer
        target = word_token_ids(tokenizer, word)
        if not target:
            raise WordNotFoundError(f"word {word!r} has no tokens; give a non-empty word")
        n, found = len(target), []
        lo, hi = self.word_positions[0] if self.word_positions else 1, self.length
        for s in range(lo, hi - n + 1):
            if tuple(self.ids[s : s + n]) != target:
                continue
            prev = self.tokens[s - 1] if s > 0 else None
            nxt = self.tokens[s + n] if s + n < len(self.tokens) else None
            if _word_start(self.tokens[s], prev) and _word_end(self.tokens[s + n - 1], nxt):
                found.append(list(range(s, s + n)))
        return found


def word_token_ids(tokenizer, word: str) -> tuple[int, ...]:
    """Token ids of a word on its own (no start/end tokens)."""
    ids = tokenizer(word.strip(), add_special_tokens=False)["input_ids"]
    return tuple(int(i) for i in ids)


def word_positions_in_prompt(tokenizer, prompt: str, word: str, occurrence: int | None = None) -> list[int]:
    """Shortcut: token positions of ``word`` in ``prompt`` for this tokenizer."""
    return TokenMap.from_tokenizer(tokenizer, prompt).find(word, tokenizer, occurrence)
