"""ValueBench's PVQ-40 as a forced-choice benchmark: pairs of first-person statements from opposite poles.

Each item pairs a statement of one higher-order pole with one of its opposite pole (self-transcendence
× self-enhancement: universalism/benevolence × power/achievement; openness × conservation:
self-direction/stimulation × security/conformity/tradition). Hedonism, which Schwartz places between
openness and self-enhancement, is left out. The scenario asks for one statement about yourself; the
pole side alternates from pair to pair, and the rows are shuffled (seed 0) so that ``--limit N``
takes a spread of statements rather than the first few.

    python scripts/valuebench_pairs.py ../shared/data/valuebench/value_orientation.csv runs/pvq40-pairs.csv
    vneuron ablate RUN --eval-dataset runs/pvq40-pairs.csv --template first_person

The output is derived from ValueBench (MIT; PVQ-40 © Schwartz, free for non-commercial research):
keep it outside the repository.
"""

from __future__ import annotations

import csv
import random
import sys
from pathlib import Path

from vneuron.data import load_inventory
from vneuron.data.schema import AXES

SCENARIO = "Describe yourself in one statement."  # reads with both actions listed and with one alone


def pairs(path: Path) -> list[dict[str, str]]:
    items = [i for i in load_inventory(path, questionnaire="PVQ40") if i.value.lower() != "hedonism" and i.dimension]
    rows = []
    for pole, opposite in AXES.values():
        left = [i for i in items if i.dimension == pole]
        right = [i for i in items if i.dimension == opposite]
        for a in left:
            for b in right:
                n = len(rows)
                first, second = (a, b) if n % 2 == 0 else (b, a)  # the pole side alternates
                rows.append({"id": f"pvq40-{a.id}-{b.id}", "scenario": SCENARIO, "option_pole": first.text.strip(),
                             "option_opposite": second.text.strip(), "dimension": first.dimension,
                             "opposite": second.dimension, "value": first.value, "opposite_value": second.value,
                             "language": "en"})
    random.Random(0).shuffle(rows)
    return rows


def main(source: str, target: str) -> None:
    rows = pairs(Path(source))
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    with open(target, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"{len(rows)} forced-choice items written to {target}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python scripts/valuebench_pairs.py value_orientation.csv OUT.csv")
    main(sys.argv[1], sys.argv[2])
