"""Supervised local model workers: the worker program, its supervisor, the model state machine
and residency (keep-alive, LRU eviction, memory budget). See docs/runtime.md."""
