"""Fixture runners: one module per family, each exposing `PROCEDURES` and/or `FIXTURE_PREFIXES`.

- `PROCEDURES: dict[str, Runner]` keys are `config.json["procedure"]` values (VGGT-family fixtures).
- `FIXTURE_PREFIXES: dict[str, Runner]` keys match the start of `config.json["fixture"]` for families whose
  configs carry no `procedure` field (for example "laser_sim3", "kda", "pi3"); the longest prefix wins.

A runner is `run(folder: Path, cfg: dict) -> None` and asserts every stored output.
"""
