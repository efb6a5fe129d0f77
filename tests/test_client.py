"""The client reads images from paths, URLs, data URLs and base64 (the server never fetches)."""

from __future__ import annotations

import base64
import functools
import http.server
import threading

import pytest

from ofa_triton.client import read_image


@pytest.fixture()
def image_file(tmp_path):
    path = tmp_path / "picture.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    return path


def test_path_bytes_and_base64(image_file):
    data = image_file.read_bytes()
    assert read_image(str(image_file)) == data
    assert read_image(image_file) == data
    assert read_image(data) == data
    assert read_image(base64.b64encode(data).decode()) == data
    assert read_image("data:image/png;base64," + base64.b64encode(data).decode()) == data


def test_url_is_fetched_by_the_client(image_file):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler,
                                directory=str(image_file.parent))
    handler.log_message = lambda *args: None
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{server.server_address[1]}/{image_file.name}"
        try:
            assert read_image(url) == image_file.read_bytes()
        finally:
            server.shutdown()


def test_unknown_image_reference_says_what_it_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a file, a URL, or base64"):
        read_image(str(tmp_path / "missing.jpg"))
