"""The GitOps examples point at what the repository has (the chart, the folders of jobs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
GITOPS = REPO / "examples" / "gitops"


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_argocd_applications_name_existing_paths():
    apps = docs(GITOPS / "argocd-application.yaml")
    assert {a["kind"] for a in apps} == {"Application"}
    for app in apps:
        assert (REPO / app["spec"]["source"]["path"]).is_dir(), app["metadata"]["name"]
    chart_app = next(a for a in apps if a["spec"]["source"]["path"] == "charts/heterotrain")
    values = chart_app["spec"]["source"]["helm"]["valuesObject"]
    chart_values = yaml.safe_load((REPO / "charts" / "heterotrain" / "values.yaml").read_text())
    for key, sub in values.items():  # only values the chart has
        assert set(sub) <= set(chart_values[key]), key


def test_flux_kustomizations_and_helmrelease_name_existing_paths():
    objs = docs(GITOPS / "flux" / "kustomizations.yaml")
    ks = [o for o in objs if o["kind"] == "Kustomization"]
    assert [k["metadata"]["name"] for k in ks] == ["heterotrain-operator", "team-a-training"]
    assert ks[1]["spec"]["dependsOn"] == [{"name": "heterotrain-operator"}]
    for k in ks:
        assert (REPO / k["spec"]["path"]).is_dir() and k["spec"]["wait"] is True
    (hr,) = docs(GITOPS / "flux" / "operator" / "helmrelease.yaml")
    assert (REPO / hr["spec"]["chart"]["spec"]["chart"] / "Chart.yaml").is_file()
    source = hr["spec"]["chart"]["spec"]["sourceRef"]
    assert any(o["kind"] == source["kind"] and o["metadata"]["name"] == source["name"] for o in objs)
