"""How often the LLM's augmented "liked" and "disliked" items are items the user really interacted with later.

Reads a finished `llmrec run` / `llmrec ablate` output folder (its config.json names the store and the trained
LLMRec artifact, whose manifest names the split and the augmented-edge batches) and prints, over all augmented
triplets (user, liked, disliked): the share whose liked item is one of the user's VALID or TEST items, and the
share whose disliked item is. A useful augmentation has the first well above the second: a disliked item that is
a held-out positive is a false negative that BPR pushes down.

    python bench/edge_quality.py runs/llmrec
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from storage.store import ArtifactStore
from tasks.common import read_dense_split
from tasks.llmrec import read_edges


def held_out_shares(out_dir: Path) -> dict[str, float]:
    """{"triplets", "liked_held_out", "disliked_held_out"} for the run in `out_dir`."""
    doc = json.loads((out_dir / "config.json").read_text())
    store = ArtifactStore(doc["store"])
    seeds = doc["artifacts"]["variants"]["llmrec"]
    params = store.manifest(next(iter(seeds.values()))["train"])["params"]
    data, ids = read_dense_split(store, params["split_ref"])
    edges = read_edges(store, params["edge_refs"], ids)
    if edges is None or len(edges) == 0:
        raise SystemExit(f"{out_dir}: the run trained LLMRec without augmented edges")
    triplets = edges.triplets.numpy()
    held = {(int(u), int(i)) for u, i in np.concatenate([data.valid, data.test])}
    liked = np.mean([(int(u), int(i)) in held for u, i, _ in triplets])
    disliked = np.mean([(int(u), int(j)) in held for u, _, j in triplets])
    return {"triplets": float(len(triplets)), "liked_held_out": float(liked), "disliked_held_out": float(disliked)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="output folder of llmrec run / ablate")
    shares = held_out_shares(parser.parse_args().out_dir)
    print(f"{int(shares['triplets'])} augmented triplets: liked item held out (valid/test) "
          f"{shares['liked_held_out']:.3f}, disliked item held out {shares['disliked_held_out']:.3f}")


if __name__ == "__main__":
    main()
