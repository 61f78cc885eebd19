"""The HAT word splitter: bytes (or str) -> words. Written for this project from the rules
in MODELS.md section 3 and from comparing outputs with the published splitter
(`hat-splitter` 0.1.10, Aleph Alpha's Rust wheel, which the published HAT checkpoints were
trained with; tools/compare_splitter.py shows the agreement: identical words on every
document of its English, code, German, Russian, Arabic, Chinese, Japanese and Korean
corpora). No published splitter code was used.

`split` takes arbitrary bytes: they are decoded as UTF-8 with 'surrogateescape' (each
invalid byte becomes one lone surrogate U+DC80..U+DCFF), one compiled `regex` pattern cuts
the text into raw words, the words are encoded back (losslessly), and a cheap post-pass
cuts words longer than `max_word_size` bytes. `split_text` takes any str (lone surrogates
included) and applies the same pattern to it directly. Both are lossless:
b"".join(split(x)) == x and "".join(split_text(s)) == s.

Rules. "Punctuation" is Unicode general category P*; Word_Break (WB) is the property of
Unicode's word segmentation (UAX #29), whose boundaries the published splitter starts from.
  1. Invalid UTF-8 (bytes) and lone surrogates (str): every one is a word by itself.
  2. Atoms:
     a. letter run: characters of WB ALetter, Hebrew_Letter or Numeric (Latin, Cyrillic,
        Greek, Arabic, Hebrew, Hangul, digits, ...; also U+202F NARROW NO-BREAK SPACE,
        which UAX #29 joins into words) with the Extend / Format / ZWJ characters that
        follow (combining marks, soft hyphen). CamelCase: a cut before an upper-case
        letter (Lu) that directly follows a lower-case one (Ll): "camel|Case",
        "get|User|ID", "XMLHttp|Request"; an acronym followed by a word stays whole
        ("HTTPResponse"); digits and marks never cut ("utf8Decode", "x86").
     b. Katakana run (WB Katakana, which includes the long-vowel mark U+30FC): whole
        ("データベース", "ユーザー|ID": a Katakana run and a letter run are two atoms).
     c. a pair of regional indicators (one flag; a third starts a new pair).
     d. any other character that is not whitespace or punctuation (Han, Hiragana, Thai,
        symbols such as + = $ °, emoji, controls) is an atom by itself, with the
        Extend / Format / ZWJ characters after it and any ZWJ + pictographic
        continuation (emoji ZWJ sequences, skin tones, keycaps, tag flags).
  3. Punctuation: a run of punctuation attaches to the atom before it, and the word ends
     after the run: "Hello,", "don'|t", "3.|14", "https://|example.|com/", "snake_|case",
     "界，". A run with no atom before it (at the start, or after whitespace) is a word
     of its own: "(|hi)", "\"|quoted\"".
  4. Whitespace: a single U+0020 SPACE (not part of a longer space run) attaches to the
     atom or punctuation run that follows it (" world", " (", " =", " 日"). Every other
     whitespace is a word of its own: CR LF together; each other line break (LF, CR, VT,
     FF, NEL, U+2028, U+2029) alone; a run of WB WSegSpace characters (space, U+3000,
     U+2000..U+200A but U+2007, ...) together ("a|  |b", "\n|    |x"); every other
     whitespace character (tab, NBSP, U+2007) alone.
  5. Length cap: a word longer than max_word_size bytes (UTF-8) is cut greedily into
     pieces of at most max_word_size bytes, never inside a character (max_word_size >= 4;
     the published `split_with_limit` cuts the same way).
  6. Incomplete last character (bytes only): if the input ends with the beginning of a
     UTF-8 sequence that could still become a valid character (e.g. b"\xe4\xb8"), those
     bytes are attached to the last word (they are not yet known to be invalid; rule 1
     applies once a byte that cannot continue them arrives).

Where we differ from the published splitter on purpose:
  - it takes valid str only; we also take bytes that are not valid UTF-8 (rule 1/6) and
    str with lone surrogates (rule 1);
  - prefix stability (below): UAX #29 joins some characters only once a later character
    arrives, which the published splitter inherits: "1⁄" -> "1", "⁄" but "1⁄2" -> "1⁄2"
    (U+2044 FRACTION SLASH, a symbol that UAX #29 treats as a number separator); we keep
    "1", "⁄", "2";
  - not modelled (rare in text): UAX #29 attaches a combining mark to whatever precedes
    it, so after punctuation or a run of spaces it joins differently ("a.\u0301b" -> it:
    "a.", "\u0301b", us: "a.", "\u0301", "b"; "  \u0301" -> it: one word, us: two), and
    ZWJ + pictograph after a letter ("a\u200d😀" -> it: one word, us: two);
  - Unicode version: the `regex` module's tables and the Rust crate's may differ for
    characters added recently.

Prefix stability (tests/test_splitter.py checks it at byte granularity with hypothesis):
for any s and any k, with P = split(s[:k]) and F = split(s):
  (P1) P[:-1] == F[:len(P) - 1]  -- finished words never change;
  (P2) P[-1] is a prefix of b"".join(F[len(P) - 1:]);
  (P3) P[-1] without its incomplete tail (rule 6) is a prefix of F[len(P) - 1].
So a later byte can place a new boundary before the last character of the open word only
while that character is incomplete ("ab" + b"\xe4" may become "ab", "中"); in every
other case the last word of the prefix is a prefix of the corresponding word.

Generation: `starts_new_word(prefix, next_byte)` says whether appending the byte
finishes the open word; `split_with_open_last` returns the finished words and the open
word; `WordStream` does this incrementally (cost per byte ~ length of the open word).
When a new word starts, it may start up to 3 bytes *before* the new byte (the rest of an
incomplete character, P3): `open_word_start(data)` tells where.
"""
from __future__ import annotations

import codecs
import re
import time

import regex

MAX_WORD_SIZE = 100

_EXT = r"\p{WB=Extend}\p{WB=Format}\p{WB=ZWJ}"
_LETTER = r"\p{WB=ALetter}\p{WB=Hebrew_Letter}\p{WB=Numeric}\u202f"
# The character classes of the rules, in `regex` syntax (VERSION1 set operations).
CLASSES = {
    "letter": r"[[" + _LETTER + r"]--\p{P}]",                                # 2a
    "letter_more": r"[[" + _LETTER + _EXT + r"]--[\p{P}\p{Lu}]]",             # 2a, not Lu
    "upper": r"\p{Lu}",
    "lower": r"\p{Ll}",
    "katakana": r"[\p{WB=Katakana}--\p{P}]",                                  # 2b
    "katakana_more": r"[[\p{WB=Katakana}" + _EXT + r"]--\p{P}]",
    "flag": r"\p{WB=Regional_Indicator}",                                     # 2c
    "other": r"[^\p{White_Space}\p{P}\ud800-\udfff]",                         # 2d
    "ext": r"[" + _EXT + r"]",
    "pictographic": r"\p{Extended_Pictographic}",
    "punct": r"\p{P}",                                                        # 3
    "space_run": r"\p{WB=WSegSpace}",                                         # 4
    "white": r"\p{White_Space}",
    "surrogate": r"[\ud800-\udfff]",          # 1: an invalid byte (surrogateescape) or a lone surrogate
}


_NEVER = "(?!)"   # an empty class


def _word_pattern(c: dict[str, str], ascii_fast_path: str = "") -> str:
  """The rules as one pattern over the classes `c` (alternatives of empty classes left out)."""
  # 2a: a cut before Lu directly after Ll. The run's first character is never preceded
  # by its own Ll (a new match starts there), so the lookbehind only sees the run.
  atoms = [ascii_fast_path] if ascii_fast_path else []
  atoms.append(c["letter"] + "(?:" + c["letter_more"] + "++|(?<!" + c["lower"] + ")"
               + c["upper"] + "++)*+")
  if c["katakana"] != _NEVER:
    atoms.append(c["katakana"] + c["katakana_more"] + "*+")
  if c["flag"] != _NEVER:
    atoms.append(c["flag"] + "{1,2}+" + c["ext"] + "*+")
  more = [m for m in ("\u200d" + c["pictographic"], c["ext"]) if _NEVER not in m]
  atoms.append(c["other"] + ("(?:" + "|".join(more) + ")*+" if more else ""))
  return (" ?(?:" + "|".join(atoms) + ")" + c["punct"] + "*+"   # rules 2, 3, 4's attached space
          + "| ?" + c["punct"] + "++"                           # 3: punctuation alone
          + "|\r\n|" + c["space_run"] + "++|" + c["white"]      # 4
          + ("|" + c["surrogate"] if c["surrogate"] != _NEVER else ""))   # 1


# The definition (any text). The ASCII fast path gives the same words as the letter run
# (its lookahead leaves every non-ASCII continuation and a camelCase cut to the others).
WORD_PATTERN = regex.compile(_word_pattern(
    CLASSES, r"(?:[A-Z]++[a-z0-9]*+|[a-z0-9]++)(?![\x80-\U0010ffffA-Za-z0-9])"),
    flags=regex.VERSION1)
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")
_fast: dict[str, re.Pattern] = {}


def _explicit_classes(limit: int) -> dict[str, str]:
  """CLASSES as explicit `re` sets of the code points below `limit` (0x80 or 0x10000)."""
  chars = "".join(map(chr, range(limit)))
  out = {}
  for name, cls in CLASSES.items():
    spans = [m.span() for m in regex.finditer(cls + "++", chars, flags=regex.VERSION1)]
    items = "".join(re.escape(chr(a)) + ("-" + re.escape(chr(b - 1)) if b - a > 1 else "")
                    for a, b in spans)
    out[name] = "[" + items + "]" if items else _NEVER
  return out


def _fast_patterns() -> dict[str, re.Pattern]:
  """WORD_PATTERN compiled by `re` with explicit sets, for text without code points above
  U+FFFF (re tests such sets with a bitmap: about 3x faster than `regex`'s property
  lookups), and for ASCII bytes. Built on first use (~0.2 s); tests check that they give
  WORD_PATTERN's words."""
  if not _fast:
    _fast["bmp"] = re.compile(_word_pattern(_explicit_classes(0x10000)))
    _fast["ascii_bytes"] = re.compile(_word_pattern(_explicit_classes(0x80)).encode("latin-1"))
  return _fast


def find_words(text: str) -> list[str]:
  """The raw words of str `text` (rules 1-4: no length cap)."""
  if text.isascii() or not _ASTRAL.search(text):
    return (_fast or _fast_patterns())["bmp"].findall(text)
  return WORD_PATTERN.findall(text)


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
  text = data.decode("utf-8", "surrogateescape")
  if not text or not "\udc80" <= text[-1] <= "\udcff":
    return text, b""   # no invalid byte at the end, so no incomplete tail
  if data[-1] >= 0x80:
    decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
    text = decoder.decode(data, final=False)
    tail = decoder.getstate()[0]
    if not tail or _completable(tail):
      return text, tail
  return data.decode("utf-8", "surrogateescape"), b""


def _raw_words(data: bytes) -> list[bytes]:
  """Rules 1-4 and 6 (no length cap)."""
  if data.isascii():
    return (_fast or _fast_patterns())["ascii_bytes"].findall(data)
  text, tail = _decode(data)
  words = find_words(text)
  if "\x00" in text:
    words = [w.encode("utf-8", "surrogateescape") for w in words]
  elif words:  # encode all words at once: about 2x faster than word by word
    words = "\x00".join(words).encode("utf-8", "surrogateescape").split(b"\x00")
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
  """str -> str words, the same words as `split(text.encode())` for valid text; lone
  surrogates are words by themselves (rule 1). Lossless: "".join(words) == text.
  Word sizes for the cap are UTF-8 bytes (a lone surrogate counts 3, as 'surrogatepass'
  encodes it)."""
  _check_size(max_word_size)
  words = find_words(text)
  # a word of at most max_word_size // 4 code points fits whatever its characters
  limit = max_word_size // 4
  if words and max(map(len, words)) > limit:
    for i in reversed([i for i, n in enumerate(map(len, words)) if n > limit]):
      words[i:i + 1] = _cap_text(words[i], max_word_size)
  return words


def _cap_text(word: str, max_word_size: int) -> list[str]:
  """_cap for a str word: greedy pieces of <= max_word_size UTF-8 bytes, whole characters."""
  if len(word.encode("utf-8", "surrogatepass")) <= max_word_size:
    return [word]
  pieces, start, size = [], 0, 0
  for i, ch in enumerate(word):
    n = 1 if ch < "\x80" else 2 if ch < "\u0800" else 3 if ch < "\U00010000" else 4
    if size + n > max_word_size:
      pieces.append(word[start:i])
      start, size = i, 0
    size += n
  pieces.append(word[start:])
  return pieces


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
