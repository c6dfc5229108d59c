"""Evaluation metrics for captioning and retrieval (torch-free; DESIGN §5).

Captioning: BLEU-1..4, METEOR, ROUGE-L and CIDEr from pycocoevalcap after PTB tokenization
(both tokenizer and METEOR are Java; SPICE is left out because it downloads CoreNLP).
Retrieval: P@k, R@k and MRR@k of text queries against pair embeddings. `evaluation_report`
assembles the test-split report with a constant-caption baseline and chance levels.

pycocoevalcap's own Meteor wrapper and PTBTokenizer are not used as objects: the wrapper
leaves its lock held (and its `__del__` then deadlocks) when the JVM dies, never drains
stderr, and the tokenizer writes temp files into site-packages. We drive the same jars
ourselves; BLEU, ROUGE-L and CIDEr are pycocoevalcap's Python scorers.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from rsicrc.checks import is_int
from rsicrc.errors import ConfigError, DataError, DependencyError
from rsicrc.levircc import NO_CHANGE_SENTENCES, PairRecord
from rsicrc.textsim import CaptionMatcher
from rsicrc.vocab import normalize_caption

CAPTION_METRICS: tuple[str, ...] = (
    "Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr",
)
DEFAULT_KS: tuple[int, ...] = (1, 3, 5, 10)
# Tokens the COCO caption protocol drops after PTB tokenization.
_PTB_PUNCTUATION = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-",
     "--", "...", ";", "-lrb-", "-rrb-", "-lcb-", "-rcb-"]
)
_JAVA_HINT = "install a Java runtime (e.g. apt-get install default-jre-headless)"


def _coco_dir() -> Path:
    try:
        import pycocoevalcap
    except ImportError:
        raise DependencyError(
            "captioning metrics need pycocoevalcap: pip install 'rsicrc[train]'"
        ) from None
    return Path(next(iter(pycocoevalcap.__path__)))


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise DependencyError(f"captioning metrics (PTB tokenizer, METEOR) need Java: {_JAVA_HINT}")
    return java


def _clean(text: str) -> str:
    """One line, single spaces, no METEOR field separator."""
    return " ".join(text.replace("|||", " ").split())


class _Meteor:
    """One long-lived METEOR 1.5 JVM speaking its `-stdio` line protocol (thread-safe)."""

    def __init__(self, java: str, jar: Path) -> None:
        self._cmd = [java, "-jar", "-Xmx2G", str(jar), "-", "-", "-stdio", "-l", "en", "-norm"]
        self._cwd = jar.parent
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._finalizer: weakref.finalize | None = None
        self._start()

    def _start(self) -> None:
        self._stderr = tempfile.TemporaryFile()  # a file, so a chatty JVM can never block
        try:
            self._proc = subprocess.Popen(self._cmd, cwd=self._cwd, stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=self._stderr)
        except OSError as e:
            self._stderr.close()
            raise DependencyError(f"cannot start METEOR (Java): {e}; {_JAVA_HINT}") from None
        self._finalizer = weakref.finalize(self, _stop, self._proc, self._stderr)

    def _ask(self, line: str) -> str:
        """Send one protocol line and read the first line of the answer."""
        if self._proc is None or self._proc.stdin is None:
            raise OSError("METEOR process is not running")
        self._proc.stdin.write((line + "\n").encode("utf-8"))
        self._proc.stdin.flush()
        return self._read()

    def _read(self) -> str:
        answer = self._proc.stdout.readline() if self._proc and self._proc.stdout else b""
        if not answer:
            raise OSError("METEOR process closed its output")
        return answer.decode("utf-8", "replace").strip()

    def score(self, references: Sequence[Sequence[str]], hypotheses: Sequence[str]) -> float:
        """Corpus METEOR of tokenized hypotheses against their reference lists."""
        with self._lock:
            if self._proc is None:
                self._start()
            try:
                stats = [
                    self._ask(" ||| ".join(["SCORE", *(_clean(r) for r in refs), _clean(hyp)]))
                    for refs, hyp in zip(references, hypotheses, strict=True)
                ]
                self._ask(" ||| ".join(["EVAL", *stats]))  # answers segment 1's score,
                for _ in range(len(stats) - 1):  # then the other segments',
                    self._read()
                return float(self._read())  # then the corpus score
            except (OSError, ValueError) as e:
                detail = self._stderr_tail()
                self.close_unlocked()
                raise DependencyError(
                    f"METEOR (Java) failed: {e}{'; ' + detail if detail else ''}"
                ) from None

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        lines = self._stderr.read().decode("utf-8", "replace").strip().splitlines()
        return lines[-1] if lines else ""

    def close_unlocked(self) -> None:
        if self._finalizer is not None:
            self._finalizer()  # stops the JVM once; later calls are no-ops
        self._proc = self._stderr = self._finalizer = None

    def close(self) -> None:
        with self._lock:
            self.close_unlocked()


def _stop(proc: subprocess.Popen[bytes], stderr: IO[bytes]) -> None:
    """End a METEOR JVM (it keeps no state worth flushing): terminate, kill if it lingers."""
    try:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.terminate()
        proc.wait(timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        proc.kill()
        proc.wait()
    finally:
        if proc.stdout is not None:
            proc.stdout.close()
        stderr.close()


class CaptionScorer:
    """BLEU-1..4, METEOR, ROUGE-L, CIDEr with one METEOR JVM reused across calls.

    The METEOR JVM starts in the constructor (it takes seconds to load, so it warms up while
    the caller runs inference). Use `close()` or a `with` block to end it.
    """

    def __init__(self) -> None:
        root = _coco_dir()
        self._java = _java()
        self._tokenizer_jar = root / "tokenizer" / "stanford-corenlp-3.4.1.jar"
        self._meteor = _Meteor(self._java, root / "meteor" / "meteor-1.5.jar")

    def __enter__(self) -> CaptionScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._meteor.close()

    def tokenize(self, texts: Sequence[str]) -> list[str]:
        """PTB-tokenize, lower-case and drop punctuation, one Java call for all texts."""
        lines = [" ".join(t.split()) for t in texts]
        todo = [i for i, t in enumerate(lines) if t]
        out = [""] * len(lines)
        if not todo:
            return out
        with tempfile.TemporaryDirectory(prefix="rsicrc-ptb-") as tmp:
            src = Path(tmp) / "captions.txt"
            src.write_text("\n".join(lines[i] for i in todo) + "\n", encoding="utf-8")
            cmd = [self._java, "-Dfile.encoding=UTF-8", "-Dstdout.encoding=UTF-8", "-cp",
                   str(self._tokenizer_jar), "edu.stanford.nlp.process.PTBTokenizer",
                   "-preserveLines", "-lowerCase", "-encoding", "UTF-8", str(src)]
            done = subprocess.run(cmd, capture_output=True, check=False)
        result = done.stdout.decode("utf-8", "replace").split("\n")
        if done.returncode != 0 or len(result) < len(todo):
            tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:]
            raise DependencyError(f"PTB tokenizer (Java) failed: {' '.join(tail) or 'no output'}")
        for i, line in zip(todo, result, strict=False):
            out[i] = " ".join(w for w in line.split() if w not in _PTB_PUNCTUATION)
        return out

    def score(self, references: Mapping[str, Sequence[str]],
              hypotheses: Mapping[str, str]) -> dict[str, float]:
        """Corpus scores of one hypothesis per key against that key's references."""
        return self.score_subsets(references, hypotheses, {"all": list(hypotheses)})["all"]

    def score_subsets(self, references: Mapping[str, Sequence[str]],
                      hypotheses: Mapping[str, str],
                      subsets: Mapping[str, Sequence[str]]) -> dict[str, dict[str, float]]:
        """Scores for several key subsets (e.g. all and changed) with one tokenization."""
        unknown = [k for keys in subsets.values() for k in keys if k not in hypotheses]
        if unknown:
            raise DataError(f"{len(unknown)} subset keys have no hypothesis "
                            f"(first: {unknown[0]!r})")
        refs, hyps = self._tokenized(references, hypotheses)
        return {name: self.score_tokenized({k: refs[k] for k in keys}, {k: hyps[k] for k in keys})
                for name, keys in subsets.items()}

    def _tokenized(self, references: Mapping[str, Sequence[str]], hypotheses: Mapping[str, str]
                   ) -> tuple[dict[str, list[str]], dict[str, str]]:
        if set(references) != set(hypotheses):
            missing = sorted(set(references) ^ set(hypotheses))
            raise DataError(f"references and hypotheses must have the same keys; "
                            f"{len(missing)} differ (first: {missing[0]!r})")
        keys = list(hypotheses)
        if any(len(references[k]) == 0 for k in keys):
            raise DataError("every hypothesis needs at least one reference caption")
        flat = [hypotheses[k] for k in keys] + [r for k in keys for r in references[k]]
        tok = self.tokenize(flat)
        hyps = dict(zip(keys, tok[: len(keys)], strict=True))
        refs: dict[str, list[str]] = {}
        pos = len(keys)
        for k in keys:
            refs[k] = tok[pos: pos + len(references[k])]
            pos += len(references[k])
        return refs, hyps

    def score_tokenized(self, refs: Mapping[str, list[str]],
                        hyps: Mapping[str, str]) -> dict[str, float]:
        """Scores of already tokenized text; an empty set scores zero everywhere."""
        if not hyps:
            return dict.fromkeys(CAPTION_METRICS, 0.0)
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.rouge.rouge import Rouge

        keys = list(hyps)
        gts = {k: list(refs[k]) for k in keys}
        res = {k: [hyps[k]] for k in keys}
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        rouge, _ = Rouge().compute_score(gts, res)
        meteor = self._meteor.score([gts[k] for k in keys], [hyps[k] for k in keys])
        values = [*bleu, meteor, rouge, _cider(gts, res)]
        return {name: float(v) for name, v in zip(CAPTION_METRICS, values, strict=True)}


def _cider(gts: dict[str, list[str]], res: dict[str, list[str]]) -> float:
    """CIDEr-D as pycocoevalcap computes it (IDF from the evaluated references)."""
    if not res:
        return 0.0
    from pycocoevalcap.cider.cider import Cider

    return float(Cider().compute_score(gts, res)[0])


def retrieval_metrics(similarity: np.ndarray, relevant: np.ndarray,
                      ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """P@k, R@k, MRR@k (k in ks, in that order) averaged over queries (rows).

    Ranking is by descending similarity, ties to the lower candidate index. P@k divides by k
    even when k exceeds the number of candidates. Every query needs a relevant candidate.
    """
    if not ks or any(not is_int(k) or k < 1 for k in ks) or len(set(ks)) != len(ks):
        raise ConfigError(f"ks must be distinct positive integers, got {list(ks)}")
    sim = np.asarray(similarity, dtype=np.float64)
    rel = np.asarray(relevant, dtype=bool)
    if sim.ndim != 2 or rel.shape != sim.shape:
        raise DataError(f"similarity {sim.shape} and relevant {rel.shape} must be the same [Q, N]")
    if not np.isfinite(sim).all():
        raise DataError("similarity contains NaN or infinite values")
    out: dict[str, float] = {}
    n_queries, n_cand = sim.shape
    if n_queries == 0:
        return {f"{m}@{k}": 0.0 for k in ks for m in ("P", "R", "MRR")}
    n_rel = rel.sum(axis=1)
    if (n_rel == 0).any():
        bad = np.flatnonzero(n_rel == 0)
        raise DataError(f"{bad.size} queries have no relevant candidate (first: row {bad[0]})")
    order = np.argsort(-sim, axis=1, kind="stable")
    ranked = np.take_along_axis(rel, order, axis=1)
    hits_upto = np.cumsum(ranked, axis=1)
    first = ranked.argmax(axis=1)  # 0-based rank of the first relevant candidate
    for k in ks:
        hits = hits_upto[:, min(int(k), n_cand) - 1]
        out[f"P@{k}"] = float(np.mean(hits / k))
        out[f"R@{k}"] = float(np.mean(hits / n_rel))
        out[f"MRR@{k}"] = float(np.mean(np.where(first < k, 1.0 / (first + 1), 0.0)))
    return out


def relevance(records: Sequence[PairRecord], queries: Sequence[str],
              matcher: CaptionMatcher) -> np.ndarray:
    """Bool [Q, N]: candidate j is relevant to query i (of records[i]) when their labels are
    equal (all no-change pairs share one) or the query matches any of j's captions."""
    if len(queries) != len(records):
        raise DataError(f"{len(queries)} queries for {len(records)} records; need one each")
    labels = np.array([r.label for r in records], dtype=np.int64)
    same_label = labels[:, None] == labels[None, :]
    counts = [len(r.captions) for r in records]
    if any(c == 0 for c in counts):
        raise DataError("every record needs at least one reference caption")
    if not records:
        return same_label
    texts = [t for r in records for t in r.texts]
    match = matcher.match(queries, texts)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return same_label | np.logical_or.reduceat(match, starts, axis=1)


def no_change_accuracy(predictions: Sequence[str], changed: Sequence[bool]) -> float:
    """Share of pairs where "the prediction is a no-change sentence" agrees with not changed."""
    if len(predictions) != len(changed):
        raise DataError(f"{len(predictions)} predictions for {len(changed)} pairs")
    if not predictions:
        raise DataError("no-change accuracy needs at least one pair")
    fixed = {normalize_caption(s) for s in NO_CHANGE_SENTENCES}
    agree = [(normalize_caption(p) in fixed) == (not c)
             for p, c in zip(predictions, changed, strict=True)]
    return float(np.mean(agree))


def best_constant_caption(scorer: CaptionScorer, references: Mapping[str, Sequence[str]],
                          changed_ids: Sequence[str], candidates: Sequence[str]
                          ) -> tuple[str, dict[str, dict[str, float]]]:
    """The candidate that, copied to every pair, maximizes CIDEr on the changed pairs.

    Returns it (first one on ties) with its scores {"all": ..., "changed": ...}. Each
    candidate costs one CIDEr pass (about 1 s per 1,000 changed pairs): keep the list short,
    e.g. the ten most frequent changed-pair captions of the training split.
    """
    if not candidates:
        raise DataError("the constant-caption baseline needs at least one candidate caption")
    unknown = [k for k in changed_ids if k not in references]
    if unknown:
        raise DataError(f"{len(unknown)} changed ids have no references (first: {unknown[0]!r})")
    keys = list(references)
    flat = [r for k in keys for r in references[k]] + list(candidates)
    tok = scorer.tokenize(flat)  # one Java call for references and candidates
    refs: dict[str, list[str]] = {}
    pos = 0
    for k in keys:
        refs[k], pos = tok[pos: pos + len(references[k])], pos + len(references[k])
    cand_tok = tok[pos:]
    changed_refs = {k: refs[k] for k in changed_ids}
    ciders = [_cider(changed_refs, {k: [c] for k in changed_ids}) for c in cand_tok]
    best = int(np.argmax(ciders))  # argmax keeps the first of equal values
    scores = {
        "all": scorer.score_tokenized(refs, dict.fromkeys(refs, cand_tok[best])),
        "changed": scorer.score_tokenized(changed_refs, dict.fromkeys(changed_ids, cand_tok[best])),
    }
    return candidates[best], scores


def _unit_rows(x: np.ndarray, name: str, n: int) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != n or not np.isfinite(a).all():
        raise DataError(f"{name} embeddings must be finite [N={n}, C], got shape {a.shape}")
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def evaluation_report(records: Sequence[PairRecord], predictions: Mapping[int, str],
                      visual: np.ndarray, text: np.ndarray, scorer: CaptionScorer,
                      matcher: CaptionMatcher, baseline_candidates: Sequence[str],
                      predictions_file: str) -> dict[str, Any]:
    """The test-split report (DESIGN §5): captioning, retrieval, no-change accuracy, the
    constant-caption baseline and chance levels, all and changed-only. JSON-serializable.

    Row i of `visual` / `text` belongs to records[i]; `text` embeds the query caption of
    pair i (its first reference). Queries are text: similarity = text @ visual.T.
    """
    n = len(records)
    if n == 0:
        raise DataError("evaluation needs at least one test pair")
    ids = [str(r.imgid) for r in records]
    if len(set(ids)) != n:
        raise DataError("test records have duplicate imgids")
    missing = [r.imgid for r in records if r.imgid not in predictions]
    if missing:
        raise DataError(f"{len(missing)} test pairs have no prediction (first imgid {missing[0]})")
    if np.shape(visual) != np.shape(text):
        raise DataError(f"visual {np.shape(visual)} and text {np.shape(text)} shapes differ")
    sim = _unit_rows(text, "text", n) @ _unit_rows(visual, "visual", n).T
    changed_rows = [i for i, r in enumerate(records) if r.changed]
    changed_ids = [ids[i] for i in changed_rows]

    queries = [r.texts[0] if r.captions else "" for r in records]
    rel = relevance(records, queries, matcher)
    references = {k: list(r.texts) for k, r in zip(ids, records, strict=True)}
    hypotheses = {k: predictions[r.imgid] for k, r in zip(ids, records, strict=True)}
    captioning = scorer.score_subsets(references, hypotheses,
                                      {"all": ids, "changed": changed_ids})
    constant, constant_scores = best_constant_caption(scorer, references, changed_ids,
                                                      baseline_candidates)
    return {
        "captioning": captioning,
        "retrieval": {
            "all": retrieval_metrics(sim, rel),
            "changed": retrieval_metrics(sim[changed_rows], rel[changed_rows]),
        },
        "no_change_accuracy": no_change_accuracy([hypotheses[k] for k in ids],
                                                 [r.changed for r in records]),
        "baseline": {"constant_caption": constant, "captioning": constant_scores},
        "predictions": str(predictions_file),
        "chance": {f"R@{k}": min(k, n) / n for k in DEFAULT_KS},
        "pairs": {"all": n, "changed": len(changed_rows)},
    }
