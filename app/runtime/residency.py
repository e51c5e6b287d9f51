"""Which models may be resident: ``max_loaded`` and the memory budget, pure.

Before a worker is spawned its need is estimated (file size plus context and runtime
overhead; the 253 MB Gemma measured about 420 MB RSS at ``n_ctx`` 2048); after the load the
worker's real RSS replaces the estimate. A model that does not fit evicts the least recently
used idle models (Ollama's scheduler does the same); when even that cannot make room the load
is refused at once with 507 ``memory_budget_exceeded``, never queued.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.errors import MemoryBudgetExceeded

MIB = 1024 * 1024
RUNTIME_OVERHEAD_BYTES = 64 * MIB  # interpreter + llama.cpp buffers, measured ~60 MB
KV_BYTES_PER_CTX_TOKEN = 48 * 1024  # Gemma 3 270M: ~100 MB of KV cache and scratch at 2048


def estimate_bytes(file_bytes: int, n_ctx: int) -> int:
    return file_bytes + RUNTIME_OVERHEAD_BYTES + n_ctx * KV_BYTES_PER_CTX_TOKEN


@dataclass(frozen=True, slots=True)
class Resident:
    model_id: str
    need_bytes: int  # the estimate until loaded, then the measured RSS
    last_used: float
    busy: bool  # generating, queued for or loading: never evicted


def admit(
    model_id: str,
    need_bytes: int,
    residents: list[Resident],
    *,
    budget_bytes: int,
    max_loaded: int,
) -> list[str]:
    """The models to evict (least recently used first) so ``model_id`` fits, or raise."""
    if need_bytes > budget_bytes:
        raise MemoryBudgetExceeded(
            f"Model '{model_id}' needs about {need_bytes // MIB} MB; the memory budget is "
            f"{budget_bytes // MIB} MB.",
            extra={"need_mb": need_bytes // MIB, "budget_mb": budget_bytes // MIB},
        )
    others = [r for r in residents if r.model_id != model_id]
    used = sum(r.need_bytes for r in others)
    count = len(others)
    idle = sorted((r for r in others if not r.busy), key=lambda r: r.last_used)
    victims: list[str] = []
    while used + need_bytes > budget_bytes or count + 1 > max_loaded:
        if not idle:
            raise MemoryBudgetExceeded(
                f"Model '{model_id}' does not fit beside the models in use "
                f"({used // MIB} MB of {budget_bytes // MIB} MB, {count} of {max_loaded} loaded).",
                extra={
                    "need_mb": need_bytes // MIB,
                    "used_mb": used // MIB,
                    "budget_mb": budget_bytes // MIB,
                },
            )
        victim = idle.pop(0)
        victims.append(victim.model_id)
        used -= victim.need_bytes
        count -= 1
    return victims


def keep_alive_left(last_used: float, keep_alive_s: float, now: float) -> float:
    return max(0.0, last_used + keep_alive_s - now)
