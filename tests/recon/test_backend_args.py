"""Backend flags shared by replay, live and the reconstruction node: one option parser, named flags checked."""

from __future__ import annotations

import argparse

import pytest

from recon.backends.flags import add_backend_arguments, backend_options
from recon.backends.options import format_backend_options, parse_backend_options, parse_option_value
from recon.errors import ConfigError


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_backend_arguments(parser)
    return parser.parse_args(argv)


def test_values_are_typed() -> None:
    assert [parse_option_value(v) for v in ("3", "0.5", "true", "False", "none", "abc", "[1, 2]", '"x"')] == [
        3, 0.5, True, False, None, "abc", [1, 2], "x"]


def test_round_trip_through_argv() -> None:
    options = {"budget": 600000, "policy": "diversity", "flag": True, "scales": [1, 2.5], "none": None}
    argv = format_backend_options(options)
    assert parse_backend_options(argv[1::2]) == options


def test_named_flags_reach_their_backend_and_only_it() -> None:
    args = parse(["--backend", "laser", "--backbone", "pi3", "--model-config", "tiny", "-o", "window_size=6"])
    assert backend_options(args, "laser") == {"window_size": 6, "backbone": "pi3", "model_config": "tiny"}
    with pytest.raises(ConfigError, match="--backbone does not apply to the infinitevggt backend"):
        backend_options(args, "infinitevggt")
    args = parse(["--budget", "240"])
    assert backend_options(args, "infinitevggt") == {"budget": 240}
    with pytest.raises(ConfigError, match="--budget"):
        backend_options(args, "geometric")


def test_malformed_option_names_the_flag() -> None:
    with pytest.raises(ConfigError, match="--backend-opt 'nokey'"):
        backend_options(parse(["--backend-opt", "nokey"]), "geometric")
