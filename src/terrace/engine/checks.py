"""What a landscape must satisfy before a deploy changes anything.

``terrace validate`` checks a file on its own; a deploy also knows the team's vault, the
workspace's env vars, the installation's plans and which runtimes exist. Every problem is
reported at once, located in the file, and nothing already running changes.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from terrace.engine.plans import PlanTable
from terrace.errors import Diagnostic, SpecError
from terrace.spec.expressions import RefKind, Template
from terrace.spec.landscape import Landscape, ServiceKind

__all__ = ["deploy_problems", "require_deployable"]


def deploy_problems(
    landscape: Landscape,
    *,
    vault_names: Collection[str],
    env: Mapping[str, str],
    plans: PlanTable,
) -> list[Diagnostic]:
    """Every reason this landscape cannot be deployed now (empty when it can)."""
    found: list[Diagnostic] = []
    for name, service in landscape.services.items():
        at = landscape.service_path(name)
        if service.kind is ServiceKind.CONTAINER:
            found.append(
                landscape.problem(
                    (*at, "image"),
                    f"service `{name}` runs the image {service.image!r}: managed containers "
                    "are not available on this installation yet, so it cannot be deployed",
                )
            )
        if service.kind is not ServiceKind.ROUTE and plans.get(service.plan) is None:
            found.append(
                landscape.problem(
                    (*at, "plan"),
                    f"plan {service.plan} is not one of this installation's plans "
                    f"({plans.describe()})",
                )
            )
        for key, template in service.env.items():
            found += _reference_problems(landscape, (*at, "env", key), template, vault_names, env)
    for name, entry in landscape.managed_services.items():
        found.append(
            landscape.problem(
                ("run", name, "provider"),
                f"`{name}` is a managed service from provider `{entry.provider.name}`: the "
                "marketplace is not available on this installation yet, so it cannot be deployed",
            )
        )
    return sorted(found, key=Diagnostic.sort_key)


def require_deployable(
    landscape: Landscape,
    *,
    vault_names: Collection[str],
    env: Mapping[str, str],
    plans: PlanTable,
) -> None:
    """:class:`SpecError` with every problem :func:`deploy_problems` finds."""
    if problems := deploy_problems(landscape, vault_names=vault_names, env=env, plans=plans):
        raise SpecError(problems)


def _reference_problems(
    landscape: Landscape,
    path: tuple[str | int, ...],
    template: Template,
    vault_names: Collection[str],
    env: Mapping[str, str],
) -> list[Diagnostic]:
    found = []
    for ref in template.references:
        if ref.kind is RefKind.VAULT and ref.name not in vault_names:
            found.append(
                landscape.problem(
                    path,
                    f"{ref} needs the vault secret {ref.name!r}, which the team does not have "
                    f"(set it with: terrace vault set {ref.name})",
                )
            )
        elif ref.kind is RefKind.WORKSPACE_ENV and ref.name not in env:
            found.append(
                landscape.problem(
                    path,
                    f"{ref} needs the workspace env var {ref.name!r}, which is not set "
                    f"(set it with: terrace env set {ref.name}=...)",
                )
            )
    return found
