"""The users a process has seen in each experiment: each one's assignment (its variant) is
written to the assignments table once, at the flush after its first sighting in the variant.
Bounded: at most ``MAX_UNITS`` remembered (the flush forgets the older half of a full table:
a user forgotten and seen again is written again, which is harmless, the rows idempotent) and
``MAX_PENDING_ASSIGNMENTS`` waiting to be written. Methods run under the recorder's lock."""

from __future__ import annotations

from reconciler.runtime.experiment_state import unit_hash
from reconciler.runtime.health import Health

MAX_UNITS = 100_000  # users remembered per process (to write each one's assignment once)
MAX_PENDING_ASSIGNMENTS = 200_000

Exposure = tuple[str, str, str, float]  # (recording key, variant, unit, epoch seconds)


class SeenUnits:
    """Key -> unit -> variant for the units seen, and (key, unit) -> cluster for those whose
    metrics were recorded (the id hashed once); the assignments not written yet."""

    def __init__(self, health: Health) -> None:
        self.health = health
        self.units: dict[str, dict[str, str]] = {}
        self.count = 0  # units remembered, over all experiments
        self.clusters: dict[tuple[str, str], int] = {}
        self.assignments: list[Exposure] = []  # first sightings, their assignment not written

    def cluster(self, key: str, unit: str) -> int:
        """The unit's cluster in the experiment (its id hashed once, while there is room)."""
        pair = (key, unit)
        found = self.clusters.get(pair)
        if found is None:
            found = unit_hash(key.split("~", 1)[0], unit)[1]
            if len(self.clusters) < MAX_UNITS:
                self.clusters[pair] = found
        return found

    def saw(self, key: str, unit: str, variant: str, now: float) -> None:
        """One sighting (a metric recorded): its assignment queued unless already seen in it."""
        units = self.units.get(key)
        if units is not None and units.get(unit) == variant:
            return
        self.remember(key, [(key, variant, unit, now)])

    def remember(self, key: str, batch: list[Exposure]) -> None:
        """Queue for the assignments table the experiment's units that this process has not
        seen in their variant (in the last variant each was seen in here, at the first time),
        and remember them."""
        units = self.units.get(key)
        if units is None:
            units = self.units[key] = {}
        latest: dict[str, str] = {}  # unit -> the last variant it was seen in
        for entry in batch:
            latest[entry[2]] = entry[1]
        fresh: list[Exposure]
        if len(latest) == len(batch):  # each unit once (the common case): its own sighting
            fresh = [entry for entry in batch if units.get(entry[2]) != entry[1]]
        else:
            first: dict[str, float] = {}  # unit -> the time it was first seen
            for entry in reversed(batch):
                first[entry[2]] = entry[3]
            fresh = [
                (key, variant, unit, first[unit])
                for unit, variant in latest.items()
                if units.get(unit) != variant
            ]
        if not fresh:
            return  # all seen before, each in its variant (returning users)
        if self.count + len(fresh) <= MAX_UNITS:
            before = len(units)
            units.update((entry[2], entry[1]) for entry in fresh)
            self.count += len(units) - before
        else:  # nearly full: those seen before updated, new ones while there is room
            for _, variant, unit, _ in fresh:
                if unit in units:
                    units[unit] = variant
                elif self.count < MAX_UNITS:  # a full table is trimmed by the next flush
                    units[unit] = variant
                    self.count += 1
        room = max(0, MAX_PENDING_ASSIGNMENTS - len(self.assignments))
        if len(fresh) > room:
            self.health.reject("assignments_backlog", len(fresh) - room)
            fresh = fresh[:room]
        self.assignments.extend(fresh)

    def take(self) -> list[Exposure]:
        """The assignments to write now (put back with ``put_back`` should the write fail)."""
        taken, self.assignments = self.assignments, []
        return taken

    def put_back(self, taken: list[Exposure]) -> None:
        room = MAX_PENDING_ASSIGNMENTS - len(self.assignments)
        self.assignments[:0] = taken[: max(0, room)]

    def trim(self) -> object:
        """Forget the older half of a full table; what was forgotten, for the caller to free
        outside the lock."""
        forgotten: list[object] = []
        if self.count >= MAX_UNITS:
            forgotten.append(self.units)
            kept: dict[str, dict[str, str]] = {}
            for key, units in self.units.items():
                names = list(units)
                kept[key] = {unit: units[unit] for unit in names[len(names) // 2 :]}
            self.units = kept
            self.count = sum(len(units) for units in kept.values())
        if len(self.clusters) >= MAX_UNITS:
            forgotten.append(self.clusters)
            pairs = list(self.clusters.items())
            self.clusters = dict(pairs[MAX_UNITS // 2 :])
        return forgotten
