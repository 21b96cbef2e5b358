"""Scoring detector flags against ground-truth labels: precision, recall, F1 and detection delay.

A *flag* is one incident (one anomaly id): when it fired and, if it did, when it resolved. A
flag *matches* a label when the detector (anomaly kind) and the subject are the label's, and it
fired within the label's span: at or after the fault's onset and at most ``grace_s`` after its
end. Then, per flag:

* it matches a required label: a **true** flag; if every label it matches had already been matched
  by an earlier flag it is also counted as a **refire** (an incident that resolved and fired
  again during the same fault: chatter, reported, but not a false positive);
* it matches only ``may`` labels (findings that are true but not required): **allowed**, counted
  neither way;
* it matches nothing (wrong subject, fired before the onset, or long after the end): **false**.

Per required label: **detected** if a flag matched it (delay = its first match's firing minus the
onset), or if an incident of the same detector and subject that is itself a true flag was still
open at the onset (overlapping faults on one subject raise one incident, by design: delay 0).
Otherwise it is missed (a false negative).

Per detector: precision = true / (true + false) flags, recall = detected / required labels,
F1 their harmonic mean; delays as seconds and as sampling windows; **chatter** = true flags per
detected label (incidents raised per true condition: 1.0 is one page per fault, 2.0 a page that
resolved and fired again); and the **time to resolve**: for each true flag of a fault that ended
before its scenario did (``Label.ends``), its resolution minus the fault's end (a flag still open
when the scenario ended is counted as unresolved). A detector with no flag has no
precision, one with no label no recall (shown as "-").
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Literal

from hpcinsight.harness.scenario import Label

Verdict = Literal["true", "allowed", "false"]


@dataclass(frozen=True)
class Flag:
    """One incident raised by a detector, times in seconds since the scenario started."""

    id: str
    detector: str
    subject: str
    fired_s: float
    resolved_s: float | None = None
    scenario: str | None = None  # the scenario whose cluster it is about; None: none of them


@dataclass
class FlagResult:
    flag: Flag
    verdict: Verdict
    labels: list[Label] = field(default_factory=list)
    refire: bool = False


@dataclass
class LabelResult:
    label: Label
    detected: bool
    delay_s: float | None = None
    flag: Flag | None = None  # the first matching flag (or the open incident that covered it)
    covered: bool = False


@dataclass
class DetectorScore:
    detector: str
    labels: int = 0
    detected: int = 0
    true_flags: int = 0
    false_flags: int = 0
    allowed_flags: int = 0
    refires: int = 0
    delays_s: list[float] = field(default_factory=list)
    resolve_s: list[float] = field(default_factory=list)  # time to resolve after the fault ended, per true flag
    unresolved: int = 0  # true flags of faults that ended, still open when the scenario did

    @property
    def chatter(self) -> float | None:
        """Incidents raised per detected condition (ideal 1.0)."""
        return self.true_flags / self.detected if self.detected else None

    @property
    def median_resolve_s(self) -> float | None:
        return statistics.median(self.resolve_s) if self.resolve_s else None

    @property
    def precision(self) -> float | None:
        scored = self.true_flags + self.false_flags
        return self.true_flags / scored if scored else None

    @property
    def recall(self) -> float | None:
        return self.detected / self.labels if self.labels else None

    @property
    def f1(self) -> float | None:
        p, r = self.precision, self.recall
        if r == 0:
            return 0.0
        if p is None or r is None:
            return None
        return 2 * p * r / (p + r) if p + r else 0.0

    @property
    def median_delay_s(self) -> float | None:
        return statistics.median(self.delays_s) if self.delays_s else None


@dataclass
class Score:
    flags: list[FlagResult]
    labels: list[LabelResult]
    window_s: float

    def by_detector(self, detectors: list[str] | tuple[str, ...] = ()) -> dict[str, DetectorScore]:
        """Per-detector totals; every detector in ``detectors`` gets a row even with nothing to count."""
        out = {d: DetectorScore(d) for d in detectors}
        for r in self.labels:
            s = out.setdefault(r.label.detector, DetectorScore(r.label.detector))
            s.labels += 1
            if r.detected:
                s.detected += 1
                s.delays_s.append(r.delay_s or 0.0)
        for f in self.flags:
            s = out.setdefault(f.flag.detector, DetectorScore(f.flag.detector))
            if f.verdict == "true":
                s.true_flags += 1
                s.refires += f.refire
                ended = [lab for lab in f.labels if lab.required and lab.ends]
                if ended:
                    end = max(lab.end_s for lab in ended)
                    if f.flag.resolved_s is None:
                        s.unresolved += 1
                    else:
                        s.resolve_s.append(max(0.0, f.flag.resolved_s - end))
            elif f.verdict == "false":
                s.false_flags += 1
            else:
                s.allowed_flags += 1
        return dict(sorted(out.items()))


def _matches(flag: Flag, label: Label) -> bool:
    return (
        flag.scenario == label.scenario
        and flag.detector == label.detector
        and flag.subject == label.subject
        and label.onset_s <= flag.fired_s <= label.end_s + label.grace_s
    )


def score(labels: list[Label] | tuple[Label, ...], flags: list[Flag], window_s: float) -> Score:
    """Match ``flags`` to ``labels`` (see the module's doc) and say what each flag and label is."""
    flags = sorted(flags, key=lambda f: (f.fired_s, f.id))
    required = [label for label in labels if label.required]
    first: dict[int, Flag] = {}  # index of a required label -> the first flag that matched it
    flag_results: list[FlagResult] = []
    for flag in flags:
        matched = [label for label in labels if _matches(flag, label)]
        hits = [i for i, label in enumerate(required) if label in matched]
        if hits:
            refire = all(i in first for i in hits)
            for i in hits:
                first.setdefault(i, flag)
            flag_results.append(FlagResult(flag, "true", matched, refire))
        elif matched:
            flag_results.append(FlagResult(flag, "allowed", matched))
        else:
            flag_results.append(FlagResult(flag, "false"))
    true_flags = [r.flag for r in flag_results if r.verdict == "true"]
    label_results: list[LabelResult] = []
    for i, label in enumerate(required):
        flag = first.get(i)
        if flag is not None:
            label_results.append(LabelResult(label, True, flag.fired_s - label.onset_s, flag))
            continue
        cover = next(
            (
                f
                for f in true_flags
                if f.scenario == label.scenario
                and f.detector == label.detector
                and f.subject == label.subject
                and f.fired_s < label.onset_s
                and (f.resolved_s is None or f.resolved_s > label.onset_s)
            ),
            None,
        )
        if cover is not None:
            label_results.append(LabelResult(label, True, 0.0, cover, covered=True))
        else:
            label_results.append(LabelResult(label, False))
    return Score(flag_results, label_results, window_s)
