"""`rsicrc import-original`: turn an original RSICRC research-code checkpoint into ours."""

from __future__ import annotations

from pathlib import Path

import typer

from rsicrc.cli.common import guarded, setup_logging


def import_original_command(
    weights: Path = typer.Argument(..., help="Original state dict (model_best.pt / pytorch_model.bin)."),
    config: Path = typer.Option(..., "--config", help="The original config.json."),
    vocab: Path = typer.Option(..., "--vocab", help="The original levir_vocab.json ({word: id})."),
    out: Path = typer.Option(..., "--out", help="Checkpoint folder to create (must not exist yet)."),
) -> None:
    """Import weights trained with the original RSICRC code into a checkpoint folder that
    evaluates, exports and captions like any other (weights_only loading; every key checked)."""
    setup_logging()
    from rsicrc.import_original import import_original

    path = guarded(lambda: import_original(weights, config, vocab, out))
    typer.echo(f"wrote {path}")
