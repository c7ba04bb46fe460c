"""`incept summary` and the command line's error handling, run as a user runs them."""

import subprocess
import sys


def incept(*args):
    return subprocess.run(
        [sys.executable, "-m", "incept", *args], capture_output=True, text=True, timeout=120
    )


def test_summary_of_inception_v3():
    result = incept("summary")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("Mixed_5b") and "256 x 35 x 35" in line for line in lines)
    assert any(line.startswith("Mixed_7c") and "2048 x 8 x 8" in line for line in lines)
    total = next(line for line in lines if line.startswith("Total"))
    assert "27,161,264" in total
    assert lines[-1] == "27.16 M parameters, 5.72 G multiply-adds per image"


def test_summary_small_model():
    result = incept("summary", "--width", "0.25", "--image-size", "160", "--num-classes", "5")
    assert result.returncode == 0, result.stderr
    assert any(
        line.startswith("Mixed_7c") and "512 x 3 x 3" in line for line in result.stdout.splitlines()
    )


def test_bad_values_give_one_line_and_no_traceback():
    for args, words in [
        (["summary", "--width", "0"], "--width: must be in (0, 16], got 0.0"),
        (["summary", "--model", "nope"], "unknown model 'nope'"),
        (["summary", "--image-size", "40"], "--image-size: must be in [75, 13377], got 40"),
    ]:
        result = incept(*args)
        assert result.returncode == 2
        assert "Traceback" not in result.stderr
        assert result.stderr.strip().count("\n") == 0 and words in result.stderr
