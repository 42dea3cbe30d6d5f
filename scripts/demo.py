"""What `make demo` runs: the embedded stack and the lifecycle as far as it is built.

Each step prints the `gallery` command it runs, so the demo doubles as a tour of the CLI.
The stack is stopped at the end; `make up` keeps one running.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from gallery_common.bus import EventBus
from gallery_common.events import CloudEvent, ModelTrained
from gallery_common.settings import GallerySettings, load_settings
from gallery_common.telemetry import configure_tracing, trace_id_of

GALLERY = str(Path(sys.executable).with_name("gallery"))


def banner(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def gallery(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    print(f"$ gallery {' '.join(args)}", flush=True)
    result = subprocess.run([GALLERY, *args], text=True, capture_output=True)
    print(result.stdout, end="", flush=True)
    if result.returncode != 0:
        print(result.stderr, end="", file=sys.stderr, flush=True)
        if check:
            raise SystemExit(f"`gallery {' '.join(args)}` failed with exit code {result.returncode}")
    return result


async def watch_the_bus(settings: GallerySettings) -> None:
    """Publish a sample event and a malformed one; show one handled and one dead-lettered."""
    handled: list[CloudEvent[ModelTrained]] = []

    async def on_trained(event: CloudEvent[ModelTrained]) -> None:
        handled.append(event)

    async with EventBus(settings.nats_url, source="/modelgallery/demo") as bus:
        consumer = bus.consumer("demo-watcher", on_trained, events=[ModelTrained], ack_wait=10)
        consumer.start()
        tail = subprocess.Popen(
            [GALLERY, "events", "tail", "--count", "1"], text=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        time.sleep(1.0)  # let the tail subscribe before the events go out

        banner("Publish a sample model.trained event")
        gallery("events", "publish-sample", "--model", "digits")

        banner("Publish a malformed event (a model.trained without its artifacts)")
        print("a consumer must refuse it with a reason and go on, never crash-loop", flush=True)
        await bus.publish_raw(
            "model.trained",
            b'{"specversion": "1.0", "id": "demo-malformed", "source": "/demo", '
            b'"type": "io.modelgallery.model.trained.v1", "subject": "digits/x", "data": {"model": "digits"}}',
        )

        deadline = time.monotonic() + 15
        while not handled and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        dead = []
        while not dead and time.monotonic() < deadline:
            dead = await bus.dead_letters()
            await asyncio.sleep(0.1)
        await consumer.stop()

    banner("`gallery events tail` printed the valid event as it arrived")
    try:
        out, _ = tail.communicate(timeout=10)
        print(out, end="")
    except subprocess.TimeoutExpired:
        tail.kill()
        print("(tail saw fewer events than expected)")

    banner("A durable consumer handled the good one, in the publisher's trace")
    for event in handled:
        print(f"handled {event.type} subject={event.subject} trace_id={trace_id_of(event.traceparent)}")
    if not handled:
        raise SystemExit("the sample event was not handled within 15 s")

    banner("and dead-lettered the malformed one with its reason")
    gallery("events", "dlq")


def main() -> None:
    settings = load_settings(GallerySettings, service_name="demo")
    configure_tracing("demo")
    home = settings.home.resolve()
    banner(f"Start the embedded stack (GALLERY_HOME={home})")
    gallery("up", "--detach")
    try:
        asyncio.run(watch_the_bus(settings))
        banner("Health of everything that runs")
        gallery("status", check=False)
    finally:
        banner("Stop what the demo started")
        gallery("down", check=False)
    banner("Where to look")
    print(f"logs:          {home / 'logs'}")
    print(f"event store:   {home / 'nats'} (JetStream, sync_interval: always)")
    print("event schemas: gallery events schema")
    print("keep it up:    make up   (then: gallery events tail, gallery status, make down)")


if __name__ == "__main__":
    os.environ.setdefault("GALLERY_HOME", str(Path(".gallery").resolve()))
    # the commands' tables are captured, so tell them the width of the terminal the demo runs in
    os.environ.setdefault("COLUMNS", str(max(120, shutil.get_terminal_size().columns)))
    main()
