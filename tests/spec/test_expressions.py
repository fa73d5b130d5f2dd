from __future__ import annotations

import pytest

from terrace.spec.expressions import (
    EvaluationError,
    ExpressionSyntaxError,
    Reference,
    RefKind,
    StaticContext,
    bare_placeholders,
    parse_template,
)

CONTEXT = StaticContext(
    vault={"DB_PASSWORD": "s3cret", "stalwart-admin-token": "tok"},
    workspace_env={"DB_USER": "app", "HARBOR_URL": "https://h"},
    workspace_id="42",
    team_id="7",
    details={"hostname": "db.internal"},
)


@pytest.mark.parametrize(
    ("text", "kind", "name"),
    [
        ("${{ vault.DB_PASSWORD }}", RefKind.VAULT, "DB_PASSWORD"),
        ("${{ vault['stalwart-admin-token'] }}", RefKind.VAULT, "stalwart-admin-token"),
        ('${{vault["DB_PASSWORD"]}}', RefKind.VAULT, "DB_PASSWORD"),
        ("${{ workspace.env['DB_USER'] }}", RefKind.WORKSPACE_ENV, "DB_USER"),
        ("${{ workspace.env.HARBOR_URL }}", RefKind.WORKSPACE_ENV, "HARBOR_URL"),
        ("${{ workspace.id }}", RefKind.WORKSPACE_ID, ""),
        ("${{ team.id }}", RefKind.TEAM_ID, ""),
    ],
)
def test_every_reference_form_real_files_use(text: str, kind: RefKind, name: str) -> None:
    template = parse_template(text)
    assert template.references == (Reference(kind, name),)


def test_references_mid_string_are_all_reported_and_rendered() -> None:
    template = parse_template(
        "jdbc:postgresql://ms-postgres-v1-${{ team.id }}-landscape-${{ workspace.id }}-kc:5432/app"
    )
    assert [r.kind for r in template.references] == [RefKind.TEAM_ID, RefKind.WORKSPACE_ID]
    assert template.render(CONTEXT) == "jdbc:postgresql://ms-postgres-v1-7-landscape-42-kc:5432/app"


def test_shell_variables_and_braces_without_dollar_stay_literal() -> None:
    for text in ("${WORKSPACE_ID}-worker", "$(cat VERSION)", "{{ workspace.id }}", "a }} b"):
        template = parse_template(text)
        assert template.is_literal
        assert template.render(CONTEXT) == text


def test_details_references_need_permission() -> None:
    assert parse_template("${{ .hostname }}/health", allow_details=True).render(CONTEXT) == (
        "db.internal/health"
    )
    with pytest.raises(ExpressionSyntaxError, match="only allowed in a provider's detailsSchema"):
        parse_template("${{ .hostname }}")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("x ${{ vault.A", "never closed"),
        ("${{ }}", "empty"),
        ("${{ foo.bar }}", "not a supported reference"),
        ("${{ vault }}", "not a supported reference"),
        ("${{ vault[A] }}", "brackets take a quoted name"),
        ("${{ vault['A }}", "unterminated string"),
        ("${{ vault.A || 'x' }}", "unexpected"),
        ("${{ workspace.env.A.B }}", "not a supported reference"),
    ],
)
def test_syntax_errors_say_what_is_wrong(text: str, fragment: str) -> None:
    with pytest.raises(ExpressionSyntaxError, match=fragment.replace("[", r"\[")):
        parse_template(text)


def test_rendering_a_missing_value_names_it() -> None:
    with pytest.raises(EvaluationError, match="the vault has no secret named 'NOPE'"):
        parse_template("${{ vault.NOPE }}").render(CONTEXT)
    with pytest.raises(EvaluationError, match="no team id"):
        parse_template("${{ team.id }}").render(StaticContext())


def test_bare_placeholders_are_found() -> None:
    text = "postgresql://x-{{ workspace.id }}-y and ${{ team.id }}"
    assert bare_placeholders(text) == ["{{ workspace.id }}"]
