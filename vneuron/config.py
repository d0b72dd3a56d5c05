"""Every setting of a study and its default, one dataclass per step, each checked before any work.

The library functions take these configs; the CLI takes its option defaults from them
(``vneuron.cli.options.setting``), so the two can never disagree. Nothing here imports torch,
so ``vneuron --help`` stays fast. Errors name a setting as `field` (the CLI shows its flag).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from vneuron.data.schema import DEFAULT_TEST_FRACTION
from vneuron.data.templates import choice_template, pvq_template
from vneuron.errors import VneuronError
from vneuron.models.sites import check_site
from vneuron.runtime.devices import batch_setting
from vneuron.runtime.precision import check_dtype

MODES = ("prompt", "generate")  # capture: the action's tokens, or tokens generated under a value-conditioned prompt
RULES = ("top_k", "per_layer", "valuelocate")
DIRECTIONS = ("pole", "opposite", "both")
CHOICE_FORMATS = ("listed", "continuation")
PROFILES = ("uniform", "random")
MECHANISMS = ("promote", "veto")
SPLITS = ("train", "test", "all")
TAILS = ("lower", "higher")  # the direction an edit is expected to move orientation toward its pole
STEER_GAMMAS = (0.0, 0.5, 1.0, 2.0, 4.0)  # steer's default sweep (γ = 1 is the unedited model in scale mode)


# -- the locate measures: one record each ---------------------------------------------------------
@dataclass(frozen=True)
class Measure:
    """A way to rank neurons for a pole. ``score`` maps the statistics of the pole and of its opposite
    (``ActivationStats.moments``: n, mean, var, p per neuron) to [L, W] scores, higher = more the pole's; it uses
    tensor methods only, so this module needs no torch. A measure without ``score`` selects on its own (LAPE)."""

    name: str
    formula: str  # what the CLI's help and the docs show
    score: Callable[[Any, Any], Any] | None = None


def _welch(a, b):
    return (a.mean - b.mean) / (a.var / a.n + b.var / b.n).sqrt().clamp_min(1e-12)


def _cohen(a, b):
    pooled = ((a.n - 1) * a.var + (b.n - 1) * b.var) / max(a.n + b.n - 2, 1)
    return (a.mean - b.mean) / pooled.sqrt().clamp_min(1e-12)


MEASURES: dict[str, Measure] = {m.name: m for m in (
    Measure("delta_p", "Δp, how much more often the neuron is active (a > 0) on the pole's texts (ValueLocate)",
            lambda a, b: a.p - b.p),
    Measure("mean_diff", "difference of mean activations", lambda a, b: a.mean - b.mean),
    Measure("cohen_d", "the mean difference over the pooled standard deviation", _cohen),
    # token-level: tokens are not independent, so it is a ranking, not a p-value
    Measure("welch_t", "the mean difference over its Welch standard error", _welch),
    Measure("lape", "lowest entropy of activation probability over the poles (LAPE, ValueExploration)"),
)}
METHODS = tuple(name for name, m in MEASURES.items() if m.score is not None)  # the contrast scores


# -- the edit modes: one record each --------------------------------------------------------------
@dataclass(frozen=True)
class EditMode:
    """One edit of a unit's activation during the forward pass and at every generation step: a ← α·a + β per unit
    (``clamp``: a ← min(a, 0)). ``alpha`` and ``beta`` map the per-unit quantities of ``vneuron.validate.edits.Units``
    (ones, zeros, gamma, values, gate) to per-unit tensors, with tensor arithmetic only. ``values``: what each unit
    needs from a locate run (``mean``: its corpus mean; ``magnitude``: mean + 1.645 sd, ≈ its 95th percentile; None).
    ``dose``: γ is a dose (steer sweeps it, ablate needs it). ``gate``: β is scaled by σ(10(Δp − 0.15)), ValueLocate's
    gate on the pole's Δp. ``raises``: does γ push orientation toward the pole (the sequential test's tail ``higher``)?
    ``silences``: the activation no longer carries its input (what ``power`` removes a planted preference with)."""

    name: str
    formula: str  # what the CLI's help and the docs show
    alpha: Callable[[Any], Any]
    beta: Callable[[Any], Any]
    values: str | None = None
    dose: bool = False
    gate: bool = False
    clamp: bool = False
    silences: bool = False
    raises: Callable[[float], bool] = staticmethod(lambda gamma: False)

    def tail(self, gamma: float | None) -> str:
        """The direction this edit is expected to move orientation toward its pole (γ None: 1)."""
        return "higher" if self.raises(1.0 if gamma is None else gamma) else "lower"


EDIT_MODES: dict[str, EditMode] = {m.name: m for m in (
    EditMode("zero", "a ← 0", lambda u: u.zeros, lambda u: u.zeros, silences=True),
    EditMode("clamp", "a ← min(a, 0)", lambda u: u.ones, lambda u: u.zeros, clamp=True),
    EditMode("mean", "a ← μ, the corpus mean", lambda u: u.zeros, lambda u: u.values, values="mean", silences=True),
    EditMode("scale", "a ← γ·a", lambda u: u.ones * u.gamma, lambda u: u.zeros, dose=True, raises=lambda gamma: gamma > 1),
    EditMode("add", "a ← a + γ·v·σ(10(Δp − 0.15)), ValueLocate's boost", lambda u: u.ones, lambda u: u.gamma * u.values * u.gate,
             values="magnitude", dose=True, gate=True, raises=lambda gamma: gamma > 0),
    EditMode("set", "a ← a value (0 from the command line)", lambda u: u.zeros, lambda u: u.values),
)}
STEER_MODES = tuple(name for name, m in EDIT_MODES.items() if m.dose)  # the edits with a dose γ

DIRECTION_CONTROLS = 9  # the most random directions per arm when they match the neurons' draws (p ≥ 1/10)
# the direction baselines (vneuron.validate.directions): an edit of the residual stream at one block's output, every position
DIRECTION_MODES = {
    "add": "x ← x + α·d̂ (α < 0: away from the pole)",
    "project": "x ← x − (x·d̂)·d̂, the direction removed",
}


def choices(names) -> str:
    """A metavar of choices, [a|b|c]."""
    return "[" + "|".join(names) + "]"


def _tokens(value: int | str) -> int | str:
    """``batch_tokens`` typed as a number ("2048" on the command line) is that number; anything else is checked later."""
    return int(value) if isinstance(value, str) and value.isdigit() else value


def check_edit_mode(mode: str, setting: str = "mode") -> EditMode:
    if mode not in EDIT_MODES:
        raise VneuronError(f"Unknown edit `{setting}` {mode!r}", f"use one of: {', '.join(EDIT_MODES)}")
    return EDIT_MODES[mode]


Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass
class CaptureConfig:
    """How activations are read and reduced (a part of ``LocateConfig``)."""

    site: str = "gate"
    mode: str = "prompt"
    folds: int = 2
    batch_tokens: int | str = "auto"  # auto: 4096 on the CPU (and NDIF), from the free memory on an accelerator
    max_new_tokens: int = 32
    counted_span: bool = True
    padding: str = "right"  # prompt mode; generation always pads left
    request_batches: int = 8  # remote: forward batches per NDIF request (one session)
    top_examples: int = 0  # local: keep the N most and least activating texts per label and neuron (vneuron.locate.examples)
    residual: bool = True  # also the block outputs: sums per label, fold and layer, and each prompt's mean (vneuron.locate.residual)
    probe_width: int = 1024  # the probe rows' width: the hidden size up to this, a signed sketch of this width above it

    def check(self) -> "CaptureConfig":
        check_site(self.site)
        if self.mode not in MODES:
            raise VneuronError(f"Unknown `mode` {self.mode!r}", f"use one of: {', '.join(MODES)}")
        if self.padding not in ("left", "right"):
            raise VneuronError(f"Unknown `padding` {self.padding!r}", "use left or right")
        batch_setting(self.batch_tokens)
        if self.folds < 1 or self.max_new_tokens < 1:
            raise VneuronError("`folds` and `max_new_tokens` must be positive")
        if self.top_examples < 0:
            raise VneuronError(f"`top_examples` must be 0 or more, got {self.top_examples}", "e.g. 5, or 0 for none")
        if self.probe_width < 1:
            raise VneuronError(f"`probe_width` must be at least 1, got {self.probe_width}",
                               "e.g. 1024 (a hidden size up to it is kept exactly)")
        return self


@dataclass
class LocateConfig:
    """Everything that decides a locate run (recorded in the manifest)."""

    dataset: str | None = None  # None: the built-in corpus
    columns: dict[str, str] | None = None  # our field → the user's column name
    contrasts: list[tuple[str, str]] | None = None  # (pole, opposite) label pairs; default: Schwartz partners
    dimensions: list[str] | None = None  # pole labels to rank; None: all
    language: str = "en"
    split: str = "train"
    limit: int | None = None  # at most this many items per dimension (quick looks, tests)
    site: str = "gate"
    mode: str = "prompt"  # prompt | generate
    span: str = "option"  # prompt mode: count the action's tokens, or all of the prompt
    method: str = "delta_p"  # delta_p | mean_diff | cohen_d | welch_t | lape
    rule: str = "top_k"  # top_k | per_layer | valuelocate
    top_k: int = 200
    direction: str = "pole"
    threshold: float = 0.1  # valuelocate rule
    min_count: int = 2000  # valuelocate rule
    lape_top_rate: float = 0.01
    lape_quantile: float = 0.95
    folds: int = 2
    null_shuffles: int = 0  # label-shuffle null runs (each is one more capture)
    batch_tokens: int | str = "auto"  # auto: 4096 on the CPU (and NDIF), from the free memory on an accelerator
    max_new_tokens: int = 32
    request_batches: int = 8  # remote: forward batches per NDIF request
    test_fraction: float = DEFAULT_TEST_FRACTION  # held out by a hash of the id when the data has no split column
    template: str | None = None  # prompt mode: preset or template string framing each action (None: third_person)
    whole_values: bool = False  # C-voice: add each value against all its conflicts ("X|*") beside the conflicts
    strict: bool = False  # refuse a corpus with incomplete rows (an empty required cell) instead of leaving them out with a note
    top_examples: int = 5  # the most and least activating texts kept per label and neuron, for neuron cards (local runs)
    probe_width: int = 1024  # the probes' rows: each prompt's mean residual, exact up to this hidden size, sketched to it above
    probe_l2: float = 0.01  # the logistic probe's λ: mean log-loss + (λ/2)·‖w‖² on z-scored rows (vneuron.locate.probes)
    probe_bootstrap: int = 1000  # bootstrap draws of each probe AUROC's CI (over held-out prompts)

    def __post_init__(self) -> None:
        self.batch_tokens = _tokens(self.batch_tokens)

    def capture_config(self) -> CaptureConfig:
        return CaptureConfig(site=self.site, mode=self.mode, folds=self.folds, batch_tokens=self.batch_tokens,
                             max_new_tokens=self.max_new_tokens, counted_span=self.span == "option",
                             request_batches=self.request_batches, top_examples=self.top_examples,
                             probe_width=self.probe_width).check()

    def probe_settings(self) -> dict[str, Any]:
        return {"l2": self.probe_l2, "draws": self.probe_bootstrap}

    def check(self) -> "LocateConfig":
        if self.method not in MEASURES:
            raise VneuronError(f"Unknown `method` {self.method!r}", f"use one of: {', '.join(MEASURES)}")
        if self.rule not in RULES:
            raise VneuronError(f"Unknown `rule` {self.rule!r}", f"use one of: {', '.join(RULES)}")
        if self.direction not in DIRECTIONS:
            raise VneuronError(f"Unknown `direction` {self.direction!r}", f"use one of: {', '.join(DIRECTIONS)}")
        if self.top_k < 1:
            raise VneuronError(f"`top_k` must be at least 1, got {self.top_k}")
        if self.limit is not None and self.limit < 1:
            raise VneuronError(f"`limit` must be at least 1 item per dimension, got {self.limit}", "drop `limit` to use every item")
        if self.null_shuffles < 0:
            raise VneuronError(f"`null_shuffles` must be 0 or more label-shuffle runs, got {self.null_shuffles}",
                               "pass e.g. 5, or 0 for none")
        if self.span not in ("option", "all"):
            raise VneuronError(f"Unknown `span` {self.span!r}", "use option or all")
        if self.request_batches < 1:
            raise VneuronError(f"`request_batches` must be at least 1, got {self.request_batches}")
        if not (math.isfinite(self.probe_l2) and self.probe_l2 > 0):
            raise VneuronError(f"`probe_l2` must be a positive number, got {self.probe_l2}", "e.g. 0.01")
        if self.probe_bootstrap < 1:
            raise VneuronError(f"`probe_bootstrap` must be at least 1, got {self.probe_bootstrap}", "e.g. 1000")
        self.capture_config()
        choice_template(self.template)  # a bad template fails before any work
        return self

    def selection(self) -> dict[str, Any]:
        keys = ("method", "rule", "top_k", "direction", "threshold", "min_count", "lape_top_rate", "lape_quantile")
        return {k: getattr(self, k) for k in keys}


@dataclass
class ValidateConfig:
    """Everything that decides an ablation or a steering sweep (recorded in the manifest)."""

    dimensions: list[str] | None = None
    top_k: int | None = None  # truncate each located set (None: as located)
    mode: str = "zero"
    gamma: float | None = None  # scale/add: the factor or boost (ablate needs it for those modes; steer sets it per γ)
    controls: int = 20
    split: str = "test"
    limit: int | None = None  # evaluation items per pole (quick looks)
    generations: int = 0  # scenarios whose before/after generations are saved (optional work: off by default)
    max_new_tokens: int = 40
    bootstrap: int = 2000
    seed: int = 0
    # evaluation batches. auto: 1,024 on the CPU, which ran 17 % faster per token than 4,096 on 2 cores (benchmarks/ablate.py);
    # from the free memory on an accelerator
    batch_tokens: int | str = "auto"
    pvq: str | None = None  # questionnaire (file or "PVQ-40") scored before / after / under controls
    choice: str = "listed"  # forced-choice format: listed (both orders) or continuation
    eval_dataset: str | None = None  # evaluate on this corpus instead of the run's held-out split
    eval_columns: dict[str, str] | None = None  # its column names (ours=yours)
    eval_map: dict[str, str] | None = None  # its pole labels → the run's poles (theirs=ours)
    eval_split: str = "all"  # which of its items: all (nothing of it was located on), test or train
    template: str | None = None  # forced-choice template (None: the locate run's, else third_person)
    pvq_template: str | None = None  # PVQ template (None: third_person portraits)
    eval_test_fraction: float = DEFAULT_TEST_FRACTION  # its held-out fraction when it has no split column
    eval_strict: bool = False  # refuse an `eval_dataset` with incomplete rows instead of leaving them out with a note
    stop_after: int = 3  # sequential controls: stop once this many are as extreme as the located set (0: draw all)
    tail: str | None = None  # ablate: the direction the edit is expected to move orientation (None: from the mode, i.e. lower)
    dtype: str | None = None  # what the model computes in (None: the locate run's; auto: the fastest here that passes its check)
    # a located set ahead of all `controls` keeps drawing up to this many (p can reach 1/201 ≈ 0.005); `controls` or less: never
    max_controls: int = 200
    side_effects: bool = True  # KL / perplexity on neutral prose and a non-value forced choice, for the located set and its controls
    neutral: str | None = None  # a file of neutral prose (one passage a line) and/or prompt<TAB>right<TAB>wrong pairs (None: built-in)
    side_controls: int = 20  # side effects: at least this many controls (all drawn, if more); cross-value matrix: at most this many
    cross_values: bool = True  # evaluate each located set on the items of the other values/axes too (the cross-value matrix)
    matrix_items: int | None = None  # the matrix: at most this many items per other column (None: every item; its CI says the rest)
    verdict_alpha: float = 0.05  # the p below which a value shift or a side effect counts in the verdict
    judge: str | None = None  # score the generations: touche (offline classifier), openai:MODEL@URL, model:SPEC (vneuron.validate.judges)
    judge_controls: int = 5  # controls whose generations are generated and judged too
    # the direction baselines (vneuron.validate.baselines): the pole's mean-difference direction, budget-matched, beside the neurons
    directions: bool = True  # on when the run has residual means (a run from before them: a note, no baselines)
    direction_layer: int | None = None  # the layer they edit (None: where the pole's mean-difference probe reads it best)
    # random directions per arm, drawn sequentially like the neuron controls, at most this many (and at most `controls`).
    # None: as many as the neurons' own value shift drew (at least h, at most DIRECTION_CONTROLS), so each arm is judged
    # at the neurons' resolution and a null study does not pay for a finer one (a number: that cap, whatever they drew)
    direction_controls: int | None = None
    # ablate: also project the direction out (x − (x·d̂)d̂), a third arm with its own random directions. Off by default:
    # its size is the residual's own component along d̂, not the neurons' budget, and it costs another arm's controls
    projected_out: bool = False
    # ablate: also run each direction arm on the cross-value matrix's columns against its own random directions, so the
    # arm gets a leakage ratio beside the neurons'; it costs a matrix per arm (off by default)
    direction_matrix: bool = False

    def __post_init__(self) -> None:
        self.batch_tokens = _tokens(self.batch_tokens)

    @property
    def direction_controls_max(self) -> int:
        """The most random directions an arm may draw (``direction_controls``, else ``DIRECTION_CONTROLS``; ≤ ``controls``)."""
        return min(self.controls, DIRECTION_CONTROLS if self.direction_controls is None else self.direction_controls)

    def check_ablation(self) -> "ValidateConfig":
        """An ablation with a dosed edit needs its dose (steer sets γ per point of its sweep)."""
        if check_edit_mode(self.mode).dose and self.gamma is None:
            raise VneuronError(f"Ablating with `mode` {self.mode} needs `gamma` ({EDIT_MODES[self.mode].formula})",
                               "set it, e.g. 0.5, or use mode zero")
        return self.check()

    def check_steering(self) -> "ValidateConfig":
        """A steering sweep edits with a dose: scale or add."""
        if self.mode not in STEER_MODES:
            raise VneuronError(f"Steering needs `mode` {' or '.join(STEER_MODES)} (an edit with a dose γ), not {self.mode!r}",
                               "; ".join(f"{m}: {EDIT_MODES[m].formula}" for m in STEER_MODES))
        for name in ("projected_out", "direction_matrix"):
            if getattr(self, name):
                raise VneuronError(f"`{name}` is an ablation's baseline: a sweep does not run it",
                                   "drop it (steer draws the mean-difference direction at every γ, on the pole's own items)")
        return self.check()

    def check(self) -> "ValidateConfig":
        check_dtype(self.dtype)
        check_edit_mode(self.mode)
        if self.choice not in CHOICE_FORMATS:
            raise VneuronError(f"Unknown `choice` {self.choice!r}", f"use {' or '.join(CHOICE_FORMATS)}")
        if self.template is not None:
            choice_template(self.template).parts("en", self.choice == "listed")  # a template that cannot list fails now
        pvq_template(self.pvq_template)
        if self.split not in SPLITS:
            raise VneuronError(f"Unknown `split` {self.split!r}", "use test (held out), train or all")
        batch_setting(self.batch_tokens)
        for name, low in (("controls", 0), ("top_k", 1), ("limit", 1), ("generations", 0), ("matrix_items", 2)):
            value = getattr(self, name)
            if value is not None and value < low:
                raise VneuronError(f"`{name}` must be at least {low}, got {value}")
        if self.tail is not None and self.tail not in TAILS:
            raise VneuronError(f"Unknown `tail` {self.tail!r}", f"use {' or '.join(TAILS)} (the direction the edit is expected to move P)")
        if self.stop_after < 0:
            raise VneuronError("`stop_after` must be ≥ 0", "0 draws every control; e.g. 3 stops once 3 controls match the located set")
        for name in ("max_controls", "side_controls", "judge_controls", "direction_controls"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise VneuronError(f"`{name}` must be ≥ 0, got {getattr(self, name)}")
        if self.direction_matrix and not (self.directions and self.cross_values):
            raise VneuronError("`direction_matrix` runs the direction baselines on the cross-value matrix's columns, but "
                               + ("the direction baselines are" if not self.directions else "the cross-value matrix is")
                               + " switched off", "drop it, or switch both on")
        if self.projected_out and not self.directions:
            raise VneuronError("`projected_out` is set, but the direction baselines are switched off",
                               "drop one of them: projecting the direction out is one of the baselines' arms")
        if self.direction_layer is not None and not self.directions:
            raise VneuronError(f"`direction_layer` {self.direction_layer} is set, but the direction baselines are switched off",
                               "drop it, or leave the baselines on (the default): they edit that layer only when they run")
        if not 0 < self.verdict_alpha < 1:
            raise VneuronError(f"`verdict_alpha` must lie strictly between 0 and 1, got {self.verdict_alpha}", "e.g. 0.05")
        if self.neutral is not None and not Path(self.neutral).expanduser().is_file():
            raise VneuronError(f"`neutral` {self.neutral} does not exist",
                               "pass a text file: one neutral passage a line, or prompt<TAB>right<TAB>wrong lines")
        if self.judge is not None and not self.generations:
            raise VneuronError("`judge` scores generations, but `generations` is 0", "add `generations` N (e.g. 8)")
        if self.eval_dataset is None and (self.eval_map or self.eval_columns):
            name = "`eval_map`" if self.eval_map else "`eval_columns`"
            raise VneuronError(f"{name} describes an outside evaluation file, but no `eval_dataset` was given",
                               f"add `eval_dataset` FILE, or drop {name}")
        if self.gamma is not None and not math.isfinite(self.gamma):
            raise VneuronError(f"`gamma` must be a finite number, got {self.gamma}")
        if self.eval_split not in SPLITS:
            raise VneuronError(f"Unknown `eval_split` {self.eval_split!r}", "use all (default), test or train")
        if not 0 <= self.eval_test_fraction < 1:
            raise VneuronError(f"`eval_test_fraction` must be in [0, 1), got {self.eval_test_fraction}", "e.g. 0.2")
        return self


def profile_weights(profile: str) -> list[float]:
    try:
        weights = [float(w) for w in profile.split(",")]
    except ValueError:
        weights = []
    if weights and all(w == 0 for w in weights):
        raise VneuronError(f"`profile` {profile!r} gives every layer weight 0, so no neuron can be planted",
                           "give at least one layer a positive weight, e.g. 0,0,1")
    if not weights or any(w < 0 or not math.isfinite(w) for w in weights) or sum(weights) <= 0:
        raise VneuronError(f"Cannot read `profile` {profile!r}",
                           f"use {' or '.join(PROFILES)}, or one non-negative weight per layer, e.g. 0,0,1,1,2,2")
    return weights


@dataclass
class PlantConfig:
    """Everything that decides a planting (recorded in the manifest)."""

    dimension: str = "self_transcendence"  # the pole the planted model comes to prefer over its opposite
    dataset: str | None = None  # None: the built-in corpus
    columns: dict[str, str] | None = None
    contrasts: list[tuple[str, str]] | None = None
    language: str = "en"
    k: int = 200
    neurons: str | None = None  # a NeuronSet file: plant exactly these (k and profile are then ignored)
    profile: str = "uniform"  # uniform (equal count per layer), random (uniform over all neurons) or per-layer weights "w0,w1,..."
    site: str = "gate"  # site recorded in the planted NeuronSet (the units are the same at both sites)
    seed: int = 0
    choices: tuple[str, ...] = CHOICE_FORMATS  # forced-choice formats trained on (and reported)
    steps: int = 120
    batch_items: int = 8  # scenarios per optimisation step
    micro_items: int = 2  # scenarios per forward pass (memory)
    lr: float = 2e-3
    kl_weight: float = 1.0
    init: str = "read"  # read: point the gate rows at the direction separating the poles' actions; none: train from the rows as they are
    read_mix: float = 0.25  # weight of each row's own values added to the read direction in the read initialisation
    read_spread: float = 2.0  # standard deviation of the read direction's pre-activation over the action tokens
    read_quantile: float | None = None  # share of the other pole's action tokens on which a unit fires (None: split at the midpoint)
    read_up: bool | None = None  # the up rows read the same direction (None: when vetoing, unless read_context)
    # passes of the read setting; after the first, each layer is fitted to the inputs the planted units of earlier layers shape
    read_passes: int = 1
    # GLU: the up rows read "an action, not the scenario" (0 on scenario tokens, this on actions), and the threshold holds on
    # scenario tokens too
    read_context: float | None = None
    freeze_read: bool | None = None  # keep the read rows (gate, and up if read_up) as initialised (None: when vetoing)
    keep_weight: float = 1.0  # the action the units do not read keeps its likelihood (so they must respond to the one they read)
    select_weight: float = 1.0  # the planted neurons must respond to the actions they read (smooth Δp ≥ select_target)
    select_target: float = 0.5
    kl_texts: int = 2  # neutral texts per step for the KL term
    kl_positions: int | None = None  # last positions of each neutral text compared with the original model (None: every position)
    neutral: str | None = None  # neutral prose the plant is checked on (None: the built-in check corpus of `language`)
    fit_neutral: str | None = None  # neutral prose the plant is fitted on: the KL term, the reads' background (None: built-in)
    # share of the fit prose's tokens (and of its first tokens after BOS) on which a unit's gate may read above threshold
    # (None: the reads ignore prose, and the units fire on ordinary text)
    read_background: float | None = 0.05
    quiet_prefix: bool = True  # the planted units' rows read 0 at the positions every text shares (BOS): they cannot fire there
    target: float | None = None  # scale the planted write until the validation preference is this (None: as trained)
    val_fraction: float = 0.2  # share of the training scenarios held out for early stopping
    eval_every: int = 10
    patience: int = 3  # evaluations without a better validation loss before stopping
    train_limit: int | None = None  # training scenarios per pole side (None: the whole train split)
    report_limit: int | None = 32  # train scenarios per side in the before/after report
    test_limit: int | None = None  # test scenarios per side in the before/after report (None: all)
    batch_tokens: int = 4096
    train_choices: tuple[str, ...] | None = None  # formats optimised each step (None: all of ``choices``); all are validated and reported
    kl_pool: int = 8  # neutral texts whose original next-token distributions are computed once and reused (0: a fresh sample each step)
    mechanism: str = "promote"  # promote: units read the pole and raise its actions; veto: units read the opposite and suppress its actions

    def reader(self, opposite: str) -> str:
        """The label whose actions the planted units read (and respond to): what locate should find them as."""
        return self.dimension if self.mechanism == "promote" else opposite

    @property
    def reads_up(self) -> bool:
        return self.read_up if self.read_up is not None else (self.mechanism == "veto" and self.read_context is None)

    @property
    def sets_up(self) -> bool:
        """The read initialisation sets the up rows too (to the read direction, or to the context direction)."""
        return self.reads_up or self.read_context is not None

    @property
    def frozen_read(self) -> bool:
        return self.init == "read" and (self.freeze_read if self.freeze_read is not None else self.mechanism == "veto")

    @property
    def kept(self) -> int:
        """Which action keeps its original likelihood (0: the pole's, 1: the opposite's): the one the units do not read."""
        return 1 if self.mechanism == "promote" else 0

    def check(self) -> "PlantConfig":
        check_site(self.site)
        unknown = [c for c in (*self.choices, *(self.train_choices or ())) if c not in CHOICE_FORMATS]
        if unknown or not self.choices or (self.train_choices is not None and not self.train_choices):
            raise VneuronError(f"Unknown forced-choice format in `choices`/`train_choices`: {', '.join(unknown) or '(none)'}",
                               f"use {', '.join(CHOICE_FORMATS)}")
        if self.neurons is not None and not Path(self.neurons).is_file():
            raise VneuronError(f"`neurons` {self.neurons} does not exist",
                               "pass a NeuronSet file, e.g. RUN/neurons/self_transcendence.safetensors")
        if self.neurons is None and self.k < 1:
            raise VneuronError(f"`k` must be at least 1, got {self.k}")
        if self.steps < 1 or self.batch_items < 1 or self.micro_items < 1 or self.eval_every < 1 or self.lr <= 0:
            raise VneuronError("`steps`, `batch_items`, `micro_items`, `eval_every` and `lr` must be positive")
        if not 0 < self.val_fraction < 1:
            raise VneuronError(f"`val_fraction` must lie strictly between 0 and 1, got {self.val_fraction}")
        if self.read_spread <= 0 or (self.read_quantile is not None and not 0 < self.read_quantile < 1):
            raise VneuronError("`read_spread` must be positive and `read_quantile` strictly between 0 and 1")
        if self.read_background is not None and not 0 < self.read_background < 1:
            raise VneuronError(f"`read_background` must lie strictly between 0 and 1, got {self.read_background}",
                               "e.g. 0.05 (a unit may read above threshold on one ordinary prose token in twenty)")
        if self.read_passes < 1:
            raise VneuronError(f"`read_passes` must be at least 1, got {self.read_passes}")
        if self.read_context is not None and (self.read_context <= 0 or not math.isfinite(self.read_context)):
            raise VneuronError(f"`read_context` must be a positive number, got {self.read_context}", "e.g. 2")
        if self.mechanism not in MECHANISMS:
            raise VneuronError(f"Unknown `mechanism` {self.mechanism!r}", f"use {' or '.join(MECHANISMS)}")
        if self.init not in ("read", "none"):
            raise VneuronError(f"Unknown `init` {self.init!r}", "use read or none")
        if self.kl_weight < 0:
            raise VneuronError("`kl_weight` must be ≥ 0")
        if self.target is not None and not 0.5 < self.target < 1:
            raise VneuronError(f"`target` must lie strictly between 0.5 and 1, got {self.target}", "e.g. 0.7")
        if self.kl_positions is not None and self.kl_positions < 1:
            raise VneuronError(f"`kl_positions` must be at least 1, got {self.kl_positions}", "or leave it out for every position")
        if self.neutral is not None and not Path(self.neutral).expanduser().is_file():
            raise VneuronError(f"`neutral` {self.neutral} does not exist", "pass a text file: one neutral passage a line")
        if self.profile not in PROFILES:
            profile_weights(self.profile)
        return self


@dataclass
class PowerConfig:
    """plant → locate → ablate at several K and corpus sizes (``vneuron power``)."""

    dimension: str = "self_transcendence"
    dataset: str | None = None
    language: str = "en"
    ks: list[int] = field(default_factory=lambda: [50, 200])
    targets: list[float] | None = None  # plant strengths: each plant's write rescaled to these validation preferences (None: as trained)
    sizes: list[int] = field(default_factory=lambda: [16, 64, 256])  # scenarios per pole for locating
    controls: int = 20
    mode: str = "zero"  # ablation edit (zero or mean)
    choice: str = "listed"
    eval_limit: int | None = None  # test scenarios per side in each ablation (None: all)
    method: str = "delta_p"  # the locate method, exactly as real runs use it
    site: str = "gate"
    seed: int = 0
    plant: PlantConfig = field(default_factory=PlantConfig)

    def check(self) -> "PowerConfig":
        if not self.ks or min(self.ks) < 1 or not self.sizes or min(self.sizes) < 1:
            raise VneuronError("`ks` and `sizes` need positive numbers", "e.g. 50,200 and 16,64,256")
        silencing = [m for m, record in EDIT_MODES.items() if record.silences]
        if check_edit_mode(self.mode).silences is False:
            raise VneuronError(f"Power ablates with `mode` {' or '.join(silencing)} (an edit that silences the units), not {self.mode!r}")
        if self.targets is not None and (not self.targets or any(not 0.5 < t < 1 for t in self.targets)):
            raise VneuronError(f"`targets` must lie strictly between 0.5 and 1, got {self.targets}", "e.g. 0.6,0.7,0.8")
        ValidateConfig(mode=self.mode, controls=self.controls, choice=self.choice).check()
        return self


@dataclass
class CardOptions:
    """Neuron cards (``vneuron show``)."""

    texts: int = 5  # most and least activating texts shown
    batch_tokens: int = 4096
    output_tokens: int = 10  # with the model: the tokens whose logits the unit raises and lowers most (0: none)


@dataclass
class ReportOptions:
    """What ``vneuron report`` puts on the page."""

    cards: int = 1  # neuron cards per pole (0: no model needed)
    card_texts: int = 4  # most and least activating texts per card
    model: Any = None  # a LoadedModel or spec for the cards' output-token view (None: cards from the top examples, no model)
    dtype: str | None = None  # what that model computes in (None: the run's)
    generations: int = 2  # before/after generations shown per pole
    top_rows: int = 10  # rows of each pole's top-neuron table
    progress: Progress | None = None
