"""Reference registry (results/references/*.yaml): shipped files, validation, comparison."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from fakeruns import expected_cells, write_fake_run

from harness.errors import HarnessError
from harness.report.references import compare_with_references, load_references
from harness.report import build_report

REGISTRY_NAMES = {"simclr", "sdclr", "conmix", "propos", "byol", "hadis", "dcl",
                  "debiased_clustering", "kmeans"}


@pytest.fixture(scope="module")
def refs() -> pd.DataFrame:
    return load_references()


def _one(refs: pd.DataFrame, **where: object) -> pd.Series:
    mask = pd.Series(True, index=refs.index)
    for key, value in where.items():
        mask &= refs[key] == value
    hits = refs[mask]
    assert len(hits) == 1, (where, len(hits))
    return hits.iloc[0]


def test_shipped_registry_counts_and_spot_values(refs: pd.DataFrame) -> None:
    # Every table of references.md §2-§7, all rows, '-' cells omitted.
    assert refs.groupby("source").size().to_dict() == {
        "miniclustering_iclr2026": 32, "dcboost_table15": 36, "propos_tpami_table2": 211,
        "propos_arxiv_v1": 144, "hadis_table2": 300, "torch_clustering_benchmark": 9}
    assert _one(refs, source="propos_tpami_table2", method="propos", dataset="cifar10",
                metric="acc").value == 94.3
    pcl = _one(refs, source="propos_tpami_table2", label="PCL", dataset="stl10", metric="acc")
    assert pcl.value == 41.0 and "doubtful" in pcl.notes
    repro = _one(refs, source="hadis_table2", method="propos", dataset="cifar20", metric="acc")
    assert repro.value == 52.8 and "reproduction" in repro.notes
    ncc = _one(refs, source="propos_arxiv_v1", method="propos", dataset="cifar10", metric="acc")
    assert (ncc["value"], ncc["std"]) == (94.3, 0.6)
    scan = _one(refs, source="propos_arxiv_v1", label="SCAN (fn. 3)", dataset="stl10",
                metric="nmi")
    assert scan.value == 80.9 and "swapped" in scan.notes
    mini = _one(refs, source="miniclustering_iclr2026", method="conmix", metric="caa")
    assert (mini.value, mini.ir, mini.status, mini.split) == (65.4, "5", "secondary", "lt_train")
    dcb = _one(refs, source="dcboost_table15", method="propos", dataset="cifar20", metric="ari")
    assert (dcb.value, dcb.ir, dcb.status) == (29.9, "10", "confirmed")
    torch_km = _one(refs, source="torch_clustering_benchmark", metric="acc",
                    method="baseline:torch_clustering-kmeans")
    assert torch_km.value == 92.35


def test_registry_names_and_protocols(refs: pd.DataFrame) -> None:
    methods = set(refs["method"])
    assert all(m in REGISTRY_NAMES or m.startswith("baseline:") for m in methods)
    assert {"propos", "byol", "hadis", "conmix", "kmeans"} <= methods
    balanced = refs[refs["balanced"]]
    assert set(balanced["ir"]) == {"1"} and set(balanced["split"]) == {"train+test"}
    assert set(refs.loc[~refs["balanced"], "split"]) == {"lt_train"}
    assert set(refs["dataset"]) == {"cifar10", "cifar20", "stl10", "imagenet10", "imagenet_dogs"}


GOOD = """source:
  id: {id}
  status: confirmed
  protocol: {split: lt_train}
entries:
  - {method: propos, dataset: cifar10, ir: 10, metric: acc, value: 50.0}
"""


@pytest.mark.parametrize("text, match", [
    (GOOD.replace("value: 50.0", "valu: 50.0"), r"bad\.yaml: entries\[0\]: missing key 'value'"),
    (GOOD.replace("metric: acc", "metric: accuracy"), r"entries\[0\]: key 'metric'"),
    (GOOD.replace("ir: 10", "ir: 0.5"), r"entries\[0\]: key 'ir'"),
    (GOOD.replace("method: propos", "method: ProPos"), r"key 'method'.*baseline:<Name>"),
    (GOOD.replace("status: confirmed", "status: maybe"), r"source\.status"),
    (GOOD.replace("split: lt_train", "split: val"), r"source\.protocol\.split"),
    (GOOD.replace("{id}", "other"), r"source\.id.*must equal the file name 'bad'"),
    (GOOD + "  - {method: x, dataset: [}\n", "not valid YAML"),
])
def test_malformed_yaml_names_file_and_key(tmp_path: Path, text: str, match: str) -> None:
    (tmp_path / "bad.yaml").write_text(text.replace("{id}", "bad"))
    with pytest.raises(HarnessError, match=match):
        load_references(tmp_path)


def test_compare_marks_and_context() -> None:
    refs = pd.DataFrame([
        {"source": "s", "method": "m", "label": "m", "dataset": "d", "ir": "10", "metric": "acc",
         "value": 60.0, "std": float("nan"), "status": "confirmed", "split": "lt_train",
         "balanced": False, "notes": ""},
        {"source": "s", "method": "m", "label": "m", "dataset": "d", "ir": "10", "metric": "nmi",
         "value": 50.0, "std": 3.0, "status": "secondary", "split": "lt_train",
         "balanced": False, "notes": ""},
        {"source": "s", "method": "m", "label": "m", "dataset": "d", "ir": "1", "metric": "acc",
         "value": 90.0, "std": float("nan"), "status": "confirmed", "split": "train+test",
         "balanced": True, "notes": ""},
        {"source": "s", "method": "m", "label": "m", "dataset": "d", "ir": "10", "metric": "ari",
         "value": 30.0, "std": float("nan"), "status": "confirmed", "split": "lt_train",
         "balanced": False, "notes": "", "features": "backbone"},
    ])
    ours = pd.DataFrame([
        {"method": "m", "dataset": "d", "ir": "10", "metric": "acc", "mean": 60.8, "std": 0.2,
         "split": "lt_train"},
        {"method": "m", "dataset": "d", "ir": "10", "metric": "nmi", "mean": 47.5, "std": 0.5,
         "split": "lt_train"},
        {"method": "m", "dataset": "d", "ir": "10", "metric": "ari", "mean": 30.0, "std": 0.5,
         "split": "lt_train"},
    ]).assign(features="projector")
    comp = compare_with_references(ours, refs, tolerance=1.0)
    marks = {(r.metric, r.ir, r.comparable): r.mark for r in comp.itertuples()}
    assert marks == {("acc", "10", True): "✓", ("nmi", "10", True): "✓",
                     ("acc", "10", False): "", ("ari", "10", False): ""}
    assert list(comp["comparable"]) == [True, True, False, False]
    context = dict(zip(comp["metric"], comp["context"]))
    assert context["acc"] == "context only: reference IR 1, split train+test, balanced"
    assert context["ari"] == "context only: reference IR 10, split lt_train, features backbone"
    tight = compare_with_references(ours, refs, tolerance=0.5)
    assert set(tight.loc[tight.comparable, "mark"]) == {"▲", "✓"}  # acc above; nmi within 3.0
    below = compare_with_references(ours.assign(mean=[58.0, 40.0, 20.0]), refs)
    assert set(below.loc[below.comparable, "mark"]) == {"▼"}


def test_report_with_references(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for seed in range(2):
        write_fake_run(runs, "r", "propos", "cifar10", 10, seed,
                       {"acc": .483, "nmi": .60, "ari": .30})
        write_fake_run(runs, "r", "conmix", "cifar10", 10, seed, {"acc": .6, "nmi": .5, "ari": .4})
    expected = expected_cells(["propos", "conmix"], [("cifar10", 10)], [0, 1])
    result = build_report("r", expected, runs, tmp_path / "out", references=True,
                          formats=("csv",), figures=False, date="d", git_sha="s")
    comp = pd.read_csv(tmp_path / "out" / "r_references.csv")
    lt = comp[comp["comparable"]].set_index(["source", "metric"])
    assert lt.loc[("dcboost_table15", "acc"), "mark"] == "✓"
    assert lt.loc[("dcboost_table15", "nmi"), "mark"] == "▲"
    assert lt.loc[("dcboost_table15", "ari"), "mark"] == "▼"
    context = comp[~comp["comparable"]]
    assert {"propos_tpami_table2", "hadis_table2", "miniclustering_iclr2026"} <= set(
        context["source"])
    assert context["mark"].isna().all()
    assert "miniclustering_iclr2026 (secondary)" in result.markdown
    assert "context only: reference IR 1, split train+test, balanced" in result.markdown


def test_every_shipped_source_states_backbone_and_epochs() -> None:
    import yaml

    from harness.report.references import DEFAULT_REFERENCES_DIR, load_references

    for path in sorted(DEFAULT_REFERENCES_DIR.glob("*.yaml")):
        source = yaml.safe_load(path.read_text())["source"]
        assert "backbone" in source and "epochs" in source, path.name
    refs = load_references()
    hadis = refs[refs["source"] == "hadis_table2"]
    assert set(hadis["epochs"]) == {1000} and set(hadis["backbone"]) == {"resnet18"}
