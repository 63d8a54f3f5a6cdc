#!/usr/bin/python3
"""Trains the bundled model, models/tiny-moe: a Mixtral-architecture MoE (8 experts, top-2, 4 layers)
on the synthetic task suite, with a character-level SentencePiece tokenizer and a load-balancing
auxiliary loss. CPU only (Debian's python3-torch; BF16 autocast, which runs through oneDNN), fixed seeds.

  /usr/bin/python3 tools/train_tiny_moe.py [--tasks data/tasks] [--out models/tiny-moe] [--steps 4800]

Writes config.json, model.safetensors (BF16) and tokenizer.model in the Hugging Face layout.
"""
import argparse
import ctypes
import glob
import json
import math
import os
import random
import struct
import subprocess
import sys
import tempfile
import time

import sentencepiece as spm
import torch
import torch.nn as nn
import torch.nn.functional as F

BOS, EOS = 1, 2


def load_tasks(tasks_dir, split):
    data = {}
    for path in sorted(glob.glob(os.path.join(tasks_dir, "*", f"{split}.jsonl"))):
        with open(path) as f:
            data[os.path.basename(os.path.dirname(path))] = [json.loads(line) for line in f]
    return data


def train_tokenizer(train, out_dir):
    chars = sorted({c for rows in train.values() for r in rows for c in r["prompt"] + r["answer"]})
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        for rows in train.values():
            for r in rows[:2000]:
                f.write(r["prompt"] + r["answer"] + "\n")
        corpus = f.name
    spm.SentencePieceTrainer.train(
        input=corpus, model_prefix=os.path.join(out_dir, "tokenizer"), model_type="char",
        vocab_size=len(chars) + 3, character_coverage=1.0, hard_vocab_limit=False, add_dummy_prefix=False,
        remove_extra_whitespaces=False, unk_id=0, bos_id=BOS, eos_id=EOS, pad_id=-1, minloglevel=2)
    os.unlink(corpus)
    os.unlink(os.path.join(out_dir, "tokenizer.vocab"))
    return spm.SentencePieceProcessor(model_file=os.path.join(out_dir, "tokenizer.model"))


class RMSNorm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(d)), eps

    def forward(self, x):
        x = x.float()
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class Experts(nn.Module):
    """All E SwiGLU experts of a layer as stacked weights [E, out, in] (saved as the Hugging Face
    per-expert tensors)."""
    def __init__(self, e, d, f):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(e, f, d) / math.sqrt(d))
        self.w3 = nn.Parameter(torch.randn(e, f, d) / math.sqrt(d))
        self.w2 = nn.Parameter(torch.randn(e, d, f) / math.sqrt(f))

    def forward(self, x, combine):
        """x [T, d]; combine [T, E] routing weights, zero for experts a token does not use. Every expert runs
        densely on every token (a few large matmuls are far faster on a CPU than gathering per expert), and
        the zero weights make the result and its gradients exactly those of sparse top-k routing."""
        h = F.silu(torch.matmul(x, self.w1.transpose(1, 2))) * torch.matmul(x, self.w3.transpose(1, 2))  # [E,T,f]
        y = torch.matmul(h, self.w2.transpose(1, 2)).float()  # [E, T, d]
        return (y * combine.t()[:, :, None]).sum(0)


class MoE(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.gate = nn.Linear(c["hidden_size"], c["num_local_experts"], bias=False)
        self.experts = Experts(c["num_local_experts"], c["hidden_size"], c["intermediate_size"])
        self.k, self.e = c["num_experts_per_tok"], c["num_local_experts"]

    def forward(self, x, valid):
        """x [T, d]; valid [T] bool (padding excluded from the balance loss). Returns (out, aux, counts)."""
        logits = self.gate(x).float()
        probs = F.softmax(logits, dim=-1)
        weights, chosen = torch.topk(probs, self.k, dim=-1)
        weights = weights / weights.sum(-1, keepdim=True)
        combine = torch.zeros_like(probs).scatter(1, chosen, weights)
        out = self.experts(x, combine)
        one_hot = F.one_hot(chosen, self.e).float().sum(1)  # [T, E]
        v = valid.float()[:, None]
        frac = (one_hot * v).sum(0) / (v.sum() * self.k)
        mean_prob = (probs * v).sum(0) / v.sum()
        return out, self.e * (frac * mean_prob).sum(), one_hot[valid].sum(0)


class Layer(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, h, kv = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"]
        self.h, self.kv, self.hd = h, kv, d // h
        self.input_layernorm = RMSNorm(d, c["rms_norm_eps"])
        self.post_attention_layernorm = RMSNorm(d, c["rms_norm_eps"])
        self.self_attn = nn.Module()
        self.self_attn.q_proj = nn.Linear(d, h * self.hd, bias=False)
        self.self_attn.k_proj = nn.Linear(d, kv * self.hd, bias=False)
        self.self_attn.v_proj = nn.Linear(d, kv * self.hd, bias=False)
        self.self_attn.o_proj = nn.Linear(h * self.hd, d, bias=False)
        self.block_sparse_moe = MoE(c)

    def forward(self, x, cos, sin, mask, valid):
        b, t, d = x.shape
        a = self.self_attn
        n = self.input_layernorm(x)
        q = a.q_proj(n).view(b, t, self.h, self.hd).transpose(1, 2)
        k = a.k_proj(n).view(b, t, self.kv, self.hd).transpose(1, 2)
        v = a.v_proj(n).view(b, t, self.kv, self.hd).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        k = k.repeat_interleave(self.h // self.kv, dim=1)
        v = v.repeat_interleave(self.h // self.kv, dim=1)
        s = (q @ k.transpose(-1, -2)).float() / math.sqrt(self.hd) + mask
        att = (F.softmax(s, dim=-1).to(v.dtype) @ v).transpose(1, 2).reshape(b, t, -1)
        x = x + a.o_proj(att).float()
        m, aux, counts = self.block_sparse_moe(self.post_attention_layernorm(x).reshape(b * t, d), valid.reshape(-1))
        return x + m.view(b, t, d), aux, counts


class TinyMixtral(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.embed_tokens = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.layers = nn.ModuleList(Layer(c) for _ in range(c["num_hidden_layers"]))
        self.norm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        self.lm_head = nn.Linear(c["hidden_size"], c["vocab_size"], bias=False)
        hd = c["hidden_size"] // c["num_attention_heads"]
        self.register_buffer("inv_freq", 1.0 / (c["rope_theta"] ** (torch.arange(0, hd, 2).float() / hd)), persistent=False)

    def forward(self, ids, valid):
        b, t = ids.shape
        freqs = torch.arange(t).float()[:, None] * self.inv_freq[None]
        emb = torch.cat((freqs, freqs), -1)
        cos, sin = emb.cos(), emb.sin()
        mask = torch.full((t, t), float("-inf")).triu(1)
        x = self.embed_tokens(ids).float()
        aux_total, usage = 0.0, []
        for layer in self.layers:
            x, aux, counts = layer(x, cos, sin, mask, valid)
            aux_total = aux_total + aux
            usage.append(counts)
        return self.lm_head(self.norm(x)), aux_total, usage


def encode(sp, row):
    p, a = sp.encode(row["prompt"]), sp.encode(row["answer"]) + [EOS]
    return [BOS] + p + a, len(p) + 1


def lookup_prompt_targets(sp, seq, plen):
    """Training-only targets at a lookup prompt's own positions, where what the model predicts is never
    used (the prompt is given): each value names its key, and the query key names its value.

    Lookup ("get f7 b8 h7 d6 f=" -> "7") needs two attention steps that only pay off together: a value
    position must carry its key (the previous token), and the answer position must find the value whose
    key is the query. Trained on the answer alone the model sits at "some value of the prompt": the model
    shipped before these targets reached 0.585 on test after 5,500 steps, and no attention head of it
    looked at the previous token. In lookup-only development probes (batch 64) the answer-only loss
    stayed at 0.28-0.42 dev accuracy after 500-1,500 steps whatever we changed (learning rate 5e-3,
    8 heads, six queries per prompt, the query key last, values before keys); with these targets each
    step has its own gradient, and the same probe reached 0.98 at step 300. --no-lookup-prompt-targets
    trains without them. Returns {position: target token}."""
    digits = set(sp.encode("0123456789"))
    targets = {i: seq[i - 1] for i in range(2, plen - 2) if seq[i] in digits and seq[i - 1] not in digits}
    targets[plen - 2] = seq[plen]  # the query key, just before '=': the answer
    return targets


def make_batch(examples):
    """examples: (token ids, prompt length incl. BOS, extra {position: target} inside the prompt)."""
    t = max(len(ids) for ids, _, _ in examples)
    ids = torch.zeros(len(examples), t, dtype=torch.long)
    target = torch.full((len(examples), t), -100, dtype=torch.long)
    valid = torch.zeros(len(examples), t, dtype=torch.bool)
    for i, (seq, plen, prompt_targets) in enumerate(examples):
        ids[i, :len(seq)] = torch.tensor(seq)
        valid[i, :len(seq)] = True
        target[i, plen - 1:len(seq) - 1] = torch.tensor(seq[plen:])  # the answer + EOS
        for position, token in prompt_targets.items():
            target[i, position] = token
    return ids, target, valid


@torch.no_grad()
def greedy_accuracy(model, sp, rows, max_new=12):
    correct = 0
    for r in rows:
        ids = [BOS] + sp.encode(r["prompt"])
        out = []
        for _ in range(max_new):
            x = torch.tensor([ids])
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits, _, _ = model(x, torch.ones_like(x, dtype=torch.bool))
            nxt = int(logits[0, -1].argmax())
            if nxt == EOS:
                break
            out.append(nxt)
            ids.append(nxt)
        correct += sp.decode(out) == r["answer"]
    return correct / len(rows)


def save_safetensors(model, path):
    tensors = {}
    for name, p in model.state_dict().items():
        hf = name if name.startswith("lm_head") else "model." + name
        if ".experts.w" in name:  # stacked [E, out, in] -> one Hugging Face tensor per expert
            prefix, w = hf.rsplit(".", 1)
            for e in range(p.shape[0]):
                tensors[f"{prefix}.{e}.{w}.weight"] = p[e].detach().to(torch.bfloat16).contiguous()
            continue
        tensors[hf] = p.detach().to(torch.bfloat16).contiguous()
    header, offset, blobs = {}, 0, []
    for name in sorted(tensors):
        raw = tensors[name].view(torch.int16).numpy().tobytes()
        header[name] = {"dtype": "BF16", "shape": list(tensors[name].shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blobs.append(raw)
    header["__metadata__"] = {"format": "pt"}
    text = json.dumps(header).encode()
    text += b" " * ((8 - (8 + len(text)) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for raw in blobs:
            f.write(raw)


def keep_freed_memory():
    """Every step allocates and frees the same large activation buffers. glibc hands big blocks back to
    the kernel (mmap/munmap, heap trimming), and on this VM the page faults of getting them back can
    double a step (0.60 s against 0.31 s at batch 128, measured side by side). Keep them in the heap."""
    libc = ctypes.CDLL("libc.so.6")
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)
    libc.mallopt(M_TRIM_THRESHOLD, (1 << 31) - 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    ap.add_argument("--tasks", default=os.path.join(root, "data", "tasks"))
    ap.add_argument("--out", default=os.path.join(root, "models", "tiny-moe"))
    ap.add_argument("--steps", type=int, default=4800)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--aux", type=float, default=0.02)
    ap.add_argument("--eval-every", type=int, default=1000)
    ap.add_argument("--no-lookup-prompt-targets", dest="lookup_prompt_targets", action="store_false",
                    help="train lookup on its answer only (the ablation: lookup stays near 0.6 on dev)")
    ap.add_argument("--task-weights", default="",
                    help="oversample tasks, e.g. binary=3,lookup=3 (integer weights; default 1 each)")
    args = ap.parse_args()
    random.seed(0)
    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count())
    keep_freed_memory()
    if not glob.glob(os.path.join(args.tasks, "*", "train.jsonl")):
        subprocess.check_call([sys.executable, os.path.join(root, "tools", "make_tasks.py"), "--out", args.tasks])
    train, dev = load_tasks(args.tasks, "train"), load_tasks(args.tasks, "dev")
    os.makedirs(args.out, exist_ok=True)
    sp = train_tokenizer(train, args.out)
    config = {
        "architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "vocab_size": sp.get_piece_size(),
        "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
        "num_key_value_heads": 2, "num_local_experts": 8, "num_experts_per_tok": 2, "max_position_embeddings": 128,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False, "bos_token_id": BOS,
        "eos_token_id": EOS, "hidden_act": "silu", "sliding_window": None, "torch_dtype": "bfloat16",
        "router_aux_loss_coef": args.aux,
    }
    model = TinyMixtral(config)
    weights = {t: 1 for t in train}
    for item in filter(None, args.task_weights.split(",")):
        task, w = item.split("=")
        weights[task] = int(w)
    examples = []
    for t, rows in train.items():
        for r in rows:
            seq, plen = encode(sp, r)
            extra = lookup_prompt_targets(sp, seq, plen) if t == "lookup" and args.lookup_prompt_targets else {}
            examples += [(seq, plen, extra)] * weights[t]
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = 200
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps))))
    start = time.time()
    for step in range(1, args.steps + 1):
        ids, target, valid = make_batch(random.sample(examples, args.batch))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits, aux, usage = model(ids, valid)
        loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), target.view(-1), ignore_index=-100)
        total = loss + args.aux * aux
        opt.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0:
            load = torch.stack(usage).sum(0)
            print(f"step {step} loss {loss.item():.4f} aux {aux.item():.3f} min/max expert load "
                  f"{(load.min() / load.mean()).item():.2f}/{(load.max() / load.mean()).item():.2f} "
                  f"{time.time() - start:.0f}s", flush=True)
        if step % args.eval_every == 0 or step == args.steps:
            accs = {t: greedy_accuracy(model, sp, rows[:50]) for t, rows in dev.items()}
            print("dev " + " ".join(f"{t}={a:.2f}" for t, a in accs.items()), flush=True)
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    save_safetensors(model, os.path.join(args.out, "model.safetensors"))
    print(f"wrote {args.out} in {time.time() - start:.0f}s")


if __name__ == "__main__":
    main()
