"""Spelling noise for robustness evaluation (MODELS.md section 6).

Every noise is a plain function `noise(text, level, rng) -> same type as text`,
registered by name in `NOISES`:

  HAT-style, inside words, first and last letter of every word kept:
    swap, replace, delete, hat_mix
  Word level:          all_caps, antspeak, codespell_typos
  BLT-style, per char: char_drop, random_case, char_repeat, upper_case, keyboard

Shared promises (tested in tests/test_noise.py):
- `level` in [0, 1] is the fraction of *eligible units* perturbed. Each noise names
  its unit (interior letter, word, character, ...). Exactly
  k = floor(level * n_eligible + 0.5) units are chosen, uniformly without
  replacement, so the measured fraction is the level up to that rounding.
- Deterministic: `rng` is a numpy Generator or an int seed (`np.random.default_rng`);
  the same seed and the same text give the same output.
- Any input: `str` or `bytes`. Bytes are decoded as UTF-8 with `surrogateescape`,
  perturbed, and re-encoded the same way; a byte that is not valid UTF-8 becomes a lone
  surrogate U+DC80..U+DCFF which no noise treats as eligible, so invalid bytes survive.
  Empty text gives empty text.
- Letters are Unicode letters (`str.isalpha`), so Cyrillic, Greek, etc. are noised
  like Latin. A *word* (for the HAT-style noises, all_caps and codespell_typos) is a
  maximal run of letters and combining marks (category M*, so Devanagari words with
  vowel signs stay whole); every CJK ideograph is a word of its own (as in the HAT
  word splitter), so ideographs have no interior letters.
"""
from __future__ import annotations

import functools
import importlib.resources
import unicodedata
from typing import Callable

import numpy as np

NoiseFn = Callable[[str | bytes, float, "np.random.Generator | int"], str | bytes]

_SURROGATE_LO, _SURROGATE_HI = 0xDC80, 0xDCFF


# ----------------------------------------------------------------------------- helpers

def _is_escaped_byte(ch: str) -> bool:
  return _SURROGATE_LO <= ord(ch) <= _SURROGATE_HI


def _is_cjk_ideograph(ch: str) -> bool:
  cp = ord(ch)
  return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0xF900 <= cp <= 0xFAFF
          or 0x20000 <= cp <= 0x3FFFF)


def _is_word_char(ch: str) -> bool:
  return ch.isalpha() or unicodedata.category(ch)[0] == "M"


def words(text: str) -> list[tuple[int, int]]:
  """Spans [start, end) of the words of `text` (see the module docstring)."""
  spans, start = [], None
  for i, ch in enumerate(text):
    if _is_word_char(ch) and not _is_cjk_ideograph(ch):
      if start is None:
        start = i
      continue
    if start is not None:
      spans.append((start, i))
      start = None
    if _is_cjk_ideograph(ch):
      spans.append((i, i + 1))
  if start is not None:
    spans.append((start, len(text)))
  return spans


def interior_letters(text: str) -> list[list[int]]:
  """Per word, the positions of its letters strictly between its first and last letter."""
  out = []
  for start, end in words(text):
    letters = [i for i in range(start, end) if text[i].isalpha()]
    out.append(letters[1:-1])
  return out


def _num_chosen(level: float, n_eligible: int) -> int:
  return int(np.floor(level * n_eligible + 0.5))


def _choose(level: float, n_eligible: int, rng: np.random.Generator) -> np.ndarray:
  """Sorted indices of the round(level * n_eligible) chosen units."""
  k = _num_chosen(level, n_eligible)
  return np.sort(rng.choice(n_eligible, size=k, replace=False)) if k else np.zeros(0, int)


def _noise(fn: Callable[[str, float, np.random.Generator], str]) -> NoiseFn:
  """Wraps a str -> str noise: checks level, builds the rng, handles bytes and empty text."""

  @functools.wraps(fn)
  def wrapper(text, level, rng):
    if not 0.0 <= level <= 1.0:
      raise ValueError(f"level must lie in [0, 1], got {level}")
    rng = np.random.default_rng(rng)
    if isinstance(text, (bytes, bytearray, memoryview)):
      if not text:
        return b""
      decoded = bytes(text).decode("utf-8", errors="surrogateescape")
      return fn(decoded, level, rng).encode("utf-8", errors="surrogateescape")
    if not isinstance(text, str):
      raise TypeError(f"text must be str or bytes, got {type(text).__name__}")
    return fn(text, level, rng) if text else ""

  return wrapper


@functools.lru_cache(maxsize=4096)
def _replacement_letters(ch: str) -> tuple[str, ...]:
  """Letters that may replace `ch`: same script, same case, never `ch` itself.

  ASCII letters draw from a-z (or A-Z); any other letter from the letters of the same
  script (first word of its Unicode name) and case within +-64 code points, so
  Cyrillic stays Cyrillic and Greek stays Greek; named LETTERs only, no symbols,
  archaic or precomposed (accented) forms. Empty when the script has no such letter
  nearby (the letter is then left as it is).
  """
  if ch.isascii():
    pool = "abcdefghijklmnopqrstuvwxyz"
    pool = pool.upper() if ch.isupper() else pool
    return tuple(c for c in pool if c != ch)
  script = unicodedata.name(ch, "").split(" ")[0]
  out = []
  for cp in range(max(0, ord(ch) - 64), min(0x10FFFF, ord(ch) + 64) + 1):
    cand = chr(cp)
    name = unicodedata.name(cand, "")
    if (cand != ch and cand.isalpha() and not _is_cjk_ideograph(cand)
        and cand.isupper() == ch.isupper() and cand.islower() == ch.islower()
        and name.split(" ")[0] == script and " LETTER " in f" {name} "
        and "SYMBOL" not in name and "ARCHAIC" not in name
        and not unicodedata.decomposition(cand)):
      out.append(cand)
  return tuple(out)


def _random_letter(ch: str, rng: np.random.Generator) -> str:
  pool = _replacement_letters(ch)
  return pool[int(rng.integers(len(pool)))] if pool else ch


def _apply_edits(text: str, edits: dict[int, str]) -> str:
  """Replaces text[i] by edits[i] ("" deletes, longer strings insert)."""
  return "".join(edits.get(i, ch) for i, ch in enumerate(text))


# ----------------------------------------------------------------- HAT-style in-word noise

@_noise
def swap(text: str, level: float, rng: np.random.Generator) -> str:
  """Swaps adjacent interior letters of words (first and last letter of a word kept).

  Unit: a swap slot. A word with m interior letters has floor(m / 2) slots (the most
  disjoint adjacent pairs it can hold; words of >= 4 letters have one). level = the
  fraction of slots used: that many swaps are spread over the words, and within a word
  the chosen disjoint adjacent pairs are uniform. Two equal letters swapped leave the
  text unchanged.
  """
  interiors = interior_letters(text)
  slot_word = np.repeat(np.arange(len(interiors)), [len(m) // 2 for m in interiors])
  chosen = _choose(level, len(slot_word), rng)
  swaps_per_word = np.bincount(slot_word[chosen], minlength=len(interiors))
  chars = list(text)
  for word, num_swaps in enumerate(swaps_per_word):
    if not num_swaps:
      continue
    letters = interiors[word]
    # s disjoint pairs among m items: choose s of (m - s) starts, shift the j-th by j.
    starts = np.sort(rng.choice(len(letters) - num_swaps, size=num_swaps, replace=False))
    for j, start in enumerate(starts):
      # Letter positions of a word need not be adjacent (combining marks between);
      # the pair is two consecutive interior letters.
      a, b = letters[start + j], letters[start + j + 1]
      chars[a], chars[b] = chars[b], chars[a]
  return "".join(chars)


@_noise
def replace(text: str, level: float, rng: np.random.Generator) -> str:
  """Replaces interior letters of words by a random other letter of the same script and case.

  Unit: an interior letter (words of >= 3 letters have some); level = fraction replaced.
  Each chosen letter is changed (unless its script has no other letter of its case).
  """
  positions = [i for word in interior_letters(text) for i in word]
  edits = {positions[c]: _random_letter(text[positions[c]], rng)
           for c in _choose(level, len(positions), rng)}
  return _apply_edits(text, edits)


@_noise
def delete(text: str, level: float, rng: np.random.Generator) -> str:
  """Deletes interior letters of words; first and last letter kept, so no word vanishes.

  Unit: an interior letter (words of >= 3 letters); level = fraction deleted.
  """
  positions = [i for word in interior_letters(text) for i in word]
  return _apply_edits(text, {positions[c]: "" for c in _choose(level, len(positions), rng)})


@_noise
def hat_mix(text: str, level: float, rng: np.random.Generator) -> str:
  """The HAT robustness noise: each chosen interior letter is swapped, replaced or deleted.

  Unit: an interior letter (words of >= 3 letters); level = fraction of them chosen
  (HAT used about 0.1). Each chosen letter draws one of the three operations uniformly.
  A swap exchanges it with the next (else previous) interior letter that no operation
  has touched yet; when there is none (e.g. a 3-letter word) the letter is replaced.
  First and last letters of every word are kept.
  """
  interiors = interior_letters(text)
  positions = [(w, j) for w, word in enumerate(interiors) for j in range(len(word))]
  chars: list[str] = list(text)
  touched: set[int] = set()
  for c in _choose(level, len(positions), rng):
    word, j = positions[c]
    pos = interiors[word][j]
    if pos in touched:  # already moved here by an earlier swap: it is perturbed
      continue
    op = int(rng.integers(3))
    if op == 0:
      neighbours = [interiors[word][n] for n in (j + 1, j - 1) if 0 <= n < len(interiors[word])]
      neighbours = [n for n in neighbours if n not in touched and chars[n] != chars[pos]]
      if neighbours:
        other = neighbours[0]
        chars[pos], chars[other] = chars[other], chars[pos]
        touched.update((pos, other))
        continue
      op = 1
    chars[pos] = _random_letter(chars[pos], rng) if op == 1 else ""
    touched.add(pos)
  return "".join(chars)


# ------------------------------------------------------------------------ word level

@_noise
def all_caps(text: str, level: float, rng: np.random.Generator) -> str:
  """Upper-cases whole words (HAT's all-caps prompt at level 1.0).

  Unit: a word that upper-casing changes; level = fraction of them upper-cased.
  """
  spans = [(s, e) for s, e in words(text) if text[s:e].upper() != text[s:e]]
  edits: dict[int, str] = {}
  for c in _choose(level, len(spans), rng):
    start, end = spans[c]
    edits[start] = text[start:end].upper()
    edits.update({i: "" for i in range(start + 1, end)})
  return _apply_edits(text, edits)


def _space_separated_tokens(text: str) -> list[tuple[int, int]]:
  spans, start = [], None
  for i, ch in enumerate(text):
    if ch.isspace():
      if start is not None:
        spans.append((start, i))
        start = None
    elif start is None:
      start = i
  if start is not None:
    spans.append((start, len(text)))
  return spans


@_noise
def antspeak(text: str, level: float, rng: np.random.Generator) -> str:
  """BLT's AntSpeak: a chosen word is written with a space between its characters.

  Unit: a whitespace-delimited token of >= 2 characters; level = fraction of them
  spelled out ("hello" -> "h e l l o"). Level 1.0 spells out every token.
  """
  spans = [(s, e) for s, e in _space_separated_tokens(text) if e - s >= 2]
  edits: dict[int, str] = {}
  for c in _choose(level, len(spans), rng):
    start, end = spans[c]
    # No space before a combining mark: it stays on its base letter.
    edits.update({i: text[i] + " " for i in range(start, end - 1)
                  if unicodedata.category(text[i + 1])[0] != "M"})
  return _apply_edits(text, edits)


_CODESPELL_LICENSE = "CC BY-SA 3.0"


@functools.lru_cache(maxsize=1)
def codespell_typo_map() -> dict[str, tuple[str, ...]]:
  """Correct word (lower case) -> sorted real-world misspellings, from codespell.

  Read at run time from `codespell_lib/data/dictionary.txt` of the installed codespell
  package (data licensed CC BY-SA 3.0, not copied into this repository). Lines are
  `typo->fix[, fix2, ...]`; a typo is kept for each fix when both are single words of
  letters and they differ other than in case.
  """
  path = importlib.resources.files("codespell_lib") / "data" / "dictionary.txt"
  reverse: dict[str, set[str]] = {}
  for line in path.read_text(encoding="utf-8").splitlines():
    typo, sep, fixes = line.partition("->")
    typo = typo.strip().lower()
    if not sep or not typo.isalpha():
      continue
    for fix in fixes.split(","):
      fix = fix.strip().lower()
      if fix.isalpha() and fix != typo:
        reverse.setdefault(fix, set()).add(typo)
  return {fix: tuple(sorted(typos)) for fix, typos in reverse.items()}


def _case_like(word: str, typo: str) -> str | None:
  """The typo cased like `word` (lower, Title or UPPER); None for mixed case."""
  if word.islower():
    return typo
  if word.isupper():
    return typo.upper()
  if word[0].isupper() and (len(word) == 1 or word[1:].islower()):
    return typo[0].upper() + typo[1:]
  return None


@_noise
def codespell_typos(text: str, level: float, rng: np.random.Generator) -> str:
  """Replaces words by real-world misspellings from codespell's dictionary.

  Data: `codespell_lib/data/dictionary.txt` of the installed codespell package,
  licensed CC BY-SA 3.0 (read at run time, never copied here). Unit: a word whose
  lower-cased form has a known misspelling and whose case is lower, Title or UPPER;
  level = fraction of them replaced by one of their typos (uniform), cased like the word.
  """
  typo_map = codespell_typo_map()
  eligible = [(s, e) for s, e in words(text)
              if text[s:e].lower() in typo_map and _case_like(text[s:e], "x") is not None]
  edits: dict[int, str] = {}
  for c in _choose(level, len(eligible), rng):
    start, end = eligible[c]
    word = text[start:end]
    typos = typo_map[word.lower()]
    edits[start] = _case_like(word, typos[int(rng.integers(len(typos)))])
    edits.update({i: "" for i in range(start + 1, end)})
  return _apply_edits(text, edits)


# --------------------------------------------------------------- BLT-style, per character

def _plain_chars(text: str) -> list[int]:
  """Positions of characters that are neither whitespace nor escaped invalid bytes."""
  return [i for i, ch in enumerate(text) if not ch.isspace() and not _is_escaped_byte(ch)]


@_noise
def char_drop(text: str, level: float, rng: np.random.Generator) -> str:
  """BLT's character drop. Unit: a non-whitespace character; level = fraction dropped."""
  positions = _plain_chars(text)
  return _apply_edits(text, {positions[c]: "" for c in _choose(level, len(positions), rng)})


@_noise
def char_repeat(text: str, level: float, rng: np.random.Generator) -> str:
  """BLT's character repeat. Unit: a non-whitespace character; level = fraction repeated.

  A chosen character is written 2, 3 or 4 times (uniformly).
  """
  positions = _plain_chars(text)
  edits = {positions[c]: text[positions[c]] * int(rng.integers(2, 5))
           for c in _choose(level, len(positions), rng)}
  return _apply_edits(text, edits)


def _cased_positions(text: str, change: Callable[[str], str]) -> list[int]:
  return [i for i, ch in enumerate(text) if ch.isalpha() and change(ch) != ch]


@_noise
def random_case(text: str, level: float, rng: np.random.Generator) -> str:
  """BLT's random case. Unit: a letter that has another case; level = fraction flipped."""
  positions = _cased_positions(text, str.swapcase)
  return _apply_edits(text, {positions[c]: text[positions[c]].swapcase()
                             for c in _choose(level, len(positions), rng)})


@_noise
def upper_case(text: str, level: float, rng: np.random.Generator) -> str:
  """BLT's upper case. Unit: a letter that upper-casing changes; level = fraction
  upper-cased (1.0 = the whole text in capitals, like BLT's UpperCase)."""
  positions = _cased_positions(text, str.upper)
  return _apply_edits(text, {positions[c]: text[positions[c]].upper()
                             for c in _choose(level, len(positions), rng)})


_QWERTY_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")


def _qwerty_neighbours() -> dict[str, str]:
  """Letter -> letters on adjacent keys (same row +-1, row above/below at offsets 0, +-1)."""
  where = {ch: (r, c) for r, row in enumerate(_QWERTY_ROWS) for c, ch in enumerate(row)}
  out = {}
  for ch, (r, c) in where.items():
    near = [other for other, (r2, c2) in where.items()
            if other != ch and abs(r2 - r) <= 1 and (
                (r2 == r and abs(c2 - c) == 1) or (r2 == r - 1 and c2 in (c, c + 1))
                or (r2 == r + 1 and c2 in (c - 1, c)))]
    out[ch] = "".join(sorted(near))
  return out


QWERTY_NEIGHBOURS = _qwerty_neighbours()


@_noise
def keyboard(text: str, level: float, rng: np.random.Generator) -> str:
  """QWERTY slips: a chosen ASCII letter becomes the letter of a neighbouring key.

  Unit: an ASCII letter anywhere in the text (other scripts have no layout here, so
  they are not eligible); level = fraction substituted. Case is kept.
  """
  positions = [i for i, ch in enumerate(text) if ch.isascii() and ch.isalpha()]
  edits = {}
  for c in _choose(level, len(positions), rng):
    ch = text[positions[c]]
    near = QWERTY_NEIGHBOURS[ch.lower()]
    new = near[int(rng.integers(len(near)))]
    edits[positions[c]] = new.upper() if ch.isupper() else new
  return _apply_edits(text, edits)


NOISES: dict[str, NoiseFn] = {
    "swap": swap,
    "replace": replace,
    "delete": delete,
    "hat_mix": hat_mix,
    "all_caps": all_caps,
    "antspeak": antspeak,
    "char_drop": char_drop,
    "random_case": random_case,
    "char_repeat": char_repeat,
    "upper_case": upper_case,
    "codespell_typos": codespell_typos,
    "keyboard": keyboard,
}


def apply_noise(name: str, text: str | bytes, level: float, seed: int = 0) -> str | bytes:
  """NOISES[name](text, level, np.random.default_rng(seed))."""
  if name not in NOISES:
    raise KeyError(f"unknown noise {name!r}; known: {sorted(NOISES)}")
  return NOISES[name](text, level, np.random.default_rng(seed))
