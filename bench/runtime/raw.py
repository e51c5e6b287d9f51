"""The baseline: llama_cpp in one plain process, no Keel. Prints one JSON line of figures.

python -m bench.runtime.raw MODEL_PATH MAX_TOKENS REPS
"""

from __future__ import annotations

import json
import resource
import sys
import time

PROMPT = [{"role": "user", "content": "Count from one to one hundred in words."}]


def main() -> None:
    path, max_tokens, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
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
    runs = []
    for _ in range(reps):
        start = time.perf_counter()
        stamps = []
        for chunk in llm.create_chat_completion(
            messages=PROMPT,
            max_tokens=max_tokens,
            temperature=0.0,
            seed=1,
            stream=True,  # type: ignore[arg-type]
        ):
            if chunk["choices"][0]["delta"].get("content"):  # type: ignore[index]
                stamps.append(time.perf_counter())
        runs.append(
            {"ttft_s": stamps[0] - start, "tokens": len(stamps), "span_s": stamps[-1] - stamps[0]}
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "runs": runs, "peak_rss": peak}))


if __name__ == "__main__":
    main()
