"""What several commands print beside their tables: notes on the data they read, each naming the command's flags
where the library names its settings (``for_terminal``)."""

from __future__ import annotations

from rich.markup import escape

from vneuron.cli.options import for_terminal


def data_notes(data: dict) -> None:
    """What the terminal must say about the data: hash-made splits, pole pairs left without texts."""
    from vneuron.runtime.progress import console

    source = data.get("split_source") or {}
    if source.get("kind") == "hash":
        console.print(escape(f"Split: {for_terminal(source['note'])} (--test-fraction)"))
    for note in data.get("notes") or []:
        console.print(escape(f"Note: {for_terminal(note)}"))
    dropped = data.get("dropped_contrasts") or []
    if dropped:
        console.print(escape(f"Skipped {len(dropped)} pole pair(s) with no texts on one side after --split/--limit: "
                             + ", ".join(f"{a}:{b}" for a, b in dropped[:6]) + (" …" if len(dropped) > 6 else "")))


def evaluation_note(manifest: dict) -> None:
    """Which data an ablation or steering sweep was evaluated on."""
    from vneuron.runtime.progress import console

    data = manifest.get("evaluation") or {}
    if not data:
        return
    line = f"Evaluated on {data.get('name')} ({data.get('source')}, split {data.get('split')}, {data.get('items')} items read"
    line += f", template {data.get('template', {}).get('spec')}"
    if data.get("map"):
        line += ", map " + ",".join(f"{k}={v}" for k, v in data["map"].items())
    console.print(escape(line + ")"))
    if data.get("split") != "all":  # how the split was made matters only when one part of the data is read
        data_notes(data)
    elif data.get("notes"):
        data_notes({"notes": data["notes"]})
    if data.get("poles_without_items"):
        console.print(escape(f"Not evaluated (no items on their axis): {', '.join(data['poles_without_items'])}"))


def direction_note(manifest: dict) -> None:
    """One line when the direction baselines were asked for (the default) but the run, or a pole of it, cannot have them."""
    from vneuron.runtime.progress import console

    baselines = manifest.get("directions") or {}
    if (manifest.get("config") or {}).get("directions") and baselines.get("note"):
        console.print(f"[yellow]note:[/] {escape(baselines['note'])}")
    for r in manifest.get("results") or []:  # a pole without a probe peak: no baselines for it
        if (r.get("directions") or {}).get("note"):
            console.print(f"[yellow]note:[/] {escape(r['dimension'])}: no direction baselines: {escape(r['directions']['note'])}")


def guard_notes(result) -> None:
    """The guard-rail warnings of an ablation or a sweep, under its table."""
    from vneuron.results.guardrails import validation_guards, warnings_of
    from vneuron.runtime.progress import console

    for line in warnings_of(validation_guards(result.manifest, result.summaries)):
        console.print(f"[yellow]warning:[/] {escape(for_terminal(line))}")


def plan(plan: dict, json_out: bool = False) -> None:
    """A dry run's plan: its text, or (``--json``) the plan itself as one JSON object."""
    from vneuron.results.tables import plan_text
    from vneuron.runtime.progress import console

    if json_out:
        from vneuron.results.jsonout import emit

        emit({"dry_run": True, **plan})
        return

    console.print(plan_text(plan), markup=False, highlight=False, soft_wrap=True)
