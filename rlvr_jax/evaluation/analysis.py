"""Response analysis: self-reflection words and response lengths.

The paper reports that 1-shot RLVR makes responses longer and makes words of
self-reflection ("rethink", "recheck", "recalculate") more frequent. These
are counted per evaluated checkpoint so they can be plotted against step.

A word matches case-insensitively at a word start and may carry a suffix
("recheck" matches "Rechecking", "rechecked"), so one stem covers its forms.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

REFLECTION_WORDS = ("rethink", "recheck", "recalculate")


def _pattern(word: str) -> re.Pattern:
    return re.compile(r"\b" + re.escape(word), re.IGNORECASE)


def reflection_stats(
    responses: Sequence[str], words: Sequence[str] = REFLECTION_WORDS
) -> dict[str, float]:
    """Reflection-word frequencies over a set of responses.

    Args:
      responses: response texts.
      words: word stems to count.

    Returns:
      `reflection/<word>`: mean occurrences per response;
      `reflection/<word>_frac`: fraction of responses containing the word;
      `reflection/any_frac`: fraction containing at least one of `words`.
      All 0 for no responses.
    """
    n = max(len(responses), 1)
    out: dict[str, float] = {}
    has_any = np.zeros(len(responses), bool)
    for word in words:
        counts = np.array([len(_pattern(word).findall(r)) for r in responses], int)
        out[f"reflection/{word}"] = float(counts.sum()) / n
        out[f"reflection/{word}_frac"] = float((counts > 0).sum()) / n
        has_any |= counts > 0
    out["reflection/any_frac"] = float(has_any.sum()) / n
    return out


def length_stats(lengths: Sequence[int], truncated: Sequence[bool]) -> dict[str, float]:
    """Response-length statistics in tokens (EOS included).

    Returns:
      `response_len/mean`, `response_len/median`, `response_len/max`, and
      `response_len/truncated_frac` (fraction that hit the token limit).
    """
    x = np.asarray(lengths, np.float64)
    if x.size == 0:
        return {
            "response_len/mean": 0.0,
            "response_len/median": 0.0,
            "response_len/max": 0.0,
            "response_len/truncated_frac": 0.0,
        }
    return {
        "response_len/mean": float(x.mean()),
        "response_len/median": float(np.median(x)),
        "response_len/max": float(x.max()),
        "response_len/truncated_frac": float(np.mean(np.asarray(truncated, bool))),
    }
