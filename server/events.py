"""In-process fan-out of job events to watchers.

The store keeps every event (so a watcher can resume after any sequence number,
even across a restart); the bus only pushes new ones to the watchers connected
now. A watcher's queue is unbounded because a job has few events; a watcher
that goes away just drops its queue and never slows the job down.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

from mediagen.v1 import common_pb2


class EventBus:
    def __init__(self) -> None:
        self._watchers: dict[str, set[asyncio.Queue[common_pb2.JobEvent]]] = defaultdict(set)

    def subscribe(self, job_id: str) -> asyncio.Queue[common_pb2.JobEvent]:
        queue: asyncio.Queue[common_pb2.JobEvent] = asyncio.Queue()
        self._watchers[job_id].add(queue)
        return queue

    def unsubscribe(self, job_id: str, queue: asyncio.Queue[common_pb2.JobEvent]) -> None:
        watchers = self._watchers.get(job_id)
        if watchers is None:
            return
        watchers.discard(queue)
        if not watchers:
            del self._watchers[job_id]

    def publish(self, job_id: str, event: common_pb2.JobEvent) -> None:
        for queue in self._watchers.get(job_id, ()):
            queue.put_nowait(event)

    def has_watchers(self, job_id: str) -> bool:
        return bool(self._watchers.get(job_id))

    def watcher_count(self) -> int:
        return sum(len(w) for w in self._watchers.values())
