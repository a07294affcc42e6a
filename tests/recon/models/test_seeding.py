"""Seeded random models built on several threads at once are identical (recon.models.seeding): a node's sessions
build their models on their own threads, and a stream restored on another worker must step the same model."""

from __future__ import annotations

import threading

import torch

from recon.models.vggt import build_vggt


def test_concurrent_seeded_builds_give_the_same_weights() -> None:
    models: list[torch.nn.Module] = []
    lock = threading.Lock()
    start = threading.Barrier(4)

    def build() -> None:
        start.wait()
        model = build_vggt(model_config="tiny", device="cpu", seed=0)
        with lock:
            models.append(model)

    threads = [threading.Thread(target=build) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    reference = build_vggt(model_config="tiny", device="cpu", seed=0).state_dict()
    assert len(models) == 4
    for model in models:
        state = model.state_dict()
        assert all(torch.equal(state[k], reference[k]) for k in reference), "a seed means one set of weights"
