#!/usr/bin/env python3
"""A long-range recall task as a `mambacpp prepare`-style data folder (bench/stateful_bench.sh).

Every document is LENGTH ids: a key of 4 ids at its start (slot i drawn from its own alphabet of 8
ids), filler ids counting up from a random start, a query id followed by the key again, and <eos>
last. In training documents the --queries queries sit at uniformly random places, so the distance
from key to recall is anything from a few ids to the whole document; in the held-out documents
(eval.ids, one a line, for `mambacpp logits --ids-file`) it sits at the very end: the key must be carried across the
whole document. Writes OUT/train.tokens, OUT/val.tokens (token files, src/train/token_data.h:
"MCTK", version 1, 2 bytes per id, vocabulary size, count, then uint16 ids), OUT/eval.ids,
OUT/eval.json (where the recalled ids are, for bench/recall_eval.py) and OUT/config.json (the
model: an HF MambaConfig whose eos_token_id, 0, ends the documents).

usage: long_range_data.py OUT [--length 2048] [--train-docs 2000] [--queries 1] [--val-docs 16]
                              [--eval-docs 64] [--d-model 64] [--n-layer 2] [--d-state 16] [--seed 0]
"""
import argparse
import json
import os
import random
import struct

EOS, QUERY = 0, 1
KEY_SLOTS, KEY_SYMBOLS = 4, 8
KEY_BASE = 2                                   # slot i uses ids KEY_BASE + 8 i .. + 7
FILLER_BASE = KEY_BASE + KEY_SLOTS * KEY_SYMBOLS
FILLER_SYMBOLS = 64
VOCAB = FILLER_BASE + FILLER_SYMBOLS           # 98


def document(rng, length, queries):
    """length ids: the key at 0..3, counting filler, the query id followed by the key at each index
    in `queries`, <eos> last. The filler counts up (mod 64) from a random start and keeps counting
    under the queries, so once learned it costs nothing and the gradient is the recall's."""
    key = [KEY_BASE + KEY_SYMBOLS * i + rng.randrange(KEY_SYMBOLS) for i in range(KEY_SLOTS)]
    start = rng.randrange(FILLER_SYMBOLS)
    ids = key + [FILLER_BASE + (start + t) % FILLER_SYMBOLS for t in range(length - KEY_SLOTS - 1)] + [EOS]
    for q in queries:
        ids[q] = QUERY
        ids[q + 1:q + 1 + KEY_SLOTS] = key
    return ids


def random_queries(rng, count, first, last):
    """`count` query indices in [first, last], KEY_SLOTS + 1 or more apart (each query and its key
    take KEY_SLOTS + 1 ids): sorted draws with the spacing added after sorting."""
    span = last - first - (count - 1) * (KEY_SLOTS + 1)
    if span < 0:
        raise SystemExit("--queries %d do not fit in documents of this length" % count)
    return [first + q + i * (KEY_SLOTS + 1) for i, q in enumerate(sorted(rng.randint(0, span) for _ in range(count)))]


def write_tokens(path, ids):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(b"MCTK" + struct.pack("<IIIQQ", 1, 2, VOCAB, len(ids), 0))
        f.write(struct.pack("<%dH" % len(ids), *ids))
    os.replace(tmp, path)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--length", type=int, default=2048)
    p.add_argument("--train-docs", type=int, default=2000)
    p.add_argument("--val-docs", type=int, default=16)
    p.add_argument("--eval-docs", type=int, default=64)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--n-layer", type=int, default=2)
    p.add_argument("--d-state", type=int, default=16)
    p.add_argument("--queries", type=int, default=1, help="queries per training document")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    if a.length < 4 * KEY_SLOTS:
        p.error("--length must be at least %d" % (4 * KEY_SLOTS))
    rng = random.Random(a.seed)
    last_query = a.length - KEY_SLOTS - 2      # the key's last copy ends just before <eos>
    first_query = KEY_SLOTS
    os.makedirs(a.out, exist_ok=True)
    train = []
    for _ in range(a.train_docs):
        train += document(rng, a.length, random_queries(rng, a.queries, first_query, last_query))
    val = []
    for _ in range(a.val_docs):
        val += document(rng, a.length, random_queries(rng, a.queries, first_query, last_query))
    write_tokens(os.path.join(a.out, "train.tokens"), train)
    write_tokens(os.path.join(a.out, "val.tokens"), val)
    # Held-out documents, the query at the end: the inputs at query_at .. query_at + 3 predict the key.
    with open(os.path.join(a.out, "eval.ids"), "w") as f:
        for _ in range(a.eval_docs):
            f.write(" ".join(map(str, document(rng, a.length, [last_query]))) + "\n")
    with open(os.path.join(a.out, "eval.json"), "w") as f:
        json.dump({"query_at": last_query, "key_slots": KEY_SLOTS, "length": a.length}, f)
    config = {"model_type": "mamba", "vocab_size": VOCAB, "hidden_size": a.d_model, "num_hidden_layers": a.n_layer,
              "state_size": a.d_state, "expand": 2, "conv_kernel": 4, "time_step_rank": (a.d_model + 15) // 16,
              "eos_token_id": EOS, "bos_token_id": EOS, "pad_token_id": EOS, "tie_word_embeddings": True}
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    print("%s: %d train documents of %d ids (%d ids), %d val, %d held-out with the query at %d; vocabulary %d"
          % (a.out, a.train_docs, a.length, len(train), a.val_docs, a.eval_docs, last_query, VOCAB))


if __name__ == "__main__":
    main()
