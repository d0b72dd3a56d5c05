"""Source-format loaders: C-voice, Touché23-ValueEval, PVQ inventories, Hugging Face datasets,
``list_datasets``, and their one-line errors."""

from __future__ import annotations

import csv
import importlib.util
import sys
from collections import Counter
from pathlib import Path

import pytest

from vneuron.data import DIMENSIONS, InventoryItem, list_datasets, load_corpus, load_inventory
from vneuron.data.cvoice import cvoice_columns, parse_conflict
from vneuron.data.inventories import value_dimension
from vneuron.data.touche import CATEGORIES, read_touche
from vneuron.errors import VneuronError

FIXTURES = Path(__file__).resolve().parent / "fixtures"
HAS_DATASETS = importlib.util.find_spec("datasets") is not None


def one_line_error(call, pattern):
    with pytest.raises(VneuronError, match=pattern) as err:
        call()
    assert "\n" not in str(err.value)
    return str(err.value)


# -- C-voice ------------------------------------------------------------------------------------
def test_cvoice_csv_and_xlsx_give_the_same_items():
    corpus = load_corpus(FIXTURES / "cvoice.csv")
    sheet = load_corpus(FIXTURES / "cvoice.xlsx")  # Chinese headers, on the second sheet after a notes sheet
    assert corpus.items == sheet.items
    assert len(corpus.items) == 8
    first = corpus.items[0]
    assert (first.dimension, first.opposite, first.value, first.opposite_value) == ("诚信|友善", "友善|诚信", "诚信", "友善")
    assert first.option_pole.startswith("如实告诉他") and first.option_opposite.startswith("说菜很好吃")
    assert first.language == "zh" and first.id == "cvoice-2"
    assert Counter((i.dimension, i.opposite) for i in corpus.items) == {("诚信|友善", "友善|诚信"): 4, ("敬业|和谐", "和谐|敬业"): 3,
                                                                       ("公正", "not 公正"): 1}
    assert sorted(corpus.contrasts) == sorted([("诚信|友善", "友善|诚信"), ("友善|诚信", "诚信|友善"), ("敬业|和谐", "和谐|敬业"),
                                               ("和谐|敬业", "敬业|和谐"), ("公正", "not 公正"), ("not 公正", "公正")])
    assert len(corpus.select(split="test").items) == 2
    assert corpus.select(dimensions=["敬业|和谐"]).pole_contrasts() == [("敬业|和谐", "和谐|敬业")]
    prompt = corpus.action_prompts()[0]
    lo, hi = prompt.span
    assert prompt.text[lo:hi] == first.option_pole and "\n我会" in prompt.text


@pytest.mark.parametrize("value, expected", [
    ("诚信 vs 友善", ("诚信", "友善")), ("诚信VS友善", ("诚信", "友善")), ("诚信 vs. 友善", ("诚信", "友善")),
    ("Honesty v.s. Kindness", ("Honesty", "Kindness")), ("公正", ("公正", None)), ("Canvas", ("Canvas", None)),
    ("a vs b vs c", None), ("诚信 vs ", None), ("诚信 vs 诚信", None),
])
def test_cvoice_value_conflicts(value, expected):
    assert parse_conflict(value) == expected


def test_cvoice_header_names_and_column_mapping(tmp_path):
    assert cvoice_columns(["Value", "Dilemma", "Choice A", "choice-b"]) == {
        "value": "Value", "dilemma": "Dilemma", "choice_a": "Choice A", "choice_b": "choice-b"}
    assert cvoice_columns(["价值观", "情境", "选择Ａ", "选择B", "语言"])["language"] == "语言"
    assert cvoice_columns(["value", "dilemma", "choice_a"]) is None
    path = tmp_path / "mine.csv"
    path.write_text("conflict,story,yes,no,language\nHonesty vs Kindness,A friend asks about a bad cake.,tell the truth,"
                    "praise the cake,en\nHonesty vs Kindness,A colleague asks about a weak talk.,say what was weak,say it was great,en\n",
                    encoding="utf-8")
    corpus = load_corpus(path, columns={"dilemma": "story", "choice_a": "yes", "choice_b": "no"})
    assert [(i.dimension, i.opposite, i.language) for i in corpus.items] == [("Honesty|Kindness", "Kindness|Honesty", "en")] * 2


@pytest.mark.parametrize("row, message", [
    ("诚信 vs 友善,情境,,选项", r"row 2: empty '选项A' \(no complete row is left\)"),
    ("诚信 vs 友善 vs 公正,情境,甲,乙", r"row 2: cannot read the value conflict.*'X vs Y'"),
    ("诚信 vs 友善,情境,甲,甲", r"row 2: 选项A and 选项B are the same"),
])
def test_cvoice_row_errors(tmp_path, row, message):
    path = tmp_path / "bad.csv"
    path.write_text("价值观,困境,选项A,选项B\n" + row + "\n", encoding="utf-8")
    text = one_line_error(lambda: load_corpus(path), message)
    assert str(path) in text


def test_missing_columns_name_the_file_and_all_layouts(tmp_path):
    path = tmp_path / "half.csv"
    path.write_text("value,dilemma\n诚信,情境\n", encoding="utf-8")
    text = one_line_error(lambda: load_corpus(path), "missing columns.*choice_a, choice_b \\(C-voice\\)")
    assert str(path) in text and "`columns`" in text


def test_gbk_file_names_the_row_and_the_fix(tmp_path):
    path = tmp_path / "gbk.csv"
    path.write_bytes("value,dilemma,choice_a,choice_b\nfair vs kind,ok,a,b\n诚信 vs 友善,情境,甲,乙\n".encode("gbk"))
    text = one_line_error(lambda: load_corpus(path), r"gbk.csv, row 3: not UTF-8 text .*GBK")
    assert "iconv -f GBK -t UTF-8" in text


def test_unknown_labels_and_empty_poles(tmp_path):
    corpus = load_corpus(FIXTURES / "cvoice.csv")
    one_line_error(lambda: corpus.select(dimensions=["爱国"]), "no label 爱国")
    one_line_error(lambda: load_corpus(FIXTURES / "cvoice.csv", contrasts=[("诚信|友善", "爱国")]), "pole '爱国' has no texts")


# -- Touché23-ValueEval -------------------------------------------------------------------------
OC_CATS = ("Self-direction: thought", "Self-direction: action", "Stimulation")
CO_CATS = ("Security: personal", "Security: societal", "Tradition", "Conformity: rules", "Conformity: interpersonal")


def _raw_labels(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))


def test_touche_counts_match_the_raw_tsv(shared_data):
    root = shared_data / "touche23"
    raw = _raw_labels(root / "labels-test.tsv")
    has = lambda row, cats: any(row[c] == "1" for c in cats)  # noqa: E731
    oc_only = sum(has(r, OC_CATS) and not has(r, CO_CATS) for r in raw)
    co_only = sum(has(r, CO_CATS) and not has(r, OC_CATS) for r in raw)
    both = sum(has(r, OC_CATS) and has(r, CO_CATS) for r in raw)

    corpus = load_corpus(root)
    test = Counter(t.label for t in corpus.texts if t.split == "test")
    assert test["openness_to_change"] == oc_only == 206
    assert test["conservation"] == co_only
    data = read_touche(root)
    assert data.ambiguous["test", "openness_vs_conservation"] == both
    assert data.arguments == {"train": 5393 + 1896, "test": 1576}
    assert {t.split for t in corpus.texts} == {"train", "test"} and {t.language for t in corpus.texts} == {"en"}
    assert set(corpus.labels) == set(DIMENSIONS)
    # one text per argument and axis, grouped by argument
    per_argument = Counter(t.group for t in corpus.texts)
    assert max(per_argument.values()) == 2 and len(per_argument) < 8865
    assert len({t.id for t in corpus.texts}) == len(corpus.texts)
    labels_of = {}
    for t in corpus.texts:
        labels_of.setdefault(t.group, set()).add(t.label)
    assert not any({"openness_to_change", "conservation"} <= s or {"self_enhancement",
                                                                   "self_transcendence"} <= s for s in labels_of.values())


def test_touche_text_styles_and_boundary_values(shared_data):
    root = shared_data / "touche23"
    with open(root / "arguments-test.tsv", encoding="utf-8", newline="") as fh:
        first = next(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    full = load_corpus(root, touche_text="full")
    mine = [t for t in full.texts if t.group == first["Argument ID"]]
    assert mine and mine[0].text == f"{first['Conclusion']} ({first['Stance']}): {first['Premise']}"
    premise = [t for t in load_corpus(root).texts if t.group == first["Argument ID"]]
    assert premise[0].text == first["Premise"]
    # counting the boundary values (Hedonism, Face, Humility) for both their dimensions gives more texts
    with_boundary = read_touche(root, ignore=())
    default = read_touche(root)
    assert len(with_boundary.texts) != len(default.texts)
    hedonism_only = [r["Argument ID"] for r in _raw_labels(root / "labels-test.tsv")
                     if r["Hedonism"] == "1" and sum(r[c] == "1" for c in CATEGORIES) == 1]
    groups = {t.group for t in default.texts}
    assert hedonism_only and not groups & set(hedonism_only)
    one_line_error(lambda: load_corpus(root, touche_text="conclusion"), "Unknown Touché23 text style")


HEADER = "Argument ID\t" + "\t".join(CATEGORIES)


def _touche(tmp_path: Path, arguments: list[str], labels: list[str], part: str = "training") -> Path:
    root = tmp_path / "touche"
    root.mkdir(exist_ok=True)
    (root / f"arguments-{part}.tsv").write_text("\n".join(["Argument ID\tConclusion\tStance\tPremise", *arguments]) + "\n",
                                                encoding="utf-8")
    (root / f"labels-{part}.tsv").write_text("\n".join([HEADER, *labels]) + "\n", encoding="utf-8")
    return root


def _labels(arg: str, *cats: str, value: str = "1") -> str:
    return arg + "\t" + "\t".join(value if c in cats else "0" for c in CATEGORIES)


def test_touche_small_release_and_ambiguity(tmp_path):
    root = _touche(tmp_path, [
        "A1\tWe should ban x\tin favor of\tx harms \"our\" traditions",
        "A2\tWe should ban x\tagainst\tpeople should be free to choose",
        "A3\tWe should ban x\tagainst\tfreedom and safety both matter",
        "A4\tWe should ban x\tin favor of\tit is fun",
    ], [
        _labels("A1", "Tradition", "Universalism: concern"),
        _labels("A2", "Self-direction: action", "Power: resources"),
        _labels("A3", "Self-direction: action", "Security: personal"),
        _labels("A4", "Hedonism"),
    ])
    corpus = load_corpus(root)
    assert [(t.id, t.label) for t in corpus.texts] == [
        ("A1:CO", "conservation"), ("A1:ST", "self_transcendence"), ("A2:OC", "openness_to_change"), ("A2:SE", "self_enhancement")]
    assert corpus.texts[0].text == 'x harms "our" traditions'  # the TSVs are unquoted
    data = read_touche(root)
    assert data.ambiguous == {("train", "openness_vs_conservation"): 1}
    assert data.neither[("train", "enhancement_vs_transcendence")] == 2  # A3 and A4


@pytest.mark.parametrize("arguments, labels, message", [
    (["A1\tc\ts\tp"], [_labels("A1", "Tradition").replace("\t1", "\t2")], r"labels-training.tsv, row 2: label 'Tradition' is '2'"),
    (["A1\tc\ts\tp"], [_labels("A1", "Tradition") + "\t0"], r"labels-training.tsv, row 2: 22 tab-separated fields"),
    (["A1\tc\ts\t "], [_labels("A1", "Tradition")], r"arguments-training.tsv, row 2: empty 'Premise'"),
    (["A1\tc\ts\tp", "A2\tc\ts\tq"], [_labels("A1", "Tradition")], r"arguments-training.tsv, row 3: argument A2 has no row"),
])
def test_touche_errors_name_file_and_row(tmp_path, arguments, labels, message):
    root = _touche(tmp_path, arguments, labels)
    one_line_error(lambda: load_corpus(root), message)


def test_touche_unknown_label_column_missing_file_and_empty_pole(tmp_path):
    root = _touche(tmp_path, ["A1\tc\ts\tp"], [_labels("A1", "Tradition")])
    (root / "labels-training.tsv").write_text(HEADER.replace("Tradition", "Custom") + "\n" + _labels("A1") + "\n", encoding="utf-8")
    one_line_error(lambda: load_corpus(root), "unknown label column 'Custom'")
    root = _touche(tmp_path, ["A1\tc\ts\tp", "A2\tc\ts\tq"], [_labels("A1", "Tradition"), _labels("A2", "Security: personal")])
    one_line_error(lambda: load_corpus(root), "pole 'openness_to_change' has no texts")
    (root / "arguments-test.tsv").write_text("Argument ID\tConclusion\tStance\tPremise\nB1\tc\ts\tp\n", encoding="utf-8")
    one_line_error(lambda: load_corpus(root), "arguments-test.tsv has no labels-test.tsv")
    (root / "arguments-test.tsv").unlink()
    (root / "arguments-training.tsv").write_text("Argument ID\tConclusion\tStance\tText\nA1\tc\ts\tp\n", encoding="utf-8")
    one_line_error(lambda: load_corpus(root), "arguments-training.tsv: missing columns Premise")


# -- inventories --------------------------------------------------------------------------------
def test_pvq40_from_valuebench(shared_data, monkeypatch, tmp_path):
    path = shared_data / "valuebench" / "value_orientation.csv"
    items = load_inventory(path)
    with open(path, encoding="utf-8", newline="") as fh:
        raw = [r for r in csv.DictReader(fh) if r["questionnaire"] == "PVQ40"]
    assert len(items) == len(raw) == 40
    assert all(isinstance(i, InventoryItem) and i.questionnaire == "PVQ40" and i.key == 1 for i in items)
    assert [i.text for i in items] == [r["item"].strip() for r in raw]
    assert len({i.value for i in items}) == 10 and all(i.dimension in DIMENSIONS for i in items)
    assert Counter(i.dimension for i in items) == {"conservation": 13, "openness_to_change": 10, "self_transcendence": 10,
                                                   "self_enhancement": 7}
    assert items[0].id == "PVQ40-1"
    mft = load_inventory(path, "MFT23")
    assert len(mft) == 36 and all(i.dimension is None for i in mft)
    one_line_error(lambda: load_inventory(path, "PVQ-XX"), "no items of questionnaire 'PVQ-XX'.*PVQ40")
    # by name: found through $VNEURON_DATA
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("VNEURON_DATA", raising=False)
    one_line_error(lambda: load_inventory("PVQ-40"), "no ValueBench copy")
    monkeypatch.setenv("VNEURON_DATA", str(shared_data))
    assert load_inventory("pvq40") == items


def test_generic_inventory_and_value_dimensions():
    items = load_inventory(FIXTURES / "inventory.csv")
    assert [i.key for i in items] == [1, 1, -1, 1, 1, 1]
    assert [i.dimension for i in items] == ["openness_to_change", "conservation", "self_enhancement", "self_transcendence",
                                            "openness_to_change", None]
    assert items[0].questionnaire == "inventory" and items[0].id == "inventory-1"
    assert value_dimension("Hedonism") == "openness_to_change" and value_dimension("self direction – action") == "openness_to_change"
    assert value_dimension("Face") is None and value_dimension("Humility") is None
    assert value_dimension("Universalism: nature") == "self_transcendence"


@pytest.mark.parametrize("content, message", [
    ("item,value,key\nI like rules.,Conformity,2\n", r"row 2: key '2' is not \+1 or -1"),
    ("item,value,key\nI like rules.,Conformity,\n", r"row 2: key None is not \+1 or -1"),
    ("item,value\nI like rules.,Conformity\n", r"missing columns key"),
    ("item,value,key\n,Conformity,1\n", r"row 2: empty 'item'"),
    ("item,value,key,dimension\nI like rules.,Conformity,1,order\n", r"row 2: unknown dimension 'order'"),
    ("id,item,value,key\nq1,I like rules.,Conformity,1\nq1,I like rules a lot.,Conformity,1\n", r"row 3: id 'q1' already used in row 2"),
])
def test_inventory_errors(tmp_path, content, message):
    path = tmp_path / "inv.csv"
    path.write_text(content, encoding="utf-8")
    text = one_line_error(lambda: load_inventory(path), message)
    assert str(path) in text


def test_inventory_column_mapping_and_questionnaire_filter(tmp_path):
    path = tmp_path / "rr.tsv"
    path.write_text("form\tstatement\tval\trev\tdimension\nRR\tI value tradition.\tTradition\t1\t\n"
                    "RR\tI care for others.\tBenevolence: caring\t-1\tself_transcendence\nOTHER\tx\tPower\t1\t\n", encoding="utf-8")
    items = load_inventory(path, "rr", columns={"questionnaire": "form", "item": "statement", "value": "val", "key": "rev"})
    assert [(i.id, i.key, i.dimension) for i in items] == [("RR-1", 1, "conservation"), ("RR-2", -1, "self_transcendence")]


# -- Hugging Face datasets ----------------------------------------------------------------------
@pytest.mark.skipif(not HAS_DATASETS, reason="datasets is not installed")
def test_save_to_disk_round_trip(tmp_path):
    import datasets

    labels = datasets.ClassLabel(names=["self_enhancement", "self_transcendence"])
    features = datasets.Features({"sentence": datasets.Value("string"), "value_label": labels})
    part = lambda texts, ys: datasets.Dataset.from_dict({"sentence": texts, "value_label": ys}, features=features)  # noqa: E731
    dd = datasets.DatasetDict({"train": part(["win at all costs", "share with others", "be the boss"], [0, 1, 0]),
                               "test": part(["help a stranger", "earn the most"], [1, 0])})
    dd.save_to_disk(str(tmp_path / "dd"))
    corpus = load_corpus(tmp_path / "dd", columns={"text": "sentence", "label": "value_label"})
    assert [(t.text, t.label, t.split) for t in corpus.texts] == [
        ("win at all costs", "self_enhancement", "train"), ("share with others", "self_transcendence", "train"),
        ("be the boss", "self_enhancement", "train"), ("help a stranger", "self_transcendence", "test"),
        ("earn the most", "self_enhancement", "test")]
    assert len({t.id for t in corpus.texts}) == 5
    # a single Dataset in C-voice layout: same items as the CSV fixture
    with open(FIXTURES / "cvoice.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "cvoice"))
    expected = [i.dimension for i in load_corpus(FIXTURES / "cvoice.csv").items]
    assert [i.dimension for i in load_corpus(tmp_path / "cvoice").items] == expected
    # a split that is neither train nor test
    datasets.DatasetDict({"other": dd["train"]}).save_to_disk(str(tmp_path / "other"))
    one_line_error(lambda: load_corpus(tmp_path / "other", columns={"text": "sentence", "label": "value_label"}),
                   r"split 'other'.*hf:NAME:SPLIT")


def test_hub_offline_and_missing_datasets_package(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if HAS_DATASETS:
        one_line_error(lambda: load_corpus("hf:someone/values:train"), r"hf:someone/values:train.*offline \(HF_HUB_OFFLINE is set\)")
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "dataset_dict.json").write_text('{"splits": ["train"]}')
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    one_line_error(lambda: load_corpus(saved), r"needs the datasets package. Install the optional extra: pip install 'vneuron\[datasets\]'")
    one_line_error(lambda: load_corpus("hf:someone/values"), r"pip install 'vneuron\[datasets\]'")


# -- list_datasets ------------------------------------------------------------------------------
def test_list_datasets_builtin_formats_and_found_copies(shared_data, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("VNEURON_DATA", raising=False)
    entries = list_datasets()
    assert all({"name", "languages", "items", "labels", "description"} <= set(e) for e in entries)
    builtin = [e for e in entries if e["name"] == "builtin"]
    assert sorted(lang for e in builtin for lang in e["languages"]) == ["en", "zh"]
    assert all(e["items"] > 0 for e in builtin)
    assert not [e for e in entries if e["kind"] == "found"]
    described = " ".join(e["name"] + " " + e["description"] for e in entries)
    for needle in ("arguments-*.tsv", "C-voice", "hf:NAME", "save_to_disk", "load_inventory"):
        assert needle in described
    monkeypatch.setenv("VNEURON_DATA", str(shared_data))
    found = {Path(e["name"]).name: e for e in list_datasets() if e["kind"] == "found"}
    assert found["touche23"]["items"] == len(load_corpus(shared_data / "touche23").texts)
    assert found["value_orientation.csv"]["items"] == 40
