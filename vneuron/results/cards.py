"""Neuron cards: what one neuron responds to in the run's own corpus, what it writes, and its name in other tools.

A located neuron may track a value, or only a word, a length or a position. The card shows the
corpus texts whose counted tokens activate it most and least, its activation statistics per label,
and where the same unit lives in nnsight and TransformerLens. The texts come from the top examples
the run's capture kept (``vneuron.locate.examples``), so a card needs no model and no pass over the corpus.
With the model at hand it adds what the unit writes: the tokens whose logits its output column
raises and lowers most through the final norm and the unembedding (as Neuronpedia shows), and
each example's counted tokens shaded by their activation. A run without top examples (captured
remotely, or before they existed) is read with one forward pass over its corpus.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from vneuron.config import CardOptions
from vneuron.data.schema import Prompt
from vneuron.errors import VneuronError
from vneuron.locate.examples import EXAMPLES, SCORE, TopExamples
from vneuron.locate.runs import LocateRun, stats_file
from vneuron.models.sites import layer_modules, resolve_path, site_path, site_tensors
from vneuron.runtime.store import read_csv, read_jsonl
from vneuron.runtime.tokens import batches, encode, pack, pad_id, position_ids

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
    from vneuron.data import load_corpus

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
    return chosen.action_prompts(key.get("span", "option"), template=(manifest.get("template") or {}).get("spec")), note


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
            with lm.trace(model.inputs(ids, mask, position_ids(mask))) as tracer:
                for layer, v in enumerate(site_tensors(lm, path)):
                    if layer in by_layer:
                        saved[layer] = v[:, :, by_layer[layer]].cpu().save()
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
    pieces: list[tuple[str, float | None]]  # text pieces; activation for counted tokens, None otherwise (empty: not read)
    score: float  # mean activation over counted tokens

    def marked(self) -> list[tuple[str, float | None, bool]]:
        """(text, activation, counted) pieces: per token when they were read, else the counted span as one piece."""
        if self.pieces:
            return [(t, a, a is not None) for t, a in self.pieces]
        text, span = self.prompt.text, self.prompt.span or (0, len(self.prompt.text))
        return [(t, None, c) for t, c in ((text[: span[0]], False), (text[span[0]: span[1]], True), (text[span[1]:], False)) if t]


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
    output: dict | None = None  # the output-token view (needs the model): raises / lowers / note
    per_label: dict = field(default_factory=dict)  # label → most / least: [(id, mean activation)] (from the top examples)

    @property
    def title(self) -> str:
        return f"Neuron L{self.layer}:U{self.unit} ({self.site})"

    def to_json(self) -> dict:
        def sample(s: Sample) -> dict:
            return {"id": s.prompt.id, "label": s.prompt.label, "mean_activation": s.score, "text": s.prompt.text,
                    "counted_span": list(s.prompt.span) if s.prompt.span else None,
                    "tokens": [[t, a] for t, a in s.pieces] if s.pieces else None}

        return {"layer": self.layer, "unit": self.unit, "site": self.site, "names": self.names, "labels": self.labels,
                "located": self.located, "most": [sample(s) for s in self.top], "least": [sample(s) for s in self.bottom],
                "per_label": self.per_label, "output_tokens": self.output, "source": self.source}

    def _scale(self) -> float:
        return max([abs(a) for s in self.top + self.bottom for _, a in s.pieces if a is not None] or [1.0]) or 1.0

    def html(self, figure_html: Callable) -> str:
        scale = self._scale()

        def shade(sample: Sample) -> str:
            out = []
            for text, a, counted in sample.marked():
                if a is not None:
                    alpha = min(1.0, abs(a) / scale)
                    rgb = "214,39,40" if a > 0 else "31,119,180"
                    out.append(f"<span class='tok' title='{a:+.4f}' style='background:rgba({rgb},{alpha:.2f})'>{html.escape(text)}</span>")
                else:
                    out.append(f"<b>{html.escape(text)}</b>" if counted else f"<span class='unc'>{html.escape(text)}</span>")
            return "".join(out)

        def rows(samples: list[Sample]) -> str:
            return "".join(f"<tr><td>{s.score:+.4f}</td><td>{html.escape(s.prompt.label)}</td><td "
                           f"style='text-align:left'>{shade(s)}</td></tr>"
                           for s in samples)

        names = "".join(f"<li>{html.escape(k)}: <code>{html.escape(v)}</code></li>" for k, v in self.names.items())
        located = "; ".join(f"{r['dimension']} rank {r['rank']} (score {float(r['score']):+.4f})" for r in self.located)
        located = located or "not in a located set"
        labels = "".join(f"<tr><td>{html.escape(l)}</td><td>{d['tokens']:g}</td><td>{d['mean']:+.4f}</td><td>{d['p_active']:.3f}</td></tr>"
                         for l, d in self.labels.items())
        shaded = any(s.pieces for s in self.top + self.bottom)
        legend = "counted tokens shaded: red a&gt;0, blue a&lt;0; grey = not counted" if shaded else "counted tokens in bold"
        head = f"<tr><th>mean a</th><th>label</th><th>text ({legend})</th></tr>"
        output = ""
        if self.output:
            cells = lambda pairs: ", ".join(f"<code>{html.escape(repr(t))}</code> {v:+.2f}" for t, v in pairs)  # noqa: E731
            output = (f"<p><b>Output tokens</b> it raises: {cells(self.output['raises'])}</p>"
                      f"<p>and lowers: {cells(self.output['lowers'])} <span class='note'>({html.escape(self.output['note'])})</span></p>")
        return (f"<div class='card'><h3>{html.escape(self.title)}</h3><p>Located: {html.escape(located)}.</p><ul>{names}</ul>"
                f"<table><tr><th>label</th><th>counted tokens</th><th>mean a</th><th>P(a&gt;0)</th></tr>{labels}</table>"
                f"<p><b>Most activating texts</b></p><table class='gen'>{head}{rows(self.top)}</table>"
                f"<p><b>Least activating texts</b></p><table class='gen'>{head}{rows(self.bottom)}</table>{output}"
                + "".join(figure_html(f) for f in self.figures) +
                f"<p class='note'>{html.escape(self.source)}.</p></div>")

    def markdown(self, figure_md: Callable) -> str:
        lines = [f"### {self.title}", ""]
        lines += [f"- {k}: `{v}`" for k, v in self.names.items()]
        lines += ["", "| label | counted tokens | mean a | P(a>0) |", "|---|---|---|---|"]
        lines += [f"| {l} | {d['tokens']:g} | {d['mean']:+.4f} | {d['p_active']:.3f} |" for l, d in self.labels.items()]
        for name, samples in (("Most", self.top), ("Least", self.bottom)):
            lines += ["", f"{name} activating texts (counted tokens in **bold**, activation in brackets where read):", ""]
            for s in samples:
                text = "".join(t if not c else f"**{t.strip()}**" + (f"[{a:+.2f}]" if a is not None else "")
                               + (" " if t.endswith(" ") else "") for t, a, c in s.marked())
                lines.append(f"- ({s.score:+.4f}, {s.prompt.label}) " + text.replace("\n", " "))
        if self.output:
            for name in ("raises", "lowers"):
                lines.append(f"- output tokens it {name}: " + ", ".join(f"`{t!r}` {v:+.2f}" for t, v in self.output[name]))
            lines.append(f"  ({self.output['note']})")
        lines += ["", f"*{self.source}.*", ""] + [figure_md(f) for f in self.figures]
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
            labels.add_row(l, f"{d['tokens']:g}", f"{d['mean']:+.4f}", f"{d['p_active']:.3f}")
        out.append(labels)
        shaded = any(s.pieces for s in self.top + self.bottom)
        legend = "shaded: red a>0, blue a<0" if shaded else "counted tokens in bold"
        for name, samples in (("Most", self.top), ("Least", self.bottom)):
            out.append(Text(f"{name} activating texts (mean a over counted tokens; {legend}):", style="bold"))
            for s in samples:
                text = Text(f"{s.score:+.4f} {s.prompt.label}: ")
                for piece, a, counted in s.marked():
                    piece = piece.replace("\n", " ")
                    if a is not None:
                        level = int(255 - 155 * min(1.0, abs(a) / scale))
                        text.append(piece, style=f"on rgb(255,{level},{level})" if a > 0 else f"on rgb({level},{level},255)")
                    else:
                        text.append(piece, style="bold" if counted else "dim")
                out.append(text)
        if self.output:
            table = Table(title="Output tokens (direct path to the logits)", title_justify="left", caption=self.output["note"])
            for column in ("raises", "logit", "lowers", "logit "):
                table.add_column(column, justify="right")
            for (up, u), (down, d) in zip(self.output["raises"], self.output["lowers"]):
                table.add_row(repr(up), f"{u:+.2f}", repr(down), f"{d:+.2f}")
            out.append(table)
        out.append(Text(self.source, style="dim"))
        return out


def output_direction(model, layer: int, unit: int) -> torch.Tensor:
    """What one unit writes, as the LM head reads it: its output-projection column, through the norm a
    block applies to the MLP's output (Gemma-2/3, OLMo-2) and the final norm, their gains folded in as
    TransformerLens folds them (``norm(x) − norm(0)``: a LayerNorm's centring and gain, an RMSNorm's gain;
    the per-token 1/rms only scales it). Float32."""
    hf, arch = model.hf_model, model.arch
    block = layer_modules(hf, arch)[layer]
    down = getattr(getattr(block, arch.mlp), arch.down)
    weight = down.weight.detach()
    column = weight[unit] if arch.transposed else weight[:, unit]  # a transposed layout (GPT-2) stores [in, out]
    x = column.float()[None]
    norms = [getattr(block, arch.mlp_out_norm)] if arch.mlp_out_norm else []
    norms.append(getattr(resolve_path(hf, arch.base), arch.final_norm))
    with torch.inference_mode():
        for norm in norms:
            param = next(norm.parameters(), None)
            kind, where = (param.dtype, param.device) if param is not None else (x.dtype, x.device)
            x = (norm(x.to(where, kind)) - norm(torch.zeros_like(x, dtype=kind, device=where))).float()
    return x[0]


def output_tokens(model, layer: int, unit: int, k: int = 10, chunk: int = 32768) -> dict[str, Any]:
    """The tokens whose logits the unit's output raises and lowers most (the direct path to the head),
    as Neuronpedia shows them: [(token, logit change per unit of the normalised direction)]."""
    direction = output_direction(model, layer, unit)
    head = model.hf_model.get_output_embeddings()
    logits = torch.cat([torch.nn.functional.linear(direction.to(head.weight.device), head.weight[lo: lo + chunk].detach().float()).cpu()
                        for lo in range(0, head.weight.shape[0], chunk)])  # float32, a slice of the head at a time
    post = model.arch.post(model.lm.config)
    note = "direct path: output column → " + (f"{model.arch.mlp_out_norm} → " if model.arch.mlp_out_norm else "") + \
        f"{model.arch.final_norm} → unembedding (norm gains folded in, no bias)"
    if post is not None:  # monotone: the order is the model's, the values are before it
        note += f"; the model then {'soft-caps logits at ±' if post[0] == 'softcap' else 'divides logits by '}{post[1]:g}"
        note += ", which keeps this order" if post[0] == "softcap" else ""
    top, bottom = logits.topk(k), (-logits).topk(k)
    name = lambda i: model.tokenizer.decode([int(i)])  # noqa: E731
    return {"raises": [(name(i), float(v)) for v, i in zip(top.values, top.indices)],
            "lowers": [(name(i), -float(v)) for v, i in zip(bottom.values, bottom.indices)], "note": note}


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


def examples_file(run: LocateRun) -> Path | None:
    """The top examples the run's capture kept (beside its statistics), or None (remote runs, and runs made before them)."""
    path = stats_file(run.path, run.manifest).parent / EXAMPLES
    return path if path.is_file() else None


def run_examples(run: LocateRun) -> TopExamples | None:
    path = examples_file(run)
    return TopExamples.load(path) if path is not None else None


def _card_model(run: LocateRun, model, dtype: str | None, say) -> Any:
    from vneuron.models.loading import LoadedModel, load_model

    recorded = run.manifest["model"]
    if not isinstance(model, LoadedModel):
        model = load_model(model or run.model_spec(), dtype=dtype or recorded.get("dtype", "float32"), progress=lambda m: say(m, 0, 0))
    loaded = model
    if loaded.revision != recorded["revision"]:
        raise VneuronError(f"The model ({loaded.source.model_id}) is not the one the run located neurons in ({recorded['model_id']})",
                           "pass the same `model`")
    return loaded


def neuron_cards(run, neurons: Sequence[tuple[int, int]], *, model=None, texts: int = CardOptions.texts,
                 batch_tokens: int = CardOptions.batch_tokens, output_tokens_k: int = CardOptions.output_tokens,
                 dtype: str | None = None, progress: Progress | None = None) -> list[NeuronCard]:
    """Cards for ``neurons`` of a locate run (``run``: a validate.LocateRun or its path).

    From the top examples the run's capture kept, no model is needed. With ``model`` (a spec or a
    LoadedModel; it must be the run's), each example's counted tokens are shaded by their activation
    (a forward pass over those texts only) and the output-token view is added. A run without top
    examples (made remotely, or before they existed) needs the model for one pass over its corpus.
    """
    run = run if isinstance(run, LocateRun) else LocateRun.open(run)
    recorded = run.manifest["model"]
    say = progress or (lambda stage, done, total: None)
    for flag, value in (("`texts`", texts), ("`batch_tokens`", batch_tokens), ("`output_tokens`", output_tokens_k + 1)):
        if value < 1:
            raise VneuronError(f"{flag} must be at least {1 if flag != '`output_tokens`' else 0}, got {value}")
    n_layers, width = recorded.get("n_layers"), recorded.get("width")
    for layer, unit in neurons:  # before the model is loaded
        if n_layers and width and not (0 <= layer < n_layers and 0 <= unit < width):
            raise VneuronError(f"Neuron {layer}:{unit} is outside the model ({n_layers} layers × {width})",
                               f"pick a layer in 0..{n_layers - 1} and a unit in 0..{width - 1}")
    neurons = list(dict.fromkeys(neurons))
    examples = run_examples(run)
    if examples is not None and texts > examples.n:
        examples = None  # more than the run kept: read them from the corpus, with the model
    loaded = _card_model(run, model, dtype, say) if model is not None or examples is None else None
    if examples is None:
        cards = _corpus_cards(run, loaded, neurons, texts, batch_tokens, progress)
    else:
        say("Neuron cards: the run's top examples", 1, 1)
        cards = _example_cards(run, examples, loaded, neurons, texts, batch_tokens)
    if loaded is not None and output_tokens_k:
        for card in cards:
            card.output = output_tokens(loaded, card.layer, card.unit, output_tokens_k)
    return cards


def _example_prompts(run: LocateRun, examples: TopExamples) -> list[Prompt]:
    """The texts the top examples index, with the span the run counted (generate mode: the generated text)."""
    generated = {r["id"]: r["generated"] for r in read_jsonl(run.path / "generations.jsonl")}
    out = []
    for p in examples.prompts:
        if p["id"] in generated:
            text = p["text"] + generated[p["id"]]
            out.append(Prompt(text, p["label"], p["id"].split(":")[0], p["id"], (len(p["text"]), len(text))))
        else:
            out.append(Prompt(p["text"], p["label"], p["id"].split(":")[0], p["id"], tuple(p["span"]) if p["span"] else None))
    return out


def _example_cards(run: LocateRun, examples: TopExamples, loaded, neurons, texts: int, batch_tokens: int) -> list[NeuronCard]:
    from vneuron.results import figures

    prompts = _example_prompts(run, examples)
    index = {p.id: i for i, p in enumerate(prompts)}
    site = run.manifest["capture"]["site"]
    rows = read_csv(run.path / "neurons.csv")
    chosen = {}
    for layer, unit in neurons:
        found = examples.neuron(layer, unit)
        pooled = lambda side: [(index[p["id"]], v) for sides in found.values() for p, v in sides[side]]  # noqa: E731
        chosen[(layer, unit)] = (sorted(pooled("most"), key=lambda t: -t[1])[:texts], sorted(pooled("least"), key=lambda t: t[1])[:texts],
                                 {l: {side: [(prompts[index[p["id"]]].id, v) for p, v in sides[side]] for side in sides}
                                  for l, sides in found.items()})
    shading = {}
    if loaded is not None:  # per-token activations of just these texts
        wanted = sorted({i for most, least, _ in chosen.values() for i, _ in most + least})
        acts = neuron_activations(loaded, [prompts[i] for i in wanted], neurons, site, batch_tokens=batch_tokens)
        shading = {(i, n): (acts.values[n][k], acts.counted[k]) for k, i in enumerate(wanted) for n in neurons}
    prompted = examples.prompts and len(examples.prompts)
    source = (f"Top examples kept by the run's capture ({EXAMPLES}: the {examples.n} texts per label with the highest and lowest "
              f"{SCORE}, exact over the {prompted} texts it read)" + ("; tokens shaded by a forward pass over these texts"
                                                                      if loaded is not None else ""))
    cards = []
    for layer, unit in neurons:
        most, least, per_label = chosen[(layer, unit)]

        def sample(i: int, value: float, layer=layer, unit=unit) -> Sample:
            acts = shading.get((i, (layer, unit)))
            return Sample(prompts[i], _pieces(loaded.tokenizer, prompts[i], *acts) if acts else [], value)

        labels = {}
        for label in run.stats.labels:
            m = run.stats.moments(label)
            labels[label] = {"tokens": m.n, "mean": float(m.mean[layer, unit]), "sd": float(m.var[layer, unit].sqrt()),
                             "p_active": float(m.p[layer, unit])}
        names = _names(run, loaded, site, layer, unit)
        card = NeuronCard(layer, unit, site, names, labels, [sample(i, v) for i, v in most], [sample(i, v) for i, v in least],
                          [r for r in rows if int(r["layer"]) == layer and int(r["unit"]) == unit], source, per_label=per_label)
        summary = figures.label_summary(labels, per_label, card.title, f"{run.path} (statistics and {EXAMPLES})")
        summary.name = f"card-L{layer}-U{unit}"
        card.figures = [summary]
        cards.append(card)
    return cards


def _names(run: LocateRun, loaded, site: str, layer: int, unit: int) -> dict[str, str]:
    """The unit's names in other tools, from the run's architecture record (no model needed)."""
    from vneuron.models.architectures import ARCHITECTURES

    arch = loaded.arch if loaded is not None else ARCHITECTURES.get(run.manifest["model"].get("architecture"))
    width = run.manifest["model"].get("width") or (loaded.width if loaded is not None else 0)
    return arch.neuron_names(site, layer, unit, width) if arch is not None else {}


def _corpus_cards(run: LocateRun, loaded, neurons, texts: int, batch_tokens: int, progress) -> list[NeuronCard]:
    """Cards from one forward pass over the run's whole corpus (runs without top examples)."""
    from vneuron.results import figures

    prompts, note = run_prompts(run)
    site = run.manifest["capture"]["site"]
    acts = neuron_activations(loaded, prompts, neurons, site, batch_tokens=batch_tokens, progress=progress)
    rows = read_csv(run.path / "neurons.csv")
    source = f"Forward pass over {len(prompts)} prompts of {note} ({run.path})"
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
