"""Checks and measures the fused max-pooled MLM head (src.model.heads) on a GPU: exactness, gradients, speed, memory.

Run (repository root): `python benchmarks/gpu_check.py --out DIR [--device cuda] [--quick] [--model PATH]`.
Writes DIR/gpu_check.json (rewritten after every case, so a killed run leaves what it had) and prints a
summary. Exit code 1 if any exactness, bound or gradient check fails, 2 if the device is unusable.
`--device cpu --quick` runs the same checks on small shapes in well under a minute (a smoke test).

Imports from the project only src.model.heads and src.model.activations (plus src.model.encoders.mlm_features for
--model, which needs only torch and transformers): no hydra, omegaconf, beir or bm25s.

Synthetic heads (no weights needed): features torch.randn (B, L, H) scaled to a row norm of 45 (splade-tiny's
last layer measures ~45), decoder weight randn * 0.05 (splade-tiny: 0.06), and a per-term bias of spread
0.5 x the per-token logit std, shifted so that about `--active-frac` (default 1%, ~300 terms; splade-tiny
activates 60-800 per document) of the (document, term) maxima are positive, as in a trained SPLADE model.
Random features would otherwise make every term positive, which no real model does and which would make the
head recompute and back-propagate the whole vocabulary. Document lengths vary (one full, one of 1 token, one
left-padded), and padding rows hold loud garbage (std 100) that must never win a max nor get a gradient.

1. exact/*: fused forward vs `reference_max_logits` in fp32 on the same inputs: all values for fp32, the
   positive values (what relu-family activations see) for bf16; same tolerances as tests/test_heads.py
   (rtol 1e-5, atol 1e-5). Shapes (32, 256, 128, 30522) splade-tiny and (32, 256, 768, 30522) BERT-base, plus a
   dense variant (30% active). Also records the error of each against fp64 and how many terms lie within
   the bf16 margin above zero (the ones a too-small margin would drop).
   bound/*: worst |bf16 GEMM logit - exact logit| / (||h|| ||w||) at the head's own GEMM tile shape, in units
   of u = 2^-8, against the margin the head uses (8u on CUDA, 4u on CPU), on random, outlier-dimension and
   weight-aligned features (and real features with --model).
2. grad/*: d loss / d (features, weight, bias) of sum(upstream * log1p(relu(head))) vs the reference
   (rtol 1e-4, atol 1e-5 as the real-model test), padding rows' gradient exactly zero; autocast/*: the head
   under torch.autocast(bf16) gives the same values and gradients as without.
3. bench/*: forward-only (no_grad) docs/s and forward+backward step time, median of reps after warm-up, and
   peak memory above the inputs (CUDA), for fused fp32, fused bf16 and the reference, at 32 x 256 for both
   widths and 128 x 256 at H = 768; plus the bf16 tiled GEMM search alone (the rest of the fused time is its
   per-document Python loops). Ratios fused / reference.
4. model/*: with --model (an AutoModelForMaskedLM folder), 256 documents (--texts file, one per line, or random
   tokens) through the real model: fused head vs the HF logits' masked max, values and weight gradients, the
   bf16 bound on real features, and encoding docs/s body included.
info/tf32 (CUDA): the fp32 and bf16 heads with TF32 matmuls allowed vs the true fp32 reference: not checked,
recorded, since Lightning and users often set torch.set_float32_matmul_precision("high").
"""

import argparse
import math
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python benchmarks/gpu_check.py`: the root holds benchmarks/ and src/
    sys.path.insert(0, str(ROOT))

from benchmarks import harness
from src.model import heads
from src.model.activations import get_activation

U = 2.0**-8  # bf16 unit roundoff
FEATURE_NORM = 45.0
WEIGHT_STD = 0.05
PAD_STD = 100.0
VALUE_TOL = {"rtol": 1e-5, "atol": 1e-5}  # tests/test_heads.py
GRAD_TOL = {"rtol": 1e-4, "atol": 1e-5}  # tests/test_heads.py, real-model weight gradients
LOG1 = get_activation("log1")


def log(msg: str) -> None:
    print(msg, flush=True)


class Run:
    """Accumulates results and rewrites the JSON after each case."""

    def __init__(self, out: Path, meta: dict):
        self.path = out / "gpu_check.json"
        self.started = time.perf_counter()
        self.data: dict[str, Any] = {"meta": meta, "checks": [], "bench": [], "model": None, "info": []}

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def check(self, name: str, ok: bool, **numbers) -> None:
        numbers = {k: harness.json_number(v) for k, v in numbers.items()}
        self.data["checks"].append({"name": name, "pass": bool(ok), **numbers})
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in numbers.items() if not isinstance(v, (list, dict)))
        log(f"  [{'PASS' if ok else 'FAIL'}] {name}: {shown}")
        self.save()

    def error(self, name: str, exc: BaseException) -> None:
        self.data["checks"].append(
            {"name": name, "pass": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        )
        log(f"  [FAIL] {name}: raised {type(exc).__name__}: {exc}")
        log(traceback.format_exc())
        self.save()

    def save(self) -> None:
        failures = [c["name"] for c in self.data["checks"] if not c["pass"]]
        self.data["summary"] = {
            "checks": len(self.data["checks"]),
            "failed": len(failures),
            "failures": failures,
            "elapsed_s": round(self.elapsed(), 2),
        }
        harness.write_result(self.path, self.data)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def make_mask(batch: int, length: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """(B, L) long: doc 0 full, doc 1 a single token, the last doc left-padded, the rest random lengths."""
    lengths = torch.randint(max(1, length // 8), length + 1, (batch,), generator=gen, device=device)
    lengths[0] = length
    if batch > 1:
        lengths[1] = 1
    positions = torch.arange(length, device=device)
    mask = (positions < lengths.unsqueeze(1)).long()
    if batch > 2:
        mask[-1] = mask[-1].flip(0)  # left padding
    return mask


def make_features(
    batch: int, length: int, hidden: int, gen: torch.Generator, device: torch.device, kind: str = "randn"
) -> torch.Tensor:
    features = torch.randn(batch, length, hidden, generator=gen, device=device)
    if kind == "outlier":  # BERT-like: a few dimensions far larger than the rest
        dims = torch.randperm(hidden, generator=gen, device=device)[:4]
        features[..., dims] *= 12.0
    return features * (FEATURE_NORM / features.norm(dim=-1, keepdim=True).mean())


def make_head(
    batch: int, length: int, hidden: int, vocab: int, active_frac: float, seed: int, device: torch.device
) -> dict[str, torch.Tensor]:
    gen = torch.Generator(device=device).manual_seed(seed)
    features = make_features(batch, length, hidden, gen, device)
    weight = torch.randn(vocab, hidden, generator=gen, device=device) * WEIGHT_STD
    mask = make_mask(batch, length, gen, device)
    pad = ~mask.bool()
    features[pad] = torch.randn(int(pad.sum()), hidden, generator=gen, device=device) * PAD_STD
    # bias: spread like a real MLM bias, shifted so that ~active_frac of the calibration maxima are positive
    logit_std = FEATURE_NORM * WEIGHT_STD
    bias = torch.randn(vocab, generator=gen, device=device) * 0.5 * logit_std
    calib = slice(0, min(batch, 4))
    with torch.no_grad():
        maxima = heads.reference_max_logits(features[calib], mask[calib], weight, bias).flatten()
    k = max(1, min(maxima.numel(), round((1 - active_frac) * maxima.numel())))
    bias -= maxima.kthvalue(k).values
    upstream = torch.randn(batch, vocab, generator=gen, device=device)
    return {"features": features, "mask": mask, "weight": weight, "bias": bias, "upstream": upstream}


def fused(precision: str) -> Callable:
    def head(features, mask, weight, bias):
        return heads.max_pooled_logits(features, mask, weight, bias, precision)

    head.__name__ = f"fused_{precision}"
    return head


def reference(features, mask, weight, bias):
    return heads.reference_max_logits(features, mask, weight, bias)


# ---------------------------------------------------------------------------------------------- comparisons


def compare(actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float) -> dict:
    actual, expected = actual.detach().double(), expected.detach().double()
    diff = (actual - expected).abs()
    finite = torch.isfinite(expected)
    same_nonfinite = bool((torch.isfinite(actual) == finite).all()) and bool(
        (actual[~finite] == expected[~finite]).all()
    )
    diff = torch.where(finite, diff, torch.zeros_like(diff))
    tol_use = (diff / (atol + rtol * expected.abs().where(finite, torch.zeros_like(diff)))).max().item()
    nonzero = finite & (expected != 0)
    rel = (diff[nonzero] / expected[nonzero].abs()).max().item() if nonzero.any() else 0.0
    return {
        "ok": same_nonfinite and tol_use <= 1.0,
        "max_abs_err": diff.max().item(),
        "max_rel_err": rel,
        "tol_use": tol_use,  # max |a - e| / (atol + rtol |e|): <= 1 passes
        "bitwise_equal_frac": (actual == expected).double().mean().item(),
    }


def check_exact(run: Run, name: str, data: dict, precision: str, device: torch.device) -> None:
    f, m, w, b = data["features"], data["mask"], data["weight"], data["bias"]
    with torch.no_grad():
        ref = heads.reference_max_logits(f, m, w, b)
        out = heads.max_pooled_logits(f, m, w, b, precision)
        truth = heads.reference_max_logits(f.double(), m, w.double(), b.double())
    harness.synchronize(device)
    if precision == "fp32":
        cmp = compare(out, ref, **VALUE_TOL)
    else:  # exact where positive; non-positive values may be bf16-rounded but must stay non-positive
        cmp = compare(torch.relu(out), torch.relu(ref), **VALUE_TOL)
    active = ref > 0
    margin_const = heads._BF16_ERROR.get(device.type, heads._BF16_ERROR_OTHER)
    row_norm = (f.norm(dim=-1) * m.bool()).amax(1, keepdim=True)
    margin = margin_const * row_norm * w.norm(dim=-1)
    near_zero = active & (ref < margin)  # positive terms a too-small bf16 margin could drop
    sign_ok = bool(((out > 0) == active).all())
    run.check(
        f"exact/{name}/{precision}",
        cmp["ok"] and sign_ok,
        **{k: v for k, v in cmp.items() if k != "ok"},
        sign_agrees=sign_ok,
        active_per_doc=active.sum(1).double().mean().item(),
        active_near_zero=int(near_zero.sum()),
        fused_err_vs_fp64=(torch.relu(out).double() - torch.relu(truth)).abs().max().item(),
        reference_err_vs_fp64=(torch.relu(ref).double() - torch.relu(truth)).abs().max().item(),
    )


def check_bound(run: Run, name: str, features: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor) -> None:
    """Worst bf16-GEMM error over ||h|| ||w||, at the GEMM shape the head runs (its tile), real tokens only."""
    device = features.device
    length = features.shape[1]
    tile_tokens, tile_terms = heads._tile(device, torch.bfloat16)
    docs = max(1, tile_tokens // length)
    rows = features[:docs].reshape(-1, features.shape[-1])  # padding rows included: the GEMM shape
    real = mask[:docs].reshape(-1).bool()
    rows_bf = rows.bfloat16()
    rows64 = rows[real].double()
    row_norm = rows64.norm(dim=1, keepdim=True)
    worst = 0.0
    chunk = 8192
    with torch.no_grad():
        for v0 in range(0, weight.shape[0], tile_terms):
            w_tile = weight[v0 : v0 + tile_terms]
            rounded = (rows_bf @ w_tile.bfloat16().T)[real]  # (T, v) bf16, as in heads._tiled_max
            for c0 in range(0, w_tile.shape[0], chunk):
                w64 = w_tile[c0 : c0 + chunk].double()
                exact = rows64 @ w64.T
                err = (rounded[:, c0 : c0 + chunk].double() - exact).abs() / (row_norm * w64.norm(dim=1))
                worst = max(worst, err.max().item())
            del rounded
    margin = heads._BF16_ERROR.get(device.type, heads._BF16_ERROR_OTHER)
    run.check(
        f"bound/{name}",
        worst <= margin,
        worst_over_u=worst / U,
        margin_over_u=margin / U,
        tokens=int(real.sum()),
        gemm_rows=rows.shape[0],
        gemm_terms=min(tile_terms, weight.shape[0]),
    )


def check_grad(run: Run, name: str, data: dict, precision: str, device: torch.device, autocast: bool = False) -> None:
    f, m, w, b, up = (data[k] for k in ("features", "mask", "weight", "bias", "upstream"))
    results = []
    heads_to_run = [fused(precision), reference] if not autocast else [fused(precision), fused(precision)]
    for i, head in enumerate(heads_to_run):
        leaves = [t.clone().requires_grad_() for t in (f, w, b)]
        ctx = torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast and i == 0)
        with ctx:
            out = LOG1(head(leaves[0], m, leaves[1], leaves[2]))
        (out * up).sum().backward()
        results.append([out.detach(), *(t.grad for t in leaves)])
    harness.synchronize(device)
    (out_a, *grads_a), (out_b, *grads_b) = results
    parts = {"values": compare(out_a, out_b, **VALUE_TOL)}
    for part, ga, gb in zip(("features", "weight", "bias"), grads_a, grads_b, strict=True):
        parts[part] = compare(ga, gb, **GRAD_TOL)
    pad_grad = grads_a[0][~m.bool()].abs().max().item() if (~m.bool()).any() else 0.0
    ok = all(p["ok"] for p in parts.values()) and pad_grad == 0.0
    numbers = {}
    for part, cmp in parts.items():
        numbers[f"{part}_max_abs_err"] = cmp["max_abs_err"]
        numbers[f"{part}_tol_use"] = cmp["tol_use"]
    prefix = "autocast" if autocast else "grad"
    run.check(f"{prefix}/{name}/{precision}", ok, **numbers, padding_grad_max=pad_grad)


def check_tf32(run: Run, name: str, data: dict) -> None:
    """Info only: the heads with TF32 matmuls allowed, vs the true fp32 reference."""
    f, m, w, b = data["features"], data["mask"], data["weight"], data["bias"]
    with torch.no_grad():
        ref = heads.reference_max_logits(f, m, w, b)
        previous = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("high")  # what Lightning suggests: TF32 for fp32 matmuls
        try:
            outs = {p: heads.max_pooled_logits(f, m, w, b, p) for p in ("fp32", "bf16")}
            ref_tf32 = heads.reference_max_logits(f, m, w, b)
        finally:
            torch.set_float32_matmul_precision(previous)
    entry: dict[str, Any] = {"name": f"info/tf32/{name}", "restored": torch.get_float32_matmul_precision()}
    for label, out in {**{f"fused_{p}": o for p, o in outs.items()}, "reference_tf32": ref_tf32}.items():
        cmp = compare(torch.relu(out), torch.relu(ref), **VALUE_TOL)
        entry[label] = {k: harness.json_number(v) for k, v in cmp.items()}
    run.data["info"].append(entry)
    log(
        f"  [info] tf32/{name}: "
        + ", ".join(f"{k} max_rel_err={v['max_rel_err']:.3g}" for k, v in entry.items() if isinstance(v, dict))
    )
    run.save()


# ---------------------------------------------------------------------------------------------- benchmarks


def bench_case(run: Run, shape: str, data: dict, impl: str, device: torch.device, warmup: int, reps: int) -> dict:
    f, m, w, b, up = (data[k] for k in ("features", "mask", "weight", "bias", "upstream"))
    head = reference if impl == "reference" else fused(impl.removeprefix("fused_"))
    leaves = [t.clone().requires_grad_() for t in (f, w, b)]

    def forward():
        with torch.no_grad():
            return LOG1(head(f, m, w, b))

    def step():
        for t in leaves:
            t.grad = None
        out = LOG1(head(leaves[0], m, leaves[1], leaves[2]))
        (out * up).sum().backward()

    row: dict[str, Any] = {
        "shape": shape,
        "impl": impl,
        "batch": f.shape[0],
        "length": f.shape[1],
        "hidden": f.shape[2],
        "vocab": w.shape[0],
    }
    try:
        fwd = harness.repeated(forward, device, warmup, reps)
        row["fwd_ms"] = statistics.median(fwd) * 1e3
        row["fwd_ms_min"] = min(fwd) * 1e3
        row["docs_per_s"] = f.shape[0] / statistics.median(fwd)
        row["fwd_peak_extra_mib"], row["fwd_peak_mib"] = harness.cuda_peak_mib(forward, device)
        stp = harness.repeated(step, device, warmup, reps)
        row["step_ms"] = statistics.median(stp) * 1e3
        row["step_ms_min"] = min(stp) * 1e3
        for t in leaves:  # so the peak above the inputs counts this step's gradients, not the last one's
            t.grad = None
        row["step_peak_extra_mib"], row["step_peak_mib"] = harness.cuda_peak_mib(step, device)
        if impl == "fused_bf16":  # the tiled bf16 GEMM + max alone: the rest is the per-document loops
            pad_free = f.bfloat16()
            wb = w.bfloat16()
            search = harness.repeated(lambda: heads._tiled_max(pad_free, wb), device, warmup, reps)
            row["search_only_ms"] = statistics.median(search) * 1e3
    except torch.cuda.OutOfMemoryError as exc:
        row["error"] = f"OutOfMemoryError: {str(exc)[:200]}"
    except Exception as exc:  # recorded, not fatal: benchmarks are not checks
        row["error"] = f"{type(exc).__name__}: {exc}"
        row["traceback"] = traceback.format_exc()
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    row = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}
    run.data["bench"].append(row)
    run.save()
    if "error" in row:
        log(f"  bench {shape} {impl}: ERROR {row['error']}")
    else:
        search = f", search only {row['search_only_ms']:.2f} ms" if "search_only_ms" in row else ""
        mem = (
            ""
            if row["fwd_peak_extra_mib"] is None
            else (f", peak +{row['fwd_peak_extra_mib']:.0f} / +{row['step_peak_extra_mib']:.0f} MiB")
        )
        log(
            f"  bench {shape} {impl}: fwd {row['fwd_ms']:.2f} ms ({row['docs_per_s']:.0f} docs/s), "
            f"step {row['step_ms']:.2f} ms{mem}{search}"
        )
    return row


def add_ratios(rows: list[dict]) -> None:
    by_shape: dict[str, dict[str, dict]] = {}
    for row in rows:
        by_shape.setdefault(row["shape"], {})[row["impl"]] = row
    for impls in by_shape.values():
        ref = impls.get("reference")
        for impl, row in impls.items():
            if impl == "reference" or ref is None or "error" in ref or "error" in row:
                continue
            row["fwd_time_over_reference"] = round(row["fwd_ms"] / ref["fwd_ms"], 4)
            row["step_time_over_reference"] = round(row["step_ms"] / ref["step_ms"], 4)
            if row.get("fwd_peak_extra_mib") is not None and ref.get("fwd_peak_extra_mib"):
                row["fwd_mem_over_reference"] = round(row["fwd_peak_extra_mib"] / ref["fwd_peak_extra_mib"], 4)
                row["step_mem_over_reference"] = round(row["step_peak_extra_mib"] / ref["step_peak_extra_mib"], 4)


# ---------------------------------------------------------------------------------------------- real model


def run_model(run: Run, args, device: torch.device, num_docs: int, batch: int, length: int) -> None:
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from src.model.encoders import mlm_features

    info: dict[str, Any] = {"path": str(args.model)}
    run.data["model"] = info
    mlm = AutoModelForMaskedLM.from_pretrained(args.model).to(device).eval()
    projection = mlm.get_output_embeddings()
    vocab = projection.weight.shape[0]
    info.update(type=type(mlm).__name__, hidden=projection.weight.shape[1], vocab=vocab)
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    texts = None
    if args.texts:
        texts = [t for t in Path(args.texts).read_text().splitlines() if t.strip()][:num_docs]
    batches = []
    if texts:
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        for i in range(0, len(texts), batch):
            enc = tokenizer(texts[i : i + batch], padding=True, truncation=True, max_length=length, return_tensors="pt")
            batches.append((enc["input_ids"].to(device), enc["attention_mask"].to(device)))
        info["inputs"] = f"{len(texts)} texts from {args.texts}"
    else:  # random word-piece ids (skipping the ~1000 special/unused ids of BERT vocabularies), varied lengths
        for i in range(0, num_docs, batch):
            n = min(batch, num_docs - i)
            ids = torch.randint(1000, vocab, (n, length), generator=gen)
            lengths = torch.randint(length // 8, length + 1, (n,), generator=gen)
            mask = (torch.arange(length) < lengths.unsqueeze(1)).long()
            ids[:, 0] = 101 if vocab > 102 else 0
            ids = ids.masked_fill(mask == 0, 0)
            batches.append((ids.to(device), mask.to(device)))
        info["inputs"] = f"{num_docs} random-token documents"
    log(f"  model {info['type']} H={info['hidden']} V={vocab}: {info['inputs']}")

    # values on every batch, weight gradients on the first; fused vs the HF logits' masked max
    for precision in ("fp32", "bf16"):
        worst: dict[str, float] = {"tol_use": 0.0, "max_abs_err": 0.0}
        active = []
        ok = True
        for ids, mask in batches:
            with torch.no_grad():
                feats = mlm_features(mlm, ids, mask)
                out = LOG1(heads.max_pooled_logits(feats, mask, projection.weight, projection.bias, precision))
                logits = mlm(input_ids=ids, attention_mask=mask).logits
                ref = LOG1(logits.masked_fill(~mask.bool().unsqueeze(-1), float("-inf")).amax(1))
            cmp = compare(out, ref, **VALUE_TOL)
            ok &= cmp["ok"]
            worst = {k: max(worst[k], cmp[k]) for k in worst}
            active.append((out > 0).sum(1).double().mean().item())
            del logits
        run.check(f"model/values/{precision}", ok, **worst, active_per_doc=statistics.mean(active))

        ids, mask = batches[0]
        up = torch.randn(ids.shape[0], vocab, generator=gen).to(device)
        grads = []
        for use_fused in (True, False):
            mlm.zero_grad(set_to_none=True)
            if use_fused:
                feats = mlm_features(mlm, ids, mask)
                out = LOG1(heads.max_pooled_logits(feats, mask, projection.weight, projection.bias, precision))
            else:
                logits = mlm(input_ids=ids, attention_mask=mask).logits
                out = LOG1(logits.masked_fill(~mask.bool().unsqueeze(-1), float("-inf")).amax(1))
            (out * up).sum().backward()
            grads.append(projection.weight.grad.clone())
        mlm.zero_grad(set_to_none=True)
        # end to end, the decoder weight is tied to the input embeddings: its gradient also collects the body's
        # backward of the features' gradient, where rounding differences grow; so a normwise absolute tolerance
        scale = grads[1].abs().max().item()
        e2e_tol = {"rtol": GRAD_TOL["rtol"], "atol": max(GRAD_TOL["atol"], 1e-5 * scale)}
        cmp = compare(grads[0], grads[1], **e2e_tol)
        run.check(
            f"model/weight_grad_e2e/{precision}",
            cmp["ok"],
            max_abs_err=cmp["max_abs_err"],
            tol_use=cmp["tol_use"],
            ref_max_abs=scale,
            atol=e2e_tol["atol"],
        )
        # the head alone on the real features: fused vs reference, strict tolerances
        with torch.no_grad():
            feats = mlm_features(mlm, ids, mask)
        data = {"features": feats, "mask": mask, "weight": projection.weight.detach(), "upstream": up}
        data["bias"] = projection.bias.detach() if projection.bias is not None else torch.zeros(vocab, device=device)
        check_grad(run, "model_features", data, precision, device)

    with torch.no_grad():
        ids, mask = batches[0]
        feats = mlm_features(mlm, ids, mask)
    check_bound(run, "model_features", feats, mask, projection.weight.detach())

    # encoding throughput, body included
    def encode(kind: str) -> None:
        with torch.no_grad():
            for ids, mask in batches:
                if kind == "reference":
                    logits = mlm(input_ids=ids, attention_mask=mask).logits
                    LOG1(logits.masked_fill(~mask.bool().unsqueeze(-1), float("-inf")).amax(1))
                else:
                    feats = mlm_features(mlm, ids, mask)
                    LOG1(heads.max_pooled_logits(feats, mask, projection.weight, projection.bias, kind))

    docs = sum(ids.shape[0] for ids, _ in batches)
    enc_rows = {}
    for kind in ("fp32", "bf16", "reference"):
        times = harness.repeated(lambda kind=kind: encode(kind), device, 1, 3)
        enc_rows[kind] = docs / statistics.median(times)
    info["encode_docs_per_s"] = {k: round(v, 1) for k, v in enc_rows.items()}
    log("  model encode docs/s: " + ", ".join(f"{k} {v:.0f}" for k, v in enc_rows.items()))
    run.save()


# ---------------------------------------------------------------------------------------------- main


def _safe(get: Callable[[], Any]) -> Any:
    """A setting for the record: its value as a JSON-able scalar, or the error reading it raised."""
    try:
        value = get()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return value if isinstance(value, (bool, int, float, str, type(None))) else repr(value)


def environment(device: torch.device) -> dict:
    meta: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "argv": sys.argv,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "native_bf16": heads.native_bf16(device),
        "auto_search_dtype": str(heads.search_dtype("auto", device)),
        "bf16_margin_over_u": heads._BF16_ERROR.get(device.type, heads._BF16_ERROR_OTHER) / U,
        "tile_fp32": heads._tile(device, torch.float32),
        "tile_bf16": heads._tile(device, torch.bfloat16),
    }
    try:
        import transformers

        meta["transformers"] = transformers.__version__
    except ImportError:
        meta["transformers"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        meta.update(
            device_name=props.name,
            capability=f"{props.major}.{props.minor}",
            total_memory_gib=round(props.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            **{
                name: _safe(lambda name=name: getattr(torch.backends.cuda.matmul, name))
                for name in (
                    "allow_tf32",
                    "fp32_precision",
                    "allow_bf16_reduced_precision_reduction",
                    "allow_fp16_reduced_precision_reduction",
                )
            },
        )
    else:
        meta.update(device_name=platform.processor() or platform.machine(), threads=torch.get_num_threads())
    return meta


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="small shapes, few repetitions (CPU smoke test)")
    parser.add_argument("--model", help="a Hugging Face masked-LM folder for check 4 (skipped without)")
    parser.add_argument("--texts", help="with --model: a text file, one document per line (else random tokens)")
    parser.add_argument("--active-frac", type=float, default=0.01, help="share of positive (doc, term) maxima")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions per benchmark case")
    parser.add_argument("--budget-s", type=float, default=200.0, help="skip remaining benchmarks past this")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        run = Run(args.out, {"device": str(device), "torch": torch.__version__, "error": "CUDA not available"})
        run.save()
        log("CUDA not available")
        return 2
    if device.type == "cuda":
        if device.index is None:  # torch.cuda.set_device rejects a device without an index
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    meta = environment(device)
    meta.update(quick=args.quick, active_frac=args.active_frac, seed=args.seed)
    run = Run(args.out, meta)
    log("environment: " + ", ".join(f"{k}={v}" for k, v in meta.items() if k not in ("argv", "platform")))

    vocab = 8192 if args.quick else 30522
    batch, length = (4, 64) if args.quick else (32, 256)
    big_batch = 8 if args.quick else 128
    warmup, reps = (1, args.reps or 2) if args.quick else (3, args.reps or 10)
    shapes = {"tiny": (batch, length, 128, vocab), "base": (batch, length, 768, vocab)}

    # 1 + 2: exactness, bound, gradients --------------------------------------------------------------------
    for idx, (name, (b, seq, hidden, v)) in enumerate(shapes.items()):
        log(f"checks {name}: B={b} L={seq} H={hidden} V={v} active_frac={args.active_frac}")
        try:
            data = make_head(b, seq, hidden, v, args.active_frac, args.seed + idx, device)
        except Exception as exc:
            run.error(f"setup/{name}", exc)
            continue
        for precision in ("fp32", "bf16"):
            for label, check in (("exact", check_exact), ("grad", check_grad)):
                try:
                    check(run, name, data, precision, device)
                except Exception as exc:
                    run.error(f"{label}/{name}/{precision}", exc)
        for kind in ("randn", "outlier", "aligned"):
            try:
                gen = torch.Generator(device=device).manual_seed(args.seed + 100 + idx)
                feats = data["features"] if kind == "randn" else make_features(b, seq, hidden, gen, device, kind)
                if kind == "aligned":  # each token a multiple of some weight row plus noise: |logit| ~ ||h|| ||w||
                    rows = torch.randint(0, v, (b, seq), generator=gen, device=device)
                    feats = data["weight"][rows] * (FEATURE_NORM / (WEIGHT_STD * math.sqrt(hidden))) + 0.1 * feats
                check_bound(run, f"{name}/{kind}", feats, data["mask"], data["weight"])
            except Exception as exc:
                run.error(f"bound/{name}/{kind}", exc)
        if idx == 0:
            for precision in ("fp32", "bf16"):
                try:
                    check_grad(run, name, data, precision, device, autocast=True)
                except Exception as exc:
                    run.error(f"autocast/{name}/{precision}", exc)
        data = None
        if device.type == "cuda":
            torch.cuda.empty_cache()

    log("checks tiny_dense: 30% of the maxima positive")
    try:
        data = make_head(*shapes["tiny"], 0.3, args.seed + 7, device)
        for precision in ("fp32", "bf16"):
            check_exact(run, "tiny_dense", data, precision, device)
        check_grad(run, "tiny_dense", data, "bf16", device)
        data = None
    except Exception as exc:
        run.error("tiny_dense", exc)
    if device.type == "cuda":  # last among the checks: it flips a global setting (and restores it)
        try:
            check_tf32(run, "tiny", make_head(*shapes["tiny"], args.active_frac, args.seed, device))
        except Exception as exc:
            log(f"  [info] tf32 raised {exc!r}")

    # 3: benchmarks --------------------------------------------------------------------------------------------
    bench_shapes = {**shapes, "base_b128": (big_batch, length, 768, vocab)}
    for idx, (name, (b, seq, hidden, v)) in enumerate(bench_shapes.items()):
        if run.elapsed() > args.budget_s:
            log(f"bench {name}: skipped, past the {args.budget_s:.0f} s budget")
            run.data["bench"].append({"shape": name, "skipped": "time budget"})
            continue
        log(f"bench {name}: B={b} L={seq} H={hidden} V={v}")
        try:
            data = make_head(b, seq, hidden, v, args.active_frac, args.seed + 50 + idx, device)
        except Exception as exc:
            run.data["bench"].append({"shape": name, "error": f"setup: {type(exc).__name__}: {exc}"})
            log(f"  bench {name}: setup failed: {exc!r}")
            continue
        for impl in ("fused_fp32", "fused_bf16", "reference"):
            bench_case(run, name, data, impl, device, warmup, reps)
        data = None
        if device.type == "cuda":
            torch.cuda.empty_cache()
    add_ratios([r for r in run.data["bench"] if "impl" in r])
    run.save()

    # 4: real model --------------------------------------------------------------------------------------------
    if args.model:
        log(f"model: {args.model}")
        try:
            run_model(run, args, device, 32 if args.quick else 256, batch if args.quick else 32, length)
        except Exception as exc:
            run.error("model", exc)
    else:
        run.data["model"] = {"skipped": "no --model given"}
        log("model: skipped (no --model)")
    run.save()

    # summary --------------------------------------------------------------------------------------------------
    summary = run.data["summary"]
    log("")
    log(
        f"== {meta['device_name']} | torch {meta['torch']} | {summary['checks']} checks, {summary['failed']} failed "
        f"| {run.elapsed():.1f} s"
    )
    for name in summary["failures"]:
        log(f"   FAILED: {name}")
    log("| shape | impl | fwd ms | docs/s | step ms | fwd peak+ MiB | step peak+ MiB | fwd x ref | step x ref |")
    log("|---|---|---|---|---|---|---|---|---|")
    for r in run.data["bench"]:
        if "impl" not in r or "error" in r:
            continue
        log(
            f"| {r['shape']} | {r['impl']} | {r['fwd_ms']:.2f} | {r['docs_per_s']:.0f} | {r['step_ms']:.2f} | "
            f"{_fmt(r['fwd_peak_extra_mib'])} | {_fmt(r['step_peak_extra_mib'])} | "
            f"{_fmt(r.get('fwd_time_over_reference', '-'))} | {_fmt(r.get('step_time_over_reference', '-'))} |"
        )
    log(f"wrote {run.path}")
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
