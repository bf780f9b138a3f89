"""Resource names are parsed in one place: ids fold to lower case, what stays invalid says what to write."""

from __future__ import annotations

import pytest

from tunelab.common.errors import InvalidArgument
from tunelab.common.names import (
    check_id,
    did_you_mean,
    parse_name,
    parse_version,
    resource_name,
    split_name,
)


@pytest.mark.parametrize(
    ("written", "ident"),
    [("AdvertiseGen", "advertisegen"), ("ChatGLM3", "chatglm3"), ("chatglm3-6b", "chatglm3-6b"), ("X", "x")],
)
def test_ids_fold_to_lower_case(written: str, ident: str) -> None:
    assert check_id(written, "dataset_id") == ident


@pytest.mark.parametrize(
    ("written", "suggestion"),
    [
        ("Advertise_Gen", "'advertise-gen'"),
        ("advertise gen", "'advertise-gen'"),
        ("ChatGLM3.6B", "'chatglm3-6b'"),
        ("-x-", "'x'"),
        ("a__-b", "'a-b'"),
    ],
)
def test_what_folding_cannot_fix_is_refused_with_what_to_write(written: str, suggestion: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        check_id(written, "dataset_id")
    assert f"dataset_id {written!r} is not a valid name: use {suggestion}" in err.value.message
    assert "lower-case letters, digits and '-'" in err.value.message


@pytest.mark.parametrize("written", ["", "a" * 64, "../up", "Straße", "\uff21bc", "a/b"])
def test_what_has_no_valid_spelling_gets_the_rule_only(written: str) -> None:
    """Only ASCII letters fold: "ß" or a full-width A (U+FF21) does not become a valid name."""
    with pytest.raises(InvalidArgument) as err:
        check_id(written, "job_id")
    message = err.value.message
    assert message.startswith(f"job_id {written!r} is not a valid name: use 1-63 lower-case letters")


def test_names_with_their_collection_fold_and_keep_the_spelling() -> None:
    assert parse_name("datasets/AdvertiseGen", "datasets", "name") == "advertisegen"
    assert parse_name("ChatGLM3", "environments", "name") == "chatglm3"
    assert parse_name("Queues/Default", "queues", "queue") == "default"
    assert split_name("datasets/AdvertiseGen", "datasets", "target") == ("advertisegen", "AdvertiseGen")
    with pytest.raises(InvalidArgument, match="is not a datasets/"):
        parse_name("datasets/a/b", "datasets", "name")


@pytest.mark.parametrize(
    ("ref", "parsed"),
    [
        ("AdvertiseGen", ("advertisegen", None)),
        ("AdvertiseGen@3", ("advertisegen", 3)),
        ("advertisegen@latest", ("advertisegen", None)),
        ("datasets/AdvertiseGen", ("advertisegen", None)),
        ("datasets/AdvertiseGen/versions/2", ("advertisegen", 2)),
        ("Datasets/x/versions/latest", ("x", None)),
    ],
)
def test_version_references(ref: str, parsed: tuple[str, int | None]) -> None:
    assert parse_version(ref, "datasets", "dataset") == parsed


@pytest.mark.parametrize(
    ("ref", "needle"),
    [
        ("x@0", "positive number"),
        ("x@two", "positive number"),
        ("datasets/x/revisions/2", "datasets/{id}/versions/{n}"),
        ("Advertise_Gen@2", "use 'advertise-gen'"),
    ],
)
def test_bad_version_references(ref: str, needle: str) -> None:
    with pytest.raises(InvalidArgument, match=needle.replace("{", r"\{").replace("}", r"\}")):
        parse_version(ref, "datasets", "dataset")


def test_resource_names() -> None:
    assert resource_name("datasets", "x") == "datasets/x"
    assert resource_name("datasets", "x", 3) == "datasets/x/versions/3"
    assert resource_name("datasets", *parse_version("AdvertiseGen@latest", "datasets", "d")) == (
        "datasets/advertisegen"
    )


def test_did_you_mean() -> None:
    known = ["advertisegen", "chatglm3-6b", "output"]
    assert did_you_mean("AdvertiseGem", known) == "; did you mean 'advertisegen'?"
    assert did_you_mean("chatglm3", known) == "; did you mean 'chatglm3-6b'?"
    assert did_you_mean("something-else", known) == ""
    assert did_you_mean("x", []) == ""
