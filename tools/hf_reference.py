#!/usr/bin/python3
"""Independent PyTorch implementation of the Hugging Face Mixtral and Qwen2-MoE forward pass.

It follows transformers' modeling_mixtral.py / modeling_qwen2_moe.py (eager attention) and reads the
checkpoint directory directly (its own safetensors parser), sharing no code with the C++ engine.
Runs on Debian's python3-torch (CPU).

  hf_reference.py compare --model DIR --prompts FILE --steps N --logit-steps K --out FILE
      For each prompt (a JSON list of token-id lists), greedy-decodes N tokens by full recomputation
      (no KV cache) and writes {"results": [{"tokens": [...], "logits": [[vocab floats] x K]}]}.
  hf_reference.py bench --model DIR --prompt-len P --batch B --decode-steps D
      Times batched prefill and KV-cached decode; prints one JSON line.
"""
import argparse
import json
import math
import os
import struct
import sys
import time

import torch
import torch.nn.functional as F

DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, end = e["data_offsets"]
        buf = bytearray(data[base + b:base + end])
        t = torch.frombuffer(buf, dtype=DTYPES[e["dtype"]]) if buf else torch.empty(0, dtype=DTYPES[e["dtype"]])
        out[name] = t.reshape(e["shape"]).to(torch.float32)
    return out


def load_checkpoint(model_dir):
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    index = os.path.join(model_dir, "model.safetensors.index.json")
    tensors = {}
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
        for name in files:
            tensors.update(read_safetensors(os.path.join(model_dir, name)))
    else:
        tensors = read_safetensors(os.path.join(model_dir, "model.safetensors"))
    return cfg, tensors


class RMSNorm:
    def __init__(self, weight, eps):
        self.weight, self.eps = weight, eps

    def __call__(self, hs):
        variance = hs.pow(2).mean(-1, keepdim=True)
        return self.weight * (hs * torch.rsqrt(variance + self.eps))


def rotate_half(x):
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


class Model:
    def __init__(self, cfg, w):
        self.cfg, self.w = cfg, w
        self.mt = cfg["model_type"]
        self.hidden = cfg["hidden_size"]
        self.heads = cfg["num_attention_heads"]
        self.kv_heads = cfg.get("num_key_value_heads", self.heads)
        self.head_dim = cfg.get("head_dim") or self.hidden // self.heads
        self.eps = cfg.get("rms_norm_eps", 1e-6)
        base = cfg.get("rope_theta", 10000.0)
        self.inv_freq = 1.0 / (base ** (torch.arange(0, self.head_dim, 2, dtype=torch.int64).float() / self.head_dim))
        self.layers = cfg["num_hidden_layers"]
        if self.mt == "mixtral":
            self.num_experts, self.norm_topk = cfg["num_local_experts"], True
            self.moe_prefix, self.proj = "block_sparse_moe", ("w1", "w3", "w2")
        else:
            self.num_experts, self.norm_topk = cfg["num_experts"], cfg.get("norm_topk_prob", False)
            self.moe_prefix, self.proj = "mlp", ("gate_proj", "up_proj", "down_proj")
        self.top_k = cfg["num_experts_per_tok"]
        self.lm_head = w["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings") else w["lm_head.weight"]

    def is_moe(self, i):
        if self.mt == "mixtral":
            return True
        return i not in (self.cfg.get("mlp_only_layers") or []) and (i + 1) % self.cfg.get("decoder_sparse_step", 1) == 0

    def linear(self, x, name, bias=False):
        y = F.linear(x, self.w[name + ".weight"])
        return y + self.w[name + ".bias"] if bias else y

    def mlp(self, x, prefix, names):
        g, u, d = names
        return self.linear(F.silu(self.linear(x, f"{prefix}.{g}")) * self.linear(x, f"{prefix}.{u}"), f"{prefix}.{d}")

    def moe(self, i, hs):
        p = f"model.layers.{i}.{self.moe_prefix}"
        router_logits = self.linear(hs, f"{p}.gate")
        routing_weights = F.softmax(router_logits, dim=1, dtype=torch.float)
        routing_weights, selected = torch.topk(routing_weights, self.top_k, dim=-1)
        if self.norm_topk:
            routing_weights = routing_weights / routing_weights.sum(dim=-1, keepdim=True)
        final = torch.zeros_like(hs)
        mask = F.one_hot(selected, num_classes=self.num_experts).permute(2, 1, 0)
        for e in range(self.num_experts):
            idx, top_x = torch.where(mask[e])
            if top_x.numel() == 0:
                continue
            out = self.mlp(hs[top_x], f"{p}.experts.{e}", self.proj) * routing_weights[top_x, idx, None]
            final.index_add_(0, top_x, out)
        if self.mt == "qwen2_moe" and f"model.layers.{i}.mlp.shared_expert.gate_proj.weight" in self.w:
            shared = self.mlp(hs, f"model.layers.{i}.mlp.shared_expert", ("gate_proj", "up_proj", "down_proj"))
            final = final + torch.sigmoid(self.linear(hs, f"model.layers.{i}.mlp.shared_expert_gate")) * shared
        return final

    def attention(self, i, hs, positions, cache):
        """hs: [T, hidden] new tokens of one sequence; cache: dict layer -> (k, v) [kv_heads, past, d]."""
        p = f"model.layers.{i}.self_attn"
        bias = self.mt == "qwen2_moe"
        t = hs.shape[0]
        q = self.linear(hs, f"{p}.q_proj", bias).view(t, self.heads, self.head_dim).transpose(0, 1)
        k = self.linear(hs, f"{p}.k_proj", bias).view(t, self.kv_heads, self.head_dim).transpose(0, 1)
        v = self.linear(hs, f"{p}.v_proj", bias).view(t, self.kv_heads, self.head_dim).transpose(0, 1)
        freqs = positions[:, None].float() * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos()[None], emb.sin()[None]
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if cache is not None:
            if i in cache:
                k = torch.cat([cache[i][0], k], dim=1)
                v = torch.cat([cache[i][1], v], dim=1)
            cache[i] = (k, v)
        groups = self.heads // self.kv_heads
        k = k.repeat_interleave(groups, dim=0)
        v = v.repeat_interleave(groups, dim=0)
        scores = q @ k.transpose(1, 2) / math.sqrt(self.head_dim)
        total = k.shape[1]
        key_pos = torch.arange(total)
        mask = key_pos[None, :] > positions[:, None]
        scores = scores.masked_fill(mask[None], float("-inf"))
        attn = F.softmax(scores, dim=-1, dtype=torch.float32) @ v
        return self.linear(attn.transpose(0, 1).reshape(t, self.heads * self.head_dim), f"{p}.o_proj")

    def forward(self, ids, start=0, cache=None):
        """Logits [T, vocab] for new tokens `ids` of one sequence starting at position `start`."""
        hs = self.w["model.embed_tokens.weight"][torch.tensor(ids)]
        positions = torch.arange(start, start + len(ids))
        for i in range(self.layers):
            pre = f"model.layers.{i}"
            hs = hs + self.attention(i, RMSNorm(self.w[f"{pre}.input_layernorm.weight"], self.eps)(hs), positions, cache)
            normed = RMSNorm(self.w[f"{pre}.post_attention_layernorm.weight"], self.eps)(hs)
            hs = hs + (self.moe(i, normed) if self.is_moe(i) else self.mlp(normed, f"{pre}.mlp", ("gate_proj", "up_proj", "down_proj")))
        return F.linear(RMSNorm(self.w["model.norm.weight"], self.eps)(hs), self.lm_head)


def compare(args):
    cfg, w = load_checkpoint(args.model)
    model = Model(cfg, w)
    with open(args.prompts) as f:
        prompts = json.load(f)
    results = []
    with torch.no_grad():
        for prompt in prompts:
            seq = list(prompt)
            tokens, logits = [], []
            for step in range(args.steps):
                last = model.forward(seq)[-1]  # full recomputation, no cache
                if step < args.logit_steps:
                    logits.append([float(x) for x in last])
                nxt = int(torch.argmax(last))
                tokens.append(nxt)
                seq.append(nxt)
            results.append({"tokens": tokens, "logits": logits})
    with open(args.out, "w") as f:
        json.dump({"results": results}, f)


def bench(args):
    torch.set_num_threads(args.threads or os.cpu_count())
    cfg, w = load_checkpoint(args.model)
    model = Model(cfg, w)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, cfg["vocab_size"], (args.prompt_len,), generator=g).tolist() for _ in range(args.batch)]
    with torch.no_grad():
        model.forward(prompts[0][:8], 0, dict())  # warm-up: thread pools, first-touch of weights
        caches = [dict() for _ in prompts]
        t0 = time.perf_counter()
        last = [model.forward(p, 0, c)[-1] for p, c in zip(prompts, caches)]
        prefill = time.perf_counter() - t0
        t0 = time.perf_counter()
        for step in range(args.decode_steps):
            last = [model.forward([int(torch.argmax(l))], args.prompt_len + step, c)[-1] for l, c in zip(last, caches)]
        decode = time.perf_counter() - t0
        # This torch build's own matmul speed, to explain the ratio (Debian's build uses a generic BLAS).
        a, b = torch.randn(64, cfg["hidden_size"]), torch.randn(4 * cfg["hidden_size"], cfg["hidden_size"])
        t0 = time.perf_counter()
        for _ in range(5):
            F.linear(a, b)
        linear_gflops = 5 * 2 * a.shape[0] * b.shape[0] * b.shape[1] / (time.perf_counter() - t0) / 1e9
    print(json.dumps({"prefill_tokens_per_s": args.batch * args.prompt_len / prefill,
                      "decode_tokens_per_s": args.batch * args.decode_steps / decode,
                      "torch_linear_gflops": linear_gflops, "torch_threads": torch.get_num_threads()}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("compare")
    c.add_argument("--model", required=True)
    c.add_argument("--prompts", required=True)
    c.add_argument("--steps", type=int, default=32)
    c.add_argument("--logit-steps", type=int, default=4)
    c.add_argument("--out", required=True)
    b = sub.add_parser("bench")
    b.add_argument("--model", required=True)
    b.add_argument("--prompt-len", type=int, default=64)
    b.add_argument("--batch", type=int, default=1)
    b.add_argument("--decode-steps", type=int, default=16)
    b.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    compare(args) if args.cmd == "compare" else bench(args)


if __name__ == "__main__":
    sys.exit(main())
