"""The prepared device check: the ``gpu``-marked tests and the timings of a study on one GPU, beside the CPU.

A GPU machine lent for minutes has no network and none of vneuron's own dependencies, so everything it
lacks travels with the working tree (``.gpu/``, ignored by git): the wheels of nnsight, gguf and the
transformers vneuron is tested with, and the tokenizer of the embedded Gemma-3-270M (its weights, 250 MB
as GGUF, cannot travel within a call's 64 MiB). What it times:

- **the embedded model's shape**: Gemma-3-270M (18 layers, hidden 640, MLP 2,048, vocab 262,144, its own
  tokenizer) with seeded random weights where the packaged weights are not installed (the work per token,
  the token counts of the built-in corpus and the number of controls a null result draws are those of
  the real model; the numbers of the study are not): the default ``vneuron locate`` and the headline
  ``vneuron ablate RUN --top-k 200`` at README defaults (side effects and the cross-value matrix on);
- **a shape-real 8B**: Llama-3.1-8B's sizes (32 layers, hidden 4,096, MLP 14,336, 32 heads, 8 KV heads) with
  seeded random weights in bfloat16 and the Gemma tokenizer (so its vocabulary is 262,144, not 128,256: the
  LM head is 2.0 × Llama's): the default locate of the built-in corpus and a small ablation;
- **side by side on the CPU**: the same cut-down locate and ablation on both devices (labelled cut-down),
  and tokens per second of one forward batch;
- per run: wall seconds, tokens per second, the share of the card's bf16 peak the forward passes reach
  (2 × parameters × tokens per second, over both the spec-sheet peak and a measured 8192³ bf16 product),
  and peak device memory.

    python benchmarks/gpu.py prepare                                  # here, with network: fills .gpu/
    python benchmarks/gpu.py run --device cpu --quick --out /tmp/gpu  # here: the same code on small shapes
    python3 benchmarks/gpu.py run --out $OUT                          # on the GPU machine (docs/developing.md)

It writes ``gpu-check.json`` and ``gpu-check.md`` into ``--out``; every number names the card, the date
and the torch version.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / ".gpu"
# what the GPU image lacks (or holds in another version), at the versions vneuron is tested with here
WHEELS = {"nnsight": "0.8.1", "transformers": "5.25.0", "huggingface-hub": "2.4.0", "kernels": "0.19.1", "tomlkit": None,
          "gguf": "0.19.0", "greenlet": "3.5.6", "pydantic": "2.14.4", "pydantic-core": "2.50.5", "annotated-types": "0.8.0",
          "typing-inspection": "0.4.5", "websocket-client": "1.9.2", "zstandard": "0.25.0", "openpyxl": "3.1.5", "et-xmlfile": "2.0.0"}
SPEC_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.0, "RTX 4090": 165.2}  # dense, no sparsity
GEMMA_270M = dict(model_type="gemma3_text", num_hidden_layers=18, hidden_size=640, intermediate_size=2048, num_attention_heads=4,
                  num_key_value_heads=1, head_dim=256, vocab_size=262_144, sliding_window=512, max_position_embeddings=32768,
                  hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=256, rms_norm_eps=1e-6, tie_word_embeddings=True,
                  final_logit_softcapping=None)
LLAMA_8B = dict(model_type="llama", num_hidden_layers=32, hidden_size=4096, intermediate_size=14_336, num_attention_heads=32,
                num_key_value_heads=8, max_position_embeddings=8192, rope_theta=500_000.0, tie_word_embeddings=False)
QUICK = {"gemma": dict(num_hidden_layers=2, hidden_size=64, intermediate_size=256, head_dim=16),
         "llama": dict(num_hidden_layers=2, hidden_size=128, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2)}


# -- here: what the GPU machine lacks -------------------------------------------------------------------------------
def prepare() -> None:
    """Download the wheels and copy the tokenizer into .gpu/ (git ignores it; the device tool carries it)."""
    wheels = ASSETS / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    platforms = [f"--platform={p}" for p in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "any")]
    for name, version in WHEELS.items():
        spec = f"{name}=={version}" if version else name
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
                        "--implementation", "cp", *platforms, "-d", str(wheels), spec], check=True)
    tokenizer = ASSETS / "tokenizer"
    tokenizer.mkdir(exist_ok=True)
    source = _packaged_tokenizer()
    shutil.copyfile(source / "tokenizer_config.json", tokenizer / "tokenizer_config.json")
    with open(source / "tokenizer.json", "rb") as raw, gzip.open(tokenizer / "tokenizer.json.gz", "wb") as packed:
        shutil.copyfileobj(raw, packed)  # 33 MB of JSON travels as ~6 MB
    exclude = ROOT / ".git" / "info" / "exclude"
    if exclude.is_file() and "/.gpu/" not in exclude.read_text():
        with open(exclude, "a") as fh:
            fh.write("/.gpu/\n")
    size = sum(p.stat().st_size for p in ASSETS.rglob("*") if p.is_file())
    print(f"{ASSETS}: {size / 2**20:.1f} MiB (the device tool carries at most 64 MiB with the working tree)")


def _packaged_tokenizer() -> Path:
    from vneuron.models.conversion import convert_gguf, packaged_gguf
    from vneuron.models.registry import ALIASES, DEFAULT_ALIAS

    directory, _ = convert_gguf(packaged_gguf(ALIASES[DEFAULT_ALIAS]))
    return directory


def _install_carried() -> None:
    """On the GPU machine: install the carried wheels into /tmp/site (no network there) and use them."""
    try:
        import nnsight  # noqa: F401
        return
    except ImportError:
        pass
    site = Path("/tmp/site")
    wheels = sorted((ASSETS / "wheels").glob("*.whl"))
    if not wheels:
        sys.exit("nnsight is not installed and .gpu/wheels is empty: run `python benchmarks/gpu.py prepare` where pip works")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--target", str(site),
                    *map(str, wheels)], check=True)
    sys.path.insert(0, str(site))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(site), str(ROOT), os.environ.get("PYTHONPATH", "")])


# -- there: the models ----------------------------------------------------------------------------------------------
def _tokenizer():
    from transformers import AutoTokenizer

    carried = ASSETS / "tokenizer"
    if (carried / "tokenizer.json.gz").is_file():
        unpacked = Path(tempfile.mkdtemp(prefix="vneuron-tokenizer-"))
        shutil.copyfile(carried / "tokenizer_config.json", unpacked / "tokenizer_config.json")
        with gzip.open(carried / "tokenizer.json.gz", "rb") as packed, open(unpacked / "tokenizer.json", "wb") as raw:
            shutil.copyfileobj(packed, raw)
        return AutoTokenizer.from_pretrained(str(unpacked))
    return AutoTokenizer.from_pretrained(str(_packaged_tokenizer()))


def shape_model(kind: str, out: Path, device: str, quick: bool) -> Path:
    """A model directory with the real sizes of ``kind`` (gemma: the embedded model; llama: Llama-3.1-8B), seeded random
    weights drawn on ``device`` (an 8B model is built on the GPU in seconds), bfloat16 for the 8B, float32 otherwise."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    tok = _tokenizer()
    sizes = dict(GEMMA_270M if kind == "gemma" else LLAMA_8B)
    if quick:
        sizes.update(QUICK[kind])
    sizes.update(vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model_type = sizes.pop("model_type")
    config = AutoConfig.for_model(model_type, **sizes)
    dtype = torch.bfloat16 if kind == "llama" and device != "cpu" else torch.float32
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.fill_(1.0 if kind == "llama" else 0.0)  # Gemma's norms scale by (1 + w)
            else:  # N(0, 1/fan_in): every layer's activations stay at unit scale
                p.normal_(0.0, (1.0 if "embed" in name else p.shape[1]) ** -0.5, generator=gen)
    model.save_pretrained(out, max_shard_size="20GB")
    tok.save_pretrained(out)
    del model
    return out


# -- there: timings -------------------------------------------------------------------------------------------------
def card(device: str) -> dict:
    import torch

    if not device.startswith("cuda"):
        return {"device": device, "name": platform.processor() or platform.machine(), "cpus": os.cpu_count()}
    props = torch.cuda.get_device_properties(0)
    spec = next((v for k, v in SPEC_BF16_TFLOPS.items() if k in props.name), None)
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ a
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        a @ a
    torch.cuda.synchronize()
    measured = 10 * 2 * 8192**3 / (time.perf_counter() - start) / 1e12
    return {"device": device, "name": props.name, "memory_gb": round(props.total_memory / 2**30, 1), "torch": torch.__version__,
            "cuda": torch.version.cuda, "bf16_tflops_spec": spec, "bf16_tflops_measured": round(measured, 1)}


def timed(device: str, fn):
    """(result, wall seconds, peak device memory in GB) of ``fn()``."""
    import torch

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = fn()
    if cuda:
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    return result, time.perf_counter() - start, (round(peak, 2) if peak is not None else None)


def study(model_dir: Path, device: str, work: Path, *, cut_down: bool, ablate_all: bool, dtype: str) -> dict:
    """locate (default settings) and ablate (README defaults, or a small one) of one model on one device."""
    import torch

    from vneuron import LocateConfig, ValidateConfig, ablate, load_model, locate

    loaded, load_s, _ = timed(device, lambda: load_model(str(model_dir), dtype=dtype, device=device))
    params = sum(p.numel() for p in loaded.hf_model.parameters())
    config = LocateConfig(limit=16) if cut_down else LocateConfig()
    run = work / f"locate-{device.replace(':', '')}-{model_dir.name}"
    result, locate_s, locate_peak = timed(device, lambda: locate(loaded, config, out=run))
    tokens = sum(result.manifest["capture"]["tokens"].values())  # counted tokens (the forward passes run every prompt token)
    out = {"model": model_dir.name, "device": device, "dtype": loaded.extra["dtype"], "parameters": params, "load_s": round(load_s, 2),
           "locate": {"settings": "--limit 16 (cut-down)" if cut_down else "defaults", "wall_s": round(locate_s, 2),
                      "counted_tokens": int(tokens), "tokens_per_s": round(tokens / locate_s, 1),
                      "peak_device_gb": locate_peak, "batch_tokens": result.manifest["capture"].get("batch_tokens_used")}}
    if ablate_all:
        vconfig = ValidateConfig(top_k=200) if not cut_down else ValidateConfig(top_k=200, limit=4, controls=3, side_controls=3,
                                                                               dimensions=["self_transcendence"])
    else:
        vconfig = ValidateConfig(top_k=200, limit=8, controls=3, side_controls=3, dimensions=["self_transcendence"])
    validated, ablate_s, ablate_peak = timed(device, lambda: ablate(run, vconfig, model=loaded, out=work / f"ablate-{run.name}"))
    work_done = validated.manifest.get("work", {})
    out["ablate"] = {"settings": "README defaults (side effects, cross-value matrix)" if ablate_all and not cut_down else
                     f"top-k 200, limit {vconfig.limit}, controls {vconfig.controls}, {','.join(vconfig.dimensions or ['all'])}",
                     "wall_s": round(ablate_s, 2), "forwards": work_done.get("forwards"), "tokens": work_done.get("tokens"),
                     "tokens_per_s": round((work_done.get("tokens") or 0) / ablate_s, 1), "peak_device_gb": ablate_peak,
                     "verdicts": [s.get("verdict", {}).get("verdict") for s in validated.summaries]}
    if device.startswith("cuda"):
        torch.cuda.empty_cache()  # the model goes with this frame; the next study starts from a clean allocator
    return out


def forward_rate(model_dir: Path, device: str, dtype: str, tokens: int = 512, repeats: int = 3) -> dict:
    """Tokens per second of one forward batch (a CPU can be compared on this where a whole study would take hours)."""
    import torch

    from vneuron import load_model

    loaded = load_model(str(model_dir), dtype=dtype, device=device)
    ids = torch.randint(5, 1000, (4, tokens // 4), device=loaded.device)  # 4 rows
    with torch.inference_mode():
        loaded.hf_model(input_ids=ids, logits_to_keep=1)
        best = min(timed(device, lambda: loaded.hf_model(input_ids=ids, logits_to_keep=1))[1] for _ in range(repeats))
    params = sum(p.numel() for p in loaded.hf_model.parameters())
    return {"device": device, "dtype": dtype, "tokens": tokens, "tokens_per_s": round(tokens / best, 1),
            "tflops": round(2 * params * tokens / best / 1e12, 2)}


def run(args) -> None:
    import torch

    _install_carried()
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    report: dict = {"date": date.today().isoformat(), "card": card(device), "quick": args.quick}
    started = time.time()
    marker = "gpu" if device != "cpu" else "not remote"
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", marker, "tests/test_devices.py"],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    report["tests"] = {"returncode": tests.returncode, "summary": (tests.stdout.strip().splitlines() or [""])[-1]}
    print("tests:", report["tests"]["summary"], flush=True)
    gemma = shape_model("gemma", work / "gemma-3-270m-shape", device, args.quick)
    llama = shape_model("llama", work / "llama-3.1-8b-shape", device, args.quick)
    half = "bfloat16" if device != "cpu" else "float32"
    report["embedded_shape"] = study(gemma, device, work, cut_down=args.quick, ablate_all=True,
                                     dtype="auto" if device != "cpu" else "float32")
    print("embedded model's shape:", json.dumps(report["embedded_shape"]), flush=True)
    report["shape_8b"] = study(llama, device, work, cut_down=args.quick, ablate_all=False, dtype=half)
    print("8B shape:", json.dumps(report["shape_8b"]), flush=True)
    peak = report["card"].get("bf16_tflops_spec"), report["card"].get("bf16_tflops_measured")
    both = list(dict.fromkeys(["cpu", device]))
    for d in both:
        (work / d).mkdir(exist_ok=True)
    report["side_by_side"] = {
        "cut_down_study": [study(gemma, d, work / d, cut_down=True, ablate_all=True, dtype="float32") for d in both],
        "forward_8b_shape": [forward_rate(llama, d, half if d != "cpu" else "float32", tokens=256 if d == "cpu" else 2048) for d in both]}
    for rate in report["side_by_side"]["forward_8b_shape"]:
        if rate["device"] != "cpu" and peak[0]:
            rate["share_of_spec_peak"] = round(rate["tflops"] / peak[0], 3)
        if rate["device"] != "cpu" and peak[1]:
            rate["share_of_measured_peak"] = round(rate["tflops"] / peak[1], 3)
    report["total_s"] = round(time.time() - started, 1)
    (out / "gpu-check.json").write_text(json.dumps(report, indent=1))
    (out / "gpu-check.md").write_text(markdown(report))
    shutil.rmtree(work, ignore_errors=True)
    print(markdown(report))


def markdown(report: dict) -> str:
    c = report["card"]
    lines = [f"Device check of {report['date']} on {c.get('name')} ({c.get('device')}, torch {c.get('torch', '')} "
             f"CUDA {c.get('cuda', '')}); "
             f"bf16 peak: spec {c.get('bf16_tflops_spec')} TFLOP/s, measured {c.get('bf16_tflops_measured')} TFLOP/s"
             + (" — quick shapes (a check of the script, not a measurement)" if report.get("quick") else ""),
             f"gpu tests: {report['tests']['summary']}", "",
             "| model | device | step | settings | wall s | tokens/s | peak GB |", "|---|---|---|---|---|---|---|"]
    rows = [report["embedded_shape"], report["shape_8b"], *report["side_by_side"]["cut_down_study"]]
    for r in rows:
        for step in ("locate", "ablate"):
            s = r[step]
            lines.append(f"| {r['model']} ({r['dtype']}) | {r['device']} | {step} | {s['settings']} | {s['wall_s']} | "
                         f"{s['tokens_per_s']} | {s['peak_device_gb']} |")
    lines += ["", "| 8B shape, one forward batch | device | tokens/s | TFLOP/s | share of spec peak | share of measured peak |",
              "|---|---|---|---|---|---|"]
    for r in report["side_by_side"]["forward_8b_shape"]:
        lines.append(f"| {r['tokens']} tokens ({r['dtype']}) | {r['device']} | {r['tokens_per_s']} | {r['tflops']} | "
                     f"{r.get('share_of_spec_peak', '')} | {r.get('share_of_measured_peak', '')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    sub.add_parser("prepare", help="here, with network: download the wheels and copy the tokenizer into .gpu/")
    there = sub.add_parser("run", help="run the check (on the GPU machine; --device cpu --quick here)")
    there.add_argument("--out", required=True)
    there.add_argument("--device", default=None, help="default: cuda when torch sees it, else cpu")
    there.add_argument("--quick", action="store_true", help="small shapes and cut-down runs: checks the script, measures nothing")
    args = parser.parse_args()
    prepare() if args.verb == "prepare" else run(args)


if __name__ == "__main__":
    main()
