"""The README's command table says each command is exercised by the test suite: hold it to
that. A command added to the table without a test here, or a test renamed away, fails."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stream_infer.cli import app

REPO = Path(__file__).resolve().parent.parent

# README command -> the test that runs that command (through the CLI, not its library call)
EXERCISED = {
    "demo": "tests.demo.test_demo_cli::test_quick_demo_prints_writes_and_leaves_nothing_running",
    "broker": "tests.kafka.test_broker::test_broker_command_prints_the_address_and_stops_on_sigterm",
    "produce": "tests.kafka.test_broker::test_produce_command_interleaves_files_keyed_by_symbol",
    "run": "tests.kafka.test_restart::test_sigkill_and_restart_loses_nothing_and_rebuilds_state",
    "replay": "tests.pipeline.test_replay_cli::test_replay_command_writes_predictions_and_dead_letters",
    "features": "tests.features.test_cli::test_writes_the_batch_features",
    "train": "tests.models.test_train::test_cli_train_then_evaluate",
    "evaluate": "tests.models.test_train::test_cli_train_then_evaluate",
    "db migrate": "tests.db.test_schema::test_migrate_command_creates_then_reports_up_to_date",
    "db load-candles": "tests.pgsource.test_infer::test_newest_candle_equals_replay_for_three_real_months",
    "predict": "tests.pgsource.test_infer::test_predict_write_twice_leaves_one_row_per_prediction",
    "activate": "tests.reload.test_real_models::test_activate_command",
    "bench": "tests.benchmarks.test_bench_cli::test_bench_cli_writes_json_and_table",
}


def readme_commands() -> list[str]:
    """The command column of the README's table: "| `db migrate` | ..." -> "db migrate"."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Commands", 1)[1].split("\n## ", 1)[0]
    out = []
    for m in re.finditer(r"^\| `([^`]+)` \|", section, flags=re.M):
        words = [w for w in m.group(1).split() if re.fullmatch(r"[a-z][a-z-]*", w)]
        out.append(" ".join(words[:2] if words[0] == "db" else words[:1]))
    return out


def test_every_readme_command_has_a_test_that_exists() -> None:
    cmds = readme_commands()
    assert len(cmds) >= 10, cmds
    assert sorted(cmds) == sorted(EXERCISED), "README command table != EXERCISED"
    for cmd, ref in EXERCISED.items():
        module, name = ref.split("::")
        assert callable(getattr(importlib.import_module(module), name, None)), (cmd, ref)


@pytest.mark.parametrize("cmd", sorted(EXERCISED))
def test_readme_command_is_a_cli_command(cmd: str) -> None:
    res = CliRunner().invoke(app, [*cmd.split(), "--help"])
    assert res.exit_code == 0, res.output
    assert "Usage" in res.output


# Where the docs state when the bundled model first predicts: each figure must be the
# readiness rule's, for the bundled model's seq_len (the docs cannot import it; this can).
READINESS_DOCS = ("README.md", "docs/demo.md", "docs/service.md")
_READY_FIGURE = re.compile(
    r"(\d+)(?:st|nd|rd|th) candle|needs (\d+) candles|candles (\d+)\.\.|"
    r">= (\d+) to predict|prediction per symbol at candle (\d+)|(\d+) for the bundled"
)


def test_readiness_figures_in_the_docs_follow_the_rule() -> None:
    import json

    from stream_infer.features import WARMUP
    from stream_infer.pipeline import ready_candles

    manifest = REPO / "artifacts" / "ensemble-v1" / "manifest.json"
    seq_len = json.loads(manifest.read_text(encoding="utf-8"))["seq_len"]
    found = []
    for name in READINESS_DOCS:
        for m in _READY_FIGURE.finditer((REPO / name).read_text(encoding="utf-8")):
            n = int(next(g for g in m.groups() if g is not None))
            found.append((name, m.group(0), n))
    assert len(found) >= 6, found
    for name, text, n in found:
        assert n in (ready_candles(seq_len), WARMUP), (name, text, ready_candles(seq_len))
