"""Neuron cards: what one neuron responds to in the run's own corpus, and its name in other tools.

A located neuron may track a value, or only a word, a length or a position. The card shows the
corpus texts whose counted tokens activate it most and least (each counted token shaded by its
activation), its activation distribution per label, and where the same unit lives in nnsight and
TransformerLens. It needs one forward pass over the run's corpus that stops after the deepest
layer asked for, reading the same site, the same counted tokens and the same model as the run.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from .runs import LocateRun, read_csv, read_jsonl
from .tokens import batches, encode, pack, pad_id, position_ids
from .data.schema import Prompt
from .config import CardOptions
from .errors import VneuronError
from .models.sites import site_path, site_tensors

Progress = Callable[[str, int, int], None]


def parse_neuron(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*[Ll]?(\d+)\s*[:/,]\s*[Uu]?(\d+)\s*", text or "")
    if not match:
        raise VneuronError(f"Cannot read neuron {text!r}", "write it as LAYER:UNIT, e.g. 5:1023")
    return int(match.group(1)), int(match.group(2))


# -- the corpus the run counted --------------------------------------------------------------------
def run_prompts(run) -> tuple[list[Prompt], str]:
    """The run's prompts with the spans it counted; the note says how they were rebuilt."""
    manifest = run.manifest
    key = manifest.get("capture_key", {})
    if key.get("mode") == "generate":
        rows = read_jsonl(run.path / "generations.jsonl")
        if not rows:
            raise VneuronError(f"{run.path} is a generate-mode run without generations.jsonl", "rerun vneuron locate")
        prompts = [Prompt(r["prompt"] + r["generated"], r["label"], r["id"].split(":")[0], r["id"],
                          (len(r["prompt"]), len(r["prompt"]) + len(r["generated"]))) for r in rows]
        return prompts, "prompts and generated tokens from generations.jsonl"
    from .data import load_corpus

    data = manifest["dataset"]
    corpus = load_corpus(data.get("spec"), columns=data.get("columns"))
    poles = [c[0] for c in manifest.get("contrasts", [])]
    chosen, note = None, "the run's corpus"
    for dims in (None, poles):
        candidate = corpus.select(split=data.get("split"), language=data.get("language"), dimensions=dims or None,
                                  limit=data.get("limit"))
        if candidate.content_hash() == data.get("sha256"):
            chosen = candidate
            break
    if chosen is None:
        chosen = candidate
        note = "the run's corpus file, which has changed since the run (SHA-256 differs)"
    return chosen.action_prompts(key.get("span", "option")), note


@dataclass
class Activations:
    prompts: list[Prompt]
    counted: list[list[bool]]
    values: dict[tuple[int, int], list[list[float]]]  # neuron → per prompt, per token


def neuron_activations(model, prompts: Sequence[Prompt], neurons: Sequence[tuple[int, int]], site: str, *,
                       counted_span: bool = True, batch_tokens: int = 4096, progress: Progress | None = None) -> Activations:
    """Per-token activations of a few neurons over ``prompts`` (one forward pass, stopped after the deepest layer)."""
    if model.remote is not None:
        raise VneuronError("Neuron cards run the model locally", "drop `remote`, or pass a `model` with local weights")
    for layer, unit in neurons:
        if not (0 <= layer < model.n_layers and 0 <= unit < model.width):
            raise VneuronError(f"Neuron {layer}:{unit} is outside the model ({model.n_layers} layers × {model.width})",
                               f"pick a layer in 0..{model.n_layers - 1} and a unit in 0..{model.width - 1}")
    encoded = encode(model.tokenizer, list(prompts), list(range(len(prompts))), counted_span=counted_span)
    by_layer: dict[int, list[int]] = {}
    for layer, unit in neurons:
        by_layer.setdefault(layer, [])
        if unit not in by_layer[layer]:
            by_layer[layer].append(unit)
    last = max(by_layer)
    path = site_path(model.arch, site)
    values = {n: [[] for _ in prompts] for n in neurons}
    counted = [e.counted for e in encoded]
    plan = batches(encoded, batch_tokens)
    lm = model.lm
    done = 0
    with torch.inference_mode():
        for batch in plan:
            ids, mask, _ = pack(batch, pad_id(model.tokenizer), left=False)
            saved = {}
            with lm.trace({"input_ids": ids, "attention_mask": mask, "position_ids": position_ids(mask)}) as tracer:
                for layer, v in enumerate(site_tensors(lm, path)):
                    if layer in by_layer:
                        saved[layer] = v[:, :, by_layer[layer]].save()
                    if layer == last:
                        break
                tracer.stop()
            for layer, units in by_layer.items():
                acts = saved[layer].double()
                for row, e in enumerate(batch):
                    for k, unit in enumerate(units):
                        values[(layer, unit)][e.slot] = acts[row, : len(e.ids), k].tolist()
            done += len(batch)
            if progress:
                progress("Neuron cards: forward pass", done, len(prompts))
    return Activations(list(prompts), counted, values)


# -- the card --------------------------------------------------------------------------------------
@dataclass
class Sample:
    prompt: Prompt
    pieces: list[tuple[str, float | None]]  # text pieces; activation for counted tokens, None otherwise
    score: float  # mean activation over counted tokens


@dataclass
class NeuronCard:
    layer: int
    unit: int
    site: str
    names: dict[str, str]
    labels: dict[str, dict]  # label → tokens, mean, p_active (counted tokens)
    top: list[Sample]
    bottom: list[Sample]
    located: list[dict]  # neurons.csv rows naming this neuron
    source: str
    hist: Any = None
    figures: list = field(default_factory=list)

    @property
    def title(self) -> str:
        return f"Neuron L{self.layer}:U{self.unit} ({self.site})"

    def to_json(self) -> dict:
        def sample(s: Sample) -> dict:
            return {"id": s.prompt.id, "label": s.prompt.label, "mean_activation": s.score, "text": s.prompt.text,
                    "tokens": [[t, a] for t, a in s.pieces]}

        return {"layer": self.layer, "unit": self.unit, "site": self.site, "names": self.names, "labels": self.labels,
                "located": self.located, "most": [sample(s) for s in self.top], "least": [sample(s) for s in self.bottom],
                "source": self.source}

    def _scale(self) -> float:
        return max([abs(a) for s in self.top + self.bottom for _, a in s.pieces if a is not None] or [1.0]) or 1.0

    def html(self, figure_html: Callable) -> str:
        scale = self._scale()

        def shade(sample: Sample) -> str:
            out = []
            for text, a in sample.pieces:
                if a is None:
                    out.append(f"<span class='unc'>{html.escape(text)}</span>")
                else:
                    alpha = min(1.0, abs(a) / scale)
                    rgb = "214,39,40" if a > 0 else "31,119,180"
                    out.append(f"<span class='tok' title='{a:+.4f}' style='background:rgba({rgb},{alpha:.2f})'>{html.escape(text)}</span>")
            return "".join(out)

        def rows(samples: list[Sample]) -> str:
            return "".join(f"<tr><td>{s.score:+.4f}</td><td>{html.escape(s.prompt.label)}</td><td "
                           f"style='text-align:left'>{shade(s)}</td></tr>"
                           for s in samples)

        names = "".join(f"<li>{html.escape(k)}: <code>{html.escape(v)}</code></li>" for k, v in self.names.items())
        located = "; ".join(f"{r['dimension']} rank {r['rank']} (score {float(r['score']):+.4f})" for r in self.located)
        located = located or "not in a located set"
        labels = "".join(f"<tr><td>{html.escape(l)}</td><td>{d['tokens']}</td><td>{d['mean']:+.4f}</td><td>{d['p_active']:.3f}</td></tr>"
                         for l, d in self.labels.items())
        head = "<tr><th>mean a</th><th>label</th><th>text (counted tokens shaded: red a&gt;0, blue a&lt;0; grey = not counted)</th></tr>"
        return (f"<div class='card'><h3>{html.escape(self.title)}</h3><p>Located: {html.escape(located)}.</p><ul>{names}</ul>"
                f"<table><tr><th>label</th><th>counted tokens</th><th>mean a</th><th>P(a&gt;0)</th></tr>{labels}</table>"
                f"<p><b>Most activating texts</b></p><table class='gen'>{head}{rows(self.top)}</table>"
                f"<p><b>Least activating texts</b></p><table class='gen'>{head}{rows(self.bottom)}</table>"
                + "".join(figure_html(f) for f in self.figures) +
                f"<p class='note'>Forward pass over {html.escape(self.source)}.</p></div>")

    def markdown(self, figure_md: Callable) -> str:
        lines = [f"### {self.title}", ""]
        lines += [f"- {k}: `{v}`" for k, v in self.names.items()]
        lines += ["", "| label | counted tokens | mean a | P(a>0) |", "|---|---|---|---|"]
        lines += [f"| {l} | {d['tokens']} | {d['mean']:+.4f} | {d['p_active']:.3f} |" for l, d in self.labels.items()]
        for name, samples in (("Most", self.top), ("Least", self.bottom)):
            lines += ["", f"{name} activating texts (counted tokens in **bold**, activation in brackets):", ""]
            for s in samples:
                text = "".join(t if a is None else f"**{t.strip()}**[{a:+.2f}]" + (" " if t.endswith(" ") else "") for t, a in s.pieces)
                lines.append(f"- ({s.score:+.4f}, {s.prompt.label}) " + text.replace("\n", " "))
        lines += [""] + [figure_md(f) for f in self.figures]
        return "\n".join(lines)

    def rich(self):
        """Renderables for the terminal."""
        from rich.table import Table
        from rich.text import Text

        scale = self._scale()
        out = []
        names = Table(title=self.title, show_header=False, title_justify="left")
        names.add_column(style="bold")
        names.add_column(overflow="fold")
        for k, v in self.names.items():
            names.add_row(k, v)
        names.add_row("located", "; ".join(f"{r['dimension']} rank {r['rank']}" for r in self.located) or "—")
        out.append(names)
        labels = Table(title="Activation on counted tokens, per label", title_justify="left")
        for column in ("label", "tokens", "mean a", "P(a>0)"):
            labels.add_column(column, justify="right")
        for l, d in self.labels.items():
            labels.add_row(l, str(d["tokens"]), f"{d['mean']:+.4f}", f"{d['p_active']:.3f}")
        out.append(labels)
        for name, samples in (("Most", self.top), ("Least", self.bottom)):
            out.append(Text(f"{name} activating texts (mean a over counted tokens; shaded: red a>0, blue a<0):", style="bold"))
            for s in samples:
                text = Text(f"{s.score:+.4f} {s.prompt.label}: ")
                for piece, a in s.pieces:
                    if a is None:
                        text.append(piece.replace("\n", " "), style="dim")
                    else:
                        level = int(255 - 155 * min(1.0, abs(a) / scale))
                        text.append(piece.replace("\n", " "),
                                    style=f"on rgb(255,{level},{level})" if a > 0 else f"on rgb({level},{level},255)")
                out.append(text)
        return out


def _pieces(tokenizer, prompt: Prompt, acts: list[float], counted: list[bool]) -> list[tuple[str, float | None]]:
    enc = tokenizer(prompt.text, return_offsets_mapping=True, add_special_tokens=True)
    pieces: list[tuple[str, float | None]] = []
    end_prev = 0
    for (start, end), a, c in zip(enc["offset_mapping"], acts, counted):
        if end <= start:
            continue
        if start > end_prev:
            pieces.append((prompt.text[end_prev:start], None))
        pieces.append((prompt.text[start:end], a if c else None))
        end_prev = end
    if end_prev < len(prompt.text):
        pieces.append((prompt.text[end_prev:], None))
    return pieces


def neuron_cards(run, neurons: Sequence[tuple[int, int]], *, model=None, texts: int = CardOptions.texts,
                 batch_tokens: int = CardOptions.batch_tokens,
                 progress: Progress | None = None) -> list[NeuronCard]:
    """Cards for ``neurons`` of a locate run (``run``: a validate.LocateRun or its path)."""
    from . import figures
    from .models.loading import LoadedModel, load_model

    run = run if isinstance(run, LocateRun) else LocateRun.open(run)
    recorded = run.manifest["model"]
    say = progress or (lambda stage, done, total: None)
    for flag, value in (("`texts`", texts), ("`batch_tokens`", batch_tokens)):
        if value < 1:
            raise VneuronError(f"{flag} must be at least 1, got {value}")
    n_layers, width = recorded.get("n_layers"), recorded.get("width")
    for layer, unit in neurons:  # before the model is loaded
        if n_layers and width and not (0 <= layer < n_layers and 0 <= unit < width):
            raise VneuronError(f"Neuron {layer}:{unit} is outside the model ({n_layers} layers × {width})",
                               f"pick a layer in 0..{n_layers - 1} and a unit in 0..{width - 1}")
    loaded = model if isinstance(model, LoadedModel) else load_model(model or recorded["spec"], dtype=recorded.get("dtype", "float32"),
                                                                    progress=lambda m: say(m, 0, 0))
    if loaded.revision != recorded["revision"]:
        raise VneuronError(f"The model ({loaded.source.model_id}) is not the one the run located neurons in ({recorded['model_id']})",
                           "pass the same `model`")
    prompts, note = run_prompts(run)
    site = run.manifest["capture"]["site"]
    neurons = list(dict.fromkeys(neurons))
    acts = neuron_activations(loaded, prompts, neurons, site, batch_tokens=batch_tokens, progress=progress)
    rows = read_csv(run.path / "neurons.csv")
    source = f"{len(prompts)} prompts of {note} ({run.path})"
    cards = []
    for layer, unit in neurons:
        per_prompt = acts.values[(layer, unit)]
        per_label: dict[str, list[float]] = {}
        scored = []
        for prompt, values, counted in zip(prompts, per_prompt, acts.counted):
            kept = [a for a, c in zip(values, counted) if c]
            per_label.setdefault(prompt.label, []).extend(kept)
            if kept:
                scored.append((sum(kept) / len(kept), prompt, values, counted))
        scored.sort(key=lambda t: t[0], reverse=True)
        pick = lambda chosen: [Sample(p, _pieces(loaded.tokenizer, p, v, c), s) for s, p, v, c in chosen]  # noqa: E731
        labels = {l: {"tokens": len(v), "mean": sum(v) / len(v) if v else float("nan"),
                      "p_active": sum(a > 0 for a in v) / len(v) if v else float("nan")} for l, v in per_label.items()}
        card = NeuronCard(layer, unit, site, loaded.arch.neuron_names(site, layer, unit, loaded.width), labels,
                          pick(scored[:texts]), pick(scored[::-1][:texts]),
                          [r for r in rows if int(r["layer"]) == layer and int(r["unit"]) == unit], source)
        hist = figures.activation_histogram(per_label, card.title, source)
        hist.name = f"card-L{layer}-U{unit}"
        card.figures = [hist]
        cards.append(card)
    return cards
