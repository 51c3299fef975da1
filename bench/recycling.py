"""`make bench-recycling`: failed requests and throughput while workers recycle, stock vs draining worker.

Every server is `gunicorn -c config/gunicorn.py` on loopback with the same settings; only the worker
class (`--worker-class`) and GUNICORN_MAX_REQUESTS differ. Each runs the same asyncio load
(devtools/loadgen.py: GET /health, 16 clients) for a bounded time, once opening a connection
per request and once over keep-alive connections. A request fails when its connection is refused,
reset or closed before a complete response, or takes longer than 5 s. Prints one row per
combination and writes bench/results/recycling.json. Throughput swings between runs on a shared
machine; the error counts are the point.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

from devtools.loadgen import LoadResult, run_load_sync
from devtools.processes import DRAINING_WORKER, REPO, STOCK_WORKER, base_environ, gunicorn

RESULTS = REPO / "bench" / "results"
WORKERS = {"stock": STOCK_WORKER, "draining": DRAINING_WORKER}
MODES = ("close", "keepalive")
APPS = {"bare": "devtools.asgi_app:app", "django": None}  # None: config/gunicorn.py's Django app
RECYCLE = re.compile(r"Maximum request limit of \d+ exceeded")


def measure(tmp: Path, *, args: argparse.Namespace, worker: str, recycle: bool, mode: str) -> tuple[LoadResult, int]:
    logs = Path(tempfile.mkdtemp(dir=tmp))
    env = base_environ(logs, GUNICORN_WORKERS=str(args.workers), GUNICORN_GRACEFUL_TIMEOUT="10",
                       GUNICORN_KEEPALIVE="2", DJANGO_LOG_LEVEL="INFO")
    if recycle:
        env.update(GUNICORN_MAX_REQUESTS=str(args.max_requests), GUNICORN_MAX_REQUESTS_JITTER=str(args.jitter))
    with gunicorn(logs, env=env, app=APPS[args.app], worker_class=WORKERS[worker]) as server:
        result = run_load_sync(server.port, mode, duration=args.seconds, concurrency=args.concurrency)
        recycles = len(RECYCLE.findall(server.logs()))
    return result, recycles


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--app", choices=sorted(APPS), default="bare")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=4.0, help="load per combination")
    parser.add_argument("--max-requests", type=int, default=300)
    parser.add_argument("--jitter", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2, help="repeat the whole matrix")
    args = parser.parse_args(argv)
    print(f"load: {args.concurrency} asyncio clients, {args.seconds:g} s per run, {args.rounds} round(s); "
          f"{args.workers} workers serving the {args.app} app on 127.0.0.1", flush=True)
    print(f"\n{'worker':<10}{'max_requests':>14}  {'mode':<10}{'ok':>8}{'req/s':>8}{'errors':>8}{'non-2xx':>8}"
          f"{'recycles':>9}  error kinds")
    rows = []
    with tempfile.TemporaryDirectory(prefix="coffee-bench-") as tmp:
        for _ in range(args.rounds):
            for recycle in (False, True):
                for worker in WORKERS:
                    for mode in MODES:
                        result, recycles = measure(Path(tmp), args=args, worker=worker, recycle=recycle, mode=mode)
                        limit = f"{args.max_requests}+{args.jitter}" if recycle else "off"
                        kinds = ", ".join(f"{k}={v}" for k, v in sorted(result.errors.items())) or "-"
                        print(f"{worker:<10}{limit:>14}  {mode:<10}{result.ok:>8}{result.rps:>8.0f}"
                              f"{result.error_count:>8}{result.non_2xx:>8}{recycles:>9}  {kinds}", flush=True)
                        rows.append({"worker": worker, "recycling": recycle, "mode": mode, "ok": result.ok,
                                     "req_per_s": round(result.rps), "errors": result.error_count,
                                     "non_2xx": result.non_2xx, "recycles": recycles})
    print("\nsummed over rounds: failed requests (errors + non-2xx) / recycles / mean req/s")
    for recycle in (False, True):
        for worker in WORKERS:
            for mode in MODES:
                runs = [r for r in rows if (r["recycling"], r["worker"], r["mode"]) == (recycle, worker, mode)]
                failed = sum(r["errors"] + r["non_2xx"] for r in runs)
                print(f"  {worker:<10} recycling {'on ' if recycle else 'off'} {mode:<10} {failed:>6} failed "
                      f"{sum(r['recycles'] for r in runs):>5} recycles {sum(r['req_per_s'] for r in runs) / len(runs):>8.0f} req/s")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "recycling.json").write_text(json.dumps({"settings": vars(args), "runs": rows}, indent=2) + "\n")
    print(f"\nwritten to {RESULTS / 'recycling.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
