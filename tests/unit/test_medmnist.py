"""``medmnist:<name>``: found in the data root, downloaded when absent, or a clear message."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.config import default_params
from components.data.medmnist import resolve_medmnist
from tests.images import medmnist_npz


def test_medmnist_name_from_data_root_or_a_clear_message(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    path = medmnist_npz(root / "tinymnist.npz", (8, 8))
    assert resolve_medmnist("medmnist:tinymnist", root, default_params().ingest) == path
    offline = default_params(ingest={"medmnist_url": ""}).ingest
    with pytest.raises(ValueError) as err:
        resolve_medmnist("medmnist:pneumoniamnist", root, offline)
    assert str(root / "pneumoniamnist.npz") in str(err.value) and "MEDGATE_DATA_ROOT" in str(err.value)
    with pytest.raises(ValueError, match="medmnist:<name>"):
        resolve_medmnist("medmnist:../etc/passwd", root, offline)
    # A download that cannot connect fails fast, with the same advice.
    refused = default_params(ingest={"medmnist_url": "http://127.0.0.1:9/{name}.npz", "download_timeout_s": 2}).ingest
    with pytest.raises(ValueError, match="downloading http://127.0.0.1:9/other.npz failed"):
        resolve_medmnist("medmnist:other", root, refused)
    assert not list(root.glob("*.part")) and not (root / "other.npz").exists()


def test_medmnist_download_over_http(tmp_path: Path) -> None:
    import functools
    import http.server
    import threading

    served = tmp_path / "served"
    served.mkdir()
    medmnist_npz(served / "tinymnist.npz", (8, 8))
    (served / "portal.npz").write_text("<html>log in to the hotel wifi</html>")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cfg = default_params(ingest={"medmnist_url": f"http://127.0.0.1:{server.server_address[1]}/{{name}}.npz"}).ingest
        got = resolve_medmnist("medmnist:tinymnist", tmp_path / "root", cfg)
        assert got.read_bytes() == (served / "tinymnist.npz").read_bytes()
        with pytest.raises(ValueError, match="portal"):
            resolve_medmnist("medmnist:portal", tmp_path / "root", cfg)
        assert not (tmp_path / "root" / "portal.npz").exists()
    finally:
        server.shutdown()
        server.server_close()
