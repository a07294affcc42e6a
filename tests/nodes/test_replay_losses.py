"""`recon replay` reports what reached its outputs: a result an output failed on is a lost result, the run exits
non-zero and summary.json says how many; the stream's capture-to-publish latency is in the summary too."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from recon import backends
from recon.backends import BackendEntry
from recon.cli import main
from recon.commands import replay
from tests.recon.test_replay import GroundTruthBackend, GroundTruthConfig, TinySequence

pytestmark = pytest.mark.timeout(60)


class FailsOnSeq3:
    name = "rerun"

    def __init__(self) -> None:
        self.output = types.SimpleNamespace(serving=False, urls={})

    def on_result(self, result: object) -> None:
        if result.seq == 3:  # type: ignore[attr-defined]
            raise OSError("disk full")

    def close(self) -> None:
        pass


def test_a_result_an_output_failed_on_is_counted_lost_and_fails_the_run(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("recon_test_fake_backend_losses")
    module.create = lambda config: GroundTruthBackend(late=config.late)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(backends._REGISTRY, "fake_gt",
                        BackendEntry("fake_gt", f"{module.__name__}:create", (), -1, "test: ground-truth poses",
                                     GroundTruthConfig))
    monkeypatch.setattr(replay, "open_sequence_for_replay", lambda path, on_error: TinySequence(on_error=on_error, n=8))
    import recon.viewer

    monkeypatch.setattr(recon.viewer, "create_rerun_sink", lambda *a, **k: FailsOnSeq3())
    out = tmp_path / "run"
    code = main(["replay", "seq", "--backend", "fake_gt", "--out", str(out), "--no-progress"])
    summary = json.loads((out / "summary.json").read_text())
    assert code == 1
    assert summary["results_lost"] == 1 and summary["results_out"] == 8
    assert summary["latency_ms"]["tiny"]["n"] == 8 and summary["latency_ms"]["tiny"]["p99"] > 0
    assert summary["streams"]["tiny"]["frames"] == 8 and summary["streams"]["tiny"]["results_lost"] == 0
