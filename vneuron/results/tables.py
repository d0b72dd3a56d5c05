"""The terminal tables of every command's results (the consoles and progress: ``vneuron.runtime.progress``)."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.table import Table

from vneuron.data.schema import SHORT
from vneuron.results.guardrails import GUARD_MARK, stability_guard, validation_guards
from vneuron.runtime.budget import MB


def locate_tables(result, top: int = 10) -> list[Table]:
    tables = []
    by_label: dict[str, list[dict]] = {}
    for row in result.rows:
        by_label.setdefault(row["dimension"], []).append(row)
    method = result.manifest["selection"]["method"]
    for label, rows in by_label.items():
        s = result.sets[label]
        stab = result.stability.get(label) or {}
        caption = f"{len(s)} neurons selected"
        if stab:
            caption += (f"; split-half: r={stab['pearson_r']:.2f}, top-{stab['k']} overlap {stab['overlap']} "
                        f"(chance ≈ {stab['chance_overlap']:.0f}), Jaccard {stab['jaccard']:.2f}")
            weak = stability_guard(stab)
            if weak and weak["weak"]:
                caption += f" {GUARD_MARK} {weak['warning']}"
        null = (result.manifest.get("null") or {}).get(label)
        if null and "mean" in null:
            caption += f"; label-shuffle null: {null['mean']:.0f} of {null['selected']} pass the cut by chance"
        readable = probe_caption(result.manifest, label)
        if readable:
            caption += f"; {readable}"
        opposite = rows[0]["opposite"]
        title = f"{label}" + (f" vs {opposite}" if opposite else "") + f" — top {min(top, len(rows))} by {method}"
        table = Table(title=title, caption=caption, title_justify="left")
        for column in ("rank", "layer", "unit", "score", "p_pole", "p_opposite", "mean diff"):
            table.add_column(column, justify="right")
        for row in rows[:top]:
            table.add_row(str(row["rank"]), str(row["layer"]), str(row["unit"]), f"{row['score']:+.4f}",
                          f"{row['p_pole']:.3f}", _num(row["p_opposite"], ".3f"), _num(row["mean_diff"], "+.4f"))
        tables.append(table)
    return tables


def probe_caption(manifest: dict, pole: str) -> str | None:
    """Where the pole is linearly readable: each held-out probe's peak layer, AUROC and 95 % CI (None: no probe)."""
    entry = ((manifest.get("probes") or {}).get("poles") or {}).get(pole)
    if not entry:
        return None
    if "note" in entry:
        return f"probes: {entry['note']}"
    parts = []
    for probe, name in (("mean_diff", "mean-difference"), ("logistic", "logistic")):
        peak = entry[probe]["peak"]
        parts.append(f"{name} L{peak['layer']} {peak['auroc']:.2f} [{peak['ci'][0]:.2f}, {peak['ci'][1]:.2f}]")
    return "readable (held-out probe AUROC, peak layer): " + ", ".join(parts)


def _num(value, fmt: str) -> str:
    return "" if value == "" else format(value, fmt)


def key_value_table(title: str, rows: list[tuple[str, str]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, value)
    return table


def _ci3(pair) -> str:
    lo, hi = pair
    return f"[{lo:+.3f},{hi:+.3f}]"


def ablate_table(result) -> Table:
    """One row per pole, then the controls and the located − control difference beneath it (fits 80 columns)."""
    cfg = result.manifest["config"]
    table = Table(title=f"Ablation ({cfg['mode']}) vs up to {cfg['controls']} matched random controls", title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True, caption_justify="left",
                  caption="P = mean P(choosing the pole's action) on held-out items; Δ = after − before; n = neurons/items; "
                          "controls = the same edit of matched random sets; Δ−ctrl = Δ minus the controls' Δ; "
                          "rank 1 = beyond every control in the tested direction (lower unless --tail higher; r/N+1: N controls drawn); "
                          f"p = sequential p (Besag–Clifford) of controls at least as extreme as Δ, controls drawn one at a time until "
                          f"{cfg.get('stop_after', 0)} reach Δ (0: all); {GUARD_MARK}POLE = a guard-rail warning about it below the table")
    for column in ("pole", "n", "P before→after", "Δ [95% CI]", "rank", "p", "drop%"):
        table.add_column(column, justify="right", no_wrap=True)
    if any(s.get("side_effects") for s in result.summaries):
        table.caption += ("; z = (Δ − controls' mean) / their sd [95% CI]; side effects under each pole, located (controls' mean ± sd), "
                          "rank 1 = more damage than every control: KL/pos = mean KL(unedited ‖ edited) over every position of "
                          "neutral prose, ppl × = its perplexity ratio, task ΔP = change in P(right) on factual/grammatical pairs")
    guards = validation_guards(result.manifest, result.summaries)
    for s in result.summaries:
        has = "control_effect" in s
        mark = GUARD_MARK if (guards.get(s["dimension"]) or {}).get("warnings") else ""
        table.add_row(
            mark + SHORT.get(s["dimension"], s["dimension"][:12]), f"{s['neurons']}/{s['items']}",
            f"{s['baseline']:.3f}→{s['after']:.3f}", f"{s['effect']:+.3f} {_ci3(s['effect_ci'])}",
            f"{s['rank']}/{s['controls'] + 1}" if has else "—",
            f"{s.get('p_sequential', s.get('p_lower', 0)):.2f}" if has else "—",
            f"{s['drop_percent']:.1f}" if s.get("drop_percent") is not None else "—",
        )
        if has:
            table.add_row("[dim]controls[/]", "", "[dim]mean ± sd[/]", f"[dim]{s['control_effect']:+.3f} ± {s['control_sd']:.3f}[/]",
                          "", "", "")
            table.add_row("[dim]Δ−ctrl[/]", "", "", f"{s['effect_minus_control']:+.3f} {_ci3(s['effect_minus_control_ci'])}",
                          "", "", "", end_section=not (s.get("side_effects") or s.get("verdict") or s.get("z") is not None))
            if s.get("z") is not None:
                ci = f" [{s['z_ci'][0]:+.1f},{s['z_ci'][1]:+.1f}]" if s.get("z_ci") else ""
                table.add_row("[dim]z[/]", "", "", f"{s['z']:+.1f}{ci}", "", "", "",
                              end_section=not (s.get("side_effects") or s.get("verdict")))
        for label, row in side_effect_rows(s):
            table.add_row(f"[dim]{label}[/]", "", *row)
        if s.get("verdict"):
            table.add_row("[dim]verdict[/]", "", "", f"[bold]{s['verdict']['verdict']}[/]", "", "", "", end_section=True)
    return table


SIDE_LABELS = {"kl": ("KL/pos", "{:.3f}"), "ppl_ratio": ("ppl ×", "{:.3f}"), "task_drop": ("task ΔP", "{:+.3f}")}


def side_effect_rows(s: dict) -> list[tuple[str, list[str]]]:
    """Rows under a pole: each side effect of the located set, the controls' mean ± sd, its rank and p
    (rank 1 = more damage than every control)."""
    side = s.get("side_effects") or {}
    rows = []
    for key, (label, fmt) in SIDE_LABELS.items():
        d = side.get(key)
        if not d:
            continue
        value = -d["located"] if key == "task_drop" else d["located"]  # shown as the change in P(right)
        mean = -d.get("control_mean", float("nan")) if key == "task_drop" else d.get("control_mean", float("nan"))
        ctrl = f"{fmt.format(mean)} ± {d.get('control_sd', float('nan')):.3f}" if "control_mean" in d else ""
        rank = f"{d['rank']}/{d['controls'] + 1}" if "rank" in d else "—"
        rows.append((label, [fmt.format(value), ctrl, rank, f"{d['p']:.2f}" if "p" in d else "—", ""]))
    return rows


def cross_table(result) -> Table | None:
    """The cross-value matrix: a row per located set, a column per evaluated value/axis; z against the controls."""
    rows = [s for s in result.summaries if s.get("cross_values")]
    if not rows:
        return None
    columns = list(rows[0]["cross_values"]["cells"])
    table = Table(title="Cross-value matrix — z of Δ against the same controls (* = own value)", title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True, caption_justify="left",
                  caption="cell = (Δ − controls' mean Δ) / controls' sd on the column's items, read toward the row's own pole on its "
                          "own axis, else toward the column's first pole; value-specific = its own column has the largest |z|; "
                          "leakage = mean |z| of the other columns / |z| of its own (0: only its own value moves)")
    table.add_column("located", justify="right", no_wrap=True)
    for column in columns:
        table.add_column(_short(column), justify="right", no_wrap=True)
    table.add_column("own most", justify="right")
    table.add_column("leakage", justify="right")
    for s in rows:
        cv = s["cross_values"]
        cells = []
        for column in columns:
            cell = cv["cells"].get(column, {})
            text = "—" if cell.get("z") is None else f"{cell['z']:+.1f}"
            cells.append(text + ("*" if column == cv["own"] else ""))
        leak = (cv.get("leakage") or {}).get("ratio")
        table.add_row(SHORT.get(s["dimension"], s["dimension"][:12]), *cells, "yes" if cv["own_moves_most"] else "no",
                      "—" if leak is None else f"{leak:.2f}")
    return table


def _short(column: str) -> str:
    parts = column.split("/")
    return "/".join(SHORT.get(p, p[:6]) for p in parts)


def steer_table(result) -> Table:
    cfg = result.manifest["config"]
    table = Table(title=f"Steering ({cfg['mode']}) dose–response — P(choosing the pole's action)", title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True, caption_justify="left",
                  caption=f"controls: up to {cfg['controls']} matched random sets at every γ, drawn until {cfg.get('stop_after', 0)} "
                          "match Δ (0: all); before = unedited model; p = sequential p in the edit's direction; ctl = controls drawn; "
                          f"{GUARD_MARK}POLE = a guard-rail warning about it below the table")
    for column in ("pole", "γ", "before", "after", "Δ", "control Δ", "Δ − control [95% CI]", "p", "ctl"):
        table.add_column(column, justify="right", no_wrap=True)
    guards = validation_guards(result.manifest, result.summaries)
    for s in result.summaries:
        for point in s["curve"]:
            has = "control_effect" in point
            mark = GUARD_MARK if ((guards.get(s["dimension"]) or {}).get(str(point["gamma"])) or {}).get("warnings") else ""
            table.add_row(mark + SHORT.get(s["dimension"], s["dimension"][:12]), f"{point['gamma']:g}", f"{point['baseline']:.3f}",
                          f"{point['after']:.3f}", f"{point['effect']:+.3f}", f"{point['control_effect']:+.3f}" if has else "—",
                          f"{point['effect_minus_control']:+.3f} {_ci3(point['effect_minus_control_ci'])}" if has else "—",
                          f"{point.get('p_sequential', point.get('p_higher', 0)):.2f}" if has else "—",
                          f"{point.get('controls_drawn', point.get('controls', 0))}")
    return table


def steer_side_table(result) -> Table | None:
    """Beside the dose–response: side effects (located vs controls) and the judge's scores, per γ."""
    points = [(s["dimension"], p) for s in result.summaries for p in s["curve"]]
    if not any(p.get("side_effects") or p.get("judge") for _, p in points):
        return None
    table = Table(title="Steering: side effects and judged generations per γ", title_justify="left", box=box.SIMPLE_HEAD,
                  pad_edge=False, collapse_padding=True, caption_justify="left",
                  caption="KL = mean KL(unedited ‖ edited) per position of neutral prose, located (controls' mean), rank among the "
                          "controls (1 = more than all); ppl × = perplexity ratio; judge = generations' orientation Δ [95% CI] "
                          "(controls' Δ)")
    for column in ("pole", "γ", "KL (ctrl)", "rank", "ppl ×", "judge Δ [95% CI] (ctrl)", "verdict"):
        table.add_column(column, justify="right", no_wrap=True)
    for pole, p in points:
        side, judge = p.get("side_effects") or {}, p.get("judge")
        kl = side.get("kl") or {}
        table.add_row(SHORT.get(pole, pole[:12]), f"{p['gamma']:g}",
                      f"{kl['located']:.3f} ({kl.get('control_mean', float('nan')):.3f})" if kl else "—",
                      f"{kl['rank']}/{kl['controls'] + 1}" if "rank" in kl else "—",
                      f"{side['ppl_ratio']['located']:.3f}" if side.get("ppl_ratio") else "—",
                      f"{judge['effect']:+.2f} {_ci3(judge['effect_ci'])} ({judge.get('control_effect', float('nan')):+.2f})"
                      if judge else "—", (p.get("verdict") or {}).get("verdict", "—"))
    return table


def markdown_summary(located=None, ablated=None, steered=None) -> str:
    """A short Markdown report of a locate → ablate → steer study."""
    lines = ["# vneuron study", ""]
    if located is not None:
        m = located.manifest
        lines += [f"Model `{m['model']['model_id']}` ({m['model']['revision'][:30]}), corpus `{m['dataset']['name']}` "
                  f"({m['dataset']['language']}, {m['dataset']['split']}, {m['dataset']['items']} items), site "
                  f"`{m['capture']['site']}`, {m['selection']['method']} top-{m['selection']['top_k']}.", "",
                  "## Locate: split-half stability", "", "| pole | r (halves) | top-k overlap | chance |", "|---|---|---|---|"]
        for pole, s in located.stability.items():
            lines.append(f"| {pole} | {s['pearson_r']:.2f} | {s['overlap']}/{s['k']} | {s['chance_overlap']:.1f} |")
        lines.append("")
    if ablated is not None:
        cfg = ablated.manifest["config"]
        lines += [f"## Ablation ({cfg['mode']}) against {cfg['controls']} matched random controls", "",
                  "P = mean probability of choosing the pole's action on held-out scenarios (both option orders).", "",
                  "| pole | neurons | items | P before | P after | Δ [95% CI] | control Δ (sd) | Δ − control [95% CI] "
                  "| rank | p | drop % |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for s in ablated.summaries:
            lo, hi = s["effect_ci"]
            clo, chi = s.get("effect_minus_control_ci", (float("nan"),) * 2)
            lines.append(f"| {s['dimension']} | {s['neurons']} | {s['items']} | {s['baseline']:.3f} | {s['after']:.3f} | "
                         f"{s['effect']:+.4f} [{lo:+.4f}, {hi:+.4f}] | {s.get('control_effect', float('nan')):+.4f} "
                         f"({s.get('control_sd', float('nan')):.4f}) | {s.get('effect_minus_control', float('nan')):+.4f} "
                         f"[{clo:+.4f}, {chi:+.4f}] | {s.get('rank', '—')}/{s.get('controls', 0) + 1} | "
                         f"{s.get('p_sequential', s.get('p_lower', float('nan'))):.3f} | {s['drop_percent']:.1f} |")
        lines.append("")
    if steered is not None:
        cfg = steered.manifest["config"]
        lines += [f"## Steering ({cfg['mode']}) dose–response, {cfg['controls']} controls per γ", "",
                  "| pole | γ | P after | Δ | control Δ | Δ − control [95% CI] | p (higher) |", "|---|---|---|---|---|---|---|"]
        for s in steered.summaries:
            for point in s["curve"]:
                clo, chi = point.get("effect_minus_control_ci", (float("nan"),) * 2)
                lines.append(f"| {s['dimension']} | {point['gamma']:g} | {point['after']:.3f} | {point['effect']:+.4f} | "
                             f"{point.get('control_effect', float('nan')):+.4f} | {point.get('effect_minus_control', float('nan')):+.4f} "
                             f"[{clo:+.4f}, {chi:+.4f}] | {point.get('p_sequential', point.get('p_higher', float('nan'))):.3f} |")
        lines.append("")
    return "\n".join(lines)


def _duration(s: float) -> str:
    return f"{s / 60:.1f} min" if s >= 90 else f"{s:.0f} s"


def plan_text(plan: dict[str, Any]) -> str:
    """A ``--dry-run`` plan (``vneuron.locate.plan``, ``vneuron.validate.plan``) as a few plain lines."""
    least, most = plan["least"], plan["most"]

    def span(key: str, fmt=lambda v: f"{v:,}") -> str:
        a, b = fmt(least[key]), fmt(most[key])
        return a if a == b else f"{a} – {b}"

    mb = lambda v: f"{v / MB:,.1f} MB"  # noqa: E731
    where = f"NDIF {plan['remote']['host']}" if plan.get("remote") else "this machine"
    lines = [f"Dry run of {plan['kind']} on {plan['model']} ({where}); nothing was run or written."]
    if plan["kind"] != "locate":
        c = plan["controls"]
        lines.append(f"  controls per located set: {c['at_least']} – {c['max']} (sequential, stop after {c['stop_after']}; "
                     "the low end if every pole is a null result)")
        for p in plan["poles"]:
            lines.append(f"  {p['dimension']}: {p['items']} items, {p['neurons']} neurons (lowest layer {p['lowest_layer']}), "
                         f"{p['batches_per_set']} batches / {p['tokens_per_set']:,} tokens per edit set")
        if plan.get("evaluation"):
            e = plan["evaluation"]
            lines.append(f"  evaluated on {e['name']} ({e['source']}, split {e['split']}, {e['items']} items)")
    else:
        lines.append(f"  {plan['prompts']:,} prompts")
    if plan.get("out"):
        lines.append(f"  would write: {plan['out']}")
    lines += [f"  forward passes: {span('forwards')}", f"  tokens: {span('tokens')} (token × block: {span('layer_tokens')})",
              f"  requests: {span('requests')}", f"  bytes sent: {span('bytes_up', mb)}; received: {span('bytes_down', mb)}",
              f"  memory per batch beyond the weights (estimate): {plan['server_mb_per_batch']:,.0f} MB"]
    if "estimate_s" in plan:
        lo, hi = plan["estimate_s"]
        span_s = _duration(lo) + ("" if lo == hi else f" – {_duration(hi)}")
        lines.append("  time (from a one-batch calibration now; loading and writing not included): "
                     + (f"about {_duration(plan['expected_s'])} expected ({span_s})" if "expected_s" in plan else span_s) + ", by stage:")
        if "expected_s" in plan:
            lines.append("    (expected: value shifts that stop at their first round, as a null or reversed effect does, and side "
                         "effects drawn as for a located set that damages like a random one)")
    elif plan.get("remote"):
        lines.append("  time: not estimated for a remote server (queue and hardware unknown)")
    for name, stage in (plan.get("stages") or {}).items():
        lo, hi = stage["least"], stage["most"]
        t = "" if "estimate_s" not in stage else ", about " + " – ".join(dict.fromkeys(_duration(v) for v in stage["estimate_s"]))
        if "expected_s" in stage and stage["expected_s"] != stage["estimate_s"][0]:
            t += f" (expected {_duration(stage['expected_s'])})"
        lines.append(f"    {name}: " + " – ".join(dict.fromkeys(f"{w['forwards']:,}" for w in (lo, hi))) + " forward passes, "
                     + " – ".join(dict.fromkeys(f"{w['layer_tokens']:,}" for w in (lo, hi))) + f" token × block{t}")
    if plan.get("per_control"):
        pc = plan["per_control"]
        t = f", about {pc['estimate_s']:.0f} s" if "estimate_s" in pc else ""
        lines.append(f"  each control beyond the first: {pc['forwards']:,} forward passes, {pc['tokens']:,} tokens{t} "
                     f"(drawing goes on to {plan['controls'].get('max_controls')} while the located set beats every control)")
    if plan.get("side_effects"):
        se = plan["side_effects"]
        t = f", about {se['estimate_s_per_set']:.1f} s" if "estimate_s_per_set" in se else ""
        lines.append(f"  side effects: {se['texts']} neutral texts + {se['pairs']} pairs, {se['tokens_per_set']:,} tokens per edit set{t}, "
                     f"{se['sets_at_least']} to {se['sets_at_most']} sets (sequential"
                     + (f"; about {se['sets_expected']:g} expected)" if "sets_expected" in se else ")")
                     + ("; the cross-value matrix: the other values' items under the located set and its value controls"
                        if se["cross_values"] else ""))
    if plan.get("note"):
        lines.append(f"  note: {plan['note']}")
    return "\n".join(lines)
