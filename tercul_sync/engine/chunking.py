"""Passages: a long text (a novel, a poem) split into chunks of at most ``max_chars`` characters.

``split_text(text, max_chars, overlap_chars)`` returns ``Chunk`` s in order;
``join_chunks(chunks)`` gives the text back. All lengths and offsets count
Python ``str`` characters (code points). The rules:

1. Lossless and contiguous. ``join_chunks(split_text(t, m, o)) == t`` for every
   string ``t``, in any script. Each chunk is a slice of the original:
   ``text[c.start:c.end] == c.text``. Chunk 0 starts at 0 with ``overlap == 0``,
   the last chunk ends at ``len(text)``, and chunk k's new (non-overlap) part
   starts exactly where chunk k-1 ended: ``chunks[k].start + chunks[k].overlap
   == chunks[k - 1].end``. Every chunk holds at least one new character.
   The empty text gives ``[]``; any other text, even whitespace only, gives at
   least one chunk (callers drop blank chunks themselves if they want).

2. Limits. ``len(c.text) <= max_chars`` for every chunk, overlap included.
   ``max_chars >= 50`` and ``0 <= overlap_chars < max_chars // 2`` are
   required, else ``ValueError`` naming the argument.

3. Boundaries. The chunk whose new part starts at offset ``s`` and may hold
   ``b = max_chars - overlap`` new characters ends at a cut ``p`` with
   ``s < p <= s + b`` (the window); if the rest of the text fits
   (``len(text) <= s + b``) it ends at ``len(text)``. *Whitespace* is every
   character for which ``str.isspace()`` is true except the no-break spaces
   U+00A0, U+2007 and U+202F; a *separator* is a maximal run of whitespace;
   *line breaks* are those of ``str.splitlines()`` ("\\n", "\\r\\n", a lone
   "\\r", "\\v", "\\f", "\\x1c"-"\\x1e", U+0085, U+2028, U+2029), "\\r\\n"
   counting as one. A cut is placed right after a separator, so the
   separator stays at the end of the earlier chunk and the next chunk's new
   part starts with content. The kinds of cut, best first (a cut has the
   best kind that applies to it):

   1. paragraph: after a separator holding two or more line breaks (a blank
      line: "\\n\\n", "\\r\\n\\r\\n", "\\n" then a whitespace-only line), or U+2029;
   2. line: after a separator holding one line break;
   3. sentence: after a separator that follows a sentence ender - "." "!" "?"
      "…" (U+2026), the CJK and fullwidth "。" (U+3002) "！" (U+FF01) "？"
      (U+FF1F), the Arabic "؟" (U+061F) "۔" (U+06D4) - itself optionally
      followed by closing quotes or brackets (any of ``"'”’“‘»«›‹)]}」』】〕〉》）］｝``);
      after the CJK enders "。" "！" "？" (and their closers) a cut is also
      allowed with no whitespace at all;
   4. whitespace: after any other separator;
   5. hard cut: at any position, for text without spaces (CJK) or a word
      longer than the window: the last allowed position in the window, or,
      as a last resort when no position in the window is allowed, exactly
      ``s + b``.

   A separator that runs past the window's end may be cut at the window's
   end, inside it (the next chunk's new part then starts with its rest); its
   kind is judged from its part inside the window plus one character (its
   start is not looked for before ``s``). No cut but that last resort splits
   "\\r\\n", falls right before a combining mark (a character with
   ``unicodedata.combining() != 0`` or of category Mn, Mc or Me), an emoji
   skin-tone modifier or a tag character, right after or before a zero width
   joiner (U+200D), or inside a regional-indicator (flag) pair. The chunk
   ends at the last cut of the best kind in the window that leaves it at
   least ``max_chars // 3`` new characters (``p - s >= max_chars // 3``), a
   cut of a better kind counting as one of each worse kind too; a cut that
   would leave fewer is taken only when no cut of a worse kind lies further
   on in the window (so tiny chunks are avoided).

4. Overlap. Chunk k > 0 begins with up to ``overlap_chars`` characters from
   the end of chunk k-1's text (its ``overlap``, which counts against
   ``max_chars``, so ``b`` above is ``max_chars - overlap``). The tail is the
   last ``min(overlap_chars, len(chunks[k - 1].text))`` characters of chunk
   k-1's text; the overlap starts at the tail's first word start (a
   non-whitespace character preceded by whitespace, or the start of the
   text) where rule 3 allows a cut; if there is none, it is the whole tail
   (exactly ``overlap_chars`` characters, in text without spaces), shortened
   from its front by as few characters as rule 3 needs. ``overlap_chars == 0``
   gives no overlap.

5. Deterministic and local. The same input gives the same chunks. Chunks are
   made greedily from left to right, and a chunk is determined by
   ``text[:chunk.start + max_chars + 1]`` alone: an edit whose first changed
   character is at offset ``x`` leaves every chunk with
   ``start + max_chars < x`` unchanged (same position, offsets, overlap and
   text). A chunk that ends before ``x`` but whose window reaches ``x`` may
   change: the edit can add or remove a better cut inside its window.

6. Linear. The whole text is scanned once for paragraph, line and sentence
   cuts; each chunk then costs a few binary searches and a scan of its own
   window at most.
"""  # noqa: RUF002 (the sentence enders and closers are quoted as they are)

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

MIN_MAX_CHARS = 50

_NO_BREAK = "\u00a0\u2007\u202f"
_LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
# The sentence enders and closers of rule 3, as escapes (ruff flags the look-alike characters).
_CJK_ENDERS = "\u3002\uff01\uff1f"
_ENDERS = ".!?\u2026" + _CJK_ENDERS + "\u061f\u06d4"
_CLOSERS = (
    "\"')]}\u201d\u2019\u201c\u2018\u00bb\u00ab\u203a\u2039"
    "\u300d\u300f\u3011\u3015\u3009\u300b\uff09\uff3d\uff5d"
)
_ZWJ = "\u200d"

_WS = f"[^\\S{_NO_BREAK}]"  # breakable whitespace
_NON_WS = f"[\\S{_NO_BREAK}]"
_H_WS = f"[^\\S{_NO_BREAK}{_LINE_BREAKS}]"  # whitespace that is no line break
_CLOSERS_CLASS = "[" + "".join(re.escape(c) for c in _CLOSERS) + "]"

_WS_RUN = re.compile(f"{_WS}+")
_LINE_BREAK_CHAR = re.compile(f"[{_LINE_BREAKS}]")
_LINE_BREAK = re.compile(f"\r\n|[{_LINE_BREAKS}]")
_SENTENCE_END = re.compile(f"[{re.escape(_ENDERS)}]{_CLOSERS_CLASS}*+")
_NON_WS_CHAR = re.compile(_NON_WS)
# In the reversed text: a non-whitespace character, then whitespace, i.e. the end of a separator.
_REVERSED_SEPARATOR_END = re.compile(f"{_NON_WS}{_WS}")
_WORD_START = re.compile(f"(?<={_WS}){_NON_WS}")

_PARAGRAPH, _LINE, _SENTENCE, _WHITESPACE = 1, 2, 3, 4
_NEVER = -1


@dataclass(frozen=True)
class Chunk:
    """One passage: ``text == original[start:end]``; its first ``overlap`` characters end the previous one."""

    position: int  # 0, 1, 2, ... in order
    start: int  # offset in the original text where ``text`` begins
    end: int  # offset where it ends (exclusive): ``original[start:end] == text``
    text: str
    overlap: int  # how many leading characters repeat the end of the previous chunk (0 for the first)


def split_text(text: str, max_chars: int, overlap_chars: int) -> list[Chunk]:
    """``text`` as chunks of at most ``max_chars`` characters; see the module docstring for the rules."""
    if max_chars < MIN_MAX_CHARS:
        raise ValueError(f"max_chars must be at least {MIN_MAX_CHARS}, got {max_chars}")
    if not 0 <= overlap_chars < max_chars // 2:
        raise ValueError(
            f"overlap_chars must be >= 0 and < max_chars // 2 ({max_chars // 2}), got {overlap_chars}"
        )
    n = len(text)
    chunks: list[Chunk] = []
    if n == 0:
        return chunks
    min_new = max_chars // 3
    cuts: _Cuts | None = None
    start = new = 0  # where the chunk starts, where its new part starts
    while True:
        window_end = start + max_chars
        if n <= window_end:
            end = n
        else:
            if cuts is None:
                cuts = _Cuts(text)
            end = cuts.cut(new, window_end, new + min_new)
        chunks.append(Chunk(len(chunks), start, end, text[start:end], new - start))
        if end == n:
            return chunks
        start, new = _overlap_start(text, start, end, overlap_chars), end


def join_chunks(chunks: Sequence[Chunk]) -> str:
    """The chunks without their overlaps, concatenated: the original text for ``split_text``'s output."""
    return "".join([c.text[c.overlap :] for c in chunks])


def _is_ws(c: str) -> bool:
    return c.isspace() and c not in _NO_BREAK


def _extends(c: str) -> bool:
    """Whether ``c`` belongs to the character before it (a cut right before it would split a grapheme)."""
    if c < "\u0300":
        return False
    return (
        c == _ZWJ
        or unicodedata.combining(c) != 0
        or unicodedata.category(c) in ("Mn", "Mc", "Me")
        or "\U0001f3fb" <= c <= "\U0001f3ff"
        or "\U000e0020" <= c <= "\U000e007f"
    )


def _is_regional_indicator(c: str) -> bool:
    return "\U0001f1e6" <= c <= "\U0001f1ff"


def _allowed(text: str, p: int, floor: int) -> bool:
    """Whether a cut may fall at ``0 < p < len(text)``; ``floor`` bounds the look back over flag pairs."""
    before, after = text[p - 1], text[p]
    if (before == "\r" and after == "\n") or before == _ZWJ or _extends(after):
        return False
    if _is_regional_indicator(before) and _is_regional_indicator(after):
        i = p - 1
        while i >= floor and _is_regional_indicator(text[i]):
            i -= 1
        return (p - 1 - i) % 2 == 0
    return True


def _break_kind(separator: str) -> int:
    """_PARAGRAPH, _LINE or _WHITESPACE, from the line breaks a separator holds."""
    if "\u2029" in separator:
        return _PARAGRAPH
    count = len(_LINE_BREAK.findall(separator))
    return _PARAGRAPH if count >= 2 else _LINE if count == 1 else _WHITESPACE


def _ends_sentence(text: str, p: int) -> bool:
    """Whether ``text[:p]`` ends with a sentence ender and optional closers."""
    i = p - 1
    while i >= 0 and text[i] in _CLOSERS:
        i -= 1
    return i >= 0 and text[i] in _ENDERS


def _last(positions: list[int], low: int, high: int) -> int:
    """The last of the sorted ``positions`` in ``(low, high]``, else _NEVER."""
    i = bisect_right(positions, high)
    return positions[i - 1] if i and positions[i - 1] > low else _NEVER


class _Cuts:
    """The paragraph, line and sentence cuts of a text, found once; whitespace and hard cuts per window."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.reversed = text[::-1]
        n = len(text)
        kinds: dict[int, int] = {}
        covered = 0
        for m in _LINE_BREAK_CHAR.finditer(text):  # each separator holding a line break, once
            if m.start() < covered:
                continue
            run = _WS_RUN.match(text, m.start())
            assert run is not None
            run_start, covered = m.start(), run.end()
            while run_start > 0 and _is_ws(text[run_start - 1]):
                run_start -= 1
            if covered < n and _allowed(text, covered, 0):
                kinds[covered] = _break_kind(text[run_start:covered])
        for m in _SENTENCE_END.finditer(text):
            p = m.end()
            if p >= n:
                continue
            if _is_ws(text[p]):
                run = _WS_RUN.match(text, p)
                assert run is not None
                p = run.end()
                if p < n and _allowed(text, p, 0):
                    kinds.setdefault(p, _SENTENCE)  # a separator with a line break keeps its better kind
            elif text[m.start()] in _CJK_ENDERS and _allowed(text, p, 0):
                kinds.setdefault(p, _SENTENCE)
        ordered = sorted(kinds)
        self.paragraph = [p for p in ordered if kinds[p] == _PARAGRAPH]
        self.line_or_better = [p for p in ordered if kinds[p] <= _LINE]
        self.sentence_or_better = ordered

    def cut(self, new: int, window_end: int, enough: int) -> int:
        """Where the chunk whose new part starts at ``new`` ends: ``new < cut <= window_end < len(text)``.

        ``enough`` is ``new + max_chars // 3``: a cut before it makes a tiny chunk.
        """
        straddle, straddle_kind = self._straddling(new, window_end)
        best = _NEVER
        for kind, positions in (
            (_PARAGRAPH, self.paragraph),
            (_LINE, self.line_or_better),
            (_SENTENCE, self.sentence_or_better),
        ):
            best = max(best, _last(positions, new, window_end))
            if straddle_kind <= kind:
                best = max(best, straddle)
            if best >= enough:
                return best
        best = max(best, straddle, self._last_separator_end(window_end, enough, new))
        if best >= enough:
            return best
        return self._hard_cut(new, window_end)

    def _straddling(self, new: int, window_end: int) -> tuple[int, int]:
        """The cut at the window's end inside a separator that runs past it, and its kind; else _NEVER."""
        text, n = self.text, len(self.text)
        if not _is_ws(text[window_end]):
            return _NEVER, _NEVER
        m = _NON_WS_CHAR.search(self.reversed, n - window_end, n - new)
        run_start = n - m.start() if m else new
        p = window_end - 1 if text[window_end - 1 : window_end + 1] == "\r\n" else window_end
        if p <= new or not _allowed(text, p, new):
            return _NEVER, _NEVER
        kind = _break_kind(text[run_start : window_end + 1])
        if kind == _WHITESPACE and _ends_sentence(text, run_start):
            kind = _SENTENCE
        return p, kind

    def _last_separator_end(self, window_end: int, low: int, new: int) -> int:
        """The last allowed cut right after a separator in ``[low, window_end]``, else _NEVER."""
        n = len(self.text)
        # a match at i in the reversed text is text[p] (non-whitespace) then text[p - 1] (whitespace)
        m = _REVERSED_SEPARATOR_END.search(self.reversed, n - 1 - window_end, n + 1 - low)
        while m:
            p = n - 1 - m.start()
            if _allowed(self.text, p, new):
                return p
            m = _REVERSED_SEPARATOR_END.search(self.reversed, m.start() + 1, n + 1 - low)
        return _NEVER

    def _hard_cut(self, new: int, window_end: int) -> int:
        p = window_end
        while p > new and not _allowed(self.text, p, new):
            p -= 1
        return p if p > new else window_end


def _overlap_start(text: str, start: int, end: int, overlap_chars: int) -> int:
    """Where the chunk after ``text[start:end]`` starts: its overlap is ``text[result:end]``."""
    low = max(start, end - overlap_chars)
    if low == end:
        return end
    if low == 0 and not _is_ws(text[0]):
        return 0
    m = _WORD_START.search(text, low, end)
    while m:
        if _allowed(text, m.start(), start):
            return m.start()
        m = _WORD_START.search(text, m.start() + 1, end)
    p = low
    while 0 < p < end and not _allowed(text, p, start):
        p += 1
    return p
