"""The quick start's first-time setup says what it installs and roughly how long it takes."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT


def load_dev_script():
    spec = importlib.util.spec_from_file_location("dev_script", ROOT / "scripts" / "dev.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_first_time_setup_announces_each_install_with_its_duration(tmp_path: Path, monkeypatch, capsys) -> None:
    dev = load_dev_script()
    monkeypatch.setattr(dev, "VENV", tmp_path / ".venv")
    monkeypatch.setattr(dev, "PYTHON", tmp_path / ".venv" / "bin" / "python")
    monkeypatch.setattr(dev, "STAMP", tmp_path / ".venv" / ".stamp")
    monkeypatch.setattr(dev.venv.EnvBuilder, "create", lambda self, path: Path(path).mkdir(parents=True))
    no_torch = subprocess.CompletedProcess([], returncode=1)
    monkeypatch.setattr(dev.subprocess, "run", lambda *a, **k: no_torch)  # torch is not installed there yet
    installed = []
    monkeypatch.setattr(dev, "run", lambda *args: installed.append([str(a) for a in args]))
    dev.ensure_environment()
    out = capsys.readouterr().out
    assert "First-time setup" in out and f"creating the virtual environment {tmp_path / '.venv'}" in out
    assert "installing torch==2.13.0 (a download of about 1 GB" in out and "minutes" in out
    assert "installing this pack with torch, diffusers, transformers" in out
    assert [args[-1] for args in installed] == ["torch==2.13.0", ".[test]"]
    assert out.count("done in") == 2


def test_the_demo_runs_in_the_users_folder_with_the_checkouts_grid_and_pack(tmp_path: Path, monkeypatch) -> None:
    dev = load_dev_script()
    monkeypatch.setattr(dev, "ensure_environment", lambda: None)
    calls = []
    monkeypatch.setattr(dev.subprocess, "run", lambda args, **kwargs: calls.append((args, kwargs)))
    monkeypatch.chdir(tmp_path)  # cd elsewhere && python3 /path/to/checkout/scripts/dev.py demo ...
    monkeypatch.setattr(dev.sys, "argv", ["dev.py", "demo", "--out", "mine.png"])
    assert dev.main() == 0
    [(args, kwargs)], grid = calls, str(ROOT / "outputs" / "demo.png")
    assert args == [str(dev.PYTHON), "-c", dev.LAUNCH, str(ROOT), "demo", "--out", grid, "--out", "mine.png"]
    assert kwargs["cwd"] == tmp_path  # the printed paths are the user's; the user's --out (the last) wins


def test_the_demo_runs_the_checkouts_pack_where_the_users_folder_holds_another(tmp_path: Path, monkeypatch, capfd):
    """``python -m`` puts the current folder first on sys.path: a pixart_delta_core/ there would run instead."""
    dev = load_dev_script()
    monkeypatch.setattr(dev, "PYTHON", sys.executable)
    (tmp_path / "pixart_delta_core").mkdir()
    (tmp_path / "pixart_delta_core" / "__init__.py").write_text("raise SystemExit('the copy here ran')\n")
    monkeypatch.chdir(tmp_path)
    dev.run_demo(["--help"])  # the checkout's parser, run for real in a new interpreter
    out, err = capfd.readouterr()
    assert out.startswith("usage: python -m pixart_delta_core demo") and "the copy here ran" not in err


def test_an_unknown_command_is_named(monkeypatch, capsys) -> None:
    dev = load_dev_script()
    monkeypatch.setattr(dev, "ensure_environment", lambda: (_ for _ in ()).throw(AssertionError("nothing to set up")))
    monkeypatch.setattr(dev.sys, "argv", ["dev.py", "demos"])
    assert dev.main() == 2
    captured = capsys.readouterr()
    assert "unknown command 'demos'" in captured.err and "scripts/dev.py demo" in captured.out
