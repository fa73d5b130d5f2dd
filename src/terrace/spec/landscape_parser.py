"""Reading ``ci.yml`` text into a :class:`~terrace.spec.landscape.Landscape`.

Every schema generation found in real files is read by the one parser:

- legacy (no ``schemaVersion`` or ``v0.1``): ``run.steps`` is the single service
  :data:`~terrace.spec.landscape.LEGACY_SERVICE_NAME`, served on port 3000 at ``/``;
- ``v0.2`` .. ``v0.4``: ``run`` maps service names to services (``steps`` and/or ``image``) and to
  managed services (``provider``). Keys that real files use in either version (``image``,
  ``volumeMounts``, ``provider.schemaVersion``...) are read in all of them.

Every problem is reported, not only the first; see ``docs/spec.md`` for each decision taken on
the inconsistent forms real files use.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import replace
from types import MappingProxyType

from terrace.spec.diagnostics import Collector, Parsed
from terrace.spec.document import load_document
from terrace.spec.expressions import OPEN, Template, bare_placeholders
from terrace.spec.landscape import (
    LEGACY_SERVICE_NAME,
    HealthCheck,
    HealthCheckKind,
    Landscape,
    LoadBalancing,
    ManagedServiceEntry,
    Service,
    ServiceKind,
    Stage,
    Step,
    VolumeMount,
)
from terrace.spec.managed_entry_parser import ManagedEntryParser
from terrace.spec.names import DNS_LABEL, ENV_NAME
from terrace.spec.network_parser import NetworkParser
from terrace.spec.reader import MapView, Reader, describe

__all__ = ["SCHEMA_VERSIONS", "parse_landscape"]

SCHEMA_VERSIONS = ("v0.1", "v0.2", "v0.3", "v0.4")
LEGACY = "v0.1"

TOP_KEYS = ("schemaVersion", "prepare", "test", "run")
STAGE_KEYS = ("steps",)
STEP_KEYS = ("name", "command")
SERVICE_KEYS = (
    "steps",
    "plan",
    "replicas",
    "isPublic",
    "network",
    "env",
    "healthEndpoint",
    "mountSubPath",
    "sleepAfter",
    "loadBalancing",
    "image",
    "baseImage",
    "command",
    "runAsUser",
    "runAsGroup",
    "volumeMounts",
)
VOLUME_KEYS = ("name", "mountPath", "workspacePath")
DURATION = re.compile(r"^(?P<amount>[0-9]{1,7})(?P<unit>s|m|h)?$")
_SECONDS = {"s": 1, "m": 60, "h": 3600}
MIN_SLEEP_AFTER = 1
HEALTH = re.compile(r"^(?P<scheme>http|tcp)://localhost:(?P<port>[0-9]{1,5})(?P<path>/[^\s]*)?$")
WORKSPACE_VOLUME = "_workspace"


def parse_landscape(
    text: str, *, file: str = "ci.yml", profile: str | None = None
) -> Parsed[Landscape]:
    """Read a landscape.

    Raises :class:`~terrace.errors.SpecError` with every error found; returns the landscape and
    its warnings otherwise. ``file`` only names the file in messages; ``profile`` is recorded on
    the model (``prod`` for ``ci.prod.yml``).
    """
    collector = Collector(file)
    doc = load_document(text, file=file, collector=collector)
    reader = Reader(doc, collector)
    root = reader.root("landscape")
    landscape = None if root is None else _LandscapeParser(reader, profile).parse(root)
    collector.raise_if_errors()
    assert landscape is not None
    # Where a value starts, but the key for a block collection, whose value starts a line later.
    marks = dict(doc.value_marks)
    for path, key_mark in doc.key_marks.items():
        if path not in marks or marks[path].line != key_mark.line:
            marks[path] = key_mark
    located = replace(landscape, file=file, marks=MappingProxyType(marks))
    return Parsed(located, collector.warnings)


class _LandscapeParser:
    def __init__(self, reader: Reader, profile: str | None) -> None:
        self.reader = reader
        self.profile = profile
        self.networks = NetworkParser(reader)
        self.managed = ManagedEntryParser(reader)
        self.hostnames: dict[str, str] = {}

    # -- the document -------------------------------------------------------------------------

    def parse(self, root: MapView) -> Landscape:
        root.check_keys(TOP_KEYS, where="the landscape")
        run = root.mapping("run")
        version = self._schema_version(root, run)
        prepare = self._stage(root, "prepare")
        test = self._stage(root, "test")
        services: dict[str, Service] = {}
        managed: dict[str, ManagedServiceEntry] = {}
        if run is not None:
            if version == LEGACY:
                service = self._service(LEGACY_SERVICE_NAME, run, legacy=True)
                if service is not None:
                    services[service.name] = service
            else:
                self._services(run, services, managed)
        if run is None or not run.data:
            where = "run" if run is not None else None
            root.warning(where, "the landscape declares no services under `run`")
        return Landscape(
            schema_version=version,
            profile=self.profile,
            prepare=prepare,
            test=test,
            services=services,
            managed_services=managed,
        )

    def _schema_version(self, root: MapView, run: MapView | None) -> str:
        written = root.string("schemaVersion")
        # A service called `steps` is implausible: `run.steps` means a legacy file.
        looks_legacy = run is not None and "steps" in run
        if written is None:
            if "schemaVersion" in root:
                root.error("schemaVersion", "`schemaVersion` needs a value such as v0.2")
            if looks_legacy or run is None:
                return LEGACY
            root.warning(
                None,
                "no `schemaVersion`, but `run` maps service names: reading it as v0.2 "
                "(add `schemaVersion: v0.2`)",
            )
            return "v0.2"
        version = written
        if version not in SCHEMA_VERSIONS and f"v{version}" in SCHEMA_VERSIONS:
            root.warning("schemaVersion", f"write the schema version as `v{version}`")
            version = f"v{version}"
        if version not in SCHEMA_VERSIONS:
            root.error(
                "schemaVersion",
                f"unsupported schemaVersion {written!r}; "
                f"Terrace reads {', '.join(SCHEMA_VERSIONS)}",
            )
            return "v0.2"
        if (
            version != LEGACY
            and looks_legacy
            and run is not None
            and set(run.keys()) <= {*SERVICE_KEYS}
        ):
            run.error(
                "steps",
                f"with schemaVersion {version}, `run` maps service names to services, but this "
                "looks like a legacy file: put the steps under a service name "
                "(run: {web: {steps: [...]}}) or remove `schemaVersion`",
                on_key=True,
            )
        return version

    # -- stages and steps ---------------------------------------------------------------------

    def _stage(self, root: MapView, name: str) -> Stage:
        if isinstance(root.get(name), list):
            root.error(name, f"`{name}` is a mapping with `steps`: {name}: {{steps: [...]}}")
            return Stage()
        stage = root.mapping(name)
        if stage is None:
            return Stage()
        stage.check_keys(STAGE_KEYS, where=f"the {name} stage")
        return Stage(steps=self._steps(stage, f"the {name} stage"))

    def _steps(self, owner: MapView, where: str) -> tuple[Step, ...]:
        steps: list[Step] = []
        for path, item in owner.sequence("steps"):
            if isinstance(item, str):
                self.reader.error(
                    path, f"a step is a mapping with `command`, like: - command: {item}"
                )
                continue
            view = self.reader.as_map(path, item, what="a step (a mapping with `command`)")
            if view is None:
                continue
            view.check_keys(STEP_KEYS, where=f"a step of {where}")
            command = view.string("command", required="the shell command to run")
            name = view.string("name")
            if command is None:
                continue
            if not command.strip():
                view.error("command", "`command` is empty")
                continue
            if OPEN in command:
                view.warning(
                    "command",
                    f"`{OPEN} }}}}` is not evaluated in commands; pass the value through `env` "
                    "and use $NAME (this also keeps secrets out of process listings)",
                )
            steps.append(Step(command=command, name=name or None))
        return tuple(steps)

    # -- run: services and managed services -----------------------------------------------------

    def _services(
        self,
        run: MapView,
        services: dict[str, Service],
        managed: dict[str, ManagedServiceEntry],
    ) -> None:
        for name, path, value in run.items():
            self._check_name(run, name)
            if value is None:
                self.reader.error(
                    path, f"service `{name}` is empty: give it `steps`, `image` or `provider`"
                )
                continue
            view = self.reader.as_map(path, value, what=f"service `{name}` to be a mapping")
            if view is None:
                continue
            if "provider" in view:
                entry = self.managed.parse(name, view)
                if entry is not None:
                    managed[name] = entry
            else:
                service = self._service(name, view, legacy=False)
                if service is not None:
                    services[name] = service

    def _check_name(self, run: MapView, name: str) -> None:
        if not DNS_LABEL.match(name):
            run.error(
                name,
                f"service name {name!r} is not a valid DNS label: use 1 to 63 letters, digits "
                "and '-', starting and ending with a letter or digit",
                on_key=True,
            )
            return
        lowered = name.lower()
        if lowered in self.hostnames:
            run.error(
                name,
                f"service names {self.hostnames[lowered]!r} and {name!r} differ only in case; "
                "hostnames are case-insensitive, so they would collide",
                on_key=True,
            )
        self.hostnames.setdefault(lowered, name)

    def _service(self, name: str, view: MapView, *, legacy: bool) -> Service | None:
        where = "the legacy `run` service" if legacy else f"service `{name}`"
        view.check_keys(SERVICE_KEYS, where=where)
        steps = self._steps(view, where)
        image = self._image(view)
        # A container even when its image reference is wrong (already reported): no follow-on
        # errors about `command` or having nothing to run.
        container = image is not None or "image" in view or "baseImage" in view
        command = self._container_command(view, container=container)
        is_public = view.get("isPublic")
        service_public = view.boolean("isPublic", default=False) if is_public is not None else None
        network = self.networks.parse(name, view, service_public, legacy=legacy)
        # Read every field before deciding, so that all of their problems are reported.
        plan = view.integer("plan", minimum=0)
        replicas = view.integer("replicas", default=1, minimum=1) or 1
        env = self._env(view)
        health = self._health(view)
        mount_sub_path = self._relative_path(view, "mountSubPath")
        sleep_after = self._sleep_after(view)
        load_balancing = view.choice("loadBalancing", LoadBalancing) or LoadBalancing.ROUND_ROBIN
        run_as_user = view.integer("runAsUser", minimum=0)
        run_as_group = view.integer("runAsGroup", minimum=0)
        mounts = self._volume_mounts(view)
        if container:
            kind = ServiceKind.CONTAINER
        elif steps or "steps" in view:
            kind = ServiceKind.REACTIVE
            if view.get("steps") in ([], None):
                view.error("steps", f"{where} has no steps to run")
        elif network.paths and all(p.target is not None for p in network.paths):
            kind = ServiceKind.ROUTE
        else:
            view.error(
                None,
                f"{where} has nothing to run: add `steps` (a process on the workspace) or "
                "`image` (a managed container)",
            )
            return None
        if kind is not ServiceKind.CONTAINER:
            for key in ("runAsUser", "runAsGroup", "volumeMounts"):
                if key in view:
                    view.warning(key, f"`{key}` applies only to services with `image`; ignored")
        return Service(
            name=name,
            kind=kind,
            steps=steps,
            plan=plan,
            replicas=replicas,
            network=network,
            env=env,
            health=health,
            mount_sub_path=mount_sub_path,
            sleep_after=sleep_after,
            load_balancing=load_balancing,
            image=image,
            command=command,
            run_as_user=run_as_user if kind is ServiceKind.CONTAINER else None,
            run_as_group=run_as_group if kind is ServiceKind.CONTAINER else None,
            volume_mounts=mounts if kind is ServiceKind.CONTAINER else (),
        )

    @staticmethod
    def _sleep_after(view: MapView) -> float | None:
        """``sleepAfter``: idle time after which the service is stopped until its next
        request; seconds (``300``) or with a unit (``30s``, ``5m``, ``1h``)."""
        value = view.get("sleepAfter")
        if value is None:
            return None
        found = DURATION.match(str(value)) if not isinstance(value, bool) else None
        seconds = int(found["amount"]) * _SECONDS[found["unit"] or "s"] if found else 0
        if seconds < MIN_SLEEP_AFTER:
            view.error(
                "sleepAfter",
                f"sleepAfter {value!r} must be an idle time such as 300 (seconds), 30s, 5m "
                "or 1h, at least 1 second",
            )
            return None
        return float(seconds)

    def _image(self, view: MapView) -> str | None:
        image = view.string("image")
        legacy_image = view.string("baseImage")
        if legacy_image is not None:
            if image is not None:
                view.error("baseImage", "set `image` or `baseImage`, not both", on_key=True)
            else:
                view.warning(
                    "baseImage", "`baseImage` is read as `image`; rename it to `image`", on_key=True
                )
                image = legacy_image
        key = "image" if "image" in view else "baseImage"
        if image is not None and (not image.strip() or any(c.isspace() for c in image)):
            view.error(
                key, f"{image!r} is not an image reference (like docker.io/library/nginx:1.27)"
            )
            return None
        return image

    def _container_command(self, view: MapView, *, container: bool) -> tuple[str, ...] | None:
        value = view.get("command")
        if value is None:
            return None
        if not container:
            view.error(
                "command",
                "`command` overrides a container image's command and needs `image`; "
                "a process service lists its commands under `steps`",
                on_key=True,
            )
            return None
        if isinstance(value, str):
            return ("/bin/sh", "-c", value)
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return tuple(value)
        view.error(
            "command", f"`command` must be a non-empty list of strings, got {describe(value)}"
        )
        return None

    def _env(self, view: MapView) -> dict[str, Template]:
        env = view.mapping("env")
        if env is None:
            return {}
        result: dict[str, Template] = {}
        for key, path, _ in env.items():
            if not key or "=" in key:
                env.error(key, f"{key!r} cannot be an environment variable name", on_key=True)
                continue
            if not ENV_NAME.match(key):
                env.warning(
                    key,
                    f"{key!r} is not a portable environment variable name (letters, digits, '_')",
                    on_key=True,
                )
            text = env.text_value(key, what="an environment value")
            if text is None:
                continue
            for literal in bare_placeholders(text):
                env.warning(
                    key, f"{literal!r} is literal text; did you mean `${literal}` (with a `$`)?"
                )
            result[key] = self.reader.template(path, text)
        return result

    def _health(self, view: MapView) -> HealthCheck | None:
        url = view.string("healthEndpoint")
        if url is None:
            return None
        match = HEALTH.match(url.strip())
        port = int(match.group("port")) if match else 0
        if match is None or not 1 <= port <= 65535:
            view.error(
                "healthEndpoint",
                f"healthEndpoint {url!r} must look like http://localhost:PORT/path or "
                "tcp://localhost:PORT",
            )
            return None
        kind = HealthCheckKind(match.group("scheme"))
        path = match.group("path") or "/"
        if kind is HealthCheckKind.TCP and match.group("path") not in (None, "/"):
            view.error("healthEndpoint", "a tcp:// health endpoint has no path")
        return HealthCheck(kind=kind, port=port, path=path)

    def _relative_path(self, view: MapView, key: str) -> str | None:
        value = view.string(key)
        if value is None:
            return None
        normal = posixpath.normpath(value) if value else ""
        if value.startswith("/") or normal == ".." or normal.startswith("../"):
            view.error(key, f"`{key}` must be a path inside the workspace, got {value!r}")
            return None
        return "" if normal == "." else normal

    def _volume_mounts(self, view: MapView) -> tuple[VolumeMount, ...]:
        mounts: list[VolumeMount] = []
        seen: set[str] = set()
        for path, item in view.sequence("volumeMounts"):
            mount = self.reader.as_map(path, item, what="a volume mount mapping")
            if mount is None:
                continue
            mount.check_keys(VOLUME_KEYS, where="a volume mount")
            name = mount.string("name") or WORKSPACE_VOLUME
            if name != WORKSPACE_VOLUME:
                mount.error("name", f"unknown volume {name!r}; the only volume is `_workspace`")
            target = mount.string("mountPath", required="where the folder appears in the container")
            source = self._relative_path(mount, "workspacePath") or ""
            if target is None:
                continue
            if not target.startswith("/"):
                mount.error("mountPath", f"`mountPath` must be an absolute path, got {target!r}")
                continue
            target = posixpath.normpath(target)
            if target in seen:
                mount.error("mountPath", f"{target!r} is mounted twice")
                continue
            seen.add(target)
            mounts.append(VolumeMount(mount_path=target, workspace_path=source, name=name))
        return tuple(mounts)
