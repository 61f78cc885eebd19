"""The HAT word splitter: bytes -> words (written for this project from the rules in
MODELS.md section 3; no published splitter code was used).

Input is arbitrary bytes. The bytes are decoded as UTF-8 with 'surrogateescape' (each
invalid byte becomes one lone surrogate U+DC80..U+DCFF), one compiled `regex` pattern
cuts the text into raw words, the words are encoded back (losslessly), and a cheap
post-pass cuts words longer than `max_word_size` bytes. `b"".join(split(x)) == x`.

Rules (c = a character; "letter" = \\p{L}, \\p{M} or \\p{N} that is not CJK):
  1. Invalid UTF-8: every invalid byte is a word by itself.
  2. CJK: every character of the scripts Han, Hiragana, Katakana, Hangul and Bopomofo
     (Unicode Script property; main blocks: U+2E80-2FDF radicals, U+3005-3007/3021-3029
     ideographic marks, U+3041-30FF kana, U+3100-312F/31A0-31BF Bopomofo, U+1100-11FF,
     U+3131-318E, U+A960-A97F, U+AC00-D7AF Hangul, U+3400-4DBF, U+4E00-9FFF,
     U+F900-FAFF, U+FF66-FF9F, U+FFA0-FFDC, U+20000-3134F) is a word by itself.
  3. Punctuation, symbols, emoji, controls (everything that is not a letter, CJK,
     whitespace or invalid): one character per word, so there is a cut before and after
     each one. Emoji sequences (ZWJ, variation selectors, skin tones) are cut per
     code point.
  4. Letters/digits/marks form one word, cut at camelCase transitions:
     lower -> Upper (before U when the previous character is \\p{Ll}: "camel|Case"), and
     ACRONYMWord (before the last capital of a capital run when an ASCII lowercase
     letter a-z follows it: "HTTP|Server", "ÉCOLE|Normale"; a non-ASCII lowercase
     follower does not cut, "AAß" stays whole: its first byte would leave the cut
     undecided together with the incomplete character, see P3). Digits and caseless letters never cause a cut ("utf8Decode",
     "x86" and "3D" stay whole).
  5. Whitespace (\\p{White_Space}: space, tab, newlines, NBSP, U+3000, ...): a single
     U+0020 SPACE that starts a word (i.e. directly follows a non-whitespace character or
     the start of the text) and is directly followed by a non-whitespace, valid character
     is attached to the word that follows it (" word", " (", " 中"). Every other run of
     whitespace is a word by itself, and the word after such a run has no leading space:
     "a  b" -> "a", "  ", "b"; "a\\n b" -> "a", "\\n ", "b". (Attaching the *last* space of
     a longer run would need to know that the run has ended, which breaks prefix
     stability at the space, so runs keep all their whitespace.)
  6. Length cap: a word longer than max_word_size bytes is cut greedily into pieces of at
     most max_word_size bytes, never inside a UTF-8 character (max_word_size >= 4).
  7. Incomplete last character: if the input ends with the beginning of a UTF-8 sequence
     that could still become a valid character (e.g. b"\\xe4\\xb8"), those bytes are
     attached to the last word (they are not yet known to be invalid; rule 1 applies
     once a byte that cannot continue them arrives).

Prefix stability (tests/test_splitter.py checks it at byte granularity with hypothesis):
for any s and any k, with P = split(s[:k]) and F = split(s):
  (P1) P[:-1] == F[:len(P) - 1]  -- finished words never change;
  (P2) P[-1] is a prefix of b"".join(F[len(P) - 1:]);
  (P3) P[-1] without its last character (a complete character, an invalid byte, or the
       incomplete tail of rule 7) is a prefix of F[len(P) - 1].
P3 says a later byte can only place a new boundary *before the last character* of the
open word. That happens exactly in two cases: an incomplete multi-byte character whose
class is only known once it is complete (rule 7: "ab" + b"\\xe4" may become "ab", "中"),
and ACRONYMWord ("HTTPS" + "e" -> "HTTP", "Se"). In every other case the last word of
the prefix is a prefix of the corresponding word (the strict form; tested too).

Generation: `starts_new_word(prefix, next_byte)` says whether appending the byte
finishes the open word; `split_with_open_last` returns the finished words and the open
word; `WordStream` does this incrementally (cost per byte ~ length of the open word).
When a new word starts, it may start up to 4 bytes *before* the new byte (the cases of
P3): `open_word_start(data)` tells where.
"""
from __future__ import annotations

import codecs
import time

import regex

MAX_WORD_SIZE = 100

_INVALID = r"[\udc80-\udcff]"
_CJK = r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}\p{Bopomofo}]"
_LETTER = r"[[\p{L}\p{M}\p{N}]--" + _CJK + r"]"
_UPPER = r"[\p{Lu}\p{Lt}]"
_LOWER = r"\p{Ll}"
# A letter run; inside it (never before its first character, so the lookbehinds only see
# the run itself) a cut is made before an upper-case letter that follows a lower-case one
# or that follows an upper-case one and is followed by an ASCII lower-case letter.
_LETTER_RUN = (_LETTER + r"(?:" + _LOWER + r"++|(?!(?<=" + _LOWER + r")" + _UPPER + r"|(?<="
               + _UPPER + r")" + _UPPER + r"(?=[a-z]))" + _LETTER + r")*+")
_OTHER = r"[^\p{White_Space}\udc80-\udcff]"
# ASCII fast paths (same result as _LETTER_RUN / _OTHER, about 2x faster on English): a
# lower-case run, a capitalised word and a capital run, each only when the next character
# cannot continue the run; one ASCII punctuation character.
_NOT_CONTINUED = r"(?![0-9\x80-\U0010ffff])"
_ASCII_FAST = (r"[a-z]++" + _NOT_CONTINUED + r"|[A-Z][a-z]++" + _NOT_CONTINUED
               + r"|[A-Z]++(?![a-z0-9\x80-\U0010ffff])|[!-/:-@\[-`{-~]")
WORD_PATTERN = regex.compile(
    r" ?(?:" + _ASCII_FAST + r"|" + _LETTER_RUN + r"|" + _CJK + r"|" + _OTHER + r")"
    + r"|\p{White_Space}++|" + _INVALID, flags=regex.VERSION1)


def _completable(tail: bytes) -> bool:
  """True iff some continuation bytes make `tail` one valid UTF-8 character. (CPython's
  incremental decoder also holds back surrogate prefixes such as ED A0, which no
  continuation makes valid UTF-8.)"""
  need = 2 if tail[0] < 0xE0 else 3 if tail[0] < 0xF0 else 4
  rest = need - len(tail) - 1
  return rest >= 0 and any(_strict_decodes(tail + bytes([b]) + b"\x80" * rest)
                           for b in range(0x80, 0xC0))


def _strict_decodes(data: bytes) -> bool:
  try:
    data.decode("utf-8")
    return True
  except UnicodeDecodeError:
    return False


def _decode(data: bytes) -> tuple[str, bytes]:
  """-> (text of the complete part, incomplete-but-valid-so-far trailing bytes)."""
  if data and data[-1] >= 0x80:
    decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
    text = decoder.decode(data, final=False)
    tail = decoder.getstate()[0]
    if not tail or _completable(tail):
      return text, tail
  return data.decode("utf-8", "surrogateescape"), b""


def _raw_words(data: bytes) -> list[bytes]:
  """Rules 1-5 and 7 (no length cap)."""
  text, tail = _decode(data)
  words = [w.encode("utf-8", "surrogateescape") for w in WORD_PATTERN.findall(text)]
  if tail:
    if words:
      words[-1] += tail
    else:
      words.append(tail)
  return words


def _cap(word: bytes, max_word_size: int) -> list[bytes]:
  """Greedy cut into pieces of <= max_word_size bytes, never before a continuation byte
  (a raw word holds only whole characters, bar a valid-so-far tail at its end)."""
  pieces, start, n = [], 0, len(word)
  while n - start > max_word_size:
    cut = start + max_word_size
    while 0x80 <= word[cut] < 0xC0 and cut > start + 1:
      cut -= 1
    pieces.append(word[start:cut])
    start = cut
  pieces.append(word[start:])
  return pieces


def _check_size(max_word_size: int) -> None:
  if max_word_size < 4:
    raise ValueError(f"max_word_size must be >= 4 (one UTF-8 character), got {max_word_size}")


def split(data: bytes, max_word_size: int = MAX_WORD_SIZE) -> list[bytes]:
  """Bytes -> words (see the module docstring). Lossless: b"".join(words) == data."""
  _check_size(max_word_size)
  words = _raw_words(bytes(data))
  if words and max(map(len, words)) > max_word_size:
    words = [piece for w in words for piece in _cap(w, max_word_size)]
  return words


def split_text(text: str, max_word_size: int = MAX_WORD_SIZE) -> list[str]:
  """Convenience: str -> str words (the str is UTF-8 encoded first)."""
  return [w.decode("utf-8", "surrogateescape")
          for w in split(text.encode("utf-8", "surrogatepass"), max_word_size)]


def split_with_open_last(data: bytes, max_word_size: int = MAX_WORD_SIZE
                         ) -> tuple[list[bytes], bytes]:
  """-> (finished words, open word). Finished words are final for every continuation of
  `data`; the open word (b"" only for empty data) may still grow, and a new boundary may
  still appear before its last character (P3)."""
  words = split(data, max_word_size)
  if not words:
    return [], b""
  return words[:-1], words[-1]


def open_word_start(data: bytes, max_word_size: int = MAX_WORD_SIZE) -> int:
  """Byte offset where the last (open) word of split(data) starts (0 for empty data)."""
  words = split(data, max_word_size)
  return len(data) - len(words[-1]) if words else 0


def starts_new_word(prefix: bytes, next_byte: int, max_word_size: int = MAX_WORD_SIZE) -> bool:
  """True iff appending next_byte to prefix finishes the open word of prefix, i.e.
  split(prefix + next_byte) has more words than split(prefix) (the count never shrinks).
  The new open word then starts at open_word_start(prefix + next_byte), which is
  len(prefix) except in the P3 cases (up to 4 bytes earlier: the rest of an incomplete
  character, or the last capital of ACRONYMWord). For the lead byte of a multi-byte
  character the answer is False; the boundary before it, if any, is reported
  when the character completes."""
  data = bytes(prefix) + bytes([next_byte])
  return len(split(data, max_word_size)) > len(split(prefix, max_word_size))


class WordStream:
  """Incremental splitter for generation: push one byte at a time.

  >>> s = WordStream(); [s.push(b) for b in b"Hi there"][-1], s.open_word
  ([], b' there')
  `push` returns the words finished by that byte (usually 0 or 1; a byte that proves an
  incomplete tail invalid can finish several). Re-splits only from the start of the raw
  (uncapped) last word, which earlier bytes can no longer change.
  """

  def __init__(self, max_word_size: int = MAX_WORD_SIZE):
    _check_size(max_word_size)
    self.max_word_size = max_word_size
    self.finished: list[bytes] = []
    self._buffer = b""        # bytes from the start of the last raw word
    self._emitted = 0         # capped pieces of that raw word already finished

  @property
  def open_word(self) -> bytes:
    pieces = _cap(self._raw_last(), self.max_word_size) if self._buffer else [b""]
    return pieces[-1]

  def _raw_last(self) -> bytes:
    return _raw_words(self._buffer)[-1] if self._buffer else b""

  def push(self, byte: int) -> list[bytes]:
    self._buffer += bytes([byte])
    raws = _raw_words(self._buffer)
    pieces = [p for w in raws[:-1] for p in _cap(w, self.max_word_size)]
    last_pieces = _cap(raws[-1], self.max_word_size)
    new = (pieces + last_pieces[:-1])[self._emitted:]
    self._buffer = raws[-1]
    self._emitted = len(last_pieces) - 1
    self.finished.extend(new)
    return new


def splitter_throughput(text: bytes, max_word_size: int = MAX_WORD_SIZE,
                        repeats: int = 3) -> dict:
  """Speed of split() on one core, best of `repeats` runs.
  -> {"mb_per_s": 1e6 bytes per CPU second of this process (split is single-threaded,
  so this is the one-core speed even on a busy machine), "wall_mb_per_s": the same per
  wall-clock second, "bytes_per_word": mean word length, "num_words": int}."""
  best_cpu = best_wall = float("inf")
  words: list[bytes] = []
  for _ in range(max(1, repeats)):
    cpu, wall = time.process_time(), time.perf_counter()
    words = split(text, max_word_size)
    best_cpu = min(best_cpu, time.process_time() - cpu)
    best_wall = min(best_wall, time.perf_counter() - wall)
  return {"mb_per_s": len(text) / max(best_cpu, 1e-9) / 1e6,
          "wall_mb_per_s": len(text) / max(best_wall, 1e-9) / 1e6,
          "bytes_per_word": len(text) / max(len(words), 1), "num_words": len(words)}
