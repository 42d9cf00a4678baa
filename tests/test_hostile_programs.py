"""Hostile and careless `.cnn` files (issue 11): each ends in a located error (exit 1), in
seconds and under 1 GB of address space, never in an internal error (exit 3) or a traceback.

Every case runs the real CLI in a subprocess, as a user would.
"""

import re
import resource
import subprocess
import sys

import pytest
from conftest import ROOT

MEMORY = 1 << 30  # bytes of address space for the child
LOCATED = re.compile(r"^\S+:\d+:\d+: error: ", re.MULTILINE)


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))


def cli(*args, timeout=20):
    """(exit status, stderr) of `python -m cnndsl.cli ARGS` under the memory limit."""
    result = subprocess.run([sys.executable, "-m", "cnndsl.cli", *map(str, args)],
                            check=False, capture_output=True, text=True, timeout=timeout,
                            cwd=ROOT,
                            preexec_fn=_limit_memory)
    return result.returncode, result.stderr


def assert_located_error(status, err, *words):
    assert "Traceback" not in err and "internal error" not in err, err[-2000:]
    assert status == 1, err[-2000:]
    assert LOCATED.search(err), err[-2000:]
    for word in words:
        assert word in err, err[-2000:]


def program(tmp_path, body: str, name="net.cnn"):
    path = tmp_path / name
    path.write_text(body, encoding="utf-8")
    return path


# ---- 1. numbers ------------------------------------------------------------------------------

NUMBER_CASES = {
    "5000_digit_literal": ("FC(" + "9" * 5000 + ")", "too large", "2:4"),
    "5000_digit_size": ("Conv(8, 3x" + "9" * 5000 + ")", "too large", "2:9"),
    "5000_leading_zeros": ("FC(" + "0" * 5000 + "10)", None, "3:1"),
    "let_power_tower": ("let x = ((2^64)^64)^64\nFC(10)", "too large", "2:11"),
    "fc_power": ("FC((2^64)^64)", "too large", "2:5"),
    "batchnorm_eps_power": ("BatchNorm(eps=(2^64)^64) -> FC(10)", "too large", "2:16"),
    "float_literal_overflow": ("BatchNorm(eps=1e400) -> FC(10)", "too large", "2:15"),
    "float_product_overflow": ("let big = 1e18 * 1e18 * 1e18\nFC(10)", "too large", "2:11"),
    "float_power_overflow": ("let big = 10.0^64 * 10.0^64 * 10.0^64\nFC(10)", "too large",
                             "2:11"),
    "batchnorm_eps_zero": ("BatchNorm(eps=0) -> FC(10)", "eps must be", "2:11"),
    "dropout_one": ("Dropout(1) -> FC(10)", "p must be", "2:9"),
    "leakyrelu_negative": ("LeakyReLU(-1) -> FC(10)", "alpha", "2:11"),
    "train_lr_nan": ("FC(10)\ntrain { lr = 1e400 - 1e400 }", "too large", "3:14"),
    "train_lr_huge": ("FC(10)\ntrain { lr = 2^62 * 4 }", "too large", "3:14"),
    "train_epochs_huge": ("FC(10)\ntrain { epochs = 2^40 }", "epochs must be at most", "3:18"),
}


@pytest.mark.parametrize("name", NUMBER_CASES)
def test_numbers_out_of_range_are_located_errors(tmp_path, name):
    body, words, where = NUMBER_CASES[name]
    status, err = cli("check", program(tmp_path, f"input 28x28x1\n{body}\n"))
    if words is None:  # not an error: a literal with many leading zeros is small
        assert status == 0, err
        return
    assert_located_error(status, err, words, f"net.cnn:{where}:")


@pytest.mark.parametrize("flag", ["nan", "inf", "-inf", "1e400"])
def test_train_lr_flag_must_be_finite(flag):
    from cnndsl.trainconfig import convert

    with pytest.raises(ValueError, match="finite|positive"):
        convert("lr", float(flag))


@pytest.mark.parametrize("flag", ["nan", "inf"])
def test_train_refuses_a_non_finite_lr_flag(tmp_path, flag):
    # `train` imports numba, which reserves much address space: no memory limit here
    path = program(tmp_path, "input 28x28x1\nFlatten -> FC(10)\n")
    result = subprocess.run([sys.executable, "-m", "cnndsl.cli", "train", str(path), "--lr",
                             flag, "-o", str(tmp_path / "w.npz")], check=False,
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 2, result.stderr
    assert f"--lr: lr must be a finite number, got {flag}" in result.stderr
    assert not (tmp_path / "w.npz").exists()


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_api_bindings_must_be_finite(value):
    from cnndsl import check_text
    from cnndsl.errors import CnnDslError

    with pytest.raises(CnnDslError, match="not a number|infinite"):
        check_text("input 28x28x1\nBatchNorm(eps=e) -> FC(10)\n", {"e": value})


# ---- 2. checked but not runnable -------------------------------------------------------------

RUNNABLE_CASES = {
    "stride_10_30": ("Conv(8, 3, stride=10^30) -> FC(10)", "too large", "2:19"),
    "stride_2_40": ("Conv(8, 3, stride=2^40) -> FC(10)", "stride must be at most 2^31", "2:12"),
    "pad_2_40": ("Conv(8, 3, pad=2^40) -> FC(10)", "pad must be at most", "2:12"),
    "filters_2_40": ("Conv(2^40, 3) -> FC(10)", "at most 2^31", "2:6"),
    "fc_10_12": ("FC(10^12)", "units must be at most 2^31", "2:4"),
    "fc_huge_weights": ("FC(2^31)", "weights (at most 2^40)", "2:1"),
    "channels_double": ("{Identity|Identity}*40 -> FC(10)", "elements per example", "2:1"),
    "input_huge": ("FC(10)", "at most 2^31", "1:7"),
}


@pytest.mark.parametrize("name", RUNNABLE_CASES)
def test_absurd_sizes_are_refused_at_check_time(tmp_path, name):
    body, words, where = RUNNABLE_CASES[name]
    first = "input 3000000000x2x1" if name == "input_huge" else "input 28x28x1"
    status, err = cli("check", program(tmp_path, f"{first}\n{body}\n"))
    assert_located_error(status, err, words, f"net.cnn:{where}:")


# ---- 3. parser and renderer cost -------------------------------------------------------------

def test_megabytes_of_blank_lines_are_refused_located(tmp_path):
    path = program(tmp_path, "input 28x28x1\n" + "\n" * 9_000_000 + "FC(10) ->\n")
    status, err = cli("check", path, timeout=10)
    assert_located_error(status, err, "the file is too large", "net.cnn:1999988:1:")


def test_blank_lines_parse_in_linear_time_and_memory(tmp_path):
    # was 86 s and 6.6 GB for 20 MB: the _NL regex repeated a group
    path = program(tmp_path, "input 28x28x1\n" + "\n \t\r\n" * 390_000 + "FC(10)\n")
    status, err = cli("check", path, timeout=10)
    assert status == 0, err


def test_long_one_line_chain_is_refused_fast_and_clipped(tmp_path):
    path = program(tmp_path, "input 28x28x1\n" + "ReLU -> " * 200_000 + "FC(10)\n")
    status, err = cli("check", path, timeout=10)
    assert_located_error(status, err, "too long")
    assert max(len(line) for line in err.splitlines()) < 400  # the source line is clipped
    assert "…" in err


def test_excerpt_window_keeps_the_caret_under_the_text():
    from cnndsl.errors import CnnDslError, Span

    text = "a" * 1000 + "BAD" + "b" * 1000
    report = CnnDslError("here", Span.at(1, 1001, 3)).format(text, "f.cnn")
    source, caret = report.splitlines()[1:3]
    assert len(source) < 300 and source.count("…") == 2
    assert source[caret.index("^"):caret.index("^") + 3] == "BAD"


def test_deep_nesting_in_render_is_a_located_error(tmp_path):
    path = program(tmp_path, "input 28x28x1\nReLU" + " * 1" * 3000 + " -> FC(10)\n")
    for command in ("check", "render"):
        args = [command, path] + (["-o", tmp_path / "x.dot"] if command == "render" else [])
        status, err = cli(*args)
        assert status == 1 and "internal error" not in err and "Traceback" not in err, err
        assert "too deeply" in err


@pytest.mark.parametrize("body", ["FC(" + "2^" * 20000 + "1)", "FC(" + "-" * 40000 + "1)",
                                  "FC(" + "1+" * 20000 + "1)", "ReLU" + " * (1)" * 10000])
def test_deep_expressions_are_located_errors(tmp_path, body):
    path = program(tmp_path, f"input 28x28x1\n{body}\n")
    status, err = cli("check", path, timeout=10)
    assert status == 1 and "internal error" not in err and "Traceback" not in err, err
    assert "too deeply" in err


@pytest.mark.parametrize("count", [5000, 99999])
def test_render_of_a_long_repetition_is_refused_or_collapsed(tmp_path, count):
    path = program(tmp_path, f"input 28x28x1\nReLU * {count} -> FC(10)\n")
    status, err = cli("render", path, "-o", tmp_path / "x.dot", timeout=15)
    assert_located_error(status, err)
    if count == 5000:
        assert "--collapse" in err
        status, err = cli("render", "--collapse", path, "-o", tmp_path / "x.dot", timeout=15)
        assert status == 0, err


def test_branch_repetitions_fail_or_pass_in_seconds(tmp_path):
    status, err = cli("check", program(tmp_path, "input 28x28x1\n"
                                       "{ Identity | Identity } * 20000 -> FC(10)\n"),
                      timeout=10)
    assert_located_error(status, err, "elements per example")
    status, err = cli("check", program(tmp_path, "input 28x28x1\nReLU * 100000 -> FC(10)\n"),
                      timeout=10)
    assert_located_error(status, err, "more than 100,000 layers")
    status, err = cli("check", program(tmp_path, "input 28x28x1\n"
                                       "{ Identity + ReLU } * 33000 -> FC(10)\n"), timeout=10)
    assert status == 0, err  # 99,002 layers


# ---- 4. names and the train block ------------------------------------------------------------

@pytest.mark.parametrize("word", ["valid", "same", "full", "true", "false"])
def test_set_cannot_rebind_a_reserved_word(tmp_path, word):
    path = program(tmp_path, "input 28x28x1\nConv(8, 3, pad=valid) -> FC(10)\n")
    status, err = cli("check", "--set", f"{word}=2", path)
    assert status == 1 and "internal error" not in err, err
    assert f"cannot bind '{word}': it is a reserved word" in err


def test_reserved_label_is_refused(tmp_path):
    for label in ("__output__", "__error__"):
        path = program(tmp_path, f"input 28x28x1\n{label}: FC(10)\n")
        status, err = cli("render", path, "-o", tmp_path / "x.dot")
        assert_located_error(status, err, "net.cnn:2:1:", "kept for cnndsl")


def test_check_validates_the_train_block(tmp_path):
    path = program(tmp_path, "input 28x28x1\nFC(10)\ntrain { optimizer = foo }\n")
    status, err = cli("check", path)
    assert_located_error(status, err, "net.cnn:3:21:", "optimizer must be one of")


def test_repeated_calls_are_bound_per_value_type():
    # IR building caches a call's bound arguments: 3 and 3.0 are equal in Python, not here
    from cnndsl import check_text
    from cnndsl.errors import CnnDslError

    with pytest.raises(CnnDslError, match="kernel must be a whole number, got 3.0"):
        check_text("def b(k) = Conv(4, (k, k))\ninput 8x8x1\nb(3) -> b(3.0)\n")
