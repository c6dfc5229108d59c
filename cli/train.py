"""`rsicrc-train`: train RSICRC on a LEVIR-CC layout folder."""

from __future__ import annotations

from pathlib import Path

import typer

from rsicrc.cli.common import guarded, print_json, setup_logging


def train_command(
    data: Path = typer.Option(..., "--data", help="Dataset folder in the LEVIR-CC layout."),
    out: Path = typer.Option(..., "--out", help="Checkpoint folder to write (must be new or empty)."),
    config: str = typer.Option("paper", "--config", help="Shipped config name (paper, tiny) or a JSON file."),
    epochs: int | None = typer.Option(None, help="Epochs (default: the config's; paper 50)."),
    max_steps: int | None = typer.Option(None, help="Stop after this many optimizer steps."),
    max_minutes: float | None = typer.Option(None, help="Stop after this much wall time, keep the best."),
    batch_size: int | None = typer.Option(None, help="Samples per step (default: the config's; paper 4)."),
    lr: float | None = typer.Option(None, help="AdamW learning rate (default: the config's; paper 1e-4)."),
    lambda_: float | None = typer.Option(None, "--lambda", help="Weight of InfoNCE (paper 0.5)."),
    temperature: float | None = typer.Option(None, help="InfoNCE temperature (paper 0.01)."),
    fn_threshold: float | None = typer.Option(None, help="Caption similarity for false negatives (1.0)."),
    nce_average: str | None = typer.Option(
        None, help="InfoNCE mean: positives (paper; no-change pairs weigh k*k in a batch with k) "
                   "or anchors (each pair weighs the same)."),
    lr_decay: str | None = typer.Option(None, help="After warmup: none (constant, paper) or cosine (to 0)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda (mixed precision on CUDA)."),
    seed: int = typer.Option(0, help="Seed for initialization and sample order."),
    backbone_weights: Path | None = typer.Option(
        None, help="Local open_clip CLIP state dict (e.g. RemoteCLIP-RN50); else random init."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in --out."),
    workers: int = typer.Option(0, help="DataLoader worker processes."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Train RSICRC (caption CE + lambda * InfoNCE with false-negative attraction); the best
    checkpoint by validation loss is written to --out with its config and vocabulary."""
    setup_logging()
    from rsicrc.config import load_config
    from rsicrc.train import TrainOptions, override, train

    def run():  # noqa: ANN202 - returns TrainResult (imported lazily)
        cfg = override(load_config(config), epochs=epochs, batch_size=batch_size, lr=lr,
                       contrastive_weight=lambda_, temperature=temperature, fn_threshold=fn_threshold,
                       nce_average=nce_average, lr_decay=lr_decay)
        return train(TrainOptions(data=data, out=out, config=cfg, max_steps=max_steps,
                                  max_minutes=max_minutes, device=device, seed=seed,
                                  backbone_weights=backbone_weights, resume=resume,
                                  num_workers=workers, progress=not quiet))

    result = guarded(run)
    summary = {"checkpoint": str(result.path), "steps": result.steps,
               "epochs": round(result.epochs_done, 3), "best_val_loss": result.best_val_loss,
               "seconds": round(result.seconds, 1)}
    if json_out:
        print_json(summary)
    else:
        typer.echo(f"checkpoint {summary['checkpoint']}: {summary['steps']} steps, "
                   f"best val loss {summary['best_val_loss']:.4f}, {summary['seconds']} s")


def main() -> None:
    from rsicrc.cli.common import app

    cli = app("Train RSICRC.")
    cli.command()(train_command)
    cli()
