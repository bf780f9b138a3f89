"""Evaluation like ChatGLM3's recipe: loss, and ROUGE-1/2/L + BLEU-4 on jieba-segmented text.

Differences from the original, on purpose:
- eval loss is computed (the original had no labels in eval, so no eval loss);
- generation is bounded (at most `max_samples` rows, `max_new_tokens` each) and works for any dev set
  size; the original hard-coded 50 rows and crashed on smaller dev sets;
- an empty prediction scores 0 instead of crashing rouge_chinese ("Hypothesis is empty").
Scores follow the original: per row, ROUGE F1 x 100 rounded to 4 places (rouge_chinese semantics:
unique n-grams for ROUGE-1/2, LCS over the words for ROUGE-L) and NLTK's sentence BLEU-4 with
smoothing method 3 (not scaled); the mean over rows is reported.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from tunelab.recipes.lora.batching import Autocast, PaddedLayout
from tunelab.recipes.lora.data import Sample
from tunelab.recipes.lora.loss import loss_sum

STOP_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<|user|>", "<|observation|>", "<|end|>")


@torch.no_grad()
def eval_loss(
    model: torch.nn.Module,
    samples: Sequence[Sample],
    batch_size: int,
    pad_id: int,
    device: torch.device,
    context: Autocast,
) -> float:
    """Mean next-token loss over the answer tokens of every sample."""
    layout = PaddedLayout(batch_size, pad_id)
    total, tokens = torch.zeros((), device=device), 0
    for plan in layout.plan(samples, range(len(samples))):
        batch = layout.collate(samples, plan).to(device)
        with context():
            total += loss_sum(model, batch)
        tokens += batch.num_label_tokens
    return float(total) / max(tokens, 1)


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    samples: Sequence[Sample],
    batch_size: int,
    generation: dict[str, Any],
    device: torch.device,
    context: Autocast,
) -> list[str]:
    """Greedy (or as `generation` says) continuations of each sample's prompt, left-padded in batches."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    outputs = []
    for start in range(0, len(samples), batch_size):
        prompts = [s.input_ids[: s.prompt_len] for s in samples[start : start + batch_size]]
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for r, p in enumerate(prompts):
            ids[r, width - len(p) :], mask[r, width - len(p) :] = torch.tensor(p), 1
        with context():
            out = model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), pad_token_id=pad_id, **generation
            )
        outputs += [tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in out]
    return outputs


def stop_token_ids(tokenizer: Any, model_eos: int | list[int] | None) -> list[int]:
    """EOS ids for generation: the tokenizer's, the model's, and known end-of-turn tokens it has."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    ids |= set(model_eos if isinstance(model_eos, list) else [model_eos] if model_eos is not None else [])
    vocab = tokenizer.get_vocab()
    ids |= {vocab[t] for t in STOP_TOKENS if t in vocab}
    return sorted(ids)


def similarity(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L (x100) and BLEU-4 over pairs, on jieba words, as ChatGLM3's compute_metrics."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # jieba's regexes have invalid escapes (Deprecation/SyntaxWarning)
        import jieba
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    jieba.setLogLevel(logging.WARNING)
    smooth = SmoothingFunction().method3
    totals = {"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0, "bleu-4": 0.0}
    for pred, ref in zip(predictions, references, strict=True):
        pred_tokens, ref_tokens = list(jieba.cut(pred)), list(jieba.cut(ref))
        scores = rouge(" ".join(pred_tokens).split(), " ".join(ref_tokens).split())
        for key, value in scores.items():
            totals[key] += round(value * 100, 4)
        if pred_tokens and ref_tokens:
            totals["bleu-4"] += float(sentence_bleu([ref_tokens], pred_tokens, smoothing_function=smooth))
    n = max(len(predictions), 1)
    return {key: value / n for key, value in totals.items()}


def rouge(hyp: Sequence[str], ref: Sequence[str]) -> dict[str, float]:
    """ROUGE-1/2/L F1 on word lists, matching rouge_chinese.Rouge().get_scores (0 for an empty side)."""
    if not hyp or not ref:
        return {"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0}
    scores = {}
    for n in (1, 2):
        h = {tuple(hyp[i : i + n]) for i in range(len(hyp) - n + 1)}
        r = {tuple(ref[i : i + n]) for i in range(len(ref) - n + 1)}
        scores[f"rouge-{n}"] = _f1(len(h & r), len(h), len(r))
    scores["rouge-l"] = _f1(_lcs(hyp, ref), len(hyp), len(ref))
    return scores


def _f1(overlap: int, hyp_count: int, ref_count: int) -> float:
    precision = overlap / hyp_count if hyp_count else 0.0
    recall = overlap / ref_count if ref_count else 0.0
    return 2.0 * precision * recall / (precision + recall + 1e-8)


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]
