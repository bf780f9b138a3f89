"""ChatGLM3's sentencepiece `tokenizer.model` -> a fast `tokenizer.json` with ChatGLM3's chat template.

ChatGLM3 ships a sentencepiece BPE model and THUDM's `ChatGLMTokenizer` (remote code for transformers
4.3x), which numbers nine special tokens after the sentencepiece vocabulary. `convert_tokenizer` writes
a `tokenizer.json` + `tokenizer_config.json` that `AutoTokenizer.from_pretrained` loads with no remote
code and no sentencepiece, then `verify_tokenizer` checks it against sentencepiece itself:

- model: BPE over the pieces with merges ranked by piece score. Sentencepiece's BPE encoder repeatedly
  joins the adjacent pair whose concatenation is the highest-scoring piece; a merge list in that order
  is the same algorithm. Characters outside the vocabulary fall back to `<0xXX>` bytes, as in
  sentencepiece.
- normalizer: " " -> "▁" and a "▁" prefix (ChatGLM3's identity normalizer with `add_dummy_prefix`).
  There is no pre-tokenizer: sentencepiece's BPE encoder also runs over the whole normalized text, and
  its trainer-only options (`split_digits`, `allow_whitespace_only_pieces`, ...) show only in which
  pieces exist, so the merges reproduce them (flipping them in a model does not change its output).
- the nine specials are special added tokens, matched in text (the chat template needs that), and
  `[gMASK] sop` is prepended when `add_special_tokens=True`, as `ChatGLMTokenizer.encode` does.

A special token's text that is already a piece of the vocabulary (a subword `sop`, say) would take that
piece's id in a fast tokenizer; such a token is spelled `<sop>` instead (same id, same place in the chat
template; `TokenizerSummary.spelling` says how each is spelled, and the recipe looks the tokens up among
the added tokens, where either spelling is found).

Not identical, by construction: ChatGLMTokenizer (and finetune_hf.py, which calls sentencepiece)
encodes the strings "<|user|>", "[gMASK]", "sop", "</s>", ... as plain text; the fast tokenizer turns
them into their ids. `sop` and `eop` only match as whole words, so "philosophy" or "people" are safe,
but a standalone "sop" in a text is not. Pass `split_special_tokens=True` to get ChatGLMTokenizer's
ids for any text (verified at import), e.g. to encode message contents for training.

For a 64,789-piece vocabulary (ChatGLM3's size; a BPE model trained for the measurement) the whole
conversion takes about 1 s on two shared cores: 0.3 s reading and checking, 0.2 s building, 0.45 s
verifying (of which 0.2 s is transformers loading the written files).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

from tunelab.recipes.glm.errors import CheckpointError
from tunelab.recipes.glm.tokenizer_probe import check_against_sentencepiece

SPECIAL_TOKENS = (
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "sop",
    "eop",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
)
ROLES = ("system", "user", "assistant", "observation")  # CHAT_TEMPLATE refuses any other


# ChatGLM3's template as THUDM/chatglm3-6b's 2024 tokenizer_config.json has it (`[gMASK]sop` once, then
# per message `<|role|>` + "\n " + content), with one change for exactness and one to fail loudly.
# The space after "\n" starts the content's own "▁" word, so the ids are sentencepiece's encode("\n") +
# encode(content): what finetune_hf.py trains on (tests/glm/test_glm_tokenizer.py checks it). Empty
# content renders "\n" alone, because "\n " would add a lone "▁" that encode("") does not have; content
# that starts with whitespace needs nothing (the normalized text is the same). An unknown role is an
# error instead of a role token that does not exist. The generation prompt is `<|assistant|>` + "\n":
# ChatGLM3 answers with a metadata line first (empty for a plain answer, a tool's name for a call) and
# its own chat() strips it; no OpenAI-style server does, so the prompt supplies the empty line (the
# ids finetune_hf.py trains on: encode("\n") after the role token) and the answer is the content alone.
# Tool calls are not supported (the recipe refuses `tools`, as finetune_hf.py does). Literal
# `{{ '...' }}` strings keep transformers' trim_blocks from eating the newlines.
def chat_template(spelling: dict[str, str] | None = None) -> str:
    """ChatGLM3's template with each special token spelled as the tokenizer spells it."""
    spell = {**{name: name for name in SPECIAL_TOKENS}, **(spelling or {})}
    roles = "".join(
        f"{{%- elif message['role'] == '{role}' -%}}{{{{- '{spell[f'<|{role}|>']}' -}}}}" for role in ROLES
    ).removeprefix("{%- el")
    return (
        "{%- for message in messages -%}"
        "{%- if message['role'] not in ['system', 'user', 'assistant', 'observation'] -%}"
        "{{- raise_exception('ChatGLM3 has no role ' ~ message['role'] ~ "
        "'; use system, user, assistant or observation') -}}"
        "{%- endif -%}"
        f"{{%- if loop.first -%}}{{{{- '{spell['[gMASK]']}{spell['sop']}' -}}}}{{%- endif -%}}"
        f"{{%- {roles}{{%- endif -%}}"
        "{%- if message['content'] -%}{{- '\\n ' ~ message['content'] -}}"
        "{%- else -%}{{- '\\n' -}}{%- endif -%}"
        "{%- endfor -%}"
        f"{{%- if add_generation_prompt -%}}{{{{- '{spell['<|assistant|>']}\\n' -}}}}{{%- endif -%}}"
    )


CHAT_TEMPLATE = chat_template()

_BPE = 2  # sentencepiece_model.proto: TrainerSpec.ModelType
_NORMAL, _UNKNOWN, _CONTROL, _BYTE = 1, 2, 3, 6  # ... and ModelProto.SentencePiece.Type
_PIECE_TYPES = {1: "NORMAL", 2: "UNKNOWN", 3: "CONTROL", 4: "USER_DEFINED", 5: "UNUSED", 6: "BYTE"}
_WHOLE_WORD_ONLY = {"sop", "eop"}  # plain English letters: "philosophy", "people" must stay text


@dataclass(frozen=True)
class TokenizerSummary:
    """What the rest of the import needs from the tokenizer: sizes and the ids generation stops on."""

    sp_vocab_size: int
    special_token_ids: dict[str, int]
    eos_id: int
    pad_id: int
    stop_ids: tuple[int, ...]  # eos, <|user|>, <|observation|>: ChatGLM3's chat() stops on these
    spelling: dict[str, str]  # name -> its text in tokenizer.json (the name, or <name> where a piece has it)

    @property
    def vocab_size(self) -> int:
        """Ids in use; the model's (padded) embedding must have at least this many rows."""
        return self.sp_vocab_size + len(SPECIAL_TOKENS)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, for the import's provenance file."""
        return {**asdict(self), "stop_ids": list(self.stop_ids), "vocab_size": self.vocab_size}


def convert_tokenizer(src: Path, dst: Path, *, model_max_length: int = 8192) -> TokenizerSummary:
    """Write dst/tokenizer.json and dst/tokenizer_config.json from src/tokenizer.model, verified.

    `model_max_length` should be the checkpoint's `seq_length` (8192 for chatglm3-6b); 0 or less
    leaves it unset (transformers then applies no limit). On a verification failure the written
    files are removed and CheckpointError says which probe line differed.
    """
    sp_model_file = src / "tokenizer.model"
    proto = _read_model(sp_model_file)
    tokenizer, summary = _build(proto, sp_model_file)
    dst.mkdir(parents=True, exist_ok=True)
    written = [dst / "tokenizer.json", dst / "tokenizer_config.json"]
    tokenizer.save(str(written[0]))
    written[1].write_text(
        json.dumps(_tokenizer_config(model_max_length, summary.spelling), indent=2, ensure_ascii=False) + "\n"
    )
    try:
        verify_tokenizer(sp_model_file, dst)
    except CheckpointError:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return summary


def _read_model(path: Path) -> Any:
    """The parsed sentencepiece ModelProto, refused unless this module converts it exactly."""
    from google.protobuf.message import DecodeError
    from sentencepiece import sentencepiece_model_pb2

    if not path.is_file():
        raise CheckpointError(
            f"{path} is missing: a ChatGLM3 checkpoint ships its sentencepiece tokenizer as tokenizer.model; "
            "copy it from the download (THUDM/chatglm3-6b) into the source folder"
        )
    proto = sentencepiece_model_pb2.ModelProto()  # type: ignore[attr-defined]  # generated, no stubs
    try:
        proto.ParseFromString(path.read_bytes())
    except DecodeError as err:
        raise CheckpointError(f"{path} is not a sentencepiece model ({err}); re-download it") from err
    if not proto.pieces:
        raise CheckpointError(f"{path} has no pieces: not a sentencepiece model; re-download it")
    _check_supported(proto, path)
    return proto


def _check_supported(proto: Any, path: Path) -> None:
    trainer, norm = proto.trainer_spec, proto.normalizer_spec

    def refuse(field: str, value: object, wanted: str) -> CheckpointError:
        return CheckpointError(
            f"{path}: {field} is {value!r}, but this importer converts only ChatGLM3's sentencepiece setup "
            f"({wanted}); refused rather than converted inexactly"
        )

    expected: list[tuple[str, object, object, str]] = [
        ("trainer_spec.model_type", trainer.model_type, _BPE, "BPE"),
        ("trainer_spec.byte_fallback", trainer.byte_fallback, True, "byte fallback on"),
        ("trainer_spec.treat_whitespace_as_suffix", trainer.treat_whitespace_as_suffix, False, "off"),
        ("normalizer_spec.name", norm.name, "identity", "the identity normalizer"),
        ("normalizer_spec.precompiled_charsmap", len(norm.precompiled_charsmap), 0, "no character map"),
        ("normalizer_spec.add_dummy_prefix", norm.add_dummy_prefix, True, "a dummy '▁' prefix"),
        ("normalizer_spec.remove_extra_whitespaces", norm.remove_extra_whitespaces, False, "off"),
        ("normalizer_spec.escape_whitespaces", norm.escape_whitespaces, True, "' ' -> '▁'"),
        (
            "denormalizer_spec.precompiled_charsmap",
            len(proto.denormalizer_spec.precompiled_charsmap),
            0,
            "none",
        ),
        ("trainer_spec.unk_id", trainer.unk_id, 0, "unk 0, bos 1, eos 2"),
        ("trainer_spec.bos_id", trainer.bos_id, 1, "unk 0, bos 1, eos 2"),
        ("trainer_spec.eos_id", trainer.eos_id, 2, "unk 0, bos 1, eos 2"),
    ]
    for field, value, wanted_value, wanted in expected:
        if value != wanted_value:
            raise refuse(field, value, wanted)
    _check_pieces(proto, path)


def _check_pieces(proto: Any, path: Path) -> None:
    def refuse(what: str) -> CheckpointError:
        return CheckpointError(f"{path}: {what}; refused rather than converted inexactly")

    layout = [(p.piece, _PIECE_TYPES.get(p.type)) for p in proto.pieces[:3]]
    if layout != [("<unk>", "UNKNOWN"), ("<s>", "CONTROL"), ("</s>", "CONTROL")]:
        raise refuse(f"pieces 0..2 are {layout}, not ChatGLM3's <unk> <s> </s> (UNKNOWN, CONTROL, CONTROL)")
    pieces = {p.piece for p in proto.pieces}
    singles = {p.piece for p in proto.pieces if p.type == _NORMAL and len(p.piece) == 1}
    for i, p in enumerate(proto.pieces[1:], start=1):
        if p.type not in (_NORMAL, _BYTE, _CONTROL):
            kind = _PIECE_TYPES.get(p.type, p.type)
            raise refuse(f"pieces[{i}].type of {p.piece!r} is {kind}; only NORMAL, BYTE and CONTROL convert")
        # sentencepiece merges any two adjacent symbols whose text is a piece; a merge list needs both
        # halves in the vocabulary, which holds when every character of every piece is a piece.
        missing = next((c for c in p.piece if c not in singles), None) if p.type == _NORMAL else None
        if missing is not None:
            raise refuse(f"pieces[{i}] {p.piece!r} contains {missing!r}, which is not a piece itself")
    missing_bytes = [f"<0x{b:02X}>" for b in range(256) if f"<0x{b:02X}>" not in pieces]
    if missing_bytes:
        raise refuse(f"byte fallback needs all 256 <0xXX> pieces; {missing_bytes[:4]}... are missing")
    clash = next((name for name in SPECIAL_TOKENS if name in pieces and f"<{name}>" in pieces), None)
    if clash is not None:
        raise refuse(
            f"pieces {clash!r} and '<{clash}>' both exist; ChatGLM3's special token needs its own text"
        )


def special_spelling(proto: Any) -> dict[str, str]:
    """Each special token's text: its name, or `<name>` where the name is already a piece (an added
    token whose text is a piece would take that piece's id in a fast tokenizer)."""
    pieces = {p.piece for p in proto.pieces}
    return {name: f"<{name}>" if name in pieces else name for name in SPECIAL_TOKENS}


def _build(proto: Any, path: Path) -> tuple[Tokenizer, TokenizerSummary]:
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    normal = {p.piece: (p.score, i) for i, p in enumerate(proto.pieces) if p.type == _NORMAL}
    ranked = []
    for piece, (score, i) in normal.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in normal and right in normal:
                # Highest score first, as sentencepiece picks. Where two splits of one piece compete for
                # overlapping symbols, sentencepiece takes the leftmost and this order may not: no such
                # case showed in 600 random small vocabularies (every text up to 8 characters), and the
                # probe check would refuse one.
                ranked.append((-score, i, cut, left, right))
    ranked.sort()
    unk, eos = "<unk>", "</s>"  # pieces 0 and 2 (checked)
    tokenizer = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=[(left, right) for *_, left, right in ranked],
            unk_token=unk,
            byte_fallback=True,
            fuse_unk=False,
        )
    )
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    # unk and eos first so they keep their vocabulary ids; transformers adds them as special anyway.
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (unk, eos)])
    sp_vocab = len(proto.pieces)
    spell = special_spelling(proto)
    tokenizer.add_special_tokens(
        [
            AddedToken(spell[t], special=True, normalized=False, single_word=spell[t] in _WHOLE_WORD_ONLY)
            for t in SPECIAL_TOKENS
        ]
    )
    ids = {name: sp_vocab + i for i, name in enumerate(SPECIAL_TOKENS)}  # ChatGLMTokenizer's numbering
    got = {name: tokenizer.token_to_id(spell[name]) for name in SPECIAL_TOKENS}
    if got != ids:
        raise CheckpointError(f"{path}: the special tokens got ids {got}, not {ids} as ChatGLM3 numbers them")
    gmask, sop = spell["[gMASK]"], spell["sop"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{gmask}:0 {sop}:0 $A:0",
        pair=f"{gmask}:0 {sop}:0 $A:0 $B:1 {eos}:1",  # ChatGLMTokenizer.build_inputs_with_special_tokens
        special_tokens=[(gmask, ids["[gMASK]"]), (sop, ids["sop"]), (eos, 2)],
    )
    summary = TokenizerSummary(
        sp_vocab_size=sp_vocab,
        special_token_ids=ids,
        eos_id=2,
        pad_id=0,
        stop_ids=(2, ids["<|user|>"], ids["<|observation|>"]),
        spelling=spell,
    )
    return tokenizer, summary


def _tokenizer_config(model_max_length: int, spelling: dict[str, str]) -> dict[str, Any]:
    # Keys both transformers 4.56 and 5.x read ("additional_special_tokens" becomes v5's
    # "extra_special_tokens" on load). Pad is unk (id 0) and padding is on the left, as ChatGLM3 has it.
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "padding_side": "left",
        "eos_token": "</s>",  # id 2
        "pad_token": "<unk>",  # id 0
        "unk_token": "<unk>",
        "additional_special_tokens": [spelling[name] for name in SPECIAL_TOKENS],
        "clean_up_tokenization_spaces": False,
        "model_input_names": ["input_ids", "attention_mask"],
        "chat_template": chat_template(spelling),
    }
    if model_max_length > 0:
        config["model_max_length"] = model_max_length
    return config


def verify_tokenizer(sp_model_file: Path, fast_dir: Path) -> None:
    """Refuse (CheckpointError) unless fast_dir's tokenizer encodes the probe text as sentencepiece does."""
    check_against_sentencepiece(sp_model_file, fast_dir, special_spelling(_read_model(sp_model_file)))
