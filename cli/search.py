"""`rsicrc search`: rank the pairs of a retrieval index by a text query (torch-free)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from rsicrc.cli.common import (
    DEFAULT_MODEL_TEXT,
    DEVICE,
    ENGINE,
    THREADS,
    deprecated,
    guarded,
    print_json,
    runtime_options,
    setup_logging,
)
from rsicrc.errors import ConfigError
from rsicrc.runtime.retriever import DEFAULT_TOP_K, SEARCHES

if TYPE_CHECKING:
    from rsicrc.runtime.retriever import Hit


def read_queries(path: Path) -> list[str]:
    """One query per line of a UTF-8 text file; blank lines are skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read --queries {path}: {e}") from None
    texts = [line.strip() for line in lines if line.strip()]
    if not texts:
        raise ConfigError(f"--queries {path} holds no queries (one per line)")
    return texts


def format_hits(hits: list[Hit]) -> str:
    """A table: rank, score, id, before and after paths."""
    if not hits:
        return "(no results: the index is empty)"
    width = max(2, *(len(h.id) for h in hits))
    wide = max(6, *(len(h.before) for h in hits))
    lines = [f"{'rank':>4}  {'score':>7}  {'id':<{width}}  {'before':<{wide}}  after"]
    lines += [f"{h.rank:>4}  {h.score:7.4f}  {h.id:<{width}}  {h.before:<{wide}}  {h.after}" for h in hits]
    return "\n".join(lines)


def search_command(
    query: str | None = typer.Argument(None, metavar="QUERY", show_default=False,
                                       help="What changed, in words: e.g. \"a road is built through the "
                                       "trees\"."),
    index: Path = typer.Option(..., "--index", help="Index folder (from `rsicrc index`).",
                               show_default=False),
    model: Path | None = typer.Option(None, "--model", help="Exported model folder; it must be the model "
                                      "that built the index (checked by sha256). Default: the folder "
                                      f"recorded in the index if it still exists, else {DEFAULT_MODEL_TEXT}.",
                                      show_default=False),
    top_k: int = typer.Option(DEFAULT_TOP_K, "--top-k", help="Results per query."),
    queries: Path | None = typer.Option(None, "--queries", help="A text file with one query per line, all "
                                        "answered in one batch (instead of QUERY).", show_default=False),
    json_out: bool = typer.Option(False, "--json", help="Print JSON: a list of hits {rank, score, id, "
                                  "before, after, metadata}; with --queries a list of {query, hits}."),
    search: str = typer.Option("exact", "--search", help=f"How the stored rows are searched: "
                               f"{', '.join(SEARCHES)}. exact: matrix products over the stored rows, nothing "
                               "built at load (one-off searches); quantized: the same results from an int8 "
                               "pre-scan built at load (~2.5 s per 100,000 x 2048 rows; 4-7x faster per "
                               "query, for many queries); faiss: a FAISS flat index (needs faiss-cpu)."),
    engine: str = ENGINE,
    device: str = DEVICE,
    threads: int | None = THREADS,
    no_verify: bool = typer.Option(False, "--no-verify", help="Skip the sha256 check of the index files at "
                                   "load (sizes, shapes and line counts are still checked)."),
    backend: str | None = typer.Option(None, "--backend", hidden=True, help="Deprecated: use --search."),
) -> None:
    """Find the before/after pairs of an index whose change matches a text query, best first.

    The query is tokenized with the model's vocabulary (unknown words are read as <UNK> and named
    in a warning on stderr), embedded by the text encoder, and ranked exactly by cosine
    similarity with every pair's stored visual embedding.
    """
    setup_logging()

    def run() -> tuple[list[str], list[str], list[list[Hit]]]:
        from rsicrc.runtime.retriever import Retriever, check_top_k

        if (query is None) == (queries is None):
            raise ConfigError("give either a QUERY or --queries FILE (one query per line)"
                              + (", not both" if query is not None else ""))
        texts = [query] if query is not None else read_queries(queries)  # type: ignore[arg-type]
        check_top_k(top_k)  # before anything loads
        kind = search
        if backend is not None:
            deprecated("--backend", "--search")
            kind = backend
        runtime = runtime_options(engine, device, None, threads)  # the precision is the index's
        retriever = Retriever(index, model, runtime, search=kind, verify=not no_verify)
        hits = retriever.search(texts, top_k, warn=False)
        return texts, retriever.warnings(texts), hits

    texts, warnings, hits = guarded(run)
    for line in warnings:
        typer.echo(line, err=True)
    if json_out:
        if queries is None:
            print_json([h.to_dict() for h in hits[0]])
        else:
            print_json([{"query": t, "hits": [h.to_dict() for h in found]} for t, found in zip(texts, hits,
                                                                                               strict=True)])
        return
    blocks = [format_hits(found) if queries is None else f"query {i + 1}: {t}\n{format_hits(found)}"
              for i, (t, found) in enumerate(zip(texts, hits, strict=True))]
    typer.echo("\n\n".join(blocks))
