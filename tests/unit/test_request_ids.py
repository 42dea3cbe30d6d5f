"""Request ids the gateway and the model servers make: unguessable, never handed out twice, not even to a fork."""

from __future__ import annotations

import os

from gallery_common.contracts.request_ids import is_request_id, new_request_id


def test_fresh_ids_are_128_bit_hex_and_never_repeat_across_many_batches() -> None:
    ids = [new_request_id() for _ in range(1000)]  # many batches of the operating system's bits
    assert all(len(i) == 32 and int(i, 16) >= 0 and is_request_id(i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_a_forked_child_does_not_hand_out_its_parents_remaining_ids() -> None:
    new_request_id()  # the parent holds the rest of a batch now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        os.close(read)
        os.write(write, " ".join(new_request_id() for _ in range(10)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split())
    os.waitpid(pid, 0)
    parent = {new_request_id() for _ in range(10)}
    assert len(child) == 10 and not child & parent
