"""What a Bento installs where it is containerised: the distributions its modules import, read from
source, and the HTTP parser its server runs on."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from components.imports import external_imports
from components.stages.package import SERVER_DISTRIBUTIONS, bento_sources, pinned_distributions
from tests.conftest import PROJECT


def test_external_imports_reads_every_form_at_any_depth(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text(
        "import os\nimport alpha.beta as ab\nfrom components import x\nfrom . import sibling\n"
        "def f():\n    from gamma.delta import e\n    import services.y\n"
        "try:\n    import epsilon\nexcept ImportError:\n    epsilon = None\n"
    )
    assert external_imports([tmp_path / "m.py"]) == {"alpha", "gamma", "epsilon"}


def test_the_bento_pins_a_distribution_for_every_module_its_sources_import() -> None:
    sources = bento_sources(PROJECT)
    pins = dict(p.split("==") for p in pinned_distributions(PROJECT, sources))
    assert all(version for version in pins.values())
    providers = metadata.packages_distributions()
    for module in external_imports(PROJECT / s for s in sources) - {"bentoml"}:
        assert set(providers[module]) & set(pins), f"{module}: imported by the service, pinned by no distribution"
    # The readers of clips and the DICOM de-identification: each was missing from the hand-kept list.
    assert {"av", "dicom_anonymizer", "pandas", *SERVER_DISTRIBUTIONS} <= set(pins)
    assert "bentoml" not in pins  # BentoML installs itself at the version that built the Bento


def test_the_services_http_server_parses_requests_in_c() -> None:
    import uvicorn

    # BentoML's worker leaves uvicorn's `http` at "auto", which takes httptools where it is installed.
    config = uvicorn.Config(app=lambda scope, receive, send: None)
    config.load()
    assert config.http_protocol_class.__name__ == "HttpToolsProtocol"
