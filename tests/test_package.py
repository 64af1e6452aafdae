"""Packaging: `platform/` must not shadow the standard library, and the CLI entry point exists."""

import subprocess
import sys

import pytest

from conftest import REPO


def test_stdlib_platform_wins_from_repo_root():
    code = "import platform, sysconfig; platform.system(); print(platform.__file__); print(sysconfig.get_paths()['stdlib'])"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    module_file, stdlib = out.stdout.split()
    assert module_file.startswith(stdlib), f"`import platform` from the repo root gave {module_file}"
    assert not (REPO / "platform" / "__init__.py").exists()


def test_pointtune_maps_to_platform_dir_and_methods_register():
    import pointtune.method
    from pointtune.method import method_names

    assert pointtune.method.__file__.startswith(str(REPO / "platform"))
    assert "cedr" in method_names()


def test_cli_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "pointtune.cli", "--help"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0
    for command in ("train", "sweep", "resume", "best"):
        assert command in out.stdout


def test_the_command_is_cli_run_which_exits_with_mains_status_the_collector_frozen(monkeypatch, capsys):
    """The console script (and ``python -m pointtune.cli``) is :func:`pointtune.cli.run`: :func:`main`'s status as
    the exit code, the garbage collector frozen first so that the interpreter's shutdown skips its collections
    over every object the command made."""
    import gc
    from importlib.metadata import entry_points

    from pointtune import cli

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "pointtune"]
    assert script.value == "pointtune.cli:run"
    frozen = []
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(True))
    with pytest.raises(SystemExit) as ended:
        cli.run(["config", "cedr"])
    assert ended.value.code == 0 and frozen == [True] and "method.temperature" in capsys.readouterr().out
    with pytest.raises(SystemExit) as ended:
        cli.run(["train", "cedr", "--set", "method.temperatur=0.1", "--output", "/nonexistent/run"])
    assert ended.value.code == cli.EXIT_USAGE and frozen == [True, True]
    assert "method.temperatur" in capsys.readouterr().err
