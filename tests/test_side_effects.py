"""Side effects beside the same controls, the cross-value matrix, the verdict, and p-values that can reach 0.005."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from vneuron.cli import app
from vneuron.errors import VneuronError
from vneuron.validate.sequential import Sequential
from vneuron.validate.side_effects import against_controls, load_neutral, measure, verdict

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
runner = CliRunner()


def test_builtin_neutral_corpora_and_a_users_file(tmp_path):
    for lang in ("en", "zh"):
        n = load_neutral(lang)
        assert len(n.texts) >= 30 and len(n.pairs) == 40 and {k for k, *_ in n.pairs} == {"fact", "grammar"}
        assert all(right != wrong for _, _, right, wrong in n.pairs) and n.source["prose_sha256"]
    own = tmp_path / "mine.txt"
    own.write_text("# comment\nThe kettle is on the stove.\n\nThe door is blue.\n", encoding="utf-8")
    n = load_neutral("en", own)
    assert n.texts == ["The kettle is on the stove.", "The door is blue."] and len(n.pairs) == 40  # built-in pairs kept
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("Two and two make\t four.\t five.\n", encoding="utf-8")
    n = load_neutral("en", pairs)
    assert n.pairs == [("pair", "Two and two make", " four.", " five.")] and len(n.texts) >= 30
    bad = tmp_path / "bad.txt"
    bad.write_text("a\tb\n", encoding="utf-8")
    with pytest.raises(VneuronError, match="line 1"):
        load_neutral("en", bad)


def test_fit_prose_is_disjoint_from_the_check_prose(tmp_path):
    """A plant is checked on prose it was never fitted on: the built-in fit and check passages share no line."""
    from vneuron.validate.side_effects import load_fit_prose

    for lang in ("en", "zh"):
        fit, source = load_fit_prose(lang)
        check = load_neutral(lang).texts
        assert len(fit) >= 40 and not set(fit) & set(check) and source["sha256"]
    own = tmp_path / "fit.txt"
    own.write_text("The kettle is on the stove.\n", encoding="utf-8")
    assert load_fit_prose("en", own)[0] == ["The kettle is on the stove."]
    (tmp_path / "empty.txt").write_text("# only a comment\n", encoding="utf-8")
    with pytest.raises(VneuronError, match="holds no passage"):
        load_fit_prose("en", tmp_path / "empty.txt")


def test_measure_against_a_hand_written_forward(tiny_model):
    """KL of the unedited model is 0 and its perplexity is the plain forward's; an edit's KL equals the direct computation."""
    from vneuron.validate.edits import Edit
    from vneuron.locate.scoring import NeuronSet

    model = tiny_model("llama")
    neutral = load_neutral("en")
    units = NeuronSet("gate", model.n_layers, model.width, torch.arange(0, 12), torch.zeros(12), {})
    edit = Edit(units, "zero")
    result = measure(model, neutral, [edit, None])
    located, none = result["sets"]
    assert none["kl"] == pytest.approx(0, abs=1e-9) and none["ppl_ratio"] == pytest.approx(1) and none["task_drop"] == pytest.approx(0)
    assert located["kl"] > 0

    act = model.arch  # the reference: forward hooks zero the units at the gate site, every position
    mlps = [getattr(block, act.mlp) for block in model.hf_model.model.layers]
    layer0 = units.units[units.layers == 0]

    def zero(mod, args, out):
        out = out.clone()
        out[..., layer0] = 0
        return out

    nll0 = nll1 = kl = 0.0
    count = 0
    for text in neutral.texts:
        ids = torch.tensor([model.tokenizer(text)["input_ids"]])
        with torch.no_grad():
            ref = model.hf_model(input_ids=ids).logits[0, :-1].log_softmax(-1)
            handle = getattr(mlps[0], act.act).register_forward_hook(zero)
            try:
                new = model.hf_model(input_ids=ids).logits[0, :-1].log_softmax(-1)
            finally:
                handle.remove()
        target = ids[0, 1:, None]
        nll0 -= float(ref.gather(-1, target).sum())
        nll1 -= float(new.gather(-1, target).sum())
        kl += float((ref.exp() * (ref - new)).sum())
        count += ids.shape[1] - 1
    assert result["before"]["ppl_before"] == pytest.approx(math.exp(nll0 / count), rel=1e-6)
    assert located["ppl_after"] == pytest.approx(math.exp(nll1 / count), rel=1e-6)
    assert located["kl"] == pytest.approx(kl / count, rel=1e-6)


def test_ranks_and_verdicts():
    damage = against_controls(0.5, [0.1, 0.2, 0.6])
    assert damage["rank"] == 2 and damage["p"] == pytest.approx(2 / 4)
    quiet = {"kl": against_controls(0.1, [0.2] * 20)}
    loud = {"kl": against_controls(0.9, [0.2] * 20)}
    assert verdict({"p_sequential": 0.01}, quiet, None, 0.05)["verdict"] == "value-specific"
    assert verdict({"p_sequential": 0.01}, loud, None, 0.05)["verdict"] == "non-specific damage"
    assert verdict({"p_sequential": 0.5}, quiet, None, 0.05)["verdict"] == "no effect"
    shared = {"own_moves_most": False, "strongest": "conservation"}
    assert verdict({"p_sequential": 0.01}, quiet, shared, 0.05)["verdict"] == "non-specific damage"


def test_side_effect_controls_are_sequential_per_measure(monkeypatch):
    from types import SimpleNamespace

    import vneuron.validate.side_effects as se
    from vneuron.validate.specificity import side_study

    rounds = []

    def fake_measure(model, neutral, edit_sets, **kw):  # an "edit" here is the damage it does
        rounds.append(list(edit_sets))
        return {"before": {"ppl_before": 10.0}, "sets": [{"kl": e, "ppl_ratio": 1 + e, "task_drop": e} for e in edit_sets]}

    monkeypatch.setattr(se, "measure", fake_measure)
    config = SimpleNamespace(stop_after=3, batch_tokens=64)
    controls = [0.9, 0.1, 0.8, 0.2, 0.7, 0.3, 0.6] + [0.5 + 0.01 * n for n in range(13)]  # 20
    side = side_study(None, None, 0.5, controls, config, first=4)
    assert rounds == [[0.5, 0.9, 0.1, 0.8, 0.2], [0.7, 0.3, 0.6]]  # the value shift's 4, then h at a time until settled
    assert side["kl"]["controls"] == 7 and side["kl"]["stopped_at"] == 5 and side["kl"]["p"] == pytest.approx(3 / 5)
    assert side["controls_max"] == 20 and len(side["controls"]) == 7
    rounds.clear()
    loud = side_study(None, None, 2.0, controls, config, first=4)  # more damage than every control: all 20, p = 1/21
    assert sum(len(r) for r in rounds) == 21 and loud["kl"]["p"] == pytest.approx(1 / 21) and loud["kl"]["stopped_at"] is None
    rounds.clear()
    fixed = side_study(None, None, 0.5, controls, SimpleNamespace(stop_after=0, batch_tokens=64))  # h = 0: one round, all
    assert len(rounds) == 1 and fixed["kl"]["p"] == pytest.approx((1 + sum(c >= 0.5 for c in controls)) / 21)


@pytest.mark.parametrize("total,first,h,measures", [(20, 3, 3, 3), (20, 4, 3, 2), (6, 2, 2, 3), (20, 3, 3, 1)])
def test_the_expected_side_effect_draws_are_the_rules_average_for_a_random_like_set(monkeypatch, total, first, h, measures):
    """``expected_controls`` (what --dry-run expects) is the mean number of controls the real rule (specificity.side_study)
    draws when the located set's damage is one more draw of the controls' (every measure independent): 4,000 simulated
    studies, within 3 standard errors."""
    import random
    from types import SimpleNamespace

    import vneuron.validate.side_effects as se
    from vneuron.validate.specificity import side_study

    keys = se.DAMAGE[:measures]
    monkeypatch.setattr(se, "measure", lambda model, neutral, edit_sets, **kw: {"before": {}, "sets": [dict(e) for e in edit_sets]})
    rng, config, drawn = random.Random(0), SimpleNamespace(stop_after=h, batch_tokens=64), []
    for _ in range(4000):
        located, *controls = [{k: rng.random() for k in keys} for _ in range(1 + total)]
        drawn.append(len(side_study(None, None, located, controls, config, first=first)["controls"]))
    mean = sum(drawn) / len(drawn)
    sd = (sum((d - mean) ** 2 for d in drawn) / (len(drawn) - 1)) ** 0.5
    expected = se.expected_controls(total, first, h, measures)
    assert abs(mean - expected) <= 3 * sd / len(drawn) ** 0.5 + 1e-9, (mean, expected)
    assert min(first, total) <= expected <= total
    assert se.expected_controls(total, first, 0, measures) == total  # h = 0: every control


def test_extension_reaches_p_of_one_in_201():
    rule = Sequential(effect=-1.0, tail="lower", h=3, maximum=20, extend_to=200)
    while rule.more():
        rule.add(0.0)  # every control behind the located set
    report = rule.report()
    assert report["controls_drawn"] == 200 and report["p_sequential"] == pytest.approx(1 / 201) and report["controls_extended"]
    # one control as extreme within the first 20: no extension, the plain rule's p
    rule = Sequential(effect=-1.0, tail="lower", h=3, maximum=20, extend_to=200)
    first = True
    while rule.more():
        rule.add(-2.0 if first else 0.0)
        first = False
    assert rule.report()["controls_drawn"] == 20 and rule.report()["p_sequential"] == pytest.approx(2 / 21)
    # extended, then stopped by the rule: h hits
    rule = Sequential(effect=-1.0, tail="lower", h=2, maximum=5, extend_to=50)
    n = 0
    while rule.more():
        rule.add(-2.0 if n in (7, 9) else 0.0)
        n += 1
    assert rule.report()["controls_drawn"] == 10 and rule.report()["p_sequential"] == pytest.approx(2 / 10)


def test_ablate_shows_side_effects_cross_values_and_a_verdict(tmp_path, tiny_dir):
    run_dir = tmp_path / "run"
    located = runner.invoke(app, ["locate", "--model", str(tiny_dir("llama")), "--dataset", str(EXAMPLES / "corpus.jsonl"),
                                  "--split", "all", "-k", "8", "--out", str(run_dir), "-q"])
    assert located.exit_code == 0, located.output
    out = tmp_path / "ablate"
    result = runner.invoke(app, ["ablate", str(run_dir), "--split", "all", "--controls", "3", "--max-controls", "6",
                                 "--side-controls", "4", "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert "KL/pos" in result.output and "verdict" in result.output and "Cross-value matrix" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["neutral"]["en"]["texts"] >= 30
    for s in manifest["results"]:
        side = s["side_effects"]
        measured = side["kl"]["controls"]  # sequential: every one beside the value shift, or fewer once each measure is settled
        assert side["controls_max"] == max(4, s["controls_drawn"]) and min(side["controls_max"], max(3, s["controls_drawn"])) <= measured
        assert measured == side["controls_max"] or all(side[k]["stopped_at"] for k in ("kl", "ppl_ratio", "task_drop"))
        assert side["ppl_ratio"]["located"] > 0
        assert s["verdict"]["verdict"] in ("value-specific", "non-specific damage", "no effect")
        cv = s["cross_values"]
        assert cv["own"] in cv["cells"] and len(cv["cells"]) == 2  # the example corpus has two axes
        assert all(c["controls"] == min(4, s["controls_drawn"]) for c in cv["cells"].values())
    rows = (out / "side_effects.csv").read_text().splitlines()
    assert rows[0].startswith("dimension,set,kl") and len(rows) == 1 + sum(1 + s["side_effects"]["kl"]["controls"]
                                                                           for s in manifest["results"])
    assert (out / "cross_values.csv").is_file()
    shown = runner.invoke(app, ["ablate", str(run_dir), "--split", "all", "--controls", "3", "--no-side-effects",
                                "--no-cross-values", "--out", str(tmp_path / "plain"), "--json", "-q"])
    assert shown.exit_code == 0, shown.output
    plain = json.loads(shown.output)["results"][0]
    assert "side_effects" not in plain and "cross_values" not in plain and plain["verdict"]["verdict"]
    report = runner.invoke(app, ["report", str(out), "--cards", "0"])
    assert report.exit_code == 0, report.output
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "Side effects against the same controls" in page and "Cross-value matrix" in page


def test_each_item_list_is_evaluated_unedited_once_per_study(tmp_path, tiny_dir, monkeypatch):
    import vneuron.validate.specificity as specificity

    run_dir = tmp_path / "run"
    located = runner.invoke(app, ["locate", "--model", str(tiny_dir("llama")), "--dataset", str(EXAMPLES / "corpus.jsonl"),
                                  "--split", "all", "-k", "8", "--out", str(run_dir), "-q"])
    assert located.exit_code == 0, located.output
    unedited = []
    for module in (specificity,):  # every unedited evaluation of a study goes through specificity.Unedited
        real = module.forced_choice

        def counted(model, items, edits=None, *a, _real=real, **kw):
            if edits is None:
                unedited.append(tuple(i.id for i in items))
            return _real(model, items, edits, *a, **kw)

        monkeypatch.setattr(module, "forced_choice", counted)
    result = runner.invoke(app, ["ablate", str(run_dir), "--split", "all", "--controls", "2", "--max-controls", "2",
                                 "--side-controls", "2", "--out", str(tmp_path / "ablate"), "-q"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "ablate" / "manifest.json").read_text())
    assert len(manifest["results"]) == 4 and all(len(s["cross_values"]["cells"]) == 2 for s in manifest["results"])
    assert len(unedited) == len(set(unedited)) == 2  # two axes: each axis's items once, for its poles and the matrix


def test_bad_side_effect_inputs_are_one_line(tmp_path, tiny_dir):
    result = runner.invoke(app, ["ablate", str(tmp_path), "--neutral", str(tmp_path / "missing.txt")])
    assert result.exit_code == 2 and "--neutral" in result.output
    result = runner.invoke(app, ["ablate", str(tmp_path), "--judge", "touche"])
    assert result.exit_code == 2 and "--generations" in result.output


def test_dry_run_states_the_cost_of_each_extra_control(tmp_path, tiny_dir):
    run_dir = tmp_path / "run"
    located = runner.invoke(app, ["locate", "--model", str(tiny_dir("llama")), "--dataset", str(EXAMPLES / "corpus.jsonl"),
                                  "--split", "all", "-k", "8", "--out", str(run_dir), "-q"])
    assert located.exit_code == 0, located.output
    plan = runner.invoke(app, ["ablate", str(run_dir), "--split", "all", "--dry-run", "-q"])
    assert plan.exit_code == 0, plan.output
    assert "each control beyond the first" in plan.output and "side effects:" in plan.output and "go on to 200" not in plan.output
    assert "drawing goes on to 200" in plan.output


@pytest.mark.parametrize("family", ["llama", "gpt2", "phi", "granite", "gpt_neox", "gemma3"])
def test_kl_through_the_identity_equals_the_direct_formula(tiny_model, family):
    """KL and perplexity read through the identity (the unedited reference once, only logZ under an edit) equal
    KL(p‖q) from both full distributions of the model's own head: plain, biased (phi), divided (granite), untied
    (gpt_neox's lm_head) and soft-capped (gemma3 here, which keeps the direct formula); a kept reference changes nothing."""
    from vneuron.locate.scoring import NeuronSet
    from vneuron.runtime import budget
    from vneuron.validate.edits import Edit, apply, plan

    model = tiny_model(family)
    neutral = load_neutral("en")
    units = NeuronSet("gate", model.n_layers, model.width, torch.arange(0, 2 * model.width, 3), torch.zeros(2 * model.width // 3 + 1), {})
    edit = Edit(units, "zero")
    reference: dict = {}
    first = measure(model, neutral, [edit], reference=reference)
    work = budget.reset()
    again = measure(model, neutral, [edit], reference=reference)
    assert again == first  # bit for bit
    assert work.forwards > 0 and "prose" in reference and "pairs" in reference

    nll0 = nll1 = kl = 0.0
    count = 0
    for text in neutral.texts:
        ids = torch.tensor([model.tokenizer(text)["input_ids"]])
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        with torch.inference_mode():
            ref = model.hf_model(**inputs).logits[0, :-1].double().log_softmax(-1)
            with model.lm.trace(inputs):
                apply(model.lm, plan(model, edit))
                logits = model.lm.output.logits.save()
        new = logits[0, :-1].double().log_softmax(-1)
        target = ids[0, 1:, None]
        nll0 -= float(ref.gather(-1, target).sum())
        nll1 -= float(new.gather(-1, target).sum())
        kl += float((ref.exp() * (ref - new)).sum())
        count += ids.shape[1] - 1
    (located,) = first["sets"]
    rel = 1e-6 if family == "gemma3" else 1e-9  # the direct formula reduces in float32, as it always has
    assert first["before"]["positions"] == count
    assert first["before"]["ppl_before"] == pytest.approx(math.exp(nll0 / count), rel=rel)
    assert located["ppl_after"] == pytest.approx(math.exp(nll1 / count), rel=rel)
    assert located["kl"] > 1e-4 and located["kl"] == pytest.approx(kl / count, rel=100 * rel)


def test_a_studys_side_effects_run_the_unedited_model_once(tmp_path, tiny_dir, monkeypatch):
    """Every pole and round of a study reads the unedited prose reference and the unedited pairs from one computation."""
    import vneuron.validate.side_effects as se

    run_dir = tmp_path / "run"
    located = runner.invoke(app, ["locate", "--model", str(tiny_dir("llama")), "--dataset", str(EXAMPLES / "corpus.jsonl"),
                                  "--split", "all", "-k", "8", "--out", str(run_dir), "-q"])
    assert located.exit_code == 0, located.output
    calls = {"reference": 0, "pairs_unedited": 0}
    real_reference, real_sets = se._reference_request, se.continuation_logprobs_sets

    def counting_reference(*args, **kwargs):
        calls["reference"] += 1
        return real_reference(*args, **kwargs)

    def counting_sets(model, flat, sets, **kwargs):
        calls["pairs_unedited"] += sum(s is None for s in sets)
        return real_sets(model, flat, sets, **kwargs)

    monkeypatch.setattr(se, "_reference_request", counting_reference)
    monkeypatch.setattr(se, "continuation_logprobs_sets", counting_sets)
    result = runner.invoke(app, ["ablate", str(run_dir), "--split", "all", "--controls", "2", "--max-controls", "4",
                                 "--side-controls", "4", "--out", str(tmp_path / "ablate"), "-q"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "ablate" / "manifest.json").read_text())
    assert len(manifest["results"]) == 4
    batches = len(se._prose_batches(se_model(tiny_dir), se.load_neutral("en").texts, 1024))
    assert calls == {"reference": batches, "pairs_unedited": 1}


def se_model(tiny_dir):
    from vneuron.models.loading import load_model

    return load_model(str(tiny_dir("llama")))
