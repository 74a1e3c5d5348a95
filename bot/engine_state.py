"""What /queue and /help say about the engines: one typed line per engine, of any backend."""

from __future__ import annotations

from dataclasses import dataclass

# What a user is told while the GPU workers' Redis does not answer (bot/remote_engine.py's `fatal`): unlike a
# local engine that cannot start, which is the operator's to fix, this passes, so it is said as it is.
UNREACHABLE = "The GPU workers are unreachable right now (the bot cannot reach Redis); try again in a minute."


@dataclass(frozen=True)
class EngineState:
    """One engine of the pool as /queue and /help show it."""

    name: str  # "cuda:0", a worker's name
    device: str  # what the engine reported once ready ("" before)
    status: str  # ready | starting | restarting | down | unreachable
    busy: bool


def describe_engines(engines: list[EngineState]) -> str:
    """`2 engines: cuda:0 (busy), cuda:1 (idle)`; a remote worker `w1 on cuda:0 (idle)`."""
    if not engines:
        return "No GPU engine is connected"
    parts = []
    for engine in engines:
        state = ("busy" if engine.busy else "idle") if engine.status == "ready" else engine.status
        if engine.name == "auto" and engine.device:
            label = engine.device
        elif not engine.device or engine.name.startswith(engine.device) or engine.device.startswith(engine.name):
            label = engine.name  # "cpu #2" on "cpu" says nothing new
        else:
            label = f"{engine.name} on {engine.device}"
        parts.append(f"{label} ({state})")
    return f"{len(engines)} engine{'s' if len(engines) != 1 else ''}: {', '.join(parts)}"
