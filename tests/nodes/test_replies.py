"""The ROUTER shared by the ingest thread and the threads that send replies (`recon.nodes.replies.Replies`).

The ingest thread waits on the socket's ZMQ_FD, which is edge-triggered: a reply sent by another thread may
consume the signal that input arrived. These tests run an ingest-like loop with a long wait (10 s) while other
threads send replies as fast as they can; a frame left unnoticed would show as a wait of seconds, and every reply
must reach the camera.
"""

from __future__ import annotations

import threading
import time

import zmq

from recon.nodes.replies import Replies

WAIT_MS = 10_000


def _ingest_loop(replies: Replies, router: zmq.Socket, want: int, got: list[float], stop: threading.Event) -> None:
    poller = zmq.Poller()
    poller.register(router.getsockopt(zmq.FD), zmq.POLLIN)
    poller.register(replies.wake_fd, zmq.POLLIN)
    replies.attach(router)
    while len(got) < want and not stop.is_set():
        replies.wait(poller, WAIT_MS)
        while batch := replies.receive():
            got.extend(time.monotonic() - float(parts[1].bytes) for parts in batch)


def test_frames_are_noticed_while_other_threads_send_replies(ctx: zmq.Context) -> None:
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    for s in (router, dealer):
        s.setsockopt(zmq.LINGER, 0)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # as the node's ingest sets it: a reply that cannot go is counted
    dealer.setsockopt(zmq.IDENTITY, b"cam")
    router.bind("inproc://replies-test")
    dealer.connect("inproc://replies-test")
    replies = Replies(node_id=1, max_message_bytes=1 << 20)
    n_frames, got, stop = 300, [], threading.Event()
    ingest = threading.Thread(target=_ingest_loop, args=(replies, router, n_frames, got, stop), daemon=True)
    ingest.start()
    sent = [0, 0]

    def ack(k: int) -> None:
        while not stop.is_set():
            replies.send(b"cam", [b"ack", str(k).encode()])
            sent[k] += 1
            time.sleep(0)

    ackers = [threading.Thread(target=ack, args=(k,), daemon=True) for k in range(2)]
    for t in ackers:
        t.start()
    try:
        for _ in range(n_frames):
            dealer.send_multipart([str(time.monotonic()).encode()])
            time.sleep(0.001)
        ingest.join(30)
    finally:
        stop.set()
        for t in ackers:
            t.join(5)
        replies.wake()
        ingest.join(5)
        received = 0
        while dealer.poll(100):
            dealer.recv_multipart()
            received += 1
        router.close(0)
        dealer.close(0)
        replies.close()
    assert len(got) == n_frames
    assert max(got) < 2.0, f"a frame waited {max(got):.2f} s unnoticed (the ingest wait is {WAIT_MS} ms)"
    assert sum(sent) > n_frames and received == sum(sent) - replies.lost, "a reply vanished without being counted"


def test_replies_before_attach_are_sent_on_attach_and_after_detach_are_counted_lost(ctx: zmq.Context) -> None:
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    for s in (router, dealer):
        s.setsockopt(zmq.LINGER, 0)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    dealer.setsockopt(zmq.IDENTITY, b"cam")
    router.bind("inproc://replies-early")
    dealer.connect("inproc://replies-early")
    dealer.send(b"hello")  # the ROUTER learns the route to "cam"
    assert router.poll(2000)
    router.recv_multipart()
    replies = Replies(node_id=7, max_message_bytes=1 << 20)
    replies.credit(b"cam", "s0", 5, window=1, acked=[3])
    replies.attach(router)
    assert dealer.poll(2000)
    assert b"recon/credit/v1" in dealer.recv_multipart()[1]
    assert replies.detach() is router
    replies.credit(b"cam", "s0", 5, window=1, acked=[4])
    assert replies.lost == 1 and not dealer.poll(200)
    router.close(0)
    dealer.close(0)
    replies.close()
