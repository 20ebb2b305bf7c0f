"""A small byte-level BPE CLIPTokenizer where every world word is one token."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

from transformers import CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from .vocab import all_words

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 24


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP-style BPE of one (already byte-mapped) word."""
    parts = list(word[:-1]) + [word[-1] + "</w>"]
    while len(parts) > 1:
        pairs = [(ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(itertools.pairwise(parts))]
        rank, i = min(pairs)
        if rank == 1 << 30:
            break
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return parts


def build_vocab(words: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte alphabet plus the fewest merges that make each word a single token."""
    byte_chars = list(bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars]
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    b2u = bytes_to_unicode()
    for w in words:
        mapped = "".join(b2u[b] for b in w.encode("utf-8"))
        while len(parts := _bpe(mapped, ranks)) > 1:
            pair = (parts[0], parts[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            if pair[0] + pair[1] not in vocab:
                vocab.append(pair[0] + pair[1])
    vocab += [BOS, EOS]
    return {t: i for i, t in enumerate(vocab)}, merges


def build_tokenizer(folder: str | Path, max_length: int = MAX_LENGTH) -> CLIPTokenizer:
    """Write vocab.json/merges.txt, build the CLIPTokenizer, save it to folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab(all_words())
    raw = folder / "_raw"
    raw.mkdir(exist_ok=True)
    (raw / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (raw / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    # positional paths: keyword vocab_file=/merges_file= silently builds a broken tokenizer (transformers 5)
    tok = CLIPTokenizer(str(raw / "vocab.json"), str(raw / "merges.txt"), model_max_length=max_length,
                        pad_token=EOS)
    tok.save_pretrained(str(folder))
    for f in raw.iterdir():
        f.unlink()
    raw.rmdir()
    return CLIPTokenizer.from_pretrained(str(folder))


def check_tokenizer(tok: CLIPTokenizer) -> None:
    """Raise if a world word is not exactly one token."""
    for w in all_words():
        ids = tok(w, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise AssertionError(f"world word {w!r} tokenises to {ids}")
