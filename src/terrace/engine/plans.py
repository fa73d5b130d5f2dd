"""Resource plans: what a service's ``plan: <id>`` gets (CPU, memory, disk) and what it costs.

Plan ids are per installation in real files (8, 20, 21, 101, ...), so Terrace ships a default
table covering the ids seen in public ``ci.yml`` files, and an admin may replace it with
``$TERRACE_HOME/plans.yml``. A deploy refuses a plan id the table does not have.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from terrace.spec.diagnostics import Collector
from terrace.spec.document import load_document
from terrace.spec.reader import Reader
from terrace.spec.validate import read_text

__all__ = ["BUILT_IN", "DEFAULT_PLANS", "PLANS_FILE", "PlanTable", "ResourcePlan", "load_plans"]

PLANS_FILE = "plans.yml"


@dataclass(frozen=True, slots=True, kw_only=True)
class ResourcePlan:
    """What one plan gives each replica, and its price."""

    id: int
    name: str
    cpu: float
    """Cores (a cgroup CPU quota): 0.5 is half a core."""
    memory_mib: int
    disk_mib: int
    price_per_hour: float
    """In the installation's currency, per replica."""


_Row = tuple[int, str, float, int, int, float]


def _plans(rows: Iterable[_Row]) -> tuple[ResourcePlan, ...]:
    return tuple(
        ResourcePlan(id=i, name=n, cpu=c, memory_mib=m, disk_mib=d, price_per_hour=p)
        for i, n, c, m, d, p in rows
    )


DEFAULT_PLANS: tuple[ResourcePlan, ...] = _plans(
    [
        # id, name, cores, memory MiB, disk MiB, price per hour
        (4, "micro", 0.5, 512, 2_048, 0.005),
        (8, "boost", 1.0, 2_048, 10_240, 0.015),
        (9, "boost-plus", 1.0, 4_096, 10_240, 0.02),
        (16, "pro", 2.0, 4_096, 20_480, 0.04),
        (20, "pro-plus", 2.0, 8_192, 20_480, 0.06),
        (21, "max", 4.0, 8_192, 40_960, 0.09),
        (22, "max-plus", 4.0, 16_384, 40_960, 0.13),
        (101, "db-small", 1.0, 2_048, 20_480, 0.02),
        (201, "db-medium", 2.0, 4_096, 51_200, 0.05),
        (202, "db-large", 4.0, 8_192, 102_400, 0.1),
        (301, "xl", 8.0, 32_768, 102_400, 0.3),
    ]
)
"""The ids seen in public ci.yml files (see tests/data/conformance), as a plausible ladder."""


@dataclass(frozen=True, slots=True)
class PlanTable:
    """The plans of one installation, and the one a service without ``plan`` gets."""

    plans: Mapping[int, ResourcePlan]
    default_id: int
    source: str = "built in"

    @classmethod
    def of(
        cls, plans: Iterable[ResourcePlan], *, default_id: int, source: str = "built in"
    ) -> PlanTable:
        table = MappingProxyType({plan.id: plan for plan in plans})
        if default_id not in table:
            raise ValueError(f"default plan {default_id} is not in the table")
        return cls(table, default_id, source)

    def get(self, plan_id: int | None) -> ResourcePlan | None:
        return self.plans.get(self.default_id if plan_id is None else plan_id)

    def describe(self) -> str:
        """``4 (micro), 8 (boost), ...``: for messages about an unknown id."""
        return ", ".join(f"{plan.id} ({plan.name})" for plan in self.plans.values())


BUILT_IN = PlanTable.of(DEFAULT_PLANS, default_id=8)


def load_plans(home: Path) -> PlanTable:
    """``home/plans.yml`` if it exists, else the built-in table.

    The file is a list under ``plans`` (``id``, ``name``, ``cpu``, ``memoryMiB``, ``diskMiB``,
    ``pricePerHour``) and a ``default`` plan id. A mistake is a SpecError naming its line.
    """
    path = home / PLANS_FILE
    if not path.exists():
        return BUILT_IN
    name = str(path)
    collector = Collector(name)
    doc = load_document(read_text(path), file=name, collector=collector)
    reader = Reader(doc, collector)
    root = reader.root("plan table")
    plans: list[ResourcePlan] = []
    default_id: int | None = None
    if root is not None:
        root.check_keys(("plans", "default"), where="the plan table")
        default_id = root.integer("default", minimum=1, required="the id of the default plan")
        root.require("plans", "the list of plans")
        seen: set[int] = set()
        for path_, item in root.sequence("plans"):
            view = reader.as_map(path_, item, what="a plan")
            if view is None:
                continue
            view.check_keys(
                ("id", "name", "cpu", "memoryMiB", "diskMiB", "pricePerHour"), where="a plan"
            )
            id_ = view.integer("id", minimum=1, required="the plan's id")
            plan_name = view.string("name", required="the plan's name")
            cpu = view.number("cpu", minimum=0.01, required="a number of cores")
            memory = view.integer("memoryMiB", minimum=16, required="memory in MiB")
            disk = view.integer("diskMiB", minimum=1, required="disk in MiB")
            price = view.number("pricePerHour", minimum=0.0, required="a price")
            if id_ is not None and id_ in seen:
                view.error("id", f"plan {id_} is listed twice")
            if id_ is not None:
                seen.add(id_)
            if id_ is None or plan_name is None or cpu is None or memory is None:
                continue
            if disk is None or price is None:
                continue
            plans.append(
                ResourcePlan(
                    id=id_,
                    name=plan_name,
                    cpu=cpu,
                    memory_mib=memory,
                    disk_mib=disk,
                    price_per_hour=price,
                )
            )
        if default_id is not None and default_id not in seen and not collector.errors:
            root.error("default", f"default plan {default_id} is not in the list")
    collector.raise_if_errors()
    assert default_id is not None
    return PlanTable.of(plans, default_id=default_id, source=name)
