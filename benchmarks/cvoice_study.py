"""One value of a C-voice study at the release's size, on the default model: what it costs, planned and measured.

Builds a synthetic pair of workbooks in the release's shape (no release text is copied; the sentences are made
from templates here): ``友善-final.xlsx``, one sheet of ~200 dilemmas of 友善 against four other values, and a
12-sheet test workbook of ~225 dilemmas a sheet (Type / Context / Action1 / Action2). Then

  locate   vneuron locate --dataset 友善-final.xlsx --dimension 友善 (the value against all its conflicts: 友善|*)
  plan     vneuron ablate RUN --dimension '友善|*' --eval-dataset test.xlsx --top-k 200 --dry-run
  ablate   the same without --dry-run: every item of every sheet, sequential controls up to 20, side effects, the
           full 12-column matrix (``--matrix-items`` caps a column; default: every item)

and prints each step's wall and CPU seconds with the load average, and the plan's estimate per stage beside the
run's measured stages (manifest ``timings.stages``).

    python benchmarks/cvoice_study.py --out /tmp/cvoice                    # plan and run
    python benchmarks/cvoice_study.py --out /tmp/cvoice --plan-only        # the dry run only
    python benchmarks/cvoice_study.py --out /tmp/cvoice --rows 60 --matrix-items 30   # cut down (says so)
    python benchmarks/cvoice_study.py --out /tmp/cvoice --dtype bf16-mixed --ablate-args "--direction-matrix"
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

VALUES = ("富强", "民主", "文明", "和谐", "自由", "平等", "公正", "法治", "爱国", "敬业", "诚信", "友善")
OTHERS = ("个人财富积累", "效率", "报复文化", "面子")
PEOPLE = ("同事", "邻居", "朋友", "陌生人", "老同学", "亲戚", "客户", "室友", "上司", "学生")
PLACES = ("公司", "小区", "地铁上", "医院", "学校", "菜市场", "网上", "车站", "饭店", "村里")
TIMES = ("周末", "下班后", "清晨", "节假日前", "考试前一天", "加班的晚上", "午休时", "出差途中")
DOING = {"个人财富积累": ("去做一份报酬很高的兼职", "把这笔钱拿去投资"), "效率": ("按原计划尽快完成任务", "先把自己的工作做完"),
         "报复文化": ("让他也尝尝被为难的滋味", "转身离开不管他"), "面子": ("顾全自己的面子不开口", "装作没看见免得尴尬")}


def _dilemma(rng: random.Random, value: str, other: str, n: int) -> tuple[str, str, str]:
    who, where, when = rng.choice(PEOPLE), rng.choice(PLACES), rng.choice(TIMES)
    cost = rng.choice(DOING[other])
    context = (f"{when}在{where}，一位{who}遇到了麻烦，需要有人花些时间帮忙（第{n}例）。如果你按{value}的要求去做，"
               f"就不得不放弃{cost}的机会；如果不管，他可能要独自面对更大的困难。")
    return context, f"按{value}的要求帮助这位{who}", cost


def build(out: Path, rows: int, per_sheet: int, seed: int = 0) -> tuple[Path, Path]:
    from openpyxl import Workbook

    rng = random.Random(seed)
    final = Workbook()
    sheet = final.active
    sheet.append(["冲突类型", "决策困境", "选择A", "选择B", "判决困境"])
    for n in range(rows):
        other = OTHERS[n % len(OTHERS)]
        context, a, b = _dilemma(rng, "友善", other, n)
        sheet.append([f"友善 vs {other}", context, f"A. {a}", f"B. {b}", None])
    final_path = out / "友善-final.xlsx"
    final.save(final_path)
    test = Workbook()
    test.remove(test.active)
    for value in VALUES:
        sheet = test.create_sheet(value)
        sheet.append(["Type", "Context", "Action1", "Action2"])
        for n in range(per_sheet):
            other = OTHERS[n % len(OTHERS)]
            context, a, b = _dilemma(rng, value, other, n)
            sheet.append([f"{value} vs {other}", context, a, b])
    test_path = out / "test-zh.xlsx"
    test.save(test_path)
    return final_path, test_path


def timed(argv: list[str]) -> dict:
    """Run ``vneuron ARGV`` in this process; its wall and CPU seconds and the load average before and after."""
    from typer.testing import CliRunner

    from vneuron.cli import app

    load0, wall, cpu = os.getloadavg()[0], time.perf_counter(), time.process_time()
    result = CliRunner().invoke(app, argv, catch_exceptions=False)
    if result.exit_code != 0:
        raise SystemExit(f"vneuron {' '.join(argv)} failed ({result.exit_code}):\n{result.output}")
    return {"argv": argv, "wall_s": round(time.perf_counter() - wall, 1), "cpu_s": round(time.process_time() - cpu, 1),
            "load": [round(load0, 2), round(os.getloadavg()[0], 2)], "output": result.output}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--rows", type=int, default=200, help="dilemmas in 友善-final.xlsx (the release: ~200)")
    parser.add_argument("--per-sheet", type=int, default=225, help="dilemmas per test sheet (the release: ~225)")
    parser.add_argument("--matrix-items", type=int, default=None, help="cap a matrix column's items (default: every item)")
    parser.add_argument("--plan-only", action="store_true")
    parser.add_argument("--dtype", default=None, help="what locate and ablate compute in (default: float32)")
    parser.add_argument("--ablate-args", default="", help="more ablate flags, e.g. \"--direction-matrix --limit 60\" (said)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    final, test = build(args.out, args.rows, args.per_sheet)
    cut = [f"--rows {args.rows}" if args.rows != 200 else "", f"--per-sheet {args.per_sheet}" if args.per_sheet != 225 else "",
           f"--matrix-items {args.matrix_items}" if args.matrix_items else "", args.ablate_args]
    cut = " ".join(c for c in cut if c)
    report: dict = {"cut_down": cut or None, "cores": os.cpu_count(), "dtype": args.dtype or "float32"}
    dtype = ["--dtype", args.dtype] if args.dtype else []
    run = args.out / "run"
    if not (run / "manifest.json").exists():
        report["locate"] = timed(["locate", "--dataset", str(final), "--language", "zh", "--dimension", "友善", "--out", str(run), "-q",
                                     *dtype])
    study = ["ablate", str(run), "--dimension", "友善|*", "--eval-dataset", str(test), "--top-k", "200", "-q",
             *(["--matrix-items", str(args.matrix_items)] if args.matrix_items else []), *dtype, *args.ablate_args.split()]
    report["plan"] = timed([*study, "--dry-run", "--json"])
    plan = json.loads(report["plan"]["output"])
    if not args.plan_only:
        report["ablate"] = timed([*study, "--out", str(args.out / "ablate"), "--json"])
        measured = json.loads((args.out / "ablate" / "manifest.json").read_text())["timings"]
        report["stages"] = {name: {"estimate_s": stage.get("estimate_s"), "measured_s": measured["stages"].get(name, {}).get("wall_s")}
                            for name, stage in plan["stages"].items()}
    for step in ("locate", "plan", "ablate"):
        if step in report:
            r = report[step]
            print(f"{step:7s} {r['wall_s']:8.1f} s wall {r['cpu_s']:8.1f} s CPU  load {r['load'][0]:.2f} → {r['load'][1]:.2f}")
            r.pop("output")
    print(f"plan: {plan.get('estimate_s')} s in all; by stage: "
          + "; ".join(f"{n} {s.get('estimate_s')}" for n, s in plan["stages"].items()))
    if "stages" in report:
        print("measured by stage: " + "; ".join(f"{n} {s['measured_s']} s" for n, s in report["stages"].items()))
    print(f"settings: {'cut down: ' + cut if cut else 'the release size'}; dtype {args.dtype or 'float32'}")
    (args.out / "cvoice_study.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
