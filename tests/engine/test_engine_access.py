"""Who may call the engine (its API key on every route but /health) and where runtime LoRA loading
may read (under the adapter roots only, symlinks resolved)."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest
from starlette.routing import Route

from support import serve_in_thread
from tunelab.engine.access import AdapterPathRefused, confined_adapter_dir
from tunelab.engine.app import build_app
from tunelab.engine.batcher import Batcher
from tunelab.engine.model import ServedModel

KEY = "engine-key-for-tests"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A tiny base model, the adapter root with a LoRA adapter in it, and a copy of that adapter
    outside the root."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunelab.recipes.tinymodel import build_tiny_model

    top = tmp_path_factory.mktemp("access")
    base = build_tiny_model(top / "base", "hello world\nthe quick brown fox\n" * 20, vocab_size=280)
    lora = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    root = top / "models"
    lora.save_pretrained(root / "ad")
    shutil.copytree(root / "ad", top / "outside")
    return base, root, top / "outside"


@pytest.fixture(scope="module")
def engine(store):
    base, root, _ = store
    model = ServedModel(str(base), "tiny")
    batcher = Batcher(model, max_batch_size=4, batch_wait_s=0.01)
    batcher.start()
    app = build_app(model, batcher, api_key=KEY, adapter_roots=[root])
    with serve_in_thread(app) as url:
        yield url, app, model
    batcher.stop()


def test_every_route_but_health_needs_the_key(engine) -> None:
    url, app, _ = engine
    routes = [
        (method, r.path)
        for r in app.routes
        if isinstance(r, Route)
        for method in sorted(r.methods or ())
        if method != "HEAD"
    ]
    assert ("POST", "/v1/load_lora_adapter") in routes and ("GET", "/metrics") in routes
    body = {"model": "tiny", "prompt": "hi", "max_tokens": 1, "lora_name": "x", "lora_path": "/etc"}
    with httpx.Client(base_url=url, timeout=60) as c:
        for method, path in routes:
            anonymous = c.request(method, path, json=body)
            wrong = c.request(method, path, json=body, headers={"authorization": "Bearer nope"})
            if path == "/health":
                assert anonymous.status_code == 200
                continue
            assert anonymous.status_code == 401, (method, path, anonymous.text)
            assert anonymous.json()["error"]["type"] == "AuthenticationError"
            assert anonymous.headers["www-authenticate"] == "Bearer"
            assert wrong.status_code == 401, (method, path)
        assert c.get("/nowhere").status_code == 401  # unknown paths too
        right = {"authorization": f"Bearer {KEY}"}
        assert c.get("/v1/models", headers=right).status_code == 200
        done = c.post(
            "/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 1}, headers=right
        )
        assert done.status_code == 200, done.text


def test_runtime_adapters_load_only_from_under_the_root(engine, store) -> None:
    url, _, model = engine
    _, root, outside = store
    (root / "escape").symlink_to(outside, target_is_directory=True)
    (root / "linked").mkdir()
    for entry in outside.iterdir():  # a directory under the root whose files are links out of it
        (root / "linked" / entry.name).symlink_to(entry)
    refused = [
        "/etc",
        str(outside),
        f"{root}/../outside",
        f"{root}/ad/../../outside",
        str(root / "escape"),
        str(root / "linked"),
        str(root / "no-such-adapter"),
        "relative/adapter",
    ]
    auth = {"authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=url, timeout=120, headers=auth) as c:
        for path in refused:
            r = c.post("/v1/load_lora_adapter", json={"lora_name": "bad", "lora_path": path})
            assert r.status_code == 400, (path, r.text)
            assert path in r.json()["error"]["message"], r.text
        assert "bad" not in model.adapters
        ok = c.post("/v1/load_lora_adapter", json={"lora_name": "ad", "lora_path": str(root / "ad")})
        assert ok.status_code == 200, ok.text
        assert [m["id"] for m in c.get("/v1/models").json()["data"]] == ["tiny", "ad"]


def test_without_roots_nothing_loads_at_runtime(tmp_path: Path) -> None:
    with pytest.raises(AdapterPathRefused, match="--adapter-root"):
        confined_adapter_dir(str(tmp_path), [])
    assert confined_adapter_dir(str(tmp_path), [tmp_path]) == tmp_path.resolve()
