"""`rsicrc`: the main command (synthetic data, evaluation, export, captioning, search)."""

from __future__ import annotations

from pathlib import Path

import typer

from rsicrc.cli.caption import caption
from rsicrc.cli.common import (
    DEVICE,
    ENGINE,
    OLD_BACKEND,
    PRECISION,
    THREADS,
    deprecated,
    guarded,
    print_json,
    runtime_options,
    setup_logging,
)
from rsicrc.cli.common import app as make_app
from rsicrc.cli.export import export_command
from rsicrc.cli.import_original import import_original_command
from rsicrc.cli.index import index_command
from rsicrc.cli.scene import scene_command, synth_scene_command
from rsicrc.cli.search import search_command
from rsicrc.cli.serve import serve_command
from rsicrc.cli.trt import build_engines_command, check_command
from rsicrc.cli.verify import verify_command
from rsicrc.errors import ConfigError
from rsicrc.runtime.decoding import DecodingOptions

app = make_app("rsicrc: change captioning and text-to-image-pair retrieval for satellite image pairs.")


@app.command()
def synth(
    out: Path = typer.Option(..., "--out", help="Folder to create (LEVIR-CC layout)."),
    count: int | None = typer.Option(None, "--count", help="Number of before/after pairs.",
                                     show_default=False),
    seed: int = typer.Option(0, "--seed", help="Same seed, same bytes."),
    size: int = typer.Option(256, "--size", help="Image side in pixels."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    pairs: int | None = typer.Option(None, "--pairs", hidden=True, help="Deprecated: use --count."),
) -> None:
    """Write a deterministic synthetic change dataset (train/val/test, 5 captions per pair)."""
    setup_logging()
    from rsicrc.synth import synthesize

    def run() -> tuple[Path, int]:
        n = count
        if pairs is not None:
            deprecated("--pairs", "--count")
            n = pairs if count is None else count
        if n is None:
            raise ConfigError("give the number of pairs: --count N")
        return synthesize(out, pairs=n, seed=seed, size=size, progress=not quiet), n

    path, n = guarded(run)
    typer.echo(f"wrote {n} pairs to {path}")


@app.command()
def evaluate(
    model: Path = typer.Argument(..., help="Checkpoint folder (from rsicrc-train) or exported model folder "
                                 "(from rsicrc export); told apart by their files."),
    data: Path = typer.Option(..., "--data", help="Dataset folder in the LEVIR-CC layout."),
    split: str = typer.Option("test", help="train, val or test."),
    beam: int = typer.Option(DecodingOptions.beam_size, help="Beam size; 1 = greedy."),
    length_penalty: float = typer.Option(DecodingOptions.length_penalty, help="alpha in logprob/len^alpha."),
    batch_size: int = typer.Option(16, help="Pairs per forward pass."),
    engine: str = ENGINE,
    device: str = DEVICE,
    precision: str | None = PRECISION,
    threads: int | None = THREADS,
    out: Path | None = typer.Option(None, help="Metrics JSON (default MODEL/metrics_<split>.json; "
                                    "model folders: MODEL/metrics_<split>_<precision>.json)."),
    json_out: bool = typer.Option(False, "--json", help="Print the whole metrics JSON."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    backend: str | None = OLD_BACKEND,
) -> None:
    """Caption a split and score it: BLEU/METEOR/ROUGE-L/CIDEr, retrieval P/R/MRR@k, no-change
    accuracy and a constant-caption baseline, all pairs and changed pairs only. A checkpoint is
    evaluated with PyTorch, a model folder with the torch-free runtime; same metrics, same keys.
    --engine, --precision and --threads apply to model folders only."""
    setup_logging()
    from rsicrc.report import EvalOptions
    from rsicrc.runtime.model_folder import folder_kind

    def run() -> dict:
        opts = EvalOptions(data=data, split=split, beam=beam, length_penalty=length_penalty,
                           batch_size=batch_size, out=out, progress=not quiet)
        runtime = runtime_options(engine, device, precision, threads, backend)
        if folder_kind(model) == "model":
            from rsicrc.runtime.evaluate import evaluate_model_folder

            return evaluate_model_folder(model, opts, runtime)
        if (precision, threads) != (None, None) or runtime.engine != ENGINE.default:
            raise ConfigError("--precision, --threads and --engine apply to exported model folders only, "
                              f"not to the checkpoint folder {model}")
        from rsicrc.evaluate import evaluate_checkpoint

        return evaluate_checkpoint(model, opts, device)

    metrics = guarded(run)
    if json_out:
        print_json(metrics)
    else:
        typer.echo(format_metrics(metrics))


def format_metrics(m: dict) -> str:
    """A short table: captioning and retrieval, all vs changed, against the baseline."""
    cap, base, ret = m["captioning"], m["baseline"]["captioning"], m["retrieval"]
    lines = [f"{'':22}{'all':>9}{'changed':>9}{'baseline(ch)':>14}"]
    for k in ("Bleu_4", "METEOR", "ROUGE_L", "CIDEr"):
        lines.append(f"{k:22}{cap['all'][k]:9.4f}{cap['changed'][k]:9.4f}{base['changed'][k]:14.4f}")
    for k in ("R@1", "R@5", "R@10", "MRR@10"):
        chance = m.get("chance", {}).get(k)
        extra = f"{chance:14.4f}" if chance is not None else ""
        lines.append(f"{k:22}{ret['all'][k]:9.4f}{ret['changed'][k]:9.4f}{extra}")
    lines.append(f"{'no-change accuracy':22}{m['no_change_accuracy']:9.4f}")
    lines.append(f"baseline caption: {m['baseline']['constant_caption']!r}; "
                 f"retrieval column 3 = chance")
    lines.append(f"predictions: {m['predictions']}")
    return "\n".join(lines)


app.command("export")(export_command)
app.command("caption")(caption)
app.command("import-original")(import_original_command)
app.command("build-engines")(build_engines_command)
app.command("check")(check_command)
app.command("index")(index_command)
app.command("search")(search_command)
app.command("verify")(verify_command)
app.command("scene")(scene_command)
app.command("synth-scene")(synth_scene_command)
app.command("serve")(serve_command)


def main() -> None:
    app()
