"""Command line: check's exit codes and messages, eval's output, run's errors."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bridge.cli import main, parse_time
from tests.doubles.tempo import Span, TempoDouble
from tests.support.files import Rule, write_config, write_rules
from tests.support.servers import serving

ROOT = Path(__file__).resolve().parent.parent
T0 = 1795780800


def test_check_accepts_the_shipped_config_and_rules(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--config", str(ROOT / "examples" / "bridge.yaml")]) == 0
    assert main(["check", str(ROOT / "rules" / "openrouter.yaml")]) == 0
    assert "SUCCESS" in capsys.readouterr().out


def test_check_lists_every_error_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        textwrap.dedent(
            """\
            groups:
              - name: g
                interval: 7s
                rules:
                  - record: 1bad
                    expr: '{ } | rate()'
                    kind: counter
            """
        )
    )
    assert main(["check", str(bad)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2
    assert err[0].startswith(f"{bad}:3:15: ")
    assert err[1].startswith(f"{bad}:5:17: ")


def test_run_with_a_bad_config_is_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "bridge.yaml"
    config.write_text("tempo:\n  url: localhost:3200\nrule_files: []\n")
    assert main(["run", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"tempo-bridge: {config}:2:8: ")
    assert "Traceback" not in err
    assert main(["run", "--config", str(tmp_path / "missing.yaml")]) == 1
    assert "Traceback" not in capsys.readouterr().err


def test_parse_time() -> None:
    assert parse_time("now", now=1000.0) == 1000.0
    assert parse_time("2h", now=10000.0) == 2800.0
    assert parse_time("1795780800") == 1795780800.0
    assert parse_time("2026-11-27T09:00:00Z") == 1795770000.0


async def run_cli(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", *args, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_eval_prints_table_and_openmetrics(tmp_path: Path) -> None:
    spans = [
        Span(start_ns=(T0 + 10 + i * 30) * 10**9, attributes={"model": "a\"b", "cost": 0.25},
             resource={"service.name": "svc"}, trace_id=f"{0xa0 + i:032x}")
        for i in range(6)
    ]
    tempo = TempoDouble(spans, clock=lambda: T0 + 3600, query_end_cutoff=0)
    sums = '{ resource.service.name = "svc" } | sum_over_time(span.cost) by (span.model)'
    write_rules(tmp_path / "rules.yaml", Rule("cost_usd_total", sums),
                interval="60s", query_offset="60s", settle=None)
    async with serving(tempo) as url:
        config = write_config(tmp_path, url)
        code, out, err = await run_cli(
            "eval", "--config", str(config), "--from", str(T0), "--to", str(T0 + 180)
        )
        assert code == 0, err
        lines = out.splitlines()
        # each window's exemplar: of its two equal spans, the later (Tempo's trace IDs drop
        # leading zeros)
        under = " " * 46
        assert lines == [
            '2026-11-27T12:00:00Z                     0.0  cost_usd_total{model="a\\"b"}',
            '2026-11-27T12:01:00Z                     0.5  cost_usd_total{model="a\\"b"}',
            under + '# {traceID="a1"} 0.25 2026-11-27T12:00:40Z',
            '2026-11-27T12:02:00Z                     1.0  cost_usd_total{model="a\\"b"}',
            under + '# {traceID="a3"} 0.25 2026-11-27T12:01:40Z',
            '2026-11-27T12:03:00Z                     1.5  cost_usd_total{model="a\\"b"}',
            under + '# {traceID="a5"} 0.25 2026-11-27T12:02:40Z',
        ]
        code, out, err = await run_cli(
            "eval", "--config", str(config), "--from", str(T0), "--to", str(T0 + 180),
            "--format", "openmetrics",
        )
        assert code == 0, err
        assert out.splitlines() == [
            "# TYPE cost_usd counter",
            'cost_usd_total{model="a\\"b"} 0.0 1795780800',
            'cost_usd_total{model="a\\"b"} 0.5 1795780860 # {traceID="a1"} 0.25 1795780840',
            'cost_usd_total{model="a\\"b"} 1.0 1795780920 # {traceID="a3"} 0.25 1795780900',
            'cost_usd_total{model="a\\"b"} 1.5 1795780980 # {traceID="a5"} 0.25 1795780960',
            "# EOF",
        ]
        assert len(tempo.requests) == 2  # one range query per eval


RULES_CORPUS = sorted((ROOT / "tests" / "fixtures" / "rules" / "bad").glob("*.yaml"))
CONFIG_CORPUS = sorted((ROOT / "tests" / "fixtures" / "config" / "bad").glob("*.yaml"))


def expected_lines(path: Path) -> list[str]:
    """The corpus' ``line:col: message`` lines as the command prints them."""
    text = path.with_suffix(".err").read_text().replace("{dir}", str(path.parent.absolute()))
    lines = []
    for line in text.splitlines():
        where, _, message = line.partition(": ")
        lines.append(f"{path}: {message}" if where == "0:0" else f"{path}:{line}")
    return lines


@pytest.mark.parametrize("path", RULES_CORPUS, ids=lambda p: p.stem)
def test_check_prints_each_bad_rule_file_error_and_exits_1(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.splitlines() == expected_lines(path)


@pytest.mark.parametrize("path", CONFIG_CORPUS, ids=lambda p: p.stem)
def test_run_and_check_refuse_each_bad_config_with_exit_1(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    first, *rest = expected_lines(path)
    assert err.splitlines() == [f"tempo-bridge: {first}", *rest]
    assert main(["check", "--config", str(path)]) == 1
    assert "Traceback" not in capsys.readouterr().err


def test_run_on_a_port_in_use_is_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        write_rules(tmp_path / "rules.yaml")
        config = write_config(tmp_path, "http://127.0.0.1:9",
                              web={"listen_address": f"127.0.0.1:{port}"})
        assert main(["run", "--config", str(config)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"tempo-bridge: cannot listen on 127.0.0.1:{port} (web.listen_address): ")
    assert err.endswith("address already in use")
    assert "\n" not in err


def test_the_command_ends_without_waiting_for_abandoned_work(tmp_path: Path) -> None:
    """Once ``main`` has returned, the command ends: it flushes what was printed and
    exits with main's status, without waiting for a worker thread still busy with work
    whose result nobody wants (Python's exit would join it)."""
    done = tmp_path / "done"
    script = f"""
import concurrent.futures, pathlib, time
import bridge.cli as cli

def main(argv=None):
    pool = concurrent.futures.ThreadPoolExecutor(1)
    pool.submit(lambda: (time.sleep(120), pathlib.Path({str(done)!r}).write_text("x")))
    print("stopped")  # a pipe: buffered until entry flushes it
    return 3

cli.main = main
cli.entry()
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60)
    assert (run.returncode, run.stdout, run.stderr) == (3, "stopped\n", "")
    assert not done.exists()
