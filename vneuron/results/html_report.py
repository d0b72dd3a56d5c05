"""`vneuron report`: one self-contained HTML page, the same figures as PNG files, and a Markdown summary.

A report is a list of sections, one per run directory (a locate run brings its ablate-*/steer-* sub-runs along).
Each run kind has one section builder in ``SECTIONS``, chosen by the manifest's ``kind``; a new kind (plant, power,
…) adds a builder with ``@section("kind")``. Builders read only the run's own files (manifest.json and the CSVs
beside it), so every number on the page is one a user can find in those files.
"""

from __future__ import annotations

import base64
import html
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from vneuron.config import ReportOptions
from vneuron.data.inventories import circular_order
from vneuron.errors import VneuronError
from vneuron.locate.runs import NEURONS_CSV, STATS, LocateRun
from vneuron.results.guardrails import stability_guard, validation_guards, warnings_of
from vneuron.runtime.claims import claim, one_writer
from vneuron.runtime.store import MANIFEST, check_output_file, read_csv, read_jsonl, read_manifest, write_beside

Progress = Callable[[str, int, int], None]


# -- what a section holds ------------------------------------------------------------------------
@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]
    note: str = ""
    name: str = ""  # an id for tests and links


@dataclass
class Generations:
    title: str
    rows: list[dict]  # pole, prompt, before, after
    source: str


@dataclass
class Text:
    text: str  # plain text (escaped in HTML)


class Missing(Text):
    """What was asked for and could not be drawn, and why: on the page, and on the terminal (``Report.missing``)."""


@dataclass
class Section:
    title: str
    run_dir: Path
    kind: str
    blocks: list = field(default_factory=list)


SectionBuilder = Callable[[Path, dict, "ReportOptions"], list[Section]]
SECTIONS: dict[str, SectionBuilder] = {}


def section(kind: str):
    """Register the builder of one run kind's section(s)."""

    def register(fn: SectionBuilder) -> SectionBuilder:
        SECTIONS[kind] = fn
        return fn

    return register


@dataclass
class Report:
    html: Path
    markdown: Path
    figures: list[Path]
    sections: list[Section]

    @property
    def missing(self) -> list[str]:
        """One line per thing asked for that the page lacks (neuron cards whose examples cannot be read, …)."""
        return [f"{s.run_dir}: {block.text}" for s in self.sections for block in s.blocks if isinstance(block, Missing)]


# -- helpers -------------------------------------------------------------------------------------
def fnum(value: Any, fmt: str) -> str:
    if value in (None, ""):
        return "—"
    value = float(value)
    return "—" if value != value else format(value, fmt)


def rel(path: Path, run_dir: Path) -> str:
    try:
        return str(Path(path).relative_to(run_dir.parent))
    except ValueError:
        return str(path)


def _kind_of(path: Path) -> tuple[dict, str]:
    if not Path(path).is_dir():
        raise VneuronError(f"{path} {'is not a directory' if Path(path).exists() else 'does not exist'}",
                           "pass a run directory written by vneuron locate, ablate or steer")
    manifest = read_manifest(path)
    kind = manifest.get("kind")
    if kind not in SECTIONS:
        raise VneuronError(f"{path} is a {kind!r} run, which vneuron report cannot show",
                           f"pass a run of kind {', '.join(sorted(SECTIONS))}")
    return manifest, kind


def sub_runs(run_dir: Path) -> list[tuple[Path, dict]]:
    """Finished runs inside a locate run (ablate-*, steer-*, …), in name order."""
    found = []
    for child in sorted(Path(run_dir).iterdir()):
        if child.name.startswith(".") or not (child / MANIFEST).is_file():
            continue
        try:
            manifest = json.loads((child / MANIFEST).read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            continue
        if manifest.get("kind") in SECTIONS and manifest.get("kind") != "locate":
            found.append((child, manifest))
    return found


# -- locate --------------------------------------------------------------------------------------
@section("locate")
def locate_section(run_dir: Path, manifest: dict, options: ReportOptions) -> list[Section]:
    from vneuron.results import figures
    from vneuron.locate.scoring import contrast_scores

    run = LocateRun.open(run_dir)
    rows = read_csv(run_dir / NEURONS_CSV)
    src_csv, src_stats, src_manifest = (rel(run_dir / n, run_dir) for n in (NEURONS_CSV, STATS, MANIFEST))
    by_pole: dict[str, list[dict]] = {}
    for row in rows:
        by_pole.setdefault(row["dimension"], []).append(row)
    sel = manifest["selection"]
    model, data, cap = manifest["model"], manifest["dataset"], manifest["capture"]
    s = Section(f"Locate: {run_dir.name}", run_dir, "locate")
    s.blocks.append(Text(
        f"Model {model['model_id']} ({model.get('n_layers')} layers × {model.get('width')} neurons, revision "
        f"{str(model.get('revision'))[:24]}); corpus {data['name']} ({data.get('language')}, {data.get('split')}, "
        f"{data.get('items')} items); site {cap['site']}, mode {cap['mode']}; {sel['method']} scores, rule {sel['rule']}, "
        f"top-k {sel['top_k']}, direction {sel['direction']}."))
    stab = manifest.get("stability") or {}
    null = manifest.get("null") or {}
    summary_rows = []
    for pole, prs in by_pole.items():
        st = stab.get(pole) or {}
        nl = null.get(pole) or {}
        summary_rows.append([pole, prs[0]["opposite"] or "—", str(len(prs)), fnum(prs[-1]["score"], "+.4f"),
                             fnum(st.get("pearson_r"), ".3f"), f"{st['overlap']}/{st['k']}" if st else "—",
                             fnum(st.get("chance_overlap"), ".1f"), fnum(nl.get("mean"), ".1f")])
    s.blocks.append(Table("Located sets", ["pole", "opposite", "neurons", "cut (weakest score)", "split-half r",
                                           "top-k overlap", "chance overlap", "null: pass by chance"], summary_rows,
                          f"From {src_csv} and {src_manifest} (stability, null).", name="locate-summary"))
    for pole in by_pole:
        weak = stability_guard(stab.get(pole))
        if weak and weak["weak"]:
            s.blocks.append(Text(f"Guard-rail, {pole}: {weak['warning']}."))
    per_layer = {}
    for pole, prs in by_pole.items():
        counts = [0] * run.stats.n_layers
        for r in prs:
            counts[int(r["layer"])] += 1
        per_layer[pole] = counts
    if per_layer:
        s.blocks.append(figures.neurons_per_layer(per_layer, src_csv))
    probes = {p: e for p, e in ((manifest.get("probes") or {}).get("poles") or {}).items() if "mean_diff" in e}
    if probes:  # runs located before the residual means have none
        s.blocks.append(figures.readability(probes, per_layer, manifest["probes"], src_manifest, src_csv))
    method = sel["method"] if sel["method"] != "lape" else "delta_p"
    signed, cuts, halves = {}, {}, {}
    for pole in list(by_pole) + [p for p in run.sets if p not in by_pole]:
        neuron_set = run.sets[pole]
        opposite = neuron_set.meta.get("opposite") or (by_pole.get(pole, [{}])[0].get("opposite") or None)
        if not opposite:
            continue
        # the selection ranks score, −score or |score| (direction); show the same quantity and its weakest kept value
        orient = {"pole": lambda x: x, "opposite": lambda x: -x, "both": abs}[sel.get("direction", "pole")]
        signed[pole] = orient(contrast_scores(run.stats, pole, opposite, method)).reshape(-1).tolist()
        if sel["method"] != "lape" and by_pole.get(pole):
            cuts[pole] = orient(float(by_pole[pole][-1]["score"]))
        if run.stats.folds >= 2:
            try:
                halves[pole] = tuple(contrast_scores(run.stats, pole, opposite, method, fold=f).reshape(-1).tolist() for f in (0, 1))
            except VneuronError:
                pass
    if signed:
        note = ("LAPE selects by entropy across labels, so Δp is shown without a cut. " if sel["method"] == "lape" else
                "With the per_layer rule each layer has its own cut; the line marks the weakest. " if sel["rule"] == "per_layer" else "")
        s.blocks.append(figures.score_distributions(signed, cuts, method, src_stats, note))
    if halves:
        s.blocks.append(figures.split_half(halves, stab, method, src_stats))
    real_null = {p: d for p, d in null.items() if isinstance(d, dict) and d.get("passing_by_chance")}
    if real_null:
        s.blocks.append(figures.shuffle_null(real_null, src_manifest))
    for pole, prs in by_pole.items():
        s.blocks.append(Table(f"Top {min(options.top_rows, len(prs))} neurons: {pole}",
                              ["rank", "layer", "unit", "score", "p_pole", "p_opposite", "mean diff"],
                              [[r["rank"], r["layer"], r["unit"], fnum(r["score"], "+.4f"), fnum(r["p_pole"], ".3f"),
                                fnum(r["p_opposite"], ".3f"), fnum(r["mean_diff"], "+.4f")] for r in prs[: options.top_rows]],
                              f"From {src_csv}.", name=f"top-{pole}"))
    if options.cards > 0:
        s.blocks.extend(_cards(run, by_pole, options))
    return [s]


def _cards(run, by_pole: dict[str, list[dict]], options: ReportOptions) -> list:
    from vneuron.results.cards import examples_file, neuron_cards

    wanted = [(pole, int(r["layer"]), int(r["unit"])) for pole, prs in by_pole.items() for r in prs[: options.cards]]
    if not wanted:
        return []
    if examples_file(run) is None and run.manifest["model"].get("remote") and options.model is None:
        return [Missing("Neuron cards need a forward pass over the corpus; this run was captured remotely, so it kept no top "
                     "examples and they are skipped (pass --model with local weights of the same model to draw them).")]
    try:
        return neuron_cards(run, [(l, u) for _, l, u in wanted], model=options.model, texts=options.card_texts,
                            dtype=options.dtype, progress=options.progress)
    except VneuronError as exc:  # the figures and tables do not need the model: keep them
        if options.model is not None:  # ...unless the user named a model: that one must be right
            raise
        return [Missing(f"Neuron cards skipped: {exc.one_line()} (--cards 0 skips them without trying.)")]


# -- ablate --------------------------------------------------------------------------------------
@section("ablate")
def ablate_section(run_dir: Path, manifest: dict, options: ReportOptions) -> list[Section]:
    from vneuron.results import direction_tables, figures

    cfg = manifest["config"]
    results = manifest.get("results") or []
    src_manifest = rel(run_dir / MANIFEST, run_dir)
    s = Section(f"Ablation ({cfg['mode']}): {run_dir.name}", run_dir, "ablate")
    s.blocks.append(Text(f"Edit {cfg['mode']}" + (f" (γ = {cfg['gamma']})" if cfg["mode"] == "scale" else "") +
                         f" of each pole's located neurons, forced choice ({cfg.get('choice', 'listed')}) on the {cfg['split']} "
                         f"split, {cfg['controls']} matched random controls. Located run: {manifest.get('locate_run')}."))
    rows = []
    for r in results:
        has = "control_effect" in r
        rows.append([r["dimension"], str(r.get("neurons", "—")), str(r["items"]), fnum(r["baseline"], ".4f"), fnum(r["after"], ".4f"),
                     f"{fnum(r['effect'], '+.4f')} [{fnum(r['effect_ci'][0], '+.4f')}, {fnum(r['effect_ci'][1], '+.4f')}]",
                     f"{fnum(r['control_effect'], '+.4f')} ± {fnum(r['control_sd'], '.4f')}" if has else "—",
                     f"{fnum(r['effect_minus_control'], '+.4f')} [{fnum(r['effect_minus_control_ci'][0], '+.4f')}, "
                     f"{fnum(r['effect_minus_control_ci'][1], '+.4f')}]" if has else "—",
                     f"{r['rank']}/{r['controls'] + 1}" if has else "—", fnum(r.get("p_sequential", r.get("p_lower")), ".3f"),
                     fnum(r.get("drop_percent"), ".1f")])
    s.blocks.append(Table("Ablation against matched random controls",
                          ["pole", "neurons", "items", "P before", "P after", "Δ [95% CI]", "control Δ ± sd",
                           "Δ − control [95% CI]", "rank", "p", "drop %"], rows,
                          f"P = mean P(choosing the pole's action) over held-out items. From {src_manifest} (results).",
                          name="ablate-summary"))
    s.blocks.extend(Text(f"Guard-rail, {line}.") for line in warnings_of(validation_guards(manifest, results)))
    s.blocks.extend(side_effect_blocks(results, src_manifest, rel(run_dir / "side_effects.csv", run_dir)))
    s.blocks.extend(Table(*t, name="ablate-directions") for t in [direction_tables.report_table(manifest, src_manifest)] if t)
    if results:
        s.blocks.append(figures.ablation_before_after(results, cfg["mode"], src_manifest))
        controls = {}
        for row in read_csv(run_dir / "controls.csv"):
            controls.setdefault(row["dimension"], []).append(float(row["effect"]))
        with_dots = [{**r, "control_effects": controls.get(r["dimension"], r.get("control_effects") or [])} for r in results]
        s.blocks.append(figures.ablation_vs_controls(with_dots, f"{src_manifest} and {rel(run_dir / 'controls.csv', run_dir)}"))
    items = {}
    for row in read_csv(run_dir / "items.csv"):
        base = float(row["baseline"])
        ctrl = float(row["controls_mean"]) - base if row.get("controls_mean") not in (None, "") else None
        items.setdefault(row["dimension"], []).append((float(row["after"]) - base, ctrl))
    if items:
        s.blocks.append(figures.per_item_effects(items, rel(run_dir / "items.csv", run_dir)))
    pvq = {r["dimension"]: r["pvq"] for r in results if r.get("pvq") and r["pvq"].get("values_before")}
    if pvq:
        panels = {}
        for pole, d in pvq.items():
            order = circular_order(list(d["values_before"]))
            panels[pole] = {"order": order, "before": d["values_before"], "after": d["values_after"]}
        s.blocks.append(figures.pvq_circle(panels, src_manifest))
        table = []
        for pole, d in pvq.items():
            for dim in d["before"]:
                table.append([pole, dim, fnum(d["before"][dim], "+.3f"), fnum(d["after"][dim], "+.3f"),
                              fnum((d.get("controls_mean") or {}).get(dim), "+.3f")])
        s.blocks.append(Table("PVQ per higher-order dimension (centred)", ["edited pole", "dimension", "before", "after",
                                                                           "controls (mean)"], table,
                              f"From {src_manifest} (results: pvq).", name="ablate-pvq"))
    s.blocks.extend(_generations(run_dir, options))
    return [s]


def side_effect_blocks(results: list[dict], src_manifest: str, src_csv: str) -> list:
    """Side effects (located vs the same controls), the verdict, the cross-value matrix and the judge, when measured."""
    blocks: list = []
    side_rows = []
    for r in results:
        side = r.get("side_effects") or {}
        cells = [r["dimension"]]
        for key in ("kl", "ppl_ratio", "task_drop"):
            d = side.get(key) or {}
            cells += [fnum(d.get("located"), ".4f"), f"{fnum(d.get('control_mean'), '.4f')} ± {fnum(d.get('control_sd'), '.4f')}"
                      if "control_mean" in d else "—", f"{d['rank']}/{d['controls'] + 1}" if "rank" in d else "—"]
        z_ci = f" [{fnum(r['z_ci'][0], '+.1f')}, {fnum(r['z_ci'][1], '+.1f')}]" if r.get("z_ci") else ""
        cells += [f"{fnum(r.get('z'), '+.2f')}{z_ci}", (r.get("verdict") or {}).get("verdict", "—"),
                  "; ".join((r.get("verdict") or {}).get("reasons", []))]
        if side or r.get("verdict"):
            side_rows.append(cells)
    if side_rows:
        blocks.append(Table("Side effects against the same controls, and the verdict",
                            ["pole", "KL/position", "controls", "rank", "perplexity ×", "controls", "rank", "non-value task −ΔP(right)",
                             "controls", "rank", "value z [95% CI]", "verdict", "why"], side_rows,
                            "KL = mean KL(unedited ‖ edited) of the next-token distribution over every position of neutral prose; "
                            "perplexity × = edited / unedited perplexity there; task = factual and grammatical pairs (P of the right "
                            "continuation, drop); rank 1 = more damage than every control. z = the value shift against the controls' "
                            f"distribution (CI: items and controls resampled). From {src_manifest} (results: side_effects, z, verdict) "
                            f"and {src_csv}.", name="ablate-side-effects"))
    matrix = [r for r in results if r.get("cross_values")]
    if matrix:
        columns = list(matrix[0]["cross_values"]["cells"])
        rows = []
        for r in matrix:
            cv = r["cross_values"]
            rows.append([r["dimension"], *[(fnum(cv["cells"][c].get("z"), "+.2f") if c in cv["cells"] else "—")
                                           + (" (own)" if c == cv["own"] else "") for c in columns],
                         "yes" if cv["own_moves_most"] else "no", fnum((cv.get("leakage") or {}).get("ratio"), ".2f")])
        blocks.append(Table("Cross-value matrix: located set × evaluated value (z against the same controls)",
                            ["located set", *columns, "own value moves most", "leakage"], rows,
                            "Each cell: (Δ − the controls' mean Δ) / the controls' sd on that column's items, read toward the row's "
                            "own pole on its own axis, else toward the column's first pole. Leakage = mean |z| of the other "
                            "columns / |z| of its own (0: only its own value moves). "
                            f"From {src_manifest} (results: cross_values).", name="ablate-cross-values"))
    judged = [r for r in results if r.get("judge")]
    if judged:
        rows = []
        for r in judged:
            j = r["judge"]
            rows.append([r["dimension"], str(j["prompts"]), fnum(j["before"], "+.3f"), fnum(j["after"], "+.3f"),
                         f"{fnum(j['effect'], '+.3f')} [{fnum(j['effect_ci'][0], '+.3f')}, {fnum(j['effect_ci'][1], '+.3f')}]",
                         fnum(j.get("control_effect"), "+.3f"), str(j.get("controls", 0))])
        blocks.append(Table(f"Generations scored by the judge ({judged[0]['judge']['judge'].get('name')})",
                            ["pole", "prompts", "before", "after", "Δ [95% CI]", "controls' Δ", "controls"], rows,
                            "Orientation of each greedy generation on the axis, in [−1, 1] (+1: the pole). "
                            f"From {src_manifest} (results: judge).", name="ablate-judge"))
    return blocks


def _generations(run_dir: Path, options: ReportOptions) -> list:
    rows = read_jsonl(run_dir / "generations.jsonl")
    if not rows or options.generations <= 0:
        return []
    shown, seen = [], {}
    for row in rows:
        pole = row.get("dimension", "")
        if seen.get(pole, 0) < options.generations:
            seen[pole] = seen.get(pole, 0) + 1
            shown.append(row)
    return [Generations("Generations before / after the edit (greedy)", shown, rel(run_dir / "generations.jsonl", run_dir))]


# -- steer ---------------------------------------------------------------------------------------
@section("steer")
def steer_section(run_dir: Path, manifest: dict, options: ReportOptions) -> list[Section]:
    from vneuron.results import direction_tables, figures

    cfg = manifest["config"]
    src_csv, src_manifest = rel(run_dir / "dose_response.csv", run_dir), rel(run_dir / MANIFEST, run_dir)
    s = Section(f"Steering ({cfg['mode']}): {run_dir.name}", run_dir, "steer")
    s.blocks.append(Text(f"γ sweep {', '.join(f'{g:g}' for g in manifest.get('gammas', []))} ({cfg['mode']}), "
                         f"{cfg['controls']} matched random controls at every γ, {cfg['split']} split. "
                         f"Located run: {manifest.get('locate_run')}."))
    rows = read_csv(run_dir / "dose_response.csv")
    curves_manifest = {r["dimension"]: r["curve"] for r in manifest.get("results") or []}
    curves: dict[str, list[dict]] = {}
    for row in rows:
        pole, gamma = row["dimension"], float(row["gamma"])  # the manifest's point of the row: its CIs, controls, directions
        extra = next((p for p in curves_manifest.get(pole, []) if p["gamma"] == gamma), {})
        curves.setdefault(pole, []).append({"gamma": gamma, "baseline": float(row["baseline"]), "after": float(row["after"]),
                                            "control_effect": float(row["control_effect"]), "directions": extra.get("directions"),
                                            "control_effects": extra.get("control_effects") or [], "effect_ci": extra.get("effect_ci")})
    table = [[r["dimension"], f"{float(r['gamma']):g}", fnum(r["baseline"], ".4f"), fnum(r["after"], ".4f"),
              fnum(r["effect"], "+.4f"), fnum(r["control_effect"], "+.4f"), fnum(r["effect_minus_control"], "+.4f"),
              fnum(_steer_p(curves_manifest, r), ".3f")]
             for r in rows]
    s.blocks.append(Table("Dose–response", ["pole", "γ", "P before", "P after", "Δ", "control Δ", "Δ − control",
                                            "p (higher)"], table, f"From {src_csv} (p from {rel(run_dir / MANIFEST, run_dir)}).",
                          name="steer-dose-response"))
    s.blocks.extend(Text(f"Guard-rail, {line}.") for line in warnings_of(validation_guards(manifest, manifest.get("results") or [])))
    s.blocks.extend(Table(*t, name="steer-directions") for t in [direction_tables.report_table(manifest, src_manifest)] if t)
    if curves:
        s.blocks.append(figures.dose_response(curves, cfg["mode"], src_csv))
    side = [[pole, f"{p['gamma']:g}", fnum(se.get("kl", {}).get("located"), ".4f"), fnum(se.get("kl", {}).get("control_mean"), ".4f"),
             fnum(se.get("ppl_ratio", {}).get("located"), ".4f"), fnum(judge.get("effect"), "+.3f"),
             fnum(judge.get("control_effect"), "+.3f"), (p.get("verdict") or {}).get("verdict", "—")]
            for pole, points in curves_manifest.items() for p in points if p.get("side_effects") or p.get("judge")
            for se, judge in [(p.get("side_effects") or {}, p.get("judge") or {})]]
    if side:
        s.blocks.append(Table("Side effects and judged generations at every γ",
                              ["pole", "γ", "KL/position", "controls' KL", "perplexity ×", "judge Δ", "controls' judge Δ", "verdict"], side,
                              "KL = mean KL(unedited ‖ steered) over every position of neutral prose; judge Δ = change in the "
                              f"generations' orientation on the axis, in [−1, 1]. From {rel(run_dir / MANIFEST, run_dir)} "
                              "(results: curve[].side_effects, judge, verdict).", name="steer-side-effects"))
    s.blocks.extend(_generations(run_dir, options))
    return [s]


# -- the report ----------------------------------------------------------------------------------
def collect(run_dirs: Sequence[str | Path]) -> list[tuple[Path, dict, str]]:
    """Every run to show, sub-runs after their locate run; all checked before anything is drawn."""
    if not run_dirs:
        raise VneuronError("No run directory given", "pass one or more run directories")
    found: list[tuple[Path, dict, str]] = []
    seen = set()
    for given in run_dirs:
        path = Path(given)
        manifest, kind = _kind_of(path)
        for p, m in [(path, manifest)] + (sub_runs(path) if kind == "locate" else []):
            key = p.resolve()
            if key not in seen:
                seen.add(key)
                found.append((p, m, m["kind"]))
    return found


def build_sections(run_dirs: Sequence[str | Path], options: ReportOptions | None = None, runs: list | None = None) -> list[Section]:
    """The page's sections (``runs``: what ``collect`` read of ``run_dirs`` already)."""
    options, runs = options or ReportOptions(), runs if runs is not None else collect(run_dirs)
    sections: list[Section] = []
    for path, manifest, kind in runs:
        if options.progress:
            options.progress("Report: drawing figures", len(sections), len(runs))
        sections.extend(SECTIONS[kind](path, manifest, options))
    locates = [Path(p) for p, _, k in runs if k == "locate"]
    if len(locates) > 1:
        sections.append(compare_section(locates))
    return sections


def compare_section(paths: list[Path]) -> Section:
    from vneuron.results import compare, figures

    s = Section("Comparison of the located sets", paths[0].parent, "compare")
    try:
        result = compare.compare_runs(paths, strict=False)
    except VneuronError as exc:
        s.blocks.append(Missing(f"Not compared: {exc.one_line()}"))
        return s
    s.blocks.append(Text("Runs: " + "; ".join(f"{k + 1} = {p}" for k, p in enumerate(result.paths)) +
                         (f". Poles not in every run (left out): {', '.join(result.skipped)}" if result.skipped else "")))
    s.blocks.append(Table("Pairwise overlap of located sets", result.table_columns(), result.table_rows(),
                          "Chance = |A|·|B|/N neurons in common if both sets were random; p = hypergeometric P(overlap ≥ observed). "
                          "Depth TV = total variation distance between the sets' relative-depth distributions.", name="compare"))
    src = ", ".join(str(Path(p) / NEURONS_CSV) for p in result.paths)
    s.blocks.append(figures.overlap_heatmaps(result.matrices(), result.names, src))
    s.blocks.append(figures.depth_profiles(result.depth_profiles(), result.bins, src))
    return s


def default_output(run_dirs: Sequence[str | Path]) -> Path:
    return Path(run_dirs[0]) / "report.html"


@one_writer
def build_report(run_dirs: Sequence[str | Path], out: str | Path | None = None, options: ReportOptions | None = None) -> Report:
    """Write OUT.html (figures embedded), OUT.md and OUT-figures/*.png; nothing is written on a bad input."""
    options = options or ReportOptions()
    out = Path(out) if out else default_output(run_dirs)
    if out.suffix.lower() not in (".html", ".htm"):
        raise VneuronError(f"Report file {out} should end in .html", "pass e.g. -o report.html")
    if options.cards < 0:
        raise VneuronError(f"`cards` must be at least 0, got {options.cards}", "0: no neuron cards (no model needed)")
    check_output_file(out, "-o")
    runs = collect(run_dirs)  # every run read before the claim, which may make the output's folder
    claim(out, "-o")  # two reports into one file: the second is refused now
    sections = build_sections(run_dirs, options, runs)
    fig_dir = out.with_name(out.stem + "-figures")
    names: list[tuple[Any, str]] = []  # (figure, file name)
    n = 0
    for s in sections:
        for block in s.blocks:
            if _is_figure(block):
                n += 1
                names.append((block, f"{n:02d}-{block.name}.png"))
            for fig in getattr(block, "figures", []):
                n += 1
                names.append((fig, f"{n:02d}-{fig.name}.png"))
    files = {id(fig): name for fig, name in names}
    pngs = {id(fig): fig.png_bytes() for fig, _ in names}
    page = render_html(sections, files, pngs, run_dirs)
    md = render_markdown(sections, files, fig_dir.name, run_dirs)
    md_file = out.with_suffix(".md")

    def write(directory: Path) -> None:
        (directory / fig_dir.name).mkdir()
        for fig, name in names:
            (directory / fig_dir.name / name).write_bytes(pngs[id(fig)])
        (directory / md_file.name).write_text(md, encoding="utf-8")
        (directory / out.name).write_text(page, encoding="utf-8")

    write_beside(out.parent, [out.name, md_file.name, fig_dir.name], write, what="report, its Markdown and its figures")
    return Report(out, out.with_suffix(".md"), [fig_dir / name for _, name in names], sections)


def _steer_p(curves: dict, row: dict) -> float | None:
    """The sequential p of one dose–response row (older runs: the one-sided p)."""
    points = [p for p in curves.get(row["dimension"], []) if p["gamma"] == float(row["gamma"])]
    return next((p.get("p_sequential", p.get("p_higher")) for p in points), None)


def _is_figure(block) -> bool:
    return hasattr(block, "png_bytes")


# -- rendering -----------------------------------------------------------------------------------
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}h3{font-size:1.05em;margin-bottom:.3em}
table{border-collapse:collapse;margin:.5em 0 1.2em;font-size:.85em}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right;vertical-align:top}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}.note{color:#666;font-size:.82em;margin-top:-.8em}
figure{margin:1em 0 1.6em}figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:.85em;color:#444}
.gen td{text-align:left;white-space:pre-wrap;max-width:300px}.card{border:1px solid #ccc;border-radius:6px;padding:.6em 1em;margin:1em 0}
.tok{border-radius:2px;padding:0 1px}.unc{color:#999}code{background:#f6f6f6;padding:0 3px}
"""


def _table_html(t: Table) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in t.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in t.rows)
    note = f'<p class="note">{html.escape(t.note)}</p>' if t.note else ""
    return f'<h3>{html.escape(t.title)}</h3><table data-name="{html.escape(t.name)}"><tr>{head}</tr>{body}</table>{note}'


def _figure_html(fig, files: dict, pngs: dict) -> str:
    data = base64.b64encode(pngs[id(fig)]).decode()
    name = files[id(fig)]
    return (f'<figure id="{html.escape(name[:-4])}"><h3>{html.escape(fig.title)}</h3>'
            f'<img class="figure" alt="{html.escape(fig.title)}" src="data:image/png;base64,{data}">'
            f'<figcaption>{html.escape(fig.caption)} <i>(file: {html.escape(name)})</i></figcaption></figure>')


def render_html(sections: list[Section], files: dict, pngs: dict, run_dirs) -> str:
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>vneuron report</title>",
             f"<style>{CSS}</style></head><body><h1>vneuron report</h1>",
             f"<p>Runs: {', '.join(html.escape(str(r)) for r in run_dirs)}. Written {time.strftime('%Y-%m-%d %H:%M')}.</p><ul>"]
    parts += [f"<li><a href='#s{k}'>{html.escape(s.title)}</a></li>" for k, s in enumerate(sections)]
    parts.append("</ul>")
    for k, s in enumerate(sections):
        parts.append(f"<h2 id='s{k}'>{html.escape(s.title)}</h2>")
        for block in s.blocks:
            if isinstance(block, Table):
                parts.append(_table_html(block))
            elif isinstance(block, Text):
                parts.append(f"<p>{html.escape(block.text)}</p>")
            elif isinstance(block, Generations):
                rows = "".join(f"<tr><td>{html.escape(r.get('dimension', ''))}</td><td>{html.escape(r.get('prompt', ''))}</td>"
                               f"<td>{html.escape(r.get('before', ''))}</td><td>{html.escape(r.get('after', ''))}</td></tr>"
                               for r in block.rows)
                parts.append(f"<h3>{html.escape(block.title)}</h3><table class='gen'><tr><th>pole</th><th>prompt</th>"
                             f"<th>before</th><th>after</th></tr>{rows}</table><p class='note'>From {html.escape(block.source)}.</p>")
            elif _is_figure(block):
                parts.append(_figure_html(block, files, pngs))
            elif hasattr(block, "html"):
                parts.append(block.html(lambda fig: _figure_html(fig, files, pngs)))
    parts.append("</body></html>")
    return "\n".join(parts)


def _md_table(columns: list[str], rows: list[list[str]]) -> list[str]:
    esc = lambda v: str(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    return ["| " + " | ".join(map(esc, columns)) + " |", "|" + "---|" * len(columns)] + \
           ["| " + " | ".join(map(esc, row)) + " |" for row in rows]


def render_markdown(sections: list[Section], files: dict, fig_dir: str, run_dirs) -> str:
    lines = ["# vneuron report", "", f"Runs: {', '.join(str(r) for r in run_dirs)}.", ""]
    for s in sections:
        lines += [f"## {s.title}", ""]
        for block in s.blocks:
            if isinstance(block, Table):
                lines += [f"### {block.title}", "", *_md_table(block.columns, block.rows), "", f"_{block.note}_" if block.note else "", ""]
            elif isinstance(block, Text):
                lines += [block.text, ""]
            elif isinstance(block, Generations):
                lines += [f"### {block.title}", ""]
                for r in block.rows:
                    lines += [f"**{r.get('dimension', '')}** — {r.get('prompt', '')}".replace("\n", " "), "",
                              f"> before: {r.get('before', '')}".replace("\n", " "), ">",
                              f"> after: {r.get('after', '')}".replace("\n", " "), ""]
            elif _is_figure(block):
                lines += [f"### {block.title}", "", f"![{block.title}]({fig_dir}/{files[id(block)]})", "", f"_{block.caption}_", ""]
            elif hasattr(block, "markdown"):
                lines += [block.markdown(lambda fig: f"![{fig.title}]({fig_dir}/{files[id(fig)]})"), ""]
    return "\n".join(lines)
