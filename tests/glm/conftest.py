"""The ChatGLM3 import's tests: the fixture checkpoint laid out like a download of THUDM/chatglm3-6b.

Tests that need THUDM's own code (the fixture's `modeling_chatglm.py`, `tokenization_chatglm.py`) load
it from `../shared/fixtures/chatglm3-6b-tiny/` beside the repository (or `$TUNELAB_CHATGLM3_FIXTURE`)
and skip with the reason when it is absent (the `chatglm3_dir` fixture, tests/conftest.py). THUDM's
code is loaded, never copied into the project.
"""

from __future__ import annotations

import torch

torch.set_num_threads(1)  # other suites run on the same small machine
