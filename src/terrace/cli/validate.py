"""``terrace validate``: check landscape and provider files, as a user or a CI job would."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from terrace.cli.terminal import printable
from terrace.errors import Diagnostic
from terrace.spec.files import FileKind, kind_of
from terrace.spec.validate import FileReport, validate_paths

EXIT_INVALID = 1
EXIT_USAGE = 2


def validate(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Files or folders; folders are searched for ci*.yml and provider*.yml files.",
            show_default="the current folder",
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON list of results instead of text.")
    ] = False,
    kind: Annotated[
        FileKind | None,
        typer.Option(help="Read files as this kind whatever their names say."),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print only errors and warnings.")
    ] = False,
) -> None:
    """Check landscapes (ci.yml, ci.<profile>.yml) and providers (provider.yml).

    Exit status: 0 when every file is valid, 1 when any is invalid, 2 on a usage error.
    """
    err = Console(stderr=True, highlight=False)
    targets = paths or [Path(".")]
    for target in targets:
        if not target.exists():
            err.print(
                f"terrace validate: error: {printable(str(target))}: no such file or folder",
                markup=False,
            )
            raise typer.Exit(EXIT_USAGE)
        if target.is_file() and kind is None and kind_of(target.name) is None:
            err.print(
                f"terrace validate: error: {printable(str(target))}: cannot tell from its name "
                "whether it is a landscape (ci*.yml) or a provider (provider*.yml); pass --kind",
                markup=False,
            )
            raise typer.Exit(EXIT_USAGE)
    reports = validate_paths(targets, kind=kind)
    if not reports:
        where = printable(", ".join(str(t) for t in targets))
        err.print(
            f"terrace validate: error: no ci.yml or provider.yml files under {where}", markup=False
        )
        raise typer.Exit(EXIT_USAGE)
    if as_json:
        typer.echo(json.dumps([r.to_json() for r in reports], indent=2))
    else:
        _print_human(reports, quiet=quiet)
    if not all(r.valid for r in reports):
        raise typer.Exit(EXIT_INVALID)


def _print_human(reports: list[FileReport], *, quiet: bool) -> None:
    out = Console(highlight=False, soft_wrap=True)
    for report in reports:
        # A file's name and contents are anyone's: escape control characters and Rich markup.
        file, summary = escape(printable(report.file)), escape(printable(report.summary))
        problems = sorted((*report.errors, *report.warnings), key=Diagnostic.sort_key)
        if not quiet:
            if report.valid:
                out.print(f"[green]ok[/]      {file}: {report.kind.value}, {summary}")
            else:
                count = len(report.errors)
                out.print(
                    f"[red]invalid[/] {file}: {report.kind.value}, "
                    f"{count} error{'s' if count != 1 else ''}"
                )
        for problem in problems:
            style = "red" if problem in report.errors else "yellow"
            out.print(printable(str(problem)), style=style, markup=False)
    if quiet:
        return
    invalid = sum(not r.valid for r in reports)
    warnings = sum(len(r.warnings) for r in reports)
    out.print(
        f"{len(reports)} file{'s' if len(reports) != 1 else ''} checked: "
        f"{len(reports) - invalid} valid, {invalid} invalid, "
        f"{warnings} warning{'s' if warnings != 1 else ''}",
        markup=False,
    )
