"""The web page end to end in headless Chromium (Debian's `chromium`, driven by Playwright) against a real gateway
with API keys on: the page must work once the key is typed in. Screenshots go to test-artifacts/browser/.

A real process, driven by a real browser.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import scipy.signal
import soundfile as sf
import soxr

from tests.server.conftest import RATE, ROOT, running_server, synth_clip, wav

CHROMIUM = "/usr/bin/chromium"
SHOTS = ROOT / "test-artifacts" / "browser"
KEY = "browser-test-key"
N_ITEMS = 8
QUERY = "a dog barking"
LICENCES = ("CC0-1.0", "CC-BY-4.0")


@pytest.fixture(scope="module")
def playwright():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install chromium` (make test installs it)")
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright):
    b = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
    yield b
    b.close()


@pytest.fixture(scope="module")
def clips(request) -> list[np.ndarray]:
    try:
        real = request.getfixturevalue("real_clips")
    except pytest.skip.Exception:
        real = {}
    out = [s for _, s in sorted(real.items()) if 0.5 <= len(s) / RATE <= 6][:N_ITEMS]
    while len(out) < N_ITEMS + 2:
        out.append(synth_clip(5000 + len(out), seconds=1.5))
    return out


@pytest.fixture(scope="module")
def gw(tiny_bundle, tmp_path_factory, clips):
    env = {"BLAT_SERVER_AUTH__KEYS": f'{{"{KEY}": ["read", "write"]}}'}
    with running_server(tiny_bundle, tmp_path_factory.mktemp("browser"), env=env) as gw:
        with api(gw) as c:
            for i, samples in enumerate(clips[:N_ITEMS]):
                extra = {"licence": LICENCES[i % 2], "package": "demo-sounds", "file": f"sounds/{i}.wav"}
                r = c.post(
                    "/v1/items",
                    params={
                        "id": f"sound/{i}",
                        "tags": [f"t{i}", "demo"],
                        "caption": f"clip number {i}",
                        "extra": json.dumps(extra),
                    },
                    content=wav(samples),
                )
                assert r.status_code == 201, r.text
        yield gw


def api(gw) -> httpx.Client:
    return httpx.Client(base_url=gw.http_url, timeout=60, headers={"authorization": f"Bearer {KEY}"})


def shown_ids(page) -> list[str]:
    return page.locator("[data-testid=result]").evaluate_all("els => els.map(e => e.dataset.id)")


def wait_for_playable_audio(page, count: int) -> None:
    """Every result's <audio> has loaded its metadata (readyState >= 1): the audio really came, with the key."""
    page.wait_for_function(
        "n => { const a = [...document.querySelectorAll('[data-testid=result-audio]')];"
        " return a.length === n && a.every(x => x.readyState >= 1 && x.duration > 0); }",
        arg=count,
        timeout=30000,
    )


def shown_tags(page) -> list[tuple[str, str]]:
    """(label, score as shown) of each row of the clip's tags table."""
    rows = page.locator("[data-testid=tags-output] tr").evaluate_all(
        "rows => rows.map(r => [r.cells[0].textContent, r.cells[1].textContent])"
    )
    return [(label, score) for label, score in rows]


def assert_same_ranking(shown: list[tuple[str, str]], expected: list[dict]) -> None:
    """The page shows the API's tags: the same scores in the same order, and the same labels at each score. Labels
    whose scores agree to the 3 decimals shown may swap (the page's request shares a model batch with its similar-
    sounds search, which can move a score by 1e-7), and the lowest score's labels may differ (a tie at the cut)."""
    want = [(t["label"], f"{t['score']:.3f}") for t in expected]
    assert [s for _, s in shown] == [s for _, s in want], (shown, want)
    lowest = want[-1][1] if want else None
    for score in {s for _, s in want} - {lowest}:
        assert {lb for lb, s in shown if s == score} == {lb for lb, s in want if s == score}, (score, shown, want)


def offline(context, gw) -> list[str]:
    """The network off but for the gateway: every other request is refused, and listed."""
    refused: list[str] = []

    def only_local(route):
        if route.request.url.startswith((gw.http_url, "blob:", "data:")):
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort()

    context.route("**/*", only_local)
    return refused


@pytest.fixture
def page(browser, gw):
    """The page with the network off but for the gateway, under the gateway's Content-Security-Policy: nothing may
    need more (no CDN, no inline script)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    refused = offline(context, gw)
    page = context.new_page()
    blocked: list[str] = []
    page.on("console", lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None)
    page.goto(gw.http_url + "/")
    yield page
    context.close()
    assert blocked == [] and refused == [], (blocked, refused)


def test_search_listen_similar(page, gw):
    page.wait_for_selector("[data-testid=error]:visible")  # no key yet: the stats call is refused
    assert "401" in page.inner_text("[data-testid=error]")
    page.fill("[data-testid=api-key]", KEY)
    page.press("[data-testid=api-key]", "Tab")  # a change event: the page stores the key and reloads the stats
    page.wait_for_function(f"() => document.getElementById('stats-items').textContent === '{N_ITEMS}'")
    assert page.locator("[data-testid=error]").is_hidden()

    page.fill("[data-testid=search-input]", QUERY)
    page.click("[data-testid=search-button]")
    page.wait_for_selector("[data-testid=result]")
    with api(gw) as c:
        expected = c.post("/v1/search/text", json={"query": QUERY, "k": 10}).json()
    assert shown_ids(page) == [h["id"] for h in expected["hits"]]
    first = page.locator("[data-testid=result]").first
    assert first.locator("[data-testid=result-score]").inner_text() == f"{expected['hits'][0]['score']:.3f}"
    # titled by the caption (the file name when there is none), the id below it
    assert first.locator("[data-testid=result-title]").inner_text() == expected["hits"][0]["item"]["caption"]
    assert first.locator("[data-testid=result-id]").inner_text() == expected["hits"][0]["id"]
    assert first.locator(".tag").all_inner_texts() == expected["hits"][0]["item"]["tags"]
    wait_for_playable_audio(page, len(expected["hits"]))
    page.screenshot(path=str(SHOTS / "1-search.png"), full_page=True)

    target = shown_ids(page)[2]
    page.locator(f"[data-testid=result][data-id='{target}'] [data-testid=similar-link]").click()
    page.wait_for_function(
        f"() => document.getElementById('results-title').textContent.startsWith('Similar to {target}')"
    )
    with api(gw) as c:
        neighbours = c.post("/v1/search/item", json={"id": target, "k": 10}).json()
    assert shown_ids(page) == [h["id"] for h in neighbours["hits"]]
    wait_for_playable_audio(page, len(neighbours["hits"]))
    page.screenshot(path=str(SHOTS / "2-similar.png"), full_page=True)


def test_upload_tags_captions_and_finds_similar(page, gw, clips, tmp_path):
    page.fill("[data-testid=api-key]", KEY)
    page.press("[data-testid=api-key]", "Tab")
    long_clip = np.tile(clips[N_ITEMS], 12 * RATE // len(clips[N_ITEMS]) + 1)[: 12 * RATE]  # 12 s: tags over time
    data = wav(long_clip, subtype="PCM_16")
    path = tmp_path / "long clip.wav"
    path.write_bytes(data)
    page.set_input_files("[data-testid=file-input]", str(path))
    page.wait_for_selector("[data-testid=window]")
    page.wait_for_function("() => document.getElementById('results-title').textContent.startsWith('Sounds like')")
    with api(gw) as c:
        tags = c.post("/v1/tag", params={"top_k": 10, "window_s": 5}, content=data).json()
        similar = c.post("/v1/search/audio", params={"k": 10}, content=data).json()
    assert_same_ranking(shown_tags(page), tags["tags"])
    assert page.locator("[data-testid=window]").count() == len(tags["windows"]) >= 2
    # the timeline: a column per window, a row per label among a window's top 3, each cell that window's score
    cells = page.locator("[data-testid=timeline-cell]").evaluate_all(
        "cs => cs.map(c => [c.dataset.label, +c.dataset.start, c.dataset.score])"
    )
    by_window = {w["start_s"]: {t["label"]: t["score"] for t in w["tags"]} for w in tags["windows"]}
    assert cells and len(cells) % len(by_window) == 0 and {s for _, s, _ in cells} == set(by_window)
    for label, start, score in cells:  # a label at a tie with a window's 10th may be in one answer and not the other
        want = by_window[start].get(label)
        if score and want is not None:
            assert float(score) == pytest.approx(want, abs=1e-4), (label, start)
        elif score:
            assert float(score) <= min(by_window[start].values()) + 1e-4, (label, start)
    assert shown_ids(page) == [h["id"] for h in similar["hits"]]
    page.wait_for_function("() => document.getElementById('caption-output').textContent !== '…'")
    assert page.inner_text("[data-testid=caption-output]")
    page.screenshot(path=str(SHOTS / "3-upload.png"), full_page=True)

    # The same through drag and drop: a short clip dropped on the zone (no windows for it).
    short = wav(clips[N_ITEMS + 1])
    page.evaluate(
        """([b64, name]) => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], name, {type: 'audio/wav'}));
        document.getElementById('drop-zone').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true}));
    }""",
        [base64.b64encode(short).decode(), "dropped.wav"],
    )
    page.wait_for_function("() => document.getElementById('clip-name').textContent.startsWith('dropped.wav')")
    page.wait_for_function(
        "() => document.getElementById('results-title').textContent.startsWith('Sounds like dropped')"
    )
    with api(gw) as c:
        tags = c.post("/v1/tag", params={"top_k": 10}, content=short).json()
    assert_same_ranking(shown_tags(page), tags["tags"])
    assert page.locator("#windows-block").is_hidden()
    page.screenshot(path=str(SHOTS / "4-dropped.png"), full_page=True)


def test_docs_render_with_the_network_off(browser, gw):
    """Every request to a host other than the gateway is refused: Swagger UI and ReDoc must still render the API."""
    context = browser.new_context()
    refused = offline(context, gw)
    page = context.new_page()
    page.goto(gw.http_url + "/docs")
    page.wait_for_selector(".swagger-ui .info .title", timeout=30000)
    assert "BLAT gateway" in page.inner_text(".swagger-ui .info .title")
    assert page.locator(".opblock").count() >= 15  # the operations are listed
    page.screenshot(path=str(SHOTS / "5-docs-offline.png"), full_page=False)
    assert refused == [], f"/docs tried to reach other hosts: {refused}"
    page.goto(gw.http_url + "/redoc")
    page.wait_for_selector("h1:has-text('BLAT gateway')", timeout=30000)
    assert page.locator("[data-section-id^='tag/search']").count() >= 1
    page.screenshot(path=str(SHOTS / "6-redoc-offline.png"), full_page=False)
    context.close()
    # ReDoc's bundle asks its CDN for a "powered by" logo; refused, the page renders all the same.
    assert all(u.startswith("https://cdn.redoc.ly/") and u.endswith("logo-mini.svg") for u in refused), refused


def with_key(page) -> None:
    page.fill("[data-testid=api-key]", KEY)
    page.press("[data-testid=api-key]", "Tab")
    page.wait_for_function(f"() => document.getElementById('stats-items').textContent === '{N_ITEMS}'")


def test_the_search_lives_in_the_url(page, gw):
    """A search is in the address (?q=, ?similar=, &k=): Back and Forward step through searches with the box in step,
    and a shared address opens on its results."""
    with_key(page)
    page.fill("[data-testid=search-input]", QUERY)
    page.click("[data-testid=search-button]")
    page.wait_for_selector("[data-testid=result]")
    assert page.evaluate("location.search") == "?q=a+dog+barking"
    first = shown_ids(page)
    page.locator("[data-testid=similar-link]").nth(1).click()
    page.wait_for_function("() => document.getElementById('results-title').textContent.startsWith('Similar to')")
    assert page.evaluate("new URLSearchParams(location.search).get('similar')") == first[1]
    assert page.input_value("[data-testid=search-input]") == ""  # no stale query beside other results

    page.go_back()
    page.wait_for_function(f"() => document.getElementById('results-title').textContent.startsWith('“{QUERY}”')")
    assert page.input_value("[data-testid=search-input]") == QUERY and shown_ids(page) == first
    page.go_back()  # the page as it opened: no search, no results (never about:blank)
    page.wait_for_function("() => document.querySelectorAll('[data-testid=result]').length === 0")
    assert page.url.rstrip("/") == gw.http_url and page.input_value("[data-testid=search-input]") == ""

    shared = page.context.new_page()  # the address alone, in a new tab (the key is in this origin's storage)
    shared.goto(f"{gw.http_url}/?q=a+door&k=3")
    shared.wait_for_selector("[data-testid=result]")
    with api(gw) as c:
        expected = c.post("/v1/search/text", json={"query": "a door", "k": 3}).json()
    assert shown_ids(shared) == [h["id"] for h in expected["hits"]]
    assert shared.input_value("[data-testid=search-input]") == "a door" and shared.input_value("#k") == "3"


def test_a_bad_file_is_reported_in_the_clip_panel(page, gw, tmp_path):
    """A file that is not audio: the clip panel says why (the gateway's 415), and no caption is left pending."""
    with_key(page)
    path = tmp_path / "notes.wav"
    path.write_text("these are notes, not audio\n" * 20)
    page.set_input_files("[data-testid=file-input]", str(path))
    page.wait_for_selector("[data-testid=clip-error]:visible")
    assert "415" in page.inner_text("[data-testid=clip-error]")
    assert page.inner_text("[data-testid=caption-output]") != "…"
    assert page.locator("[data-testid=error]").is_hidden()  # the top banner is for the page, not the clip
    page.wait_for_function("() => !document.getElementById('clip-panel').hasAttribute('aria-busy')")


def search_and_analyse(page, gw, clips, path: Path) -> None:
    """The page full: the key typed, a search's results, and a 12 s clip tagged over time and captioned."""
    page.goto(gw.http_url + "/")
    with_key(page)
    page.fill("[data-testid=search-input]", QUERY)
    page.click("[data-testid=search-button]")
    page.wait_for_selector("[data-testid=result]")
    long_clip = np.tile(clips[N_ITEMS], 12 * RATE // len(clips[N_ITEMS]) + 1)[: 12 * RATE]
    path.write_bytes(wav(long_clip, subtype="PCM_16"))
    page.set_input_files("[data-testid=file-input]", str(path))
    page.wait_for_selector("[data-testid=window]")
    page.wait_for_function("() => document.getElementById('caption-output').textContent !== '…'")


def test_a_phone_screen_has_no_sideways_scroll(browser, gw, clips, tmp_path):
    """At 390 px wide (a phone), with results and an analysed long clip on screen, nothing scrolls sideways."""
    # Not is_mobile: a mobile viewport would zoom out to fit a too-wide page, and the overflow would not show.
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2)
    page = context.new_page()
    search_and_analyse(page, gw, clips, tmp_path / "a clip with a rather long file name recorded on a phone.wav")
    width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    page.screenshot(path=str(SHOTS / "7-phone.png"), full_page=True)
    context.close()
    assert width[0] <= width[1], f"the page is {width[0]} px wide on a {width[1]} px screen"


def test_a_result_without_a_caption_is_titled_by_its_file_name(page, gw):
    with_key(page)
    item_id = "field/recordings/door-creak.wav"
    with api(gw) as c:
        assert (
            c.post("/v1/items", params={"id": item_id}, content=wav(synth_clip(9100, seconds=1.2))).status_code == 201
        )
    try:
        page.goto(f"{gw.http_url}/?q=a+door&k=100")
        row = page.locator(f"[data-testid=result][data-id='{item_id}']")
        row.wait_for()
        assert row.locator("[data-testid=result-title]").inner_text() == "door-creak.wav"
        assert row.locator("[data-testid=result-id]").inner_text() == item_id
    finally:
        with api(gw) as c:
            assert c.delete(f"/v1/items/{item_id}").status_code == 200


def test_live_tagging_from_the_microphone(playwright, gw, clips, tmp_path):
    """Chromium's fake microphone plays a WAV file; the page streams it over the WebSocket and shows each window's
    tags. They must be StreamTag's for the audio the page sent, and that audio must be the file's; once stopped, the
    recording is analysed as a clip."""
    capture_rate = 44_100  # the rate of Chromium's fake microphone: the file is not resampled on its way in
    sound = np.concatenate([clips[i] for i in range(3)])
    sound = soxr.resample(sound, RATE, capture_rate).astype(np.float32)
    capture = tmp_path / "microphone.wav"
    sf.write(capture, sound / max(1.0, float(np.abs(sound).max())), capture_rate, subtype="PCM_16")
    b = playwright.chromium.launch(
        executable_path=CHROMIUM,
        args=[
            "--no-sandbox",
            "--disable-gpu",
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={capture}",
        ],
    )
    try:
        context = b.new_context(viewport={"width": 1280, "height": 900}, permissions=["microphone"])
        page = context.new_page()
        blocked: list[str] = []
        page.on("console", lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None)
        page.goto(gw.http_url + "/")
        with_key(page)
        page.click("[data-testid=mic-button]")
        page.wait_for_function(
            "() => document.querySelectorAll('[data-testid=live-window]').length >= 4", timeout=30000
        )
        page.click("[data-testid=mic-button]")  # stop: the last windows come, then the recording is analysed
        page.wait_for_function("() => document.getElementById('clip-name').textContent.startsWith('recording.wav')")
        page.wait_for_function("() => document.getElementById('caption-output').textContent !== '…'", timeout=60000)
        assert page.locator("[data-testid=live-error]").is_hidden() and page.locator("[data-testid=error]").is_hidden()
        page.screenshot(path=str(SHOTS / "8-live.png"), full_page=True)
        shown = page.locator("[data-testid=live-window]").evaluate_all(
            """rows => rows.reverse().map(r => ({start: +r.dataset.start, end: +r.dataset.end,
                tags: [...r.querySelectorAll('.tag')].map(t => [t.dataset.label, +t.dataset.score])}))"""
        )
        with page.expect_download() as saved:
            page.click("[data-testid=clip-download]")
        recording = Path(saved.value.path()).read_bytes()
        context.close()
    finally:
        b.close()
    assert blocked == [], blocked
    sent, rate = sf.read(io.BytesIO(recording), dtype="float32")
    assert rate == capture_rate and len(sent) / rate >= 4

    # the page sent the file's audio, sample for sample (Chromium's fake microphone loops it, starting anywhere)
    quarter = rate // 4
    loudest = max(range(0, len(sent) - quarter, quarter), key=lambda i: float(np.square(sent[i : i + quarter]).sum()))
    probe = sent[loudest : loudest + quarter].astype(np.float64)
    looped = np.tile(sound, 2)[: len(sound) + len(probe)].astype(np.float64)
    dots = scipy.signal.correlate(looped, probe, mode="valid", method="fft")
    energy = np.convolve(looped**2, np.ones(len(probe)), mode="valid")
    match = dots / np.sqrt(energy * (probe**2).sum() + 1e-12)
    assert np.sqrt((probe**2).mean()) > 0.01 and match.max() > 0.999

    # each window's tags are StreamTag's for that audio
    from blat_client import Client

    with Client(f"grpc://{gw.grpc_address}", api_key=KEY, timeout=60) as c:
        chunks = [sent[i : i + rate // 4].tobytes() for i in range(0, len(sent), rate // 4)]
        expected = list(c.stream_tag(iter(chunks), rate, "f32le", window_s=2, hop_s=1, top_k=527))
    assert [w["start"] for w in shown] == pytest.approx([w.start_s for w in expected], abs=1e-6)
    assert [w["end"] for w in shown] == pytest.approx([w.end_s for w in expected], abs=1e-6)
    for w, e in zip(shown, expected):
        scores = {t.label: t.score for t in e.tags}
        assert len(w["tags"]) == 5 and all(score == pytest.approx(scores[lb], abs=1e-5) for lb, score in w["tags"])
        assert min(score for _, score in w["tags"]) >= e.tags[5].score - 1e-5  # the top 5, up to ties


AXE = ROOT / ".venv" / "npm" / "node_modules" / "axe-core" / "axe.min.js"


@pytest.mark.parametrize("size", [(1280, 900), (390, 844)], ids=["desktop", "phone"])
def test_no_serious_accessibility_violations(browser, gw, clips, tmp_path, size):
    """axe-core (npm, installed by `make browser`), run inside the page with results, a tagged long clip and its
    windows on screen: no violation of serious or critical impact. The report goes beside the screenshots."""
    if not AXE.exists():
        pytest.fail(f"{AXE} is missing: `make browser` installs axe-core from npm")
    # axe is injected as a script of its own: the page's CSP (its own files only) is lifted for this context alone
    context = browser.new_context(viewport={"width": size[0], "height": size[1]}, bypass_csp=True)
    page = context.new_page()
    search_and_analyse(page, gw, clips, tmp_path / "long.wav")
    page.add_script_tag(path=str(AXE))
    report = page.evaluate("() => axe.run(document, {resultTypes: ['violations']})")
    name = "desktop" if size[0] > 600 else "phone"
    (SHOTS / f"axe-{name}.json").write_text(json.dumps(report["violations"], indent=1))
    page.screenshot(path=str(SHOTS / f"9-axe-{name}.png"), full_page=True)
    context.close()
    serious = [
        (v["id"], v["impact"], v["help"], [n["target"] for n in v["nodes"]][:3])
        for v in report["violations"]
        if v["impact"] in ("serious", "critical")
    ]
    assert serious == [], serious


def search_api(gw, **body) -> list[str]:
    with api(gw) as c:
        r = c.post("/v1/search/text", json={"query": QUERY, **body})
        assert r.status_code == 200, r.text
        return [h["id"] for h in r.json()["hits"]]


def test_pages_and_filters_live_in_the_url(page, gw):
    """Paging (&page=), facets of the page's hits with their counts, filters by tag, licence and duration, each
    removable: every state is an address, and the page shows what the API answers for it."""
    with_key(page)
    page.goto(f"{gw.http_url}/?q=a+dog+barking&k=3")
    page.wait_for_selector("[data-testid=result]")
    assert shown_ids(page) == search_api(gw, k=3)
    assert page.inner_text("[data-testid=page-number]") == "page 1" and page.is_disabled("[data-testid=prev-page]")
    page.click("[data-testid=next-page]")
    page.wait_for_function("() => new URLSearchParams(location.search).get('page') === '2'")
    page.wait_for_function("() => document.getElementById('page-number').textContent === 'page 2'")
    assert shown_ids(page) == search_api(gw, k=3, offset=3)
    page.click("[data-testid=next-page]")
    page.wait_for_function("() => document.getElementById('page-number').textContent === 'page 3'")
    assert shown_ids(page) == search_api(gw, k=3, offset=6) and len(shown_ids(page)) == N_ITEMS - 6
    assert page.is_disabled("[data-testid=next-page]")  # the last page
    page.go_back()
    page.wait_for_function("() => document.getElementById('page-number').textContent === 'page 2'")
    page.screenshot(path=str(SHOTS / "10-page-2.png"), full_page=True)

    # facets: counts over the hits shown, for tags and each metadata key; a licence chip filters by extra.licence
    page.goto(f"{gw.http_url}/?q=a+dog+barking&k={N_ITEMS}")
    page.wait_for_selector("[data-testid=facet-licence]")
    chips = page.locator("[data-testid=facet-licence] .chip").all_inner_texts()
    assert sorted(chips) == sorted(f"{lic} ({N_ITEMS // 2})" for lic in LICENCES)
    assert page.locator("[data-testid=facet-package] .chip").all_inner_texts() == [f"demo-sounds ({N_ITEMS})"]
    assert page.locator("[data-testid=facet-file]").count() == 0  # a value per item: not a facet
    page.click(f"[data-testid=facet-licence] .chip[data-value='{LICENCES[0]}']")
    page.wait_for_function(f"() => new URLSearchParams(location.search).get('m.licence') === '{LICENCES[0]}'")
    expected = search_api(gw, k=N_ITEMS, filter={"extra": {"licence": LICENCES[0]}})
    page.wait_for_function(f"() => document.querySelectorAll('[data-testid=result]').length === {len(expected)}")
    assert shown_ids(page) == expected and len(expected) == N_ITEMS // 2
    assert set(page.locator("[data-testid=result-licence]").all_inner_texts()) == {LICENCES[0]}

    # a tag chip adds a tag filter beside it; removing the licence keeps the tag
    tag = f"t{int(expected[0].split('/')[1])}"
    page.click(f"[data-testid=facet-tags] .chip[data-value='{tag}']")
    page.wait_for_function("() => document.querySelectorAll('[data-testid=result]').length === 1")
    assert shown_ids(page) == search_api(gw, k=N_ITEMS, filter={"tags_all": [tag], "extra": {"licence": LICENCES[0]}})
    assert page.locator("[data-testid=active-filter]").count() == 2
    page.screenshot(path=str(SHOTS / "11-filters.png"), full_page=True)
    page.click(f"[data-testid=active-filter]:has-text('licence: {LICENCES[0]}')")
    page.wait_for_function("() => !new URLSearchParams(location.search).has('m.licence')")
    assert page.evaluate("new URLSearchParams(location.search).getAll('tag')") == [tag]

    # a duration range from the search form
    page.goto(f"{gw.http_url}/?q=a+dog+barking&k={N_ITEMS}")
    page.wait_for_selector("[data-testid=result]")
    with api(gw) as c:
        durations = sorted(c.get(f"/v1/items/sound/{i}").json()["duration_s"] for i in range(N_ITEMS))
    cut = round((durations[0] + durations[-1]) / 2, 1)
    page.fill("[data-testid=min-s]", str(cut))
    page.click("[data-testid=search-button]")
    page.wait_for_function(f"() => new URLSearchParams(location.search).get('min_s') === '{cut}'")
    expected = search_api(gw, k=N_ITEMS, filter={"min_duration_s": cut})
    page.wait_for_function(
        f"() => document.querySelectorAll('[data-testid=result]').length === {len(expected)}"
        " && document.getElementById('results-title').textContent.includes('results')"
    )
    assert shown_ids(page) == expected and 0 < len(expected) < N_ITEMS


def test_results_show_their_source_licence_json_and_waveform(page, gw):
    with_key(page)
    page.goto(f"{gw.http_url}/?q=a+dog+barking&k={N_ITEMS}")
    page.wait_for_selector("[data-testid=result]")
    # every waveform drawn from the audio, as long as the item
    page.wait_for_function(
        f"() => [...document.querySelectorAll('[data-testid=result-wave]')].filter(c => c.dataset.seconds)"
        f".length === {N_ITEMS}",
        timeout=30000,
    )
    waves = page.locator("[data-testid=result]").evaluate_all(
        """rows => rows.map(r => { const c = r.querySelector('canvas');
            const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let inked = 0; for (let i = 3; i < px.length; i += 4) if (px[i]) inked++;
            return [r.dataset.id, +c.dataset.seconds, inked / (c.width * c.height)]; })"""
    )
    with api(gw) as c:
        items = {i: c.get(f"/v1/items/{i}").json() for i, _, _ in waves}
    for item_id, seconds, inked in waves:
        assert seconds == pytest.approx(items[item_id]["duration_s"], abs=0.01) and 0.05 < inked < 1, item_id
    first = page.locator("[data-testid=result]").first
    item = items[first.get_attribute("data-id")]
    assert first.locator("[data-testid=result-licence]").inner_text() == item["extra"]["licence"]
    assert first.locator("[data-testid=result-source]").inner_text() == f"demo-sounds: {item['extra']['file']}"
    assert first.locator("[data-testid=result-json]").get_attribute("href") == f"/v1/items/{item['id']}"


def test_predicted_tags_are_marked_with_their_confidence(page, gw):
    """How a result shows tags the server predicted (extra.predicted_tags: label -> confidence) beside given ones.
    The tiny bundle has no tagger, so it predicts none (test_tagger.py checks the predictions on YAMNet): the page's
    renderer gets an item of that shape."""
    item = {"tags": ["Dog", "Bark", "kennel"], "extra": {"predicted_tags": {"Dog": 0.913, "Bark": 0.456}}}
    chips = page.evaluate(
        """item => [...tagChips(item).children].map(c => [c.textContent, c.classList.contains('predicted')])""",
        item,
    )
    assert chips == [["Dog 91%", True], ["Bark 46%", True], ["kennel", False]]


def test_a_clip_is_added_to_the_index_from_the_page(page, gw, clips, tmp_path):
    with_key(page)
    path = tmp_path / "door slam.wav"
    path.write_bytes(wav(clips[N_ITEMS + 1]))
    page.set_input_files("[data-testid=file-input]", str(path))
    page.wait_for_selector("[data-testid=add-form]:visible")
    page.wait_for_function("() => document.getElementById('caption-output').textContent !== '…'")
    assert page.input_value("[data-testid=add-id]") == "uploads/door-slam"
    page.fill("[data-testid=add-id]", "uploads/from-the-page")
    page.fill("[data-testid=add-tags]", "door, page test")
    page.fill("[data-testid=add-caption]", "a door slams shut")
    page.click("[data-testid=add-button]")
    try:
        page.wait_for_function(
            "() => document.getElementById('add-result').textContent === 'Stored as uploads/from-the-page.'"
        )
        page.wait_for_function(f"() => document.getElementById('stats-items').textContent === '{N_ITEMS + 1}'")
        with api(gw) as c:
            item = c.get("/v1/items/uploads/from-the-page").json()
        assert item["tags"] == ["door", "page test"] and item["caption"] == "a door slams shut"
        # the same id again: the gateway's 409, shown in the form
        page.click("[data-testid=add-button]")
        page.wait_for_selector("[data-testid=add-error]:visible")
        assert "409" in page.inner_text("[data-testid=add-error]")
        page.screenshot(path=str(SHOTS / "12-added.png"), full_page=True)
    finally:
        with api(gw) as c:
            c.delete("/v1/items/uploads/from-the-page")


def test_the_page_works_from_the_keyboard(page, gw):
    """'/' jumps to the search box, Enter searches, and a result's buttons take the focus and Enter."""
    with_key(page)
    page.locator("body").click(position={"x": 5, "y": 300})  # the focus on the page, not in a field
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.id") == "search-input"
    page.keyboard.type(QUERY)
    page.keyboard.press("Enter")
    page.wait_for_selector("[data-testid=result]")
    for _ in range(40):  # Tab from the search box reaches the first result's button
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.dataset.testid") == "similar-link":
            break
    target = page.evaluate("document.activeElement.closest('[data-testid=result]').dataset.id")
    assert target == shown_ids(page)[0]
    page.keyboard.press("Enter")
    page.wait_for_function(f"() => new URLSearchParams(location.search).get('similar') === '{target}'")
