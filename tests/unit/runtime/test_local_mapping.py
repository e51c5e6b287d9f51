"""What the local provider and the worker make of an OpenAI request: sampling fields,
content parts, Ollama's keep_alive."""

from __future__ import annotations

import pytest

from app.errors import ValidationFailed
from app.providers.local import keep_alive_seconds, worker_request
from app.runtime.worker import _sampling


def test_sampling_fields_reach_llama_cpp_by_their_names() -> None:
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "be brief"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}],
            },
        ],
        "temperature": 0.3,
        "top_p": 0.9,
        "max_completion_tokens": 7,
        "stop": "END",
        "seed": 42,
        "frequency_penalty": 0.5,
        "logprobs": True,  # not mapped: the local model ignores it
    }
    request = worker_request(body)
    assert request["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi there"},
    ]
    assert _sampling(request["params"]) == {
        "temperature": 0.3,
        "top_p": 0.9,
        "max_tokens": 7,
        "seed": 42,
        "frequency_penalty": 0.5,
        "stop": ["END"],
    }
    assert _sampling({"stop": ["a", "b", "c", "d", "e"]})["stop"] == ["a", "b", "c", "d"]


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(None, None), (0, 0.0), (30, 30.0), ("90s", 90.0), ("5m", 300.0), ("1h", 3600.0)],
)
def test_keep_alive_accepts_seconds_and_durations(value: object, seconds: float | None) -> None:
    assert keep_alive_seconds({"keep_alive": value}) == seconds


def test_negative_keep_alive_keeps_the_model_and_junk_is_422() -> None:
    forever = keep_alive_seconds({"keep_alive": -1})
    assert forever is not None
    assert forever > 86_400 * 365
    with pytest.raises(ValidationFailed):
        keep_alive_seconds({"keep_alive": "soon"})
    with pytest.raises(ValidationFailed):
        keep_alive_seconds({"keep_alive": True})
