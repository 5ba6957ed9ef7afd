"""The web page end to end in headless Chromium (Debian's `chromium`, driven by Playwright) against a real gateway
with API keys on: the page must work once the key is typed in. Screenshots go to test-artifacts/browser/.

A real process, driven by a real browser.
"""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.server.conftest import RATE, ROOT, running_server, synth_clip, wav

CHROMIUM = "/usr/bin/chromium"
SHOTS = ROOT / "test-artifacts" / "browser"
KEY = "browser-test-key"
N_ITEMS = 8
QUERY = "a dog barking"


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install chromium` (make test installs it)")
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
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
                r = c.post(
                    "/v1/items",
                    params={"id": f"sound/{i}", "tags": [f"t{i}", "demo"], "caption": f"clip number {i}"},
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


@pytest.fixture
def page(browser, gw):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    blocked: list[str] = []  # the page runs under the gateway's Content-Security-Policy: nothing may need more
    page.on("console", lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None)
    page.goto(gw.http_url + "/")
    yield page
    context.close()
    assert blocked == [], blocked


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
    refused: list[str] = []

    def only_local(route):
        if route.request.url.startswith(gw.http_url):
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort()

    context.route("**/*", only_local)
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


def test_a_phone_screen_has_no_sideways_scroll(browser, gw, clips, tmp_path):
    """At 390 px wide (a phone), with results and an analysed long clip on screen, nothing scrolls sideways."""
    # Not is_mobile: a mobile viewport would zoom out to fit a too-wide page, and the overflow would not show.
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2)
    page = context.new_page()
    page.goto(gw.http_url + "/")
    with_key(page)
    page.fill("[data-testid=search-input]", QUERY)
    page.click("[data-testid=search-button]")
    page.wait_for_selector("[data-testid=result]")
    long_clip = np.tile(clips[N_ITEMS], 12 * RATE // len(clips[N_ITEMS]) + 1)[: 12 * RATE]
    path = tmp_path / "a clip with a rather long file name recorded on a phone.wav"
    path.write_bytes(wav(long_clip, subtype="PCM_16"))
    page.set_input_files("[data-testid=file-input]", str(path))
    page.wait_for_selector("[data-testid=window]")
    page.wait_for_function("() => document.getElementById('caption-output').textContent !== '…'")
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
