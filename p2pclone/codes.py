"""Pairing codes: making them, and how hard they are to guess (docs/security.md).

A code is a number and words from the 2048-word BIP-39 English list
(``p2pclone/wordlist.txt``): ``7-guitar-remind``.  The number (the *nameplate*) is
announced over mDNS so that a sender finds its receiver, so an attacker on the LAN
knows it: only the words are secret, 11 bits each.  SPAKE2 gives an attacker one
guess per pairing, so what matters is how many pairings a run allows:

* a unicast receiver pairs once per run: 1 guess in 2048^2 (about 4.2 million) with
  the two words p2pclone makes;
* a multicast sender pairs with every receiver, and with each one coming back, so it
  allows some failed pairings (mistyped codes in the lab) -- but never more than keep
  an attacker's chance per run at or below :data:`MAX_CHANCE`: :func:`guesses_allowed`.
  Codes p2pclone makes for a group have three words (2048^3, about 8.6 billion).
"""

from __future__ import annotations

import math
import secrets
from functools import cache
from importlib import resources

#: an attacker's chance of pairing per run, at most (issue 23: one in a million)
MAX_CHANCE = 1e-6
#: words in the codes p2pclone makes: for one receiver, and for a group
WORDS_ONE = 2
WORDS_GROUP = 3
#: the secret in a word the list does not hold (typed by a person): a guessable word
#: is worth little, so a character counts as two bits
BITS_PER_CHARACTER = 2.0


@cache
def wordlist() -> tuple[str, ...]:
    return tuple(resources.files("p2pclone").joinpath("wordlist.txt").read_text().split())


def generate(words: int = WORDS_ONE) -> str:
    """A new code: a nameplate (1-99) and ``words`` random words."""
    chosen = [secrets.choice(wordlist()) for _ in range(words)]
    return "-".join([str(secrets.randbelow(99) + 1), *chosen])


def secret_bits(code: str) -> float:
    """How many bits of ``code`` an attacker who knows its nameplate must guess: 11 per
    word of the list, BITS_PER_CHARACTER per character of any other word."""
    tokens = code.strip().lower().replace("-", " ").split()
    if tokens and tokens[0].isdigit():
        tokens = tokens[1:]  # the nameplate is announced: no secret
    known = frozenset(wordlist())
    return sum(math.log2(len(known)) if t in known else BITS_PER_CHARACTER * len(t) for t in tokens)


def guesses_allowed(code: str, wanted: int) -> int:
    """Failed pairings a run with ``code`` may allow: ``wanted`` (what the run would
    like, for mistyped codes), at most as many as keep an attacker's chance per run at
    or below MAX_CHANCE, and at least 1 (a first failed pairing cannot be prevented)."""
    safe = math.floor(2 ** secret_bits(code) * MAX_CHANCE)
    return max(1, min(wanted, safe))


__all__ = [
    "MAX_CHANCE",
    "WORDS_GROUP",
    "WORDS_ONE",
    "generate",
    "guesses_allowed",
    "secret_bits",
    "wordlist",
]
