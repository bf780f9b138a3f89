"""Inputs of the seed's own `job submit` line: ChatGLM3's code tree as the seed's notebook leaves it
(`finetune_demo/` with a `finetune_hf.py` of the same command line, `configs/lora.yaml`, the
converted `data/AdvertiseGen_fix` and the model at `./chatglm3-6b`), and the raw AdvertiseGen."""

from __future__ import annotations

import json
from pathlib import Path

# The seed's command, as printed in its "使用 baizectl 提交任务" section, `baizectl` replaced.
SEED_SUBMIT = """\
baizectl job submit --name finetunel-chatglm3 -t PYTORCH \\
    --image release.daocloud.io/baize/baize-notebook:v0.5.0 \\
    --priority baize-high-priority \\
    --resources cpu=8,memory=16Gi,nvidia.com/gpu=1 \\
    --workers 1 \\
    --queue default \\
    --working-dir /home/jovyan/ChatGLM3 \\
    --datasets AdvertiseGen:/home/jovyan/ChatGLM3/finetune_demo/data/AdvertiseGen  \\
    --datasets output:/home/jovyan/ChatGLM3/finetune_demo/output  \\
    --labels job_type=pytorch \\
    --restart-policy on-failure \\
    -- bash -c "cd /home/jovyan/ChatGLM3/finetune_demo && CUDA_VISIBLE_DEVICES=0 NCCL_P2P_DISABLE="1" \
NCCL_IB_DISABLE="1" python finetune_hf.py  data/AdvertiseGen_fix  ./chatglm3-6b  configs/lora.yaml"
"""

# finetune_hf.py's command line (data_dir, model_dir, config_file); instead of training, it
# reports what a training run would read and writes a checkpoint where lora.yaml says.
FINETUNE_HF = '''\
"""finetune_hf.py, reduced to its inputs and outputs."""
import json
import os
import sys
from pathlib import Path

data_dir, model_dir, config_file = sys.argv[1:4]
config = dict(
    line.strip().split(": ", 1) for line in Path(config_file).read_text().splitlines() if ": " in line
)
rows = [json.loads(line) for line in (Path(data_dir) / "train.json").read_text().splitlines()]
raw = (Path("data/AdvertiseGen") / "train.json").read_text().splitlines()
model = json.loads((Path(model_dir) / "config.json").read_text())
try:
    Path("data/AdvertiseGen/written-by-the-job").write_text("x")
    inputs = "writable"
except OSError as exc:
    inputs = f"read-only ({exc.strerror})"
out = Path(config["output_dir"]) / "checkpoint-1"
out.mkdir(parents=True)
summary = {
    "cwd": os.getcwd(),
    "train_rows": len(rows),
    "raw_rows": len(raw),
    "first_role": rows[0]["conversations"][0]["role"],
    "model_type": model["model_type"],
    "inputs": inputs,
    "nccl_p2p_disable": os.environ.get("NCCL_P2P_DISABLE"),
    "visible": sorted(p.name for p in Path(".").iterdir()),
}
(out / "trainer_state.json").write_text(json.dumps(summary))
print("saved", out, json.dumps(summary), flush=True)
'''


def build_code_tree(root: Path, rows: int = 6) -> Path:
    """``ChatGLM3/`` as the seed's notebook leaves it, ``data/AdvertiseGen`` not in it (a mount)."""
    demo = root / "ChatGLM3" / "finetune_demo"
    (demo / "configs").mkdir(parents=True)
    (demo / "finetune_hf.py").write_text(FINETUNE_HF)
    (demo / "configs" / "lora.yaml").write_text("output_dir: ./output\nmax_steps: 3000\n")
    (demo / "data" / "AdvertiseGen_fix").mkdir(parents=True)
    answer = {"role": "assistant", "content": "好"}
    conversations = [
        {"conversations": [{"role": "user", "content": f"类型#裙{i}"}, answer]} for i in range(rows)
    ]
    lines = "".join(json.dumps(c, ensure_ascii=False) + "\n" for c in conversations)
    (demo / "data" / "AdvertiseGen_fix" / "train.json").write_text(lines)
    (demo / "chatglm3-6b").mkdir()
    (demo / "chatglm3-6b" / "config.json").write_text(json.dumps({"model_type": "chatglm"}))
    (root / "ChatGLM3" / "README.md").write_text("ChatGLM3\n")
    return root / "ChatGLM3"


def build_advertisegen(root: Path, rows: int = 9) -> Path:
    data = root / "AdvertiseGen"
    data.mkdir(parents=True)
    records = [{"content": f"类型#裙{i}", "summary": "好"} for i in range(rows)]
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    (data / "train.json").write_text(lines)
    (data / "dev.json").write_text(lines[: len(lines) // 3])
    return data
