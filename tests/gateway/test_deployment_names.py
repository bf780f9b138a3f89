"""A deployment's id is read without regard to case, as every resource id is; the model keeps the
name as written, since clients call it by that name."""

from __future__ import annotations

import pytest

from tunelab.common.errors import InvalidArgument
from tunelab.gateway.specs import DeploymentSpec, ModelSource, UpstreamSpec
from tunelab.gateway.validation import check_spec


def deployment(dep_id: str, model_name: str = "") -> DeploymentSpec:
    return DeploymentSpec(dep_id, model_name, ModelSource(path="/models/base"), UpstreamSpec("embedded"))


def test_the_id_folds_and_the_model_keeps_its_spelling() -> None:
    spec = check_spec(deployment("ChatGLM3-AD"), [])
    assert (spec.id, spec.model_name, spec.name) == ("chatglm3-ad", "ChatGLM3-AD", "deployments/chatglm3-ad")
    assert check_spec(deployment("ChatGLM3-AD", "served"), []).model_name == "served"
    with pytest.raises(InvalidArgument, match="use 'chatglm3-ad'"):
        check_spec(deployment("ChatGLM3_AD"), [])
