"""Max-pooled MLM head: max_i l[i, j] over a document's tokens without keeping the (B, L, V) logits.

SPLADE-doc needs, per document and vocabulary term, only the largest logit over the document's
tokens. The straightforward head materialises all B x L x V logits (1 GB at 32 x 256 x 30,522 in
fp32), runs the activation over them and keeps them for the backward pass. Here:

- forward: the projection runs tile by tile (a few thousand tokens x a few thousand terms, so a
  tile stays in cache) and only the running max survives; with `precision="bf16"` the tiles run in
  bf16 and the terms that can be non-zero after the activation are recomputed exactly in fp32;
- backward: the gradient of a max flows only to its argmax token, and only (document, term) pairs
  with a non-zero upstream gradient need it (relu and log-relu activations zero every term with a
  non-positive logit), so the argmax is recovered for those pairs alone, from a (L, K) product per
  document instead of a second and third full vocabulary GEMM.

The activation is applied after the max by the caller: every registered activation is monotone.
"""

import torch

PRECISIONS = ("auto", "fp32", "bf16")

# |bf16 GEMM logit - exact logit| <= error * ||h|| * ||w||, per token and term: inputs rounded to bf16
# (2u + u^2), fp32 accumulation (128 * 2^-24) and the bf16 output (u), ~3.02u in all, u = 2^-8 being
# bf16's unit roundoff. CPU GEMMs (oneDNN) accumulate in fp32: 4u. GPUs may round split-K partial
# sums to bf16 (torch's allow_bf16_reduced_precision_reduction): 8u.
_BF16_ERROR = {"cpu": 4 * 2.0**-8}
_BF16_ERROR_OTHER = 8 * 2.0**-8

# Tile sizes (tokens, vocabulary terms), measured best on a 2-core AMX CPU (2 MiB L2 per core): fp32
# 1024 x 2048 at 256 GFLOP/s, bf16 4096 x 512 at 760 (the max-reduction, not the GEMM, bounds both).
_TILES = {("cpu", torch.float32): (1024, 2048), ("cpu", torch.bfloat16): (4096, 512)}
_GPU_TILE = (8192, 32768)


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 GEMMs run natively (and so faster than fp32) on this device."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":  # AMX or AVX512-BF16; without them bf16 is emulated, ~25x slower than fp32
        probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # private torch API: absent means no
        return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)
    return False


def search_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype of the vocabulary GEMM, None for the features' own: "auto" takes bf16 on CPUs where it is
    native, fp32 elsewhere. On an H100 (benchmarks/gpu_check.py) the fp32 GEMM is already cheap and the
    per-document fp32 recompute of bf16 candidates made the bf16 head slower (forward 6.9 vs 2.5 ms at 32 x 256).

    Results are exact in the features' dtype either way (see _MaxPooledLogits.forward).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"head precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        precision = "bf16" if device.type == "cpu" and native_bf16(device) else "fp32"
    return torch.bfloat16 if precision == "bf16" else None


def _tile(device: torch.device, dtype: torch.dtype) -> tuple[int, int]:
    return _TILES.get((device.type, dtype), _GPU_TILE)


def _tiled_max(features: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """max over tokens of features @ weight.T, tile by tile, in the inputs' dtype.

    features: (B, L, H) with padding rows already neutralised; weight: (V, H). Returns (B, V).
    """
    batch, length, hidden = features.shape
    vocab = weight.shape[0]
    tile_tokens, tile_terms = _tile(features.device, features.dtype)
    docs_per_tile = max(1, tile_tokens // length)
    out = features.new_empty(batch, vocab)
    for b0 in range(0, batch, docs_per_tile):
        rows = features[b0 : b0 + docs_per_tile].reshape(-1, hidden)  # (b * L, H)
        for v0 in range(0, vocab, tile_terms):
            logits = rows @ weight[v0 : v0 + tile_terms].T  # (b * L, v)
            out[b0 : b0 + docs_per_tile, v0 : v0 + tile_terms] = logits.view(-1, length, logits.shape[1]).amax(1)
    return out


def _exact_max(features: torch.Tensor, token_mask: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """One document's fp32 logits for a few terms, masked: (L, H), (L,), (K, H) -> (L, K)."""
    logits = features @ weight.to(features.dtype).T  # (L, K)
    return logits.masked_fill_(~token_mask.unsqueeze(1), float("-inf"))


class _MaxPooledLogits(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features, weight, token_mask, bias, dtype):
        # features (B, L, H) fp32 or fp64, weight (V, H), token_mask (B, L) bool, bias (V,) or None
        batch, exact = features.shape[0], features.dtype
        dtype = dtype or exact
        with torch.autocast(features.device.type, enabled=False):  # the dtype is chosen here, explicitly
            # Padding rows repeat the document's first real token: they can tie with it, never beat it.
            first = token_mask.int().argmax(1)  # (B,)
            pad_free = torch.where(
                token_mask.unsqueeze(-1), features, features[torch.arange(batch), first].unsqueeze(1)
            )
            max_logits = _tiled_max(pad_free.to(dtype), weight.to(dtype)).to(exact)  # (B, V)
            if dtype != exact:
                # Only terms whose logit may be positive after the bias survive the activation:
                # recompute those exactly so the document vector is not bf16-rounded.
                row_norm = (features.norm(dim=-1) * token_mask).amax(1, keepdim=True)  # (B, 1)
                error = _BF16_ERROR.get(features.device.type, _BF16_ERROR_OTHER)
                margin = error * row_norm * weight.to(exact).norm(dim=-1)  # (B, V)
                shifted = max_logits if bias is None else max_logits + bias
                candidates = shifted + margin > 0  # (B, V)
                for b in range(batch):
                    terms = candidates[b].nonzero().squeeze(1)  # (K,)
                    max_logits[b, terms] = _exact_max(features[b], token_mask[b], weight[terms]).amax(0)
        ctx.save_for_backward(features, weight, token_mask)
        return max_logits

    @staticmethod
    def backward(ctx, grad):
        # grad (B, V): d loss / d max_logits, non-zero only where the activation was active
        features, weight, token_mask = ctx.saved_tensors
        need_features, need_weight = ctx.needs_input_grad[:2]
        grad_features = torch.zeros_like(features) if need_features else None
        grad_weight = torch.zeros_like(weight) if need_weight else None
        with torch.autocast(features.device.type, enabled=False):
            for b in range(grad.shape[0]):
                terms = grad[b].nonzero().squeeze(1)  # (K,)
                if terms.numel() == 0:
                    continue
                term_grad = grad[b, terms].unsqueeze(1).to(features.dtype)  # (K, 1)
                winner = _exact_max(features[b], token_mask[b], weight[terms]).argmax(0)  # (K,) token of each max
                if need_features:
                    grad_features[b].index_add_(0, winner, term_grad * weight[terms].to(features.dtype))
                if need_weight:
                    grad_weight.index_add_(0, terms, (term_grad * features[b, winner]).to(weight.dtype))
        return grad_features, grad_weight, None, None, None


def max_pooled_logits(
    features: torch.Tensor,
    attention_mask: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    precision: str = "auto",
) -> torch.Tensor:
    """max_i (features[i] @ weight.T + bias) over each document's non-padding tokens.

    features: (B, L, H), attention_mask: (B, L), weight: (V, H), bias: (V,). Returns (B, V) fp32.
    Values are exact to fp32 (fp64 for fp64 features) wherever they are positive, whatever the
    precision; with bf16, non-positive values may be bf16-rounded, which no relu-family activation sees.
    """
    dtype = search_dtype(precision, features.device)
    if features.dtype != torch.float64:
        features = features.float()  # bf16 under autocast: the head's exact dtype is fp32
    bias_for_search = None if bias is None else bias.detach().to(features.dtype)
    max_logits = _MaxPooledLogits.apply(features, weight, attention_mask.bool(), bias_for_search, dtype)
    return max_logits if bias is None else max_logits + bias  # max_i(l + b) = max_i l + b


def reference_max_logits(
    features: torch.Tensor, attention_mask: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """The straightforward head, the definition the fused one must match: (B, L, V) logits, masked max."""
    logits = features @ weight.T  # (B, L, V)
    if bias is not None:
        logits = logits + bias
    return logits.masked_fill(~attention_mask.bool().unsqueeze(-1), float("-inf")).amax(1)  # (B, V)
