"""Reading ``provider.yml`` text into a :class:`~terrace.spec.provider.Provider`.

Real provider files disagree with each other; what is harmless is accepted and normalised (plan
ids as numbers or names, ``name`` or ``displayName`` on plans, ``properties: []``, empty
schemas, ``version`` or ``schemaVersion``), what is not is rejected with its line. See
``docs/spec.md`` for each decision.
"""

from __future__ import annotations

import re
from typing import Any

from terrace.spec.diagnostics import Collector, JsonPath, Parsed
from terrace.spec.document import load_document
from terrace.spec.fields import (
    http_url,
    plan_id,
    provider_name,
    provider_version,
    warn_if_plain_secret,
)
from terrace.spec.names import ENV_NAME, PROFILE, RELEASE
from terrace.spec.provider import (
    ApiBackend,
    Backend,
    Capabilities,
    LandscapeBackend,
    Plan,
    PlanParameter,
    PricedAs,
    Provider,
    ProviderVersion,
    RestBackend,
)
from terrace.spec.reader import MapView, Reader
from terrace.spec.schema_checks import SchemaRole, check_schema

__all__ = ["parse_provider"]

TOP_KEYS = (
    "name",
    "version",
    "schemaVersion",
    "author",
    "displayName",
    "iconUrl",
    "category",
    "description",
    "backend",
    "configSchema",
    "secretsSchema",
    "detailsSchema",
    "plans",
    "planSchema",
    "versions",
    "capabilities",
    "backups",
    "resourceParameters",
)
BACKEND_KINDS = ("landscape", "api", "rest")
LANDSCAPE_KEYS = ("gitUrl", "ciProfile", "staticBuildArtifact")
API_KEYS = ("endpoint", "secret")
REST_KEYS = ("url", "authTokenEnv")
PLAN_KEYS = ("id", "name", "displayName", "description", "parameters")
PARAMETER_KEYS = ("pricedAs", "schema")
VERSION_KEYS = ("gitRef", "ciProfile", "description", "appVersion", "artifactTag")
CAPABILITY_KEYS = {
    "pause": "pause",
    "backups": "backups",
    "pointInTimeRecovery": "point_in_time_recovery",
    "highAvailability": "high_availability",
}
BACKUPS_KEYS = ("configSchema", "secretsSchema")

GIT_URL = re.compile(r"^(https?|ssh|git|file)://\S+$|^[\w.-]+@[\w.-]+:\S+$")


def parse_provider(text: str, *, file: str = "provider.yml") -> Parsed[Provider]:
    """Read a provider definition.

    Raises :class:`~terrace.errors.SpecError` with every error found; returns the provider and
    its warnings otherwise.
    """
    collector = Collector(file)
    doc = load_document(text, file=file, collector=collector)
    reader = Reader(doc, collector)
    root = reader.root("provider definition")
    provider = None if root is None else _ProviderParser(reader).parse(root)
    collector.raise_if_errors()
    assert provider is not None
    return Parsed(provider, collector.warnings)


class _ProviderParser:
    def __init__(self, reader: Reader) -> None:
        self.reader = reader

    def parse(self, root: MapView) -> Provider | None:
        root.check_keys(TOP_KEYS, where="the provider definition")
        name = provider_name(root, "name", required="the provider's id, matching ^[-a-z0-9_]+$")
        version = provider_version(root)
        display_name = root.string("displayName")
        if not display_name and name:
            root.warning(None, "no `displayName`; the marketplace shows the name instead")
        author = root.string("author")
        icon_url = root.string("iconUrl")
        category = root.string("category")
        description = root.string("description")
        backend = self._backend(root)
        schemas = {
            role: self._object_schema(root, role)
            for role in (SchemaRole.CONFIG, SchemaRole.SECRETS, SchemaRole.DETAILS)
        }
        plan_schema = None
        if "planSchema" in root:
            plan_schema = check_schema(
                self.reader, root.at("planSchema"), root.get("planSchema"), role=SchemaRole.PLAN
            )
        plans = self._plans(root)
        versions = self._versions(root)
        capabilities = self._capabilities(root)
        backups_config, backups_secrets = self._backups(root)
        resource_parameters = root.mapping("resourceParameters")
        if name is None or version is None or backend is None or None in schemas.values():
            return None
        return Provider(
            name=name,
            version=version,
            backend=backend,
            display_name=display_name or name,
            author=author,
            icon_url=icon_url or None,
            category=category or None,
            description=description,
            config_schema=schemas[SchemaRole.CONFIG] or {},
            secrets_schema=schemas[SchemaRole.SECRETS] or {},
            details_schema=schemas[SchemaRole.DETAILS] or {},
            plans=plans,
            plan_schema=plan_schema,
            versions=versions,
            capabilities=capabilities,
            backups_config_schema=backups_config,
            backups_secrets_schema=backups_secrets,
            resource_parameters=dict(resource_parameters.data) if resource_parameters else {},
        )

    def _object_schema(self, root: MapView, role: SchemaRole) -> dict[str, Any] | None:
        if role.value not in root:
            root.warning(None, f"no `{role.value}`; read as an object schema with no properties")
            return {"type": "object", "properties": {}}
        return check_schema(self.reader, root.at(role.value), root.get(role.value), role=role)

    # -- backend ------------------------------------------------------------------------------

    def _backend(self, root: MapView) -> Backend | None:
        backend = root.mapping("backend", required="landscape, api or rest")
        if backend is None:
            return None
        kinds = [k for k in BACKEND_KINDS if k in backend]
        backend.check_keys(BACKEND_KINDS, where="`backend`")
        if not kinds:
            backend.error(None, "`backend` needs one of: landscape, api, rest")
            return None
        if len(kinds) > 1:
            backend.error(None, f"`backend` has {' and '.join(kinds)}; choose one")
            return None
        kind = kinds[0]
        body = backend.mapping(kind)
        if body is None:
            if kind != "landscape":
                backend.error(kind, f"`backend.{kind}` needs its settings")
                return None
            return LandscapeBackend()
        if kind == "landscape":
            return self._landscape_backend(body)
        if kind == "api":
            return self._api_backend(body)
        return self._rest_backend(body)

    def _landscape_backend(self, body: MapView) -> LandscapeBackend:
        body.check_keys(LANDSCAPE_KEYS, where="`backend.landscape`")
        git_url = body.string("gitUrl")
        if git_url is not None and not GIT_URL.match(git_url):
            body.error("gitUrl", f"{git_url!r} is not a git URL (https://... or git@host:path)")
        profile = self._ci_profile(body)
        artifact = body.string("staticBuildArtifact")
        return LandscapeBackend(
            git_url=git_url or None, ci_profile=profile or None, static_build_artifact=artifact
        )

    def _ci_profile(self, view: MapView) -> str | None:
        profile = view.string("ciProfile")
        if profile is not None and not PROFILE.match(profile):
            view.error(
                "ciProfile",
                f"ciProfile {profile!r} must be a profile name (letters, digits, '-', '_'), "
                "as in ci.<profile>.yml",
            )
        return profile

    def _api_backend(self, body: MapView) -> ApiBackend | None:
        body.check_keys(API_KEYS, where="`backend.api`")
        endpoint = http_url(body, "endpoint", required="the adapter's base URL")
        secret_text = body.string("secret")
        secret = None
        if secret_text is not None:
            secret = self.reader.template(body.at("secret"), secret_text)
            warn_if_plain_secret(body, "secret", secret, "the backend secret")
        return None if endpoint is None else ApiBackend(endpoint=endpoint, secret=secret)

    def _rest_backend(self, body: MapView) -> RestBackend | None:
        body.check_keys(REST_KEYS, where="`backend.rest`")
        url = http_url(body, "url", required="the backend's base URL")
        token_env = body.string("authTokenEnv")
        if token_env is not None and not ENV_NAME.match(token_env):
            body.error("authTokenEnv", f"{token_env!r} is not an environment variable name")
        return None if url is None else RestBackend(url=url, auth_token_env=token_env)

    # -- plans --------------------------------------------------------------------------------

    def _plans(self, root: MapView) -> tuple[Plan, ...]:
        plans: list[Plan] = []
        seen: dict[str, JsonPath] = {}
        for path, item in root.sequence("plans"):
            view = self.reader.as_map(path, item, what="a plan mapping with `id`")
            if view is None:
                continue
            view.check_keys(PLAN_KEYS, where="a plan")
            chosen = plan_id(view)
            name = view.string("name")
            display_name = view.string("displayName")
            description = view.string("description")
            parameters = self._plan_parameters(view)
            if chosen is None:
                continue
            key = str(chosen)
            if key in seen:
                first = self.reader.mark(seen[key])
                view.error("id", f"plan id {chosen!r} is used twice (first at line {first.line})")
                continue
            seen[key] = view.at("id")
            plans.append(
                Plan(
                    id=chosen,
                    name=name or display_name or key,
                    display_name=display_name or name or key,
                    description=description,
                    parameters=parameters,
                )
            )
        return tuple(plans)

    def _plan_parameters(self, view: MapView) -> dict[str, PlanParameter]:
        parameters = view.mapping("parameters")
        result: dict[str, PlanParameter] = {}
        if parameters is None:
            return result
        for key, path, value in parameters.items():
            if isinstance(value, dict):
                param = self._schema_parameter(key, path, value)
                if param is not None:
                    result[key] = param
            elif isinstance(value, list):
                self.reader.error(
                    path, f"plan parameter `{key}` is a value or a mapping with `schema`"
                )
            else:
                result[key] = PlanParameter(name=key, value=value)
        return result

    def _schema_parameter(
        self, key: str, path: JsonPath, value: dict[str, Any]
    ) -> PlanParameter | None:
        view = MapView(self.reader, path, value)
        view.check_keys(PARAMETER_KEYS, where=f"plan parameter `{key}`")
        priced_as = view.choice("pricedAs", PricedAs)
        priced_ok = priced_as is not None or view.get("pricedAs") is None
        schema = None
        if "schema" in view:
            schema = check_schema(
                self.reader,
                view.at("schema"),
                view.get("schema"),
                role=SchemaRole.PLAN_PARAMETER,
                object_only=False,
            )
        elif view.get("pricedAs") is None:
            view.error(None, f"plan parameter `{key}` needs `schema` (and optionally `pricedAs`)")
            return None
        if not priced_ok or ("schema" in view and schema is None):
            return None
        return PlanParameter(name=key, priced_as=priced_as, schema=schema)

    # -- versions, capabilities, backups --------------------------------------------------------

    def _versions(self, root: MapView) -> dict[str, ProviderVersion]:
        versions = root.mapping("versions")
        result: dict[str, ProviderVersion] = {}
        if versions is None:
            return result
        for key, path, value in versions.items():
            if not RELEASE.match(key):
                versions.warning(
                    key, f"version {key!r} is not a release number like 1.2.3", on_key=True
                )
            entry = self.reader.as_map(path, value, what=f"version {key!r} to be a mapping")
            if entry is None:
                continue
            entry.check_keys(VERSION_KEYS, where=f"version {key!r}")
            profile = self._ci_profile(entry)
            result[key] = ProviderVersion(
                version=key,
                git_ref=entry.string("gitRef"),
                ci_profile=profile,
                description=entry.string("description") or None,
                app_version=entry.string("appVersion"),
                artifact_tag=entry.string("artifactTag"),
            )
        return result

    def _capabilities(self, root: MapView) -> Capabilities:
        view = root.mapping("capabilities")
        if view is None:
            return Capabilities()
        view.check_keys(CAPABILITY_KEYS, where="`capabilities`")
        values = {attr: view.boolean(key, default=False) for key, attr in CAPABILITY_KEYS.items()}
        return Capabilities(**values)

    def _backups(self, root: MapView) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        view = root.mapping("backups")
        if view is None:
            return None, None
        view.check_keys(BACKUPS_KEYS, where="`backups`")
        found: list[dict[str, Any] | None] = []
        for key in BACKUPS_KEYS:
            found.append(
                check_schema(self.reader, view.at(key), view.get(key), role=SchemaRole.BACKUPS)
                if key in view
                else None
            )
        return found[0], found[1]
