"""What the student sees in training, per dataset of a prepared set: the README's "What the student sees".

    .venv/bin/python notebooks/what_the_student_sees.py .cache/prepared/<key> [--batches 30] [--model DIR]

Prints, for every group of the set, how often each teacher scores the judged positive above a mined negative;
then, over the first `--batches` training batches (the default recipe's order and N = 8), the combined target
(min-max per batch, x 20) and the untrained (or `--model`) student's scores: how often the target's and the
student's top document is the positive, the target's top probability, the spread of scores, and the scale that
would minimise each query's own KL relative to the one fitted for the whole batch (`loss.student_scale: fit`).
A dataset is told by its query ids (nfcorpus's start with PLAIN-); other sources count as "other".
"""

import argparse
import statistics
from collections import defaultdict
from pathlib import Path

import torch

from src.data.module import DistillationDataModule
from src.model.encoders import DocEncoder, IdfQueryEncoder, load_idf, load_tokenizer
from src.model.formats import model_folder
from src.model.losses.kl import fit_kl_scale
from src.teachers import combine


def dataset_of(query_id: str) -> str:
    return "nfcorpus" if query_id.startswith("PLAIN-") else "scifact" if query_id.isdigit() else "other"


@torch.no_grad()
def per_query_scales(student: torch.Tensor, probs: torch.Tensor, steps: int = 40) -> torch.Tensor:
    """(N,) the a_n > 0 minimising each query's KL(t_n || softmax(a_n s_n)) (bisection on log a_n)."""
    low, high = torch.full((len(student), 1), -9.0), torch.full((len(student), 1), 9.0)
    expected_teacher = (probs * student).sum(-1, keepdim=True)  # (N, 1)
    for _ in range(steps):
        mid = (low + high) / 2
        slope = (torch.softmax(mid.exp() * student, -1) * student).sum(-1, keepdim=True) - expected_teacher
        low, high = torch.where(slope < 0, mid, low), torch.where(slope < 0, high, mid)
    return ((low + high) / 2).exp().squeeze(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prepared", type=Path)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--model", default=None, help="a run dir or model folder; default: splade-tiny untrained")
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args()

    source = model_folder(args.model)
    tokenizer = load_tokenizer(source)
    data = DistillationDataModule(
        tokenizer, args.prepared, batch_size=8, max_length=args.max_length, query_max_length=64, seed=42
    )
    data.setup("fit")

    above: dict[tuple[str, str], list[float]] = defaultdict(list)
    for group in data.train_set:
        for teacher, scores in group.scores.items():
            share = sum(s < scores[0] for s in scores[1:]) / (len(scores) - 1)
            above[dataset_of(group.query_id), teacher].append(share)
    print("teacher scores the positive above a mined negative (share of negatives, mean over groups):")
    for (name, teacher), shares in sorted(above.items()):
        print(f"  {name:9s} {teacher:8s} {statistics.mean(shares):.2f}  ({len(shares)} groups)")

    encoder = DocEncoder.from_pretrained(source, "log1").eval()
    queries = IdfQueryEncoder(load_idf(args.prepared / "idf.json", tokenizer), tokenizer.all_special_ids)
    loader = data.train_dataloader()
    rows: dict[str, list[tuple[float, ...]]] = defaultdict(list)
    with torch.no_grad():
        for indices, _ in zip(loader.batch_sampler, range(args.batches), strict=False):
            groups = [data.train_set[i] for i in indices]
            batch = loader.collate_fn(groups)
            names = batch["teacher_names"]
            target = combine(dict(zip(names, batch["teacher_scores"].unbind(0), strict=True))) * 20  # (N, G)
            n, g = target.shape
            q = queries(batch["query_ids"], batch["query_mask"])  # (N, V)
            d = encoder(batch["doc_ids"], batch["doc_mask"]).view(n, g, -1)  # (N, G, V)
            student = torch.einsum("nv,ngv->ng", q, d)  # (N, G)
            probs = torch.softmax(target, -1)  # (N, G)
            ratio = per_query_scales(student, probs) / fit_kl_scale(student, probs)  # (N,)
            for i, group in enumerate(groups):
                rows[dataset_of(group.query_id)].append(
                    (
                        float(target[i].argmax() == 0),
                        float(student[i].argmax() == 0),
                        probs[i].max().item(),
                        (target[i].max() - target[i].min()).item(),
                        (student[i].max() - student[i].min()).item(),
                        ratio[i].item(),
                    )
                )
    print(f"\nover {args.batches} batches of 8 groups:")
    for name, values in sorted(rows.items()):
        top_t, top_s, prob, spread_t, spread_s, ratio = zip(*values, strict=True)
        deciles, med = statistics.quantiles(ratio, n=10), statistics.median
        print(
            f"  {name:9s} {len(values):4d} groups: top document = positive: target {statistics.mean(top_t):.2f},"
            f" student {statistics.mean(top_s):.2f}; target top probability (median) {med(prob):.2f};"
            f" score range (median) target {med(spread_t):.1f}, student {med(spread_s):.1f};"
            f" own best scale / batch's: median {med(ratio):.2f}, 10-90% {deciles[0]:.2f}-{deciles[-1]:.2f}"
        )


if __name__ == "__main__":
    main()
