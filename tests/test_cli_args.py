"""The argparse types the commands share: bad values are usage errors before anything loads."""

import argparse

import pytest

from zse_hf.cli_args import at_least, rerank_ret_weight


def test_at_least_parses_and_refuses():
    assert at_least(0)("0") == 0 and at_least(1)("7") == 7
    with pytest.raises(argparse.ArgumentTypeError, match="must be >= 1, got 0"):
        at_least(1)("0")
    with pytest.raises(argparse.ArgumentTypeError, match="expected an integer, got '2.5'"):
        at_least(1)("2.5")


def test_rerank_ret_weight_parses_and_refuses():
    assert rerank_ret_weight("0") == 0.0 and rerank_ret_weight("2.5") == 2.5
    for bad, message in (("-1", "finite number >= 0, got -1.0"), ("inf", "got inf"), ("x", "expected a number")):
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            rerank_ret_weight(bad)


@pytest.mark.parametrize("argv, message", [
    (["--rerank-ret-weight", "-1"], "argument --rerank-ret-weight: rerank_ret_weight must be a finite number >= 0"),
    (["--rerank-k", "-1"], "argument --rerank-k: must be >= 0, got -1"),
    (["--max-per-class", "0"], "argument --max-per-class: must be >= 1, got 0"),
    (["--locality-warps", "0"], "argument --locality-warps: must be >= 1, got 0"),
    (["--batch-size", "x"], "argument --batch-size: expected an integer, got 'x'"),
])
def test_eval_refuses_bad_values_before_loading(argv, message, capsys):
    from zse_hf.evaluation import main

    with pytest.raises(SystemExit) as exit_info:  # "nowhere" is never opened
        main(["--model", "nowhere", *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_compare_refuses_zero_bootstrap_draws(capsys):
    from zse_hf.evaluation.compare import main

    with pytest.raises(SystemExit) as exit_info:  # before the result files are read
        main(["nowhere.json", "--n-bootstrap", "0"])
    assert exit_info.value.code == 2 and "argument --n-bootstrap: must be >= 1, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--split", "nonsense"], "zse-sbir eval: unknown offline split 'nonsense'"),
    (["--data", "nonsense"], "zse-sbir eval: unknown dataset spec 'nonsense'"),
    (["--data", "sketchy:/no/such/folder"], "zse-sbir eval: "),
])
def test_eval_reports_bad_data_in_one_line_before_loading_the_model(argv, message, capsys):
    from zse_hf.evaluation import main

    assert main(["--model", "nowhere", *argv]) == 2  # the data is checked first: "nowhere" is never fetched
    err = capsys.readouterr().err
    assert err.startswith(message) and "Traceback" not in err


def test_report_refuses_bad_counts(tmp_path, capsys):
    from zse_hf.evaluation.report import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--model", "nowhere", "--max-per-class", "-1", "--out", str(tmp_path / "rep")])
    assert exit_info.value.code == 2 and "argument --max-per-class: must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "rep").exists()
