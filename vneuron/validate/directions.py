"""Direction baselines: does editing the located neurons do more, or less, than moving the residual stream along
the pole's mean-difference direction by the same amount? (DESIGN.md §7)

* ``mean_difference``: d_L = mean block output over the pole's counted tokens − the same over its opposite's, from
  the locate run's residual sums (``vneuron.locate.residual``).
* ``direction_edit``: a ``DirectionEdit`` (``vneuron.validate.edits``) along d̂_L — ``add``: x ← x + α·d̂_L at every
  position (α < 0 moves away from the pole, as an ablation would); ``project``: x ← x − (x·d̂_L)d̂_L, the
  direction removed. The default layer is where the run's mean-difference probe reads the pole best.
* ``random_directions``: unit vectors from a seed, the analogue of matched random neurons (``random_direction_edit``
  gives a control the same layer, α and mode; seed it with ``controls.control_seed`` to draw them sequentially).
* ``matched_alpha``: the budget — the mean L2 norm of the change a neuron edit makes to layer L's block output over
  the counted tokens of the evaluation (each option's tokens in every forced-choice prompt), so that "the same size
  of intervention" is measured, not assumed.

Direction edits are edit sets like neuron edits: ``forced_choice``, ``forced_choice_sets`` (mixing both kinds),
``generate`` and ``LowerLayers`` reuse take them, locally and on NDIF (d̂ travels by value, a vector of the hidden size).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import torch

from vneuron.config import DIRECTION_MODES
from vneuron.data.schema import Item
from vneuron.data.templates import ChoiceTemplate
from vneuron.errors import VneuronError
from vneuron.locate.probes import peak_layer
from vneuron.locate.residual import block_hidden
from vneuron.locate.runs import LocateRun
from vneuron.models.loading import LoadedModel
from vneuron.models.sites import resolve_path
from vneuron.runtime import budget
from vneuron.runtime.remote import call, nbytes, outcome, trace_kwargs
from vneuron.runtime.tokens import batches, pack, pad_id, position_ids
from vneuron.validate.edits import DirectionEdit, apply, plan, shift_residual, split_at
from vneuron.validate.evaluate import LowerLayers, encode_pairs, forced_choice_pairs, sent_tensors, step_tensors, tries_for, tries_supported
from vneuron.validate.prefix import attention_mask


def _opposite(run: LocateRun, pole: str) -> str:
    contrasts = dict(tuple(c) for c in run.manifest.get("contrasts") or [])
    if pole not in contrasts:
        raise VneuronError(f"Run {run.path} has no pole {pole!r} with an opposite", f"use one of: {', '.join(contrasts) or '(none)'}")
    return contrasts[pole]


def check_layer(run: LocateRun, layer: int) -> int:
    """``layer`` if the run's model has it; else a one-line error naming the range."""
    n_layers = run.stats.n_layers
    if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < n_layers:
        raise VneuronError(f"Direction layer {layer} is out of range: {run.path} located in a model with layers 0 to {n_layers - 1}",
                           f"pass a layer from 0 to {n_layers - 1}, or none for the layer where the probe reads the pole best")
    return layer


def direction_layer(run: LocateRun, pole: str, layer: int | None = None) -> int:
    """The layer a direction baseline edits: ``layer`` (checked), else the peak of the pole's mean-difference probe."""
    if layer is not None:
        return check_layer(run, layer)
    peak = peak_layer(run.manifest, pole)
    if peak is None:
        run.residual()  # a run from before residual means: its error says what can add them
        note = ((run.manifest.get("probes") or {}).get("poles") or {}).get(pole, {}).get("note", "no probe for this pole")
        raise VneuronError(f"Run {run.path} has no probe peak for {pole!r} ({note})", "pass a direction layer")
    return int(peak)


def mean_difference(run: LocateRun, pole: str, layer: int | None = None) -> torch.Tensor:
    """d_L [hidden] (float64): the pole's mean residual minus its opposite's at ``layer`` (None: [layers, hidden])."""
    d = run.residual().difference(pole, _opposite(run, pole))
    return d if layer is None else d[check_layer(run, layer)]


def direction_edit(run: LocateRun, pole: str, layer: int | None = None, mode: str = "add", alpha: float = 1.0) -> DirectionEdit:
    """An edit along the pole's mean-difference direction at ``layer`` (None: the probe's peak layer): ``add`` moves
    the residual stream by ``alpha``·d̂ (negative: away from the pole), ``project`` removes d̂ (``alpha`` unused)."""
    check_direction_mode(mode)
    opposite = _opposite(run, pole)
    layer = direction_layer(run, pole, layer)
    return DirectionEdit(layer, mean_difference(run, pole, layer), alpha=0.0 if mode == "project" else float(alpha),
                         project=mode == "project", label=f"mean difference {pole} − {opposite}, layer {layer}")


def check_direction_mode(mode: str) -> str:
    if mode not in DIRECTION_MODES:
        raise VneuronError(f"Unknown direction mode {mode!r}", f"use one of: {', '.join(DIRECTION_MODES)}")
    return mode


def random_directions(seed: int, n: int, hidden: int) -> torch.Tensor:
    """[n, hidden] float64 unit vectors, uniform on the sphere, the same for the same seed."""
    gen = torch.Generator().manual_seed(int(seed))
    v = torch.randn(n, hidden, generator=gen, dtype=torch.float64)
    return v / v.norm(dim=1, keepdim=True)


def random_direction_edit(edit: DirectionEdit, seed: int) -> DirectionEdit:
    """The control of a direction edit: a random unit direction (``random_directions(seed, 1, hidden)``) at the same
    layer, with the same α and mode."""
    return replace(edit, direction=random_directions(seed, 1, edit.unit.numel())[0], label=f"random direction (seed {seed})")


def matched_alpha(model: LoadedModel, items: Sequence[Item], neuron_edit, layer: int, *, choice: str = "listed",
                  template: str | ChoiceTemplate | None = None, batch_tokens: int = 1024) -> float:
    """The mean L2 norm, over the counted tokens of the forced choice on ``items`` (each option's tokens, in every
    prompt and order), of the change ``neuron_edit`` (an Edit, a list of edits) makes to block ``layer``'s output:
    ‖h_L(edited) − h_L(unedited)‖₂. An α for ``direction_edit`` that makes the two edits the same size."""
    return edit_sizes(model, items, neuron_edit, layer, choice=choice, template=template, batch_tokens=batch_tokens)[0]


def edit_sizes(model: LoadedModel, items: Sequence[Item], neuron_edit, layer: int, projected: Sequence[torch.Tensor] = (), *,
               choice: str = "listed", template: str | ChoiceTemplate | None = None, batch_tokens: int = 1024,
               reuse: LowerLayers | None = None, shared_prefix: bool = True, progress=None,
               readings: "Readings | None" = None) -> list[float]:
    """``matched_alpha`` of ``neuron_edit``, then the size of projecting out each direction of ``projected`` at
    ``layer`` (the mean |h_L·d̂| over the same tokens: the norm of the change x ← x − (x·d̂)d̂ makes), read from the
    same unedited pass, so the direction baselines' sizes cost one pair of passes up to block L — over the evaluation's
    own token tries (each shared token once, weighted by the pairs that count it), whose unedited pass also leaves the
    output of block L in ``reuse``: the direction edits that follow start from it (``edits.start_at``).
    ``shared_prefix=False``: one padded row per pair (the reference path; also where tries cannot run, as in
    ``continuation_logprobs``). ``readings``: the same sums taken on the way by the study's own passes (``Readings``):
    used, with no pass of its own, where they are whole."""
    if not 0 <= layer < model.n_layers:
        raise VneuronError(f"Direction layer {layer} is out of range: the model has layers 0 to {model.n_layers - 1}",
                           f"pass a layer from 0 to {model.n_layers - 1}")
    if not items:
        raise VneuronError("No items to measure the edit's size on", "check the evaluation split and dimensions")
    steps = [s for s in plan(model, neuron_edit) if s[0] <= layer]  # edits above the layer cannot change it
    hidden = model.arch.hidden(model.config)
    units = torch.stack([d.double() / d.double().norm() for d in projected]) if len(projected) else torch.zeros(0, hidden).double()
    pairs = forced_choice_pairs(items, choice, template=template)
    encoded = encode_pairs(model, pairs)
    total, count, along = 0.0, 0.0, torch.zeros(len(projected), dtype=torch.float64)
    if shared_prefix and tries_supported(model, encoded):
        key, prepared = tries_for(model, pairs, encoded, batch_tokens, reuse)
        keep = reuse is not None and model.remote is None  # what LowerLayers would compute next: L's unedited output
        read = readings.sizes(prepared, layer, steps, units) if readings is not None and model.remote is None else None
        if read is not None:
            if keep:
                for index, plain in readings.plain.items():
                    reuse.put((key, index, layer + 1), plain)
            return read
        for index, (t, _, _) in enumerate(prepared):
            if progress:
                progress(index, len(prepared))
            got = call(model, lambda: _change_norms(model, t.ids, None, t.counted, steps, layer, units, t, keep))
            if keep:
                reuse.put((key, index, layer + 1), got["plain"])
            budget.current.add(budget.Work(forwards=2, requests=1, tokens=2 * t.tokens, layer_tokens=2 * t.tokens * (layer + 1),
                                           bytes_down=nbytes(got["total"], got["count"], got["along"]),
                                           bytes_up=nbytes(*sent_tensors(t), t.counted, units, *step_tensors(steps))))
            total, count, along = total + float(got["total"]), count + float(got["count"]), along + got["along"].double()
        if progress:
            progress(len(prepared), len(prepared))
        return [total / count, *(along / count).tolist()]
    for batch in batches(encoded, batch_tokens):
        ids, mask, counted = pack(batch, pad_id(model.tokenizer), left=True)
        weights = (counted & mask.bool()).to(torch.float64)
        got = call(model, lambda: _change_norms(model, ids, mask, weights, steps, layer, units))
        budget.current.add(budget.Work(forwards=2, requests=1, tokens=2 * int(ids.numel()),
                                       layer_tokens=2 * int(ids.numel()) * (layer + 1),
                                       bytes_down=nbytes(got["total"], got["count"], got["along"]),
                                       bytes_up=nbytes(ids, mask, weights, units, *step_tensors(steps))))
        total += float(got["total"])
        count += float(got["count"])
        along += got["along"].double()
    return [total / count, *(along / count).tolist()]


class Readings:
    """The direction baselines' budget read on the way, so that it costs no pass of its own (local tries): block L's
    unedited output on a pole's evaluation tries, taken by the study's unedited pass over its items
    (``specificity.Unedited``), and the change the neuron edit makes to that output, taken by its value shift's located
    pass (``begin`` each value shift). ``sizes`` sums exactly what ``_change_norms`` sums, batch by batch in the same
    order, so ``edit_sizes`` gives the same bits either way; it is None where a part is missing (a part an interrupted
    study kept, batches that shrank), and ``edit_sizes`` then runs its pair of passes. ``share``: the readings of a pole
    with the same items at the same layer (a pole and its opposite: one unedited pass serves both)."""

    def __init__(self, layer: int, share: "Readings | None" = None):
        self.layer = layer
        self.plain: dict[int, torch.Tensor] = {} if share is None else share.plain  # per batch: block L's unedited output
        self.tokens: dict[int, int] = {} if share is None else share.tokens
        self.changes: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # per batch: Σ w·‖change‖, Σ w

    def begin(self) -> None:
        """A value shift starts: its located pass reads the change afresh (steer: one per γ)."""
        self.changes = {}

    def request(self, steps) -> int | None:
        """An unedited pass reads block L's output; an edited one too, if the unedited one did."""
        return self.layer if not steps or self.plain else None

    def take(self, index: int, t, steps, output) -> None:
        if not steps:
            self.plain[index], self.tokens[index] = output, t.tokens
            return
        plain = self.plain.get(index)
        if plain is None or self.tokens[index] != t.tokens:
            return
        change = (output.double() - plain.double()).norm(dim=-1)  # as _change_norms
        w = t.counted.to(change.device)
        self.changes[index] = ((change * w).sum().cpu(), w.sum().cpu())

    def sizes(self, prepared: list, layer: int, steps, units: torch.Tensor) -> list[float] | None:
        """``edit_sizes``' numbers from the readings over the batches ``prepared``, or None where they are not whole."""
        if layer != self.layer or len(self.plain) != len(prepared):
            return None
        unchanged = not steps  # the edit has nothing at or below L: h_L is the unedited one
        if any(self.tokens.get(i) != t.tokens or not unchanged and i not in self.changes for i, (t, _, _) in enumerate(prepared)):
            return None
        total, count, along = 0.0, 0.0, torch.zeros(len(units), dtype=torch.float64)
        for index, (t, _, _) in enumerate(prepared):
            plain = self.plain[index]
            w = t.counted.to(plain.device)
            part, weight = (torch.zeros((), dtype=torch.float64), w.sum().cpu()) if unchanged else self.changes[index]
            part_along = ((plain.double() @ units.to(plain.device).T).abs() * w[..., None]).sum((0, 1)).cpu()
            total, count, along = total + float(part), count + float(weight), along + part_along.double()
        return [total / count, *(along / count).tolist()]


def _change_norms(model: LoadedModel, ids, mask, weights, steps, layer: int, units: torch.Tensor, trie=None, keep: bool = False):
    """One request: Σ over counted tokens (``weights``: how many pairs count each) of ‖h_L(edited) − h_L‖₂, of |h_L·d̂|
    for each row d̂ of ``units`` (projections of the unedited output), and their count; the model stops after block L.
    ``trie``: a batch of token tries instead of padded rows (its mask built where it runs, from its parents); ``keep``:
    also return block L's unedited output (``plain``, what ``LowerLayers`` keeps for a direction at L)."""
    lm = model.lm  # only the envoy, tensors, plain data and small functions may enter a (remote) trace body
    path = model.arch.layers
    below, here = split_at(steps, layer)  # a direction at `layer` itself moves the output read there
    local = trie is not None and model.remote is None
    if trie is None:
        inputs = {"input_ids": ids, "attention_mask": mask, "position_ids": position_ids(mask)}
    elif local:
        inputs = model.inputs(trie.ids, trie.mask, trie.positions)
    parents, dtype, positions = (trie.parents, trie.dtype, trie.positions) if trie is not None else (None, None, None)
    served = trie is not None and not local  # plain data only below: a trie batch holds a lock (its cached mask)
    del trie
    with torch.inference_mode(), lm.session(**trace_kwargs(model)) as session:
        if served:  # the mask built on the server from the tries' parents, as the evaluation's is
            inputs = {"input_ids": ids, "attention_mask": attention_mask(parents, dtype), "position_ids": positions}
        with lm.trace(inputs) as tracer:
            plain = block_hidden(resolve_path(lm, path)[layer].output).clone()
            tracer.stop()
        with lm.trace(inputs) as tracer:
            apply(lm, below)
            output = resolve_path(lm, path)[layer].output
            for _, _, unit, alpha, project, _ in here:
                shift_residual(output, unit, alpha, project)
            change = (block_hidden(output).double() - plain.double()).norm(dim=-1)  # [B, T]
            w = weights.to(change.device)
            total = (change * w).sum().cpu()
            count = w.sum().cpu()
            along = ((plain.double() @ units.to(change.device).T).abs() * w[..., None]).sum((0, 1)).cpu()
            tracer.stop()
        total.save()
        count.save()
        along.save()
        if keep:
            plain.save()
    return outcome(model, session, lambda: {"total": total, "count": count, "along": along, **({"plain": plain} if keep else {})})
