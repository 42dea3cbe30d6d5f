"""Drift of a text model's inputs: the length of the texts and the tokens they use, against the training texts.

Three rows, in the same `DriftReport` (and so the same views, alerts and `model.degraded` events) as a
table's features:

- "text length (tokens)" and "text length (characters)": PSI over quantile bins of the training texts'
  lengths, and the two-sample KS test, as a numeric feature;
- "tokens": PSI of the share of each of the training texts' `top_tokens` commonest tokens, with one more
  bucket for every other token (rarer in training, or never seen there). Its `ks` is the largest change of
  one bucket's share, its p-value a chi-square test of the buckets with the *texts* as the sample size: the
  tokens of one text are not independent draws, so counting each token would call every window significant.

A row drifts when its PSI is over `DriftRule.text_psi_threshold` (0.25 by default, the usual PSI
convention for a significant shift) and its test's p-value under `ks_alpha / 3`; a row between
`text_warn_psi` (0.1) and that is a warning. `TextFindings` adds what is not a row: the share of the
window's tokens never seen in training (beside the same share between two halves of the training texts:
what is normal), and the empty, non-UTF-8 and cut-short texts counted on the way in.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from .drift import DriftReport, DriftRule, FeatureDrift, judge_predictions, measure_predictions
from .drift_stats import DEFAULT_BINS, bin_shares, chi2_goodness_of_fit, ks_two_sample, psi, quantile_edges
from .text_profile import EMPTY_HASHES, TextLimits, TextMeasure, as_text, token_hashes, tokens_of

TEXT_LENGTH = "text length (tokens)"
TEXT_CHARS = "text length (characters)"
TOKENS = "tokens"
RANKED_TEXT = "PSI: a text input's length and token rows, by their drift alone"
TOP_MOVED_TOKENS = 5


@dataclass(frozen=True)
class TextSamples:
    """Texts reduced to what drift compares: lengths per text, every token's hash, and the odd texts counted."""

    tokens: np.ndarray  # int64 [n]: tokens read per text
    chars: np.ndarray  # int64 [n]
    hashes: np.ndarray  # int64 [total tokens read]
    undecodable: int = 0
    truncated: int = 0

    def __len__(self) -> int:
        return len(self.tokens)

    @classmethod
    def of(cls, measures: list[TextMeasure]) -> TextSamples:
        return cls(
            np.fromiter((m.tokens for m in measures), dtype=np.int64, count=len(measures)),
            np.fromiter((m.chars for m in measures), dtype=np.int64, count=len(measures)),
            np.concatenate([m.hashes for m in measures]) if measures else EMPTY_HASHES,
            sum(m.undecodable for m in measures),
            sum(m.truncated for m in measures),
        )


@dataclass(frozen=True)
class _Lengths:
    sorted: np.ndarray  # float64 [n]
    edges: np.ndarray
    shares: np.ndarray

    @classmethod
    def of(cls, values: np.ndarray, bins: int) -> _Lengths:
        ordered = np.sort(values.astype(np.float64))
        edges = quantile_edges(ordered, bins)
        return cls(ordered, edges, bin_shares(ordered, edges))


@dataclass(frozen=True)
class TextReference:
    """A version's training texts prepared once: length bins, the top tokens' shares, the whole vocabulary."""

    token_lengths: _Lengths
    char_lengths: _Lengths
    top_hashes: np.ndarray  # int64 [K], sorted
    top_tokens: tuple[str, ...]  # the token of each of top_hashes
    token_shares: np.ndarray  # [K + 1]: each top token's share of all tokens, then every other token's
    vocabulary: np.ndarray  # int64, sorted: the hash of every distinct training token
    unseen_share: float  # tokens of one half of the training texts that the other half never has
    classes: np.ndarray | None
    class_shares: np.ndarray | None
    limits: TextLimits
    undecodable: int = 0

    @property
    def rows(self) -> int:
        return len(self.token_lengths.sorted)

    @classmethod
    def from_texts(
        cls,
        x: np.ndarray,
        y: np.ndarray | None = None,
        *,
        limits: TextLimits | None = None,
        bins: int = DEFAULT_BINS,
        max_rows: int | None = None,
    ) -> TextReference:
        """Build from the training texts `x` [N] (str or bytes) and labels `y` [N] (an even subsample past
        `max_rows`); ValueError when there are no texts or they hold no token at all."""
        limits = limits or TextLimits()
        texts = np.asarray(x).reshape(-1)
        if texts.size == 0:
            raise ValueError("the training texts are empty: no reference to compare with")
        if max_rows is not None and len(texts) > max_rows:
            keep = np.linspace(0, len(texts) - 1, max_rows).astype(np.int64)
            texts = texts[keep]
            y = None if y is None else np.asarray(y)[keep]
        read = [as_text(t) for t in texts.tolist()]
        token_lists = [tokens_of(text, limits)[0] for text, _ in read]
        counts = Counter(t for tokens in token_lists for t in tokens)
        total = sum(counts.values())
        if total == 0:
            raise ValueError(f"the {len(texts)} training texts hold no tokens: no token distribution to compare with")
        top = counts.most_common(limits.top_tokens)
        hashes = token_hashes(t for t, _ in top)
        order = np.argsort(hashes)
        shares = np.array([c for _, c in top], dtype=np.float64)[order] / total
        classes = class_shares = None
        labels = None if y is None else np.asarray(y).reshape(-1)
        if labels is not None and len(labels) == len(texts) and np.issubdtype(labels.dtype, np.integer):
            classes, found = np.unique(labels, return_counts=True)
            class_shares = found / found.sum()
        return cls(
            token_lengths=_Lengths.of(np.array([len(t) for t in token_lists]), bins),
            char_lengths=_Lengths.of(np.array([len(text) for text, _ in read]), bins),
            top_hashes=hashes[order],
            top_tokens=tuple(top[i][0] for i in order),
            token_shares=np.append(shares, max(0.0, 1.0 - shares.sum())),
            vocabulary=np.unique(token_hashes(counts)),
            unseen_share=_split_half_unseen(token_lists),
            classes=classes,
            class_shares=class_shares,
            limits=limits,
            undecodable=sum(bad for _, bad in read),
        )

    def token_buckets(self, hashes: np.ndarray) -> np.ndarray:
        """Each token's bucket: its index among the top tokens, or K for any other token."""
        k = len(self.top_hashes)
        at = np.minimum(np.searchsorted(self.top_hashes, hashes), k - 1)
        return np.where(self.top_hashes[at] == hashes, at, k)

    def unseen(self, hashes: np.ndarray) -> int:
        """How many of these tokens the training texts never had."""
        if not len(hashes):
            return 0
        at = np.minimum(np.searchsorted(self.vocabulary, hashes), len(self.vocabulary) - 1)
        return int(np.count_nonzero(self.vocabulary[at] != hashes))


def _split_half_unseen(token_lists: list[list[str]]) -> float:
    """The share of the odd-numbered texts' tokens that no even-numbered text has: how many unseen tokens a
    window of new texts from the training distribution brings."""
    known = {t for tokens in token_lists[0::2] for t in tokens}
    held_out = [t for tokens in token_lists[1::2] for t in tokens]
    if not held_out:
        return 0.0
    return sum(t not in known for t in held_out) / len(held_out)


@dataclass
class TextFindings:
    """A text window's figures beside its drift rows: tokens read, how many the training texts never had
    (and how many is normal), the top tokens whose share moved most, and the odd texts counted."""

    texts: int
    tokens: int
    unseen_token_share: float | None  # null: the window has no tokens
    reference_unseen_share: float
    empty_texts: int
    undecodable_texts: int
    truncated_texts: int
    max_tokens_read: int
    psi_threshold: float
    warn_psi: float
    moved_tokens: list[dict[str, float | str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def evidence(self) -> dict[str, object]:
        """The findings as a `model.degraded` event's evidence carries them (shares rounded)."""
        return {
            "texts": self.texts,
            "tokens": self.tokens,
            "unseen_token_share": None if self.unseen_token_share is None else round(self.unseen_token_share, 4),
            "reference_unseen_share": round(self.reference_unseen_share, 4),
            "empty_texts": self.empty_texts,
            "undecodable_texts": self.undecodable_texts,
            "truncated_texts": self.truncated_texts,
            "psi_threshold": self.psi_threshold,
            "warn_psi": self.warn_psi,
            "moved_tokens": self.moved_tokens,
            "warnings": self.warnings,
        }


def _length_row(feature: int, name: str, values: np.ndarray, reference: _Lengths, threshold: float) -> FeatureDrift:
    ordered = np.sort(values.astype(np.float64))
    d, p = ks_two_sample(ordered, reference.sorted)
    shift = psi(reference.shares, bin_shares(ordered, reference.edges))
    return FeatureDrift(feature, shift, d, p, name=name, threshold=threshold)


def _moved_tokens(reference: TextReference, shares: np.ndarray) -> list[dict[str, float | str]]:
    """The top tokens whose share of the window moved most from training, the largest change first."""
    change = np.abs(shares[:-1] - reference.token_shares[:-1])
    order = np.argsort(-change, kind="stable")[:TOP_MOVED_TOKENS]
    return [
        {
            "token": reference.top_tokens[i],
            "reference_share": round(float(reference.token_shares[i]), 4),
            "window_share": round(float(shares[i]), 4),
        }
        for i in order
        if change[i] > 0
    ]


def evaluate_text_drift(
    reference: TextReference, samples: TextSamples, predictions: np.ndarray | None, rule: DriftRule
) -> DriftReport:
    """Compare a window of sampled texts (and their predicted classes) with the training texts."""
    n = len(samples)
    report = DriftReport(samples=n)
    if n == 0:
        report.reasons.append("no samples in the window")
        return report
    threshold = rule.text_psi_threshold
    rows = [
        _length_row(0, TEXT_LENGTH, samples.tokens, reference.token_lengths, threshold),
        _length_row(1, TEXT_CHARS, samples.chars, reference.char_lengths, threshold),
    ]
    findings = TextFindings(
        texts=n,
        tokens=len(samples.hashes),
        unseen_token_share=None,
        reference_unseen_share=reference.unseen_share,
        empty_texts=int(np.count_nonzero(samples.tokens == 0)),
        undecodable_texts=samples.undecodable,
        truncated_texts=samples.truncated,
        max_tokens_read=reference.limits.max_tokens,
        psi_threshold=threshold,
        warn_psi=rule.text_warn_psi,
    )
    if len(samples.hashes):
        buckets = np.bincount(reference.token_buckets(samples.hashes), minlength=len(reference.token_shares))
        shares = buckets / buckets.sum()
        # the texts, not the tokens, are the independent draws: the test counts each text once
        p = chi2_goodness_of_fit(shares * n, reference.token_shares)
        largest = float(np.max(np.abs(shares - reference.token_shares)))
        rows.append(FeatureDrift(2, psi(reference.token_shares, shares), largest, p, name=TOKENS, threshold=threshold))
        findings.unseen_token_share = reference.unseen(samples.hashes) / len(samples.hashes)
        findings.moved_tokens = _moved_tokens(reference, shares)
    report.features = sorted(rows, key=lambda f: -f.psi)
    report.ranked_by = RANKED_TEXT
    report.text = findings
    measure_predictions(report, reference, predictions)
    if n < rule.min_samples:
        report.reasons.append(f"{n} samples in the window, {rule.min_samples} needed to judge drift")
        return report
    alpha = rule.ks_alpha / len(report.features)
    for f in report.features:  # the largest PSI first: the alert's reason names it first
        if f.psi > threshold and f.p_value < alpha:
            report.reasons.append(_drifted(f, threshold, findings))
        elif f.psi > rule.text_warn_psi:
            findings.warnings.append(f"{f.name}: PSI {f.psi:.3f} > {rule.text_warn_psi:g}, under {threshold:g}")
    judge_predictions(report, rule)
    report.drifted = bool(report.reasons)
    return report


def _drifted(f: FeatureDrift, threshold: float, findings: TextFindings) -> str:
    """Why a text row counts as drifted, in the words of its test."""
    if f.name != TOKENS:
        return f"{f.name}: PSI {f.psi:.3f} > {threshold:g} and KS {f.ks:.3f} (p {f.p_value:.2g})"
    found = f"{f.name}: PSI {f.psi:.3f} > {threshold:g} (chi-square p {f.p_value:.2g} over the texts"
    found += f", largest share change {f.ks:.3f})"
    if findings.unseen_token_share is not None:
        found += (
            f"; {findings.unseen_token_share:.1%} of tokens unseen in training "
            f"({findings.reference_unseen_share:.1%} normally)"
        )
    return found
