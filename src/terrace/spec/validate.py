"""Validating files on disk: what ``terrace validate`` and ``terrace up`` read.

:func:`load_landscape` and :func:`load_provider` read one file (raising SpecError);
:func:`validate_paths` checks many and never raises for a bad file: each gets a
:class:`FileReport`. Checks that need more than one file (two files for one profile, a provider
whose ``ciProfile`` has no landscape next to it) add warnings there.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from terrace.errors import Diagnostic, Severity, SpecError
from terrace.spec.diagnostics import Parsed
from terrace.spec.files import (
    FileKind,
    discover,
    kind_of,
    landscape_files,
    profile_of,
    qualifier_of,
)
from terrace.spec.landscape import Landscape
from terrace.spec.landscape_parser import parse_landscape
from terrace.spec.provider import LandscapeBackend, Provider
from terrace.spec.provider_parser import parse_provider

__all__ = [
    "FileReport",
    "decode_text",
    "load_landscape",
    "load_provider",
    "read_text",
    "validate_paths",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class FileReport:
    """The outcome of validating one file."""

    file: str
    kind: FileKind
    errors: tuple[Diagnostic, ...] = ()
    warnings: tuple[Diagnostic, ...] = ()
    summary: str = ""
    landscape: Landscape | None = None
    provider: Provider | None = None

    @property
    def valid(self) -> bool:
        return not self.errors

    def to_json(self) -> dict[str, object]:
        return {
            "file": self.file,
            "kind": self.kind.value,
            "valid": self.valid,
            "errors": [d.to_json() for d in self.errors],
            "warnings": [d.to_json() for d in self.warnings],
        }


def read_text(path: Path, *, display: str | None = None) -> str:
    """A file's text as UTF-8 (a BOM is allowed); undecodable bytes are a SpecError."""
    name = display or str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SpecError.single(f"cannot read the file: {exc.strerror or exc}", file=name) from exc
    return decode_text(data, file=name)


def decode_text(data: bytes, *, file: str) -> str:
    """Bytes read from ``file`` as UTF-8 text (a BOM is allowed), or a located SpecError."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        before = data[: exc.start]
        line = before.count(b"\n") + 1
        column = exc.start - (before.rfind(b"\n") + 1) + 1
        raise SpecError.single(
            f"the file is not UTF-8 text (byte 0x{data[exc.start]:02x})",
            file=file,
            line=line,
            column=column,
        ) from exc


def load_landscape(path: Path, *, display: str | None = None) -> Parsed[Landscape]:
    """Read a landscape file; its profile comes from its name (``ci.prod.yml`` -> ``prod``)."""
    name = display or str(path)
    return parse_landscape(read_text(path, display=name), file=name, profile=profile_of(path.name))


def load_provider(path: Path, *, display: str | None = None) -> Parsed[Provider]:
    """Read a provider file."""
    name = display or str(path)
    return parse_provider(read_text(path, display=name), file=name)


def validate_file(path: Path, kind: FileKind, *, display: str | None = None) -> FileReport:
    name = display or str(path)
    try:
        if kind is FileKind.LANDSCAPE:
            landscape = load_landscape(path, display=name)
            return FileReport(
                file=name,
                kind=kind,
                warnings=landscape.warnings,
                summary=_landscape_summary(landscape.value),
                landscape=landscape.value,
            )
        provider = load_provider(path, display=name)
        return FileReport(
            file=name,
            kind=kind,
            warnings=provider.warnings,
            summary=f"{provider.value.name} {provider.value.version}",
            provider=provider.value,
        )
    except SpecError as exc:
        return FileReport(file=name, kind=kind, errors=exc.problems, warnings=exc.warnings)


def validate_paths(paths: Iterable[Path], *, kind: FileKind | None = None) -> list[FileReport]:
    """Validate every landscape and provider file at or below ``paths``.

    Files are named as given on the command line (``examples/01-hello/ci.yml``). ``kind``
    forces the kind of files whose names do not tell it; other such files are skipped.
    """
    reports: list[tuple[Path, FileReport]] = []
    for path in discover(paths):
        file_kind = kind or kind_of(path.name)
        if file_kind is None:
            continue
        reports.append((path, validate_file(path, file_kind)))
    return _cross_checks(reports)


def _landscape_summary(landscape: Landscape) -> str:
    services = len(landscape.services)
    managed = len(landscape.managed_services)
    text = f"{services} service{'s' if services != 1 else ''}"
    if managed:
        text += f", {managed} managed service{'s' if managed != 1 else ''}"
    return text


def _cross_checks(reports: list[tuple[Path, FileReport]]) -> list[FileReport]:
    extra: dict[int, list[Diagnostic]] = defaultdict(list)
    twins: dict[tuple[Path, FileKind, str | None], list[int]] = defaultdict(list)
    for index, (path, report) in enumerate(reports):
        if not path.name.endswith(".example"):
            twins[(path.parent.resolve(), report.kind, qualifier_of(path.name))].append(index)
    for (_, kind, qualifier), indexes in twins.items():
        if len(indexes) < 2:
            continue
        names = " and ".join(reports[i][0].name for i in indexes)
        if kind is FileKind.LANDSCAPE:
            what = f"profile {qualifier!r}" if qualifier else "the default profile"
        else:
            what = "the provider"
        for i in indexes:
            extra[i].append(
                _note(
                    reports[i][1].file,
                    f"{names} both define {what}; Terrace refuses to use it until one is removed",
                )
            )
    for index, (path, report) in enumerate(reports):
        provider = report.provider
        if provider is None or not isinstance(provider.backend, LandscapeBackend):
            continue
        if provider.backend.git_url is not None or provider.backend.static_build_artifact:
            continue
        profiles = {provider.backend.ci_profile} | {
            v.ci_profile for v in provider.versions.values()
        }
        for profile in sorted(p for p in profiles if p is not None):
            found = landscape_files(path.parent, profile)
            if not found and profile == "default":
                found = landscape_files(path.parent, None)
            if not found:
                extra[index].append(
                    _note(report.file, f"ciProfile {profile!r} has no ci.{profile}.yml next to it")
                )
    return [
        replace(
            report, warnings=tuple(sorted((*report.warnings, *extra[i]), key=Diagnostic.sort_key))
        )
        if extra[i]
        else report
        for i, (_, report) in enumerate(reports)
    ]


def _note(file: str, message: str) -> Diagnostic:
    return Diagnostic(
        file=file, line=1, column=1, path="", message=message, severity=Severity.WARNING
    )
