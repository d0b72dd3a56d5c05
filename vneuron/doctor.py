"""``vneuron doctor``: what this installation can do, as (check, finding) rows.

A Python user gets the same rows (``checks()``); the CLI prints them as a table or JSON.
"""

from __future__ import annotations

from importlib import util

from vneuron.models.registry import ALIASES
from vneuron.runtime import devices, precision
from vneuron.runtime.remote import api_key, probe, resolve_target
from vneuron.runtime.store import versions


def checks(remote: bool = False, host: str | None = None) -> list[tuple[str, str]]:
    """Versions, the accelerators torch sees (and where `--device auto` computes), packaged models, the API key's
    presence; with ``remote``/``host`` also NDIF's reachability and whether its nnsight matches this one."""
    rows = list(versions().items())
    rows += accelerators()
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


def accelerators() -> list[tuple[str, str]]:
    """What torch is built for and sees: each GPU with its memory, and where ``--device auto`` computes."""
    import torch

    rows = [("torch build", f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU only (no CUDA)")]
    for found in devices.describe():
        if "memory_gb" in found:
            rows.append((found["device"], f"{found['name']}, {found['memory_gb']} GB ({found['free_gb']} GB free), "
                                          f"compute capability {found['capability']}, bfloat16 {'yes' if found['bf16'] else 'no'}"))
        else:
            rows.append((found["device"], found["name"]))
    units = precision.cpu_bf16_units()
    rows.append(("CPU bfloat16 units", f"yes ({', '.join(units)}): --dtype bf16-mixed computes the blocks' products in them"
                 if units else "none seen: bf16-mixed would round without speeding up; keep float32"))
    rows.append(("--device auto", devices.resolve("auto")))
    return rows
