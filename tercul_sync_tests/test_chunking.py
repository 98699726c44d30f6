"""The passage splitter: lossless, within the limit, cut at the best boundary, stable before an edit."""

from __future__ import annotations

import random
import unicodedata

import pytest

from tercul_sync.engine.chunking import Chunk, join_chunks, split_text

pytestmark = pytest.mark.unit

ZWJ = "\u200d"
# CJK and fullwidth full stop, exclamation and question marks; Arabic question mark and full stop
# (escaped: ruff flags the look-alike characters)
CJK_STOP, CJK_BANG, CJK_QUESTION = "\u3002", "\uff01", "\uff1f"
ARABIC_QUESTION, ARABIC_STOP = "\u061f", "\u06d4"
LATIN = [
    "the",
    "night",
    "was",
    "dark",
    "and",
    "full",
    "of",
    "quiet",
    "voices",
    "nobody",
    "Straße",
    "naïve",
    "café",
]
CYRILLIC = ["ночь", "улица", "фонарь", "аптека", "бессмысленный", "и", "тусклый", "свет"]
HAN = "天地玄黃宇宙洪荒日月盈昃辰宿列張寒來暑往秋收冬藏"
ARABIC = ["في", "البدء", "كان", "الكلمة", "والكلمة", "كانت", "عند", "الله"]
HEBREW = ["בראשית", "ברא", "אלהים", "את", "השמים", "ואת", "הארץ"]
EMOJI = ["😀", "👍🏽", f"👨{ZWJ}👩{ZWJ}👧", "🇫🇷", "🇯🇵🇰🇷", "❤\ufe0f"]
COMBINING = ["e\u0301", "a\u0308\u0323", "n\u0303", "\u0915\u093f", "\u0e01\u0e34", "o\u0302\u0300"]
ENDERS = [".", "!", "?", "…", '."', "?»", "!”", ARABIC_QUESTION, ARABIC_STOP]
SEPARATORS = [" "] * 12 + ["  ", "\t", "\n", "\r\n", "\n\n", "\r\n\r\n", "\n  \n", "\u3000", "\xa0", "\u2028"]
SEPARATORS += ["\u2029", "\r", "\f"]


def random_text(rng: random.Random, size: int) -> str:
    """Tokens of many scripts, sentence enders, emoji, combining marks, every kind of separator."""
    parts: list[str] = []
    length = 0
    while length < size:
        kind = rng.randrange(9)
        if kind <= 1:
            token = rng.choice(LATIN)
        elif kind == 2:
            token = rng.choice(CYRILLIC)
        elif kind == 3:  # CJK runs have no spaces, sometimes a CJK sentence end
            token = "".join(rng.choice(HAN) for _ in range(rng.randint(1, 90)))
            token += rng.choice(["", "", CJK_STOP, CJK_BANG, CJK_QUESTION, CJK_STOP + "」"])
        elif kind == 4:
            token = rng.choice(ARABIC)
        elif kind == 5:
            token = rng.choice(HEBREW)
        elif kind == 6:
            token = "".join(rng.choice(EMOJI) for _ in range(rng.randint(1, 4)))
        elif kind == 7:
            token = "".join(rng.choice(COMBINING) for _ in range(rng.randint(1, 8)))
        else:  # a word longer than any window, now and then
            token = rng.choice(LATIN) * rng.randint(1, 40)
        if rng.random() < 0.2:
            token += rng.choice(ENDERS)
        parts.append(token)
        if rng.random() < 0.9:
            parts.append(rng.choice(SEPARATORS))
        length += len(token) + 1
    text = "".join(parts)
    if rng.random() < 0.3:
        text = rng.choice(SEPARATORS) + text  # leading and trailing whitespace too
    if rng.random() < 0.3:
        text += rng.choice(SEPARATORS) * rng.randint(1, 5)
    return text


def splits_grapheme(text: str, p: int) -> bool:
    """Whether ``0 < p < len(text)`` falls inside "\\r\\n", before a mark, next to a ZWJ or inside a flag."""
    before, after = text[p - 1], text[p]
    if (before, after) == ("\r", "\n") or ZWJ in (before, after):
        return True
    if unicodedata.combining(after) or unicodedata.category(after).startswith("M"):
        return True
    if "\U0001f3fb" <= after <= "\U0001f3ff":
        return True
    i = p
    while i > 0 and "\U0001f1e6" <= text[i - 1] <= "\U0001f1ff":
        i -= 1
    return "\U0001f1e6" <= after <= "\U0001f1ff" and (p - i) % 2 == 1


def check(text: str, chunks: list[Chunk], max_chars: int, overlap_chars: int) -> None:
    """Every invariant of rules 1, 2 and 4 (and the cut safety of rule 3) for one split."""
    assert join_chunks(chunks) == text
    if not text:
        assert chunks == []
        return
    assert chunks, "a non-empty text gives at least one chunk"
    assert chunks[0].start == 0 and chunks[0].overlap == 0
    assert chunks[-1].end == len(text)
    for k, c in enumerate(chunks):
        assert c.position == k
        assert text[c.start : c.end] == c.text
        assert len(c.text) <= max_chars
        assert 0 <= c.overlap <= overlap_chars
        assert c.end > c.start + c.overlap, "every chunk holds new text"
        if k:
            prev = chunks[k - 1]
            assert c.start + c.overlap == prev.end
            assert c.start >= prev.start
            assert prev.text.endswith(c.text[: c.overlap])
            assert not splits_grapheme(text, prev.end), (prev.end, text[prev.end - 3 : prev.end + 3])
            if c.overlap:
                assert not splits_grapheme(text, c.start), (c.start, text[c.start - 3 : c.start + 3])


def cuts(chunks: list[Chunk]) -> list[int]:
    """Where each chunk but the last ends."""
    return [c.end for c in chunks[:-1]]


def at_separator_after(text: str, p: int, ends: tuple[str, ...]) -> bool:
    """Whether a cut at ``p`` follows one of ``ends`` then a space, or (window end) falls between the two."""
    return text[:p].endswith(tuple(e + " " for e in ends)) or (text[:p].endswith(ends) and text[p] == " ")


def words(rng: random.Random, count: int) -> str:
    return " ".join(rng.choice(LATIN) for _ in range(count))


def sentences(rng: random.Random, count: int, max_words: int = 12) -> list[str]:
    return [words(rng, rng.randint(2, max_words)).capitalize() + rng.choice(".!?") for _ in range(count)]


# -- losslessness, limits, contiguity ---------------------------------------------------------------


@pytest.mark.parametrize("max_chars", [50, 51, 64, 100, 250])
def test_random_texts_of_every_script_round_trip_within_the_limit(max_chars: int) -> None:
    rng = random.Random(max_chars)
    for overlap_chars in sorted({0, 1, 10, max_chars // 4, max_chars // 2 - 1}):
        for _ in range(12):
            text = random_text(rng, rng.randint(0, 8 * max_chars))
            check(text, split_text(text, max_chars, overlap_chars), max_chars, overlap_chars)


def test_empty_text_gives_no_chunks() -> None:
    assert split_text("", 50, 10) == []
    assert join_chunks([]) == ""


@pytest.mark.parametrize("text", [" ", "   \n\n  ", "\r\n" * 100, " " * 500, "\t\n" * 333, "\u3000" * 120])
def test_whitespace_only_text_gives_chunks_that_round_trip(text: str) -> None:
    chunks = split_text(text, 50, 10)
    check(text, chunks, 50, 10)
    assert len(chunks) >= 1


def test_a_text_within_the_limit_is_one_chunk() -> None:
    text = "Short poem,\nshort lines.\n\n" + "x" * 74
    assert split_text(text, 100, 30) == [Chunk(0, 0, 100, text, 0)]


def test_the_same_input_gives_the_same_chunks() -> None:
    text = random_text(random.Random(7), 5000)
    assert split_text(text, 120, 20) == split_text(text, 120, 20)


# -- boundaries -------------------------------------------------------------------------------------


def test_paragraph_ends_are_preferred() -> None:
    rng = random.Random(1)
    max_chars, overlap_chars = 300, 40
    paragraphs = []
    for _ in range(40):  # each at least max_chars // 3 long and short enough to fit with any overlap
        length = rng.randint(max_chars // 3, max_chars - overlap_chars - 3)
        paragraphs.append(" ".join(sentences(rng, 30))[:length].rstrip() + ".")
    text = "\n\n".join(paragraphs)
    chunks = split_text(text, max_chars, overlap_chars)
    check(text, chunks, max_chars, overlap_chars)
    assert len(chunks) > 20
    assert all(text[p - 2 : p] == "\n\n" for p in cuts(chunks))


def test_a_tiny_paragraph_is_not_left_alone() -> None:
    rng = random.Random(2)
    long = " ".join(sentences(rng, 40))
    text = "Chapter One\n\n" + long
    chunks = split_text(text, 200, 0)
    check(text, chunks, 200, 0)
    assert chunks[0].text.startswith("Chapter One\n\n")
    assert len(chunks[0].text) >= 200 // 3
    assert at_separator_after(text, chunks[0].end, (".", "!", "?"))


def test_verse_is_cut_at_line_ends() -> None:
    rng = random.Random(3)
    stanzas = ["\n".join(words(rng, rng.randint(2, 7)) for _ in range(rng.randint(2, 6))) for _ in range(60)]
    text = "\n\n".join(stanzas)
    chunks = split_text(text, 200, 30)
    check(text, chunks, 200, 30)
    assert all(text[p - 1] == "\n" for p in cuts(chunks))
    # a stanza break wins over a line break whenever it leaves the chunk a third of the limit
    assert sum(text[p - 2 : p] == "\n\n" for p in cuts(chunks)) > len(cuts(chunks)) // 2


def test_a_long_paragraph_is_cut_at_sentence_ends() -> None:
    rng = random.Random(4)
    text = " ".join(sentences(rng, 200))
    chunks = split_text(text, 250, 50)
    check(text, chunks, 250, 50)
    assert len(chunks) > 10
    assert all(at_separator_after(text, p, (".", "!", "?")) for p in cuts(chunks))


def test_closing_quotes_after_a_sentence_end_stay_with_it() -> None:
    rng = random.Random(5)
    text = " ".join(f"“{s}”" if i % 2 else f"«{s}»" for i, s in enumerate(sentences(rng, 100)))
    chunks = split_text(text, 200, 0)
    check(text, chunks, 200, 0)
    assert all(at_separator_after(text, p, (".”", "!”", "?”", ".»", "!»", "?»")) for p in cuts(chunks))


def test_one_endless_sentence_is_cut_between_words() -> None:
    rng = random.Random(6)
    text = words(rng, 600) + "."
    chunks = split_text(text, 100, 30)
    check(text, chunks, 100, 30)
    # after a space, or at the window's end right before one
    assert all(" " in (text[p - 1], text[p]) for p in cuts(chunks))
    for c in chunks[1:]:  # the overlap starts at a word
        assert c.overlap > 0 and text[c.start - 1] == " " and text[c.start] != " "


def test_a_paragraph_break_at_the_window_end_is_still_used() -> None:
    first = "x" * 40 + " " + "y" * 8 + "." + "z" * 10  # 60 characters, no sentence end inside
    text = first + "\n\n" + "Next paragraph here. " * 5
    chunks = split_text(text, 61, 0)  # the window ends between the two line breaks
    check(text, chunks, 61, 0)
    assert chunks[0].text == first + "\n"


def test_no_break_spaces_are_not_cut() -> None:
    text = "word\xa0" * 40
    chunks = split_text(text, 60, 0)
    check(text, chunks, 60, 0)
    assert [len(c.text) for c in chunks] == [60, 60, 60, 20]


def test_crlf_is_never_split() -> None:
    text = "x" * 49 + "\r\n" + "y" * 100
    chunks = split_text(text, 50, 0)
    check(text, chunks, 50, 0)
    assert chunks[0].text == "x" * 49
    assert chunks[1].text.startswith("\r\n")


# -- scripts ----------------------------------------------------------------------------------------


def test_cjk_without_spaces_is_cut_hard_within_the_limit() -> None:
    rng = random.Random(8)
    text = "".join(rng.choice(HAN) for _ in range(5000))
    chunks = split_text(text, 100, 20)
    check(text, chunks, 100, 20)
    assert all(len(c.text) == 100 for c in chunks[:-1])
    assert all(c.overlap == 20 for c in chunks[1:])  # no space in the tail: exactly overlap_chars


def test_cjk_is_cut_after_its_sentence_ends() -> None:
    rng = random.Random(9)
    ends = [CJK_STOP, CJK_BANG, CJK_QUESTION, CJK_STOP + "」"]
    text = "".join(
        "".join(rng.choice(HAN) for _ in range(rng.randint(5, 30))) + rng.choice(ends) for _ in range(300)
    )
    chunks = split_text(text, 120, 0)
    check(text, chunks, 120, 0)
    assert all(text[p - 1] in (CJK_STOP, CJK_BANG, CJK_QUESTION) or text[p - 1] == "」" for p in cuts(chunks))


@pytest.mark.parametrize(
    "vocabulary, ender", [(ARABIC, ARABIC_QUESTION), (ARABIC, ARABIC_STOP), (HEBREW, ".")]
)
def test_right_to_left_text_round_trips(vocabulary: list[str], ender: str) -> None:
    rng = random.Random(10)
    text = " ".join(
        " ".join(rng.choice(vocabulary) for _ in range(rng.randint(3, 12))) + ender for _ in range(200)
    )
    chunks = split_text(text, 150, 25)
    check(text, chunks, 150, 25)
    assert all(at_separator_after(text, p, (ender,)) for p in cuts(chunks))


def test_combining_marks_stay_with_their_base() -> None:
    text = "".join(random.Random(11).choice(COMBINING) for _ in range(3000))  # no spaces: hard cuts only
    for max_chars, overlap_chars in [(50, 0), (50, 24), (77, 13)]:
        check(text, split_text(text, max_chars, overlap_chars), max_chars, overlap_chars)


def test_emoji_sequences_and_flags_stay_whole() -> None:
    rng = random.Random(12)
    text = "".join(rng.choice(EMOJI) for _ in range(1500))
    for max_chars, overlap_chars in [(50, 0), (51, 7), (64, 31)]:
        check(text, split_text(text, max_chars, overlap_chars), max_chars, overlap_chars)


# -- stability, size, arguments ---------------------------------------------------------------------


def test_an_edit_leaves_the_chunks_before_it_unchanged() -> None:
    rng = random.Random(13)
    max_chars, overlap_chars = 200, 30
    paragraphs = ["\n".join(" ".join(sentences(rng, 3)) for _ in range(2)) for _ in range(12)]
    text = "\n\n".join(paragraphs)
    before = split_text(text, max_chars, overlap_chars)
    assert 18 <= len(before) <= 30
    middle = before[len(before) // 2]
    sentence_start = text.index(". ", middle.start + middle.overlap) + 2
    sentence_end = text.index(".", sentence_start) + 1
    edited = text[:sentence_start] + "An entirely different sentence, rather longer." + text[sentence_end:]
    after = split_text(edited, max_chars, overlap_chars)
    check(edited, after, max_chars, overlap_chars)
    # rule 5: a chunk depends only on text[: start + max_chars + 1]
    unchanged = [c for c in before if c.start + max_chars < sentence_start]
    assert len(unchanged) >= len(before) // 2 - 2
    assert after[: len(unchanged)] == unchanged
    assert before != after


def test_a_300_kb_body_splits_correctly() -> None:
    rng = random.Random(14)
    paragraphs: list[str] = []
    size = 0
    while size < 300_000:
        paragraphs.append(" ".join(sentences(rng, rng.randint(1, 12), max_words=25)))
        size += len(paragraphs[-1]) + 2
    text = "\n\n".join(paragraphs)
    chunks = split_text(text, 1000, 150)
    check(text, chunks, 1000, 150)
    assert len(chunks) > 300


@pytest.mark.parametrize(
    "max_chars, overlap_chars, argument",
    [(49, 0, "max_chars"), (0, 0, "max_chars"), (100, -1, "overlap_chars"), (100, 50, "overlap_chars")],
)
def test_bad_arguments_are_refused(max_chars: int, overlap_chars: int, argument: str) -> None:
    with pytest.raises(ValueError, match=argument):
        split_text("some text", max_chars, overlap_chars)


def test_the_extreme_arguments_are_accepted() -> None:
    text = random_text(random.Random(15), 2000)
    check(text, split_text(text, 50, 24), 50, 24)
    check(text, split_text(text, 101, 49), 101, 49)
