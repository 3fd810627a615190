"""Every CLI error is one line on stderr with exit status 2 — never a traceback."""
import subprocess
import sys

import pytest

CASES = {
    "lr_diverges": (["train", "--lr", "1e9", "--epochs", "1"], "loss grew"),
    "weight_decay_nan": (["train", "--weight-decay", "nan"], "weight_decay must be finite"),
    "hidden_float": (["train", "--hidden", "1e12"], "invalid int value"),
    "epochs_zero": (["train", "--epochs", "0"], "--epochs must be a positive integer"),
    "spec_syntax": (["latex", "--spec", "{bad}"], "SyntaxError"),
    "latex_out_folder": (["latex", "-o", "{tmp}/missing/d.tex"], "does not exist"),
    "evaluate_dir": (["evaluate", "{tmp}"], "is a directory"),
    "evaluate_empty": (["evaluate", "{empty}"], "not a symprop checkpoint"),
    "evaluate_truncated": (["evaluate", "{trunc}"], "corrupt or truncated"),
    "data_dir_missing": (["train", "--dataset", "mnist", "--data-dir", "{tmp}/nope"], "no such folder"),
    "generate_outside_checkout": (["generate", "--check"], "no symprop checkout"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_cli_errors_are_one_line_with_status_2(case, tmp_path):
    args, message = CASES[case]
    (tmp_path / "bad.py").write_text("def f(:\n")
    (tmp_path / "empty.npz").write_bytes(b"")
    (tmp_path / "trunc.npz").write_bytes(b"PK\x03\x04" + bytes(40))
    fill = {"tmp": str(tmp_path), "bad": str(tmp_path / "bad.py"), "empty": str(tmp_path / "empty.npz"),
            "trunc": str(tmp_path / "trunc.npz")}
    args = [a.format(**fill) for a in args]
    r = subprocess.run([sys.executable, "-m", "symprop.cli", *args], capture_output=True, text=True,
                       timeout=300, cwd=tmp_path)
    assert r.returncode == 2, (r.returncode, r.stderr[-1000:])
    assert "Traceback" not in r.stderr
    err = [ln for ln in r.stderr.splitlines() if "error" in ln]
    assert len(err) == 1 and message in err[0], r.stderr


@pytest.mark.slow   # compiles or runs the CLI many times: the default suite's 5 minutes
def test_cli_fuzz_random_train_arguments(tmp_path):
    """Random flag values (valid and not) for `symprop train`: exit 0, or 2 with one error line."""
    import random
    rnd = random.Random(7)
    values = {"--lr": ["0.01", "-1", "nan", "abc", "1e400"], "--batch-size": ["16", "0", "-3", "2.5"],
              "--dropout": ["0.2", "1.5", "-0.1"], "--validation-split": ["0.1", "1", "x"],
              "--clip-norm": ["1", "0", "inf"], "--schedule": ["cosine", "nope"],
              "--optimizer": ["adam", "rmsprop", "bogus"], "--activation": ["gelu", "mish", "bogus"],
              "--l2": ["0.001", "-1"], "--momentum": ["0.9", "2"]}
    for _ in range(10):
        args = ["train", "--epochs", "1", "--hidden", "16"]
        for flag in rnd.sample(sorted(values), 3):
            args += [flag, rnd.choice(values[flag])]
        r = subprocess.run([sys.executable, "-m", "symprop.cli", *args], capture_output=True, text=True,
                           timeout=300, cwd=tmp_path)
        assert r.returncode in (0, 2), (args, r.stderr[-1500:])
        assert "Traceback" not in r.stderr, (args, r.stderr[-1500:])
        if r.returncode == 2:
            assert len([ln for ln in r.stderr.splitlines() if "error" in ln]) == 1, (args, r.stderr)
