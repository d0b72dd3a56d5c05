"""``vneuron models``, ``datasets`` and ``doctor``: what this installation knows and can reach."""

from __future__ import annotations

from typing import Optional

import typer

from vneuron.cli.options import REMOTE, HostOpt, JsonOpt
from vneuron.errors import VneuronError


def _emit_or_print(json_obj: dict, table, json_out: bool) -> None:
    if json_out:
        from vneuron.results.jsonout import emit

        emit(json_obj)
    else:
        from vneuron.runtime.progress import console

        console.print(table)


def models(remote: bool = typer.Option(False, "--remote", rich_help_panel=REMOTE, help="Also ask NDIF which aliases it serves now."),
           host: Optional[str] = HostOpt, json_out: bool = JsonOpt):
    """Model aliases, where their weights come from, and (with --remote/--host) whether NDIF serves them now."""
    from rich.table import Table

    from vneuron.models.registry import alias_records

    served = None
    if remote or host:
        from vneuron.runtime.remote import probe, resolve_target, served_models

        where = resolve_target(host or True)
        found = probe(where.host)
        if not found.get("reachable"):
            raise VneuronError(f"NDIF host {where.host} is unreachable ({found.get('error', 'no answer')})",
                               "check `host` / NDIF_HOST and your network")
        served = served_models(found.get("status"))
    records = alias_records(served)
    table = Table(title="Model aliases", title_justify="left")
    for column in ("alias", "model id", "source", "description") + (("NDIF now",) if served is not None else ()):
        table.add_column(column)
    for r in records:
        table.add_row(r["alias"] + (" (default)" if r["default"] else ""), r["model_id"], r["source"], r["description"],
                      *((r["ndif"] or "",) if served is not None else ()))
    _emit_or_print({"kind": "models", "models": records}, table, json_out)


def datasets(json_out: bool = JsonOpt):
    """Corpora that ship with vneuron (any JSONL/CSV/TSV/XLSX file works too)."""
    from rich.table import Table

    from vneuron.data import list_datasets

    found = list_datasets()
    table = Table(title="Datasets", title_justify="left")
    for column in ("name", "languages", "items", "labels", "description"):
        table.add_column(column)
    for d in found:
        table.add_row(d["name"], ", ".join(d["languages"]), str(d["items"]), ", ".join(d["labels"]), d["description"])
    _emit_or_print({"kind": "datasets", "datasets": found}, table, json_out)


def doctor(remote: bool = typer.Option(False, "--remote", rich_help_panel=REMOTE, help="Also contact the NDIF host."),
           host: Optional[str] = HostOpt, json_out: bool = JsonOpt):
    """Versions, installed models, API key presence; with --remote/--host also NDIF reachability and compatibility."""
    from vneuron.doctor import checks
    from vneuron.results.tables import key_value_table

    rows = checks(remote, host)
    _emit_or_print({"kind": "doctor", "checks": dict(rows)}, key_value_table("vneuron doctor", rows), json_out)


COMMANDS = (models, datasets, doctor)
