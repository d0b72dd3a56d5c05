"""``vneuron doctor``: what this installation can do, as (check, finding) rows.

A Python user gets the same rows (``checks()``); the CLI prints them as a table or JSON.
"""

from __future__ import annotations

from importlib import util

from vneuron.models.registry import ALIASES
from vneuron.runtime.remote import api_key, probe, resolve_target
from vneuron.runtime.store import versions


def checks(remote: bool = False, host: str | None = None) -> list[tuple[str, str]]:
    """Versions, packaged models, the API key's presence; with ``remote``/``host`` also NDIF's
    reachability and whether its nnsight matches this one."""
    rows = list(versions().items())
    for name, alias in ALIASES.items():
        if alias.package and name != "default":
            ok = util.find_spec(alias.module) is not None
            rows.append((f"model {name}", "installed" if ok else f"missing — {alias.install}"))
    rows.append(("NDIF API key", "set (NDIF_API_KEY or nnsight config)" if api_key() else "not set — export NDIF_API_KEY=..."))
    target = resolve_target(host or True)
    rows.append(("NDIF host", target.host))
    if not (remote or host):
        rows.append(("reachable", "not checked (pass --remote)"))
        return rows
    found = probe(target.host)
    rows.append(("reachable", "yes" if found.get("reachable") else f"no ({found.get('error', 'no answer')})"))
    status = found.get("status")
    server_version = status.get("nnsight_version") or status.get("version") if isinstance(status, dict) else None
    if server_version:
        same = str(server_version).split(".")[:2] == versions()["nnsight"].split(".")[:2]
        rows.append(("server nnsight", f"{server_version} ({'compatible' if same else 'differs from the client: install it'})"))
    return rows
