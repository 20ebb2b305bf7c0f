"""What an ordered weakening run showed, in words: one verdict from its areas and their 95% CIs.

Used by `headlens weaken`, `headlens demo`, the curves plot, the HTML report and the world
validation report, so every place that judges a weakening curve judges it the same way.

The verdict rests on the random control: the HRV's top heads are *validated* only when weakening
them hurts more than weakening random heads (random − MoRHF > 0, CI above 0). LeRHF − MoRHF > 0
alone is not enough (the bottom heads may simply be the least useful heads of any ranking).
"""

from __future__ import annotations

from collections.abc import Mapping

# The keys of one token set's areas (as in the world report's report.json).
LERHF_MORHF, RANDOM_MORHF, LERHF_RANDOM = "area_lerhf_morhf", "area_random_morhf", "area_lerhf_random"


def _bounds(ci) -> tuple[float | None, float | None]:
    if ci is None:
        return None, None
    if isinstance(ci, Mapping):
        return ci.get("low"), ci.get("high")
    return getattr(ci, "low", None), getattr(ci, "high", None)


def sign(ci) -> int:
    """+1 when the 95% CI lies above 0, −1 below 0, 0 when it contains 0 (or is missing)."""
    low, high = _bounds(ci)
    if low is None or high is None:
        return 0
    return 1 if low > 0 else (-1 if high < 0 else 0)


def weakening_verdict(tokens: Mapping[str, Mapping[str, object]]) -> str:
    """One sentence judging a concept's weakening curves from the areas of each token set.

    ``tokens``: token set → {``area_lerhf_morhf``, ``area_random_morhf``, ``area_lerhf_random``}, each a
    CI (a dict with ``low``/``high`` or an object with ``.low``/``.high``); the random ones may be missing.
    """
    if not tokens:
        raise ValueError("no areas to judge; give at least one token set")
    inverted = [tok for tok, t in tokens.items() if sign(t.get(LERHF_MORHF)) < 0]
    if all(t.get(RANDOM_MORHF) is None for t in tokens.values()):
        signs = [sign(t.get(LERHF_MORHF)) for t in tokens.values()]
        if all(x > 0 for x in signs):
            v = "top HRV heads matter more than bottom heads (no random control, so not validated against random heads)"
        elif any(x < 0 for x in signs):
            v = "bottom HRV heads matter *more* than top heads (inverted ranking)"
        else:
            v = "no difference between top and bottom heads at this n"
        return v
    signs = [sign(t.get(RANDOM_MORHF)) for t in tokens.values()]
    lows = [sign(t.get(LERHF_RANDOM)) for t in tokens.values()]
    if all(x > 0 for x in signs):
        v = "top HRV heads matter more than random heads (validated by weakening)"
    elif any(x < 0 for x in signs):
        v = "top HRV heads matter *less* than random heads (contradicted)"
    elif any(x > 0 for x in lows):
        v = "top heads no better than random, but bottom HRV heads are safer than random (partial)"
    else:
        v = "no difference from random heads at this n"
    if inverted:
        v += f"; bottom heads hurt more than top heads with `{'`, `'.join(inverted)}` (LeRHF − MoRHF < 0)"
    return v


def short_verdict(tokens: Mapping[str, Mapping[str, object]]) -> str:
    """One word for tables and titles: validated, contradicted, partial, not shown, inverted, …"""
    v = weakening_verdict(tokens)
    for key, word in (("(validated", "validated"), ("(contradicted", "contradicted"), ("(partial", "partial"),
                      ("no random control", "top > bottom (no random control)"), ("inverted ranking", "inverted"),
                      ("no difference", "not shown")):
        if key in v:
            return word
    return v


def format_ci(value: float, low: float, high: float, digits: int = 2) -> str:
    """'+0.32 [0.19, 0.44]': signed value and its 95% CI with one precision."""
    return f"{value:+.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


__all__ = ["LERHF_MORHF", "LERHF_RANDOM", "RANDOM_MORHF", "format_ci", "short_verdict", "sign", "weakening_verdict"]


def ranking_verdict(rho: float, p: float | None) -> str:
    """Single-head effects against the HRV ranking, in words: Spearman ρ and its two-sided permutation p.

    A ranking *predicts* the effects only when ρ > 0 and p < 0.05; a significant negative ρ is the opposite
    finding (the HRV's top heads have the smallest effects) and is said so, not folded into "no relation"."""
    if p is None or p != p or p >= 0.05:
        return "not beyond a random ranking"
    if rho > 0:
        return "beyond a random ranking"
    return "inverted: the HRV's top heads have the smaller effects, beyond a random ranking"
