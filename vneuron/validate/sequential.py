"""Sequential Monte-Carlo p-values for random controls (Besag & Clifford 1991).

Controls are drawn one at a time. Once ``h`` of them are at least as extreme as the located set,
drawing stops: the p-value is then h / drawn, exact under the null, and no later control could
have made it small. If the located set stays ahead, controls are drawn up to the maximum and the
p-value is (g + 1) / (drawn + 1) with g the extreme ones, as with a fixed number of controls. A
null result, the common case, so costs a few controls; a strong one costs all of them. With at
most 20 controls and h = 3, every p ≤ 3/21 is reached exactly as by drawing all 20.

``extend_to``: a located set still ahead of EVERY control once ``maximum`` are drawn keeps drawing,
with the same rule, up to ``extend_to`` controls, so p can reach 1 / (extend_to + 1) (0.005 at 200)
where 20 controls stop at 1/21. The p-value stays valid: below 1/(maximum + 1) the event "p ≤ α"
is one of the plain rule with cap ``extend_to``, and above it every path of the extension has
p ≤ α whenever the fixed-``maximum`` p (g + 1)/(maximum + 1) = 1/(maximum + 1) ≤ α does.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Sequential:
    """The stopping rule for one located effect; ``h = 0`` draws every control."""

    effect: float
    tail: str  # "lower": the located set lowers orientation more than chance; "higher": raises it
    h: int
    maximum: int
    extend_to: int = 0  # keep drawing up to this many while every control drawn is behind the located set (0: no extension)
    effects: list[float] = field(default_factory=list)
    extended: bool = False

    def extreme(self, control_effect: float) -> bool:
        return control_effect <= self.effect if self.tail == "lower" else control_effect >= self.effect

    @property
    def hits(self) -> int:
        return sum(self.extreme(e) for e in self.effects)

    @property
    def stopped_early(self) -> bool:
        return self.h > 0 and self.hits >= self.h

    def first(self) -> int:
        """Controls that are always drawn (the rule cannot stop before h): sent with the located set."""
        return min(self.h, self.maximum) if self.h > 0 else self.maximum

    @property
    def cap(self) -> int:
        return max(self.maximum, self.extend_to) if self.extended else self.maximum

    def more(self) -> bool:
        """Draw another control?"""
        if self.stopped_early:
            return False
        if len(self.effects) == self.maximum and self.extend_to > self.maximum and self.hits == 0:
            self.extended = True  # decided once, when the first ``maximum`` are in
        return len(self.effects) < self.cap

    def add(self, control_effect: float) -> None:
        self.effects.append(float(control_effect))

    def report(self) -> dict:
        drawn, hits = len(self.effects), self.hits
        if self.stopped_early:
            reason, p = f"{hits} controls at least as extreme as the located set", hits / drawn
        elif self.extended:
            reason, p = (f"the located set stayed ahead of all {self.maximum} controls: drawing went on to {drawn}",
                         (hits + 1) / (drawn + 1))
        elif self.h > 0:
            reason, p = "the located set stayed ahead: every control drawn", (hits + 1) / (drawn + 1)
        else:
            reason, p = "all controls requested (no early stop)", (hits + 1) / (drawn + 1)
        return {"controls_drawn": drawn, "controls_max": self.maximum, "controls_extend_to": self.extend_to,
                "controls_extended": self.extended, "stop_h": self.h, "tail": self.tail, "stop_reason": reason, "p_sequential": p,
                "p_floor": 1 / (max(self.maximum, self.extend_to) + 1)}
