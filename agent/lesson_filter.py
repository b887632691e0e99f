"""Which LLM lessons are worth recording: none that restate the prompt or repeat themselves.

A small model asked "why did the winners win" often copies a line of the results back
(`1. seed-wanda [wanda] perplexity 58.03`) or loops (`removing duplicates is not possible;
remove duplicates is not possible; ...`). Such a reply says nothing the run did not
already know, so it is dropped, with the reason traced. Overlap is measured on word
token sets (Jaccard, and how much of the lesson one prompt line contains) and on the
lesson's own word trigrams; words are lower-cased and crudely stemmed, so "removing"
and "remove" count as one.
"""

from __future__ import annotations

import re
from typing import Iterable, Optional

_TOKEN = re.compile(r"[a-z_][a-z0-9_]*|\d+(?:\.\d+)?")
_CLAUSE = re.compile(r"[;\n]|[.,!?](?:\s|$)")
NEAR_DUPLICATE = 0.6        # Jaccard of token sets at or above which two texts say the same thing
CONTAINED = 0.8             # share of the lesson's tokens one prompt line holds: an echo
MIN_WORDS = 4               # distinct content words (3+ letters) a lesson needs
MIN_DISTINCT_TRIGRAMS = 0.75


def tokens(text: str) -> list[str]:
    return [_stem(t) for t in _TOKEN.findall(text.lower())]


def _stem(word: str) -> str:
    for suffix in ("ing", "es", "ed", "s", "e"):
        if len(word) > len(suffix) + 2 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def repeats_itself(lesson: str) -> bool:
    """Two clauses of the lesson say the same, or its word trigrams mostly recur."""
    clauses = [set(tokens(c)) for c in _CLAUSE.split(lesson) if len(tokens(c)) >= 2]
    if any(jaccard(a, b) >= NEAR_DUPLICATE for i, a in enumerate(clauses) for b in clauses[i + 1:]):
        return True
    words = tokens(lesson)
    trigrams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
    return len(trigrams) >= 6 and len(set(trigrams)) / len(trigrams) < MIN_DISTINCT_TRIGRAMS


def echoes(lesson: str, lines: Iterable[str]) -> bool:
    """The lesson is (nearly) one of `lines`, or one line holds almost all of its words."""
    mine = set(tokens(lesson))
    for line in lines:
        theirs = set(tokens(line))
        if theirs and (jaccard(mine, theirs) >= NEAR_DUPLICATE or len(mine & theirs) >= CONTAINED * len(mine)):
            return True
    return False


def rejection(lesson: str, *, prompt: str, earlier: Iterable[str]) -> Optional[str]:
    """Why `lesson` is not worth recording (it restates `prompt`, repeats an `earlier` lesson or
    itself, or says too little), or None when it may be recorded."""
    if len({t for t in tokens(lesson) if t.isalpha() and len(t) > 2}) < MIN_WORDS:
        return "too short to say anything"
    if repeats_itself(lesson):
        return "repeats itself"
    if echoes(lesson, [ln for ln in prompt.splitlines() if ln.strip()]):
        return "restates the prompt"
    if echoes(lesson, earlier):
        return "repeats an earlier lesson"
    return None
