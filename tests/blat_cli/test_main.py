"""`blat`, the one command line: every subcommand answers --help, local ones reach their module's parser with the
arguments unchanged, and usage errors exit 2. The remote commands run against real gateways in
tests/server/test_api.py and clients/tests/test_live.py."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from blat_cli.main import LOCAL

REMOTE = ("search", "tag", "caption", "add", "add-folder", "get", "delete", "rebuild", "rollback", "stats", "info")


def blat(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "blat_cli", *args], capture_output=True, text=True, timeout=timeout)


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "blat"
    assert script.exists() or shutil.which("blat"), "pyproject's [project.scripts] blat is not installed"


def test_help_lists_every_command():
    out = blat("--help")
    assert out.returncode == 0
    for name in (*LOCAL, *REMOTE):
        assert name in out.stdout, name


@pytest.mark.parametrize("command", REMOTE)
def test_remote_commands_explain_themselves(command):
    out = blat(command, "--help")
    assert out.returncode == 0 and "--url" in out.stdout and "--json" in out.stdout


@pytest.mark.parametrize(
    "command, expect",
    [
        ("serve", "--bundle"),
        ("export", "bundle"),
        ("train", "--recipe"),
        ("import-blat", "--tokenizer"),
        ("inspect", "checkpoint"),
        ("smoke", "--captioner"),
    ],
)
def test_local_commands_hand_help_to_their_module(command, expect):
    out = blat(command, "--help")
    assert out.returncode == 0 and expect in out.stdout, out.stdout + out.stderr


def test_list_models_runs():
    import blat as models

    out = blat("list-models")
    assert out.returncode == 0 and out.stdout.split()[0] in models.list_models()


def test_serve_prints_its_settings_without_starting():
    out = blat("serve", "--print-settings", "--http-port", "9123")
    assert out.returncode == 0 and '"http_port": 9123' in out.stdout


def test_usage_errors_exit_2():
    assert blat().returncode == 2
    assert blat("no-such-command").returncode == 2
    assert blat("search", "--similar").returncode == 2
    out = blat("search", "--url", "http://127.0.0.1:9")  # neither text, --audio nor --similar
    assert out.returncode == 2 and "exactly one of" in out.stderr


def test_unreachable_server_exits_3():
    out = blat("stats", "--url", "http://127.0.0.1:9", "--timeout", "5")
    assert out.returncode == 3 and "unreachable" in out.stderr
