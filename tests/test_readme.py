"""The README runs as written (issue 21 §5).

Every ``pointtune`` command in the README's code blocks is collected (continuation lines joined, comments
dropped) and:

* parsed by the CLI's own parser (a flag that does not exist fails), the command after ``submit --`` too;
* its config built from its ``--set`` keys, ``--dataset`` and ``--config`` (a key that does not exist fails),
  and its ``--space`` loaded;
* run, when it is meant for this machine: ``train`` commands with ``--fast-dev-run`` in place of their epoch
  count (the README's own commands train for minutes), in README order so that a ``--from runs/X`` reads what
  an earlier command wrote to ``--output runs/X`` (both mapped into a temporary directory); ``config`` and
  ``data inspect`` as written. Not run: commands with a GPU (``--gpu``, ``--gpus-per-worker``), a cluster
  (``submit``), elided parts (``...``) or paths that neither exist nor an earlier command writes (``/data/...``,
  ``runs/demo/best_config.yaml`` of ``make demo``), and the long ones (``sweep``, ``study``, ``compare``, their
  checks are the first two points plus the suites of those commands).
"""

from __future__ import annotations

import re
import shlex

import pytest

from conftest import REPO
from helpers import pointtune

pytestmark = pytest.mark.slow


def readme_commands(text: str) -> list[tuple[int, list[str]]]:
    """``(line number, argv after 'pointtune')`` of every pointtune command in the fenced code blocks of
    ``text`` (a README), continuation lines joined and ``#`` comments dropped."""
    commands, block = [], None
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip().startswith("```"):
            block = [] if block is None else None
            continue
        if block is None:
            continue
        if block and block[-1][1].endswith("\\"):
            first, joined = block.pop()
            block.append((first, joined[:-1] + " " + line.strip()))
        else:
            block.append((number, line.strip()))
        first, joined = block[-1]
        if re.match(r"(\.venv/bin/)?pointtune\s", joined) and not joined.endswith("\\"):
            commands.append((first, shlex.split(joined, comments=True)[1:]))
    return commands


COMMANDS = readme_commands((REPO / "README.md").read_text())


def _value(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


def _values(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == flag]


def test_the_readme_has_commands_of_every_kind():
    kinds = {argv[0] for _, argv in COMMANDS}
    assert {"train", "sweep", "study", "compare", "config", "resume", "best", "ui", "robustness", "submit",
            "data"} <= kinds, kinds
    assert len(COMMANDS) >= 40


@pytest.mark.parametrize("line,argv", COMMANDS, ids=[f"README:{n}" for n, _ in COMMANDS])
def test_every_command_parses_and_names_existing_keys(line, argv):
    from pointtune.cli import build_parser, default_space_file
    from pointtune.config import config_from_file
    from pointtune.search.space import load_search_space

    argv = [arg for arg in argv if arg != "..."]                       # elided parts
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if argv[0] == "submit":
            args = parser.parse_args([a for a in args.command_line if a != "--"])
    except SystemExit:
        pytest.fail(f"README line {line}: pointtune {' '.join(argv)}: the CLI does not parse it")
    method = getattr(args, "method", None)
    if args.command in ("train", "sweep", "config") or (args.command == "study" and method):
        sets = list(getattr(args, "set", []))
        if getattr(args, "dataset", None):
            sets.append(f"data.name={args.dataset}")
        config = args.config[0] if isinstance(args.config, list) else args.config
        config_from_file(method, config if config and (REPO / config).is_file() else None, sets)
    if args.command == "sweep":
        load_search_space(REPO / args.space if args.space else default_space_file(method), method)


def _runnable(argv: list[str], produced: set[str]) -> bool:
    if argv[0] not in ("train", "config", "data") or "..." in argv or "--gpu" in argv:
        return False
    if argv[0] == "data" and argv[1] != "inspect":
        return False
    paths = [*_values(argv, "--data-root"), *_values(argv, "--from"), *_values(argv, "--config")]
    if argv[0] == "data":
        paths.append(argv[2])
    return all((REPO / p).exists() or any(p == q or p.startswith(q + "/") for q in produced) for p in paths)


def test_the_commands_meant_for_this_machine_run(tmp_path):
    """In README order: each runnable command succeeds (exit 0) as written, training shrunk to
    --fast-dev-run."""
    produced: set[str] = set()
    ran = []
    for line, argv in COMMANDS:
        if not _runnable(argv, produced):
            continue
        argv = list(argv)
        if argv[0] == "train":
            for flag in ("--epochs", "--limit-batches"):
                while flag in argv:
                    del argv[argv.index(flag):argv.index(flag) + 2]
            argv.remove("--fast-dev-run") if "--fast-dev-run" in argv else None
            argv += ["--fast-dev-run", "--no-progress"]
            output = _value(argv, "--output")
            for flag in ("--output", "--from"):
                for i, arg in enumerate(argv[:-1]):
                    if argv[i] == flag and argv[i + 1].startswith("runs/"):
                        argv[i + 1] = str(tmp_path / argv[i + 1])
            if output:
                produced.add(output)
        if argv[0] == "data":
            argv = [a if a != _value(argv, "--png") else str(tmp_path / "inspect.png") for a in argv]
        proc = pointtune(*argv, timeout=900)
        assert proc.returncode == 0, (f"README line {line}: pointtune {' '.join(argv)}\n"
                                      + proc.stdout[-3000:] + proc.stderr[-3000:])
        ran.append(line)
    assert len(ran) >= 12, ran


def test_the_gpu_check_script_is_valid_bash_and_its_commands_parse():
    """bench/gpu_check.sh waits for a GPU this project may never be lent: its syntax and every pointtune
    command in it (flags, config keys) are checked here, so that it runs the day one is."""
    import subprocess

    from pointtune.cli import build_parser
    from pointtune.config import config_from_file

    script = REPO / "bench" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = re.sub(r"\\\n\s*", " ", script.read_text())
    lines = [line.split("$PT", 1)[1] for line in text.splitlines() if "$PT " in line and not line.startswith("#")]
    assert len(lines) >= 5
    for line in lines:
        argv = shlex.split(line.replace('"$OUT', '"/tmp/gpu_check').replace('"$DATA', '"../shared/data'))
        args = build_parser().parse_args(argv)
        config_from_file(args.method, None, [*args.set, *([f"data.name={args.dataset}"] if args.dataset else [])])
