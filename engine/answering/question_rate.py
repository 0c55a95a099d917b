"""How many questions one chat session may ask in a minute (DEPLOYWISE_QUESTIONS_PER_MINUTE).

Every question reads the registry, searches, stores a record and may hold the LLM: a visitor who floods the chat
would slow every other session and fill the answer store. The count is per client key (the page passes its
session's), in memory, per process: a restart forgets it, which costs at most one more minute of questions.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

WINDOW_S = 60.0


class QuestionRate:
    """A sliding one-minute window of accepted questions per client; thread-safe (one per process)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._asked: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def wait_s(self, client: str, per_minute: int) -> float:
        """0.0 when `client` may ask now (the question is counted), else the seconds until it may (not counted)."""
        with self._lock:
            now = self.clock()
            for key in [key for key, times in self._asked.items() if times[-1] <= now - WINDOW_S]:
                del self._asked[key]  # clients silent for a minute are forgotten: the table stays small
            asked = self._asked.setdefault(client, deque())
            while asked and asked[0] <= now - WINDOW_S:
                asked.popleft()
            if len(asked) >= per_minute:
                return asked[0] + WINDOW_S - now
            asked.append(now)
            return 0.0


QUESTION_RATE = QuestionRate()
