"""A work queue inside one process, for unit tests of a service's job worker without NATS: one worker
thread takes the submitted jobs in order, each delivered once, as `gallery_common.work_queue.WorkQueue`
hands them out."""

from __future__ import annotations

import queue
import threading

from gallery_common.work_queue import Delivery, JobWorker, Settle


class LocalQueue:
    """A work queue inside one process: one worker thread takes the submitted jobs in order."""

    def __init__(self) -> None:
        self.waiting: queue.Queue[str | None] = queue.Queue()
        self.settled: list[tuple[str, Settle]] = []
        self.thread: threading.Thread | None = None

    def submit(self, job_id: str) -> None:
        self.waiting.put(job_id)

    def start(self, worker: JobWorker) -> None:
        def work() -> None:
            while (job_id := self.waiting.get()) is not None:
                self.settled.append((job_id, worker.run(Delivery(job_id, 1))))

        self.thread = threading.Thread(target=work, daemon=True)
        self.thread.start()

    def stop(self, worker: JobWorker) -> None:
        worker.stop()
        self.waiting.put(None)
        if self.thread is not None:
            self.thread.join(5)

    def submit_blocking(self, job_id: str) -> bool:
        """As `WorkQueue.submit_blocking`: what a plain route calls."""
        self.submit(job_id)
        return True
