"""`imgbuild catalog`: the sets known here (their manifest copies in the catalog), last check, which are due."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from imgbuild.cli.common import JsonOpt, VerboseOpt, app, cli_command, emit
from imgbuild.foundation.errors import UsageError
from imgbuild.restore.checks import DEFAULT_INTERVAL_DAYS, CatalogOptions, CatalogReport, list_catalog
from imgbuild.setformat import layout


def render_catalog(report: CatalogReport) -> Table | str:
    if not report.sets:
        return f"no sets in {escape(report.catalog)}"
    table = Table(title=f"sets in {report.catalog} (re-test every {report.interval_days} days)", header_style="bold")
    for column in ("set", "name", "created", "volumes", "checks", "last check", "result", "next due"):
        table.add_column(column)
    for s in report.sets:
        result = "-" if s.last_ok is None else ("OK" if s.last_ok else "[red]FAILED[/red]")
        if s.last_complete is False:
            result += " (some volumes)"
        due = f"[red]DUE[/red] since {s.due[:10]}" if s.is_due else s.due[:10]
        table.add_row(s.set_id, escape(s.name), s.created[:10], str(s.volumes), str(s.checks),
                      (s.last_check or "never")[:10], result, due)
    due_count = sum(s.is_due for s in report.sets)
    table.caption = (f"{due_count} of {len(report.sets)} sets due: `imgbuild verify --deep VOLUME_FOLDER...`"
                     if due_count else "none due")
    return table


@app.command("catalog")
@cli_command
def catalog_command(
    catalog: Annotated[Path, typer.Option("--catalog", help="The catalog folder (manifest copies and check "
                                          "records).")] = Path(layout.CATALOG_DEFAULT),
    interval_days: Annotated[int, typer.Option("--interval-days", help="Re-test each set this often.")]
    = DEFAULT_INTERVAL_DAYS,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """List the sets known here with their last check (imgbuild verify records each) and which are due."""
    if interval_days < 1:
        raise UsageError(f"--interval-days {interval_days}: must be at least 1")
    emit(list_catalog(CatalogOptions(catalog=catalog, interval_days=interval_days)), json_out, render_catalog)
