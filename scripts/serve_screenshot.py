"""The README's web UI screenshot: `fastmuse serve` with the bundled model, driven by headless
chromium (selenium): generate, pick an image, paint a mask, inpaint.

    .venv/bin/python scripts/serve_screenshot.py            # writes docs/serve-ui.png
"""

import shutil
import sys

from selenium import webdriver
from selenium.webdriver import ActionChains
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

from fastmuse.serve.process import start_server


def main(out: str = "docs/serve-ui.png") -> None:
    server, url = start_server(timeout_s=600)
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,900"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(options=opts, service=Service(shutil.which("chromedriver")))
    try:
        driver.get(url + "/")
        done = lambda what: WebDriverWait(driver, 300).until(  # noqa: E731
            lambda d: d.find_element("id", "status").text.startswith(what + ":")
        )
        driver.find_element("id", "generate").click()  # the default prompt, "red heart"
        done("generating")
        driver.find_elements("css selector", "#images img")[1].click()
        WebDriverWait(driver, 10).until(lambda d: d.execute_script("return source !== null"))
        ActionChains(driver).move_to_element_with_offset(
            driver.find_element("id", "mask"), 0, -60
        ).click_and_hold().move_by_offset(60, 40).move_by_offset(-30, 60).release().perform()
        box = driver.find_element("id", "prompt")
        box.clear()
        box.send_keys("blue heart")
        driver.find_element("id", "inpaint").click()
        done("inpainting")
        driver.save_screenshot(out)
        print(f"wrote {out}")
    finally:
        driver.quit()
        server.terminate()


if __name__ == "__main__":
    main(*sys.argv[1:])
