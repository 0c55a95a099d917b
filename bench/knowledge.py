"""Knowledge base benchmark: ingest throughput, embedding speed, search latency and recall.

Run from the repo root: `.venv/bin/python bench/knowledge.py [--sizes 10000,100000] [--queries 200] [--quick]`.
Everything happens in a temporary folder (never ./workspace); the last line printed is JSON with every figure.

What is measured
1. Ingest: multi-page PDFs written here with fpdf2 (paragraphs about model deployment, thresholds and
   metrics, generated from templates so no two chunks are alike) go through `engine.knowledge.ingest.ingest_files` with
   the bundled tokenizer, the product's Chunker (500/50 tokens) and the bundled embedder: pages/s and chunks/s
   end to end. The stored chunks are then embedded again alone (chunks/s, word pieces/s). all-MiniLM-L6-v2
   reads at most 256 word pieces, so a chunk costs its word pieces up to that cap; the same is measured on
   short texts (one sentence, ~30 word pieces) to show both ends of the embedding target.
2. Search at each corpus size, per query, all methods interleaved: the product's `hybrid_search` end to end
   (query embedding included; the embedding is also timed alone), its vector ranker alone (the in-memory
   index of engine.knowledge.search), its keyword ranker alone (FTS5 BM25 over the informative query words), and the
   baseline: exact brute-force cosine top-10 in numpy over a float32 matrix, written here. Recall@10 of
   every vector method is measured against that exact top-10 (a hit is any chunk whose exact cosine reaches
   the 10th best, so exact ties count). The keyword rankers' quality is BM25 recall@10: the share of their
   top 10 whose BM25 score over every query word reaches that ranking's 10th best.
   Also on the same data: sqlite-vec's own KNN over the durable vec0 table, FTS5 over every query word (the
   product before its pruning), and alternatives: int8[384] vec0 KNN; a bit[384] vec0 Hamming prefilter
   rescored with exact cosine from a plain float table; FTS5 without English stop words, or without words in
   more than a quarter of all chunks (an approximation: the product drops those in more than half, whose
   BM25 IDF FTS5 clamps to ~0); query embedding with one torch thread.

How the synthetic search corpus is built
Embedding 100k real chunks would take hours on 2 cores, so a pool of distinct template sentences (each about
one of twelve deployment tasks) is embedded once with the real embedder. A chunk joins 2-3 sentences of one
task (`--chunk-sentences`, e.g. 12-18 for texts as long as real 500-token chunks); no two chunks share the
same sentence set. Its vector is the normalized sum of the vectors of its sentences that fit in the
embedder's 256 word-piece window. Chunks are grouped into documents of 40 and written in one transaction
through `KnowledgeBase._insert_chunks`, the product's insert path, so the FTS triggers and the vec0 table
are filled as by an ingest. Queries are questions built from the same vocabulary, embedded by the real
embedder. The machine's load average is printed: other processes on the 2 cores distort every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # numpy's idle BLAS threads would spin against torch and SQLite
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from fpdf import FPDF  # noqa: E402

from engine.core import database  # noqa: E402
from engine.knowledge.chunking import Chunk, Chunker  # noqa: E402
from engine.knowledge.documents import parse_file  # noqa: E402
from engine.knowledge.ingest import ingest_files  # noqa: E402
from engine.knowledge.knowledge_base import KnowledgeBase  # noqa: E402
from engine.knowledge.search import _keyword_ranks, fts_query, hybrid_search, query_words, vector_index  # noqa: E402
from engine.llm.bundled import load_embedder, load_tokenizer  # noqa: E402

SEARCH_P95_TARGET_MS = 50.0
RECALL_TARGET = 0.95
EMBED_TARGET_CHUNKS_PER_S = 300.0
POOL = 50  # hybrid_search's default candidate pool per index
TOP_K = 10
CHUNKS_PER_DOCUMENT = 40
PRODUCT_HYBRID = "hybrid_search end to end (product)"
PRODUCT_VECTOR = "vector, in-memory exact (product)"
PRODUCT_KEYWORD = "FTS5 BM25, informative words (product)"
BASELINE = "numpy exact top-10 (baseline)"
QUALITY = {  # how a method's results are judged, by kind
    "vector": "recall_at_10",  # against the exact numpy top-10
    "keyword": "bm25_recall_at_10",  # against the product's BM25 top-10, by score
    "hybrid": "overlap_with_product_top_8",
}

# ---------------------------------------------------------------------------------------------------------
# Text: sentences about deploying ML models, built from templates so that chunks differ
# ---------------------------------------------------------------------------------------------------------

TASKS = {
    "tumour screening": ["resnet50", "efficientnet-b3", "vit-small", "densenet121"],
    "chest x-ray triage": ["densenet121", "convnext-tiny", "vit-base", "resnet34"],
    "credit card fraud detection": ["xgboost", "lightgbm", "catboost", "isolation-forest"],
    "customer churn prediction": ["logistic-regression", "lightgbm", "xgboost", "tabnet"],
    "retail demand forecasting": ["temporal-fusion-transformer", "prophet", "deepar", "lightgbm"],
    "manufacturing defect detection": ["yolov8n", "efficientdet-d0", "padim", "patchcore"],
    "call-centre speech transcription": ["whisper-small", "whisper-base", "wav2vec2-base", "conformer-ctc"],
    "insurance claims triage": ["distilbert", "bert-base", "deberta-v3-small", "xgboost"],
    "wind turbine predictive maintenance": ["lstm-autoencoder", "random-forest", "xgboost", "tcn"],
    "sepsis early warning": ["gru-ehr", "logistic-regression", "xgboost", "transformer-ehr"],
    "legal document classification": ["legal-bert", "distilbert", "tf-idf-svm", "roberta-base"],
    "product recommendation ranking": ["two-tower", "lightfm", "dlrm", "sasrec"],
}
METRICS = ["recall", "precision", "AUROC", "F1 score", "specificity", "balanced accuracy", "average precision",
           "expected calibration error", "false positive rate", "MAPE", "word error rate", "NDCG@10"]
HARDWARE = ["a single CPU core", "two CPU cores", "an NVIDIA T4", "an A10 GPU", "an edge gateway",
            "a Jetson Orin", "the shared inference cluster", "a serverless endpoint"]
TEAMS = ["the clinical review board", "the risk committee", "the platform team", "the data science guild",
         "the model governance group", "the operations leads", "the quality office", "the on-call engineers"]
SPLITS = ["held-out", "temporal validation", "external site", "shadow traffic", "golden", "stress-test"]
SUBGROUPS = ["patients over 80", "night-shift scans", "small merchants", "new customers", "rural sites",
             "non-native speakers", "older turbines", "paediatric cases", "low-volume products"]
REASONS = ["it met the latency budget", "its recall was more stable across sites", "it needs no GPU",
           "its calibration was better", "it was cheaper to serve", "it degraded less under drift",
           "its false positives were easier to review", "it was the only one that passed the audit"]
TEMPLATES = [
    "The {model} candidate reached a {metric} of {value} on the {split} set for {task}.",
    "For {task}, the acceptance criterion requires a {metric} of at least {value} before a model may be promoted.",
    "{Team} rejected {model} on {date} because its {metric} of {value} missed the threshold of {value2}.",
    "Deployment on {hardware} must keep the p95 latency below {ms} ms for {task}.",
    "We measured {model} at {ms} ms p95 latency on {hardware} with a batch size of {batch}.",
    "The review noted that {model} drifts after {weeks} weeks in production, so {task} models are retrained every {weeks2} weeks.",
    "Calibration matters for {task}: an expected calibration error above {ece} leads to over-confident alerts.",
    "Compared with {model2}, {model} improves {metric} by {delta} points but needs {mem} MB of memory.",
    "The guideline for {task} states that a false negative costs {ratio} times more than a false positive.",
    "Shadow deployment of {model} for {task} ran for {days} days on {count} live requests before the decision.",
    "The champion alias for {task} has pointed to {model} since {date}.",
    "Candidates for {task} are evaluated on the {split} split collected after {date}, never on training data.",
    "Quantizing {model} to int8 cut latency from {ms} ms to {ms2} ms with a {metric} loss of {delta} points.",
    "Monitoring raises an alert when the weekly {metric} of the {task} model drops below {value}.",
    "{model} was trained on {count} labelled examples for {task} and validated on {count2} more.",
    "An audit on {date} found that {model} underperforms on {subgroup}, with a {metric} of only {value}.",
    "Rollback to {model2} is automatic if the error rate of {model} exceeds {pct} percent in the first hour.",
    "Serving {model} on {hardware} costs {cost} dollars per thousand predictions for {task}.",
    "Past decision: for {task} we chose {model} over {model2} because {reason}.",
    "{Team} requires a {metric} confidence interval narrower than {delta} points before any {task} release.",
    "The threshold of {model} was set to {value} so that {task} keeps a {metric} above {value2}.",
    "On {hardware}, {model} handles {count} requests per minute for {task} without breaching {ms} ms.",
]
QUESTIONS = [
    "which model meets the {ms} ms latency budget for {task}",
    "what {metric} threshold must a {task} model reach before promotion",
    "why was {model} rejected for {task}",
    "is {model} calibrated well enough for {task}",
    "which {task} candidate has the best {metric} on {hardware}",
    "how often are {task} models retrained because of drift",
    "what did the audit find about {model} on {subgroup}",
    "can we deploy {model} on {hardware} for {task}",
    "when does {task} roll back to the previous model",
    "how much does it cost to serve {model} for {task}",
    "which model did we choose for {task} and why",
    "what {metric} did {model} reach on the {split} set",
]
STOP_WORDS = set(
    "a about an and are as at be by can did do does for from had has have how i if in is it its of on or our "
    "so that the their them then there these this to was we were what when where which who why will with would".split()
)


def fill(template: str, rng: np.random.Generator, task: str) -> str:
    """One sentence or question about `task` with random but plausible values."""
    model, model2 = rng.choice(TASKS[task], size=2, replace=False)
    value, value2 = sorted(rng.uniform(0.55, 0.99, size=2).round(2))
    ms = int(rng.integers(2, 400))
    team = str(rng.choice(TEAMS))
    return template.format(
        task=task, model=f"{model}-v{rng.integers(1, 20)}", model2=f"{model2}-v{rng.integers(1, 20)}",
        metric=rng.choice(METRICS), value=value, value2=value2, split=rng.choice(SPLITS), Team=team.capitalize(),
        date=f"{rng.integers(2021, 2026)}-{rng.integers(1, 13):02d}-{rng.integers(1, 29):02d}",
        hardware=rng.choice(HARDWARE), ms=ms, ms2=max(1, ms // int(rng.integers(2, 5))), batch=2 ** rng.integers(0, 7),
        weeks=rng.integers(2, 30), weeks2=rng.integers(1, 13), ece=round(rng.uniform(0.01, 0.1), 3),
        delta=round(rng.uniform(0.2, 6), 1), mem=int(rng.integers(40, 4000)), ratio=int(rng.integers(2, 50)),
        days=rng.integers(3, 60), count=f"{int(rng.integers(1, 900)) * 1000:,}", count2=f"{int(rng.integers(1, 90)) * 1000:,}",
        subgroup=rng.choice(SUBGROUPS), pct=round(rng.uniform(0.5, 10), 1), cost=round(rng.uniform(0.01, 3), 3),
        reason=rng.choice(REASONS),
    )


def questions(rng: np.random.Generator, count: int) -> list[str]:
    tasks = list(TASKS)
    return [fill(QUESTIONS[rng.integers(len(QUESTIONS))], rng, tasks[rng.integers(len(tasks))]) for _ in range(count)]


# ---------------------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------------------


def timed(function, *args, **kwargs):
    """(result, seconds)"""
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def latency(milliseconds: list[float]) -> dict:
    return {"p50_ms": round(float(np.percentile(milliseconds, 50)), 2), "p95_ms": round(float(np.percentile(milliseconds, 95)), 2)}


def word_pieces(embedder, texts: list[str]) -> np.ndarray:
    """Word pieces per text as the embedder sees them (with [CLS]/[SEP]), before its truncation."""
    return np.array([len(ids) for ids in embedder.tokenizer(texts, add_special_tokens=True)["input_ids"]])


def embedding_speed(kb: KnowledgeBase, texts: list[str]) -> tuple[np.ndarray, dict]:
    """Embed `texts` once (after a warm-up batch): chunks/s and word pieces/s actually processed."""
    kb.embed(texts[:32])
    vectors, seconds = timed(kb.embed, texts)
    pieces = word_pieces(kb.embedder, texts)
    processed = np.minimum(pieces, kb.embedder.max_seq_length)
    return vectors, {
        "texts": len(texts),
        "mean_word_pieces": round(float(pieces.mean()), 1),
        "truncated_share": round(float((pieces > kb.embedder.max_seq_length).mean()), 3),
        "chunks_per_s": round(len(texts) / seconds, 1),
        "word_pieces_per_s": round(float(processed.sum()) / seconds),
    }


def embed_with_one_thread(kb: KnowledgeBase, text: str) -> np.ndarray:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return kb.embed([text])
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------------------
# 1. Ingest throughput with real PDFs
# ---------------------------------------------------------------------------------------------------------


def make_pdf(rng: np.random.Generator, title: str, task: str, pages: int) -> bytes:
    """A report about one task: a heading and five paragraphs of four to six sentences on every page."""
    pdf = FPDF(format="A4")
    pdf.set_title(title)
    pdf.set_auto_page_break(False)
    for page in range(1, pages + 1):
        pdf.add_page()
        pdf.set_font("Helvetica", style="B", size=13)
        pdf.cell(0, 9, f"{title} - section {page}", new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("Helvetica", size=9)
        for _ in range(5):
            paragraph = " ".join(fill(TEMPLATES[rng.integers(len(TEMPLATES))], rng, task) for _ in range(rng.integers(4, 7)))
            pdf.multi_cell(0, 4.2, paragraph, new_x="LMARGIN", new_y="NEXT")
            pdf.ln(2)
    return bytes(pdf.output())


def bench_ingest(root: Path, rng: np.random.Generator, documents: int, pages: int, embedder, tokenizer) -> dict:
    tasks = list(TASKS)
    files = [
        (f"report-{number:03d}.pdf", make_pdf(rng, f"Deployment report {number}", tasks[number % len(tasks)], pages))
        for number in range(documents)
    ]
    kb = KnowledgeBase(database.connect(root / "ingest.sqlite"), embedder)
    chunker = Chunker(tokenizer, 500, 50)
    kb.embed(["warm-up: a long-running app has run its embedder before"])
    outcomes, seconds = timed(ingest_files, kb, chunker, files)
    failed = [outcome for outcome in outcomes if not outcome.ok]
    if failed:
        raise RuntimeError(f"ingest failed: {failed[0].error}")
    chunk_rows = kb.connection.execute("SELECT text, token_count FROM chunks").fetchall()
    parsed, parse_s = timed(lambda: [parse_file(name, data) for name, data in files])
    _, chunk_s = timed(lambda: [chunker.split(document.sections) for document in parsed])
    _, real = embedding_speed(kb, [row[0] for row in chunk_rows])
    kb.connection.close()
    tokens = np.array([row[1] for row in chunk_rows])
    return {
        "documents": documents,
        "pages": documents * pages,
        "chunks": len(chunk_rows),
        "seconds": round(seconds, 2),
        "pages_per_s": round(documents * pages / seconds, 2),
        "chunks_per_s": round(len(chunk_rows) / seconds, 2),
        "parse_s": round(parse_s, 2),
        "chunking_s": round(chunk_s, 2),
        "chunk_tokens_mean": round(float(tokens.mean()), 1),
        "chunk_tokens_p50": int(np.percentile(tokens, 50)),
        "chunk_tokens_max": int(tokens.max()),
        "embedding_real_chunks": real,
    }


# ---------------------------------------------------------------------------------------------------------
# 2. Search: synthetic corpus, prototype indexes, methods, measurements
# ---------------------------------------------------------------------------------------------------------


@dataclass
class SentencePool:
    sentences: list[str]
    topics: np.ndarray  # index into TASKS per sentence
    vectors: np.ndarray  # real embeddings, normalized
    pieces: np.ndarray  # word pieces per sentence without [CLS]/[SEP]


def sentence_pool(rng: np.random.Generator, size: int) -> tuple[list[str], np.ndarray]:
    """`size` distinct sentences and the index of the task each one is about."""
    tasks = list(TASKS)
    seen = {}
    while len(seen) < size:
        topic = int(rng.integers(len(tasks)))
        sentence = fill(TEMPLATES[rng.integers(len(TEMPLATES))], rng, tasks[topic])
        if sentence not in seen:
            seen[sentence] = topic
    return list(seen), np.array(list(seen.values()))


def synthetic_chunks(rng: np.random.Generator, pool: SentencePool, size: int, sentences: tuple[int, int], window: int):
    """`size` distinct chunk texts about one task each, and their vectors (see the module docstring)."""
    by_topic = [np.flatnonzero(pool.topics == topic) for topic in range(len(TASKS))]
    texts, matrix, used = [], np.empty((size, pool.vectors.shape[1]), dtype=np.float32), set()
    for _ in range(20 * size):
        if len(texts) == size:
            break
        topic = len(texts) // CHUNKS_PER_DOCUMENT % len(TASKS)
        members = rng.choice(by_topic[topic], size=rng.integers(sentences[0], sentences[1] + 1), replace=False)
        if frozenset(members.tolist()) in used:
            continue
        used.add(frozenset(members.tolist()))
        seen = members[: max(1, int((np.cumsum(pool.pieces[members]) <= window).sum()))]
        matrix[len(texts)] = pool.vectors[seen].sum(axis=0)
        texts.append(" ".join(pool.sentences[member] for member in members))
    if len(texts) < size:
        raise ValueError(f"the sentence pool is too small for {size:,} distinct chunks of {sentences} sentences")
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    return texts, matrix


def load_corpus(kb: KnowledgeBase, texts: list[str], tokens: list[int], matrix: np.ndarray) -> None:
    """Write the corpus in one transaction through the product's insert path (FTS triggers included)."""
    tasks = list(TASKS)
    with database.transaction(kb.connection):
        for first in range(0, len(texts), CHUNKS_PER_DOCUMENT):
            number = first // CHUNKS_PER_DOCUMENT
            document_id = kb.connection.execute(
                "INSERT INTO documents(title, origin, sha256, ingested_at) VALUES (?, ?, ?, ?)",
                (f"{tasks[number % len(tasks)]} report {number}", f"file:synthetic-{number}.pdf", f"sha-{number}", database.utc_now()),
            ).lastrowid
            last = min(first + CHUNKS_PER_DOCUMENT, len(texts))
            chunks = [Chunk(texts[row], tokens[row], f"doc:synthetic-{number}:page-{(row - first) // 2 + 1}") for row in range(first, last)]
            kb._insert_chunks(document_id, chunks, matrix[first:last])


def to_int8(vector: np.ndarray, scale: float) -> bytes:
    return np.clip(np.round(vector / scale * 127), -127, 127).astype(np.int8).tobytes()


def add_prototype_tables(connection, matrix: np.ndarray) -> float:
    """int8 vec0, bit vec0 (with the product's metadata columns) and plain float blobs; returns the int8 scale."""
    scale = float(np.abs(matrix).max())
    connection.execute(
        "CREATE VIRTUAL TABLE chunk_int8 USING vec0(chunk_id INTEGER PRIMARY KEY, embedding int8[384] distance_metric=cosine)"
    )
    connection.execute(
        "CREATE VIRTUAL TABLE chunk_bits USING vec0(chunk_id INTEGER PRIMARY KEY, embedding bit[384], "
        "source_domain TEXT, document_id INTEGER)"
    )
    connection.execute("CREATE TABLE chunk_floats(chunk_id INTEGER PRIMARY KEY, embedding BLOB NOT NULL)")
    ids = [row[0] for row in connection.execute("SELECT id FROM chunks ORDER BY id")]
    with database.transaction(connection):
        for chunk_id, vector in zip(ids, matrix, strict=True):
            blob = vector.tobytes()
            connection.execute("INSERT INTO chunk_int8 VALUES (?, vec_int8(?))", (chunk_id, to_int8(vector, scale)))
            connection.execute("INSERT INTO chunk_bits VALUES (?, vec_quantize_binary(?), 'doc', 0)", (chunk_id, blob))
            connection.execute("INSERT INTO chunk_floats VALUES (?, ?)", (chunk_id, blob))
    return scale


def exact_top(matrix: np.ndarray, ids: np.ndarray, vector: np.ndarray, k: int = TOP_K) -> list[int]:
    """The baseline: exact cosine top-k by brute force over all (normalized) vectors."""
    scores = matrix @ vector
    best = np.argpartition(-scores, k)[:k]
    return ids[best[np.argsort(-scores[best])]].tolist()


def document_frequencies(connection, queries: list[str]) -> dict[str, int]:
    """Chunks containing each query word: what a product cache of document frequencies would hold."""
    return {
        word: connection.execute("SELECT count(*) FROM chunks_fts WHERE chunks_fts MATCH ?", (f'"{word}"',)).fetchone()[0]
        for word in {word for query in queries for word in query_words(query)}
    }


class PrecomputedEmbedder:
    """Stands in for the embedder so that product search functions can be timed without the query embedding."""

    def __init__(self, vectors: dict[str, np.ndarray]):
        self.vectors = vectors

    def encode(self, texts, **_):
        return np.stack([self.vectors[text] for text in texts])


def search_methods(kb: KnowledgeBase, cached: KnowledgeBase, matrix, ids, scale, frequencies) -> dict:
    """name -> (kind, function(query, vector) -> chunk ids best first); kind says how quality is judged."""
    connection, chunk_count = kb.connection, len(ids)

    def keyword(words):
        match = " OR ".join(f'"{word}"' for word in words)
        sql = "SELECT rowid FROM chunks_fts WHERE chunks_fts MATCH ? ORDER BY bm25(chunks_fts) LIMIT ?"
        return [row[0] for row in connection.execute(sql, (match, POOL))] if match else []

    def without_common_words(share):
        return "keyword", lambda query, vector: keyword(w for w in query_words(query) if frequencies[w] <= share * chunk_count)

    def bits_rescored(candidates):
        sql = f"""WITH coarse AS (SELECT chunk_id FROM chunk_bits WHERE embedding MATCH vec_quantize_binary(:q) AND k = {candidates})
                  SELECT f.chunk_id FROM coarse JOIN chunk_floats f USING (chunk_id)
                  ORDER BY vec_distance_cosine(f.embedding, :q) LIMIT {POOL}"""
        return "vector", lambda query, vector: [row[0] for row in connection.execute(sql, {"q": vector.tobytes()})]

    vec0_sql = "SELECT chunk_id FROM chunk_vectors WHERE embedding MATCH ? AND k = ? ORDER BY distance"
    int8_sql = "SELECT chunk_id FROM chunk_int8 WHERE embedding MATCH vec_int8(?) AND k = ?"
    return {
        "query embedding (product)": ("embedding", lambda query, vector: kb.embed([query])),
        PRODUCT_HYBRID: ("hybrid", lambda query, vector: [hit.chunk_id for hit in hybrid_search(kb, query)]),
        "hybrid_search without embedding": ("hybrid", lambda query, vector: [hit.chunk_id for hit in hybrid_search(cached, query)]),
        PRODUCT_VECTOR: ("vector", lambda query, vector: vector_index(connection).nearest(vector, POOL)),
        PRODUCT_KEYWORD: ("keyword",
                          lambda query, vector: list(_keyword_ranks(connection, vector_index(connection), query, POOL, None, None))),
        BASELINE: ("vector", lambda query, vector: exact_top(matrix, ids, vector)),
        "sqlite-vec vec0 KNN (the durable copy)": (
            "vector", lambda query, vector: [row[0] for row in connection.execute(vec0_sql, (vector.tobytes(), POOL))]),
        "FTS5 BM25, every word": ("keyword", lambda query, vector: keyword(query_words(query))),
        "alt: query embedding, 1 torch thread": ("embedding", lambda query, vector: embed_with_one_thread(kb, query)),
        "alt: vec0 int8[384] KNN": (
            "vector", lambda query, vector: [row[0] for row in connection.execute(int8_sql, (to_int8(vector, scale), POOL))]),
        "alt: vec0 bit[384] top-100 + rescore": bits_rescored(100),
        "alt: vec0 bit[384] top-200 + rescore": bits_rescored(200),
        "alt: FTS5 without stop words": ("keyword", lambda query, vector: keyword(w for w in query_words(query) if w not in STOP_WORDS)),
        "alt: FTS5 without words in > 1/4 of chunks": without_common_words(1 / 4),
    }


def bm25_tenth(connection, query: str) -> tuple[float, int]:
    """The product's 10th best BM25 score for a query (bm25() is lower for better) and how many it found."""
    best = connection.execute(
        "SELECT bm25(chunks_fts) FROM chunks_fts WHERE chunks_fts MATCH ? ORDER BY 1 LIMIT ?", (fts_query(query), TOP_K)
    ).fetchall()
    return (best[-1][0], len(best)) if best else (0.0, 0)


def bm25_recall(connection, query: str, found: list[int], tenth: tuple[float, int]) -> float:
    """Share of the product's BM25 top-10 that `found` recovers, judged by product score so that ties count."""
    score, count = tenth
    mine = found[:TOP_K]
    if not count or not mine:
        return float(not count)
    rows = connection.execute(
        f"SELECT bm25(chunks_fts) FROM chunks_fts WHERE chunks_fts MATCH ? AND rowid IN ({','.join('?' * len(mine))})",
        [fts_query(query), *mine],
    ).fetchall()
    return sum(row[0] <= score + 1e-9 for row in rows) / count


def bench_search(root: Path, rng: np.random.Generator, size: int, pool: SentencePool, chunk_sentences, queries, query_vectors,
                 embedder, tokenizer) -> dict:
    (texts, matrix), build_s = timed(synthetic_chunks, rng, pool, size, chunk_sentences, embedder.max_seq_length - 2)
    tokens = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    kb = KnowledgeBase(database.connect(root / f"search-{size}.sqlite"), embedder)
    _, insert_s = timed(load_corpus, kb, texts, tokens, matrix)
    del texts
    scale, prototype_s = timed(add_prototype_tables, kb.connection, matrix)
    index, matrix_s = timed(vector_index, kb.connection)  # what the first search after a write pays
    ids, matrix = index.chunk_ids, np.array(index.matrix)  # the baseline's own copy
    row_of = np.zeros(ids.max() + 1, dtype=np.int64)
    row_of[ids] = np.arange(len(ids))
    frequencies, frequencies_s = timed(document_frequencies, kb.connection, queries)
    cached = KnowledgeBase(kb.connection, PrecomputedEmbedder(dict(zip(queries, query_vectors, strict=True))))
    methods = search_methods(kb, cached, matrix, ids, scale, frequencies)

    for query, vector in zip(queries[:5], query_vectors[:5], strict=True):  # warm caches and code paths
        for _, method in methods.values():
            method(query, vector)
    times = {name: [] for name in methods}
    quality = {name: [] for name in methods}
    for query, vector in zip(queries, query_vectors, strict=True):
        exact = matrix @ vector  # a vector hit is any chunk as close as the exact 10th best (exact ties count)
        vector_tenth = np.partition(exact, -TOP_K)[-TOP_K] - 1e-5
        keyword_tenth = bm25_tenth(kb.connection, query)
        for name, (kind, method) in methods.items():
            found, seconds = timed(method, query, vector)
            times[name].append(seconds * 1000)
            if kind == "vector":
                quality[name].append(float((exact[row_of[found[:TOP_K]]] >= vector_tenth).sum() / TOP_K))
            elif kind == "keyword":
                quality[name].append(bm25_recall(kb.connection, query, found, keyword_tenth))
            elif kind == "hybrid":
                if name == PRODUCT_HYBRID:
                    product_hits = set(found)
                quality[name].append(len(product_hits & set(found)) / max(len(product_hits), 1))

    baseline_p95 = latency(times[BASELINE])["p95_ms"]
    rows = {}
    for name, (kind, _) in methods.items():
        rows[name] = {**latency(times[name]), "p95_vs_baseline": round(latency(times[name])["p95_ms"] / baseline_p95, 2)}
        if quality[name]:
            rows[name][QUALITY[kind]] = round(float(np.mean(quality[name])), 4)
    matches = [kb.connection.execute("SELECT count(*) FROM chunks_fts WHERE chunks_fts MATCH ?", (fts_query(q),)).fetchone()[0]
               for q in queries]
    kb.connection.close()
    return {
        "chunks": size,
        "chunk_tokens_mean": round(float(np.mean(tokens)), 1),
        "corpus_build_s": round(build_s, 1),
        "insert_s": round(insert_s, 1),
        "prototype_tables_s": round(prototype_s, 1),
        "index_load_s": round(matrix_s, 2),
        "matrix_mb": round(matrix.nbytes / 1e6),
        "document_frequencies_ms_per_word": round(frequencies_s * 1000 / len(frequencies), 2),
        "database_mb": round(sum(path.stat().st_size for path in root.glob(f"search-{size}.sqlite*")) / 1e6),
        "fts_matching_chunks_mean": int(np.mean(matches)),
        "methods": rows,
    }


# ---------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------


def print_ingest(ingest: dict, short: dict) -> None:
    real = ingest["embedding_real_chunks"]
    print(f"\nINGEST  {ingest['documents']} PDFs, {ingest['pages']} pages -> {ingest['chunks']} chunks "
          f"(tokens per chunk: mean {ingest['chunk_tokens_mean']}, p50 {ingest['chunk_tokens_p50']}, max {ingest['chunk_tokens_max']})")
    print(f"  end to end (parse, chunk, embed, store): {ingest['seconds']} s = {ingest['pages_per_s']} pages/s, "
          f"{ingest['chunks_per_s']} chunks/s")
    print(f"  of which parsing {ingest['parse_s']} s and chunking {ingest['chunking_s']} s (timed again on their own)")
    print(f"  {'embedding only':<32}{'texts':>7}{'word pieces':>13}{'truncated':>11}{'chunks/s':>10}{'word pieces/s':>15}")
    for label, row in (("real chunks (500/50 tokens)", real), ("short chunks (one sentence)", short)):
        print(f"  {label:<32}{row['texts']:>7}{row['mean_word_pieces']:>13}{row['truncated_share']:>11.0%}"
              f"{row['chunks_per_s']:>10}{row['word_pieces_per_s']:>15}")


def print_search(search: dict) -> None:
    print(f"\nSEARCH  {search['chunks']:,} chunks of {search['chunk_tokens_mean']} tokens on average "
          f"(bulk insert {search['insert_s']} s, database {search['database_mb']} MB, in-memory index {search['matrix_mb']} MB "
          f"loaded in {search['index_load_s']} s after a write; "
          f"a product OR-query matches {search['fts_matching_chunks_mean']:,} chunks on average;\n"
          f"  keyword search reads document frequencies from a cache, {search['document_frequencies_ms_per_word']} ms per word to fill)")
    print(f"  {'method':<54}{'p50 ms':>8}{'p95 ms':>8}{'p95/baseline':>14}  quality")
    for name, row in search["methods"].items():
        quality = next((f"{row[key]:.3f} {key}" for key in QUALITY.values() if key in row), "")
        print(f"  {name:<54}{row['p50_ms']:>8}{row['p95_ms']:>8}{row['p95_vs_baseline']:>14}  {quality}")


def verdicts(report: dict) -> list[dict]:
    def verdict(target, value, goal, ok):
        return {"target": target, "value": value, "goal": goal, "pass": bool(ok)}

    real, short = report["ingest"]["embedding_real_chunks"]["chunks_per_s"], report["embedding_short_chunks"]["chunks_per_s"]
    found = [
        verdict("embedding chunks/s, real 500-token chunks", real, f">= {EMBED_TARGET_CHUNKS_PER_S:.0f}",
                real >= EMBED_TARGET_CHUNKS_PER_S),
        verdict("embedding chunks/s, short one-sentence chunks", short, f">= {EMBED_TARGET_CHUNKS_PER_S:.0f}",
                short >= EMBED_TARGET_CHUNKS_PER_S),
    ]
    for search in report["search"]:
        methods, size = search["methods"], f"{search['chunks']:,} chunks"
        for name in (PRODUCT_HYBRID, PRODUCT_VECTOR, PRODUCT_KEYWORD):
            p95 = methods[name]["p95_ms"]
            found.append(verdict(f"{name} p95 ms at {size}", p95, f"<= {SEARCH_P95_TARGET_MS:.0f}", p95 <= SEARCH_P95_TARGET_MS))
        recall = methods[PRODUCT_VECTOR]["recall_at_10"]
        found.append(verdict(f"{PRODUCT_VECTOR} recall@10 at {size}", recall, f">= {RECALL_TARGET}", recall >= RECALL_TARGET))
    return found


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000", help="corpus sizes in chunks, comma separated")
    parser.add_argument("--queries", type=int, default=200, help="queries per corpus size")
    parser.add_argument("--chunk-sentences", default="2-3", help="sentences per synthetic chunk, as min-max")
    parser.add_argument("--quick", action="store_true", help="small sizes and fewer queries: a smoke test of about a minute")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.queries = "2000,10000", min(args.queries, 40)
    args.sizes = [int(size) for size in args.sizes.split(",")]
    low, _, high = args.chunk_sentences.partition("-")
    args.chunk_sentences = (int(low), int(high or low))
    return args


def start_report(**figures) -> dict:
    """The report every bench script starts with: its parameters and the machine's load, printed first."""
    report = {**figures, "torch_threads": torch.get_num_threads(), "load_average_at_start": os.getloadavg()[0]}
    print(f"load average at start {report['load_average_at_start']:.2f} on {os.cpu_count()} cores "
          "(anything else running on them inflates every figure below)")
    return report


def finish_report(report: dict, found: list[dict], started: float) -> None:
    """PASS or MISS per target, the load at the end, then every figure as one JSON line."""
    report["verdicts"] = found
    print("\nTARGETS")
    for item in found:
        print(f"  {'PASS' if item['pass'] else 'MISS'}  {item['target']}: {item['value']} (target {item['goal']})")
    report["load_average_at_end"] = os.getloadavg()[0]
    report["seconds"] = round(time.perf_counter() - started, 1)
    print(f"\nload average at end {report['load_average_at_end']:.2f}; total {report['seconds']} s")
    print(json.dumps(report))


def main() -> None:
    args = parse_args()
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    report = start_report(sizes=args.sizes, queries=args.queries, chunk_sentences=args.chunk_sentences, quick=args.quick)
    embedder, tokenizer = load_embedder(), load_tokenizer()
    with tempfile.TemporaryDirectory(prefix="deploywise-bench-") as folder:
        root = Path(folder)
        documents, pages = (3, 3) if args.quick else (10, 6)
        report["ingest"] = bench_ingest(root, rng, documents, pages, embedder, tokenizer)
        sentences, topics = sentence_pool(rng, 600 if args.quick else 4000)
        kb = KnowledgeBase(database.connect(":memory:"), embedder)
        vectors, report["embedding_short_chunks"] = embedding_speed(kb, sentences)
        pool = SentencePool(sentences, topics, vectors, word_pieces(embedder, sentences) - 2)
        print_ingest(report["ingest"], report["embedding_short_chunks"])
        queries = questions(rng, args.queries)
        query_vectors = kb.embed(queries)
        report["search"] = []
        for size in args.sizes:
            search = bench_search(root, rng, size, pool, args.chunk_sentences, queries, query_vectors, embedder, tokenizer)
            report["search"].append(search)
            print_search(search)
    finish_report(report, verdicts(report), started)


if __name__ == "__main__":
    main()
