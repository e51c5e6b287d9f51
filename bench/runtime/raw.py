"""The baseline: llama_cpp in one plain process, no Keel.

    python -m bench.runtime.raw MODEL_PATH MAX_TOKENS

Prints one JSON line when loaded (``import_s``, ``load_s``), then one per ``run`` line read
from stdin (a streamed generation: ``ttft_s``, ``tokens``, ``span_s``), and on stdin EOF one
with its peak RSS. The parent interleaves these runs with Keel's, so both see the same noise.
"""

from __future__ import annotations

import json
import resource
import sys
import time

PROMPT = [{"role": "user", "content": "Count from one to one hundred in words."}]


def main() -> None:
    path, max_tokens = sys.argv[1], int(sys.argv[2])
    t0 = time.perf_counter()
    import llama_cpp

    t1 = time.perf_counter()
    llm = llama_cpp.Llama(
        model_path=path,
        n_ctx=2048,
        n_threads=1,
        n_threads_batch=1,
        chat_format="gemma",
        verbose=False,
    )
    t2 = time.perf_counter()
    print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1}), flush=True)
    for _ in sys.stdin:
        start = time.perf_counter()
        stamps = []
        for chunk in llm.create_chat_completion(
            messages=PROMPT,  # type: ignore[arg-type]
            max_tokens=max_tokens,
            temperature=0.0,
            seed=1,
            stream=True,
        ):
            if chunk["choices"][0]["delta"].get("content"):  # type: ignore[index]
                stamps.append(time.perf_counter())
        run = {"ttft_s": stamps[0] - start, "tokens": len(stamps), "span_s": stamps[-1] - stamps[0]}
        print(json.dumps(run), flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"peak_rss": peak}), flush=True)


if __name__ == "__main__":
    main()
