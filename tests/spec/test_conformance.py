"""Every real ci.yml and provider.yml in tests/data/conformance (copied verbatim from public
repositories, see its SOURCES.md) must parse; the decisions on odd files are in docs/spec.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from terrace.spec.files import FileKind, discover, kind_of
from terrace.spec.validate import FileReport, validate_paths
from tests.conftest import CONFORMANCE

FILES = sorted(str(p.relative_to(CONFORMANCE)) for p in discover([CONFORMANCE]))

EXPECTED_INVALID: dict[str, list[tuple[int, str]]] = {}
"""Files a human would call invalid, with the line of each expected error. None of the 52 real
files is: every oddity in them is harmless and accepted, with a warning (below)."""

EXPECTED_WARNINGS: dict[str, list[tuple[int, str]]] = {
    "codesphere-cloud/Keycloak-provider/provider.yaml": [
        (1, "provider.yaml and provider.yml both define the provider"),
    ],
    "codesphere-cloud/Keycloak-provider/provider.yml": [
        (1, "provider.yaml and provider.yml both define the provider"),
    ],
    "codesphere-cloud/itzbund-msd/ci.yml": [
        (28, "isPublic: false does not hide network.path '/service-1'"),
    ],
    "codesphere-cloud/listmonk-provider/ci.prod.yml": [
        (21, "secret `userPassword` is written in the file in plain text"),
        (22, "secret `superuserPassword` is written in the file in plain text"),
    ],
    "codesphere-cloud/mlflow-provider-template/ci.default.yml": [
        (60, "'{{ workspace.id }}' is literal text; did you mean `${{ workspace.id }}`"),
    ],
    "codesphere-cloud/ms-valkey-provider/ci.prod.yaml": [
        (1, "ci.prod.yaml and ci.prod.yml both define profile 'prod'"),
        (23, "`baseImage` is read as `image`"),
    ],
    "codesphere-cloud/ms-valkey-provider/ci.prod.yml": [
        (1, "ci.prod.yaml and ci.prod.yml both define profile 'prod'"),
        (24, "`baseImage` is read as `image`"),
    ],
    "codesphere-cloud/ms-valkey-provider/provider.yaml": [
        (1, "provider.yaml and provider.yml both define the provider"),
        (23, "`detailsSchema` is empty"),
        (25, "`secretsSchema` is empty"),
    ],
    "codesphere-cloud/ms-valkey-provider/provider.yml": [
        (1, "provider.yaml and provider.yml both define the provider"),
        (18, "`properties: []` is a list; read as `properties: {}`"),
        (22, "`properties: []` is a list; read as `properties: {}`"),
    ],
}


@pytest.fixture(scope="module")
def reports() -> dict[str, FileReport]:
    found = validate_paths([CONFORMANCE])
    return {str(Path(r.file).relative_to(CONFORMANCE)): r for r in found}


def test_the_corpus_is_all_there() -> None:
    kinds = [kind_of(Path(f).name) for f in FILES]
    assert (kinds.count(FileKind.LANDSCAPE), kinds.count(FileKind.PROVIDER)) == (35, 17)


@pytest.mark.parametrize("name", FILES)
def test_each_real_file_is_valid_unless_listed(name: str, reports: dict[str, FileReport]) -> None:
    report = reports[name]
    expected = EXPECTED_INVALID.get(name)
    if expected is None:
        assert report.errors == ()
    else:
        assert [(d.line, d.message) for d in report.errors] == expected


@pytest.mark.parametrize("name", FILES)
def test_each_real_file_has_exactly_the_expected_warnings(
    name: str, reports: dict[str, FileReport]
) -> None:
    got = [(d.line, d.message) for d in reports[name].warnings]
    expected = EXPECTED_WARNINGS.get(name, [])
    assert len(got) == len(expected), got
    for (line, message), (want_line, fragment) in zip(got, expected, strict=True):
        assert line == want_line
        assert fragment in message


def test_real_files_normalise_to_the_model(reports: dict[str, FileReport]) -> None:
    keycloak = reports["codesphere-cloud/Keycloak-provider/ci.keycloak.yml"].landscape
    assert keycloak is not None
    assert keycloak.profile == "keycloak"
    assert keycloak.vault_names == frozenset({"DB_PASSWORD", "ADMIN_PASSWORD"})
    assert keycloak.managed_services["kcPg"].provider.version == "v1"

    harbor = reports["codesphere-ecosystem/managed-services-registry/ci.harbor.yml"].landscape
    assert harbor is not None
    assert harbor.schema_version == "v0.4"
    assert harbor.services["harbor-headless"].kind.value == "route"

    stalwart = reports["codesphere-cloud/stalwart-provider/provider.yml"].provider
    assert stalwart is not None
    assert [p.id for p in stalwart.plans] == ["starter", "standard", "premium"]
    assert [p.name for p in stalwart.plans] == ["Starter", "Standard", "Premium"]

    legacy = reports["codesphere-community/templates/convert-it/ci.yml"].landscape
    assert legacy is not None
    assert legacy.services["app"].steps[0].command.startswith("uvicorn main:app")
