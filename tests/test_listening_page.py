"""The listening page of a dreams folder (pydreamer.dreams.page, index.html): every wav and picture shown once by a
relative URL, the acoustic tables as HTML tables, odd names escaped; and, in headless Chromium (slow), every player
of a dreams folder made by `python -m pydreamer.dream` loads its wav, a broken or missing one is marked, no console
message, and the page also plays inside a blob: iframe as MLflow's artifact view shows it."""
from __future__ import annotations

import html
import http.server
import os
import re
import shutil
import signal
import subprocess
import threading
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import numpy as np
import pytest
import soundfile as sf

from pydreamer.dreams.acoustics import MetricComparison, comparison_markdown
from pydreamer.dreams.page import listening_page, markdown_to_html

FILES = ["unconditional/dream-00.wav", "unconditional/dream-01.wav", "unconditional.png", "warm/utt0-warm.wav",
         "completions/00-utt0/prompt+true.wav", "completions/00-utt0/prompt+roundtrip.wav",
         "completions/00-utt0/prompt+dream-00.wav", "completions/00-utt0/prompt+dream-01.wav",
         "completions/00-utt0.png",
         "completions/01-mine/prompt+dream-00.wav", "completions/01-mine.png",
         "interpolation.wav", "interpolation.png", "tokens.npz", "acoustics_warm.csv", "acoustics.md", "summary.json"]
MEDIA = [f for f in FILES if f.endswith((".wav", ".png"))]
ROW = MetricComparison("rms", 0.1, 0.01, 0.12, 0.02, 0.2, 0.5, 0.03, 3, 4)


def _srcs(page: str) -> list[str]:
    """Every src, as the file path it names."""
    return [unquote(html.unescape(s)) for s in re.findall(r'(?<![\w-])src="([^"]*)"', page)]


class _Balance(HTMLParser):
    """Tags opened and closed in order: what a browser would not have to repair."""
    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.bad: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.bad.append(tag)


def _valid(page: str) -> bool:
    p = _Balance()
    p.feed(page)
    return page.startswith("<!DOCTYPE html>") and not p.stack and not p.bad


def test_every_wav_and_png_is_shown_once_by_a_relative_url():
    page = listening_page("Dreams", FILES, "", ["tokenizer: run artifact"])
    srcs = _srcs(page)
    assert Counter(srcs) == Counter(MEDIA)
    assert all(not urlparse(s).scheme and not s.startswith("/") for s in srcs)
    assert "completions/00-utt0/prompt%2Btrue.wav" in page  # percent-encoded
    assert page.count('<audio controls preload="metadata"') == sum(f.endswith(".wav") for f in FILES)
    order = [page.index(f"completions/00-utt0/prompt%2B{n}.wav") for n in ("true", "roundtrip", "dream-00", "dream-01")]
    assert order == sorted(order) and "tokenizer round trip" in page
    assert all(f'href="{f}"' in page for f in ("tokens.npz", "acoustics.md", "summary.json"))
    assert not re.search(r'(src|href)="(https?:)?//|<link|url\(|@import', page) and _valid(page)  # nothing fetched


def test_without_completions_round_trip_or_anything_the_page_is_still_valid():
    files = ["unconditional/dream-00.wav", "unconditional.png", "completions/00-a/prompt+dream-00.wav", "acoustics.md"]
    page = listening_page("Dreams", files, "No real clips: no acoustic table.\n")
    assert Counter(_srcs(page)) == Counter(f for f in files if f != "acoustics.md") and _valid(page)
    assert "roundtrip" not in page and "<table" not in page and "<p>No real clips" in page
    page = listening_page("Dreams", ["unconditional/dream-00.wav"])
    assert "Completions" not in page and _srcs(page) == ["unconditional/dream-00.wav"] and _valid(page)
    assert _valid(listening_page("Nothing", [])) and _valid(listening_page("Nothing", [], "", (), ("r", "dreams")))


def test_markdown_pipe_tables_become_html_tables():
    md = "\n".join(["# Dreams of rssm run abc (step 5)", "", "Real clips vs dreams; all through the same vocoder:",
                    "", comparison_markdown([ROW, ROW]), "Within +-20% of the real medians: 1 of 1.", "",
                    "| completion | LSD dB @0.5s |", "|---|---|", "| **the model's** | 15.61 |", "",
                    "Rhythm: **50% of their completions keep it**."])
    out = markdown_to_html(md, skip_heading="Dreams of rssm run abc (step 5)")
    assert out.count("<table>") == 2 and out.count("<th>metric</th>") == 1 and out.count("<tr>") == 3 + 2
    assert '<td class="n">+20.0%</td>' in out and "<td><strong>the model&#x27;s</strong></td>" in out
    assert "<p>Rhythm: <strong>50% of their completions keep it</strong>.</p>" in out
    assert "|" not in out and "Dreams of rssm" not in out and "<p>Within +-20% of the real medians: 1 of 1.</p>" in out
    assert "<h3>Other</h3>" in markdown_to_html("# Other")


def test_odd_names_and_text_are_escaped():
    odd = 'other/odd "<b>" & #1 ?.wav'
    page = listening_page("<title> & run", [odd, "completions/00-a_b/prompt+true.wav"], "| <i> | a&b |\n|---|---|\n",
                          ["note <script>alert(1)</script>"], ("run<", 'dreams"x'))
    assert _srcs(page).count(odd) == 1 and _valid(page)
    assert "<b>" not in page and "<i>" not in page and "<script>alert" not in page and "<title> &" not in page
    assert 'src="other/odd%20%22%3Cb%3E%22%20%26%20%231%20%3F.wav"' in page  # '#' and '?' would cut a URL short
    assert 'data-mlflow-run="run&lt;" data-mlflow-path="dreams&quot;x"' in page


# Headless Chromium ---------------------------------------------------------------------------------------------


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if found := shutil.which(name):
            return found
    pytest.skip("no Chromium to open the listening page in (Debian: apt-get install chromium)")


def _open(url: str, profile: Path) -> tuple[str, list[str]]:
    """The DOM after the page's loads (virtual time lets `--dump-dom` wait for them, no sleeps) and the console
    messages. Chromium logs every console level as INFO:CONSOLE, so none is told apart: the page logs nothing."""
    cmd = [_chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
           f"--user-data-dir={profile}", "--virtual-time-budget=15000", "--enable-logging=stderr", "--v=0",
           "--dump-dom", url]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        dom, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the browser and its renderers: never a hang
        proc.communicate()
        raise
    assert proc.returncode == 0, err[-2000:]
    return dom, [line for line in err.splitlines() if ":CONSOLE" in line]


def _states(dom: str, tag: str) -> dict[str, tuple[str | None, str | None]]:
    """Per element: (data-state, data-duration), by the file its data-rel names."""
    out = {}
    for attrs in re.findall(rf"<{tag}\b([^>]*)>", dom):
        a = dict((k, html.unescape(v)) for k, v in re.findall(r'([\w-]+)="([^"]*)"', attrs))
        out[a["data-rel"]] = (a.get("data-state"), a.get("data-duration"))
    return out


@pytest.fixture(scope="module")
def dreams_folder(tmp_path_factory) -> Path:
    """What `python -m pydreamer.dream` writes for the tiny run of test_dream.py (untrained weights)."""
    from tests.test_dream import _dream, make_dream_data, make_run

    root = tmp_path_factory.mktemp("listen")
    run_id = make_run(root, make_dream_data(root))
    assert _dream(root, run_id, root / "dreams", "--no_log", "--as_run_dreams") == 0  # the run's own: artifacts dreams/
    return root / "dreams"


@pytest.mark.slow
def test_every_player_of_a_dreams_folder_plays_in_chromium(dreams_folder, tmp_path):
    files = [str(p.relative_to(dreams_folder)) for p in dreams_folder.rglob("*") if p.is_file()]
    wavs = {f for f in files if f.endswith(".wav")}
    assert "index.html" in files and len(wavs) >= 8
    dom, console = _open((dreams_folder / "index.html").as_uri(), tmp_path / "profile")
    audio, images = _states(dom, "audio"), _states(dom, "img")
    assert set(audio) == wavs and set(images) == {f for f in files if f.endswith(".png")}
    for rel, (state, duration) in audio.items():
        info = sf.info(str(dreams_folder / rel))
        assert state == "ok" and abs(float(duration) - info.frames / info.samplerate) < 0.011, rel
    assert all(state == "ok" for state, _ in images.values()), images
    assert console == []


@pytest.mark.slow
def test_a_broken_or_missing_wav_is_marked_and_console_errors_are_seen(tmp_path):
    """The check can fail: a wav that is not audio, one that is missing, a missing picture; and a page that logs
    an error shows up in the console lines."""
    from tokenizer.audio_io import write_wav

    write_wav(tmp_path / "unconditional" / "dream-00.wav", 0.1 * np.sin(np.arange(8000) / 5.0), 16000)
    (tmp_path / "unconditional" / "dream-01.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVE not really")
    files = ["unconditional/dream-00.wav", "unconditional/dream-01.wav", "warm/missing.wav", "unconditional.png"]
    page = listening_page("Broken", files)
    (tmp_path / "index.html").write_text(page, encoding="utf-8")
    dom, console = _open((tmp_path / "index.html").as_uri(), tmp_path / "profile")
    assert _states(dom, "audio") == {"unconditional/dream-00.wav": ("ok", "0.50"),
                                     "unconditional/dream-01.wav": ("error", None), "warm/missing.wav": ("error", None)}
    assert _states(dom, "img") == {"unconditional.png": ("error", None)} and dom.count(">cannot play<") == 2
    assert console == []
    (tmp_path / "bad.html").write_text(page.replace("</body>", "<script>console.error('boom')</script></body>"))
    _, console = _open((tmp_path / "bad.html").as_uri(), tmp_path / "profile")
    assert len(console) == 1 and "boom" in console[0]


@pytest.mark.slow
def test_in_a_blob_iframe_like_mlflows_artifact_view_the_players_load_through_get_artifact(dreams_folder, tmp_path):
    """MLflow's UI shows an HTML artifact as a blob: URL in an iframe sandboxed to allow-scripts, where relative
    URLs resolve to nothing: the page's script asks the server's get-artifact route instead. Here a stand-in
    server: that route over the folder, and a parent page doing what MLflow's does (plus allow-same-origin, to
    read the iframe's DOM back into its own for --dump-dom)."""
    run_id = re.search(r'data-mlflow-run="([^"]+)"', (dreams_folder / "index.html").read_text()).group(1)
    asked: list[str] = []
    parent = f"""<!DOCTYPE html><html><body><pre id="out"></pre><script>
fetch('get-artifact?path=dreams%2Findex.html&run_uuid={run_id}').then(r => r.text()).then(t => {{
  const f = document.createElement('iframe');
  f.sandbox = 'allow-scripts allow-same-origin';
  f.src = URL.createObjectURL(new Blob([t], {{type: 'text/html'}}));
  document.body.appendChild(f);
  const done = setInterval(() => {{  // once every player and picture is marked ok or error
    const d = f.contentDocument, all = d && d.body ? d.querySelectorAll('audio, img') : [];
    if (all.length && [...all].every(e => e.dataset.state)) {{
      clearInterval(done);
      document.getElementById('out').textContent = d.body.outerHTML;
    }}
  }}, 50);
}});</script></body></html>""".encode()

    class Server(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            url = urlparse(self.path)
            query = parse_qs(url.query)
            path = dreams_folder / query["path"][0].removeprefix("dreams/") if url.path == "/get-artifact" else None
            if url.path == "/get-artifact":
                asked.append(query["path"][0])
            ok = url.path == "/" or (path is not None and path.is_file() and query["run_uuid"] == [run_id])
            body = parent if url.path == "/" else path.read_bytes() if ok else b"no such artifact"
            kind = {".wav": "audio/x-wav", ".png": "image/png"}.get(path.suffix if path else "", "text/html")
            self.send_response(200 if ok else 404)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        dom, console = _open(f"http://127.0.0.1:{server.server_address[1]}/", tmp_path / "profile")
    finally:
        server.shutdown()
    inner = html.unescape(re.search(r'<pre id="out">(.*?)</pre>', dom, re.S).group(1))
    audio, wavs = _states(inner, "audio"), sorted(p for p in dreams_folder.rglob("*.wav"))
    assert len(audio) == len(wavs) and all(state == "ok" for state, _ in audio.values()), audio
    assert all(state == "ok" for state, _ in _states(inner, "img").values())
    assert {f"dreams/{p.relative_to(dreams_folder)}" for p in wavs} <= set(asked)
    assert [c for c in console if "allow-same-origin" not in c] == []  # Chromium's warning about our own sandbox
