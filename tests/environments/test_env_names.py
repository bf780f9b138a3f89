"""Environment names are read without regard to case, as every resource id is: ``ChatGLM3`` is
``environments/chatglm3``."""

from __future__ import annotations

from envhelpers import FAILED, spec, wait
from tunelab.environments.v1 import environments_pb2 as pb


def test_a_mixed_case_name_is_the_lower_case_environment(envs, local_index) -> None:
    index = pb.PackageIndex(url=local_index.url)
    env = envs.client.create("ChatGLM3", spec("tunelab-failing-build\n", default_index=index))
    assert env.name == "environments/chatglm3"
    assert envs.client.get("CHATGLM3").name == "environments/chatglm3"
    assert wait(envs.client, "ChatGLM3").state == FAILED  # the package fails to build; the name held
