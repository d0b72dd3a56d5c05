"""The remote path at real size, measured against its prediction, through a real NDIF stack on loopback.

For each shape (``scripts/ndif/shape_model.py``: Llama-3.1-8B's 32 × 14,336 or -70B's 80 × 28,672 MLP
neurons, hidden 64, random weights, vneuron's tokenizer) it starts ``scripts/ndif/server.sh`` serving
that model alone on 127.0.0.1 and, against it:

  locate   the built-in corpus over the wire (default options; ``--limit`` cuts it), every request
           measured on the client (tensor and wire bytes each way; serialise, post, wait, download,
           decode and reduce seconds) and on the server (the loopback actor's request log: deserialise,
           block, torch.save, zstd, object store, CPU seconds, peak memory beyond the weights)
  ablate   one pole, the located set and ``--controls`` matched controls (every one drawn)
  steer    the same pole at γ 0 and 2, the same controls
  faults   (``--faults``) a cut locate run uninterrupted; the same detached then resumed, killed
           (SIGKILL) after its first request then resumed, and with the server stopped and restarted
           after its first request then resumed — through the CLI, statistics compared bit for bit

and prints, from that one run, measured / predicted for requests, bytes each way and time per
request, against ``--dry-run`` (``dryrun.locate_plan`` / ``validation_plan``; time: its one-batch
calibration on this machine) and against the scale formula the docs used to print.

    python benchmarks/remote_scale.py --shapes 8b,70b --faults --json runs/remote-scale.json

Memory: one stack at a time (the 70B shape: 1.9 GB of weights in the server, ~5 GB at its peak).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SERVER = REPO / "scripts" / "ndif" / "server.sh"
sys.path.insert(0, str(REPO / "scripts" / "ndif"))
MB = 1 << 20


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def load() -> str:
    return open("/proc/loadavg").read().split(" ")[0]


# -- the loopback server ---------------------------------------------------------------------------
class Stack:
    def __init__(self, model_dir: Path, state: Path):
        self.model_dir, self.state, self.port = model_dir, state, "auto"
        self.url = ""
        self.earlier: dict[str, dict] = {}  # the request log of stacks stopped before (stop deletes the state)

    def _sh(self, *args: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "NDIF_STATE_DIR": str(self.state), "NDIF_CLIENT_PYTHON": sys.executable,
               "NDIF_START_TIMEOUT": "900"}  # a shared, loaded machine took up to 150 s to connect the API
        return subprocess.run(["bash", str(SERVER), *args], env=env, capture_output=True, text=True, timeout=1200)

    def start(self) -> float:
        started = time.time()
        for attempt in range(2):
            done = self._sh("start", str(self.model_dir), str(self.port))
            if done.returncode == 0:
                break
            log(f"server.sh start failed (attempt {attempt + 1}): {done.stderr.strip().splitlines()[-1:]}")
            self._sh("stop")
        else:
            raise SystemExit(f"server.sh start failed:\n{done.stderr[-3000:]}")
        self.url = done.stdout.strip().splitlines()[-1]
        self.port = self.url.rsplit(":", 1)[1]  # a restart keeps the URL
        return time.time() - started

    def stop(self) -> None:
        self.earlier = self.requests()
        self._sh("stop")

    def requests(self) -> dict[str, dict]:
        """The server's request log (scripts/ndif/cpu_deployment.py), by job id; kept across restarts."""
        path = self.state / "logs" / "requests.jsonl"
        now = {r["id"]: r for r in map(json.loads, path.read_text().splitlines())} if path.is_file() else {}
        return {**self.earlier, **now}


@contextmanager
def serving(model_dir: Path, state: Path):
    stack = Stack(model_dir, state)
    seconds = stack.start()
    log(f"server up at {stack.url} in {seconds:.0f} s")
    try:
        yield stack
    finally:
        stack.stop()


# -- what one measured phase sent, received and spent ----------------------------------------------
def mean(values) -> float:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else float("nan")


def server_side(records: list[dict]) -> dict:
    keys = ("deserialize_s", "block_s", "save_s", "compress_s", "store_s", "cpu_s", "seconds")
    out = {f"{k}_mean": mean(r.get(k) for r in records) for k in keys}
    out["peak_over_weights_mb_max"] = max(((r["peak_rss_bytes"] - r["rss_before_bytes"]) / MB for r in records), default=0)
    out["cpu_s_total"] = sum(r.get("cpu_s", 0) for r in records)
    return out


def client_wire(jobs: list[str]) -> dict:
    from vneuron.runtime.remote import WIRE

    entries = [WIRE.get(j, {}) for j in jobs]
    out = {f"{k}_mean": mean(e.get(k) for e in entries) for k in ("serialize_s", "post_s", "download_s", "decode_s")}
    out["up_wire_bytes"] = sum(e.get("up_bytes", 0) for e in entries)
    out["down_wire_bytes"] = sum(e.get("down_bytes", 0) for e in entries)
    return out


def cpu_now() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def locate_phase(model_dir: Path, stack: Stack, config, out: Path, calibrate: bool) -> dict:
    from vneuron.locate.plan import locate_plan
    from vneuron.locate.locating import locate
    from vneuron.models.loading import load_model
    from vneuron.runtime.remote import resolve_target

    plan = locate_plan(str(model_dir), config, remote=stack.url)
    local_s = None
    if calibrate:  # the dry-run's one-batch calibration, on local weights (the server runs on this machine)
        local_s = locate_plan(str(model_dir), config).get("estimate_s", [None])[0]
    log(f"locate: {plan['prompts']} prompts, {plan['least']['requests']} requests predicted; running")
    model = load_model(str(model_dir), remote=resolve_target(stack.url, timeout=7200))
    wall, cpu = time.time(), cpu_now()
    result = locate(model, config, out=out)
    wall, cpu = time.time() - wall, cpu_now() - cpu
    remote = result.manifest["remote"]
    jobs = [r["job"] for r in remote["log"]]
    served = stack.requests()
    records = [served[j] for j in jobs if j in served]
    measured = {"requests": remote["requests"], "bytes_up": remote["sent_tensor_bytes"],
                "bytes_down": remote["received_tensor_bytes"], "prompts": plan["prompts"],
                "seconds_per_request": mean(r["seconds"] for r in remote["log"]),
                "reduce_s_mean": mean(r["reduce_s"] for r in remote["log"]),
                "largest_result_mb": max(r["received_tensor_bytes"] for r in remote["log"]) / MB,
                "wall_s": wall, "client_cpu_s": cpu, **client_wire(jobs), **server_side(records)}
    return {"plan": plan, "local_estimate_s": local_s, "measured": measured, "run_dir": str(result.run_dir)}


def validation_phase(kind: str, run_dir: Path, stack: Stack, config, gammas, out: Path) -> dict:
    from vneuron.validate.plan import validation_plan
    from vneuron.runtime.remote import WIRE, resolve_target
    from vneuron.validate.study import ablate, steer

    target = resolve_target(stack.url, timeout=7200)
    plan = validation_plan(run_dir, config, kind, gammas, remote=target)
    before = set(WIRE)
    wall, cpu = time.time(), cpu_now()
    if kind == "ablate":
        result = ablate(run_dir, config, out=out, remote=target)
    else:
        result = steer(run_dir, gammas, config, out=out, remote=target)
    wall, cpu = time.time() - wall, cpu_now() - cpu
    jobs = [j for j in WIRE if j not in before]
    served = stack.requests()
    work = result.manifest["work"]
    measured = {"requests": work["requests"], "bytes_up": work["bytes_up"], "bytes_down": work["bytes_down"],
                "forwards": work["forwards"], "wall_s": wall, "client_cpu_s": cpu, "jobs": len(jobs),
                "seconds_per_request": wall / max(work["requests"], 1),
                **client_wire(jobs), **server_side([served[j] for j in jobs if j in served])}
    return {"plan": {**{k: plan["least"][k] for k in ("requests", "bytes_up", "bytes_down", "forwards")},
                     "server_mb_per_batch": plan["server_mb_per_batch"]},
            "plan_most": {k: plan["most"][k] for k in ("requests", "bytes_up", "bytes_down")},
            "measured": measured, "summary": result.summaries[0] if result.summaries else None}


# -- faults: through the CLI, as a user would meet them -----------------------------------------------
def cli(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([str(Path(sys.executable).with_name("vneuron")), *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def partial_state(out: Path) -> dict:
    state = out.with_name(f".{out.name}.partial") / "state.json"
    try:
        return json.loads(state.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def wait_until(proc: subprocess.Popen, out: Path, ready, what: str, limit: float = 7200) -> None:
    deadline = time.time() + limit
    while time.time() < deadline:
        if ready(partial_state(out)):
            return
        if proc.poll() is not None:
            raise SystemExit(f"{what}: the run ended before the fault ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        time.sleep(0.5)
    raise SystemExit(f"{what}: timed out")


def finish(args: list[str], what: str) -> float:
    started = time.time()
    proc = cli(args)
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed ({proc.returncode}): {err[-2000:]}")
    return time.time() - started


def same(a: Path, b: Path) -> bool:
    from vneuron.locate.capture import ActivationStats

    x, y = ActivationStats.load(a / "stats.safetensors"), ActivationStats.load(b / "stats.safetensors")
    return all(torch.equal(getattr(x, k), getattr(y, k)) for k in ("n", "sum", "sumsq", "active"))


def faults_phase(model_dir: Path, stack: Stack, limit: int, request_batches: int, root: Path) -> dict:
    common = ["locate", "--model", str(model_dir), "--host", stack.url, "--limit", str(limit), "--request-batches",
              str(request_batches), "--threads", "1", "-q"]
    out: dict = {"limit": limit, "request_batches": request_batches}
    reference = root / "uninterrupted"
    out["uninterrupted_s"] = finish([*common, "--out", str(reference)], "the uninterrupted run")
    requests = json.loads((reference / "manifest.json").read_text())["remote"]["requests"]
    out["requests"] = requests
    log(f"faults: reference run of {requests} requests in {out['uninterrupted_s']:.0f} s")

    detached = root / "detached"
    out["detach_s"] = finish([*common, "--out", str(detached), "--detach"], "--detach")
    out["resume_after_detach_s"] = finish([*common, "--out", str(detached), "--resume"], "--resume after --detach")
    out["detach_resume_identical"] = same(detached, reference)
    log(f"faults: detach/resume identical: {out['detach_resume_identical']}")

    killed = root / "killed"
    proc = cli([*common, "--out", str(killed)])
    wait_until(proc, killed, lambda s: s.get("done", 0) >= 1 and s.get("jobs"), "client kill")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    out["killed_after_requests"] = partial_state(killed).get("done")
    out["resume_after_kill_s"] = finish([*common, "--out", str(killed), "--resume"], "--resume after the kill")
    out["kill_resume_identical"] = same(killed, reference)
    log(f"faults: client kill identical: {out['kill_resume_identical']}")

    restarted = root / "restarted"
    proc = cli([*common, "--out", str(restarted)])
    wait_until(proc, restarted, lambda s: s.get("done", 0) >= 1 and s.get("jobs"), "server restart")
    pending = dict(partial_state(restarted).get("jobs", {}))
    stopped = time.time()
    stack.stop()
    _, err = proc.communicate()
    out["client_during_restart"] = (err.strip().splitlines() or [""])[-1][:200]
    out["restart_s"] = stack.start() + (time.time() - stopped)
    out["pending_at_restart"] = pending
    out["resume_after_restart_s"] = finish([*common, "--out", str(restarted), "--resume"], "--resume after the restart")
    out["restart_resume_identical"] = same(restarted, reference)
    manifest = json.loads((restarted / "manifest.json").read_text())["remote"]
    out["restart_submitted"], out["restart_requests"] = manifest["totals"]["submitted"], manifest["totals"]["requests"]
    log(f"faults: server restart identical: {out['restart_resume_identical']}")
    return out


# -- predictions the docs printed before these measurements ------------------------------------------
def formula(layers: int, width: int, slots: int = 8, prompts_per_request: int = 256) -> dict:
    """docs/remote.md's old table: layers × 3 × slots × width float32 per request, ≈ 32 prompts per batch ×
    8 batches per request (4 requests per 1,000 prompts)."""
    per_request = layers * 3 * slots * width * 4
    return {"bytes_down_per_request": per_request, "requests_per_1000": 1000 / prompts_per_request,
            "bytes_down_per_1000": per_request * 1000 / prompts_per_request}


def ratio(a, b) -> str:
    return f"{a / b:.2f}" if b else "—"


def report(results: dict) -> str:
    lines = [f"{'shape':5} {'quantity':44} {'predicted':>14} {'measured':>14} {'meas/pred':>9}"]

    def row(shape, what, predicted, measured, fmt="{:,.0f}"):
        p = fmt.format(predicted) if predicted is not None else "—"
        lines.append(f"{shape:5} {what:44} {p:>14} {fmt.format(measured):>14} {ratio(measured, predicted or 0):>9}")

    for shape, r in results.items():
        loc, plan = r["locate"]["measured"], r["locate"]["plan"]["least"]
        old = r["formula"]
        per_1000 = 1000 / loc["prompts"]
        row(shape, "locate requests", plan["requests"], loc["requests"])
        row(shape, "locate requests per 1,000 prompts (formula)", old["requests_per_1000"], loc["requests"] * per_1000, "{:,.2f}")
        row(shape, "locate MB down, tensors", plan["bytes_down"] / MB, loc["bytes_down"] / MB, "{:,.1f}")
        row(shape, "locate MB down, wire (zstd) vs tensors predicted", plan["bytes_down"] / MB, loc["down_wire_bytes"] / MB, "{:,.1f}")
        row(shape, "locate MB down per 1,000 prompts (formula)", old["bytes_down_per_1000"] / MB, loc["bytes_down"] * per_1000 / MB,
            "{:,.1f}")
        row(shape, "locate MB down per request, largest (formula)", old["bytes_down_per_request"] / MB, loc["largest_result_mb"],
            "{:,.1f}")
        row(shape, "locate MB up, tensors", plan["bytes_up"] / MB, loc["bytes_up"] / MB, "{:,.2f}")
        row(shape, "locate MB up, wire (zstd) vs tensors predicted", plan["bytes_up"] / MB, loc["up_wire_bytes"] / MB, "{:,.2f}")
        row(shape, "server MB per batch beyond the weights (peak)", r["locate"]["plan"]["server_mb_per_batch"],
            loc["peak_over_weights_mb_max"], "{:,.0f}")
        local = r["locate"]["local_estimate_s"]
        row(shape, "locate s per request (dry-run calibration)", local / loc["requests"] if local else None,
            loc["seconds_per_request"], "{:,.1f}")
        lines.append(f"{shape:5} {'  where a request went, s (mean)':44} server: deserialise {loc['deserialize_s_mean']:.2f}, "
                     f"block {loc['block_s_mean']:.1f}, torch.save {loc['save_s_mean']:.2f}, zstd {loc['compress_s_mean']:.2f}, "
                     f"object store {loc['store_s_mean']:.2f}; client: serialise {loc['serialize_s_mean']:.2f}, "
                     f"post {loc['post_s_mean']:.2f}, download {loc['download_s_mean']:.2f}, decode {loc['decode_s_mean']:.2f}, "
                     f"reduce {loc['reduce_s_mean']:.3f}")
        for kind in ("ablate", "steer"):
            if kind not in r:
                continue
            v, p = r[kind]["measured"], r[kind]["plan"]
            row(shape, f"{kind} requests", p["requests"], v["requests"])
            row(shape, f"{kind} MB down, tensors", p["bytes_down"] / MB, v["bytes_down"] / MB, "{:,.3f}")
            row(shape, f"{kind} MB up, tensors", p["bytes_up"] / MB, v["bytes_up"] / MB, "{:,.3f}")
            row(shape, f"{kind} MB up, wire (zstd) vs tensors predicted", p["bytes_up"] / MB, v["up_wire_bytes"] / MB, "{:,.3f}")
            row(shape, f"{kind} server MB per batch beyond the weights (peak)", p["server_mb_per_batch"],
                v["peak_over_weights_mb_max"], "{:,.0f}")
            lines.append(f"{shape:5} {'  ' + kind + ' s per request (mean)':44} {v['seconds_per_request']:.1f} "
                         f"(server block {v['block_s_mean']:.1f})")
        if "faults" in r:
            f = r["faults"]
            lines.append(f"{shape:5} faults (--limit {f['limit']}, {f['requests']} requests): detach/resume identical "
                         f"{f['detach_resume_identical']}, client kill identical {f['kill_resume_identical']}, server restart "
                         f"identical {f['restart_resume_identical']} ({f['restart_submitted']} submissions for "
                         f"{f['restart_requests']} requests)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="8b,70b")
    parser.add_argument("--limit", type=int, default=None, help="items per dimension for locate (default: the whole corpus)")
    parser.add_argument("--pole", default="conservation")
    parser.add_argument("--eval-limit", type=int, default=2, help="ablate/steer: items per side of the pole")
    parser.add_argument("--controls", type=int, default=3)
    parser.add_argument("--faults", action="store_true")
    parser.add_argument("--fault-limit", type=int, default=8)
    parser.add_argument("--fault-request-batches", type=int, default=2)
    parser.add_argument("--no-calibration", action="store_true", help="skip the local one-batch calibration (time prediction)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/vneuron-remote-scale"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from shape_model import SHAPES, build

    from vneuron.config import ValidateConfig
    from vneuron.locate.locating import LocateConfig
    from vneuron.runtime.store import cache_dir

    from vneuron.runtime.quiet import set_quiet

    set_quiet()  # nnsight's job status lines and download bars off: the log keeps this script's lines
    torch.set_num_threads(1)
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    results: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "load_start": load(), "commit": commit,
                     "argv": sys.argv[1:], "cpus": os.cpu_count()}
    shapes: dict = {}
    for shape in args.shapes.split(","):
        layers, width, _ = SHAPES[shape]
        model_dir = build(shape, cache_dir() / "shapes" / f"llama-{shape}-shape")
        work = args.work / shape
        subprocess.run(["rm", "-rf", str(work)], check=True)
        work.mkdir(parents=True)
        log(f"{shape}: {layers} × {width:,} at {model_dir}")
        with serving(model_dir, work / "ndif-state") as stack:
            config = LocateConfig(limit=args.limit)
            r: dict = {"layers": layers, "width": width, "formula": formula(layers, width)}
            shapes[shape] = r
            save = (lambda: args.json and args.json.write_text(json.dumps({**results, "shapes": shapes}, indent=1, default=str))) \
                if args.json else (lambda: None)
            if args.json:
                args.json.parent.mkdir(parents=True, exist_ok=True)
            r["locate"] = locate_phase(model_dir, stack, config, work / "locate", not args.no_calibration)
            save()
            run_dir = Path(r["locate"]["run_dir"])
            common = dict(controls=args.controls, stop_after=0, max_controls=0, split="test", dimensions=[args.pole],
                          limit=args.eval_limit, side_effects=False, cross_values=False)
            log(f"{shape}: ablate")
            r["ablate"] = validation_phase("ablate", run_dir, stack, ValidateConfig(**common), None, work / "ablate")
            log(f"{shape}: steer")
            r["steer"] = validation_phase("steer", run_dir, stack, ValidateConfig(mode="scale", **common), [0.0, 2.0],
                                          work / "steer")
            save()
            if args.faults:
                r["faults"] = faults_phase(model_dir, stack, args.fault_limit, args.fault_request_batches, work / "faults")
            r["server_requests"] = list(stack.requests().values())
            save()
        log(f"{shape}: done (load {load()})")
    results.update(shapes=shapes, finished=time.strftime("%Y-%m-%d %H:%M:%S"), load_end=load())
    text = report(shapes)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**results, "table": text}, indent=1, default=str))


if __name__ == "__main__":
    main()
