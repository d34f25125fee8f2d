"""The web UI in a real headless browser (Debian's chromium + chromedriver, driven by selenium):
generate, pick an image, paint a mask, inpaint, outpaint. Skipped where no chromium is
installed (`apt-get install chromium chromium-driver`; .ci/run does)."""

import shutil

import pytest

from test_serve import model_dir, server  # noqa: F401  (fixtures)

pytestmark = pytest.mark.skipif(
    not (shutil.which("chromium") and shutil.which("chromedriver")),
    reason="needs chromium and chromedriver (apt-get install chromium chromium-driver)",
)


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,1000"):
        opts.add_argument(arg)
    return webdriver.Chrome(options=opts, service=Service(shutil.which("chromedriver")))


def wait_status(driver, startswith: str, timeout: float = 60) -> str:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(
        lambda d: (
            d.find_element("id", "status").text.startswith(startswith)
            or "error" in d.find_element("id", "status").get_attribute("class")
        )
    )
    status = driver.find_element("id", "status")
    assert "error" not in status.get_attribute("class"), status.text
    return status.text


def paint(driver, canvas) -> None:
    from selenium.webdriver import ActionChains

    ActionChains(driver).move_to_element_with_offset(canvas, -40, -40).click_and_hold().move_by_offset(
        60, 30
    ).move_by_offset(20, 40).release().perform()


def test_generate_paint_inpaint_outpaint(server, tmp_path):  # noqa: F811
    url, _ = server
    driver = browser()
    try:
        driver.get(url + "/")
        driver.find_element("id", "key").send_keys("k3y")
        box = driver.find_element("id", "prompt")
        box.clear()
        box.send_keys("a red square")
        driver.find_element("id", "generate").click()
        assert wait_status(driver, "generating:").startswith("generating: 4 image(s)")
        images = driver.find_elements("css selector", "#images img")
        assert len(images) == 4 and all(im.get_attribute("src").startswith("data:image/png") for im in images)
        images[0].click()
        canvas = driver.find_element("id", "mask")
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(driver, 10).until(lambda d: d.execute_script("return source !== null"))  # loaded
        paint(driver, canvas)
        painted = driver.execute_script(
            "const c = document.getElementById('mask'); const d = c.getContext('2d')"
            ".getImageData(0, 0, c.width, c.height).data; let k = 0;"
            "for (let i = 3; i < d.length; i += 4) k += d[i] > 0; return k;"
        )
        assert painted > 0
        driver.find_element("id", "inpaint").click()
        wait_status(driver, "inpainting:")
        assert len(driver.find_elements("css selector", "#images img")) == 4  # n = 4 edits
        driver.find_element("css selector", ".out[data-side='right']").click()
        wait_status(driver, "outpainting:")
        width = driver.execute_script(
            "const im = document.querySelector('#images img'); return im.naturalWidth"
        )
        assert width == 32 + 32
        driver.save_screenshot(str(tmp_path / "ui.png"))
    finally:
        driver.quit()
