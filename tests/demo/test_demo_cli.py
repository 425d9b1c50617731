"""``stream-infer demo --quick`` as a user runs it (a subprocess): what it prints and writes,
and that the broker it started is gone afterwards, on a normal exit and on Ctrl-C."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest
from PIL import Image

from stream_infer.candles import read_klines
from stream_infer.events import Prediction, decode_prediction
from stream_infer.pipeline import first_prediction_index
from tests.conftest import REPO

pytestmark = pytest.mark.services

BROKER = re.compile(r"^broker: embedded Tansu pid=(\d+) at 127\.0\.0\.1:(\d+)$", re.M)
DATA_LINE = re.compile(r"^data: (\S+) 1m (\d+) candles from (\S+)$", re.M)
SUMMARY = re.compile(
    r"^summary: candles=(\d+) predictions=(\d+) dead_letters=(\d+) "
    r"latency_ms p50=(\d+\.\d+) p99=(\d+\.\d+) symbols=(\d+) version=(\S+)$",
    re.M,
)
# Index of a stream's first prediction (0-based, the readiness rule).
SEQ_LEN = json.loads((REPO / "artifacts" / "ensemble-v1" / "manifest.json").read_text())["seq_len"]
FIRST = first_prediction_index(SEQ_LEN)


def demo_cmd(*args: str) -> list[str]:
    return [sys.executable, "-c", "from stream_infer.cli import main; main()", "demo", *args]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without database or model settings of the caller, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DB_", "ML_", "KAFKA_")) and k != "STREAM_INFER_CONFIG"
    }
    env.update(extra)
    return env


def assert_broker_gone(out: str) -> int:
    m = BROKER.search(out)
    assert m, "the demo did not print its broker's pid"
    pid, port = int(m[1]), m[2]
    assert not _running(pid), f"the broker (pid {pid}) outlived the demo"
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            assert f"127.0.0.1:{port}".encode() not in cmdline, f"pid {proc.name} still serves"
    return pid


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    zombie = stat.rsplit(")", 1)[-1].split()[0] == "Z"
    return not zombie and b"tansu" in cmdline


def assert_png(path: Path) -> None:
    assert path.is_file(), f"no chart at {path}"
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        img.load()
        assert img.format == "PNG" and img.width >= 800 and img.height >= 400


def read_predictions(path: Path) -> list[Prediction]:
    return [decode_prediction(line) for line in path.read_bytes().splitlines() if line]


def check_every_candle_predicted_once(out: str, preds: list[Prediction]) -> dict[str, int]:
    """Per symbol: a prediction for each candle sent from the (FIRST + 1)th on, exactly once."""
    sent = {m[1]: (int(m[2]), Path(m[3])) for m in DATA_LINE.finditer(out)}
    assert sent, "no data lines"
    by_symbol: dict[str, list[int]] = defaultdict(list)
    for p in preds:
        by_symbol[p.symbol].append(p.open_time)
    assert set(by_symbol) == set(sent), "a symbol without predictions"
    counts = {}
    for symbol, (_, path) in sent.items():
        got = by_symbol[symbol]
        assert len(got) == len(set(got)), f"{symbol}: a candle predicted twice"
        times = read_klines(path)["open_time"].tolist()
        last = max(got)
        want = times[FIRST : times.index(last) + 1]
        assert sorted(got) == want, f"{symbol}: predictions are not candles {FIRST + 1}.. in order"
        counts[symbol] = len(got)
    return counts


def test_quick_demo_prints_writes_and_leaves_nothing_running(tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    t0 = time.monotonic()
    proc = subprocess.run(
        demo_cmd("--quick", "--out", str(out_dir)),
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    took = time.monotonic() - t0
    out = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out}\n{proc.stderr}"
    assert_broker_gone(out)
    assert "config: file " in out

    m = SUMMARY.search(out)
    assert m, f"no summary line in:\n{out}"
    candles, predictions, dead, p50, p99, symbols, version = m.groups()
    assert int(symbols) == 3 and int(dead) == 0
    assert 0 < float(p50) <= float(p99) < 1000
    assert version == "ensemble-v1"

    preds = read_predictions(out_dir / "predictions.jsonl")
    counts = check_every_candle_predicted_once(out, preds)
    assert int(predictions) == len(preds) == sum(counts.values())
    sent = sum(int(m[2]) for m in DATA_LINE.finditer(out))
    assert int(candles) == sent  # the service processed every candle sent
    for symbol in counts:  # the final per-symbol lines
        assert re.search(
            rf"^  {symbol}: candle=.* P\(up\) h1=0\.\d+ h5=0\.\d+ h15=0\.\d+ ", out, re.M
        )
    assert {p.version for p in preds} == {"ensemble-v1"}
    assert all(0.0 <= x <= 1.0 for p in preds for x in p.predictions)

    assert f"chart: {out_dir / 'demo-chart.png'}" in out
    assert_png(out_dir / "demo-chart.png")
    summary = (out_dir / "summary.json").read_text()
    assert '"broker_running": false' in summary
    print(f"demo --quick took {took:.1f} s; {m[0]}")


class Running:
    """A demo subprocess whose stdout lines are collected by a thread."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            demo_cmd(*args),
            cwd=REPO,
            env=clean_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.err = ""
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout or ():
            self.lines.put(line)

    def wait_for_live_predictions(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                assert self.proc.poll() is None, self.output() + self.stderr()
                continue
            self.seen.append(line)
            if re.match(r"^\[.*\] live .* predictions=[1-9]", line):
                return
        pytest.fail(f"no live predictions within {timeout:g} s:\n{self.output()}")

    def finish(self, timeout: float) -> int:
        try:
            rc = self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        time.sleep(0.2)  # the reader thread drains the pipe
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return rc

    def output(self) -> str:
        return "".join(self.seen)

    def stderr(self) -> str:
        if not self.err and self.proc.poll() is not None and self.proc.stderr:
            self.err = self.proc.stderr.read()
        return self.err


def test_ctrl_c_stops_early_reports_and_stops_the_broker(tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    demo = Running("--quick", "--duration", "120", "--out", str(out_dir))
    try:
        demo.wait_for_live_predictions()
        assert BROKER.search(demo.output())
        demo.proc.send_signal(signal.SIGINT)
    finally:
        rc = demo.finish(timeout=30)
    out = demo.output()
    assert rc == 130, out + demo.stderr()
    assert_broker_gone(out)
    m = SUMMARY.search(out)
    assert m and int(m[2]) > 0, out
    assert "interrupted: stopped early" in out
    assert_png(out_dir / "demo-chart.png")
    assert len(read_predictions(out_dir / "predictions.jsonl")) == int(m[2])


def test_a_broker_that_dies_mid_run_ends_the_demo_with_an_error(tmp_path: Path) -> None:
    demo = Running("--quick", "--duration", "120", "--out", str(tmp_path / "out"))
    try:
        demo.wait_for_live_predictions()
        m = BROKER.search(demo.output())
        assert m
        os.kill(int(m[1]), signal.SIGKILL)
        t0 = time.monotonic()
    finally:
        rc = demo.finish(timeout=60)
    took = time.monotonic() - t0
    err = demo.stderr()
    assert rc == 1, demo.output() + err
    assert f"error: the embedded broker (pid {m[1]}) exited during the demo" in err
    assert took < 30, f"the demo took {took:.1f} s to notice and clean up"
    assert_broker_gone(demo.output())


def test_a_failure_after_the_broker_started_still_stops_it(tmp_path: Path) -> None:
    """Models that fail their checks (a byte flipped) end the demo with one error line; the
    broker it had started by then is stopped."""
    import shutil

    models = tmp_path / "ensemble-v1"
    shutil.copytree(REPO / "artifacts" / "ensemble-v1", models)
    blob = bytearray((models / "mamba.pt").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (models / "mamba.pt").write_bytes(bytes(blob))
    proc = subprocess.run(
        demo_cmd("--quick", "--models", str(models), "--out", str(tmp_path / "out")),
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: "), proc.stderr
    assert "mamba.pt" in proc.stderr
    assert "broker: stopped" in proc.stdout
    assert_broker_gone(proc.stdout)


def test_a_killed_demo_leaves_no_broker(tmp_path: Path) -> None:
    """SIGKILL runs no cleanup of ours: the broker goes because it dies with its parent."""
    proc = subprocess.Popen(
        demo_cmd("--quick", "--out", str(tmp_path / "out")),
        cwd=REPO,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    seen = []
    try:
        for line in proc.stdout or ():
            seen.append(line)
            if BROKER.search(line):
                break
        m = BROKER.search("".join(seen))
        assert m, "".join(seen)
        assert _running(int(m[1]))
        proc.kill()
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    deadline = time.monotonic() + 10
    while _running(int(m[1])) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert_broker_gone("".join(seen))
