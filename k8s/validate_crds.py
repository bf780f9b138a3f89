"""Validates the custom resources in a stream of Kubernetes manifests against k8s/schemas/*.json.

kubernetes-validate knows only the built-in kinds: for any other kind (Kueue's ClusterQueue, a
Kubeflow TrainJob...) it prints a WARN and passes. This script covers the rest. Every object in
the input whose kind kubernetes-validate has no schema for must have one in k8s/schemas/ (matched
by the schema's apiVersion and kind enums) and must validate against it; a kind with no schema
anywhere fails. The schemas reference kubernetes-validate's own definitions (ObjectMeta,
LabelSelector, EnvVar...), so metadata and embedded core types are checked strictly too.

    kubectl kustomize k8s/overlays/dev | .venv/bin/python k8s/validate_crds.py $(cat k8s/validate.args) -

It accepts kubernetes-validate's arguments (-k VERSION, repeatable; --strict, --quiet and --no-warn
are accepted and ignored: these schemas are always strict). Exit status 0 when every custom
resource is valid, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate.utils as kv
import yaml
from referencing import Registry, Resource

SCHEMAS = Path(__file__).resolve().parent / "schemas"


def load_schemas(folder: Path = SCHEMAS) -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) → schema, read from every *.json in ``folder``."""
    schemas: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(folder.glob("*.json")):
        schema = json.loads(path.read_text())
        try:
            props = schema["properties"]
            key = (props["apiVersion"]["enum"][0], props["kind"]["enum"][0])
        except (KeyError, IndexError) as exc:
            raise SystemExit(f"{path}: a schema must pin properties.apiVersion.enum and .kind.enum") from exc
        schemas[key] = schema
    return schemas


def has_builtin_schema(resource: dict[str, Any], version: str) -> bool:
    try:
        kv.validate(resource, version, strict=True)
    except kv.SchemaNotFoundError:
        return False
    except kv.ValidationError:
        pass  # kubernetes-validate reports it; here only "is it a built-in kind" matters
    return True


def _registry(version: str) -> Registry:
    folder = f"v{_schema_version(version)}-local-strict"
    definitions = kv.schema_contents(f"kubernetes-json-schema/{folder}/_definitions.json", version)
    return Resource.from_contents(definitions) @ Registry()  # type: ignore[no-any-return, operator]


def _schema_version(version: str) -> str:
    wanted = kv.major_minor(version.lstrip("v"))
    known = [v for v in kv.all_versions() if kv.major_minor(v) <= wanted]
    if not known:
        raise SystemExit(f"kubernetes-validate has no schemas for Kubernetes {version}")
    return known[-1]


def check(
    resources: Iterable[dict[str, Any]],
    version: str,
    schemas: dict[tuple[str, str], dict[str, Any]],
) -> Iterator[str]:
    """Yields one error line per invalid custom resource or kind without any schema."""
    registry = _registry(version)
    for resource in resources:
        api_version, kind = resource.get("apiVersion", ""), resource.get("kind", "")
        name = f"{kind}/{resource.get('metadata', {}).get('name', '?')}"
        if not api_version or not kind:
            yield f"ERROR {name}: apiVersion and kind are required"
            continue
        schema = schemas.get((api_version, kind))
        if schema is None:
            if not has_builtin_schema(resource, version):
                yield (
                    f"ERROR {name}: no schema for {kind} ({api_version}): add one to "
                    f"k8s/schemas/ or use a built-in kind"
                )
            continue
        validator = jsonschema.Draft202012Validator(schema, registry=registry)
        for error in sorted(validator.iter_errors(resource), key=lambda e: list(e.path)):
            path = ".".join(str(p) for p in error.path) or "(top)"
            yield f"ERROR {name} ({api_version}) against Kubernetes {version}: {path}: {error.message}"


def read_resources(filenames: list[str]) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for filename in filenames or ["-"]:
        text = sys.stdin.read() if filename == "-" else Path(filename).read_text()
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", "--kubernetes-version", action="append", dest="versions")
    for flag in ("--strict", "--quiet", "--no-warn"):
        parser.add_argument(flag, action="store_true")
    parser.add_argument("filenames", nargs="*", help="manifest files; - or none: standard input")
    args = parser.parse_args(argv)
    resources = read_resources(args.filenames)
    schemas = load_schemas()
    errors = [
        line
        for version in args.versions or [kv.latest_version()]
        for line in check(resources, version, schemas)
    ]
    for line in errors:
        print(line)
    custom = sum((r.get("apiVersion"), r.get("kind")) in schemas for r in resources)
    if not errors:
        print(f"OK {custom} custom resources valid ({len(resources)} objects read)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
