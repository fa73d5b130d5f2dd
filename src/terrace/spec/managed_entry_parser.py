"""Reading a managed service declared in a landscape: ``provider``, ``plan``, ``config``,
``secrets`` under ``run.<name>``."""

from __future__ import annotations

from typing import Any

from terrace.spec.diagnostics import JsonPath
from terrace.spec.expressions import Template
from terrace.spec.fields import plan_id, provider_name, provider_version, warn_if_plain_secret
from terrace.spec.landscape import ConfigValue, ManagedServiceEntry, ProviderRef
from terrace.spec.reader import MapView, Reader

__all__ = ["ManagedEntryParser"]

MANAGED_KEYS = ("provider", "plan", "config", "secrets")
PROVIDER_REF_KEYS = ("name", "version", "schemaVersion")
PLAN_REF_KEYS = ("id", "parameters")


class ManagedEntryParser:
    """Reads ``run.<name>`` entries that have a ``provider``."""

    def __init__(self, reader: Reader) -> None:
        self.reader = reader

    def parse(self, name: str, view: MapView) -> ManagedServiceEntry | None:
        view.check_keys(MANAGED_KEYS, where=f"managed service `{name}` (it has a `provider`)")
        provider = self._provider_ref(view)
        plan, parameters = self._plan_ref(view)
        config = view.mapping("config")
        config_values = (
            {key: self._config_value(path, value) for key, path, value in config.items()}
            if config is not None
            else {}
        )
        secrets = view.mapping("secrets")
        secret_values: dict[str, Template] = {}
        for key, path, _ in secrets.items() if secrets is not None else ():
            assert secrets is not None
            text = secrets.text_value(key, what="a secret")
            if text is None:
                continue
            template = self.reader.template(path, text)
            warn_if_plain_secret(secrets, key, template, f"secret `{key}`")
            secret_values[key] = template
        if provider is None or plan is None:
            return None
        return ManagedServiceEntry(
            name=name,
            provider=provider,
            plan_id=plan,
            plan_parameters=parameters,
            config=config_values,
            secrets=secret_values,
        )

    def _config_value(self, path: JsonPath, value: Any) -> ConfigValue:
        """Text becomes a :class:`Template`, at any depth; other values stay as written."""
        if isinstance(value, str):
            return self.reader.template(path, value)
        if isinstance(value, list):
            return [self._config_value((*path, i), item) for i, item in enumerate(value)]
        if isinstance(value, dict):
            return {k: self._config_value((*path, k), v) for k, v in value.items()}
        return value  # type: ignore[no-any-return]

    def _provider_ref(self, view: MapView) -> ProviderRef | None:
        ref = view.mapping("provider", required="the provider's name and version")
        if ref is None:
            return None
        ref.check_keys(PROVIDER_REF_KEYS, where="a provider reference")
        name = provider_name(ref, "name", required="the provider's name, like postgres")
        version = provider_version(ref)
        if name is None or version is None:
            return None
        return ProviderRef(name=name, version=version)

    def _plan_ref(self, view: MapView) -> tuple[int | str | None, dict[str, object]]:
        raw = view.get("plan")
        if isinstance(raw, int) and not isinstance(raw, bool):
            view.error("plan", f"a managed service's plan is a mapping: plan: {{id: {raw}}}")
            return None, {}
        plan = view.mapping("plan", required="the plan, like plan: {id: 0}")
        if plan is None:
            return None, {}
        plan.check_keys(PLAN_REF_KEYS, where="a managed service plan")
        chosen = plan_id(plan)
        parameters = plan.mapping("parameters")
        values: dict[str, object] = {}
        for key, path, value in parameters.items() if parameters is not None else ():
            if isinstance(value, dict | list):
                self.reader.error(path, f"plan parameter `{key}` must be a single value")
                continue
            values[key] = value
        return chosen, values
