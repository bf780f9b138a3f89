# ruff: noqa: RUF001 - the probe text uses full-width punctuation and look-alike characters on purpose
"""The check that a converted ChatGLM3 tokenizer encodes exactly as sentencepiece: probe text, one pass.

The import refuses, rather than converts inexactly: `check_against_sentencepiece` encodes a built-in
probe corpus (Chinese, English, code, emoji, whitespace runs, digits, rare bytes, special-token
strings) plus the text of every vocabulary piece, with sentencepiece and with the written fast
tokenizer, and compares the ids, the decoded text, the `[gMASK] sop` prefix and one chat rendered by
the chat template against the ids finetune_hf.py builds. For ChatGLM3's 64,789-piece vocabulary this
takes about 0.45 s on two shared cores, 0.2 s of it transformers loading the files (measured on a
64,789-piece BPE model trained for the purpose); the 1,200-piece test fixture takes 0.1 s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tunelab.recipes.glm.errors import CheckpointError

PROBE_LINES = (
    "新款连衣裙，宽松显瘦，百搭！限时 9.9 元包邮🎉",
    "这款外套采用优质面料，版型修身，彰显气质。简约的圆领设计，搭配精致的刺绣图案。",
    "The quick brown fox jumps over the lazy dog.",
    "Don't panic: it's 3:45pm, Mr. O'Neil — “quotes”, ‘single’ and an ellipsis…",
    "def f(x):\n    return x ** 2  # square\n",
    '\tindented\twith\ttabs\n\t\t{"key": [1, 2, 3], "nested": {"a": null}}',
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "SELECT name, COUNT(*) FROM users WHERE id >= 42 GROUP BY name;",
    '<html><body class="x">&nbsp;&lt;tag&gt;</body></html>',
    "😀😃😄 👍🏽 👨‍👩‍👧‍👦 🇨🇳🇺🇸 ❤️",
    "     five leading spaces",
    "trailing spaces     ",
    "  both sides  ",
    " ",
    "   ",
    "\n",
    "\n\n\n",
    "\t",
    " \n \n ",
    "a\n\nb\n \nc",
    "\r\n windows line \r\n",
    "",
    "1234567890",
    "3.14159265358979 -0.5e-10",
    "2024-01-01 12:00:00",
    "+86 138-0013-8000",
    "１２３４５ ⅓ ½ ² ³ ① ②",
    "\x00\x01\x1f\x7f",
    "\u200b\u200c\u200d\ufeff",
    "e\u0301 a\u0308 n\u0303",
    "𠀀𠀁𪚥 \ue000\uf8ff",
    "ﬁ ﬂ Ａｂｃ ＡＢＣ",
    "▁▁ literal ▁ spaces",
    "Привет, мир",
    "مرحبا بالعالم",
    "नमस्ते दुनिया",
    "สวัสดีชาวโลก",
    "안녕하세요 세계",
    "こんにちは世界、カタカナ",
    "<|user|>\n hello<|assistant|>",
    "[gMASK]sop<|system|>\n be brief",
    "[MASK] [sMASK] eop sop",
    "</s><s><unk>",
    "philosophy people isopropyl eop. sopping",
    '<|observation|>{"ok": true}',
    "<|user user|> [gMASK",
    "哈哈哈哈哈哈哈哈哈哈",
    "!!!!!!!!!! .......... ==========",
    "aaaaaaaaaaaaaaaaaaaa",
    "-" * 40,
    "　全角　空格　",
    "GPU型号：H100，显存80GB，价格$25,000，折扣9折",
    "修身" * 200 + " mixed " * 50 + "\n" * 20,
)


def check_against_sentencepiece(sp_model_file: Path, fast_dir: Path, spelling: Mapping[str, str]) -> None:
    """CheckpointError naming the first differing probe and both id lists, unless everything matches.
    `spelling`: each special token's name -> its text in the fast tokenizer, in ChatGLM3's order."""
    import sentencepiece
    from transformers import AutoTokenizer

    sp = sentencepiece.SentencePieceProcessor(model_file=str(sp_model_file))
    fast = AutoTokenizer.from_pretrained(str(fast_dir), local_files_only=True)
    where = f"{fast_dir / 'tokenizer.json'} (built from {sp_model_file})"
    special = {name: sp.get_piece_size() + i for i, name in enumerate(spelling)}
    got_special = {name: fast.convert_tokens_to_ids(text) for name, text in spelling.items()}
    if got_special != special:
        raise CheckpointError(
            f"{where} numbers the special tokens {got_special}, ChatGLM3 {special}; refused"
        )

    lines = [*PROBE_LINES, *_vocabulary_lines(sp_model_file)]
    expected = sp.encode(lines)
    # split_special_tokens: "<|user|>" and friends as plain text, as ChatGLMTokenizer encodes them
    # (verbose=False: the probe's long line may exceed model_max_length, which only matters to a model)
    got = fast(lines, add_special_tokens=False, split_special_tokens=True, verbose=False)["input_ids"]
    _compare(where, "encodes", lines, expected, got)
    prefix = [special["[gMASK]"], special["sop"]]
    got = fast(list(PROBE_LINES), split_special_tokens=True, verbose=False)["input_ids"]
    _compare(
        where,
        "with add_special_tokens encodes",
        PROBE_LINES,
        [prefix + e for e in expected[: len(PROBE_LINES)]],
        got,
    )
    texts = sp.decode(expected)
    # the backend's decoder directly (what decode() runs, clean-up is off): 3x faster than batch_decode
    decoded = fast.backend_tokenizer.decode_batch(expected, skip_special_tokens=False)
    for i, (line, want, have) in enumerate(zip(lines, texts, decoded, strict=True)):
        if want != have:
            raise CheckpointError(
                f"{where} decodes the ids of probe line {i} {_short(line)} to {have!r}, sentencepiece to "
                f"{want!r}; refused rather than converted inexactly"
            )
    _check_chat(where, sp, fast, special)


def _vocabulary_lines(sp_model_file: Path) -> list[str]:
    """Every normal piece's text, 64 pieces to a line: exercises the merges for 0.03 s at 64k pieces."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()  # type: ignore[attr-defined]  # generated, no stubs
    proto.ParseFromString(sp_model_file.read_bytes())
    texts = [p.piece.replace("▁", " ") for p in proto.pieces if p.type == 1]  # NORMAL
    return ["".join(texts[i : i + 64]) for i in range(0, len(texts), 64)]


def _check_chat(where: str, sp: Any, fast: Any, special: dict[str, int]) -> None:
    """The chat template's ids == finetune_hf.py's: [gMASK] sop, <|role|> encode("\\n") encode(content)...,
    and the generation prompt <|assistant|> encode("\\n")."""
    contents = [
        "你好，请介绍一下这款连衣裙。",
        "",
        "  two leading spaces",
        "\nnewline first",
        "def f():\n    pass",
    ]
    roles = ["system", "user", "assistant", "user", "assistant", "observation", "user"]
    messages = [{"role": r, "content": contents[i % len(contents)]} for i, r in enumerate(roles)]
    expected = [special["[gMASK]"], special["sop"]]
    for message in messages:
        expected += [special[f"<|{message['role']}|>"], *sp.encode("\n"), *sp.encode(message["content"])]
    expected += [special["<|assistant|>"], *sp.encode("\n")]  # the generation prompt's empty metadata line
    got = fast.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    _compare(where, "renders the probe chat as", ["(the probe chat)"], [expected], [list(got)])


def _compare(
    where: str, what: str, lines: Sequence[str], expected: list[list[int]], got: list[list[int]]
) -> None:
    for i, (line, want, have) in enumerate(zip(lines, expected, got, strict=True)):
        if want != have:
            at = next(
                (k for k, (a, b) in enumerate(zip(want, have, strict=False)) if a != b),
                min(len(want), len(have)),
            )
            shown = "" if max(len(want), len(have)) <= 64 else f" (ids {max(0, at - 8)}.. of {len(want)})"
            lo = 0 if not shown else max(0, at - 8)
            raise CheckpointError(
                f"{where} {what} probe line {i} {_short(line)} differently from sentencepiece, first at "
                f"id {at}{shown}: sentencepiece {want[lo : lo + 64]} vs fast {have[lo : lo + 64]}; "
                "refused rather than converted inexactly (report the checkpoint's tokenizer.model)"
            )


def _short(line: str) -> str:
    return repr(line) if len(line) <= 120 else repr(line[:120]) + f"... ({len(line)} characters)"
