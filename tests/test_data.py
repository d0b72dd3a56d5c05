"""Corpus loaders, the user-file formats in examples/, and the built-in corpus files."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from vneuron.data import DIMENSIONS, OPPOSITE, load_corpus
from vneuron.data.loaders import builtin_dir
from vneuron.errors import VneuronError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("name", ["corpus.jsonl", "corpus.csv", "corpus.tsv", "corpus.xlsx"])
def test_example_formats_load_the_same_items(name):
    corpus = load_corpus(EXAMPLES / name)
    reference = load_corpus(EXAMPLES / "corpus.jsonl")
    assert corpus.items == reference.items
    assert len(corpus.items) == 6
    assert corpus.descriptions["en"]["conservation"]  # picked up from corpus.descriptions.jsonl
    assert set(corpus.labels) == set(DIMENSIONS)


def test_prompts_mark_the_action_span():
    corpus = load_corpus(EXAMPLES / "corpus.jsonl")
    prompts = corpus.action_prompts()
    assert len(prompts) == 12
    first = prompts[0]
    lo, hi = first.span
    assert first.text[lo:hi] == corpus.items[0].option_pole
    assert first.text.endswith(".") and first.label == "self_transcendence"
    assert prompts[1].label == OPPOSITE["self_transcendence"] and prompts[1].group == prompts[0].group
    conditioned = corpus.conditioned_prompts()
    assert "Value: " in conditioned[0].text and corpus.items[0].scenario in conditioned[0].text


def test_column_mapping_for_labelled_texts():
    corpus = load_corpus(EXAMPLES / "texts.csv", columns={"text": "sentence", "label": "value_label"})
    assert len(corpus.texts) == 4
    assert corpus.pole_contrasts() == [("self_enhancement", "self_transcendence"), ("self_transcendence", "self_enhancement")]
    with pytest.raises(VneuronError, match="missing columns.*`columns`"):
        load_corpus(EXAMPLES / "texts.csv")


def test_selection_by_split_language_dimension():
    corpus = load_corpus(EXAMPLES / "corpus.jsonl")
    assert len(corpus.select(split="test").items) == 1
    only = corpus.select(dimensions=["self_transcendence"])
    assert only.pole_contrasts() == [("self_transcendence", "self_enhancement")]
    assert len(only.items) == 4
    with pytest.raises(VneuronError, match="no label"):
        corpus.select(dimensions=["kindness"])
    with pytest.raises(VneuronError, match="language 'fr'"):
        corpus.select(language="fr")


@pytest.mark.parametrize("content, message", [
    ('{"scenario": "x", "option_pole": "a"}\n', "missing columns"),
    ('{"scenario": "x", "option_pole": "a", "option_opposite": "b", "dimension": "kindness"}\n', "not a Schwartz.*opposite"),
    ('{"scenario": "", "option_pole": "a", "option_opposite": "b", "dimension": "conservation"}\n', "row 2: empty 'scenario'"),
    ('{"scenario": "x", "option_pole": "a", "option_opposite": "b", "dimension": "conservation", "split": "dev"}\n', "unknown split"),
    ('{"scenario": "x"\n', "line 1: not valid JSON"),
    ("", "holds no items"),
])
def test_malformed_files_give_one_line_errors(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(VneuronError, match=message) as err:
        load_corpus(path)
    assert "\n" not in str(err.value)


def test_wrong_encoding_and_missing_file(tmp_path):
    path = tmp_path / "gbk.csv"
    path.write_bytes("text,label\n你好,a\n".encode("gbk"))
    with pytest.raises(VneuronError, match="not UTF-8"):
        load_corpus(path)
    with pytest.raises(VneuronError, match="does not exist"):
        load_corpus(tmp_path / "nope.jsonl")


def test_empty_pole_is_an_error(tmp_path):
    path = tmp_path / "texts.csv"
    path.write_text("text,label\nbe kind,kind\nbe kind again,kind\n")
    with pytest.raises(VneuronError, match="no way to pair|has no texts"):
        load_corpus(path)
    with pytest.raises(VneuronError, match="pole 'cruel' has no texts"):
        load_corpus(path, contrasts=[("kind", "cruel")])


# -- the built-in corpus --------------------------------------------------------------------
def _builtin_rows():
    for path in sorted(builtin_dir().glob("*/*.jsonl")):
        if not path.name.endswith(".descriptions.jsonl"):
            for line in path.read_text(encoding="utf-8").splitlines():
                yield path, json.loads(line)


def test_builtin_corpus_schema_and_uniqueness():
    rows = list(_builtin_rows())
    ids = Counter(r["id"] for _, r in rows)
    assert not [i for i, c in ids.items() if c > 1], "duplicate ids"
    scenarios = Counter(r["scenario"].strip().lower() for _, r in rows)
    assert not [s for s, c in scenarios.items() if c > 1], "duplicate scenarios"
    for path, r in rows:
        assert r["language"] == path.parent.name
        assert r["dimension"] in DIMENSIONS and r["split"] in ("train", "test")
        assert r["option_pole"].strip() and r["option_opposite"].strip() and r["option_pole"] != r["option_opposite"]
    corpus = load_corpus()
    for language in ("en", "zh"):
        counts = Counter(i.dimension for i in corpus.items if i.language == language)
        assert all(counts[d] >= 30 for d in DIMENSIONS), counts
        for d in DIMENSIONS:
            assert corpus.descriptions[language][d]
