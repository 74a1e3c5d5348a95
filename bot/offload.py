"""Image work off the event loop: Pillow runs in a small pool of low-priority threads.

Decoding, gridding and re-encoding a 4096² result takes seconds of CPU. In the event loop that
would stall the gateway heartbeat and every interaction's 3 s acknowledgement; in a thread of
normal priority it still competes with the loop for the machine's cores. Linux gives each thread
its own nice value, so these threads lower theirs and the loop wins the CPU when it wakes.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

NICENESS = 10  # 0 is normal, 19 the lowest


def _lower_priority() -> None:
    try:  # Linux: the thread's own priority; elsewhere this renices the process, so it is skipped
        if os.uname().sysname == "Linux":
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICENESS)
    except (AttributeError, OSError):  # no such call here, or not allowed: normal priority still works
        pass


_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="image-work", initializer=_lower_priority)


async def off_loop(function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run `function(*args, **kwargs)` in the image pool and await its result."""
    return await asyncio.get_running_loop().run_in_executor(_POOL, functools.partial(function, *args, **kwargs))
