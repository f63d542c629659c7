"""Best-first search by a latency forecast: a latency study's planner for `three_step` (branch and bound over the
space, Land & Doig 1960, with the forecast as its bound).

A configuration's latency is mostly known before it is trained: its device and server FLOPs follow from the split
and the pruning schedule's channel sparsity (a conv keeps about (1 - s)^2 of its FLOPs when its input and output
channels are both pruned by s; a snapshot's own FLOPs once any row on it is measured), and its bits from what the
study measured of the same coding at the same split (a learned coding sends about as much whichever snapshot feeds
it; uniform + Huffman scales with the channels sent), else from a floor no coding undercuts. Only its validation
accuracy must be measured. The planner proposes, among the unmeasured configurations that are not known to miss the
accuracy threshold and are forecast to beat the best one measured, the one of most expected gain per expected
second: the latency it is expected to save (its bits as expected, not the floor: what the coding sent at other
splits, else its fixed-length form times what the study's learned codings sent of theirs) times the chance that it
holds the threshold, over what it is forecast to cost (constrained expected improvement, Gardner et al., ICML 2014,
per second, Snoek et al., NeurIPS 2012). That chance reads an estimate of its validation accuracy (a pruning's loss
interpolated in the square of its sparsity between the split's prunings nearest to it, fitted to every split's while
the split has none, a run held longer or shorter than those measured taken to lose in the ratio of the two holds'
losses where a split measured both, else of the holds; a coding loses on a pruned snapshot what it lost on the
unpruned split plus the extra that codings lost on the split's snapshots; a learned coding not measured at the split
what the learned coding measured there nearest in capacity lost), and its cost the study's charged seconds (a
coding's trial; a pruning run's, while it is not trained). Before a pruned and coded one, what it needs: the coding
alone on the unpruned split (no pruning run: its bits and loss there hold for every pruning; for a learned coding,
any learned coding there) and the pruning's 8-bit row (seconds once the run is trained: whether the pruning holds
the threshold for every coding). With workers in parallel, a candidate that would wait on a trial in flight (its
pruning run, what it needs) or whose coding one will rule in or out is passed over. The planner stops once no
configuration left is forecast to beat the best one measured.

What rules a configuration out (each from the study's own trials, so that what it knows it has paid for):
- its pruning's 8-bit row, or a level its run reported while training, is below the threshold by more than a margin
  (a coding does not win back what the pruning lost), or a level of its own run no deeper is below the threshold
  (a run only removes channels from level to level);
- a pruning at the same split that is no sparser (body and split output), allocated alike (`Shape.allocation`) and
  held its levels no shorter missed it (the l2 schedule only removes channels; more fine-tuning only helps);
- its coding loses more than its pruning's margin over the threshold: the loss of a coding at a split is at least
  the smallest loss measured there, or at a deeper split, of any coding of the same family with no less capacity
  (fewer bits, fewer channels, fewer codewords lose no less; a shallower feature codes no better).

Forecasts of uniform-coded bits are estimates, not bounds, so "no configuration left" means none forecast to win.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.config import VariantConfig
from engine.entropy.payload import MIN_PAYLOAD_BITS
from engine.pareto import DECISION_COLUMN, WIN_BACK
from engine.search.objective import BITS_COLUMN, Environment, latencies_of, number

PLANNER_VERSION = 13  # part of a forecast study's name: a study keeps the planner's rules it was run with
MARGIN = WIN_BACK  # validation accuracy a coding or a seed may win back over its pruning's 8-bit row
SPREAD = 0.005  # the spread of a validation estimate around the truth (a seed alone moves it about half a point)
CODING_SECONDS = 120.0  # a coding's trial before the study has timed one (an encoder on cached features, quick)
RUN_SECONDS = 300.0  # a pruning run's trial before the study has timed one (three levels at the quick budget)
CODING_KNOBS = ("encoder", "bits")  # besides the coding's own prefixed knobs (enc_*, jscc_*)
NOT_RUN_KNOBS = ("snapshot", "replicate")
# a pruning's loss against one held longer or shorter, while no split measured both holds: inversely proportional to
# its fine-tuning iterations (at the quick study's conv5_x a run held 30 lost 3.0 times what one held 62 lost at 0.32,
# at its conv4_x 1.2-1.3 times at 0.24 and 0.48; 62 / 30 = 2.1)
HOLD_LOSS_EXPONENT = 1.0
LEAST_RATIO_LOSS = 0.002  # a split's loss too small to divide by: within a seed's spread of none


@dataclass(frozen=True)
class Candidate:
    """A configuration of the space: the trial's params (what `suggest_variant` asks) and the variant they make."""

    params: tuple[tuple[str, Any], ...]
    variant: VariantConfig

    @property
    def key(self) -> tuple[tuple[str, Any], ...]:
        """What the planner files the candidate under: its params (`params_key` of a trial's)."""
        return self.params


def enumerate_space(build: Callable[[Any], VariantConfig]) -> list[Candidate]:
    """Every configuration a define-by-run space holds, by walking its choices depth first.

    Args:
        build: called with a chooser (`suggest_categorical(name, choices)`), returns the variant those choices make;
            the same choices must lead to the same questions.
    Returns:
        one candidate per leaf of the choice tree, in the order of the choices.
    """
    out: list[Candidate] = []
    stack: list[list[int]] = [[]]
    while stack:
        path = stack.pop()
        chooser = _Replay(path)
        variant = build(chooser)
        for depth in range(len(path), len(chooser.sizes)):
            stack += [chooser.taken[:depth] + [j] for j in range(chooser.sizes[depth] - 1, 0, -1)]
        out.append(Candidate(params_key(chooser.params), variant))
    return out


class _Replay:
    """A chooser that follows a path of choice indices, then takes the first choice of every new question."""

    def __init__(self, path: list[int]) -> None:
        self.path, self.taken, self.sizes, self.params = path, [], [], {}

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        i = self.path[len(self.taken)] if len(self.taken) < len(self.path) else 0
        self.taken.append(i)
        self.sizes.append(len(choices))
        self.params[name] = choices[i]
        return choices[i]


def params_key(params: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """A trial's params as one key, whatever their order."""
    return tuple(sorted(params.items(), key=lambda kv: kv[0]))


# ---------------------------------------------------------------------------------------------------- a variant


@dataclass(frozen=True)
class Shape:
    """What a `three_step` variant is, as the planner reasons about it."""

    split: str
    pruning: tuple  # the pruning run and snapshot (knobs that are not the coding's), () when unpruned
    run: tuple  # the pruning run alone (snapshot left out), () when unpruned
    level: int  # the snapshot's level (-1: unpruned)
    sparsity: float  # the body's channel sparsity at the snapshot (schedule's figure)
    output: float  # the split output's channel sparsity at the snapshot
    hold: int  # iterations each level held its sparsity
    family: str  # the coding: "uniform", "two_step" (scalar codewords), "vector" or another encoder's name, a
    # learned one followed by how it trains ("two_step/2/server")
    capacity: tuple[float, ...]  # what orders codings of one family (more of each: no more loss)
    min_bits: float = float(MIN_PAYLOAD_BITS)  # the fewest bits its coding can send (`FeatureCoding.min_bits`)
    fixed_bits: float = math.nan  # a learned coding's fixed-length form (`fixed_bits_floor`), NaN for uniform

    @property
    def reference(self) -> bool:
        """The pruning's 8-bit + Huffman row (the one that tells whether the pruning holds the threshold)."""
        return self.family == "uniform" and self.capacity == (8.0,)

    @property
    def learned(self) -> bool:
        """Whether its coding is a learned encoding (any family but uniform + Huffman)."""
        return self.family != "uniform"

    @property
    def allocation(self) -> str:
        """How its run set each group's target (`three_step`'s `allocation`): sparsities compare only between runs
        of one allocation (a sensitivity run at a larger target goes further down the same greedy path; a uniform
        one prunes other groups)."""
        return str(dict(self.pruning).get("allocation", "uniform"))


def shape_of(variant: VariantConfig, profile: str) -> Shape:
    """The planner's view of a `three_step` variant (its pruning's sparsities from the run's schedule)."""
    from engine.coding import FEATURE_CODINGS
    from engine.coding.learned import EncodingConfig, fixed_bits_floor, is_learned
    from engine.methods.three_step import run_knobs, schedule_of

    knobs = dict(variant.knobs)
    coding = FEATURE_CODINGS.get(str(knobs.get("encoder", "none")))
    prefix = coding.prefix
    own = {k: v for k, v in knobs.items() if k in CODING_KNOBS or (prefix and k.startswith(prefix))}
    pruning = tuple(sorted((k, v) for k, v in knobs.items() if k not in own and k != "replicate"))
    snapshot = knobs.get("snapshot", "threshold")
    family, capacity = _coding(knobs)
    floor = max(float(MIN_PAYLOAD_BITS), coding.min_bits(variant))
    learned = is_learned(knobs.get("encoder", "none"))
    fixed = float(fixed_bits_floor(EncodingConfig.from_knobs(variant.knobs))) if learned else math.nan
    if snapshot == "none":
        return Shape(variant.split, (), (), -1, 0.0, 0.0, 0, family, capacity, floor, fixed)
    run = run_knobs(variant, profile)
    schedule = schedule_of(run)
    level = schedule.levels - 1 if snapshot == "threshold" else int(snapshot)
    fraction = schedule.level_fraction(level)
    output = run["output"] if run["output"] is not None else run["target"]
    return Shape(variant.split, pruning, tuple(p for p in pruning if p[0] not in NOT_RUN_KNOBS), level,
                 float(run["target"]) * fraction, float(output) * fraction, int(run["hold_iterations"]), family,
                 capacity, floor, fixed)


def _coding(knobs: Mapping[str, Any]) -> tuple[str, tuple[float, ...]]:
    """A coding's family and capacity. Learned encoders trained otherwise (epochs, what is fine-tuned) are families
    apart: a cheaply trained one that lost says nothing of one trained longer."""
    from engine.coding.learned import KNOB_PREFIX, TRAINING_FIELDS

    encoder = str(knobs.get("encoder", "none"))
    if encoder == "none":
        return "uniform", (float(knobs.get("bits", 8)),)
    trains = [KNOB_PREFIX + f for f in TRAINING_FIELDS]
    training = "".join(f"/{knobs[k]}" for k in trains if k in knobs)
    if encoder == "two_step" and knobs.get("enc_quantizer") == "vector":
        return "vector" + training, (float(knobs.get("enc_codebook", 256)),)
    if encoder == "two_step":
        return "two_step" + training, (float(knobs.get("enc_d", 32)), float(knobs.get("enc_bits", 2)))
    return encoder + training, tuple(float(v) for k, v in sorted(knobs.items()) if isinstance(v, int | float)
                                     and not isinstance(v, bool) and k.startswith(("enc_", "jscc_"))
                                     and k not in trains)


def _no_more(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """Capacity `a` is no more than `b` in every component."""
    return len(a) == len(b) and all(x <= y for x, y in zip(a, b, strict=True))


# ---------------------------------------------------------------------------------------------------- knowledge


@dataclass
class Measured:
    """One finished trial as the planner reads it: its shape, its row (a complete trial), what its pruning run
    reported (level -> validation accuracy), whether the study's pruner stopped it as hopeless, and its charged
    seconds."""

    shape: Shape
    row: Mapping[str, Any] | None = None
    levels: Mapping[int, float] = field(default_factory=dict)
    stopped: bool = False
    seconds: float = math.nan  # the worker seconds charged to it


@dataclass
class Forecast:
    """A candidate's forecast figures: latency and bits (optimistic: the bound; `expected`, the latency expected),
    validation accuracy (`val`, optimistic: what the rules bound; `estimate`, what is expected), whether it may still
    meet the threshold, its expected gain per second and the worker seconds measuring it is forecast to be charged
    (`seconds`)."""

    candidate: Candidate
    shape: Shape
    latency: float
    bits: float
    val: float
    possible: bool
    why: str = ""
    estimate: float = math.nan
    value: float = 0.0
    seconds: float = math.nan
    expected: float = math.nan  # the latency expected (`_Knowledge.expected_bits`), not the bound `latency`


class Planner:
    """The best-first planner of a latency study (see the module's text).

    Args:
        candidates: the space (`enumerate_space`); profile: the base's profile (the pruning schedule's budget);
        env: the environment; threshold: the least validation accuracy; margin: what a coding may win back.
    """

    def __init__(self, candidates: Iterable[Candidate], profile: str, env: Environment, threshold: float,
                 margin: float = MARGIN) -> None:
        self.candidates = [c for c in candidates if c.variant.method == "three_step"
                           and c.variant.knob("snapshot", "threshold") != "threshold"]
        self.shapes = {c.key: shape_of(c.variant, profile) for c in self.candidates}
        self.env, self.threshold, self.margin = env, threshold, margin
        self.references = {(s.split, s.pruning): c for c in self.candidates if (s := self.shapes[c.key]).reference}
        self.unpruned = {(s.split, s.family, s.capacity): c for c in self.candidates
                         if (s := self.shapes[c.key]).level < 0}
        self.depth = {split: i for i, split in enumerate(dict.fromkeys(c.variant.split for c in self.candidates))}
        self.over_budget = False  # the last `next` passed over candidates only because they would overrun the budget

    def forecasts(self, measured: Mapping[tuple, Measured], best_latency: float = math.inf) -> list[Forecast]:
        """A forecast for every candidate not measured yet (those of a split whose unpruned 8-bit row is not
        measured are left out: their figures are not known yet).

        Args:
            measured: the study's finished trials by candidate key; best_latency: the best feasible latency measured.
        Returns:
            the forecasts, most expected gain per second first (then least latency).
        """
        k = _Knowledge(measured.values(), self.threshold, self.depth)
        todo = [(c, s, probe) for c in self.candidates if c.key not in measured
                and (probe := k.probe.get((s := self.shapes[c.key]).split)) is not None]
        rows = [self._figures(s, probe, k) for _, s, probe in todo]
        if not rows:
            return []
        lat = latencies_of(rows, self.env)
        expected = list(lat["latency"])  # the latency at the bits expected, where they differ from the forecast's
        other = [(i, {**row, BITS_COLUMN: bits}) for i, ((_, s, _), row) in enumerate(zip(todo, rows, strict=True))
                 if (bits := k.expected_bits(s, row[BITS_COLUMN])) != row[BITS_COLUMN]]
        if other:
            for (i, _), latency in zip(other, latencies_of([r for _, r in other], self.env)["latency"], strict=True):
                expected[i] = latency
        out = []
        for (c, s, probe), row, latency, fits, likely in zip(todo, rows, lat["latency"], lat["feasible"], expected,
                                                             strict=True):
            val, why = k.val(s, probe)
            if not why and val < self.threshold - self.margin:
                why = f"forecast validation accuracy {100 * val:.2f} %"
            if not fits:
                why = why or "its device part does not fit the device's memory"
            f = Forecast(c, s, float(latency), float(row[BITS_COLUMN]), val, not why, why, seconds=k.cost(s),
                         expected=float(likely))
            if f.possible:
                f.estimate = min(val, k.estimate(s, probe))
                f.value = _value(f, self.threshold, best_latency, f.seconds)
            out.append(f)
        return sorted(out, key=_order)

    def next(self, measured: Mapping[tuple, Measured], in_flight: Iterable[tuple] = (),
             best_latency: float = math.inf, budget_s: float = math.inf) -> tuple[Forecast | None, bool]:
        """The next configuration to measure: the most expected gain per second among those that may meet the
        threshold and are forecast to beat the best, or what it needs first (`_first`); one that would wait on a
        trial in flight (itself, what it needs first, or the pruning run it shares with one: a second worker coding
        the snapshot a first one codes spent the quick study's minutes on codings that are each other's substitutes),
        or whose coding a trial in flight will rule in or out, is passed over, and so is one forecast to cost more
        than the budget left once the trials in flight are paid (`over_budget` tells when that was all that
        stopped it).

        Args:
            measured: the study's finished trials by candidate key; in_flight: the keys of its running trials;
            best_latency: the best feasible latency measured; budget_s: the worker seconds left after the finished
            trials (the trials in flight are charged their forecast here).
        Returns:
            (the chosen forecast or None, whether none is left that is forecast to beat `best_latency` or to fit the
            budget: None and False means that the candidates left wait on trials in flight).
        """
        running = set(in_flight)
        flying = [t for key in running if (t := self.shapes.get(key)) is not None]
        runs = {(t.split, t.run) for t in flying if t.level >= 0}
        forecasts = self.forecasts(measured, best_latency)
        by_key = {f.candidate.key: f for f in forecasts}
        left = budget_s - sum(by_key[key].seconds for key in running if key in by_key)
        self.over_budget = False
        for f in forecasts:
            if not f.possible or f.latency >= best_latency:
                continue
            first = self._first(f.candidate, f.shape, measured)
            if first is not None and first.key in by_key:
                f = by_key[first.key]
            if f.candidate.key in running or (first is not None and first.key in running) or (
                    f.shape.level >= 0 and (f.shape.split, f.shape.run) in runs) or self._told_by(f.shape, flying):
                continue  # it would wait on a trial in flight, share the pruning run of one, or one will tell
            if f.seconds > left:
                self.over_budget = True
                continue
            self.over_budget = False
            return f, False
        waiting = bool(running) and any(f.possible and f.latency < best_latency for f in forecasts)
        return None, not waiting

    def _told_by(self, s: Shape, flying: Iterable[Shape]) -> bool:
        """Whether a trial in flight will tell if this candidate can hold: for a coding on the unpruned split, the
        same family with no less capacity, here or deeper (if it loses too much, so does this one), or, for a
        learned coding, any learned coding here (what it loses is what this one is expected to lose,
        `_other_learned_loss`); for a pruning, a run at this split no sparser at its first level (body and output)
        that holds no longer (if it misses, so does this one)."""
        if s.level < 0:
            return not s.reference and any(
                t.level < 0 and t != s and not t.reference and (
                    (t.family == s.family and _no_more(s.capacity, t.capacity)
                     and self.depth.get(t.split, 0) >= self.depth.get(s.split, 0))
                    or (s.learned and t.learned and t.split == s.split)) for t in flying)
        return any(t.level >= 0 and t.split == s.split and t.run != s.run and t.hold >= s.hold
                   and t.allocation == s.allocation and t.sparsity / (t.level + 1) <= s.sparsity + 1e-9
                   and t.output / (t.level + 1) <= s.output + 1e-9 for t in flying)

    def _first(self, c: Candidate, s: Shape, measured: Mapping[tuple, Measured]) -> Candidate | None:
        """What to measure before a coded candidate, the most telling for its cost first. Where a coding already held
        the threshold at its split, a pruned candidate's pruning 8-bit row (whether the pruning holds for every
        coding; the device FLOPs a pruning saves outweigh the bits one more coding might). Then, while the coding was
        never measured at its own split (a learned one: while no learned coding was, since what one loses there is
        what the others are expected to lose, `_other_learned_loss`), the coding on the unpruned next deeper split,
        then on its own (no pruning run; the deeper split's encoder trains with a smaller server part, and a loss
        there rules the coding out here and at every shallower split); then the pruning's 8-bit row. None when
        nothing is needed first."""
        parent = self.references.get((s.split, s.pruning)) if s.level >= 0 else None
        if parent is not None and (parent.key in measured or _levels_known(s, measured)):
            parent = None
        if parent is not None and self._codable(s.split, measured):
            return parent
        if not s.reference and not self._coded_at(s.split, s, measured) and not (
                s.learned and self._learned_at(s.split, measured)):
            here = self.depth.get(s.split, 0)
            at = {depth: split for split, depth in self.depth.items()}
            for split in (at.get(here + 1), s.split):
                alone = self.unpruned.get((split, s.family, s.capacity))
                if alone is None or alone.key in measured or self._coded_at(split, s, measured):
                    continue
                return None if alone.key == c.key else alone
        return parent

    @staticmethod
    def _coded_at(split: str, s: Shape, measured: Mapping[tuple, Measured]) -> bool:
        """Whether the study measured the candidate's coding at `split` (once measured at its own split, the deeper
        split's measurement would tell nothing more about it)."""
        return any(m.shape.split == split and m.shape.family == s.family and m.shape.capacity == s.capacity
                   for m in measured.values())

    @staticmethod
    def _learned_at(split: str, measured: Mapping[tuple, Measured]) -> bool:
        """Whether the study measured a learned coding at `split` (unpruned; or stopped while it trained)."""
        return any(m.shape.split == split and m.shape.level < 0 and m.shape.learned
                   and (m.row is not None or m.stopped) for m in measured.values())

    def _codable(self, split: str, measured: Mapping[tuple, Measured]) -> bool:
        """Whether a learned or uniform coding (other than 8 bits) held the threshold at this split."""
        return any(m.shape.split == split and not m.shape.reference and m.row is not None
                   and number(m.row, DECISION_COLUMN) >= self.threshold for m in measured.values())

    @staticmethod
    def _figures(s: Shape, probe: Mapping[str, Any], k: _Knowledge) -> dict[str, Any]:
        """The figures the latency model reads, forecast for a candidate: its pruning's as measured (its 8-bit row,
        else the device part of a coded row on its snapshot), else the unpruned split's scaled by (1 - s)^2 and by
        the least ratio of measured to scaled FLOPs among the split's pruned device parts (below 1 where a
        sensitivity allocation saved more than the uniform figure); the encoder's device FLOPs seen at the split;
        its bits."""
        keep = 1.0 - s.sparsity
        row: dict[str, Any] = dict(probe)
        pruned = k.pruning_row.get((s.split, s.pruning))
        if pruned is not None:
            row["device_flops"], row["server_flops"] = pruned.get("device_flops"), pruned.get("server_flops")
        elif s.level >= 0:
            known = k.pruned_flops.get((s.split, s.pruning))
            scaled = number(probe, "device_flops") * keep * keep * k.flops_factor.get(s.split, 1.0)
            row["device_flops"] = known[1] if known is not None else scaled
            row["device_memory_bytes"] = number(probe, "device_memory_bytes") * keep
        row["device_flops"] = number(row, "device_flops") + k.encoder_flops.get((s.split, s.family, s.capacity), 0.0)
        row[BITS_COLUMN] = k.bits(s, probe)
        return row


def _value(f: Forecast, threshold: float, best_latency: float, seconds: float) -> float:
    """Expected gain per second: the seconds of latency the candidate is expected to save on the best (its expected
    latency, else its bound; 1 before any is measured), times the chance that its validation accuracy holds the
    threshold (normal about its estimate, `SPREAD`), over its forecast cost in worker seconds."""
    latency = f.expected if math.isfinite(f.expected) else f.latency
    if not math.isfinite(latency):
        return 0.0
    gain = best_latency - latency if math.isfinite(best_latency) else 1.0
    if gain <= 0.0:
        return 0.0
    chance = 0.5 * math.erfc((threshold - f.estimate) / (SPREAD * math.sqrt(2.0))) if math.isfinite(
        f.estimate) else 1.0
    return gain * chance / max(seconds, 1.0)


def _order(f: Forecast) -> tuple:
    """Most expected gain per second first; then least latency, the shorter pruning run (the cheaper), the split
    output pruned no harder than the body, then the larger capacity: if it misses the threshold, every smaller one of
    its family is ruled out with it."""
    latency = f.latency if math.isfinite(f.latency) else math.inf
    return (-f.value, latency, f.shape.hold, f.shape.output, tuple(-x for x in f.shape.capacity),
            repr(f.candidate.params))


def _levels_known(s: Shape, measured: Mapping[tuple, Measured]) -> bool:
    """Whether the pruning's level was reported by a stopped trial of its run (its 8-bit row is then not needed to
    know whether it holds)."""
    return any(m.shape.run == s.run and m.shape.split == s.split and s.level in m.levels for m in measured.values())


def _capacity_bits(family: str, capacity: tuple[float, ...]) -> float:
    """A coding's capacity in bits per image: log2 of a vector codebook's size, d x bits of scalar codewords."""
    if family.split("/")[0] == "vector":
        return math.log2(max(2.0, capacity[0]))
    return max(1.0, math.prod(capacity)) if capacity else 1.0


def _interpolated_loss(points: Iterable[tuple[float, float]], x: float, top: float) -> float:
    """The loss against `top` at sparsity `x`, linear in the square of the sparsity between the measured points
    (sparsity, validation accuracy; the mean of those at one sparsity) nearest below and above it, the unpruned
    point (0, `top`) among them; beyond the deepest, its loss scaled by the square of the sparsity ratio."""
    by: dict[float, list[float]] = {0.0: [top]}
    for sparsity, val in points:
        by.setdefault(round(sparsity, 9), []).append(val)
    loss = {sparsity: max(0.0, top - statistics.fmean(vals)) for sparsity, vals in by.items()}
    below = max(sparsity for sparsity in loss if sparsity <= x + 1e-12)
    above = min((sparsity for sparsity in loss if sparsity > x + 1e-12), default=None)
    if above is None:
        return loss[below] * (x / below) ** 2 if below > 0 else 0.0
    t = (x * x - below * below) / (above * above - below * below)
    return loss[below] + t * (loss[above] - loss[below])


def _median(values: Iterable[float], default: float) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if finite else default


class _Knowledge:
    """What the study's finished trials tell: each split's unpruned 8-bit row, each pruning's figures and validation
    accuracy, the prunings that missed, each coding's bits, encoder FLOPs and loss at a split."""

    def __init__(self, measured: Iterable[Measured], threshold: float, depth: Mapping[str, int]) -> None:
        self.threshold, self.depth = threshold, depth
        self.probe: dict[str, Mapping[str, Any]] = {}
        self.pruning_row: dict[tuple, Mapping[str, Any]] = {}
        self.pruning_val: dict[tuple, float] = {}
        self.missed: list[Shape] = []
        self.coded: list[tuple[Shape, Mapping[str, Any]]] = []
        self.references: list[tuple[Shape, Mapping[str, Any]]] = []
        self.hopeless: list[Shape] = []  # coded trials stopped while their encoder trained
        self.run_levels: dict[tuple, dict[int, float]] = {}  # (split, run) -> level -> validation accuracy
        self.encoder_flops: dict[tuple, float] = {}
        # split -> (hold, allocation, sparsity, validation accuracy) of each pruning measured or reported there
        self.pruned_points: dict[str, list[tuple[int, str, float, float]]] = {}
        self.seconds: dict[str, list[float]] = {"coding": [], "reference": []}
        self.family_seconds: dict[str, list[float]] = {}  # a coding family's unpruned trials
        self.run_seconds: dict[tuple, float] = {}  # (split, run) -> the most seconds a trial of it was charged
        self.trained: set[tuple] = set()  # (split, run, level) known trained
        self.sent_ratio: float | None = None  # median bits sent / fixed-length bits of learned codings, once asked
        self._sent: dict[tuple, list[tuple[str, float]]] | None = None  # `expected_bits`'s coded rows, once asked
        self._losses: dict[str, list[tuple[Shape, float]]] = {}  # split -> its codings' losses, once per split
        self._loss: dict[tuple, float] = {}  # (split, family, capacity) -> `loss`
        self._other: dict[tuple, float] = {}  # (split, family, capacity) -> `_other_learned_loss`
        self._pruning: dict[tuple, float] = {}  # (split, hold, allocation, sparsity) -> `pruning_loss`
        # what a stopped trial's coding would have reached at best: below the threshold by the margin, so that only a
        # pruning that validated a margin above the stopped trial's own can still hold with that coding
        self.stopped_val = threshold - 2 * MARGIN
        for m in measured:
            s = m.shape
            self._time(m)
            for level, val in m.levels.items():  # a stopped run's reports: its levels up to the one that missed
                if s.level >= 0:
                    self._pruning_val(s, level, float(val))
            if m.row is None:
                if m.stopped and not s.reference and all(v >= threshold - MARGIN for v in m.levels.values()):
                    self.hopeless.append(s)  # its pruning held: its coding was what could not reach the threshold
                continue
            val = number(m.row, DECISION_COLUMN)
            if s.reference:
                if s.level < 0:
                    self.probe[s.split] = m.row
                self.pruning_row[(s.split, s.pruning)] = m.row
                self.references.append((s, m.row))
                self.pruning_val[(s.split, s.pruning)] = val
                if s.level >= 0:
                    self.run_levels.setdefault((s.split, s.run), {})[s.level] = val
                    self.pruned_points.setdefault(s.split, []).append((s.hold, s.allocation, s.sparsity, val))
                if val < threshold - MARGIN and s.level >= 0:
                    self.missed.append(s)
            else:
                self.coded.append((s, m.row))
        # (split, pruning) -> (sparsity, the pruned device part's FLOPs): its 8-bit row's, else a coded row's less
        # its encoder's (a learned encoder adds its own FLOPs to the part it codes; uniform + Huffman adds none)
        self.pruned_flops: dict[tuple, tuple[float, float]] = {}
        for s, row in self.coded:
            flops = number(row, "device_flops") - (number(row, "encoder_flops") if s.learned else 0.0)
            if s.level >= 0 and math.isfinite(flops):
                self.pruned_flops.setdefault((s.split, s.pruning), (s.sparsity, flops))
        for s, row in self.references:
            if s.level >= 0:
                self.pruned_flops[(s.split, s.pruning)] = (s.sparsity, number(row, "device_flops"))
        self.flops_factor: dict[str, float] = {}  # measured / (1 - s)^2 floor of the split's pruned device parts
        for (split, _), (sparsity, flops) in self.pruned_flops.items():
            floor = number(self.probe.get(split, {}), "device_flops") * (1.0 - sparsity) ** 2
            if floor > 0 and math.isfinite(flops):
                self.flops_factor[split] = min(self.flops_factor.get(split, math.inf), flops / floor)
        for s, row in self.coded:
            ref = self.pruning_row.get((s.split, s.pruning))
            if ref is not None:
                extra = max(0.0, number(row, "device_flops") - number(ref, "device_flops"))
                key = (s.split, s.family, s.capacity)
                self.encoder_flops[key] = min(self.encoder_flops.get(key, math.inf), extra)

    def _time(self, m: Measured) -> None:
        """What a trial tells of costs: its charged seconds by kind, the levels of its run that are trained."""
        s = m.shape
        if s.level >= 0:  # a run trains its levels in turn: those up to the deepest reported or measured are trained
            deepest = max([*m.levels, s.level if m.row is not None else -1])
            self.trained.update((s.split, s.run, level) for level in range(deepest + 1))
        if not math.isfinite(m.seconds):
            return
        if s.level >= 0:
            self.run_seconds[(s.split, s.run)] = max(self.run_seconds.get((s.split, s.run), 0.0), m.seconds)
        elif m.row is not None:
            self.seconds["reference" if s.reference else "coding"].append(m.seconds)
            if not s.reference:
                self.family_seconds.setdefault(s.family, []).append(m.seconds)

    def cost(self, s: Shape) -> float:
        """The worker seconds a candidate is forecast to be charged: its coding's trial (the median of the study's
        unpruned ones of its family, else of every coding: a cheaply trained encoder costs a fraction of a
        fine-tuned one, a uniform coding seconds; a reference row's for the 8-bit row), and its pruning run's while
        that level is not trained (the median of the most any trial of a run was charged)."""
        kind = "reference" if s.reference else "coding"
        seconds = _median(self.family_seconds.get(s.family, []) if kind == "coding" else [], math.nan)
        if not math.isfinite(seconds):
            seconds = _median(self.seconds[kind], CODING_SECONDS if kind == "coding" else CODING_SECONDS / 4)
        if s.level >= 0 and (s.split, s.run, s.level) not in self.trained:
            seconds += _median(self.run_seconds.values(), RUN_SECONDS)
        return seconds

    def estimate(self, s: Shape, probe: Mapping[str, Any]) -> float:
        """The expected validation accuracy (not a bound): its pruning's as measured, else the unpruned split's less
        the loss expected of its sparsity (`pruning_loss`); less the coding's loss: as measured on another snapshot
        at the split, else as on the unpruned split plus the mean extra that codings lost on the split's snapshots; a
        coding not measured on the unpruned split takes the loss of the nearest larger one of its family there,
        scaled by their capacities in bits (a code half as long loses about twice as much), else that of the learned
        coding of another family nearest in capacity, scaled by the square root (`_other_learned_loss`), and no less
        than the rules' lower bound (`loss`)."""
        top = number(probe, DECISION_COLUMN)
        base = self.pruning_val.get((s.split, s.pruning))
        if base is None:
            base = top - self.pruning_loss(s, top) if s.level >= 0 else top
        if s.reference:
            return base
        lost = self._coding_losses(s.split)
        on_snapshots = [loss for t, loss in lost if t.level >= 0 and (t.family, t.capacity) == (s.family, s.capacity)]
        if s.level >= 0 and on_snapshots:
            return base - max(on_snapshots)
        unpruned = {(t.family, t.capacity): loss for t, loss in lost if t.level < 0}
        loss = unpruned.get((s.family, s.capacity))
        if loss is None:  # the nearest larger coding of its family measured here, its loss scaled up by capacity
            larger = [(_capacity_bits(family, cap), v) for (family, cap), v in unpruned.items()
                      if family == s.family and _no_more(s.capacity, cap)]
            nearest = min(larger, default=None)
            own = _capacity_bits(s.family, s.capacity)
            loss = max(self.loss(s), nearest[1] * nearest[0] / own if nearest else self._other_learned_loss(s))
        if s.level < 0:
            return base - loss
        extra = [loss_t - unpruned[(t.family, t.capacity)] for t, loss_t in lost
                 if t.level >= 0 and (t.family, t.capacity) in unpruned]
        return base - loss - max(0.0, sum(extra) / len(extra) if extra else 0.0)

    def pruning_loss(self, s: Shape, top: float) -> float:
        """The validation accuracy a pruning not measured is expected to lose against the unpruned split's `top`:
        interpolated in the square of the sparsity between the prunings measured or reported at its split nearest
        below and above it (the unpruned split at 0), those held as long and allocated alike when there are any
        (a run held 30 iterations lost more than one held 62 at every split of the quick study), else each hold's
        carried over by `hold_ratio`, beyond the deepest one growing as the square; at a split without any,
        `a s^2` with `a` fitted by least squares to every split's, each carried to the candidate's hold (a run to
        0.48 that missed at conv4_x was followed by two at conv5_x that missed alike). One fit for all sparsities
        weighs the sparsest: at the quick study's conv4_x, runs held 62 lost 0.7 and 3.8 points at 0.24 and 0.48
        (held 30, 0.9 and 4.5), and the fit to the four forecast 1.8 at 0.32, which lost 1.0."""
        key = (s.split, s.hold, s.allocation, s.sparsity)  # once per pruning, as `loss` per coding: the candidates of
        if key not in self._pruning:  # one pruning differ in their coding alone
            self._pruning[key] = self._expected_pruning_loss(s, top)
        return self._pruning[key]

    def _expected_pruning_loss(self, s: Shape, top: float) -> float:
        here = self.pruned_points.get(s.split, [])
        alike = [(x, v) for hold, allocation, x, v in here if (hold, allocation) == (s.hold, s.allocation)]
        if alike:
            return _interpolated_loss(alike, s.sparsity, top)
        if here:  # other holds (or allocations) only: each hold's interpolated loss carried over by `hold_ratio`
            allocated = [p for p in here if p[1] == s.allocation] or here
            holds = sorted({hold for hold, *_ in allocated})
            return statistics.fmean(
                _interpolated_loss([(x, v) for h, _, x, v in allocated if h == hold], s.sparsity, top)
                * self.hold_ratio(s.hold, hold, s.sparsity) for hold in holds)
        pooled = [(x, (top - v) * self.hold_ratio(s.hold, hold, x))
                  for found in self.pruned_points.values() for hold, _, x, v in found]
        den = sum(x ** 4 for x, _ in pooled)
        a = max(0.0, sum(loss * x * x for x, loss in pooled) / den) if den > 0 else 0.0
        return a * s.sparsity ** 2

    def hold_ratio(self, hold: int, other: int, sparsity: float) -> float:
        """The loss a pruning held `hold` iterations per level is expected to have against one held `other` at the
        same sparsity: the median over the splits where both were measured of their interpolated losses' ratio
        (`_interpolated_loss`), else `(other / hold) ** HOLD_LOSS_EXPONENT`; a longer hold loses no more
        (more fine-tuning only helps), a shorter no less.

        Args:
            hold: the candidate's hold iterations.
            other: the measured prunings' hold iterations.
            sparsity: the sparsity at which the losses are compared.

        Returns:
            The factor on the loss of a pruning held `other`."""
        if hold == other:
            return 1.0
        ratios = []
        for split, found in self.pruned_points.items():
            top = number(self.probe.get(split, {}), DECISION_COLUMN)
            mine = [(x, v) for h, _, x, v in found if h == hold]
            theirs = [(x, v) for h, _, x, v in found if h == other]
            if mine and theirs and math.isfinite(top):
                den = _interpolated_loss(theirs, sparsity, top)
                if den >= LEAST_RATIO_LOSS:
                    ratios.append(_interpolated_loss(mine, sparsity, top) / den)
        ratio = statistics.median(ratios) if ratios else (other / hold) ** HOLD_LOSS_EXPONENT
        return min(ratio, 1.0) if hold > other else max(ratio, 1.0)

    def _other_learned_loss(self, s: Shape) -> float:
        """The expected loss of a learned coding none of whose family was measured at its split (0 for a uniform
        coding or where nothing tells): at that split and at each deeper one (a shallower feature codes no better),
        the loss of the learned coding of another family or training measured on the unpruned split, or stopped
        there while its encoder trained (at least its pruning's margin over the threshold lost), nearest to it in
        capacity bits, scaled by the square root of their ratio; the largest of these. Across families a loss
        moves less with capacity than within one: at the quick study's conv4_x, codings of 4, 6, 8, 32 and 64
        bits lost 2.2, 2.0, 1.6, 0.8 and 0.8 points; at its conv2_x, the 16-codeword codebook kept 17.5 % and the
        seven codings of 4 to 64 bits tried after it stopped at 12-20 %."""
        if not s.learned:
            return 0.0
        key = (s.split, s.family, s.capacity)  # once per coding and split, as `loss`
        if key not in self._other:
            self._other[key] = self._nearest_other_loss(s)
        return self._other[key]

    def _nearest_other_loss(self, s: Shape) -> float:
        own, here = _capacity_bits(s.family, s.capacity), self.depth.get(s.split, 0)
        seen: dict[str, list[tuple[float, float]]] = {}
        for split in (split for split, depth in self.depth.items() if depth >= here):
            seen[split] = [(_capacity_bits(t.family, t.capacity), loss) for t, loss in self._coding_losses(split)
                           if t.level < 0 and t.learned]
        for t in self.hopeless:
            if t.split in seen and t.level < 0 and (ref := self.pruning_val.get((t.split, t.pruning))) is not None:
                seen[t.split].append((_capacity_bits(t.family, t.capacity), ref - self.stopped_val))
        nearest = [min(found, key=lambda x: (abs(math.log(x[0] / own)), -x[1])) for found in seen.values() if found]
        return max((loss * math.sqrt(bits / own) for bits, loss in nearest), default=0.0)

    def _coding_losses(self, split: str) -> list[tuple[Shape, float]]:
        """Each coded trial at the split with what it lost against its pruning's validation accuracy (computed once
        per split: the knowledge is fixed once built, and `estimate` asks for every candidate)."""
        if split in self._losses:
            return self._losses[split]
        out = self._losses[split] = []
        for t, row in self.coded:
            ref = self.pruning_val.get((t.split, t.pruning))
            if t.split == split and ref is not None:
                out.append((t, ref - number(row, DECISION_COLUMN)))
        return out

    def _pruning_val(self, s: Shape, level: int, val: float) -> None:
        """A level of a run, reported: its validation accuracy, and a miss when below the threshold."""
        pruning = tuple((k, level if k == "snapshot" else v) for k, v in s.pruning)
        self.pruning_val.setdefault((s.split, pruning), val)
        self.run_levels.setdefault((s.split, s.run), {}).setdefault(level, val)
        self.pruned_points.setdefault(s.split, []).append(
            (s.hold, s.allocation, s.sparsity * (level + 1) / (s.level + 1), val))
        if val < self.threshold - MARGIN:
            fraction = (level + 1) / (s.level + 1)
            self.missed.append(Shape(s.split, pruning, s.run, level, s.sparsity * fraction, s.output * fraction,
                                     s.hold, "uniform", (8.0,)))

    def bits(self, s: Shape, probe: Mapping[str, Any]) -> float:
        """The bits the coding sends at this split: measured there (uniform: scaled by the channels sent), else the
        unpruned 8-bit row's bits scaled by depth and channels sent (uniform), else the most that a coding of its
        family with no more capacity sent there (more codewords or channels send no fewer bits), at least the
        fewest its coding can send (a learned coding: the shorter of a byte and its fixed-length form)."""
        same = [(t, r) for t, r in [*self.coded, *self.references] if t.split == s.split and t.family == s.family
                and t.capacity == s.capacity]
        if s.family == "uniform":
            if same:  # the measurement whose split output was pruned the most like this one's
                t, r = min(same, key=lambda tr: abs(tr[0].output - s.output))
                return number(r, BITS_COLUMN) * (1.0 - s.output) / max(1e-9, 1.0 - t.output)
            return number(probe, BITS_COLUMN) * s.capacity[0] / 8.0 * (1.0 - s.output)
        if same:
            return min(number(r, BITS_COLUMN) for _, r in same)
        smaller = [number(r, BITS_COLUMN) for t, r in self.coded if t.split == s.split and t.family == s.family
                   and _no_more(t.capacity, s.capacity)]
        return max([s.min_bits, *(b for b in smaller if math.isfinite(b))])

    def expected_bits(self, s: Shape, bound: float) -> float:
        """The bits a learned coding is expected to send (what measuring it is worth, not the bound `bits`): as
        measured at its split; else the median of what it sent at the other splits (a learned coding sends about as
        much whichever feature feeds it); else its fixed-length form times the median ratio of sent to fixed-length
        bits among the study's learned codings (1 before any); never below `bound`, its forecast by `bits`."""
        if not s.learned or not math.isfinite(s.fixed_bits):
            return bound
        if self._sent is None:  # (family, capacity) -> (split, bits sent) of each coded row, built once
            self._sent = {}
            for t, r in self.coded:
                self._sent.setdefault((t.family, t.capacity), []).append((t.split, number(r, BITS_COLUMN)))
        same = self._sent.get((s.family, s.capacity), [])
        if any(split == s.split for split, _ in same):
            return bound
        if same:
            return max(bound, _median((b for _, b in same), bound))
        if self.sent_ratio is None:
            self.sent_ratio = _median((number(r, BITS_COLUMN) / t.fixed_bits for t, r in self.coded
                                       if t.learned and t.fixed_bits > 0), 1.0)
        return max(bound, s.fixed_bits * self.sent_ratio)

    def val(self, s: Shape, probe: Mapping[str, Any]) -> tuple[float, str]:
        """The forecast validation accuracy (optimistic: the pruning's 8-bit row, else the unpruned split's, less the
        coding's least loss there), or why it cannot meet the threshold."""
        if s.level >= 0:
            for m in self.missed:
                if (m.split == s.split and m.allocation == s.allocation and m.sparsity <= s.sparsity + 1e-9
                        and m.output <= s.output + 1e-9 and m.hold >= s.hold):
                    return math.nan, "a no sparser pruning at this split missed the threshold"
        base = self.pruning_val.get((s.split, s.pruning))
        if s.level >= 0:  # a run only removes channels: a deeper level validates no better than a shallower one
            shallower = [v for level, v in self.run_levels.get((s.split, s.run), {}).items() if level <= s.level]
            if shallower and min(shallower) < self.threshold:
                return math.nan, "a level of its run no deeper missed the threshold"
            if base is None and shallower:
                base = min(shallower)
        val = number(probe, DECISION_COLUMN) if base is None else base
        return val - self.loss(s), ""

    def loss(self, s: Shape) -> float:
        """The least validation accuracy this coding loses against its pruning's 8-bit row at this split: for each
        coding of its family with no less capacity measured here or at a deeper split (a feature closer to the task
        codes no worse: the paper's Fig. 3; in the quick sweep the same encoders hold 57-66 % at conv3_x and 83 % at
        conv4_x), the smallest loss seen (a trial stopped while its encoder trained: too much to hold the threshold
        from its pruning); the largest of those."""
        if s.reference:
            return 0.0
        key = (s.split, s.family, s.capacity)  # the knowledge is fixed once built: each coding's loss once per split
        if key not in self._loss:
            self._loss[key] = self._least_loss(s)
        return self._loss[key]

    def _least_loss(self, s: Shape) -> float:
        seen: dict[tuple[str, tuple[float, ...]], float] = {}
        here = self.depth.get(s.split, 0)
        for t, val in [*((t, number(row, DECISION_COLUMN)) for t, row in self.coded),
                       *((t, self.stopped_val) for t in self.hopeless)]:
            ref = self.pruning_val.get((t.split, t.pruning))
            if self.depth.get(t.split, 0) >= here and t.family == s.family and ref is not None:
                key = (t.split, t.capacity)
                seen[key] = min(seen.get(key, math.inf), ref - val)
        return max((v for (_, cap), v in seen.items() if _no_more(s.capacity, cap) and math.isfinite(v)),
                   default=0.0)
