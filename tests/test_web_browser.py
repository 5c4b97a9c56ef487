"""One flow through the admin web in a real headless browser: Debian's Chromium driven by Playwright.

Log in, see a fresh incident from a sandbox report on the dashboard, open it, resolve it, and check that the
group got the result. Needs ``pip install playwright`` and ``/usr/bin/chromium`` (``apt-get install -y
chromium``); never ``playwright install``. When either is missing the test fails and says what to install.
Set GONGHAO_SCREENSHOTS=/some/dir to keep screenshots of the dashboard and the incident page there.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import JINXIU, WANG
from tests.test_web import FIRE, PASSWORDS, WebEnv, web  # noqa: F401  (``web`` is the fixture)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def _requirements() -> None:
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        pytest.fail("Playwright for Python is missing: `pip install playwright` (the browser is Debian's "
                    "Chromium; do not run `playwright install`)", pytrace=False)
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(f"Chromium is missing at {CHROMIUM}: `apt-get install -y chromium`", pytrace=False)


async def test_login_see_open_resolve_in_a_browser(web: WebEnv, tmp_path: Path) -> None:  # noqa: F811
    _requirements()
    from playwright.async_api import async_playwright, expect

    env = web.env
    start = env.sandbox.log.last_seq
    incident = await web.report()
    await env.bot_says(WANG, start, "警情")
    shots = Path(os.environ.get("GONGHAO_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    result = "消防已到场，系楼道杂物冒烟，已扑灭，无人受伤"

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                                   headless=True)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900}, locale="zh-CN")
            await page.goto(web.admin_web.url)
            await expect(page).to_have_url(web.admin_web.url + "login?next=/")
            await page.get_by_label("用户名").fill("wang_web")
            await page.get_by_label("密码").fill(PASSWORDS["wang_web"])
            await page.get_by_role("button", name="登录").click()

            row = page.locator(f'tr[data-incident="{incident.id}"]')
            await expect(row).to_contain_text("火情")
            await expect(row).to_contain_text("锦绣小区平安群")
            await expect(row).to_contain_text("待接警")
            await page.screenshot(path=str(shots / "gonghao-dashboard.png"), full_page=True)

            await row.get_by_role("link", name=f"#{incident.id}").click()
            await expect(page).to_have_url(f"{web.admin_web.url}incidents/{incident.id}")
            await expect(page.locator("ol.timeline li")).to_have_count(3)  # reported, replied, pinged
            await expect(page.locator('li[data-kind="pinged"]')).to_contain_text("王警官")
            await page.get_by_label("处理结果").fill(result)
            await page.get_by_role("button", name="标记处理完毕并通知群").click()

            await expect(page.get_by_role("status")).to_contain_text("已标记为处理完毕")
            await expect(page.locator('li[data-kind="resolved"]')).to_contain_text(result)
            told = await env.bot_says(JINXIU, start, "处理完毕")
            assert result in told["text"] and f"#{incident.id}" in told["text"]
            await page.reload()  # the delivery table lists the result message
            await expect(page.locator("table.sends")).to_contain_text("处理结果")
            await page.screenshot(path=str(shots / "gonghao-incident.png"), full_page=True)
        finally:
            await browser.close()
    resolved = await web.incident(incident.id)
    assert resolved.status == "resolved" and resolved.result == result
    assert (shots / "gonghao-dashboard.png").stat().st_size > 0

