"""The tables that pass from one stage to another: the columns each must hold, with their Arrow types.

`ArtifactStore` checks a table against its schema here, by stage and table name, when it is written and when it is
read, so a table that breaks its contract fails at once, naming the file and the column; unlisted columns may follow.
"""

from __future__ import annotations

import pyarrow as pa

ID, TEXT, TEXTS = pa.int64(), pa.string(), pa.list_(pa.string())  # text stored as large_string counts as TEXT
ANSWER = {"model": TEXT, "prompt_hash": TEXT}  # the LLM and the prompt behind an augmented row
FAILURES = pa.schema({"stage": TEXT, "key": ID, "reason": TEXT, "raw": TEXT, "asks": ID})

SCHEMAS: dict[tuple[str, str], pa.Schema] = {
    # recsys/data/dataset.py: Dataset
    ("dataset", "interactions"): pa.schema({"user_id": ID, "item_id": ID, "rating": pa.float64(), "timestamp": ID}),
    ("dataset", "items"): pa.schema({"item_id": ID, "title": TEXT, "year": ID, "genres": TEXT, "description": TEXT}),
    ("dataset", "users"): pa.schema({"user_id": ID}),
    # tasks/data.py: the split in raw ids, and the dense id of each raw id
    **{("split", part): pa.schema({"user_id": ID, "item_id": ID}) for part in ("train", "valid", "test")},
    ("split", "user_map"): pa.schema({"user_id": ID, "uid": ID}),
    ("split", "item_map"): pa.schema({"item_id": ID, "iid": ID}),
    # tasks/candidates.py: the top-|C| unseen items per user, rank 1 first
    ("candidates", "candidates"): pa.schema({"user_id": ID, "rank": ID, "item_id": ID, "score": pa.float32()}),
    # recsys/augment/runner.py: a row per answered user or item, a failure per unanswered one
    ("augment-edges", "rows"): pa.schema({"user_id": ID, "pos_item_id": ID, "neg_item_id": ID, **ANSWER}),
    ("augment-profiles", "rows"): pa.schema({"user_id": ID, "age": ID, "gender": TEXT, "liked_genres": TEXTS,
                                             "disliked_genres": TEXTS, "liked_directors": TEXTS, "country": TEXT,
                                             "language": TEXT, "raw_text": TEXT, **ANSWER}),
    ("augment-attributes", "rows"): pa.schema({"item_id": ID, "director": TEXT, "country": TEXT, "language": TEXT,
                                               "raw_text": TEXT, **ANSWER}),
    **{(f"augment-{stage}", "failures"): FAILURES for stage in ("edges", "profiles", "attributes")},
    # tasks/train.py: each test user's metrics, one column per metric@k
    **{(stage, "per_user_test"): pa.schema({"user_id": ID}) for stage in ("evaluate", "llmrec-evaluate")},
    # tasks/embed.py: row `row` of the embedding matrix is the vector of raw id `id`
    ("embed", "index"): pa.schema({"id": ID, "row": ID}),
    # tasks/llama4rec.py: the item pairs, the LLM's triplets (as augmented edges), the backbone's lists per split
    # and each user's most similar user, the LLM's rankings of those lists, and the instruction data
    ("llama4rec-pairs", "pairs"): pa.schema({"user_id": ID, "pair": ID, "item_a": ID, "item_b": ID}),
    ("llama4rec-pairwise", "rows"): pa.schema({"user_id": ID, "pos_item_id": ID, "neg_item_id": ID, **ANSWER}),
    ("llama4rec-lists", "lists"): pa.schema({"split": TEXT, "user_id": ID, "rank": ID, "item_id": ID}),
    ("llama4rec-lists", "similar"): pa.schema({"user_id": ID, "similar_user_id": ID, "cosine": pa.float32()}),
    ("llama4rec-ranking", "rows"): pa.schema({"user_id": ID, "rank": ID, "item_id": ID, "completed": ID,
                                              "asks": ID, **ANSWER}),
    **{(f"llama4rec-{stage}", "failures"): FAILURES for stage in ("pairwise", "ranking")},
    ("llama4rec-instructions", "instructions"): pa.schema({"user_id": ID, "source": TEXT, "target_item_id": ID,
                                                           "candidate_item_ids": pa.list_(ID),
                                                           "similar_user_id": ID, "messages": TEXT}),
}


def _as_text(t: pa.DataType) -> pa.DataType:
    if pa.types.is_large_string(t):  # what pandas' "str" dtype writes
        return TEXT
    return pa.list_(_as_text(t.value_type)) if pa.types.is_list(t) else t


def schema_errors(stage: str, table: str, found: pa.Schema) -> list[str]:
    """What `found` breaks of the schema of `table` in a `stage` artifact (nothing for a table without one)."""
    expected = SCHEMAS.get((stage, table), pa.schema([]))
    missing = [f"column {f.name!r} ({f.type}) is missing" for f in expected if f.name not in found.names]
    wrong = [f"column {f.name!r} is {found.field(f.name).type}, expected {f.type}" for f in expected
             if f.name in found.names and not _as_text(found.field(f.name).type).equals(f.type)]
    return missing + wrong
