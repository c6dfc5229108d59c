"""`rsicrc verify`: hash every file a model folder's manifest lists, whatever was verified before."""

from __future__ import annotations

from pathlib import Path

import typer

from rsicrc.cli.common import guarded, print_json, setup_logging


def verify_command(
    model: Path = typer.Argument(..., help="Exported model folder."),
    json_out: bool = typer.Option(False, "--json", help="Print every file's check as JSON."),
) -> None:
    """Check every graph (every precision) and TensorRT engine of a model folder against the sha256
    in its manifest. Loads hash a graph only when it changed since a load verified it (by device,
    inode, size and times); this command always reads everything. Exit code 1 when a file differs."""
    setup_logging()

    def run():  # noqa: ANN202
        from rsicrc.runtime.model_folder import ModelFolder

        return ModelFolder.open(model).verify_all()

    checks = guarded(run)
    if json_out:
        ok = all(c.ok for c in checks)
        print_json({"model": str(model), "ok": ok, "files": [c.to_dict() for c in checks]})
    else:
        for c in checks:
            state = "ok  " if c.ok else ("MISSING" if c.actual is None else "DIFFERS")
            typer.echo(f"{state} {c.what:28} {c.path}")
        bad = sum(not c.ok for c in checks)
        typer.echo(f"{len(checks) - bad} of {len(checks)} files match the manifest"
                   + ("" if not bad else f"; {bad} differ: re-export the model"))
    if not all(c.ok for c in checks):
        raise typer.Exit(1)
