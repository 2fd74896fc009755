"""``python -m bench``: measure mediagen against a bare gRPC server; print a table, write JSON.

    python -m bench             # the default run (under ten minutes on 2 cores)
    python -m bench --quick     # fewer repetitions, smaller loads (~2 minutes)
    python -m bench --smoke     # one tiny iteration of each figure (CI; < 60 s)
    python -m bench --only getjob,download --runs 5 --inflight-jobs 20000

Results: bench/results/<UTC timestamp>.json (or --out). See bench/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

from bench.common import CLIENT_CPUS, SERVER_CPUS, Row, load_average, machine
from bench.figures import FIGURES, PROFILES, WHY_NOT_MET
from bench.harness import Harness

RESULTS = Path(__file__).resolve().parent / "results"


def _fmt(value: float | None) -> str:
    if value is None:
        return "—"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table(rows: list[Row]) -> str:
    head = ["figure", "value", "baseline", "ratio", "target", "met?"]
    body = []
    for r in rows:
        met = "—" if r.met is None else ("yes" if r.met else "NO")
        body.append([
            r.figure,
            f"{_fmt(r.value)} {r.unit}" if r.value is not None else "skipped",
            f"{_fmt(r.baseline)} {r.unit}" if r.baseline is not None else "—",
            f"{r.ratio:.2f}×" if r.ratio is not None else "—",
            r.target or "—",
            met,
        ])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=False)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=False)).rstrip()  # noqa: E731
    out = [line(head), line(["-" * w for w in widths])]
    out += [line(b) for b in body]
    notes = [f"  {r.figure}: {r.note}" for r in rows if r.note]
    if notes:
        out += ["", "notes:", *notes]
    return "\n".join(out)


def markdown(rows: list[dict]) -> str:
    """The table of a results JSON as Markdown (for bench/README.md)."""
    out = ["| figure | value | baseline | ratio | target | met? |", "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        unit = r["unit"]
        value = f"{_fmt(r['value'])} {unit}" if r["value"] is not None else "skipped"
        base = f"{_fmt(r['baseline'])} {unit}" if r["baseline"] is not None else "—"
        ratio = f"{r['ratio']:.2f}×" if r["ratio"] is not None else "—"
        met = "—" if r["met"] is None else ("yes" if r["met"] else "**no**")
        out.append(f"| {r['figure']} | {value} | {base} | {ratio} | {r['target'] or '—'} | {met} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="smaller loads, fewer repetitions")
    mode.add_argument("--smoke", action="store_true", help="one tiny iteration of each figure (CI)")
    parser.add_argument("--only", help=f"comma-separated figures: {','.join(FIGURES)}")
    parser.add_argument("--runs", type=int, help="repetitions of comparative measurements (median reported)")
    parser.add_argument("--inflight-jobs", type=int, help="jobs in flight (figure 3)")
    parser.add_argument("--inflight-duration", type=float, nargs=2, metavar=("MIN", "MAX"),
                        help="seconds a fake vendor job takes, spread between MIN and MAX")
    parser.add_argument("--recovery-jobs", type=int, help="unfinished jobs to recover (figure 6)")
    parser.add_argument("--download-mib", type=int, help="artifact size for the download figure")
    parser.add_argument("--sweep", action="store_true", help="also sweep the download chunk size (~2 minutes)")
    parser.add_argument("--out", type=Path, help="JSON file to write (default bench/results/<timestamp>.json)")
    parser.add_argument("--workdir", type=Path, help="keep data, logs and specs here (default: a temp dir, removed)")
    parser.add_argument("--nice", type=int, default=0,
                        help="scheduling priority of every bench process (e.g. -10 on a machine shared with other work)")
    parser.add_argument("--render", type=Path, metavar="JSON", help="print a results file's table as Markdown and exit")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)

    if args.render:
        result = json.loads(args.render.read_text())
        print(markdown(result["rows"]))
        notes = [f"- {r['figure']}: {r['note']}" for r in result["rows"] if r["note"]]
        if notes:
            print("\n" + "\n".join(notes))
        return 0
    profile = PROFILES["smoke" if args.smoke else "quick" if args.quick else "default"]
    overrides = {}
    if args.runs:
        overrides["runs"] = overrides["download_runs"] = args.runs
    if args.inflight_jobs:
        overrides["inflight_jobs"] = args.inflight_jobs
    if args.inflight_duration:
        overrides["inflight_min"], overrides["inflight_max"] = args.inflight_duration
    if args.recovery_jobs:
        overrides["recovery_jobs"] = args.recovery_jobs
    if args.download_mib:
        overrides["download_bytes"] = args.download_mib * 1024 * 1024
    if args.sweep:
        overrides["chunk_sweep"] = True
    profile = dataclasses.replace(profile, **overrides)
    names = [n.strip() for n in args.only.split(",")] if args.only else list(FIGURES)
    unknown = [n for n in names if n not in FIGURES]
    if unknown:
        parser.error(f"unknown figures {unknown}; known: {', '.join(FIGURES)}")

    if args.nice:
        import os

        os.setpriority(os.PRIO_PROCESS, 0, args.nice)  # children inherit it
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mediagen-bench-"))
    harness = Harness(workdir, server_cpus=SERVER_CPUS, client_cpus=CLIENT_CPUS, verbose=not args.quiet)
    started = time.time()
    info = machine()
    print(f"mediagen bench ({profile.name}): {info['cpu_count']} × {info['cpu_model']}, "
          f"{info['memory_bytes'] / 2**30:.1f} GiB; python {info['python']}, grpcio {info['grpcio']}, "
          f"protobuf {info['protobuf']}; server on CPU {SERVER_CPUS}, load generator on CPU {CLIENT_CPUS}",
          flush=True)
    rows: list[Row] = []
    details: dict[str, object] = {}
    failed: dict[str, str] = {}
    missed: list[str] = []
    for name in names:
        if not args.quiet:
            print(f"- {name}", flush=True)
        begun = time.time()
        try:
            figure_rows, figure_details = FIGURES[name](harness, profile)
        except Exception as exc:  # one broken figure must not lose the others
            traceback.print_exc()
            failed[name] = f"{type(exc).__name__}: {exc}"
            figure_rows, figure_details = [Row(name, None, "", note=f"FAILED: {exc}", met=False)], {}
        rows += figure_rows
        if any(r.met is False for r in figure_rows) and name not in failed:
            missed.append(name)
        details[name] = {"seconds": time.time() - begun, "load_average_after": load_average(), **figure_details}

    print()
    print(table(rows))
    if missed:
        print("\ntargets not met, why and the plan (measurements in bench/README.md):")
        for name in missed:
            print(f"  {name}: {WHY_NOT_MET[name]}")
    result = {
        "profile": dataclasses.asdict(profile),
        "started": datetime.fromtimestamp(started, UTC).isoformat(),
        "seconds": time.time() - started,
        "machine": info,
        "setup": {"server_cpus": SERVER_CPUS, "client_cpus": CLIENT_CPUS, "nice": args.nice},
        "rows": [r.as_dict() for r in rows],
        "details": details,
        "failed": failed,
    }
    out = args.out or RESULTS / f"{datetime.fromtimestamp(started, UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print(f"\nwrote {out} ({time.time() - started:.0f} s)")
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
