"""Which Gaussians a click or a phrase picks, at one level (coarse: whole objects, fine: parts).

A click names a global candidate of the chosen level, and the object is the set of Gaussians assigned
to it. Which candidate: the one the clicked pixel's Gaussians carry most weight for, when the caller
found them (`core.render.contributors.click_candidate`, the tools and the viewer do); else, as in
Click-Gaussian (arXiv 2407.11793, Sec. 3.4), the nearest candidate to the pixel's rendered feature.
The assignment is every Gaussian's label: its vote (`core.segment.lifting`) when the run has votes, else its
nearest candidate in feature space (`precompute_click_index`); it does not depend on the click, so it
is built once per level, and a click is then one small matmul and one table lookup over the
assignment (`ClickIndex.select`), about as fast as a single `assignment == k` pass and with no host
synchronisation on CUDA. A phrase picks candidates through their CLIP
embeddings (`select_by_text`). `select_prompts` combines clicks, names and the fallback without
candidates (raw cosine to the clicks): the one rule that the command line and the viewer share.

Relies on the data model of `features` (coarse level = leading channels, fine = all) and
`global_candidates` (candidates are unit vectors [K, D_level]).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from splatseg_ns.core.render.contributors import PixelContributors, click_candidate
from splatseg_ns.core.segment.global_candidates import assign_to_candidates
from splatseg_ns.core.segment.losses import check_finite_features

CHUNK = 1 << 18
MIN_CLICK_OPACITY = 0.5
"""A click where the rendered opacity is below this hit empty background."""
SIMILARITY_FALLBACK_THRESHOLD = 0.8
"""Cosine to the clicks that selects a Gaussian when there are no global candidates: above the fine
push margin (0.75), below which features of different parts are trained."""


@torch.no_grad()
def precompute_assignment(
    features: torch.Tensor, centers: torch.Tensor, chunk_size: int = CHUNK
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Each Gaussian's global candidate (argmax cosine) and its cosine to it, once per level.

    features: [N, D_level]; centers: [K, D_level]. Returns (assignment [N] long,
    similarity [N] float32), computed in chunks by `global_candidates.assign_to_candidates` (the
    GFL targets are the same assignment). With K == 0 every assignment is -1 (selects nothing)
    and every similarity -1. `precompute_click_index` wraps the result for fast clicks.
    Raises `losses.NonFiniteFeaturesError` on NaN/inf features: their argmax would be arbitrary.
    """
    check_finite_features(features)
    return assign_to_candidates(features.float(), centers, chunk_size=chunk_size)


@dataclass(frozen=True)
class ClickIndex:
    """Everything a click needs that does not depend on the click, built once per level.

    assignment [N] long (-1: no candidate) and similarity [N] as `precompute_assignment` returns
    them; unit_centers [K, D_level] float32, the L2-normalised candidates; slots [N] long, the
    assignment with every id outside [0, K) (-1) mapped to K, so a K+1 lookup table whose last
    entry stays False can be gathered by `index_select` on any device without a bounds failure.
    Build it with `precompute_click_index` (from features) or `ClickIndex.from_assignment`.
    """

    assignment: torch.Tensor
    similarity: Optional[torch.Tensor]
    unit_centers: torch.Tensor
    slots: torch.Tensor

    @classmethod
    @torch.no_grad()
    def from_assignment(
        cls, assignment: torch.Tensor, similarity: Optional[torch.Tensor], centers: torch.Tensor
    ) -> "ClickIndex":
        """The index of an assignment already computed against `centers` [K, D_level] (one pass over N)."""
        num_candidates = centers.shape[0]
        assignment = assignment.reshape(-1).long()
        unit_centers = _unit(centers.to(assignment.device))
        valid = (assignment >= 0) & (assignment < num_candidates)
        slots = torch.where(valid, assignment, torch.full_like(assignment, num_candidates))
        return cls(assignment, similarity, unit_centers, slots)

    @property
    def num_candidates(self) -> int:
        return self.unit_centers.shape[0]

    @torch.no_grad()
    def select(
        self,
        positive_features: torch.Tensor,
        negative_features: Optional[torch.Tensor] = None,
        threshold: Optional[float] = None,
        features: Optional[torch.Tensor] = None,
        click_ids: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """bool [N]: the Gaussians of the candidates the positive clicks pick, minus the negatives'.

        positive_features [P, D_level], negative_features [Q, D_level]: rendered features at the
        clicked pixels. click_ids [P + Q]: each click's candidate (positive clicks first; -1 for
        none), when the caller knows it (`contributors.click_candidate`: the candidate the pixel's
        Gaussians carry most weight for); else each click picks the candidate nearest to its
        feature. threshold: also require similarity to the assigned candidate >= threshold.
        Conflicts (a negative click on a candidate that a positive click also picked): the
        negative wins and the whole candidate is dropped, because a candidate is the unit of
        selection and the user said that pixel is not the object (switch to the fine level to
        split it). If `features` [N, D_level] is given, the conflicted candidate is split instead,
        by the clicks on it alone: its Gaussians whose cosine to the nearest positive click on it
        exceeds that to every negative click on it stay (so the same pixel clicked positive then
        negative removes the candidate).

        A fixed number of small ops plus one gather over N and no host synchronisation: the
        clicks, positive and negative stacked, go through one [P+Q, D] x [D, K] product whose row
        argmax is each click's candidate (the centres are unit, so the clicks need no
        normalising); a K+1 table is set True at the positive candidates then False at the
        negative ones (negative wins) and gathered by the slots. Only with `features` and
        negative clicks are conflicted candidates looked for (one synchronisation).
        """
        device = self.assignment.device
        num_candidates, dim = self.unit_centers.shape
        positive = _rows(positive_features, dim, device)
        negative = _rows(negative_features, dim, device)
        num_positive, num_negative = positive.shape[0], negative.shape[0]
        if threshold is not None and self.similarity is None:
            raise ValueError("a similarity threshold needs the per-Gaussian similarity")
        if num_candidates == 0 or num_positive == 0:
            return torch.zeros(self.assignment.shape, dtype=torch.bool, device=device)
        if click_ids is None:
            clicks = torch.cat([positive, negative]) if num_negative > 0 else positive
            click_ids = (clicks.float() @ self.unit_centers.T).argmax(dim=-1)
        else:
            click_ids = click_ids.reshape(-1).long().to(device)
            if click_ids.numel() != num_positive + num_negative:
                raise ValueError(f"{click_ids.numel()} click candidates for {num_positive + num_negative} clicks")
            valid = (click_ids >= 0) & (click_ids < num_candidates)
            click_ids = torch.where(valid, click_ids, torch.full_like(click_ids, num_candidates))
        positive_ids, negative_ids = click_ids[:num_positive], click_ids[num_positive:]
        table = torch.zeros(num_candidates + 1, dtype=torch.bool, device=device)
        table.index_fill_(0, positive_ids, True)
        if num_negative > 0:
            table.index_fill_(0, negative_ids, False)
        table[num_candidates] = False  # clicks on no candidate, and unassigned Gaussians: nothing
        selected = table.index_select(0, self.slots)
        if threshold is not None:
            selected &= self.similarity >= threshold
        if features is not None and num_negative > 0:
            self._split_conflicts(selected, positive, negative, positive_ids, negative_ids, threshold, features)
        return selected

    def _split_conflicts(
        self,
        selected: torch.Tensor,
        positive: torch.Tensor,
        negative: torch.Tensor,
        positive_ids: torch.Tensor,
        negative_ids: torch.Tensor,
        threshold: Optional[float],
        features: torch.Tensor,
    ) -> None:
        """Add to `selected` the Gaussians of each conflicted candidate that are strictly closer to a
        positive click on that candidate than to every negative click on it (ties: negative)."""
        hit = torch.zeros(2, self.num_candidates + 1, dtype=torch.bool, device=selected.device)
        hit[0].index_fill_(0, positive_ids, True)
        hit[1].index_fill_(0, negative_ids, True)
        conflicted = (hit[0, :-1] & hit[1, :-1]).nonzero().squeeze(-1).tolist()  # the one host sync
        for candidate in conflicted:
            members = self.assignment == candidate
            if threshold is not None:
                members &= self.similarity >= threshold
            index = members.nonzero().squeeze(-1)
            positive_on, negative_on = positive[positive_ids == candidate], negative[negative_ids == candidate]
            # A positive click equal to a negative one (the same pixel) ties with it on every Gaussian,
            # so it can keep none; it is dropped so that rounding in the two products cannot break the tie.
            repeated = (positive_on[:, None, :] == negative_on[None, :, :]).all(dim=-1).any(dim=-1)
            closer = select_by_similarity(features[index], positive_on[~repeated], negative_on, threshold=-1.0)
            selected[index[closer]] = True


@torch.no_grad()
def precompute_click_index(features: torch.Tensor, centers: torch.Tensor, chunk_size: int = CHUNK) -> ClickIndex:
    """`precompute_assignment` plus what makes a click fast (unit centres, gather slots): once per level."""
    assignment, similarity = precompute_assignment(features, centers, chunk_size=chunk_size)
    return ClickIndex.from_assignment(assignment, similarity, centers)


@torch.no_grad()
def select_candidates(
    assignment: torch.Tensor,
    candidate_ids: torch.Tensor,
    num_candidates: int,
    similarity: Optional[torch.Tensor] = None,
    threshold: Optional[float] = None,
) -> torch.Tensor:
    """bool [N]: Gaussians assigned to any of `candidate_ids` (and similarity >= threshold).

    A lookup table `keep[K + 1]` gathered by the assignment (`index_select`) is one pass over N,
    faster than `isin` or one `==` per id. Ids outside [0, K) (-1) select nothing: they set the
    extra entry keep[K], which is cleared again (no boolean filter, no host sync).
    """
    if threshold is not None and similarity is None:
        raise ValueError("a similarity threshold needs the per-Gaussian similarity")
    ids = candidate_ids.reshape(-1).long().to(assignment.device)
    if ids.numel() == 0:
        return torch.zeros(assignment.shape, dtype=torch.bool, device=assignment.device)
    keep = torch.zeros(num_candidates + 1, dtype=torch.bool, device=assignment.device)
    valid = (ids >= 0) & (ids < num_candidates)
    keep.index_fill_(0, torch.where(valid, ids, torch.full_like(ids, num_candidates)), True)
    keep[num_candidates] = False
    selected = _gather(keep, assignment)
    if threshold is not None:
        selected &= similarity >= threshold
    return selected


@torch.no_grad()
def select_by_similarity(
    features: torch.Tensor,
    positive_features: torch.Tensor,
    negative_features: Optional[torch.Tensor] = None,
    threshold: float = SIMILARITY_FALLBACK_THRESHOLD,
    chunk_size: int = CHUNK,
) -> torch.Tensor:
    """bool [N]: raw-feature selection for when there are no candidates (K == 0) or it is asked for.

    A Gaussian is selected when its best cosine to the positive clicks is > threshold and, with
    negative clicks, strictly greater than its best cosine to the negatives.
    """
    dim = features.shape[-1]
    pos = F.normalize(_rows(positive_features, dim, features.device).float(), dim=-1)
    neg = F.normalize(_rows(negative_features, dim, features.device).float(), dim=-1)
    selected = torch.zeros(features.shape[0], dtype=torch.bool, device=features.device)
    if pos.shape[0] == 0:
        return selected
    for start in range(0, features.shape[0], chunk_size):
        f = F.normalize(features[start : start + chunk_size].float(), dim=-1)
        best_pos = (f @ pos.T).amax(dim=-1)
        chunk = best_pos > threshold
        if neg.shape[0] > 0:
            chunk &= best_pos > (f @ neg.T).amax(dim=-1)
        selected[start : start + chunk_size] = chunk
    return selected


@torch.no_grad()
def rank_candidates_by_text(
    text_embedding: torch.Tensor,
    candidate_embeddings: torch.Tensor,
    has_embedding: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(ids, cosines) of the candidates that carry a CLIP embedding, best first.

    Candidates without one (has_embedding False, or a non-finite row) are left out. Accepts
    torch tensors or numpy arrays (as `clip_embeddings` returns them).
    """
    emb = torch.as_tensor(candidate_embeddings).float()
    text_embedding = torch.as_tensor(text_embedding)
    valid = torch.isfinite(emb).all(dim=-1)
    if has_embedding is not None:
        valid &= torch.as_tensor(has_embedding).to(valid.device).bool()
    ids = valid.nonzero().squeeze(-1)
    if ids.numel() == 0:
        return ids, torch.zeros(0, dtype=torch.float32, device=emb.device)
    text = F.normalize(text_embedding.float().reshape(-1), dim=-1).to(emb.device)
    scores = F.normalize(emb[ids], dim=-1) @ text
    order = torch.argsort(scores, descending=True, stable=True)
    return ids[order], scores[order]


@torch.no_grad()
def select_by_text(
    text_embedding: torch.Tensor,
    candidate_embeddings: torch.Tensor,
    has_embedding: Optional[torch.Tensor] = None,
    top_k: int = 1,
    margin: Optional[float] = None,
) -> torch.Tensor:
    """Candidate ids [<= top_k] a phrase names, best first; pass them to `select_candidates`.

    Rule: rank candidates by cosine between the CLIP text embedding and their aggregated CLIP
    image embedding; keep the best one, plus the next ones (up to top_k in all) whose cosine is
    within `margin` of the best when a margin is given (an object split over several candidates
    scores alike; unrelated ones do not), or simply the top_k when it is not. CLIP cosines of
    matching and non-matching crops differ by a few hundredths, so margins are small (0.01-0.03).
    Returns an empty tensor when no candidate carries an embedding.
    """
    ids, scores = rank_candidates_by_text(text_embedding, candidate_embeddings, has_embedding)
    ids, scores = ids[: max(top_k, 1)], scores[: max(top_k, 1)]
    if margin is not None and ids.numel() > 0:
        ids = ids[scores >= scores[0] - margin]
    return ids


@torch.no_grad()
def select_prompts(
    index: Optional[ClickIndex],
    features: torch.Tensor,
    positive: Optional[torch.Tensor] = None,
    negative: Optional[torch.Tensor] = None,
    named: Optional[torch.Tensor] = None,
    threshold: Optional[float] = None,
    click_ids: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """bool [N]: what clicks and a name select together at one level, with or without candidates.

    index: the level's `ClickIndex`, None when the run has no global candidates yet; features
    [N, D_level]: the Gaussians' features of the level; positive / negative [P, D_level]: the
    rendered features at the clicked pixels; click_ids: their candidates, positive first
    (`ClickIndex.select`); named: candidate ids a phrase picked (`select_by_text`). With
    candidates, the positive clicks add their candidates and the negative ones remove theirs
    (conflicts split by `features`), and the named candidates join, minus what the negative
    clicks remove. Without candidates only clicks can select: raw cosine to them
    (`select_by_similarity`, `threshold` or 0.8).
    """
    selected = torch.zeros(features.shape[0], dtype=torch.bool, device=features.device)
    if index is None:
        if positive is not None and positive.shape[0] > 0:
            selected = select_by_similarity(features, positive, negative,
                                            threshold=threshold if threshold is not None else SIMILARITY_FALLBACK_THRESHOLD)
        return selected
    num_positive = 0 if positive is None else positive.shape[0]
    if num_positive > 0:
        selected = index.select(positive, negative, threshold, features=features, click_ids=click_ids)
    if named is not None and named.numel() > 0:
        by_name = select_candidates(index.assignment, named, index.num_candidates, index.similarity, threshold)
        if negative is not None and negative.shape[0] > 0:
            negative_ids = None if click_ids is None else click_ids[num_positive:]
            by_name &= ~index.select(negative, None, threshold, click_ids=negative_ids)
        selected |= by_name
    return selected


def select_clicked(
    index: Optional[ClickIndex],
    features: torch.Tensor,
    positive: Sequence[PixelContributors] = (),
    negative: Sequence[PixelContributors] = (),
    named: Optional[torch.Tensor] = None,
    threshold: Optional[float] = None,
) -> torch.Tensor:
    """bool [N]: what clicks, each given as the Gaussians blended at its pixel (`core.render.contributors`), and a name
    select at one level: each click's candidate is the one its Gaussians carry most weight for, its feature is
    what they blend, and `select_prompts` combines them. The one rule of `splatseg select` and the viewer."""
    clicks = [*positive, *negative]
    if not clicks:
        return select_prompts(index, features, named=named, threshold=threshold)
    blended = torch.stack([found.blend(features) for found in clicks])
    ids = None if index is None else torch.tensor(
        [click_candidate(found, index.assignment, index.num_candidates)[0] for found in clicks])
    split = len(positive)
    return select_prompts(index, features, blended[:split], blended[split:] if negative else None, named, threshold,
                          click_ids=ids)


def _gather(table: torch.Tensor, assignment: torch.Tensor) -> torch.Tensor:
    """table[assignment] for a K+1 table: unassigned Gaussians (-1) read the extra entry table[K]."""
    if assignment.device.type == "cpu":
        # index_select is ~3x faster than advanced indexing on CPU but rejects -1; on CUDA an
        # out-of-range index_select is a device-side assert, so it is only tried here.
        try:
            return table.index_select(0, assignment)
        except IndexError:
            pass
    return table[assignment]  # negative indices wrap: -1 -> K


def _unit(centers: torch.Tensor) -> torch.Tensor:
    """[K, D] float32 unit rows (the candidates are unit already; this makes sure, once)."""
    return F.normalize(centers.float(), dim=-1)


def _rows(features: Optional[torch.Tensor], dim: int, device: torch.device) -> torch.Tensor:
    """Clicked features as [P, dim] on `device` (None -> [0, dim]); a level mismatch is an error."""
    if features is None:
        return torch.zeros(0, dim, device=device)
    if features.shape[-1] != dim:
        raise ValueError(
            f"clicked features have {features.shape[-1]} channels but this level has {dim}: "
            "take the same level_features of the rendered feature as of the Gaussians"
        )
    return features.reshape(-1, dim).to(device)
