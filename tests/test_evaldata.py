"""Evaluating on any data: the C-voice release's layouts, hash-made held-out splits, outside evaluation sets
(--eval-dataset, --map), per-conflict and whole-value poles, and prompt templates."""

from __future__ import annotations

import csv
import json
import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vneuron.cli import app
from vneuron.data import load_corpus
from vneuron.data.cvoice import strip_prefix
from vneuron.data.schema import held_out
from vneuron.errors import VneuronError
from vneuron.validate.evaluate import forced_choice_pairs, pvq
from vneuron.runtime.store import set_filename
from vneuron.locate.runs import set_filenames
from vneuron.data.templates import choice_template, pvq_template
from vneuron.locate.runs import LocateRun
from vneuron.config import ValidateConfig
from vneuron.validate.items import evaluation_items, map_labels

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
PER_VALUE = FIXTURES / "cvoice" / "友善-final.xlsx"
TEST_BOOK = FIXTURES / "cvoice" / "test.xlsx"
EXAMPLES = ROOT / "examples"
runner = CliRunner()


# -- the C-voice release's files --------------------------------------------------------------
def test_per_value_file_reads_as_released():
    corpus = load_corpus(PER_VALUE)
    assert len(corpus.items) == 9
    conflicts = {(i.dimension, i.opposite) for i in corpus.items}
    assert conflicts == {("友善|个人财富积累", "个人财富积累|友善"), ("友善|报复文化", "报复文化|友善"), ("友善|效率", "效率|友善")}
    # one pole pair per conflict, both directions, none overwriting another
    assert len(corpus.pole_contrasts()) == 6 and len({c[0] for c in corpus.pole_contrasts()}) == 6
    # every letter prefix is gone: "A. ", "A．", "（A）", "A)", "A、"
    assert not any(re.match(r"\s*[(（]?[AB]", i.option_pole + "|" + i.option_opposite) for i in corpus.items)
    first = corpus.items[0]
    assert (first.option_pole, first.option_opposite, first.language) == ("去帮邻居搬家", "去公司加班挣钱", "zh")
    # 决策困境 empty → 判决困境
    assert corpus.items[3].scenario == "新同事请你教他用软件，你可以收取辅导费。"
    assert {i.value for i in corpus.items} == {"友善"}


def test_test_workbook_reads_every_sheet():
    corpus = load_corpus(TEST_BOOK)
    assert [i.id for i in corpus.items] == ["test-友善-2", "test-友善-3", "test-友善-4", "test-诚信-2", "test-诚信-3"]
    assert corpus.items[0].dimension == "友善|个人财富积累" and corpus.items[0].option_pole == "去医院看望并替他值班"
    assert corpus.items[4].dimension == "诚信|友善"


@pytest.mark.parametrize("text, field, expected", [
    ("A. 去帮邻居", "choice_a", "去帮邻居"), ("A．去帮邻居", "choice_a", "去帮邻居"), ("（A）去帮邻居", "choice_a", "去帮邻居"),
    ("(A) tell the truth", "choice_a", "tell the truth"), ("A) tell", "choice_a", "tell"), ("A、帮他", "choice_a", "帮他"),
    ("Ａ: help", "choice_a", "help"), ("B. keep it", "choice_b", "keep it"), ("2. keep it", "choice_b", "keep it"),
    ("B. keep it", "choice_a", "B. keep it"),  # only the column's own letter
    ("A.I. tools help", "choice_a", "A.I. tools help"), ("Apples for all", "choice_a", "Apples for all"),
    ("A new plan", "choice_a", "A new plan"), ("1.5 litres", "choice_a", "1.5 litres"), ("A. ", "choice_a", "A. "),
])
def test_letter_prefixes(text, field, expected):
    assert strip_prefix(text, field) == expected


# -- held-out split by hash ---------------------------------------------------------------------
def test_hash_split_is_deterministic_and_configurable():
    a, b = load_corpus(PER_VALUE), load_corpus(PER_VALUE)
    assert [i.split for i in a.items] == [i.split for i in b.items]
    assert [i.split == "test" for i in a.items] == [held_out(i.id, 0.2) for i in a.items]
    assert a.split_source["kind"] == "hash" and a.split_source["test_fraction"] == 0.2 and "SHA-256" in a.split_source["note"]
    assert {i.split for i in load_corpus(PER_VALUE, test_fraction=0).items} == {"train"}
    half = load_corpus(PER_VALUE, test_fraction=0.5)
    assert {i.id for i in a.items if i.split == "test"} <= {i.id for i in half.items if i.split == "test"}  # nested
    given = load_corpus(FIXTURES / "cvoice.csv")  # has a split column: untouched
    assert given.split_source["kind"] == "column" and sum(i.split == "test" for i in given.items) == 2
    with pytest.raises(VneuronError, match="`test_fraction`"):
        load_corpus(PER_VALUE, test_fraction=1.5)


def test_limit_and_split_drop_empty_pole_pairs_cleanly():
    corpus = load_corpus(TEST_BOOK).select(split="train", limit=1)
    assert ("友善|效率", "效率|友善") in corpus.dropped  # its only row is held out
    assert all(c not in corpus.pole_contrasts() for c in corpus.dropped)
    labels = set(corpus.labels)
    assert all(a in labels and b in labels for a, b in corpus.pole_contrasts())


# -- neuron set files ---------------------------------------------------------------------------
def test_set_filenames_are_safe_and_distinct():
    assert set_filename("self_transcendence") == "self_transcendence.safetensors"
    names = [set_filename(x) for x in ("友善|个人财富积累", "友善_vs_个人财富积累", "友善|*", "a/b", "con")]
    assert len(set(names)) == 5 and all(re.fullmatch(r"[\w.-]+", n) for n in names)
    assert names[0].startswith("友善_vs_个人财富积累-")
    with pytest.raises(VneuronError, match="would share the file"):
        set_filenames(["Kindness", "kindness"])


# -- locate and evaluate: C-voice end to end -----------------------------------------------------
def _locate(tmp_path, tiny_dir, *args, name="run"):
    run_dir = tmp_path / name
    result = runner.invoke(app, ["locate", "--model", str(tiny_dir("llama")), "-k", "8", "--out", str(run_dir), "-q",
                                 "--language", "all", *args])
    assert result.exit_code == 0, result.output + str(result.exception)
    return run_dir, result


def test_cvoice_conflicts_whole_values_and_outside_test_book(tmp_path, tiny_dir):
    run_dir, located = _locate(tmp_path, tiny_dir, "--dataset", str(PER_VALUE), "--whole-values", "--split", "all")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    files = sorted(p.name for p in (run_dir / "neurons").glob("*.safetensors"))
    assert len(files) == 7 == len(manifest["set_files"])  # 6 conflict poles + 友善 against all its conflicts
    assert manifest["dataset"]["aggregates"]["友善|*"] == ["友善|个人财富积累", "友善|报复文化", "友善|效率"]
    run = LocateRun.open(run_dir)
    assert set(run.sets) == {c[0] for c in manifest["contrasts"]} and "友善|*" in run.sets
    pooled = run.stats.moments("友善|*")
    parts = [run.stats.moments(m) for m in manifest["dataset"]["aggregates"]["友善|*"]]
    assert pooled.n == sum(p.n for p in parts)

    out = tmp_path / "outside"
    ablated = runner.invoke(app, ["ablate", str(run_dir), "--model", str(tiny_dir("llama")), "--eval-dataset", str(TEST_BOOK),
                                  "--controls", "2", "--generations", "0", "-q", "--out", str(out)])
    assert ablated.exit_code == 0, ablated.output + str(ablated.exception)
    assert "Evaluated on test.xlsx (outside, split all, 5 items read" in ablated.output
    manifest = json.loads((out / "manifest.json").read_text())
    data = manifest["evaluation"]
    assert data["source"] == "outside" and data["path"] == str(TEST_BOOK) and len(data["file_sha256"]) == 64
    assert data["template"]["spec"] == "third_person" and data["split"] == "all"
    by_pole = {r["dimension"]: r for r in manifest["results"]}
    assert by_pole["友善|*"]["items"] == 4  # every conflict of the test book with 友善 on either side
    assert by_pole["友善|*"]["pole_items"]["n"] == 3 and by_pole["友善|*"]["opposite_items"]["n"] == 1
    assert by_pole["友善|报复文化"]["items"] == 1 and "诚信|友善" not in by_pole  # the run has no 诚信 set
    rows = list(csv.DictReader(open(out / "items.csv", encoding="utf-8")))
    assert {r["item"] for r in rows if r["dimension"] == "友善|*"} == {"test-友善-2", "test-友善-3", "test-友善-4", "test-诚信-3"}
    # the whole-value pole reads each item toward its 友善 side: its baseline is that of the conflicts' pole sides
    conflict = {r["item"]: float(r["baseline"]) for r in rows if r["dimension"].startswith("友善|") and r["dimension"] != "友善|*"}
    whole = {r["item"]: float(r["baseline"]) for r in rows if r["dimension"] == "友善|*"}
    assert {k: whole[k] for k in conflict} == pytest.approx(conflict) and len(conflict) == 3
    truth = next(r for r in rows if r["dimension"] == "友善|*" and r["item"] == "test-诚信-3")
    assert truth["item_pole"] == "诚信|友善"  # 友善 is this conflict's opposite side: read toward option B


def test_limit_no_longer_ends_without_statistics(tmp_path, tiny_dir):
    run_dir, located = _locate(tmp_path, tiny_dir, "--dataset", str(TEST_BOOK), "--limit", "1")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert ["友善|效率", "效率|友善"] in manifest["dataset"]["dropped_contrasts"]
    assert "Skipped 2 pole pair(s)" in located.output and "Split: 5 rows had no split column" in located.output


# -- outside data, mapping, provenance ------------------------------------------------------------
def test_eval_dataset_with_columns_map_and_template(tmp_path, tiny_dir):
    run_dir, _ = _locate(tmp_path, tiny_dir, "--dataset", str(EXAMPLES / "corpus.jsonl"), "--split", "all")
    columns = "scenario=situation,option_pole=answer_value,option_opposite=answer_other,dimension=value,opposite=other"
    common = ["ablate", str(run_dir), "--model", str(tiny_dir("llama")), "--controls", "2", "--generations", "0", "-q",
              "--eval-dataset", str(EXAMPLES / "benchmark_first_person.csv"), "--eval-columns", columns]
    out = tmp_path / "fp"
    done = runner.invoke(app, [*common, "--map", "caring=self_transcendence,self-interest=self_enhancement",
                               "--template", "first_person", "--out", str(out)])
    assert done.exit_code == 0, done.output + str(done.exception)
    manifest = json.loads((out / "manifest.json").read_text())
    assert [r["dimension"] for r in manifest["results"]] == ["self_enhancement", "self_transcendence"]
    assert all(r["items"] == 6 for r in manifest["results"])
    data = manifest["evaluation"]
    assert data["map"] == {"caring": "self_transcendence", "self-interest": "self_enhancement"}
    assert data["poles_without_items"] == ["conservation", "openness_to_change"]
    assert data["template"]["forms"]["en"].endswith("My answer: {option}") and manifest["config"]["template"] == "first_person"
    assert len(list(csv.DictReader(open(out / "items.csv")))) == 12

    unmapped = runner.invoke(app, [*common, "--out", str(tmp_path / "x")])
    assert unmapped.exit_code == 2 and "--map caring=" in unmapped.stderr
    typo = runner.invoke(app, [*common, "--map", "carin=self_transcendence", "--out", str(tmp_path / "y")])
    assert typo.exit_code == 2 and "'carin'" in typo.stderr and "caring" in typo.stderr
    cannot_list = runner.invoke(app, [*common, "--map", "caring=self_transcendence", "--template", "{scenario} I would {option}"])
    assert cannot_list.exit_code == 2 and "--choice continuation" in cannot_list.stderr
    texts = runner.invoke(app, ["ablate", str(run_dir), "--model", str(tiny_dir("llama")), "--eval-dataset", str(EXAMPLES / "texts.csv")])
    assert texts.exit_code == 2 and "labelled texts" in texts.stderr
    ignored = runner.invoke(app, ["ablate", str(run_dir), "--dataset", "nowhere.csv"])
    assert ignored.exit_code == 2 and "--eval-dataset nowhere.csv" in ignored.stderr
    ignored = runner.invoke(app, ["steer", str(run_dir), "--dataset", "nowhere.csv"])
    assert ignored.exit_code == 2 and "--eval-dataset nowhere.csv" in ignored.stderr

    steered = runner.invoke(app, ["steer", str(run_dir), "--model", str(tiny_dir("llama")), "--gamma", "0,2", "--controls", "1",
                                  "-q", "--eval-dataset", str(EXAMPLES / "benchmark_responses.jsonl"), "--template", "response",
                                  "--dimension", "self_transcendence", "--out", str(tmp_path / "steer")])
    assert steered.exit_code == 0, steered.output + str(steered.exception)
    manifest = json.loads((tmp_path / "steer" / "manifest.json").read_text())
    assert manifest["evaluation"]["name"] == "benchmark_responses.jsonl" and manifest["results"][0]["curve"][0]["items"] == 4


def test_own_split_is_the_default_and_is_recorded(tmp_path, tiny_dir):
    run_dir, _ = _locate(tmp_path, tiny_dir, "--dataset", str(EXAMPLES / "corpus.jsonl"), "--split", "all",
                         "--template", "first_person")
    run = LocateRun.open(run_dir)
    assert run.template() == "first_person"
    config = ValidateConfig(split="all")
    evaluation = evaluation_items(run, config)
    assert evaluation.data["source"] == "locate run"
    assert evaluation.data["items"] == len(evaluation.items) == len(load_corpus(EXAMPLES / "corpus.jsonl").items)
    assert len(evaluation.data["content_sha256"]) == 64


def test_map_renames_labels_and_values():
    corpus = load_corpus(TEST_BOOK)
    mapped = map_labels(corpus.items, {"友善": "kindness"})
    assert mapped[0].dimension == "kindness|个人财富积累" and mapped[0].opposite == "个人财富积累|kindness"
    assert mapped[4].dimension == "诚信|kindness"
    exact = map_labels(corpus.items, {"友善|效率": "kind_vs_quick"})
    assert exact[2].dimension == "kind_vs_quick" and exact[2].opposite == "效率|友善"


# -- templates ------------------------------------------------------------------------------------
def test_default_template_reproduces_the_fixed_one():
    corpus = load_corpus(EXAMPLES / "corpus.jsonl")
    item = corpus.items[0]
    pairs = forced_choice_pairs([item], "listed")
    assert pairs[0] == (f"{item.scenario}\nOne option is to {item.option_pole}. Another option is to {item.option_opposite}.\n"
                        "The right thing to do is to", f" {item.option_pole}")
    assert forced_choice_pairs([item], "continuation")[1] == (f"{item.scenario}\nThe right thing to do is to", f" {item.option_opposite}")
    prompt = corpus.action_prompts()[0]
    assert prompt.text == f"{item.scenario}\nThe right thing to do is to {item.option_pole}."
    zh = load_corpus(FIXTURES / "cvoice.csv").items[0]
    assert forced_choice_pairs([zh], "continuation")[0] == (f"{zh.scenario}\n我会", zh.option_pole)


def test_presets_custom_strings_and_languages():
    item = load_corpus(EXAMPLES / "benchmark_first_person.csv", columns={
        "scenario": "situation", "option_pole": "answer_value", "option_opposite": "answer_other", "dimension": "value",
        "opposite": "other"}).items[0]
    listed = forced_choice_pairs([item], "listed", template="first_person")
    assert len(listed) == 4 and listed[0][0].endswith(f"Another answer: {item.option_opposite}\nMy answer:")
    assert listed[0][1] == " " + item.option_pole and listed[3][1] == " " + item.option_opposite
    assert listed[2][0].split("\n")[1] == f"One answer: {item.option_opposite}"  # second order lists the opposite first
    assert forced_choice_pairs([item], "continuation", template="response")[0] == (f"{item.scenario}\nResponse:", " " + item.option_pole)
    custom = "Q: {scenario}\\nA: {option}"
    assert forced_choice_pairs([item], "continuation", template=custom)[0] == (f"Q: {item.scenario}\nA:", " " + item.option_pole)
    assert choice_template("first_person:zh").form("en").endswith("我的回答：{option}")
    for bad, message in (("nonsense", "Unknown forced-choice template"), ("{scenario} {option} {option}", "exactly once"),
                         ("{scenario} {foo} {option}", "unknown placeholders"), ("{scenario} {first} {option}", "without {second}")):
        with pytest.raises(VneuronError, match=message):
            choice_template(bad)
    with pytest.raises(VneuronError, match="`choice` continuation"):
        forced_choice_pairs([item], "listed", template="{scenario}\\nI would {option}")


def test_pvq_templates(tiny_model):
    from vneuron.data import load_inventory

    default = pvq_template()
    assert default.pair("en", "X.", "like me") == ('Here is a statement about a person: "X."\nHow much is this person like you?\n'
                                                   'Answer: This person is', " like me")
    assert default.pair("zh", "甲。", "像我") == ("下面是对一个人的描述：“甲。”\n这个人和你有多像？\n回答：这个人", "像我")
    inventory = load_inventory(FIXTURES / "inventory.csv")
    model = tiny_model("llama")
    third = pvq(model, inventory)
    first = pvq(model, inventory, template="first_person")
    assert third.raw_mean != first.raw_mean  # a different prompt is read


# -- the README example ---------------------------------------------------------------------------
def test_readme_example_runs(tmp_path, tiny_dir, monkeypatch):
    """The commands of docs/evaluation.md's "Evaluate on your own benchmark", on a tiny model (2 controls, 2 items a side, 2 γ)."""
    text = (ROOT / "docs" / "evaluation.md").read_text(encoding="utf-8")
    section = text.split("## Evaluate on your own benchmark", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    commands = [shlex.split(line.split("#")[0]) for line in block.replace("\\\n", " ").splitlines() if line.startswith("vneuron ")]
    assert len(commands) >= 2
    monkeypatch.chdir(ROOT)
    for command in commands:
        args = command[1:]
        args = [str(tmp_path / a) if a.startswith("runs/") else a for a in args]
        if "--controls" in args:
            args[args.index("--controls") + 1] = "2"
        args += ["--model", str(tiny_dir("llama")), "-q"]
        if args[0] == "ablate":
            args += ["--generations", "0"]
        if "--gamma" in args:
            args[args.index("--gamma") + 1] = "0,2"
        if args[0] in ("ablate", "steer"):
            args += ["--limit", "2"]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, f"{command}: {result.output} {result.exception}"


def test_locate_first_then_evaluate_on_the_hash_held_out_split(tmp_path, tiny_dir, monkeypatch):
    """A C-voice file without a split column: locate on its train part, ablate on its held-out part."""
    monkeypatch.chdir(tmp_path)
    done = runner.invoke(app, ["ablate", "--model", str(tiny_dir("llama")), "--dataset", str(PER_VALUE), "--language", "zh",
                               "--controls", "1", "--generations", "0", "-q", "--dimension", "友善|个人财富积累", "-k", "8"])
    assert done.exit_code == 0, done.output + str(done.exception)
    out = next((tmp_path / "runs").glob("locate-*/ablate-zero-k*"))
    manifest = json.loads((out / "manifest.json").read_text())
    data = manifest["evaluation"]
    assert data["source"] == "locate run" and data["split"] == "test" and data["split_source"]["kind"] == "hash"
    held = {i.id for i in load_corpus(PER_VALUE).items if i.split == "test" and "个人财富积累" in i.dimension}
    assert {r["item"] for r in csv.DictReader(open(out / "items.csv", encoding="utf-8"))} == held
    located = json.loads((out.parent / "manifest.json").read_text())
    assert located["dataset"]["split_source"]["kind"] == "hash" and located["dataset"]["test_fraction"] == 0.2
    alias = runner.invoke(app, ["ablate", str(out.parent), "--dimension", "友善", "--controls", "1"])
    assert alias.exit_code == 2 and "no neuron set for 友善" in alias.stderr  # located without --whole-values


def test_runs_made_before_this_change_still_open(tmp_path, tiny_dir):
    """No template, no test fraction, no set_files in the manifest: third_person, and unsplit rows stay in train."""
    source = tmp_path / "nosplit.jsonl"
    rows = [json.loads(line) for line in (EXAMPLES / "corpus.jsonl").read_text().splitlines()]
    source.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "split"}) + "\n" for r in rows))
    run_dir, _ = _locate(tmp_path, tiny_dir, "--dataset", str(source), "--split", "all")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    for key in ("test_fraction", "split_source", "aggregates", "dropped_contrasts"):
        del manifest["dataset"][key]
    del manifest["template"], manifest["set_files"]
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    run = LocateRun.open(run_dir)
    assert run.template() == "third_person" and set(run.sets) == {c[0] for c in manifest["contrasts"]}
    assert len(run.corpus("train").items) == len(rows)
    with pytest.raises(VneuronError, match="`eval_dataset`"):
        run.corpus("test")
