#!/usr/bin/env python3
"""Writes the synthetic task suite: data/tasks/<task>/{train,dev,test}.jsonl, one
{"prompt": ..., "answer": ...} per line. Deterministic (fixed seeds); standard library only.

Tasks are different enough that experts can specialize: arithmetic, string manipulation, sorting,
counting, base conversion and in-context lookup. A prompt ends with '='; the answer is the exact text
the model must produce after it (then end-of-sequence).

  tools/make_tasks.py [--out data/tasks] [--train 20000] [--dev 200] [--test 200]
"""
import argparse
import json
import os
import random

LETTERS = "abcdefgh"


def add(r):
    a, b = r.randrange(0, 1000), r.randrange(0, 1000)
    return f"add {a}+{b}=", str(a + b)


def reverse(r):
    w = "".join(r.choice(LETTERS) for _ in range(r.randrange(3, 7)))
    return f"rev {w}=", w[::-1]


def sort(r):
    d = [r.randrange(10) for _ in range(r.randrange(3, 7))]
    return f"sort {''.join(map(str, d))}=", "".join(map(str, sorted(d)))


def count(r):
    target = r.choice(LETTERS[:4])
    s = "".join(r.choice(LETTERS[:4]) for _ in range(r.randrange(4, 10)))
    return f"count {target} {s}=", str(s.count(target))


def binary(r):
    """Base conversion, three hexadecimal digits to twelve binary digits."""
    n = r.randrange(0, 16 ** 3)
    return f"bin {n:03x}=", format(n, "012b")


def lookup(r):
    keys = r.sample(LETTERS, r.randrange(3, 6))
    pairs = {k: r.randrange(10) for k in keys}
    q = r.choice(keys)
    return "get " + " ".join(f"{k}{v}" for k, v in pairs.items()) + f" {q}=", str(pairs[q])


TASKS = {"add": add, "reverse": reverse, "sort": sort, "count": count, "binary": binary, "lookup": lookup}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "data", "tasks"))
    ap.add_argument("--train", type=int, default=20000)
    ap.add_argument("--dev", type=int, default=200)
    ap.add_argument("--test", type=int, default=200)
    args = ap.parse_args()
    for t, (name, fn) in enumerate(sorted(TASKS.items())):
        r = random.Random(1000 + t)
        seen = set()
        splits = {}
        # test and dev first, so they never change when --train does; train never repeats a test prompt
        for split, n in (("test", args.test), ("dev", args.dev), ("train", args.train)):
            rows = []
            while len(rows) < n:
                prompt, answer = fn(r)
                if split != "train" and prompt in seen:
                    continue
                if split == "train" and prompt in splits.get("heldout", set()):
                    continue
                seen.add(prompt)
                rows.append({"prompt": prompt, "answer": answer})
            splits[split] = rows
            if split == "dev":
                splits["heldout"] = {x["prompt"] for x in splits["test"]} | {x["prompt"] for x in rows}
        os.makedirs(os.path.join(args.out, name), exist_ok=True)
        for split in ("train", "dev", "test"):
            with open(os.path.join(args.out, name, f"{split}.jsonl"), "w") as f:
                for row in splits[split]:
                    f.write(json.dumps(row) + "\n")
        print(f"{name}: train {len(splits['train'])}, dev {len(splits['dev'])}, test {len(splits['test'])}")


if __name__ == "__main__":
    main()
