"""index.html of a dreams folder: every wav as a player beside its spectrogram, and the acoustic tables, so the
dreams are heard where they are measured. One self-contained file (no CSS, JS or fonts fetched) with relative
URLs only: it opens from the file system with no network, and from a copy of the folder anywhere."""
from __future__ import annotations

import html
import re
from collections.abc import Callable, Sequence
from urllib.parse import quote

_WAV_IN_COMPLETION = re.compile(r"completions/([^/]+)/([^/]+\.wav)")
_COMPLETION_PNG = re.compile(r"completions/([^/]+)\.png")
_DREAM = re.compile(r"prompt\+dream-(\d+)\.wav")
_TABLE_RULE = re.compile(r"\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?")
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?%?|nan|inf|-inf")
# the sections after the completions: heading, where their wavs are, their picture
_SECTIONS = [("Dreams from nothing (the initial state)", "unconditional/", "unconditional.png"),
             ("Dreams after a warm-up", "warm/", ""),
             ("Interpolation (one mixture after another)", "interpolation.wav", "interpolation.png")]

_CSS = """body{font:15px/1.45 system-ui,sans-serif;max-width:72em;margin:1em auto;padding:0 1em;color:#222}
h1{font-size:1.4em}h2{font-size:1.2em;border-bottom:1px solid #ccc;margin-top:2em}h3{font-size:1.05em}
.group{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start;margin:1em 0}
.group img{max-width:100%;border:1px solid #ddd}.players{min-width:24em}
.clip{display:flex;align-items:center;gap:.5em;margin:.3em 0}.clip .label{width:17em}
audio{height:2.2em}.state{font-size:.85em;color:#666;white-space:nowrap}.state.bad{color:#b00;font-weight:bold}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}td,th{border:1px solid #ccc;padding:.2em .5em}
th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}"""

# Marks each player: data-state="ok" (and data-duration) once its metadata loads, "error" and a visible note when
# it cannot play; each picture "ok" or "error" as it loads. In MLflow's artifact view the page is a sandboxed blob:
# iframe, where relative URLs resolve to nothing: there it points every data-rel element at the server's
# get-artifact route for the run and artifact folder named on <body>.
_SCRIPT = """(function () {
  var b = document.body, run = b.getAttribute('data-mlflow-run'), dir = b.getAttribute('data-mlflow-path');
  if (run && location.protocol === 'blob:') {
    var base = /^https?:/.test(document.referrer) ? document.referrer : new URL(location.href.slice(5)).origin + '/';
    document.querySelectorAll('[data-rel]').forEach(function (e) {
      var path = (dir ? dir + '/' : '') + e.getAttribute('data-rel');
      e.setAttribute(e.tagName === 'A' ? 'href' : 'src', new URL('get-artifact?path=' + encodeURIComponent(path)
        + '&run_uuid=' + encodeURIComponent(run), base).href);
    });
  }
  document.querySelectorAll('audio').forEach(function (a) {
    var note = a.nextElementSibling;
    function ok() {
      a.dataset.state = 'ok'; a.dataset.duration = a.duration.toFixed(2);
      note.textContent = a.duration.toFixed(2) + ' s'; note.className = 'state';
    }
    function bad() { a.dataset.state = 'error'; note.textContent = 'cannot play'; note.className = 'state bad'; }
    a.addEventListener('loadedmetadata', ok);
    a.addEventListener('error', bad);
    if (a.readyState >= 1) ok(); else if (a.error) bad();
  });
  document.querySelectorAll('img').forEach(function (i) {
    function mark() { i.dataset.state = i.naturalWidth ? 'ok' : 'error'; }
    i.addEventListener('load', mark);
    i.addEventListener('error', mark);
    if (i.complete) mark();
  });
})();"""


def listening_page(title: str, files: Sequence[str], tables_markdown: str = "", notes: Sequence[str] = (),
                   mlflow_artifacts: tuple[str, str] | None = None, base: str = "") -> str:
    """The page for the files of one dreams folder (`files`: paths relative to it, as `DreamResults.write`
    lists them): per completion the prompt + true continuation, its tokenizer round trip (when written) and each
    dream beside the completion's picture; dreams from nothing; warm-up dreams; the interpolation; the tables of
    `tables_markdown` (acoustics.md); `notes`. Every wav and PNG of `files` is shown exactly once (those of no known
    section under "Other clips"); other files are linked. `mlflow_artifacts`: (run id, artifact path) where the
    page is logged, for MLflow's artifact view. `base`: where the folder is seen from the page (`dreams/` for a page
    at the root of the run's artifacts), put before every link."""
    media = [f for f in files if f.endswith((".wav", ".png"))]
    left = dict.fromkeys(media)  # what no section has shown yet, in the order written
    body: list[str] = []

    def take(rel: str) -> bool:
        """True the first time only: no file is shown twice."""
        return left.pop(rel, "shown") is None

    def group(wavs: list[str], png: str, label: Callable[[str], str] = _stem) -> str:
        """Players beside (or under) their picture."""
        players = "".join(_player(base + f, label(f)) for f in wavs if take(f))
        picture = f'<img src="{_url(base + png)}" data-rel="{_esc(base + png)}" alt="{_esc(png)}">' if take(png) else ""
        return f'<div class="group">{picture}<div class="players">{players}</div></div>'

    names = sorted({m.group(1) for f in media
                    if (m := _WAV_IN_COMPLETION.fullmatch(f) or _COMPLETION_PNG.fullmatch(f))})
    if names:
        body.append("<h2>Completions</h2>")
    for name in names:
        wavs = [f for f in media if (m := _WAV_IN_COMPLETION.fullmatch(f)) and m.group(1) == name]
        body += [f"<h3>{_esc(name)}</h3>", group(sorted(wavs, key=_completion_order), f"completions/{name}.png",
                                                   _completion_label)]
    for heading, prefix, png in _SECTIONS:
        wavs = [f for f in left if f.startswith(prefix) and f.endswith(".wav")]
        if wavs or png in left:
            body += [f"<h2>{_esc(heading)}</h2>", group(wavs, png)]
    if left:
        body.append("<h2>Other clips</h2>")
        body += [group([f], "") if f.endswith(".wav") else group([], f) for f in list(left)]
    if tables_markdown.strip():
        body += ["<h2>Measures</h2>", markdown_to_html(tables_markdown, skip_heading=title)]
    if notes:
        body += ["<h2>Notes</h2>", "<ul>" + "".join(f"<li>{_esc(n)}</li>" for n in notes) + "</ul>"]
    others = [f for f in files if f not in media and f != "index.html"]
    if others:
        body += ["<h2>Files</h2>", "<ul>" + "".join(f'<li><a href="{_url(base + f)}" data-rel="{_esc(base + f)}">'
                                                    f'{_esc(f)}</a></li>' for f in others) + "</ul>"]
    run = (f' data-mlflow-run="{_esc(mlflow_artifacts[0])}" data-mlflow-path="{_esc(mlflow_artifacts[1])}"'
           if mlflow_artifacts else "")
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{_esc(title)}</title>\n'
            f"<style>\n{_CSS}\n</style>\n</head>\n<body{run}>\n<h1>{_esc(title)}</h1>\n" + "\n".join(body)
            + f"\n<script>\n{_SCRIPT}\n</script>\n</body>\n</html>\n")


def markdown_to_html(text: str, skip_heading: str = "") -> str:
    """The subset of markdown acoustics.md is written in: pipe tables, '#' headings, paragraphs, **bold**."""
    out: list[str] = []
    blocks = re.split(r"\n\s*\n", text.strip())
    for block in blocks:
        lines = [line.strip() for line in block.splitlines() if line.strip()]
        prose: list[str] = []
        i = 0
        while i < len(lines):
            if lines[i].startswith("|"):
                rows = []
                while i < len(lines) and lines[i].startswith("|"):
                    rows.append(lines[i])
                    i += 1
                out += _paragraph(prose) + [_table(rows)]
                prose = []
            elif m := re.fullmatch(r"(#{1,4})\s+(.*)", lines[i]):
                out += _paragraph(prose)
                prose = []
                if m.group(2) != skip_heading:
                    out.append(f"<h{len(m.group(1)) + 2}>{_inline(m.group(2))}</h{len(m.group(1)) + 2}>")
                i += 1
            else:
                prose.append(lines[i])
                i += 1
        out += _paragraph(prose)
    return "\n".join(out)


def _table(rows: list[str]) -> str:
    cells = [[c.strip() for c in r.strip().strip("|").split("|")] for r in rows]
    has_head = len(rows) > 1 and _TABLE_RULE.fullmatch(rows[1].strip()) is not None
    head, body = (cells[0], cells[2:]) if has_head else ([], cells)
    parts = ["<table>"]
    if head:
        parts.append("<tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr>")
    for row in body:
        parts.append("<tr>" + "".join(f'<td class="n">{_inline(c)}</td>' if _NUMBER.fullmatch(c) else
                                      f"<td>{_inline(c)}</td>" for c in row) + "</tr>")
    return "\n".join(parts) + "\n</table>"


def _paragraph(lines: list[str]) -> list[str]:
    return [f"<p>{_inline(' '.join(lines))}</p>"] if lines else []


def _inline(text: str) -> str:
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", _esc(text))


def _player(rel: str, label: str) -> str:
    return (f'<div class="clip"><span class="label">{_esc(label)}</span><audio controls preload="metadata" '
            f'src="{_url(rel)}" data-rel="{_esc(rel)}"></audio><span class="state"></span></div>')


def _completion_order(rel: str) -> tuple[int, str]:
    """The true continuation, then its round trip through the tokenizer, then the dreams in order."""
    name = rel.rsplit("/", 1)[-1]
    m = _DREAM.fullmatch(name)
    return ({"prompt+true.wav": 0, "prompt+roundtrip.wav": 1}.get(name, 2 + int(m.group(1)) if m else 10**6), name)


def _completion_label(rel: str) -> str:
    name = rel.rsplit("/", 1)[-1]
    if m := _DREAM.fullmatch(name):
        return f"prompt + dream {int(m.group(1))}"
    return {"prompt+true.wav": "prompt + true continuation",
            "prompt+roundtrip.wav": "prompt + true continuation, tokenizer round trip"}.get(name, _stem(rel))


def _stem(rel: str) -> str:
    return rel.rsplit("/", 1)[-1].removesuffix(".wav")


def _url(rel: str) -> str:
    return html.escape(quote(rel, safe="/"), quote=True)


def _esc(text: str) -> str:
    return html.escape(str(text), quote=True)
