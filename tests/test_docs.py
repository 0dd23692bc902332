"""The documentation under docs/ keeps up with the code: every config key, loss, loss option
and zoo column is documented, and no doc points outside the repository."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
REFERENCE = DOCS / "reference.md"
ZOO = DOCS / "zoo.md"


def _read(path: Path) -> str:
    assert path.is_file(), f"{path} is missing"
    return path.read_text(encoding="utf-8")


def _section(text: str, name: str, where: str) -> str:
    """The text under the first heading that names `name` in backticks (or is `name`), up
    to the next heading of the same or a higher level."""
    lines = text.splitlines()
    tick = f"`{name}`"
    for i, line in enumerate(lines):
        m = re.match(r"^(#+)\s", line)
        if m and (tick in line or line[m.end():].strip() == name):
            level = len(m.group(1))
            end = next(
                (j for j in range(i + 1, len(lines))
                 if (h := re.match(r"^(#+)\s", lines[j])) and len(h.group(1)) <= level),
                len(lines),
            )
            return "\n".join(lines[i:end])
    pytest.fail(f"{where}: no heading naming {tick}")


def _missing(section: str, names) -> list[str]:
    return sorted(n for n in names if f"`{n}`" not in section)


def _config_classes():
    from wsmerge.evaluate import EvalConfig
    from wsmerge.model import ModelConfig
    from wsmerge.pairs import PairConfig
    from wsmerge.train import RunConfig
    from wsmerge.zoo import TrainConfig, ZooConfig

    from sweeps.engine import Objective, RepeatConfig, SchedulerConfig, SweepConfig, WandbConfig

    return [ZooConfig, TrainConfig, RunConfig, ModelConfig, PairConfig, EvalConfig, SweepConfig, Objective,
            SchedulerConfig, WandbConfig, RepeatConfig]


@pytest.mark.parametrize("cls", _config_classes(), ids=lambda c: c.__name__)
def test_every_config_field_is_in_the_reference(cls):
    section = _section(_read(REFERENCE), cls.__name__, "docs/reference.md")
    missing = _missing(section, [f.name for f in dataclasses.fields(cls)])
    assert not missing, f"docs/reference.md, section {cls.__name__}: undocumented keys {missing}"


def test_every_loss_and_option_is_in_the_reference():
    from wsmerge.losses import LOSSES

    text = _read(REFERENCE)
    problems = []
    for name, spec in LOSSES.items():
        section = _section(text, name, "docs/reference.md (losses)")
        missing = _missing(section, [f.name for f in dataclasses.fields(spec.options)])
        if missing:
            problems.append(f"{name}: options {missing}")
    assert not problems, "docs/reference.md: undocumented loss options: " + "; ".join(problems)


def test_presets_and_scenarios_are_in_the_reference():
    from wsmerge.model import PRESETS
    from wsmerge.pairs import SCENARIOS
    from wsmerge.zoo import PROFILES

    text = _read(REFERENCE)
    missing = _missing(text, [*PRESETS, *SCENARIOS, *PROFILES])
    assert not missing, f"docs/reference.md: presets, scenarios or profiles {missing} not documented"


def test_run_outputs_are_in_the_reference():
    from wsmerge.train import BEST, CHECKPOINT, PREDICTIVENESS

    outputs = _section(_read(REFERENCE), "Outputs of a run", "docs/reference.md")
    names = [CHECKPOINT, BEST, PREDICTIVENESS, "history.json", "result.json", "test_pairs.csv"]
    missing = [n for n in names if not re.search(rf"^#+ .*`{re.escape(n)}`", outputs, re.M)]
    assert not missing, f"docs/reference.md, Outputs of a run: no section for {missing}"


def test_sweep_config_fields_are_in_the_reference():
    import sweeps.engine as engine
    from sweeps.hparams import HparamSpace
    from sweeps.loss_combo import LossSpace

    names = ("SweepConfig", "Objective", "SchedulerConfig", "WandbConfig", "Param")
    classes = [getattr(engine, n) for n in names] + [LossSpace, HparamSpace]
    assert all(dataclasses.is_dataclass(c) for c in classes)
    text = _read(REFERENCE)
    problems = []
    for cls in classes:
        section = _section(text, cls.__name__, "docs/reference.md (sweep)")
        missing = _missing(section, [f.name for f in dataclasses.fields(cls)])
        if missing:
            problems.append(f"{cls.__name__}: {missing}")
    assert not problems, "docs/reference.md: undocumented sweep keys: " + "; ".join(problems)


def test_every_zoo_column_is_in_the_zoo_doc():
    from wsmerge.zoo._store import _INIT_SCHEMA, SCHEMA

    text = _read(ZOO)
    missing = _missing(text, SCHEMA.names)
    assert not missing, f"docs/zoo.md: undocumented zoo columns {missing}"
    init = _section(text, "init.parquet", "docs/zoo.md")
    missing = _missing(init, _INIT_SCHEMA.names)
    assert not missing, f"docs/zoo.md, init.parquet: undocumented columns {missing}"


def test_demo_has_an_expected_output_section_with_a_transcript():
    text = _read(DOCS / "demo.md")
    heading = re.search(r"^#+ Expected output\s*$", text, re.M)
    assert heading
    # The transcript ends as the main command ends: the top trials with their unit, then the results.
    transcript = re.search(r"^```\n(.*?)^```", text[heading.end():], re.M | re.S)
    assert transcript and "intervals resampling" in transcript.group(1)
    assert "results: results/loss_combo_tiny/ranking.md" in transcript.group(1)


@pytest.mark.parametrize("doc", ["architecture.md", "zoo.md", "reference.md", "demo.md"])
def test_doc_exists(doc):
    assert _read(DOCS / doc).strip()


def test_docs_stay_inside_the_repository():
    for path in sorted(DOCS.rglob("*.md")):
        text = path.read_text(encoding="utf-8")
        for bad in ("../shared", "DESIGN.md"):
            assert bad not in text, f"{path.relative_to(DOCS.parent)} mentions {bad!r}, which users never see"


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped except - and _,
    spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.M | re.S)
    return {_slug(m) for m in re.findall(r"^#+\s+(.*)$", text, re.M)}


def test_links_between_docs_resolve():
    problems = []
    for path in sorted(DOCS.glob("*.md")):
        for target, anchor in re.findall(r"\]\(([^)#:\s]*)(?:#([^)\s]*))?\)", path.read_text(encoding="utf-8")):
            dest = path if not target else path.parent / target
            if target and not dest.is_file():
                problems.append(f"{path.name} → {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                problems.append(f"{path.name} → {target or path.name}#{anchor} (no such heading)")
    assert not problems, f"broken links: {problems}"
