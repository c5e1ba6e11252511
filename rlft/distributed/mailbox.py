"""Every queue between the driver and the train workers in one actor: one process, where a
`ray.util.queue.Queue` per queue is a process each (about 0.1 GB and a second of start-up apiece).

The actor is an asyncio actor, so a `get` that waits does not hold up a `put` to the same or another box.
"""

import asyncio
from queue import Empty

import ray


class Mailbox:
    """Named first-in, first-out boxes."""

    def __init__(self, names: list[str]):
        self.boxes = {name: asyncio.Queue() for name in names}

    async def put(self, name: str, item) -> None:
        self.boxes[name].put_nowait(item)

    async def get(self, name: str, timeout_s: float | None) -> list:
        """[the oldest item], or [] when none came within timeout_s (None: wait for one)."""
        try:
            return [await asyncio.wait_for(self.boxes[name].get(), timeout_s)]
        except TimeoutError:
            return []


class Box:
    """One box of a Mailbox actor, used as a queue: `put(item)`, `get(timeout=...)` raising queue.Empty."""

    def __init__(self, mailbox, name: str):
        self.mailbox, self.name = mailbox, name

    def put(self, item) -> None:
        ray.get(self.mailbox.put.remote(self.name, item))

    def get(self, timeout: float | None = None):
        got = ray.get(self.mailbox.get.remote(self.name, timeout))
        if not got:
            raise Empty
        return got[0]


def open_boxes(names: list[str], **actor_options) -> list[Box]:
    """A Mailbox actor with `actor_options` (resources, scheduling) and a Box for each name, in order."""
    mailbox = ray.remote(Mailbox).options(**actor_options).remote(names)
    return [Box(mailbox, name) for name in names]
