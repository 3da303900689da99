"""The browser viewer's HTTP files (realtime/web_static.py): what each path serves, with which
content type, that no path reaches outside realtime/web/, and head.glb / arkit_retarget.json over a
real served Hub (503 while they are built, then the files)."""
import asyncio
import json
import urllib.error
import urllib.request

import numpy as np
import pytest

from mm2face.realtime import web_static as W
from realtime_helpers import make_session, served_hub  # noqa: F401  (fixture)


@pytest.mark.parametrize("path, name", [("/", "index.html"), ("/index.html", "index.html"),
                                        ("/viewer.js", "viewer.js"), ("/mic-worklet.js", "mic-worklet.js"),
                                        ("/monitor.html", "monitor.html"), ("/viewer.js?v=2", "viewer.js")])
def test_paths_map_to_files_in_the_web_folder(path, name):
    assert W.resolve(path) == (W.WEB_ROOT / name).resolve()


@pytest.mark.parametrize("path", ["/../server.py", "/%2e%2e/server.py", "/..%2fserver.py", "/vendor/../../cli.py",
                                  "/.hidden", "//etc/passwd", "/%5c..%5cserver.py", "/index.html%00.js",
                                  "/etc/passwd", "/nope.html", "/../web_static.py", "/vendor/", "/vendor"])
def test_nothing_outside_the_web_folder_or_unknown_is_served(path):
    assert W.resolve(path) is None
    assert W.static_response(None, path) is None


def test_content_types():
    assert W.static_response(None, "/").headers["Content-Type"] == "text/html; charset=utf-8"
    js = W.static_response(None, "/viewer.js")
    assert js.headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert int(js.headers["Content-Length"]) == len(js.body) == (W.WEB_ROOT / "viewer.js").stat().st_size
    assert js.headers["X-Content-Type-Options"] == "nosniff"


def test_the_page_loads_three_from_the_server_not_a_cdn():
    html = (W.WEB_ROOT / "index.html").read_text()
    imports = json.loads(html.split('<script type="importmap">', 1)[1].split("</script>", 1)[0])["imports"]
    assert imports == {"three": "/vendor/three/build/three.module.js", "three/addons/": "/vendor/three/examples/jsm/"}
    for page in ("index.html", "viewer.js", "mic-worklet.js"):
        text = (W.WEB_ROOT / page).read_text()
        assert "https://" not in text and "http://" not in text.replace("http://HOST", ""), page


def test_a_build_failure_is_reported_not_raised():
    gen = W._Generated(lambda: 1 / 0)
    gen.wait(10)
    r = gen.response(W.GLB_PATH)
    assert r.status_code == 500 and b"ZeroDivisionError" in r.body


async def test_generated_files_over_a_served_hub(make_session):  # noqa: F811
    gen = W.GENERATED
    async for hub, url in served_hub(make_session):
        http = url.replace("ws://", "http://")

        def get(path):
            try:
                with urllib.request.urlopen(http + path, timeout=30) as r:
                    return r.status, r.headers, r.read()
            except urllib.error.HTTPError as e:
                body = e.read()
                e.close()
                return e.code, e.headers, body

        status, headers, _ = await asyncio.to_thread(get, W.GLB_PATH)
        if gen.files is None:                       # first request of this process: built in the background
            assert status == 503 and headers["Retry-After"] == str(W.RETRY_AFTER_S)
        assert await asyncio.to_thread(gen.wait, 120) is not None, gen.error
        status, headers, glb = await asyncio.to_thread(get, W.GLB_PATH)
        assert status == 200 and headers["Content-Type"] == "model/gltf-binary" and glb[:4] == b"glTF"
        status, headers, body = await asyncio.to_thread(get, W.RETARGET_PATH)
        assert status == 200 and headers["Content-Type"] == "application/json"
        rt = json.loads(body)
        from mm2face.engine.arkit import ARKIT_NAMES, standin_retarget
        assert rt["names"] == list(ARKIT_NAMES)
        np.testing.assert_allclose(rt["pos"], standin_retarget().pos, atol=1e-6)
        assert (await asyncio.to_thread(get, "/..%2fserver.py"))[0] == 404
        status, headers, body = await asyncio.to_thread(get, "/vendor/three/build/three.module.js")
        if (W.WEB_ROOT / "vendor").is_dir():
            assert status == 200 and headers["Content-Type"].startswith("text/javascript") and b"three" in body
        else:
            assert status == 404 and b"bootstrap" in body
