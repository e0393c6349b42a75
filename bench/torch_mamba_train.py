#!/usr/bin/python3
"""The PyTorch peer of `mambacpp bench --train`: a Mamba-1 language model in plain PyTorch on
the CPU, trained with the same step (mean next-token cross-entropy, gradient clipping at norm 1,
AdamW with mamba_ssm's parameter groups) on random token batches, timed, with peak RSS.

The selective scan is the plain sequential one that transformers falls back to without CUDA
kernels: the discretised A and B*x are built for every position at once, then a Python loop over
time updates the state. Autograd keeps every step of that loop, so memory grows with
batch x length x d_inner x d_state.

    bench/torch_mamba_train.py [--d-model 512 --n-layer 8 --vocab 8192 --d-state 16
                                --batch 8 --seq-len 128 --steps 2 --warmup 1 --threads 2] [--json]
    bench/torch_mamba_train.py --check tests/data/hf-tiny-mamba

--check loads the HF fixture's weights, computes its batch's loss and gradients and compares them
with the fixture's reference (loss, grad.*), which shows this model is the one mambacpp trains.
Needs Debian's python3-torch (hence /usr/bin/python3, not whatever python3 comes first on PATH).
"""
import argparse
import json
import math
import resource
import struct
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, width, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


class MambaBlock(nn.Module):
    """RMSNorm -> mixer -> residual add. Shapes: B batch, L length, D d_model, E d_inner,
    N d_state, R dt_rank."""

    def __init__(self, d_model, d_state, d_conv, dt_rank, eps):
        super().__init__()
        inner = 2 * d_model
        self.inner, self.d_state, self.dt_rank = inner, d_state, dt_rank
        self.norm = RMSNorm(d_model, eps)
        self.in_proj = nn.Linear(d_model, 2 * inner, bias=False)
        self.conv1d = nn.Conv1d(inner, inner, d_conv, groups=inner, padding=d_conv - 1, bias=True)
        self.x_proj = nn.Linear(inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, inner, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(inner, 1))
        self.D = nn.Parameter(torch.ones(inner))
        self.out_proj = nn.Linear(inner, d_model, bias=False)

    def forward(self, residual):  # [B, L, D]
        length = residual.shape[1]
        xz = self.in_proj(self.norm(residual)).transpose(1, 2)  # [B, 2E, L]
        x, z = xz.chunk(2, dim=1)
        # Causal depthwise conv: pad both ends, keep the first L outputs.
        x = F.silu(self.conv1d(x)[..., :length])  # [B, E, L]
        dbc = self.x_proj(x.transpose(1, 2))  # [B, L, R + 2N]
        dt, b, c = torch.split(dbc, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(self.dt_proj(dt)).transpose(1, 2)  # [B, E, L]
        a = -torch.exp(self.A_log)  # [E, N]
        decay = torch.exp(a[None, :, None, :] * dt[..., None])  # [B, E, L, N]
        drive = dt[..., None] * b[:, None, :, :] * x[..., None]  # [B, E, L, N]
        state = torch.zeros(x.shape[0], self.inner, self.d_state, dtype=x.dtype)
        outputs = []
        for t in range(length):
            state = decay[:, :, t] * state + drive[:, :, t]  # [B, E, N]
            outputs.append(torch.matmul(state, c[:, t, :, None])[..., 0])  # [B, E]
        y = torch.stack(outputs, dim=-1) + x * self.D[None, :, None]  # [B, E, L]
        y = y * F.silu(z)
        return residual + self.out_proj(y.transpose(1, 2))


class MambaLM(nn.Module):
    def __init__(self, vocab, d_model, n_layer, d_state, d_conv=4, eps=1e-5):
        super().__init__()
        dt_rank = math.ceil(d_model / 16)
        self.embeddings = nn.Embedding(vocab, d_model)
        self.layers = nn.ModuleList(MambaBlock(d_model, d_state, d_conv, dt_rank, eps) for _ in range(n_layer))
        self.norm_f = RMSNorm(d_model, eps)
        self.init_like_transformers(n_layer)

    def init_like_transformers(self, n_layer, dt_min=1e-3, dt_max=0.1, dt_floor=1e-4):
        nn.init.normal_(self.embeddings.weight, std=0.02)
        with torch.no_grad():
            for layer in self.layers:
                inner = layer.inner
                dt = torch.exp(torch.rand(inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
                dt = dt.clamp(min=dt_floor)
                layer.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
                layer.out_proj.weight /= math.sqrt(n_layer)

    def forward(self, tokens, targets):  # [B, L] each -> mean cross-entropy
        h = self.embeddings(tokens)
        for layer in self.layers:
            h = layer(h)
        logits = F.linear(self.norm_f(h), self.embeddings.weight)  # tied head
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def adamw(model, lr):
    """mamba_ssm's users' groups: no weight decay on 1-D tensors nor A_log."""
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2 or n.endswith("A_log")]
    decay = [p for n, p in model.named_parameters() if not (p.dim() < 2 or n.endswith("A_log"))]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.95), eps=1e-8)


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def bench(args):
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = MambaLM(args.vocab, args.d_model, args.n_layer, args.d_state)
    optimizer = adamw(model, 1e-4)
    seconds, losses = [], []
    for step in range(args.warmup + args.steps):
        ids = torch.randint(args.vocab, (args.batch, args.seq_len + 1))
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=False)
        loss = model(ids[:, :-1], ids[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        elapsed = time.perf_counter() - start
        losses.append(loss.item())
        if step >= args.warmup:
            seconds.append(elapsed)
        if not args.json:
            print(f"step {step}{' (warm-up)' if step < args.warmup else ''}: loss {loss.item():.4f}, {elapsed:.2f} s",
                  file=sys.stderr)
    mean = sum(seconds) / len(seconds)
    tokens = args.batch * args.seq_len
    result = {
        "engine": "pytorch", "torch": torch.__version__, "threads": args.threads,
        "d_model": args.d_model, "n_layer": args.n_layer, "vocab": args.vocab, "d_state": args.d_state,
        "batch": args.batch, "seq_len": args.seq_len, "steps": args.steps, "warmup_steps": args.warmup,
        "parameters": sum(p.numel() for p in model.parameters()),
        "tok_s": tokens / mean, "ms_per_step": mean * 1e3, "samples_tok_s": [tokens / s for s in seconds],
        "peak_rss_mib": peak_rss_mib(), "loss_first": losses[0], "loss_last": losses[-1],
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"pytorch {torch.__version__}, {args.threads} threads: {result['parameters'] / 1e6:.1f} M parameters, "
              f"batch {args.batch} x {args.seq_len}: {result['tok_s']:.1f} tokens/s, {mean * 1e3:.0f} ms/step, "
              f"peak RSS {result['peak_rss_mib']:.0f} MiB")


def read_safetensors(path):
    """name -> tensor, from the file format (8-byte header length, JSON header, raw data)."""
    dtypes = {"F32": torch.float32, "I64": torch.int64}
    with open(path, "rb") as f:
        data = f.read()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_len])
    body = data[8 + header_len:]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        raw = bytearray(body[begin:end])
        tensors[name] = torch.frombuffer(raw, dtype=dtypes[info["dtype"]]).reshape(info["shape"])
    return tensors


def check(folder):
    with open(f"{folder}/config.json") as f:
        config = json.load(f)
    model = MambaLM(config["vocab_size"], config["hidden_size"], config["num_hidden_layers"], config["state_size"],
                    config["conv_kernel"], config["layer_norm_epsilon"])
    names = dict(model.named_parameters())

    def ours(hf_name):  # HF's backbone.layers.0.mixer.in_proj.weight is our layers.0.in_proj.weight
        return hf_name.removeprefix("backbone.").replace("mixer.", "")

    weights = read_safetensors(f"{folder}/model.safetensors")
    with torch.no_grad():
        for name, tensor in weights.items():
            names[ours(name)].copy_(tensor)
    reference = read_safetensors(f"{folder}/reference.safetensors")
    ids = reference["input_ids"]
    loss = model(ids[:, :-1], ids[:, 1:])
    loss.backward()
    worst = max((names[ours(n.removeprefix("grad."))].grad - g).abs().max().item()
                for n, g in reference.items() if n.startswith("grad."))
    loss_diff = abs(loss.item() - reference["loss"].item())
    print(f"check {folder}: loss {loss.item():.6f} (reference {reference['loss'].item():.6f}, |diff| {loss_diff:.2e}), "
          f"max |grad diff| {worst:.2e} over {len(names)} tensors")
    return 0 if loss_diff <= 1e-5 and worst <= 1e-5 else 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--n-layer", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--d-state", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=2, help="timed steps")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="one line of JSON")
    parser.add_argument("--check", metavar="DIR", help="compare loss and gradients with an HF fixture folder")
    args = parser.parse_args()
    if args.check:
        return check(args.check)
    if min(args.d_model, args.n_layer, args.vocab, args.d_state, args.batch, args.seq_len, args.steps) < 1:
        parser.error("every size and --steps must be at least 1")
    bench(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
