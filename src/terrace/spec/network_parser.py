"""Reading a service's ``network``: ports, path routes, and collisions between routes.

Two forms exist in real files and both become one :class:`~terrace.spec.landscape.Network`:

- legacy: ``isPublic`` on the service and ``network: {path, stripPath}``, meaning port 3000;
- current: ``network.ports[{port, isPublic}]`` and
  ``network.paths[{port | target, path, stripPath}]``.

A service without ``network`` listens on port 3000, privately. When ``ports`` is not written,
the ports the paths route to are declared implicitly; when it is, every path must route to one
of them. Path prefixes are compared without a trailing slash; two routes on one prefix collide.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from terrace.spec.diagnostics import JsonPath, Mark
from terrace.spec.expressions import Template
from terrace.spec.fields import is_http_url
from terrace.spec.landscape import DEFAULT_PORT, Network, PathRoute, Port
from terrace.spec.reader import MapView, Reader

__all__ = ["NetworkParser"]

NETWORK_KEYS = ("ports", "paths", "path", "stripPath")
PORT_KEYS = ("port", "isPublic")
PATH_KEYS = ("port", "path", "stripPath", "target")


@dataclass(slots=True)
class _Route:
    service: str
    mark: Mark


class NetworkParser:
    """Reads the networks of one landscape's services, remembering every route to find
    collisions between services."""

    def __init__(self, reader: Reader) -> None:
        self.reader = reader
        self.routes: dict[str, _Route] = {}

    def parse(
        self, name: str, view: MapView, service_public: bool | None, *, legacy: bool
    ) -> Network:
        default_public = bool(service_public)
        net = view.mapping("network")
        if net is None:
            if legacy and service_public is not False:
                # A legacy workspace serves port 3000 at the root of its own host...
                route = PathRoute(path="/", port=DEFAULT_PORT)
                self._claim(name, route.path, view.path)
                return Network(ports=(Port(number=DEFAULT_PORT, public=True),), paths=(route,))
            # ...unless it says `isPublic: false`: then it is reachable only by name.
            return Network(ports=(Port(number=DEFAULT_PORT, public=default_public),))
        net.check_keys(NETWORK_KEYS, where=f"the network of service `{name}`")
        old_form = "path" in net or "stripPath" in net
        new_form = "ports" in net or "paths" in net
        if old_form and new_form:
            net.error(
                None,
                "mixes the legacy form (`path`, `stripPath`) with `ports`/`paths`; use one of them",
            )
        if old_form:
            return self._legacy_network(name, net, service_public)
        ports = self._ports(net, default_public, service_public)
        # A `ports` that is not a list was reported already: check paths as if it were absent.
        declared = isinstance(net.get("ports"), list)
        paths = self._paths(name, net, ports, declared=declared)
        if not declared:
            implied = sorted({p.port for p in paths if p.port is not None})
            if not implied and not paths:
                implied = [DEFAULT_PORT]
            ports = [Port(number=n, public=default_public) for n in implied]
        return Network(ports=tuple(ports), paths=tuple(paths))

    def _legacy_network(self, name: str, net: MapView, service_public: bool | None) -> Network:
        path = self._route_path(net, "path")
        strip = net.boolean("stripPath", default=False)
        port = Port(number=DEFAULT_PORT, public=bool(service_public))
        if path is None:
            if "path" not in net:
                net.error(None, "`stripPath` needs a `path`")
            return Network(ports=(port,))
        if service_public is False:
            net.warning(
                "path",
                f"isPublic: false does not hide network.path {path!r}: the path is still routed; "
                "remove the path to keep the service private",
            )
        self._claim(name, path, net.at("path"))
        return Network(
            ports=(port,), paths=(PathRoute(path=path, port=DEFAULT_PORT, strip_path=strip),)
        )

    def _ports(self, net: MapView, default_public: bool, service_public: bool | None) -> list[Port]:
        ports: list[Port] = []
        for path, item in net.sequence("ports"):
            view = self.reader.as_map(path, item, what="a port mapping like {port: 3000}")
            if view is None:
                continue
            view.check_keys(PORT_KEYS, where="a port")
            number = view.integer(
                "port", minimum=1, maximum=65535, required="the port number the service listens on"
            )
            public = view.boolean("isPublic", default=default_public)
            if number is None:
                continue
            if any(p.number == number for p in ports):
                view.error("port", f"port {number} is declared twice")
                continue
            if service_public is not None and "isPublic" in view and public != service_public:
                view.warning(
                    "isPublic",
                    f"port {number} sets isPublic: {str(public).lower()}, overriding the "
                    f"service's isPublic: {str(service_public).lower()}",
                )
            ports.append(Port(number=number, public=public))
        return ports

    def _paths(
        self, name: str, net: MapView, ports: Iterable[Port], *, declared: bool
    ) -> list[PathRoute]:
        numbers = sorted(p.number for p in ports)
        routes: list[PathRoute] = []
        for path, item in net.sequence("paths"):
            view = self.reader.as_map(path, item, what="a path mapping like {port: 3000, path: /}")
            if view is None:
                continue
            view.check_keys(PATH_KEYS, where="a path")
            prefix = self._route_path(view, "path", required=True)
            strip = view.boolean("stripPath", default=False)
            port = view.integer("port", minimum=1, maximum=65535)
            target = self._target(view)
            if port is not None and target is not None:
                view.error(None, "a path routes to a `port` or to a `target` URL, not both")
                continue
            if port is None and target is None:
                if "port" not in view and "target" not in view:
                    view.error(None, "a path needs the `port` it routes to (or a `target` URL)")
                continue
            if port is not None and declared and port not in numbers:
                listed = ", ".join(map(str, numbers)) or "none"
                view.error(
                    "port",
                    f"path {prefix or ''!r} routes to port {port}, which `network.ports` does not "
                    f"declare (declared: {listed})",
                )
                continue
            if prefix is None:
                continue
            self._claim(name, prefix, view.at("path"))
            routes.append(PathRoute(path=prefix, port=port, target=target, strip_path=strip))
        return routes

    def _target(self, view: MapView) -> Template | None:
        text = view.string("target")
        if text is None:
            return None
        template = self.reader.template(view.at("target"), text)
        head = template.parts[0] if template.parts and isinstance(template.parts[0], str) else ""
        if not is_http_url(head, prefix_only=not template.is_literal):
            view.error("target", f"`target` must be an http:// or https:// URL, got {text!r}")
            return None
        return template

    def _route_path(self, view: MapView, key: str, *, required: bool = False) -> str | None:
        value = view.string(key, required="the URL path prefix, like /api" if required else None)
        if value is None:
            return None
        problem = _path_problem(value)
        if problem:
            view.error(key, f"path {value!r} {problem}")
            return None
        return value.rstrip("/") or "/"

    def _claim(self, service: str, path: str, at: JsonPath) -> None:
        """Record a route; two routes on the same path collide."""
        first = self.routes.get(path)
        mark = self.reader.mark(at)
        if first is None:
            self.routes[path] = _Route(service, mark)
            return
        self.reader.error(
            at,
            f"path {path!r} is already routed to service `{first.service}` "
            f"(line {first.mark.line})",
        )


def _path_problem(value: str) -> str | None:
    if not value.startswith("/"):
        return "must start with '/'"
    if any(c.isspace() for c in value):
        return "must not contain spaces"
    if "?" in value or "#" in value:
        return "must not contain a query ('?') or fragment ('#')"
    if "//" in value:
        return "must not contain '//'"
    if any(segment in (".", "..") for segment in value.split("/")):
        return "must not contain '.' or '..' segments"
    return None
