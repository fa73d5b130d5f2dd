"""Reading a managed service declared in a landscape: ``provider``, ``plan``, ``config``,
``secrets`` under ``run.<name>``."""

from __future__ import annotations

from terrace.spec.expressions import Template
from terrace.spec.landscape import ManagedServiceEntry, ProviderRef
from terrace.spec.names import PROVIDER_NAME, PROVIDER_VERSION
from terrace.spec.reader import MapView, Reader, describe

__all__ = ["ManagedEntryParser"]

MANAGED_KEYS = ("provider", "plan", "config", "secrets")
PROVIDER_REF_KEYS = ("name", "version", "schemaVersion")
PLAN_REF_KEYS = ("id", "parameters")


class ManagedEntryParser:
    """Reads ``run.<name>`` entries that have a ``provider``."""

    def __init__(self, reader: Reader) -> None:
        self.reader = reader

    def parse(self, name: str, view: MapView) -> ManagedServiceEntry | None:
        where = f"managed service `{name}`"
        view.check_keys(MANAGED_KEYS, where=f"{where} (it has a `provider`)")
        provider = self._provider_ref(view)
        plan_id, parameters = self._plan_ref(view)
        config = view.mapping("config")
        secrets = view.mapping("secrets")
        config_values: dict[str, Template | object] = {}
        if config is not None:
            for key, path, value in config.items():
                if isinstance(value, str):
                    config_values[key] = self.reader.template(path, value)
                else:
                    config_values[key] = value
        secret_values: dict[str, Template] = {}
        if secrets is not None:
            for key, path, _ in secrets.items():
                text = secrets.text_value(key, what="a secret")
                if text is None:
                    continue
                template = self.reader.template(path, text)
                if template.is_literal and text:
                    secrets.warning(
                        key,
                        f"secret `{key}` is written in the file in plain text; store it in the "
                        "vault and write ${{ vault.NAME }}",
                    )
                secret_values[key] = template
        if provider is None or plan_id is None:
            return None
        return ManagedServiceEntry(
            name=name,
            provider=provider,
            plan_id=plan_id,
            plan_parameters=parameters,
            config=config_values,
            secrets=secret_values,
        )

    def _provider_ref(self, view: MapView) -> ProviderRef | None:
        ref = view.mapping("provider", required="the provider's name and version")
        if ref is None:
            return None
        ref.check_keys(PROVIDER_REF_KEYS, where="a provider reference")
        name = ref.string("name", required="the provider's name, like postgres")
        version = ref.string("version")
        schema_version = ref.string("schemaVersion")
        if version is not None and schema_version is not None and version != schema_version:
            ref.error(
                "schemaVersion",
                f"`version` {version!r} and `schemaVersion` {schema_version!r} differ",
            )
        if name is not None and not PROVIDER_NAME.match(name):
            ref.error("name", f"provider name {name!r} must match ^[-a-z0-9_]+$")
            name = None
        chosen = schema_version or version
        key = "schemaVersion" if schema_version else "version"
        if chosen is None:
            present = [k for k in ("schemaVersion", "version") if k in ref]
            if not present:
                ref.error(None, "missing `schemaVersion` (or `version`) of the provider, like v1")
            elif all(ref.get(k) is None for k in present):
                ref.error(present[0], f"`{present[0]}` needs a value, like v1")
            return None
        if not PROVIDER_VERSION.match(chosen):
            ref.error(key, f"provider version {chosen!r} must look like v1 (v and a number)")
            return None
        return None if name is None else ProviderRef(name=name, version=chosen)

    def _plan_ref(self, view: MapView) -> tuple[int | str | None, dict[str, object]]:
        raw = view.get("plan")
        if isinstance(raw, int) and not isinstance(raw, bool):
            view.error("plan", f"a managed service's plan is a mapping: plan: {{id: {raw}}}")
            return None, {}
        plan = view.mapping("plan", required="the plan, like plan: {id: 0}")
        if plan is None:
            return None, {}
        plan.check_keys(PLAN_REF_KEYS, where="a managed service plan")
        plan_id = plan.get("id")
        if plan_id is None:
            plan.require("id", "the plan's id")
            return None, {}
        if isinstance(plan_id, bool) or not isinstance(plan_id, int | str):
            plan.error("id", f"a plan id is a number or a name, got {describe(plan_id)}")
            return None, {}
        parameters = plan.mapping("parameters")
        values: dict[str, object] = {}
        if parameters is not None:
            for key, path, value in parameters.items():
                if isinstance(value, dict | list):
                    self.reader.error(path, f"plan parameter `{key}` must be a single value")
                    continue
                values[key] = value
        return plan_id, values

    # -- network --------------------------------------------------------------------------------
