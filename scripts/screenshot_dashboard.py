"""A screenshot of a sweep's dashboard page, as the README shows it.

Serves the dashboard over ``--storage`` in this process and opens the sweep's page in headless
Chromium (Debian's, or ``--chromium``), waits for its charts, and writes a PNG::

    python scripts/screenshot_dashboard.py digits-demo -o docs/dashboard.png
"""

from __future__ import annotations

import argparse
import urllib.parse
from pathlib import Path

from playwright.sync_api import sync_playwright

from storage import Store
from sweep._dashboard import running
from sweep._dashboard._browser import launch_chromium


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep")
    parser.add_argument("--storage", default="sqlite:///sweeps.db")
    parser.add_argument("-o", "--output", type=Path, default=Path("dashboard.png"))
    parser.add_argument("--chromium", help="Chromium binary (default: as the tests find it)")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=1500, help="of the part shown")
    args = parser.parse_args(argv)
    with Store(args.storage, create=False) as store, running(store) as listening:
        url = f"{listening.url}sweeps/{urllib.parse.quote(args.sweep, safe='')}"
        with sync_playwright() as playwright:
            browser = launch_chromium(playwright, args.chromium)
            page = browser.new_page(viewport={"width": args.width, "height": args.height})
            page.goto(url)
            page.wait_for_selector("body[data-ready]", timeout=60_000)
            page.wait_for_timeout(500)  # plotly's transitions
            args.output.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.output))
            browser.close()
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
