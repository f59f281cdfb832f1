"""Run another project's own test suite with and without the agent, and compare.

    .venv/bin/python bench/foreign_suite.py flask-sqlalchemy==3.1.1 [--url WS --token T]

Downloads the project's sdist from the package index (pip download), runs its tests
with pytest once plainly and once under ``python -m tracker run``, and compares the
outcome of every test (PASSED / FAILED / ERROR). The agent must change none. With
--url/--token the agent also streams to that dashboard; without, it collects locally.
Prints both durations too (one run each: a rough figure, not a benchmark).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# plugins of this environment that the foreign suite does not expect
PYTEST = ["-q", "-p", "no:cacheprovider", "-p", "no:randomly", "-p", "no:asyncio",
          "-p", "no:django", "-p", "no:retort", "-rA"]
OUTCOME = re.compile(r"^(PASSED|FAILED|ERROR) (\S+)", re.M)


def outcomes(output: str) -> dict[str, str]:
    return {test: outcome for outcome, test in OUTCOME.findall(output)}


def run(command: list[str], cwd: Path) -> tuple[dict[str, str], float, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    return outcomes(done.stdout), time.perf_counter() - started, done.stdout + done.stderr


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("requirement", help="e.g. flask-sqlalchemy==3.1.1")
    parser.add_argument("--tests", default="tests", help="the suite's folder in the sdist")
    parser.add_argument("--url")
    parser.add_argument("--token")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                        "--no-binary", ":all:", "-d", tmp, args.requirement], check=True)
        (archive,) = Path(tmp).glob("*.tar.gz")
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        (source,) = [p for p in Path(tmp).iterdir() if p.is_dir()]
        pytest = [sys.executable, "-m", "pytest", *PYTEST, args.tests]
        plain, plain_s, _ = run(pytest, source)
        wrapper = [sys.executable, "-m", "tracker", "run", "--app", "foreign-suite"]
        if args.url:
            wrapper += ["--url", args.url, "--token", args.token or ""]
        agent, agent_s, output = run([*wrapper, "--", *pytest], source)
    counts = {o: sum(v == o for v in plain.values()) for o in ("PASSED", "FAILED", "ERROR")}
    print(f"{args.requirement}: {len(plain)} tests; without the agent {counts} "
          f"in {plain_s:.1f}s, with it in {agent_s:.1f}s")
    changed = {t: (plain.get(t), agent.get(t)) for t in plain.keys() | agent.keys()
               if plain.get(t) != agent.get(t)}
    if not plain:
        print("no test outcome found: did the suite run?\n" + output[-2000:])
        return 2
    if changed:
        for test, (before, after) in sorted(changed.items()):
            print(f"  {test}: {before} -> {after}")
        return 1
    print("every outcome is the same with the agent")
    return 0


if __name__ == "__main__":
    sys.exit(main())
