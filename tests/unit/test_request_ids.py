"""Request ids the gateway and the model servers make: unguessable, never handed out twice, not even to a fork."""

from __future__ import annotations

import subprocess
import sys

from gallery_common.contracts.request_ids import is_request_id, new_request_id


def test_fresh_ids_are_128_bit_hex_and_never_repeat_across_many_batches() -> None:
    ids = [new_request_id() for _ in range(1000)]  # many batches of the operating system's bits
    assert all(len(i) == 32 and int(i, 16) >= 0 and is_request_id(i) for i in ids)
    assert len(set(ids)) == len(ids)


# Forked in a fresh interpreter: a fork of this (threaded) test process runs its at-fork hooks in the child,
# and OpenTelemetry's starts a thread there, which can deadlock on a lock another thread held at the fork.
FORK = """
import os
from gallery_common.contracts.request_ids import new_request_id

new_request_id()  # the parent holds the rest of a batch now
read, write = os.pipe()
pid = os.fork()
if pid == 0:  # the child: its next ids, to the parent
    os.close(read)
    os.write(write, " ".join(new_request_id() for _ in range(10)).encode())
    os._exit(0)
os.close(write)
with os.fdopen(read) as pipe:
    child = pipe.read()
os.waitpid(pid, 0)
print(child)
print(" ".join(new_request_id() for _ in range(10)))
"""


def test_a_forked_child_does_not_hand_out_its_parents_remaining_ids() -> None:
    done = subprocess.run([sys.executable, "-c", FORK], capture_output=True, text=True, timeout=60, check=True)
    child_line, parent_line = done.stdout.splitlines()
    child, parent = set(child_line.split()), set(parent_line.split())
    assert len(child) == 10 and len(parent) == 10 and not child & parent
