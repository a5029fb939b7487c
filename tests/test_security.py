"""Nobody gets in where they do not belong: the server, the files it serves, the HTML it builds, the models it loads."""

from __future__ import annotations

import ast
import http.client
import re
import socket
from pathlib import Path

import numpy as np
import pytest

from tests.browser import running_app
from tests.conftest import APP_SCRIPT, REPO, draw_image

SECRET = "labelloop-test-secret-7f3a"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app exactly as run.sh starts it (no address flag: .streamlit/config.toml decides), on a free port."""
    from labelloop.data.ingest import import_dataset

    root = tmp_path_factory.mktemp("security")
    for i in range(4):
        draw_image(root / "source" / ("cat" if i % 2 else "dog") / f"{i}.png", i)
    import_dataset(root / "source", "pets", root / "ws")
    (root / "ws" / "pets" / "secret.txt").write_text(SECRET)  # a workspace file that must never be served
    with running_app(root / "ws", root / "streamlit.log", as_configured=True) as url:
        yield int(url.rsplit(":", 1)[1]), root


def raw_get(port: int, path: str) -> tuple[int, bytes]:
    """GET ``path`` exactly as written: no client-side normalisation of '..' or percent escapes."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.putrequest("GET", path, skip_accept_encoding=True)
    connection.endheaders()
    response = connection.getresponse()
    return response.status, response.read()


TRAVERSALS = [
    "/app/static/../main.py",
    "/app/static/../../app/main.py",
    "/app/static/%2e%2e/main.py",
    "/app/static/%2e%2e%2fmain.py",
    "/app/static/..%2f..%2fapp%2fmain.py",
    "/app/static/thumbs/../../../data/tables.py",
    "/app/static/thumbs/..%2f..%2f..%2fdata%2ftables.py",
    "/app/static//etc/passwd",
    "/app/static/%2fetc%2fpasswd",
    "/app/static/....//....//main.py",
    "/app/static/thumbs/%252e%252e/%252e%252e/main.py",
    "/app/static/{workspace}/pets/secret.txt",
    "/app/static/..%2f..%2f..%2f..%2f..%2f..{workspace}/pets/secret.txt",
    "/app/static/thumbs/..\\..\\main.py",
    # static/ is the workspace's .app/static/ now: two levels up are the data sets themselves.
    "/app/static/../../pets/secret.txt",
    "/app/static/thumbs/../../../pets/secret.txt",
    "/app/static/%2e%2e/%2e%2e/pets/secret.txt",
    "/app/static/..%2f..%2fpets%2fsecret.txt",
    "/app/static/%2e%2e%2f%2e%2e%2fpets%2fsecret.txt",
    "/app/static/thumbs/%252e%252e/%252e%252e/%252e%252e/pets/secret.txt",
    "/app/static/..%5c..%5cpets%5csecret.txt",
    "/app/static/../../pets/labels/_delta_log/00000000000000000000.json",
]


@pytest.mark.slow
def test_the_static_route_serves_thumbnails_and_nothing_outside_static(server):
    from labelloop.app.components.scatter3d import mirror_thumbnails, thumbnail_url
    from labelloop.data.tables import LabelTable
    from labelloop.data.workspace import app_dir

    port, root = server
    served = app_dir(root / "ws") / "static"  # where `labelloop app` serves from: the workspace's cache, not the package
    assert (served / "vendor" / "three" / "three.module.js").is_file() or not (APP_SCRIPT.parent / "static" / "vendor").is_dir()
    rows = LabelTable(root / "ws" / "pets" / "labels").read()
    mirror_thumbnails(root / "ws" / "pets" / "thumbs", rows["content_hash"].to_numpy(), static=served)
    status, body = raw_get(port, "/" + thumbnail_url(rows["content_hash"].iloc[0]))
    assert status == 200 and body[:2] == b"\xff\xd8"  # a real JPEG thumbnail

    sources = [APP_SCRIPT.read_bytes()[:60], (served.parent / "main.py").read_bytes()[:60], b'"protocol"']  # the entries; a Delta log line
    for template in TRAVERSALS:
        path = template.format(workspace=str(root / "ws"))
        status, body = raw_get(port, path)
        assert status in (400, 403, 404), (path, status)
        assert not any(source in body for source in sources) and SECRET.encode() not in body and b"root:" not in body, path


def non_loopback_addresses() -> list[str]:
    addresses = set()
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            addresses.add(info[4][0])
    except OSError:
        pass
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:  # no packet is sent
            probe.connect(("192.0.2.1", 9))
            addresses.add(probe.getsockname()[0])
    except OSError:
        pass
    return sorted(a for a in addresses if not a.startswith("127."))


def test_the_server_listens_on_this_machine_only(server):
    port, _ = server
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    addresses = non_loopback_addresses()
    if not addresses:
        pytest.skip("this machine has no network address besides loopback")
    for address in addresses:
        with pytest.raises(OSError):  # refused: nothing listens there
            socket.create_connection((address, port), timeout=5).close()


def test_a_tampered_content_hash_cannot_link_other_files_into_static(tmp_path):
    import labelloop.app.components.scatter3d as scatter3d

    served = tmp_path / "static" / "thumbs"
    thumbs = tmp_path / "ws" / "pets" / "thumbs"
    (thumbs / "ab").mkdir(parents=True)
    (thumbs / "ab" / ("ab" + "0" * 62 + ".jpg")).write_bytes(b"\xff\xd8 a thumbnail")
    (tmp_path / "ws" / "pets" / "secret.jpg").write_text(SECRET)
    hostile = ["../secret", "../../pets/secret", "/etc/passwd", "ab/../../secret", "AB" + "0" * 62, "ab" + "0" * 62]
    assert scatter3d.mirror_thumbnails(thumbs, np.array(hostile, dtype=object), static=served.parent) == 1
    assert [p.name for p in served.iterdir()] == ["ab00000000000000.jpg"]  # only the real thumbnail


def calls(path: Path) -> list[tuple[str, ast.Call]]:
    """(dotted name, call node) of every call in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call):
            found.append((ast.unparse(node.func), node))
    return found


def keyword(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            return ast.literal_eval(kw.value)
    return None


PROJECT_FILES = sorted(REPO.glob("labelloop/**/*.py"))


def test_no_code_path_unpickles_a_file():
    assert len(PROJECT_FILES) > 20
    for path in PROJECT_FILES:
        for name, call in calls(path):
            where = f"{path.relative_to(REPO)}:{call.lineno} {name}"
            assert name not in ("pickle.load", "pickle.loads", "joblib.load", "pd.read_pickle", "cloudpickle.load", "dill.load"), where
            if name == "torch.load":
                assert keyword(call, "weights_only") is True, where
            if name in ("np.load", "numpy.load"):
                assert keyword(call, "allow_pickle") is False, where


def test_no_page_or_component_builds_raw_html():
    """Streamlit escapes text; the places that could turn a label into HTML are these, and none is used."""
    for path in REPO.glob("labelloop/app/**/*.py"):
        source = path.read_text(encoding="utf-8")
        assert "unsafe_allow_html" not in source and "st.html(" not in source and "components.html(" not in source, path
    for path in REPO.glob("labelloop/app/components/*.js"):
        source = path.read_text(encoding="utf-8")
        assert "innerHTML" not in source and "outerHTML" not in source and "insertAdjacentHTML" not in source and "document.write" not in source, path


def test_text_shown_as_markdown_is_escaped_to_plain_characters():
    from labelloop.app.components.gallery import plain

    hostile = '<img src=x onerror=alert(1)> **bold** [link](javascript:alert(1)) `code` # head & "q" \'s\''
    escaped = plain(hostile)
    assert re.search(r"(?<!\\)[<>\[\]()*`#&]", escaped) is None  # every special character escaped
    assert re.sub(r"\\(.)", r"\1", escaped) == hostile  # nothing lost: only escaped
