"""`cct demo`: the page in headless Chromium (Debian's chromium + chromium-driver, driven by selenium), and the
predictor behind it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from compact_transformers.cli import main
from compact_transformers.models import create_model
from compact_transformers.models.weights import save_model

CLASSES = ["cat", "dog", "owl", "fox"]


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    """A small RGB model with class names and mirror TTA, its head scaled up so that images differ clearly."""
    torch.manual_seed(0)
    model = create_model("cct_2_3x2_32", num_classes=len(CLASSES), img_size=(24, 24),
                         extra={"classes": CLASSES, "flip_tta": True})
    with torch.no_grad():
        model.classifier.fc.weight.mul_(40)
    save_model(model, tmp_path / "model")
    return tmp_path / "model"


PALETTE = [(230, 30, 30), (30, 200, 40), (20, 40, 230), (250, 250, 250), (10, 10, 10), (240, 220, 20),
           (128, 128, 128), (250, 0, 130)]


def write_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """Noisy flat colours of several sizes (not the model's): colours a random model tells apart."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        height, width = (int(side) for side in rng.integers(20, 90, size=2))
        noise = rng.integers(-20, 21, size=(height, width, 3))
        pixels = np.clip(np.array(PALETTE[i % len(PALETTE)]) + noise, 0, 255).astype(np.uint8)
        paths.append(folder / f"photo{i}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


def predict_top1(model: Path, files: list[Path], capsys: pytest.CaptureFixture) -> dict[str, str]:
    """`cct predict`'s top-1 label per file name."""
    capsys.readouterr()
    assert main(["predict", str(model), *map(str, files), "--json", "--top-k", "1"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    return {Path(r["file"]).name: r["predictions"][0]["label"] for r in records}


def two_images_of_different_classes(model: Path, folder: Path, capsys: pytest.CaptureFixture) -> dict[str, str]:
    """Two image files that `cct predict` puts in different classes (so that swapping them would show)."""
    files = write_images(folder, 8)
    top1 = predict_top1(model, files, capsys)
    first = files[0].name
    second = next(name for name, label in top1.items() if label != top1[first])
    for path in files:
        if path.name not in (first, second):
            path.unlink()
    return {first: top1[first], second: top1[second]}


# ------------------------------------------------------------------------------------------- predictor


def test_predictor_agrees_with_cct_predict_and_rejects_what_is_not_an_image(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from compact_transformers.demo import Predictor, images_html

    expected = two_images_of_different_classes(model_dir, tmp_path / "images", capsys)
    fake = tmp_path / "notes.png"
    fake.write_text("these are notes, not pixels\n")
    huge = tmp_path / "huge.png"
    Image.new("RGB", (300, 20)).save(huge)
    predictor = Predictor(str(model_dir), top_k=2, max_image_side=256)
    results = predictor.classify_images([tmp_path / "images" / name for name in expected] + [fake, huge])
    assert {r.name: r.predictions[0]["label"] for r in results[:2]} == expected
    assert all(r.error is None and r.picture.size[0] >= 224 for r in results[:2])
    assert results[2].predictions == [] and "not an image" in results[2].error
    assert "too large: 300x20" in results[3].error
    page = images_html(results)
    assert page.count('class="cct-result"') == 2 and page.count('class="cct-error"') == 2
    assert "Traceback" not in page


def test_predictor_card_names_the_model_and_its_run(tmp_path: Path) -> None:
    from compact_transformers.demo import Predictor

    output = tmp_path / "runs"
    assert main(["train", "--samples-per-class", "5", "--epochs", "1", "--batch-size", "16", "--quiet",
                 "--device", "cpu", "--output", str(output), "--name", "digits"]) == 0  # fmt: skip
    final = json.loads((output / "digits" / "final.json").read_text())
    card = Predictor(str(output / "digits")).card_markdown()
    assert "CCT-2/3x2" in card and "parameters **0.2" in card and "dataset **digits**" in card
    assert f"val top-1 **{final['val']['top1']:.2f}%**" in card
    assert "**classes (10)**: 0, 1, 2" in card
    pytest.importorskip("huggingface_hub", reason="the Hub layout's model card needs the [hub] extra")
    assert main(["export", str(output / "digits"), str(tmp_path / "hub"), "--format", "hub"]) == 0
    card = Predictor(str(tmp_path / "hub")).card_markdown()  # the results come from the model card now
    assert f"val top-1 **{final['val']['top1']:.2f}%**" in card and "dataset **digits**" in card


def test_text_predictor_colours_the_words(tmp_path: Path) -> None:
    from compact_transformers.data.text import Vocabulary
    from compact_transformers.demo import Predictor
    from compact_transformers.explain import text_block_html

    vocab = ["<unk>", "<pad>", "good", "bad", "film", "very"]
    model = create_model("text_cct_2_1x1", vocab_size=len(vocab), word_dim=16, seq_len=8, num_classes=2,
                         extra={"vocab": Vocabulary(vocab).to_dict(), "classes": ["neg", "pos"]})
    save_model(model, tmp_path / "text")
    predictor = Predictor(str(tmp_path / "text"), top_k=2)
    assert predictor.is_text
    [(explanation, predictions)] = predictor.classify_texts(["A very good film, very good indeed: great acting"])
    assert explanation.read == 8 and len(explanation.tokens) == 11  # seq_len cuts the last 3 tokens
    assert 0.0 < sum(explanation.word_weights) <= 1.0 + 1e-5
    page = text_block_html("A very good film", explanation, predictions)
    assert page.count('class="cct-word"') == 8 and page.count('class="cct-unread"') == 3


def test_concurrent_uploads_are_answered_in_one_batch(model_dir: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("gradio", reason="needs the [demo] extra")
    from compact_transformers.demo import Predictor, build_app

    predictor = Predictor(str(model_dir))
    calls = []
    classify = predictor.classify_images
    monkeypatch.setattr(predictor, "classify_images", lambda paths: calls.append(len(paths)) or classify(paths))
    app = build_app(predictor, max_batch_size=8)
    [upload] = [f for f in app.fns.values() if f.fn.__name__ == "classify_images"]
    assert upload.batch and upload.max_batch_size == 8
    first, second = write_images(tmp_path / "a", 2), write_images(tmp_path / "b", 3, seed=1)
    pages, galleries = upload.fn([[str(p) for p in first], [str(p) for p in second]])
    assert calls == [5]  # both requests in one call, one forward pass
    assert [page.count('class="cct-result"') for page in pages] == [2, 3]
    assert [len(gallery) for gallery in galleries] == [2, 3]


def test_demo_without_gradio_names_the_extra(model_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` raises ImportError
    assert main(["demo", str(model_dir)]) == 2
    assert "pip install 'compact-transformers[demo]'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ the browser


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_page(url: str, server: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"cct demo exited with {server.returncode}: {server.stdout.read()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"cct demo did not answer on {url} within {timeout:.0f} s")


def chromium_driver():
    """Headless Debian Chromium through its chromedriver, or a skip naming what is missing."""
    pytest.importorskip("gradio", reason="needs the [demo] extra")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (the [dev] extra)")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(flag)
    options.binary_location = browser
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # to list every request the page makes
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))


def requested_urls(browser) -> set[str]:
    urls = set()
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.add(message["params"]["request"]["url"])
    return urls


@contextlib.contextmanager
def served(model: Path, tmp_path: Path, options: tuple[str, ...] = ()):
    """`cct demo MODEL OPTIONS` on a free localhost port, as a subprocess: yields its URL; stopped with SIGTERM
    after, and it must then exit 0 (killed, and the test failed, if it does not within 30 s)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": str(tmp_path / "gradio")}
    server = subprocess.Popen(
        [sys.executable, "-m", "compact_transformers.cli", "demo", str(model), "--port", str(port), *options],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    try:
        wait_for_page(url, server)
        yield url
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            log, _ = server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            log, _ = server.communicate()
    assert server.returncode == 0 and "stopping the demo" in log, log


@pytest.mark.slow
def test_demo_page_in_a_browser(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Start `cct demo`, upload two images in headless Chromium, compare the top-1 shown with `cct predict`'s,
    then upload a text file named .png and read the error on the page, then a file over the upload cap;
    screenshots saved as artifacts ($CCT_TEST_ARTIFACTS, else the test's tmp_path)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser = chromium_driver()
    expected = two_images_of_different_classes(model_dir, tmp_path / "images", capsys)
    fake = tmp_path / "upload" / "holiday.png"
    fake.parent.mkdir()
    fake.write_text("Dear diary, today I renamed a text file.\n")
    noise = np.random.default_rng(0).integers(0, 256, size=(200, 200, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "upload" / "big.png")  # 120 kB of noise
    artifacts = Path(os.environ.get("CCT_TEST_ARTIFACTS", tmp_path))
    artifacts.mkdir(parents=True, exist_ok=True)
    try:
        with served(model_dir, tmp_path, options=("--max-upload-mb", "0.05")) as url:
            browser.get(url)
            wait = WebDriverWait(browser, 60)
            upload = wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#cct-images input[type=file]"))
            assert "CCT-2/3x2" in browser.find_element(By.ID, "cct-card").text
            upload.send_keys("\n".join(str(tmp_path / "images" / name) for name in expected))
            shown = wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#cct-results .cct-result")[1:] and
                               b.find_elements(By.CSS_SELECTOR, "#cct-results .cct-result"))
            assert {e.get_attribute("data-file"): e.get_attribute("data-top1") for e in shown} == expected
            wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#cct-heatmaps img")) >= 2)
            browser.save_screenshot(str(artifacts / "demo.png"))

            upload = browser.find_element(By.CSS_SELECTOR, "#cct-images input[type=file]")
            upload.send_keys(str(fake))
            error = wait.until(lambda b: [e for e in b.find_elements(By.CSS_SELECTOR, "#cct-results .cct-error")
                                          if e.get_attribute("data-file") == "holiday.png"])[0]
            assert "holiday.png: not an image" in error.text
            page = browser.find_element(By.TAG_NAME, "body").text
            assert "Traceback" not in page and "Error" not in page
            browser.save_screenshot(str(artifacts / "demo_not_an_image.png"))

            upload = browser.find_element(By.CSS_SELECTOR, "#cct-images input[type=file]")
            upload.send_keys(str(fake.parent / "big.png"))
            wait.until(lambda b: 'exceed the maximum allowed size of 51.2 Kb: "big.png"' in b.page_source)
            outside = {u for u in requested_urls(browser) if not u.startswith((url, "data:", "blob:"))}
            assert not outside, f"the page fetched from outside the server: {sorted(outside)}"
    finally:
        browser.quit()


@pytest.mark.slow
def test_demo_page_of_a_text_model_in_a_browser(tmp_path: Path) -> None:
    """A text model's page: type two lines, get each one's words coloured (weights in the spans) and its top-1."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from compact_transformers.data.text import Vocabulary

    browser = chromium_driver()
    vocab = Vocabulary(["<unk>", "<pad>", "good", "bad", "film"])
    model = create_model("text_cct_2_2x1", vocab_size=len(vocab), word_dim=8, seq_len=16, num_classes=2,
                         extra={"vocab": vocab.to_dict(), "classes": ["neg", "pos"]})
    save_model(model, tmp_path / "text")
    try:
        with served(tmp_path / "text", tmp_path) as url:
            browser.get(url)
            wait = WebDriverWait(browser, 60)
            box = wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#cct-text textarea"))
            box.send_keys("a good film\nbad, bad film")
            browser.find_element(By.ID, "cct-classify").click()
            shown = wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#cct-results .cct-result")[1:] and
                               b.find_elements(By.CSS_SELECTOR, "#cct-results .cct-result"))
            words = [[w.text for w in e.find_elements(By.CSS_SELECTOR, ".cct-word")] for e in shown]
            assert words == [["a", "good", "film"], ["bad", ",", "bad", "film"]]
            spans = shown[0].find_elements(By.CSS_SELECTOR, ".cct-word")
            weights = [float(span.get_attribute("data-weight")) for span in spans]
            assert all(w >= 0 for w in weights) and sum(weights) <= 1 + 1e-4
            assert all(e.get_attribute("data-top1") in ("neg", "pos") for e in shown)
    finally:
        browser.quit()
