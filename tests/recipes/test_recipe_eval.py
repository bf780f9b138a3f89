# ruff: noqa: RUF001 - Chinese text uses full-width punctuation on purpose
"""ROUGE/BLEU like ChatGLM3's compute_metrics, metrics lines, and the NaN guard."""

from __future__ import annotations

import io
import json
import math

import pytest

from tunelab.recipes.lora.errors import TrainingFailed
from tunelab.recipes.lora.evaluate import rouge, similarity
from tunelab.recipes.lora.metrics import JsonLinesMetrics, check_finite

PAIRS = [
    ("这件 衬衫 的 款式 非常 宽松", "这件 衬衫 的 款式 非常 的 宽松 ， 利落 的 线条"),
    ("a b a b a b", "a b c a b"),
    ("完全 不同", "毫无 关系 的 句子"),
    ("一", "一 二"),
    ("白色 上衣 。 很 百搭 ！", "白色 上衣 很 百搭"),
]


@pytest.mark.parametrize(("hyp", "ref"), PAIRS)
def test_rouge_matches_rouge_chinese(hyp: str, ref: str) -> None:
    import rouge_chinese

    expected = rouge_chinese.Rouge().get_scores(hyp, ref)[0]
    ours = rouge(hyp.split(), ref.split())
    for key in ("rouge-1", "rouge-2", "rouge-l"):
        assert ours[key] == pytest.approx(expected[key]["f"], abs=1e-9)


def test_similarity_scales_like_the_original_and_survives_empty_predictions() -> None:
    same = similarity(["这款白色上衣简约百搭"], ["这款白色上衣简约百搭"])
    assert same["rouge-1"] == pytest.approx(100, abs=1e-3) and same["rouge-l"] == pytest.approx(100, abs=1e-3)
    assert same["bleu-4"] == pytest.approx(1.0, abs=1e-6)  # BLEU-4 is not multiplied by 100
    empty = similarity(["", "这款上衣"], ["这款白色上衣", "这款白色上衣"])
    assert empty["rouge-1"] > 0 and all(math.isfinite(v) for v in empty.values())


def test_non_finite_loss_stops_with_the_reason() -> None:
    check_finite(2.5, 1.0, step=3, lr=1e-4)
    with pytest.raises(TrainingFailed, match="loss became nan at step 7"):
        check_finite(float("nan"), 1.0, step=7, lr=1e-4)
    with pytest.raises(TrainingFailed, match="gradient norm became inf"):
        check_finite(1.0, float("inf"), step=7, lr=1e-4)


def test_metrics_are_json_lines(tmp_path: object) -> None:
    stream = io.StringIO()
    metrics = JsonLinesMetrics(path=None, stream=stream)
    metrics.emit("train", step=1, loss=1.23456789, grad_norm=float("inf"))
    record = json.loads(stream.getvalue())
    assert record["event"] == "train" and record["loss"] == 1.234568 and record["grad_norm"] == "inf"
