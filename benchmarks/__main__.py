"""python -m benchmarks run | list | report (see benchmarks/README.md)."""

from __future__ import annotations

import argparse
import os
import sys

from . import registry, report, runner


def _params(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise SystemExit(f"--param takes NAME.KEY=VALUE (e.g. decode_8k.batch=64), got {item!r}")
        out[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_child"]:
        return runner.child_main(argv[1])
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run a suite's benchmarks, write results/<name>.json and the tables")
    r.add_argument("--suite", required=True, choices=registry.SUITES)
    r.add_argument("--only", default=None, help="comma list of benchmark names (opt-in ones included)")
    r.add_argument("--out", default=None, help="folder for the JSONs and summary.md (default benchmarks/results; "
                   "under --smoke a temporary folder). README.md's tables are rewritten only for the default")
    r.add_argument("--budget-s", type=float, default=None,
                   help=f"skip what would start after this many seconds (gpu suite: {runner.GPU_BUDGET_S})")
    r.add_argument("--parallel-s", type=float, default=None,
                   help="cap on the parallel phase (checks, warm-up jobs); default half the budget")
    r.add_argument("--jobs", type=int, default=None, help="processes side by side in the parallel phase")
    r.add_argument("--warm", action=argparse.BooleanOptionalAction, default=None,
                   help="warm-up jobs in the parallel phase (default: on for the gpu suite, off under --smoke, where "
                        "nothing is compiled)")
    r.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (Triton's interpreter for GPU code)")
    r.add_argument("--threads", type=int, default=None,
                   help="torch threads in each benchmark (default: 1 for the cpu suite and --smoke, steady on a "
                        "shared machine; torch's choice for the gpu suite)")
    r.add_argument("--param", action="append", default=[], metavar="NAME.KEY=VALUE",
                   help="a benchmark's setting, e.g. decode_8k.batch=64 (see each module's run())")
    r.add_argument("--no-readme", dest="readme", action="store_false", help="leave README.md's tables alone")
    sub.add_parser("list", help="every benchmark: name, suite, default or opt-in, what it measures")
    rep = sub.add_parser("report", help="rebuild summary.md (and README.md's tables) from the JSONs")
    rep.add_argument("--out", default=runner.RESULTS)
    args = ap.parse_args(argv)

    if args.command == "list":
        for m in registry.all_benchmarks():
            kind = "default" if m.DEFAULT else "opt-in"
            print(f"{m.NAME:<18} {m.SUITE:<4} {kind:<8} {m.DESCRIPTION}")
        return 0
    if args.command == "report":
        report.write(args.out, update_readme=os.path.abspath(args.out) == os.path.abspath(runner.RESULTS))
        print(open(os.path.join(args.out, report.SUMMARY)).read())
        return 0
    args.argv = argv
    args.only = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else None
    args.params = _params(args.param)
    if args.out is None:
        args.out = runner.default_out(args.smoke)
    if args.budget_s is None and args.suite == "gpu" and not args.smoke:
        args.budget_s = runner.GPU_BUDGET_S
    if args.parallel_s is None and args.budget_s:
        args.parallel_s = args.budget_s / 2
    if args.warm is None:
        args.warm = not args.smoke
    if args.threads is None and (args.suite == "cpu" or args.smoke):
        args.threads = 1
    if args.jobs is None:
        args.jobs = 2 if args.smoke else max(2, min(14, (os.cpu_count() or 4) - 2))
    args.update_readme = (args.readme and not args.smoke
                          and os.path.abspath(args.out) == os.path.abspath(runner.RESULTS))
    try:
        registry.select(args.suite, args.only)
    except ValueError as e:
        print(f"python -m benchmarks run: {e}", file=sys.stderr)
        return 2
    if args.suite == "gpu" and not args.smoke:
        import torch

        if not torch.cuda.is_available():  # (creates no CUDA context in this process)
            print("python -m benchmarks run: the gpu suite needs CUDA; --smoke runs it tiny on the CPU",
                  file=sys.stderr)
            return 2
    return runner.run(args)


if __name__ == "__main__":
    sys.exit(main())
