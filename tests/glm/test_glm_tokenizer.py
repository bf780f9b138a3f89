# ruff: noqa: RUF001 - Chinese text uses full-width punctuation on purpose
"""The ChatGLM3 tokenizer import against THUDM's own ChatGLMTokenizer and finetune_hf.py's chat format.

THUDM's tokenizer is loaded from the fixture (tests/glm/thudm_tokenizer.py); finetune_hf.py's
`process_batch` is rewritten here from its description (d.6 of the GLM reference notes), on THUDM's
tokenizer methods. The lines are generated deterministically: Chinese ad copy, English, code, emoji,
whitespace runs, digits, rare characters and special-token strings.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sentencepiece import sentencepiece_model_pb2
from transformers import AutoTokenizer

from thudm_tokenizer import load_chatglm_tokenizer
from tunelab.recipes.glm.errors import CheckpointError
from tunelab.recipes.glm.tokenizer import (
    CHAT_TEMPLATE,
    SPECIAL_TOKENS,
    TokenizerSummary,
    convert_tokenizer,
    verify_tokenizer,
)

# THUDM/chatglm3-6b's tokenizer_config.json of 2024 (revision 103caa4): the template CHAT_TEMPLATE follows.
HUB_TEMPLATE = (
    "{% for message in messages %}{% if loop.first %}[gMASK]sop<|{{ message['role'] }}|>\n"
    " {{ message['content'] }}{% else %}<|{{ message['role'] }}|>\n {{ message['content'] }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
ADDED = [*SPECIAL_TOKENS, "</s>", "<unk>"]  # what the fast tokenizer matches in text


@pytest.fixture(scope="module")
def converted(chatglm3_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TokenizerSummary]:
    dst = tmp_path_factory.mktemp("glm-tokenizer")
    return dst, convert_tokenizer(chatglm3_dir, dst, model_max_length=512)


@pytest.fixture(scope="module")
def fast(converted: tuple[Path, TokenizerSummary]) -> Any:
    return AutoTokenizer.from_pretrained(converted[0])


@pytest.fixture(scope="module")
def thudm(chatglm3_dir: Path) -> Any:
    return load_chatglm_tokenizer(chatglm3_dir)


# -- the lines --------------------------------------------------------------------------------------

AD_WORDS = [
    "连衣裙",
    "宽松",
    "显瘦",
    "百搭",
    "优质面料",
    "版型",
    "修身",
    "彰显",
    "气质",
    "圆领",
    "刺绣",
    "图案",
    "复古",
    "简约",
    "时尚",
    "包邮",
    "限时",
    "新款",
    "纯棉",
    "舒适",
]
EN_WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "price",
    "free",
    "shipping",
    "limited",
    "offer",
    "new",
    "style",
    "cotton",
]
CODE = [
    "def f(x):",
    "    return x ** 2",
    "\tif (a && b) { return; }",
    "for i in range(10):",
    '{"key": [1, 2.5, null]}',
    "SELECT * FROM t;",
    "x = y  # comment",
    "</div>",
]
EMOJI = ["😀", "🎉", "👍🏽", "👨‍👩‍👧", "🇨🇳", "❤️", "🔥", "✨"]
SPACES = [" ", "  ", "    ", "\n", "\n\n", "\t", "\t\t", " \n ", "\r\n", "　", "\n   "]
RARE = ["\x00", "\x07", "\x7f", "\u200b", "\ufeff", "e\u0301", "𠀀", "\ue000", "▁", "ﬁ", "Ａ", "①", "ß", "Ω"]
NEAR_MISSES = ["<|user", "user|>", "[gMASK", "isop", "sopx", "people", "philosophy", "<s>", "eop.", "(sop)"]


def varied_lines(count: int, seed: int = 20240601) -> list[str]:
    rng = random.Random(seed)

    def ad() -> str:
        return "".join(
            rng.choice(AD_WORDS) + rng.choice(["", "，", "！", "。"]) for _ in range(rng.randint(1, 8))
        )

    def english() -> str:
        return " ".join(rng.choice(EN_WORDS) for _ in range(rng.randint(1, 12))) + rng.choice(
            [".", "!", "", "?"]
        )

    def digits() -> str:
        return rng.choice(
            [
                str(rng.randint(0, 10**12)),
                f"{rng.random() * 1000:.3f}",
                f"{rng.randint(1, 12)}月{rng.randint(1, 28)}日",
            ]
        )

    def piece() -> str:
        kinds: list[Callable[[], str]] = [
            ad,
            english,
            digits,
            lambda: rng.choice(CODE),
            lambda: rng.choice(EMOJI),
            lambda: rng.choice(SPACES),
            lambda: rng.choice(RARE),
        ]
        return rng.choice(kinds)()

    lines = []
    for i in range(count):
        kind = i % 8
        if kind == 0:
            line = ad()
        elif kind == 1:
            line = english()
        elif kind == 2:
            line = "\n".join(rng.choice(CODE) for _ in range(rng.randint(1, 4)))
        elif kind == 3:
            line = "".join(piece() for _ in range(rng.randint(1, 6)))
        elif kind == 4:  # leading and trailing whitespace runs
            line = rng.choice(SPACES) * rng.randint(0, 3) + piece() + rng.choice(SPACES) * rng.randint(0, 3)
        elif kind == 5:  # special-token strings (and near misses) among text
            parts = [piece() for _ in range(rng.randint(0, 3))]
            for _ in range(rng.randint(1, 3)):
                parts.insert(rng.randint(0, len(parts)), rng.choice(ADDED + NEAR_MISSES))
            line = rng.choice(["", " "]).join(parts)
        elif kind == 6:
            line = "".join(rng.choice(EMOJI + RARE + SPACES) for _ in range(rng.randint(1, 10)))
        else:
            line = digits() + rng.choice(SPACES) + ad() + english()
        lines.append(line)
    return [*lines, "", " ", "\n", "哈" * 50, "a" * 50]


LINES = varied_lines(2400)


def split_reference(thudm: Any, line: str) -> list[int]:
    """The fast tokenizer's matching, independently: the added strings (sop/eop as whole words) become
    their ids, the text between is sentencepiece's encode, each piece with its own dummy prefix."""
    names = sorted(ADDED, key=len, reverse=True)
    pattern = "|".join(rf"(?<!\w){n}(?!\w)" if n in ("sop", "eop") else re.escape(n) for n in names)
    ids: list[int] = []
    at = 0
    for match in re.finditer(pattern, line):
        ids += thudm.tokenizer.encode(line[at : match.start()]) if match.start() > at else []
        name = match.group()
        ids.append({"</s>": 2, "<unk>": 0}[name] if name in ("</s>", "<unk>") else thudm.get_command(name))
        at = match.end()
    return ids + (thudm.tokenizer.encode(line[at:]) if at < len(line) else [])


# -- ids and decoding -------------------------------------------------------------------------------


def test_summary_numbers_the_specials_as_chatglm3(
    converted: tuple[Path, TokenizerSummary], thudm: Any
) -> None:
    summary = converted[1]
    assert summary.sp_vocab_size == 1200 and summary.vocab_size == 1209
    assert summary.special_token_ids == {name: thudm.get_command(name) for name in SPECIAL_TOKENS}
    assert list(summary.special_token_ids.values()) == list(range(1200, 1209))
    assert (summary.eos_id, summary.pad_id) == (thudm.eos_token_id, thudm.pad_token_id) == (2, 0)
    assert summary.stop_ids == (2, thudm.get_command("<|user|>"), thudm.get_command("<|observation|>"))
    assert json.loads(json.dumps(summary.as_dict()))["stop_ids"] == [2, 1206, 1208]


def test_written_files_load_without_remote_code_or_sentencepiece(
    converted: tuple[Path, TokenizerSummary],
) -> None:
    dst = converted[0]
    assert sorted(p.name for p in dst.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    config = json.loads((dst / "tokenizer_config.json").read_text())
    assert "auto_map" not in config and config["chat_template"] == CHAT_TEMPLATE
    assert (config["padding_side"], config["model_max_length"]) == ("left", 512)
    script = (
        "import sys, json; sys.modules['sentencepiece'] = None\n"  # any import of it now fails
        "from transformers import AutoTokenizer\n"
        f"t = AutoTokenizer.from_pretrained({str(dst)!r})\n"
        "ids = t.apply_chat_template([{'role': 'user', 'content': '你好'}], add_generation_prompt=True,"
        " tokenize=True, return_dict=False)\n"
        "print(json.dumps([type(t).__name__, t.eos_token_id, t.pad_token_id, t.padding_side, list(ids)]))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    name, eos, pad, side, ids = json.loads(done.stdout.strip().splitlines()[-1])
    assert (eos, pad, side) == (2, 0, "left") and name in ("PreTrainedTokenizerFast", "TokenizersBackend")
    assert ids[:3] == [1201, 1203, 1206] and ids[-3] == 1207 and ids[-1] == 13  # <|assistant|> ▁ \n


@pytest.mark.parametrize("add_special_tokens", [False, True])
def test_fast_ids_equal_chatglm_tokenizer_on_varied_lines(
    fast: Any, thudm: Any, add_special_tokens: bool
) -> None:
    """split_special_tokens=True: special-token strings stay text, as ChatGLMTokenizer encodes them."""
    assert len(LINES) >= 2000 and sum(any(a in line for a in ADDED) for line in LINES) >= 200
    got = fast(LINES, add_special_tokens=add_special_tokens, split_special_tokens=True)["input_ids"]
    wrong = [
        (line, want, have)
        for line, have in zip(LINES, got, strict=True)
        if (want := thudm.encode(line, add_special_tokens=add_special_tokens)) != have
    ]
    assert not wrong, f"{len(wrong)} of {len(LINES)} lines differ, e.g. {wrong[:3]}"


def test_special_token_strings_in_text_become_their_ids(fast: Any, thudm: Any, chatglm3_dir: Path) -> None:
    """By default the fast tokenizer matches the special strings (the chat template needs it); THUDM's
    ChatGLMTokenizer(encode_special_tokens=True) matches the role tokens the same way."""
    got = fast(LINES, add_special_tokens=False)["input_ids"]
    wrong = [
        (line, have) for line, have in zip(LINES, got, strict=True) if split_reference(thudm, line) != have
    ]
    assert not wrong, f"{len(wrong)} lines differ, e.g. {wrong[:3]}"
    roles_only = load_chatglm_tokenizer(chatglm3_dir, encode_special_tokens=True)
    other = [a for a in ADDED if not a.startswith("<|")] + ["sop", "eop"]
    checked = 0
    for line, have in zip(LINES, got, strict=True):
        if "<|" in line and not any(a in line for a in other):
            assert roles_only.encode(line, add_special_tokens=False) == have, line
            checked += 1
    assert checked >= 30


def test_sop_and_eop_match_only_as_whole_words(fast: Any, thudm: Any) -> None:
    def ids(text: str) -> list[int]:
        return fast(text, add_special_tokens=False)["input_ids"]

    for word in ["philosophy", "people", "isopropyl", "sopping", "geopolitics", "_sop", "sop2"]:
        assert ids(word) == thudm.tokenizer.encode(word), word
    assert ids("[gMASK]sop<|user|>") == [1201, 1203, 1206]
    # the inexact case, by construction: a standalone "sop" in a text is the special token
    assert ids("a sop to him") != thudm.tokenizer.encode("a sop to him")
    assert 1203 in ids("a sop to him")


def test_decode_inverts_encode_where_sentencepiece_does(fast: Any, thudm: Any) -> None:
    sp = thudm.tokenizer.sp_model
    round_trips = 0
    for line in LINES:
        ids = sp.encode(line)
        assert fast.decode(ids) == sp.decode(ids) == thudm.decode(ids), line
        with_prefix = fast(line, split_special_tokens=True)["input_ids"]
        assert fast.decode(with_prefix, skip_special_tokens=True) == sp.decode(ids), line
        if sp.decode(ids) == line:
            round_trips += 1
            assert fast.decode(fast(line)["input_ids"], skip_special_tokens=True) == line or any(
                a in line for a in ADDED
            )
    assert round_trips >= 2000, round_trips  # the rest hold "▁" (sentencepiece's own space)


def test_padding_is_left_with_unk_as_chatglm(fast: Any, thudm: Any) -> None:
    batch = ["你好", "hello there, a longer line"]
    mine, theirs = fast(batch, padding=True), thudm(batch, padding=True)
    assert mine["input_ids"] == theirs["input_ids"]
    assert mine["attention_mask"] == theirs["attention_mask"]
    assert "token_type_ids" not in mine
    # a pair: [gMASK] sop A B eos, as ChatGLMTokenizer.build_inputs_with_special_tokens
    assert fast("问题", "回答")["input_ids"] == thudm("问题", "回答")["input_ids"]


# -- the chat format --------------------------------------------------------------------------------


def finetune_hf_sample(thudm: Any, conversation: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """finetune_hf.py's process_batch for one conversation, from its description (d.6)."""
    input_ids, loss_masks = [thudm.get_command("[gMASK]"), thudm.get_command("sop")], [False, False]
    for message in conversation:
        role, content = message["role"], message["content"]
        if role == "tool":
            raise NotImplementedError(role)
        new_ids = [
            thudm.get_command(f"<|{role}|>"),
            *thudm.tokenizer.encode("\n"),
            *thudm.tokenizer.encode(content),
        ]
        assert new_ids == thudm.build_single_message(role, "", content)  # THUDM's own method agrees
        input_ids += new_ids
        loss_masks += [role not in ("system", "user")] * len(new_ids)
    input_ids.append(thudm.eos_token_id)
    loss_masks = [False, *loss_masks]
    labels = [token if mask else -100 for token, mask in zip(input_ids, loss_masks, strict=True)]
    return input_ids, labels


def conversations(count: int, seed: int = 7) -> list[list[dict[str, str]]]:
    rng = random.Random(seed)
    texts = [line for line in LINES if not any(a in line for a in [*ADDED, "sop", "eop"])]
    texts += ["", "", "  two leading spaces", "\nnewline first", "\t tab and space", "trailing  "]
    result = []
    for _ in range(count):
        chat = [{"role": "system", "content": rng.choice(texts)}] if rng.random() < 0.5 else []
        for _ in range(rng.randint(1, 4)):
            chat.append({"role": "user", "content": rng.choice(texts)})
            chat.append({"role": "assistant", "content": rng.choice(texts)})
            if rng.random() < 0.2:  # ChatGLM3's tool flow: the call's result, then the answer
                chat.append({"role": "observation", "content": rng.choice(texts)})
                chat.append({"role": "assistant", "content": rng.choice(texts)})
        if rng.random() < 0.2:
            chat.append({"role": "user", "content": rng.choice(texts)})
        result.append(chat)
    return result


CHATS = conversations(300)


def render(fast: Any, chat: list[dict[str, str]], **kwargs: Any) -> list[int]:
    return list(fast.apply_chat_template(chat, tokenize=True, return_dict=False, **kwargs))


def template_labels(fast: Any, chat: list[dict[str, str]], ids: list[int]) -> list[int]:
    """Labels from the template's message spans: a token is learned when the one before it belongs to
    an assistant or observation message (finetune_hf.py's mask, shifted by one)."""
    owner: list[str | None] = [None, None]  # [gMASK] sop
    for k, message in enumerate(chat):
        prefix = render(fast, chat[: k + 1])
        assert ids[: len(prefix)] == prefix  # each message's ids extend the previous ones
        owner += [message["role"]] * (len(prefix) - len(owner))
    owner.append(None)  # eos
    return [-100] + [
        ids[i] if owner[i - 1] in ("assistant", "observation") else -100 for i in range(1, len(ids))
    ]


def test_template_ids_plus_eos_equal_finetune_hf(fast: Any, thudm: Any) -> None:
    assert len(CHATS) == 300 and sum(len(c) for c in CHATS) > 1500
    for chat in CHATS:
        want_ids, want_labels = finetune_hf_sample(thudm, chat)
        ids = [*render(fast, chat), fast.eos_token_id]
        assert ids == want_ids, chat
        assert template_labels(fast, chat, ids) == want_labels, chat


def test_generation_prompt_is_build_chat_input_and_the_empty_metadata_line(fast: Any, thudm: Any) -> None:
    # ChatGLM3 answers "\n" + content (an empty metadata line first); the template supplies that line
    newline = thudm.tokenizer.encode("\n")
    for chat in CHATS[:100]:
        history, query = chat[:-1], chat[-1]["content"]
        want = thudm.build_chat_input(query, history=history, role=chat[-1]["role"])["input_ids"][0].tolist()
        assert render(fast, chat, add_generation_prompt=True) == want + newline, chat


def test_template_is_the_hub_template_where_content_is_not_empty(fast: Any) -> None:
    for chat in CHATS:
        nonempty = [m for m in chat if m["content"]]
        if nonempty:
            assert fast.apply_chat_template(nonempty, tokenize=False) == fast.apply_chat_template(
                nonempty, tokenize=False, chat_template=HUB_TEMPLATE
            )


def test_the_space_after_the_newline_gives_finetune_hf_ids(fast: Any, thudm: Any) -> None:
    """'<|role|>\\n ' + content -> [role] + encode("\\n") + encode(content); without the space, not so."""
    sp = thudm.tokenizer
    user, newline = 1206, sp.encode("\n")

    def ids(text: str) -> list[int]:
        return fast(text, add_special_tokens=False)["input_ids"]

    contents = [c for chat in CHATS for c in (m["content"] for m in chat) if c]
    for content in contents:
        assert ids("<|user|>\n " + content) == [user, *newline, *sp.encode(content)], content
    assert (
        sum(ids("<|user|>\n" + c) != [user, *newline, *sp.encode(c)] for c in contents) > len(contents) // 2
    )
    # empty content: the hub's "\n " would add a lone "▁"; CHAT_TEMPLATE renders "\n" alone
    assert ids("<|user|>\n ") == [user, *newline, sp.sp_model.piece_to_id("▁")]
    assert render(fast, [{"role": "user", "content": ""}]) == [1201, 1203, user, *newline]


def test_unknown_role_is_refused(fast: Any) -> None:
    with pytest.raises(Exception, match="ChatGLM3 has no role tool"):
        fast.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_content_with_special_strings_is_where_the_template_differs(fast: Any, thudm: Any) -> None:
    """Documented inexactness: finetune_hf.py encodes "<|user|>" in a message as text, a text template
    cannot; such content becomes the role token."""
    chat = [{"role": "user", "content": "what does <|user|> mean?"}]
    assert [*render(fast, chat), 2] != finetune_hf_sample(thudm, chat)[0]


# -- refusals ---------------------------------------------------------------------------------------


def edited_model(chatglm3_dir: Path, tmp_path: Path, edit: Callable[[Any], None]) -> Path:
    proto = sentencepiece_model_pb2.ModelProto()  # type: ignore[attr-defined]
    proto.ParseFromString((chatglm3_dir / "tokenizer.model").read_bytes())
    edit(proto)
    src = tmp_path / "src"
    src.mkdir()
    (src / "tokenizer.model").write_bytes(proto.SerializeToString())
    return src


def _set(path: str, value: Any) -> Callable[[Any], None]:
    def edit(proto: Any) -> None:
        spec, field = path.split(".")
        setattr(getattr(proto, spec), field, value)

    return edit


def _piece(index: int, **changes: Any) -> Callable[[Any], None]:
    def edit(proto: Any) -> None:
        for key, value in changes.items():
            setattr(proto.pieces[index], key, value)

    return edit


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (_set("normalizer_spec.name", "nmt_nfkc"), "normalizer_spec.name"),
        (_set("normalizer_spec.precompiled_charsmap", b"\x01\x02"), "normalizer_spec.precompiled_charsmap"),
        (_set("normalizer_spec.remove_extra_whitespaces", True), "normalizer_spec.remove_extra_whitespaces"),
        (_set("normalizer_spec.add_dummy_prefix", False), "normalizer_spec.add_dummy_prefix"),
        (_set("trainer_spec.model_type", 1), "trainer_spec.model_type"),  # UNIGRAM
        (_set("trainer_spec.byte_fallback", False), "trainer_spec.byte_fallback"),
        (_set("trainer_spec.treat_whitespace_as_suffix", True), "trainer_spec.treat_whitespace_as_suffix"),
        (_set("trainer_spec.eos_id", 3), "trainer_spec.eos_id"),
        (_piece(500, type=4), "pieces[500].type"),  # USER_DEFINED
        (_piece(600, piece="x\u2603"), "pieces[600]"),  # a character that is not a piece
    ],
)
def test_unsupported_models_are_refused_naming_file_and_field(
    chatglm3_dir: Path, tmp_path: Path, edit: Callable[[Any], None], field: str
) -> None:
    src = edited_model(chatglm3_dir, tmp_path, edit)
    with pytest.raises(CheckpointError) as caught:
        convert_tokenizer(src, tmp_path / "dst")
    assert str(src / "tokenizer.model") in str(caught.value) and field in str(caught.value)
    assert not (tmp_path / "dst" / "tokenizer.json").exists()


def test_a_piece_named_like_a_special_token_leaves_that_token_spelled_in_brackets(
    chatglm3_dir: Path, tmp_path: Path
) -> None:
    """A vocabulary whose subword `sop` is a piece (500 here): the special token keeps ChatGLM3's id
    (1203) as `<sop>`, everywhere the tokenizer, its template and the recipe use it; verified at import
    against sentencepiece like any other conversion."""
    from transformers import AutoTokenizer

    from tunelab.recipes.lora.chatglm3 import ChatGLM3Format, has_chatglm3_tokens

    src = edited_model(chatglm3_dir, tmp_path, _piece(500, piece="sop"))
    summary = convert_tokenizer(src, tmp_path / "dst")
    assert summary.spelling["sop"] == "<sop>" and summary.spelling["[gMASK]"] == "[gMASK]"
    assert summary.special_token_ids["sop"] == 1203
    fast = AutoTokenizer.from_pretrained(tmp_path / "dst")
    assert (fast.convert_tokens_to_ids("<sop>"), fast.convert_tokens_to_ids("sop")) == (1203, 500)
    assert fast("你好")["input_ids"][:2] == [1201, 1203]
    chat = fast.apply_chat_template(
        [{"role": "user", "content": "你好"}], add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert chat[:3] == [1201, 1203, 1206] and chat[-3] == 1207
    assert has_chatglm3_tokens(fast) and ChatGLM3Format(fast).head == [1201, 1203]


def test_missing_or_broken_model_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"tokenizer\.model is missing"):
        convert_tokenizer(tmp_path, tmp_path / "dst")
    (tmp_path / "tokenizer.model").write_bytes(b"\xff\xfe not a protobuf")
    with pytest.raises(
        CheckpointError, match=rf"{re.escape(str(tmp_path))}/tokenizer\.model is not a sentencepiece"
    ):
        convert_tokenizer(tmp_path, tmp_path / "dst")


def test_a_tokenizer_that_encodes_differently_is_refused(
    chatglm3_dir: Path, converted: tuple[Path, TokenizerSummary], tmp_path: Path
) -> None:
    """The check names the first differing line and both id lists (here: the merges in reverse order)."""
    data = json.loads((converted[0] / "tokenizer.json").read_text())
    data["model"]["merges"].reverse()
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    (tmp_path / "tokenizer_config.json").write_bytes((converted[0] / "tokenizer_config.json").read_bytes())
    with pytest.raises(
        CheckpointError, match=r"probe line \d+ .*first at id \d+.*: sentencepiece \[\d.* vs fast \[\d"
    ):
        verify_tokenizer(chatglm3_dir / "tokenizer.model", tmp_path)


def test_a_failed_check_leaves_no_files(
    chatglm3_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tunelab.recipes.glm import tokenizer

    def fails(sp_model_file: Path, fast_dir: Path) -> None:
        raise CheckpointError("probe line 0 differs")

    monkeypatch.setattr(tokenizer, "verify_tokenizer", fails)
    with pytest.raises(CheckpointError):
        convert_tokenizer(chatglm3_dir, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_verification_is_fast(chatglm3_dir: Path, converted: tuple[Path, TokenizerSummary]) -> None:
    verify_tokenizer(chatglm3_dir / "tokenizer.model", converted[0])  # warm
    started = time.perf_counter()
    verify_tokenizer(chatglm3_dir / "tokenizer.model", converted[0])
    assert time.perf_counter() - started < 2.0  # ~0.1 s here; ~0.45 s at 64k pieces (module docstring)
