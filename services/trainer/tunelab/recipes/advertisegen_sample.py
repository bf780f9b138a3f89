# ruff: noqa: RUF001 - Chinese text uses full-width punctuation on purpose
"""A synthetic AdvertiseGen (ADGEN) sample with the real data's shape, for tests, the demo and benchmarks.

Real lines look like `{"content": "类型#上衣*材质#牛仔布*颜色#白色*...", "summary": "<ad copy>"}`: 3-9
`key#value` pairs joined by `*` (keys may repeat) and a summary of roughly 60-150 characters. Here every
attribute value maps to a fixed phrase, so a small model can learn the task and the loss goes down.
Nothing is downloaded; the output is deterministic for a seed.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

_CATEGORIES: dict[str, dict[str, list[str]]] = {
    "上衣": {
        "衣样式": ["衬衫", "外套", "卫衣", "T恤", "针织衫"],
        "衣袖型": ["泡泡袖", "灯笼袖", "落肩袖"],
        "衣款式": ["破洞", "抽绳", "拼接", "口袋"],
    },
    "裙": {
        "裙型": ["A字裙", "百褶裙", "包臀裙"],
        "裙长": ["半身裙", "连衣裙", "中长裙"],
        "裙款式": ["收腰", "荷叶边", "开叉"],
    },
    "裤": {
        "裤型": ["阔腿裤", "直筒裤", "哈伦裤"],
        "裤长": ["九分裤", "七分裤", "长裤"],
        "裤款式": ["高腰", "破洞", "卷边"],
    },
}
_COMMON: dict[str, list[str]] = {
    "材质": ["牛仔布", "棉", "网纱", "雪纺", "针织", "羊毛"],
    "颜色": ["白色", "黑色", "蓝色", "红色", "粉红色", "卡其色"],
    "风格": ["简约", "性感", "复古", "休闲", "通勤", "街头"],
    "图案": ["刺绣", "线条", "印花", "条纹", "格子"],
    "版型": ["宽松", "显瘦", "修身"],
}
_PHRASES: dict[str, str] = {
    "牛仔布": "选用优质牛仔布面料，耐磨又有型",
    "棉": "采用柔软的棉质面料，亲肤透气",
    "网纱": "轻盈的网纱材质，透出若隐若现的美感",
    "雪纺": "飘逸的雪纺面料，穿着清凉舒适",
    "针织": "细腻的针织工艺，柔软又有弹性",
    "羊毛": "温暖的羊毛面料，保暖又不失质感",
    "白色": "干净的白色，清新又百搭",
    "黑色": "经典的黑色，低调而有气场",
    "蓝色": "清爽的蓝色，带来夏日的感觉",
    "红色": "热情的红色，衬托好气色",
    "粉红色": "甜美的粉红色，尽显少女心",
    "卡其色": "温柔的卡其色，复古又耐看",
    "简约": "简约的设计，不费力就能穿出高级感",
    "性感": "性感的剪裁，凸显迷人的身材曲线",
    "复古": "复古的风格，散发着文艺的气息",
    "休闲": "休闲的风格，日常出街轻松舒适",
    "通勤": "通勤的风格，上班约会都很合适",
    "街头": "街头的风格，酷帅又个性",
    "刺绣": "精致的刺绣点缀，增添细节美感",
    "线条": "利落的线条，隐藏身材上的小缺点",
    "印花": "活泼的印花图案，充满青春活力",
    "条纹": "经典的条纹元素，时髦又显瘦",
    "格子": "复古的格子图案，学院风满满",
    "宽松": "宽松的版型，包容性很强",
    "显瘦": "显瘦的版型，轻松穿出好身材",
    "修身": "修身的版型，勾勒出优美曲线",
}
_OPENERS = ["这款", "这件", "这一款", "这条"]
_CLOSERS = ["，让你轻松成为人群中的焦点。", "，是衣橱里必不可少的单品。", "，穿出属于你的时尚态度。"]


def _phrase(value: str) -> str:
    return _PHRASES.get(value, f"{value}的设计，凸显独特的个性")


def generate(n: int, seed: int = 0) -> list[dict[str, str]]:
    """`n` records {"content", "summary"} shaped like AdvertiseGen's train.json lines."""
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        category = rng.choice(sorted(_CATEGORIES))
        keys = dict(_CATEGORIES[category], **_COMMON)
        chosen = rng.sample(sorted(keys), k=rng.randint(3, min(8, len(keys))))
        pairs = [("类型", category)] + [(k, rng.choice(keys[k])) for k in chosen]
        content = "*".join(f"{k}#{v}" for k, v in pairs)
        item = next((v for k, v in pairs if k in ("衣样式", "裙长", "裙型", "裤型", "裤长")), category)
        body = "，".join(
            _phrase(v) for k, v in pairs[1:] if k not in ("衣样式", "裙长", "裙型", "裤型", "裤长")
        )
        summary = f"{rng.choice(_OPENERS)}{item}{body}{rng.choice(_CLOSERS)}"
        records.append({"content": content, "summary": summary})
    return records


def write_sample(out_dir: str | Path, n_train: int = 200, n_dev: int = 20, seed: int = 0) -> Path:
    """Write train.json and dev.json (JSON lines, as in AdvertiseGen.tar.gz) into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_lines(out / "train.json", generate(n_train, seed))
    _write_lines(out / "dev.json", generate(n_dev, seed + 1))
    return out


def to_conversations(record: dict[str, str]) -> dict[str, Any]:
    """One AdvertiseGen record in ChatGLM3's conversations format (the notebook's convert_adgen)."""
    return {
        "conversations": [
            {"role": "user", "content": record["content"]},
            {"role": "assistant", "content": record["summary"]},
        ]
    }


def write_conversations(src_dir: str | Path, dst_dir: str | Path) -> Path:
    """Convert train.json and dev.json of `src_dir` into `dst_dir` (AdvertiseGen -> AdvertiseGen_fix)."""
    dst = Path(dst_dir)
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("train.json", "dev.json"):
        src = Path(src_dir) / name
        if src.exists():
            lines = src.read_text(encoding="utf-8").splitlines()
            _write_lines(dst / name, [to_conversations(json.loads(line)) for line in lines if line.strip()])
    return dst


def corpus(n: int = 400, seed: int = 0) -> str:
    """Text to train a small tokenizer on: contents and summaries of `n` records."""
    return "\n".join(f"{r['content']}\n{r['summary']}" for r in generate(n, seed))


def _write_lines(path: Path, records: list[dict[str, Any]]) -> None:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    path.write_text(text, encoding="utf-8")
