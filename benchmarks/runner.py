"""Run a suite: each benchmark in a process of its own, one JSON per benchmark, then the tables.

A GPU suite on a fresh machine spends most of its time compiling (a scan backward variant ~40 s, a compiled
layer ~2 minutes), one kernel at a time per process. So it runs in two phases:

1. parallel: the checks' parts and a warm-up job per benchmark (its timed code once, at stand-in sizes),
   in up to --jobs processes side by side; they fill Triton's and Inductor's on-disk caches. Capped at
   --parallel-s (half the budget by default): what is still running then is stopped.
2. serial: each benchmark in turn, alone on the machine, its kernels found in the caches.

A benchmark that would start after the budget is spent (or could not finish in what is left, by its
EST_S) is skipped; one still running when it is spent is stopped. A failure is recorded and the next one
runs; the exit status is 1 if any benchmark (a check included) failed. Stopped at a time limit counts as
skipped, not failed; a skipped benchmark leaves an earlier real measurement's JSON in place.
"""

from __future__ import annotations

import collections
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

from . import registry, report
from .common import RESULTS, ROOT, machine_info, utc_now

GPU_BUDGET_S = 540  # one 10-minute GPU call, with room to start and to copy the results back


def _clean(x):
    """JSON without NaN/inf (strict parsers refuse them): None instead."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def write_json(path: str, doc: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(_clean(doc), f, indent=1, default=str)
        f.write("\n")
    os.replace(tmp, path)


class Child:
    """One benchmark (or one of its jobs) in a process of its own: `python -m benchmarks _child SPEC`. Its
    output is echoed with a prefix and its tail kept for the error message."""

    _ids = itertools.count()

    def __init__(self, label: str, spec: dict, workdir: str, env: dict, echo: bool = True):
        self.label, self.start = label, time.time()
        self.result_path = os.path.join(workdir, f"{next(self._ids)}.json")
        spec_path = self.result_path[:-5] + ".spec.json"
        write_json(spec_path, dict(spec, result=self.result_path))
        self.tail = collections.deque(maxlen=40)
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks", "_child", spec_path], cwd=ROOT, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                     start_new_session=True)  # its own process group: stopped with its children
        self.reader = threading.Thread(target=self._read, args=(echo,), daemon=True)
        self.reader.start()
        self.stopped = None

    def _read(self, echo: bool) -> None:
        for line in self.proc.stdout:
            self.tail.append(line.rstrip())
            if echo:
                print(f"[{self.label}] {line.rstrip()}", flush=True)

    def stop(self, why: str) -> None:
        """End the process group; the outcome is "skipped" with `why` (a time limit, not a failure)."""
        self.stopped = why
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(timeout=10)
                return
            except subprocess.TimeoutExpired:
                continue

    def outcome(self) -> dict:
        """{status, error, wall_s, result, machine} once the process has ended."""
        try:  # whatever it left running (compile workers)
            os.killpg(self.proc.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
        self.reader.join(timeout=5)
        wall_s = round(time.time() - self.start, 1)
        payload = {}
        if os.path.exists(self.result_path):
            with open(self.result_path) as f:
                payload = json.load(f)
        if self.stopped:
            status, error = "skipped", f"{self.stopped}: stopped after {wall_s:.0f} s"
        elif payload.get("status") in ("ok", "skipped"):
            status, error = payload["status"], payload.get("error")
        else:
            status = "failed"
            error = payload.get("error") or f"exit status {self.proc.returncode}:\n" + "\n".join(self.tail)
        return dict(status=status, error=error, wall_s=wall_s, result=payload.get("result"),
                    machine=payload.get("machine"))


def _spec(member, args, deadline, warm=False, job=None, job_results=None) -> dict:
    prefix = member.NAME + "."
    params = {k[len(prefix):]: v for k, v in args.params.items() if k.startswith(prefix)}
    return dict(name=member.NAME, suite=member.SUITE, smoke=args.smoke, warm=warm, params=params, deadline=deadline,
                threads=args.threads, job=job, job_results=job_results)


def _jobs(member, args) -> list[tuple[str, dict, float]]:
    """(label, job kwargs, expected seconds) of a benchmark's parallel jobs: its own, or one warm-up run."""
    if hasattr(member, "jobs"):
        from .common import Ctx

        return member.jobs(Ctx(member.NAME, member.SUITE, smoke=args.smoke))
    warm_s = getattr(member, "WARM_S", 0)
    return [("warm", {"warm": True}, warm_s)] if warm_s and args.warm else []


def run_parallel(members, args, env, workdir, until: float | None, deadline) -> dict[str, list]:
    """Phase 1: every job of every benchmark, `args.jobs` processes at a time, stopped at `until`.
    Returns {benchmark name: [job outcomes]}."""
    queue = [(m, label, kw, est) for m in members for label, kw, est in _jobs(m, args)]
    queue.sort(key=lambda job: -job[3])  # the longest first, so that they do not start last
    results: dict[str, list] = {m.NAME: [] for m in members}
    if not queue:
        return results
    print(f"== parallel phase: {len(queue)} jobs, {args.jobs} at a time", flush=True)
    t0, running = time.time(), []
    env = dict(env)
    env.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "2")  # not a pool of one compile worker per core in each
    while queue or running:
        while queue and len(running) < args.jobs and (until is None or time.time() < until):
            m, label, kw, _ = queue.pop(0)
            warm = kw.pop("warm", False)
            spec = _spec(m, args, deadline, warm=warm, job=None if warm else kw)
            running.append((m, label, Child(f"{m.NAME}:{label}", spec, workdir, env)))
        for item in list(running):
            m, label, child = item
            if child.proc.poll() is not None:
                running.remove(item)
                results[m.NAME].append(dict(label=label, **child.outcome()))
            elif until is not None and time.time() >= until:
                child.stop(f"time limit of the parallel phase ({until - t0:.0f} s)")
        if until is not None and time.time() >= until:
            for m, label, _, _ in queue:
                results[m.NAME].append(dict(label=label, status="skipped", error="time limit of the parallel phase",
                                            wall_s=0, result=None, machine=None))
            queue = []
        time.sleep(0.2)
    print(f"== parallel phase done in {time.time() - t0:.0f} s", flush=True)
    return results


def _document(member, args, outcome: dict, started: str, jobs: list) -> dict:
    result = outcome.get("result") or {}
    status, error = outcome["status"], outcome.get("error")
    if status == "ok" and result.get("failures"):  # checks that ran and failed
        status, error = "failed", f"{len(result['failures'])} failed: " + "; ".join(result["failures"][:10])
    return dict(
        name=member.NAME, suite=member.SUITE, description=member.DESCRIPTION, status=status, error=error,
        date=started, wall_s=outcome.get("wall_s", 0), smoke=args.smoke,
        machine=outcome.get("machine") or machine_info(use_cuda=False),
        args=dict(argv=args.argv, suite=args.suite, only=args.only, budget_s=args.budget_s, smoke=args.smoke,
                  threads=args.threads, params={k: v for k, v in args.params.items()
                                                if k.startswith(member.NAME + ".")}),
        params=result.get("params", {}), metrics=result.get("metrics", []), details=result.get("details", {}),
        notes=result.get("notes", []),
        parallel_jobs=[{k: j[k] for k in ("label", "status", "error", "wall_s")} for j in jobs])


def _measured(path: str) -> bool:
    """Whether `path` holds a real (not smoke) measurement, which a skipped run does not replace."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return False
    return doc.get("status") == "ok" and not doc.get("smoke")


def run(args) -> int:
    members = registry.select(args.suite, args.only)
    out = args.out
    os.makedirs(out, exist_ok=True)
    start = time.time()
    deadline = start + args.budget_s if args.budget_s else None
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.smoke and args.suite == "gpu":
        env["TRITON_INTERPRET"] = "1"  # Triton decides at a kernel's definition: set before any import
    print(f"== suite {args.suite}{' (smoke)' if args.smoke else ''}: {', '.join(m.NAME for m in members)}; "
          f"results in {out}; budget {args.budget_s or 'none'} s", flush=True)
    failed = 0
    with tempfile.TemporaryDirectory(prefix="hymba-bench-") as workdir:
        until = start + args.parallel_s if args.parallel_s else None
        if deadline is not None:
            until = min(until or deadline, deadline)
        jobs = run_parallel(members, args, env, workdir, until, deadline)
        for m in members:
            started, now = utc_now(), time.time()
            if deadline is not None and now >= deadline:
                outcome = dict(status="skipped", error=f"time budget: {args.budget_s:.0f} s spent")
            elif deadline is not None and not args.smoke and now + m.EST_S > deadline:
                outcome = dict(status="skipped", error=f"time budget: needs ~{m.EST_S} s, {deadline - now:.0f} s left")
            else:
                print(f"== {m.NAME}: {m.DESCRIPTION}", flush=True)
                child = Child(m.NAME, _spec(m, args, deadline, job_results=jobs[m.NAME] or None), workdir, env)
                try:
                    child.proc.wait(timeout=None if deadline is None else max(1.0, deadline - time.time()))
                except subprocess.TimeoutExpired:
                    child.stop(f"time budget ({args.budget_s:.0f} s)")
                outcome = child.outcome()
            doc = _document(m, args, outcome, started, jobs[m.NAME])
            path = os.path.join(out, f"{m.NAME}.json")
            if doc["status"] == "skipped" and _measured(path):
                print(f"== {m.NAME}: skipped; {path} keeps the last measurement", flush=True)
                continue
            write_json(path, doc)
            failed += doc["status"] == "failed"
            why = f" ({doc['error'].strip().splitlines()[-1][:300]})" if doc["error"] else ""
            print(f"== {m.NAME}: {doc['status']}{why}, {doc['wall_s']:.0f} s", flush=True)
    report.write(out, update_readme=args.update_readme)
    print(f"== done in {time.time() - start:.0f} s: {len(members) - failed}/{len(members)} did not fail; "
          f"{os.path.join(out, report.SUMMARY)}", flush=True)
    return 1 if failed else 0


def child_main(spec_path: str) -> int:
    """Inside the child process: run the benchmark (or one of its jobs) and write its outcome."""
    with open(spec_path) as f:
        spec = json.load(f)
    if spec["smoke"] and spec["suite"] == "gpu":
        from hymba.ops.gpu.interpreter import use_cpu_interpreter

        use_cpu_interpreter()  # before any Triton kernel module is imported
    import traceback

    import torch

    from .common import Ctx, Skip

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    module = registry.by_name()[spec["name"]]
    ctx = Ctx(spec["name"], spec["suite"], smoke=spec["smoke"], warm=spec["warm"], params=spec["params"],
              deadline=spec["deadline"], job_results=spec.get("job_results"))
    try:
        if spec.get("job") is not None:
            result = module.job(ctx, **spec["job"])
        else:
            result = module.run(ctx)
        payload = dict(status="ok", result=result)
    except Skip as e:
        payload = dict(status="skipped", error=str(e))
    except Exception:
        traceback.print_exc()
        payload = dict(status="failed", error=traceback.format_exc()[-4000:])
    payload["machine"] = machine_info(use_cuda=ctx.device.type == "cuda")
    write_json(spec["result"], payload)
    return 0 if payload["status"] != "failed" else 1


def default_out(smoke: bool) -> str:
    """Smoke runs never land in results/ (its JSONs are the latest real run)."""
    return os.path.join(tempfile.gettempdir(), "hymba-bench-smoke") if smoke else RESULTS
