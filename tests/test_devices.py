"""Where a model computes: a model split by accelerate's device map gives the numbers of one device, an out-of-memory
error halves the batch instead of losing the run, ``auto`` batches are sized from the device's free memory, and the
pipeline gives the same numbers on every device torch sees (``gpu``-marked: the CUDA half runs only where a GPU is).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vneuron.config import CaptureConfig
from vneuron.data import load_corpus
from vneuron.errors import VneuronError
from vneuron.locate import capture as capture_module
from vneuron.locate.capture import capture
from vneuron.locate.scoring import NeuronSet
from vneuron.models.loading import load_model
from vneuron.runtime import devices
from vneuron.validate import evaluate
from vneuron.validate.edits import Edit
from vneuron.validate.evaluate import forced_choice, generate

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here (the CPU half of the test ran)")
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, CUDA])]


def corpus():
    return load_corpus(EXAMPLES / "corpus.jsonl").select(split="all")


def located(model) -> NeuronSet:
    return NeuronSet.from_flat(torch.tensor([3, 17, model.width + 5, 2 * model.width + 40]), torch.zeros(model.n_layers, model.width),
                               "gate")


def oom() -> torch.OutOfMemoryError:
    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


# -- a model split over devices (CPU plus accelerate's disk offload: what a CI machine can split over) ----------------
def test_a_model_split_by_a_device_map_gives_the_numbers_of_one_device(tiny_dir, tiny_model, tmp_path):
    whole = tiny_model("llama")
    split_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk", "model.layers.2": "disk",
                 "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    split = load_model(str(tiny_dir("llama")), dtype="float64", device_map=split_map, offload_folder=str(tmp_path / "offload"))
    assert split.extra["device_map"] == {"requested": "explicit", "placed": {"cpu": 5, "disk": 2}}
    offloaded = [p.device.type for p in split.hf_model.model.layers[1].parameters()]
    assert split.device == "cpu" and set(offloaded) == {"meta"}  # layers 1 and 2 are read from the disk at each forward
    prompts = corpus().action_prompts()
    a, b = capture(whole, prompts, CaptureConfig(top_examples=2)), capture(split, prompts, CaptureConfig(top_examples=2))
    assert torch.equal(a.sum, b.sum) and torch.equal(a.sumsq, b.sumsq) and torch.equal(a.active, b.active) and torch.equal(a.n, b.n)
    assert torch.equal(a.examples.top_values, b.examples.top_values) and torch.equal(a.examples.top_ids, b.examples.top_ids)
    items = corpus().items[:4]
    edit = Edit(located(whole), "zero")
    assert torch.equal(forced_choice(whole, items, edit).p_order, forced_choice(split, items, edit).p_order)
    assert generate(whole, ["you would help the team"], edit, max_new_tokens=4) == generate(split, ["you would help the team"], edit,
                                                                                            max_new_tokens=4)


# -- out of memory: halve and go on -----------------------------------------------------------------------------------
def test_capture_halves_its_batch_on_out_of_memory_and_counts_every_prompt_once(tiny_model, monkeypatch):
    model = tiny_model("llama")
    prompts = corpus().action_prompts()
    reference = capture(model, prompts, CaptureConfig(batch_tokens=4096))
    real = capture_module._session
    sizes = []

    def tight(model, chunk, *args, **kwargs):  # a device that holds at most 6 rows: the first, larger batches fail
        rows = sum(len(p.batch) for p in chunk)
        sizes.append(rows)
        if rows > 6:
            raise oom()
        return real(model, chunk, *args, **kwargs)

    monkeypatch.setattr(capture_module, "_session", tight)
    shrunk = capture(model, prompts, CaptureConfig(batch_tokens=4096))
    assert max(sizes) > 6 and shrunk.meta["batch_tokens_used"] < 4096
    assert torch.allclose(shrunk.sum, reference.sum, rtol=0, atol=1e-12) and torch.equal(shrunk.n, reference.n)
    assert torch.equal(shrunk.active, reference.active)


def test_scoring_halves_its_batch_on_out_of_memory_and_keeps_the_smaller_size(tiny_model, monkeypatch):
    model = tiny_model("llama")
    items = corpus().items
    reference = forced_choice(model, items, batch_tokens=4096).p_order
    real = evaluate.score_tries
    tried = []

    def tight(model, t, *args, **kwargs):
        tried.append(t.tokens)
        if t.tokens > 300:
            raise oom()
        return real(model, t, *args, **kwargs)

    monkeypatch.setattr(evaluate, "score_tries", tight)
    monkeypatch.setattr(devices, "_fits", {})
    assert torch.allclose(forced_choice(model, items, batch_tokens=4096).p_order, reference, rtol=0, atol=1e-12)
    assert max(tried) > 300 and devices._fits["scoring continuations"] < 4096
    tried.clear()
    forced_choice(model, items, batch_tokens=4096)  # starts at the size that fitted: no failed attempt again
    assert max(tried) <= 300


def test_an_out_of_memory_error_that_survives_the_halving_is_one_line(tiny_model, monkeypatch):
    model = tiny_model("llama")
    monkeypatch.setattr(evaluate, "score_tries", lambda *a, **k: (_ for _ in ()).throw(oom()))
    monkeypatch.setattr(devices, "_fits", {})
    with pytest.raises(VneuronError) as caught:
        forced_choice(model, corpus().items[:2], batch_tokens=64)
    line = caught.value.one_line()
    assert "Out of device memory in scoring continuations even at `batch_tokens` 1" in line and "`device_map` auto" in line
    monkeypatch.setattr(capture_module, "_session", lambda *a, **k: (_ for _ in ()).throw(oom()))
    with pytest.raises(VneuronError, match=r"even at `batch_tokens` 1"):
        capture(model, corpus().action_prompts()[:3], CaptureConfig(batch_tokens=8))
    monkeypatch.setattr(evaluate, "score_tries", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("not a memory error")))
    with pytest.raises(RuntimeError, match="not a memory error"):  # anything else is not retried
        forced_choice(model, corpus().items[:2], batch_tokens=64)


# -- auto batches ---------------------------------------------------------------------------------------------------
def test_auto_batches_keep_the_cpu_optimum_on_the_cpu_and_fill_an_accelerators_free_memory(tiny_model, monkeypatch):
    model = tiny_model("llama")
    assert model.batch_tokens("auto", 1024) == 1024 and model.batch_tokens(512, 1024) == 512 and model.batch_tokens("2048", 1) == 2048
    assert "bytes_per_token" not in model.extra  # nothing is measured on the CPU
    monkeypatch.setattr(devices, "accelerator", lambda device: True)
    monkeypatch.setattr(devices, "free_bytes", lambda device: 10 * 2**30)
    monkeypatch.setattr(devices, "bytes_per_token", lambda hf_model, device, tokens=512: 2**20)
    monkeypatch.setitem(model.extra, "unused", None)
    try:
        assert model.batch_tokens("auto", 1024) == int(10 * 2**30 * devices.MEMORY_SHARE / 2**20)  # 7,168 tokens of 1 MiB in 10 GiB
        assert model.extra["bytes_per_token"] == 2**20  # measured once, recorded in the manifest
    finally:
        model.extra.pop("bytes_per_token", None)
    with pytest.raises(VneuronError, match=r"`batch_tokens` must be a positive number of tokens or auto"):
        devices.batch_setting("many")


def test_a_placement_is_checked_before_any_work():
    for bad, message in (("gpu", "Unknown `device` 'gpu'"), ("cuda:x", "Unknown `device`")):
        with pytest.raises(VneuronError, match=message):
            devices.check_device(bad)
    with pytest.raises(VneuronError, match="Unknown `device_map` 'everywhere'"):
        devices.Placement("auto", "everywhere").check()
    if not torch.cuda.is_available():
        with pytest.raises(VneuronError, match="torch sees no CUDA device"):
            devices.resolve("cuda:1")
    else:
        with pytest.raises(VneuronError, match="CUDA device"):
            devices.resolve(f"cuda:{torch.cuda.device_count()}")
    assert devices.resolve("cpu") == "cpu" and devices.resolve("auto") in ("cpu", "mps", "cuda:0")


def test_doctor_says_which_accelerators_torch_sees():
    from vneuron.doctor import accelerators

    rows = dict(accelerators())
    assert rows["--device auto"] == devices.resolve("auto")
    assert rows["torch build"].startswith("CUDA" if torch.version.cuda else "CPU only")
    assert all(f"cuda:{i}" in rows for i in range(torch.cuda.device_count()))
    flags = next((line for line in open("/proc/cpuinfo") if line.startswith("flags")), "") if Path("/proc/cpuinfo").is_file() else ""
    assert rows["CPU bfloat16 units"].startswith("yes" if " avx512_bf16" in flags or " amx_bf16" in flags else "none")


# -- the same numbers on every device (CPU always, CUDA where present) ------------------------------------------------
@pytest.fixture(scope="module")
def on_device(tiny_dir):
    loaded = {}

    def get(device: str, arch: str = "llama"):
        if (device, arch) not in loaded:
            loaded[device, arch] = load_model(str(tiny_dir(arch)), dtype="float32", device=device)
        return loaded[device, arch]

    return get


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3"])
def test_capture_on_a_device_equals_the_cpu_float64_reference(on_device, tiny_model, device, arch):
    model, reference = on_device(device, arch), tiny_model(arch)
    assert model.device.startswith(device) and model.extra["device"]["device"].startswith(device)
    prompts = corpus().action_prompts()
    for site in ("gate", "down_in"):
        a = capture(model, prompts, CaptureConfig(site=site, top_examples=2, batch_tokens="auto"))
        b = capture(reference, prompts, CaptureConfig(site=site, top_examples=2))
        assert torch.equal(a.n, b.n) and torch.allclose(a.sum, b.sum, rtol=1e-4, atol=1e-4)
        assert torch.allclose(a.sumsq, b.sumsq, rtol=1e-4, atol=1e-3)
        # float32 rounding may flip the sign of an activation within 1e-6 of 0: a handful of counts of ~10^4
        assert (a.active - b.active).abs().sum() <= 1e-3 * b.active.sum()


@pytest.mark.parametrize("device", DEVICES)
def test_edits_scoring_generation_and_side_effects_on_a_device(on_device, tiny_model, device):
    from vneuron.validate import side_effects

    model, reference = on_device(device), tiny_model("llama")
    items = corpus().items
    for mode in ("zero", "scale", "mean"):
        values = torch.full((model.n_layers, model.width), 0.25, dtype=torch.float64)
        edit = Edit(located(model), mode, gamma=2.0, values=values if mode == "mean" else None)
        a, b = forced_choice(model, items, edit, batch_tokens="auto").p_order, forced_choice(reference, items, edit).p_order
        assert torch.allclose(a, b, rtol=0, atol=2e-5), mode
    prompts = ["you would help the team", "我 会 帮"]
    assert generate(model, prompts, Edit(located(model), "zero"), max_new_tokens=5) == \
        generate(reference, prompts, Edit(located(model), "zero"), max_new_tokens=5)
    neutral = side_effects.load_neutral("en")
    neutral = side_effects.Neutral(neutral.language, neutral.texts[:3], neutral.pairs[:4], neutral.source)
    got = side_effects.measure(model, neutral, [Edit(located(model), "zero")])
    want = side_effects.measure(reference, neutral, [Edit(located(model), "zero")])
    assert got["before"]["ppl_before"] == pytest.approx(want["before"]["ppl_before"], rel=1e-4)
    assert got["sets"][0]["kl"] == pytest.approx(want["sets"][0]["kl"], rel=1e-3, abs=1e-7)


@pytest.mark.parametrize("device", DEVICES)
def test_the_remote_simulation_round_trip_on_a_device(on_device, device):
    from vneuron.runtime.remote import resolve_target

    model = on_device(device)
    simulated = load_model(str(model.source.path), dtype="float32", device=device, remote=resolve_target("local"))
    prompts = corpus().action_prompts()[:6]
    a, b = capture(model, prompts), capture(simulated, prompts)
    assert torch.allclose(a.sum, b.sum, rtol=1e-6, atol=1e-6) and torch.equal(a.n, b.n)
    items, edit = corpus().items[:3], Edit(located(model), "zero")
    assert torch.allclose(forced_choice(model, items, edit).p_order, forced_choice(simulated, items, edit).p_order, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_planting_trains_on_a_device(tiny_dir, tmp_path, device):
    """A few steps of planting where the model is: only the planted slices change, and the planted model loads back."""
    from vneuron.config import PlantConfig
    from vneuron.planting import plant

    result = plant(str(tiny_dir("llama")), PlantConfig(dataset=str(EXAMPLES / "corpus.jsonl"), k=6, steps=2, eval_every=1,
                                                     train_limit=4, report_limit=2, test_limit=2, kl_pool=2, read_background=None),
                   out=tmp_path / "planted", dtype="float32", device=device)
    assert (tmp_path / "planted" / "config.json").is_file() and result.neurons is not None
    assert load_model(str(tmp_path / "planted"), device=device).device.startswith(device)
