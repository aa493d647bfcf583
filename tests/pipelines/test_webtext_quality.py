"""Web quality steps: each rule keeps a good page and drops the literal page built to break it, with its reason."""

from __future__ import annotations

import pytest

from loopcoder.pipelines.clean.job import JobConfig
from loopcoder.pipelines.steps.web_quality import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
)

GOOD = """A binary search tree keeps its keys in sorted order, so that lookup can skip half of the remaining tree at each step.

Each node holds a key and two children. The keys in the left subtree are smaller than the node's key, and the keys in the right subtree are larger.

To insert a key, we walk down from the root and attach a new leaf where the search for that key ends. Deleting a node with two children replaces it with its successor.

When the tree stays balanced, the height grows with the logarithm of the number of keys. Red-black trees and AVL trees rotate nodes after each change to keep that promise.

In practice, a sorted array with binary search is often faster for data that rarely changes, because it is compact and friendly to the cache."""


def doc(content: str, language: str = "Text") -> dict:
    return {"content": content, "language": language, "size_bytes": len(content), "decisions": [], "path": "p"}


def run(step, content: str, language: str = "Text") -> tuple[str | None, dict]:
    document = doc(content, language)
    return step.run(document), document


@pytest.mark.parametrize(
    "step", [GopherRepetitionFilter(), GopherQualityFilter(), C4QualityFilter(), FineWebQualityFilter()]
)
def test_a_good_page_passes_every_step(step):
    reason, document = run(step, GOOD)
    assert reason is None
    assert document["content"].split() == GOOD.split()


def test_only_the_configured_languages_are_checked():
    assert run(GopherQualityFilter(), "def f(): pass", language="Python")[0] is None
    assert run(GopherQualityFilter(), "def f(): pass")[0] == "too_few_words"
    assert run(GopherQualityFilter(languages=None), "def f(): pass", language="Python")[0] == "too_few_words"


def test_gopher_repetition_reasons():
    step = GopherRepetitionFilter()
    repeated_paragraphs = GOOD + "\n\n" + "\n\n".join(GOOD.split("\n\n")[:3])
    assert run(step, repeated_paragraphs)[0] == "duplicate_paragraphs"
    menu = "\n".join(["Home page of the shop", "Contact the shop owner"] * 3 + GOOD.split("\n\n"))
    assert run(GopherRepetitionFilter(max_duplicate_paragraph_fraction=None), menu)[0] == "duplicate_lines"
    spam = GOOD + " " + "buy now " * 40
    assert run(step, spam)[0] == "top_ngram_chars" and step.stats.extra == {"top_2gram": 1}
    looped = GOOD.replace("\n\n", " ") + " " + " ".join(GOOD.split()[:60])
    no_top = GopherRepetitionFilter(max_top_ngram_char_fraction={})
    assert run(no_top, looped)[0] == "duplicate_ngram_chars"
    off = GopherRepetitionFilter(max_top_ngram_char_fraction={}, max_duplicate_ngram_char_fraction={})
    assert run(off, looped)[0] is None


def test_gopher_quality_reasons():
    step = GopherQualityFilter()
    assert run(step, "Too short to be a page.")[0] == "too_few_words"
    assert run(step, " ".join(["a"] * 60))[0] == "mean_word_length"
    assert run(step, GOOD + " " + "#tag " * 30)[0] == "hash_ratio"
    assert run(step, "\n".join(f"• item number {i} of the list and the rest" for i in range(60)))[0] == "bullet_lines"
    trailing = "\n".join(f"and then the story of {i} goes on..." for i in range(30))
    assert run(GopherQualityFilter(max_symbol_word_ratio=None), trailing)[0] == "ellipsis_lines"
    numbers = " ".join(str(1000 + i) for i in range(80)) + " the and of"
    assert run(step, numbers)[0] == "alphabetic_words"
    no_stop = " ".join(["quick brown foxes jump over lazy dogs"] * 10)
    assert run(step, no_stop)[0] == "stop_words"


def test_c4_removes_lines_and_rejects_pages():
    step = C4QualityFilter()
    noisy = (
        "Menu\nPlease enable JavaScript to view the comments on this page.\n"
        + GOOD
        + "\nThis site uses cookies, as you know."
    )
    reason, document = run(step, noisy)
    assert reason is None
    assert document["content"] == "\n".join(line for line in GOOD.splitlines() if line)
    assert step.stats.extra == {"lines_javascript": 1, "lines_no_terminal_punctuation": 1, "lines_policy": 1}
    assert run(step, GOOD + "\nLorem ipsum dolor sit amet, consectetur.")[0] == "lorem_ipsum"
    assert run(step, GOOD + "\nThe function is defined as f(x) { return x; }.")[0] == "curly_bracket"
    assert run(step, "One sentence is here. Two sentences are here.\nA heading")[0] == "too_few_sentences"
    assert run(step, "See the table [1] for the values.\n" + GOOD)[1]["content"].startswith("See the table  for")


def test_fineweb_reasons():
    step = FineWebQualityFilter()
    unpunctuated = "\n".join(f"a line about topic number {i} without an end mark" for i in range(20))
    assert run(step, unpunctuated)[0] == "punctuated_lines"
    short = "\n".join(["Short line here.", "Another one.", "And a third."] + [GOOD.splitlines()[0]])
    assert run(step, short)[0] == "short_lines"
    duplicated = GOOD + "\n" + GOOD.splitlines()[0]
    assert run(step, duplicated)[0] == "duplicate_line_chars"
    listy = "\n".join(f"{i}." for i in range(100)) + "\n" + GOOD
    assert run(FineWebQualityFilter(max_short_line_fraction=None), listy)[0] == "newlines_per_word"


def test_steps_are_registered_with_their_knobs():
    job = JobConfig.from_dict(
        {
            "name": "web",
            "output": "/tmp/unused",
            "inputs": [{"kind": "warc", "path": "/tmp/unused"}],
            "steps": [
                "decode",
                "web_clean",
                {"gopher_repetition": {"max_top_ngram_char_fraction": {2: 0.5}}},
                {"gopher_quality": {"min_words": 10, "stop_words": ["the", "a"]}},
                "c4_quality",
                {"fineweb_quality": {"short_line_length": 20}},
            ],
        }
    )
    steps = job.build_steps()
    assert [s.name for s in steps][2:] == ["gopher_repetition", "gopher_quality", "c4_quality", "fineweb_quality"]
    assert steps[2].config.max_top_ngram_char_fraction == {2: 0.5}
    assert steps[3].config.stop_words == ("the", "a") and steps[3].config.min_words == 10
    with pytest.raises(ValueError, match="unknown key"):
        JobConfig.from_dict({**job.to_dict(), "steps": [{"gopher_quality": {"min_word": 3}}]})
