"""Every bad input and every fault ends cleanly: one `error:` line on stderr, exit code 2, no
traceback, no setting named as the library spells it (`top_k`: the line says --top-k), nothing on
stdout, and nothing new or changed on disk (the working directory, the model cache, the runs and
files the command was given).

One row per case; a new command adds its rows as one line each. Placeholders in a row:
  {tiny}    a tiny saved random Llama (tests/conftest.py)      {corpus}  examples/corpus.jsonl
  {run}     a tiny finished locate run, made once per module   {bad}     a directory of broken files
  {port}    a loopback port nobody listens on                  {texts}   examples/texts.csv
{bad}/held-run and {bad}/held.html are claimed by another process (runtime/claims.py) for the whole module.
A row may name a fault to inject (FAULTS) and may run in a subprocess through the console script.
A row with code 0 is a case that must not fail but must say something: its pattern is searched in
the whole output, stderr holds at most `warning:` lines, and it may write only into its working
directory.
Cases run in-process (Typer's runner) in a fresh working directory with VNEURON_CACHE set to a
module-wide temporary cache; nearly all fail before any model loads.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vneuron.cli import app
from vneuron.errors import CALL, SETTING

from .conftest import make_tokenizer

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
runner = CliRunner()


@dataclass(frozen=True)
class Case:
    id: str
    argv: str  # the command line after `vneuron`, with {placeholders}
    match: str  # a regular expression the error line must contain
    fault: str | None = None  # a FAULTS entry injected for this case
    subprocess: bool = False  # through the installed console script instead of in-process
    xfail: str | None = None  # a known gap, with its reason
    code: int = 2  # 0: the command succeeds and says what it could not do (see the module's docstring)


L = "locate --model {tiny} --dataset {corpus} -q -k 5"
A = "ablate {run} -q --controls 1 --split all"
S = "steer {run} -q --controls 1 --split all"
HOST = "--host http://127.0.0.1:{port}"

CASES = [
    # -- locate: the model -----------------------------------------------------------------------------------------
    Case("locate/model-unknown-alias", "locate --model no-such-model -q", r"Unknown model 'no-such-model'.*no such alias.*use an alias"),
    Case("locate/model-missing-path", "locate --model ./missing/model -q", r"Model path \./missing/model does not exist"),
    Case("locate/model-missing-abs-path", "locate --model /nonexistent/model-dir -q", r"does not exist"),
    Case("locate/model-missing-gguf", "locate --model {bad}/missing.gguf -q", r"GGUF file .*missing.gguf does not exist"),
    Case("locate/model-text-gguf", "locate --model {bad}/text.gguf -q", r"not a GGUF file.*magic bytes"),
    Case("locate/model-gguf-header-cut", "locate --model {bad}/header-cut.gguf -q", r"header-cut.gguf is truncated or corrupt"),
    Case("locate/model-gguf-data-cut", "locate --model {bad}/data-cut.gguf -q", r"data-cut.gguf is truncated"),
    Case("locate/model-gguf-not-a-model", "locate --model {bad}/tensor.gguf -q", r"Cannot convert .*tensor.gguf"),
    Case("locate/model-dir-no-config", "locate --model {bad}/empty-dir -q", r"has no config.json"),
    Case("locate/model-dir-no-tokenizer", "locate --model {bad}/no-tokenizer -q", r"no-tokenizer has no tokenizer.*save_pretrained"),
    Case("locate/model-config-not-json", "locate --model {bad}/config-not-json -q", r"config.json is not valid JSON"),
    Case("locate/model-config-no-type", "locate --model {bad}/config-no-type -q", r"config.json has no model_type"),
    Case("locate/model-unsupported-arch", "locate --model {bad}/bert -q", r"Unsupported architecture 'bert'.*llama"),
    Case("locate/model-weights-cut", L + " --model {bad}/weights-cut",
         r"Cannot read the weights of .*weights-cut.*download the model again"),
    Case("locate/model-tokenizer-cut", L + " --model {bad}/tokenizer-cut", r"Cannot read the tokenizer of .*tokenizer-cut"),
    Case("locate/model-dir-no-weights", L + " --model {bad}/no-weights",
         r"Model directory .*no-weights has no weight file \(config.json is there.*\)\. Copy the weight files beside config.json .*or "
         r"pass another --model"),
    Case("locate/model-plain-file", "locate --model {bad}/notes.txt -q", r"neither a model directory nor a .gguf file"),
    Case("locate/model-hub-not-cached", "locate --model nobody/not-cached-model -q", r"not in the local Hugging Face cache"),
    Case("locate/dtype", L + " --dtype float8", r"Unknown dtype 'float8'"),
    # -- locate: the corpus ----------------------------------------------------------------------------------------
    Case("locate/dataset-missing", L + " --dataset /nonexistent/corpus.jsonl", r"Corpus /nonexistent/corpus.jsonl does not exist"),
    Case("locate/dataset-missing-columns", L + " --dataset {bad}/missing-columns.jsonl", r"missing columns"),
    Case("locate/dataset-bad-json-line", L + " --dataset {bad}/bad-line.jsonl", r"line 2: not valid JSON"),
    Case("locate/dataset-empty-file", L + " --dataset {bad}/empty.jsonl", r"holds no items"),
    Case("locate/dataset-unknown-type", L + " --dataset {bad}/corpus.docx", r"unsupported file type '.docx'"),
    Case("locate/dataset-csv-missing-columns", L + " --dataset {bad}/missing-columns.csv", r"missing columns"),
    Case("locate/dataset-empty-dir", L + " --dataset {bad}/empty-dir", r"(holds no|no corpus|no items)"),
    Case("locate/dataset-fake-xlsx", L + " --dataset {bad}/fake.xlsx", r"not a readable .xlsx workbook"),
    Case("locate/dataset-unknown-split-cell", L + " --dataset {bad}/bad-split.jsonl", r"unknown split 'sometimes'"),
    Case("locate/columns-unparsable", L + " --columns text", r"Cannot read column mapping 'text'.*ours=yours"),
    Case("locate/contrast-unparsable", L + " --dataset {texts} --columns text=sentence,label=value_label --contrast kind",
         r"Cannot read contrast 'kind'"),
    # -- locate: options -------------------------------------------------------------------------------------------
    Case("locate/dimension-unknown", L + " --dimension kindness", r"has no label kindness"),
    Case("locate/language-unknown", L + " --language xx", r"(language|no items)"),
    Case("locate/split-unknown", L + " --split sometimes", r"Unknown split 'sometimes'"),
    Case("locate/limit-negative", L + " --limit -1", r"--limit must be at least 1.*got -1"),
    Case("locate/limit-zero", L + " --limit 0", r"--limit must be at least 1"),
    Case("locate/top-k-zero", L + " -k 0", r"--top-k must be at least 1"),
    Case("locate/top-k-too-large", L + " -k 100000", r"--top-k 100000 is out of range.*144 neurons"),
    Case("locate/top-k-per-layer-too-large", L + " --rule per_layer -k 49", r"--top-k 49 per layer is out of range.*48"),
    Case("locate/method-unknown", L + " --method magic", r"Unknown --method 'magic'"),
    Case("locate/rule-unknown", L + " --rule magic", r"Unknown --rule 'magic'"),
    Case("locate/direction-unknown", L + " --direction foo", r"Unknown --direction 'foo'.*pole, opposite, both"),
    Case("locate/site-unknown", L + " --site residual", r"Unknown neuron site"),
    Case("locate/mode-unknown", L + " --mode dream", r"Unknown --mode 'dream'"),
    Case("locate/span-unknown", L + " --span middle", r"Unknown --span 'middle'"),
    Case("locate/folds-zero", L + " --folds 0", r"folds.*must be positive"),
    Case("locate/null-negative", L + " --null -1", r"--null must be 0 or more"),
    Case("locate/batch-tokens-zero", L + " --batch-tokens 0", r"--batch-tokens must be a positive number of tokens or auto"),
    Case("locate/device-unknown", L + " --device gpu", r"Unknown --device 'gpu'\. Use auto, cpu, cuda, cuda:N or mps"),
    Case("locate/device-map-unknown", L + " --device-map everywhere", r"Unknown --device-map 'everywhere'"),
    Case("ablate/device-unknown", A + " --device tpu", r"Unknown --device 'tpu'"),
    Case("locate/mixed-device-map", L + " --dtype bf16-mixed --device-map auto", r"--dtype bf16-mixed rounds the blocks' weights "
         r"where they are, but --device-map lets accelerate move"),
    Case("locate/max-new-tokens-zero", L + " --mode generate --max-new-tokens 0", r"--max-new-tokens must be positive"),
    Case("locate/threads-zero", L + " --threads 0", r"--threads must be at least 1"),
    Case("locate/request-batches-zero", L + " --request-batches 0", r"--request-batches must be at least 1"),
    Case("locate/resume-without-out", L + " --resume", r"--resume and --detach need --out"),
    Case("locate/detach-without-out", L + " --detach", r"--resume and --detach need --out"),
    # -- locate: the output directory ------------------------------------------------------------------------------
    Case("locate/out-not-empty", L + " --out {bad}/full-dir",
         r"full-dir already exists and is not a vneuron run\. Choose another --out, or move what it holds elsewhere first\.?$"),
    Case("locate/out-existing-run", L + " --out {run}", r"run already exists.*--from .*run with a new --out.*--force"),
    Case("locate/out-is-empty-file", L + " --out {bad}/empty.jsonl", r"--out .*empty.jsonl is a file, not a directory"),
    Case("locate/out-parent-is-file", L + " --out {bad}/notes.txt/run", r"Cannot create .*: .*notes.txt is a file"),
    Case("locate/out-read-only", L + " --out {bad}/read-only/run", r"Cannot write .*read-only/run: .*read-only is read-only",
         fault="read_only"),
    Case("locate/out-disk-full", L + " --out fresh-run", r"Not enough disk space for fresh-run: the run needs about", fault="disk_full"),
    Case("locate/force-on-foreign-dir", L + " --out {bad}/full-dir --force", r"not a vneuron run, so --force will not replace it"),
    # -- locate --from: re-selection never changes its run ---------------------------------------------------------
    Case("from/missing", "locate --from /nonexistent/run", r"Run directory /nonexistent/run does not exist"),
    Case("from/not-a-run", "locate --from {bad}/empty-dir", r"is not a vneuron run \(no manifest.json\)"),
    Case("from/manifest-not-json", "locate --from {bad}/run-manifest-not-json", r"manifest.json is not valid JSON"),
    Case("from/manifest-no-model", "locate --from {bad}/run-no-model", r"manifest.json has no 'model' entry"),
    Case("from/stats-cut", "locate --from {bad}/run-stats-cut -k 3 --out {bad}/never",
         r"stats.safetensors is not readable vneuron statistics.*truncated or corrupt"),
    Case("from/stats-missing", "locate --from {bad}/orphan -k 3 --out {bad}/never", r"re-selects from statistics in .*, which are missing"),
    Case("from/stats-changed", "locate --from {bad}/stale-child -k 3 --out {bad}/never", r"have changed since"),
    Case("from/not-locate", "locate --from {bad}/ablate-run", r"is not a locate run \(it is a ablate run\)"),
    Case("from/site-contradicts", "locate --from {run} --site down_in --out {bad}/never",
         r"--site down_in contradicts --from .*--site gate"),
    Case("from/mode-contradicts", "locate --from {run} --mode generate --out {bad}/never", r"--mode generate contradicts"),
    Case("from/language-contradicts", "locate --from {run} --language zh --out {bad}/never", r"--language zh contradicts"),
    Case("from/split-contradicts", "locate --from {run} --split train --out {bad}/never", r"--split train contradicts"),
    Case("from/folds-contradicts", "locate --from {run} --folds 3 --out {bad}/never", r"--folds 3 contradicts"),
    Case("from/max-new-tokens-prompt-run", "locate --from {run} --max-new-tokens 8 --out {bad}/never", r"--max-new-tokens has no effect"),
    Case("from/model-given", "locate --from {run} --model {tiny} --out {bad}/never", r"--model has no effect with --from"),
    Case("from/dataset-given", "locate --from {run} --dataset {corpus} --out {bad}/never", r"--dataset has no effect with --from"),
    Case("from/null-given", "locate --from {run} --null 2 --out {bad}/never", r"--null has no effect with --from"),
    # -- locate: the residual means and the probes (a run from before them: only a new capture adds them) ----------------
    Case("from/no-residual-probe-l2", "locate --from {bad}/run-no-residual --probe-l2 0.5 -k 3 --out {bad}/never",
         r"located before residual means were recorded.*Rerun `vneuron locate`.*`--from` cannot add them"),
    Case("from/no-residual-probe-width", "locate --from {bad}/run-no-residual --probe-width 16 -k 3 --out {bad}/never",
         r"located before residual means were recorded"),
    Case("from/residual-missing", "locate --from {bad}/run-residual-gone --probe-l2 0.5 -k 3 --out {bad}/never",
         r"records residual statistics in .*residual.safetensors, which is missing"),
    Case("from/residual-cut", "locate --from {bad}/run-residual-cut --probe-l2 0.5 -k 3 --out {bad}/never",
         r"not readable vneuron residual statistics.*truncated or corrupt"),
    Case("from/probe-width-contradicts", "locate --from {run} --probe-width 16 -k 3 --out {bad}/never",
         r"--probe-width 16 contradicts --from .*--probe-width 1024"),
    Case("locate/probe-width-zero", L + " --probe-width 0", r"--probe-width must be at least 1"),
    Case("locate/probe-l2-zero", L + " --probe-l2 0", r"--probe-l2 must be a positive number"),
    Case("locate/probe-l2-nan", L + " --probe-l2 nan", r"--probe-l2 must be a positive number"),
    Case("from/remote-given", "locate --from {run} --host local --out {bad}/never", r"--host has no effect with --from"),
    Case("from/dimension-unknown", "locate --from {run} --dimension kindness --out {bad}/never", r"has no dimension kindness"),
    Case("from/top-k-too-large", "locate --from {run} -k 100000 --out {bad}/never", r"--top-k 100000 is out of range"),
    Case("from/out-is-parent", "locate --from {run} -k 3 --out {run}", r"would write over or inside the run it re-selects from"),
    Case("from/out-inside-parent", "locate --from {run} -k 3 --out {run}/sub", r"would write over or inside"),
    Case("from/out-existing", "locate --from {run} -k 3 --out {bad}/full-dir",
         r"full-dir already exists and is not a vneuron run\. Choose another --out, or move what it holds elsewhere first\.?$"),
    Case("from/out-existing-run", "locate --from {run} -k 3 --out {bad}/run-st",
         r"run-st already exists\. Choose another --out, or add --force"),
    # -- usage errors: one line too --------------------------------------------------------------------------------
    Case("usage/top-k-not-a-number", "locate --top-k abc", r"Invalid value for '--top-k'.*integer.*See: vneuron locate --help"),
    Case("usage/unknown-option", "locate --frobnicate", r"No such option: --frobnicate"),
    Case("usage/missing-value", "locate --out", r"Option '--out' requires an argument"),
    Case("usage/extra-argument", "locate extra", r"unexpected extra argument.*\(extra\)"),
    Case("usage/unknown-command", "frobnicate", r"No such command 'frobnicate'"),
    Case("usage/console-script", "locate --limit many", r"Invalid value for '--limit'", subprocess=True),
    Case("usage/ablate-top-k", "ablate {run} --top-k abc", r"Invalid value for '--top-k'"),
    Case("usage/ablate-extra", "ablate {run} {run}", r"unexpected extra argument"),
    Case("usage/steer-controls", "steer {run} --controls many", r"Invalid value for '--controls'"),
    # -- ablate ----------------------------------------------------------------------------------------------------
    Case("ablate/run-missing", "ablate /nonexistent/run -q", r"Run directory /nonexistent/run does not exist"),
    Case("ablate/not-a-run", "ablate {bad}/empty-dir -q", r"not a vneuron run"),
    Case("ablate/manifest-not-json", "ablate {bad}/run-manifest-not-json -q", r"not valid JSON"),
    Case("ablate/manifest-no-model", "ablate {bad}/run-no-model -q", r"has no 'model' entry"),
    Case("ablate/stats-cut", "ablate {bad}/run-stats-cut -q", r"stats.safetensors is not readable vneuron statistics"),
    Case("ablate/neurons-cut", "ablate {bad}/run-neurons-cut -q", r"conservation.safetensors is not a readable vneuron neuron set"),
    Case("ablate/no-neuron-sets", "ablate {bad}/run-no-sets -q", r"holds no neuron sets"),
    Case("ablate/not-locate", "ablate {bad}/ablate-run -q", r"is not a locate run"),
    Case("ablate/stats-missing", "ablate {bad}/orphan -q", r"which are missing"),
    Case("ablate/top-k-huge", A + " --top-k 100000000", r"--top-k 100000000 is more than the run located \(5 neurons.*pick 1..5"),
    Case("ablate/top-k-zero", A + " --top-k 0", r"--top-k must be at least 1"),
    Case("ablate/mode-unknown", A + " --mode melt", r"Unknown edit --mode 'melt'"),
    Case("ablate/controls-negative", A + " --controls -1", r"--controls must be at least 0"),
    Case("ablate/split-unknown", A + " --split later", r"Unknown --split 'later'"),
    Case("ablate/limit-negative", A + " --limit -1", r"--limit must be at least 1"),
    Case("ablate/generations-negative", A + " --generations -1", r"--generations must be at least 0"),
    Case("ablate/dimension-unknown", A + " --dimension kindness", r"no neuron set for kindness"),
    Case("ablate/choice-unknown", A + " --choice vibes", r"Unknown --choice 'vibes'"),
    Case("ablate/out-not-empty", A + " --out {bad}/full-dir", r"full-dir already exists.*another --out"),
    Case("ablate/out-file", A + " --out {bad}/notes.txt", r"notes.txt is a file, not a directory"),
    Case("ablate/out-parent-file", A + " --out {bad}/notes.txt/x", r"notes.txt is a file"),
    Case("ablate/out-disk-full", A, r"Not enough disk space", fault="disk_full"),
    Case("ablate/pvq-missing", A + " --pvq /nonexistent/pvq.csv", r"Inventory /nonexistent/pvq.csv does not exist"),
    Case("ablate/model-other", A + " --model {bad}/other-model", r"not the one the run located neurons in"),
    # -- the direction baselines: a layer the model lacks, a run from before residual means, a layer with them off
    Case("ablate/direction-layer-high", A + " --direction-layer 3", r"Direction layer 3 is out of range: .* layers 0 to 2"),
    Case("ablate/direction-layer-negative", A + " --direction-layer -1", r"Direction layer -1 is out of range"),
    Case("ablate/direction-layer-old-run", "ablate {bad}/run-no-residual -q --controls 1 --split all --direction-layer 1",
         r"--direction-layer 1 edits along the pole's mean difference, but .*located before residual means were recorded.*"
         r"Rerun `vneuron locate`.*`--from` cannot add them"),
    Case("ablate/direction-layer-off", A + " --no-directions --direction-layer 1", r"--direction-layer 1 is set, but the direction "
         r"baselines are switched off"),
    Case("steer/direction-layer-high", S + " --direction-layer 7", r"Direction layer 7 is out of range"),
    Case("ablate/direction-controls-negative", A + " --direction-controls -1", r"--direction-controls must be ≥ 0, got -1"),
    Case("ablate/projected-out-off", A + " --no-directions --projected-out", r"--projected-out is set, but the direction "
         r"baselines are switched off"),
    Case("ablate/direction-matrix-no-matrix", A + " --no-cross-values --direction-matrix", r"--direction-matrix runs the "
         r"direction baselines on the cross-value matrix's columns, but the cross-value matrix is switched off"),
    Case("ablate/direction-matrix-off", A + " --no-directions --direction-matrix", r"--direction-matrix runs .* but the "
         r"direction baselines are switched off"),
    Case("ablate/locate-first-bad-model", "ablate --model no-such-model -q", r"Unknown model 'no-such-model'"),
    Case("ablate/locate-first-out-exists", "ablate --model {tiny} --out {bad}/full-dir -q", r"full-dir already exists"),
    Case("steer/locate-first-out-file", "steer --model {tiny} --out {bad}/notes.txt -q", r"notes.txt is a file, not a directory"),
    # -- steer -----------------------------------------------------------------------------------------------------
    Case("steer/gamma-words", S + " --gamma a,b", r"Cannot read --gamma 'a,b'"),
    Case("steer/gamma-empty", S + " --gamma ,", r"Cannot read --gamma"),
    Case("steer/mode-zero", S + " --mode zero", r"Steering needs --mode scale or add"),
    Case("steer/run-missing", "steer /nonexistent/run -q", r"does not exist"),
    Case("steer/stats-cut", "steer {bad}/run-stats-cut -q", r"not readable vneuron statistics"),
    Case("steer/neurons-cut", "steer {bad}/run-neurons-cut -q", r"not a readable vneuron neuron set"),
    Case("steer/manifest-no-model", "steer {bad}/run-no-model -q", r"has no 'model' entry"),
    Case("steer/top-k-huge", S + " --top-k 100000000", r"--top-k 100000000 is more than the run located"),
    Case("steer/out-file", S + " --out {bad}/notes.txt", r"is a file, not a directory"),
    Case("steer/controls-negative", S + " --controls -1", r"--controls must be at least 0"),
    Case("steer/choice-unknown", S + " --choice vibes", r"Unknown --choice"),
    # -- ablate/steer: outside evaluation data, templates, sequential controls, --dry-run, --json -------------------
    Case("ablate/eval-dataset-missing", A + " --eval-dataset /nonexistent/bench.csv", r"/nonexistent/bench.csv does not exist"),
    Case("ablate/eval-dataset-fake-xlsx", A + " --eval-dataset {bad}/fake.xlsx", r"not a readable .xlsx workbook"),
    Case("ablate/eval-columns-unparsable", A + " --eval-dataset {corpus} --eval-columns scenario", r"Cannot read .*'scenario'.*ours=yours"),
    Case("ablate/map-unparsable", A + " --eval-dataset {corpus} --map caring", r"Cannot read --map 'caring'"),
    Case("ablate/map-without-eval-dataset", A + " --map caring=self_transcendence",
         r"--map describes an outside evaluation file, but no --eval-dataset was given"),
    Case("ablate/eval-split-unknown", A + " --eval-dataset {corpus} --eval-split later", r"Unknown --eval-split 'later'"),
    Case("ablate/dataset-with-run", A + " --dataset {corpus}", r"names the corpus to locate on.*--eval-dataset"),
    Case("ablate/template-unknown", A + " --template fancy", r"template 'fancy'"),
    Case("ablate/template-no-option", A + " --template 'Q: {{scenario}}'", r"option"),
    Case("ablate/pvq-template-unknown", A + " --pvq-template fancy", r"template 'fancy'"),
    Case("ablate/test-fraction-too-large", A + " --test-fraction 1.5", r"--test-fraction must be in \[0, 1\), got 1.5"),
    Case("ablate/stop-after-negative", A + " --stop-after -1", r"--stop-after must be ≥ 0"),
    Case("ablate/tail-unknown", A + " --tail sideways", r"Unknown --tail 'sideways'"),
    Case("ablate/dry-run-without-run", "ablate --model {tiny} --dry-run -q", r"--dry-run needs a locate run directory"),
    Case("ablate/dry-run-bad-option", A + " --dry-run --mode melt", r"Unknown edit --mode 'melt'"),
    Case("ablate/json-bad-option", A + " --json --top-k 100000000", r"--top-k 100000000 is more than the run located"),
    Case("steer/stop-after-negative", S + " --stop-after -1", r"--stop-after must be ≥ 0"),
    Case("steer/template-unknown", S + " --template fancy", r"template 'fancy'"),
    Case("steer/map-unparsable", S + " --eval-dataset {corpus} --map caring", r"Cannot read --map 'caring'"),
    Case("steer/eval-dataset-missing", S + " --eval-dataset /nonexistent/bench.jsonl", r"does not exist"),
    Case("steer/dry-run-gamma-words", S + " --dry-run --gamma a,b", r"Cannot read --gamma 'a,b'"),
    Case("steer/json-mode-zero", S + " --json --mode zero", r"Steering needs --mode scale or add"),
    Case("locate/template-unknown", L + " --template fancy", r"template 'fancy'"),
    Case("locate/dry-run-top-k-zero", L + " --dry-run -k 0", r"--top-k must be at least 1"),
    Case("locate/json-out-existing-run", L + " --json --out {run}", r"run already exists"),
    # -- checks before work, for every pole at once; a dry run makes exactly the real command's checks -------------
    Case("ablate/pole-without-items", "ablate {run} -q --controls 1",
         r"No evaluation items touch 'conservation', 'openness_to_change' in split 'test'.*--split all.*--dimension"),
    Case("steer/pole-without-items", "steer {run} -q --controls 1", r"No evaluation items touch 'conservation', 'openness_to_change'"),
    Case("ablate/dry-run-pole-without-items", "ablate {run} -q --controls 1 --dry-run", r"No evaluation items touch 'conservation'"),
    Case("steer/dry-run-pole-without-items", "steer {run} -q --dry-run", r"No evaluation items touch 'conservation'"),
    Case("ablate/dry-run-eval-dataset-missing", A + " --dry-run --eval-dataset /nonexistent/bench.csv",
         r"Evaluation corpus /nonexistent/bench.csv does not exist.*as --eval-dataset, or drop it"),
    Case("steer/dry-run-mode-zero", S + " --dry-run --mode zero", r"Steering needs --mode scale or add"),
    Case("ablate/dry-run-judge-unknown", A + " --dry-run --generations 2 --judge oracle", r"Unknown judge 'oracle'"),
    Case("steer/dry-run-judge-malformed", S + " --dry-run --generations 2 --judge openai:gpt", r"Cannot read the judge 'openai:gpt'"),
    Case("ablate/dry-run-out-existing", A + " --dry-run --out {bad}/full-dir", r"full-dir already exists"),
    Case("steer/dry-run-top-k-huge", S + " --dry-run --top-k 100000000", r"--top-k 100000000 is more than the run located"),
    Case("ablate/dry-run-map-unknown-pole", A + " --dry-run --eval-dataset {corpus} --map self_transcendence=kindness",
         r"--map maps to 'kindness', which the run has no pole for"),
    Case("locate/dry-run-out-existing-run", L + " --dry-run --out {run}", r"run already exists.*--from .*--force"),
    Case("locate/dry-run-top-k-too-large", L + " --dry-run -k 100000", r"--top-k 100000 is out of range"),
    Case("locate/dry-run-disk-full", L + " --dry-run --out fresh-run", r"Not enough disk space", fault="disk_full"),
    Case("locate/dry-run-from", "locate --from {run} --dry-run", r"--dry-run has nothing to plan with --from"),
    # -- messages that say what is true ----------------------------------------------------------------------------
    Case("ablate/eval-dataset-missing-is-named", A + " --eval-dataset /nonexistent/bench.csv",
         r"^error: Evaluation corpus /nonexistent/bench.csv does not exist\. Pass an existing file or directory as --eval-dataset"),
    Case("ablate/map-onto-a-pole-the-run-lacks", A + " --eval-dataset {corpus} --map self_transcendence=kindness",
         r"--map maps to 'kindness', which the run has no pole for\. Map to the run's poles: conservation"),
    Case("ablate/map-hint-names-the-files-labels", A + " --eval-dataset {bad}/kindness.jsonl --dimension conservation",
         r"its labels: kind, unkind\).*--map kind=conservation"),
    Case("report/out-under-a-file", "report {run} -o {bad}/notes.txt/r.html -q --cards 0",
         r"Cannot write .*notes.txt/r.html: .*notes.txt is a file, not a directory\. Choose an -o whose parent"),
    Case("plant/profile-all-zero", "plant --model {tiny} --out {bad}/never --profile 0,0,0 -q",
         r"--profile '0,0,0' gives every layer weight 0.*positive weight"),
    Case("remote/unreachable-claims-nothing-kept", A + " " + HOST, r"is unreachable.*then rerun", fault="no_backoff"),
    Case("ablate/model-moved", "ablate {bad}/run-model-moved -q --split all --controls 1",
         r"The model this run located with \(.*gone-model\) is no longer there.*--model"),
    Case("locate/split-emptied-by-hash", L + " --dataset {bad}/all-test.jsonl",
         r"has nothing in split 'train' \(every row is in another split\).*--split all"),
    # -- every message names what the user types: another command's flag with that command, a study's own flags --------
    Case("ablate/top-k-huge-names-locate", A + " --top-k 100000000",
         r"re-select more into a new run and study that: vneuron locate --from \S+/run --top-k 100000000 --out NEW_RUN\.?$"),
    Case("steer/top-k-huge-names-locate", S + " --top-k 100000000", r"study that: vneuron locate --from \S+/run --top-k 100000000 --out"),
    Case("ablate/eval-columns-wrong", A + " --eval-dataset {bad}/missing-columns.jsonl --eval-columns dilemma=Question",
         r"missing-columns.jsonl: missing columns .*map them with --eval-columns ours=yours"),
    Case("ablate/eval-split-empty", A + " --eval-dataset {bad}/all-test.jsonl --eval-split train",
         r"all-test.jsonl has no paired scenarios in split 'train'.*use --eval-split all or a paired corpus"),
    Case("locate/incomplete-rows-note-names-the-flag", L + " --dataset {bad}/incomplete.csv --split all --language zh --out here",
         r"Note: incomplete.csv: left out 2 incomplete rows \(an empty cell; --strict refuses them\)", code=0),
    # -- a report that cannot draw what was asked says so on the terminal, and writes the rest -------------------------
    Case("report/cards-examples-cut", "report {bad}/run-examples-cut -o report.html --cards 1 -q",
         r"warning: .*run-examples-cut: Neuron cards skipped: .*examples.safetensors is not .*readable", code=0),
    # -- one writer per output: a second command is refused at once, naming the first --------------------------------
    Case("locate/out-held", L + " --out {bad}/held-run",
         r"held-run is being written by another vneuron command \(process \d+, since .*: held-by-test\)\. Wait for it to end, or "
         r"choose another --out"),
    Case("locate/dry-run-out-held", L + " --dry-run --out {bad}/held-run", r"held-run is being written by another vneuron command"),
    Case("from/out-held", "locate --from {run} -k 3 --out {bad}/held-run", r"held-run is being written by another vneuron command"),
    Case("ablate/out-held", A + " --out {bad}/held-run", r"held-run is being written by another vneuron command \(process \d+"),
    Case("steer/out-held", S + " --out {bad}/held-run", r"held-run is being written by another vneuron command"),
    Case("ablate/locate-first-out-held", "ablate --model {tiny} --out {bad}/held-run -q", r"held-run is being written by another"),
    Case("plant/out-held", "plant --model {tiny} --out {bad}/held-run -q", r"held-run is being written by another vneuron command"),
    Case("power/out-held", "power --model {tiny} --out {bad}/held-run -q", r"held-run is being written by another vneuron command"),
    Case("report/out-held", "report {run} -o {bad}/held.html -q --cards 0",
         r"held.html is being written by another vneuron command.*choose another -o"),
    # -- plant's final write goes through the rescue every run directory has ---------------------------------------
    Case("plant/final-write-disk-full", "plant --model {tiny} --dataset {corpus} --out {bad}/never --k 12 --steps 1 --eval-every 1 "
         "--train-limit 4 --test-limit 1 --report-limit 1 --read-passes 1 -q",
         r"Could not write \S+/never \(No space left on device\); the planted model, its neurons and its manifest are kept in "
         r"\S+/vneuron-rescued-never-\S+\. Fix the disk problem, then move that directory into place: mv ", fault="plant_disk_full"),
    # -- published files with incomplete rows: a note by default, refused with --strict ----------------------------
    Case("locate/dataset-incomplete-strict", L + " --dataset {bad}/incomplete.csv --strict",
         r"incomplete.csv, row 3: empty 'Action1', and 1 more incomplete row.*fill them in"),
    Case("locate/dataset-all-incomplete", L + " --dataset {bad}/all-incomplete.csv",
         r"row 2: empty 'Context' \(no complete row is left\)"),
    Case("ablate/eval-dataset-incomplete-strict", A + " --eval-dataset {bad}/incomplete.csv --strict",
         r"incomplete.csv, row 3: empty 'Action1'"),
    # -- report ----------------------------------------------------------------------------------------------------
    Case("report/no-run", "report", r"Missing argument 'RUN_DIR...'"),
    Case("report/run-missing", "report /nonexistent/run -q", r"/nonexistent/run does not exist"),
    Case("report/not-a-run", "report {bad}/empty-dir -q", r"not a vneuron run"),
    Case("report/manifest-not-json", "report {bad}/run-manifest-not-json -q --cards 0", r"not valid JSON"),
    Case("report/unknown-kind", "report {bad}/unknown-kind -q --cards 0", r"is a 'mystery' run, which vneuron report cannot show"),
    Case("report/out-not-html", "report {run} -o {bad}/report.txt -q --cards 0", r"should end in .html"),
    Case("report/out-is-dir", "report {run} -o {bad}/dir.html -q --cards 0", r"dir.html is a directory"),
    Case("report/out-parent-file", "report {run} -o {bad}/notes.txt/report.html -q --cards 0", r"notes.txt is a file"),
    Case("report/cards-negative", "report {run} --cards -1 -q", r"--cards must be at least 0"),
    Case("report/threads-zero", "report {run} --threads 0 -q", r"--threads must be at least 1"),
    Case("report/model-other", "report {run} --model {bad}/other-model -q -o {bad}/never.html", r"not the one the run located neurons in"),
    # -- compare ---------------------------------------------------------------------------------------------------
    Case("compare/one-run", "compare {run}", r"compare needs at least two runs"),
    Case("compare/run-missing", "compare {run} /nonexistent/run", r"/nonexistent/run does not exist"),
    Case("compare/not-locate", "compare {run} {bad}/ablate-run", r"is a 'ablate' run; compare takes locate runs"),
    Case("compare/manifest-not-json", "compare {run} {bad}/run-manifest-not-json", r"not valid JSON"),
    Case("compare/pole-in-one-run", "compare {run} {bad}/run-st", r"Pole 'conservation' is only in .*run.*--dimension"),
    Case("compare/dimension-in-one-run", "compare {run} {bad}/run-st --dimension conservation",
         r"Pole 'conservation' is not in run .*run-st"),
    Case("compare/dimension-unknown", "compare {run} {bad}/run-st --dimension kindness", r"Pole 'kindness' is not in run"),
    Case("compare/out-is-dir", "compare {run} {bad}/run-st --dimension self_transcendence -o {bad}/full-dir", r"full-dir is a directory"),
    Case("compare/out-parent-file", "compare {run} {bad}/run-st --dimension self_transcendence -o {bad}/notes.txt/c.csv",
         r"notes.txt is a file"),
    Case("compare/json-bad-run", "compare {run} /nonexistent/run --json", r"does not exist"),
    # -- show ------------------------------------------------------------------------------------------------------
    Case("show/neuron-unparsable", "show {run} abc -q", r"Cannot read neuron 'abc'.*LAYER:UNIT"),
    Case("show/neuron-missing", "show {run}", r"Missing argument 'LAYER:UNIT'"),
    Case("show/layer-outside", "show {run} 99:0 -q", r"Neuron 99:0 is outside the model \(3 layers × 48\)"),
    Case("show/unit-outside", "show {run} 0:48 -q", r"Neuron 0:48 is outside the model"),
    Case("show/run-missing", "show /nonexistent/run 0:1 -q", r"does not exist"),
    Case("show/not-locate", "show {bad}/ablate-run 0:1 -q", r"not a locate run"),
    Case("show/texts-zero", "show {run} 0:1 --texts 0 -q", r"--texts must be at least 1"),
    Case("show/batch-tokens-zero", "show {run} 0:1 --batch-tokens 0 -q", r"--batch-tokens must be at least 1"),
    Case("show/model-other", "show {run} 0:1 --model {bad}/other-model -q", r"not the one the run located neurons in"),
    Case("show/json-bad-neuron", "show {run} 0-1 --json -q", r"Cannot read neuron"),
    # -- plant -----------------------------------------------------------------------------------------------------
    Case("plant/no-out", "plant --model {tiny} -q", r"Missing option '--out'"),
    Case("plant/out-existing", "plant --model {tiny} --out {bad}/full-dir -q", r"full-dir already exists"),
    Case("plant/out-file", "plant --model {tiny} --out {bad}/notes.txt -q", r"notes.txt .*(is a file|already exists)"),
    Case("plant/k-too-large", "plant --model {tiny} --out {bad}/never --k 100000 -q", r"100000.*144"),
    Case("plant/k-zero", "plant --model {tiny} --out {bad}/never --k 0 -q", r"--k must be at least 1"),
    Case("plant/mechanism-unknown", "plant --model {tiny} --out {bad}/never --mechanism boost -q", r"Unknown --mechanism 'boost'"),
    Case("power/mechanism-unknown", "power --model {tiny} --out {bad}/never --mechanism boost -q", r"Unknown --mechanism 'boost'"),
    Case("plant/dimension-unknown", "plant --model {tiny} --out {bad}/never --dimension kindness -q", r"kindness"),
    Case("plant/neurons-missing", "plant --model {tiny} --out {bad}/never --neurons /nonexistent/set.safetensors -q", r"does not exist"),
    Case("plant/neurons-cut", "plant --model {tiny} --out {bad}/never --neurons {bad}/run-neurons-cut/neurons/conservation.safetensors -q",
         r"not a readable vneuron neuron set"),
    Case("plant/profile-unknown", "plant --model {tiny} --out {bad}/never --profile magic -q", r"--profile 'magic'"),
    Case("plant/profile-wrong-length", "plant --model {tiny} --out {bad}/never --profile 1,1 --k 5 -q", r"--profile"),
    Case("plant/read-context-negative", "plant --model {tiny} --out {bad}/never --read-context -1 -q",
         r"--read-context must be a positive number"),
    Case("plant/read-background-not-a-share", "plant --model {tiny} --out {bad}/never --read-background 1.5 -q",
         r"--read-background must lie strictly between 0 and 1, got 1.5"),
    Case("plant/fit-neutral-missing", "plant --model {tiny} --out {bad}/never --fit-neutral /nonexistent/prose.txt -q",
         r"--fit-neutral /nonexistent/prose.txt does not exist"),
    Case("plant/read-passes-zero", "plant --model {tiny} --out {bad}/never --read-passes 0 -q", r"--read-passes must be at least 1"),
    Case("plant/steps-zero", "plant --model {tiny} --out {bad}/never --steps 0 -q", r"steps"),
    Case("plant/lr-negative", "plant --model {tiny} --out {bad}/never --lr -1 -q", r"lr"),
    Case("plant/dataset-missing", "plant --model {tiny} --out {bad}/never --dataset /nonexistent/c.jsonl -q", r"does not exist"),
    Case("plant/model-unknown", "plant --model no-such-model --out {bad}/never -q", r"Unknown model 'no-such-model'"),
    # -- power -----------------------------------------------------------------------------------------------------
    Case("power/k-words", "power --model {tiny} --out {bad}/never --k a,b -q", r"Cannot read --k 'a,b'"),
    Case("power/sizes-zero", "power --model {tiny} --out {bad}/never --sizes 0 -q", r"--k and --sizes need positive numbers"),
    Case("power/k-too-large", "power --model {tiny} --out {bad}/never --k 100000 -q", r"100000.*144"),
    Case("power/mode-clamp", "power --model {tiny} --out {bad}/never --mode clamp -q", r"Power ablates with --mode zero or mean"),
    Case("power/controls-negative", "power --model {tiny} --out {bad}/never --controls -1 -q", r"--controls must be at least 0"),
    Case("power/out-existing", "power --model {tiny} --out {bad}/full-dir -q", r"full-dir already exists"),
    Case("power/read-passes-zero", "power --model {tiny} --out {bad}/never --read-passes 0 -q", r"--read-passes must be at least 1"),
    Case("power/planted-unparsable", "power --model {tiny} --out {bad}/never --planted 200 -q", r"Cannot read --planted '200'"),
    Case("power/planted-missing", "power --model {tiny} --out {bad}/never --planted 5=/nonexistent/planted --k 5 -q", r"does not exist"),
    Case("power/planted-not-planted", "power --model {tiny} --out {bad}/never --planted 5={tiny} --k 5 -q",
         r"is not a planted model \(no plant/manifest.json\).*vneuron plant"),
    # -- datasets, models, doctor ----------------------------------------------------------------------------------
    Case("datasets/unknown-option", "datasets --all", r"No such option: --all"),
    Case("datasets/extra-argument", "datasets builtin", r"unexpected extra argument"),
    Case("models/host-closed-port", "models " + HOST, r"NDIF host http://127.0.0.1:\d+ is unreachable"),
    Case("models/host-not-url", "models --host ndif.example", r"is not an http\(s\) URL"),
    Case("models/unknown-option", "models --all", r"No such option"),
    Case("doctor/host-not-url", "doctor --host ftp://127.0.0.1", r"is not an http\(s\) URL"),
    Case("doctor/unknown-option", "doctor --verbose", r"No such option"),
    Case("doctor/extra-argument", "doctor now", r"unexpected extra argument"),
    # -- remote ----------------------------------------------------------------------------------------------------
    Case("remote/locate-closed-port", L + " " + HOST + " --out {bad}/never", r"is unreachable", fault="no_backoff"),
    Case("remote/ablate-closed-port", A + " " + HOST, r"is unreachable", fault="no_backoff"),
    Case("remote/steer-closed-port", S + " " + HOST, r"is unreachable", fault="no_backoff"),
    Case("remote/locate-host-not-url", L + " --host 127.0.0.1:80", r"is not an http\(s\) URL"),
    Case("remote/no-api-key", L + " --remote", r"No NDIF API key", fault="public_ndif_no_key"),
]


# -- the world the cases run in ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_dir):
    """Broken files, a tiny finished run and its damaged copies; built once (a few seconds)."""
    root = tmp_path_factory.mktemp("bad-inputs")
    bad = root / "bad"
    bad.mkdir()
    tiny = tiny_dir("llama")
    cache = root / "cache"
    cache.mkdir()
    _broken_models(bad, tiny, tiny_dir("qwen2"))
    _broken_corpora(bad)
    run = root / "run"
    made = runner.invoke(app, ["locate", "--model", str(tiny), "--dataset", str(EXAMPLES / "corpus.jsonl"), "--split", "all",
                               "-k", "5", "--out", str(run), "-q"])
    assert made.exit_code == 0, made.output
    _broken_runs(bad, run)
    with socket.socket() as s:  # a free loopback port, closed again: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    values = {"tiny": str(tiny), "corpus": str(EXAMPLES / "corpus.jsonl"), "texts": str(EXAMPLES / "texts.csv"),
              "run": str(run), "bad": str(bad), "port": str(port)}
    holder = _holder(bad / "held-run", bad / "held.html")
    try:
        yield {"values": values, "cache": cache, "watched": [root, tiny, EXAMPLES], "rescue": tmp_path_factory.mktemp("rescue")}
    finally:
        holder.kill()
        holder.wait()


def _holder(*outputs: Path) -> subprocess.Popen:
    """Another process that claims ``outputs`` as a command writing them would, and holds them until it is killed."""
    code = ("import sys; from vneuron.runtime import claims; from vneuron.runtime.store import recording_command\n"
            "with recording_command(['held-by-test']):\n"
            f"    claims.one_writer(lambda: [claims.claim(p) for p in {[str(o) for o in outputs]!r}] and print('held', flush=True)"
            " or sys.stdin.read())()\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def _broken_models(bad: Path, tiny: Path, other: Path) -> None:
    import numpy as np
    from gguf import GGUFWriter

    (bad / "text.gguf").write_text("this is not a model\n")
    writer = GGUFWriter(str(bad / "tensor.gguf"), "llama")  # a valid GGUF holding one tensor and no model
    writer.add_tensor("blob", np.arange(4096, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    data = (bad / "tensor.gguf").read_bytes()
    (bad / "header-cut.gguf").write_bytes(data[:40])
    (bad / "data-cut.gguf").write_bytes(data[: len(data) - 1000])
    (bad / "empty-dir").mkdir()
    (bad / "notes.txt").write_text("notes\n")
    for name in ("no-tokenizer", "config-not-json", "config-no-type", "bert", "weights-cut", "tokenizer-cut"):
        (bad / name).mkdir()
    shutil.copy(tiny / "config.json", bad / "no-tokenizer" / "config.json")
    shutil.copytree(tiny, bad / "no-weights", ignore=shutil.ignore_patterns("*.safetensors"))  # config and tokenizer only
    (bad / "config-not-json" / "config.json").write_text("{not json")
    (bad / "config-no-type" / "config.json").write_text(json.dumps({"hidden_size": 8}))
    (bad / "bert" / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    for name in ("weights-cut", "tokenizer-cut"):
        for f in tiny.iterdir():
            shutil.copy(f, bad / name / f.name)
    weights = bad / "weights-cut" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    (bad / "tokenizer-cut" / "tokenizer.json").write_text('{"version": "1.0", "model": {')
    shutil.copytree(other, bad / "other-model")
    make_tokenizer().save_pretrained(bad / "other-model")


def _broken_corpora(bad: Path) -> None:
    (bad / "missing-columns.jsonl").write_text('{"scenario": "x", "option_pole": "a"}\n')
    good = (EXAMPLES / "corpus.jsonl").read_text().splitlines()
    (bad / "bad-line.jsonl").write_text(good[0] + "\n{oops\n")
    (bad / "empty.jsonl").write_text("")
    (bad / "corpus.docx").write_text("scenario\n")
    (bad / "missing-columns.csv").write_text("scenario,option_pole\nx,a\n")
    (bad / "fake.xlsx").write_text("not a workbook")
    row = json.loads(good[0])
    row["split"] = "sometimes"
    (bad / "bad-split.jsonl").write_text(json.dumps(row) + "\n")
    (bad / "full-dir").mkdir()
    (bad / "full-dir" / "keep.txt").write_text("mine")
    (bad / "read-only").mkdir()
    (bad / "dir.html").mkdir()
    (bad / "all-test.jsonl").write_text("".join(json.dumps({**json.loads(line), "split": "test"}) + "\n" for line in good))
    kind = {"scenario": "s", "option_pole": "a", "option_opposite": "b", "dimension": "kind", "opposite": "unkind"}
    (bad / "kindness.jsonl").write_text("".join(json.dumps({**kind, "id": f"k{n}", "scenario": f"s{n}"}) + "\n" for n in range(3)))
    cvoice = ["Type,Context,Action1,Action2", "友善 vs 效率,情境一,帮忙,走开", "友善 vs 效率,情境二,,走开", "友善 vs 效率,,帮忙,走开",
              "友善 vs 效率,情境四,帮忙,走开"]
    (bad / "incomplete.csv").write_text("\n".join(cvoice) + "\n", encoding="utf-8")
    (bad / "all-incomplete.csv").write_text("Type,Context,Action1,Action2\n友善 vs 效率,,帮忙,走开\n", encoding="utf-8")


def _broken_runs(bad: Path, run: Path) -> None:
    def copy(name: str) -> Path:
        shutil.copytree(run, bad / name)
        return bad / name

    (copy("run-manifest-not-json") / "manifest.json").write_text("{")
    manifest = json.loads((run / "manifest.json").read_text())
    old = copy("run-no-residual")  # as located before residual means were recorded
    (old / "residual.safetensors").unlink()
    before = {k: v for k, v in manifest.items() if k not in ("residual", "probes")}
    before["capture_key"] = {k: v for k, v in manifest["capture_key"].items() if k != "probe_width"}
    (old / "manifest.json").write_text(json.dumps(before))
    (copy("run-residual-gone") / "residual.safetensors").unlink()
    cut = copy("run-residual-cut") / "residual.safetensors"
    cut.write_bytes(cut.read_bytes()[:500])
    (copy("run-no-model") / "manifest.json").write_text(json.dumps({k: v for k, v in manifest.items() if k != "model"}))
    stats = copy("run-stats-cut") / "stats.safetensors"
    stats.write_bytes(stats.read_bytes()[:3000])
    neurons = copy("run-neurons-cut") / "neurons" / "conservation.safetensors"
    neurons.write_bytes(neurons.read_bytes()[:100])
    shutil.rmtree(copy("run-no-sets") / "neurons")
    examples = copy("run-examples-cut") / "examples.safetensors"
    examples.write_bytes(examples.read_bytes()[:200])
    (copy("ablate-run") / "manifest.json").write_text(json.dumps({**manifest, "kind": "ablate"}))
    (copy("unknown-kind") / "manifest.json").write_text(json.dumps({**manifest, "kind": "mystery"}))
    moved = {**manifest, "model": {**manifest["model"], "spec": "gone-model", "path": str(bad / "gone-model")}}
    (copy("run-model-moved") / "manifest.json").write_text(json.dumps(moved))
    assert runner.invoke(app, ["locate", "--from", str(run), "--dimension", "self_transcendence", "-k", "3",
                               "--out", str(bad / "run-st"), "-q"]).exit_code == 0  # one pole of the run's four
    for parent, child in (("gone-parent", "orphan"), ("changed-parent", "stale-child")):
        copy(parent)
        assert runner.invoke(app, ["locate", "--from", str(bad / parent), "-k", "3", "--out", str(bad / child), "-q"]).exit_code == 0
    shutil.rmtree(bad / "gone-parent")
    changed = bad / "changed-parent" / "stats.safetensors"
    changed.write_bytes(changed.read_bytes()[:-8] + b"\x00" * 8)


FAULTS = {
    # root ignores permission bits, so the check is also told that the directory is not writable
    "read_only": lambda mp, world: (os.chmod(Path(world["values"]["bad"]) / "read-only", 0o555),
                                    mp.setattr("vneuron.runtime.store.os.access", _deny_under(Path(world["values"]["bad"]) / "read-only"))),
    "disk_full": lambda mp, world: mp.setattr("vneuron.runtime.store.disk_free", lambda path: 10_000),
    # plant's final write: its manifest cannot be written into the staging folder; rescue copies go outside the watched roots
    "plant_disk_full": lambda mp, world: (mp.setattr("tempfile.tempdir", str(world["rescue"])),
                                          mp.setattr("vneuron.planting.train.write_json", _full_in_staging)),
    # unreachable-host retries back off 2 + 4 + 8 s; the count of retries is what matters here, not the wait
    "no_backoff": lambda mp, world: mp.setattr("vneuron.runtime.remote.time.sleep", lambda seconds: None),
    "public_ndif_no_key": lambda mp, world: (mp.delenv("NDIF_API_KEY", raising=False), mp.delenv("NDIF_HOST", raising=False),
                                             mp.setattr("vneuron.runtime.remote.api_key", lambda: None)),
}


def _full_in_staging(path, data):
    from vneuron.runtime.store import write_json

    if ".tmp" in Path(path).parent.parent.name:  # STAGING/plant/manifest.json
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    return write_json(path, data)


def _deny_under(directory: Path):
    real = os.access

    def access(path, mode, *args, **kwargs):
        if Path(path) == directory or directory in Path(path).parents:
            return False
        return real(path, mode, *args, **kwargs)

    return access


def snapshot(roots) -> dict[str, tuple]:
    """Every file and directory under the roots, with file sizes and modification times."""
    seen = {}
    for root in roots:
        for path in [Path(root), *Path(root).rglob("*")]:
            if "__pycache__" in path.parts:
                continue
            stat = path.lstat()
            seen[str(path)] = ("dir",) if path.is_dir() else (stat.st_size, stat.st_mtime_ns)
    return seen


def _invoke(case: Case, argv: list[str], cwd: Path, env_cache: Path):
    if not case.subprocess:
        result = runner.invoke(app, argv)
        return result.exit_code, result.stdout, result.stderr, result.output, result.exception
    script = Path(sys.executable).with_name("vneuron")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "vneuron.cli"]
    env = {**os.environ, "VNEURON_CACHE": str(env_cache)}
    env.pop("VNEURON_DEBUG", None)
    done = subprocess.run(command + argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    return done.returncode, done.stdout, done.stderr, done.stdout + done.stderr, None


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=[pytest.mark.xfail(reason=c.xfail, strict=False)] if c.xfail else [])
                                  for c in CASES])
def test_bad_input_ends_cleanly(case: Case, world, tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("VNEURON_CACHE", str(world["cache"]))
    monkeypatch.delenv("VNEURON_DEBUG", raising=False)
    if case.fault:
        FAULTS[case.fault](monkeypatch, world)
    watched = [world["cache"], *world["watched"]] + ([cwd] if case.code else [])  # a command that works writes into cwd
    before = snapshot(watched)
    argv = shlex.split(case.argv.format(**world["values"]))
    code, stdout, stderr, output, exception = _invoke(case, argv, cwd, world["cache"])
    os.chmod(Path(world["values"]["bad"]) / "read-only", 0o755)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == case.code, f"exit {code}: {output}\n{exception!r}"
    assert "Traceback" not in output
    if case.code == 0:  # it works, and says what it could not do
        assert all(line.startswith("warning:") for line in lines), stderr
        assert re.search(case.match, " ".join((stdout + stderr).split()), re.IGNORECASE), stdout + stderr  # lines wrap at 80
    else:
        assert len(lines) == 1 and lines[0].startswith("error:"), stderr
        assert re.search(case.match, lines[0], re.IGNORECASE), lines[0]
        assert not stdout, f"an error prints nothing before it (no line saying what it would have done): {stdout}"
    assert not SETTING.search(output) and not CALL.search(output), f"a setting named as the library spells it: {output}"
    after = snapshot(watched)
    assert after == before, {"new": sorted(set(after) - set(before)), "gone": sorted(set(before) - set(after)),
                             "changed": sorted(k for k in before if k in after and before[k] != after[k])}


def test_the_table_is_large_and_every_command_is_in_it():
    assert len(CASES) >= 80 and len({c.id for c in CASES}) == len(CASES)
    commands = {c.argv.split()[0] for c in CASES}
    assert {"locate", "ablate", "steer", "datasets", "models", "doctor", "report", "compare", "show", "plant", "power"} <= commands
    root = Path(__file__).resolve().parents[1]
    docs = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    assert any(f"{len(CASES)} bad inputs and faults" in p.read_text(encoding="utf-8") for p in docs), \
        "state the number of rows in the README or docs/"


# -- the classes of the table that do not end in an error line ----------------------------------------------------
def test_a_final_write_that_raises_safetensors_own_error_is_rescued(world, tmp_path, monkeypatch):
    """Not only OSError: safetensors raises SafetensorError on a full disk; the run is kept where the message says.
    (tests/test_faults.py fills and freezes a real filesystem for locate, ablate and report.)"""
    import tempfile

    from safetensors import SafetensorError

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    real = __import__("safetensors.torch", fromlist=["save_file"]).save_file

    def save_file(tensors, filename, metadata=None):
        if ".run.tmp" in str(filename):
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr("safetensors.torch.save_file", save_file)
    out = tmp_path / "disk" / "run"
    result = runner.invoke(app, shlex.split((L + " --split all --out " + str(out)).format(**world["values"])))
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "(No space left on device); the statistics and neuron sets are kept" in lines[0]
    (rescued,) = tmp_path.glob("vneuron-rescued-run-*")
    assert (rescued / "stats.safetensors").is_file() and not out.exists()


def test_sigterm_is_one_line_exit_143_and_nothing_is_written(world, tmp_path, monkeypatch):
    import signal

    from vneuron.locate import locating

    real = locating.capture
    monkeypatch.setattr(locating, "capture", lambda *a, **k: (os.kill(os.getpid(), signal.SIGTERM), real(*a, **k))[1])
    monkeypatch.chdir(tmp_path)
    before = snapshot([tmp_path, *world["watched"]])
    result = runner.invoke(app, shlex.split((L + " --split all --out run").format(**world["values"])))
    assert result.exit_code == 143 and result.stderr.strip() == "terminated (SIGTERM) (nothing half-written was kept)"
    assert snapshot([tmp_path, *world["watched"]]) == before


def test_incomplete_rows_and_shared_ids_load_with_a_note(world):
    from vneuron.data import load_corpus

    bad = Path(world["values"]["bad"])
    (note,) = load_corpus(bad / "incomplete.csv").notes
    assert note == ("incomplete.csv: left out 2 incomplete rows (an empty cell; `strict` refuses them): "
                    "rows 3 (Action1), 4 (Context)")
    rows = [json.loads(line) for line in (EXAMPLES / "corpus.jsonl").read_text().splitlines()]
    shared = bad / "shared-ids.jsonl"
    shared.write_text("".join(json.dumps({**r, "id": "q1" if n < 3 else r["id"]}) + "\n" for n, r in enumerate(rows)))
    try:
        (note,) = load_corpus(shared).notes
    finally:
        shared.unlink()
    assert note.startswith("3 items share an id with another ('q1' ×3): each id is read as one scenario")


def test_compare_writes_a_file_only_when_asked_and_notes_missing_statistics(world, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    values = world["values"]
    before = snapshot([tmp_path, *world["watched"]])
    result = runner.invoke(app, ["compare", values["run"], f"{values['bad']}/run-st", "--dimension", "self_transcendence", "--json"])
    assert result.exit_code == 0, result.output
    assert snapshot([tmp_path, *world["watched"]]) == before  # no CSV in the working directory, nothing anywhere
    assert "csv" not in json.loads(result.stdout)
    gone = tmp_path / "no-stats"
    shutil.copytree(values["run"], gone)
    (gone / "stats.safetensors").unlink()
    result = runner.invoke(app, ["compare", values["run"], str(gone)])
    assert result.exit_code == 0 and "Note: Spearman ρ not computed with no-stats:" in result.stderr
    assert "no-stats has no stats.safetensors" in " ".join(result.stderr.split())
