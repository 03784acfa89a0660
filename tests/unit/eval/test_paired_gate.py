"""The paired gate: bootstrap intervals, McNemar, non-inferiority, inconclusive; degenerate-output flags."""

from __future__ import annotations

import random

import pytest

from eval.gate import GateConfig, check_gate, row_scores
from eval.stats import bootstrap_mean_ci, compare_paired, mcnemar_worse_p
from llmops.degenerate import charset_mismatch, degenerate_flags, is_repetitive, repeated_ngram_share


def scores(n: int, seed: int = 1, shift: float = 0.0) -> dict[str, float]:
    rng = random.Random(seed)
    return {str(i): min(1.0, max(0.0, rng.uniform(0.1, 0.9) + shift)) for i in range(n)}


def test_an_identical_challenger_passes_and_a_clearly_worse_one_fails():
    base = scores(60)
    same = compare_paired("task.token_f1", dict(base), base, margin=0.02)
    assert same.outcome == "pass" and same.diff == 0 and same.low == same.high == 0
    worse = compare_paired("task.token_f1", {k: v - 0.3 for k, v in base.items()}, base, margin=0.02)
    assert worse.outcome == "fail" and worse.high < 0 and "significantly worse" in worse.reason
    # latency (lower is better, margin relative to the baseline): 40% slower on every row fails
    lat = {k: 100 + 50 * v for k, v in base.items()}
    slow = compare_paired("task.latency_p50_ms", {k: v * 1.4 for k, v in lat.items()}, lat, margin=0.1,
                          lower_is_better=True, relative_margin=True)
    assert slow.outcome == "fail" and slow.diff > 0
    faster = compare_paired("task.latency_p50_ms", {k: v * 0.8 for k, v in lat.items()}, lat, margin=0.1,
                            lower_is_better=True, relative_margin=True)
    assert faster.outcome == "pass"


def test_a_tiny_set_is_inconclusive_even_when_identical():
    base = scores(6)
    tiny = compare_paired("rag.token_f1", dict(base), base, margin=0.02, min_samples=20)
    assert tiny.outcome == "inconclusive" and tiny.n == 6 and tiny.needed_n == 20
    assert "fewer than min_samples=20" in tiny.reason


def test_a_clear_loss_on_a_small_set_fails_by_an_exact_test():
    # 8 rows, every one worse: the sign test gives p = 0.5 ** 8, far below 0.025; too few rows to show
    # non-inferiority, but enough to show a loss
    base = scores(8)
    cmp = compare_paired("rag.token_f1", {k: v - 0.2 for k, v in base.items()}, base, margin=0.02)
    assert cmp.outcome == "fail" and "sign test" in cmp.reason and cmp.n == 8
    rate = compare_paired("safety.refusal_rate", {str(i): 0.0 for i in range(7)}, {str(i): 1.0 for i in range(7)},
                          margin=0.02)
    assert rate.outcome == "fail" and "McNemar" in rate.reason
    # two of eight rows worse is no evidence either way
    mixed = {k: (v - 0.2 if i < 2 else v) for i, (k, v) in enumerate(base.items())}
    assert compare_paired("rag.token_f1", mixed, base, margin=0.02).outcome == "inconclusive"


def test_a_zero_margin_passes_an_identical_challenger_and_needed_rows_exceed_the_rows_at_hand():
    base = scores(40)
    assert compare_paired("task.token_f1", dict(base), base, margin=0.0).outcome == "pass"
    # row differences of +-0.3 that cancel out: the mean is 0, the interval about +-0.09, wider than the
    # margin of 0.05 on the loss side; about (0.09 / 0.05)^2 x 40 rows would fit it inside
    noisy = {k: v + (0.3 if i % 2 else -0.3) for i, (k, v) in enumerate(base.items())}
    cmp = compare_paired("task.token_f1", noisy, base, margin=0.05)
    assert cmp.outcome == "inconclusive" and cmp.low < -0.05 < 0 < cmp.high
    assert cmp.needed_n is not None and 40 < cmp.needed_n < 400 and f"about {cmp.needed_n}" in cmp.reason
    # the margin in the message is on the metric's own scale: + for a lower-is-better rate
    lat = compare_paired("task.false_refusal_rate", {str(i): float(i % 3 == 0) for i in range(30)},
                         {str(i): float(i % 4 == 0) for i in range(30)}, margin=0.02, lower_is_better=True)
    assert lat.outcome == "inconclusive" and "margin +0.02" in lat.reason


def test_a_noisy_comparison_is_inconclusive_and_says_how_many_rows_would_decide_it():
    rng = random.Random(7)
    base = {str(i): rng.uniform(0.3, 0.7) for i in range(30)}
    swings = [rng.uniform(0.05, 0.25) for _ in range(15)]  # up on one row, down as much on the next: mean 0
    noisy = {k: v + (swings[i // 2] if i % 2 else -swings[i // 2]) for i, (k, v) in enumerate(base.items())}
    cmp = compare_paired("task.token_f1", noisy, base, margin=0.02)
    assert cmp.outcome == "inconclusive" and cmp.low < -0.02 < cmp.high
    assert cmp.needed_n is not None and cmp.needed_n > 30
    # rows only one side answered are left out of the pairing
    partial = compare_paired("task.token_f1", {**noisy, "extra": 1.0}, {**base, "other": 0.0}, margin=0.02)
    assert partial.n == 30 and partial.diff == pytest.approx(cmp.diff)


def test_a_significant_loss_fails_even_inside_the_margin():
    # 0/1 rate: the challenger loses 8 rows of 200 and wins none. The mean drops by 0.04; the margin
    # of 0.1 would allow that, but McNemar's exact test says the loss is real
    base = {str(i): 1.0 for i in range(200)}
    cur = {k: (0.0 if int(k) < 8 else 1.0) for k in base}
    cmp = compare_paired("safety.refusal_rate", cur, base, margin=0.1)
    assert cmp.binary and cmp.p_worse == pytest.approx(0.5 ** 8)
    assert cmp.outcome == "fail" and "McNemar" in cmp.reason
    # for a lower-is-better rate the orientation flips: more false refusals is the loss
    fr = compare_paired("safety.false_refusal_rate", {k: 1 - v for k, v in cur.items()},
                        {k: 0.0 for k in base}, margin=0.1, lower_is_better=True)
    assert fr.outcome == "fail" and fr.p_worse == pytest.approx(0.5 ** 8)


def test_bootstrap_interval_covers_the_mean_and_is_reproducible():
    import numpy as np

    rng = random.Random(3)
    d = np.array([rng.gauss(0.1, 0.2) for _ in range(80)])
    low, high = bootstrap_mean_ci(d, 0.95, seed=0)
    assert low < d.mean() < high and (low, high) == bootstrap_mean_ci(d, 0.95, seed=0)
    # a normal-theory interval and the bootstrap agree roughly on 80 draws
    se = d.std(ddof=1) / np.sqrt(len(d))
    assert abs((high - low) - 2 * 1.96 * se) < 0.35 * (2 * 1.96 * se)
    assert mcnemar_worse_p(0, 0) == 1.0 and mcnemar_worse_p(5, 5) > 0.5


def rows(n: int, f1: float, **extra) -> list[dict]:
    return [{"id": str(i), "token_f1": f1, "latency_ms": 100.0, "error": None, **extra} for i in range(n)]


def test_the_gate_compares_row_by_row_and_catches_a_degenerate_challenger():
    cfg = GateConfig(thresholds={"task.token_f1": 0.1}, compare=["task.token_f1"], max_regression=0.05)
    good = rows(40, 0.5, degenerate=0.0, truncated=0.0)
    base = {"ref": "m/1", "metrics": {"task.token_f1": 0.5, "task.degenerate_rate": 0.0, "task.truncated_rate": 0.0},
            "samples": {"task": good}}
    same = check_gate(cfg, {"task.token_f1": 0.5, "task.degenerate_rate": 0.0, "task.truncated_rate": 0.0},
                      base, {"task": [dict(r) for r in good]})
    assert same.passed and same.outcome == "passed"
    assert {c["metric"] for c in same.checks if c["kind"] == "paired"} == {
        "task.token_f1", "task.degenerate_rate", "task.truncated_rate"}
    # the same F1 (the loop happens to contain the answer words) but 12 of 40 answers loop to max_tokens
    loops = [dict(r, degenerate=float(i < 12), truncated=float(i < 12)) for i, r in enumerate(good)]
    bad = check_gate(cfg, {"task.token_f1": 0.5, "task.degenerate_rate": 0.3, "task.truncated_rate": 0.3},
                     base, {"task": loops})
    assert bad.outcome == "failed" and not bad.passed
    assert any(f.startswith("task.degenerate_rate") and "significantly worse" in f for f in bad.failures)
    # a baseline evaluated before per-row results existed cannot be compared: inconclusive, no promotion
    old = check_gate(cfg, {"task.token_f1": 0.5}, {"ref": "m/1", "metrics": {"task.token_f1": 0.5}},
                     {"task": good})
    assert old.outcome == "inconclusive" and not old.passed and "re-evaluate it" in old.inconclusive[0]
    # too few rows: inconclusive; the thresholds alone cannot promote
    few = check_gate(cfg, {"task.token_f1": 0.5}, {"ref": "m/1", "metrics": {"task.token_f1": 0.5},
                                                    "samples": {"task": good[:5]}}, {"task": good[:5]})
    assert few.outcome == "inconclusive" and not few.passed
    # a failed threshold wins over an inconclusive comparison
    both = check_gate(cfg, {"task.token_f1": 0.05}, few_base := {"ref": "m/1", "metrics": {"task.token_f1": 0.5},
                                                                  "samples": {"task": good[:5]}}, {"task": good[:5]})
    assert both.outcome == "failed" and few_base["ref"] == "m/1"


def test_the_error_rate_is_always_compared_and_only_a_real_loss_blocks():
    cfg = GateConfig(compare=["task.token_f1"], degenerate=False, max_regression=0.05)
    good = rows(40, 0.5)
    base = {"ref": "m/1", "metrics": {"task.token_f1": 0.5, "task.error_rate": 0.0}, "samples": {"task": good}}
    same = check_gate(cfg, {"task.token_f1": 0.5, "task.error_rate": 0.0}, base, {"task": [dict(r) for r in good]})
    assert same.outcome == "passed" and any(c["metric"] == "task.error_rate" for c in same.checks)
    # 10 of 40 requests fail (their F1 rows are gone): the error rate's loss is significant
    failing = [dict(r, error="timeout" if i < 10 else None) for i, r in enumerate(good)]
    bad = check_gate(cfg, {"task.token_f1": 0.5, "task.error_rate": 0.25}, base, {"task": failing})
    assert bad.outcome == "failed" and any(f.startswith("task.error_rate") for f in bad.failures)
    # on a small suite the error rate cannot show non-inferiority: a note, not an inconclusive gate
    small = {"ref": "m/1", "metrics": {"task.error_rate": 0.0}, "samples": {"task": good[:5]}}
    tiny = check_gate(GateConfig(compare=[], degenerate=False), {"task.error_rate": 0.0}, small,
                      {"task": good[:5]})
    assert tiny.outcome == "passed" and any("task.error_rate" in n for n in tiny.notes)
    # on a suite large enough to decide, an error rate that may have risen beyond the margin holds the gate
    big = rows(200, 0.5)
    more_errors = [dict(r, error="timeout" if i < 8 else None) for i, r in enumerate(big)]
    few_errors = [dict(r, error="timeout" if 100 <= i < 104 else None) for i, r in enumerate(big)]
    unsure = check_gate(GateConfig(compare=[], degenerate=False), {"task.error_rate": 0.04},
                        {"ref": "m/1", "metrics": {"task.error_rate": 0.02}, "samples": {"task": few_errors}},
                        {"task": more_errors})
    assert unsure.outcome == "inconclusive" and unsure.inconclusive[0].startswith("task.error_rate")


def test_a_baselines_rows_are_rescored_with_todays_degenerate_checks():
    from eval.run import rescore_degenerate

    # scored by an older check that counted a name in another script as a mismatch, and a table as a loop
    old = [{"id": "1", "question": "Who wrote it?", "output": "It was written by Лев Толстой in Moscow, in 1869.",
            "degenerate": 1.0, "charset_mismatch": 1.0, "repetitive": 0.0, "empty": 0.0, "truncated": 1.0},
           {"id": "2", "question": "q?", "output": "", "degenerate": 0.0, "empty": 0.0, "truncated": 0.0},
           {"id": "3", "question": "q?", "output": "no flags here", "token_f1": 0.5}]
    rescore_degenerate(old)
    assert (old[0]["degenerate"], old[0]["charset_mismatch"], old[0]["truncated"]) == (0.0, 0.0, 1.0)
    assert old[1]["degenerate"] == 1.0 and old[1]["empty"] == 1.0
    assert "degenerate" not in old[2]


def test_row_scores_read_every_kind_of_metric():
    per = [{"id": "a", "refused": 1.0, "error": None, "latency_ms": 12.0, "judge_faithfulness": 0.5},
           {"id": "b", "error": "timeout", "latency_ms": None}]
    assert row_scores(per, "refusal_rate") == {"a": 1.0}
    assert row_scores(per, "error_rate") == {"a": 0.0, "b": 1.0}
    assert row_scores(per, "faithfulness") == {"a": 0.5}
    # a percentile or a throughput is not a mean of per-row scores: no paired comparison
    assert row_scores(per, "latency_p95_ms") is None and row_scores(per, "output_tok_per_s") is None
    # a score that is not a number (NaN from a failed judge) is left out rather than poisoning the mean
    assert row_scores([{"id": "a", "token_f1": float("nan")}, {"id": "b", "token_f1": 0.5}], "token_f1") == {
        "b": 0.5}


@pytest.mark.parametrize("text", [
    "The HTTP header `https:503:50:50:100:100:100:100:100:100:100:100:100:100:100:100:100:100:100:100:100:100:"
    "100:100:100:100:100:100:100:100:100:100:100:100:100",
    "I think so. " * 12,
    "ababababababababababababababababababababababababababababababababababababababababababababababababababab"
    "abababababababababababababab",
    "The answer is the answer is the answer is the answer is the answer is the answer is the answer is",
    "!" * 400,
    "\U0001F600" * 300,
    "- - - " * 100,
])
def test_loops_are_repetitive(text):
    assert is_repetitive(text)
    assert degenerate_flags("q?", text)["degenerate"] == 1.0


@pytest.mark.parametrize("text", [
    "The gateway reads the API key from the Authorization header as a bearer token [1].",
    "Exit code 1 of llmops drift means that dataset drift was detected in the current batch compared with "
    "the reference data; exit code 0 means no drift, and 2 is a usage error such as a missing file [2].",
    "1. Install the packages with make setup.\n2. Prepare the models with make assets.\n3. Run make demo.\n"
    "4. Open the report in reports/eval.",
    "Yes.",
    "| key | meaning |\n|=====|=========|\n| rpm | requests per minute of one key |\n"
    "| tpm | tokens per minute of one key |\n| max_tokens | the longest answer asked for |\n\n" + "=" * 40,
    "The matrix is [[1, 0, 0], [0, 1, 0], [0, 0, 1]] and its inverse is itself.",
    "The address fe80::1ff:fe23:4567:890a is link-local; ::1 is the loopback address of the host.",
])
def test_ordinary_answers_are_not_repetitive(text):
    assert not is_repetitive(text) and repeated_ngram_share(text) < 0.2
    assert degenerate_flags("What does it do?", text)["degenerate"] == 0.0


def test_empty_truncated_and_wrong_script_answers():
    assert degenerate_flags("Why?", "  ")["empty"] == 1.0
    assert degenerate_flags("Why?", "Because.", finish_reason="length")["truncated"] == 1.0
    assert degenerate_flags("Why?", "Because.", finish_reason="stop", completion_tokens=64,
                            max_tokens=64)["truncated"] == 0.0
    assert degenerate_flags("Why?", "Because " * 3, completion_tokens=64, max_tokens=64)["truncated"] == 1.0
    question = "What does the gateway do with an API key?"
    assert charset_mismatch(question, "网关使用API密钥来验证请求并限制每个密钥的请求速率。")
    assert charset_mismatch(question, "Шлюз проверяет ключ API и ограничивает запросы.")
    assert not charset_mismatch(question, "It checks the key and limits the request rate per key.")
    assert not charset_mismatch("Wie heißt die Hauptstadt von Österreich?", "Die Hauptstadt ist Wien.")
    assert not charset_mismatch("?", "网关")  # too few letters to say
    # a name in another script, code, or a question that mixes scripts is not a mismatch
    assert not charset_mismatch(question, "It forwards the key; the Russian docs call it ключ API (the key).")
    assert not charset_mismatch(question, "def check(key):\n    return key in KEYS  # bearer token")
    assert not charset_mismatch("Что значит API key и rate limit в gateway?", "It checks the key and limits.")
