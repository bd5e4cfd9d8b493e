"""One convention for every command line: the user's errors are one line and exit code 2, bugs keep their
traceback."""
from __future__ import annotations

import argparse

import pytest

from jdnet_plugin.eval_tasks.common import EvalError, cli_main
from jdnet_plugin.cli._common import run_cli
from jdnet_plugin.errors import CheckpointError, UnknownNameError
from jdnet_plugin.rain import add_rain


def _raising(exc: BaseException):
    def run(args: argparse.Namespace) -> int:
        raise exc
    return run


@pytest.mark.parametrize("exc, line", [
    (UnknownNameError("unknown weights 'x'; registered weights: default"),
     "error: unknown weights 'x'; registered weights: default"),
    (CheckpointError("weights file w.pt is corrupt"), "error: weights file w.pt is corrupt"),
    (FileNotFoundError("data/ not found"), "error: data/ not found"),
    (RuntimeError("DataLoader worker (pid 1) failed.\nOriginal Traceback (most recent call last):\n  File x\n"
                  "jdnet_plugin.data.datasets.DatasetError: a.png: not an image"), None),
])
def test_user_errors_are_one_line_and_exit_2(exc, line, capsys):
    parser = argparse.ArgumentParser()
    if line is None:  # not a user error type: a traceback, whatever the message says
        with pytest.raises(RuntimeError):
            run_cli(parser, _raising(exc), [])
        return
    assert run_cli(parser, _raising(exc), []) == 2
    assert capsys.readouterr().err.strip() == line


def test_worker_errors_keep_the_original_message(capsys):
    from jdnet_plugin.data import DatasetError

    exc = DatasetError("Caught DatasetError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
                       "last):\n  File \"x.py\", line 1\njdnet_plugin.data.datasets.DatasetError: a.png: not an image")
    assert run_cli(argparse.ArgumentParser(), _raising(exc), []) == 2
    assert capsys.readouterr().err.strip() == "error: a.png: not an image"


def test_a_bug_is_a_traceback_not_a_user_error(capsys):
    with pytest.raises(KeyError, match="map50"):
        cli_main(_raising(KeyError("map50")), argparse.ArgumentParser(), [])
    assert cli_main(_raising(EvalError("no labels in coco.yaml")), argparse.ArgumentParser(), []) == 2
    assert capsys.readouterr().err.strip() == "error: no labels in coco.yaml"


def test_unknown_names_are_key_errors_that_read_well():
    with pytest.raises(KeyError) as info:
        add_rain(__import__("numpy").zeros((8, 8, 3), "uint8"), "nope")
    assert isinstance(info.value, UnknownNameError) and str(info.value).startswith("unknown rain preset 'nope'")


def test_demo_reports_a_bad_rain_preset(tmp_path, capsys):
    pytest.importorskip("ultralytics")
    from jdnet_plugin.eval_tasks.demo import main

    assert main(["--rain", "nope", "--out", str(tmp_path / "demo")]) == 2
    assert capsys.readouterr().err.startswith("error: unknown rain preset 'nope'")
    assert not (tmp_path / "demo").exists()


def test_export_cli_bad_options_are_user_errors(tmp_path, weights, capsys):
    from jdnet_plugin.cli.export import main

    out = str(tmp_path / "m.onnx")
    assert main(["--weights", str(weights), "--out", out, "--opset", "9"]) == 2
    assert "--opset must be >=" in capsys.readouterr().err
    assert main(["--weights", str(weights), "--out", out, "--check-size", "2x2"]) == 2
    assert "below the model's minimum side" in capsys.readouterr().err
    assert main(["--weights", str(tmp_path / "none.pt"), "--out", out]) == 2
    assert "none.pt" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()
