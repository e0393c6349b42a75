#!/usr/bin/env python3
"""Recall accuracy of a checkpoint on the held-out documents of bench/long_range_data.py.

Runs `mambacpp logits` (the full-length forward, no gradient memory) over DATA/eval.ids and, at the
4 inputs from the query on (which must predict the key given at the document's start), counts
argmax hits and the mean cross-entropy. Prints one JSON line: {"accuracy", "recall_loss",
"documents", "targets"}.

usage: recall_eval.py MAMBACPP CHECKPOINT DATA [--threads N]
"""
import argparse
import json
import math
import os
import struct
import subprocess
import tempfile


def read_logits(path):
    """(shape, data offset, file) of the F32 tensor `logits` in a safetensors file."""
    f = open(path, "rb")
    (header_len,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(header_len))
    t = header["logits"]
    assert t["dtype"] == "F32", t
    return t["shape"], 8 + header_len + t["data_offsets"][0], f


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mambacpp")
    p.add_argument("checkpoint")
    p.add_argument("data")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    a = p.parse_args()
    with open(os.path.join(a.data, "eval.json")) as f:
        task = json.load(f)
    with open(os.path.join(a.data, "eval.ids")) as f:
        docs = [list(map(int, line.split())) for line in f if line.strip()]
    q, slots = task["query_at"], task["key_slots"]
    hits, loss, targets = 0, 0.0, 0
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "logits.safetensors")
        subprocess.run([a.mambacpp, "logits", "--model", a.checkpoint, "--ids-file", os.path.join(a.data, "eval.ids"),
                        "--out", out, "--threads", str(a.threads)], check=True, stderr=subprocess.DEVNULL)
        (batch, length, vocab), offset, f = read_logits(out)
        assert batch == len(docs) and length == task["length"], (batch, length)
        for b, ids in enumerate(docs):
            for t in range(q, q + slots):
                f.seek(offset + 4 * vocab * (b * length + t))
                row = struct.unpack("<%df" % vocab, f.read(4 * vocab))
                target = ids[t + 1]
                top = max(row)
                log_z = top + math.log(sum(math.exp(x - top) for x in row))
                loss += log_z - row[target]
                hits += row.index(top) == target
                targets += 1
        f.close()
    print(json.dumps({"accuracy": hits / targets, "recall_loss": loss / targets, "documents": len(docs),
                      "targets": targets}))


if __name__ == "__main__":
    main()
