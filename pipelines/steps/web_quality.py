"""Web text quality heuristics of the Gopher, C4 and FineWeb family, each threshold a knob.

Four steps, each applied only to documents whose language is in its `languages` (default `Text`,
the language the WARC reader gives page text); other documents pass untouched:

* `gopher_repetition` (Rae et al. 2021, table A1): duplicate line and paragraph fractions (by
  count and by characters), the character share of the most frequent 2/3/4-gram, and the share of
  characters inside duplicated 5..10-grams (every occurrence, overlaps counted once);
* `gopher_quality`: word count, mean word length, `#` and ellipsis to word ratios, bullet and
  ellipsis line ratios, share of words with a letter, stop words;
* `c4_quality` (Raffel et al. 2020): removes lines without terminal punctuation, with fewer than
  3 words, mentioning javascript or cookie/terms policies, or holding a 1000-character word;
  rejects pages with lorem ipsum, a curly bracket, or fewer than 5 sentences left. It rewrites the
  content, like `web_clean`;
* `fineweb_quality` (Penedo et al. 2024): share of lines ending in punctuation, share of short
  lines, characters in duplicated lines, newlines per word.

Words are whitespace-separated tokens (the published rules used nltk's tokenizer; splitting on
whitespace is faster and counts punctuation attached to a word as part of it). Blank lines are not
lines: the extractor separates paragraphs with one, and counting them would make every page look
repetitive and unpunctuated.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from loopcoder.pipelines.steps.decontamination import _window_hashes
from loopcoder.pipelines.steps.filters import Doc, Step

DEFAULT_LANGUAGES = ("Text",)
STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")
BULLETS = ("•", "●", "◦", "▪", "‣", "-", "*")
_PUNCTUATION = string.punctuation + "…«»“”‘’–—"
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
_WORD_WITH_LETTER = re.compile(r"\S*[^\W\d_]\S*")


def _words(text: str) -> list[str]:
    """Whitespace tokens that are not punctuation alone."""
    return [w for w in text.split() if w.strip(_PUNCTUATION)]


def _duplicates(items: list[str]) -> tuple[int, int]:
    """(number, characters) of items equal to an earlier item."""
    seen, count, chars = set(), 0, 0
    for item in items:
        if item in seen:
            count += 1
            chars += len(item)
        else:
            seen.add(item)
    return count, chars


class _WebStep(Step):
    def __init__(self, config):
        super().__init__()
        self.config = config

    def applies(self, doc: Doc) -> bool:
        languages = self.config.languages
        return (languages is None or doc["language"] in languages) and bool(doc["content"].strip())


@dataclass
class GopherRepetitionConfig:
    """Gopher's repetition thresholds (a document above any of them is dropped); `None` switches a rule off."""

    languages: tuple[str, ...] | None = DEFAULT_LANGUAGES
    max_duplicate_line_fraction: float | None = 0.30
    max_duplicate_paragraph_fraction: float | None = 0.30
    max_duplicate_line_char_fraction: float | None = 0.20
    max_duplicate_paragraph_char_fraction: float | None = 0.20
    # n -> the most frequent n-gram's largest share of word characters
    max_top_ngram_char_fraction: dict[int, float] = field(default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16})
    # n -> largest share of word characters inside n-grams that occur more than once
    max_duplicate_ngram_char_fraction: dict[int, float] = field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
    )


class GopherRepetitionFilter(_WebStep):
    """Reasons: `duplicate_lines`, `duplicate_paragraphs`, `duplicate_line_chars`, `duplicate_paragraph_chars`,
    `top_ngram_chars` and `duplicate_ngram_chars` (the offending n in `stats.extra`, e.g. `top_2gram`)."""

    name = "gopher_repetition"

    def __init__(self, config: GopherRepetitionConfig | None = None, **overrides: Any):
        super().__init__(config or GopherRepetitionConfig(**overrides))

    def apply(self, doc: Doc) -> str | None:
        if not self.applies(doc):
            return None
        c, text = self.config, doc["content"]
        total_chars = len(text)
        paragraphs = [p.strip() for p in _PARAGRAPH_BREAK.split(text.strip()) if p.strip()]
        count, chars = _duplicates(paragraphs)
        if c.max_duplicate_paragraph_fraction is not None and count > c.max_duplicate_paragraph_fraction * len(
            paragraphs
        ):
            return "duplicate_paragraphs"
        if (
            c.max_duplicate_paragraph_char_fraction is not None
            and chars > c.max_duplicate_paragraph_char_fraction * total_chars
        ):
            return "duplicate_paragraph_chars"
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        count, chars = _duplicates(lines)
        if c.max_duplicate_line_fraction is not None and count > c.max_duplicate_line_fraction * len(lines):
            return "duplicate_lines"
        if c.max_duplicate_line_char_fraction is not None and chars > c.max_duplicate_line_char_fraction * total_chars:
            return "duplicate_line_chars"
        words = text.split()
        if not words:
            return None
        vocabulary: dict[str, int] = {}
        ids = np.fromiter((vocabulary.setdefault(w, len(vocabulary)) for w in words), dtype=np.int64, count=len(words))
        lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
        word_chars = int(lengths.sum())
        # characters of the n-gram starting at i: ends[i + n] - ends[i]
        ends = np.concatenate([[0], np.cumsum(lengths)])
        for n, limit in sorted(c.max_top_ngram_char_fraction.items()):
            hashes = _window_hashes(ids, n)
            if len(hashes) == 0:
                continue
            _, first, counts = np.unique(hashes, return_index=True, return_counts=True)
            top = int(np.argmax(counts))
            chars = int(counts[top]) * int(ends[first[top] + n] - ends[first[top]])
            if chars > limit * word_chars:
                self.stats.count(f"top_{n}gram")
                return "top_ngram_chars"
        for n, limit in sorted(c.max_duplicate_ngram_char_fraction.items()):
            hashes = _window_hashes(ids, n)
            if len(hashes) == 0:
                continue
            _, inverse, counts = np.unique(hashes, return_inverse=True, return_counts=True)
            repeated = counts[inverse] > 1
            # a word is covered when any repeated n-gram starting at one of the n positions before it covers it
            starts = np.zeros(len(words) + 1, dtype=np.int64)
            np.add.at(starts, np.flatnonzero(repeated), 1)
            np.add.at(starts, np.flatnonzero(repeated) + n, -1)
            covered = np.cumsum(starts[:-1]) > 0
            if int(lengths[covered].sum()) > limit * word_chars:
                self.stats.count(f"duplicate_{n}gram")
                return "duplicate_ngram_chars"
        return None


@dataclass
class GopherQualityConfig:
    """Gopher's quality thresholds; `None` switches a rule off."""

    languages: tuple[str, ...] | None = DEFAULT_LANGUAGES
    min_words: int | None = 50
    max_words: int | None = 100_000
    min_mean_word_length: float | None = 3
    max_mean_word_length: float | None = 10
    max_symbol_word_ratio: float | None = 0.1  # `#` and ellipses, each per word
    max_bullet_line_fraction: float | None = 0.9
    max_ellipsis_line_fraction: float | None = 0.3
    min_alphabetic_word_fraction: float | None = 0.8
    min_stop_words: int | None = 2
    stop_words: tuple[str, ...] = STOP_WORDS
    bullets: tuple[str, ...] = BULLETS


class GopherQualityFilter(_WebStep):
    """Reasons: `too_few_words`, `too_many_words`, `mean_word_length`, `hash_ratio`, `ellipsis_ratio`,
    `bullet_lines`, `ellipsis_lines`, `alphabetic_words`, `stop_words`."""

    name = "gopher_quality"

    def __init__(self, config: GopherQualityConfig | None = None, **overrides: Any):
        super().__init__(config or GopherQualityConfig(**overrides))
        self._stop_words = frozenset(self.config.stop_words)
        self._bullets = tuple(self.config.bullets)

    def apply(self, doc: Doc) -> str | None:
        if not self.applies(doc):
            return None
        c, text = self.config, doc["content"]
        words = _words(text)
        n = len(words)
        if c.min_words is not None and n < c.min_words:
            return "too_few_words"
        if c.max_words is not None and n > c.max_words:
            return "too_many_words"
        if n == 0:
            return None
        mean_length = sum(map(len, words)) / n
        if (c.min_mean_word_length is not None and mean_length < c.min_mean_word_length) or (
            c.max_mean_word_length is not None and mean_length > c.max_mean_word_length
        ):
            return "mean_word_length"
        if c.max_symbol_word_ratio is not None:
            if text.count("#") > c.max_symbol_word_ratio * n:
                return "hash_ratio"
            if text.count("...") + text.count("…") > c.max_symbol_word_ratio * n:
                return "ellipsis_ratio"
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if c.max_bullet_line_fraction is not None and self._bullets:
            if sum(line.startswith(self._bullets) for line in lines) > c.max_bullet_line_fraction * len(lines):
                return "bullet_lines"
        if c.max_ellipsis_line_fraction is not None:
            if sum(line.endswith(("...", "…")) for line in lines) > c.max_ellipsis_line_fraction * len(lines):
                return "ellipsis_lines"
        if c.min_alphabetic_word_fraction is not None:
            # whitespace tokens holding a letter are never punctuation alone, so they are all words
            if len(_WORD_WITH_LETTER.findall(text)) < c.min_alphabetic_word_fraction * n:
                return "alphabetic_words"
        if c.min_stop_words is not None:
            found = 0
            for word in words:
                if word.strip(_PUNCTUATION).lower() in self._stop_words:
                    found += 1
                    if found >= c.min_stop_words:
                        break
            if found < c.min_stop_words:
                return "stop_words"
        return None


C4_POLICY_PHRASES = (
    "terms of use",
    "privacy policy",
    "cookie policy",
    "uses cookies",
    "use of cookies",
    "use cookies",
)
C4_TERMINAL_PUNCTUATION = (".", "?", "!", '"', "'")
_CITATION = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]", re.IGNORECASE)
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*(?=\s|$)")


@dataclass
class C4QualityConfig:
    """C4's line and page rules; `None` or False switches a rule off."""

    languages: tuple[str, ...] | None = DEFAULT_LANGUAGES
    remove_citations: bool = True  # Wikipedia-style [1], [edit], [citation needed]
    require_terminal_punctuation: bool = True  # lines ending in . ? ! " ' (not in an ellipsis) are kept
    min_words_per_line: int | None = 3
    max_word_length: int | None = 1000
    drop_javascript_lines: bool = True
    drop_policy_lines: bool = True
    policy_phrases: tuple[str, ...] = C4_POLICY_PHRASES
    reject_lorem_ipsum: bool = True
    reject_curly_bracket: bool = True
    min_sentences: int | None = 5  # sentences in the kept lines (ends of . ! ? runs)


class C4QualityFilter(_WebStep):
    """Keeps only C4-style lines; reasons `lorem_ipsum`, `curly_bracket`, `too_few_sentences`.

    Removed lines are counted by rule in `stats.extra` (`lines_no_terminal_punctuation`, ...).
    """

    name = "c4_quality"

    def __init__(self, config: C4QualityConfig | None = None, **overrides: Any):
        super().__init__(config or C4QualityConfig(**overrides))

    def _drop_line(self, rule: str) -> None:
        self.stats.count(f"lines_{rule}")

    def apply(self, doc: Doc) -> str | None:
        if not self.applies(doc):
            return None
        c = self.config
        kept, sentences = [], 0
        for line in doc["content"].splitlines():
            line = line.strip()
            if not line:
                continue
            words = line.split()
            if c.max_word_length is not None and any(len(w) > c.max_word_length for w in words):
                self._drop_line("long_word")
                continue
            if c.remove_citations:
                line = _CITATION.sub("", line)
            if c.require_terminal_punctuation and (not line.endswith(C4_TERMINAL_PUNCTUATION) or line.endswith("...")):
                self._drop_line("no_terminal_punctuation")
                continue
            if c.min_words_per_line is not None and len(words) < c.min_words_per_line:
                self._drop_line("too_few_words")
                continue
            lowered = line.lower()
            if c.reject_lorem_ipsum and "lorem ipsum" in lowered:
                return "lorem_ipsum"
            if c.drop_javascript_lines and "javascript" in lowered:
                self._drop_line("javascript")
                continue
            if c.reject_curly_bracket and "{" in line:
                return "curly_bracket"
            if c.drop_policy_lines and any(p in lowered for p in c.policy_phrases):
                self._drop_line("policy")
                continue
            sentences += max(1, len(_SENTENCE_END.findall(line)))
            kept.append(line)
        if c.min_sentences is not None and sentences < c.min_sentences:
            return "too_few_sentences"
        doc["content"] = "\n".join(kept)
        return None


FINEWEB_STOP_CHARS = (".", "'", '"', "!", "?")


@dataclass
class FineWebQualityConfig:
    """FineWeb's extra rules; `None` switches a rule off."""

    languages: tuple[str, ...] | None = DEFAULT_LANGUAGES
    min_punctuated_line_fraction: float | None = 0.12  # dropped at or below
    max_short_line_fraction: float | None = 0.67  # dropped at or above
    short_line_length: int = 30
    max_duplicate_line_char_fraction: float | None = 0.01  # dropped at or above
    max_newlines_per_word: float | None = 0.3


class FineWebQualityFilter(_WebStep):
    """Reasons: `punctuated_lines`, `short_lines`, `duplicate_line_chars`, `newlines_per_word`."""

    name = "fineweb_quality"

    def __init__(self, config: FineWebQualityConfig | None = None, **overrides: Any):
        super().__init__(config or FineWebQualityConfig(**overrides))

    def apply(self, doc: Doc) -> str | None:
        if not self.applies(doc):
            return None
        c, text = self.config, doc["content"]
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if c.min_punctuated_line_fraction is not None:
            if sum(line.endswith(FINEWEB_STOP_CHARS) for line in lines) <= c.min_punctuated_line_fraction * len(lines):
                return "punctuated_lines"
        if c.max_short_line_fraction is not None:
            if sum(len(line) <= c.short_line_length for line in lines) >= c.max_short_line_fraction * len(lines):
                return "short_lines"
        if c.max_duplicate_line_char_fraction is not None:
            _, chars = _duplicates(lines)
            if chars >= c.max_duplicate_line_char_fraction * sum(map(len, lines)):
                return "duplicate_line_chars"
        if c.max_newlines_per_word is not None:
            if len(lines) - 1 > c.max_newlines_per_word * max(len(text.split()), 1):
                return "newlines_per_word"
        return None
