"""`vneuron report`, neuron cards and `--json` on a tiny-model study (locate → ablate → steer, made once)."""

from __future__ import annotations

import base64
import csv
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from vneuron.cli import app

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
INVENTORY = Path(__file__).parent / "fixtures" / "inventory.csv"
runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def one_json(result) -> dict:
    assert result.exit_code == 0, result.output + result.stderr
    return json.loads(result.stdout)  # exactly one object: json.loads fails on anything else


def assert_one_line_error(result, pattern: str):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and re.search(pattern, lines[0]), result.stderr


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_dir):
    """A locate run (with a label-shuffle null) holding an ablate run (with PVQ) and a steer run."""
    root = tmp_path_factory.mktemp("study")
    loc = root / "run"
    located = one_json(run("locate", "--model", tiny_dir("llama"), "--dataset", EXAMPLES / "corpus.jsonl", "--split", "all",
                           "-k", "10", "--null", "1", "--out", loc, "--json"))
    ablated = one_json(run("ablate", loc, "--controls", "2", "--split", "all", "--generations", "1", "-q",
                           "--dimension", "self_transcendence,conservation", "--pvq", INVENTORY, "--json"))
    steered = one_json(run("steer", loc, "--gamma", "0,2", "--controls", "2", "--split", "all", "-q",
                           "--dimension", "self_transcendence", "--json"))
    return {"dir": loc, "locate": located, "ablate": ablated, "steer": steered, "model": tiny_dir("llama")}


def test_locate_json_matches_the_run_files(study):
    out, loc = study["dir"], study["locate"]
    rows = list(csv.DictReader(open(out / "neurons.csv")))
    manifest = json.loads((out / "manifest.json").read_text())
    assert loc["kind"] == "locate" and Path(loc["run_dir"]) == out
    assert set(loc["poles"]) == set(manifest["selected"])
    for pole, data in loc["poles"].items():
        assert data["count"] == manifest["selected"][pole]["count"] == 10
        assert data["per_layer"] == manifest["selected"][pole]["per_layer"]
        assert data["stability"] == manifest["stability"][pole]
        assert data["null"] == manifest["null"][pole]
        csv_rows = [r for r in rows if r["dimension"] == pole]
        for got, want in zip(data["neurons"], csv_rows):
            assert (got["layer"], got["unit"], got["rank"]) == (int(want["layer"]), int(want["unit"]), int(want["rank"]))
            assert got["score"] == pytest.approx(float(want["score"]), abs=1e-9)
        probes = data["probes"]  # where the pole is linearly readable, per layer: the manifest's numbers
        assert probes == manifest["probes"]["poles"][pole] and len(probes["mean_diff"]["auroc"]) == manifest["model"]["n_layers"]
    assert loc["probes"]["logistic"]["l2"] == 0.01 and loc["residual"] == manifest["residual"]


def test_the_locate_table_caption_shows_where_each_pole_is_readable(study, tmp_path):
    from vneuron.locate.locating import LocateConfig, locate
    from vneuron.results.tables import locate_tables

    result = locate(None, LocateConfig(top_k=3), from_run=study["dir"], out=tmp_path / "again")  # re-selection keeps them
    manifest = json.loads((study["dir"] / "manifest.json").read_text())
    assert result.manifest["probes"] == manifest["probes"]
    for table in locate_tables(result):
        pole = table.title.split(" vs ")[0]
        peak, logistic = (manifest["probes"]["poles"][pole][p]["peak"] for p in ("mean_diff", "logistic"))
        assert (f"readable (held-out probe AUROC, peak layer): mean-difference L{peak['layer']} {peak['auroc']:.2f} "
                f"[{peak['ci'][0]:.2f}, {peak['ci'][1]:.2f}], logistic L{logistic['layer']} {logistic['auroc']:.2f}") in table.caption


def test_ablate_and_steer_json_match_the_run_files(study):
    ab = study["ablate"]
    manifest = json.loads((Path(ab["run_dir"]) / "manifest.json").read_text())
    assert ab["kind"] == "ablate" and ab["results"] == json.loads(json.dumps(manifest["results"]))
    controls = [r for r in csv.DictReader(open(Path(ab["run_dir"]) / "controls.csv")) if r["dimension"] == "self_transcendence"]
    assert [round(e, 6) for e in ab["results"][0]["control_effects"]] == [float(r["effect"]) for r in controls]
    st = study["steer"]
    rows = list(csv.DictReader(open(Path(st["run_dir"]) / "dose_response.csv")))
    assert st["gammas"] == [0.0, 2.0]
    for point, row in zip(st["results"][0]["curve"], rows):
        assert point["gamma"] == float(row["gamma"]) and point["after"] == pytest.approx(float(row["after"]), abs=1e-6)


def test_models_datasets_doctor_json_and_version():
    models = one_json(run("models", "--json"))
    assert any(m["alias"] == "gemma-3-270m" and m["default"] for m in models["models"])
    data = one_json(run("datasets", "--json"))
    assert data["datasets"] and {"name", "languages", "items"} <= set(data["datasets"][0])
    doctor = one_json(run("doctor", "--json"))
    assert doctor["checks"]["reachable"].startswith("not checked") and "torch" in doctor["checks"]
    version = run("--version")
    assert version.exit_code == 0 and re.fullmatch(r"vneuron \d+\.\d+\.\S+\n", version.stdout)


class Tables(HTMLParser):
    """Tables by their data-name, as lists of rows of cell texts; and the embedded images."""

    def __init__(self):
        super().__init__()
        self.tables, self.images, self._name, self._row, self._cell = {}, [], None, None, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._name = attrs.get("data-name") or f"anon{len(self.tables)}"
            self.tables[self._name] = []
        elif tag == "tr" and self._name is not None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = ""
        elif tag == "img":
            self.images.append(attrs)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append(self._cell)
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[self._name].append(self._row)
            self._row = None
        elif tag == "table":
            self._name = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


EXPECTED_FIGURES = ("locate-neurons-per-layer", "locate-readability", "locate-score-distribution", "locate-split-half",
                    "locate-shuffle-null", "ablate-before-after", "ablate-vs-controls", "ablate-per-item", "ablate-pvq",
                    "steer-dose-response")


@pytest.fixture(scope="module")
def report(study, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "study.html"
    result = run("report", study["dir"], "-o", out, "--cards", "1", "-q")
    assert result.exit_code == 0, result.output + result.stderr
    return out


def test_report_writes_every_promised_file(report):
    figures = sorted((report.parent / "study-figures").glob("*.png"))
    stems = [re.sub(r"^\d+-", "", f.stem) for f in figures]
    for name in EXPECTED_FIGURES:
        assert name in stems, (name, stems)
    assert sum(s.startswith("card-L") for s in stems) >= 1
    page = report.read_text()
    parser = Tables()
    parser.feed(page)
    assert len(parser.images) == len(figures)  # every PNG is embedded, and nothing else
    for img, path in zip(parser.images, figures):
        assert img["src"].startswith("data:image/png;base64,")
        assert base64.b64decode(img["src"].split(",", 1)[1]) == path.read_bytes()
    assert not re.search(r"(src|href)=['\"]?(https?:)?//", page)  # no network: no CDN, no remote asset
    md = report.with_suffix(".md").read_text()
    assert md.count("](study-figures/") == len(figures) and "## Ablation (zero)" in md and "## Steering (scale)" in md
    assert "Generations before / after" in page and "TransformerLens" in page and "blocks." in page


def _sub(run_dir: Path, prefix: str) -> Path:
    """The one study directory of a kind (default names end in a settings tag)."""
    found = sorted(run_dir.glob(prefix + "*"))
    assert len(found) == 1, found
    return found[0]


def _f(text: str) -> float:
    return float(text.replace("−", "-"))


def test_numbers_in_the_page_match_the_csvs(study, report):
    parser = Tables()
    parser.feed(report.read_text())
    run_dir = study["dir"]
    neurons = list(csv.DictReader(open(run_dir / "neurons.csv")))
    top = parser.tables["top-self_transcendence"]
    st_rows = [r for r in neurons if r["dimension"] == "self_transcendence"]
    assert top[0] == ["rank", "layer", "unit", "score", "p_pole", "p_opposite", "mean diff"]
    for cells, row in zip(top[1:], st_rows):
        assert cells[:3] == [row["rank"], row["layer"], row["unit"]]
        assert _f(cells[3]) == pytest.approx(float(row["score"]), abs=5e-5)
        assert _f(cells[4]) == pytest.approx(float(row["p_pole"]), abs=5e-4)
    dose = list(csv.DictReader(open(_sub(run_dir, "steer-scale-kall") / "dose_response.csv")))
    table = parser.tables["steer-dose-response"][1:]
    assert len(table) == len(dose) == 2
    for cells, row in zip(table, dose):
        assert _f(cells[1]) == float(row["gamma"])
        for k, key in ((2, "baseline"), (3, "after"), (4, "effect"), (5, "control_effect"), (6, "effect_minus_control")):
            assert _f(cells[k]) == pytest.approx(float(row[key]), abs=5e-5)
    ablate = json.loads((_sub(run_dir, "ablate-zero-kall") / "manifest.json").read_text())["results"]
    table = parser.tables["ablate-summary"][1:]
    for cells, r in zip(table, ablate):
        assert cells[0] == r["dimension"] and _f(cells[3]) == pytest.approx(r["baseline"], abs=5e-5)
        assert _f(cells[4]) == pytest.approx(r["after"], abs=5e-5) and cells[8] == f"{r['rank']}/{r['controls'] + 1}"
    summary = parser.tables["locate-summary"][1:]
    stab = json.loads((run_dir / "manifest.json").read_text())["stability"]
    for cells in summary:
        assert _f(cells[4]) == pytest.approx(stab[cells[0]]["pearson_r"], abs=5e-4)
        assert cells[3] == f"{float([r for r in neurons if r['dimension'] == cells[0]][-1]['score']):+.4f}"


def test_neuron_card_matches_the_run_statistics(study):
    from vneuron.locate.capture import ActivationStats

    rows = list(csv.DictReader(open(study["dir"] / "neurons.csv")))
    layer, unit = int(rows[0]["layer"]), int(rows[0]["unit"])
    card = one_json(run("show", study["dir"], f"{layer}:{unit}", "--texts", "2", "-q", "--json"))
    stats = ActivationStats.load(study["dir"] / "stats.safetensors")
    for label, d in card["labels"].items():  # the card's forward pass counts the same tokens as the run
        m = stats.moments(label)
        assert d["tokens"] == m.n
        assert d["mean"] == pytest.approx(float(m.mean[layer, unit]), abs=1e-6)  # float32 model, other batches
        assert d["p_active"] == pytest.approx(float(m.p[layer, unit]), abs=1e-9)
    assert len(card["most"]) == 2 and card["most"][0]["mean_activation"] >= card["least"][0]["mean_activation"]
    assert card["names"]["nnsight"] == f"model.model.layers[{layer}].mlp.act_fn.output[..., {unit}]"
    assert card["names"]["TransformerLens"].startswith(f"act(blocks.{layer}.mlp.hook_pre")
    assert any(r["dimension"] == rows[0]["dimension"] and r["rank"] == "1" for r in card["located"])
    text = run("show", study["dir"], f"{layer}:{unit}", "--texts", "1", "-q")
    assert text.exit_code == 0 and "Most activating" in text.stdout
    assert_one_line_error(run("show", study["dir"], "99:1"), "outside the model")
    assert_one_line_error(run("show", study["dir"], "five"), "Cannot read neuron")


def test_tool_names_per_site_and_architecture():
    from vneuron.models.architectures import ARCHITECTURES

    assert ARCHITECTURES["llama"].neuron_names("down_in", 3, 7, 100)["TransformerLens"] == "blocks.3.mlp.hook_post[..., 7]"
    assert ARCHITECTURES["gpt2"].neuron_names("gate", 1, 2, 100)["TransformerLens"] == "blocks.1.mlp.hook_post[..., 2]"
    assert ARCHITECTURES["gpt2"].neuron_names("down_in", 1, 2, 100)["nnsight"] == "model.transformer.h[1].mlp.c_proj.input[..., 2]"
    assert ARCHITECTURES["llama"].neuron_names("gate", 0, 1, 100)["TransformerLens"].startswith("act(blocks.0.mlp.hook_pre")


def test_bad_inputs_write_nothing(study, tmp_path):
    out = tmp_path / "r.html"
    assert_one_line_error(run("report", tmp_path, "-o", out), "not a vneuron run")
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "manifest.json").write_text(json.dumps({"kind": "mystery"}))
    assert_one_line_error(run("report", study["dir"], odd, "-o", out), "'mystery' run, which vneuron report cannot show")
    assert_one_line_error(run("report", study["dir"], "-o", tmp_path / "r.txt"), "should end in .html")
    assert not list(tmp_path.glob("r*")) and not list(tmp_path.glob(".r*"))


def test_a_new_run_kind_needs_only_a_section_builder(study, tmp_path):
    from vneuron.results import html_report

    planted = tmp_path / "plant-run"
    planted.mkdir()
    (planted / "manifest.json").write_text(json.dumps({"kind": "plant", "recovered": 0.75}))

    @html_report.section("plant")
    def plant(run_dir, manifest, options):
        return [html_report.Section("Planted", run_dir, "plant", [html_report.Text(f"recovered {manifest['recovered']}")])]

    try:
        written = html_report.build_report([planted], tmp_path / "p.html", html_report.ReportOptions(cards=0))
        assert "recovered 0.75" in written.html.read_text()
    finally:
        html_report.SECTIONS.pop("plant")


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


PROBE = """<script>
window.addEventListener('load', () => {
  const figs = [...document.querySelectorAll('img.figure')].map(img => {
    const r = img.getBoundingClientRect();
    const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
    const g = c.getContext('2d'); g.drawImage(img, 0, 0);
    const d = g.getImageData(0, 0, c.width, c.height).data; const seen = new Set();
    for (let i = 0; i < d.length; i += 4 * 31) seen.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
    return {x: r.left + scrollX, y: r.top + scrollY, w: r.width, h: r.height, natural: img.naturalWidth, colors: seen.size};
  });
  document.body.setAttribute('data-probe', JSON.stringify({height: document.documentElement.scrollHeight, figs}));
});
</script></body>"""


def test_report_renders_in_a_headless_browser(report, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install -y chromium)")
    import matplotlib.image as mpimg

    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--allow-file-access-from-files"]
    probe = tmp_path / "probe.html"
    probe.write_text(report.read_text().replace("</body>", PROBE))
    dom = subprocess.run([*flags, "--window-size=1000,800", "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120)
    found = re.search(r'data-probe="([^"]*)"', dom.stdout)
    assert found, dom.stderr[-2000:]
    data = json.loads(found.group(1).replace("&quot;", '"'))
    figures = data["figs"]
    assert len(figures) == len(list((report.parent / "study-figures").glob("*.png")))
    assert all(f["natural"] > 100 and f["colors"] > 8 for f in figures), figures  # every figure decoded, none blank
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--window-size=1000,{int(data['height']) + 10}", f"--screenshot={shot}", report.as_uri()],
                   capture_output=True, timeout=120, check=True)
    pixels = torch.from_numpy(mpimg.imread(shot)[..., :3].copy())
    for f in figures:  # the figure regions of the real page, as painted
        region = pixels[int(f["y"]): int(f["y"] + f["h"]), int(f["x"]): int(f["x"] + f["w"])]
        assert region.numel() > 0 and float(region.std()) > 0.02, f


def test_ablate_and_steer_tables_fit_80_columns(study):
    from rich.console import Console

    from vneuron.results.tables import ablate_table, steer_table
    from vneuron.validate.study import ValidationResult

    for sub, table in (("ablate-zero-kall", ablate_table), ("steer-scale-kall", steer_table)):
        manifest = json.loads((_sub(study["dir"], sub) / "manifest.json").read_text())
        console = Console(width=80, record=True, file=open("/dev/null", "w"))
        console.print(table(ValidationResult(_sub(study["dir"], sub), manifest, manifest["results"])))
        text = console.export_text()
        assert max(len(line) for line in text.splitlines()) <= 80 and "…" not in text
        first = manifest["results"][0]
        after = first["after"] if "after" in first else first["curve"][-1]["after"]
        assert f"{after:.3f}" in text  # whole numbers, not split across lines


def test_line_progress_prints_stage_starts_and_ends():
    import io

    from vneuron.runtime.progress import line_progress

    out = io.StringIO()
    say = line_progress(out, every=3600)
    for done in range(0, 5):
        say("Capturing activations", done, 4)
    say("Scoring", 1, 1)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and "Capturing activations 0/4" in lines[0] and "4/4" in lines[1] and "Scoring 1/1" in lines[2]


def test_capture_reports_progress_before_the_first_batch(tiny_model):
    from vneuron.locate.capture import CaptureConfig, capture
    from vneuron.data import load_corpus

    calls = []
    prompts = load_corpus(EXAMPLES / "corpus.jsonl").action_prompts()
    capture(tiny_model("llama"), prompts, CaptureConfig(batch_tokens=64), progress=lambda d, t: calls.append((d, t)))
    assert calls[0] == (0, len(prompts)) and calls[-1] == (len(prompts), len(prompts)) and len(calls) > 2


def test_a_report_without_the_model_keeps_its_figures(study, tmp_path):
    import shutil as sh

    copy = tmp_path / "run"
    # without its top examples (a run made before them): the cards need the model, which is gone
    sh.copytree(study["dir"], copy, ignore=sh.ignore_patterns("ablate-*", "steer-*", "report*", "examples.safetensors"))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["model"]["spec"] = manifest["model"]["path"] = str(tmp_path / "gone")  # the model directory was deleted since
    (copy / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "r.html"
    result = run("report", copy, "-o", out, "-q")
    assert result.exit_code == 0, result.output + result.stderr
    assert "Neuron cards skipped" in out.read_text() and len(list((tmp_path / "r-figures").glob("*.png"))) == 5
    (warning,) = [line for line in result.stderr.splitlines() if line.strip()]  # and the terminal says so, in one line
    assert warning.startswith(f"warning: {copy}: Neuron cards skipped: ") and "gone" in warning
